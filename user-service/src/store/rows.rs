//! Row shapes and row mapping both backends share; the id column's type `I`
//! is how the backend stores user ids (a native uuid or hyphenated text).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use super::{DataEntry, PoolStats, UserValue};
use crate::domain::{
    error::{Error, Result},
    user::{Profile, Role, Status, User, UserKey},
    write::{EventContext, WriteResult},
};

/// Columns of a user row, in [`UserRow`]'s order.
pub(super) const USER_COLUMNS: &str = "id, clerk_id, email, first_name, last_name, username, image_url, \
     role, status, created_at, updated_at, source_updated_at, version";

/// A user row as read.
#[derive(sqlx::FromRow)]
pub(super) struct UserRow<I> {
    pub id: I,
    pub clerk_id: String,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub username: Option<String>,
    pub image_url: Option<String>,
    pub role: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub source_updated_at: Option<i64>,
    pub version: i64,
}

impl<I: Into<Uuid>> TryFrom<UserRow<I>> for User {
    type Error = Error;

    fn try_from(row: UserRow<I>) -> Result<Self> {
        Ok(Self {
            id: row.id.into(),
            clerk_id: row.clerk_id,
            profile: Profile {
                email: row.email,
                first_name: row.first_name,
                last_name: row.last_name,
                username: row.username,
                image_url: row.image_url,
            },
            role: Role::parse(&row.role)
                .ok_or_else(|| Error::Internal(format!("bad role {:?}", row.role)))?,
            status: Status::parse(&row.status)
                .ok_or_else(|| Error::Internal(format!("bad status {:?}", row.status)))?,
            created_at: row.created_at,
            updated_at: row.updated_at,
            source_updated_at: row.source_updated_at,
            version: row.version,
        })
    }
}

/// Maps optional user rows: absent is `NOT_FOUND` for `key`.
pub(super) fn found_user<I: Into<Uuid>>(row: Option<UserRow<I>>, key: &UserKey) -> Result<User> {
    row.ok_or_else(|| Error::NotFound { resource: "user", key: key.to_string() })?.try_into()
}

/// A user data row: key, value, version, updated_at.
pub(super) type EntryRow = (String, Json<Value>, i64, DateTime<Utc>);

/// Maps a user data row.
pub(super) fn entry((key, value, version, updated_at): EntryRow) -> DataEntry {
    DataEntry { key, value: value.0, version, updated_at }
}

/// A row of a `users left join user_data` read: the user's id, then an
/// entry's columns, null when the user has none of the keys.
pub(super) type JoinedRow<I> = (I, Option<String>, Option<Json<Value>>, Option<i64>, Option<DateTime<Utc>>);

/// The entries of a `users left join user_data` read: no rows means no such
/// user; a user without the keys gives one row of nulls.
pub(super) fn joined_entries<I>(rows: Vec<JoinedRow<I>>, key: &UserKey) -> Result<Vec<DataEntry>> {
    if rows.is_empty() {
        return Err(Error::NotFound { resource: "user", key: key.to_string() });
    }
    Ok(rows
        .into_iter()
        .filter_map(|(_, key, value, version, at)| Some(entry((key?, value?, version?, at?))))
        .collect())
}

/// Maps `(id, clerk_id, value)` rows of [`super::Store::data_for_users`].
pub(super) fn user_values<I: Into<Uuid>>(rows: Vec<(I, String, Option<Json<Value>>)>) -> Vec<UserValue> {
    rows.into_iter()
        .map(|(id, clerk_id, value)| UserValue { id: id.into(), clerk_id, value: value.map(|v| v.0) })
        .collect()
}

/// A pool's connections right now (waiting calls are known only to
/// [`super::observed::Observed`]).
pub(super) fn pool_stats<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> PoolStats {
    let idle = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX);
    PoolStats { in_use: pool.size().saturating_sub(idle), idle, waiting: 0 }
}

/// The idempotency record of an event, if any (see [`super::replay`]).
pub(super) const RECORDED: &str = "select clerk_id, kind, result from processed_events \
     where idempotency_key = $1 and source in ($2, '') limit 1";

/// Sets one user data key (`$1` user, `$2` key, `$3` value, `$4` time) and
/// returns the entry.
pub(super) const UPSERT_ENTRY: &str = "insert into user_data (user_id, key, value, created_at, updated_at) \
     values ($1, $2, $3, $4, $4) on conflict (user_id, key) do update \
     set value = excluded.value, updated_at = excluded.updated_at, version = user_data.version + 1 \
     returning key, value, version, updated_at";

/// Deletes one user data key (`$1` user, `$2` key).
pub(super) const DELETE_ENTRY: &str = "delete from user_data where user_id = $1 and key = $2";

/// How many `custom.*` keys a user (`$1`) has: a key range rather than LIKE,
/// so the primary key's index serves it.
pub(super) const CUSTOM_KEY_COUNT: &str =
    "select count(*) from user_data where user_id = $1 and key >= 'custom.' and key < 'custom/'";

/// Removes idempotency records older than `$1`.
pub(super) const PRUNE_EVENTS: &str = "delete from processed_events where processed_at < $1";

/// The mark up to which changes were pruned.
pub(super) const PRUNED_THROUGH: &str = "select pruned_txid, pruned_id from change_log_state";

/// A tombstone by user id (`$1`) or by `clerk_id` (`$1`).
pub(super) fn tombstone_sql(key: &UserKey) -> &'static str {
    match key {
        UserKey::Id(_) => "select 1 from deleted_users where user_id = $1",
        UserKey::ClerkId(_) => "select 1 from deleted_users where clerk_id = $1",
    }
}

/// A user row by id (`$1`) or by `clerk_id` (`$1`).
pub(super) fn user_sql(key: &UserKey) -> String {
    let column = match key {
        UserKey::Id(_) => "id",
        UserKey::ClerkId(_) => "clerk_id",
    };
    format!("select {USER_COLUMNS} from users where {column} = $1")
}

/// The recorded answer of `event`, checked against `clerk_id` and the kind of
/// write (see [`super::replay`]), on either backend.
pub(super) async fn recorded_result<'c, DB>(
    db: impl sqlx::Executor<'c, Database = DB>,
    event: &EventContext,
    clerk_id: &str,
) -> Result<Option<WriteResult>>
where
    DB: sqlx::Database,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    super::Recorded: for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let row: Option<super::Recorded> = sqlx::query_as(RECORDED)
        .bind(event.idempotency_key.as_str())
        .bind(event.source.as_str())
        .fetch_optional(db)
        .await?;
    super::replay(row, clerk_id, event)
}
