//! What a user write asks for and what it answers: the commands the edge
//! parses, and the result recorded under an event's idempotency key.

use super::super::{
    change::Actor,
    user::{ClerkId, Profile, Role, SignupSource, Status, User, UserKey},
};

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
    pub clerk_id: ClerkId,
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
    pub(super) fn to_profile(&self) -> Profile {
        Profile {
            email: self.email.clone().flatten(),
            first_name: self.first_name.clone().flatten(),
            last_name: self.last_name.clone().flatten(),
            username: self.username.clone().flatten(),
            image_url: self.image_url.clone().flatten(),
        }
    }

    /// Applies the patch to a user; true when anything changed.
    pub(super) fn apply_to(&self, user: &mut User) -> bool {
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
    pub changed_by: Option<ClerkId>,
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
