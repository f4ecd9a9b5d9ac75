//! Turning verified Clerk events into user-service gRPC calls, and their
//! results into HTTP answers.
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

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use prost_types::{FieldMask, Timestamp};
use tonic::{Code, Status, metadata::MetadataValue};
use userdata_proto::v1::{
    CreateUserRequest, DeleteUserRequest, EventContext, EventOutcome, LoginRecord, RecordActivityRequest,
    RecordLoginRequest, SignupSource, UpdateUserRequest, User,
    user_data_service_client::UserDataServiceClient, user_service_client::UserServiceClient,
};

use crate::{
    clerk::{DeletedUserJson, Event, Payload, SessionJson, UserJson},
    config::DEFAULT_UNKNOWN_USER_RETRY_WINDOW,
    error::UpstreamError,
    metrics::Metrics,
    request_id::{REQUEST_ID, RequestId},
    upstream::{Failover, UpstreamChannel},
};

/// gRPC method names, as the `method` label of the upstream metrics.
pub mod methods {
    /// `UserService/CreateUser`.
    pub const CREATE_USER: &str = "userdata.v1.UserService/CreateUser";
    /// `UserService/UpdateUser`.
    pub const UPDATE_USER: &str = "userdata.v1.UserService/UpdateUser";
    /// `UserService/DeleteUser`.
    pub const DELETE_USER: &str = "userdata.v1.UserService/DeleteUser";
    /// `UserDataService/RecordLogin`.
    pub const RECORD_LOGIN: &str = "userdata.v1.UserDataService/RecordLogin";
    /// `UserDataService/RecordActivity`.
    pub const RECORD_ACTIVITY: &str = "userdata.v1.UserDataService/RecordActivity";
}

/// The profile fields a Clerk update overwrites (all Clerk-owned fields;
/// `role` and `status` belong to this application and are never named).
pub const UPDATE_MASK_PATHS: [&str; 5] = ["email", "first_name", "last_name", "username", "image_url"];

/// Envelope timestamps below this are taken as seconds, not milliseconds:
/// Clerk documents milliseconds, but its OpenAPI examples use seconds. 10^11
/// ms is March 1973, 10^11 s is the year 5138, so the ranges cannot overlap.
const SECONDS_OR_MILLIS_THRESHOLD: i64 = 100_000_000_000;

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

    fn from_reply(outcome: i32, replayed: bool) -> Self {
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

/// One of the gateway's calls: which kind (for error mapping) and its gRPC
/// method (for the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rpc {
    call: Call,
    method: &'static str,
}

/// What every call made for one event shares: the request id sent along and
/// the event's deadline.
#[derive(Debug, Clone, Copy)]
struct Scope<'a> {
    request_id: &'a RequestId,
    deadline: Instant,
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

/// Converts a Clerk time (milliseconds; seconds tolerated, see
/// [`SECONDS_OR_MILLIS_THRESHOLD`]) to a protobuf timestamp. Non-positive
/// values are treated as absent.
pub fn clerk_time(value: i64) -> Option<Timestamp> {
    if value <= 0 {
        return None;
    }
    let millis = if value < SECONDS_OR_MILLIS_THRESHOLD { value.checked_mul(1000)? } else { value };
    let nanos = i32::try_from(millis.rem_euclid(1000) * 1_000_000).ok()?;
    Some(Timestamp { seconds: millis.div_euclid(1000), nanos })
}

/// Longest `EventContext.event_type` user-service accepts.
pub const MAX_EVENT_TYPE_LEN: usize = 64;

/// The event context of a write: the idempotency key, the source time and the
/// event type (sent only when it is 1 to [`MAX_EVENT_TYPE_LEN`] characters;
/// it is informational, so an odd one must not fail the write).
pub fn event_context(idempotency_key: &str, source_time: Timestamp, event_type: &str) -> EventContext {
    let event_type = if event_type.chars().count() <= MAX_EVENT_TYPE_LEN { event_type } else { "" };
    EventContext {
        idempotency_key: idempotency_key.to_owned(),
        source_time: Some(source_time),
        event_type: event_type.to_owned(),
    }
}

fn user_message(user: &UserJson) -> User {
    let profile = user.profile();
    User {
        clerk_id: profile.clerk_id,
        email: profile.email,
        first_name: profile.first_name,
        last_name: profile.last_name,
        username: profile.username,
        image_url: profile.image_url,
        ..User::default()
    }
}

/// What identifies one write: its idempotency key and the event type
/// recorded with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteKey<'a> {
    /// `EventContext.idempotency_key`: the `svix-id`, or a key derived from it.
    pub idempotency_key: &'a str,
    /// `EventContext.event_type`, e.g. `user.updated`.
    pub event_type: &'a str,
}

/// Source time of a user event: `data.updated_at`, else the envelope
/// `timestamp`, else `now` (the event then orders as "just happened").
fn user_source_time(user: &UserJson, envelope_time: Option<i64>, now: Timestamp) -> Timestamp {
    user.updated_at.and_then(clerk_time).or_else(|| envelope_time.and_then(clerk_time)).unwrap_or(now)
}

/// The `CreateUser` call for a `user.created` event.
pub fn create_request(
    user: &UserJson,
    envelope_time: Option<i64>,
    key: &WriteKey<'_>,
    now: Timestamp,
) -> CreateUserRequest {
    CreateUserRequest {
        user: Some(user_message(user)),
        signup_source: SignupSource::Clerk as i32,
        event_context: Some(event_context(
            key.idempotency_key,
            user_source_time(user, envelope_time, now),
            key.event_type,
        )),
    }
}

/// The `UpdateUser` call for a `user.updated` event: every Clerk-owned field
/// is named in the mask, so a field Clerk cleared is cleared here too.
pub fn update_request(
    user: &UserJson,
    envelope_time: Option<i64>,
    key: &WriteKey<'_>,
    now: Timestamp,
) -> UpdateUserRequest {
    UpdateUserRequest {
        user: Some(user_message(user)),
        update_mask: Some(FieldMask { paths: UPDATE_MASK_PATHS.iter().map(|p| (*p).to_owned()).collect() }),
        event_context: Some(event_context(
            key.idempotency_key,
            user_source_time(user, envelope_time, now),
            key.event_type,
        )),
        ..UpdateUserRequest::default()
    }
}

/// The `DeleteUser` call for a `user.deleted` event. Deleted users carry no
/// `updated_at`, so the envelope `timestamp` orders it (else `now`).
pub fn delete_request(
    deleted: &DeletedUserJson,
    envelope_time: Option<i64>,
    key: &WriteKey<'_>,
    now: Timestamp,
) -> DeleteUserRequest {
    DeleteUserRequest {
        clerk_id: deleted.id.clone(),
        event_context: Some(event_context(
            key.idempotency_key,
            envelope_time.and_then(clerk_time).unwrap_or(now),
            key.event_type,
        )),
        ..DeleteUserRequest::default()
    }
}

/// Source time of a session event: its `updated_at`, else the envelope time.
fn session_source_time(session: &SessionJson, envelope_time: Option<i64>, now: Timestamp) -> Timestamp {
    session.updated_at.and_then(clerk_time).or_else(|| envelope_time.and_then(clerk_time)).unwrap_or(now)
}

/// The `RecordLogin` call for `session.created`: one successful login.
pub fn login_request(
    session: &SessionJson,
    envelope_time: Option<i64>,
    key: &WriteKey<'_>,
    now: Timestamp,
) -> RecordLoginRequest {
    let source_time = session_source_time(session, envelope_time, now);
    RecordLoginRequest {
        clerk_id: session.user_id.clone(),
        login: Some(LoginRecord {
            timestamp: Some(session.created_at.and_then(clerk_time).unwrap_or(source_time)),
            device: session.device(),
            ip: session.ip(),
            success: true,
        }),
        event_context: Some(event_context(key.idempotency_key, source_time, key.event_type)),
        ..RecordLoginRequest::default()
    }
}

/// The `RecordActivity` call for a session that ended, was removed or revoked.
pub fn activity_request(
    session: &SessionJson,
    envelope_time: Option<i64>,
    key: &WriteKey<'_>,
    now: Timestamp,
) -> RecordActivityRequest {
    let source_time = session_source_time(session, envelope_time, now);
    RecordActivityRequest {
        clerk_id: session.user_id.clone(),
        active_at: Some(session.last_active_at.and_then(clerk_time).unwrap_or(source_time)),
        event_context: Some(event_context(key.idempotency_key, source_time, key.event_type)),
        ..RecordActivityRequest::default()
    }
}

/// Idempotency key of the user write a session event carries: derived from
/// the `svix-id`, so a redelivery of the event replays it.
pub fn session_user_key(svix_id: &str) -> String {
    format!("{svix_id}:user")
}

/// How long ago a Clerk time (ms, seconds tolerated) was, or `None` when it is
/// absent, invalid or in the future.
fn event_age(time: Option<i64>, now: Timestamp) -> Option<Duration> {
    let then = time.and_then(clerk_time)?;
    let millis = |t: &Timestamp| i128::from(t.seconds) * 1000 + i128::from(t.nanos) / 1_000_000;
    let age = u64::try_from(millis(&now) - millis(&then)).ok()?;
    Some(Duration::from_millis(age))
}

/// Applies events to user-service.
#[derive(Debug, Clone)]
pub struct UserSync {
    client: UserServiceClient<UpstreamChannel>,
    data: UserDataServiceClient<UpstreamChannel>,
    timeout: Duration,
    metrics: Option<Arc<Metrics>>,
    failover: Option<Failover>,
    unknown_user_retry_window: Duration,
}

impl UserSync {
    /// Calls user-service over `channel` with `timeout` as each event's
    /// deadline.
    pub fn new(channel: UpstreamChannel, timeout: Duration) -> Self {
        Self {
            client: UserServiceClient::new(channel.clone()),
            data: UserDataServiceClient::new(channel),
            timeout,
            metrics: None,
            failover: None,
            unknown_user_retry_window: DEFAULT_UNKNOWN_USER_RETRY_WINDOW.value,
        }
    }

    /// Session events for a user user-service does not know are answered
    /// 503 while younger than `window`, and acknowledged as
    /// [`Outcome::UnknownUser`] after.
    #[must_use]
    pub fn with_unknown_user_retry_window(mut self, window: Duration) -> Self {
        self.unknown_user_retry_window = window;
        self
    }

    /// Counts every call in `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Option<Arc<Metrics>>) -> Self {
        self.metrics = metrics;
        self
    }

    /// With several replicas: a call failing with `UNAVAILABLE` has the
    /// replicas re-checked through `failover` and is retried once, within
    /// the same deadline.
    #[must_use]
    pub fn with_failover(mut self, failover: Option<Failover>) -> Self {
        self.failover = failover;
        self
    }

    /// Applies one verified event; `idempotency_key` is its `svix-id`. All
    /// of the event's calls share one deadline of the configured timeout.
    pub async fn apply(
        &self,
        event: &Event,
        idempotency_key: &str,
        request_id: &RequestId,
    ) -> Result<Outcome, UpstreamError> {
        let now = Timestamp::from(std::time::SystemTime::now());
        let scope = Scope { request_id, deadline: Instant::now() + self.timeout };
        let key = WriteKey { idempotency_key, event_type: &event.event_type };
        let users = &self.client;
        match &event.payload {
            Payload::UserCreated(user) => {
                let message = create_request(user, event.timestamp, &key, now);
                self.call(
                    Rpc { call: Call::Create, method: methods::CREATE_USER },
                    users,
                    message,
                    scope,
                    |mut client, request| async move { client.create_user(request).await },
                    |reply| (reply.outcome, reply.replayed),
                )
                .await
            }
            Payload::UserUpdated(user) => self.update_user(user, event.timestamp, &key, now, scope).await,
            Payload::UserDeleted(deleted) => {
                let message = delete_request(deleted, event.timestamp, &key, now);
                self.call(
                    Rpc { call: Call::Delete, method: methods::DELETE_USER },
                    users,
                    message,
                    scope,
                    |mut client, request| async move { client.delete_user(request).await },
                    |reply| (reply.outcome, reply.replayed),
                )
                .await
            }
            Payload::SessionCreated(session) | Payload::SessionActivity(session) => {
                self.apply_session(event, session, &key, now, scope).await
            }
            Payload::Unhandled => Ok(Outcome::Ignored),
        }
    }

    /// `UpdateUser` from a Clerk user object (a `user.updated` event, or the
    /// user a session event carries).
    async fn update_user(
        &self,
        user: &UserJson,
        envelope_time: Option<i64>,
        key: &WriteKey<'_>,
        now: Timestamp,
        scope: Scope<'_>,
    ) -> Result<Outcome, UpstreamError> {
        let message = update_request(user, envelope_time, key, now);
        self.call(
            Rpc { call: Call::Update, method: methods::UPDATE_USER },
            &self.client,
            message,
            scope,
            |mut client, request| async move { client.update_user(request).await },
            |reply| (reply.outcome, reply.replayed),
        )
        .await
    }

    /// A `session.*` event: first the user it carries, if any, through the
    /// same ordered, tombstone-respecting upsert as `user.updated` (keyed
    /// `<svix-id>:user`, so a redelivery replays it), then the session itself.
    /// The answer is the session's outcome.
    async fn apply_session(
        &self,
        event: &Event,
        session: &SessionJson,
        key: &WriteKey<'_>,
        now: Timestamp,
        scope: Scope<'_>,
    ) -> Result<Outcome, UpstreamError> {
        if let Some(user) = &session.user {
            let user_key = session_user_key(key.idempotency_key);
            let user_write = WriteKey { idempotency_key: &user_key, event_type: key.event_type };
            match self.update_user(user, event.timestamp, &user_write, now, scope).await {
                Ok(outcome) => tracing::debug!(outcome = outcome.as_str(), "session's user object applied"),
                // The user object is extra: data user-service refuses must not
                // keep the session from being recorded for a user it knows.
                Err(error @ UpstreamError::Rejected { .. }) => {
                    tracing::warn!(%error, "session's user object not applied; recording the session anyway");
                }
                Err(error) => return Err(error),
            }
        }
        let data = &self.data;
        let result = match &event.payload {
            Payload::SessionCreated(_) => {
                let message = login_request(session, event.timestamp, key, now);
                self.call(
                    Rpc { call: Call::Session, method: methods::RECORD_LOGIN },
                    data,
                    message,
                    scope,
                    |mut client, request| async move { client.record_login(request).await },
                    |reply| (reply.outcome, reply.replayed),
                )
                .await
            }
            _ => {
                let message = activity_request(session, event.timestamp, key, now);
                self.call(
                    Rpc { call: Call::Session, method: methods::RECORD_ACTIVITY },
                    data,
                    message,
                    scope,
                    |mut client, request| async move { client.record_activity(request).await },
                    |reply| (reply.outcome, reply.replayed),
                )
                .await
            }
        };
        match result {
            Err(UpstreamError::UnknownUser) => {
                let age = event_age(event.timestamp.or(session.updated_at).or(session.created_at), now);
                if age.is_some_and(|age| age > self.unknown_user_retry_window) {
                    Ok(Outcome::UnknownUser)
                } else {
                    Err(UpstreamError::UnknownUser)
                }
            }
            other => other,
        }
    }

    /// Wraps a message with the deadline left and the request id metadata.
    fn request<T>(message: T, request_id: &RequestId, timeout: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        // Sent as `grpc-timeout` so user-service can give up too, and
        // enforced client-side by tonic.
        request.set_timeout(timeout);
        if let Ok(value) = MetadataValue::try_from(request_id.as_str()) {
            request.metadata_mut().insert(REQUEST_ID, value);
        }
        request
    }

    /// Sends `message` with `send` on a clone of `client` before `deadline`
    /// and turns the reply, via `outcome_of` (which picks `outcome` and
    /// `replayed`), or the error into an outcome. See [`Self::with_failover`]
    /// for the one retry.
    async fn call<C, M, R, F>(
        &self,
        rpc: Rpc,
        client: &C,
        message: M,
        scope: Scope<'_>,
        send: impl Fn(C, tonic::Request<M>) -> F,
        outcome_of: impl FnOnce(&R) -> (i32, bool),
    ) -> Result<Outcome, UpstreamError>
    where
        C: Clone,
        M: Clone,
        F: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let Scope { request_id, deadline } = scope;
        let mut may_retry = self.failover.is_some();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let started = Instant::now();
            let reply = send(client.clone(), Self::request(message.clone(), request_id, left));
            // tonic's own timeout starts when the request is dispatched; this
            // one also covers waiting for a (lazy) connection, so Svix always
            // gets an answer within the deadline.
            let result = match tokio::time::timeout_at(deadline.into(), reply).await {
                Ok(result) => result,
                Err(_) => Err(Status::deadline_exceeded("user-service did not answer within the deadline")),
            };
            if let Some(metrics) = &self.metrics {
                let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
                metrics.record_upstream(rpc.method, code, started.elapsed());
            }
            match result {
                Ok(response) => {
                    let (outcome, replayed) = outcome_of(response.get_ref());
                    return Ok(Outcome::from_reply(outcome, replayed));
                }
                Err(status) if may_retry && status.code() == Code::Unavailable => {
                    may_retry = false;
                    tracing::warn!(
                        grpc_message = %status.message(),
                        "user-service replica unavailable; re-checking the replicas and retrying once"
                    );
                    if let Some(failover) = &self.failover {
                        let _ = tokio::time::timeout_at(deadline.into(), failover.recheck()).await;
                    }
                    if Instant::now() >= deadline {
                        return classify_status(rpc.call, &status);
                    }
                }
                Err(status) => return classify_status(rpc.call, &status),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clerk::EmailAddressJson;

    fn now() -> Timestamp {
        Timestamp { seconds: 1_800_000_000, nanos: 0 }
    }

    fn key<'a>(idempotency_key: &'a str, event_type: &'a str) -> WriteKey<'a> {
        WriteKey { idempotency_key, event_type }
    }

    fn sample_user() -> UserJson {
        UserJson {
            id: "user_sample".into(),
            email_addresses: Some(vec![
                EmailAddressJson { id: Some("idn_a".into()), email_address: Some("a@example.test".into()) },
                EmailAddressJson { id: Some("idn_b".into()), email_address: Some("b@example.test".into()) },
            ]),
            primary_email_address_id: Some("idn_b".into()),
            first_name: Some("Ada".into()),
            last_name: Some(String::new()),
            username: None,
            image_url: Some("https://img.example.test/a.png".into()),
            created_at: Some(1_700_000_000_000),
            updated_at: Some(1_700_000_000_250),
        }
    }

    #[test]
    fn create_request_carries_profile_source_and_event_context() {
        let request =
            create_request(&sample_user(), Some(1_700_000_001_000), &key("msg_c", "user.created"), now());
        let user = request.user.unwrap_or_default();
        assert_eq!(user.clerk_id, "user_sample");
        assert_eq!(user.email.as_deref(), Some("b@example.test"));
        assert_eq!(user.first_name.as_deref(), Some("Ada"));
        assert_eq!(user.last_name, None);
        assert_eq!(request.signup_source, SignupSource::Clerk as i32);
        let context = request.event_context.unwrap_or_default();
        assert_eq!(context.idempotency_key, "msg_c");
        assert_eq!(context.event_type, "user.created");
        assert_eq!(context.source_time, Some(Timestamp { seconds: 1_700_000_000, nanos: 250_000_000 }));
    }

    #[test]
    fn user_source_time_falls_back_to_envelope_then_now() {
        let mut user = sample_user();
        user.updated_at = None;
        let request = update_request(&user, Some(1_700_000_009_000), &key("k", "user.updated"), now());
        let time = request.event_context.and_then(|c| c.source_time);
        assert_eq!(time.map(|t| t.seconds), Some(1_700_000_009));

        let request = update_request(&user, None, &key("k", "user.updated"), now());
        assert_eq!(request.event_context.and_then(|c| c.source_time), Some(now()));
    }

    #[test]
    fn update_request_names_all_profile_fields_and_never_role_or_status() {
        let request = update_request(&sample_user(), None, &key("msg_u", "user.updated"), now());
        let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
        assert_eq!(paths, ["email", "first_name", "last_name", "username", "image_url"]);
        assert!(request.etag.is_empty());
    }

    #[test]
    fn delete_request_uses_the_envelope_timestamp_or_now() {
        let deleted =
            DeletedUserJson { id: "user_gone".into(), deleted: Some(true), object: Some("user".into()) };
        let request = delete_request(&deleted, Some(1_661_861_640_000), &key("msg_d", "user.deleted"), now());
        assert_eq!(request.clerk_id, "user_gone");
        let context = request.event_context.unwrap_or_default();
        assert_eq!(context.idempotency_key, "msg_d");
        assert_eq!(context.source_time.map(|t| t.seconds), Some(1_661_861_640));

        let request = delete_request(&deleted, None, &key("msg_d", "user.deleted"), now());
        assert_eq!(request.event_context.and_then(|c| c.source_time), Some(now()));
    }

    #[test]
    fn clerk_time_reads_milliseconds_and_tolerates_seconds() {
        assert_eq!(
            clerk_time(1_716_883_200_123),
            Some(Timestamp { seconds: 1_716_883_200, nanos: 123_000_000 })
        );
        assert_eq!(clerk_time(1_716_883_200).map(|t| t.seconds), Some(1_716_883_200));
        assert_eq!(clerk_time(0), None);
        assert_eq!(clerk_time(-5), None);
    }

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

    fn sample_session(ip: &str) -> SessionJson {
        serde_json::from_value(serde_json::json!({
            "id": "sess_1",
            "user_id": "user_sample",
            "created_at": 1_700_000_000_000_i64,
            "updated_at": 1_700_000_000_500_i64,
            "last_active_at": 1_700_000_000_400_i64,
            "latest_activity": {"browser_name": "Firefox", "browser_version": "140.0", "device_type": "Macintosh", "ip_address": ip}
        }))
        .unwrap_or_default()
    }

    #[test]
    fn a_created_session_is_one_successful_login_keyed_by_the_svix_id() {
        let request =
            login_request(&sample_session("203.0.113.7"), None, &key("msg_s", "session.created"), now());
        assert_eq!(request.clerk_id, "user_sample");
        let login = request.login.unwrap_or_default();
        assert!(login.success);
        assert_eq!(login.device.as_deref(), Some("Firefox 140.0 on Macintosh"));
        assert_eq!(login.ip.as_deref(), Some("203.0.113.7"));
        assert_eq!(login.timestamp, clerk_time(1_700_000_000_000));
        let context = request.event_context.unwrap_or_default();
        assert_eq!(context.idempotency_key, "msg_s");
        assert_eq!(context.source_time, clerk_time(1_700_000_000_500));
    }

    #[test]
    fn an_unparseable_session_ip_is_dropped_not_fatal() {
        let request =
            login_request(&sample_session("not-an-ip"), None, &key("msg_s", "session.created"), now());
        assert_eq!(request.login.unwrap_or_default().ip, None);
    }

    #[test]
    fn an_ended_session_records_activity_at_its_last_activity() {
        let request =
            activity_request(&sample_session("203.0.113.7"), None, &key("msg_e", "session.ended"), now());
        assert_eq!(request.active_at, clerk_time(1_700_000_000_400));
    }

    #[test]
    fn a_session_for_a_user_not_yet_created_is_an_unknown_user() {
        let outcome = classify_status(Call::Session, &Status::not_found("user"));
        assert!(matches!(outcome, Err(UpstreamError::UnknownUser)));
    }

    #[test]
    fn an_event_type_longer_than_64_characters_is_left_out_of_the_context() {
        let long = "x".repeat(MAX_EVENT_TYPE_LEN + 1);
        assert_eq!(event_context("k", now(), &long).event_type, "");
        let longest = "y".repeat(MAX_EVENT_TYPE_LEN);
        assert_eq!(event_context("k", now(), &longest).event_type, longest);
    }

    #[test]
    fn the_session_user_write_is_keyed_by_the_svix_id() {
        assert_eq!(session_user_key("msg_2abc"), "msg_2abc:user");
    }

    #[test]
    fn event_age_is_measured_from_the_clerk_time() {
        let now = now();
        let an_hour_ago = (now.seconds - 3600) * 1000;
        assert_eq!(event_age(Some(an_hour_ago), now), Some(Duration::from_secs(3600)));
        assert_eq!(event_age(Some((now.seconds + 60) * 1000), now), None, "future");
        assert_eq!(event_age(None, now), None);
    }
}
