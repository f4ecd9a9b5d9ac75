//! HTTPS for the webhook endpoint: the rustls configuration (aws-lc-rs
//! provider, chosen explicitly so no process-wide default is needed) and a
//! listener that hands `axum::serve` connections whose TLS handshake is done.
//!
//! Handshakes run in their own tasks, so a slow or silent client never holds
//! up the accept loop; each is bounded by [`HANDSHAKE_TIMEOUT`], and at most
//! [`MAX_HANDSHAKES`] run at once (further connections wait in the kernel's
//! backlog). Graceful shutdown is `axum::serve`'s own: the listener is
//! dropped, which abandons unfinished handshakes, and established connections
//! finish their requests.

use std::{io, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use tokio::{net::TcpListener, net::TcpStream, task::JoinSet};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        ServerConfig,
        crypto::aws_lc_rs,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
    server::TlsStream,
};

/// Longest a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most handshakes in progress at once.
pub const MAX_HANDSHAKES: usize = 256;

/// Reads the certificate chain and key (PEM) and builds the server
/// configuration, offering HTTP/2 and HTTP/1.1. The error is one line naming
/// the file at fault.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| format!("cannot read the TLS certificate {}: {err}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("the TLS certificate {} holds no PEM `CERTIFICATE` block", cert.display()));
    }
    let private_key = PrivateKeyDer::from_pem_file(key)
        .map_err(|err| format!("cannot read the TLS private key {}: {err}", key.display()))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, private_key))
        .map_err(|err| {
            format!("invalid TLS certificate or key ({}, {}): {err}", cert.display(), key.display())
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TCP listener whose accepted connections come out TLS-terminated.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<(SocketAddr, io::Result<TlsStream<TcpStream>>)>,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener").field("tcp", &self.tcp).finish_non_exhaustive()
    }
}

impl TlsListener {
    /// Terminates TLS with `config` on connections accepted by `tcp`.
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> Self {
        Self { tcp, acceptor: TlsAcceptor::from(config), handshakes: JoinSet::new() }
    }

    fn start_handshake(&mut self, stream: TcpStream, peer: SocketAddr) {
        let acceptor = self.acceptor.clone();
        self.handshakes.spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
            let result = handshake.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()));
            (peer, result)
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    // Cancel safe: `accept` and `join_next` are, and every other step is
    // synchronous, so `axum::serve` may drop this future at shutdown.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept(), if self.handshakes.len() < MAX_HANDSHAKES => match accepted {
                    Ok((stream, peer)) => self.start_handshake(stream, peer),
                    Err(error) => accept_failed(error).await,
                },
                Some(done) = self.handshakes.join_next() => match done {
                    Ok((peer, Ok(stream))) => return (stream, peer),
                    // Scanners and clients that do not trust us fail here
                    // all the time: not worth more than a debug line.
                    Ok((_, Err(error))) => tracing::debug!(%error, "TLS handshake failed"),
                    Err(error) => tracing::debug!(%error, "TLS handshake task ended"),
                },
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Errors from `accept` that concern one connection are skipped; others
/// (e.g. out of file descriptors) get a pause so the loop does not spin.
async fn accept_failed(error: io::Error) {
    let per_connection = matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    );
    if !per_connection {
        tracing::error!(%error, "cannot accept connections; retrying in 1s");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
