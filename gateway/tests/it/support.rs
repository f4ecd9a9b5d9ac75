//! Test harness: a fake user-service that records calls, and the real gateway
//! started against it on 127.0.0.1:0.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use gateway::{App, Config, SigningSecrets, svix::sign_headers};
use http::Uri;
use tokio::{
    net::TcpListener,
    sync::{oneshot, watch},
    task::JoinHandle,
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status, metadata::MetadataMap};
use tonic_health::{ServingStatus, server::HealthReporter};
use userdata_proto::v1::{
    ApplyEventsRequest, ApplyEventsResponse, CreateUserRequest, CreateUserResponse, DeleteUserRequest,
    DeleteUserResponse, EventOutcome, EventWriteError, EventWriteResult, GetUserRequest, GetUserResponse,
    ListUsersRequest, ListUsersResponse, UpdateUserRequest, UpdateUserResponse,
    event_service_server::{EventService, EventServiceServer},
    event_write::Write,
    event_write_result::Result as WriteResult,
    user_service_server::{UserService, UserServiceServer},
};

/// The secret the gateway is configured with (base64 of a made-up string).
pub const SECRET: &str = "whsec_Z2F0ZXdheS1pdC1zZWNyZXQtb25lLTAwMDE=";
/// A second secret, for rotation tests.
pub const SECOND_SECRET: &str = "whsec_Z2F0ZXdheS1pdC1zZWNyZXQtdHdvLTAwMDI=";
/// A well-formed secret the gateway does not know.
pub const FOREIGN_SECRET: &str = "whsec_Z2F0ZXdheS1pdC1ub3Qtb3VyLXNlY3JldCE=";

/// Upstream deadline used by the test gateway: short, so deadline tests are
/// quick, but far above a local round trip.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(1500);

/// How the fake user-service answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// OK with `outcome` and `replayed`.
    Outcome(EventOutcome, bool),
    /// The given gRPC error.
    Fail(Code, &'static str),
    /// Sleep, then answer OK/applied.
    SlowApplied(Duration),
}

/// One call received by the fake user-service.
#[derive(Debug, Clone)]
pub struct Received<T> {
    /// The request message.
    pub message: T,
    /// `x-request-id` metadata, if sent.
    pub request_id: Option<String>,
    /// `grpc-timeout` metadata, if sent.
    pub grpc_timeout: Option<String>,
}

impl Received<()> {
    /// The same metadata with `message`.
    fn with<T>(&self, message: T) -> Received<T> {
        Received { message, request_id: self.request_id.clone(), grpc_timeout: self.grpc_timeout.clone() }
    }
}

/// Any call received by the fake user-service.
#[derive(Debug, Clone)]
pub enum Call {
    /// `CreateUser`.
    Create(Received<CreateUserRequest>),
    /// `UpdateUser`.
    Update(Received<UpdateUserRequest>),
    /// `DeleteUser`.
    Delete(Received<DeleteUserRequest>),
}

impl Call {
    /// The Clerk id the call writes.
    pub fn clerk_id(&self) -> &str {
        match self {
            Self::Create(received) => received.message.user.as_ref().map_or("", |u| u.clerk_id.as_str()),
            Self::Update(received) => received.message.user.as_ref().map_or("", |u| u.clerk_id.as_str()),
            Self::Delete(received) => &received.message.clerk_id,
        }
    }

    /// The request id the call (or its write in a batch) carried.
    pub fn request_id(&self) -> Option<String> {
        match self {
            Self::Create(received) => received.request_id.clone(),
            Self::Update(received) => received.request_id.clone(),
            Self::Delete(received) => received.request_id.clone(),
        }
    }
}

#[derive(Debug, Clone)]
struct FakeUserService {
    calls: Arc<Mutex<Vec<Call>>>,
    /// The number of writes of each `ApplyEvents` call, in arrival order.
    batches: Arc<Mutex<Vec<usize>>>,
    /// Replies wait while this is false (see [`FakeUpstream::hold`]).
    open: Arc<watch::Sender<bool>>,
    /// How many calls have arrived, for tests that wait for one.
    arrived: Arc<watch::Sender<usize>>,
    reply: Arc<Mutex<Reply>>,
}

fn metadata(map: &MetadataMap, key: &str) -> Option<String> {
    map.get(key).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn received<T>(request: Request<T>) -> Received<T> {
    let request_id = metadata(request.metadata(), "x-request-id");
    let grpc_timeout = metadata(request.metadata(), "grpc-timeout");
    Received { message: request.into_inner(), request_id, grpc_timeout }
}

impl FakeUserService {
    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
        self.arrived.send_modify(|count| *count += 1);
    }

    /// The configured reply as (outcome, replayed), after any delay and
    /// once replies are not held.
    async fn reply(&self) -> Result<(i32, bool), Status> {
        let _ = self.open.subscribe().wait_for(|open| *open).await;
        let reply = self.reply.lock().unwrap().clone();
        match reply {
            Reply::Outcome(outcome, replayed) => Ok((outcome as i32, replayed)),
            Reply::Fail(code, message) => Err(Status::new(code, message)),
            Reply::SlowApplied(delay) => {
                tokio::time::sleep(delay).await;
                Ok((EventOutcome::Applied as i32, false))
            }
        }
    }
}

#[tonic::async_trait]
impl UserService for FakeUserService {
    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<CreateUserResponse>, Status> {
        self.record(Call::Create(received(request)));
        let (outcome, replayed) = self.reply().await?;
        Ok(Response::new(CreateUserResponse { user: None, outcome, replayed }))
    }

    async fn get_user(&self, _request: Request<GetUserRequest>) -> Result<Response<GetUserResponse>, Status> {
        Err(Status::unimplemented("the gateway never reads users"))
    }

    async fn list_users(
        &self,
        _request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        Err(Status::unimplemented("the gateway never lists users"))
    }

    async fn update_user(
        &self,
        request: Request<UpdateUserRequest>,
    ) -> Result<Response<UpdateUserResponse>, Status> {
        self.record(Call::Update(received(request)));
        let (outcome, replayed) = self.reply().await?;
        Ok(Response::new(UpdateUserResponse { user: None, outcome, replayed }))
    }

    async fn delete_user(
        &self,
        request: Request<DeleteUserRequest>,
    ) -> Result<Response<DeleteUserResponse>, Status> {
        self.record(Call::Delete(received(request)));
        let (outcome, replayed) = self.reply().await?;
        Ok(Response::new(DeleteUserResponse { outcome, replayed }))
    }
}

/// `ApplyEvents` as user-service serves it: each write recorded as the single
/// call it stands for (with the write's request id and the call's deadline)
/// and answered with the configured reply, an error as that write's result.
#[tonic::async_trait]
impl EventService for FakeUserService {
    type ApplyEventsStream = futures::stream::Iter<std::vec::IntoIter<Result<ApplyEventsResponse, Status>>>;

    /// Answers every write at the end, one message each, in reverse order (a
    /// client must go by the index). A write for a Clerk id containing
    /// `stale` is answered `stale` whatever the configured reply, so each
    /// webhook's answer shows whose result it got.
    async fn apply_events(
        &self,
        request: Request<ApplyEventsRequest>,
    ) -> Result<Response<Self::ApplyEventsStream>, Status> {
        let grpc_timeout = metadata(request.metadata(), "grpc-timeout");
        let call_id = metadata(request.metadata(), "x-request-id");
        self.batches.lock().unwrap().push(request.get_ref().writes.len());
        let mut results = Vec::new();
        for (index, write) in (0_u32..).zip(request.into_inner().writes) {
            let request_id = Some(write.request_id).filter(|id| !id.is_empty()).or_else(|| call_id.clone());
            let meta = Received { message: (), request_id, grpc_timeout: grpc_timeout.clone() };
            type Answer = fn(i32, bool) -> WriteResult;
            let (call, answer): (Call, Answer) = match write.write {
                Some(Write::CreateUser(m)) => (Call::Create(meta.with(m)), |outcome, replayed| {
                    WriteResult::CreateUser(CreateUserResponse { user: None, outcome, replayed })
                }),
                Some(Write::UpdateUser(m)) => (Call::Update(meta.with(m)), |outcome, replayed| {
                    WriteResult::UpdateUser(UpdateUserResponse { user: None, outcome, replayed })
                }),
                Some(Write::DeleteUser(m)) => (Call::Delete(meta.with(m)), |outcome, replayed| {
                    WriteResult::DeleteUser(DeleteUserResponse { outcome, replayed })
                }),
                // This fake serves no UserDataService, as a single call would find.
                _ => {
                    let error =
                        EventWriteError { code: Code::Unimplemented as i32, message: "not served".into() };
                    results.push(EventWriteResult { index, result: Some(WriteResult::Error(error)) });
                    continue;
                }
            };
            let stale = call.clerk_id().contains("stale");
            self.record(call);
            let reply = if stale { Ok((EventOutcome::Stale as i32, false)) } else { self.reply().await };
            let result = match reply {
                Ok((outcome, replayed)) => answer(outcome, replayed),
                Err(status) => WriteResult::Error(EventWriteError {
                    code: status.code() as i32,
                    message: status.message().to_owned(),
                }),
            };
            results.push(EventWriteResult { index, result: Some(result) });
        }
        let messages =
            results.into_iter().rev().map(|result| Ok(ApplyEventsResponse { results: vec![result] }));
        Ok(Response::new(futures::stream::iter(messages.collect::<Vec<_>>())))
    }
}

/// A running fake user-service (UserService, EventService and
/// grpc.health.v1).
pub struct FakeUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    service: FakeUserService,
    health: HealthReporter,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl FakeUpstream {
    /// Starts one on 127.0.0.1:0 answering `applied`.
    pub async fn start() -> Self {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts one on `addr` answering `applied`.
    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = FakeUserService {
            calls: Arc::default(),
            batches: Arc::default(),
            open: Arc::new(watch::Sender::new(true)),
            arrived: Arc::new(watch::Sender::new(0)),
            reply: Arc::new(Mutex::new(Reply::Outcome(EventOutcome::Applied, false))),
        };
        let (health, health_service) = tonic_health::server::health_reporter();
        let (shutdown, stop) = oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(UserServiceServer::new(service.clone()))
            .add_service(EventServiceServer::new(service.clone()));
        let task = tokio::spawn(async move {
            let _ = server
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stop.await;
                })
                .await;
        });
        Self { addr, service, health, shutdown: Some(shutdown), task }
    }

    /// `http://addr`, for the gateway config.
    pub fn url(&self) -> Uri {
        url_of(self.addr)
    }

    /// Changes how later calls are answered.
    pub fn reply_with(&self, reply: Reply) {
        *self.service.reply.lock().unwrap() = reply;
    }

    /// Sets the overall (`""`) health status.
    pub async fn set_health(&self, status: ServingStatus) {
        self.health.set_service_status("", status).await;
    }

    /// Holds every reply (calls are still recorded as they arrive) until
    /// [`Self::release`].
    pub fn hold(&self) {
        self.service.open.send_replace(false);
    }

    /// Lets held and later replies go.
    pub fn release(&self) {
        self.service.open.send_replace(true);
    }

    /// The number of writes in each `ApplyEvents` call so far.
    pub fn batches(&self) -> Vec<usize> {
        self.service.batches.lock().unwrap().clone()
    }

    /// Every call received so far.
    pub fn calls(&self) -> Vec<Call> {
        self.service.calls.lock().unwrap().clone()
    }

    /// Waits until `count` calls have arrived (each is recorded before it is
    /// answered, so a slow reply is still in progress then).
    pub async fn wait_for_calls(&self, count: usize) {
        let mut arrived = self.service.arrived.subscribe();
        let waited = tokio::time::timeout(Duration::from_secs(10), arrived.wait_for(|n| *n >= count)).await;
        assert!(matches!(waited, Ok(Ok(_))), "user-service never received {count} call(s)");
    }

    /// The only call received; fails the test unless there is exactly one.
    pub fn single_call(&self) -> Call {
        let calls = self.calls();
        assert_eq!(calls.len(), 1, "expected exactly one upstream call: {calls:?}");
        calls.into_iter().next().unwrap()
    }

    /// Asserts that user-service was never called.
    pub fn assert_not_called(&self) {
        let calls = self.calls();
        assert!(calls.is_empty(), "user-service must not be called: {calls:?}");
    }

    /// Stops the server.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Polls `/metrics` until `metric` (no labels) satisfies `done`; fails after
/// `within`.
pub async fn wait_for_metric(
    gateway: &Gateway,
    metric: &str,
    within: Duration,
    done: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let value = crate::metrics::sample(&gateway.metrics().await, metric, &[]);
        if done(value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{metric} stayed at {value} for {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `http://addr`.
pub fn url_of(addr: SocketAddr) -> Uri {
    format!("http://{addr}").parse().unwrap()
}

/// An address on which nothing listens (bound, then released).
pub async fn dead_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// The gateway config used by tests: port 0, the given upstream and secrets.
/// The rate limit is off (every test client is 127.0.0.1, and storms would
/// otherwise test the limit); the rate-limit tests turn it on.
pub fn config(upstream: Uri, secrets: &str) -> Config {
    let mut config = Config::new(SigningSecrets::parse(secrets).unwrap());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.user_service_url = upstream;
    config.upstream_timeout = UPSTREAM_TIMEOUT;
    config.readiness_timeout = Duration::from_millis(500);
    config.rate_limit = gateway::config::RateLimit::OFF;
    // Probes see every change of user-service's health at once; the cache
    // has its own tests.
    config.readiness_cache = Duration::ZERO;
    config
}

/// A running gateway.
pub struct Gateway {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where it serves `/metrics`, if it does.
    pub metrics_addr: Option<SocketAddr>,
    /// HTTP client for requests to it.
    pub http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Gateway {
    /// Starts the real gateway against `upstream`, accepting [`SECRET`].
    pub async fn start(upstream: &FakeUpstream) -> Self {
        Self::start_with(config(upstream.url(), SECRET)).await
    }

    /// Starts the real gateway with a custom config.
    pub async fn start_with(config: Config) -> Self {
        let app = App::build(config).await.unwrap();
        let addr = app.local_addr();
        let metrics_addr = app.metrics_addr();
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async {
            let _ = stop.await;
        }));
        Self { addr, metrics_addr, http: reqwest::Client::new(), shutdown: Some(shutdown), task }
    }

    /// The text of `/metrics`; fails the test when metrics are off.
    pub async fn metrics(&self) -> String {
        let addr = self.metrics_addr.expect("metrics are on");
        let response = self.http.get(format!("http://{addr}/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    /// Full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs `body` to the webhook path with the given headers.
    pub async fn post(&self, headers: http::HeaderMap, body: impl Into<Vec<u8>>) -> Answer {
        let response = self
            .http
            .post(self.url("/webhooks/clerk"))
            .headers(headers)
            .body(body.into())
            .send()
            .await
            .unwrap();
        Answer::read(response).await
    }

    /// POSTs `body` signed with [`SECRET`] as message `msg_id`, signed now.
    pub async fn post_signed(&self, msg_id: &str, body: &str) -> Answer {
        self.post(signed(SECRET, msg_id, now(), body), body).await
    }

    /// GETs `path`.
    pub async fn get(&self, path: &str) -> Answer {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        Answer::read(response).await
    }

    /// Signals shutdown; the returned task ends once in-flight requests are done.
    pub fn begin_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Stops the gateway and waits for it.
    pub async fn stop(mut self) {
        self.begin_shutdown();
        let result = (&mut self.task).await;
        assert!(matches!(result, Ok(Ok(()))), "gateway ended with {result:?}");
    }
}

/// A response, read completely.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: http::StatusCode,
    /// Response headers.
    pub headers: http::HeaderMap,
    /// Body parsed as JSON (`Null` if it is not JSON).
    pub json: serde_json::Value,
}

impl Answer {
    async fn read(response: reqwest::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Self { status, headers, json }
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Now in Unix seconds.
pub fn now() -> i64 {
    gateway::send::unix_now().unwrap()
}

/// Svix headers for `body` signed with `secret`.
pub fn signed(secret: &str, msg_id: &str, timestamp: i64, body: &str) -> http::HeaderMap {
    let secrets = SigningSecrets::parse(secret).unwrap();
    sign_headers(secrets.first(), msg_id, timestamp, body.as_bytes()).unwrap()
}

/// POSTs `body` signed now with [`SECRET`] as message `msg_id` to the
/// webhook path of the gateway at `addr`, through `client`: for a gateway run
/// as a child process, or a client bound to another local address.
pub async fn post_signed_with(
    client: &reqwest::Client,
    addr: SocketAddr,
    msg_id: &str,
    body: String,
) -> reqwest::Response {
    client
        .post(format!("http://{addr}/webhooks/clerk"))
        .headers(signed(SECRET, msg_id, now(), &body))
        .body(body)
        .send()
        .await
        .unwrap()
}

/// A `user.created`/`user.updated` body, written for these tests in Clerk's
/// shape: two addresses where the primary is the *second*, plus fields the
/// gateway does not use.
pub fn user_event(event_type: &str, clerk_id: &str) -> String {
    serde_json::json!({
        "data": {
            "id": clerk_id,
            "object": "user",
            "username": null,
            "first_name": "Grace",
            "last_name": "Hopper",
            "image_url": "https://img.example.test/grace.png",
            "has_image": true,
            "banned": false,
            "public_metadata": {},
            "private_metadata": {},
            "phone_numbers": [],
            "web3_wallets": [],
            "primary_email_address_id": "idn_primary",
            "email_addresses": [
                {
                    "id": "idn_secondary",
                    "object": "email_address",
                    "email_address": "grace.old@example.test",
                    "verification": {"status": "verified", "strategy": "email_code"},
                    "linked_to": []
                },
                {
                    "id": "idn_primary",
                    "object": "email_address",
                    "email_address": "grace@example.test",
                    "verification": null,
                    "reserved": false,
                    "linked_to": []
                }
            ],
            "created_at": 1_750_000_000_000_i64,
            "updated_at": 1_750_000_123_456_i64
        },
        "event_attributes": {"http_request": {"client_ip": "", "user_agent": "it-test"}},
        "instance_id": "ins_ittest",
        "object": "event",
        "timestamp": 1_750_000_123_999_i64,
        "type": event_type
    })
    .to_string()
}

/// A `user.deleted` body in Clerk's shape.
pub fn deleted_event(clerk_id: &str, timestamp: Option<i64>) -> String {
    let mut event = serde_json::json!({
        "data": {"deleted": true, "id": clerk_id, "object": "user"},
        "object": "event",
        "type": "user.deleted"
    });
    if let Some(timestamp) = timestamp {
        event["timestamp"] = timestamp.into();
    }
    event.to_string()
}

/// Serialises the tests that load the CPU on purpose (connection floods)
/// with those that time an operation, so one never skews the other.
static CPU_HEAVY: Mutex<()> = Mutex::new(());

/// Holds the CPU for a flood or a timed measurement until dropped.
pub fn cpu_heavy() -> std::sync::MutexGuard<'static, ()> {
    CPU_HEAVY.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
