-- A user row is never inserted for a deleted clerk_id, whoever inserts it.
--
-- Creating a user in one statement (the fast path for user.created) cannot
-- read the tombstones under the per-clerk_id lock beforehand, so the check
-- happens here: the trigger takes the same transaction-scoped advisory lock
-- every other write for this clerk_id takes (the key is the first 8 bytes of
-- SHA-256 of the id, big-endian, as computed in the store), then looks with a
-- fresh snapshot. A concurrent delete has then either committed its tombstone
-- (seen here: the row is skipped) or not started (it will see this user).
create function users_refuse_deleted() returns trigger
language plpgsql as $$
begin
    perform pg_advisory_xact_lock(
        ('x' || left(encode(sha256(convert_to(new.clerk_id, 'UTF8')), 'hex'), 16))::bit(64)::bigint);
    if exists (select 1 from deleted_users where clerk_id = new.clerk_id) then
        return null;
    end if;
    return new;
end;
$$;

create trigger users_refuse_deleted
    before insert on users
    for each row execute function users_refuse_deleted();
