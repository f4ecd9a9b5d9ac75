//! `GET /metrics`: the Prometheus text, on a plain-HTTP listener of its own.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use axum::{Router, http::header, routing::get};
use tokio::net::TcpListener;

/// Where `/metrics` is served, if anywhere: the value of both services'
/// `--metrics-listen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsListen {
    /// No metrics endpoint, and nothing recorded.
    Off,
    /// Serve on this address (port 0 picks a free port).
    On(SocketAddr),
}

impl FromStr for MetricsListen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(Self::Off);
        }
        text.parse()
            .map(Self::On)
            .map_err(|_| format!("`{text}` is neither an address like 127.0.0.1:9464 nor `off`"))
    }
}

impl fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::On(addr) => addr.fmt(f),
        }
    }
}

/// The content type of Prometheus's text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often `upkeep` runs: histogram samples are folded into their buckets
/// this often, so memory stays flat between scrapes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` on `listener` until the future is dropped (every
/// other path is 404). Each scrape answers `render()`: a service samples its
/// gauges there (pool sizes, followers) before rendering. `upkeep` runs every
/// [`UPKEEP_INTERVAL`], the first time at once.
pub async fn serve<R, U>(listener: TcpListener, render: R, mut upkeep: U)
where
    R: Fn() -> String + Clone + Send + Sync + 'static,
    U: FnMut() + Send,
{
    let upkeep = async move {
        let mut every = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            every.tick().await;
            upkeep();
        }
    };
    let scrape = move || {
        let body = render();
        async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], body) }
    };
    let app = Router::new().route("/metrics", get(scrape));
    tokio::select! {
        () = upkeep => {}
        served = axum::serve(listener, app) => {
            if let Err(error) = served {
                tracing::error!(%error, "metrics endpoint failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::SocketAddr,
        sync::{
            Arc,
            atomic::{AtomicU64, Ordering},
        },
    };

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
        sync::mpsc,
    };

    use super::*;

    /// One HTTP/1.1 request; the whole answer as text.
    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read");
        answer
    }

    #[tokio::test]
    async fn each_scrape_renders_afresh_and_upkeep_runs() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let scrapes = Arc::new(AtomicU64::new(0));
        let render = {
            let scrapes = scrapes.clone();
            move || format!("scrapes_total {}\n", scrapes.fetch_add(1, Ordering::SeqCst) + 1)
        };
        let (upkept, mut upkeeps) = mpsc::unbounded_channel();
        let server = tokio::spawn(serve(listener, render, move || {
            let _ = upkept.send(());
        }));
        // The first upkeep runs at once.
        upkeeps.recv().await.expect("upkeep ran");

        let first = get(addr, "/metrics").await;
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        assert!(first.contains(CONTENT_TYPE), "{first}");
        assert!(first.ends_with("scrapes_total 1\n"), "{first}");
        let second = get(addr, "/metrics").await;
        assert!(second.ends_with("scrapes_total 2\n"), "{second}");
        let other = get(addr, "/").await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        server.abort();
    }
}
