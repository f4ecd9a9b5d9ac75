//! The write steps on PostgreSQL: the transaction, its per-user lock, and
//! the steps of the shared write algorithms.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::store::{
    DataEntry,
    group::{UserWrite, UserWriter},
    rows::{self, EntryRow, entry},
    txn::{self, DataTx, Loaded, Record, UserTx},
};
use crate::{
    domain::error::Result,
    domain::{
        change::{Actor, NewChange},
        user::UserKey,
        write::{Change, CreateUser, EventContext, WriteResult},
    },
};

use super::{
    create::create_new,
    load::{load_state, load_states},
    signals::Signals,
    statements::*,
};

/// How long a group waits for a lock before it rolls back and its writes run
/// alone: far above a normal transaction's hold, far below a webhook's
/// deadline.
pub(super) const GROUP_LOCK_TIMEOUT: Duration = Duration::from_millis(250);

/// What user writes need, alone or in a group (no handle on the group queue,
/// so the group workers end with the store).
#[derive(Debug, Clone)]
pub(super) struct PgWriter {
    pub(super) pool: PgPool,
    pub(super) signals: Arc<Signals>,
}

/// Starts a transaction and takes the per-user lock (see [`lock_user_key`]).
pub(super) async fn begin(pool: &PgPool, key: &UserKey) -> Result<Transaction<'static, Postgres>> {
    let mut tx = pool.begin().await?;
    lock_user_key(&mut tx, key).await?;
    Ok(tx)
}

/// Takes the transaction-scoped advisory lock on the user's `clerk_id`,
/// which serialises every write for that id, including for users that do not
/// exist yet (a row lock cannot cover a missing row): a concurrent create and
/// delete must not interleave. Every write path takes it before it writes
/// anything, so before its transaction has an id: a later write of the user
/// then gets a later id than every earlier one, which keeps the change log in
/// commit order per user (CHANGES.md). A row lock alone would not: a
/// transaction that already wrote another user could wait on it with an
/// older id than the writer it waits for.
///
/// Its own statement, not part of BEGIN: if the caller gives up while this
/// waits, dropping the transaction rolls it back and frees the lock. A lock
/// taken by the BEGIN statement itself would stay with the pooled
/// connection, idle in a transaction, blocking the user.
async fn lock_user_key(tx: &mut Transaction<'static, Postgres>, key: &UserKey) -> Result<()> {
    match key {
        UserKey::ClerkId(clerk_id) => {
            sqlx::query("select pg_advisory_xact_lock($1)")
                .bind(lock_key(clerk_id))
                .execute(&mut **tx)
                .await?;
        }
        // A user named by our id has a `clerk_id` that never changes; no row
        // means nothing to write, and the write's own lookup says so.
        // A plain read: it gives the transaction no id.
        UserKey::Id(id) => {
            let sql =
                format!("select pg_advisory_xact_lock({LOCK_KEY_OF_CLERK_ID}) from users where id = $1");
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).execute(&mut **tx).await?;
        }
    }
    Ok(())
}

/// A stable 64-bit lock key for a `clerk_id`: the first 8 bytes of its
/// SHA-256, big-endian. The `users_refuse_deleted` trigger computes the same.
pub(super) fn lock_key(clerk_id: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(clerk_id.as_bytes());
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// A transaction, with the steps of the shared write algorithms. A commit
/// that recorded changes wakes change-log readers.
pub(super) struct PgTx {
    pub(super) tx: Transaction<'static, Postgres>,
    pub(super) signals: Arc<Signals>,
    pub(super) recorded_changes: bool,
}

impl PgTx {
    pub(super) fn new(tx: Transaction<'static, Postgres>, signals: &Arc<Signals>) -> Self {
        Self { tx, signals: signals.clone(), recorded_changes: false }
    }

    async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        if self.recorded_changes {
            self.signals.committed();
        }
        Ok(())
    }
}

#[async_trait]
impl UserTx for PgTx {
    async fn create_new(&mut self, cmds: &[&CreateUser]) -> Result<Vec<Option<WriteResult>>> {
        let created = create_new(&mut self.tx, cmds).await?;
        self.recorded_changes |= created.iter().any(Option::is_some);
        Ok(created)
    }

    async fn load(&mut self, key: &UserKey, event: Option<&EventContext>) -> Result<Loaded> {
        load_state(&mut self.tx, key, event).await
    }

    async fn load_many(&mut self, writes: &[&UserWrite]) -> Result<Vec<Loaded>> {
        load_states(&mut self.tx, writes).await
    }

    async fn apply(
        &mut self,
        change: &Change,
        changes: &[NewChange],
        actor: &Actor,
        record: Option<Record<'_>>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.recorded_changes |= !changes.is_empty();
        apply(&mut self.tx, change, Log { changes, actor, record, now }).await
    }

    async fn commit(self) -> Result<()> {
        PgTx::commit(self).await
    }
}

#[async_trait]
impl DataTx for PgTx {
    async fn lock_user(&mut self, user: &UserKey) -> Result<Option<(Uuid, String)>> {
        // The advisory lock (see `lock_user_key`) and the row lock in one
        // round trip: the uncorrelated `exists` is an init plan, run before
        // the scan, so the advisory lock comes first and the row lock (which
        // gives the transaction its id) after it.
        let (filter, bind) = user_where(user);
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "with locked as materialized (select pg_advisory_xact_lock({LOCK_KEY_OF_CLERK_ID}) from users u \
             where {filter}) \
             select u.id, u.clerk_id from users u where {filter} and exists (select from locked) for update of u"
        )))
        .bind(bind)
        .fetch_optional(&mut *self.tx)
        .await?)
    }

    async fn is_tombstoned(&mut self, user: &UserKey) -> Result<bool> {
        is_tombstoned(&mut self.tx, user).await
    }

    async fn entries(&mut self, user_id: Uuid, keys: &[&str]) -> Result<Vec<DataEntry>> {
        let rows: Vec<EntryRow> = sqlx::query_as(
            "select key, value, version, updated_at from user_data where user_id = $1 and key = any($2)",
        )
        .bind(user_id)
        .bind(keys)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows.into_iter().map(entry).collect())
    }

    async fn custom_key_count(&mut self, user_id: Uuid) -> Result<u64> {
        let (count,): (i64,) =
            sqlx::query_as(rows::CUSTOM_KEY_COUNT).bind(user_id).fetch_one(&mut *self.tx).await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn recorded(&mut self, event: &EventContext, clerk_id: &str) -> Result<Option<WriteResult>> {
        rows::recorded_result(&mut *self.tx, event, clerk_id).await
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

    async fn record(&mut self, (event, clerk_id, result): Record<'_>, _now: DateTime<Utc>) -> Result<()> {
        record_event(&mut self.tx, event, clerk_id, result).await
    }

    async fn append_changes(
        &mut self,
        changes: &[NewChange],
        actor: &Actor,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let sql = format!("with {} select 1", changes_cte(1, 2));
        let query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
        bind_changes(query, actor, changes).execute(&mut *self.tx).await?;
        self.recorded_changes = true;
        Ok(())
    }

    async fn commit(self) -> Result<()> {
        PgTx::commit(self).await
    }
}

#[async_trait]
impl UserWriter for PgWriter {
    async fn write_one(&self, write: UserWrite) -> Result<WriteResult> {
        if let UserWrite::Create(cmd) = &write
            && let Some(created) = create_new(&mut *self.pool.acquire().await?, &[cmd]).await?.pop().flatten()
        {
            self.signals.committed();
            return Ok(created);
        }
        let tx = begin(&self.pool, &write.key()).await?;
        txn::write_user(PgTx::new(tx, &self.signals), write).await
    }

    async fn write_group(&self, writes: Vec<UserWrite>) -> Result<Vec<Result<WriteResult>>> {
        let mut tx = self.pool.begin().await?;
        // Every user of the group locked up front, in one order, so two
        // groups can never wait for each other (a lone write holds one
        // lock); `unnest` yields the sorted keys in array order. A user
        // locked elsewhere for long (a slow transaction) must not hold up the
        // group: past the lock timeout the group rolls back and its writes
        // run alone. One round trip: the keys are our own integers, inlined.
        // Not in the BEGIN statement (`begin_with`): sqlx rolls back only a
        // transaction whose BEGIN succeeded, so a lock timeout there would
        // return the connection to the pool inside its failed transaction.
        // Generic plans: the group's statements take arrays, for which the
        // planner would otherwise plan afresh at every execution (its
        // generic estimate of an array's length is far off). So every lookup
        // in them must be a scalar or a lateral `limit 1` probe: a generic
        // plan made on an empty table (a new deployment) turns `= any(array)`
        // or a join against `unnest` into whole-table scans, and keeps them
        // as the table grows (BENCHMARKS.md, lever 2).
        let mut locks: Vec<i64> = writes.iter().filter_map(UserWrite::group_lock).map(lock_key).collect();
        locks.sort_unstable();
        locks.dedup();
        let keys = locks.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "set local lock_timeout = {}; set local plan_cache_mode = force_generic_plan; \
             select pg_advisory_xact_lock(k) from unnest(array[{keys}]::bigint[]) as k",
            GROUP_LOCK_TIMEOUT.as_millis()
        )))
        .execute(&mut *tx)
        .await?;
        txn::write_group(PgTx::new(tx, &self.signals), writes).await
    }
}
