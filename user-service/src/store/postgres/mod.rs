//! PostgreSQL store: the production backend.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::Utc;
use serde_json::Value;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
    types::Json,
};
use uuid::Uuid;

use super::{
    ChangeBatch, ConnectOptions, DataEdit, DataEntry, DataWrite, PoolStats, Store, UserFilter, UserValue,
    changes::{CHANGE_COLUMNS, ChangeRow},
    group::{GroupCommit, GroupOptions, UserWrite},
    migrate_error,
    rows::{self, EntryRow, UserRow, entry},
    txn::{self},
};
use crate::{
    domain::error::{Error, Result},
    domain::{
        change::{Actor, AuditQuery, ChangeFilter, Cursor, LoggedChange},
        user::{Role, Status, User, UserKey},
        write::{CreateUser, DeleteUser, EventContext, UpdateUser, WriteResult},
    },
};

mod create;
mod load;
mod signals;
mod statements;
mod steps;

use self::{signals::*, statements::*, steps::*};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// A [`Store`] on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    writes: PgWriter,
    group: GroupCommit,
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
        let signals = Arc::new(Signals::default());
        let listener = listen(url).await;
        let tasks = [
            tokio::spawn(listen_for_replicas(url.to_owned(), listener, Arc::downgrade(&signals))),
            tokio::spawn(notify_replicas(pool.clone(), Arc::downgrade(&signals))),
        ];
        if let Ok(mut held) = signals.tasks.lock() {
            held.extend(tasks.iter().map(tokio::task::JoinHandle::abort_handle));
        }
        let writes = PgWriter { pool: pool.clone(), signals };
        // Half the pool for groups in flight: reads and other writes keep the rest.
        let workers = usize::try_from(options.max_connections / 2).unwrap_or(1);
        let group = GroupCommit::start(
            writes.clone(),
            GroupOptions { max: usize::from(options.group_commit_max), workers },
        );
        Ok(Self { pool, writes, group })
    }

    /// The migrator, for tests that prepare their own databases.
    pub fn migrator() -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
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
        let row: Option<UserRow<Uuid>> = match key {
            UserKey::Id(id) => sqlx::query_as(sqlx::AssertSqlSafe(rows::user_sql(key))).bind(id),
            UserKey::ClerkId(c) => sqlx::query_as(sqlx::AssertSqlSafe(rows::user_sql(key))).bind(c),
        }
        .fetch_optional(&self.pool)
        .await?;
        rows::found_user(row, key)
    }

    async fn list_users(&self, filter: &UserFilter, after: Option<Uuid>, limit: u32) -> Result<Vec<User>> {
        let rows: Vec<UserRow<Uuid>> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select {} from users \
             where ($1::uuid is null or id > $1) and ($2::text is null or status = $2) \
               and ($3::text is null or role = $3) and ($4::text is null or lower(email) = lower($4)) \
             order by id limit $5",
            rows::USER_COLUMNS
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
        self.group.write(&self.writes, UserWrite::Update(cmd)).await
    }

    async fn delete_user(&self, cmd: DeleteUser) -> Result<WriteResult> {
        self.group.write(&self.writes, UserWrite::Delete(cmd)).await
    }

    async fn read_data(&self, user: &UserKey, keys: &[&str]) -> Result<Vec<DataEntry>> {
        let (filter, bind) = user_where(user);
        let found: Vec<rows::JoinedRow<Uuid>> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select u.id, d.key, d.value, d.version, d.updated_at from users u \
                 left join user_data d on d.user_id = u.id and d.key = any($2) where {filter}"
        )))
        .bind(bind)
        .bind(keys)
        .fetch_all(&self.pool)
        .await?;
        rows::joined_entries(found, user)
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
        actor: &Actor,
        edit: DataEdit,
    ) -> Result<DataWrite> {
        txn::edit_data(
            PgTx::new(self.pool.begin().await?, &self.writes.signals),
            user,
            keys,
            event,
            actor,
            edit,
        )
        .await
    }

    async fn data_for_users(&self, ids: &[Uuid], clerk_ids: &[String], key: &str) -> Result<Vec<UserValue>> {
        let found: Vec<(Uuid, String, Option<Json<Value>>)> = sqlx::query_as(
            "select u.id, u.clerk_id, d.value from users u \
             left join user_data d on d.user_id = u.id and d.key = $3 \
             where u.id = any($1) or u.clerk_id = any($2)",
        )
        .bind(ids)
        .bind(clerk_ids)
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
        self.writes.signals.local.subscribe()
    }

    async fn read_changes(&self, after: Cursor, filter: &ChangeFilter, limit: u32) -> Result<ChangeBatch> {
        // Every transaction older than the horizon has ended, and every later
        // one gets a larger id: the rows below it are final.
        let horizon: i64 = sqlx::query_scalar("select pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            .fetch_one(&self.pool)
            .await?;
        let rows: Vec<ChangeRow<Uuid>> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select txid, id, {CHANGE_COLUMNS} from changes \
             where (txid, id) > ($1, $2) and txid < $3 and ($4::text is null or clerk_id = $4) \
               and (cardinality($5::text[]) = 0 or key is null or key = any($5)) \
             order by txid, id limit $6"
        )))
        .bind(after.txid)
        .bind(after.id)
        .bind(horizon)
        .bind(&filter.clerk_id)
        .bind(&filter.keys)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let changes = rows.into_iter().map(LoggedChange::try_from).collect::<Result<Vec<_>>>()?;
        let more = changes.len() >= limit as usize;
        let last = changes.last().map_or(after, |c| c.cursor);
        let head = if more { last } else { final_head(&self.pool, horizon).await?.max(last) };
        let held_back: bool = sqlx::query_scalar("select exists(select 1 from changes where txid >= $1)")
            .bind(horizon)
            .fetch_one(&self.pool)
            .await?;
        Ok(ChangeBatch { changes, head, more, held_back })
    }

    async fn change_head(&self) -> Result<Cursor> {
        let horizon: i64 = sqlx::query_scalar("select pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            .fetch_one(&self.pool)
            .await?;
        final_head(&self.pool, horizon).await
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
        // Everything committed, final or not: an audit reads what is there
        // (unlike a follower, it does not resume from a cursor).
        let (cmp, order) = if query.oldest_first { (">", "asc") } else { ("<", "desc") };
        let rows: Vec<ChangeRow<Uuid>> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select txid, id, {CHANGE_COLUMNS} from changes \
             where ($1::bigint is null or (txid, id) {cmp} ($1, $2)) \
               and ($3::text is null or clerk_id = $3) and ($4::text is null or actor_client = $4) \
               and ($5::timestamptz is null or at >= $5) and ($6::timestamptz is null or at < $6) \
               and ($7::text is null or kind = $7) \
             order by txid {order}, id {order} limit $8"
        )))
        .bind(after.map(|c| c.txid))
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
        // Moves the mark to the newest pruned change, so a follower behind it
        // learns that it has lost changes.
        let pruned: i64 = sqlx::query_scalar(
            "with gone as (delete from changes where at < $1 returning txid, id), \
             top as (select txid, id from gone order by txid desc, id desc limit 1), \
             mark as (update change_log_state s set pruned_txid = top.txid, pruned_id = top.id from top \
                 where (top.txid, top.id) > (s.pruned_txid, s.pruned_id)) \
             select count(*) from gone",
        )
        .bind(cutoff)
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(pruned).unwrap_or_default())
    }
}

/// The newest change below `horizon` (all final), or the start of the log.
async fn final_head(pool: &PgPool, horizon: i64) -> Result<Cursor> {
    let newest: Option<(i64, i64)> =
        sqlx::query_as("select txid, id from changes where txid < $1 order by txid desc, id desc limit 1")
            .bind(horizon)
            .fetch_optional(pool)
            .await?;
    Ok(newest.map_or(Cursor::START, |(txid, id)| Cursor { txid, id }))
}
