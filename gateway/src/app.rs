//! Building and running the HTTP server.

use std::{future::Future, io, net::SocketAddr, time::Duration};

use axum::Router;
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;

use crate::{
    apply::UserSync,
    config::{Config, ConfigError},
    routes,
    state::AppState,
    verify::Verifier,
};

/// Interval of HTTP/2 pings on the user-service connection. Pings detect a
/// dead peer (e.g. a restarted pod behind a stale connection) before a
/// webhook has to wait for it.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is dropped.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

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
}

/// A bound, ready-to-run gateway.
#[derive(Debug)]
pub struct App {
    listener: TcpListener,
    local_addr: SocketAddr,
    router: Router,
}

impl App {
    /// Validates `config`, binds the listener and prepares the (lazily
    /// connecting) gRPC channel to user-service. Nothing is contacted yet, so
    /// the gateway starts even while user-service is down; `/readyz` tells.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        config.validate()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind { addr: config.listen, source })?;
        let local_addr =
            listener.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?;

        let channel = user_service_channel(&config);
        let state = AppState {
            verifier: Verifier::new(config.signing_secrets.clone()),
            users: UserSync::new(channel.clone(), config.upstream_timeout),
            health: HealthClient::new(channel),
            readiness_timeout: config.readiness_timeout,
        };
        Ok(Self { listener, local_addr, router: routes::router(state) })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then stops accepting connections and
    /// waits for in-flight requests to finish.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> io::Result<()> {
        axum::serve(self.listener, self.router).with_graceful_shutdown(shutdown).await
    }
}

/// The channel to user-service: connects on first use and reconnects by
/// itself, so neither startup order nor upstream restarts matter.
fn user_service_channel(config: &Config) -> Channel {
    Endpoint::from(config.user_service_url.clone())
        // A connect attempt may not outlast the call it serves.
        .connect_timeout(config.upstream_timeout)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .connect_lazy()
}

/// Completes on SIGTERM (what orchestrators send) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}
