//! The JSON Clerk sends: the envelope and the user and session objects, as
//! deserialised (lenient: unknown fields ignored, optional fields optional).

use serde::Deserialize;
use serde_json::value::RawValue;

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
    /// Clerk user id (`user_...`); [`super::parse_event`] guarantees it is non-empty.
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
    /// Clerk user id; [`super::parse_event`] guarantees it is non-empty.
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
    /// The Clerk user id; [`super::parse_event`] guarantees it is non-empty.
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
    /// [`super::parse_event`] guarantees its `id` is `user_id`.
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
