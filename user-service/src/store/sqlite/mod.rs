//! SQLite store: the embedded, zero-setup default. One file, WAL journal,
//! writers serialised by `BEGIN IMMEDIATE`.

use std::{path::Path, str::FromStr, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::Utc;
use serde_json::Value;
use sqlx::{
    SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    types::Json,
};
use tokio::sync::Mutex;
use uuid::{Uuid, fmt::Hyphenated};

use super::{
    ChangeBatch, ChangeSignal, ConnectOptions, DataEdit, DataEntry, DataWrite, PoolStats, Store, UserFilter,
    UserValue,
    changes::{CHANGE_COLUMNS, ChangeRow},
    group::{GroupCommit, GroupOptions, UserWrite},
    migrate_error,
    rows::{self, EntryRow, UserRow, entry},
    txn,
};
use crate::{
    domain::error::{Error, Result},
    domain::{
        change::{Actor, AuditQuery, ChangeFilter, Cursor, LoggedChange},
        user::{Role, Status, User, UserKey},
        write::{CreateUser, DeleteUser, EventContext, UpdateUser, WriteResult},
    },
};

mod file;
mod statements;
mod steps;

use self::{file::*, statements::*, steps::*};

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
pub(super) struct SqliteWriter {
    pub(super) pool: SqlitePool,
    /// SQLite has one writer at a time. Queueing writers here, in order,
    /// instead of in SQLite's busy handler (which sleeps and retries) keeps
    /// write latency even under many concurrent callers and never fails a
    /// write with "database is locked".
    pub(super) turn: Arc<Mutex<()>>,
    /// Wakes change-log readers after commits that recorded changes (one
    /// process owns the file, so no one else needs telling).
    pub(super) signal: Arc<ChangeSignal>,
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
