-- Writes addressed by user id check the tombstones by user id.
create index deleted_users_user_id_idx on deleted_users (user_id);
