//! Test support: start a real user-service on a random port over a fresh
//! database, PostgreSQL or SQLite. Enabled by the `testing` feature.

use std::{net::SocketAddr, num::NonZeroUsize, path::PathBuf, sync::Arc, time::Duration};

use sqlx::{Connection, PgConnection};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;
use userdata_proto::v1::user_service_client::UserServiceClient;

use crate::{
    app::{App, StartupError},
    config::{Config, MetricsListen},
    store::{self, Backend, ConnectOptions, Store},
};

/// The server Postgres tests use unless `DATABASE_URL` says otherwise.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Prefix of the throwaway databases tests create.
const TEST_DB_PREFIX: &str = "userdata_test_";

/// Which database a test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    /// A fresh PostgreSQL database.
    Postgres,
    /// A fresh SQLite file in a temporary directory.
    Sqlite,
}

/// A fresh, migrated, empty database that the test owns.
pub struct TestDatabase {
    /// Its `DATABASE_URL`.
    pub url: String,
    /// For Postgres: the database name.
    pub name: Option<String>,
    // Keeps the SQLite file alive for the test's lifetime.
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    /// Creates one. Postgres tests never skip: an unreachable server fails
    /// the test with instructions.
    pub async fn create(db: Db) -> Self {
        match db {
            Db::Sqlite => {
                let dir = tempfile::tempdir().expect("create a temporary directory");
                let path: PathBuf = dir.path().join("userdata.db");
                Self { url: format!("sqlite://{}", path.display()), name: None, _dir: Some(dir) }
            }
            Db::Postgres => {
                let admin_url = postgres_admin_url();
                let mut conn = PgConnection::connect(&admin_url).await.unwrap_or_else(|err| {
                    panic!(
                        "cannot reach PostgreSQL at {admin_url}: {err}\n\
                         The Postgres tests need a server; start one, or point DATABASE_URL at a \
                         superuser connection, e.g. DATABASE_URL=postgres://user:pass@host:5432/postgres"
                    )
                });
                drop_stale_databases(&mut conn).await;
                let name = format!("{TEST_DB_PREFIX}{}", uuid::Uuid::now_v7().simple());
                sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create a test database");
                let url = with_database(&admin_url, &name);
                Self { url, name: Some(name), _dir: None }
            }
        }
    }
}

impl TestDatabase {
    /// A database another test server already uses (a second replica); the
    /// first one owns it.
    pub fn shared(url: &str) -> Self {
        Self { url: url.to_owned(), name: None, _dir: None }
    }

    /// The same database reached through another URL (e.g. a proxy).
    pub fn with_url(mut self, url: String) -> Self {
        self.url = url;
        self
    }
}

/// The Postgres URL tests connect to for creating databases.
pub fn postgres_admin_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
        .unwrap_or_else(|| DEFAULT_POSTGRES_URL.to_owned())
}

fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// How old a test database must be before a later run drops it. Test
/// processes may run side by side (e.g. under nextest), so a fresh database
/// might belong to a live test even when nobody is connected to it right now.
const STALE_AFTER_MS: u128 = 60 * 60 * 1000;

/// Drops test databases left by earlier runs, once per process. The name's
/// UUIDv7 carries its creation time, so only old ones are dropped; one still
/// in use refuses to drop, which is fine.
async fn drop_stale_databases(conn: &mut PgConnection) {
    static ONCE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    ONCE.get_or_init(|| async {
        let names: Vec<(String,)> = sqlx::query_as("select datname from pg_database where datname like $1")
            .bind(format!("{TEST_DB_PREFIX}%"))
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_default();
        let now_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let created_ms = |name: &str| {
            name.strip_prefix(TEST_DB_PREFIX)
                .and_then(|id| id.get(..12))
                .and_then(|hex| u128::from_str_radix(hex, 16).ok())
        };
        for (name,) in names {
            if created_ms(&name).is_some_and(|created| now_ms.saturating_sub(created) < STALE_AFTER_MS) {
                continue;
            }
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!("drop database if exists {name}")))
                .execute(&mut *conn)
                .await;
        }
    })
    .await;
}

/// A running user-service on a fresh database.
pub struct TestServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Where it serves `/metrics`, if it does (off unless a test turns it on).
    pub metrics_addr: Option<SocketAddr>,
    /// Direct access to its store (for checks the API does not expose).
    pub store: Arc<dyn Store>,
    /// Its database.
    pub database: TestDatabase,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server on a fresh database of the given kind.
    pub async fn start(db: Db) -> Self {
        Self::start_with(db, |_| {}).await
    }

    /// Starts a server on a fresh database of the given kind, with the test
    /// configuration changed by `tweak` (e.g. to turn authentication on).
    pub async fn start_with(db: Db, tweak: impl FnOnce(&mut Config)) -> Self {
        let database = TestDatabase::create(db).await;
        Self::try_start(database, "127.0.0.1:0".parse().expect("address"), tweak)
            .await
            .unwrap_or_else(|err| panic!("start the test server: {err}"))
    }

    /// Starts a server on an existing database and address.
    pub async fn start_on(database: TestDatabase, listen: SocketAddr) -> Self {
        Self::try_start(database, listen, |_| {})
            .await
            .unwrap_or_else(|err| panic!("start the test server: {err}"))
    }

    /// Starts a server on an existing database and address with the test
    /// configuration changed by `tweak`, or says why it would not start.
    pub async fn try_start(
        database: TestDatabase,
        listen: SocketAddr,
        tweak: impl FnOnce(&mut Config),
    ) -> Result<Self, StartupError> {
        let mut config = test_config(&database.url, listen);
        tweak(&mut config);
        let options = ConnectOptions {
            max_connections: config.max_connections,
            acquire_timeout: config.acquire_timeout,
            group_commit_max: config.group_commit_max,
            migrate: true,
        };
        let backend = Backend::from_url(&database.url).expect("test database URL");
        let store = store::connect(&backend, &options).await.expect("connect to the test database");
        let app = match App::with_store(config, store.clone()).await {
            Ok(app) => app,
            Err(err) => {
                store.close().await;
                return Err(err);
            }
        };
        let addr = app.local_addr();
        let metrics_addr = app.metrics_addr();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            app.run_until(async {
                let _ = rx.await;
            })
            .await
            .expect("test server failed");
        });
        Ok(Self { addr, metrics_addr, store, database, shutdown: Some(tx), task: Some(task) })
    }

    /// `http://addr`, for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A channel to the server.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url()).expect("url").connect().await.expect("connect to the test server")
    }

    /// A `UserService` client.
    pub async fn users(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.channel().await)
    }

    /// Stops the server gracefully and returns its database for a restart.
    pub async fn stop(mut self) -> TestDatabase {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        self.store.close().await;
        // Move the database out; Drop then has nothing left to stop.
        std::mem::replace(&mut self.database, TestDatabase { url: String::new(), name: None, _dir: None })
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A config like the binary's defaults, for a test database and address;
/// except that `/metrics` is off.
pub fn test_config(database_url: &str, listen: SocketAddr) -> Config {
    Config {
        listen,
        database_url: database_url.to_owned(),
        max_connections: 4,
        acquire_timeout: Duration::from_secs(2),
        group_commit_max: crate::store::GROUP_COMMIT_MAX,
        skip_migrations: false,
        health_check_interval: Duration::from_millis(200),
        idempotency_retention: Duration::from_secs(7 * 86_400),
        change_retention: Duration::from_secs(90 * 86_400),
        change_heartbeat_interval: Duration::from_secs(15),
        change_poll_interval: Duration::from_secs(1),
        change_fanout_capacity: NonZeroUsize::new(4096).expect("non-zero"),
        log_format: userdata_kit::logging::LogFormat::Human,
        auth_tokens: None,
        clerk_issuer: None,
        clerk_jwt_key: None,
        clerk_jwks_url: None,
        clerk_authorized_parties: Vec::new(),
        clerk_jwks_min_refresh: Duration::from_secs(10),
        cors_origins: Vec::new(),
        http2_max_concurrent_streams: 100,
        max_connection_age: Duration::from_secs(3600),
        insecure: false,
        tls_cert: None,
        tls_key: None,
        tls_client_ca: None,
        no_reflection: false,
        request_timeout: Duration::from_secs(10),
        max_concurrent_requests: NonZeroUsize::new(256).expect("non-zero"),
        metrics_listen: MetricsListen::Off,
    }
}
