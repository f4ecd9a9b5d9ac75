//! The SQL of each write step: one statement per kind of change, with the
//! event record and the change-log rows in the same statement.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, Postgres, postgres::PgArguments, query::Query, types::Json};
use uuid::Uuid;

use crate::store::{
    DataEntry,
    rows::{self, EntryRow, entry},
    txn::Record,
};
use crate::{
    domain::error::Result,
    domain::{
        change::{Actor, NewChange},
        keys,
        limits::NAME_HISTORY_LIMIT,
        user::{User, UserKey},
        write::{self, Change, EventContext, WriteResult},
    },
};

/// Binds a user's 13 columns, in [`rows::USER_COLUMNS`] order, as `$1`..`$13`.
pub(super) fn bind_user<'q>(
    query: Query<'q, Postgres, PgArguments>,
    user: &'q User,
) -> Query<'q, Postgres, PgArguments> {
    bind_profile(query.bind(user.id).bind(&user.clerk_id), user)
        .bind(user.created_at)
        .bind(user.updated_at)
        .bind(user.source_updated_at)
        .bind(user.version)
}

/// Binds a user's profile, role and status (7 parameters).
pub(super) fn bind_profile<'q>(
    query: Query<'q, Postgres, PgArguments>,
    user: &'q User,
) -> Query<'q, Postgres, PgArguments> {
    query
        .bind(&user.profile.email)
        .bind(&user.profile.first_name)
        .bind(&user.profile.last_name)
        .bind(&user.profile.username)
        .bind(&user.profile.image_url)
        .bind(user.role.as_str())
        .bind(user.status.as_str())
}

/// The CTEs that record the event (`e`) and append the changes (`c`), with
/// the time at `$at` and their own parameters from `$n` on (see [`bind_log`]),
/// so each change, its record and its log are one statement.
pub(super) fn log_ctes(at: usize, n: usize) -> String {
    let p = |i: usize| format!("${}", n + i);
    format!(
        "e as (insert into processed_events \
             (idempotency_key, clerk_id, outcome, result, processed_at, source, kind) \
         select {k}, {}, {}, {}, now(), {}, {} where {k}::text is not null on conflict do nothing), {}",
        p(1),
        p(2),
        p(3),
        p(4),
        p(5),
        changes_cte(at, n + 6),
        k = p(0),
    )
}

/// The CTE `c` that appends changes: the time at `$at`, the actor and the
/// change columns from `$n` on (see [`bind_changes`]).
pub(super) fn changes_cte(at: usize, n: usize) -> String {
    let p = |i: usize| format!("${}", n + i);
    format!(
        "c as (insert into changes (at, user_id, clerk_id, kind, key, before, after, \
             actor_client, actor_event_id, actor_event_type, actor_changed_by, actor_request_id) \
         select ${at}, t.user_id, t.clerk_id, t.kind, t.key, t.before, t.after, {}, {}, {}, {}, {} \
         from unnest({}::uuid[], {}::text[], {}::text[], {}::text[], {}::jsonb[], {}::jsonb[]) \
             as t(user_id, clerk_id, kind, key, before, after))",
        p(0),
        p(1),
        p(2),
        p(3),
        p(4),
        p(5),
        p(6),
        p(7),
        p(8),
        p(9),
        p(10),
    )
}

/// The per-user advisory lock key of a `users` row's `clerk_id`, in SQL:
/// the key [`super::steps::lock_key`] computes (the first 8 bytes of the
/// id's SHA-256, big-endian), as the `users_refuse_deleted` trigger computes
/// it too.
pub(super) const LOCK_KEY_OF_CLERK_ID: &str =
    "('x' || left(encode(sha256(convert_to(clerk_id, 'UTF8')), 'hex'), 16))::bit(64)::bigint";

/// A deletion takes the personal values out of the user's earlier changes
/// (keeping what happened, when and by whom) and out of the results recorded
/// for their earlier events, which a redelivery would otherwise give back.
pub(super) const ERASE_USER: &str = "x as (update changes set before = null, after = null, erased = true \
         where clerk_id = $2 and not erased), \
     r as (update processed_events set result = result - 'user' where clerk_id = $2 and result ? 'user')";

/// Binds the parameters of [`log_ctes`]: the record, then [`bind_changes`].
pub(super) fn bind_log<'q>(
    query: Query<'q, Postgres, PgArguments>,
    record: Option<Record<'q>>,
    actor: &'q Actor,
    changes: &'q [NewChange],
) -> Query<'q, Postgres, PgArguments> {
    let query = query
        .bind(record.map(|(e, _, _)| e.idempotency_key.as_str()))
        .bind(record.map(|(_, c, _)| c))
        .bind(record.map(|(_, _, r)| r.outcome.map_or("none", write::Outcome::as_str)))
        .bind(record.map(|(_, _, r)| Json(r)))
        .bind(record.map(|(e, _, _)| e.source.as_str()))
        .bind(record.map(|(e, _, _)| e.kind.as_str()));
    bind_changes(query, actor, changes)
}

/// Binds the actor and the columns of `changes`, in that order, as the
/// statement's next parameters.
pub(super) fn bind_changes<'q>(
    query: Query<'q, Postgres, PgArguments>,
    actor: &'q Actor,
    changes: &'q [NewChange],
) -> Query<'q, Postgres, PgArguments> {
    let user_ids: Vec<Option<Uuid>> = changes.iter().map(|c| c.user_id).collect();
    let clerk_ids: Vec<&str> = changes.iter().map(|c| c.clerk_id.as_str()).collect();
    let kinds: Vec<&str> = changes.iter().map(|c| c.kind.as_str()).collect();
    let keys: Vec<Option<&str>> = changes.iter().map(|c| c.key.as_deref()).collect();
    let before: Vec<Option<Json<&Value>>> = changes.iter().map(|c| c.before.as_ref().map(Json)).collect();
    let after: Vec<Option<Json<&Value>>> = changes.iter().map(|c| c.after.as_ref().map(Json)).collect();
    query
        .bind(&actor.client)
        .bind(&actor.event_id)
        .bind(&actor.event_type)
        .bind(&actor.changed_by)
        .bind(&actor.request_id)
        .bind(user_ids)
        .bind(clerk_ids)
        .bind(kinds)
        .bind(keys)
        .bind(before)
        .bind(after)
}

/// The keys and values of initial or updated user data, as two arrays.
pub(super) fn data_arrays<'a>(
    data: &'a [(&'static str, Value)],
) -> (Vec<&'static str>, Vec<Json<&'a Value>>) {
    data.iter().map(|(k, v)| (*k, Json(v))).unzip()
}

/// What every kind of change records besides itself.
#[derive(Clone, Copy)]
pub(super) struct Log<'a> {
    pub(super) changes: &'a [NewChange],
    pub(super) actor: &'a Actor,
    pub(super) record: Option<Record<'a>>,
    pub(super) now: DateTime<Utc>,
}

/// Applies a planned change, records the event and appends the changes in
/// one statement: one function per kind of change, each binding only what
/// its statement uses.
pub(super) async fn apply(tx: &mut PgConnection, change: &Change, log: Log<'_>) -> Result<()> {
    match change {
        Change::None => apply_none(tx, log).await,
        Change::Insert { user, data } => apply_insert(tx, user, data, log).await,
        Change::Update { user, data, name_entry } => {
            apply_update(tx, user, data, name_entry.as_ref(), log).await
        }
        Change::Delete { user_id, clerk_id } => apply_delete(tx, *user_id, clerk_id, log).await,
    }
}

/// Nothing to change: records the event (and any changes).
pub(super) async fn apply_none(tx: &mut PgConnection, log: Log<'_>) -> Result<()> {
    let sql = format!("with {} select 1", log_ctes(1, 2));
    let query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(log.now);
    bind_log(query, log.record, log.actor, log.changes).execute(tx).await?;
    Ok(())
}

/// Inserts the user and its initial data.
pub(super) async fn apply_insert(
    tx: &mut PgConnection,
    user: &User,
    data: &[(&'static str, Value)],
    log: Log<'_>,
) -> Result<()> {
    let sql = format!(
        "with u as (insert into users (id, clerk_id, email, first_name, last_name, username, image_url, \
             role, status, created_at, updated_at, source_updated_at, version) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) returning id), \
         d as (insert into user_data (user_id, key, value, created_at, updated_at) \
             select u.id, k, v, $14, $14 from u, unnest($15::text[], $16::jsonb[]) as t(k, v)), \
         {} select 1",
        log_ctes(14, 17)
    );
    let (keys, values) = data_arrays(data);
    let query = bind_user(sqlx::query(sqlx::AssertSqlSafe(sql)), user).bind(log.now).bind(keys).bind(values);
    bind_log(query, log.record, log.actor, log.changes)
        .execute(tx)
        .await
        .map_err(|e| crate::store::unique_violation(e, &user.clerk_id))?;
    Ok(())
}

/// Updates the user, upserts its data and appends to its name history.
pub(super) async fn apply_update(
    tx: &mut PgConnection,
    user: &User,
    data: &[(&'static str, Value)],
    name_entry: Option<&Value>,
    log: Log<'_>,
) -> Result<()> {
    let sql = format!(
        "with u as (update users set email = $2, first_name = $3, last_name = $4, username = $5, \
             image_url = $6, role = $7, status = $8, updated_at = $9, source_updated_at = $10, \
             version = $11 where id = $1), \
         d as (insert into user_data (user_id, key, value, created_at, updated_at) \
             select $1, k, v, $12, $12 from unnest($13::text[], $14::jsonb[]) as t(k, v) \
             on conflict (user_id, key) do update \
             set value = excluded.value, updated_at = excluded.updated_at, version = user_data.version + 1), \
         n as (insert into user_data (user_id, key, value, created_at, updated_at) \
             select $1, $15, jsonb_build_array($16::jsonb), $12, $12 where $16::jsonb is not null \
             on conflict (user_id, key) do update set \
               value = case when jsonb_typeof(user_data.value) <> 'array' then excluded.value \
                            when jsonb_array_length(user_data.value) >= $17 \
                              then (user_data.value - 0) || excluded.value \
                            else user_data.value || excluded.value end, \
               updated_at = excluded.updated_at, version = user_data.version + 1), \
         {} select 1",
        log_ctes(12, 18)
    );
    let (keys, values) = data_arrays(data);
    let query = bind_profile(sqlx::query(sqlx::AssertSqlSafe(sql)).bind(user.id), user)
        .bind(user.updated_at)
        .bind(user.source_updated_at)
        .bind(user.version)
        .bind(log.now)
        .bind(keys)
        .bind(values)
        .bind(keys::NAME_HISTORY)
        .bind(name_entry.map(Json))
        .bind(NAME_HISTORY_LIMIT as i32);
    bind_log(query, log.record, log.actor, log.changes)
        .execute(tx)
        .await
        .map_err(|e| crate::store::unique_violation(e, &user.clerk_id))?;
    Ok(())
}

/// Deletes the user and its data, tombstones its `clerk_id` and erases its
/// personal values from the log and the recorded results.
pub(super) async fn apply_delete(
    tx: &mut PgConnection,
    user_id: Option<Uuid>,
    clerk_id: &str,
    log: Log<'_>,
) -> Result<()> {
    let sql = format!(
        "with u as (delete from users where id = $1), \
         t as (insert into deleted_users (clerk_id, user_id, deleted_at) values ($2, $1, $3) \
             on conflict (clerk_id) do nothing), \
         {ERASE_USER}, {} select 1",
        log_ctes(3, 4)
    );
    let query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(user_id).bind(clerk_id).bind(log.now);
    bind_log(query, log.record, log.actor, log.changes).execute(tx).await?;
    Ok(())
}

pub(super) async fn record_event(
    tx: &mut PgConnection,
    event: &EventContext,
    clerk_id: &str,
    result: &WriteResult,
) -> Result<()> {
    sqlx::query(
        "insert into processed_events (idempotency_key, clerk_id, outcome, result, processed_at, source, kind) \
         values ($1, $2, $3, $4, now(), $5, $6) on conflict do nothing",
    )
    .bind(&event.idempotency_key)
    .bind(clerk_id)
    .bind(result.outcome.map_or("none", write::Outcome::as_str))
    .bind(Json(result))
    .bind(&event.source)
    .bind(&event.kind)
    .execute(tx)
    .await?;
    Ok(())
}

/// Binds a user key as `$1`: the id as a uuid, or the `clerk_id`.
pub(super) fn bind_key<'q>(
    query: Query<'q, Postgres, PgArguments>,
    key: &'q UserKey,
) -> Query<'q, Postgres, PgArguments> {
    match key {
        UserKey::Id(id) => query.bind(*id),
        UserKey::ClerkId(clerk_id) => query.bind(clerk_id.as_str()),
    }
}

/// The `where` clause and its one bind value for a user key. Both arms hit an
/// index (the cast is on the parameter, not the column).
pub(super) fn user_where(key: &UserKey) -> (&'static str, String) {
    match key {
        UserKey::Id(id) => ("u.id = $1::text::uuid", id.to_string()),
        UserKey::ClerkId(clerk_id) => ("u.clerk_id = $1", clerk_id.clone()),
    }
}

pub(super) async fn is_tombstoned(tx: &mut PgConnection, key: &UserKey) -> Result<bool> {
    let found = bind_key(sqlx::query(rows::tombstone_sql(key)), key).fetch_optional(tx).await?;
    Ok(found.is_some())
}

pub(super) async fn write_changes(
    tx: &mut PgConnection,
    user_id: Uuid,
    changes: BTreeMap<String, Option<Value>>,
    mut entries: BTreeMap<String, DataEntry>,
    now: DateTime<Utc>,
) -> Result<BTreeMap<String, DataEntry>> {
    // One statement for every key set and one for every key removed, however
    // many keys an edit touches (a login sets three).
    let (mut set_keys, mut values, mut removed) = (Vec::new(), Vec::new(), Vec::new());
    for (key, change) in changes {
        match change {
            Some(value) => {
                set_keys.push(key);
                values.push(Json(value));
            }
            None => removed.push(key),
        }
    }
    if !set_keys.is_empty() {
        let rows: Vec<EntryRow> = sqlx::query_as(UPSERT_ENTRIES)
            .bind(user_id)
            .bind(&set_keys)
            .bind(&values)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
        for row in rows {
            let entry = entry(row);
            entries.insert(entry.key.clone(), entry);
        }
    }
    if !removed.is_empty() {
        sqlx::query("delete from user_data where user_id = $1 and key = any($2)")
            .bind(user_id)
            .bind(&removed)
            .execute(&mut *tx)
            .await?;
        for key in &removed {
            entries.remove(key);
        }
    }
    Ok(entries)
}

/// Sets user `$1`'s keys `$2` to the values `$3` (arrays of one length), at
/// `$4`: [`rows::UPSERT_ENTRY`] for many keys at once.
const UPSERT_ENTRIES: &str = "insert into user_data (user_id, key, value, created_at, updated_at) \
     select $1, k, v, $4, $4 from unnest($2::text[], $3::jsonb[]) as t(k, v) \
     on conflict (user_id, key) do update \
     set value = excluded.value, updated_at = excluded.updated_at, version = user_data.version + 1 \
     returning key, value, version, updated_at";
