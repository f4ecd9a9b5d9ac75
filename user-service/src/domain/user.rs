//! The user resource and the rules for its fields.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    limits::{MAX_CLERK_ID_LEN, MAX_EMAIL_LEN, MAX_NAME_LEN, MAX_URL_LEN},
    validation::{no_control_chars, text},
};

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Server-made UUIDv7.
    pub id: Uuid,
    /// Clerk's user id; unique.
    pub clerk_id: String,
    /// Clerk-owned profile fields.
    #[serde(flatten)]
    pub profile: Profile,
    /// Application role.
    pub role: Role,
    /// Application status.
    pub status: Status,
    /// When the row was created here.
    pub created_at: DateTime<Utc>,
    /// When the row last changed here.
    pub updated_at: DateTime<Utc>,
    /// Clerk's `updated_at` (ms) of the newest applied event, if any.
    pub source_updated_at: Option<i64>,
    /// Bumped on every change; the etag is made from it.
    pub version: i64,
}

impl User {
    /// The AIP-154 etag of this version of the user.
    pub fn etag(&self) -> String {
        etag_for(self.version)
    }
}

/// The etag (a quoted string, as in RFC 7232) for a row version.
pub fn etag_for(version: i64) -> String {
    format!("\"{version}\"")
}

/// Parses an etag made by [`etag_for`] back into a row version.
pub fn parse_etag(etag: &str) -> Result<i64, String> {
    let inner = etag.strip_prefix("W/").unwrap_or(etag);
    inner
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|v| *v > 0)
        .ok_or_else(|| "must be an etag returned by this service, e.g. \"3\" (with the quotes)".to_string())
}

/// The profile fields that Clerk owns; webhook events overwrite exactly these.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Primary email address.
    pub email: Option<String>,
    /// Given name.
    pub first_name: Option<String>,
    /// Family name.
    pub last_name: Option<String>,
    /// Clerk username.
    pub username: Option<String>,
    /// Profile image URL.
    pub image_url: Option<String>,
}

/// A user's role in this application.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A regular user.
    #[default]
    User,
    /// An administrator.
    Admin,
}

/// Whether a user may use this application.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// May use the application.
    #[default]
    Active,
    /// Temporarily locked out.
    Suspended,
    /// Locked out for good.
    Banned,
}

macro_rules! text_enum {
    ($ty:ty { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// The value as stored in the database.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }

            /// Parses a stored value.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some(Self::$variant),)+ _ => None }
            }
        }
    };
}

text_enum!(Role { User => "user", Admin => "admin" });
text_enum!(Status { Active => "active", Suspended => "suspended", Banned => "banned" });

/// Where an account came from (`signup_source` user data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignupSource {
    /// Self sign-up through Clerk.
    Clerk,
    /// Accepted an invitation.
    Invite,
    /// Created by an administrator.
    Admin,
}

text_enum!(SignupSource { Clerk => "clerk", Invite => "invite", Admin => "admin" });

/// How a caller names one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserKey {
    /// By our id.
    Id(Uuid),
    /// By Clerk's id.
    ClerkId(String),
}

impl std::fmt::Display for UserKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Id(id) => write!(f, "id {id}"),
            Self::ClerkId(clerk_id) => write!(f, "clerk_id {clerk_id:?}"),
        }
    }
}

impl From<ClerkId> for UserKey {
    fn from(clerk_id: ClerkId) -> Self {
        Self::ClerkId(clerk_id.into_inner())
    }
}

/// A Clerk user id, parsed once at the edge: 1 to 128 ASCII letters,
/// digits, `_` or `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClerkId(String);

impl ClerkId {
    /// Parses a Clerk id; the reason names the rule, never the value.
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.is_empty() {
            return Err("is required".into());
        }
        if value.len() > MAX_CLERK_ID_LEN {
            return Err(format!("must be at most {MAX_CLERK_ID_LEN} characters"));
        }
        if !value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err("may contain only ASCII letters, digits, '_' and '-'".into());
        }
        Ok(Self(value.to_owned()))
    }

    /// The id as Clerk spells it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as Clerk spells it, owned (for the stored row).
    pub fn into_inner(self) -> String {
        self.0
    }
}

/// Parses a user id: a UUID in any standard textual form.
pub fn parse_user_id(value: &str) -> Result<Uuid, String> {
    if value.is_empty() {
        return Err("is required".into());
    }
    Uuid::parse_str(value).map_err(|_| "must be a UUID".to_owned())
}

/// An email address, parsed once at the edge: one `@` with a non-empty
/// local part and a dotless or dotted domain, no whitespace or control
/// characters, at most 320 bytes. Deliberately lenient beyond that: Clerk
/// has already verified addresses. Its `Debug` hides the address, which is
/// personal.
#[derive(Clone, PartialEq, Eq)]
pub struct Email(String);

impl std::fmt::Debug for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Email(…)")
    }
}

impl Email {
    /// Parses an address; the reason names the rule, never the value.
    pub fn parse(value: &str) -> Result<Self, String> {
        parse_email(value).map(|()| Self(value.to_owned()))
    }

    /// The address as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The address as given, owned (for the stored profile).
    pub fn into_inner(self) -> String {
        self.0
    }
}

fn parse_email(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty (leave it unset instead)".into());
    }
    if value.len() > MAX_EMAIL_LEN {
        return Err(format!("must be at most {MAX_EMAIL_LEN} bytes"));
    }
    no_control_chars(value)?;
    if value.chars().any(char::is_whitespace) {
        return Err("must not contain whitespace".into());
    }
    match value.rsplit_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !domain.starts_with('.')
                && !domain.ends_with('.') =>
        {
            Ok(())
        }
        _ => Err("must be an email address like name@example.com".into()),
    }
}

/// Checks a name or username.
pub fn parse_name(value: &str) -> Result<String, String> {
    text(value, MAX_NAME_LEN).map(|()| value.to_owned())
}

/// Checks an image URL: `http://` or `https://`, no whitespace.
pub fn parse_image_url(value: &str) -> Result<String, String> {
    if value.len() > MAX_URL_LEN {
        return Err(format!("must be at most {MAX_URL_LEN} bytes"));
    }
    no_control_chars(value)?;
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
        .ok_or_else(|| "must be an http:// or https:// URL".to_string())?;
    if rest.is_empty() || value.chars().any(char::is_whitespace) {
        return Err("must be an http:// or https:// URL without whitespace".into());
    }
    Ok(value.to_owned())
}

/// Shortens a bad value for an error message, so a huge input does not make a
/// huge error.
pub fn truncate(value: &str) -> String {
    const MAX: usize = 64;
    match value.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &value[..i]),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clerk_ids_are_ascii_words() {
        assert!(ClerkId::parse("user_29w83sxmDNGwOuEthce5gg56FcC").is_ok());
        assert!(ClerkId::parse("").is_err());
        assert!(ClerkId::parse("user 1").is_err());
        assert!(ClerkId::parse("usér").is_err());
        assert!(ClerkId::parse(&"a".repeat(129)).is_err());
    }

    #[test]
    fn invalid_emails_and_ids_are_refused_without_echoing_the_value() {
        for (bad, reason) in [
            (Email::parse("grace.hopper@"), "must be an email address like name@example.com"),
            (Email::parse("grace hopper@example.org"), "must not contain whitespace"),
        ] {
            assert_eq!(bad, Err(reason.to_owned()));
        }
        assert_eq!(parse_user_id("grace.hopper"), Err("must be a UUID".to_owned()));
    }

    #[test]
    fn emails_need_one_local_part_and_a_domain() {
        assert!(Email::parse("example@example.org").is_ok());
        assert!(Email::parse("zoë@exämple.de").is_ok());
        assert_eq!(format!("{:?}", Email::parse("ada@example.org").unwrap()), "Email(…)");
        for bad in ["", "plain", "@example.org", "a@", "a@.org", "a b@example.org", "a@b\u{7}c"] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn etags_round_trip_and_reject_garbage() {
        assert_eq!(parse_etag(&etag_for(7)), Ok(7));
        assert_eq!(parse_etag("W/\"7\""), Ok(7));
        for bad in ["7", "\"x\"", "\"-1\"", "", "\""] {
            assert!(parse_etag(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn image_urls_must_be_http() {
        assert!(parse_image_url("https://img.clerk.com/abc").is_ok());
        assert!(parse_image_url("ftp://x").is_err());
        assert!(parse_image_url("https://").is_err());
        assert!(parse_image_url("javascript:alert(1)").is_err());
    }

    #[test]
    fn truncate_keeps_short_values_and_cuts_long_ones_on_char_boundaries() {
        assert_eq!(truncate("abc"), "abc");
        let long = "é".repeat(100);
        assert_eq!(truncate(&long).chars().count(), 65);
    }
}
