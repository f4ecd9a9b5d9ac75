//! PostgreSQL store: the production backend.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{
    PgConnection, PgPool, Postgres, Transaction,
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
    txn::{self, DataTx, Record, UserTx},
};
use crate::{
    domain::error::{Error, Result},
    domain::{
        change::{Actor, AuditQuery, ChangeFilter, Cursor, LoggedChange, NewChange},
        keys,
        limits::NAME_HISTORY_LIMIT,
        user::{Profile, Role, Status, User, UserKey},
        write::{self, Change, CreateUser, DeleteUser, EventContext, Existing, UpdateUser, WriteResult},
    },
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

const USER_COLUMNS: &str = "id, clerk_id, email, first_name, last_name, username, image_url, \
     role, status, created_at, updated_at, source_updated_at, version";

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
        .bind(Json(crate::domain::change::user_value(user)))
        .bind(&actor.client)
        .bind(&actor.event_id)
        .bind(&actor.event_type)
        .bind(&actor.changed_by)
        .bind(&actor.request_id)
        .bind(cmd.event.as_ref().map(|e| e.source.as_str()))
        .bind(cmd.event.as_ref().map(|e| e.kind.as_str()))
        .fetch_one(db)
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
        "select pe.clerk_id as replay_clerk_id, pe.kind as replay_kind, pe.result as replay_result, \
                exists(select 1 from deleted_users where {tomb_filter}) as deleted, u.* \
         from (select 1) as one \
         left join lateral (select clerk_id, kind, result from processed_events \
             where idempotency_key = $2 and source in ($3, '') limit 1) pe on true \
         left join lateral (select {USER_COLUMNS} from users where {user_filter} for update) u on true"
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

/// Parameters `$n` of the idempotency record, shared by every write statement
/// so each change and its record are one statement.
const RECORD_EVENT: &str = "e as (insert into processed_events \
         (idempotency_key, clerk_id, outcome, result, processed_at, source, kind) \
     select $20, $21, $22, $23, now(), $35, $36 where $20::text is not null on conflict do nothing)";

/// Appends changes to the log: `$14` is the time, `$24`..`$34` the actor
/// and the changes (see [`bind_changes`]).
const RECORD_CHANGES: &str = "c as (insert into changes (at, user_id, clerk_id, kind, key, before, after, \
         actor_client, actor_event_id, actor_event_type, actor_changed_by, actor_request_id) \
     select $14, t.user_id, t.clerk_id, t.kind, t.key, t.before, t.after, $24, $25, $26, $27, $28 \
     from unnest($29::uuid[], $30::text[], $31::text[], $32::text[], $33::jsonb[], $34::jsonb[]) \
         as t(user_id, clerk_id, kind, key, before, after))";

/// A deletion takes the personal values out of the user's earlier changes
/// (keeping what happened, when and by whom) and out of the results recorded
/// for their earlier events, which a redelivery would otherwise give back.
const ERASE_USER: &str = "x as (update changes set before = null, after = null, erased = true \
         where clerk_id = $2 and not erased), \
     r as (update processed_events set result = result - 'user' where clerk_id = $2 and result ? 'user')";

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

/// Applies a planned change, records the event and appends the changes in
/// one statement.
async fn apply(
    tx: &mut PgConnection,
    change: &Change,
    changes: &[NewChange],
    actor: &Actor,
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
        Change::None => format!("with {RECORD_EVENT}, {RECORD_CHANGES} select 1"),
        Change::Insert { .. } => format!(
            "with u as (insert into users (id, clerk_id, email, first_name, last_name, username, image_url, \
                 role, status, created_at, updated_at, source_updated_at, version) \
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) returning id), \
             d as (insert into user_data (user_id, key, value, created_at, updated_at) \
                 select u.id, k, v, $14, $14 from u, unnest($15::text[], $16::jsonb[]) as t(k, v)), \
             {RECORD_EVENT}, {RECORD_CHANGES} select 1"
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
             {RECORD_EVENT}, {RECORD_CHANGES} select 1"
        ),
        Change::Delete { .. } => format!(
            "with u as (delete from users where id = $1), \
             t as (insert into deleted_users (clerk_id, user_id, deleted_at) values ($2, $1, $14) \
                 on conflict (clerk_id) do nothing), \
             {ERASE_USER}, {RECORD_EVENT}, {RECORD_CHANGES} select 1"
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
    // Every statement takes the same 36 parameters; each uses what it needs.
    let query = sqlx::query(sqlx::AssertSqlSafe(sql))
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
        .bind(record.map(|(_, _, r)| Json(r)));
    bind_changes(query, actor, changes)
        .bind(record.map(|(e, _, _)| e.source.as_str()))
        .bind(record.map(|(e, _, _)| e.kind.as_str()))
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
    let row: Option<super::Recorded> = sqlx::query_as(
        "select clerk_id, kind, result from processed_events \
         where idempotency_key = $1 and source in ($2, '') limit 1",
    )
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
        apply(&mut self.tx, change, changes, actor, record, now).await
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
        // A key range rather than LIKE, so the primary key's index serves it.
        let (count,): (i64,) = sqlx::query_as(
            "select count(*) from user_data where user_id = $1 and key >= 'custom.' and key < 'custom/'",
        )
        .bind(user_id)
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

    async fn record(&mut self, (event, clerk_id, result): Record<'_>, _now: DateTime<Utc>) -> Result<()> {
        record_event(&mut self.tx, event, clerk_id, result).await
    }

    async fn append_changes(
        &mut self,
        changes: &[NewChange],
        actor: &Actor,
        now: DateTime<Utc>,
    ) -> Result<()> {
        // The same parameter numbers as in `apply`'s statements.
        let sql = format!("with {RECORD_CHANGES} select 1");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for _ in 1..14 {
            query = query.bind(None::<i32>);
        }
        query = query.bind(now);
        for _ in 15..24 {
            query = query.bind(None::<i32>);
        }
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
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
        PoolStats { in_use: self.pool.size().saturating_sub(idle), idle, waiting: 0 }
    }

    async fn create_user(&self, cmd: CreateUser) -> Result<WriteResult> {
        self.group.write(&self.writer(), UserWrite::Create(cmd)).await
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
        self.group.write(&self.writer(), UserWrite::Update(cmd)).await
    }

    async fn delete_user(&self, cmd: DeleteUser) -> Result<WriteResult> {
        self.group.write(&self.writer(), UserWrite::Delete(cmd)).await
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
        actor: &Actor,
        edit: DataEdit,
    ) -> Result<DataWrite> {
        txn::edit_data(PgTx::new(self.pool.begin().await?, &self.signals), user, keys, event, actor, edit)
            .await
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
        let Some(cutoff) = super::prune_cutoff(Utc::now(), age) else {
            return Ok(0);
        };
        let done = sqlx::query("delete from processed_events where processed_at < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
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
        let (txid, id): (i64, i64) = sqlx::query_as("select pruned_txid, pruned_id from change_log_state")
            .fetch_one(&self.pool)
            .await?;
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
