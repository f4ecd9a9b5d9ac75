//! Clerk objects as user-service requests: one builder per call, each with
//! its event context (idempotency key, source time, event type).

use std::time::Duration;

use prost_types::{FieldMask, Timestamp};
use userdata_proto::v1::{
    CreateUserRequest, DeleteUserRequest, EventContext, LoginRecord, RecordActivityRequest,
    RecordLoginRequest, SignupSource, UpdateUserRequest, User,
};

use crate::clerk::{DeletedUserJson, SessionJson, UserJson};

/// The profile fields a Clerk update overwrites (all Clerk-owned fields;
/// `role` and `status` belong to this application and are never named).
pub const UPDATE_MASK_PATHS: [&str; 5] = ["email", "first_name", "last_name", "username", "image_url"];

/// Envelope timestamps below this are taken as seconds, not milliseconds:
/// Clerk documents milliseconds, but its OpenAPI examples use seconds. 10^11
/// ms is March 1973, 10^11 s is the year 5138, so the ranges cannot overlap.
const SECONDS_OR_MILLIS_THRESHOLD: i64 = 100_000_000_000;

/// Converts a Clerk time (milliseconds; seconds tolerated, see
/// `SECONDS_OR_MILLIS_THRESHOLD`) to a protobuf timestamp. Non-positive
/// values are treated as absent.
pub fn clerk_time(value: i64) -> Option<Timestamp> {
    if value <= 0 {
        return None;
    }
    let millis = if value < SECONDS_OR_MILLIS_THRESHOLD { value.checked_mul(1000)? } else { value };
    let nanos = i32::try_from(millis.rem_euclid(1000) * 1_000_000).ok()?;
    Some(Timestamp { seconds: millis.div_euclid(1000), nanos })
}

/// Longest `EventContext.event_type` user-service accepts.
pub const MAX_EVENT_TYPE_LEN: usize = 64;

/// The event context of a write: the idempotency key, the source time and the
/// event type (sent only when it is 1 to [`MAX_EVENT_TYPE_LEN`] characters;
/// it is informational, so an odd one must not fail the write).
pub fn event_context(idempotency_key: &str, source_time: Timestamp, event_type: &str) -> EventContext {
    let event_type = if event_type.chars().count() <= MAX_EVENT_TYPE_LEN { event_type } else { "" };
    EventContext {
        idempotency_key: idempotency_key.to_owned(),
        source_time: Some(source_time),
        event_type: event_type.to_owned(),
    }
}

fn user_message(user: &UserJson) -> User {
    let profile = user.profile();
    User {
        clerk_id: profile.clerk_id,
        email: profile.email,
        first_name: profile.first_name,
        last_name: profile.last_name,
        username: profile.username,
        image_url: profile.image_url,
        ..User::default()
    }
}

/// What identifies one write: its idempotency key and the event type
/// recorded with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteKey<'a> {
    /// `EventContext.idempotency_key`: the `svix-id`, or a key derived from it.
    pub idempotency_key: &'a str,
    /// `EventContext.event_type`, e.g. `user.updated`.
    pub event_type: &'a str,
}

/// Source time of an event: the object's `updated_at`, else the envelope
/// `timestamp`, else `now` (the event then orders as "just happened").
fn source_time(updated_at: Option<i64>, envelope_time: Option<i64>, now: Timestamp) -> Timestamp {
    updated_at.and_then(clerk_time).or_else(|| envelope_time.and_then(clerk_time)).unwrap_or(now)
}

/// The `CreateUser` call for a `user.created` event.
pub fn create_request(
    user: &UserJson,
    envelope_time: Option<i64>,
    key: &WriteKey<'_>,
    now: Timestamp,
) -> CreateUserRequest {
    CreateUserRequest {
        user: Some(user_message(user)),
        signup_source: SignupSource::Clerk as i32,
        event_context: Some(event_context(
            key.idempotency_key,
            source_time(user.updated_at, envelope_time, now),
            key.event_type,
        )),
    }
}

/// The `UpdateUser` call for a `user.updated` event: every Clerk-owned field
/// is named in the mask, so a field Clerk cleared is cleared here too.
pub fn update_request(
    user: &UserJson,
    envelope_time: Option<i64>,
    key: &WriteKey<'_>,
    now: Timestamp,
) -> UpdateUserRequest {
    UpdateUserRequest {
        user: Some(user_message(user)),
        update_mask: Some(FieldMask { paths: UPDATE_MASK_PATHS.iter().map(|p| (*p).to_owned()).collect() }),
        event_context: Some(event_context(
            key.idempotency_key,
            source_time(user.updated_at, envelope_time, now),
            key.event_type,
        )),
        ..UpdateUserRequest::default()
    }
}

/// The `DeleteUser` call for a `user.deleted` event. Deleted users carry no
/// `updated_at`, so the envelope `timestamp` orders it (else `now`).
pub fn delete_request(
    deleted: &DeletedUserJson,
    envelope_time: Option<i64>,
    key: &WriteKey<'_>,
    now: Timestamp,
) -> DeleteUserRequest {
    DeleteUserRequest {
        clerk_id: deleted.id.clone(),
        event_context: Some(event_context(
            key.idempotency_key,
            source_time(None, envelope_time, now),
            key.event_type,
        )),
        ..DeleteUserRequest::default()
    }
}

/// The `RecordLogin` call for `session.created`: one successful login.
pub fn login_request(
    session: &SessionJson,
    envelope_time: Option<i64>,
    key: &WriteKey<'_>,
    now: Timestamp,
) -> RecordLoginRequest {
    let source_time = source_time(session.updated_at, envelope_time, now);
    RecordLoginRequest {
        clerk_id: session.user_id.clone(),
        login: Some(LoginRecord {
            timestamp: Some(session.created_at.and_then(clerk_time).unwrap_or(source_time)),
            device: session.device(),
            ip: session.ip(),
            success: true,
        }),
        event_context: Some(event_context(key.idempotency_key, source_time, key.event_type)),
        ..RecordLoginRequest::default()
    }
}

/// The `RecordActivity` call for a session that ended, was removed or revoked.
pub fn activity_request(
    session: &SessionJson,
    envelope_time: Option<i64>,
    key: &WriteKey<'_>,
    now: Timestamp,
) -> RecordActivityRequest {
    let source_time = source_time(session.updated_at, envelope_time, now);
    RecordActivityRequest {
        clerk_id: session.user_id.clone(),
        active_at: Some(session.last_active_at.and_then(clerk_time).unwrap_or(source_time)),
        event_context: Some(event_context(key.idempotency_key, source_time, key.event_type)),
        ..RecordActivityRequest::default()
    }
}

/// Idempotency key of the user write a session event carries: derived from
/// the `svix-id`, so a redelivery of the event replays it.
pub fn session_user_key(svix_id: &str) -> String {
    format!("{svix_id}:user")
}

/// How long ago a Clerk time (ms, seconds tolerated) was, or `None` when it is
/// absent, invalid or in the future.
pub(super) fn event_age(time: Option<i64>, now: Timestamp) -> Option<Duration> {
    let then = time.and_then(clerk_time)?;
    let millis = |t: &Timestamp| i128::from(t.seconds) * 1000 + i128::from(t.nanos) / 1_000_000;
    let age = u64::try_from(millis(&now) - millis(&then)).ok()?;
    Some(Duration::from_millis(age))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clerk::EmailAddressJson;

    fn now() -> Timestamp {
        Timestamp { seconds: 1_800_000_000, nanos: 0 }
    }

    fn key<'a>(idempotency_key: &'a str, event_type: &'a str) -> WriteKey<'a> {
        WriteKey { idempotency_key, event_type }
    }

    fn sample_user() -> UserJson {
        UserJson {
            id: "user_sample".into(),
            email_addresses: Some(vec![
                EmailAddressJson { id: Some("idn_a".into()), email_address: Some("a@example.test".into()) },
                EmailAddressJson { id: Some("idn_b".into()), email_address: Some("b@example.test".into()) },
            ]),
            primary_email_address_id: Some("idn_b".into()),
            first_name: Some("Ada".into()),
            last_name: Some(String::new()),
            username: None,
            image_url: Some("https://img.example.test/a.png".into()),
            created_at: Some(1_700_000_000_000),
            updated_at: Some(1_700_000_000_250),
        }
    }

    #[test]
    fn create_request_carries_profile_source_and_event_context() {
        let request =
            create_request(&sample_user(), Some(1_700_000_001_000), &key("msg_c", "user.created"), now());
        let user = request.user.unwrap_or_default();
        assert_eq!(user.clerk_id, "user_sample");
        assert_eq!(user.email.as_deref(), Some("b@example.test"));
        assert_eq!(user.first_name.as_deref(), Some("Ada"));
        assert_eq!(user.last_name, None);
        assert_eq!(request.signup_source, SignupSource::Clerk as i32);
        let context = request.event_context.unwrap_or_default();
        assert_eq!(context.idempotency_key, "msg_c");
        assert_eq!(context.event_type, "user.created");
        assert_eq!(context.source_time, Some(Timestamp { seconds: 1_700_000_000, nanos: 250_000_000 }));
    }

    #[test]
    fn user_source_time_falls_back_to_envelope_then_now() {
        let mut user = sample_user();
        user.updated_at = None;
        let request = update_request(&user, Some(1_700_000_009_000), &key("k", "user.updated"), now());
        let time = request.event_context.and_then(|c| c.source_time);
        assert_eq!(time.map(|t| t.seconds), Some(1_700_000_009));

        let request = update_request(&user, None, &key("k", "user.updated"), now());
        assert_eq!(request.event_context.and_then(|c| c.source_time), Some(now()));
    }

    #[test]
    fn update_request_names_all_profile_fields_and_never_role_or_status() {
        let request = update_request(&sample_user(), None, &key("msg_u", "user.updated"), now());
        let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
        assert_eq!(paths, ["email", "first_name", "last_name", "username", "image_url"]);
        assert!(request.etag.is_empty());
    }

    #[test]
    fn delete_request_uses_the_envelope_timestamp_or_now() {
        let deleted =
            DeletedUserJson { id: "user_gone".into(), deleted: Some(true), object: Some("user".into()) };
        let request = delete_request(&deleted, Some(1_661_861_640_000), &key("msg_d", "user.deleted"), now());
        assert_eq!(request.clerk_id, "user_gone");
        let context = request.event_context.unwrap_or_default();
        assert_eq!(context.idempotency_key, "msg_d");
        assert_eq!(context.source_time.map(|t| t.seconds), Some(1_661_861_640));

        let request = delete_request(&deleted, None, &key("msg_d", "user.deleted"), now());
        assert_eq!(request.event_context.and_then(|c| c.source_time), Some(now()));
    }

    #[test]
    fn clerk_time_reads_milliseconds_and_tolerates_seconds() {
        assert_eq!(
            clerk_time(1_716_883_200_123),
            Some(Timestamp { seconds: 1_716_883_200, nanos: 123_000_000 })
        );
        assert_eq!(clerk_time(1_716_883_200).map(|t| t.seconds), Some(1_716_883_200));
        assert_eq!(clerk_time(0), None);
        assert_eq!(clerk_time(-5), None);
    }

    fn sample_session(ip: &str) -> SessionJson {
        serde_json::from_value(serde_json::json!({
            "id": "sess_1",
            "user_id": "user_sample",
            "created_at": 1_700_000_000_000_i64,
            "updated_at": 1_700_000_000_500_i64,
            "last_active_at": 1_700_000_000_400_i64,
            "latest_activity": {"browser_name": "Firefox", "browser_version": "140.0", "device_type": "Macintosh", "ip_address": ip}
        }))
        .unwrap_or_default()
    }

    #[test]
    fn a_created_session_is_one_successful_login_keyed_by_the_svix_id() {
        let request =
            login_request(&sample_session("203.0.113.7"), None, &key("msg_s", "session.created"), now());
        assert_eq!(request.clerk_id, "user_sample");
        let login = request.login.unwrap_or_default();
        assert!(login.success);
        assert_eq!(login.device.as_deref(), Some("Firefox 140.0 on Macintosh"));
        assert_eq!(login.ip.as_deref(), Some("203.0.113.7"));
        assert_eq!(login.timestamp, clerk_time(1_700_000_000_000));
        let context = request.event_context.unwrap_or_default();
        assert_eq!(context.idempotency_key, "msg_s");
        assert_eq!(context.source_time, clerk_time(1_700_000_000_500));
    }

    #[test]
    fn an_unparseable_session_ip_is_dropped_not_fatal() {
        let request =
            login_request(&sample_session("not-an-ip"), None, &key("msg_s", "session.created"), now());
        assert_eq!(request.login.unwrap_or_default().ip, None);
    }

    #[test]
    fn an_ended_session_records_activity_at_its_last_activity() {
        let request =
            activity_request(&sample_session("203.0.113.7"), None, &key("msg_e", "session.ended"), now());
        assert_eq!(request.active_at, clerk_time(1_700_000_000_400));
    }

    #[test]
    fn an_event_type_longer_than_64_characters_is_left_out_of_the_context() {
        let long = "x".repeat(MAX_EVENT_TYPE_LEN + 1);
        assert_eq!(event_context("k", now(), &long).event_type, "");
        let longest = "y".repeat(MAX_EVENT_TYPE_LEN);
        assert_eq!(event_context("k", now(), &longest).event_type, longest);
    }

    #[test]
    fn the_session_user_write_is_keyed_by_the_svix_id() {
        assert_eq!(session_user_key("msg_2abc"), "msg_2abc:user");
    }

    #[test]
    fn event_age_is_measured_from_the_clerk_time() {
        let now = now();
        let an_hour_ago = (now.seconds - 3600) * 1000;
        assert_eq!(event_age(Some(an_hour_ago), now), Some(Duration::from_secs(3600)));
        assert_eq!(event_age(Some((now.seconds + 60) * 1000), now), None, "future");
        assert_eq!(event_age(None, now), None);
    }
}
