-- A user's deletion strips the user from the results recorded for their
-- earlier events; without this index that is a scan of every event kept.
create index processed_events_clerk_id_idx on processed_events (clerk_id);
