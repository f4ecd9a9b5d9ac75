//! The connection to user-service: TLS, the bearer token, and balancing over
//! several replicas.
//!
//! Every call carries `authorization: Bearer <token>` when a token is
//! configured (see [`Authorization`]). With one URL the channel is a plain
//! lazy channel. With several, it is tonic's balancing channel
//! ([`Channel::balance_channel`]): tonic connects lazily and treats a replica
//! that refuses connections as ready, so on its own it would keep sending a
//! share of the calls to a dead replica. The [`ReplicaWatcher`] therefore
//! checks each replica's `grpc.health.v1.Health/Check` on its own connection
//! and takes a replica that fails out of the balancer until it passes again
//! (never the last ones: with every replica failing, calls go to all of them
//! and fail fast). A call that fails with `UNAVAILABLE` asks the watcher for
//! a check at once ([`Failover::recheck`]) and is retried once.

use std::{fmt, path::Path, sync::Arc, time::Duration};

use http::Uri;
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tonic::{
    Request, Status,
    metadata::AsciiMetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, channel::Change},
};
use tonic_health::pb::health_client::HealthClient;

use super::replicas::{Failover, Replica, ReplicaWatcher, Replicas};
use crate::{
    config::{UpstreamTls, UserServiceConfig, UserServiceToken},
    error::error_chain,
    metrics::Metrics,
};

/// The channel every user-service client uses.
pub type UpstreamChannel = InterceptedService<Channel, Authorization>;

/// The `method` label of health checks.
pub const HEALTH_CHECK_METHOD: &str = "grpc.health.v1.Health/Check";

/// Interval of HTTP/2 pings on user-service connections. Pings detect a dead
/// peer (e.g. a restarted pod behind a stale connection) before a webhook has
/// to wait for it.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is dropped.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pending balancer changes beyond the initial inserts; the watcher waits
/// when they are full.
const CHANGES_CAPACITY: usize = 16;
/// Pending re-check requests; callers wait (within their deadline) when full.
const RECHECK_CAPACITY: usize = 64;

/// Adds the bearer token, if one is configured, to every call.
#[derive(Clone, Default)]
pub struct Authorization(Option<AsciiMetadataValue>);

impl Authorization {
    /// Sends `token` (or nothing when `None`).
    pub fn new(token: Option<&UserServiceToken>) -> Self {
        Self(token.map(UserServiceToken::authorization))
    }
}

impl fmt::Debug for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = if self.0.is_some() { "Authorization([redacted])" } else { "Authorization(none)" };
        f.write_str(shown)
    }
}

impl Interceptor for Authorization {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Everything that talks to user-service, built from the config.
#[derive(Debug)]
pub struct Upstream {
    /// The channel for calls (balanced over the replicas when there are
    /// several).
    pub channel: UpstreamChannel,
    /// Each replica's health.
    pub replicas: Arc<Replicas>,
    /// Keeps the balancer to healthy replicas; `None` with one replica. Run
    /// it (see [`ReplicaWatcher::run`]) while serving.
    pub watcher: Option<ReplicaWatcher>,
    /// Asks the watcher for a check at once; `None` with one replica.
    pub failover: Option<Failover>,
}

impl Upstream {
    /// Prepares the (lazily connecting) channels: nothing is contacted yet.
    /// Fails, naming the file, when a TLS file is unreadable or invalid.
    pub fn new(config: &UserServiceConfig, metrics: Option<Arc<Metrics>>) -> Result<Self, String> {
        let tls = if config.uses_tls() { Some(client_tls(&config.tls, config.timeout)?) } else { None };
        let endpoints = config
            .urls()
            .map(|url| endpoint(url, config.timeout, tls.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let authorization = Authorization::new(config.token.as_ref());
        let intercept = |channel: Channel| InterceptedService::new(channel, authorization.clone());

        if let [only] = endpoints.as_slice() {
            let channel = intercept(only.connect_lazy());
            let replica = Replica { url: only.uri().clone(), health: HealthClient::new(channel.clone()) };
            let replicas = Arc::new(Replicas { list: vec![replica], metrics });
            return Ok(Self { channel, replicas, watcher: None, failover: None });
        }

        // Room for the initial inserts, so they never wait.
        let (channel, changes) = Channel::balance_channel(endpoints.len() + CHANGES_CAPACITY);
        for (index, endpoint) in endpoints.iter().enumerate() {
            changes
                .try_send(Change::Insert(index, endpoint.clone()))
                .map_err(|_| "cannot set up the user-service balancer".to_owned())?;
        }
        // Each replica's health is checked on a connection of its own, so
        // the answer is about that replica and not whichever the balancer
        // picks.
        let list = endpoints
            .iter()
            .map(|endpoint| Replica {
                url: endpoint.uri().clone(),
                health: HealthClient::new(intercept(endpoint.connect_lazy())),
            })
            .collect();
        let replicas = Arc::new(Replicas { list, metrics: metrics.clone() });
        let (requests_tx, requests) = mpsc::channel(RECHECK_CAPACITY);
        let watcher = ReplicaWatcher {
            replicas: replicas.clone(),
            in_rotation: vec![true; endpoints.len()],
            endpoints,
            changes,
            requests,
            requests_closed: false,
            all_failing: false,
            interval: config.check_interval,
            timeout: config.health_timeout,
            metrics,
        };
        Ok(Self {
            channel: intercept(channel),
            replicas,
            watcher: Some(watcher),
            failover: Some(Failover { requests: requests_tx }),
        })
    }
}

/// One user-service endpoint with the gateway's connection settings.
fn endpoint(url: &Uri, timeout: Duration, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, String> {
    let endpoint = Endpoint::from(url.clone())
        // A connect attempt may not outlast the call it serves.
        .connect_timeout(timeout)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    match tls {
        Some(tls) => endpoint
            .tls_config(tls.clone())
            .map_err(|err| format!("invalid TLS settings for user-service {url}: {}", error_chain(&err))),
        None => Ok(endpoint),
    }
}

/// The client TLS settings: the private CA if given (else the system's
/// roots), and the client certificate for mutual TLS if given.
fn client_tls(settings: &UpstreamTls, handshake_timeout: Duration) -> Result<ClientTlsConfig, String> {
    let mut tls = ClientTlsConfig::new().timeout(handshake_timeout);
    tls = match &settings.ca {
        Some(path) => tls.ca_certificate(Certificate::from_pem(read_certificates(path, "user-service CA")?)),
        None => tls.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&settings.client_cert, &settings.client_key) {
        let cert = read_certificates(cert, "client certificate")?;
        let key_pem = std::fs::read(key)
            .map_err(|err| format!("cannot read the client private key {}: {err}", key.display()))?;
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|err| {
            format!("the client private key {} is not a PEM private key: {err}", key.display())
        })?;
        tls = tls.identity(Identity::from_pem(cert, key_pem));
    }
    Ok(tls)
}

/// Reads a PEM file that must hold at least one certificate.
fn read_certificates(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    let pem =
        std::fs::read(path).map_err(|err| format!("cannot read the {what} {}: {err}", path.display()))?;
    let count = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("the {what} {} is not valid PEM: {err}", path.display()))?
        .len();
    if count == 0 {
        return Err(format!("the {what} {} holds no PEM `CERTIFICATE` block", path.display()));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_debug_never_shows_the_token() {
        let token = UserServiceToken::parse("gateway-token-0123456789", "test").ok();
        let shown = format!("{:?}", Authorization::new(token.as_ref()));
        assert_eq!(shown, "Authorization([redacted])");
    }

    #[test]
    fn the_interceptor_adds_a_bearer_header_only_with_a_token() {
        let token = UserServiceToken::parse("gateway-token-0123456789", "test").ok();
        let mut with = Authorization::new(token.as_ref());
        let request = with.call(Request::new(())).map(|r| r.metadata().get("authorization").cloned());
        let value = request.ok().flatten();
        assert_eq!(value.as_ref().and_then(|v| v.to_str().ok()), Some("Bearer gateway-token-0123456789"));

        let mut without = Authorization::new(None);
        let request = without.call(Request::new(())).map(|r| r.metadata().get("authorization").cloned());
        assert!(request.ok().flatten().is_none());
    }
}
