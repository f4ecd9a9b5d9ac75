//! Startup: connect the store, bind the listener, serve until told to stop.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tonic::transport::{Server, server::TcpIncoming};

use crate::{
    config::Config,
    grpc,
    store::{self, Backend, ConnectOptions, Store},
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
    /// Reflection descriptors are broken (a build problem).
    #[error("cannot build gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The server stopped with an error.
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A built, not yet running, user-service.
pub struct App {
    listener: TcpListener,
    store: Arc<dyn Store>,
    config: Config,
}

impl App {
    /// Connects to (and migrates) the database, then binds the listen address
    /// (port 0 picks a free port; see [`App::local_addr`]).
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let backend = Backend::from_url(&config.database_url).map_err(StartupError::DatabaseUrl)?;
        let options = ConnectOptions {
            max_connections: config.max_connections,
            acquire_timeout: config.acquire_timeout,
            migrate: !config.skip_migrations,
        };
        let store = store::connect(&backend, &options).await?;
        Self::with_store(config, store).await
    }

    /// Like [`App::build`] with an already connected store.
    pub async fn with_store(config: Config, store: Arc<dyn Store>) -> Result<Self, StartupError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartupError::Listen { addr: config.listen, source })?;
        Ok(Self { listener, store, config })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// Serves until `shutdown` completes, then lets in-flight calls finish.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), StartupError> {
        let (routes, health) = grpc::routes(self.store.clone())?;
        let health_task =
            tokio::spawn(grpc::watch_database(self.store.clone(), health, self.config.health_check_interval));
        let prune_task =
            tokio::spawn(prune_processed_events(self.store.clone(), self.config.idempotency_retention));
        tracing::info!(addr = %self.local_addr(), "user-service listening");
        let incoming = TcpIncoming::from(self.listener).with_nodelay(Some(true));
        let served = Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        health_task.abort();
        prune_task.abort();
        tracing::info!("user-service stopped");
        Ok(served?)
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
