-- Users: one row per Clerk user. Profile columns mirror Clerk; role and status
-- belong to this application. Times are RFC 3339 UTC text with microseconds,
-- so they sort as text.
create table users (
    id                text primary key,
    clerk_id          text not null unique,
    email             text,
    first_name        text,
    last_name         text,
    username          text,
    image_url         text,
    role              text not null default 'user' check (role in ('user', 'admin')),
    status            text not null default 'active' check (status in ('active', 'suspended', 'banned')),
    created_at        text not null,
    updated_at        text not null,
    -- Clerk's updated_at (ms since the epoch) of the newest event applied: older
    -- events are stale and change nothing.
    source_updated_at integer,
    -- Bumped on every write; the etag is derived from it.
    version           integer not null default 1
);

create index users_lower_email_idx on users (lower(email), id);
create index users_status_idx on users (status, id);
create index users_role_idx on users (role, id);

-- Per-user key/value data with JSON text values; goes with its user.
create table user_data (
    user_id    text not null references users (id) on delete cascade,
    key        text not null,
    value      text not null check (json_valid(value)),
    created_at text not null,
    updated_at text not null,
    version    integer not null default 1,
    primary key (user_id, key)
) without rowid;

-- Remembers every deleted clerk_id, so a late or retried event never brings the
-- user back (Clerk never reuses ids).
create table deleted_users (
    clerk_id    text primary key,
    user_id     text,
    deleted_at  text not null,
    source_time integer
) without rowid;

-- One row per applied event (webhook svix-id): a redelivery returns the
-- recorded result instead of applying the event again.
create table processed_events (
    idempotency_key text primary key,
    clerk_id        text not null,
    outcome         text not null,
    result          text,
    processed_at    text not null
) without rowid;

create index processed_events_processed_at_idx on processed_events (processed_at);
