//! The write steps on PostgreSQL: the transaction, its per-user lock, the
//! one-statement create, and one statement per kind of change.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction, types::Json};
use uuid::Uuid;

use crate::store::{
    DataEntry,
    group::{UserWrite, UserWriter},
    rows::{self, EntryRow, UserRow, entry},
    txn::{self, DataTx, Record, UserTx},
};
use crate::{
    domain::error::Result,
    domain::{
        change::{Actor, NewChange},
        user::{User, UserKey},
        write::{self, Change, CreateUser, EventContext, Existing, WriteResult},
    },
};

use super::{signals::Signals, statements::*};

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

/// Starts a transaction. For a `clerk_id`, it then takes a
/// transaction-scoped advisory lock on it, which serialises every write for
/// that id, including for users that do not exist yet (a row lock cannot cover
/// a missing row): a concurrent create and delete must not interleave.
pub(super) async fn begin(pool: &PgPool, key: &UserKey) -> Result<Transaction<'static, Postgres>> {
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
pub(super) fn lock_key(clerk_id: &str) -> i64 {
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
pub(super) const INSERT_IF_NEW: &str = "with u as (insert into users (id, clerk_id, email, first_name, last_name, username, \
         image_url, role, status, created_at, updated_at, source_updated_at, version) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         on conflict (clerk_id) do nothing returning id), \
     d as (insert into user_data (user_id, key, value, created_at, updated_at) \
         select u.id, k, v, $14, $14 from u, unnest($15::text[], $16::jsonb[]) as t(k, v)), \
     e as (insert into processed_events (idempotency_key, clerk_id, outcome, result, processed_at, source, kind) \
         select $17, $2, $18, $19, now(), $26, $27 from u where $17::text is not null), \
     c as (insert into changes (at, user_id, clerk_id, kind, after, actor_client, actor_event_id, \
             actor_event_type, actor_changed_by, actor_request_id) \
         select $14, u.id, $2, 'user_created', $20, $21, $22, $23, $24, $25 from u) \
     select count(*) from u";

/// The fast path of a create: one round trip when the user is new, which is
/// what almost every `user.created` is. `None` means "not new after all"
/// (exists, deleted, replayed, raced): the caller runs the full write, which
/// decides with the user locked.
pub(super) async fn create_if_new(db: &mut PgConnection, cmd: &CreateUser) -> Result<Option<WriteResult>> {
    let now = crate::store::now();
    let plan = write::plan_create(cmd.clone(), Existing::Missing, now)?;
    let Change::Insert { user, data } = &plan.change else { return Ok(None) };
    let actor = &cmd.actor;
    let (keys, values): (Vec<&str>, Vec<Json<&Value>>) = data.iter().map(|(k, v)| (*k, Json(v))).unzip();
    let inserted: Result<i64, sqlx::Error> = bind_user(sqlx::query(INSERT_IF_NEW), user)
        .bind(now)
        .bind(keys)
        .bind(values)
        .bind(cmd.event.as_ref().map(|e| e.idempotency_key.as_str()))
        .bind(plan.result.outcome.map_or("none", write::Outcome::as_str))
        .bind(Json(&plan.result))
        .bind(Json(crate::domain::change::user_value(user)))
        .bind(&actor.client)
        .bind(&actor.event_id)
        .bind(&actor.event_type)
        .bind(&actor.changed_by)
        .bind(&actor.request_id)
        .bind(cmd.event.as_ref().map(|e| e.source.as_str()))
        .bind(cmd.event.as_ref().map(|e| e.kind.as_str()))
        .fetch_one(db)
        .await
        .and_then(|row| row.try_get(0));
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
pub(super) struct StateRow {
    pub(super) replay_clerk_id: Option<String>,
    pub(super) replay_kind: Option<String>,
    pub(super) replay_result: Option<Json<WriteResult>>,
    pub(super) deleted: bool,
    pub(super) id: Option<Uuid>,
    pub(super) clerk_id: Option<String>,
    pub(super) email: Option<String>,
    pub(super) first_name: Option<String>,
    pub(super) last_name: Option<String>,
    pub(super) username: Option<String>,
    pub(super) image_url: Option<String>,
    pub(super) role: Option<String>,
    pub(super) status: Option<String>,
    pub(super) created_at: Option<DateTime<Utc>>,
    pub(super) updated_at: Option<DateTime<Utc>>,
    pub(super) source_updated_at: Option<i64>,
    pub(super) version: Option<i64>,
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
        let row = UserRow::<Uuid> {
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
pub(super) async fn load_state(
    tx: &mut PgConnection,
    key: &UserKey,
    event: Option<&EventContext>,
) -> Result<(Option<WriteResult>, Existing)> {
    let (user_filter, tomb_filter, bind) = match key {
        UserKey::Id(id) => ("id = $1::text::uuid", "user_id = $1::text::uuid", id.to_string()),
        UserKey::ClerkId(clerk_id) => ("clerk_id = $1", "clerk_id = $1", clerk_id.clone()),
    };
    let row: StateRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select pe.clerk_id as replay_clerk_id, pe.kind as replay_kind, pe.result as replay_result, \
                exists(select 1 from deleted_users where {tomb_filter}) as deleted, u.* \
         from (select 1) as one \
         left join lateral (select clerk_id, kind, result from processed_events \
             where idempotency_key = $2 and source in ($3, '') limit 1) pe on true \
         left join lateral (select {} from users where {user_filter} for update) u on true",
        rows::USER_COLUMNS
    )))
    .bind(bind)
    .bind(event.map(|e| e.idempotency_key.as_str()))
    .bind(event.map(|e| e.source.as_str()))
    .fetch_one(tx)
    .await?;
    let recorded = row.replay_clerk_id.clone().map(|clerk_id| crate::store::Recorded {
        clerk_id,
        kind: row.replay_kind.clone().unwrap_or_default(),
        result: row.replay_result.clone(),
    });
    let replayed = match (recorded, key, event) {
        (Some(recorded), UserKey::ClerkId(clerk_id), Some(event)) => {
            crate::store::replay(Some(recorded), clerk_id, event)?
        }
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
    async fn create_if_new(&mut self, cmd: &CreateUser) -> Result<Option<WriteResult>> {
        let created = create_if_new(&mut self.tx, cmd).await?;
        self.recorded_changes |= created.is_some();
        Ok(created)
    }

    async fn load(
        &mut self,
        key: &UserKey,
        event: Option<&EventContext>,
    ) -> Result<(Option<WriteResult>, Existing)> {
        load_state(&mut self.tx, key, event).await
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
        let (filter, bind) = user_where(user);
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select u.id, u.clerk_id from users u where {filter} for update"
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
            && let Some(created) = create_if_new(&mut *self.pool.acquire().await?, cmd).await?
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
        let mut locks: Vec<i64> = writes.iter().filter_map(UserWrite::group_lock).map(lock_key).collect();
        locks.sort_unstable();
        locks.dedup();
        let keys = locks.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "set local lock_timeout = {}; \
             select pg_advisory_xact_lock(k) from unnest(array[{keys}]::bigint[]) as k",
            GROUP_LOCK_TIMEOUT.as_millis()
        )))
        .execute(&mut *tx)
        .await?;
        txn::write_group(PgTx::new(tx, &self.signals), writes).await
    }
}
