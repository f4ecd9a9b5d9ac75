//! The rules for writing users, as pure functions: given what is stored and
//! what was asked, decide what to change. Both stores run these inside their
//! transaction, so Postgres and SQLite can never disagree on the rules.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    change::Actor,
    user::{Profile, Role, SignupSource, Status, User, UserKey, etag_for},
};
use crate::domain::error::{Error, Result};

/// Keys of the `user_data` rows this module writes.
pub mod keys {
    /// ISO-8601 time the user was created here.
    pub const SIGNUP_DATE: &str = "signup_date";
    /// `clerk`, `invite` or `admin`.
    pub const SIGNUP_SOURCE: &str = "signup_source";
    /// ISO-8601 time of the last write driven by a Clerk event.
    pub const LAST_CLERK_SYNC: &str = "last_clerk_sync";
    /// Array of `{first_name, last_name, timestamp, changed_by?, claimed_by?}`.
    pub const NAME_HISTORY: &str = "name_history";
}

/// `name_history` keeps at most this many entries, dropping the oldest.
pub const NAME_HISTORY_LIMIT: usize = 100;

/// Identifies a write that comes from an external event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventContext {
    /// The webhook's `svix-id`.
    pub idempotency_key: String,
    /// The source's `updated_at` (or event time), ms since the epoch.
    pub source_time_ms: i64,
    /// The event's type (`user.updated`), for the change log.
    pub event_type: Option<String>,
    /// Whose key it is: the authenticated client. Keys are namespaced by
    /// it, so one client cannot claim (and so block) another's events.
    pub source: String,
    /// The kind of write the key was used for (the RPC, and the event type
    /// when given): the same key for another kind of write is an error, not
    /// a duplicate.
    pub kind: String,
}

impl EventContext {
    /// The kind recorded for a write by `method` of an event of `event_type`.
    pub fn kind_of(method: &str, event_type: Option<&str>) -> String {
        match event_type {
            Some(event_type) => format!("{method} {event_type}"),
            None => method.to_owned(),
        }
    }
}

/// What an event-driven write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The stored state changed.
    Applied,
    /// The event was older than the stored state.
    Stale,
    /// The user had been deleted; nothing was brought back.
    UserDeleted,
}

impl Outcome {
    /// The outcome as stored in `processed_events.outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Stale => "stale",
            Self::UserDeleted => "user_deleted",
        }
    }
}

/// The result of a user write, as returned to the caller and, for events,
/// recorded under the idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WriteResult {
    /// The user after the write; `None` after a delete or when it was deleted.
    pub user: Option<User>,
    /// For event-driven writes, what happened.
    pub outcome: Option<Outcome>,
    /// True when this is the recorded result of an earlier call with the same
    /// idempotency key.
    #[serde(skip)]
    pub replayed: bool,
}

/// Creates a user.
#[derive(Debug, Clone)]
pub struct CreateUser {
    /// Clerk's id for the new user.
    pub clerk_id: String,
    /// Profile fields.
    pub profile: Profile,
    /// Initial role.
    pub role: Role,
    /// Initial status.
    pub status: Status,
    /// Stored as `signup_source`.
    pub signup_source: SignupSource,
    /// Present for Clerk-driven creates.
    pub event: Option<EventContext>,
    /// Who asks: recorded in the change log, and as `changed_by` in
    /// `name_history` when a create event updates a known user's name.
    pub actor: Actor,
}

/// Which fields an update changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPatch {
    /// New email (`Some(None)` clears it).
    pub email: Option<Option<String>>,
    /// New first name.
    pub first_name: Option<Option<String>>,
    /// New last name.
    pub last_name: Option<Option<String>>,
    /// New username.
    pub username: Option<Option<String>>,
    /// New image URL.
    pub image_url: Option<Option<String>>,
    /// New role (never set by events).
    pub role: Option<Role>,
    /// New status (never set by events).
    pub status: Option<Status>,
}

impl UserPatch {
    /// The profile a user would get if created from this patch.
    fn to_profile(&self) -> Profile {
        Profile {
            email: self.email.clone().flatten(),
            first_name: self.first_name.clone().flatten(),
            last_name: self.last_name.clone().flatten(),
            username: self.username.clone().flatten(),
            image_url: self.image_url.clone().flatten(),
        }
    }

    /// Applies the patch to a user; true when anything changed.
    fn apply_to(&self, user: &mut User) -> bool {
        let before = user.clone();
        let p = &mut user.profile;
        for (slot, new) in [
            (&mut p.email, &self.email),
            (&mut p.first_name, &self.first_name),
            (&mut p.last_name, &self.last_name),
            (&mut p.username, &self.username),
            (&mut p.image_url, &self.image_url),
        ] {
            if let Some(value) = new {
                slot.clone_from(value);
            }
        }
        if let Some(role) = self.role {
            user.role = role;
        }
        if let Some(status) = self.status {
            user.status = status;
        }
        *user != before
    }
}

/// Updates a user.
#[derive(Debug, Clone)]
pub struct UpdateUser {
    /// Which user.
    pub key: UserKey,
    /// What to change.
    pub patch: UserPatch,
    /// Write only if the stored version is this one.
    pub expected_version: Option<i64>,
    /// Clerk id of the admin the caller says made the change, recorded as
    /// `claimed_by` in `name_history` (as claimed, not verified).
    pub changed_by: Option<String>,
    /// Present for Clerk-driven updates.
    pub event: Option<EventContext>,
    /// Who asks (the authenticated caller): recorded in the change log and
    /// as `changed_by` in `name_history`.
    pub actor: Actor,
}

/// Deletes a user.
#[derive(Debug, Clone)]
pub struct DeleteUser {
    /// Which user.
    pub key: UserKey,
    /// Delete only if the stored version is this one.
    pub expected_version: Option<i64>,
    /// Present for Clerk-driven deletes.
    pub event: Option<EventContext>,
    /// Who asks, for the change log.
    pub actor: Actor,
}

/// What the store found for the user a write names.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant, reason = "short-lived, one per write")]
pub enum Existing {
    /// No such user, and it was never deleted.
    Missing,
    /// The user was deleted (its `clerk_id` is tombstoned).
    Deleted,
    /// The stored user, locked for this transaction.
    Present(User),
}

/// The changes a store must make, in one transaction.
#[derive(Debug, Clone)]
pub enum Change {
    /// Nothing to write.
    None,
    /// Insert a new user and its initial user data.
    Insert {
        /// The full new row.
        user: User,
        /// `(key, value)` rows to insert.
        data: Vec<(&'static str, Value)>,
    },
    /// Update a user row (already at its new version) and upsert user data.
    Update {
        /// The full row after the update.
        user: User,
        /// `(key, value)` rows to upsert.
        data: Vec<(&'static str, Value)>,
        /// An entry to append to `name_history`.
        name_entry: Option<Value>,
    },
    /// Delete the user (if present), cascading to its data, and tombstone its
    /// `clerk_id`.
    Delete {
        /// The row to delete, if it exists.
        user_id: Option<Uuid>,
        /// The id to remember as deleted.
        clerk_id: String,
    },
}

/// A decided write: what to change and what to answer.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The changes to make.
    pub change: Change,
    /// The answer, also recorded under the idempotency key.
    pub result: WriteResult,
}

impl Plan {
    fn nothing(user: Option<User>, outcome: Outcome) -> Self {
        Self { change: Change::None, result: WriteResult { user, outcome: Some(outcome), replayed: false } }
    }
}

/// ISO-8601 text for user data timestamps (the original plan's
/// `new Date().toISOString()` shape).
pub fn iso(time: DateTime<Utc>) -> Value {
    Value::String(time.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn ms_to_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_else(Utc::now)
}

fn check_version(user: &User, expected: Option<i64>) -> Result<()> {
    match expected {
        Some(v) if v != user.version => {
            Err(Error::EtagMismatch { resource: "user", current: etag_for(user.version) })
        }
        _ => Ok(()),
    }
}

fn new_user(
    clerk_id: String,
    profile: Profile,
    role: Role,
    status: Status,
    now: DateTime<Utc>,
    source: Option<i64>,
) -> User {
    User {
        id: Uuid::now_v7(),
        clerk_id,
        profile,
        role,
        status,
        created_at: now,
        updated_at: now,
        source_updated_at: source,
        version: 1,
    }
}

fn insert(user: User, signup_source: SignupSource, event: Option<&EventContext>, now: DateTime<Utc>) -> Plan {
    let mut data = vec![
        (keys::SIGNUP_DATE, iso(now)),
        (keys::SIGNUP_SOURCE, Value::String(signup_source.as_str().into())),
    ];
    if event.is_some() {
        data.push((keys::LAST_CLERK_SYNC, iso(now)));
    }
    Plan {
        result: WriteResult {
            user: Some(user.clone()),
            outcome: event.map(|_| Outcome::Applied),
            replayed: false,
        },
        change: Change::Insert { user, data },
    }
}

/// Decides a create.
pub fn plan_create(cmd: CreateUser, existing: Existing, now: DateTime<Utc>) -> Result<Plan> {
    let source = cmd.event.as_ref().map(|e| e.source_time_ms);
    match (existing, &cmd.event) {
        (Existing::Missing, event) => {
            let user = new_user(cmd.clerk_id, cmd.profile, cmd.role, cmd.status, now, source);
            Ok(insert(user, cmd.signup_source, event.as_ref(), now))
        }
        (Existing::Deleted, None) => Err(Error::FailedPrecondition(format!(
            "user with clerk_id {:?} was deleted; deleted Clerk ids cannot be reused",
            cmd.clerk_id
        ))),
        (Existing::Present(_), None) => {
            Err(Error::AlreadyExists { resource: "user", key: format!("clerk_id {:?}", cmd.clerk_id) })
        }
        (Existing::Deleted, Some(_)) => Ok(Plan::nothing(None, Outcome::UserDeleted)),
        // A create event for a user we already have (an update arrived first,
        // or Clerk re-sent it under a new id): apply it as a profile update.
        (Existing::Present(user), Some(event)) => {
            let patch = UserPatch {
                email: Some(cmd.profile.email),
                first_name: Some(cmd.profile.first_name),
                last_name: Some(cmd.profile.last_name),
                username: Some(cmd.profile.username),
                image_url: Some(cmd.profile.image_url),
                role: None,
                status: None,
            };
            let by = ChangedBy { actor: &cmd.actor.client, claimed: None };
            Ok(update_present(user, &patch, by, Some(event), now))
        }
    }
}

/// Decides an update.
pub fn plan_update(cmd: UpdateUser, existing: Existing, now: DateTime<Utc>) -> Result<Plan> {
    match (existing, &cmd.event) {
        (Existing::Missing | Existing::Deleted, None) => {
            Err(Error::NotFound { resource: "user", key: cmd.key.to_string() })
        }
        (Existing::Deleted, Some(_)) => Ok(Plan::nothing(None, Outcome::UserDeleted)),
        // Svix does not order deliveries: an update may beat its create.
        (Existing::Missing, Some(event)) => {
            let UserKey::ClerkId(clerk_id) = cmd.key else {
                return Err(Error::invalid("user.clerk_id", "is required with an event context"));
            };
            let user = new_user(
                clerk_id,
                cmd.patch.to_profile(),
                Role::default(),
                Status::default(),
                now,
                Some(event.source_time_ms),
            );
            Ok(insert(user, SignupSource::Clerk, Some(event), now))
        }
        (Existing::Present(user), event) => {
            check_version(&user, cmd.expected_version)?;
            let by = ChangedBy { actor: &cmd.actor.client, claimed: cmd.changed_by.as_deref() };
            Ok(update_present(user, &cmd.patch, by, event.as_ref(), now))
        }
    }
}

/// Who changed a name: the authenticated caller, and the admin it names.
struct ChangedBy<'a> {
    actor: &'a str,
    claimed: Option<&'a str>,
}

fn update_present(
    mut user: User,
    patch: &UserPatch,
    by: ChangedBy<'_>,
    event: Option<&EventContext>,
    now: DateTime<Utc>,
) -> Plan {
    if let Some(event) = event
        && user.source_updated_at.is_some_and(|stored| event.source_time_ms <= stored)
    {
        return Plan::nothing(Some(user), Outcome::Stale);
    }
    let old_name = (user.profile.first_name.clone(), user.profile.last_name.clone());
    let changed = patch.apply_to(&mut user);
    let mut data = Vec::new();
    if let Some(event) = event {
        user.source_updated_at = Some(event.source_time_ms);
        data.push((keys::LAST_CLERK_SYNC, iso(now)));
    }
    if !changed && event.is_none() {
        return Plan {
            change: Change::None,
            result: WriteResult { user: Some(user), outcome: None, replayed: false },
        };
    }
    let name_entry =
        (old_name != (user.profile.first_name.clone(), user.profile.last_name.clone())).then(|| {
            let when = event.map_or(now, |e| ms_to_time(e.source_time_ms));
            let mut entry = json!({
                "first_name": user.profile.first_name.clone().unwrap_or_default(),
                "last_name": user.profile.last_name.clone().unwrap_or_default(),
                "timestamp": iso(when),
                "changed_by": by.actor,
            });
            if let Some(admin) = by.claimed {
                entry["claimed_by"] = Value::String(admin.to_owned());
            }
            entry
        });
    user.version += 1;
    user.updated_at = now;
    Plan {
        result: WriteResult {
            user: Some(user.clone()),
            outcome: event.map(|_| Outcome::Applied),
            replayed: false,
        },
        change: Change::Update { user, data, name_entry },
    }
}

/// Decides a delete.
pub fn plan_delete(cmd: DeleteUser, existing: Existing) -> Result<Plan> {
    match (existing, &cmd.event) {
        (Existing::Missing | Existing::Deleted, None) => {
            Err(Error::NotFound { resource: "user", key: cmd.key.to_string() })
        }
        (Existing::Deleted, Some(_)) => Ok(Plan::nothing(None, Outcome::UserDeleted)),
        (Existing::Missing, Some(_)) => {
            let UserKey::ClerkId(clerk_id) = cmd.key else {
                return Err(Error::invalid("clerk_id", "is required with an event context"));
            };
            // Remember the id even though we never saw the user: its create may
            // still be in flight and must not bring it to life.
            Ok(Plan {
                change: Change::Delete { user_id: None, clerk_id },
                result: WriteResult { user: None, outcome: Some(Outcome::Applied), replayed: false },
            })
        }
        (Existing::Present(user), event) => {
            check_version(&user, cmd.expected_version)?;
            Ok(Plan {
                change: Change::Delete { user_id: Some(user.id), clerk_id: user.clerk_id },
                result: WriteResult {
                    user: None,
                    outcome: event.as_ref().map(|_| Outcome::Applied),
                    replayed: false,
                },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: &str, ms: i64) -> Option<EventContext> {
        Some(EventContext {
            idempotency_key: key.into(),
            source_time_ms: ms,
            event_type: None,
            source: String::new(),
            kind: String::new(),
        })
    }

    fn stored(first: &str, source: Option<i64>) -> User {
        let mut u =
            new_user("user_1".into(), Profile::default(), Role::User, Status::Active, Utc::now(), source);
        u.profile.first_name = Some(first.into());
        u
    }

    fn rename(first: &str) -> UserPatch {
        UserPatch { first_name: Some(Some(first.into())), ..Default::default() }
    }

    fn update(patch: UserPatch, event: Option<EventContext>) -> UpdateUser {
        UpdateUser {
            key: UserKey::ClerkId("user_1".into()),
            patch,
            expected_version: None,
            changed_by: None,
            event,
            actor: Actor::new("gateway", None),
        }
    }

    #[test]
    fn an_older_event_is_stale_and_changes_nothing() {
        let plan = plan_update(
            update(rename("New"), event("k", 5)),
            Existing::Present(stored("Old", Some(10))),
            Utc::now(),
        )
        .unwrap();
        assert!(matches!(plan.change, Change::None));
        assert_eq!(plan.result.outcome, Some(Outcome::Stale));
    }

    #[test]
    fn an_event_as_old_as_the_stored_state_is_stale() {
        let plan = plan_update(
            update(rename("New"), event("k", 10)),
            Existing::Present(stored("Old", Some(10))),
            Utc::now(),
        )
        .unwrap();
        assert_eq!(plan.result.outcome, Some(Outcome::Stale));
    }

    #[test]
    fn a_name_change_appends_history_and_an_unchanged_name_does_not() {
        let plan = plan_update(
            update(rename("New"), event("k", 11)),
            Existing::Present(stored("Old", Some(10))),
            Utc::now(),
        )
        .unwrap();
        let Change::Update { name_entry: Some(entry), .. } = plan.change else {
            panic!("expected a name entry")
        };
        assert_eq!(entry["first_name"], "New");
        assert_eq!(entry["last_name"], "");

        let plan = plan_update(
            update(rename("Old"), event("k", 12)),
            Existing::Present(stored("Old", Some(10))),
            Utc::now(),
        )
        .unwrap();
        assert!(matches!(plan.change, Change::Update { name_entry: None, .. }));
    }

    #[test]
    fn an_update_before_the_create_creates_the_user() {
        let plan = plan_update(update(rename("A"), event("k", 1)), Existing::Missing, Utc::now()).unwrap();
        let Change::Insert { user, data } = plan.change else { panic!("expected insert") };
        assert_eq!(user.profile.first_name.as_deref(), Some("A"));
        assert!(data.iter().any(|(k, v)| *k == keys::SIGNUP_SOURCE && v == "clerk"));
    }

    #[test]
    fn events_for_deleted_users_never_resurrect_them() {
        for plan in [
            plan_update(update(rename("A"), event("k", 99)), Existing::Deleted, Utc::now()).unwrap(),
            plan_create(
                CreateUser {
                    clerk_id: "user_1".into(),
                    profile: Profile::default(),
                    role: Role::User,
                    status: Status::Active,
                    signup_source: SignupSource::Clerk,
                    event: event("k", 99),
                    actor: Actor::new("gateway", None),
                },
                Existing::Deleted,
                Utc::now(),
            )
            .unwrap(),
        ] {
            assert!(matches!(plan.change, Change::None));
            assert_eq!(plan.result.outcome, Some(Outcome::UserDeleted));
        }
    }

    #[test]
    fn a_stale_etag_is_rejected() {
        let mut cmd = update(rename("B"), None);
        cmd.expected_version = Some(7);
        assert!(matches!(
            plan_update(cmd, Existing::Present(stored("A", None)), Utc::now()),
            Err(Error::EtagMismatch { .. })
        ));
    }

    #[test]
    fn an_admin_update_that_changes_nothing_keeps_the_version() {
        let user = stored("A", None);
        let plan =
            plan_update(update(rename("A"), None), Existing::Present(user.clone()), Utc::now()).unwrap();
        assert!(matches!(plan.change, Change::None));
        assert_eq!(plan.result.user.unwrap().version, user.version);
    }
}
