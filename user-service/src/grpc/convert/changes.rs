//! `ChangeService` messages ⇄ the change log: filters in, changes and
//! heartbeats out.

use chrono::{DateTime, Utc};
use userdata_proto::v1 as pb;

use super::{optional_user, page_size, time_from_proto, timestamp};
use crate::{
    domain::{
        change::{ChangeKind, Cursor, LoggedChange},
        error::Result,
        keys::DataKey,
        user::UserKey,
        validation::Violations,
    },
    feed::FeedEvent,
    grpc::{json, page_token},
};

/// Default and largest `ListChanges` page.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;
/// Most data keys a follower may filter on.
const MAX_KEYS: usize = 100;

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

/// A feed event as a `WatchChanges` message.
pub fn event_to_proto(event: FeedEvent) -> pb::WatchChangesResponse {
    use pb::watch_changes_response::Event;
    let event = match event {
        FeedEvent::Change(change) => Event::Change(change_to_proto(&change)),
        FeedEvent::Heartbeat(cursor) => {
            Event::Heartbeat(pb::Heartbeat { cursor: cursor.to_string(), time: Some(timestamp(Utc::now())) })
        }
    };
    pb::WatchChangesResponse { event: Some(event) }
}

/// A parsed `WatchChangesRequest`.
#[derive(Debug)]
pub struct Watch {
    /// Resume after this cursor; `None`: from now.
    pub cursor: Option<Cursor>,
    /// Only this user's changes.
    pub user: Option<UserKey>,
    /// Only these data keys (user changes always match); empty: all.
    pub keys: Vec<String>,
}

/// Parses a `WatchChangesRequest`.
pub fn watch_changes(req: &pb::WatchChangesRequest) -> Result<Watch> {
    let mut v = Violations::default();
    let cursor = match req.cursor.as_str() {
        "" => None,
        text => v.check("cursor", text.parse::<Cursor>()),
    };
    let user = optional_user(&mut v, &req.user_id, &req.clerk_id);
    if req.keys.len() > MAX_KEYS {
        v.add("keys", format!("at most {MAX_KEYS} keys"));
    }
    let keys = req
        .keys
        .iter()
        .enumerate()
        .filter_map(|(i, k)| v.check(&format!("keys[{i}]"), DataKey::parse(k)).map(DataKey::into_inner))
        .collect();
    v.finish(|| Watch { cursor, user, keys })
}

/// A parsed `ListChangesRequest`.
#[derive(Debug)]
pub struct ListChanges {
    /// Page size.
    pub page_size: u32,
    /// Only this user's changes.
    pub user: Option<UserKey>,
    /// Only changes at or after this time.
    pub start: Option<DateTime<Utc>>,
    /// Only changes before this time.
    pub end: Option<DateTime<Utc>>,
    /// Only this kind.
    pub kind: Option<ChangeKind>,
    /// Oldest first instead of newest first.
    pub oldest_first: bool,
    /// Continue after this cursor.
    pub after: Option<Cursor>,
    /// Every filter as the request states it, which a page token is bound to.
    filters: [Option<String>; 7],
}

impl ListChanges {
    /// The token of the page after the one ending at `last`.
    pub fn next_page_token(&self, last: Cursor) -> String {
        let filters: Vec<Option<&str>> = self.filters.iter().map(Option::as_deref).collect();
        page_token::encode_cursor(last, &filters)
    }
}

/// Parses a `ListChangesRequest`.
pub fn list_changes(req: &pb::ListChangesRequest) -> Result<ListChanges> {
    let mut v = Violations::default();
    let page_size = page_size(&mut v, req.page_size, DEFAULT_PAGE, MAX_PAGE);
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
    let filters = [
        Some(req.user_id.clone()),
        Some(req.clerk_id.clone()),
        Some(req.actor.clone()),
        start.map(|t| t.to_rfc3339()),
        end.map(|t| t.to_rfc3339()),
        kind.map(|k| k.as_str().to_owned()),
        Some(oldest_first.to_string()),
    ];
    let borrowed: Vec<Option<&str>> = filters.iter().map(Option::as_deref).collect();
    let after = match req.page_token.as_str() {
        "" => None,
        token => v.check("page_token", page_token::decode_cursor(token, &borrowed)),
    };
    v.finish(|| ListChanges { page_size, user, start, end, kind, oldest_first, after, filters })
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
}
