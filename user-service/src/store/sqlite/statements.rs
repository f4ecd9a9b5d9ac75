//! The SQL of each write step on SQLite.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Sqlite, SqliteConnection, query::Query, sqlite::SqliteArguments, types::Json};
use uuid::{Uuid, fmt::Hyphenated};

use crate::store::{
    DataEntry,
    rows::{self, EntryRow, UserRow, entry},
    txn::Record,
};
use crate::{
    domain::error::Result,
    domain::{
        change::{Actor, NewChange},
        keys,
        limits::NAME_HISTORY_LIMIT,
        user::{User, UserKey},
        write::{self, Change, Existing},
    },
};

pub(super) fn text_id(id: Uuid) -> Hyphenated {
    id.hyphenated()
}

pub(super) async fn record_event(
    tx: &mut SqliteConnection,
    (event, clerk_id, result): Record<'_>,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "insert into processed_events (idempotency_key, clerk_id, outcome, result, processed_at, source, kind) \
         values ($1, $2, $3, $4, $5, $6, $7) on conflict do nothing",
    )
    .bind(&event.idempotency_key)
    .bind(clerk_id)
    .bind(result.outcome.map_or("none", write::Outcome::as_str))
    .bind(Json(result))
    .bind(now)
    .bind(&event.source)
    .bind(&event.kind)
    .execute(tx)
    .await?;
    Ok(())
}

pub(super) async fn load_existing(tx: &mut SqliteConnection, key: &UserKey) -> Result<Existing> {
    let row: Option<UserRow<Hyphenated>> = sqlx::query_as(sqlx::AssertSqlSafe(rows::user_sql(key)))
        .bind(key_value(key))
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(row) = row {
        return Ok(Existing::Present(row.try_into()?));
    }
    Ok(if is_tombstoned(tx, key).await? { Existing::Deleted } else { Existing::Missing })
}

pub(super) async fn upsert_data(
    tx: &mut SqliteConnection,
    user_id: Uuid,
    data: &[(&'static str, Value)],
    now: DateTime<Utc>,
) -> Result<()> {
    for (key, value) in data {
        sqlx::query(rows::UPSERT_ENTRY)
            .bind(text_id(user_id))
            .bind(key)
            .bind(Json(value))
            .bind(now)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

pub(super) async fn append_name_history(
    tx: &mut SqliteConnection,
    user_id: Uuid,
    entry: &Value,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "insert into user_data (user_id, key, value, created_at, updated_at) \
         values ($1, $2, json_array(json($3)), $4, $4) \
         on conflict (user_id, key) do update set \
           value = case when json_type(user_data.value) <> 'array' then excluded.value \
                        when json_array_length(user_data.value) >= $5 \
                          then json_insert(json_remove(user_data.value, '$[0]'), '$[#]', json($3)) \
                        else json_insert(user_data.value, '$[#]', json($3)) end, \
           updated_at = excluded.updated_at, version = user_data.version + 1",
    )
    .bind(text_id(user_id))
    .bind(keys::NAME_HISTORY)
    .bind(Json(entry))
    .bind(now)
    .bind(NAME_HISTORY_LIMIT as i64)
    .execute(tx)
    .await?;
    Ok(())
}

pub(super) async fn apply(tx: &mut SqliteConnection, change: &Change, now: DateTime<Utc>) -> Result<()> {
    match change {
        Change::None => {}
        Change::Insert { user, data } => {
            let query = sqlx::query(
                "insert into users (id, clerk_id, email, first_name, last_name, username, image_url, \
                 role, status, created_at, updated_at, source_updated_at, version) \
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            )
            .bind(text_id(user.id))
            .bind(&user.clerk_id);
            bind_profile(query, user)
                .bind(user.created_at)
                .bind(user.updated_at)
                .bind(user.source_updated_at)
                .bind(user.version)
                .execute(&mut *tx)
                .await
                .map_err(|e| crate::store::unique_violation(e, &user.clerk_id))?;
            upsert_data(tx, user.id, data, now).await?;
        }
        Change::Update { user, data, name_entry } => {
            let query = sqlx::query(
                "update users set email = $2, first_name = $3, last_name = $4, username = $5, \
                 image_url = $6, role = $7, status = $8, updated_at = $9, source_updated_at = $10, \
                 version = $11 where id = $1",
            )
            .bind(text_id(user.id));
            bind_profile(query, user)
                .bind(user.updated_at)
                .bind(user.source_updated_at)
                .bind(user.version)
                .execute(&mut *tx)
                .await?;
            upsert_data(tx, user.id, data, now).await?;
            if let Some(entry) = name_entry {
                append_name_history(tx, user.id, entry, now).await?;
            }
        }
        Change::Delete { user_id, clerk_id } => {
            if let Some(id) = user_id {
                sqlx::query("delete from users where id = $1").bind(text_id(*id)).execute(&mut *tx).await?;
            }
            sqlx::query(
                "insert into deleted_users (clerk_id, user_id, deleted_at) values ($1, $2, $3) \
                 on conflict (clerk_id) do nothing",
            )
            .bind(clerk_id)
            .bind(user_id.map(text_id))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            erase_user(tx, clerk_id).await?;
        }
    }
    Ok(())
}

/// Binds a user's profile, role and status (7 parameters).
pub(super) fn bind_profile<'q>(
    query: Query<'q, Sqlite, SqliteArguments>,
    user: &'q User,
) -> Query<'q, Sqlite, SqliteArguments> {
    query
        .bind(&user.profile.email)
        .bind(&user.profile.first_name)
        .bind(&user.profile.last_name)
        .bind(&user.profile.username)
        .bind(&user.profile.image_url)
        .bind(user.role.as_str())
        .bind(user.status.as_str())
}

/// A deletion takes the personal values out of the user's earlier changes
/// (keeping what happened, when and by whom) and out of the results recorded
/// for their earlier events, which a redelivery would otherwise give back.
pub(super) async fn erase_user(tx: &mut SqliteConnection, clerk_id: &str) -> Result<()> {
    sqlx::query(
        "update changes set before = null, after = null, erased = 1 where clerk_id = $1 and not erased",
    )
    .bind(clerk_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "update processed_events set result = json_remove(result, '$.user') \
         where clerk_id = $1 and result is not null",
    )
    .bind(clerk_id)
    .execute(tx)
    .await?;
    Ok(())
}

pub(super) async fn append_changes(
    tx: &mut SqliteConnection,
    changes: &[NewChange],
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<()> {
    for change in changes {
        sqlx::query(
            "insert into changes (at, user_id, clerk_id, kind, key, before, after, actor_client, \
             actor_event_id, actor_event_type, actor_changed_by, actor_request_id) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(now)
        .bind(change.user_id.map(text_id))
        .bind(&change.clerk_id)
        .bind(change.kind.as_str())
        .bind(&change.key)
        .bind(change.before.as_ref().map(Json))
        .bind(change.after.as_ref().map(Json))
        .bind(&actor.client)
        .bind(&actor.event_id)
        .bind(&actor.event_type)
        .bind(&actor.changed_by)
        .bind(&actor.request_id)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// The `where` clause and its one bind value for a user key.
pub(super) fn user_where(key: &UserKey) -> (&'static str, String) {
    match key {
        UserKey::Id(_) => ("u.id = $1", key_value(key)),
        UserKey::ClerkId(_) => ("u.clerk_id = $1", key_value(key)),
    }
}

/// A user key as bound: the id as hyphenated text, or the `clerk_id`.
pub(super) fn key_value(key: &UserKey) -> String {
    match key {
        UserKey::Id(id) => id.hyphenated().to_string(),
        UserKey::ClerkId(clerk_id) => clerk_id.clone(),
    }
}

/// A list bound as one JSON array, for `in (select value from json_each(?))`.
pub(super) fn json_list<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

pub(super) async fn is_tombstoned(tx: &mut SqliteConnection, key: &UserKey) -> Result<bool> {
    let found = sqlx::query(rows::tombstone_sql(key)).bind(key_value(key)).fetch_optional(tx).await?;
    Ok(found.is_some())
}

pub(super) async fn write_changes(
    tx: &mut SqliteConnection,
    user_id: Uuid,
    changes: BTreeMap<String, Option<Value>>,
    mut entries: BTreeMap<String, DataEntry>,
    now: DateTime<Utc>,
) -> Result<BTreeMap<String, DataEntry>> {
    for (key, change) in changes {
        match change {
            Some(value) => {
                let row: EntryRow = sqlx::query_as(rows::UPSERT_ENTRY)
                    .bind(text_id(user_id))
                    .bind(&key)
                    .bind(Json(&value))
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                entries.insert(key, entry(row));
            }
            None => {
                sqlx::query(rows::DELETE_ENTRY).bind(text_id(user_id)).bind(&key).execute(&mut *tx).await?;
                entries.remove(&key);
            }
        }
    }
    Ok(entries)
}
