//! The one-statement apply of decided writes: the updates, deletions and
//! bare event records of a group (or of a lone write), with their data,
//! name history, tombstones, erasure, event records and change-log rows.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, types::Json};
use uuid::Uuid;

use crate::store::txn::{Decided, Record};
use crate::{
    domain::error::Result,
    domain::{
        change::{Actor, NewChange},
        keys,
        limits::NAME_HISTORY_LIMIT,
        user::User,
        write::{self, Change},
    },
};

/// Applies writes of distinct users (one row per write in the user and
/// deletion arrays, per data key in `d`, per name entry in `n`, per event in
/// `e`, per change in `c`). A deletion removes the user (its data goes by
/// cascade), tombstones its `clerk_id`, and takes the personal values out of
/// its earlier changes (keeping what happened, when and by whom) and out of
/// the results recorded for its earlier events, which a redelivery would
/// otherwise give back. No CTE touches a row another one does, because the
/// users are distinct and each CTE sees only rows from before the statement.
pub(super) const APPLY_WRITES: &str = "with \
     u as (update users set email = t.email, first_name = t.first_name, last_name = t.last_name, \
             username = t.username, image_url = t.image_url, role = t.role, status = t.status, \
             updated_at = t.updated_at, source_updated_at = t.source_updated_at, version = t.version \
         from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
             $8::text[], $9::timestamptz[], $10::bigint[], $11::bigint[]) \
             as t(id, email, first_name, last_name, username, image_url, role, status, updated_at, \
                 source_updated_at, version) \
         where users.id = t.id), \
     d as (insert into user_data (user_id, key, value, created_at, updated_at) \
         select user_id, key, value, at, at \
         from unnest($12::uuid[], $13::text[], $14::jsonb[], $15::timestamptz[]) as t(user_id, key, value, at) \
         on conflict (user_id, key) do update \
         set value = excluded.value, updated_at = excluded.updated_at, version = user_data.version + 1), \
     n as (insert into user_data (user_id, key, value, created_at, updated_at) \
         select user_id, $19, jsonb_build_array(entry), at, at \
         from unnest($16::uuid[], $17::jsonb[], $18::timestamptz[]) as t(user_id, entry, at) \
         on conflict (user_id, key) do update set \
           value = case when jsonb_typeof(user_data.value) <> 'array' then excluded.value \
                        when jsonb_array_length(user_data.value) >= $20 \
                          then (user_data.value - 0) || excluded.value \
                        else user_data.value || excluded.value end, \
           updated_at = excluded.updated_at, version = user_data.version + 1), \
     x as (delete from users where id = any($21::uuid[])), \
     t as (insert into deleted_users (clerk_id, user_id, deleted_at) \
         select * from unnest($22::text[], $21::uuid[], $23::timestamptz[]) on conflict (clerk_id) do nothing), \
     xc as (update changes set before = null, after = null, erased = true \
         where clerk_id = any($22::text[]) and not erased), \
     xe as (update processed_events set result = result - 'user' \
         where clerk_id = any($22::text[]) and result ? 'user'), \
     e as (insert into processed_events (idempotency_key, clerk_id, outcome, result, processed_at, source, kind) \
         select key, clerk_id, outcome, result, now(), source, kind \
         from unnest($24::text[], $25::text[], $26::text[], $27::jsonb[], $28::text[], $29::text[]) \
             as t(key, clerk_id, outcome, result, source, kind) \
         on conflict do nothing), \
     c as (insert into changes (at, user_id, clerk_id, kind, key, before, after, \
             actor_client, actor_event_id, actor_event_type, actor_changed_by, actor_request_id) \
         select at, user_id, clerk_id, kind, key, before, after, \
             client, event_id, event_type, changed_by, request_id \
         from unnest($30::timestamptz[], $31::uuid[], $32::text[], $33::text[], $34::text[], \
             $35::jsonb[], $36::jsonb[], $37::text[], $38::text[], $39::text[], $40::text[], $41::text[]) \
             with ordinality as t(at, user_id, clerk_id, kind, key, before, after, \
                 client, event_id, event_type, changed_by, request_id, n) \
         order by n) \
     select 1";

/// Applies `writes` (distinct users; no inserts, which take their own
/// statement) in one round trip.
pub(super) async fn apply_writes(db: &mut PgConnection, writes: &[&Decided]) -> Result<()> {
    let mut rows = WriteRows::default();
    for write in writes {
        rows.push(write);
    }
    rows.execute(db).await
}

/// The columns of [`APPLY_WRITES`].
#[derive(Default)]
struct WriteRows<'a> {
    updated: Vec<&'a User>,
    data: Vec<(Uuid, &'static str, Json<&'a Value>, DateTime<Utc>)>,
    names: Vec<(Uuid, Json<&'a Value>, DateTime<Utc>)>,
    deleted: Vec<(Option<Uuid>, &'a str, DateTime<Utc>)>,
    records: Vec<Record<'a>>,
    changes: Vec<(&'a NewChange, &'a Actor, DateTime<Utc>)>,
}

impl<'a> WriteRows<'a> {
    fn push(&mut self, write: &'a Decided) {
        let now = write.now;
        match &write.change {
            Change::Update { user, data, name_entry } => {
                self.updated.push(user);
                self.data.extend(data.iter().map(|(key, value)| (user.id, *key, Json(value), now)));
                self.names.extend(name_entry.iter().map(|entry| (user.id, Json(entry), now)));
            }
            Change::Delete { user_id, clerk_id } => self.deleted.push((*user_id, clerk_id, now)),
            Change::None | Change::Insert { .. } => {}
        }
        self.records.extend(write.record());
        self.changes.extend(write.changes.iter().map(|change| (change, &write.actor, now)));
    }

    async fn execute(self, db: &mut PgConnection) -> Result<()> {
        fn column<T, U>(rows: &[T], f: impl Fn(&T) -> U) -> Vec<U> {
            rows.iter().map(f).collect()
        }
        let users = &self.updated;
        let profile = |f: fn(&User) -> Option<&str>| column(users, |u| f(u));
        let records = &self.records;
        let changes = &self.changes;
        let actor = |f: fn(&Actor) -> Option<&str>| column(changes, |(_, a, _)| f(a));
        sqlx::query(APPLY_WRITES)
            .bind(column(users, |u| u.id))
            .bind(profile(|u| u.profile.email.as_deref()))
            .bind(profile(|u| u.profile.first_name.as_deref()))
            .bind(profile(|u| u.profile.last_name.as_deref()))
            .bind(profile(|u| u.profile.username.as_deref()))
            .bind(profile(|u| u.profile.image_url.as_deref()))
            .bind(profile(|u| Some(u.role.as_str())))
            .bind(profile(|u| Some(u.status.as_str())))
            .bind(column(users, |u| u.updated_at))
            .bind(column(users, |u| u.source_updated_at))
            .bind(column(users, |u| u.version))
            .bind(column(&self.data, |d| d.0))
            .bind(column(&self.data, |d| d.1))
            .bind(column(&self.data, |d| d.2))
            .bind(column(&self.data, |d| d.3))
            .bind(column(&self.names, |n| n.0))
            .bind(column(&self.names, |n| n.1))
            .bind(column(&self.names, |n| n.2))
            .bind(keys::NAME_HISTORY)
            .bind(NAME_HISTORY_LIMIT as i32)
            .bind(column(&self.deleted, |d| d.0))
            .bind(column(&self.deleted, |d| d.1))
            .bind(column(&self.deleted, |d| d.2))
            .bind(column(records, |(e, _, _)| e.idempotency_key.as_str()))
            .bind(column(records, |(_, clerk_id, _)| *clerk_id))
            .bind(column(records, |(_, _, r)| r.outcome.map_or("none", write::Outcome::as_str)))
            .bind(column(records, |(_, _, r)| Json(*r)))
            .bind(column(records, |(e, _, _)| e.source.as_str()))
            .bind(column(records, |(e, _, _)| e.kind.as_str()))
            .bind(column(changes, |(_, _, at)| *at))
            .bind(column(changes, |(c, _, _)| c.user_id))
            .bind(column(changes, |(c, _, _)| c.clerk_id.as_str()))
            .bind(column(changes, |(c, _, _)| c.kind.as_str()))
            .bind(column(changes, |(c, _, _)| c.key.as_deref()))
            .bind(column(changes, |(c, _, _)| c.before.as_ref().map(Json)))
            .bind(column(changes, |(c, _, _)| c.after.as_ref().map(Json)))
            .bind(actor(|a| Some(&a.client)))
            .bind(actor(|a| a.event_id.as_deref()))
            .bind(actor(|a| a.event_type.as_deref()))
            .bind(actor(|a| a.changed_by.as_deref()))
            .bind(actor(|a| a.request_id.as_deref()))
            .execute(db)
            .await?;
        Ok(())
    }
}
