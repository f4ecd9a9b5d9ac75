//! PostgreSQL store: the production backend.

use std::{collections::BTreeMap, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{
    PgConnection, PgPool, Postgres, Transaction,
    postgres::{PgConnectOptions, PgPoolOptions},
    types::Json,
};
use uuid::Uuid;

use super::{
    ConnectOptions, DataEdit, DataEntry, DataWrite, PoolStats, Store, UserFilter, UserValue, migrate_error,
    txn::{self, DataTx, Record, UserTx},
};
use crate::{
    domain::{
        user::{Profile, Role, Status, User, UserKey},
        write::{
            self, Change, CreateUser, DeleteUser, EventContext, Existing, NAME_HISTORY_LIMIT, UpdateUser,
            WriteResult, keys,
        },
    },
    error::{Error, Result},
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

const USER_COLUMNS: &str = "id, clerk_id, email, first_name, last_name, username, image_url, \
     role, status, created_at, updated_at, source_updated_at, version";

/// A [`Store`] on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects (failing fast if the server is unreachable) and migrates.
    pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Self> {
        let connect: PgConnectOptions =
            url.parse().map_err(|e| Error::Unavailable(format!("invalid DATABASE_URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await?;
        if options.migrate {
            MIGRATOR.run(&pool).await.map_err(migrate_error)?;
        }
        Ok(Self { pool })
    }

    /// Wraps an existing pool (already migrated), e.g. from `#[sqlx::test]`.
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The migrator, for tests that prepare their own databases.
    pub fn migrator() -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
    }
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: Uuid,
    clerk_id: String,
    email: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    username: Option<String>,
    image_url: Option<String>,
    role: String,
    status: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    source_updated_at: Option<i64>,
    version: i64,
}

impl TryFrom<UserRow> for User {
    type Error = Error;

    fn try_from(row: UserRow) -> Result<Self> {
        Ok(Self {
            id: row.id,
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

/// Starts a transaction. For a `clerk_id`, it then takes a
/// transaction-scoped advisory lock on it, which serialises every write for
/// that id, including for users that do not exist yet (a row lock cannot cover
/// a missing row): a concurrent create and delete must not interleave.
async fn begin(pool: &PgPool, key: &UserKey) -> Result<Transaction<'static, Postgres>> {
    let mut tx = pool.begin().await?;
    if let UserKey::ClerkId(clerk_id) = key {
        // Its own statement, not part of BEGIN: if the caller gives up while
        // this waits, dropping the transaction rolls it back and frees the
        // lock. A lock taken by the BEGIN statement itself would stay with the
        // pooled connection, idle in a transaction, blocking the user.
        sqlx::query("select pg_advisory_xact_lock($1)").bind(lock_key(clerk_id)).execute(&mut *tx).await?;
    }
    Ok(tx)
}

/// A stable 64-bit lock key for a `clerk_id`: the first 8 bytes of its
/// SHA-256, big-endian. The `users_refuse_deleted` trigger computes the same.
fn lock_key(clerk_id: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(clerk_id.as_bytes());
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// Inserts a new user, its initial data and its event record in one
/// autocommit statement, or nothing at all when the `clerk_id` exists (the
/// unique index), is deleted (the `users_refuse_deleted` trigger) or the
/// event was recorded for another user (the primary key; an error).
const INSERT_IF_NEW: &str = "with u as (insert into users (id, clerk_id, email, first_name, last_name, username, \
         image_url, role, status, created_at, updated_at, source_updated_at, version) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         on conflict (clerk_id) do nothing returning id), \
     d as (insert into user_data (user_id, key, value, created_at, updated_at) \
         select u.id, k, v, $14, $14 from u, unnest($15::text[], $16::jsonb[]) as t(k, v)), \
     e as (insert into processed_events (idempotency_key, clerk_id, outcome, result, processed_at) \
         select $17, $2, $18, $19, now() from u where $17::text is not null) \
     select count(*) from u";

/// The fast path of a create: one round trip when the user is new, which is
/// what almost every `user.created` is. `None` means "not new after all"
/// (exists, deleted, replayed, raced): the caller runs the full write, which
/// decides with the user locked.
async fn create_if_new(pool: &PgPool, cmd: &CreateUser) -> Result<Option<WriteResult>> {
    let now = super::now();
    let plan = write::plan_create(cmd.clone(), Existing::Missing, now)?;
    let Change::Insert { user, data } = &plan.change else { return Ok(None) };
    let (keys, values): (Vec<&str>, Vec<Json<&Value>>) = data.iter().map(|(k, v)| (*k, Json(v))).unzip();
    let inserted: Result<i64, sqlx::Error> = sqlx::query_scalar(INSERT_IF_NEW)
        .bind(user.id)
        .bind(&user.clerk_id)
        .bind(&user.profile.email)
        .bind(&user.profile.first_name)
        .bind(&user.profile.last_name)
        .bind(&user.profile.username)
        .bind(&user.profile.image_url)
        .bind(user.role.as_str())
        .bind(user.status.as_str())
        .bind(user.created_at)
        .bind(user.updated_at)
        .bind(user.source_updated_at)
        .bind(user.version)
        .bind(now)
        .bind(keys)
        .bind(values)
        .bind(cmd.event.as_ref().map(|e| e.idempotency_key.as_str()))
        .bind(plan.result.outcome.map_or("none", write::Outcome::as_str))
        .bind(Json(&plan.result))
        .fetch_one(pool)
        .await;
    match inserted {
        Ok(1) => Ok(Some(plan.result)),
        Ok(_) => Ok(None),
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Everything a user write needs to know, read in one statement after the
/// lock: the idempotency record, the tombstone and the user row (locked).
#[derive(sqlx::FromRow)]
struct StateRow {
    replay_clerk_id: Option<String>,
    replay_result: Option<Json<WriteResult>>,
    deleted: bool,
    id: Option<Uuid>,
    clerk_id: Option<String>,
    email: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    username: Option<String>,
    image_url: Option<String>,
    role: Option<String>,
    status: Option<String>,
    created_at: Option<DateTime<Utc>>,
    updated_at: Option<DateTime<Utc>>,
    source_updated_at: Option<i64>,
    version: Option<i64>,
}

impl StateRow {
    fn user(self) -> Result<Option<User>> {
        let (
            Some(id),
            Some(clerk_id),
            Some(role),
            Some(status),
            Some(created_at),
            Some(updated_at),
            Some(version),
        ) = (self.id, self.clerk_id, self.role, self.status, self.created_at, self.updated_at, self.version)
        else {
            return Ok(None);
        };
        let row = UserRow {
            id,
            clerk_id,
            email: self.email,
            first_name: self.first_name,
            last_name: self.last_name,
            username: self.username,
            image_url: self.image_url,
            role,
            status,
            created_at,
            updated_at,
            source_updated_at: self.source_updated_at,
            version,
        };
        Ok(Some(row.try_into()?))
    }
}

/// Reads the replay record (for an event), the tombstone and the locked user.
async fn load_state(
    tx: &mut PgConnection,
    key: &UserKey,
    event: Option<&EventContext>,
) -> Result<(Option<WriteResult>, Existing)> {
    let (user_filter, tomb_filter, bind) = match key {
        UserKey::Id(id) => ("id = $1::text::uuid", "user_id = $1::text::uuid", id.to_string()),
        UserKey::ClerkId(clerk_id) => ("clerk_id = $1", "clerk_id = $1", clerk_id.clone()),
    };
    let row: StateRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select pe.clerk_id as replay_clerk_id, pe.result as replay_result, \
                exists(select 1 from deleted_users where {tomb_filter}) as deleted, u.* \
         from (select 1) as one \
         left join processed_events pe on pe.idempotency_key = $2 \
         left join lateral (select {USER_COLUMNS} from users where {user_filter} for update) u on true"
    )))
    .bind(bind)
    .bind(event.map(|e| e.idempotency_key.as_str()))
    .fetch_one(tx)
    .await?;
    let recorded = row.replay_clerk_id.clone().map(|c| (c, row.replay_result.clone().map(|r| r.0)));
    let replayed = match (recorded, key) {
        (Some(recorded), UserKey::ClerkId(clerk_id)) => super::replay(Some(recorded), clerk_id)?,
        _ => None,
    };
    let deleted = row.deleted;
    let existing = match row.user()? {
        Some(user) => Existing::Present(user),
        None if deleted => Existing::Deleted,
        None => Existing::Missing,
    };
    Ok((replayed, existing))
}

/// Parameters `$n` of the idempotency record, shared by every write statement
/// so each change and its record are one statement.
const RECORD_EVENT: &str = "e as (insert into processed_events (idempotency_key, clerk_id, outcome, result, processed_at) \
     select $20, $21, $22, $23, now() where $20::text is not null on conflict do nothing)";

/// Applies a planned change and records the event in one statement.
async fn apply(
    tx: &mut PgConnection,
    change: &Change,
    record: Option<Record<'_>>,
    now: DateTime<Utc>,
) -> Result<()> {
    let (keys, values): (Vec<&str>, Vec<Json<&Value>>) = match change {
        Change::Insert { data, .. } | Change::Update { data, .. } => {
            data.iter().map(|(k, v)| (*k, Json(v))).unzip()
        }
        Change::None | Change::Delete { .. } => (Vec::new(), Vec::new()),
    };
    let name_entry = match change {
        Change::Update { name_entry, .. } => name_entry.as_ref().map(Json),
        _ => None,
    };
    let sql = match change {
        Change::None => format!("with {RECORD_EVENT} select 1"),
        Change::Insert { .. } => format!(
            "with u as (insert into users (id, clerk_id, email, first_name, last_name, username, image_url, \
                 role, status, created_at, updated_at, source_updated_at, version) \
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) returning id), \
             d as (insert into user_data (user_id, key, value, created_at, updated_at) \
                 select u.id, k, v, $14, $14 from u, unnest($15::text[], $16::jsonb[]) as t(k, v)), \
             {RECORD_EVENT} select 1"
        ),
        Change::Update { .. } => format!(
            "with u as (update users set email = $3, first_name = $4, last_name = $5, username = $6, \
                 image_url = $7, role = $8, status = $9, updated_at = $11, source_updated_at = $12, \
                 version = $13 where id = $1), \
             d as (insert into user_data (user_id, key, value, created_at, updated_at) \
                 select $1, k, v, $14, $14 from unnest($15::text[], $16::jsonb[]) as t(k, v) \
                 on conflict (user_id, key) do update \
                 set value = excluded.value, updated_at = excluded.updated_at, version = user_data.version + 1), \
             n as (insert into user_data (user_id, key, value, created_at, updated_at) \
                 select $1, $17, jsonb_build_array($18::jsonb), $14, $14 where $18::jsonb is not null \
                 on conflict (user_id, key) do update set \
                   value = case when jsonb_typeof(user_data.value) <> 'array' then excluded.value \
                                when jsonb_array_length(user_data.value) >= $19 \
                                  then (user_data.value - 0) || excluded.value \
                                else user_data.value || excluded.value end, \
                   updated_at = excluded.updated_at, version = user_data.version + 1), \
             {RECORD_EVENT} select 1"
        ),
        Change::Delete { .. } => format!(
            "with u as (delete from users where id = $1), \
             t as (insert into deleted_users (clerk_id, user_id, deleted_at) values ($2, $1, $14) \
                 on conflict (clerk_id) do nothing), \
             {RECORD_EVENT} select 1"
        ),
    };
    let user = match change {
        Change::Insert { user, .. } | Change::Update { user, .. } => Some(user),
        Change::None | Change::Delete { .. } => None,
    };
    let (id, clerk_id) = match change {
        Change::Delete { user_id, clerk_id } => (*user_id, Some(clerk_id.as_str())),
        _ => (user.map(|u| u.id), user.map(|u| u.clerk_id.as_str())),
    };
    // Every statement takes the same 23 parameters; each uses what it needs.
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(clerk_id)
        .bind(user.and_then(|u| u.profile.email.as_deref()))
        .bind(user.and_then(|u| u.profile.first_name.as_deref()))
        .bind(user.and_then(|u| u.profile.last_name.as_deref()))
        .bind(user.and_then(|u| u.profile.username.as_deref()))
        .bind(user.and_then(|u| u.profile.image_url.as_deref()))
        .bind(user.map(|u| u.role.as_str()))
        .bind(user.map(|u| u.status.as_str()))
        .bind(user.map(|u| u.created_at))
        .bind(user.map(|u| u.updated_at))
        .bind(user.and_then(|u| u.source_updated_at))
        .bind(user.map(|u| u.version))
        .bind(now)
        .bind(keys)
        .bind(values)
        .bind(keys::NAME_HISTORY)
        .bind(name_entry)
        .bind(NAME_HISTORY_LIMIT as i32)
        .bind(record.map(|(e, _, _)| e.idempotency_key.as_str()))
        .bind(record.map(|(_, c, _)| c))
        .bind(record.map(|(_, _, r)| r.outcome.map_or("none", write::Outcome::as_str)))
        .bind(record.map(|(_, _, r)| Json(r)))
        .execute(tx)
        .await
        .map_err(|e| match user {
            Some(u) => super::unique_violation(e, &u.clerk_id),
            None => e.into(),
        })?;
    Ok(())
}

async fn recorded_result(
    tx: &mut PgConnection,
    event: &EventContext,
    clerk_id: &str,
) -> Result<Option<WriteResult>> {
    let row: Option<(String, Option<Json<WriteResult>>)> =
        sqlx::query_as("select clerk_id, result from processed_events where idempotency_key = $1")
            .bind(&event.idempotency_key)
            .fetch_optional(tx)
            .await?;
    super::replay(row.map(|(c, r)| (c, r.map(|j| j.0))), clerk_id)
}

async fn record_event(
    tx: &mut PgConnection,
    event: &EventContext,
    clerk_id: &str,
    result: &WriteResult,
) -> Result<()> {
    sqlx::query(
        "insert into processed_events (idempotency_key, clerk_id, outcome, result, processed_at) \
         values ($1, $2, $3, $4, now()) on conflict do nothing",
    )
    .bind(&event.idempotency_key)
    .bind(clerk_id)
    .bind(result.outcome.map_or("none", write::Outcome::as_str))
    .bind(Json(result))
    .execute(tx)
    .await?;
    Ok(())
}

/// The `where` clause and its one bind value for a user key. Both arms hit an
/// index (the cast is on the parameter, not the column).
fn user_where(key: &UserKey) -> (&'static str, String) {
    match key {
        UserKey::Id(id) => ("u.id = $1::text::uuid", id.to_string()),
        UserKey::ClerkId(clerk_id) => ("u.clerk_id = $1", clerk_id.clone()),
    }
}

type EntryRow = (String, Json<Value>, i64, DateTime<Utc>);

fn entry((key, value, version, updated_at): EntryRow) -> DataEntry {
    DataEntry { key, value: value.0, version, updated_at }
}

async fn is_tombstoned(tx: &mut PgConnection, key: &UserKey) -> Result<bool> {
    let found = match key {
        UserKey::Id(id) => {
            sqlx::query("select 1 from deleted_users where user_id = $1").bind(id).fetch_optional(tx).await?
        }
        UserKey::ClerkId(c) => {
            sqlx::query("select 1 from deleted_users where clerk_id = $1").bind(c).fetch_optional(tx).await?
        }
    };
    Ok(found.is_some())
}

async fn write_changes(
    tx: &mut PgConnection,
    user_id: Uuid,
    changes: BTreeMap<String, Option<Value>>,
    mut entries: BTreeMap<String, DataEntry>,
    now: DateTime<Utc>,
) -> Result<BTreeMap<String, DataEntry>> {
    for (key, change) in changes {
        match change {
            Some(value) => {
                let row: EntryRow = sqlx::query_as(
                    "insert into user_data (user_id, key, value, created_at, updated_at) values ($1, $2, $3, $4, $4) \
                     on conflict (user_id, key) do update \
                     set value = excluded.value, updated_at = excluded.updated_at, version = user_data.version + 1 \
                     returning key, value, version, updated_at",
                )
                .bind(user_id)
                .bind(&key)
                .bind(Json(&value))
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                entries.insert(key, entry(row));
            }
            None => {
                sqlx::query("delete from user_data where user_id = $1 and key = $2")
                    .bind(user_id)
                    .bind(&key)
                    .execute(&mut *tx)
                    .await?;
                entries.remove(&key);
            }
        }
    }
    Ok(entries)
}

/// A transaction, with the steps of the shared write algorithms.
struct PgTx(Transaction<'static, Postgres>);

#[async_trait]
impl UserTx for PgTx {
    async fn load(
        &mut self,
        key: &UserKey,
        event: Option<&EventContext>,
    ) -> Result<(Option<WriteResult>, Existing)> {
        load_state(&mut self.0, key, event).await
    }

    async fn apply(&mut self, change: &Change, record: Option<Record<'_>>, now: DateTime<Utc>) -> Result<()> {
        apply(&mut self.0, change, record, now).await
    }

    async fn commit(self) -> Result<()> {
        Ok(self.0.commit().await?)
    }
}

#[async_trait]
impl DataTx for PgTx {
    async fn lock_user(&mut self, user: &UserKey) -> Result<Option<(Uuid, String)>> {
        let (filter, bind) = user_where(user);
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select u.id, u.clerk_id from users u where {filter} for update"
        )))
        .bind(bind)
        .fetch_optional(&mut *self.0)
        .await?)
    }

    async fn is_tombstoned(&mut self, user: &UserKey) -> Result<bool> {
        is_tombstoned(&mut self.0, user).await
    }

    async fn entries(&mut self, user_id: Uuid, keys: &[&str]) -> Result<Vec<DataEntry>> {
        let rows: Vec<EntryRow> = sqlx::query_as(
            "select key, value, version, updated_at from user_data where user_id = $1 and key = any($2)",
        )
        .bind(user_id)
        .bind(keys)
        .fetch_all(&mut *self.0)
        .await?;
        Ok(rows.into_iter().map(entry).collect())
    }

    async fn custom_key_count(&mut self, user_id: Uuid) -> Result<u64> {
        // A key range rather than LIKE, so the primary key's index serves it.
        let (count,): (i64,) = sqlx::query_as(
            "select count(*) from user_data where user_id = $1 and key >= 'custom.' and key < 'custom/'",
        )
        .bind(user_id)
        .fetch_one(&mut *self.0)
        .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn recorded(&mut self, event: &EventContext, clerk_id: &str) -> Result<Option<WriteResult>> {
        recorded_result(&mut self.0, event, clerk_id).await
    }

    async fn write_changes(
        &mut self,
        user_id: Uuid,
        changes: BTreeMap<String, Option<Value>>,
        entries: BTreeMap<String, DataEntry>,
        now: DateTime<Utc>,
    ) -> Result<BTreeMap<String, DataEntry>> {
        write_changes(&mut self.0, user_id, changes, entries, now).await
    }

    async fn record(&mut self, (event, clerk_id, result): Record<'_>, _now: DateTime<Utc>) -> Result<()> {
        record_event(&mut self.0, event, clerk_id, result).await
    }

    async fn commit(self) -> Result<()> {
        Ok(self.0.commit().await?)
    }
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    fn pool_stats(&self) -> PoolStats {
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
        PoolStats { in_use: self.pool.size().saturating_sub(idle), idle, waiting: 0 }
    }

    async fn create_user(&self, cmd: CreateUser) -> Result<WriteResult> {
        if let Some(created) = create_if_new(&self.pool, &cmd).await? {
            return Ok(created);
        }
        let key = UserKey::ClerkId(cmd.clerk_id.clone());
        let event = cmd.event.clone();
        txn::write_user(PgTx(begin(&self.pool, &key).await?), &key, event.as_ref(), |existing, now| {
            write::plan_create(cmd, existing, now)
        })
        .await
    }

    async fn get_user(&self, key: &UserKey) -> Result<User> {
        let row: Option<UserRow> = match key {
            UserKey::Id(id) => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!("select {USER_COLUMNS} from users where id = $1")))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?
            }
            UserKey::ClerkId(c) => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "select {USER_COLUMNS} from users where clerk_id = $1"
                )))
                .bind(c)
                .fetch_optional(&self.pool)
                .await?
            }
        };
        row.ok_or_else(|| Error::NotFound { resource: "user", key: key.to_string() })?.try_into()
    }

    async fn list_users(&self, filter: &UserFilter, after: Option<Uuid>, limit: u32) -> Result<Vec<User>> {
        let rows: Vec<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select {USER_COLUMNS} from users \
             where ($1::uuid is null or id > $1) and ($2::text is null or status = $2) \
               and ($3::text is null or role = $3) and ($4::text is null or lower(email) = lower($4)) \
             order by id limit $5"
        )))
        .bind(after)
        .bind(filter.status.map(Status::as_str))
        .bind(filter.role.map(Role::as_str))
        .bind(&filter.email)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(User::try_from).collect()
    }

    async fn update_user(&self, cmd: UpdateUser) -> Result<WriteResult> {
        let key = cmd.key.clone();
        let event = cmd.event.clone();
        txn::write_user(PgTx(begin(&self.pool, &key).await?), &key, event.as_ref(), |existing, now| {
            write::plan_update(cmd, existing, now)
        })
        .await
    }

    async fn delete_user(&self, cmd: DeleteUser) -> Result<WriteResult> {
        let key = cmd.key.clone();
        let event = cmd.event.clone();
        txn::write_user(PgTx(begin(&self.pool, &key).await?), &key, event.as_ref(), |existing, _| {
            write::plan_delete(cmd, existing)
        })
        .await
    }

    async fn read_data(&self, user: &UserKey, keys: &[&str]) -> Result<Vec<DataEntry>> {
        let (filter, bind) = user_where(user);
        let rows: Vec<(Uuid, Option<String>, Option<Json<Value>>, Option<i64>, Option<DateTime<Utc>>)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "select u.id, d.key, d.value, d.version, d.updated_at from users u \
                 left join user_data d on d.user_id = u.id and d.key = any($2) where {filter}"
            )))
            .bind(bind)
            .bind(keys)
            .fetch_all(&self.pool)
            .await?;
        if rows.is_empty() {
            return Err(Error::NotFound { resource: "user", key: user.to_string() });
        }
        Ok(rows
            .into_iter()
            .filter_map(|(_, key, value, version, at)| Some(entry((key?, value?, version?, at?))))
            .collect())
    }

    async fn list_data(&self, user: &UserKey, after: Option<&str>, limit: u32) -> Result<Vec<DataEntry>> {
        let (filter, bind) = user_where(user);
        let id: Option<(Uuid,)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("select u.id from users u where {filter}")))
                .bind(bind)
                .fetch_optional(&self.pool)
                .await?;
        let (id,) = id.ok_or_else(|| Error::NotFound { resource: "user", key: user.to_string() })?;
        let rows: Vec<EntryRow> = sqlx::query_as(
            "select key, value, version, updated_at from user_data \
             where user_id = $1 and ($2::text is null or key > $2) order by key limit $3",
        )
        .bind(id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(entry).collect())
    }

    async fn edit_data(
        &self,
        user: &UserKey,
        keys: &[&str],
        event: Option<&EventContext>,
        edit: DataEdit,
    ) -> Result<DataWrite> {
        txn::edit_data(PgTx(self.pool.begin().await?), user, keys, event, edit).await
    }

    async fn data_for_users(&self, ids: &[Uuid], clerk_ids: &[String], key: &str) -> Result<Vec<UserValue>> {
        let rows: Vec<(Uuid, String, Option<Json<Value>>)> = sqlx::query_as(
            "select u.id, u.clerk_id, d.value from users u \
             left join user_data d on d.user_id = u.id and d.key = $3 \
             where u.id = any($1) or u.clerk_id = any($2)",
        )
        .bind(ids)
        .bind(clerk_ids)
        .bind(key)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, clerk_id, value)| UserValue { id, clerk_id, value: value.map(|v| v.0) })
            .collect())
    }

    async fn prune_processed_events(&self, age: Duration) -> Result<u64> {
        let cutoff = Utc::now() - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
        let done = sqlx::query("delete from processed_events where processed_at < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
