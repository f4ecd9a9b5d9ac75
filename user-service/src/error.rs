//! The one error type of user-service. Transport code maps it to a gRPC status
//! in exactly one place (`grpc::status`).

use crate::domain::validation::FieldViolation;

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
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match err {
            E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::WorkerCrashed => {
                Self::Unavailable(err.to_string())
            }
            E::Database(ref db) if is_transient(db.code().as_deref()) => Self::Unavailable(err.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

/// SQLSTATE classes (Postgres) and result codes (SQLite) that mean "try again
/// later" rather than "this request is wrong".
fn is_transient(code: Option<&str>) -> bool {
    match code {
        // 08: connection exception, 53: insufficient resources, 57P01..03: admin
        // shutdown / crash / cannot connect now, 40001/40P01: serialization
        // failure / deadlock.
        Some(c) if c.starts_with("08") || c.starts_with("53") || c.starts_with("57P") => true,
        Some("40001" | "40P01") => true,
        // SQLite: 5 = SQLITE_BUSY, 6 = SQLITE_LOCKED (and extended codes).
        Some(c) => matches!(c.parse::<u32>().map(|n| n & 0xff), Ok(5 | 6)),
        None => false,
    }
}

impl Error {
    /// A `PermissionDenied` with `reason` and `message`.
    pub fn denied(reason: &'static str, message: impl Into<String>) -> Self {
        Self::PermissionDenied { reason, message: message.into() }
    }
}

/// Result alias for user-service operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
