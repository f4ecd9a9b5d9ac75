//! PostgreSQL store: the production backend.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{
    PgConnection, PgPool, Postgres, Row, Transaction,
    postgres::{PgArguments, PgConnectOptions, PgListener, PgPoolOptions},
    query::Query,
    types::Json,
};
use tokio::sync::Notify;
use uuid::Uuid;

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

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// How long a group waits for a lock before it rolls back and its writes run
/// alone: far above a normal transaction's hold, far below a webhook's
/// deadline.
const GROUP_LOCK_TIMEOUT: Duration = Duration::from_millis(250);

/// The channel on which replicas tell each other that changes committed.
const CHANGES_CHANNEL: &str = "userdata_changes";

/// A [`Store`] on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    signals: Arc<Signals>,
    group: GroupCommit,
}

/// What user writes need, alone or in a group (no handle on the group queue,
/// so the group workers end with the store).
#[derive(Debug, Clone)]
struct PgWriter {
    pool: PgPool,
    signals: Arc<Signals>,
}

/// Wake-ups for change-log readers: here at once, on other replicas through
/// `NOTIFY`, sent after commit by one task so writers never wait for it.
#[derive(Debug, Default)]
struct Signals {
    local: ChangeSignal,
    notify_replicas: Notify,
    /// The listening and notifying tasks, which end with the store.
    tasks: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for Signals {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.get_mut() {
            tasks.iter().for_each(tokio::task::AbortHandle::abort);
        }
    }
}

impl Signals {
    fn committed(&self) {
        self.local.wake();
        self.notify_replicas.notify_one();
    }
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
        let writer = PgWriter { pool: pool.clone(), signals: signals.clone() };
        // Half the pool for groups in flight: reads and other writes keep the rest.
        let workers = usize::try_from(options.max_connections / 2).unwrap_or(1);
        let group =
            GroupCommit::start(writer, GroupOptions { max: usize::from(options.group_commit_max), workers });
        Ok(Self { pool, signals, group })
    }

    fn writer(&self) -> PgWriter {
        PgWriter { pool: self.pool.clone(), signals: self.signals.clone() }
    }

    /// The migrator, for tests that prepare their own databases.
    pub fn migrator() -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
    }
}

/// Listens for other replicas' commits. Called before the store is handed
/// out, so a replica that is up hears every later `NOTIFY` (if it cannot
/// listen yet, the background task keeps trying and the poll covers the gap).
async fn listen(url: &str) -> Option<PgListener> {
    let listening = async {
        let mut listener = PgListener::connect(url).await?;
        listener.listen(CHANGES_CHANNEL).await?;
        Ok::<_, sqlx::Error>(listener)
    };
    match listening.await {
        Ok(listener) => Some(listener),
        Err(err) => {
            tracing::warn!(error = %err, "cannot LISTEN for changes yet; retrying in the background");
            None
        }
    }
}

/// Wakes local readers whenever another replica notifies (and after a lost
/// connection, since notifications may have been missed meanwhile). Listens
/// on a connection of its own, outside the pool. Aborted when the store goes.
async fn listen_for_replicas(
    url: String,
    mut listener: Option<PgListener>,
    signals: std::sync::Weak<Signals>,
) {
    loop {
        let Some(current) = listener.as_mut() else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            listener = listen(&url).await;
            continue;
        };
        let received = current.try_recv().await;
        let Some(signals) = signals.upgrade() else { return };
        match received {
            Ok(Some(_)) => {}
            // The connection dropped (sqlx reconnects on the next call):
            // notifications may have been missed, so catch up.
            Ok(None) => {}
            Err(_) => listener = None,
        }
        signals.local.wake();
    }
}

/// Sends `NOTIFY` after local commits that recorded changes, coalesced: at
/// most one in flight and one every few milliseconds.
async fn notify_replicas(pool: PgPool, signals: std::sync::Weak<Signals>) {
    loop {
        let Some(strong) = signals.upgrade() else { return };
        // Wake up now and then to notice that the store is gone.
        let woke = tokio::time::timeout(Duration::from_secs(5), strong.notify_replicas.notified()).await;
        drop(strong);
        if woke.is_err() {
            continue;
        }
        if pool.is_closed() {
            return;
        }
        if let Err(err) = sqlx::query("select pg_notify($1, '')").bind(CHANGES_CHANNEL).execute(&pool).await {
            tracing::debug!(error = %err, "cannot NOTIFY other replicas; their safety poll will catch up");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
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
async fn create_if_new(db: &mut PgConnection, cmd: &CreateUser) -> Result<Option<WriteResult>> {
    let now = super::now();
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
struct StateRow {
    replay_clerk_id: Option<String>,
    replay_kind: Option<String>,
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
    let recorded = row.replay_clerk_id.clone().map(|clerk_id| super::Recorded {
        clerk_id,
        kind: row.replay_kind.clone().unwrap_or_default(),
        result: row.replay_result.clone(),
    });
    let replayed = match (recorded, key, event) {
        (Some(recorded), UserKey::ClerkId(clerk_id), Some(event)) => {
            super::replay(Some(recorded), clerk_id, event)?
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

/// Binds a user's 13 columns, in [`rows::USER_COLUMNS`] order, as `$1`..`$13`.
fn bind_user<'q>(
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
fn bind_profile<'q>(
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
fn log_ctes(at: usize, n: usize) -> String {
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
fn changes_cte(at: usize, n: usize) -> String {
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

/// A deletion takes the personal values out of the user's earlier changes
/// (keeping what happened, when and by whom) and out of the results recorded
/// for their earlier events, which a redelivery would otherwise give back.
const ERASE_USER: &str = "x as (update changes set before = null, after = null, erased = true \
         where clerk_id = $2 and not erased), \
     r as (update processed_events set result = result - 'user' where clerk_id = $2 and result ? 'user')";

/// Binds the parameters of [`log_ctes`]: the record, then [`bind_changes`].
fn bind_log<'q>(
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
fn bind_changes<'q>(
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
fn data_arrays<'a>(data: &'a [(&'static str, Value)]) -> (Vec<&'static str>, Vec<Json<&'a Value>>) {
    data.iter().map(|(k, v)| (*k, Json(v))).unzip()
}

/// What every kind of change records besides itself.
#[derive(Clone, Copy)]
struct Log<'a> {
    changes: &'a [NewChange],
    actor: &'a Actor,
    record: Option<Record<'a>>,
    now: DateTime<Utc>,
}

/// Applies a planned change, records the event and appends the changes in
/// one statement: one function per kind of change, each binding only what
/// its statement uses.
async fn apply(tx: &mut PgConnection, change: &Change, log: Log<'_>) -> Result<()> {
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
async fn apply_none(tx: &mut PgConnection, log: Log<'_>) -> Result<()> {
    let sql = format!("with {} select 1", log_ctes(1, 2));
    let query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(log.now);
    bind_log(query, log.record, log.actor, log.changes).execute(tx).await?;
    Ok(())
}

/// Inserts the user and its initial data.
async fn apply_insert(
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
        .map_err(|e| super::unique_violation(e, &user.clerk_id))?;
    Ok(())
}

/// Updates the user, upserts its data and appends to its name history.
async fn apply_update(
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
        .map_err(|e| super::unique_violation(e, &user.clerk_id))?;
    Ok(())
}

/// Deletes the user and its data, tombstones its `clerk_id` and erases its
/// personal values from the log and the recorded results.
async fn apply_delete(
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

async fn recorded_result(
    tx: &mut PgConnection,
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
fn bind_key<'q>(
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
fn user_where(key: &UserKey) -> (&'static str, String) {
    match key {
        UserKey::Id(id) => ("u.id = $1::text::uuid", id.to_string()),
        UserKey::ClerkId(clerk_id) => ("u.clerk_id = $1", clerk_id.clone()),
    }
}

async fn is_tombstoned(tx: &mut PgConnection, key: &UserKey) -> Result<bool> {
    let found = bind_key(sqlx::query(rows::tombstone_sql(key)), key).fetch_optional(tx).await?;
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
                let row: EntryRow = sqlx::query_as(rows::UPSERT_ENTRY)
                    .bind(user_id)
                    .bind(&key)
                    .bind(Json(&value))
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                entries.insert(key, entry(row));
            }
            None => {
                sqlx::query(rows::DELETE_ENTRY).bind(user_id).bind(&key).execute(&mut *tx).await?;
                entries.remove(&key);
            }
        }
    }
    Ok(entries)
}

/// A transaction, with the steps of the shared write algorithms. A commit
/// that recorded changes wakes change-log readers.
struct PgTx {
    tx: Transaction<'static, Postgres>,
    signals: Arc<Signals>,
    recorded_changes: bool,
}

impl PgTx {
    fn new(tx: Transaction<'static, Postgres>, signals: &Arc<Signals>) -> Self {
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
        self.group.write(&self.writer(), UserWrite::Create(cmd)).await
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
        self.group.write(&self.writer(), UserWrite::Update(cmd)).await
    }

    async fn delete_user(&self, cmd: DeleteUser) -> Result<WriteResult> {
        self.group.write(&self.writer(), UserWrite::Delete(cmd)).await
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
        txn::edit_data(PgTx::new(self.pool.begin().await?, &self.signals), user, keys, event, actor, edit)
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
        self.signals.local.subscribe()
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
