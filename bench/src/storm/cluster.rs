//! Starting, killing and restarting the release binaries for fault runs: one
//! or more user-service replicas on one database, behind one gateway that
//! balances over all of them (`--user-service-url a,b`) or one gateway per
//! replica.
//!
//! Unlike [`crate::services::start`], every process here keeps its address
//! across restarts (a killed user-service comes back on the same port, so its
//! gateway reconnects by itself), and each writes its log to a file.

use std::{
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use sqlx::{Connection, PgConnection};
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::services::free_addr;

/// Which database the cluster runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// A fresh database on the PostgreSQL server of `--database-url`.
    Postgres,
    /// A fresh SQLite file in a temporary directory.
    Sqlite,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The database kind.
    pub backend: Backend,
    /// For PostgreSQL: a superuser URL on which a fresh database is created.
    pub admin_url: String,
    /// user-service replicas.
    pub replicas: usize,
    /// One gateway per replica instead of one balancing over all.
    pub gateway_per_replica: bool,
    /// The gateways' per-client-IP `--rate-limit` (0: off). The storm sends
    /// everything from one address, as all of Svix would look to a small
    /// deployment.
    pub rate_limit: u32,
    /// The gateways' signing secret(s).
    pub secret: String,
    /// The gateways' `--upstream-timeout`.
    pub upstream_timeout: String,
    /// The user-services' pool size.
    pub pool_size: u32,
    /// Where process logs go.
    pub log_dir: PathBuf,
    /// Keep the PostgreSQL database afterwards.
    pub keep_database: bool,
}

/// One child process that can be killed and restarted on the same address.
pub struct Proc {
    /// e.g. `user-service-0`.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    command: (PathBuf, Vec<String>, Vec<(String, String)>),
    log: PathBuf,
    child: Option<Child>,
    /// How often it was (re)started.
    pub starts: u32,
}

impl Proc {
    /// Starts it (again).
    pub fn start(&mut self) -> Result<()> {
        let (program, args, env) = &self.command;
        let log = File::options().create(true).append(true).open(&self.log)?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", self.name))?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// SIGKILLs it and waits for it to be gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// CPU seconds (user + system) of the running process, from /proc; 0
    /// when it is not running. Shows whether a replica got any work.
    pub fn cpu_seconds(&self) -> f64 {
        let Some(pid) = self.child.as_ref().and_then(Child::id) else { return 0.0 };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime; the kernel's USER_HZ is 100 on Linux.
        (ticks(11) + ticks(12)) / 100.0
    }

    /// Whether it was started and not killed (it may have exited on its own).
    pub fn is_started(&self) -> bool {
        self.child.is_some()
    }
}

/// The fresh database of a run.
pub struct Database {
    /// Its `DATABASE_URL`.
    pub url: String,
    admin_url: String,
    name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Database {
    async fn create(backend: Backend, admin_url: &str) -> Result<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir()?;
                let url = format!("sqlite://{}", dir.path().join("storm.db").display());
                Ok(Self { url, admin_url: String::new(), name: None, _dir: Some(dir) })
            }
            Backend::Postgres => {
                let mut conn = PgConnection::connect(admin_url)
                    .await
                    .with_context(|| format!("connect to PostgreSQL at {admin_url}"))?;
                let name = format!("svix_storm_{}", uuid::Uuid::now_v7().simple());
                sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
                    .execute(&mut conn)
                    .await?;
                let (base, query) =
                    admin_url.split_once('?').map_or((admin_url, None), |(b, q)| (b, Some(q)));
                let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
                let url = match query {
                    Some(q) => format!("{base}/{name}?{q}"),
                    None => format!("{base}/{name}"),
                };
                Ok(Self { url, admin_url: admin_url.to_owned(), name: Some(name), _dir: None })
            }
        }
    }

    async fn drop_database(&self) {
        let Some(name) = &self.name else { return };
        if let Ok(mut conn) = PgConnection::connect(&self.admin_url).await {
            let sql = format!("drop database if exists {name} with (force)");
            let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await;
        }
    }
}

/// user-service replicas and their gateways.
pub struct Cluster {
    /// The database.
    pub database: Database,
    /// user-service replicas.
    pub users: Vec<Proc>,
    /// Gateways: one balancing over every replica, or gateway `i` in front
    /// of replica `i`.
    pub gateways: Vec<Proc>,
    keep_database: bool,
}

/// The path of a release binary next to the running executable.
pub fn binary(name: &str) -> Result<PathBuf> {
    let dir = std::env::current_exe()?.parent().context("executable directory")?.to_path_buf();
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p user-service -p gateway -p userdata-bench`",
            path.display()
        );
    }
    Ok(path)
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

impl Cluster {
    /// Creates the database and starts every process, one replica at a time
    /// (so migrations do not race), waiting until each gateway is ready.
    pub async fn start(options: &ClusterOptions) -> Result<Self> {
        if options.replicas > 1 && options.backend == Backend::Sqlite {
            bail!("several replicas need a shared PostgreSQL database (--backend postgres)");
        }
        std::fs::create_dir_all(&options.log_dir)
            .with_context(|| format!("create {}", options.log_dir.display()))?;
        let database = Database::create(options.backend, &options.admin_url).await?;
        let mut cluster =
            Self { database, users: Vec::new(), gateways: Vec::new(), keep_database: options.keep_database };
        let pool = options.pool_size.to_string();
        for i in 0..options.replicas.max(1) {
            let grpc = free_addr()?;
            let mut users = Proc {
                name: format!("user-service-{i}"),
                addr: grpc,
                command: (
                    binary("user-service")?,
                    Vec::new(),
                    env(&[
                        ("DATABASE_URL", cluster.database.url.as_str()),
                        ("USER_SERVICE_LISTEN", &grpc.to_string()),
                        ("DATABASE_MAX_CONNECTIONS", &pool),
                        ("HEALTH_CHECK_INTERVAL", "500ms"),
                        ("USER_SERVICE_METRICS_LISTEN", "off"),
                        ("RUST_LOG", "warn"),
                    ]),
                ),
                log: options.log_dir.join(format!("user-service-{i}.log")),
                child: None,
                starts: 0,
            };
            users.start()?;
            cluster.users.push(users);
            // One at a time, so their migrations do not race.
            cluster.wait_serving(i, Duration::from_secs(60)).await?;
        }
        let upstreams: Vec<Vec<SocketAddr>> = if options.gateway_per_replica {
            cluster.users.iter().map(|u| vec![u.addr]).collect()
        } else {
            vec![cluster.users.iter().map(|u| u.addr).collect()]
        };
        for (i, upstream) in upstreams.into_iter().enumerate() {
            let http = free_addr()?;
            let urls: Vec<String> = upstream.iter().map(|a| format!("http://{a}")).collect();
            let mut gateway = Proc {
                name: format!("gateway-{i}"),
                addr: http,
                command: (
                    binary("gateway")?,
                    vec![
                        "serve".into(),
                        "--listen".into(),
                        http.to_string(),
                        "--user-service-url".into(),
                        urls.join(","),
                        "--upstream-timeout".into(),
                        options.upstream_timeout.clone(),
                        "--rate-limit".into(),
                        options.rate_limit.to_string(),
                        "--metrics-listen".into(),
                        "off".into(),
                    ],
                    env(&[("CLERK_WEBHOOK_SIGNING_SECRET", options.secret.as_str()), ("RUST_LOG", "warn")]),
                ),
                log: options.log_dir.join(format!("gateway-{i}.log")),
                child: None,
                starts: 0,
            };
            gateway.start()?;
            cluster.gateways.push(gateway);
            cluster.wait_ready(i, Duration::from_secs(60)).await?;
        }
        Ok(cluster)
    }

    /// Waits until replica `i` reports SERVING on `grpc.health.v1`.
    pub async fn wait_serving(&self, i: usize, timeout: Duration) -> Result<()> {
        let channel =
            Channel::from_shared(self.user_service_url(i))?.timeout(Duration::from_secs(1)).connect_lazy();
        let mut health = HealthClient::new(channel);
        let deadline = Instant::now() + timeout;
        loop {
            let reply = health.check(HealthCheckRequest { service: String::new() }).await;
            if reply.is_ok_and(|r| r.get_ref().status() == ServingStatus::Serving) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("user-service-{i} not serving within {timeout:?}: see {}", self.log_dir().display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Webhook URLs of every gateway.
    pub fn webhook_urls(&self) -> Vec<String> {
        self.gateways.iter().map(|g| format!("http://{}/webhooks/clerk", g.addr)).collect()
    }

    /// `http://addr` of replica `i`.
    pub fn user_service_url(&self, i: usize) -> String {
        format!("http://{}", self.users[i].addr)
    }

    /// Waits until gateway `i` answers `/readyz` with 200 (user-service serves).
    pub async fn wait_ready(&self, i: usize, timeout: Duration) -> Result<()> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let url = format!("http://{}/readyz", self.gateways[i].addr);
        let deadline = Instant::now() + timeout;
        loop {
            if client.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "gateway-{i} not ready within {timeout:?}: see the logs in {}",
                    self.log_dir().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Where the logs are.
    pub fn log_dir(&self) -> &Path {
        self.users.first().and_then(|p| p.log.parent()).unwrap_or(Path::new("."))
    }

    /// Starts every process that is not running, except replicas listed in
    /// `keep_down` (and their gateways stay up, answering 503).
    pub fn start_missing(&mut self, keep_down: &[usize]) -> Result<()> {
        for (i, proc) in self.users.iter_mut().enumerate() {
            if !proc.is_started() && !keep_down.contains(&i) {
                proc.start()?;
            }
        }
        for proc in &mut self.gateways {
            if !proc.is_started() {
                proc.start()?;
            }
        }
        Ok(())
    }

    /// Kills everything and drops the PostgreSQL database (unless kept).
    pub async fn stop(mut self) {
        for proc in self.gateways.iter_mut().chain(self.users.iter_mut()) {
            proc.kill().await;
        }
        if self.keep_database {
            eprintln!("database kept: {}", self.database.url);
        } else {
            self.database.drop_database().await;
        }
    }
}
