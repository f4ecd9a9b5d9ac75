//! Configuration from command-line flags and environment variables.

use std::{net::SocketAddr, time::Duration};

use clap::{Parser, ValueEnum};

/// user-service: the gRPC service that owns users and their data.
#[derive(Debug, Clone, Parser)]
#[command(name = "user-service", version, about)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "USER_SERVICE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Database: `postgres://…` for PostgreSQL, `sqlite://path` for an embedded
    /// SQLite file (created, with its directory, on first run).
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://data/userdata.db", hide_env_values = true)]
    pub database_url: String,

    /// Maximum database connections in the pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 8)]
    pub max_connections: u32,

    /// How long a request waits for a database connection before failing
    /// with UNAVAILABLE.
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT", default_value = "3s", value_parser = humantime_duration)]
    pub acquire_timeout: Duration,

    /// Do not apply database migrations at startup.
    #[arg(long, env = "SKIP_MIGRATIONS")]
    pub skip_migrations: bool,

    /// How often the database is checked for the health service.
    #[arg(long, env = "HEALTH_CHECK_INTERVAL", default_value = "2s", value_parser = humantime_duration)]
    pub health_check_interval: Duration,

    /// How long idempotency records (webhook ids) are kept. Must exceed the
    /// sender's retry window (Svix retries for about 28 hours).
    #[arg(long, env = "IDEMPOTENCY_RETENTION", default_value = "7d", value_parser = humantime_duration)]
    pub idempotency_retention: Duration,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Readable lines for a terminal.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Parses durations such as `500ms`, `3s`, `5m`, `2h`, `7d`.
pub fn humantime_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 =
        number.parse().map_err(|_| format!("{text:?} is not a duration like 500ms, 3s, 5m, 2h or 7d"))?;
    let secs = |mult: u64| Duration::from_secs(n.saturating_mul(mult));
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(secs(1)),
        "m" => Ok(secs(60)),
        "h" => Ok(secs(3600)),
        "d" => Ok(secs(86_400)),
        _ => Err(format!("{text:?} is not a duration like 500ms, 3s, 5m, 2h or 7d")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(humantime_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(humantime_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert!(humantime_duration("7").is_err());
        assert!(humantime_duration("x").is_err());
    }
}
