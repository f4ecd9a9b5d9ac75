//! Per-user key/value data: the documented keys of the original plan's
//! `UserDataValues`, each with a typed schema, plus free-form custom keys.
//!
//! Every write of a documented key, typed or generic, goes through
//! [`validate`], so the generic RPCs can never store a value that the typed
//! RPCs would reject.

pub mod activity;
pub mod flags;
pub mod history;
pub mod onboarding;
pub mod preferences;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{
    keys::{self, DataKey},
    limits::{MAX_CUSTOM_KEYS, MAX_VALUE_BYTES, MAX_VALUE_DEPTH},
    time::parse_time,
    user::{SignupSource, etag_for},
};
use crate::domain::error::{Error, Result};

/// Checks a value for `key`: size and depth limits for every key, and the
/// typed schema for documented keys.
pub fn validate(key: &str, value: &Value) -> Result<(), String> {
    let depth = depth(value);
    if depth > MAX_VALUE_DEPTH {
        return Err(format!("is nested {depth} deep; at most {MAX_VALUE_DEPTH} is allowed"));
    }
    let size = serde_json::to_vec(value).map_or(usize::MAX, |v| v.len());
    if size > MAX_VALUE_BYTES {
        return Err(format!("is {size} bytes as JSON; at most {MAX_VALUE_BYTES} are allowed"));
    }
    match key {
        keys::PREFERENCES => shape::<preferences::PreferencesValue>(value)?.validate(),
        keys::FEATURE_FLAGS => flags::validate_map(value),
        keys::ONBOARDING_STATUS => shape::<onboarding::OnboardingValue>(value)?.validate(),
        keys::SESSION_COUNT => match value.as_u64() {
            Some(_) => Ok(()),
            None => Err("must be a non-negative integer".into()),
        },
        keys::LAST_ACTIVE | keys::LAST_CLERK_SYNC | keys::SIGNUP_DATE => {
            shape::<String>(value).and_then(|s| parse_time(&s).map(|_| ()))
        }
        keys::LOGIN_HISTORY => activity::validate_history(value),
        keys::NAME_HISTORY => history::validate_names(value),
        keys::SIGNUP_SOURCE => match value.as_str().and_then(SignupSource::parse) {
            Some(_) => Ok(()),
            None => Err("must be \"clerk\", \"invite\" or \"admin\"".into()),
        },
        _ => Ok(()),
    }
}

/// Deserialises a documented value, naming what is wrong.
pub fn shape<T: DeserializeOwned>(value: &Value) -> Result<T, String> {
    serde_json::from_value(value.clone())
        .map_err(|e| format!("does not match the documented shape: {}", userdata_kit::json_error::reason(&e)))
}

fn depth(value: &Value) -> usize {
    // Iterative, so a hostile value cannot overflow the stack.
    let mut deepest = 0;
    let mut stack = vec![(value, 1)];
    while let Some((v, d)) = stack.pop() {
        deepest = deepest.max(d);
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|i| (i, d + 1))),
            Value::Object(map) => stack.extend(map.values().map(|i| (i, d + 1))),
            _ => {}
        }
    }
    deepest
}

/// One stored user data row.
#[derive(Debug, Clone, PartialEq)]
pub struct DataEntry {
    /// The key.
    pub key: String,
    /// The JSON value.
    pub value: Value,
    /// Bumped on every change.
    pub version: i64,
    /// When the value last changed.
    pub updated_at: DateTime<Utc>,
}

/// The values one data edit reads and changes, inside its transaction.
#[derive(Debug)]
pub struct DataSet {
    current: BTreeMap<String, DataEntry>,
    changes: BTreeMap<String, Option<Value>>,
    custom_keys: Option<u64>,
}

impl DataSet {
    /// The values as loaded, by key.
    pub fn new(current: impl IntoIterator<Item = DataEntry>) -> Self {
        Self {
            current: current.into_iter().map(|e| (e.key.clone(), e)).collect(),
            changes: BTreeMap::new(),
            custom_keys: None,
        }
    }

    /// Records how many `custom.*` keys the user has in the database (the
    /// store counts them when an edit touches a custom key).
    pub fn set_custom_key_count(&mut self, count: u64) {
        self.custom_keys = Some(count);
    }

    /// The value of `key`, including changes made so far.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self.changes.get(key) {
            Some(change) => change.as_ref(),
            None => self.current.get(key).map(|e| &e.value),
        }
    }

    /// The stored entry of `key` as loaded (for its version).
    pub fn stored(&self, key: &str) -> Option<&DataEntry> {
        self.current.get(key)
    }

    /// Sets `key`; unchanged values are not written.
    pub fn put(&mut self, key: &str, value: Value) {
        if self.current.get(key).map(|e| &e.value) == Some(&value) {
            self.changes.remove(key);
        } else {
            self.changes.insert(key.to_owned(), Some(value));
        }
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &str) {
        if self.current.contains_key(key) {
            self.changes.insert(key.to_owned(), None);
        } else {
            self.changes.remove(key);
        }
    }

    /// The changes to write: `None` deletes.
    pub fn into_changes(self) -> (BTreeMap<String, DataEntry>, BTreeMap<String, Option<Value>>) {
        (self.current, self.changes)
    }
}

/// Fails with `ABORTED` unless the stored value of `key` is at `expected`
/// (when the caller named a version).
pub fn check_version(set: &DataSet, key: &str, expected: Option<i64>) -> Result<()> {
    let current = set.stored(key).map(|e| e.version);
    match expected {
        Some(v) if current != Some(v) => Err(Error::EtagMismatch {
            resource: "user data",
            current: current.map_or_else(|| "none (the key is unset)".into(), etag_for),
        }),
        _ => Ok(()),
    }
}

/// Validates and stores a value for `key`, naming `field` on failure.
pub fn put_valid(set: &mut DataSet, field: &str, key: &str, value: Value) -> Result<()> {
    validate(key, &value).map_err(|reason| Error::invalid(field, reason))?;
    set.put(key, value);
    Ok(())
}

/// Sets any key through the generic API: same validation as the typed RPCs,
/// and a new custom key only below [`MAX_CUSTOM_KEYS`].
pub fn set_value(set: &mut DataSet, key: &DataKey, value: Value, expected: Option<i64>) -> Result<()> {
    let key = key.as_str();
    check_version(set, key, expected)?;
    let new_custom = key.starts_with(keys::CUSTOM_PREFIX) && set.stored(key).is_none();
    if new_custom && set.custom_keys.is_some_and(|count| count >= MAX_CUSTOM_KEYS) {
        return Err(Error::FailedPrecondition(format!(
            "the user already has {MAX_CUSTOM_KEYS} custom keys, the most allowed; delete one first"
        )));
    }
    put_valid(set, "value", key, value)
}

/// Deletes a key through the generic API; `NOT_FOUND` when it is unset.
pub fn delete_value(set: &mut DataSet, key: &DataKey, expected: Option<i64>) -> Result<()> {
    let key = key.as_str();
    if set.stored(key).is_none() {
        return Err(Error::NotFound { resource: "user data", key: format!("key {key:?}") });
    }
    check_version(set, key, expected)?;
    set.remove(key);
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn documented_values_must_match_their_schema() {
        assert!(validate("session_count", &json!(3)).is_ok());
        assert!(validate("session_count", &json!(-1)).is_err());
        assert!(validate("session_count", &json!("3")).is_err());
        assert!(validate("last_active", &json!("2026-01-01T00:00:00Z")).is_ok());
        assert!(validate("last_active", &json!("yesterday")).is_err());
        assert!(validate("signup_source", &json!("admin")).is_ok());
        assert!(validate("signup_source", &json!("web")).is_err());
        assert!(validate("custom.anything", &json!({"a": [1, 2, {"b": null}]})).is_ok());
    }

    #[test]
    fn values_have_size_and_depth_limits() {
        let mut deep = json!(1);
        for _ in 0..40 {
            deep = json!([deep]);
        }
        assert!(validate("custom.deep", &deep).is_err());
        assert!(validate("custom.big", &json!("x".repeat(MAX_VALUE_BYTES))).is_err());
    }
}
