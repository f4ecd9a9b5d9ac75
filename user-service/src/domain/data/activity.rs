//! `session_count`, `last_active` and `login_history`.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{DataSet, put_valid, shape};
use crate::domain::{
    error::Result,
    keys::{LAST_ACTIVE, LOGIN_HISTORY, SESSION_COUNT},
    limits::{LOGIN_HISTORY_LIMIT, MAX_DEVICE_LEN},
    time::{iso, parse_time},
    validation::no_control_chars,
};

/// One stored login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginEntry {
    /// ISO-8601 time.
    pub timestamp: String,
    /// Device or user agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Client IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Whether it succeeded.
    pub success: bool,
}

impl LoginEntry {
    fn validate(&self) -> Result<(), String> {
        parse_time(&self.timestamp)?;
        if let Some(device) = &self.device {
            parse_device(device)?;
        }
        if let Some(ip) = &self.ip {
            parse_ip(ip)?;
        }
        Ok(())
    }

    fn time(&self) -> DateTime<Utc> {
        parse_time(&self.timestamp).unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

/// Checks a device description.
pub fn parse_device(device: &str) -> Result<String, String> {
    crate::domain::validation::text(device, MAX_DEVICE_LEN).map(|()| device.to_owned())
}

/// Checks an IP address (v4 or v6).
pub fn parse_ip(ip: &str) -> Result<String, String> {
    no_control_chars(ip)?;
    ip.parse::<IpAddr>().map(|_| ip.to_owned()).map_err(|_| "must be an IP address".to_owned())
}

/// Checks a stored `login_history`.
pub fn validate_history(value: &Value) -> Result<(), String> {
    let entries: Vec<LoginEntry> = shape(value)?;
    if entries.len() > LOGIN_HISTORY_LIMIT {
        return Err(format!("has {} entries; at most {LOGIN_HISTORY_LIMIT} are kept", entries.len()));
    }
    entries.iter().try_for_each(LoginEntry::validate)
}

/// The stored activity keys, read together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActivityValue {
    /// Sessions counted.
    pub session_count: u64,
    /// Latest activity.
    pub last_active: Option<DateTime<Utc>>,
    /// Newest first.
    pub login_history: Vec<LoginEntry>,
}

impl ActivityValue {
    /// Reads the three stored values (any may be absent).
    pub fn from_values(count: Option<&Value>, last: Option<&Value>, history: Option<&Value>) -> Self {
        Self {
            session_count: count.and_then(Value::as_u64).unwrap_or(0),
            last_active: last.and_then(Value::as_str).and_then(|t| parse_time(t).ok()),
            login_history: history.and_then(|h| serde_json::from_value(h.clone()).ok()).unwrap_or_default(),
        }
    }

    /// Records a login: always in the history, and a successful one counts a
    /// session and is activity. Keeping the history sorted by time makes the
    /// result the same whatever order logins arrive in.
    pub fn record_login(&mut self, entry: LoginEntry) {
        let at = entry.time();
        if entry.success {
            self.session_count += 1;
            self.touch(at);
        }
        self.login_history.push(entry);
        self.login_history.sort_by_key(|e| std::cmp::Reverse(e.time()));
        self.login_history.truncate(LOGIN_HISTORY_LIMIT);
    }

    /// Records activity; `last_active` only moves forward.
    pub fn touch(&mut self, at: DateTime<Utc>) {
        if self.last_active.is_none_or(|last| at > last) {
            self.last_active = Some(at);
        }
    }

    /// The three values to store.
    pub fn to_values(&self) -> [(&'static str, Option<Value>); 3] {
        [
            (SESSION_COUNT, Some(Value::from(self.session_count))),
            (LAST_ACTIVE, self.last_active.map(|t| Value::from(iso(t)))),
            (LOGIN_HISTORY, Some(serde_json::to_value(&self.login_history).unwrap_or_default())),
        ]
    }
}

/// The keys an activity edit reads and writes.
pub const KEYS: [&str; 3] = [SESSION_COUNT, LAST_ACTIVE, LOGIN_HISTORY];

/// Reads the activity keys of a data set.
pub fn read(set: &DataSet) -> ActivityValue {
    ActivityValue::from_values(set.get(SESSION_COUNT), set.get(LAST_ACTIVE), set.get(LOGIN_HISTORY))
}

/// Reads activity and stores it back after `change`.
pub fn update(set: &mut DataSet, change: impl FnOnce(&mut ActivityValue)) -> Result<()> {
    let mut activity = read(set);
    change(&mut activity);
    for (key, value) in activity.to_values() {
        match value {
            Some(value) => put_valid(set, "login", key, value)?,
            None => set.remove(key),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(ms: i64, success: bool) -> LoginEntry {
        LoginEntry {
            timestamp: iso(DateTime::from_timestamp_millis(ms).unwrap()),
            device: None,
            ip: None,
            success,
        }
    }

    #[test]
    fn successful_logins_count_and_failed_ones_only_appear_in_history() {
        let mut a = ActivityValue::default();
        a.record_login(login(1_000, true));
        a.record_login(login(2_000, false));
        assert_eq!(a.session_count, 1);
        assert_eq!(a.login_history.len(), 2);
        assert_eq!(a.last_active.unwrap().timestamp_millis(), 1_000);
    }

    #[test]
    fn history_keeps_the_newest_entries_whatever_the_arrival_order() {
        let mut a = ActivityValue::default();
        for ms in (0..60).rev() {
            a.record_login(login(ms * 1000, true));
        }
        let mut b = ActivityValue::default();
        for ms in 0..60 {
            b.record_login(login(ms * 1000, true));
        }
        assert_eq!(a, b);
        assert_eq!(a.login_history.len(), LOGIN_HISTORY_LIMIT);
        assert_eq!(a.login_history[0].time().timestamp(), 59);
    }

    #[test]
    fn ips_are_checked() {
        assert!(parse_ip("203.0.113.7").is_ok());
        assert_eq!(parse_ip("203.0.113.777"), Err("must be an IP address".to_owned()));
        assert!(parse_ip("2001:db8::1").is_ok());
        assert!(parse_ip("300.1.1.1").is_err());
    }
}
