//! `feature_flags`: `{flag_key: bool}`.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{DataSet, check_version, put_valid};
use crate::domain::error::{Error, Result};
use crate::domain::{
    keys::FEATURE_FLAGS,
    limits::{MAX_FLAG_KEY_LEN, MAX_FLAGS},
    user::truncate,
};

/// The stored flags, in key order.
pub type Flags = BTreeMap<String, bool>;

/// Checks a flag key: 1 to 64 characters from `a-z`, `0-9`, `_`, `-`, `.`,
/// starting with a letter (e.g. `beta_features`, `checkout.v2`).
pub fn parse_flag_key(key: &str) -> Result<String, String> {
    let valid = key.len() <= MAX_FLAG_KEY_LEN
        && key.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.'));
    if valid {
        Ok(key.to_owned())
    } else {
        Err(format!(
            "{:?} is not a flag key: 1 to {MAX_FLAG_KEY_LEN} of a-z, 0-9, '_', '-', '.', starting with a letter",
            truncate(key)
        ))
    }
}

/// Checks a stored `feature_flags` value.
pub fn validate_map(value: &Value) -> Result<(), String> {
    let map = value.as_object().ok_or("must be an object of flag keys to booleans")?;
    if map.len() > MAX_FLAGS {
        return Err(format!("has {} flags; at most {MAX_FLAGS} are allowed", map.len()));
    }
    for (key, enabled) in map {
        parse_flag_key(key)?;
        if !enabled.is_boolean() {
            return Err(format!("flag {key:?} must be true or false"));
        }
    }
    Ok(())
}

/// Reads stored flags (an absent value means none).
pub fn from_value(value: Option<&Value>) -> Flags {
    value
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_bool()?))).collect())
        .unwrap_or_default()
}

/// Sets and clears flags; fails when the result would exceed [`MAX_FLAGS`].
pub fn apply(mut flags: Flags, set: &Flags, clear: &[String]) -> Result<Flags, String> {
    for key in clear {
        flags.remove(key);
    }
    flags.extend(set.iter().map(|(k, v)| (k.clone(), *v)));
    if flags.len() > MAX_FLAGS {
        return Err(format!("would give the user {} flags; at most {MAX_FLAGS} are allowed", flags.len()));
    }
    Ok(flags)
}

/// The stored JSON of a flag map.
pub fn to_value(flags: &Flags) -> Value {
    Value::Object(flags.iter().map(|(k, v)| (k.clone(), Value::Bool(*v))).collect())
}

/// Sets and clears flags in the stored map.
pub fn update(set: &mut DataSet, changes: &Flags, clear: &[String], expected: Option<i64>) -> Result<()> {
    check_version(set, FEATURE_FLAGS, expected)?;
    let flags =
        apply(from_value(set.get(FEATURE_FLAGS)), changes, clear).map_err(|e| Error::invalid("set", e))?;
    if flags.is_empty() {
        set.remove(FEATURE_FLAGS);
        Ok(())
    } else {
        put_valid(set, "set", FEATURE_FLAGS, to_value(&flags))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn flag_keys_follow_the_documented_syntax() {
        for ok in ["beta_features", "checkout.v2", "a", "new-ui"] {
            assert!(parse_flag_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Beta", "1st", "_x", "a b", &"a".repeat(65)] {
            assert!(parse_flag_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stored_flags_must_be_booleans() {
        assert!(validate_map(&json!({"beta": true})).is_ok());
        assert!(validate_map(&json!({"beta": 1})).is_err());
        assert!(validate_map(&json!(["beta"])).is_err());
        assert!(validate_map(&json!({"Bad Key": true})).is_err());
    }
}
