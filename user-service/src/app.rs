//! Startup: check the security settings, connect the store, bind the
//! listeners, serve until told to stop.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tonic::transport::{Server, ServerTlsConfig, server::TcpIncoming};
use tower::ServiceBuilder;

use tonic_web::GrpcWebLayer;

use crate::{
    auth::{Authenticator, ClerkVerifier, Jwks, JwksSettings, KeySource, Tokens},
    config::{Config, MetricsListen},
    feed::{Feed, FeedConfig},
    grpc,
    metrics::{self, Metrics},
    middleware::{AuthLayer, BrowserCorsLayer, LimitLayer, ObserveLayer, RequestIdLayer},
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
    Database(#[from] crate::domain::error::Error),
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
    /// The Clerk settings are incomplete or the key is unreadable.
    #[error("cannot set up Clerk session tokens: {0}")]
    Clerk(String),
    /// A non-loopback address without authentication, and no `--insecure`.
    #[error(
        "refusing to serve on {0} without authentication: give --auth-tokens or --clerk-issuer \
         (or, to accept the risk, --insecure)"
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

/// HTTP/2 limits that are not flags. tonic leaves these unlimited (or
/// hyper's reset-flood protection off) unless told otherwise.
mod http2 {
    use std::time::Duration;

    /// Largest request header block (a Clerk session token is 1–2 KiB).
    pub const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
    /// Streams a client may open and reset before an answer, before the
    /// connection is closed (the Rapid Reset flood, CVE-2023-44487).
    pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
    /// Streams the server may reset for protocol errors before closing the
    /// connection.
    pub const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;
    /// Interval of HTTP/2 pings on an idle connection.
    pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
    /// A ping unanswered this long closes the connection.
    pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
    /// After `--max-connection-age`, calls in flight get this long: a change
    /// stream ends this long after the age (its follower resumes from its
    /// cursor), which lets the connection close.
    pub const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(300);
}

/// Cached JWKS keys are fetched again after this long.
const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);
/// Timeout of one JWKS fetch.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The checked authentication and TLS settings.
struct Security {
    authenticator: Option<Arc<Authenticator>>,
    tls: Option<ServerTlsConfig>,
}

impl Security {
    /// Reads the tokens file, the Clerk settings and the TLS files, and
    /// refuses an open door: no authentication on a non-loopback address
    /// without `--insecure`.
    fn load(config: &Config) -> Result<Self, StartupError> {
        // Checked here too, for configs built in code rather than parsed.
        crate::config::check_idempotency_retention(config.idempotency_retention)
            .map_err(StartupError::IdempotencyRetention)?;
        let tokens = match &config.auth_tokens {
            Some(path) => Some(Tokens::load(path).map_err(StartupError::AuthTokens)?),
            None => None,
        };
        let clerk = clerk_verifier(config).map_err(StartupError::Clerk)?;
        let authenticator = Authenticator::new(tokens, clerk).map(Arc::new);
        if authenticator.is_none() && !config.listen.ip().is_loopback() && !config.insecure {
            return Err(StartupError::Unauthenticated(config.listen));
        }
        let tls = tls::load(config).map_err(StartupError::Tls)?;
        Ok(Self { authenticator, tls })
    }
}

/// The session-token verifier the Clerk settings describe, if any.
fn clerk_verifier(config: &Config) -> Result<Option<ClerkVerifier>, String> {
    let Some(issuer) = &config.clerk_issuer else {
        return Ok(None);
    };
    let issuer = issuer.trim_end_matches('/');
    if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
        return Err(format!("CLERK_ISSUER must be a URL like https://clerk.example.com, not {issuer:?}"));
    }
    let keys = match (&config.clerk_jwt_key, &config.clerk_jwks_url) {
        (Some(pem), _) => KeySource::pem(pem)?,
        (None, url) => KeySource::Jwks(Box::new(Jwks::new(JwksSettings {
            url: url.clone().unwrap_or_else(|| format!("{issuer}/.well-known/jwks.json")),
            min_refresh_interval: config.clerk_jwks_min_refresh,
            max_age: JWKS_MAX_AGE,
            fetch_timeout: JWKS_FETCH_TIMEOUT,
        })?)),
    };
    Ok(Some(ClerkVerifier::new(issuer, config.clerk_authorized_parties.clone(), keys)))
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
            group_commit_max: config.group_commit_max,
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
        let metrics = metrics.map(|(metrics, listener)| (metrics, Some(listener)));
        let feed_config = FeedConfig {
            poll_interval: config.change_poll_interval,
            heartbeat_interval: config.change_heartbeat_interval,
            fanout_capacity: config.change_fanout_capacity.get(),
        };
        let feed = Feed::start(store.clone(), feed_config, metrics.as_ref().map(|(m, _)| m.clone()));
        let max_stream_age = config.max_connection_age.saturating_add(http2::MAX_CONNECTION_AGE_GRACE);
        let (routes, health) =
            grpc::routes(store.clone(), feed.clone(), !config.no_reflection, max_stream_age)?;
        let health_task =
            tokio::spawn(grpc::watch_database(store.clone(), health, config.health_check_interval));
        let prune_task =
            tokio::spawn(prune(store.clone(), config.idempotency_retention, config.change_retention));
        let (metrics, metrics_task) = match metrics {
            Some((metrics, Some(listener))) => {
                let task =
                    tokio::spawn(metrics::serve(listener, metrics.clone(), store.clone(), feed.clone()));
                (Some(metrics), Some(task))
            }
            _ => (None, None),
        };
        log_security(&config, addr, &security);
        tracing::info!(
            %addr,
            metrics = %metrics_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
            reflection = !config.no_reflection,
            "user-service listening"
        );

        let layers = ServiceBuilder::new()
            .layer(BrowserCorsLayer::new(&config.cors_origins))
            .layer(GrpcWebLayer::new())
            .layer(RequestIdLayer)
            .layer(ObserveLayer::new(metrics))
            .layer(AuthLayer::new(security.authenticator))
            .layer(LimitLayer::new(config.max_concurrent_requests, config.request_timeout))
            .into_inner();
        let mut server = Server::builder();
        if let Some(tls) = security.tls {
            server = server.tls_config(tls)?;
        }
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let served = server
            // gRPC-Web from browsers arrives over HTTP/1.1 as well as HTTP/2.
            .accept_http1(true)
            .max_concurrent_streams(config.http2_max_concurrent_streams)
            .http2_max_pending_accept_reset_streams(Some(http2::MAX_PENDING_ACCEPT_RESET_STREAMS))
            .http2_max_local_error_reset_streams(Some(http2::MAX_LOCAL_ERROR_RESET_STREAMS))
            .http2_max_header_list_size(http2::MAX_HEADER_LIST_SIZE)
            .http2_keepalive_interval(Some(http2::KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(http2::KEEPALIVE_TIMEOUT))
            // GOAWAY at the age; the streams still open end by themselves
            // within the grace (`max_stream_age` above). Not tonic's
            // `max_connection_age_grace`: with it set, tonic 0.14 sends no
            // GOAWAY at all and cuts the connection at age + grace.
            .max_connection_age(config.max_connection_age)
            .layer(layers)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.await;
                feed.close();
            })
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
    let (clients, clerk) = match &security.authenticator {
        Some(auth) => (auth.tokens().map_or(0, Tokens::len), auth.clerk().map(ClerkVerifier::issuer)),
        None => (0, None),
    };
    match &security.authenticator {
        Some(_) => tracing::info!(
            clients,
            clerk_issuer = clerk.unwrap_or("off"),
            tls,
            cors_origins = ?config.cors_origins,
            "authentication on"
        ),
        None => tracing::info!(tls, cors_origins = ?config.cors_origins, "authentication off"),
    }
    if clerk.is_some() && config.clerk_authorized_parties.is_empty() {
        tracing::warn!("CLERK_AUTHORIZED_PARTIES is empty: session tokens are accepted whatever their azp");
    }
    let loopback = addr.ip().is_loopback();
    if security.authenticator.is_none() && !loopback {
        tracing::warn!(%addr, "--insecure: serving without authentication on a non-loopback address");
    }
    if security.authenticator.is_some() && security.tls.is_none() && !loopback {
        tracing::warn!(%addr, "bearer tokens travel in clear text: configure --tls-cert and --tls-key");
    }
}

/// Deletes idempotency records and changes past their retention, once an
/// hour.
async fn prune(store: Arc<dyn Store>, idempotency_retention: Duration, change_retention: Duration) {
    let mut every = tokio::time::interval(Duration::from_secs(3600));
    loop {
        every.tick().await;
        match store.prune_processed_events(idempotency_retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "pruned old idempotency records"),
            Err(err) => tracing::warn!(error = %err, "could not prune idempotency records"),
        }
        match store.prune_changes(change_retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "pruned old changes"),
            Err(err) => tracing::warn!(error = %err, "could not prune changes"),
        }
    }
}
