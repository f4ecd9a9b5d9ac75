//! Startup: check the security settings, connect the store, bind the
//! listeners, serve until told to stop.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tonic::transport::{Server, ServerTlsConfig, server::TcpIncoming};
use tower::ServiceBuilder;

use crate::{
    auth::Tokens,
    config::{Config, MetricsListen},
    grpc,
    metrics::{self, Metrics},
    middleware::{AuthLayer, LimitLayer, ObserveLayer, RequestIdLayer},
    store::{self, Backend, ConnectOptions, Store},
    tls,
};

/// Why the service could not start; printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// `DATABASE_URL` names no supported database.
    #[error("{0}")]
    DatabaseUrl(String),
    /// The database could not be opened, reached or migrated.
    #[error("cannot open the database: {0}")]
    Database(#[from] crate::error::Error),
    /// The listen address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The metrics address is taken or not ours.
    #[error("cannot serve metrics on {addr}: {source}")]
    MetricsListen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The tokens file cannot be read or has a bad line.
    #[error("cannot load the auth tokens: {0}")]
    AuthTokens(String),
    /// A non-loopback address without authentication, and no `--insecure`.
    #[error(
        "refusing to serve on {0} without authentication: give --auth-tokens (or, to accept \
         the risk, --insecure)"
    )]
    Unauthenticated(SocketAddr),
    /// `--idempotency-retention` is outside its bounds.
    #[error("{0}")]
    IdempotencyRetention(String),
    /// The TLS files are missing, unreadable or do not fit together.
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    /// Reflection descriptors are broken (a build problem).
    #[error("cannot build gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The server stopped with an error.
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// The checked authentication and TLS settings.
struct Security {
    tokens: Option<Arc<Tokens>>,
    tls: Option<ServerTlsConfig>,
}

impl Security {
    /// Reads the tokens and TLS files, and refuses an open door: no
    /// authentication on a non-loopback address without `--insecure`.
    fn load(config: &Config) -> Result<Self, StartupError> {
        // Checked here too, for configs built in code rather than parsed.
        crate::config::check_idempotency_retention(config.idempotency_retention)
            .map_err(StartupError::IdempotencyRetention)?;
        let tokens = match &config.auth_tokens {
            Some(path) => Some(Arc::new(Tokens::load(path).map_err(StartupError::AuthTokens)?)),
            None => None,
        };
        if tokens.is_none() && !config.listen.ip().is_loopback() && !config.insecure {
            return Err(StartupError::Unauthenticated(config.listen));
        }
        let tls = tls::load(config).map_err(StartupError::Tls)?;
        Ok(Self { tokens, tls })
    }
}

/// A built, not yet running, user-service.
pub struct App {
    listener: TcpListener,
    metrics: Option<(Arc<Metrics>, TcpListener)>,
    store: Arc<dyn Store>,
    security: Security,
    config: Config,
}

impl App {
    /// Checks the security settings, connects to (and migrates) the
    /// database, then binds the listen addresses (port 0 picks a free port;
    /// see [`App::local_addr`]).
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let security = Security::load(&config)?;
        let backend = Backend::from_url(&config.database_url).map_err(StartupError::DatabaseUrl)?;
        let options = ConnectOptions {
            max_connections: config.max_connections,
            acquire_timeout: config.acquire_timeout,
            migrate: !config.skip_migrations,
        };
        let store = store::connect(&backend, &options).await?;
        Self::assemble(config, store, security).await
    }

    /// Like [`App::build`] with an already connected store.
    pub async fn with_store(config: Config, store: Arc<dyn Store>) -> Result<Self, StartupError> {
        let security = Security::load(&config)?;
        Self::assemble(config, store, security).await
    }

    async fn assemble(
        config: Config,
        store: Arc<dyn Store>,
        security: Security,
    ) -> Result<Self, StartupError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartupError::Listen { addr: config.listen, source })?;
        let metrics = match config.metrics_listen {
            MetricsListen::Off => None,
            MetricsListen::On(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartupError::MetricsListen { addr, source })?;
                Some((Arc::new(Metrics::new()), listener))
            }
        };
        Ok(Self { listener, metrics, store, security, config })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// The address `/metrics` is served on, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|(_, listener)| listener.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then lets in-flight calls finish.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), StartupError> {
        let addr = self.local_addr();
        let metrics_addr = self.metrics_addr();
        let Self { listener, metrics, store, security, config } = self;
        let (routes, health) = grpc::routes(store.clone(), !config.no_reflection)?;
        let health_task =
            tokio::spawn(grpc::watch_database(store.clone(), health, config.health_check_interval));
        let prune_task = tokio::spawn(prune_processed_events(store.clone(), config.idempotency_retention));
        let (metrics, metrics_task) = match metrics {
            Some((metrics, listener)) => {
                let task = tokio::spawn(metrics::serve(listener, metrics.clone(), store.clone()));
                (Some(metrics), Some(task))
            }
            None => (None, None),
        };
        log_security(&config, addr, &security);
        tracing::info!(
            %addr,
            metrics = %metrics_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
            reflection = !config.no_reflection,
            "user-service listening"
        );

        let layers = ServiceBuilder::new()
            .layer(RequestIdLayer)
            .layer(ObserveLayer::new(metrics))
            .layer(AuthLayer::new(security.tokens))
            .layer(LimitLayer::new(config.max_concurrent_requests, config.request_timeout))
            .into_inner();
        let mut server = Server::builder();
        if let Some(tls) = security.tls {
            server = server.tls_config(tls)?;
        }
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let served = server
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .layer(layers)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        health_task.abort();
        prune_task.abort();
        if let Some(task) = metrics_task {
            task.abort();
        }
        tracing::info!("user-service stopped");
        Ok(served?)
    }
}

/// States how callers are authenticated and whether the channel is
/// encrypted, warning about the risky combinations.
fn log_security(config: &Config, addr: SocketAddr, security: &Security) {
    let tls = match (&security.tls, &config.tls_client_ca) {
        (None, _) => "off",
        (Some(_), None) => "on",
        (Some(_), Some(_)) => "mutual",
    };
    match &security.tokens {
        Some(tokens) => tracing::info!(clients = tokens.len(), tls, "bearer-token authentication on"),
        None => tracing::info!(tls, "authentication off"),
    }
    let loopback = addr.ip().is_loopback();
    if security.tokens.is_none() && !loopback {
        tracing::warn!(%addr, "--insecure: serving without authentication on a non-loopback address");
    }
    if security.tokens.is_some() && security.tls.is_none() && !loopback {
        tracing::warn!(%addr, "bearer tokens travel in clear text: configure --tls-cert and --tls-key");
    }
}

/// Deletes idempotency records past their retention, once an hour.
async fn prune_processed_events(store: Arc<dyn Store>, retention: Duration) {
    let mut every = tokio::time::interval(Duration::from_secs(3600));
    loop {
        every.tick().await;
        match store.prune_processed_events(retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "pruned old idempotency records"),
            Err(err) => tracing::warn!(error = %err, "could not prune idempotency records"),
        }
    }
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
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
    tracing::info!("shutdown requested; finishing in-flight calls");
}
