//! The replicas of user-service: their health checks, and the watcher that
//! takes a failing replica out of the balancer until it passes again.

use std::{fmt, sync::Arc, time::Duration};

use http::Uri;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Endpoint, channel::Change};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::{HEALTH_CHECK_METHOD, UpstreamChannel};
use crate::metrics::Metrics;

/// `scheme://host:port` of a replica, for logs and the `replica` label.
fn replica_name(url: &Uri) -> String {
    match (url.scheme_str(), url.authority()) {
        (Some(scheme), Some(authority)) => format!("{scheme}://{authority}"),
        _ => url.to_string(),
    }
}

pub(super) struct Replica {
    pub(super) url: Uri,
    pub(super) health: HealthClient<UpstreamChannel>,
}

/// The replicas' health checks.
pub struct Replicas {
    pub(super) list: Vec<Replica>,
    pub(super) metrics: Option<Arc<Metrics>>,
}

impl fmt::Debug for Replicas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.list.iter().map(|replica| &replica.url)).finish()
    }
}

impl Replicas {
    /// How many replicas are configured (at least one).
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Always false: there is at least one replica.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether replica `index` answers `SERVING` for the whole server
    /// (service `""`) within `timeout`; else why not.
    pub async fn check(&self, index: usize, timeout: Duration) -> Result<(), String> {
        let Some(replica) = self.list.get(index) else {
            return Err("no such replica".to_owned());
        };
        let mut client = replica.health.clone();
        let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
        request.set_timeout(timeout);
        let started = std::time::Instant::now();
        let reply = tokio::time::timeout(timeout, client.check(request)).await;
        let code = match &reply {
            Ok(Ok(_)) => tonic::Code::Ok,
            Ok(Err(status)) => status.code(),
            Err(_) => tonic::Code::DeadlineExceeded,
        };
        if let Some(metrics) = &self.metrics {
            metrics.record_upstream(HEALTH_CHECK_METHOD, code, started.elapsed());
        }
        match reply {
            Ok(Ok(response)) => match response.get_ref().status() {
                ServingStatus::Serving => Ok(()),
                other => Err(format!("user-service reports {}", other.as_str_name())),
            },
            Ok(Err(status)) => Err(format!("user-service health check failed: {:?}", status.code())),
            Err(_) => Err("user-service health check timed out".to_owned()),
        }
    }

    /// Checks every replica at once; one result per replica, in order.
    pub async fn check_all(&self, timeout: Duration) -> Vec<Result<(), String>> {
        futures::future::join_all((0..self.list.len()).map(|index| self.check(index, timeout))).await
    }

    /// The URL of replica `index`, for logs.
    pub fn url(&self, index: usize) -> Option<&Uri> {
        self.list.get(index).map(|replica| &replica.url)
    }
}

/// Asks the [`ReplicaWatcher`] to check every replica now.
#[derive(Debug, Clone)]
pub struct Failover {
    pub(super) requests: mpsc::Sender<oneshot::Sender<()>>,
}

impl Failover {
    /// Completes once a check of every replica that started after this call
    /// has updated the balancer (or at once if the watcher is gone). Callers
    /// bound the wait with their own deadline.
    pub async fn recheck(&self) {
        let (done, wait) = oneshot::channel();
        if self.requests.send(done).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// Keeps the balancer to the replicas that pass their health check; see the
/// module docs.
pub struct ReplicaWatcher {
    pub(super) replicas: Arc<Replicas>,
    pub(super) endpoints: Vec<Endpoint>,
    pub(super) changes: mpsc::Sender<Change<usize, Endpoint>>,
    pub(super) in_rotation: Vec<bool>,
    pub(super) requests: mpsc::Receiver<oneshot::Sender<()>>,
    pub(super) requests_closed: bool,
    pub(super) all_failing: bool,
    pub(super) interval: Duration,
    pub(super) timeout: Duration,
    pub(super) metrics: Option<Arc<Metrics>>,
}

impl fmt::Debug for ReplicaWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaWatcher")
            .field("replicas", &self.replicas)
            .field("in_rotation", &self.in_rotation)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl ReplicaWatcher {
    /// Checks every replica each interval, and at once when asked through
    /// [`Failover::recheck`]; runs until dropped or the balancer is gone.
    pub async fn run(mut self) {
        let mut every = tokio::time::interval(self.interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut waiting = Vec::new();
            tokio::select! {
                _ = every.tick() => {}
                request = self.requests.recv(), if !self.requests_closed => match request {
                    Some(done) => {
                        waiting.push(done);
                        while let Ok(done) = self.requests.try_recv() {
                            waiting.push(done);
                        }
                    }
                    None => self.requests_closed = true,
                },
            }
            if !self.check_round().await {
                return;
            }
            for done in waiting {
                let _ = done.send(());
            }
        }
    }

    /// One check of every replica, applied to the balancer. False once the
    /// balancer is gone.
    async fn check_round(&mut self) -> bool {
        let results = self.replicas.check_all(self.timeout).await;
        let any_serving = results.iter().any(Result::is_ok);
        if !any_serving && !self.all_failing {
            tracing::warn!(
                replicas = results.len(),
                "no user-service replica passes its health check; calls go to all of them"
            );
        }
        if any_serving && self.all_failing {
            tracing::info!("a user-service replica passes its health check again");
        }
        self.all_failing = !any_serving;
        for (index, result) in results.iter().enumerate() {
            let wanted = result.is_ok() || !any_serving;
            let url = self.replicas.url(index).map(replica_name).unwrap_or_default();
            if let Some(metrics) = &self.metrics {
                metrics.set_replica_up(url.clone(), wanted);
            }
            if wanted == self.in_rotation[index] {
                continue;
            }
            let change = if wanted {
                Change::Insert(index, self.endpoints[index].clone())
            } else {
                Change::Remove(index)
            };
            if self.changes.send(change).await.is_err() {
                return false;
            }
            self.in_rotation[index] = wanted;
            match result {
                Ok(()) => tracing::info!(replica = %url, "user-service replica back in the balancer"),
                Err(reason) if any_serving => tracing::warn!(
                    replica = %url,
                    %reason,
                    "user-service replica left out of the balancer until its health check passes"
                ),
                Err(_) => {}
            }
        }
        true
    }
}
