//! Database errors in the domain's words: what a caller may retry
//! (`Unavailable`) and what is a bug here (`Internal`).

use crate::domain::error::Error;

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match err {
            E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::WorkerCrashed => {
                Self::Unavailable(err.to_string())
            }
            E::Database(ref db) if is_transient(db.code().as_deref()) => Self::Unavailable(err.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

/// SQLSTATE classes (Postgres) and result codes (SQLite) that mean "try again
/// later" rather than "this request is wrong".
fn is_transient(code: Option<&str>) -> bool {
    match code {
        // 08: connection exception, 53: insufficient resources, 57P01..03: admin
        // shutdown / crash / cannot connect now, 40001/40P01: serialization
        // failure / deadlock.
        Some(c) if c.starts_with("08") || c.starts_with("53") || c.starts_with("57P") => true,
        Some("40001" | "40P01") => true,
        // SQLite: 5 = SQLITE_BUSY, 6 = SQLITE_LOCKED (and extended codes).
        Some(c) => matches!(c.parse::<u32>().map(|n| n & 0xff), Ok(5 | 6)),
        None => false,
    }
}
