//! Delivering messages the way Svix does.
//!
//! At least once and in no guaranteed order: messages start in the plan's
//! (shuffled) order with at most `concurrency` requests in flight. Every
//! attempt is signed anew (fresh `svix-timestamp` and signature, same
//! `svix-id`) and counts as delivered only on a 2xx within the deadline (15 s
//! at Svix). A failed attempt is retried on Svix's schedule divided by
//! `time_scale`; after the last one the message has failed ("gave up").

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use gateway::{SigningSecret, svix::sign_headers};
use tokio::sync::Semaphore;

use crate::storm::{plan::Message, rng::Rng};

/// Svix's waits before each retry: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h
/// (so 8 attempts in all, the last about 27.6 h after the first).
pub const SVIX_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// Svix's delivery deadline: a 2xx must arrive within 15 s.
pub const SVIX_DEADLINE: Duration = Duration::from_secs(15);

/// How to deliver.
#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    /// Webhook URLs (`http://host:port/webhooks/clerk`); a message's first
    /// attempt goes to URL `index % n`, each retry to the next one.
    pub urls: Vec<String>,
    /// The secret every attempt is signed with.
    pub secret: SigningSecret,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// Svix's schedule is divided by this (1000: 5 ms, 300 ms, 1.8 s, …).
    pub time_scale: f64,
    /// An attempt without a 2xx answer within this has failed.
    pub deadline: Duration,
    /// Probability that a delivered message is sent once more later (as a
    /// Dashboard replay or a Svix hiccup would), with the same `svix-id`.
    pub duplicates: f64,
    /// Probability that a message's first attempt is sent several times at
    /// once: to every URL, or twice to a single URL (the same event reaching
    /// several replicas concurrently).
    pub race: f64,
    /// Seed for duplicate and race choices.
    pub seed: u64,
}

/// One HTTP attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Seconds since the storm started when it was sent.
    pub at: f64,
    /// How long it took.
    pub latency: Duration,
    /// HTTP status, if one came back in time.
    pub status: Option<u16>,
    /// `outcome` of a 2xx body, e.g. `applied` or `duplicate`.
    pub outcome: Option<String>,
    /// Whether it was a duplicate sent after the message was delivered.
    pub duplicate: bool,
}

impl Attempt {
    /// Whether this attempt delivered the message (2xx within the deadline).
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// What happened to one message.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// Every attempt, in order.
    pub attempts: Vec<Attempt>,
    /// Some attempt got a 2xx in time.
    pub delivered: bool,
    /// Every scheduled attempt failed.
    pub gave_up: bool,
}

impl Record {
    /// The `outcome`s of the 2xx answers (first delivery and duplicates).
    pub fn outcomes(&self) -> impl Iterator<Item = &str> {
        self.attempts.iter().filter(|a| a.ok()).filter_map(|a| a.outcome.as_deref())
    }

    /// How many 2xx answers said `applied`: more than one means the message
    /// took effect twice.
    pub fn applied_answers(&self) -> usize {
        self.outcomes().filter(|o| *o == "applied").count()
    }
}

/// Everything a delivery run did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Per message, in plan order.
    pub records: Vec<Record>,
    /// Answers by kind (`200 applied`, `503`, `error: connect`, …).
    pub answers: BTreeMap<String, u64>,
    /// Wall time.
    pub elapsed: Duration,
}

impl Report {
    /// HTTP requests sent, duplicates and races included.
    pub fn attempts(&self) -> usize {
        self.records.iter().map(|r| r.attempts.len()).sum()
    }

    /// Messages delivered.
    pub fn delivered(&self) -> usize {
        self.records.iter().filter(|r| r.delivered).count()
    }

    /// Messages that failed every attempt.
    pub fn gave_up(&self) -> usize {
        self.records.iter().filter(|r| r.gave_up).count()
    }

    /// Duplicates sent.
    pub fn duplicates(&self) -> usize {
        self.records.iter().flat_map(|r| &r.attempts).filter(|a| a.duplicate).count()
    }

    /// The answers as `200 applied=12 503=3 …`.
    pub fn answers_line(&self) -> String {
        self.answers.iter().map(|(k, n)| format!("{k}={n}")).collect::<Vec<_>>().join(", ")
    }
}

/// Live counters a fault injector can watch while a storm runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Messages that have not had their first attempt answered yet.
    pub first_pass_left: AtomicUsize,
    /// Messages neither delivered nor given up yet.
    pub open: AtomicUsize,
    /// Attempts sent so far.
    pub attempts: AtomicU64,
}

struct Shared {
    options: DeliveryOptions,
    client: reqwest::Client,
    permits: Semaphore,
    started: Instant,
    answers: Mutex<BTreeMap<String, u64>>,
    progress: Arc<Progress>,
}

/// Delivers `messages` and returns what happened to each. `progress` is
/// updated as it goes.
pub async fn deliver(messages: &[Message], options: DeliveryOptions, progress: Arc<Progress>) -> Report {
    progress.first_pass_left.store(messages.len(), Ordering::SeqCst);
    progress.open.store(messages.len(), Ordering::SeqCst);
    let client = reqwest::Client::builder()
        .timeout(options.deadline)
        .pool_idle_timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let shared = Arc::new(Shared {
        permits: Semaphore::new(options.concurrency.max(1)),
        options,
        client,
        started: Instant::now(),
        answers: Mutex::default(),
        progress,
    });
    // Spawned in plan order; the semaphore is fair, so first attempts start
    // roughly in that (shuffled) order.
    let tasks: Vec<_> = messages
        .iter()
        .enumerate()
        .map(|(i, message)| {
            let (shared, message) = (shared.clone(), message.clone());
            tokio::spawn(async move { deliver_one(&shared, &message, i as u64).await })
        })
        .collect();
    let mut records = Vec::with_capacity(tasks.len());
    for task in tasks {
        records.push(task.await.unwrap_or_default());
    }
    let answers = shared.answers.lock().map(|a| a.clone()).unwrap_or_default();
    Report { records, answers, elapsed: shared.started.elapsed() }
}

async fn deliver_one(shared: &Shared, message: &Message, index: u64) -> Record {
    let options = &shared.options;
    let mut rng = Rng::derive(options.seed, index);
    let mut record = Record::default();
    for attempt in 0..=SVIX_SCHEDULE.len() {
        if attempt > 0 {
            tokio::time::sleep(SVIX_SCHEDULE[attempt - 1].div_f64(options.time_scale.max(1e-9))).await;
        }
        let targets: Vec<usize> = if attempt == 0 && rng.chance(options.race) {
            (0..options.urls.len().max(2)).map(|k| k % options.urls.len().max(1)).collect()
        } else {
            // Each retry goes to the next URL, so a message is never stuck
            // behind one dead gateway.
            vec![(index as usize + attempt) % options.urls.len().max(1)]
        };
        let sends = targets.into_iter().map(|t| send(shared, message, t, false));
        let attempts = futures::future::join_all(sends).await;
        if attempt == 0 {
            shared.progress.first_pass_left.fetch_sub(1, Ordering::SeqCst);
        }
        record.delivered = attempts.iter().any(Attempt::ok);
        record.attempts.extend(attempts);
        if record.delivered {
            break;
        }
    }
    record.gave_up = !record.delivered;
    shared.progress.open.fetch_sub(1, Ordering::SeqCst);
    if record.delivered && rng.chance(options.duplicates) {
        // Later, and possibly to another replica: a redelivery of a message
        // that was already acknowledged.
        tokio::time::sleep(Duration::from_millis(rng.below(200))).await;
        let target = (index as usize + record.attempts.len()) % options.urls.len().max(1);
        record.attempts.push(send(shared, message, target, true).await);
    }
    record
}

async fn send(shared: &Shared, message: &Message, target: usize, duplicate: bool) -> Attempt {
    let _permit = shared.permits.acquire().await;
    shared.progress.attempts.fetch_add(1, Ordering::Relaxed);
    let at = shared.started.elapsed().as_secs_f64();
    let started = Instant::now();
    let timestamp = gateway::send::unix_now().unwrap_or_default();
    let (status, outcome, answer) =
        match sign_headers(&shared.options.secret, &message.id, timestamp, &message.body) {
            Err(e) => (None, None, format!("error: sign: {e}")),
            Ok(headers) => {
                let url = &shared.options.urls[target];
                match shared.client.post(url).headers(headers).body(message.body.clone()).send().await {
                    Err(e) => (None, None, format!("error: {}", error_kind(&e))),
                    Ok(response) => {
                        let status = response.status().as_u16();
                        match response.bytes().await {
                            Err(e) => (None, None, format!("error: {}", error_kind(&e))),
                            Ok(body) => {
                                let outcome = serde_json::from_slice::<serde_json::Value>(&body)
                                    .ok()
                                    .and_then(|v| v.get("outcome")?.as_str().map(str::to_owned));
                                let answer = match &outcome {
                                    Some(o) => format!("{status} {o}"),
                                    None => status.to_string(),
                                };
                                (Some(status), outcome, answer)
                            }
                        }
                    }
                }
            }
        };
    let latency = started.elapsed();
    // A 2xx after the deadline is a failure to Svix (reqwest's timeout
    // normally stops the request first).
    let (status, answer) = if latency > shared.options.deadline && status.is_some() {
        (None, "error: deadline".to_owned())
    } else {
        (status, answer)
    };
    if let Ok(mut answers) = shared.answers.lock() {
        *answers.entry(answer).or_default() += 1;
    }
    Attempt { at, latency, status, outcome, duplicate }
}

fn error_kind(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "deadline"
    } else if error.is_connect() {
        "connect"
    } else if error.is_body() || error.is_decode() {
        "body"
    } else {
        "request"
    }
}
