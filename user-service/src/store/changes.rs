//! What both backends share about the change log: the row as read, a batch
//! of final changes, and the signal that wakes readers after a commit.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use tokio::sync::watch;
use uuid::Uuid;

use crate::{
    domain::change::{Actor, ChangeKind, Cursor, LoggedChange, NewChange},
    domain::error::{Error, Result},
};

/// Columns of a change row, in [`ChangeRow`]'s order; SQLite selects its
/// `id` as `txid` too.
pub(super) const CHANGE_COLUMNS: &str = "at, user_id, clerk_id, kind, key, before, after, actor_client, \
     actor_event_id, actor_event_type, actor_changed_by, actor_request_id, erased";

/// A change row as read; `I` is how the backend stores user ids.
#[derive(sqlx::FromRow)]
pub(super) struct ChangeRow<I> {
    pub txid: i64,
    pub id: i64,
    pub at: DateTime<Utc>,
    pub user_id: Option<I>,
    pub clerk_id: String,
    pub kind: String,
    pub key: Option<String>,
    pub before: Option<Json<Value>>,
    pub after: Option<Json<Value>>,
    pub actor_client: String,
    pub actor_event_id: Option<String>,
    pub actor_event_type: Option<String>,
    pub actor_changed_by: Option<String>,
    pub actor_request_id: Option<String>,
    pub erased: bool,
}

impl<I: Into<Uuid>> TryFrom<ChangeRow<I>> for LoggedChange {
    type Error = Error;

    fn try_from(row: ChangeRow<I>) -> Result<Self> {
        let kind = ChangeKind::parse(&row.kind)
            .ok_or_else(|| Error::Internal(format!("unknown change kind {:?}", row.kind)))?;
        Ok(Self {
            cursor: Cursor { txid: row.txid, id: row.id },
            at: row.at,
            change: NewChange {
                user_id: row.user_id.map(Into::into),
                clerk_id: row.clerk_id,
                kind,
                key: row.key,
                before: row.before.map(|j| j.0),
                after: row.after.map(|j| j.0),
            },
            actor: Actor {
                client: row.actor_client,
                event_id: row.actor_event_id,
                event_type: row.actor_event_type,
                changed_by: row.actor_changed_by,
                request_id: row.actor_request_id,
            },
            erased: row.erased,
        })
    }
}

/// Final changes after a cursor, as read by [`super::Store::read_changes`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangeBatch {
    /// The matching changes, in log order.
    pub changes: Vec<LoggedChange>,
    /// Everything final up to here has been read: resume after it. At least
    /// the last change's cursor.
    pub head: Cursor,
    /// Whether there may be more final changes after `head` (the batch hit
    /// its limit).
    pub more: bool,
    /// Whether committed changes exist that are not final yet (an older
    /// transaction is still running): read again soon.
    pub held_back: bool,
}

/// Wakes change-log readers: bumped after every local commit that recorded
/// changes and, on PostgreSQL, when another replica says it did.
#[derive(Debug)]
pub struct ChangeSignal {
    tx: watch::Sender<u64>,
}

impl Default for ChangeSignal {
    fn default() -> Self {
        Self { tx: watch::Sender::new(0) }
    }
}

impl ChangeSignal {
    /// Wakes every reader.
    pub fn wake(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees each later wake-up (coalesced).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}
