//! The end-to-end harness: a real user-service (over a fresh Postgres
//! database or SQLite file) and the real gateway in front of it, both on
//! 127.0.0.1 with OS-chosen ports, plus Svix-signed delivery and gRPC read-back.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use base64::Engine as _;
use gateway::{App, Config, SigningSecrets, svix::sign_headers};
use http::{HeaderMap, StatusCode, Uri};
use serde_json::Value;
use tokio::sync::{Barrier, oneshot};
use tonic::{
    Code, Status,
    transport::{Channel, Endpoint},
};
use userdata_proto::v1::{
    Activity, GetActivityRequest, GetUserDataRequest, GetUserHistoryRequest, GetUserHistoryResponse,
    GetUserRequest, ListUsersRequest, User, user_data_service_client::UserDataServiceClient,
    user_service_client::UserServiceClient,
};

pub use user_service::testing::{Db, TestDatabase, TestServer};

/// Generates one `#[tokio::test]` per backend for each listed async fn that
/// takes a [`Db`]: `postgres::<name>` and `sqlite::<name>`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::support::Db::Postgres).await })+
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::support::Db::Sqlite).await })+
        }
    };
}

/// The gateway's deadline for each user-service call: the production default.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// A fresh signing secret, `whsec_` + base64 of 32 bytes that differ per call
/// (two UUIDv7s: time plus 74 random bits each).
pub fn generate_secret() -> String {
    let mut key = Vec::with_capacity(32);
    key.extend_from_slice(uuid::Uuid::now_v7().as_bytes());
    key.extend_from_slice(uuid::Uuid::now_v7().as_bytes());
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key))
}

/// `http://addr`.
fn url_of(addr: SocketAddr) -> Uri {
    format!("http://{addr}").parse().unwrap_or_else(|e| panic!("bad address {addr}: {e}"))
}

/// Now in Unix seconds, as Svix puts it in `svix-timestamp`.
pub fn unix_now() -> i64 {
    gateway::send::unix_now().unwrap_or_else(|e| panic!("clock: {e}"))
}

/// The gateway's answer to one delivery.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body as JSON (`Null` when it is not JSON).
    pub json: Value,
    /// From sending the request to having read the whole answer.
    pub elapsed: Duration,
}

impl Delivery {
    /// `outcome` of a 200 body, or `""`.
    pub fn outcome(&self) -> &str {
        self.json["outcome"].as_str().unwrap_or_default()
    }

    /// Asserts 200 with the given outcome; `what` names the delivery.
    pub fn assert_outcome(&self, outcome: &str, what: &str) {
        assert_eq!(self.status, StatusCode::OK, "{what}: {self:?}");
        assert_eq!(self.outcome(), outcome, "{what}: {self:?}");
    }
}

/// Signs and POSTs deliveries to one gateway. Cheap to clone, so concurrent
/// deliveries can be spawned as tasks.
#[derive(Debug, Clone)]
pub struct Poster {
    url: String,
    http: reqwest::Client,
    secrets: SigningSecrets,
}

impl Poster {
    /// The headers Svix would send for `body` as message `msg_id`, signed now.
    pub fn sign(&self, body: &[u8], msg_id: &str) -> HeaderMap {
        sign_headers(self.secrets.first(), msg_id, unix_now(), body)
            .unwrap_or_else(|e| panic!("cannot sign {msg_id}: {e}"))
    }

    /// POSTs `body` with ready-made `headers`.
    pub async fn send(&self, headers: HeaderMap, body: Vec<u8>) -> Delivery {
        let started = Instant::now();
        let response = self
            .http
            .post(&self.url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {} failed: {e}", self.url));
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap_or_else(|e| panic!("reading the answer failed: {e}"));
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Delivery { status, headers, json, elapsed: started.elapsed() }
    }

    /// Signs `body` exactly as Svix does (with the current time) and POSTs it,
    /// unchanged, as message `msg_id`.
    pub async fn post(&self, body: impl AsRef<[u8]>, msg_id: &str) -> Delivery {
        let body = body.as_ref();
        self.send(self.sign(body, msg_id), body.to_vec()).await
    }
}

/// A real user-service and a real gateway pointed at it.
pub struct Harness {
    /// Which database user-service runs on.
    pub db: Db,
    server: Option<TestServer>,
    stopped: Option<TestDatabase>,
    user_service_addr: SocketAddr,
    channel: Channel,
    poster: Poster,
    gateway_shutdown: Option<oneshot::Sender<()>>,
}

impl Harness {
    /// Starts user-service on a fresh `db`, then the gateway in front of it
    /// with a freshly generated signing secret.
    pub async fn start(db: Db) -> Self {
        let server = TestServer::start(db).await;
        let user_service_addr = server.addr;
        let secrets = SigningSecrets::parse(&generate_secret())
            .unwrap_or_else(|e| panic!("generated secret is invalid: {e}"));
        let mut config = Config::new(secrets.clone());
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.user_service_url = url_of(user_service_addr);
        config.upstream_timeout = UPSTREAM_TIMEOUT;
        let app = App::build(config).await.unwrap_or_else(|e| panic!("gateway does not start: {e}"));
        let gateway_addr = app.local_addr();
        let (gateway_shutdown, stop) = oneshot::channel::<()>();
        tokio::spawn(app.run_until(async {
            let _ = stop.await;
        }));
        // One keep-alive client for every delivery of the test, like Svix's
        // connection reuse; the timeout is only a safety net above Svix's 15 s.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_else(|e| panic!("HTTP client: {e}"));
        let poster = Poster { url: format!("http://{gateway_addr}/webhooks/clerk"), http, secrets };
        Self {
            db,
            server: Some(server),
            stopped: None,
            user_service_addr,
            channel: lazy_channel(user_service_addr),
            poster,
            gateway_shutdown: Some(gateway_shutdown),
        }
    }

    /// `http://addr` of user-service, for clients such as `gateway reconcile`.
    pub fn user_service_url(&self) -> Uri {
        url_of(self.user_service_addr)
    }

    /// Every user, oldest first, over as many pages as it takes.
    pub async fn every_user(&self) -> Vec<User> {
        let mut users = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = ListUsersRequest { page_size: 1000, page_token, ..ListUsersRequest::default() };
            let page = self
                .users()
                .list_users(request)
                .await
                .unwrap_or_else(|status| panic!("ListUsers: {status:?}"))
                .into_inner();
            users.extend(page.users);
            if page.next_page_token.is_empty() {
                return users;
            }
            page_token = page.next_page_token;
        }
    }

    /// A clonable poster for this gateway.
    pub fn poster(&self) -> Poster {
        self.poster.clone()
    }

    /// Signs `body` as Svix does, now, and POSTs it as message `msg_id`.
    pub async fn post(&self, body: impl AsRef<[u8]>, msg_id: &str) -> Delivery {
        self.poster.post(body, msg_id).await
    }

    /// Delivers `body` as message `msg_id` `count` times at once: every request
    /// is signed first, then all are released together.
    pub async fn post_concurrently(&self, body: &str, msg_id: &str, count: usize) -> Vec<Delivery> {
        let barrier = Arc::new(Barrier::new(count));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..count {
            let poster = self.poster();
            let headers = poster.sign(body.as_bytes(), msg_id);
            let body = body.as_bytes().to_vec();
            let barrier = barrier.clone();
            tasks.spawn(async move {
                barrier.wait().await;
                poster.send(headers, body).await
            });
        }
        let mut deliveries = Vec::with_capacity(count);
        while let Some(delivery) = tasks.join_next().await {
            deliveries.push(delivery.unwrap_or_else(|e| panic!("delivery task failed: {e}")));
        }
        deliveries
    }

    /// Delivers several `(body, msg_id)` messages at once: all are signed
    /// first, then released together. Answers come back in the given order.
    pub async fn post_all_at_once(&self, messages: &[(String, String)]) -> Vec<Delivery> {
        let barrier = Arc::new(Barrier::new(messages.len()));
        let tasks: Vec<_> = messages
            .iter()
            .map(|(body, msg_id)| {
                let poster = self.poster();
                let headers = poster.sign(body.as_bytes(), msg_id);
                let body = body.as_bytes().to_vec();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    poster.send(headers, body).await
                })
            })
            .collect();
        let mut deliveries = Vec::with_capacity(tasks.len());
        for task in tasks {
            deliveries.push(task.await.unwrap_or_else(|e| panic!("delivery task failed: {e}")));
        }
        deliveries
    }

    /// A `UserService` client on user-service (not through the gateway).
    pub fn users(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.channel.clone())
    }

    /// A `UserDataService` client on user-service.
    pub fn data(&self) -> UserDataServiceClient<Channel> {
        UserDataServiceClient::new(self.channel.clone())
    }

    /// The user with this Clerk id, or the gRPC status (e.g. `NOT_FOUND`).
    pub async fn user(&self, clerk_id: &str) -> Result<User, Status> {
        let request = GetUserRequest { clerk_id: clerk_id.into(), ..GetUserRequest::default() };
        let user = self.users().get_user(request).await?.into_inner().user;
        Ok(user.unwrap_or_else(|| panic!("GetUser({clerk_id}) answered OK without a user")))
    }

    /// The user with this Clerk id; fails the test when it does not exist.
    pub async fn existing_user(&self, clerk_id: &str) -> User {
        self.user(clerk_id).await.unwrap_or_else(|status| panic!("user {clerk_id} should exist: {status:?}"))
    }

    /// Fails the test unless `GetUser` answers `NOT_FOUND` for this Clerk id.
    pub async fn assert_not_found(&self, clerk_id: &str, context: &str) {
        match self.user(clerk_id).await {
            Err(status) if status.code() == Code::NotFound => {}
            other => panic!("{context}: user {clerk_id} should be NOT_FOUND, got {other:?}"),
        }
    }

    /// `GetUserHistory` for an existing user.
    pub async fn history(&self, clerk_id: &str) -> GetUserHistoryResponse {
        let request = GetUserHistoryRequest { clerk_id: clerk_id.into(), ..GetUserHistoryRequest::default() };
        self.data()
            .get_user_history(request)
            .await
            .unwrap_or_else(|status| panic!("GetUserHistory({clerk_id}): {status:?}"))
            .into_inner()
    }

    /// `GetActivity` for an existing user.
    pub async fn activity(&self, clerk_id: &str) -> Activity {
        let request = GetActivityRequest { clerk_id: clerk_id.into(), ..GetActivityRequest::default() };
        self.data()
            .get_activity(request)
            .await
            .unwrap_or_else(|status| panic!("GetActivity({clerk_id}): {status:?}"))
            .into_inner()
            .activity
            .unwrap_or_default()
    }

    /// How many Clerk-driven writes changed this user: the version of its
    /// `last_clerk_sync` value, read from the etag (`"N"`) `GetUserData`
    /// returns. Every applied event rewrites that key once.
    pub async fn clerk_sync_count(&self, clerk_id: &str) -> i64 {
        let request = GetUserDataRequest {
            clerk_id: clerk_id.into(),
            key: "last_clerk_sync".into(),
            ..GetUserDataRequest::default()
        };
        let entry = self
            .data()
            .get_user_data(request)
            .await
            .unwrap_or_else(|status| panic!("GetUserData({clerk_id}, last_clerk_sync): {status:?}"))
            .into_inner()
            .entry
            .unwrap_or_default();
        version_of(&entry.etag)
    }

    /// Every user, oldest first (one page is plenty for these tests).
    pub async fn all_users(&self) -> Vec<User> {
        self.list_users(ListUsersRequest { page_size: 1000, ..ListUsersRequest::default() }).await
    }

    /// Users with this email address.
    pub async fn users_with_email(&self, email: &str) -> Vec<User> {
        self.list_users(ListUsersRequest {
            page_size: 1000,
            email: email.into(),
            ..ListUsersRequest::default()
        })
        .await
    }

    async fn list_users(&self, request: ListUsersRequest) -> Vec<User> {
        let page = self
            .users()
            .list_users(request)
            .await
            .unwrap_or_else(|status| panic!("ListUsers: {status:?}"))
            .into_inner();
        assert!(page.next_page_token.is_empty(), "more users than one page");
        page.users
    }

    /// Stops user-service gracefully; the gateway keeps running.
    pub async fn stop_user_service(&mut self) {
        let server = self.server.take().unwrap_or_else(|| panic!("user-service is not running"));
        self.stopped = Some(server.stop().await);
    }

    /// Starts user-service again on the same database and the same address,
    /// as a restarted pod behind a stable service address would be.
    pub async fn restart_user_service(&mut self) {
        let database = self.stopped.take().unwrap_or_else(|| panic!("user-service was not stopped"));
        let server = TestServer::start_on(database, self.user_service_addr).await;
        assert_eq!(server.addr, self.user_service_addr);
        self.server = Some(server);
        self.channel = lazy_channel(self.user_service_addr);
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(shutdown) = self.gateway_shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// A channel to user-service that connects on first use (and reconnects).
fn lazy_channel(addr: SocketAddr) -> Channel {
    Endpoint::from(url_of(addr)).connect_timeout(Duration::from_secs(5)).connect_lazy()
}

/// A protobuf time as Unix milliseconds (how Clerk writes times).
pub fn millis(time: Option<&prost_types::Timestamp>) -> Option<i64> {
    time.map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

/// The row version in an etag made by user-service (`"N"`).
pub fn version_of(etag: &str) -> i64 {
    etag.trim_matches('"').parse().unwrap_or_else(|_| panic!("unexpected etag {etag:?}"))
}

/// Every ordering of `items`.
pub fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut all = Vec::new();
    for (index, first) in items.iter().enumerate() {
        let mut rest = items.to_vec();
        rest.remove(index);
        for mut tail in permutations(&rest) {
            tail.insert(0, first.clone());
            all.push(tail);
        }
    }
    all
}
