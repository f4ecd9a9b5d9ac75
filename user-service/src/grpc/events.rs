//! `userdata.v1.EventService`: many event writes in one call. Each write runs
//! exactly as its single-write RPC would (the same parsing, checks and store
//! path, so the writes of one call and of concurrent calls still commit
//! together in groups) and its result is streamed back, tagged with its
//! position, as soon as it is durable: results that are ready together share
//! a message, and a write held up elsewhere delays only its own. Writes naming
//! the same user run one after another in the order given, all others at once.

use std::{collections::HashMap, pin::Pin, sync::Arc};

use futures::{Stream, StreamExt, stream};
use prost::Message;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use userdata_proto::v1::{
    self as pb, event_service_server::EventService, event_write::Write, event_write_result::Result as Answer,
};

use super::{MAX_MESSAGE_SIZE, UserDataApi, UsersApi, caller::Caller};
use crate::domain::error::{Error, Result};

/// Most writes one `ApplyEvents` call may carry.
pub const MAX_EVENT_WRITES: usize = 512;

/// Most encoded bytes of results in one answer message: half the message
/// limit, so a message of results that committed together never passes it
/// (one result always fits: it is its single call's response).
const MAX_RESULTS_BYTES: usize = MAX_MESSAGE_SIZE / 2;

/// The `EventService` implementation: the user and user-data RPCs it batches.
#[derive(Clone)]
pub struct EventsApi {
    users: UsersApi,
    data: UserDataApi,
}

impl EventsApi {
    /// Applies writes through `users` and `data`.
    pub fn new(users: UsersApi, data: UserDataApi) -> Self {
        Self { users, data }
    }

    /// The write at `index`, as its single call would run it; an error
    /// becomes the write's own result.
    async fn apply(&self, caller: &Caller, index: usize, write: pb::EventWrite) -> pb::EventWriteResult {
        let caller = caller.for_write(&write.request_id);
        let result = match write.write {
            None => Err(Error::invalid(
                "write",
                "is required: one of create_user, update_user, delete_user, record_login, record_activity",
            )),
            Some(write) => self.run(&caller, write).await,
        };
        let result = result.unwrap_or_else(|err| {
            let status = Status::from(err);
            Answer::Error(pb::EventWriteError {
                code: status.code() as i32,
                message: status.message().to_owned(),
            })
        });
        // At most MAX_EVENT_WRITES, so the position always fits.
        pb::EventWriteResult { index: u32::try_from(index).unwrap_or(u32::MAX), result: Some(result) }
    }

    /// Refuses a write without an event context, else runs its single
    /// call's handler.
    async fn run(&self, caller: &Caller, write: Write) -> Result<Answer> {
        if event_context(&write).is_none() {
            return Err(Error::invalid("event_context", "is required: ApplyEvents takes event writes only"));
        }
        Ok(match write {
            Write::CreateUser(m) => Answer::CreateUser(self.users.create(caller, m).await?),
            Write::UpdateUser(m) => Answer::UpdateUser(self.users.update(caller, m).await?),
            Write::DeleteUser(m) => Answer::DeleteUser(self.users.delete(caller, &m).await?),
            Write::RecordLogin(m) => Answer::RecordLogin(self.data.login(caller, &m).await?),
            Write::RecordActivity(m) => Answer::RecordActivity(self.data.activity(caller, &m).await?),
        })
    }
}

/// The event context a write carries, if any.
fn event_context(write: &Write) -> Option<&pb::EventContext> {
    match write {
        Write::CreateUser(m) => m.event_context.as_ref(),
        Write::UpdateUser(m) => m.event_context.as_ref(),
        Write::DeleteUser(m) => m.event_context.as_ref(),
        Write::RecordLogin(m) => m.event_context.as_ref(),
        Write::RecordActivity(m) => m.event_context.as_ref(),
    }
}

/// The user a write names, as it names it (`None` when it names none, which
/// its parsing then refuses): writes with the same name are ordered.
fn user_named(write: &pb::EventWrite) -> Option<(&'static str, &str)> {
    let (id, clerk_id) = match write.write.as_ref()? {
        Write::CreateUser(m) => ("", m.user.as_ref().map_or("", |u| u.clerk_id.as_str())),
        Write::UpdateUser(m) => m.user.as_ref().map_or(("", ""), |u| (u.id.as_str(), u.clerk_id.as_str())),
        Write::DeleteUser(m) => (m.id.as_str(), m.clerk_id.as_str()),
        Write::RecordLogin(m) => (m.user_id.as_str(), m.clerk_id.as_str()),
        Write::RecordActivity(m) => (m.user_id.as_str(), m.clerk_id.as_str()),
    };
    match (id, clerk_id) {
        (_, clerk_id) if !clerk_id.is_empty() => Some(("clerk_id", clerk_id)),
        (id, _) if !id.is_empty() => Some(("id", id)),
        _ => None,
    }
}

/// The writes split into chains, one per user named, each in request order;
/// every item keeps its position in the request.
fn chains(writes: Vec<pb::EventWrite>) -> Vec<Vec<(usize, pb::EventWrite)>> {
    let mut chains: Vec<Vec<(usize, pb::EventWrite)>> = Vec::new();
    let mut by_user: HashMap<(&'static str, String), usize> = HashMap::new();
    for (index, write) in writes.into_iter().enumerate() {
        let chain = match user_named(&write) {
            Some((kind, name)) => *by_user.entry((kind, name.to_owned())).or_insert_with(|| {
                chains.push(Vec::new());
                chains.len() - 1
            }),
            None => {
                chains.push(Vec::new());
                chains.len() - 1
            }
        };
        chains[chain].push((index, write));
    }
    chains
}

/// Results that are ready together, as few messages as fit
/// [`MAX_RESULTS_BYTES`] each.
fn messages(ready: Vec<pb::EventWriteResult>) -> Vec<pb::ApplyEventsResponse> {
    let mut messages = Vec::new();
    let (mut results, mut bytes) = (Vec::new(), 0);
    for result in ready {
        let len = result.encoded_len();
        if !results.is_empty() && bytes + len > MAX_RESULTS_BYTES {
            messages.push(pb::ApplyEventsResponse { results: std::mem::take(&mut results) });
            bytes = 0;
        }
        bytes += len;
        results.push(result);
    }
    if !results.is_empty() {
        messages.push(pb::ApplyEventsResponse { results });
    }
    messages
}

/// The stream of `ApplyEvents` answers.
type Results = Pin<Box<dyn Stream<Item = Result<pb::ApplyEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl EventService for EventsApi {
    type ApplyEventsStream = Results;

    #[tracing::instrument(skip_all, fields(writes = request.get_ref().writes.len()))]
    async fn apply_events(
        &self,
        request: Request<pb::ApplyEventsRequest>,
    ) -> Result<Response<Self::ApplyEventsStream>, Status> {
        let caller = Arc::new(Caller::of(&request)?);
        let writes = request.into_inner().writes;
        let count = writes.len();
        if count > MAX_EVENT_WRITES {
            return Err(Error::invalid(
                "writes",
                format!("at most {MAX_EVENT_WRITES} per call, got {count}"),
            )
            .into());
        }
        let api = Arc::new(self.clone());
        // The stream runs after this handler returned, outside the call's
        // span: each write carries it, so its log lines keep the request id.
        let span = tracing::Span::current();
        let chains = chains(writes).into_iter().map(|chain| {
            let (api, caller, span) = (api.clone(), caller.clone(), span.clone());
            stream::iter(chain)
                .then(move |(index, write)| {
                    let (api, caller) = (api.clone(), caller.clone());
                    async move { api.apply(&caller, index, write).await }.instrument(span.clone())
                })
                .boxed()
        });
        let results = stream::select_all(chains)
            .ready_chunks(count.max(1))
            .flat_map(|ready| stream::iter(messages(ready)))
            .map(Ok);
        Ok(Response::new(Box::pin(results)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delete(clerk_id: &str) -> pb::EventWrite {
        pb::EventWrite {
            write: Some(Write::DeleteUser(pb::DeleteUserRequest {
                clerk_id: clerk_id.into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn login_by_id(id: &str) -> pb::EventWrite {
        pb::EventWrite {
            write: Some(Write::RecordLogin(pb::RecordLoginRequest {
                user_id: id.into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn writes_of_one_user_form_one_chain_in_request_order() {
        let writes = vec![delete("user_a"), delete("user_b"), delete("user_a"), login_by_id("user_a")];
        let positions: Vec<Vec<usize>> =
            chains(writes).iter().map(|chain| chain.iter().map(|(i, _)| *i).collect()).collect();
        // An id and a Clerk id are different names, even when equal as text.
        assert_eq!(positions, [vec![0, 2], vec![1], vec![3]]);
    }

    #[test]
    fn results_ready_together_share_messages_that_stay_under_the_limit() {
        let result = |index: u32, padding: usize| pb::EventWriteResult {
            index,
            result: Some(Answer::Error(pb::EventWriteError { code: 3, message: "x".repeat(padding) })),
        };
        let small = messages((0..10).map(|i| result(i, 10)).collect());
        assert_eq!(small.len(), 1);
        assert_eq!(small[0].results.len(), 10);

        let large = messages((0..5).map(|i| result(i, MAX_RESULTS_BYTES / 2)).collect());
        assert!(large.len() >= 3, "{} messages", large.len());
        assert!(large.iter().all(|m| m.encoded_len() <= MAX_MESSAGE_SIZE));
        let indexes: Vec<u32> = large.iter().flat_map(|m| m.results.iter().map(|r| r.index)).collect();
        assert_eq!(indexes, [0, 1, 2, 3, 4]);

        let alone = messages(vec![result(0, MAX_RESULTS_BYTES + 1)]);
        assert_eq!(alone.len(), 1, "a result larger than the share still goes");
    }

    #[test]
    fn writes_that_name_no_user_each_stand_alone() {
        let writes = vec![pb::EventWrite::default(), delete(""), pb::EventWrite::default()];
        assert_eq!(chains(writes).len(), 3);
    }
}
