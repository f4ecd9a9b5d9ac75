//! A fixed-concurrency load runner with latency histograms.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::Serialize;

/// What one measured run did.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Scenario and operation, e.g. `grpc GetUser`.
    pub name: String,
    /// Operations attempted.
    pub ops: u64,
    /// Wall time of the run.
    pub seconds: f64,
    /// Operations per second.
    pub rate: f64,
    /// Latency percentiles, microseconds.
    pub p50_us: u64,
    /// 95th percentile.
    pub p95_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Slowest.
    pub max_us: u64,
    /// Failures by kind (HTTP status, gRPC code, error text).
    pub errors: BTreeMap<String, u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| Histogram::new(3).expect("histogram"))
}

/// Runs `op(0..total)` with `concurrency` workers; each call is timed.
pub async fn run<F, Fut>(name: impl Into<String>, total: usize, concurrency: usize, op: F) -> Stats
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (op, next) = (op.clone(), next.clone());
            tokio::spawn(async move {
                let mut hist = histogram();
                let mut errors = BTreeMap::<String, u64>::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let t = Instant::now();
                    let result = op(i).await;
                    let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                    if let Err(kind) = result {
                        *errors.entry(kind).or_default() += 1;
                    }
                }
                (hist, errors)
            })
        })
        .collect();
    let mut hist = histogram();
    let mut errors = BTreeMap::new();
    for worker in workers {
        if let Ok((h, e)) = worker.await {
            let _ = hist.add(h);
            for (k, n) in e {
                *errors.entry(k).or_insert(0) += n;
            }
        }
    }
    let elapsed = started.elapsed();
    Stats {
        name: name.into(),
        ops: total as u64,
        seconds: elapsed.as_secs_f64(),
        rate: total as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_us: hist.value_at_quantile(0.50),
        p95_us: hist.value_at_quantile(0.95),
        p99_us: hist.value_at_quantile(0.99),
        max_us: hist.max(),
        errors,
    }
}

/// Formats microseconds for the table.
pub fn ms(us: u64) -> String {
    format!("{:.2}", Duration::from_micros(us).as_secs_f64() * 1000.0)
}
