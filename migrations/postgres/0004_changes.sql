-- The change log: one row per change to a user or a user data key, written in
-- the same transaction as the change. Readers order it by (txid, id) and only
-- hand out rows whose transaction is older than every transaction still
-- running (see user-service/src/store/CHANGES.md), so a follower never skips
-- a row that commits late.
create table changes (
    -- The writing transaction (pg_current_xact_id(), epoch-extended: never
    -- wraps), then the row's own number: the cursor.
    txid              bigint not null default (pg_current_xact_id()::text::bigint),
    id                bigint generated always as identity,
    at                timestamptz not null,
    user_id           uuid,
    clerk_id          text not null,
    kind              text not null,
    key               text,
    before            jsonb,
    after             jsonb,
    actor_client      text not null,
    actor_event_id    text,
    actor_event_type  text,
    actor_changed_by  text,
    actor_request_id  text,
    -- Set when the user was deleted: the values are gone, the facts stay.
    erased            boolean not null default false,
    primary key (txid, id)
);

-- One user's changes (followers filtered to a user; erasure on deletion).
create index changes_clerk_id_idx on changes (clerk_id, txid, id);
-- Retention and audit queries by time.
create index changes_at_idx on changes (at);

-- Everything at or before this cursor may have been pruned: older cursors are
-- OUT_OF_RANGE.
create table change_log_state (
    singleton         boolean primary key default true check (singleton),
    pruned_txid       bigint not null default 0,
    pruned_id         bigint not null default 0
);
insert into change_log_state default values;
