-- Idempotency keys are namespaced by the client that sent them (one client
-- cannot claim, and so block, another's events) and remember the kind of write
-- they were used for (the same key for another kind of write is an error, not
-- a duplicate). Rows from before have neither and match any client and kind.
alter table processed_events
    add column source text not null default '',
    add column kind   text not null default '';
alter table processed_events drop constraint processed_events_pkey;
alter table processed_events add primary key (source, idempotency_key);
