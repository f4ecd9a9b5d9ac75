//! What a call's reply or failure means: an [`Outcome`] answered 200, or an
//! [`UpstreamError`] (see the table on [`crate::upstream`]).

use tonic::{Code, Status};
use userdata_proto::v1::EventOutcome;

use crate::error::UpstreamError;

/// What a delivered event did, reported as `{"outcome": ...}` with 200.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The event changed the stored state.
    Applied,
    /// The same `svix-id` was applied before; this is the earlier result.
    Duplicate,
    /// Older than the stored state; nothing changed.
    Stale,
    /// The user was deleted before; deleted users never come back.
    UserDeleted,
    /// user-service answered OK without an event outcome (contract drift).
    Unspecified,
    /// `ALREADY_EXISTS`: the user the event wants to exist does.
    AlreadyExists,
    /// `NOT_FOUND` on a delete: the user is already gone.
    AlreadyGone,
    /// An event type this gateway does not sync.
    Ignored,
    /// A session event, older than the unknown-user retry window, for a user
    /// user-service does not know; acknowledged so Svix stops retrying.
    UnknownUser,
}

impl Outcome {
    /// The value of `"outcome"` in the response body.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Duplicate => "duplicate",
            Self::Stale => "stale",
            Self::UserDeleted => "user_deleted",
            Self::Unspecified => "unspecified",
            Self::AlreadyExists => "already_exists",
            Self::AlreadyGone => "already_gone",
            Self::Ignored => "ignored",
            Self::UnknownUser => "unknown_user",
        }
    }

    pub(super) fn from_reply(outcome: i32, replayed: bool) -> Self {
        if replayed {
            return Self::Duplicate;
        }
        match EventOutcome::try_from(outcome) {
            Ok(EventOutcome::Applied) => Self::Applied,
            Ok(EventOutcome::Stale) => Self::Stale,
            Ok(EventOutcome::UserDeleted) => Self::UserDeleted,
            Ok(EventOutcome::Unspecified) | Err(_) => Self::Unspecified,
        }
    }
}

/// Which call a gRPC error came from; `NOT_FOUND` means different things.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `CreateUser`.
    Create,
    /// `UpdateUser`.
    Update,
    /// `DeleteUser`.
    Delete,
    /// `RecordLogin` or `RecordActivity` for a session event.
    Session,
}

/// Maps a failed gRPC call to an outcome (when the event's goal is met anyway)
/// or to the error that decides the HTTP status. See the module table.
pub fn classify_status(call: Call, status: &Status) -> Result<Outcome, UpstreamError> {
    let message = status.message().to_owned();
    let code = status.code();
    match code {
        Code::AlreadyExists => Ok(Outcome::AlreadyExists),
        Code::NotFound if call == Call::Delete => Ok(Outcome::AlreadyGone),
        // The user's `user.created` may still be on its way (Svix does not
        // order deliveries), so a retry can help.
        Code::NotFound if call == Call::Session => Err(UpstreamError::UnknownUser),
        Code::NotFound | Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            Err(UpstreamError::Rejected { code, message })
        }
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Cancelled
        | Code::Unknown => Err(UpstreamError::Unavailable { code, message }),
        // `Ok` as an error status means there was no reply to interpret.
        Code::Ok
        | Code::Internal
        | Code::DataLoss
        | Code::Unimplemented
        | Code::PermissionDenied
        | Code::Unauthenticated => Err(UpstreamError::Failed { code, message }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replayed_wins_over_the_recorded_outcome() {
        assert_eq!(Outcome::from_reply(EventOutcome::Applied as i32, true), Outcome::Duplicate);
        assert_eq!(Outcome::from_reply(EventOutcome::Stale as i32, false), Outcome::Stale);
        assert_eq!(Outcome::from_reply(EventOutcome::UserDeleted as i32, false), Outcome::UserDeleted);
        assert_eq!(Outcome::from_reply(99, false), Outcome::Unspecified);
    }

    #[test]
    fn transient_grpc_codes_become_503() {
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Aborted,
            Code::Unknown,
            Code::Cancelled,
        ] {
            let result = classify_status(Call::Update, &Status::new(code, "x"));
            assert!(matches!(result, Err(UpstreamError::Unavailable { .. })), "{code:?}");
        }
    }

    #[test]
    fn permanent_grpc_codes_become_400_and_internal_500() {
        for code in [Code::InvalidArgument, Code::FailedPrecondition, Code::OutOfRange] {
            let result = classify_status(Call::Create, &Status::new(code, "bad email"));
            assert!(matches!(result, Err(UpstreamError::Rejected { .. })));
        }
        let result = classify_status(Call::Create, &Status::internal("boom"));
        assert!(matches!(result, Err(UpstreamError::Failed { .. })));
    }

    #[test]
    fn not_found_is_done_for_deletes_but_an_error_for_updates() {
        let status = Status::not_found("no such user");
        assert!(matches!(classify_status(Call::Delete, &status), Ok(Outcome::AlreadyGone)));
        assert!(matches!(classify_status(Call::Update, &status), Err(UpstreamError::Rejected { .. })));
        assert!(matches!(
            classify_status(Call::Create, &Status::already_exists("exists")),
            Ok(Outcome::AlreadyExists)
        ));
    }

    #[test]
    fn a_session_for_a_user_not_yet_created_is_an_unknown_user() {
        let outcome = classify_status(Call::Session, &Status::not_found("user"));
        assert!(matches!(outcome, Err(UpstreamError::UnknownUser)));
    }
}
