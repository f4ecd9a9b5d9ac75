//! gRPC status codes by their documented names, for metric labels.

use tonic::Code;

/// The canonical name of a code, as gRPC documents it (`NOT_FOUND`): the
/// `code` label of both services' gRPC metrics, so one query reads either.
pub fn name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_documented_upper_snake_case() {
        assert_eq!(name(Code::Ok), "OK");
        assert_eq!(name(Code::NotFound), "NOT_FOUND");
        assert_eq!(name(Code::Unauthenticated), "UNAUTHENTICATED");
        // Every code 0..=16 has its own name.
        let names: std::collections::BTreeSet<_> = (0..=16).map(|n| name(Code::from_i32(n))).collect();
        assert_eq!(names.len(), 17);
        assert!(names.iter().all(|n| n.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')));
    }
}
