//! The change log's words: what a change is, who made it, and the cursor
//! that orders the log.
//!
//! Every write records its changes in the same transaction (see
//! `store::txn`); the log is read back in cursor order by followers and
//! auditors.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::{
    user::User,
    write::{Change, EventContext},
};

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// A user was created.
    UserCreated,
    /// A user's fields changed.
    UserUpdated,
    /// A user was deleted (with their data).
    UserDeleted,
    /// A user data key was set.
    DataSet,
    /// A user data key was removed.
    DataDeleted,
}

impl ChangeKind {
    /// Every kind, in the order of the proto enum.
    pub const ALL: [Self; 5] =
        [Self::UserCreated, Self::UserUpdated, Self::UserDeleted, Self::DataSet, Self::DataDeleted];

    /// The kind as stored.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::UserCreated => "user_created",
            Self::UserUpdated => "user_updated",
            Self::UserDeleted => "user_deleted",
            Self::DataSet => "data_set",
            Self::DataDeleted => "data_deleted",
        }
    }

    /// Reads a stored kind.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// Whether the change is about the user rather than one data key.
    pub const fn is_user(self) -> bool {
        matches!(self, Self::UserCreated | Self::UserUpdated | Self::UserDeleted)
    }
}

/// Who made a change and through what.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Actor {
    /// The authenticated caller (`anonymous` when authentication is off).
    pub client: String,
    /// The webhook's `svix-id`, for event-driven writes.
    pub event_id: Option<String>,
    /// The webhook's event type, for event-driven writes.
    pub event_type: Option<String>,
    /// The administrator the caller named, as claimed.
    pub changed_by: Option<String>,
    /// The call's request id.
    pub request_id: Option<String>,
}

impl Actor {
    /// An actor for a caller, before any event or claim is known.
    pub fn new(client: impl Into<String>, request_id: Option<String>) -> Self {
        Self { client: client.into(), request_id, ..Self::default() }
    }

    /// The same actor, acting for `event` when there is one.
    #[must_use]
    pub fn with_event(mut self, event: Option<&EventContext>) -> Self {
        if let Some(event) = event {
            self.event_id = Some(event.idempotency_key.clone());
            self.event_type.clone_from(&event.event_type);
        }
        self
    }

    /// The same actor with the administrator the caller claims to act for.
    #[must_use]
    pub fn claiming(mut self, changed_by: Option<String>) -> Self {
        self.changed_by = changed_by;
        self
    }
}

/// A change to record, as a write produces it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewChange {
    /// The user's id (none for the deletion of a user never seen).
    pub user_id: Option<Uuid>,
    /// The user's Clerk id.
    pub clerk_id: String,
    /// What happened.
    pub kind: ChangeKind,
    /// The data key, for data changes.
    pub key: Option<String>,
    /// The value before.
    pub before: Option<Value>,
    /// The value after.
    pub after: Option<Value>,
}

impl NewChange {
    /// A user change from the user before and after.
    pub fn user(kind: ChangeKind, clerk_id: &str, before: Option<&User>, after: Option<&User>) -> Self {
        Self {
            user_id: after.or(before).map(|u| u.id),
            clerk_id: clerk_id.to_owned(),
            kind,
            key: None,
            before: before.map(user_value),
            after: after.map(user_value),
        }
    }

    /// A data change of `key`: set when `after` is some, deleted otherwise.
    pub fn data(
        user_id: Uuid,
        clerk_id: &str,
        key: &str,
        before: Option<Value>,
        after: Option<Value>,
    ) -> Self {
        let kind = if after.is_some() { ChangeKind::DataSet } else { ChangeKind::DataDeleted };
        Self {
            user_id: Some(user_id),
            clerk_id: clerk_id.to_owned(),
            kind,
            key: Some(key.to_owned()),
            before,
            after,
        }
    }
}

/// The changes a planned user write records: none for a write that leaves
/// the user's fields as they were (an event that only moves the sync time).
pub fn of_user_write(change: &Change, before: Option<&User>) -> Vec<NewChange> {
    match change {
        Change::None => Vec::new(),
        Change::Insert { user, .. } => {
            vec![NewChange::user(ChangeKind::UserCreated, &user.clerk_id, None, Some(user))]
        }
        Change::Update { user, .. } => {
            if before.map(user_value) == Some(user_value(user)) {
                return Vec::new();
            }
            vec![NewChange::user(ChangeKind::UserUpdated, &user.clerk_id, before, Some(user))]
        }
        // The values before are erased with the user's other changes anyway.
        Change::Delete { user_id, clerk_id } => vec![NewChange {
            user_id: *user_id,
            clerk_id: clerk_id.clone(),
            kind: ChangeKind::UserDeleted,
            key: None,
            before: None,
            after: None,
        }],
    }
}

/// A user as the log records it: the row's fields, without the bookkeeping
/// (`version`, `source_updated_at`) that says nothing about the user.
pub fn user_value(user: &User) -> Value {
    let p = &user.profile;
    serde_json::json!({
        "id": user.id,
        "clerk_id": user.clerk_id,
        "email": p.email,
        "first_name": p.first_name,
        "last_name": p.last_name,
        "username": p.username,
        "image_url": p.image_url,
        "role": user.role.as_str(),
        "status": user.status.as_str(),
    })
}

/// A position in the change log. Changes are ordered by the transaction that
/// wrote them, then by their order in it (see `store/CHANGES.md`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    /// The writing transaction's position.
    pub txid: i64,
    /// The change's position within the log.
    pub id: i64,
}

impl Cursor {
    /// Before every change.
    pub const START: Self = Self { txid: 0, id: 0 };
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.txid, self.id)
    }
}

impl FromStr for Cursor {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        const BAD: &str = "is not a cursor from this service (a `Change.cursor` or `Heartbeat.cursor`)";
        let (txid, id) = text.split_once('_').ok_or(BAD)?;
        let number = |s: &str| s.parse::<i64>().ok().filter(|n| *n >= 0 && !s.starts_with('+'));
        match (number(txid), number(id)) {
            (Some(txid), Some(id)) => Ok(Self { txid, id }),
            _ => Err(BAD.into()),
        }
    }
}

/// A change as the log holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedChange {
    /// Its position.
    pub cursor: Cursor,
    /// When it was written.
    pub at: DateTime<Utc>,
    /// What was recorded.
    pub change: NewChange,
    /// Who made it.
    pub actor: Actor,
    /// Whether its values were erased (the user was deleted).
    pub erased: bool,
}

/// Which changes a reader wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeFilter {
    /// Only this user's, by Clerk id (the log is keyed by it: a user's id
    /// is gone with the user).
    pub clerk_id: Option<String>,
    /// Only these data keys (user changes always match); empty: all.
    pub keys: Vec<String>,
}

impl ChangeFilter {
    /// Whether `change` is wanted.
    pub fn matches(&self, change: &NewChange) -> bool {
        if self.clerk_id.as_ref().is_some_and(|c| *c != change.clerk_id) {
            return false;
        }
        self.keys.is_empty()
            || change.kind.is_user()
            || change.key.as_ref().is_some_and(|k| self.keys.iter().any(|w| w == k))
    }
}

/// Filters and order of an audit listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only this user's, by Clerk id.
    pub clerk_id: Option<String>,
    /// Only changes by this client.
    pub actor: Option<String>,
    /// At or after.
    pub start: Option<DateTime<Utc>>,
    /// Before.
    pub end: Option<DateTime<Utc>>,
    /// Only this kind.
    pub kind: Option<ChangeKind>,
    /// Oldest first (else newest first).
    pub oldest_first: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_order_by_transaction_first() {
        let a = Cursor { txid: 7, id: 30 };
        let b = Cursor { txid: 8, id: 2 };
        assert!(a < b);
        assert_eq!(a.to_string().parse::<Cursor>(), Ok(a));
        for bad in ["", "7", "7_", "_3", "-1_2", "7_x", "+7_2", "1_2_3"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_key_filter_keeps_user_changes_and_the_named_keys() {
        let user = Uuid::now_v7();
        let filter = ChangeFilter { keys: vec!["preferences".into()], ..Default::default() };
        let set = |key: &str| NewChange::data(user, "user_1", key, None, Some(Value::Bool(true)));
        assert!(filter.matches(&set("preferences")));
        assert!(!filter.matches(&set("feature_flags")));
        assert!(filter.matches(&NewChange::user(ChangeKind::UserDeleted, "user_1", None, None)));
        let other = ChangeFilter { clerk_id: Some("user_2".into()), ..Default::default() };
        assert!(!other.matches(&set("preferences")));
    }
}
