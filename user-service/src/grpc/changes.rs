//! `userdata.v1.ChangeService`: the change log, followed live or listed.

use std::{pin::Pin, sync::Arc};

use futures::Stream;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};
use userdata_proto::v1::{self as pb, change_service_server::ChangeService};

use super::{
    access,
    convert::{time_from_proto, timestamp},
    json, page_token,
};
use crate::{
    auth::Principal,
    domain::{
        change::{AuditQuery, ChangeFilter, ChangeKind, Cursor, LoggedChange},
        data,
        error::Result,
        user::{UserKey, parse_clerk_id, parse_user_id},
        validation::Violations,
    },
    feed::{Feed, FeedEvent},
    store::Store,
};

/// Default and largest `ListChanges` page.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;
/// Most data keys a follower may filter on.
const MAX_KEYS: usize = 100;
/// Events buffered per follower before it waits for its client.
const STREAM_BUFFER: usize = 64;

/// The `ChangeService` implementation.
#[derive(Clone)]
pub struct ChangesApi {
    store: Arc<dyn Store>,
    feed: Arc<Feed>,
}

impl ChangesApi {
    /// Serves the change log of `store`, live through `feed`.
    pub fn new(store: Arc<dyn Store>, feed: Arc<Feed>) -> Self {
        Self { store, feed }
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

/// At most one of `user_id` and `clerk_id`.
fn optional_user(v: &mut Violations, user_id: &str, clerk_id: &str) -> Option<UserKey> {
    match (user_id.is_empty(), clerk_id.is_empty()) {
        (true, true) => None,
        (false, false) => {
            v.add("user_id", "set at most one of user_id and clerk_id");
            None
        }
        (false, true) => v.check("user_id", parse_user_id(user_id)).map(UserKey::Id),
        (true, false) => v.check("clerk_id", parse_clerk_id(clerk_id)).map(UserKey::ClerkId),
    }
}

fn kind_to_proto(kind: ChangeKind) -> pb::ChangeKind {
    match kind {
        ChangeKind::UserCreated => pb::ChangeKind::UserCreated,
        ChangeKind::UserUpdated => pb::ChangeKind::UserUpdated,
        ChangeKind::UserDeleted => pb::ChangeKind::UserDeleted,
        ChangeKind::DataSet => pb::ChangeKind::DataSet,
        ChangeKind::DataDeleted => pb::ChangeKind::DataDeleted,
    }
}

fn kind_from_proto(v: &mut Violations, kind: i32) -> Option<ChangeKind> {
    match pb::ChangeKind::try_from(kind) {
        Ok(pb::ChangeKind::Unspecified) => None,
        Ok(pb::ChangeKind::UserCreated) => Some(ChangeKind::UserCreated),
        Ok(pb::ChangeKind::UserUpdated) => Some(ChangeKind::UserUpdated),
        Ok(pb::ChangeKind::UserDeleted) => Some(ChangeKind::UserDeleted),
        Ok(pb::ChangeKind::DataSet) => Some(ChangeKind::DataSet),
        Ok(pb::ChangeKind::DataDeleted) => Some(ChangeKind::DataDeleted),
        Err(_) => {
            v.add("kind", format!("unknown ChangeKind value {kind}"));
            None
        }
    }
}

/// A logged change as sent.
pub fn change_to_proto(c: &LoggedChange) -> pb::Change {
    let actor = &c.actor;
    pb::Change {
        cursor: c.cursor.to_string(),
        time: Some(timestamp(c.at)),
        user_id: c.change.user_id.map(|id| id.to_string()).unwrap_or_default(),
        clerk_id: c.change.clerk_id.clone(),
        kind: kind_to_proto(c.change.kind) as i32,
        key: c.change.key.clone().unwrap_or_default(),
        before: c.change.before.as_ref().map(json::from_json),
        after: c.change.after.as_ref().map(json::from_json),
        actor: Some(pb::Actor {
            client: actor.client.clone(),
            event_id: actor.event_id.clone().unwrap_or_default(),
            event_type: actor.event_type.clone().unwrap_or_default(),
            changed_by: actor.changed_by.clone().unwrap_or_default(),
            request_id: actor.request_id.clone().unwrap_or_default(),
        }),
        erased: c.erased,
    }
}

fn event_to_proto(event: FeedEvent) -> pb::WatchChangesResponse {
    use pb::watch_changes_response::Event;
    let event = match event {
        FeedEvent::Change(change) => Event::Change(change_to_proto(&change)),
        FeedEvent::Heartbeat(cursor) => Event::Heartbeat(pb::Heartbeat {
            cursor: cursor.to_string(),
            time: Some(timestamp(chrono::Utc::now())),
        }),
    };
    pb::WatchChangesResponse { event: Some(event) }
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
        let req = request.get_ref();
        let mut v = Violations::default();
        let cursor = match req.cursor.as_str() {
            "" => None,
            text => v.check("cursor", text.parse::<Cursor>()),
        };
        let user = optional_user(&mut v, &req.user_id, &req.clerk_id);
        if req.keys.len() > MAX_KEYS {
            v.add("keys", format!("at most {MAX_KEYS} keys"));
        }
        let keys: Vec<String> = req
            .keys
            .iter()
            .enumerate()
            .filter_map(|(i, k)| v.check(&format!("keys[{i}]"), data::parse_key(k)))
            .collect();
        v.finish(|| ())?;
        let clerk_id = match principal.signed_in_user() {
            // A signed-in user follows their own changes, whatever the
            // request names (the end-user rule `ForcedOwn`).
            Some(user) => Some(access::own_user(&*self.store, user).await?.clerk_id),
            None => self.clerk_id_of(user).await?,
        };
        let filter = ChangeFilter { clerk_id, keys };
        let events = self.feed.follow(cursor, filter, STREAM_BUFFER).await?;
        let stream = ReceiverStream::new(events).map(|event| event.map(event_to_proto).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    #[tracing::instrument(skip_all)]
    async fn list_changes(
        &self,
        request: Request<pb::ListChangesRequest>,
    ) -> Result<Response<pb::ListChangesResponse>, Status> {
        let req = request.get_ref();
        let mut v = Violations::default();
        let page_size = match req.page_size {
            n if n < 0 => {
                v.add("page_size", "must not be negative");
                0
            }
            0 => DEFAULT_PAGE,
            n => (n as u32).min(MAX_PAGE),
        };
        let user = optional_user(&mut v, &req.user_id, &req.clerk_id);
        let start = req.start_time.as_ref().and_then(|t| v.check("start_time", time_from_proto(t)));
        let end = req.end_time.as_ref().and_then(|t| v.check("end_time", time_from_proto(t)));
        let kind = kind_from_proto(&mut v, req.kind);
        let oldest_first = match pb::ChangeOrder::try_from(req.order) {
            Ok(order) => order == pb::ChangeOrder::OldestFirst,
            Err(_) => {
                v.add("order", format!("unknown ChangeOrder value {}", req.order));
                false
            }
        };
        // The token is bound to every filter, as the request states them.
        let order = oldest_first.to_string();
        let kind_name = kind.map(ChangeKind::as_str);
        let start_text = start.map(|t| t.to_rfc3339());
        let end_text = end.map(|t| t.to_rfc3339());
        let filters = [
            Some(req.user_id.as_str()),
            Some(req.clerk_id.as_str()),
            Some(req.actor.as_str()),
            start_text.as_deref(),
            end_text.as_deref(),
            kind_name,
            Some(order.as_str()),
        ];
        let after = match req.page_token.as_str() {
            "" => None,
            token => v.check("page_token", page_token::decode_cursor(token, &filters)),
        };
        v.finish(|| ())?;
        let query = AuditQuery {
            clerk_id: self.clerk_id_of(user).await?,
            actor: (!req.actor.is_empty()).then(|| req.actor.clone()),
            start,
            end,
            kind,
            oldest_first,
        };
        // One extra row tells whether another page exists.
        let mut changes = self.store.list_changes(&query, after, page_size + 1).await?;
        let next_page_token = if changes.len() > page_size as usize {
            changes.truncate(page_size as usize);
            changes.last().map(|c| page_token::encode_cursor(c.cursor, &filters)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListChangesResponse {
            changes: changes.iter().map(change_to_proto).collect(),
            next_page_token,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_maps_to_its_proto_value_and_back() {
        for kind in ChangeKind::ALL {
            let mut v = Violations::default();
            assert_eq!(kind_from_proto(&mut v, kind_to_proto(kind) as i32), Some(kind));
        }
    }

    #[test]
    fn a_user_is_named_at_most_once() {
        let mut v = Violations::default();
        assert!(optional_user(&mut v, "", "").is_none());
        assert!(optional_user(&mut v, "x", "user_1").is_none());
        assert!(v.finish(|| ()).is_err());
    }
}
