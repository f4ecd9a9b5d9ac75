//! Applying a plan: the same `CreateUser`, `UpdateUser` and `DeleteUser`
//! calls the webhooks make, with event contexts whose source time is Clerk's
//! `updated_at`, so user-service's ordering, tombstone and idempotency rules
//! decide exactly as for a webhook. Writes run with bounded concurrency and
//! transient failures are retried (safe: every write has an idempotency key).

use std::{future::Future, time::Duration};

use futures::{StreamExt, stream};
use prost_types::Timestamp;
use tonic::{Code, Status};
use userdata_proto::v1::{EventOutcome, user_service_client::UserServiceClient};

use crate::{
    clerk::{DeletedUserJson, UserJson},
    error::UpstreamError,
    reconcile::{plan::Write, progress::Progress, retry::RetryPolicy},
    upstream::UpstreamChannel,
    upstream::{Call, Outcome, WriteKey, classify_status, create_request, delete_request, update_request},
};

/// `EventContext.event_type` of a reconcile create.
pub const EVENT_CREATED: &str = "reconcile.user.created";
/// `EventContext.event_type` of a reconcile update.
pub const EVENT_UPDATED: &str = "reconcile.user.updated";
/// `EventContext.event_type` of a reconcile deletion.
pub const EVENT_DELETED: &str = "reconcile.user.deleted";

/// Idempotency key of a create or update: the user and the version of it
/// Clerk showed, so running again (or after an interruption) replays
/// instead of writing twice, while a newer Clerk version gets a new key.
pub fn write_key(user: &UserJson) -> String {
    let version = user.updated_at.or(user.created_at).unwrap_or(0);
    format!("reconcile:{}:{version}", user.id)
}

/// Idempotency key of a deletion: one per user, ever.
pub fn delete_key(clerk_id: &str) -> String {
    format!("reconcile-delete:{clerk_id}")
}

/// What one write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// A new user.
    Created,
    /// Clerk's newer profile stored.
    Updated,
    /// user-service holds state at least as new; nothing changed.
    Stale,
    /// The user was deleted here; deleted users never come back.
    Tombstoned,
    /// The user is gone (deleted now, or already).
    Deleted,
    /// user-service refused, or kept failing, with this code.
    Failed(Code),
}

/// Sends a plan's writes to user-service.
#[derive(Debug, Clone)]
pub struct Writer {
    client: UserServiceClient<UpstreamChannel>,
    timeout: Duration,
    retry: RetryPolicy,
}

impl Writer {
    /// Writes over `channel`, each call with `timeout`, transient failures
    /// retried as `retry` says.
    pub fn new(channel: UpstreamChannel, timeout: Duration, retry: RetryPolicy) -> Self {
        Self { client: UserServiceClient::new(channel), timeout, retry }
    }

    /// Runs `writes` then `deletes`, at most `concurrency` at a time, calling
    /// `done` with each result as it comes.
    pub async fn run(
        &self,
        writes: &[Write],
        deletes: &[String],
        concurrency: usize,
        progress: &Progress,
        mut done: impl FnMut(&str, Written),
    ) {
        let now = Timestamp::from(std::time::SystemTime::now());
        // Indices rather than `&Write` closure arguments keep the futures'
        // lifetimes concrete, so a run can be spawned as a (`Send`) task.
        let mut results = stream::iter(0..writes.len())
            .map(|index| {
                let write = &writes[index];
                async move { (write.user().id.as_str(), self.write(write, now).await) }
            })
            .buffer_unordered(concurrency.max(1));
        while let Some((clerk_id, written)) = results.next().await {
            progress.advance(1);
            done(clerk_id, written);
        }
        // Deletions only after every create and update has landed.
        let mut results = stream::iter(0..deletes.len())
            .map(|index| {
                let clerk_id = deletes[index].as_str();
                async move { (clerk_id, self.delete(clerk_id, now).await) }
            })
            .buffer_unordered(concurrency.max(1));
        while let Some((clerk_id, written)) = results.next().await {
            progress.advance(1);
            done(clerk_id, written);
        }
    }

    /// One create or update. A replayed reply (an earlier run wrote this same
    /// Clerk version) changed nothing now: it counts as stale, or as
    /// tombstoned when the user had been deleted.
    pub async fn write(&self, write: &Write, now: Timestamp) -> Written {
        let user = write.user();
        let idempotency_key = write_key(user);
        let result = match write {
            Write::Create(_) => {
                let key = WriteKey { idempotency_key: &idempotency_key, event_type: EVENT_CREATED };
                let message = create_request(user, user.created_at, &key, now);
                self.retrying(Call::Create, message, |mut client, request| async move {
                    client.create_user(request).await.map(|r| (r.get_ref().outcome, r.get_ref().replayed))
                })
                .await
            }
            Write::Update { .. } => {
                let key = WriteKey { idempotency_key: &idempotency_key, event_type: EVENT_UPDATED };
                let message = update_request(user, user.created_at, &key, now);
                self.retrying(Call::Update, message, |mut client, request| async move {
                    client.update_user(request).await.map(|r| (r.get_ref().outcome, r.get_ref().replayed))
                })
                .await
            }
        };
        let applied = if matches!(write, Write::Create(_)) { Written::Created } else { Written::Updated };
        match result {
            Ok(Reply::Outcome(outcome, replayed)) => match EventOutcome::try_from(outcome) {
                Ok(EventOutcome::UserDeleted) => Written::Tombstoned,
                _ if replayed => Written::Stale,
                Ok(EventOutcome::Applied) => applied,
                Ok(EventOutcome::Stale) => Written::Stale,
                Ok(EventOutcome::Unspecified) | Err(_) => Written::Failed(Code::Unknown),
            },
            // A create that meets an existing user; cannot happen with an
            // event context, but the goal is met.
            Ok(Reply::GoalMet) => Written::Stale,
            Err(code) => Written::Failed(code),
        }
    }

    /// One deletion of a user Clerk no longer lists, stamped now.
    pub async fn delete(&self, clerk_id: &str, now: Timestamp) -> Written {
        let idempotency_key = delete_key(clerk_id);
        let key = WriteKey { idempotency_key: &idempotency_key, event_type: EVENT_DELETED };
        let deleted = DeletedUserJson { id: clerk_id.to_owned(), deleted: Some(true), object: None };
        let message = delete_request(&deleted, None, &key, now);
        let result = self
            .retrying(Call::Delete, message, |mut client, request| async move {
                client.delete_user(request).await.map(|r| (r.get_ref().outcome, r.get_ref().replayed))
            })
            .await;
        match result {
            Ok(Reply::Outcome(..) | Reply::GoalMet) => Written::Deleted,
            Err(code) => Written::Failed(code),
        }
    }

    /// Sends `message`, retrying transient failures (as the webhook path
    /// classifies them) with backoff.
    async fn retrying<M, F>(
        &self,
        call: Call,
        message: M,
        send: impl Fn(UserServiceClient<UpstreamChannel>, tonic::Request<M>) -> F,
    ) -> Result<Reply, Code>
    where
        M: Clone,
        F: Future<Output = Result<(i32, bool), Status>>,
    {
        let mut failed = 0;
        loop {
            let mut request = tonic::Request::new(message.clone());
            request.set_timeout(self.timeout);
            let status = match tokio::time::timeout(self.timeout, send(self.client.clone(), request)).await {
                Ok(Ok((outcome, replayed))) => return Ok(Reply::Outcome(outcome, replayed)),
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded("user-service did not answer within the deadline"),
            };
            match classify_status(call, &status) {
                Ok(Outcome::AlreadyExists | Outcome::AlreadyGone) => return Ok(Reply::GoalMet),
                Err(UpstreamError::Unavailable { .. }) => {
                    failed += 1;
                    if !self.retry.may_retry(failed) {
                        return Err(status.code());
                    }
                    tokio::time::sleep(self.retry.backoff(failed)).await;
                }
                Ok(_) | Err(_) => return Err(status.code()),
            }
        }
    }
}

/// A successful call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// OK with `outcome` and `replayed`.
    Outcome(i32, bool),
    /// An error code that means the write's goal is met.
    GoalMet,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_keys_name_the_user_and_the_clerk_version() {
        let user = UserJson {
            id: "user_k".into(),
            created_at: Some(1_700_000_000_000),
            updated_at: Some(1_760_000_000_123),
            ..UserJson::default()
        };
        assert_eq!(write_key(&user), "reconcile:user_k:1760000000123");
        let never_updated = UserJson { updated_at: None, ..user };
        assert_eq!(write_key(&never_updated), "reconcile:user_k:1700000000000");
        assert_eq!(delete_key("user_k"), "reconcile-delete:user_k");
    }
}
