//! One follower of the feed: replays what it missed from the log, then
//! sends what the fan-out brings, going back to the log when it falls
//! behind (see the module above for why that never skips nor repeats).

use std::sync::{Arc, atomic::Ordering};

use tokio::sync::{broadcast, mpsc};

use super::{BATCH, Feed, FeedEvent, Progress, check_retained};
use crate::domain::{
    change::{ChangeFilter, Cursor, LoggedChange},
    error::{Error, Result},
};

/// One follower's task.
pub(super) struct Follower {
    pub(super) feed: Arc<Feed>,
    pub(super) id: u64,
    pub(super) progress: Arc<Progress>,
    pub(super) filter: ChangeFilter,
    pub(super) cursor: Cursor,
    pub(super) tx: mpsc::Sender<Result<FeedEvent>>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Ok(mut followers) = self.feed.followers.lock() {
            followers.remove(&self.id);
        }
    }
}

/// Why a follower stops.
enum Stop {
    /// The client went away.
    Gone,
    /// The follower failed; the client was told.
    Failed,
}

impl Follower {
    /// Follows until the client goes away, the follower fails or the
    /// server shuts down.
    pub(super) async fn run(mut self, mut fanout: broadcast::Receiver<Arc<LoggedChange>>) {
        if let Some(metrics) = &self.feed.metrics {
            metrics.set_change_followers(self.feed.followers());
        }
        let mut closing = self.feed.closing.subscribe();
        let closed = async move {
            // Only an error (the feed is gone) ends the wait otherwise.
            let _ = closing.wait_for(|closing| *closing).await;
        };
        let shut_down = tokio::select! {
            _ = self.follow(&mut fanout) => false,
            () = closed => true,
        };
        if shut_down {
            self.fail(Error::ShuttingDown).await;
        }
        drop(fanout);
        let feed = self.feed.clone();
        drop(self);
        if let Some(metrics) = &feed.metrics {
            metrics.set_change_followers(feed.followers());
        }
    }

    async fn follow(&mut self, fanout: &mut broadcast::Receiver<Arc<LoggedChange>>) -> Result<(), Stop> {
        self.replay().await?;
        let mut heartbeat = tokio::time::interval(self.feed.config.heartbeat_interval);
        heartbeat.reset();
        loop {
            tokio::select! {
                received = fanout.recv() => match received {
                    Ok(change) => {
                        if self.take(change).await? {
                            heartbeat.reset();
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => self.fall_back(missed).await?,
                    Err(broadcast::error::RecvError::Closed) => {
                        self.fail(Error::Unavailable("the change feed stopped".into())).await;
                        return Err(Stop::Failed);
                    }
                },
                _ = heartbeat.tick() => {
                    self.catch_up_to_head(fanout).await?;
                    self.send(FeedEvent::Heartbeat(self.cursor)).await?;
                }
                () = self.tx.closed() => return Err(Stop::Gone),
            }
        }
    }

    /// Moves past a change the fan-out brought, sending it if it matches the
    /// filter; says whether it was sent.
    async fn take(&mut self, change: Arc<LoggedChange>) -> Result<bool, Stop> {
        if change.cursor <= self.cursor {
            return Ok(false);
        }
        self.cursor = change.cursor;
        if !self.filter.matches(&change.change) {
            return Ok(false);
        }
        self.send_change(change).await?;
        Ok(true)
    }

    /// Reads the log instead of the fan-out, which dropped `missed` changes
    /// this follower had not taken yet.
    async fn fall_back(&mut self, missed: u64) -> Result<(), Stop> {
        tracing::debug!(missed, "change follower fell behind; reading the log");
        if let Some(metrics) = &self.feed.metrics {
            metrics.count_change_fallback();
        }
        self.replay().await
    }

    /// Moves the cursor up to the feed's head, first sending whatever
    /// matching change up to it is still queued. A follower filtered to one
    /// user only hears that user's changes, yet its heartbeats then move past
    /// everyone else's too, so a cursor saved from them stays within
    /// retention however long the user goes without a change.
    async fn catch_up_to_head(
        &mut self,
        fanout: &mut broadcast::Receiver<Arc<LoggedChange>>,
    ) -> Result<(), Stop> {
        // Every change up to what the reader has published is already in
        // this follower's channel, or was read by its replay.
        let Some(head) = self.feed.published.lock().ok().and_then(|published| *published) else {
            return Ok(());
        };
        loop {
            match fanout.try_recv() {
                Ok(change) => {
                    self.take(change).await?;
                }
                Err(broadcast::error::TryRecvError::Lagged(missed)) => self.fall_back(missed).await?,
                // Closed: the main loop sees it next and says so.
                Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed) => break,
            }
        }
        self.cursor = self.cursor.max(head);
        Ok(())
    }

    /// Sends everything final after the cursor from the log.
    async fn replay(&mut self) -> Result<(), Stop> {
        loop {
            // Retention is checked after the read, not before: a prune that
            // committed before the read may have taken rows this batch should
            // have held, and the prune moves the mark in the same
            // transaction, so the mark read afterwards shows it.
            let read = async {
                let batch = self.feed.store.read_changes(self.cursor, &self.filter, BATCH).await?;
                check_retained(self.feed.store.as_ref(), self.cursor).await?;
                Ok(batch)
            };
            let batch = match read.await {
                Ok(batch) => batch,
                Err(err) => {
                    self.fail(err).await;
                    return Err(Stop::Failed);
                }
            };
            if let Some(first) = batch.changes.first() {
                self.progress.behind_since_ms.store(first.at.timestamp_millis().max(1), Ordering::Relaxed);
            }
            for change in batch.changes {
                self.cursor = change.cursor;
                self.send_change(Arc::new(change)).await?;
            }
            self.cursor = self.cursor.max(batch.head);
            self.progress.behind_since_ms.store(0, Ordering::Relaxed);
            if !batch.more {
                return Ok(());
            }
        }
    }

    async fn send_change(&self, change: Arc<LoggedChange>) -> Result<(), Stop> {
        self.feed.record_delivery(&change);
        self.send(FeedEvent::Change(change)).await
    }

    async fn send(&self, event: FeedEvent) -> Result<(), Stop> {
        self.tx.send(Ok(event)).await.map_err(|_| Stop::Gone)
    }

    async fn fail(&self, err: Error) {
        let _ = self.tx.send(Err(err)).await;
    }
}
