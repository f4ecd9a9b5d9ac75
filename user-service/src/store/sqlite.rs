//! SQLite store: the embedded, zero-setup default. One file, WAL journal,
//! writers serialised by `BEGIN IMMEDIATE`.

use std::{collections::BTreeMap, path::Path, str::FromStr, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{
    Sqlite, SqliteConnection, SqlitePool, Transaction,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    types::Json,
};
use tokio::sync::{Mutex, OwnedMutexGuard};
use uuid::{Uuid, fmt::Hyphenated};

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

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

const USER_COLUMNS: &str = "id, clerk_id, email, first_name, last_name, username, image_url, \
     role, status, created_at, updated_at, source_updated_at, version";

/// A [`Store`] on an SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// SQLite has one writer at a time. Queueing writers here, in order,
    /// instead of in SQLite's busy handler (which sleeps and retries) keeps
    /// write latency even under many concurrent callers and never fails a
    /// write with "database is locked".
    writer: Arc<Mutex<()>>,
}

impl SqliteStore {
    /// Opens (creating the file and its directory if needed) and migrates.
    pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Self> {
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::Unavailable(format!("invalid DATABASE_URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: an acknowledged webhook must survive a power cut too.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(options.acquire_timeout)
            .foreign_keys(true);
        let file = Path::new(connect.get_filename());
        let in_memory = url.contains(":memory:")
            || url.contains("mode=memory")
            || file.to_string_lossy().starts_with("file:");
        if !in_memory {
            create_private(file)?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await?;
        if options.migrate {
            MIGRATOR.run(&pool).await.map_err(migrate_error)?;
        }
        Ok(Self { pool, writer: Arc::new(Mutex::new(())) })
    }

    /// The migrator, for tests that prepare their own databases.
    pub fn migrator() -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
    }
}

/// Creates the database file's directory (0700) and the file (0600) when
/// they do not exist yet, so personal data is not readable by other local
/// users. SQLite gives its `-wal` and `-shm` files the database file's
/// permissions. Existing files keep theirs, with a warning when others may
/// read them.
fn create_private(file: &Path) -> Result<()> {
    let unavailable =
        |path: &Path, e: std::io::Error| Error::Unavailable(format!("cannot create {}: {e}", path.display()));
    if let Some(dir) = file.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(|e| unavailable(dir, e))?;
    }
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    match open.open(file) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            warn_if_shared(file);
            Ok(())
        }
        Err(e) => Err(unavailable(file, e)),
    }
}

/// Warns when a database file that was already there is readable by others.
fn warn_if_shared(file: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(file)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                file = %file.display(),
                mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
                "the SQLite file is readable by other users; chmod 600 it"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = file;
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: Hyphenated,
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
            id: row.id.into_uuid(),
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

fn text_id(id: Uuid) -> Hyphenated {
    id.hyphenated()
}

async fn recorded_result(
    tx: &mut SqliteConnection,
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
    tx: &mut SqliteConnection,
    (event, clerk_id, result): Record<'_>,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "insert into processed_events (idempotency_key, clerk_id, outcome, result, processed_at) \
         values ($1, $2, $3, $4, $5) on conflict do nothing",
    )
    .bind(&event.idempotency_key)
    .bind(clerk_id)
    .bind(result.outcome.map_or("none", write::Outcome::as_str))
    .bind(Json(result))
    .bind(now)
    .execute(tx)
    .await?;
    Ok(())
}

async fn load_existing(tx: &mut SqliteConnection, key: &UserKey) -> Result<Existing> {
    let row: Option<UserRow> = match key {
        UserKey::Id(id) => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("select {USER_COLUMNS} from users where id = $1")))
                .bind(text_id(*id))
                .fetch_optional(&mut *tx)
                .await?
        }
        UserKey::ClerkId(clerk_id) => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "select {USER_COLUMNS} from users where clerk_id = $1"
            )))
            .bind(clerk_id)
            .fetch_optional(&mut *tx)
            .await?
        }
    };
    if let Some(row) = row {
        return Ok(Existing::Present(row.try_into()?));
    }
    let deleted = match key {
        UserKey::Id(id) => {
            sqlx::query("select 1 from deleted_users where user_id = $1")
                .bind(text_id(*id))
                .fetch_optional(tx)
                .await?
        }
        UserKey::ClerkId(c) => {
            sqlx::query("select 1 from deleted_users where clerk_id = $1").bind(c).fetch_optional(tx).await?
        }
    };
    Ok(if deleted.is_some() { Existing::Deleted } else { Existing::Missing })
}

async fn upsert_data(
    tx: &mut SqliteConnection,
    user_id: Uuid,
    data: &[(&'static str, Value)],
    now: DateTime<Utc>,
) -> Result<()> {
    for (key, value) in data {
        sqlx::query(
            "insert into user_data (user_id, key, value, created_at, updated_at) values ($1, $2, $3, $4, $4) \
             on conflict (user_id, key) do update \
             set value = excluded.value, updated_at = excluded.updated_at, version = user_data.version + 1",
        )
        .bind(text_id(user_id))
        .bind(key)
        .bind(Json(value))
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

async fn append_name_history(
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

async fn apply(tx: &mut SqliteConnection, change: &Change, now: DateTime<Utc>) -> Result<()> {
    match change {
        Change::None => {}
        Change::Insert { user, data } => {
            sqlx::query(
                "insert into users (id, clerk_id, email, first_name, last_name, username, image_url, \
                 role, status, created_at, updated_at, source_updated_at, version) \
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            )
            .bind(text_id(user.id))
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
            .execute(&mut *tx)
            .await
            .map_err(|e| super::unique_violation(e, &user.clerk_id))?;
            upsert_data(tx, user.id, data, now).await?;
        }
        Change::Update { user, data, name_entry } => {
            sqlx::query(
                "update users set email = $2, first_name = $3, last_name = $4, username = $5, \
                 image_url = $6, role = $7, status = $8, updated_at = $9, source_updated_at = $10, \
                 version = $11 where id = $1",
            )
            .bind(text_id(user.id))
            .bind(&user.profile.email)
            .bind(&user.profile.first_name)
            .bind(&user.profile.last_name)
            .bind(&user.profile.username)
            .bind(&user.profile.image_url)
            .bind(user.role.as_str())
            .bind(user.status.as_str())
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
            .execute(tx)
            .await?;
        }
    }
    Ok(())
}

/// The `where` clause and its one bind value for a user key.
fn user_where(key: &UserKey) -> (&'static str, String) {
    match key {
        UserKey::Id(id) => ("u.id = $1", id.hyphenated().to_string()),
        UserKey::ClerkId(clerk_id) => ("u.clerk_id = $1", clerk_id.clone()),
    }
}

type EntryRow = (String, Json<Value>, i64, DateTime<Utc>);

fn entry((key, value, version, updated_at): EntryRow) -> DataEntry {
    DataEntry { key, value: value.0, version, updated_at }
}

/// A list bound as one JSON array, for `in (select value from json_each(?))`.
fn json_list<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

async fn is_tombstoned(tx: &mut SqliteConnection, key: &UserKey) -> Result<bool> {
    let found = match key {
        UserKey::Id(id) => {
            sqlx::query("select 1 from deleted_users where user_id = $1")
                .bind(text_id(*id))
                .fetch_optional(tx)
                .await?
        }
        UserKey::ClerkId(c) => {
            sqlx::query("select 1 from deleted_users where clerk_id = $1").bind(c).fetch_optional(tx).await?
        }
    };
    Ok(found.is_some())
}

async fn write_changes(
    tx: &mut SqliteConnection,
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
                .bind(text_id(user_id))
                .bind(&key)
                .bind(Json(&value))
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                entries.insert(key, entry(row));
            }
            None => {
                sqlx::query("delete from user_data where user_id = $1 and key = $2")
                    .bind(text_id(user_id))
                    .bind(&key)
                    .execute(&mut *tx)
                    .await?;
                entries.remove(&key);
            }
        }
    }
    Ok(entries)
}

/// A write transaction (`BEGIN IMMEDIATE`: it takes the write lock up front,
/// because these transactions read then write, and a deferred one could not
/// upgrade if another connection wrote first), with the steps of the shared
/// write algorithms.
struct SqliteTx {
    tx: Transaction<'static, Sqlite>,
    /// This writer's turn, held until the transaction ends.
    _turn: OwnedMutexGuard<()>,
}

impl SqliteTx {
    async fn begin(store: &SqliteStore) -> Result<Self> {
        let turn = store.writer.clone().lock_owned().await;
        Ok(Self { tx: store.pool.begin_with("BEGIN IMMEDIATE").await?, _turn: turn })
    }
}

#[async_trait]
impl UserTx for SqliteTx {
    async fn load(
        &mut self,
        key: &UserKey,
        event: Option<&EventContext>,
    ) -> Result<(Option<WriteResult>, Existing)> {
        if let (Some(event), UserKey::ClerkId(clerk_id)) = (event, key)
            && let Some(replayed) = recorded_result(&mut self.tx, event, clerk_id).await?
        {
            return Ok((Some(replayed), Existing::Missing));
        }
        Ok((None, load_existing(&mut self.tx, key).await?))
    }

    async fn apply(&mut self, change: &Change, record: Option<Record<'_>>, now: DateTime<Utc>) -> Result<()> {
        apply(&mut self.tx, change, now).await?;
        if let Some(record) = record {
            record_event(&mut self.tx, record, now).await?;
        }
        Ok(())
    }

    async fn commit(self) -> Result<()> {
        Ok(self.tx.commit().await?)
    }
}

#[async_trait]
impl DataTx for SqliteTx {
    async fn lock_user(&mut self, user: &UserKey) -> Result<Option<(Uuid, String)>> {
        // The write lock taken by BEGIN IMMEDIATE already serialises edits.
        let (filter, bind) = user_where(user);
        let found: Option<(Hyphenated, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select u.id, u.clerk_id from users u where {filter}"
        )))
        .bind(bind)
        .fetch_optional(&mut *self.tx)
        .await?;
        Ok(found.map(|(id, clerk_id)| (id.into_uuid(), clerk_id)))
    }

    async fn is_tombstoned(&mut self, user: &UserKey) -> Result<bool> {
        is_tombstoned(&mut self.tx, user).await
    }

    async fn entries(&mut self, user_id: Uuid, keys: &[&str]) -> Result<Vec<DataEntry>> {
        let rows: Vec<EntryRow> = sqlx::query_as(
            "select key, value, version, updated_at from user_data \
             where user_id = $1 and key in (select value from json_each($2))",
        )
        .bind(text_id(user_id))
        .bind(json_list(keys))
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows.into_iter().map(entry).collect())
    }

    async fn custom_key_count(&mut self, user_id: Uuid) -> Result<u64> {
        // A key range rather than LIKE, so the primary key's index serves it.
        let (count,): (i64,) = sqlx::query_as(
            "select count(*) from user_data where user_id = $1 and key >= 'custom.' and key < 'custom/'",
        )
        .bind(text_id(user_id))
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn recorded(&mut self, event: &EventContext, clerk_id: &str) -> Result<Option<WriteResult>> {
        recorded_result(&mut self.tx, event, clerk_id).await
    }

    async fn write_changes(
        &mut self,
        user_id: Uuid,
        changes: BTreeMap<String, Option<Value>>,
        entries: BTreeMap<String, DataEntry>,
        now: DateTime<Utc>,
    ) -> Result<BTreeMap<String, DataEntry>> {
        write_changes(&mut self.tx, user_id, changes, entries, now).await
    }

    async fn record(&mut self, record: Record<'_>, now: DateTime<Utc>) -> Result<()> {
        record_event(&mut self.tx, record, now).await
    }

    async fn commit(self) -> Result<()> {
        Ok(self.tx.commit().await?)
    }
}

#[async_trait]
impl Store for SqliteStore {
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
        let key = UserKey::ClerkId(cmd.clerk_id.clone());
        let event = cmd.event.clone();
        txn::write_user(SqliteTx::begin(self).await?, &key, event.as_ref(), |existing, now| {
            write::plan_create(cmd, existing, now)
        })
        .await
    }

    async fn get_user(&self, key: &UserKey) -> Result<User> {
        let row: Option<UserRow> = match key {
            UserKey::Id(id) => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!("select {USER_COLUMNS} from users where id = $1")))
                    .bind(text_id(*id))
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
             where ($1 is null or id > $1) and ($2 is null or status = $2) \
               and ($3 is null or role = $3) and ($4 is null or lower(email) = lower($4)) \
             order by id limit $5"
        )))
        .bind(after.map(text_id))
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
        txn::write_user(SqliteTx::begin(self).await?, &key, event.as_ref(), |existing, now| {
            write::plan_update(cmd, existing, now)
        })
        .await
    }

    async fn delete_user(&self, cmd: DeleteUser) -> Result<WriteResult> {
        let key = cmd.key.clone();
        let event = cmd.event.clone();
        txn::write_user(SqliteTx::begin(self).await?, &key, event.as_ref(), |existing, _| {
            write::plan_delete(cmd, existing)
        })
        .await
    }

    async fn read_data(&self, user: &UserKey, keys: &[&str]) -> Result<Vec<DataEntry>> {
        let (filter, bind) = user_where(user);
        let rows: Vec<(String, Option<String>, Option<Json<Value>>, Option<i64>, Option<DateTime<Utc>>)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "select u.id, d.key, d.value, d.version, d.updated_at from users u \
                 left join user_data d on d.user_id = u.id and d.key in (select value from json_each($2)) \
                 where {filter}"
            )))
            .bind(bind)
            .bind(json_list(keys))
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
        let id: Option<(String,)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("select u.id from users u where {filter}")))
                .bind(bind)
                .fetch_optional(&self.pool)
                .await?;
        let (id,) = id.ok_or_else(|| Error::NotFound { resource: "user", key: user.to_string() })?;
        let rows: Vec<EntryRow> = sqlx::query_as(
            "select key, value, version, updated_at from user_data \
             where user_id = $1 and ($2 is null or key > $2) order by key limit $3",
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
        txn::edit_data(SqliteTx::begin(self).await?, user, keys, event, edit).await
    }

    async fn data_for_users(&self, ids: &[Uuid], clerk_ids: &[String], key: &str) -> Result<Vec<UserValue>> {
        let ids: Vec<String> = ids.iter().map(|id| id.hyphenated().to_string()).collect();
        let rows: Vec<(Hyphenated, String, Option<Json<Value>>)> = sqlx::query_as(
            "select u.id, u.clerk_id, d.value from users u \
             left join user_data d on d.user_id = u.id and d.key = $3 \
             where u.id in (select value from json_each($1)) or u.clerk_id in (select value from json_each($2))",
        )
        .bind(json_list(&ids))
        .bind(json_list(clerk_ids))
        .bind(key)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, clerk_id, value)| UserValue {
                id: id.into_uuid(),
                clerk_id,
                value: value.map(|v| v.0),
            })
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
