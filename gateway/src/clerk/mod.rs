//! Clerk webhook payloads: the event envelope and the user objects we sync.
//!
//! Parsing is deliberately lenient where Clerk is inconsistent (unknown and
//! missing optional fields, `null` lists, absent `timestamp`/`instance_id`) and
//! strict only where an event could never be applied: a body that is not a
//! JSON object, a missing `type`, a user event without `data` or `data.id`.

use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, value::RawValue};

/// `type` of the event sent when a user signs up or is created by an admin.
pub const USER_CREATED: &str = "user.created";
/// `type` of the event sent when a user's profile changes.
pub const USER_UPDATED: &str = "user.updated";
/// `type` of the event sent when a user is deleted.
pub const USER_DELETED: &str = "user.deleted";
/// A user signed in.
pub const SESSION_CREATED: &str = "session.created";
/// A session ended (sign-out).
pub const SESSION_ENDED: &str = "session.ended";
/// A session was removed.
pub const SESSION_REMOVED: &str = "session.removed";
/// A session was revoked.
pub const SESSION_REVOKED: &str = "session.revoked";

/// The JSON envelope of every Clerk webhook.
///
/// Unknown fields are ignored: Clerk adds fields over time and a new field must
/// never turn a delivery into a failure.
#[derive(Debug, Clone, Deserialize)]
pub struct Envelope {
    /// Event type such as `user.created`; `None` when the body lacks it.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// The resource the event is about, shaped according to `type`. Kept raw
    /// so it is parsed once, straight into the type the event needs.
    pub data: Option<Box<RawValue>>,
    /// Always `"event"` in practice; not checked.
    pub object: Option<String>,
    /// When the event happened, in milliseconds (some spec examples use
    /// seconds; see `apply::clerk_time`). Absent in old payloads.
    pub timestamp: Option<i64>,
    /// Clerk instance id; absent in payloads before 2025.
    pub instance_id: Option<String>,
    /// Request metadata (`http_request.client_ip`, `user_agent`). Kept opaque:
    /// we do not use it and its shape must never fail an event.
    pub event_attributes: Option<Box<RawValue>>,
}

/// One of a user's email addresses.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct EmailAddressJson {
    /// Clerk's id for the address (`idn_...`).
    pub id: Option<String>,
    /// The address itself.
    pub email_address: Option<String>,
}

/// The user object carried by `user.created` and `user.updated`, reduced to
/// the fields we sync.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct UserJson {
    /// Clerk user id (`user_...`); [`parse_event`] guarantees it is non-empty.
    pub id: String,
    /// All addresses, in no meaningful order; `null` is treated as empty.
    pub email_addresses: Option<Vec<EmailAddressJson>>,
    /// Id of the primary address among `email_addresses`, if any.
    pub primary_email_address_id: Option<String>,
    /// Given name.
    pub first_name: Option<String>,
    /// Family name.
    pub last_name: Option<String>,
    /// Username, when the instance uses them.
    pub username: Option<String>,
    /// Profile image URL.
    pub image_url: Option<String>,
    /// Creation time in Unix milliseconds.
    pub created_at: Option<i64>,
    /// Last change in Unix milliseconds; orders updates of the same user.
    pub updated_at: Option<i64>,
}

impl UserJson {
    /// The primary email address: the entry whose `id` equals
    /// `primary_email_address_id`.
    ///
    /// `None` when there is no primary id, no matching entry, or the entry has
    /// no address. Never falls back to the first entry: list position says
    /// nothing about which address is primary.
    pub fn primary_email(&self) -> Option<&str> {
        let primary_id = self.primary_email_address_id.as_deref()?;
        self.email_addresses
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|address| address.id.as_deref() == Some(primary_id))
            .and_then(|address| non_blank(address.email_address.as_deref()))
    }

    /// The profile fields as we store them: blank strings become `None`.
    pub fn profile(&self) -> Profile {
        Profile {
            clerk_id: self.id.clone(),
            email: self.primary_email().map(str::to_owned),
            first_name: non_blank(self.first_name.as_deref()).map(str::to_owned),
            last_name: non_blank(self.last_name.as_deref()).map(str::to_owned),
            username: non_blank(self.username.as_deref()).map(str::to_owned),
            image_url: non_blank(self.image_url.as_deref()).map(str::to_owned),
        }
    }
}

/// Clerk sends `""` as well as `null` for "no value"; both mean absent to us.
fn non_blank(value: Option<&str>) -> Option<&str> {
    value.filter(|text| !text.trim().is_empty())
}

/// The Clerk-owned profile of a user, normalised and ready to send upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    /// Clerk user id.
    pub clerk_id: String,
    /// Primary email address (see [`UserJson::primary_email`]).
    pub email: Option<String>,
    /// Given name.
    pub first_name: Option<String>,
    /// Family name.
    pub last_name: Option<String>,
    /// Username.
    pub username: Option<String>,
    /// Profile image URL.
    pub image_url: Option<String>,
}

/// The `data` of `user.deleted`: `{id, deleted, object}`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct DeletedUserJson {
    /// Clerk user id; [`parse_event`] guarantees it is non-empty.
    pub id: String,
    /// Always `true` in practice; not checked.
    pub deleted: Option<bool>,
    /// Always `"user"` in practice; not checked.
    pub object: Option<String>,
}

/// The `data` of `session.*` events (the fields this gateway uses).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct SessionJson {
    /// Session id (`sess_…`).
    pub id: Option<String>,
    /// The Clerk user id; [`parse_event`] guarantees it is non-empty.
    pub user_id: String,
    /// Last activity, ms.
    pub last_active_at: Option<i64>,
    /// Creation, ms.
    pub created_at: Option<i64>,
    /// Last change, ms.
    pub updated_at: Option<i64>,
    /// Where the session was used from.
    pub latest_activity: Option<SessionActivityJson>,
    /// The session's user, shaped like `data` of `user.created`: sent by
    /// Clerk's webhook schema since 2025-04-15, absent (or `null`) before.
    /// [`parse_event`] guarantees its `id` is `user_id`.
    pub user: Option<UserJson>,
}

/// `latest_activity` of a session.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct SessionActivityJson {
    /// e.g. `Firefox`.
    pub browser_name: Option<String>,
    /// e.g. `140.0`.
    pub browser_version: Option<String>,
    /// e.g. `Macintosh`.
    pub device_type: Option<String>,
    /// Client IP.
    pub ip_address: Option<String>,
}

impl SessionJson {
    /// A short device description, e.g. `Firefox 140.0 on Macintosh`.
    pub fn device(&self) -> Option<String> {
        let a = self.latest_activity.as_ref()?;
        let browser = [a.browser_name.as_deref(), a.browser_version.as_deref()]
            .into_iter()
            .flatten()
            .filter(|s| !s.trim().is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let device = a.device_type.as_deref().filter(|d| !d.trim().is_empty());
        let text = match (browser.is_empty(), device) {
            (false, Some(d)) => format!("{browser} on {d}"),
            (false, None) => browser,
            (true, Some(d)) => d.to_owned(),
            (true, None) => return None,
        };
        // user-service keeps at most 256 characters without control characters.
        Some(text.chars().filter(|c| !c.is_control()).take(256).collect())
    }

    /// The client IP, when it is a valid address (anything else is dropped:
    /// a bad IP must not make the whole event fail).
    pub fn ip(&self) -> Option<String> {
        let ip = self.latest_activity.as_ref()?.ip_address.as_deref()?;
        ip.parse::<std::net::IpAddr>().ok().map(|_| ip.to_owned())
    }
}

/// A parsed webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The envelope's `type`, verbatim.
    pub event_type: String,
    /// The envelope's `timestamp` (see [`Envelope::timestamp`]).
    pub timestamp: Option<i64>,
    /// The envelope's `instance_id`, for logs.
    pub instance_id: Option<String>,
    /// What the event is about.
    pub payload: Payload,
}

/// The events this gateway acts on; everything else is acknowledged unused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// `user.created`.
    UserCreated(UserJson),
    /// `user.updated`.
    UserUpdated(UserJson),
    /// `user.deleted`.
    UserDeleted(DeletedUserJson),
    /// `session.created`: a login, counted in the user's activity.
    SessionCreated(SessionJson),
    /// `session.ended`, `session.removed`, `session.revoked`: the user was
    /// active until then.
    SessionActivity(SessionJson),
    /// Any other type (sessions, organisations, ...): acknowledged, not applied.
    Unhandled,
}

/// Why a body can never be a valid event. Shown to the sender as
/// `{"error": message, "field": field}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidEvent {
    /// What is wrong, for humans.
    pub message: String,
    /// The JSON path of the offending field, when there is one.
    pub field: Option<&'static str>,
}

impl InvalidEvent {
    fn new(message: impl Into<String>, field: Option<&'static str>) -> Self {
        Self { message: message.into(), field }
    }
}

/// Parses a (verified) webhook body.
pub fn parse_event(body: &[u8]) -> Result<Event, InvalidEvent> {
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| {
        InvalidEvent::new(format!("body is not a JSON event object: {}", crate::error::json_error(&e)), None)
    })?;
    let event_type = envelope
        .event_type
        .filter(|t| !t.is_empty())
        .ok_or_else(|| InvalidEvent::new("missing event type", Some("type")))?;

    let payload = match event_type.as_str() {
        USER_CREATED => Payload::UserCreated(typed_data(envelope.data.as_deref(), "user")?),
        USER_UPDATED => Payload::UserUpdated(typed_data(envelope.data.as_deref(), "user")?),
        USER_DELETED => Payload::UserDeleted(typed_data(envelope.data.as_deref(), "user")?),
        SESSION_CREATED => Payload::SessionCreated(session_data(envelope.data.as_deref())?),
        SESSION_ENDED | SESSION_REMOVED | SESSION_REVOKED => {
            Payload::SessionActivity(session_data(envelope.data.as_deref())?)
        }
        _ => Payload::Unhandled,
    };
    Ok(Event { event_type, timestamp: envelope.timestamp, instance_id: envelope.instance_id, payload })
}

/// A session's `data`: a [`SessionJson`] whose embedded user, if any, is a
/// valid user object about the same user. A bad user object names `data.user`
/// (or `data.user.id`), so the sender sees which part to fix.
fn session_data(data: Option<&RawValue>) -> Result<SessionJson, InvalidEvent> {
    let session: SessionJson = typed_data(data, "session").map_err(|error| {
        let user_fails = data
            .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
            .and_then(|value| value.get("user").filter(|user| !user.is_null()).cloned())
            .is_some_and(|user| serde_json::from_value::<UserJson>(user).is_err());
        if user_fails && error.field == Some("data") {
            InvalidEvent::new(format!("invalid session user: {}", error.message), Some("data.user"))
        } else {
            error
        }
    })?;
    if let Some(user) = &session.user
        && user.id != session.user_id
    {
        return Err(InvalidEvent::new(
            "session user id missing or not the session's user_id",
            Some("data.user.id"),
        ));
    }
    Ok(session)
}

/// An event's `data` object and the field that names whom it is about.
trait Keyed: DeserializeOwned {
    /// The field's name in the JSON.
    const KEY: &'static str;
    /// Its JSON path, for errors.
    const KEY_PATH: &'static str;
    /// Its value.
    fn key(&self) -> &str;
}

impl Keyed for UserJson {
    const KEY: &'static str = "id";
    const KEY_PATH: &'static str = "data.id";
    fn key(&self) -> &str {
        &self.id
    }
}

impl Keyed for DeletedUserJson {
    const KEY: &'static str = "id";
    const KEY_PATH: &'static str = "data.id";
    fn key(&self) -> &str {
        &self.id
    }
}

impl Keyed for SessionJson {
    const KEY: &'static str = "user_id";
    const KEY_PATH: &'static str = "data.user_id";
    fn key(&self) -> &str {
        &self.user_id
    }
}

/// Parses `data` once, straight into `T`; its key field must be a non-empty
/// string. Only a body that fails is looked at again, to name the field.
fn typed_data<T: Keyed>(data: Option<&RawValue>, what: &str) -> Result<T, InvalidEvent> {
    let raw = data
        .map(RawValue::get)
        .filter(|raw| raw.trim() != "null")
        .ok_or_else(|| InvalidEvent::new(format!("{what} event without data"), Some("data")))?;
    let key_error = || {
        InvalidEvent::new(format!("{what} {} missing or not a non-empty string", T::KEY), Some(T::KEY_PATH))
    };
    // serde would also fill a struct from a JSON array, by position: `data`
    // must be an object.
    if !raw.trim_start().starts_with('{') {
        return Err(InvalidEvent::new(format!("{what} event data is not an object"), Some("data")));
    }
    match serde_json::from_str::<T>(raw) {
        Ok(parsed) if !parsed.key().is_empty() => Ok(parsed),
        Ok(_) => Err(key_error()),
        Err(error) => {
            let value: Option<Value> = serde_json::from_str(raw).ok();
            let key_ok = value.as_ref().and_then(|v| v.get(T::KEY)?.as_str()).is_some_and(|k| !k.is_empty());
            if key_ok {
                Err(InvalidEvent::new(
                    format!("invalid {what} data: {}", crate::error::json_error(&error)),
                    Some("data"),
                ))
            } else {
                Err(key_error())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_given_as_an_array_is_refused_naming_data() {
        for event_type in ["user.created", "user.deleted", "session.created"] {
            let body = format!(r#"{{"type":"{event_type}","object":"event","data":["user_1",null,""]}}"#);
            let error = parse_event(body.as_bytes()).err();
            assert_eq!(error.and_then(|e| e.field), Some("data"), "{event_type}");
        }
    }

    // Payloads below are written for these tests, shaped like Clerk's but not
    // copied from any real delivery.

    fn user_event(event_type: &str, data: Value) -> Vec<u8> {
        serde_json::json!({
            "type": event_type,
            "object": "event",
            "timestamp": 1_700_000_000_123_i64,
            "data": data,
        })
        .to_string()
        .into_bytes()
    }

    fn parse_user(data: Value) -> UserJson {
        match parse_event(&user_event(USER_CREATED, data)).map(|e| e.payload) {
            Ok(Payload::UserCreated(user)) => user,
            other => panic!("expected a user.created payload, got {other:?}"),
        }
    }

    #[test]
    fn primary_email_is_the_address_whose_id_matches_not_the_first() {
        let user = parse_user(serde_json::json!({
            "id": "user_a1",
            "primary_email_address_id": "idn_second",
            "email_addresses": [
                {"id": "idn_first", "email_address": "old@example.test"},
                {"id": "idn_second", "email_address": "new@example.test"}
            ]
        }));
        assert_eq!(user.primary_email(), Some("new@example.test"));
    }

    #[test]
    fn primary_id_without_a_matching_address_gives_no_email() {
        let user = parse_user(serde_json::json!({
            "id": "user_a2",
            "primary_email_address_id": "idn_gone",
            "email_addresses": [{"id": "idn_other", "email_address": "x@example.test"}]
        }));
        assert_eq!(user.primary_email(), None);
    }

    #[test]
    fn primary_id_with_an_empty_address_list_gives_no_email() {
        let user = parse_user(serde_json::json!({
            "id": "user_a3",
            "primary_email_address_id": "idn_1",
            "email_addresses": []
        }));
        assert_eq!(user.primary_email(), None);
    }

    #[test]
    fn addresses_without_a_primary_id_give_no_email() {
        let user = parse_user(serde_json::json!({
            "id": "user_a4",
            "primary_email_address_id": null,
            "email_addresses": [{"id": "idn_1", "email_address": "x@example.test"}]
        }));
        assert_eq!(user.primary_email(), None);
    }

    #[test]
    fn a_phone_only_user_has_no_email_and_null_lists_are_fine() {
        let user = parse_user(serde_json::json!({
            "id": "user_phone",
            "primary_email_address_id": null,
            "email_addresses": null,
            "primary_phone_number_id": "idn_phone",
            "phone_numbers": [{"id": "idn_phone", "phone_number": "+15555550100"}],
            "first_name": null,
            "last_name": null
        }));
        assert_eq!(user.profile(), Profile { clerk_id: "user_phone".into(), ..Profile::default() });
    }

    #[test]
    fn empty_and_blank_names_become_none() {
        let user = parse_user(serde_json::json!({
            "id": "user_blank",
            "first_name": "",
            "last_name": "   ",
            "username": "",
            "image_url": ""
        }));
        let profile = user.profile();
        assert_eq!(profile.first_name, None);
        assert_eq!(profile.last_name, None);
        assert_eq!(profile.username, None);
        assert_eq!(profile.image_url, None);
    }

    #[test]
    fn unicode_names_are_kept_verbatim() {
        let user = parse_user(serde_json::json!({
            "id": "user_unicode",
            "first_name": "Zoë Ångström",
            "last_name": "李小龍 🐉",
            "username": "şükrü"
        }));
        let profile = user.profile();
        assert_eq!(profile.first_name.as_deref(), Some("Zoë Ångström"));
        assert_eq!(profile.last_name.as_deref(), Some("李小龍 🐉"));
        assert_eq!(profile.username.as_deref(), Some("şükrü"));
    }

    #[test]
    fn unknown_fields_everywhere_are_ignored() {
        let body = serde_json::json!({
            "type": "user.updated",
            "object": "event",
            "instance_id": "ins_test",
            "brand_new_envelope_field": {"nested": [1, 2, 3]},
            "event_attributes": {"http_request": {"client_ip": "", "user_agent": "test"}},
            "data": {
                "id": "user_extra",
                "object": "user",
                "public_metadata": {"plan": "pro"},
                "private_metadata": null,
                "passkeys": [],
                "updated_at": 1_700_000_000_999_i64,
                "email_addresses": [{
                    "id": "idn_1",
                    "email_address": "e@example.test",
                    "verification": null,
                    "reserved": true,
                    "linked_to": []
                }],
                "primary_email_address_id": "idn_1"
            }
        })
        .to_string();
        let event = parse_event(body.as_bytes());
        let Ok(Event { payload: Payload::UserUpdated(user), instance_id, .. }) = event else {
            panic!("expected user.updated, got {event:?}");
        };
        assert_eq!(instance_id.as_deref(), Some("ins_test"));
        assert_eq!(user.updated_at, Some(1_700_000_000_999));
        assert_eq!(user.primary_email(), Some("e@example.test"));
    }

    #[test]
    fn a_deleted_user_needs_only_its_id() {
        let body = user_event(
            USER_DELETED,
            serde_json::json!({"id": "user_del", "deleted": true, "object": "user"}),
        );
        let event = parse_event(&body);
        assert!(
            matches!(&event, Ok(Event { payload: Payload::UserDeleted(d), timestamp: Some(_), .. }) if d.id == "user_del"),
            "{event:?}"
        );
    }

    #[test]
    fn a_user_event_without_data_names_the_data_field() {
        let body = br#"{"type":"user.created","object":"event"}"#;
        assert_eq!(parse_event(body).err().and_then(|e| e.field), Some("data"));
        let body = br#"{"type":"user.created","data":null}"#;
        assert_eq!(parse_event(body).err().and_then(|e| e.field), Some("data"));
    }

    #[test]
    fn a_user_event_without_an_id_names_data_id() {
        for data in [
            serde_json::json!({"first_name": "No Id"}),
            serde_json::json!({"id": ""}),
            serde_json::json!({"id": 42}),
        ] {
            let error = parse_event(&user_event(USER_UPDATED, data)).err();
            assert_eq!(error.and_then(|e| e.field), Some("data.id"));
        }
        let error = parse_event(&user_event(USER_DELETED, serde_json::json!({"deleted": true})));
        assert_eq!(error.err().and_then(|e| e.field), Some("data.id"));
    }

    #[test]
    fn a_mistyped_user_field_is_invalid_data() {
        let error =
            parse_event(&user_event(USER_CREATED, serde_json::json!({"id": "user_x", "first_name": 7})));
        assert_eq!(error.err().and_then(|e| e.field), Some("data"));
    }

    #[test]
    fn a_missing_type_names_the_type_field() {
        let error = parse_event(br#"{"object":"event","data":{"id":"user_x"}}"#);
        assert_eq!(error.err().and_then(|e| e.field), Some("type"));
    }

    #[test]
    fn non_json_and_non_object_bodies_are_invalid() {
        for body in [&b"not json"[..], b"[1,2]", b"\"user.created\"", b""] {
            let error = parse_event(body);
            assert!(matches!(error, Err(InvalidEvent { field: None, .. })), "{error:?}");
        }
    }

    #[test]
    fn other_event_types_are_unhandled_without_looking_at_data() {
        let body = br#"{"type":"organization.created","data":{"weird":true}}"#;
        assert!(matches!(parse_event(body), Ok(Event { payload: Payload::Unhandled, .. })));
    }

    fn session_event(data: Value) -> Result<Payload, InvalidEvent> {
        let body = serde_json::json!({"type": "session.created", "timestamp": 1, "data": data}).to_string();
        parse_event(body.as_bytes()).map(|event| event.payload)
    }

    #[test]
    fn a_session_carrying_its_user_parses_the_user_like_user_created() {
        let payload = session_event(serde_json::json!({
            "id": "sess_1", "user_id": "user_s1",
            "user": {
                "id": "user_s1", "first_name": "Zoë", "last_name": null,
                "primary_email_address_id": "idn_2",
                "email_addresses": [
                    {"id": "idn_1", "email_address": "one@example.test"},
                    {"id": "idn_2", "email_address": "two@example.test"}
                ],
                "updated_at": 1_760_000_000_000_i64
            }
        }));
        let Ok(Payload::SessionCreated(SessionJson { user: Some(user), .. })) = payload else {
            panic!("expected a session with its user, got {payload:?}");
        };
        assert_eq!(user.primary_email(), Some("two@example.test"));
        assert_eq!(user.profile().first_name.as_deref(), Some("Zoë"));
        assert_eq!(user.updated_at, Some(1_760_000_000_000));
    }

    #[test]
    fn a_null_session_user_is_no_user() {
        let payload = session_event(serde_json::json!({"id": "sess_1", "user_id": "user_s1", "user": null}));
        assert!(
            matches!(payload, Ok(Payload::SessionCreated(SessionJson { user: None, .. }))),
            "{payload:?}"
        );
    }

    #[test]
    fn a_session_user_about_someone_else_names_data_user_id() {
        let payload = session_event(serde_json::json!({"user_id": "user_s1", "user": {"id": "user_other"}}));
        assert_eq!(payload.err().and_then(|e| e.field), Some("data.user.id"));
    }

    #[test]
    fn a_malformed_session_user_names_data_user() {
        for user in [
            serde_json::json!({"first_name": "no id"}),
            serde_json::json!("user_s1"),
            serde_json::json!({"id": "user_s1", "first_name": 7}),
        ] {
            let payload = session_event(serde_json::json!({"user_id": "user_s1", "user": user}));
            assert_eq!(payload.err().and_then(|e| e.field), Some("data.user"), "{user}");
        }
    }

    #[test]
    fn a_session_event_needs_a_user_id() {
        let body = serde_json::json!({"type": "session.created", "data": {"id": "sess_1"}}).to_string();
        let error = parse_event(body.as_bytes()).err();
        assert_eq!(error.and_then(|e| e.field), Some("data.user_id"));
        let body =
            serde_json::json!({"type": "session.ended", "data": {"id": "sess_1", "user_id": "user_1"}})
                .to_string();
        assert!(matches!(parse_event(body.as_bytes()).map(|e| e.payload), Ok(Payload::SessionActivity(_))));
    }
}
