//! The one error type of user-service: the domain's words for what went
//! wrong. The store maps database errors into it (`store::error`), and
//! transport code maps it to a gRPC status in exactly one place
//! (`grpc::status`).

use super::validation::FieldViolation;

/// Everything that can go wrong in a user-service operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller sent something invalid; nothing was written.
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The named resource does not exist.
    #[error("{resource} not found: {key}")]
    NotFound {
        /// What kind of thing was looked up (`user`, `user data`).
        resource: &'static str,
        /// How it was looked up, e.g. `clerk_id "user_123"`.
        key: String,
    },
    /// A resource with the same unique key already exists.
    #[error("{resource} already exists: {key}")]
    AlreadyExists {
        /// What kind of thing collided.
        resource: &'static str,
        /// The colliding key.
        key: String,
    },
    /// The caller's etag no longer matches the stored one.
    #[error("etag mismatch: the {resource} was changed since it was read (current etag {current})")]
    EtagMismatch {
        /// What kind of thing was written.
        resource: &'static str,
        /// The stored etag, so the caller can re-read and retry.
        current: String,
    },
    /// The caller is known but may not do this.
    #[error("{message}")]
    PermissionDenied {
        /// The `ErrorInfo.reason`, e.g. `NOT_YOUR_DATA`.
        reason: &'static str,
        /// What is refused and why.
        message: String,
    },
    /// The request is well-formed but the system state forbids it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A change-log cursor older than what retention keeps: changes after it
    /// are gone, so the caller must reload and follow again from now.
    #[error(
        "cursor is older than the change log's retention; reload the state and watch again with an \
         empty cursor (the oldest cursor still available is {oldest})"
    )]
    CursorExpired {
        /// The oldest cursor a follower may resume from.
        oldest: String,
    },
    /// The session token a stream was opened with has expired: the stream
    /// ends, and the client opens it again with a fresh token.
    #[error("session token has expired (exp); open the stream again with a fresh token")]
    SessionExpired,
    /// A stream reached its maximum age (that of its connection): the caller
    /// resumes from its last cursor, on this replica or another.
    #[error("the stream reached its maximum age; resume from your last cursor")]
    StreamAged,
    /// The database cannot be reached right now; retrying later may succeed.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The server is shutting down; a stream ends so the caller resumes on
    /// another replica (or after the restart) from its last cursor.
    #[error("user-service is shutting down; resume from your last cursor")]
    ShuttingDown,
    /// A bug or a broken invariant; details are logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

fn describe(violations: &[FieldViolation]) -> String {
    violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ")
}

impl Error {
    /// A single-field `InvalidArgument`.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    /// A `PermissionDenied` with `reason` and `message`.
    pub fn denied(reason: &'static str, message: impl Into<String>) -> Self {
        Self::PermissionDenied { reason, message: message.into() }
    }
}

/// Result alias for user-service operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
