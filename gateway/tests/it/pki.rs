//! Throwaway certificates for the TLS tests, made with rcgen and written as
//! PEM files in a temporary directory:
//!
//! - `ca.pem`: the private CA;
//! - `server.pem` / `server.key`: a server certificate for `localhost` and
//!   `127.0.0.1`, signed by the CA (used by user-service and by the gateway's
//!   HTTPS endpoint);
//! - `client.pem` / `client.key`: a client certificate signed by the CA;
//! - `other-ca.pem`, `stranger.pem` / `stranger.key`: another CA and a
//!   client certificate it signed.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// The files, kept until the value is dropped.
pub struct Pki {
    dir: tempfile::TempDir,
    /// The CA certificate, PEM.
    pub ca_pem: String,
}

impl Pki {
    /// Generates everything.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = authority("gateway tests CA");
        let other_ca = authority("some other CA");
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();

        let (server, server_key) =
            leaf(&ca, &["localhost", "127.0.0.1"], "user-service", ExtendedKeyUsagePurpose::ServerAuth);
        write("server.pem", server);
        write("server.key", server_key);
        let (client, client_key) = leaf(&ca, &[], "gateway", ExtendedKeyUsagePurpose::ClientAuth);
        write("client.pem", client);
        write("client.key", client_key);
        let (stranger, stranger_key) = leaf(&other_ca, &[], "stranger", ExtendedKeyUsagePurpose::ClientAuth);
        write("stranger.pem", stranger);
        write("stranger.key", stranger_key);
        write("ca.pem", ca.pem());
        write("other-ca.pem", other_ca.pem());
        Self { ca_pem: ca.pem(), dir }
    }

    /// The path of one of the files.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A self-signed CA named `name`.
fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate for `names` signed by `ca`: (certificate PEM, key PEM).
fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![usage];
    let certificate = params.signed_by(&key, ca).unwrap();
    (certificate.pem(), key.serialize_pem())
}
