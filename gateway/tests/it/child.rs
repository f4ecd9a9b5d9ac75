//! The `gateway` binary run as a child process, for what only the binary
//! does (raising its open-files limit) or shows (its log output on stderr):
//! started under `sh` so `ulimit` can lower its limits first, with JSON logs
//! read line by line.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStderr, Command},
};

use crate::support::{FakeUpstream, SECRET};

const BINARY: &str = env!("CARGO_BIN_EXE_gateway");

/// How long a log line the test waits for may take to appear.
const LINE_TIMEOUT: Duration = Duration::from_secs(15);

/// A running `gateway serve`, killed when dropped.
pub struct ChildGateway {
    child: Child,
    stderr: Lines<BufReader<ChildStderr>>,
    /// Every stderr line read so far.
    pub lines: Vec<String>,
    /// Where it serves webhooks.
    pub addr: SocketAddr,
    /// Where it serves `/metrics`.
    pub metrics_addr: SocketAddr,
}

impl ChildGateway {
    /// Starts `gateway serve` against `upstream` on 127.0.0.1:0 (metrics
    /// too), after `ulimit {ulimit}` when given (e.g. `-n 192`), with
    /// `RUST_LOG={rust_log}` and JSON logs; returns once it listens.
    pub async fn start(upstream: &FakeUpstream, ulimit: Option<&str>, rust_log: &str) -> Self {
        let limit = ulimit.map(|ulimit| format!("ulimit {ulimit} && ")).unwrap_or_default();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("{limit}exec \"$0\" \"$@\""))
            .arg(BINARY)
            .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--log-format", "json", "--user-service-url", &upstream.url().to_string()])
            .env("CLERK_WEBHOOK_SIGNING_SECRET", SECRET)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the gateway binary starts");
        let stderr = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
        let mut gateway = Self {
            child,
            stderr,
            lines: Vec::new(),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            metrics_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let listening = gateway.wait_for_message("gateway listening").await;
        let address = |field: &str| {
            listening[field].as_str().and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("{listening}"))
        };
        gateway.addr = address("listen");
        gateway.metrics_addr = address("metrics");
        gateway
    }

    /// The first log line (read so far or to come) whose `message` is
    /// `message`; fails the test if none comes within a few seconds.
    pub async fn wait_for_message(&mut self, message: &str) -> Value {
        let matches = |line: &str| {
            serde_json::from_str::<Value>(line).ok().filter(|json| json["message"].as_str() == Some(message))
        };
        if let Some(found) = self.lines.iter().find_map(|line| matches(line)) {
            return found;
        }
        let deadline = tokio::time::Instant::now() + LINE_TIMEOUT;
        loop {
            let line = tokio::time::timeout_at(deadline, self.stderr.next_line()).await;
            let line = match line {
                Ok(Ok(Some(line))) => line,
                _ => panic!("no `{message}` log line; stderr so far:\n{}", self.lines.join("\n")),
            };
            self.lines.push(line);
            if let Some(found) = self.lines.last().and_then(|line| matches(line)) {
                return found;
            }
        }
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.metrics_addr);
        reqwest::get(url).await.unwrap().text().await.unwrap()
    }

    /// Kills the process and returns all it wrote on stderr.
    pub async fn stop(mut self) -> String {
        self.child.start_kill().expect("the child is running");
        while let Ok(Ok(Some(line))) = tokio::time::timeout(LINE_TIMEOUT, self.stderr.next_line()).await {
            self.lines.push(line);
        }
        let _ = self.child.wait().await;
        self.lines.join("\n")
    }
}
