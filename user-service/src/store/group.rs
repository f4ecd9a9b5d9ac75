//! Group commit for event-driven user writes.
//!
//! Every webhook event is a small transaction, and each commit costs a WAL
//! flush (an fsync on SQLite) and a round of locking. Event writes that wait
//! for the database at the same time are therefore applied together: a
//! worker takes whatever is queued (up to `max`), runs each write with the
//! same decisions as a lone write inside one transaction, commits once, and
//! then answers each caller with its own result. Within the transaction the
//! writes of distinct users share round trips (`txn::write_group`): the new
//! users are inserted by one statement, the others are loaded by one. Nobody
//! waits for a group to fill: an idle worker takes the first write at once,
//! and groups form only from writes that queued while the workers were busy.
//!
//! A write refused by its plan (stale, deleted, a version mismatch) answers
//! with its own outcome or error and the rest of the group goes on. An error
//! from the database (or, on PostgreSQL, a lock held elsewhere for long) rolls
//! the whole group back; each of its writes is then run alone, one user's in
//! arrival order, so one bad or blocked event never fails or holds up its
//! neighbours.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::future::join_all;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::domain::{
    change::Actor,
    error::{Error, Result},
    user::UserKey,
    write::{self, CreateUser, DeleteUser, EventContext, Existing, Plan, WriteResult},
};

/// One user write, as queued for a group.
#[derive(Debug, Clone)]
pub(super) enum UserWrite {
    /// `CreateUser`.
    Create(CreateUser),
    /// `UpdateUser`.
    Update(write::UpdateUser),
    /// `DeleteUser`.
    Delete(DeleteUser),
}

impl UserWrite {
    /// The user written.
    pub(super) fn key(&self) -> UserKey {
        match self {
            Self::Create(cmd) => UserKey::from(cmd.clerk_id.clone()),
            Self::Update(cmd) => cmd.key.clone(),
            Self::Delete(cmd) => cmd.key.clone(),
        }
    }

    /// The event that caused it, if any.
    pub(super) fn event(&self) -> Option<&EventContext> {
        match self {
            Self::Create(cmd) => cmd.event.as_ref(),
            Self::Update(cmd) => cmd.event.as_ref(),
            Self::Delete(cmd) => cmd.event.as_ref(),
        }
    }

    /// Who made it.
    pub(super) fn actor(&self) -> &Actor {
        match self {
            Self::Create(cmd) => &cmd.actor,
            Self::Update(cmd) => &cmd.actor,
            Self::Delete(cmd) => &cmd.actor,
        }
    }

    /// The Clerk id a group must lock for it, when it may join a group: only
    /// event writes, which are always addressed by Clerk id.
    pub(super) fn group_lock(&self) -> Option<&str> {
        self.event()?;
        match self {
            Self::Create(cmd) => Some(cmd.clerk_id.as_str()),
            Self::Update(write::UpdateUser { key: UserKey::ClerkId(id), .. })
            | Self::Delete(DeleteUser { key: UserKey::ClerkId(id), .. }) => Some(id),
            Self::Update(_) | Self::Delete(_) => None,
        }
    }

    /// Whether both write the same user, as far as their keys tell (a
    /// group's writes all name their user by `clerk_id`); compared without
    /// building either key.
    pub(super) fn same_user(&self, other: &Self) -> bool {
        match (self.group_lock(), other.group_lock()) {
            (Some(one), Some(other)) => one == other,
            _ => self.key() == other.key(),
        }
    }

    /// Decides what the write does to the stored user.
    pub(super) fn plan(self, existing: Existing, now: DateTime<Utc>) -> Result<Plan> {
        match self {
            Self::Create(cmd) => write::plan_create(cmd, existing, now),
            Self::Update(cmd) => write::plan_update(cmd, existing, now),
            Self::Delete(cmd) => write::plan_delete(cmd, existing),
        }
    }
}

/// How a backend runs user writes.
#[async_trait]
pub(super) trait UserWriter: Send + Sync + 'static {
    /// One write in its own transaction.
    async fn write_one(&self, write: UserWrite) -> Result<WriteResult>;

    /// Several writes, in order, in one transaction: one result each, or an
    /// error when the transaction failed and was rolled back as a whole.
    async fn write_group(&self, writes: Vec<UserWrite>) -> Result<Vec<Result<WriteResult>>>;
}

/// Sizing of group commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupOptions {
    /// Most writes in one transaction; 1 turns group commit off.
    pub max: usize,
    /// Groups in flight at once (each holds one connection while it runs).
    pub workers: usize,
}

/// A write waiting in the queue, with where its answer goes.
struct Queued {
    write: UserWrite,
    reply: oneshot::Sender<Result<WriteResult>>,
}

/// Group commit so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Transactions that committed two or more event writes together.
    pub groups: u64,
    /// Writes committed in those transactions.
    pub grouped_writes: u64,
    /// Groups rolled back by a database error (their writes then ran alone).
    pub rollbacks: u64,
}

#[derive(Debug, Default)]
struct Counters {
    groups: AtomicU64,
    grouped_writes: AtomicU64,
    rollbacks: AtomicU64,
}

/// The queue of event writes and the workers that commit them in groups.
/// The workers end when this is dropped.
#[derive(Debug, Clone)]
pub(super) struct GroupCommit {
    queue: Option<mpsc::UnboundedSender<Queued>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued").finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// Starts the workers on `writer`; with `max` of 1, writes are not queued.
    pub(super) fn start<W: UserWriter>(writer: W, options: GroupOptions) -> Self {
        let counters = Arc::new(Counters::default());
        if options.max <= 1 {
            return Self { queue: None, counters };
        }
        // Unbounded, yet bounded by the callers: each queued write is one
        // call waiting for its answer, and the server caps calls in flight.
        let (queue, receiver) = mpsc::unbounded_channel();
        let receiver = Arc::new(Mutex::new(receiver));
        let writer = Arc::new(writer);
        for _ in 0..options.workers.max(1) {
            tokio::spawn(work(writer.clone(), receiver.clone(), counters.clone(), options.max));
        }
        Self { queue: Some(queue), counters }
    }

    /// The counts so far.
    pub(super) fn stats(&self) -> GroupStats {
        GroupStats {
            groups: self.counters.groups.load(Ordering::Relaxed),
            grouped_writes: self.counters.grouped_writes.load(Ordering::Relaxed),
            rollbacks: self.counters.rollbacks.load(Ordering::Relaxed),
        }
    }

    /// Writes through a group when the write may join one (an event write
    /// and group commit on), else alone.
    pub(super) async fn write(&self, writer: &impl UserWriter, write: UserWrite) -> Result<WriteResult> {
        let Some(queue) = self.queue.as_ref().filter(|_| write.group_lock().is_some()) else {
            return writer.write_one(write).await;
        };
        let (reply, answer) = oneshot::channel();
        queue
            .send(Queued { write, reply })
            .map_err(|_| Error::Unavailable("the store is shutting down".into()))?;
        answer.await.map_err(|_| Error::Unavailable("the store is shutting down".into()))?
    }
}

/// One worker: takes the next write and whatever queued behind it, commits
/// them together, answers each.
async fn work<W: UserWriter>(
    writer: Arc<W>,
    receiver: Arc<Mutex<mpsc::UnboundedReceiver<Queued>>>,
    counters: Arc<Counters>,
    max: usize,
) {
    let mut group = Vec::with_capacity(max);
    loop {
        {
            let mut receiver = receiver.lock().await;
            if receiver.recv_many(&mut group, max).await == 0 {
                return;
            }
        }
        if group.len() == 1
            && let Some(Queued { write, reply }) = group.pop()
        {
            // A caller that gave up no longer listens; the write stands.
            let _ = reply.send(writer.write_one(write).await);
            continue;
        }
        let writes = group.iter().map(|queued| queued.write.clone()).collect();
        match writer.write_group(writes).await {
            Ok(results) => {
                counters.groups.fetch_add(1, Ordering::Relaxed);
                counters.grouped_writes.fetch_add(results.len() as u64, Ordering::Relaxed);
                for (queued, result) in group.drain(..).zip(results) {
                    let _ = queued.reply.send(result);
                }
            }
            Err(err) => {
                counters.rollbacks.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %err, size = group.len(), "group rolled back; writing one by one");
                write_alone(&*writer, group.drain(..)).await;
            }
        }
    }
}

/// Runs each write in its own transaction and answers it as soon as it is
/// done: one user's writes one after another in arrival order, different
/// users' at the same time, so a user whose lock is held elsewhere delays
/// only their own writes.
async fn write_alone<W: UserWriter>(writer: &W, queued: impl Iterator<Item = Queued>) {
    let mut by_user: Vec<(UserKey, Vec<Queued>)> = Vec::new();
    for item in queued {
        let key = item.write.key();
        match by_user.iter_mut().find(|(k, _)| *k == key) {
            Some((_, chain)) => chain.push(item),
            None => by_user.push((key, vec![item])),
        }
    }
    join_all(by_user.into_iter().map(|(_, chain)| async move {
        for Queued { write, reply } in chain {
            let _ = reply.send(writer.write_one(write).await);
        }
    }))
    .await;
}
