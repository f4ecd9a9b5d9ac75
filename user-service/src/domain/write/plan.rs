//! The rules for writing users, as pure functions: given what is stored and
//! what was asked, decide what to change. Both stores run these inside their
//! transaction, so Postgres and SQLite can never disagree on the rules.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{CreateUser, DeleteUser, EventContext, Outcome, UpdateUser, UserPatch, WriteResult};
use crate::domain::{
    error::{Error, Result},
    keys,
    time::iso,
    user::{ClerkId, Profile, Role, SignupSource, Status, User, UserKey, etag_for},
};

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

pub(super) fn new_user(
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
        (keys::SIGNUP_DATE, Value::from(iso(now))),
        (keys::SIGNUP_SOURCE, Value::String(signup_source.as_str().into())),
    ];
    if event.is_some() {
        data.push((keys::LAST_CLERK_SYNC, Value::from(iso(now))));
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
            let user = new_user(cmd.clerk_id.into_inner(), cmd.profile, cmd.role, cmd.status, now, source);
            Ok(insert(user, cmd.signup_source, event.as_ref(), now))
        }
        (Existing::Deleted, None) => Err(Error::FailedPrecondition(format!(
            "user with clerk_id {:?} was deleted; deleted Clerk ids cannot be reused",
            cmd.clerk_id.as_str()
        ))),
        (Existing::Present(_), None) => Err(Error::AlreadyExists {
            resource: "user",
            key: format!("clerk_id {:?}", cmd.clerk_id.as_str()),
        }),
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
            let by =
                ChangedBy { actor: &cmd.actor.client, claimed: cmd.changed_by.as_ref().map(ClerkId::as_str) };
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
        data.push((keys::LAST_CLERK_SYNC, Value::from(iso(now))));
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
