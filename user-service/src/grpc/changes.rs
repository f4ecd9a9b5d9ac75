//! `userdata.v1.ChangeService`: the change log, followed live or listed.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};
use userdata_proto::v1::{self as pb, change_service_server::ChangeService};

use super::{
    access,
    convert::changes::{self as convert, change_to_proto, event_to_proto},
    expiry::end_after,
};
use crate::{
    auth::{Principal, SignedInUser},
    domain::{
        change::{AuditQuery, ChangeFilter},
        error::{Error, Result},
        user::UserKey,
    },
    feed::Feed,
    store::Store,
};

/// Events buffered per follower before it waits for its client.
const STREAM_BUFFER: usize = 64;

/// The `ChangeService` implementation.
#[derive(Clone)]
pub struct ChangesApi {
    store: Arc<dyn Store>,
    feed: Arc<Feed>,
    max_stream_age: Duration,
}

impl ChangesApi {
    /// Serves the change log of `store`, live through `feed`; a stream ends
    /// after `max_stream_age` (the follower resumes from its cursor).
    pub fn new(store: Arc<dyn Store>, feed: Arc<Feed>, max_stream_age: Duration) -> Self {
        Self { store, feed, max_stream_age }
    }

    /// The Clerk id of the user a request names by id or Clerk id, if any.
    /// A user named by id must exist (the log is keyed by Clerk id).
    async fn clerk_id_of(&self, user: Option<UserKey>) -> Result<Option<String>> {
        match user {
            None => Ok(None),
            Some(UserKey::ClerkId(clerk_id)) => Ok(Some(clerk_id)),
            Some(key @ UserKey::Id(_)) => Ok(Some(self.store.get_user(&key).await?.clerk_id)),
        }
    }
}

/// The stream of a `WatchChanges` call.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchChangesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ChangeService for ChangesApi {
    type WatchChangesStream = WatchStream;

    #[tracing::instrument(skip_all)]
    async fn watch_changes(
        &self,
        request: Request<pb::WatchChangesRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let principal = Principal::of(&request)?;
        let watch = convert::watch_changes(request.get_ref())?;
        let user = principal.signed_in_user();
        let clerk_id = match user {
            // A signed-in user follows their own changes, whatever the
            // request names (the end-user rule `ForcedOwn`).
            Some(user) => Some(access::own_user(&*self.store, user).await?.clerk_id),
            None => self.clerk_id_of(watch.user).await?,
        };
        let filter = ChangeFilter { clerk_id, keys: watch.keys };
        let events = self.feed.follow(watch.cursor, filter, STREAM_BUFFER).await?;
        let stream = ReceiverStream::new(events).map(|event| event.map(event_to_proto).map_err(Status::from));
        let end = match user.and_then(SignedInUser::remaining) {
            Some(left) if left < self.max_stream_age => end_after(stream, left, || Error::SessionExpired),
            _ => end_after(stream, self.max_stream_age, || Error::StreamAged),
        };
        Ok(Response::new(Box::pin(end)))
    }

    #[tracing::instrument(skip_all)]
    async fn list_changes(
        &self,
        request: Request<pb::ListChangesRequest>,
    ) -> Result<Response<pb::ListChangesResponse>, Status> {
        let req = request.get_ref();
        let list = convert::list_changes(req)?;
        let query = AuditQuery {
            clerk_id: self.clerk_id_of(list.user.clone()).await?,
            actor: (!req.actor.is_empty()).then(|| req.actor.clone()),
            start: list.start,
            end: list.end,
            kind: list.kind,
            oldest_first: list.oldest_first,
        };
        // One extra row tells whether another page exists.
        let mut changes = self.store.list_changes(&query, list.after, list.page_size + 1).await?;
        let next_page_token = if changes.len() > list.page_size as usize {
            changes.truncate(list.page_size as usize);
            changes.last().map(|c| list.next_page_token(c.cursor)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListChangesResponse {
            changes: changes.iter().map(change_to_proto).collect(),
            next_page_token,
        }))
    }
}
