-- The change log: one row per change to a user or a user data key, written in
-- the same transaction as the change. SQLite has one writer at a time, so the
-- row id is the commit order and the cursor is (id, id).
create table changes (
    id                integer primary key autoincrement,
    at                text not null,
    user_id           text,
    clerk_id          text not null,
    kind              text not null,
    key               text,
    before            text check (before is null or json_valid(before)),
    after             text check (after is null or json_valid(after)),
    actor_client      text not null,
    actor_event_id    text,
    actor_event_type  text,
    actor_changed_by  text,
    actor_request_id  text,
    -- Set when the user was deleted: the values are gone, the facts stay.
    erased            integer not null default 0
);

create index changes_clerk_id_idx on changes (clerk_id, id);
create index changes_at_idx on changes (at);

-- Everything at or before this cursor may have been pruned: older cursors are
-- OUT_OF_RANGE.
create table change_log_state (
    singleton         integer primary key default 1 check (singleton = 1),
    pruned_txid       integer not null default 0,
    pruned_id         integer not null default 0
);
insert into change_log_state default values;
