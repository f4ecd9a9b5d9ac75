//! SQLite store: the embedded, zero-setup default. One file, WAL journal,
//! writers serialised by `BEGIN IMMEDIATE`.

use std::{collections::BTreeMap, path::Path, str::FromStr, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{
    Sqlite, SqliteConnection, SqlitePool, Transaction,
    query::Query,
    sqlite::{
        SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
    },
    types::Json,
};
use tokio::sync::{Mutex, OwnedMutexGuard};
use uuid::{Uuid, fmt::Hyphenated};

use super::{
    ChangeBatch, ChangeSignal, ConnectOptions, DataEdit, DataEntry, DataWrite, PoolStats, Store, UserFilter,
    UserValue,
    changes::{CHANGE_COLUMNS, ChangeRow},
    group::{GroupCommit, GroupOptions, UserWrite, UserWriter},
    migrate_error,
    rows::{self, EntryRow, UserRow, entry},
    txn::{self, DataTx, Record, UserTx},
};
use crate::{
    domain::error::{Error, Result},
    domain::{
        change::{Actor, AuditQuery, ChangeFilter, Cursor, LoggedChange, NewChange},
        keys,
        limits::NAME_HISTORY_LIMIT,
        user::{Role, Status, User, UserKey},
        write::{self, Change, CreateUser, DeleteUser, EventContext, Existing, UpdateUser, WriteResult},
    },
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// A [`Store`] on an SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    writes: SqliteWriter,
    group: GroupCommit,
}

/// What writes need, alone or in a group (no handle on the group queue, so
/// the group worker ends with the store).
#[derive(Debug, Clone)]
struct SqliteWriter {
    pool: SqlitePool,
    /// SQLite has one writer at a time. Queueing writers here, in order,
    /// instead of in SQLite's busy handler (which sleeps and retries) keeps
    /// write latency even under many concurrent callers and never fails a
    /// write with "database is locked".
    turn: Arc<Mutex<()>>,
    /// Wakes change-log readers after commits that recorded changes (one
    /// process owns the file, so no one else needs telling).
    signal: Arc<ChangeSignal>,
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
        let writes = SqliteWriter {
            pool: pool.clone(),
            turn: Arc::new(Mutex::new(())),
            signal: Arc::new(ChangeSignal::default()),
        };
        // One group at a time: SQLite has one writer.
        let group = GroupCommit::start(
            writes.clone(),
            GroupOptions { max: usize::from(options.group_commit_max), workers: 1 },
        );
        Ok(Self { pool, writes, group })
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

fn text_id(id: Uuid) -> Hyphenated {
    id.hyphenated()
}

async fn recorded_result(
    tx: &mut SqliteConnection,
    event: &EventContext,
    clerk_id: &str,
) -> Result<Option<WriteResult>> {
    let row: Option<super::Recorded> = sqlx::query_as(rows::RECORDED)
        .bind(&event.idempotency_key)
        .bind(&event.source)
        .fetch_optional(tx)
        .await?;
    super::replay(row, clerk_id, event)
}

async fn record_event(
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

async fn load_existing(tx: &mut SqliteConnection, key: &UserKey) -> Result<Existing> {
    let row: Option<UserRow<Hyphenated>> = sqlx::query_as(sqlx::AssertSqlSafe(rows::user_sql(key)))
        .bind(key_value(key))
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(row) = row {
        return Ok(Existing::Present(row.try_into()?));
    }
    Ok(if is_tombstoned(tx, key).await? { Existing::Deleted } else { Existing::Missing })
}

async fn upsert_data(
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
                .map_err(|e| super::unique_violation(e, &user.clerk_id))?;
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
fn bind_profile<'q>(
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
async fn erase_user(tx: &mut SqliteConnection, clerk_id: &str) -> Result<()> {
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

async fn append_changes(
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
fn user_where(key: &UserKey) -> (&'static str, String) {
    match key {
        UserKey::Id(_) => ("u.id = $1", key_value(key)),
        UserKey::ClerkId(_) => ("u.clerk_id = $1", key_value(key)),
    }
}

/// A user key as bound: the id as hyphenated text, or the `clerk_id`.
fn key_value(key: &UserKey) -> String {
    match key {
        UserKey::Id(id) => id.hyphenated().to_string(),
        UserKey::ClerkId(clerk_id) => clerk_id.clone(),
    }
}

/// A list bound as one JSON array, for `in (select value from json_each(?))`.
fn json_list<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

async fn is_tombstoned(tx: &mut SqliteConnection, key: &UserKey) -> Result<bool> {
    let found = sqlx::query(rows::tombstone_sql(key)).bind(key_value(key)).fetch_optional(tx).await?;
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

/// A write transaction (`BEGIN IMMEDIATE`: it takes the write lock up front,
/// because these transactions read then write, and a deferred one could not
/// upgrade if another connection wrote first), with the steps of the shared
/// write algorithms.
struct SqliteTx {
    tx: Transaction<'static, Sqlite>,
    /// This writer's turn, held until the transaction ends.
    _turn: OwnedMutexGuard<()>,
    signal: Arc<ChangeSignal>,
    recorded_changes: bool,
}

impl SqliteTx {
    async fn begin(writer: &SqliteWriter) -> Result<Self> {
        let turn = writer.turn.clone().lock_owned().await;
        Ok(Self {
            tx: writer.pool.begin_with("BEGIN IMMEDIATE").await?,
            _turn: turn,
            signal: writer.signal.clone(),
            recorded_changes: false,
        })
    }

    async fn append(&mut self, changes: &[NewChange], actor: &Actor, now: DateTime<Utc>) -> Result<()> {
        append_changes(&mut self.tx, changes, actor, now).await?;
        self.recorded_changes |= !changes.is_empty();
        Ok(())
    }

    async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        if self.recorded_changes {
            self.signal.wake();
        }
        Ok(())
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

    async fn apply(
        &mut self,
        change: &Change,
        changes: &[NewChange],
        actor: &Actor,
        record: Option<Record<'_>>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        apply(&mut self.tx, change, now).await?;
        if let Some(record) = record {
            record_event(&mut self.tx, record, now).await?;
        }
        self.append(changes, actor, now).await
    }

    async fn commit(self) -> Result<()> {
        SqliteTx::commit(self).await
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
        let (count,): (i64,) =
            sqlx::query_as(rows::CUSTOM_KEY_COUNT).bind(text_id(user_id)).fetch_one(&mut *self.tx).await?;
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

    async fn append_changes(
        &mut self,
        changes: &[NewChange],
        actor: &Actor,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.append(changes, actor, now).await
    }

    async fn commit(self) -> Result<()> {
        SqliteTx::commit(self).await
    }
}

#[async_trait]
impl UserWriter for SqliteWriter {
    async fn write_one(&self, write: UserWrite) -> Result<WriteResult> {
        txn::write_user(SqliteTx::begin(self).await?, write).await
    }

    async fn write_group(&self, writes: Vec<UserWrite>) -> Result<Vec<Result<WriteResult>>> {
        txn::write_group(SqliteTx::begin(self).await?, writes).await
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

    fn group_stats(&self) -> super::GroupStats {
        self.group.stats()
    }

    fn pool_stats(&self) -> PoolStats {
        rows::pool_stats(&self.pool)
    }

    async fn create_user(&self, cmd: CreateUser) -> Result<WriteResult> {
        self.group.write(&self.writes, UserWrite::Create(cmd)).await
    }

    async fn get_user(&self, key: &UserKey) -> Result<User> {
        let row: Option<UserRow<Hyphenated>> = sqlx::query_as(sqlx::AssertSqlSafe(rows::user_sql(key)))
            .bind(key_value(key))
            .fetch_optional(&self.pool)
            .await?;
        rows::found_user(row, key)
    }

    async fn list_users(&self, filter: &UserFilter, after: Option<Uuid>, limit: u32) -> Result<Vec<User>> {
        let rows: Vec<UserRow<Hyphenated>> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select {} from users \
             where ($1 is null or id > $1) and ($2 is null or status = $2) \
               and ($3 is null or role = $3) and ($4 is null or lower(email) = lower($4)) \
             order by id limit $5",
            rows::USER_COLUMNS
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
        self.group.write(&self.writes, UserWrite::Update(cmd)).await
    }

    async fn delete_user(&self, cmd: DeleteUser) -> Result<WriteResult> {
        self.group.write(&self.writes, UserWrite::Delete(cmd)).await
    }

    async fn read_data(&self, user: &UserKey, keys: &[&str]) -> Result<Vec<DataEntry>> {
        let (filter, bind) = user_where(user);
        let found: Vec<rows::JoinedRow<String>> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select u.id, d.key, d.value, d.version, d.updated_at from users u \
                 left join user_data d on d.user_id = u.id and d.key in (select value from json_each($2)) \
                 where {filter}"
        )))
        .bind(bind)
        .bind(json_list(keys))
        .fetch_all(&self.pool)
        .await?;
        rows::joined_entries(found, user)
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
        actor: &Actor,
        edit: DataEdit,
    ) -> Result<DataWrite> {
        txn::edit_data(SqliteTx::begin(&self.writes).await?, user, keys, event, actor, edit).await
    }

    async fn data_for_users(&self, ids: &[Uuid], clerk_ids: &[String], key: &str) -> Result<Vec<UserValue>> {
        let ids: Vec<String> = ids.iter().map(|id| id.hyphenated().to_string()).collect();
        let found: Vec<(Hyphenated, String, Option<Json<Value>>)> = sqlx::query_as(
            "select u.id, u.clerk_id, d.value from users u \
             left join user_data d on d.user_id = u.id and d.key = $3 \
             where u.id in (select value from json_each($1)) or u.clerk_id in (select value from json_each($2))",
        )
        .bind(json_list(&ids))
        .bind(json_list(clerk_ids))
        .bind(key)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows::user_values(found))
    }

    async fn prune_processed_events(&self, age: Duration) -> Result<u64> {
        let Some(cutoff) = super::prune_cutoff(Utc::now(), age) else {
            return Ok(0);
        };
        let done = sqlx::query(rows::PRUNE_EVENTS).bind(cutoff).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }

    fn change_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.writes.signal.subscribe()
    }

    async fn read_changes(&self, after: Cursor, filter: &ChangeFilter, limit: u32) -> Result<ChangeBatch> {
        // One writer at a time, ids in commit order: every row up to the
        // newest one visible is final.
        let horizon = self.change_head().await?.id;
        let rows: Vec<ChangeRow<Hyphenated>> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select id as txid, id, {CHANGE_COLUMNS} from changes \
             where id > $1 and id <= $2 and ($3 is null or clerk_id = $3) \
               and ($4 = '[]' or key is null or key in (select value from json_each($4))) \
             order by id limit $5"
        )))
        .bind(after.id)
        .bind(horizon)
        .bind(&filter.clerk_id)
        .bind(json_list(&filter.keys))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let changes = rows.into_iter().map(LoggedChange::try_from).collect::<Result<Vec<_>>>()?;
        let more = changes.len() >= limit as usize;
        let last = changes.last().map_or(after, |c| c.cursor);
        let head = if more { last } else { Cursor { txid: horizon, id: horizon }.max(last) };
        Ok(ChangeBatch { changes, head, more, held_back: false })
    }

    async fn change_head(&self) -> Result<Cursor> {
        let newest: Option<i64> =
            sqlx::query_scalar("select max(id) from changes").fetch_one(&self.pool).await?;
        Ok(newest.map_or(Cursor::START, |id| Cursor { txid: id, id }))
    }

    async fn pruned_through(&self) -> Result<Cursor> {
        let (txid, id): (i64, i64) = sqlx::query_as(rows::PRUNED_THROUGH).fetch_one(&self.pool).await?;
        Ok(Cursor { txid, id })
    }

    async fn list_changes(
        &self,
        query: &AuditQuery,
        after: Option<Cursor>,
        limit: u32,
    ) -> Result<Vec<LoggedChange>> {
        let (cmp, order) = if query.oldest_first { (">", "asc") } else { ("<", "desc") };
        let rows: Vec<ChangeRow<Hyphenated>> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select id as txid, id, {CHANGE_COLUMNS} from changes \
             where ($1 is null or id {cmp} $1) \
               and ($2 is null or clerk_id = $2) and ($3 is null or actor_client = $3) \
               and ($4 is null or at >= $4) and ($5 is null or at < $5) and ($6 is null or kind = $6) \
             order by id {order} limit $7"
        )))
        .bind(after.map(|c| c.id))
        .bind(&query.clerk_id)
        .bind(&query.actor)
        .bind(query.start)
        .bind(query.end)
        .bind(query.kind.map(|k| k.as_str()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(LoggedChange::try_from).collect()
    }

    async fn prune_changes(&self, age: Duration) -> Result<u64> {
        let Some(cutoff) = super::prune_cutoff(Utc::now(), age) else { return Ok(0) };
        let _turn = self.writes.turn.clone().lock_owned().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let newest: Option<i64> = sqlx::query_scalar("select max(id) from changes where at < $1")
            .bind(cutoff)
            .fetch_one(&mut *tx)
            .await?;
        let done = sqlx::query("delete from changes where at < $1").bind(cutoff).execute(&mut *tx).await?;
        // Moves the mark to the newest pruned change, so a follower behind it
        // learns that it has lost changes.
        sqlx::query(
            "update change_log_state set pruned_txid = $1, pruned_id = $1 where $1 is not null and $1 > pruned_id",
        )
        .bind(newest)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }
}
