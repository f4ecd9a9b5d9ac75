//! The two ways a webhook delivery can fail: before user-service is called
//! ([`RequestError`]: the request, its signature, its event, our limits) and
//! while calling it ([`UpstreamError`]).
//!
//! Each is answered and logged in one place, `http::error`; the table of
//! answers is in `gateway/STATUS_CODES.md` and on [`crate::upstream`].

use crate::clerk::InvalidEvent;

/// Why a request was refused before it reached user-service.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// `Content-Type` is not `application/json` (415).
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    /// The body exceeds the size limit (413).
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body could not be read, e.g. the client hung up (400).
    #[error("request body could not be read")]
    UnreadableBody,
    /// A required Svix header is absent (400).
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// A Svix header is present but unusable, e.g. a non-numeric timestamp
    /// (400).
    #[error("malformed header {0}")]
    MalformedHeader(&'static str),
    /// The body is not UTF-8, so Svix cannot have signed it (400).
    #[error("request body is not valid UTF-8")]
    NonUtf8Body,
    /// No `v1` signature matches any configured secret (401).
    #[error("no valid webhook signature")]
    InvalidSignature,
    /// `svix-timestamp` is more than 5 minutes away from our clock (401): a
    /// replayed or badly delayed request. Svix re-signs every retry with a
    /// fresh timestamp, so genuine deliveries are not affected.
    #[error("webhook signature timestamp is {0}")]
    SignatureExpired(TimestampSkew),
    /// The verified body can never be applied (400).
    #[error(transparent)]
    InvalidEvent(#[from] InvalidEvent),
    /// The gateway itself is misconfigured (500).
    #[error("webhook verifier is misconfigured")]
    Misconfigured,
    /// The client sent more requests than its rate limit allows (429 with
    /// `Retry-After`).
    #[error("too many requests; retry later")]
    RateLimited {
        /// Seconds until a request will be accepted again.
        retry_after: u32,
    },
    /// Too many requests are in progress on the gateway as a whole; refused
    /// before reading the body.
    #[error("the gateway is busy; retry later")]
    Overloaded,
    /// Too many requests from this client are in progress already
    /// (`--max-in-flight-per-ip`); refused before reading the body.
    #[error("too many requests from this client are in progress; retry later")]
    ClientOverloaded,
}

/// Which side of the tolerance window a signature timestamp fell on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimestampSkew {
    /// Older than the tolerance.
    #[error("too old")]
    TooOld,
    /// Further in the future than the tolerance.
    #[error("in the future")]
    InFuture,
}

/// Why a genuine event was not applied by user-service. The gRPC message is
/// kept for the log; only `Rejected` passes it on, because it says what to
/// fix.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// user-service refused the event for a reason retrying cannot fix (400).
    #[error("user-service rejected the event ({code:?}): {message}")]
    Rejected {
        /// gRPC status code.
        code: tonic::Code,
        /// gRPC status message.
        message: String,
    },
    /// user-service could not be reached or asked us to come back later (503
    /// with `Retry-After`).
    #[error("user-service unavailable ({code:?}); retry later")]
    Unavailable {
        /// gRPC status code (`Unavailable`, `DeadlineExceeded`, ...).
        code: tonic::Code,
        /// gRPC status message; logged, not sent to the client.
        message: String,
    },
    /// A `session.*` event names a user user-service does not know, and the
    /// event is young enough that its `user.created` may still come (503 with
    /// `Retry-After`).
    #[error("the session's user is not known to user-service yet; retry later")]
    UnknownUser,
    /// user-service failed internally or the call is misconfigured (500).
    #[error("user-service failed ({code:?})")]
    Failed {
        /// gRPC status code.
        code: tonic::Code,
        /// gRPC status message; logged, not sent to the client.
        message: String,
    },
}

/// An error and its sources on one line: tonic and reqwest keep the cause
/// (such as "connection reset") in the source chain, not in the message.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
