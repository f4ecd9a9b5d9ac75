//! user-service, as the gateway calls it: the channel ([`channel`]: TLS, the
//! token, balancing over replicas), the requests built from Clerk objects
//! ([`requests`]), what replies and failures mean ([`outcome`]), the client
//! that sends them ([`sync`]) and the batches it sends them in ([`batch`]).
//! Their results become HTTP answers:
//!
//! | Event / result | HTTP | Body `outcome` | Why |
//! |---|---|---|---|
//! | applied (`EVENT_OUTCOME_APPLIED`) | 200 | `applied` | done |
//! | duplicate (`replayed = true`) | 200 | `duplicate` | already done; retry cannot help |
//! | stale (`EVENT_OUTCOME_STALE`) | 200 | `stale` | newer state stored; retry cannot help |
//! | user deleted (`EVENT_OUTCOME_USER_DELETED`) | 200 | `user_deleted` | deleted users never come back |
//! | outcome `UNSPECIFIED`/unknown on an OK reply | 200 | `unspecified` | the write succeeded; logged at warn |
//! | event type we do not sync (`organization.*`, `email.*`, ...) | 200 | `ignored` | acknowledged so Svix stops |
//! | gRPC `ALREADY_EXISTS` | 200 | `already_exists` | the user the event wants exists; a retry gets the same answer |
//! | gRPC `NOT_FOUND` on `user.deleted` | 200 | `already_gone` | the delete's goal is already met |
//! | gRPC `NOT_FOUND` on `user.created`/`user.updated` | 400 | error | contract breach (upserts never miss); keep it visible |
//! | gRPC `NOT_FOUND` on `session.*` (user not created yet), event younger than the retry window | 503 + `Retry-After` | error | its `user.created` may still be on its way |
//! | the same, event older than the retry window | 200 | `unknown_user` | the user will not appear by retrying; stop Svix |
//! | gRPC `INVALID_ARGUMENT`, `FAILED_PRECONDITION`, `OUT_OF_RANGE` | 400 | error with the gRPC message | the data is wrong; retrying cannot fix it, Svix marks it failed for a human |
//! | gRPC `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `ABORTED`, `CANCELLED`, `UNKNOWN`, connection errors, our deadline | 503 + `Retry-After` | error | transient: Svix's retry will likely succeed |
//! | gRPC `INTERNAL`, `DATA_LOSS`, `UNIMPLEMENTED`, `PERMISSION_DENIED`, `UNAUTHENTICATED` | 500 | error | a bug or misconfiguration; Svix retries until it is fixed |
//!
//! Request-level failures (bad signature, headers, body) are in
//! [`crate::error::RequestError`] and `gateway/STATUS_CODES.md`.

pub mod batch;
pub mod channel;
pub mod outcome;
pub mod replicas;
pub mod requests;
pub mod sync;

pub use channel::{Authorization, HEALTH_CHECK_METHOD, Upstream, UpstreamChannel};
pub use outcome::{Call, Outcome, classify_status};
pub use replicas::{Failover, ReplicaWatcher, Replicas};
pub use requests::{
    MAX_EVENT_TYPE_LEN, UPDATE_MASK_PATHS, WriteKey, activity_request, clerk_time, create_request,
    delete_request, event_context, login_request, session_user_key, update_request,
};
pub use sync::{UserSync, methods};
