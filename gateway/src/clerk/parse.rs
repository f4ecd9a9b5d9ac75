//! From a verified body to an [`Event`]: strict only where an event could
//! never be applied.

use serde::de::DeserializeOwned;
use serde_json::{Value, value::RawValue};
use userdata_kit::json_error;

use super::*;

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
        InvalidEvent::new(format!("body is not a JSON event object: {}", json_error::reason(&e)), None)
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
                    format!("invalid {what} data: {}", json_error::reason(&error)),
                    Some("data"),
                ))
            } else {
                Err(key_error())
            }
        }
    }
}
