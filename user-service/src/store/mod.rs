//! Storage: the [`Store`] trait and its PostgreSQL and SQLite implementations.
//! SQL lives only below this module.

mod changes;
mod error;
mod group;
mod observed;
mod postgres;
mod rows;
mod sqlite;
mod txn;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use serde_json::Value;
use uuid::Uuid;

pub use self::{
    changes::{ChangeBatch, ChangeSignal},
    group::GroupStats,
    postgres::PgStore,
    sqlite::SqliteStore,
};
pub use crate::domain::data::DataSet;
use crate::domain::{
    change::{Actor, AuditQuery, ChangeFilter, Cursor, LoggedChange},
    error::{Error, Result},
    user::{Role, Status, User, UserKey},
    write::{CreateUser, DeleteUser, EventContext, UpdateUser, WriteResult},
};

/// Filters and position for one page of [`Store::list_users`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserFilter {
    /// Only this status.
    pub status: Option<Status>,
    /// Only this role.
    pub role: Option<Role>,
    /// Only this email, compared case-insensitively.
    pub email: Option<String>,
}

pub use crate::domain::data::DataEntry;

/// A closure that reads and changes a [`DataSet`]; an error aborts the write.
pub type DataEdit = Box<dyn FnOnce(&mut DataSet) -> Result<()> + Send>;

/// What a data edit left behind.
#[derive(Debug, Clone, Default)]
pub struct DataWrite {
    /// The edited keys' entries after the write (absent: deleted or unset).
    pub entries: BTreeMap<String, DataEntry>,
    /// For event-driven edits, what happened.
    pub outcome: Option<crate::domain::write::Outcome>,
    /// True when the idempotency key had been seen before (nothing written).
    pub replayed: bool,
}

/// One user's value of a key, from [`Store::data_for_users`].
#[derive(Debug, Clone, PartialEq)]
pub struct UserValue {
    /// The user's id.
    pub id: Uuid,
    /// The user's Clerk id.
    pub clerk_id: String,
    /// The value, if set.
    pub value: Option<Value>,
}

/// Everything user-service reads and writes. Every method is one transaction.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Checks that the database answers.
    async fn ping(&self) -> Result<()>;

    /// Closes the pool, waiting for connections to be returned.
    async fn close(&self);

    /// The connection pool right now, for metrics.
    fn pool_stats(&self) -> PoolStats {
        PoolStats::default()
    }

    /// Group commit so far, for metrics.
    fn group_stats(&self) -> GroupStats {
        GroupStats::default()
    }

    /// Creates a user with its initial user data (see `domain::write`).
    async fn create_user(&self, cmd: CreateUser) -> Result<WriteResult>;

    /// Reads one user.
    async fn get_user(&self, key: &UserKey) -> Result<User>;

    /// Lists users after `after` (exclusive) in id order, at most `limit`.
    async fn list_users(&self, filter: &UserFilter, after: Option<Uuid>, limit: u32) -> Result<Vec<User>>;

    /// Updates a user (or, for an event, creates it).
    async fn update_user(&self, cmd: UpdateUser) -> Result<WriteResult>;

    /// Deletes a user and its data, tombstoning its `clerk_id`.
    async fn delete_user(&self, cmd: DeleteUser) -> Result<WriteResult>;

    /// All user data rows of a user, by key (empty for an unknown user).
    async fn list_user_data(&self, user_id: Uuid) -> Result<Vec<DataEntry>> {
        match self.list_data(&UserKey::Id(user_id), None, u32::MAX).await {
            Err(Error::NotFound { .. }) => Ok(Vec::new()),
            other => other,
        }
    }

    /// The entries of `keys` for one user; `NOT_FOUND` for an unknown user.
    async fn read_data(&self, user: &UserKey, keys: &[&str]) -> Result<Vec<DataEntry>>;

    /// A page of a user's entries in key order, after `after`.
    async fn list_data(&self, user: &UserKey, after: Option<&str>, limit: u32) -> Result<Vec<DataEntry>>;

    /// Atomically reads `keys`, applies `edit` and writes what it changed,
    /// with the user locked. With an event: a seen idempotency key changes
    /// nothing (`replayed`), and a deleted user gives `Outcome::UserDeleted`.
    async fn edit_data(
        &self,
        user: &UserKey,
        keys: &[&str],
        event: Option<&EventContext>,
        actor: &Actor,
        edit: DataEdit,
    ) -> Result<DataWrite>;

    /// One key for many users at once; users that do not exist are absent.
    async fn data_for_users(&self, ids: &[Uuid], clerk_ids: &[String], key: &str) -> Result<Vec<UserValue>>;

    /// Removes idempotency records older than `age`; returns how many.
    async fn prune_processed_events(&self, age: Duration) -> Result<u64>;

    /// Wakes after commits that recorded changes (here or, on PostgreSQL, on
    /// another replica).
    fn change_signal(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Final changes after `after` that match `filter`, in log order, at most
    /// `limit` (see [`ChangeBatch`]).
    async fn read_changes(&self, after: Cursor, filter: &ChangeFilter, limit: u32) -> Result<ChangeBatch>;

    /// The position of the newest final change ([`Cursor::START`] when the
    /// log is empty): where a follower starting "now" begins.
    async fn change_head(&self) -> Result<Cursor>;

    /// Changes up to this cursor may have been pruned: a follower behind it
    /// has lost changes.
    async fn pruned_through(&self) -> Result<Cursor>;

    /// A page of the audit trail after `after` (in the query's order).
    async fn list_changes(
        &self,
        query: &AuditQuery,
        after: Option<Cursor>,
        limit: u32,
    ) -> Result<Vec<LoggedChange>>;

    /// Removes changes older than `age`; returns how many.
    async fn prune_changes(&self, age: Duration) -> Result<u64>;
}

/// A snapshot of the connection pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections lent out.
    pub in_use: u32,
    /// Connections ready in the pool.
    pub idle: u32,
    /// Calls waiting for a connection (known only to [`observed::Observed`]).
    pub waiting: u32,
}

/// Which database to use, from a `DATABASE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// `postgres://` or `postgresql://`.
    Postgres(String),
    /// `sqlite://path` or `sqlite::memory:`.
    Sqlite(String),
}

impl Backend {
    /// Chooses the backend from the URL scheme; anything else is an error
    /// rather than a silent fallback.
    pub fn from_url(url: &str) -> Result<Self, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(url.to_owned()))
        } else if url.starts_with("sqlite:") {
            Ok(Self::Sqlite(url.to_owned()))
        } else {
            Err("DATABASE_URL must start with postgres://, postgresql:// or sqlite:".into())
        }
    }
}

/// Connection settings shared by both backends.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Maximum pooled connections.
    pub max_connections: u32,
    /// How long a request waits for a pooled connection before `UNAVAILABLE`.
    pub acquire_timeout: Duration,
    /// Apply pending migrations on connect.
    pub migrate: bool,
    /// Most event writes committed in one transaction (group commit); 1
    /// commits each alone.
    pub group_commit_max: u16,
}

/// The default of [`ConnectOptions::group_commit_max`].
pub const GROUP_COMMIT_MAX: u16 = 64;

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(3),
            migrate: true,
            group_commit_max: GROUP_COMMIT_MAX,
        }
    }
}

/// Connects to the backend and, unless disabled, migrates it.
pub async fn connect(backend: &Backend, options: &ConnectOptions) -> Result<Arc<dyn Store>> {
    let store: Arc<dyn Store> = match backend {
        Backend::Postgres(url) => Arc::new(PgStore::connect(url, options).await?),
        Backend::Sqlite(url) => Arc::new(SqliteStore::connect(url, options).await?),
    };
    Ok(Arc::new(observed::Observed::new(store)))
}

/// Turns a failed migration into an error that says what to do.
fn migrate_error(err: sqlx::migrate::MigrateError) -> Error {
    match err {
        sqlx::migrate::MigrateError::Execute(e) => Error::from(e),
        other => Error::Internal(format!("migration failed: {other}")),
    }
}

/// An event as recorded under its idempotency key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct Recorded {
    /// The user it was for.
    pub clerk_id: String,
    /// The kind of write (empty for rows older than kinds).
    pub kind: String,
    /// The answer to replay.
    pub result: Option<sqlx::types::Json<WriteResult>>,
}

/// Turns a recorded event into the replayed answer, refusing a key reused for
/// another user or another kind of write (a caller bug, or a client claiming
/// keys, that must not silently succeed).
pub(super) fn replay(
    row: Option<Recorded>,
    clerk_id: &str,
    event: &EventContext,
) -> Result<Option<WriteResult>> {
    const FIELD: &str = "event_context.idempotency_key";
    match row {
        None => Ok(None),
        Some(recorded) if recorded.clerk_id != clerk_id => {
            Err(Error::invalid(FIELD, "was already used for another user"))
        }
        Some(recorded) if !recorded.kind.is_empty() && recorded.kind != event.kind => Err(Error::invalid(
            FIELD,
            format!("was already used for another kind of write ({})", recorded.kind),
        )),
        Some(Recorded { result, .. }) => {
            let result = result.map(|r| r.0);
            let mut result = result.unwrap_or(WriteResult { user: None, outcome: None, replayed: false });
            result.replayed = true;
            Ok(Some(result))
        }
    }
}

pub(super) fn unique_violation(err: sqlx::Error, clerk_id: &str) -> Error {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            Error::AlreadyExists { resource: "user", key: format!("clerk_id {clerk_id:?}") }
        }
        _ => err.into(),
    }
}

/// The current time at the precision both databases store (microseconds), so a
/// written user equals the same user read back.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(6)
}

/// The time before which records (idempotency keys, changes) older than `age`
/// were written:
/// `now - age`, or `None` when that lies before any representable time (no
/// record is that old, so there is nothing to prune). Never panics, whatever
/// the retention.
pub(crate) fn prune_cutoff(
    now: chrono::DateTime<chrono::Utc>,
    age: Duration,
) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::Duration::from_std(age).ok().and_then(|age| now.checked_sub_signed(age))
}

#[cfg(test)]
mod prune_tests {
    use super::*;

    #[test]
    fn the_prune_cutoff_is_now_minus_the_age_and_none_beyond_the_calendar() {
        let now = chrono::Utc::now();
        assert_eq!(prune_cutoff(now, Duration::from_secs(60)), Some(now - chrono::Duration::seconds(60)));
        assert_eq!(prune_cutoff(now, Duration::MAX), None);
        assert_eq!(prune_cutoff(now, Duration::from_secs(u64::MAX / 1000)), None);
    }
}
