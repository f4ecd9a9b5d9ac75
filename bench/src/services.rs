//! Runs the release binaries of user-service and the gateway as child
//! processes, so their CPU time and memory can be read from /proc.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

/// The signing secret the benchmark's gateway uses.
pub const SECRET: &str = "whsec_YmVuY2htYXJrLW9ubHktc2lnbmluZy1zZWNyZXQ=";

/// A running child process.
pub struct Service {
    child: Child,
    /// Its name, for reports.
    pub name: &'static str,
}

/// CPU seconds and peak resident memory of a process.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Usage {
    /// User + system CPU seconds so far.
    pub cpu_seconds: f64,
    /// Peak resident set size, MiB.
    pub peak_rss_mib: f64,
    /// Resident set size now, KiB.
    pub rss_kib: f64,
}

impl Service {
    /// Reads the process's usage from /proc.
    pub fn usage(&self) -> Usage {
        let Some(pid) = self.child.id() else { return Usage::default() };
        let ticks = clock_ticks();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are
        // the 14th and 15th fields of the whole line.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let cpu = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Usage {
            cpu_seconds: (cpu(11) + cpu(12)) / ticks,
            peak_rss_mib: kib("VmHWM:") / 1024.0,
            rss_kib: kib("VmRSS:"),
        }
    }

    /// Stops the process (SIGKILL: the benchmark needs no graceful stop).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Where the service binaries are by default: beside this executable.
pub fn default_bin_dir() -> Result<PathBuf> {
    Ok(std::env::current_exe()?.parent().context("executable directory")?.to_path_buf())
}

fn binary(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p user-service -p gateway`",
            path.display()
        );
    }
    Ok(path)
}

/// This process's soft limit on open files (the services started from it
/// inherit it), from /proc/self/limits; `None` when unlimited or unknown.
pub fn fd_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

/// A free loopback port.
pub fn free_addr() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Starts user-service (from `bin_dir`) on `database_url` and a gateway in
/// front of it, and waits until the gateway is ready.
pub async fn start(
    bin_dir: &Path,
    database_url: &str,
    pool_size: u32,
) -> Result<(Service, Service, SocketAddr, SocketAddr)> {
    let grpc = free_addr()?;
    let http = free_addr()?;
    let users = Command::new(binary(bin_dir, "user-service")?)
        .env("DATABASE_URL", database_url)
        .env("USER_SERVICE_LISTEN", grpc.to_string())
        .env("DATABASE_MAX_CONNECTIONS", pool_size.to_string())
        .env("USER_SERVICE_METRICS_LISTEN", "off")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("start user-service")?;
    let gateway = Command::new(binary(bin_dir, "gateway")?)
        .arg("serve")
        .arg("--listen")
        .arg(http.to_string())
        .arg("--user-service-url")
        .arg(format!("http://{grpc}"))
        // All benchmark traffic comes from one address: no per-source limit.
        .arg("--rate-limit")
        .arg("0")
        .arg("--metrics-listen")
        .arg("off")
        .env("CLERK_WEBHOOK_SIGNING_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("start gateway")?;
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = client.get(format!("http://{http}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        if Instant::now() > deadline {
            bail!("services did not become ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((
        Service { child: users, name: "user-service" },
        Service { child: gateway, name: "gateway" },
        grpc,
        http,
    ))
}
