//! TLS for the gRPC port (rustls), with optional mandatory client
//! certificates (mutual TLS).

use std::{error::Error as _, path::Path, time::Duration};

use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::config::Config;

/// Longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS settings of `config`, checked (files read and parsed), or `None`
/// when TLS is off. The error is one line naming the file at fault.
pub fn load(config: &Config) -> Result<Option<ServerTlsConfig>, String> {
    let (cert_path, key_path) = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) if config.tls_client_ca.is_none() => return Ok(None),
        (None, None) => return Err("--tls-client-ca needs --tls-cert and --tls-key".into()),
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    let cert = read_pem(cert_path, "CERTIFICATE", "TLS certificate")?;
    let key = read_pem(key_path, "PRIVATE KEY", "TLS private key")?;
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key)).timeout(HANDSHAKE_TIMEOUT);
    if let Some(ca_path) = &config.tls_client_ca {
        let ca = read_pem(ca_path, "CERTIFICATE", "client CA")?;
        tls = tls.client_ca_root(Certificate::from_pem(ca));
    }
    // Build the rustls configuration once now, so that a key that does not
    // match its certificate stops startup rather than every handshake.
    Server::builder().tls_config(tls.clone()).map_err(|err| {
        format!(
            "invalid TLS configuration ({}, {}{}): {}",
            cert_path.display(),
            key_path.display(),
            config.tls_client_ca.as_ref().map(|ca| format!(", {}", ca.display())).unwrap_or_default(),
            error_chain(&err)
        )
    })?;
    Ok(Some(tls))
}

/// Reads a PEM file that must hold at least one `label` block
/// (`PRIVATE KEY` also matches `RSA PRIVATE KEY` and `EC PRIVATE KEY`).
fn read_pem(path: &Path, label: &str, what: &str) -> Result<Vec<u8>, String> {
    let bytes =
        std::fs::read(path).map_err(|err| format!("cannot read the {what} {}: {err}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let has_block = text.lines().any(|line| {
        line.strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .is_some_and(|found| found.ends_with(label))
    });
    if !has_block {
        return Err(format!("the {what} {} holds no PEM `{label}` block", path.display()));
    }
    Ok(bytes)
}

/// An error and its sources on one line.
fn error_chain(err: &tonic::transport::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
