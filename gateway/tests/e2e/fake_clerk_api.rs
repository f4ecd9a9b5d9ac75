//! A fake of Clerk's Backend API, started by the tests on 127.0.0.1:0: the
//! two endpoints `gateway reconcile` reads, answering like the real ones
//! (bare JSON arrays, `limit` 1–500, `offset`, `order_by` with a `+`/`-`
//! prefix defaulting to `-created_at`, `starting_after` only with
//! `created_at` order and no offset, else 422; Clerk's error body; 401
//! without the right bearer key), plus faults injected on demand: a 429 with
//! `Retry-After`, a 500, or a connection dropped in the middle of a body.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinHandle};

use crate::clerk::ClerkUser;

/// The secret key the fake accepts.
pub const SECRET_KEY: &str = "sk_test_e2eFakeClerkBackendApiKey0001";

/// A fault the next `GET /v1/users` answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 429 with `Retry-After: seconds`.
    RateLimited {
        /// The `Retry-After` value.
        seconds: u64,
    },
    /// 500 with Clerk's error body.
    ServerError,
    /// 200 whose body stops half-way: the connection is dropped.
    DropConnection,
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The path.
    pub path: String,
    /// The query parameters.
    pub query: HashMap<String, String>,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// When it arrived.
    pub at: Instant,
    /// The status answered.
    pub status: u16,
}

#[derive(Debug, Default)]
struct Inner {
    /// Ordered by `(created_at, id)`, oldest first.
    users: Vec<ClerkUser>,
    faults: VecDeque<Fault>,
    seen: Vec<Seen>,
    ignore_cursor: bool,
    refuse_cursor: bool,
}

/// A running fake.
pub struct FakeClerkApi {
    /// Where it listens.
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: JoinHandle<()>,
}

impl Drop for FakeClerkApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeClerkApi {
    /// Starts one serving `users`.
    pub async fn start(users: Vec<ClerkUser>) -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let api = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
            let addr = listener.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"));
            let app = Router::new()
                .route("/v1/users", get(list_users))
                .route("/v1/users/count", get(count_users))
                .with_state(inner.clone());
            let task = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            Self { addr, inner, task }
        };
        for user in users {
            api.put(user);
        }
        api
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| panic!("fake Clerk state poisoned: {e}"))
    }

    /// `http://addr`, for `--clerk-api-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds `user`, or replaces the user with its id (as an update in Clerk).
    pub fn put(&self, user: ClerkUser) {
        let mut inner = self.inner();
        inner.users.retain(|u| u.id != user.id);
        let at = inner.users.partition_point(|u| (u.created_at, &u.id) < (user.created_at, &user.id));
        inner.users.insert(at, user);
    }

    /// Removes a user (as a deletion in Clerk).
    pub fn remove(&self, clerk_id: &str) {
        self.inner().users.retain(|u| u.id != clerk_id);
    }

    /// Queues faults for the next `GET /v1/users` requests, in order.
    pub fn inject(&self, faults: &[Fault]) {
        self.inner().faults.extend(faults.iter().copied());
    }

    /// Makes the fake ignore `starting_after`, as a naive API would.
    pub fn ignore_cursor(&self) {
        self.inner().ignore_cursor = true;
    }

    /// Makes the fake answer 422 to `starting_after`, as an API that does not
    /// know the parameter would.
    pub fn refuse_cursor(&self) {
        self.inner().refuse_cursor = true;
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.inner().seen.clone()
    }

    /// Faults not used yet.
    pub fn faults_left(&self) -> usize {
        self.inner().faults.len()
    }
}

fn clerk_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"errors": [{"code": code, "message": message, "long_message": message, "meta": {}}]});
    (status, Json(body)).into_response()
}

fn authorised(headers: &HeaderMap) -> bool {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {SECRET_KEY}"))
}

fn record(
    inner: &Arc<Mutex<Inner>>,
    path: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    status: u16,
) {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let seen =
        Seen { path: path.to_owned(), query: query.clone(), authorization, at: Instant::now(), status };
    inner.lock().unwrap_or_else(|e| panic!("poisoned: {e}")).seen.push(seen);
}

async fn count_users(
    State(inner): State<Arc<Mutex<Inner>>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if !authorised(&headers) {
        record(&inner, "/v1/users/count", &query, &headers, 401);
        return clerk_error(StatusCode::UNAUTHORIZED, "authentication_invalid", "Invalid authentication");
    }
    let total = inner.lock().unwrap_or_else(|e| panic!("poisoned: {e}")).users.len();
    record(&inner, "/v1/users/count", &query, &headers, 200);
    Json(json!({"object": "total_count", "total_count": total})).into_response()
}

async fn list_users(
    State(inner): State<Arc<Mutex<Inner>>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let (status, response) = answer_list(&inner, &query, &headers);
    record(&inner, "/v1/users", &query, &headers, status);
    response
}

fn answer_list(
    inner: &Arc<Mutex<Inner>>,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> (u16, Response) {
    if !authorised(headers) {
        return (
            401,
            clerk_error(StatusCode::UNAUTHORIZED, "authentication_invalid", "Invalid authentication"),
        );
    }
    let mut inner = inner.lock().unwrap_or_else(|e| panic!("poisoned: {e}"));
    match inner.faults.pop_front() {
        Some(Fault::RateLimited { seconds }) => {
            let mut response =
                clerk_error(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", "Too Many Requests");
            response.headers_mut().insert(header::RETRY_AFTER, seconds.into());
            return (429, response);
        }
        Some(Fault::ServerError) => {
            return (500, clerk_error(StatusCode::INTERNAL_SERVER_ERROR, "internal_clerk_error", "Oops"));
        }
        Some(Fault::DropConnection) => {
            let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::from_static(br#"[{"id":"user_half","object":"user","#)),
                Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "dropped by the fake")),
            ];
            let body = Body::from_stream(futures::stream::iter(chunks));
            return (200, ([(header::CONTENT_TYPE, "application/json")], body).into_response());
        }
        None => {}
    }
    let invalid = |message: &str| {
        (422, clerk_error(StatusCode::UNPROCESSABLE_ENTITY, "form_param_value_invalid", message))
    };
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => 10,
        Some(Ok(limit)) if (1..=500).contains(&limit) => limit,
        Some(_) => return invalid("limit must be between 1 and 500"),
    };
    let offset = match query.get("offset").map(|o| o.parse::<usize>()) {
        None => None,
        Some(Ok(offset)) => Some(offset),
        Some(Err(_)) => return invalid("offset must be a number"),
    };
    let order_by = query.get("order_by").map_or("-created_at", String::as_str);
    let ascending = match order_by {
        "+created_at" | "created_at" => true,
        "-created_at" => false,
        _ => return invalid("order_by is not supported by this fake"),
    };
    if inner.refuse_cursor && query.contains_key("starting_after") {
        return invalid("starting_after is not a known parameter");
    }
    let after = if inner.ignore_cursor { None } else { query.get("starting_after") };
    let mut ordered: Vec<&ClerkUser> = inner.users.iter().collect();
    if !ascending {
        ordered.reverse();
    }
    let start = match (after, offset) {
        (Some(_), Some(_)) => return invalid("starting_after cannot be combined with offset"),
        (Some(after), None) => match ordered.iter().position(|u| &u.id == after) {
            Some(index) => index + 1,
            None => return invalid("starting_after names no user"),
        },
        (None, offset) => offset.unwrap_or(0),
    };
    let page: Vec<Value> = ordered.iter().skip(start).take(limit).map(|u| u.data()).collect();
    (200, Json(page).into_response())
}

/// `count` users shaped like a real instance's: every 7th has no email
/// (phone only), every 5th several emails with the second primary, every 3rd
/// no names (`null`), every 4th a username; created a second apart.
pub fn population(prefix: &str, count: usize, created_from: i64) -> Vec<ClerkUser> {
    (0..count)
        .map(|i| {
            let id = format!("user_{prefix}{i:08}");
            let created_at = created_from + i64::try_from(i).unwrap_or(0) * 1000;
            let mut user = ClerkUser::new(&id);
            user.created_at = created_at;
            user.updated_at = created_at + 500;
            if i % 7 == 0 {
                user.emails.clear();
                user.primary_email_address_id = None;
                user.phones = vec![(format!("idn_phone_{i}"), format!("+1555{i:07}"))];
            } else if i % 5 == 0 {
                user =
                    user.with_primary_email(&format!("idn_second_{i}"), &format!("second.{i}@example.test"));
                user.emails.push(crate::clerk::Email {
                    id: format!("idn_third_{i}"),
                    address: format!("third.{i}@example.test"),
                });
            }
            if i % 3 == 0 {
                user.first_name = None;
                user.last_name = None;
            }
            if i % 4 == 0 {
                user.username = Some(format!("member_{i}"));
            }
            user
        })
        .collect()
}
