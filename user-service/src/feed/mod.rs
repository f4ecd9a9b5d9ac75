//! The live change feed: one reader per process tails the change log and
//! fans each change out to every follower; a follower replays what it missed
//! from the log itself, so it never skips nor repeats a change.
//!
//! How a follower stays exact (see also `store/CHANGES.md`):
//! - it subscribes to the fan-out *before* reading the log, and the log is
//!   read only up to what is final, which never moves backwards; so the
//!   replay reaches at least where the fan-out starts for it;
//! - it keeps its own cursor and drops anything at or before it, so what the
//!   replay and the fan-out both carry is sent once;
//! - when it falls too far behind the fan-out (a slow client), it goes back
//!   to reading the log from its cursor: writers never wait for followers.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex as SyncMutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::Utc;
use tokio::sync::{Mutex, broadcast, mpsc, watch};

use self::follower::Follower;
use crate::{
    domain::{
        change::{ChangeFilter, Cursor, LoggedChange},
        error::{Error, Result},
    },
    metrics::Metrics,
    store::Store,
};

mod follower;

/// Changes held per followed user for a follower busy sending (each user's
/// channel is its own, so a change wakes only that user's followers).
const USER_CHANNEL_CAPACITY: usize = 16;
/// Rows read from the log per query.
const BATCH: u32 = 500;
/// How soon to look again while a committed change waits for an older
/// transaction to end.
const HELD_BACK_RETRY: Duration = Duration::from_millis(10);

/// Settings of the feed.
#[derive(Debug, Clone, Copy)]
pub struct FeedConfig {
    /// Safety net: how often the log is read even without a wake-up (a lost
    /// notification, a transaction that ended without changes).
    pub poll_interval: Duration,
    /// How often an idle follower gets a heartbeat.
    pub heartbeat_interval: Duration,
    /// How many changes the fan-out holds for a follower that is busy
    /// sending; one that falls further behind reads the log instead.
    pub fanout_capacity: usize,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(15),
            fanout_capacity: 4096,
        }
    }
}

/// What a follower is sent.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedEvent {
    /// The next matching change.
    Change(Arc<LoggedChange>),
    /// Nothing new matched; everything up to the cursor has been read.
    Heartbeat(Cursor),
}

/// The process's change feed.
pub struct Feed {
    store: Arc<dyn Store>,
    config: FeedConfig,
    /// Every change, for followers of the whole log.
    fanout: broadcast::Sender<Arc<LoggedChange>>,
    /// Each followed user's changes, for followers filtered to that user:
    /// a change wakes only its user's followers, not every follower.
    users: SyncMutex<HashMap<String, broadcast::Sender<Arc<LoggedChange>>>>,
    /// Where the fan-out has read to; `None` while nobody follows (then the
    /// log is not read at all).
    head: Mutex<Option<Cursor>>,
    /// How far the reader has handed changes to the channels: every change
    /// up to it is in the channel of each follower that was subscribed then.
    /// Read by heartbeats without waiting for a read in progress.
    published: SyncMutex<Option<Cursor>>,
    followers: SyncMutex<HashMap<u64, Arc<Progress>>>,
    next_follower: AtomicU64,
    metrics: Option<Arc<Metrics>>,
    /// Set when the server shuts down: every stream ends.
    closing: watch::Sender<bool>,
    /// Wakes the reader when a follower arrives: a change it cannot see yet
    /// (held back by an older transaction) must still reach it, and only
    /// the reader looks again until such a change is final.
    arrived: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed").field("config", &self.config).finish_non_exhaustive()
    }
}

/// How far one follower has got, for the lag gauge.
#[derive(Debug, Default)]
struct Progress {
    /// Milliseconds since the epoch of the oldest change this follower has
    /// not sent yet, or 0 when it has sent everything it knows of.
    behind_since_ms: AtomicI64,
}

impl Feed {
    /// Starts the feed's reader on `store`.
    pub fn start(store: Arc<dyn Store>, config: FeedConfig, metrics: Option<Arc<Metrics>>) -> Arc<Self> {
        let feed = Arc::new(Self {
            store,
            config,
            fanout: broadcast::Sender::new(config.fanout_capacity.max(1)),
            users: SyncMutex::new(HashMap::new()),
            head: Mutex::new(None),
            published: SyncMutex::new(None),
            followers: SyncMutex::new(HashMap::new()),
            next_follower: AtomicU64::new(0),
            metrics,
            closing: watch::Sender::new(false),
            arrived: Arc::new(tokio::sync::Notify::new()),
        });
        tokio::spawn(read_log(Arc::downgrade(&feed)));
        feed
    }

    /// Ends every stream with `UNAVAILABLE` (the server is shutting down:
    /// graceful shutdown waits for calls to end, and a stream never would).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Followers connected right now.
    pub fn followers(&self) -> usize {
        self.followers.lock().map_or(0, |f| f.len())
    }

    /// How long the furthest-behind follower has had a change waiting.
    pub fn max_lag(&self) -> Duration {
        let now = Utc::now().timestamp_millis();
        let oldest = self.followers.lock().map_or(0, |followers| {
            followers
                .values()
                .map(|p| p.behind_since_ms.load(Ordering::Relaxed))
                .filter(|ms| *ms > 0)
                .min()
                .unwrap_or(0)
        });
        if oldest == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(u64::try_from(now - oldest).unwrap_or(0))
        }
    }

    /// Follows the log after `start` (`None`: from now) for changes matching
    /// `filter`. Fails with `OUT_OF_RANGE` when `start` is older than
    /// retention keeps. Events arrive on the returned channel until the
    /// receiver is dropped.
    pub async fn follow(
        self: &Arc<Self>,
        start: Option<Cursor>,
        filter: ChangeFilter,
        capacity: usize,
    ) -> Result<mpsc::Receiver<Result<FeedEvent>>> {
        // Subscribe first: whatever the fan-out sends from now on, the
        // replay below reaches at least up to it.
        let fanout = self.subscribe(filter.clerk_id.as_deref()).await?;
        let cursor = match start {
            Some(cursor) => {
                check_retained(self.store.as_ref(), cursor).await?;
                cursor
            }
            // Never behind the retention mark, even when retention has
            // pruned every change: "now" is always retained.
            None => self.store.change_head().await?.max(self.store.pruned_through().await?),
        };
        let (tx, rx) = mpsc::channel(capacity);
        let id = self.next_follower.fetch_add(1, Ordering::Relaxed);
        let progress = Arc::new(Progress::default());
        if let Ok(mut followers) = self.followers.lock() {
            followers.insert(id, progress.clone());
        }
        let follower = Follower { feed: self.clone(), id, progress, filter, cursor, tx };
        tokio::spawn(follower.run(fanout));
        Ok(rx)
    }

    async fn subscribe(&self, clerk_id: Option<&str>) -> Result<broadcast::Receiver<Arc<LoggedChange>>> {
        let mut head = self.head.lock().await;
        let receiver = match clerk_id {
            None => self.fanout.subscribe(),
            Some(clerk_id) => {
                let mut users =
                    self.users.lock().map_err(|_| Error::Internal("feed lock poisoned".into()))?;
                let channel = users
                    .entry(clerk_id.to_owned())
                    .or_insert_with(|| broadcast::Sender::new(USER_CHANNEL_CAPACITY));
                channel.subscribe()
            }
        };
        if head.is_none() {
            // The reader was idle: it resumes from here, which is before
            // anything this follower's replay will read.
            *head = Some(self.store.change_head().await?);
        }
        self.arrived.notify_one();
        Ok(receiver)
    }

    /// Whether anyone follows; forgets users nobody follows any more.
    fn anyone_follows(&self) -> bool {
        let users_followed = self.users.lock().is_ok_and(|mut users| {
            users.retain(|_, channel| channel.receiver_count() > 0);
            !users.is_empty()
        });
        users_followed || self.fanout.receiver_count() > 0
    }

    /// Hands a change to the followers of the whole log and of its user.
    fn publish(&self, change: LoggedChange) {
        let change = Arc::new(change);
        if let Ok(users) = self.users.lock()
            && let Some(channel) = users.get(&change.change.clerk_id)
        {
            // No receivers left is fine: the next round forgets the user.
            let _ = channel.send(change.clone());
        }
        let _ = self.fanout.send(change);
    }

    fn record_delivery(&self, change: &LoggedChange) {
        if let Some(metrics) = &self.metrics {
            let age = (Utc::now() - change.at).to_std().unwrap_or_default();
            metrics.record_change_delivery(age);
        }
    }
}

/// Fails with `OUT_OF_RANGE` when changes after `cursor` may have been pruned.
async fn check_retained(store: &dyn Store, cursor: Cursor) -> Result<()> {
    let pruned = store.pruned_through().await?;
    if cursor < pruned {
        return Err(Error::CursorExpired { oldest: pruned.to_string() });
    }
    Ok(())
}

/// The feed's reader: reads what is final after its head and fans it out,
/// whenever a commit wakes it, every `poll_interval` anyway, and soon again
/// while a change is held back by an older transaction.
async fn read_log(feed: std::sync::Weak<Feed>) {
    let Some(strong) = feed.upgrade() else { return };
    let mut signal = strong.store.change_signal();
    let poll = strong.config.poll_interval;
    let arrived = strong.arrived.clone();
    drop(strong);
    let mut wait = poll;
    loop {
        tokio::select! {
            changed = signal.changed() => if changed.is_err() { return },
            () = arrived.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
        let Some(feed) = feed.upgrade() else { return };
        wait = match read_once(&feed).await {
            Ok(true) => HELD_BACK_RETRY,
            Ok(false) => poll,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the change log; retrying");
                poll
            }
        };
    }
}

/// Reads and fans out everything final after the head. Returns whether some
/// change is held back.
async fn read_once(feed: &Feed) -> Result<bool> {
    let mut head = feed.head.lock().await;
    if !feed.anyone_follows() {
        // Nobody follows: forget the position rather than read for no one.
        *head = None;
        return Ok(false);
    }
    let Some(mut cursor) = *head else { return Ok(false) };
    loop {
        let batch = feed.store.read_changes(cursor, &ChangeFilter::default(), BATCH).await?;
        for change in batch.changes {
            cursor = change.cursor;
            feed.publish(change);
        }
        cursor = cursor.max(batch.head);
        *head = Some(cursor);
        if let Ok(mut published) = feed.published.lock() {
            *published = Some(cursor);
        }
        if !batch.more {
            return Ok(batch.held_back);
        }
    }
}
