//! Conversions between protobuf messages and domain types, one module per
//! RPC family ([`users`]; [`data`] and [`entries`] for user data;
//! [`changes`]); what every family shares is here. Parsing a request
//! validates every field and reports all violations at once, so a service
//! method only parses, authorizes, calls the store and answers.

pub mod changes;
pub mod data;
pub mod entries;
pub mod users;

use prost_types::Timestamp;
use userdata_proto::v1 as pb;

use crate::domain::{
    change::Actor,
    error::Result,
    user::{ClerkId, UserKey, parse_etag, parse_user_id},
    validation::Violations,
    write::{EventContext, Outcome},
};

/// Longest accepted idempotency key (svix ids are about 30 characters).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
/// Longest accepted event type (`user.updated`, `session.created`, …).
pub const MAX_EVENT_TYPE_LEN: usize = 64;

/// Converts a chrono time to a protobuf Timestamp.
pub fn timestamp(time: chrono::DateTime<chrono::Utc>) -> Timestamp {
    Timestamp { seconds: time.timestamp(), nanos: time.timestamp_subsec_nanos() as i32 }
}

/// Converts a protobuf Timestamp, rejecting out-of-range values.
pub fn time_from_proto(ts: &Timestamp) -> Result<chrono::DateTime<chrono::Utc>, String> {
    u32::try_from(ts.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .and_then(|nanos| chrono::DateTime::from_timestamp(ts.seconds, nanos))
        .ok_or_else(|| "is not a valid timestamp".to_string())
}

/// The proto form of an event outcome.
pub fn outcome_to_proto(outcome: Option<Outcome>) -> pb::EventOutcome {
    match outcome {
        None => pb::EventOutcome::Unspecified,
        Some(Outcome::Applied) => pb::EventOutcome::Applied,
        Some(Outcome::Stale) => pb::EventOutcome::Stale,
        Some(Outcome::UserDeleted) => pb::EventOutcome::UserDeleted,
    }
}

/// Parses an optional event context.
pub fn parse_event(
    v: &mut Violations,
    ctx: Option<&pb::EventContext>,
    actor: &Actor,
    method: &str,
) -> Option<EventContext> {
    let ctx = ctx?;
    let key = &ctx.idempotency_key;
    let key_ok = if key.is_empty() {
        Err("is required in an event context".to_string())
    } else if key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        Err(format!("must be at most {MAX_IDEMPOTENCY_KEY_LEN} characters"))
    } else if !key.bytes().all(|b| b.is_ascii_graphic()) {
        Err("must be printable ASCII without spaces".to_string())
    } else {
        Ok(())
    };
    let key_ok = v.check("event_context.idempotency_key", key_ok).is_some();
    let time = match &ctx.source_time {
        None => Err("is required in an event context".to_string()),
        Some(ts) => time_from_proto(ts).map(|t| t.timestamp_millis()),
    };
    let time = v.check("event_context.source_time", time);
    let event_type = match ctx.event_type.as_str() {
        "" => None,
        t if t.len() <= MAX_EVENT_TYPE_LEN && t.bytes().all(|b| b.is_ascii_graphic()) => Some(t.to_owned()),
        _ => {
            v.add(
                "event_context.event_type",
                format!("must be at most {MAX_EVENT_TYPE_LEN} printable ASCII characters without spaces"),
            );
            None
        }
    };
    let kind = EventContext::kind_of(method, event_type.as_deref());
    let source = actor.client.clone();
    Some(EventContext { idempotency_key: key.clone(), source_time_ms: time?, event_type, source, kind })
        .filter(|_| key_ok)
}

/// Parses a user named by exactly one of an id field (called `id_field`) and
/// `clerk_id`.
pub fn parse_user(v: &mut Violations, id_field: &str, id: &str, clerk_id: &str) -> Option<UserKey> {
    match (id.is_empty(), clerk_id.is_empty()) {
        (true, true) => {
            v.add(id_field, format!("one of {id_field} or clerk_id is required"));
            None
        }
        (false, false) => {
            v.add(id_field, format!("set only one of {id_field} and clerk_id"));
            None
        }
        (false, true) => v.check(id_field, parse_user_id(id)).map(UserKey::Id),
        (true, false) => v.check("clerk_id", ClerkId::parse(clerk_id)).map(UserKey::from),
    }
}

/// Parses an optional etag into the version it names.
pub fn parse_expected_version(v: &mut Violations, etag: &str) -> Option<i64> {
    if etag.is_empty() { None } else { v.check("etag", parse_etag(etag)) }
}

/// Parses a request that names one user (by exactly one of `id_field` and
/// `clerk_id`) and nothing else to check.
pub fn only_user(id_field: &str, id: &str, clerk_id: &str) -> Result<UserKey> {
    let mut v = Violations::default();
    let key = parse_user(&mut v, id_field, id, clerk_id);
    v.finish_parsed(key)
}

/// Parses a user named by at most one of `user_id` and `clerk_id`.
pub fn optional_user(v: &mut Violations, user_id: &str, clerk_id: &str) -> Option<UserKey> {
    if user_id.is_empty() && clerk_id.is_empty() {
        return None;
    }
    if !user_id.is_empty() && !clerk_id.is_empty() {
        v.add("user_id", "set at most one of user_id and clerk_id");
        return None;
    }
    parse_user(v, "user_id", user_id, clerk_id)
}

/// The page size of a list request (AIP-158): `default` for 0, at most
/// `max`, and a violation for a negative size.
pub fn page_size(v: &mut Violations, requested: i32, default: u32, max: u32) -> u32 {
    match requested {
        n if n < 0 => {
            v.add("page_size", "must not be negative");
            0
        }
        0 => default,
        n => (n as u32).min(max),
    }
}

/// Parses every item of a repeated field, naming a bad one by its index.
pub fn each<T>(
    v: &mut Violations,
    field: &str,
    items: &[String],
    parse: fn(&str) -> Result<T, String>,
) -> Vec<T> {
    items.iter().enumerate().filter_map(|(i, item)| v.check(&format!("{field}[{i}]"), parse(item))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_named_at_most_once() {
        let mut v = Violations::default();
        assert!(optional_user(&mut v, "", "").is_none());
        assert!(optional_user(&mut v, "x", "user_1").is_none());
        assert!(v.finish(|| ()).is_err());
    }
}
