//! Times as `user_data` stores them: ISO-8601 text with milliseconds (the
//! original plan's `new Date().toISOString()` shape).

use chrono::{DateTime, SecondsFormat, Utc};

/// ISO-8601 text of a time, as stored.
pub fn iso(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses an ISO-8601 / RFC 3339 time.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| "must be an ISO-8601 time like 2026-01-02T03:04:05.000Z".to_owned())
}
