//! The measured scenarios: the same operations on the store directly, over
//! gRPC, and as signed webhooks through the gateway.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Result;
use gateway::{config::SigningSecret, svix::sign_headers};
use tonic::transport::Channel;
use user_service::{
    domain::{
        change::Actor,
        data::{activity, preferences},
        keys::PREFERENCES,
        user::{ClerkId, Profile, Role, SignupSource, Status, UserKey},
        write::{CreateUser, EventContext},
    },
    store::{Store, UserFilter},
};
use userdata_proto::v1::{
    self as pb, user_data_service_client::UserDataServiceClient, user_service_client::UserServiceClient,
};

use crate::{events, load, seed::seed_clerk_id, services::SECRET};

/// A tiny deterministic PRNG (xorshift), so runs are repeatable without a
/// dependency.
pub fn pick(i: usize, salt: u64, n: usize) -> usize {
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    (x % n.max(1) as u64) as usize
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Parameters shared by the scenarios.
#[derive(Clone)]
pub struct Params {
    /// Operations per measured step.
    pub ops: usize,
    /// Concurrent callers.
    pub concurrency: usize,
    /// Seeded users.
    pub seeded: usize,
    /// Unique prefix of ids made by this run.
    pub run: String,
}

/// The store baseline.
pub async fn store(store: Arc<dyn Store>, p: &Params) -> Vec<load::Stats> {
    let mut out = Vec::new();
    let (s, run) = (store.clone(), p.run.clone());
    out.push(
        load::run("store create user (event)", p.ops, p.concurrency, move |i| {
            let (s, clerk_id) = (s.clone(), format!("user_{run}_store_{i}"));
            async move {
                let cmd = CreateUser {
                    clerk_id: ClerkId::parse(&clerk_id).expect("a valid Clerk id"),
                    profile: Profile {
                        email: Some(format!("user{i}@example.org")),
                        first_name: Some(format!("First{i}v1")),
                        last_name: Some(format!("Last{i}")),
                        username: None,
                        image_url: Some(format!("https://img.clerk.com/{clerk_id}")),
                    },
                    role: Role::User,
                    status: Status::Active,
                    signup_source: SignupSource::Clerk,
                    event: Some(EventContext {
                        idempotency_key: format!("msg_{clerk_id}"),
                        source_time_ms: now_ms(),
                        event_type: Some("user.created".into()),
                        source: "bench".into(),
                        kind: EventContext::kind_of("CreateUser", Some("user.created")),
                    }),
                    actor: Actor::new("bench", None),
                };
                s.create_user(cmd).await.map(|_| ()).map_err(|e| e.to_string())
            }
        })
        .await,
    );
    let seeded = p.seeded;
    let s = store.clone();
    out.push(
        load::run("store get user", p.ops, p.concurrency, move |i| {
            let s = s.clone();
            async move {
                let key = UserKey::ClerkId(seed_clerk_id(pick(i, 1, seeded)));
                s.get_user(&key).await.map(|_| ()).map_err(|e| e.to_string())
            }
        })
        .await,
    );
    let s = store.clone();
    out.push(
        load::run("store list users (50)", p.ops, p.concurrency, move |_| {
            let s = s.clone();
            async move {
                s.list_users(&UserFilter::default(), None, 51).await.map(|_| ()).map_err(|e| e.to_string())
            }
        })
        .await,
    );
    let s = store.clone();
    out.push(
        load::run("store get preferences", p.ops, p.concurrency, move |i| {
            let s = s.clone();
            async move {
                let key = UserKey::ClerkId(seed_clerk_id(pick(i, 2, seeded)));
                s.read_data(&key, &[PREFERENCES]).await.map(|_| ()).map_err(|e| e.to_string())
            }
        })
        .await,
    );
    let s = store.clone();
    out.push(
        load::run("store update preferences", p.ops, p.concurrency, move |i| {
            let s = s.clone();
            async move {
                let key = UserKey::ClerkId(seed_clerk_id(pick(i, 3, seeded)));
                let patch =
                    preferences::PreferencesPatch { notifications: Some(i % 2 == 0), ..Default::default() };
                s.edit_data(
                    &key,
                    &[PREFERENCES],
                    None,
                    &Actor::new("bench", None),
                    Box::new(move |set| preferences::update(set, patch, None)),
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
            }
        })
        .await,
    );
    let s = store.clone();
    out.push(
        load::run("store check flag (20 users)", p.ops, p.concurrency, move |i| {
            let s = s.clone();
            async move {
                let ids: Vec<String> = (0..20).map(|k| seed_clerk_id(pick(i * 20 + k, 4, seeded))).collect();
                s.data_for_users(&[], &ids, "feature_flags").await.map(|_| ()).map_err(|e| e.to_string())
            }
        })
        .await,
    );
    let s = store;
    out.push(
        load::run("store record login", p.ops, p.concurrency, move |i| {
            let s = s.clone();
            async move {
                let key = UserKey::ClerkId(seed_clerk_id(pick(i, 5, seeded)));
                let entry = activity::LoginEntry {
                    timestamp: user_service::domain::time::iso(chrono::Utc::now()),
                    device: Some("bench".into()),
                    ip: Some("203.0.113.7".into()),
                    success: true,
                };
                s.edit_data(
                    &key,
                    &activity::KEYS,
                    None,
                    &Actor::new("bench", None),
                    Box::new(move |set| activity::update(set, |a| a.record_login(entry))),
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
            }
        })
        .await,
    );
    out
}

/// Several HTTP/2 connections, used round-robin.
pub async fn channels(addr: SocketAddr, n: usize) -> Result<Vec<Channel>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Channel::from_shared(format!("http://{addr}"))?.connect().await?);
    }
    Ok(out)
}

fn code(status: tonic::Status) -> String {
    format!("grpc {:?}", status.code())
}

/// The same operations over gRPC.
pub async fn grpc(addr: SocketAddr, p: &Params) -> Result<Vec<load::Stats>> {
    let chans = Arc::new(channels(addr, 4).await?);
    let seeded = p.seeded;
    let users = |c: &Arc<Vec<Channel>>, i: usize| UserServiceClient::new(c[i % c.len()].clone());
    let data = |c: &Arc<Vec<Channel>>, i: usize| UserDataServiceClient::new(c[i % c.len()].clone());
    let mut out = Vec::new();
    let c = chans.clone();
    out.push(
        load::run("grpc GetUser", p.ops, p.concurrency, move |i| {
            let mut client = users(&c, i);
            async move {
                let req =
                    pb::GetUserRequest { clerk_id: seed_clerk_id(pick(i, 1, seeded)), ..Default::default() };
                client.get_user(req).await.map(|_| ()).map_err(code)
            }
        })
        .await,
    );
    let c = chans.clone();
    out.push(
        load::run("grpc ListUsers (50)", p.ops, p.concurrency, move |i| {
            let mut client = users(&c, i);
            async move {
                client
                    .list_users(pb::ListUsersRequest { page_size: 50, ..Default::default() })
                    .await
                    .map(|_| ())
                    .map_err(code)
            }
        })
        .await,
    );
    let c = chans.clone();
    out.push(
        load::run("grpc GetPreferences", p.ops, p.concurrency, move |i| {
            let mut client = data(&c, i);
            async move {
                let req = pb::GetPreferencesRequest {
                    clerk_id: seed_clerk_id(pick(i, 2, seeded)),
                    ..Default::default()
                };
                client.get_preferences(req).await.map(|_| ()).map_err(code)
            }
        })
        .await,
    );
    let c = chans.clone();
    out.push(
        load::run("grpc UpdatePreferences", p.ops, p.concurrency, move |i| {
            let mut client = data(&c, i);
            async move {
                let req = pb::UpdatePreferencesRequest {
                    clerk_id: seed_clerk_id(pick(i, 3, seeded)),
                    preferences: Some(pb::Preferences { notifications: i % 2 == 0, ..Default::default() }),
                    update_mask: Some(prost_types::FieldMask { paths: vec!["notifications".into()] }),
                    ..Default::default()
                };
                client.update_preferences(req).await.map(|_| ()).map_err(code)
            }
        })
        .await,
    );
    let c = chans.clone();
    out.push(
        load::run("grpc CheckFeatureFlagForUsers (20)", p.ops, p.concurrency, move |i| {
            let mut client = data(&c, i);
            async move {
                let req = pb::CheckFeatureFlagForUsersRequest {
                    flag_key: "beta".into(),
                    clerk_ids: (0..20).map(|k| seed_clerk_id(pick(i * 20 + k, 4, seeded))).collect(),
                    ..Default::default()
                };
                client.check_feature_flag_for_users(req).await.map(|_| ()).map_err(code)
            }
        })
        .await,
    );
    let c = chans;
    out.push(
        load::run("grpc RecordLogin", p.ops, p.concurrency, move |i| {
            let mut client = data(&c, i);
            async move {
                let req = pb::RecordLoginRequest {
                    clerk_id: seed_clerk_id(pick(i, 5, seeded)),
                    login: Some(pb::LoginRecord {
                        timestamp: None,
                        device: Some("bench".into()),
                        ip: Some("203.0.113.7".into()),
                        success: true,
                    }),
                    ..Default::default()
                };
                client.record_login(req).await.map(|_| ()).map_err(code)
            }
        })
        .await,
    );
    Ok(out)
}

/// One signed delivery.
#[derive(Clone)]
pub struct Delivery {
    /// The svix-id.
    pub msg_id: String,
    /// The JSON body.
    pub body: Arc<Vec<u8>>,
}

/// What a webhook run did: its timings, and the gateway's answers by outcome
/// (`applied`, `duplicate`, `stale`, `user_deleted`, …).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Posted {
    /// Throughput and latency.
    pub stats: load::Stats,
    /// 2xx answers by the `outcome` of their body.
    pub outcomes: BTreeMap<String, u64>,
}

impl Posted {
    /// Deliveries the gateway answered `applied`.
    pub fn applied(&self) -> u64 {
        self.outcomes.get("applied").copied().unwrap_or(0)
    }
}

/// Posts deliveries to the gateway at fixed concurrency over keep-alive
/// connections; each is signed just before it is sent (Svix signs every
/// attempt with its own timestamp).
pub async fn post_all(name: &str, http: SocketAddr, deliveries: Vec<Delivery>, concurrency: usize) -> Posted {
    let secret = SigningSecret::parse(SECRET).expect("benchmark secret is valid");
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().expect("http client");
    let url = format!("http://{http}/webhooks/clerk");
    let deliveries = Arc::new(deliveries);
    let total = deliveries.len();
    let outcomes = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let counted = outcomes.clone();
    let stats = load::run(name, total, concurrency, move |i| {
        let d = deliveries[i].clone();
        let (client, url, secret, outcomes) = (client.clone(), url.clone(), secret.clone(), counted.clone());
        async move {
            let ts = chrono::Utc::now().timestamp();
            let headers = sign_headers(&secret, &d.msg_id, ts, &d.body).map_err(|e| e.to_string())?;
            let response = client.post(&url).headers(headers).body(d.body.to_vec()).send().await;
            match response {
                Ok(r) if r.status().is_success() => {
                    let body = r.bytes().await.map_err(|e| format!("transport {}", e.without_url()))?;
                    let outcome = serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v.get("outcome").and_then(|o| o.as_str()).map(str::to_owned))
                        .unwrap_or_else(|| "unknown".into());
                    if let Ok(mut outcomes) = outcomes.lock() {
                        *outcomes.entry(outcome).or_default() += 1;
                    }
                    Ok(())
                }
                Ok(r) => Err(format!("http {}", r.status().as_u16())),
                Err(e) => Err(format!("transport {}", e.without_url())),
            }
        }
    })
    .await;
    let outcomes = outcomes.lock().map(|o| o.clone()).unwrap_or_default();
    Posted { stats, outcomes }
}

/// `n` distinct `user.created` events.
pub fn created_events(run: &str, n: usize) -> Vec<Delivery> {
    let t = now_ms();
    (0..n)
        .map(|i| {
            let clerk_id = format!("user_{run}_wh_{i}");
            Delivery {
                msg_id: format!("msg_{run}_c{i}"),
                body: Arc::new(events::user_created(&clerk_id, i, t)),
            }
        })
        .collect()
}

/// `n` users each created, updated twice and deleted, with a quarter of the
/// events delivered twice, all in a shuffled order.
pub fn mixed_events(run: &str, n: usize) -> Vec<Delivery> {
    let t = now_ms();
    let mut out = Vec::new();
    for i in 0..n {
        let clerk_id = format!("user_{run}_mx_{i}");
        let evs = [
            (format!("msg_{run}_m{i}c"), events::user_created(&clerk_id, i, t)),
            (format!("msg_{run}_m{i}u2"), events::user_updated(&clerk_id, i, 2, t + 1)),
            (format!("msg_{run}_m{i}u3"), events::user_updated(&clerk_id, i, 3, t + 2)),
            (format!("msg_{run}_m{i}d"), events::user_deleted(&clerk_id, t + 3)),
        ];
        for (k, (msg_id, body)) in evs.into_iter().enumerate() {
            let body = Arc::new(body);
            if pick(i * 4 + k, 7, 4) == 0 {
                out.push(Delivery { msg_id: msg_id.clone(), body: body.clone() });
            }
            out.push(Delivery { msg_id, body });
        }
    }
    // Fisher–Yates with the deterministic picker.
    for i in (1..out.len()).rev() {
        let j = pick(i, 11, i + 1);
        out.swap(i, j);
    }
    out
}

/// `n` `session.created` events for the seeded users `0..users`, with
/// svix-ids `msg_<run>_<tag><i>`.
pub fn session_events(run: &str, tag: &str, n: usize, users: usize) -> Vec<Delivery> {
    let t = now_ms();
    (0..n)
        .map(|i| Delivery {
            msg_id: format!("msg_{run}_{tag}{i}"),
            body: Arc::new(events::session_created(&seed_clerk_id(pick(i, 9, users)), i, t + i as i64)),
        })
        .collect()
}

/// Checks over gRPC that every created user exists with the event's data.
pub async fn verify_created(addr: SocketAddr, run: &str, n: usize) -> Result<usize> {
    let chans = Arc::new(channels(addr, 4).await?);
    let run = run.to_owned();
    let stats = load::run("verify created", n, 32, move |i| {
        let mut client = UserServiceClient::new(chans[i % chans.len()].clone());
        let clerk_id = format!("user_{run}_wh_{i}");
        async move {
            let user = client
                .get_user(pb::GetUserRequest { clerk_id, ..Default::default() })
                .await
                .map_err(code)?
                .into_inner()
                .user
                .ok_or("no user")?;
            let ok = user.first_name.as_deref() == Some(&format!("First{i}v1"))
                && user.email.as_deref() == Some(&format!("user{i}@example.org"));
            if ok { Ok(()) } else { Err("wrong state".into()) }
        }
    })
    .await;
    Ok(stats.errors.values().sum::<u64>() as usize)
}

/// Checks over gRPC that every mixed-scenario user ended deleted.
pub async fn verify_deleted(addr: SocketAddr, run: &str, n: usize) -> Result<usize> {
    let chans = Arc::new(channels(addr, 4).await?);
    let run = run.to_owned();
    let stats = load::run("verify deleted", n, 32, move |i| {
        let mut client = UserServiceClient::new(chans[i % chans.len()].clone());
        let clerk_id = format!("user_{run}_mx_{i}");
        async move {
            match client.get_user(pb::GetUserRequest { clerk_id, ..Default::default() }).await {
                Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
                Err(s) => Err(code(s)),
                Ok(_) => Err("resurrected".into()),
            }
        }
    })
    .await;
    Ok(stats.errors.values().sum::<u64>() as usize)
}
