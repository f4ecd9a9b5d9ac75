//! HTTPS for the webhook endpoint: the rustls configuration (aws-lc-rs
//! provider, chosen explicitly so no process-wide default is needed).
//!
//! Handshakes run in each connection's own task ([`crate::http::server`]), bounded
//! by `--tls-handshake-timeout` and, per client, by
//! `--max-handshakes-per-ip`, so slow or silent clients never hold up the
//! accept loop.

use std::{path::Path, sync::Arc};

use tokio_rustls::rustls::{
    ServerConfig,
    crypto::aws_lc_rs,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

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
