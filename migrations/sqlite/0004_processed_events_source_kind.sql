-- Idempotency keys are namespaced by the client that sent them (one client
-- cannot claim, and so block, another's events) and remember the kind of write
-- they were used for (the same key for another kind of write is an error, not
-- a duplicate). Rows from before have neither and match any client and kind.
create table processed_events_new (
    source          text not null default '',
    idempotency_key text not null,
    clerk_id        text not null,
    outcome         text not null,
    result          text,
    processed_at    text not null,
    kind            text not null default '',
    primary key (source, idempotency_key)
) without rowid;
insert into processed_events_new (idempotency_key, clerk_id, outcome, result, processed_at)
    select idempotency_key, clerk_id, outcome, result, processed_at from processed_events;
drop table processed_events;
alter table processed_events_new rename to processed_events;
create index processed_events_processed_at_idx on processed_events (processed_at);
