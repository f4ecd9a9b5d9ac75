//! Building and running the servers: the webhook endpoint (HTTP or HTTPS)
//! and, on its own listener, `/metrics`.

use std::{future::Future, io, net::SocketAddr, sync::Arc};

use axum::Router;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_rustls::rustls::ServerConfig;

use crate::{
    config::{Config, ConfigError, MetricsListen, limits::ConnectionLimits},
    http::{
        Layers,
        health::Readiness,
        rate_limit::{RateLimitState, RateLimiter},
        router,
        server::Server,
        shed::InFlight,
        state::AppState,
        tls,
    },
    metrics::{self, Metrics},
    svix::Verifier,
    upstream::{ReplicaWatcher, Upstream, UserSync},
};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address we tried.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The metrics address could not be bound.
    #[error("cannot serve metrics on {addr}: {source}")]
    MetricsBind {
        /// The address we tried.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The HTTPS certificate or key is missing, unreadable or invalid.
    #[error("cannot set up HTTPS: {0}")]
    Tls(String),
    /// The TLS files for user-service are missing, unreadable or invalid.
    #[error("cannot set up the connection to user-service: {0}")]
    Upstream(String),
}

/// A bound, ready-to-run gateway.
pub struct App {
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<Arc<ServerConfig>>,
    router: Router,
    metrics: Option<(Arc<Metrics>, TcpListener)>,
    watcher: Option<ReplicaWatcher>,
    limits: ConnectionLimits,
    summary: Summary,
}

/// What the startup log line states.
#[derive(Debug)]
struct Summary {
    replicas: usize,
    upstream_tls: bool,
    upstream_token: bool,
    upstream_public: bool,
    insecure: bool,
    rate_limit: Option<(u32, u32)>,
    trusted_proxy_hops: u32,
    signing_secrets: usize,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("local_addr", &self.local_addr)
            .field("https", &self.tls.is_some())
            .field("metrics_addr", &self.metrics_addr())
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Validates `config`, reads the TLS files, binds the listeners and
    /// prepares the (lazily connecting) gRPC channels to user-service.
    /// Nothing is contacted yet, so the gateway starts even while
    /// user-service is down; `/readyz` tells.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        config.validate()?;
        let tls = match &config.tls {
            Some(files) => Some(tls::server_config(&files.cert, &files.key).map_err(StartError::Tls)?),
            None => None,
        };
        let metrics = match config.metrics_listen {
            MetricsListen::Off => None,
            MetricsListen::On(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::MetricsBind { addr, source })?;
                Some((Arc::new(Metrics::new()), listener))
            }
        };
        let recorder = metrics.as_ref().map(|(metrics, _)| metrics.clone());
        let upstream =
            Upstream::new(&config.user_service(), recorder.clone()).map_err(StartError::Upstream)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind { addr: config.listen, source })?;
        let local_addr =
            listener.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?;

        let summary = Summary {
            replicas: upstream.replicas.len(),
            upstream_tls: config.user_service_uses_tls(),
            upstream_token: config.user_service_token.is_some(),
            upstream_public: config.user_service_urls().any(|url| !is_loopback_host(url)),
            insecure: config.insecure,
            rate_limit: config
                .rate_limit
                .is_on()
                .then_some((config.rate_limit.per_second, config.rate_limit.burst)),
            trusted_proxy_hops: config.trusted_proxy_hops,
            signing_secrets: config.signing_secrets.len(),
        };
        let state = AppState {
            verifier: Verifier::new(config.signing_secrets.clone()),
            users: UserSync::new(upstream.channel.clone(), config.upstream_timeout)
                .with_metrics(recorder.clone())
                .with_batching(config.upstream_batch)
                .with_failover(upstream.failover.clone())
                .with_unknown_user_retry_window(config.unknown_user_retry_window),
            replicas: upstream.replicas.clone(),
            readiness: Arc::new(Readiness::new(
                upstream.replicas.clone(),
                config.readiness_timeout,
                config.readiness_cache,
            )),
        };
        let layers = Layers {
            rate_limit: RateLimiter::new(config.rate_limit).map(|limiter| RateLimitState {
                limiter: Arc::new(limiter),
                trusted_proxy_hops: config.trusted_proxy_hops,
                metrics: recorder.clone(),
            }),
            in_flight: Some(InFlight::new(
                config.connections.max_in_flight,
                config.connections.in_flight_per_ip(),
                config.trusted_proxy_hops,
                recorder.clone(),
            )),
            metrics: recorder,
        };
        Ok(Self {
            listener,
            local_addr,
            tls,
            router: router(state, layers),
            metrics,
            watcher: upstream.watcher,
            limits: config.connections,
            summary,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|(_, listener)| listener.local_addr().ok())
    }

    /// Whether the webhook endpoint serves HTTPS.
    pub fn is_https(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown` completes, then stops accepting connections and
    /// waits for in-flight requests to finish.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> io::Result<()> {
        self.log_startup();
        let Self { listener, tls, router, metrics, watcher, limits, .. } = self;
        let mut tasks: Vec<JoinHandle<()>> = Vec::new();
        let recorder = metrics.as_ref().map(|(metrics, _)| metrics.clone());
        if let Some((metrics, listener)) = metrics {
            tasks.push(tokio::spawn(metrics::serve(listener, metrics)));
        }
        if let Some(watcher) = watcher {
            tasks.push(tokio::spawn(watcher.run()));
        }
        let served = Server::new(listener, tls, router, limits, recorder).run(shutdown).await;
        for task in tasks {
            task.abort();
        }
        served
    }

    /// One line on how the gateway is set up, and a warning for each risky
    /// choice. No secret, URL credential or client address is logged.
    fn log_startup(&self) {
        let summary = &self.summary;
        let listen = self.local_addr;
        tracing::info!(
            %listen,
            https = self.tls.is_some(),
            metrics = %self.metrics_addr().map_or_else(|| "off".to_owned(), |addr| addr.to_string()),
            user_service_replicas = summary.replicas,
            user_service_tls = summary.upstream_tls,
            user_service_token = summary.upstream_token,
            rate_limit = %summary.rate_limit.map_or_else(|| "off".to_owned(), |(rate, burst)| format!("{rate}/s burst {burst}")),
            trusted_proxy_hops = summary.trusted_proxy_hops,
            max_connections = self.limits.max_connections,
            max_connections_per_ip = self.limits.max_connections_per_ip,
            max_in_flight = self.limits.max_in_flight,
            max_in_flight_per_ip = self.limits.in_flight_per_ip(),
            signing_secrets = summary.signing_secrets,
            "gateway listening"
        );
        if self.tls.is_none() && summary.insecure && !listen.ip().is_loopback() {
            tracing::warn!(
                %listen,
                "--insecure: serving plain HTTP on a non-loopback address; a proxy in front must terminate TLS"
            );
        }
        if summary.upstream_token && !summary.upstream_tls && summary.upstream_public {
            tracing::warn!("the user-service token travels in clear text: use https:// user-service URLs");
        }
        if !summary.upstream_token {
            tracing::info!("no user-service token configured: calls to user-service are unauthenticated");
        }
    }
}

/// Whether a URL names this machine (`localhost` or a loopback address).
fn is_loopback_host(url: &::http::Uri) -> bool {
    let host = url.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
