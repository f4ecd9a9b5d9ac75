//! `name_history` and the sign-up and sync keys.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::shape;
use crate::domain::{limits::NAME_HISTORY_LIMIT, time::parse_time};

/// One stored name change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameEntry {
    /// First name after the change.
    pub first_name: String,
    /// Last name after the change.
    pub last_name: String,
    /// ISO-8601 time.
    pub timestamp: String,
    /// Who made the change: the authenticated caller (`Principal::actor`).
    /// Entries written before callers were recorded hold the claimed admin's
    /// Clerk id here, or nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_by: Option<String>,
    /// The admin the caller said made the change (`UpdateUserRequest.changed_by`),
    /// as claimed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
}

/// Checks a stored `name_history`.
pub fn validate_names(value: &Value) -> Result<(), String> {
    let entries: Vec<NameEntry> = shape(value)?;
    if entries.len() > NAME_HISTORY_LIMIT {
        return Err(format!("has more than {NAME_HISTORY_LIMIT} entries"));
    }
    entries.iter().try_for_each(|e| parse_time(&e.timestamp).map(|_| ()))
}
