//! The only place where errors become gRPC statuses.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::error::Error;

/// `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "userdata.v1";

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        let mut details = ErrorDetails::new();
        let (code, reason) = match &err {
            Error::InvalidArgument(violations) => {
                for v in violations {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
                }
                (Code::InvalidArgument, "INVALID_ARGUMENT")
            }
            Error::NotFound { .. } => (Code::NotFound, "NOT_FOUND"),
            Error::AlreadyExists { .. } => (Code::AlreadyExists, "ALREADY_EXISTS"),
            // AIP-154: a stale etag is ABORTED (re-read and retry).
            Error::EtagMismatch { .. } => (Code::Aborted, "ETAG_MISMATCH"),
            Error::PermissionDenied { reason, .. } => (Code::PermissionDenied, *reason),
            Error::FailedPrecondition(_) => (Code::FailedPrecondition, "FAILED_PRECONDITION"),
            Error::CursorExpired { oldest } => {
                let metadata = HashMap::from([("oldest_cursor".to_owned(), oldest.clone())]);
                details.set_error_info("CURSOR_EXPIRED", ERROR_DOMAIN, metadata);
                return Status::with_error_details(Code::OutOfRange, message, details);
            }
            Error::SessionExpired => (Code::Unauthenticated, "UNAUTHENTICATED"),
            Error::StreamAged => (Code::Unavailable, "STREAM_MAX_AGE"),
            Error::ShuttingDown => (Code::Unavailable, "SHUTTING_DOWN"),
            Error::Unavailable(_) => {
                tracing::warn!(error = %err, "database unavailable");
                (Code::Unavailable, "DATABASE_UNAVAILABLE")
            }
            Error::Internal(_) => {
                tracing::error!(error = %err, "internal error");
                // Never leak internals to callers.
                let mut details = ErrorDetails::new();
                details.set_error_info("INTERNAL", ERROR_DOMAIN, HashMap::new());
                return Status::with_error_details(Code::Internal, "internal error", details);
            }
        };
        details.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
        Status::with_error_details(code, message, details)
    }
}
