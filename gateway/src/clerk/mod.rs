//! Clerk webhook payloads: the event envelope and the user objects we sync.
//!
//! Parsing is deliberately lenient where Clerk is inconsistent (unknown and
//! missing optional fields, `null` lists, absent `timestamp`/`instance_id`) and
//! strict only where an event could never be applied: a body that is not a
//! JSON object, a missing `type`, a user event without `data` or `data.id`.

/// `type` of the event sent when a user signs up or is created by an admin.
pub const USER_CREATED: &str = "user.created";
/// `type` of the event sent when a user's profile changes.
pub const USER_UPDATED: &str = "user.updated";
/// `type` of the event sent when a user is deleted.
pub const USER_DELETED: &str = "user.deleted";
/// A user signed in.
pub const SESSION_CREATED: &str = "session.created";
/// A session ended (sign-out).
pub const SESSION_ENDED: &str = "session.ended";
/// A session was removed.
pub const SESSION_REMOVED: &str = "session.removed";
/// A session was revoked.
pub const SESSION_REVOKED: &str = "session.revoked";

mod model;
mod parse;

pub use model::*;
pub use parse::*;

#[cfg(test)]
mod tests;
