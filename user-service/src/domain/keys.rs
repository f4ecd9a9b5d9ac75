//! The documented `user_data` keys (the original plan's `UserDataValues`)
//! and the namespace callers may use freely. One list, shared by the user
//! writes, the typed data rules and the generic key/value RPCs, and
//! [`DataKey`], a key parsed once at the edge.

use super::limits::MAX_KEY_LEN;

/// ISO-8601 time the user was created here.
pub const SIGNUP_DATE: &str = "signup_date";
/// `clerk`, `invite` or `admin`.
pub const SIGNUP_SOURCE: &str = "signup_source";
/// ISO-8601 time of the last write driven by a Clerk event.
pub const LAST_CLERK_SYNC: &str = "last_clerk_sync";
/// Array of `{first_name, last_name, timestamp, changed_by?, claimed_by?}`.
pub const NAME_HISTORY: &str = "name_history";
/// `{theme, notifications, language, timezone}`.
pub const PREFERENCES: &str = "preferences";
/// `{flag_key: bool}`.
pub const FEATURE_FLAGS: &str = "feature_flags";
/// `{step, completed, started_at, completed_at?}`.
pub const ONBOARDING_STATUS: &str = "onboarding_status";
/// Number of sessions.
pub const SESSION_COUNT: &str = "session_count";
/// ISO-8601 time of the latest activity.
pub const LAST_ACTIVE: &str = "last_active";
/// Array of `{timestamp, device?, ip?, success}`, newest first.
pub const LOGIN_HISTORY: &str = "login_history";

/// Prefix of keys that callers may define freely.
pub const CUSTOM_PREFIX: &str = "custom.";
/// Every documented key, in the original plan's order.
pub const DOCUMENTED_KEYS: [&str; 10] = [
    PREFERENCES,
    FEATURE_FLAGS,
    ONBOARDING_STATUS,
    SESSION_COUNT,
    LAST_ACTIVE,
    LOGIN_HISTORY,
    NAME_HISTORY,
    LAST_CLERK_SYNC,
    SIGNUP_DATE,
    SIGNUP_SOURCE,
];

/// Documented keys the service keeps itself. The generic key/value RPCs
/// refuse to write them; each has its own RPC.
pub const SYSTEM_KEYS: [(&str, &str); 7] = [
    (SESSION_COUNT, "RecordLogin"),
    (LAST_ACTIVE, "RecordLogin or RecordActivity"),
    (LOGIN_HISTORY, "RecordLogin"),
    (NAME_HISTORY, "UpdateUser"),
    (LAST_CLERK_SYNC, "the Clerk webhooks (CreateUser or UpdateUser with an event context)"),
    (SIGNUP_DATE, "CreateUser"),
    (SIGNUP_SOURCE, "CreateUser"),
];

/// A `user_data` key, parsed once at the edge: a documented key, or
/// `custom.<name>` where the name is 1 or more of `a-z`, `0-9`, `_`, `-`,
/// `.`, and the whole key is at most [`MAX_KEY_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DataKey(String);

impl DataKey {
    /// Parses a key; the reason names the rule, never the value.
    pub fn parse(key: &str) -> Result<Self, String> {
        if key.is_empty() {
            return Err("is required".into());
        }
        if DOCUMENTED_KEYS.contains(&key) {
            return Ok(Self(key.to_owned()));
        }
        let Some(name) = key.strip_prefix(CUSTOM_PREFIX) else {
            return Err(format!(
                "must be a documented key ({}) or start with {CUSTOM_PREFIX:?}",
                DOCUMENTED_KEYS.join(", ")
            ));
        };
        if key.len() > MAX_KEY_LEN {
            return Err(format!("must be at most {MAX_KEY_LEN} bytes"));
        }
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err(format!("custom keys are {CUSTOM_PREFIX:?} followed by a-z, 0-9, '_', '-' or '.'"));
        }
        Ok(Self(key.to_owned()))
    }

    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key as stored, owned (for the store's queries).
    pub fn into_inner(self) -> String {
        self.0
    }
}

/// Checks that the generic key/value RPCs may write `key`: every key but
/// the [`SYSTEM_KEYS`].
pub fn check_generic_write(key: &DataKey) -> Result<(), String> {
    match SYSTEM_KEYS.iter().find(|(system, _)| *system == key.as_str()) {
        Some((_, rpc)) => {
            Err(format!("{:?} is kept by the service; it changes only through {rpc}", key.as_str()))
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_documented_or_custom() {
        assert!(DataKey::parse("preferences").is_ok());
        assert!(DataKey::parse("custom.theme-v2").is_ok());
        for bad in
            ["", "custom.", "custom.Upper", "other", "custom.a b", &format!("custom.{}", "a".repeat(130))]
        {
            assert!(DataKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn system_kept_keys_are_not_generic_writes() {
        for (key, _) in SYSTEM_KEYS {
            assert!(check_generic_write(&DataKey::parse(key).unwrap()).is_err(), "{key}");
        }
        for key in ["preferences", "feature_flags", "onboarding_status", "custom.x"] {
            assert!(check_generic_write(&DataKey::parse(key).unwrap()).is_ok(), "{key}");
        }
    }
}
