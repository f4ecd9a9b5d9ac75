//! Event writes to user-service in batches: one `EventService.ApplyEvents`
//! call carries the writes of many webhooks, so the HTTP/2 stream, the token
//! check and each call's bookkeeping on both sides are paid once per batch.
//!
//! A write waits only while `in_flight` calls are already out: an idle
//! gateway sends each write at once, a busy one sends whatever queued behind
//! the calls in flight (up to `max` writes and [`MAX_BATCH_BYTES`]) as the
//! next call. A call holds its slot until its first results arrive, so a
//! straggler does not keep the next batch waiting. Each write gets its own
//! result as soon as user-service streams it; a failure of the whole call is
//! the failure of every write not answered yet, and the caller's retry
//! (`sync.rs`) sends the write again like a single call.

use std::{sync::Arc, time::Instant};

use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tonic::{Code, Status, metadata::MetadataValue};
use userdata_proto::v1::{
    ApplyEventsRequest, EventWrite, event_service_client::EventServiceClient,
    event_write_result::Result as WriteResult,
};

use super::UpstreamChannel;
use crate::{
    config::UpstreamBatch,
    metrics::Metrics,
    request_id::{REQUEST_ID, RequestId},
};

/// Encoded writes one call carries at most (a single larger write still goes,
/// alone): half of user-service's 1 MiB message limit, so a batch of large
/// user objects is never refused as a whole.
pub const MAX_BATCH_BYTES: usize = 512 * 1024;

/// A write waiting for a batch, with where its answer goes.
struct Pending {
    write: EventWrite,
    deadline: Instant,
    reply: oneshot::Sender<Answer>,
}

/// What became of one write.
#[derive(Debug)]
pub struct Answer {
    /// The request id of the `ApplyEvents` call the write went in (the
    /// write's own when it went alone), for the logs; `None` when it was not
    /// sent.
    pub call: Option<RequestId>,
    /// The write's own result, or the failure of its call.
    pub result: Result<WriteResult, Status>,
}

/// The queue of writes for user-service. The task that sends them ends when
/// the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Batcher {
    // Unbounded, yet bounded by the callers: each queued write is one webhook
    // waiting for its answer, and the HTTP server caps requests in flight.
    queue: mpsc::UnboundedSender<Pending>,
    metrics: Option<Arc<Metrics>>,
}

impl Batcher {
    /// Starts the task that sends batches over `channel`, counting each
    /// batch's size in `metrics`.
    pub fn start(channel: UpstreamChannel, options: UpstreamBatch, metrics: Option<Arc<Metrics>>) -> Self {
        let (queue, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(EventServiceClient::new(channel), receiver, options, metrics.clone()));
        Self { queue, metrics }
    }

    /// Sends `write` in the next batch and waits for its result: the write's
    /// own, or the whole call's failure. `deadline` bounds the call it goes
    /// in; a write whose deadline has passed before its batch leaves is not
    /// sent.
    pub async fn apply(&self, write: EventWrite, deadline: Instant) -> Answer {
        let closed =
            || Answer { call: None, result: Err(Status::unavailable("the gateway is shutting down")) };
        let (reply, answer) = oneshot::channel();
        // Counted before it is queued, so the gauge never dips below zero.
        count_queued(self.metrics.as_deref(), 1.0);
        if self.queue.send(Pending { write, deadline, reply }).is_err() {
            count_queued(self.metrics.as_deref(), -1.0);
            return closed();
        }
        answer.await.unwrap_or_else(|_| closed())
    }
}

/// Adds `delta` to the gauge of writes waiting for a batch.
fn count_queued(metrics: Option<&Metrics>, delta: f64) {
    if let Some(metrics) = metrics {
        metrics.add_upstream_writes_queued(delta);
    }
}

/// Takes writes off the queue in batches, one call per batch, at most
/// `options.in_flight` calls at once.
async fn run(
    client: EventServiceClient<UpstreamChannel>,
    mut queue: mpsc::UnboundedReceiver<Pending>,
    options: UpstreamBatch,
    metrics: Option<Arc<Metrics>>,
) {
    let slots = Arc::new(Semaphore::new(options.in_flight.max(1)));
    // The write that did not fit in the last batch; it leads the next.
    let mut carried: Option<Pending> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let first = match carried.take() {
            Some(pending) => pending,
            None => match queue.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        let mut bytes = first.write.encoded_len();
        let mut batch = vec![first];
        while batch.len() < options.max {
            let Ok(next) = queue.try_recv() else { break };
            let len = next.write.encoded_len();
            if bytes + len > MAX_BATCH_BYTES {
                carried = Some(next);
                break;
            }
            bytes += len;
            batch.push(next);
        }
        count_queued(metrics.as_deref(), -(batch.len() as f64));
        tokio::spawn(send(client.clone(), batch, slot, metrics.clone()));
    }
}

/// Sends one batch and answers each of its writes as its result arrives; the
/// slot is free again at the first results, or when this returns.
async fn send(
    mut client: EventServiceClient<UpstreamChannel>,
    batch: Vec<Pending>,
    slot: OwnedSemaphorePermit,
    metrics: Option<Arc<Metrics>>,
) {
    let now = Instant::now();
    // A caller that gave up (its own deadline, or Svix hung up) no longer
    // waits: Svix sends the event again, so its write need not go.
    let (live, late): (Vec<_>, Vec<_>) =
        batch.into_iter().filter(|p| !p.reply.is_closed()).partition(|p| p.deadline > now);
    for pending in late {
        let result = Err(Status::deadline_exceeded(
            "the event's deadline passed before its write was sent to user-service",
        ));
        let _ = pending.reply.send(Answer { call: None, result });
    }
    let Some(deadline) = live.iter().map(|p| p.deadline).max() else { return };
    let (writes, replies): (Vec<_>, Vec<_>) = live.into_iter().map(|p| (p.write, p.reply)).unzip();
    if let Some(metrics) = &metrics {
        metrics.record_upstream_batch(writes.len());
    }
    // A write that goes alone keeps its webhook's id end to end; a batch
    // gets its own, which each webhook's log line names.
    let call = match writes.as_slice() {
        [only] => RequestId::parse(&only.request_id),
        _ => None,
    }
    .unwrap_or_else(RequestId::generate);
    let mut request = tonic::Request::new(ApplyEventsRequest { writes });
    request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    if let Ok(value) = MetadataValue::try_from(call.as_str()) {
        request.metadata_mut().insert(REQUEST_ID, value);
    }
    let mut replies: Vec<Option<oneshot::Sender<Answer>>> = replies.into_iter().map(Some).collect();
    let mut slot = Some(slot);
    let streamed = tokio::time::timeout_at(deadline.into(), async {
        let mut results = client.apply_events(request).await?.into_inner();
        while let Some(message) = results.message().await? {
            // The bulk of the batch has committed: the next batch may go
            // while a straggler (a lock held elsewhere) is still out.
            drop(slot.take());
            for result in message.results {
                let reply = usize::try_from(result.index).ok().and_then(|i| replies.get_mut(i)?.take());
                if let Some(reply) = reply {
                    let _ =
                        reply.send(Answer { call: Some(call.clone()), result: write_result(result.result) });
                }
            }
        }
        Ok::<_, Status>(())
    })
    .await;
    let unanswered = match streamed {
        Ok(Ok(())) => Status::internal("user-service ended the call without a result for the write"),
        Ok(Err(status)) => call_failure(&status),
        Err(_) => Status::deadline_exceeded("user-service did not answer within the deadline"),
    };
    answer_all(replies.into_iter().flatten(), &call, &unanswered);
}

/// What a write not answered yet gets when its whole call failed. Codes that
/// would judge one write's data (`INVALID_ARGUMENT`, `OUT_OF_RANGE`,
/// `NOT_FOUND`, `ALREADY_EXISTS`, `FAILED_PRECONDITION`) refused the call as a
/// whole (too large, malformed): this write may even have been applied, so
/// it becomes `INTERNAL` (500, Svix retries) instead of its own rejection or
/// success. Transient and configuration codes stay as they are.
fn call_failure(status: &Status) -> Status {
    match status.code() {
        Code::InvalidArgument
        | Code::OutOfRange
        | Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::Ok => Status::internal(format!(
            "user-service refused the ApplyEvents call as a whole ({}): {}",
            userdata_kit::grpc_code::name(status.code()),
            status.message()
        )),
        code => Status::new(code, status.message()),
    }
}

/// One write's result as the caller takes it.
fn write_result(result: Option<WriteResult>) -> Result<WriteResult, Status> {
    match result {
        Some(WriteResult::Error(error)) => Err(Status::new(Code::from(error.code), error.message)),
        Some(result) => Ok(result),
        None => Err(Status::internal("user-service answered a write without a result")),
    }
}

/// Answers every write with the failure of their call.
fn answer_all(replies: impl IntoIterator<Item = oneshot::Sender<Answer>>, call: &RequestId, status: &Status) {
    for reply in replies {
        let result = Err(Status::new(status.code(), status.message()));
        let _ = reply.send(Answer { call: Some(call.clone()), result });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        error::UpstreamError,
        upstream::{Call, classify_status},
    };

    #[test]
    fn a_call_refused_as_a_whole_is_a_500_for_its_writes_never_their_own_verdict() {
        for code in [Code::InvalidArgument, Code::OutOfRange, Code::NotFound, Code::AlreadyExists] {
            let status = call_failure(&Status::new(code, "encoded message length too large"));
            assert_eq!(status.code(), Code::Internal, "{code:?}");
            for call in [Call::Create, Call::Delete, Call::Session] {
                let outcome = classify_status(call, &status);
                assert!(
                    matches!(outcome, Err(UpstreamError::Failed { .. })),
                    "{code:?} {call:?}: {outcome:?}"
                );
            }
        }
    }

    #[test]
    fn transient_and_configuration_failures_of_a_call_keep_their_code() {
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::Unauthenticated, Code::PermissionDenied]
        {
            assert_eq!(call_failure(&Status::new(code, "x")).code(), code);
        }
    }
}
