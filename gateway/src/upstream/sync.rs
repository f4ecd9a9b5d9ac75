//! The client that applies verified Clerk events to user-service: each
//! `Write` sent within the event's deadline (in an `ApplyEvents` batch, or
//! as its own call when batching is off), counted in the metrics and retried
//! once on another replica when one is unavailable.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use prost_types::Timestamp;
use tonic::{Code, Status, metadata::MetadataValue};
use userdata_proto::v1::{
    CreateUserRequest, CreateUserResponse, DeleteUserRequest, DeleteUserResponse, EventWrite,
    RecordActivityRequest, RecordActivityResponse, RecordLoginRequest, RecordLoginResponse,
    UpdateUserRequest, UpdateUserResponse, event_write, event_write_result,
    user_data_service_client::UserDataServiceClient, user_service_client::UserServiceClient,
};

use super::{
    Failover, UpstreamChannel,
    batch::Batcher,
    outcome::{Call, Outcome, classify_status},
    requests::{
        WriteKey, activity_request, create_request, delete_request, event_age, login_request,
        session_user_key, update_request,
    },
};
use crate::{
    clerk::{Event, Payload, SessionJson},
    config::{DEFAULT_UNKNOWN_USER_RETRY_WINDOW, UpstreamBatch},
    error::UpstreamError,
    metrics::Metrics,
    request_id::{REQUEST_ID, RequestId},
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

/// What every call made for one event shares: the request id sent along and
/// the event's deadline.
#[derive(Debug, Clone, Copy)]
struct Scope<'a> {
    request_id: &'a RequestId,
    deadline: Instant,
}

/// One write to user-service, built and ready to send (again, on a retry).
#[derive(Debug, Clone)]
enum Write {
    /// `user.created`.
    Create(CreateUserRequest),
    /// `user.updated`, or the user a session event carries.
    Update(UpdateUserRequest),
    /// `user.deleted`.
    Delete(DeleteUserRequest),
    /// `session.created`.
    Login(RecordLoginRequest),
    /// `session.ended`, `session.removed`, `session.revoked`.
    Activity(RecordActivityRequest),
}

impl Write {
    /// Which kind of call, for the error mapping.
    fn call(&self) -> Call {
        match self {
            Self::Create(_) => Call::Create,
            Self::Update(_) => Call::Update,
            Self::Delete(_) => Call::Delete,
            Self::Login(_) | Self::Activity(_) => Call::Session,
        }
    }

    /// The gRPC method, for the metrics.
    fn method(&self) -> &'static str {
        match self {
            Self::Create(_) => methods::CREATE_USER,
            Self::Update(_) => methods::UPDATE_USER,
            Self::Delete(_) => methods::DELETE_USER,
            Self::Login(_) => methods::RECORD_LOGIN,
            Self::Activity(_) => methods::RECORD_ACTIVITY,
        }
    }

    /// The write as one write of an `ApplyEvents` call.
    fn into_event(self, request_id: &RequestId) -> EventWrite {
        let write = match self {
            Self::Create(m) => event_write::Write::CreateUser(m),
            Self::Update(m) => event_write::Write::UpdateUser(m),
            Self::Delete(m) => event_write::Write::DeleteUser(m),
            Self::Login(m) => event_write::Write::RecordLogin(m),
            Self::Activity(m) => event_write::Write::RecordActivity(m),
        };
        EventWrite { request_id: request_id.as_str().to_owned(), write: Some(write) }
    }

    /// Sends the write, in a batch when batching is on, before `deadline`
    /// and with `request_id` attached.
    async fn send(
        self,
        sync: &UserSync,
        request_id: &RequestId,
        deadline: Instant,
    ) -> Result<Outcome, Status> {
        if let Some(batcher) = &sync.batcher {
            let answer = batcher.apply(self.into_event(request_id), deadline).await;
            if let Some(call) = &answer.call {
                // On the event's span, so its log lines name the call.
                tracing::Span::current().record("upstream_request_id", call.as_str());
            }
            return answer.result.map(|result| result.outcome());
        }
        let timeout = deadline.saturating_duration_since(Instant::now());
        let (mut users, mut data) = (sync.client.clone(), sync.data.clone());
        match self {
            Self::Create(m) => users.create_user(with_metadata(m, request_id, timeout)).await.map(outcome_of),
            Self::Update(m) => users.update_user(with_metadata(m, request_id, timeout)).await.map(outcome_of),
            Self::Delete(m) => users.delete_user(with_metadata(m, request_id, timeout)).await.map(outcome_of),
            Self::Login(m) => data.record_login(with_metadata(m, request_id, timeout)).await.map(outcome_of),
            Self::Activity(m) => {
                data.record_activity(with_metadata(m, request_id, timeout)).await.map(outcome_of)
            }
        }
    }
}

/// A write's reply: every one carries `outcome` and `replayed`.
trait Reply {
    /// What the write did.
    fn outcome(&self) -> Outcome;
}

macro_rules! replies {
    ($($reply:ty),* $(,)?) => {
        $(impl Reply for $reply {
            fn outcome(&self) -> Outcome {
                Outcome::from_reply(self.outcome, self.replayed)
            }
        })*
    };
}

replies!(
    CreateUserResponse,
    UpdateUserResponse,
    DeleteUserResponse,
    RecordLoginResponse,
    RecordActivityResponse
);

impl Reply for event_write_result::Result {
    fn outcome(&self) -> Outcome {
        match self {
            Self::CreateUser(reply) => Reply::outcome(reply),
            Self::UpdateUser(reply) => Reply::outcome(reply),
            Self::DeleteUser(reply) => Reply::outcome(reply),
            Self::RecordLogin(reply) => Reply::outcome(reply),
            Self::RecordActivity(reply) => Reply::outcome(reply),
            // The batcher answers an error as an error, never as a result.
            Self::Error(_) => Outcome::Unspecified,
        }
    }
}

fn outcome_of<R: Reply>(response: tonic::Response<R>) -> Outcome {
    response.get_ref().outcome()
}

/// Wraps a message with the deadline left and the request id metadata.
fn with_metadata<T>(message: T, request_id: &RequestId, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    // Sent as `grpc-timeout` so user-service can give up too, and enforced
    // client-side by tonic.
    request.set_timeout(timeout);
    if let Ok(value) = MetadataValue::try_from(request_id.as_str()) {
        request.metadata_mut().insert(REQUEST_ID, value);
    }
    request
}

/// Applies events to user-service.
#[derive(Debug, Clone)]
pub struct UserSync {
    channel: UpstreamChannel,
    client: UserServiceClient<UpstreamChannel>,
    data: UserDataServiceClient<UpstreamChannel>,
    timeout: Duration,
    metrics: Option<Arc<Metrics>>,
    failover: Option<Failover>,
    unknown_user_retry_window: Duration,
    batcher: Option<Batcher>,
}

impl UserSync {
    /// Calls user-service over `channel` with `timeout` as each event's
    /// deadline.
    pub fn new(channel: UpstreamChannel, timeout: Duration) -> Self {
        Self {
            client: UserServiceClient::new(channel.clone()),
            data: UserDataServiceClient::new(channel.clone()),
            channel,
            timeout,
            metrics: None,
            failover: None,
            unknown_user_retry_window: DEFAULT_UNKNOWN_USER_RETRY_WINDOW.value,
            batcher: None,
        }
    }

    /// Sends writes in `ApplyEvents` batches as `options` says (one call per
    /// write when `options.max` is 1), counting each batch's size in the
    /// metrics given to [`Self::with_metrics`] before. Needs a Tokio runtime.
    #[must_use]
    pub fn with_batching(mut self, options: UpstreamBatch) -> Self {
        self.batcher =
            (options.max > 1).then(|| Batcher::start(self.channel.clone(), options, self.metrics.clone()));
        self
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
        let write = match &event.payload {
            Payload::UserCreated(user) => Write::Create(create_request(user, event.timestamp, &key, now)),
            Payload::UserUpdated(user) => Write::Update(update_request(user, event.timestamp, &key, now)),
            Payload::UserDeleted(deleted) => {
                Write::Delete(delete_request(deleted, event.timestamp, &key, now))
            }
            Payload::SessionCreated(session) | Payload::SessionActivity(session) => {
                return self.apply_session(event, session, &key, now, scope).await;
            }
            Payload::Unhandled => return Ok(Outcome::Ignored),
        };
        self.call(write, scope).await
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
            let update = Write::Update(update_request(user, event.timestamp, &user_write, now));
            match self.call(update, scope).await {
                Ok(outcome) => tracing::debug!(outcome = outcome.as_str(), "session's user object applied"),
                // The user object is extra: data user-service refuses must not
                // keep the session from being recorded for a user it knows.
                Err(error @ UpstreamError::Rejected { .. }) => {
                    tracing::warn!(%error, "session's user object not applied; recording the session anyway");
                }
                Err(error) => return Err(error),
            }
        }
        let write = match &event.payload {
            Payload::SessionCreated(_) => Write::Login(login_request(session, event.timestamp, key, now)),
            _ => Write::Activity(activity_request(session, event.timestamp, key, now)),
        };
        match self.call(write, scope).await {
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

    /// Sends `write` before the scope's deadline and turns the reply or the
    /// error into an outcome. See [`Self::with_failover`] for the one retry.
    async fn call(&self, write: Write, scope: Scope<'_>) -> Result<Outcome, UpstreamError> {
        let Scope { request_id, deadline } = scope;
        let (call, method) = (write.call(), write.method());
        let mut may_retry = self.failover.is_some();
        loop {
            let started = Instant::now();
            let reply = write.clone().send(self, request_id, deadline);
            // tonic's own timeout starts when the request is dispatched; this
            // one also covers waiting for a (lazy) connection, so Svix always
            // gets an answer within the deadline.
            let result = match tokio::time::timeout_at(deadline.into(), reply).await {
                Ok(result) => result,
                Err(_) => Err(Status::deadline_exceeded("user-service did not answer within the deadline")),
            };
            if let Some(metrics) = &self.metrics {
                let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
                metrics.record_upstream(method, code, started.elapsed());
            }
            match result {
                Ok(outcome) => return Ok(outcome),
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
                        return classify_status(call, &status);
                    }
                }
                Err(status) => return classify_status(call, &status),
            }
        }
    }
}
