//! Production hardening, through the real gateway and, where it matters, a
//! real user-service: the bearer token, TLS and mutual TLS to user-service,
//! HTTPS on the webhook endpoint, and the refusal to serve plain HTTP on a
//! public address.

use std::{io::Write, net::SocketAddr, process::Command, sync::Arc};

use gateway::{
    App,
    app::StartError,
    config::{ConfigError, ServerTls, UserServiceToken},
};
use http::Uri;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::{
    TlsConnector,
    rustls::{
        ClientConfig, RootCertStore,
        crypto::aws_lc_rs,
        pki_types::{CertificateDer, ServerName, pem::PemObject},
    },
};
use user_service::testing::{Db, TestServer};

use crate::{
    pki::Pki,
    support::{FakeUpstream, Gateway, SECRET, config, now, signed, url_of, user_event},
};

/// The token user-service knows the gateway by (`write` scope).
const WRITE_TOKEN: &str = "gateway-write-token-0123456789";
/// A token user-service knows, but with the `read` scope only.
const READ_TOKEN: &str = "dashboard-read-token-0123456789";

/// A tokens file for user-service: the gateway writes, a dashboard reads.
fn tokens_file() -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "gateway write {WRITE_TOKEN}\ndashboard read {READ_TOKEN}").unwrap();
    file
}

/// A real user-service (SQLite) with authentication on.
async fn user_service_with_auth(tokens: &tempfile::NamedTempFile) -> TestServer {
    let path = tokens.path().to_owned();
    TestServer::start_with(Db::Sqlite, move |config| config.auth_tokens = Some(path)).await
}

fn token(text: &str) -> Option<UserServiceToken> {
    Some(UserServiceToken::parse(text, "test").unwrap())
}

#[tokio::test]
async fn the_token_is_sent_and_accepted_by_a_user_service_with_auth_on() {
    let tokens = tokens_file();
    let server = user_service_with_auth(&tokens).await;
    let mut config = config(url_of(server.addr), SECRET);
    config.user_service_token = token(WRITE_TOKEN);
    let gateway = Gateway::start_with(config).await;

    let answer = gateway.post_signed("msg_token_ok", &user_event("user.created", "user_token")).await;

    assert_eq!(answer.status, 200, "{:?}", answer.json);
    assert_eq!(answer.json["outcome"], "applied");
}

#[tokio::test]
async fn a_gateway_without_a_token_gets_500_from_a_user_service_with_auth_on() {
    let tokens = tokens_file();
    let server = user_service_with_auth(&tokens).await;
    let gateway = Gateway::start_with(config(url_of(server.addr), SECRET)).await;

    let answer = gateway.post_signed("msg_no_token", &user_event("user.created", "user_no_token")).await;

    // UNAUTHENTICATED is a misconfiguration: 500, so Svix keeps retrying
    // until the token is fixed (STATUS_CODES.md).
    assert_eq!(answer.status, 500, "{:?}", answer.json);
    let error = answer.json["error"].as_str().unwrap_or_default();
    assert!(error.contains("Unauthenticated"), "{error}");
}

#[tokio::test]
async fn a_token_without_the_write_scope_gets_500() {
    let tokens = tokens_file();
    let server = user_service_with_auth(&tokens).await;
    let mut config = config(url_of(server.addr), SECRET);
    config.user_service_token = token(READ_TOKEN);
    let gateway = Gateway::start_with(config).await;

    let answer = gateway.post_signed("msg_read_token", &user_event("user.created", "user_read_token")).await;

    assert_eq!(answer.status, 500, "{:?}", answer.json);
    let error = answer.json["error"].as_str().unwrap_or_default();
    assert!(error.contains("PermissionDenied") && !error.contains(READ_TOKEN), "{error}");
}

/// user-service over TLS with the test PKI; client certificates required
/// when `mutual`.
async fn user_service_with_tls(pki: &Pki, mutual: bool) -> TestServer {
    let (cert, key, ca) = (pki.path("server.pem"), pki.path("server.key"), pki.path("ca.pem"));
    TestServer::start_with(Db::Sqlite, move |config| {
        config.tls_cert = Some(cert);
        config.tls_key = Some(key);
        if mutual {
            config.tls_client_ca = Some(ca);
        }
    })
    .await
}

fn https_url(addr: SocketAddr) -> Uri {
    format!("https://127.0.0.1:{}", addr.port()).parse().unwrap()
}

#[tokio::test]
async fn tls_to_user_service_works_with_a_private_ca() {
    let pki = Pki::new();
    let server = user_service_with_tls(&pki, false).await;
    let mut config = config(https_url(server.addr), SECRET);
    config.user_service_tls.ca = Some(pki.path("ca.pem"));
    let gateway = Gateway::start_with(config).await;

    let answer = gateway.post_signed("msg_tls", &user_event("user.created", "user_tls")).await;

    assert_eq!(answer.status, 200, "{:?}", answer.json);
    assert_eq!(answer.json["outcome"], "applied");
    assert_eq!(gateway.get("/readyz").await.status, 200);
}

#[tokio::test]
async fn a_user_service_certificate_from_an_unknown_ca_is_not_trusted() {
    let pki = Pki::new();
    let server = user_service_with_tls(&pki, false).await;
    let mut config = config(https_url(server.addr), SECRET);
    config.user_service_tls.ca = Some(pki.path("other-ca.pem"));
    let gateway = Gateway::start_with(config).await;

    let answer = gateway.post_signed("msg_untrusted", &user_event("user.created", "user_untrusted")).await;

    assert_eq!(answer.status, 503, "{:?}", answer.json);
}

#[tokio::test]
async fn mutual_tls_to_user_service_works_with_the_client_certificate() {
    let pki = Pki::new();
    let server = user_service_with_tls(&pki, true).await;
    let mut config = config(https_url(server.addr), SECRET);
    config.user_service_tls.ca = Some(pki.path("ca.pem"));
    config.user_service_tls.client_cert = Some(pki.path("client.pem"));
    config.user_service_tls.client_key = Some(pki.path("client.key"));
    let gateway = Gateway::start_with(config).await;

    let answer = gateway.post_signed("msg_mtls", &user_event("user.created", "user_mtls")).await;

    assert_eq!(answer.status, 200, "{:?}", answer.json);
    assert_eq!(answer.json["outcome"], "applied");
}

#[tokio::test]
async fn mutual_tls_to_user_service_fails_without_the_client_certificate() {
    let pki = Pki::new();
    let server = user_service_with_tls(&pki, true).await;
    let mut config = config(https_url(server.addr), SECRET);
    config.user_service_tls.ca = Some(pki.path("ca.pem"));
    let gateway = Gateway::start_with(config).await;

    let answer = gateway.post_signed("msg_no_cert", &user_event("user.created", "user_no_cert")).await;

    assert_eq!(answer.status, 503, "{:?}", answer.json);
    assert_eq!(gateway.get("/readyz").await.status, 503);
}

#[tokio::test]
async fn mutual_tls_to_user_service_fails_with_a_certificate_from_another_ca() {
    let pki = Pki::new();
    let server = user_service_with_tls(&pki, true).await;
    let mut config = config(https_url(server.addr), SECRET);
    config.user_service_tls.ca = Some(pki.path("ca.pem"));
    config.user_service_tls.client_cert = Some(pki.path("stranger.pem"));
    config.user_service_tls.client_key = Some(pki.path("stranger.key"));
    let gateway = Gateway::start_with(config).await;

    let answer = gateway.post_signed("msg_stranger", &user_event("user.created", "user_stranger")).await;

    assert_eq!(answer.status, 503, "{:?}", answer.json);
}

#[tokio::test]
async fn an_unreadable_user_service_ca_stops_startup_naming_the_file() {
    let pki = Pki::new();
    let mut config = config("https://127.0.0.1:9".parse().unwrap(), SECRET);
    config.user_service_tls.ca = Some(pki.path("missing-ca.pem"));

    let error = App::build(config).await.map(|_| ()).unwrap_err();

    assert!(matches!(error, StartError::Upstream(_)), "{error}");
    assert!(error.to_string().contains("missing-ca.pem"), "{error}");
}

/// Sends `request` (raw HTTP/1.1) over TLS, trusting only the test CA, and
/// returns everything the server answered.
async fn https_exchange(addr: SocketAddr, ca_pem: &str, request: &[u8]) -> Result<String, String> {
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(certificate.unwrap()).unwrap();
    }
    let client = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let server_name = ServerName::try_from("localhost").unwrap();
    let mut tls =
        TlsConnector::from(Arc::new(client)).connect(server_name, tcp).await.map_err(|e| e.to_string())?;
    tls.write_all(request).await.map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    // The server may close without a TLS close_notify after `Connection:
    // close`; what was read until then is the answer.
    let _ = tls.read_to_end(&mut answer).await;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// A gateway serving HTTPS with the test PKI's server certificate.
async fn https_gateway(pki: &Pki, upstream: &FakeUpstream) -> Gateway {
    let mut config = config(upstream.url(), SECRET);
    config.tls = Some(ServerTls { cert: pki.path("server.pem"), key: pki.path("server.key") });
    Gateway::start_with(config).await
}

#[tokio::test]
async fn the_https_webhook_endpoint_completes_a_handshake_and_applies_events() {
    let pki = Pki::new();
    let upstream = FakeUpstream::start().await;
    let gateway = https_gateway(&pki, &upstream).await;
    let body = user_event("user.created", "user_https");
    let mut request = format!(
        "POST /webhooks/clerk HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in &signed(SECRET, "msg_https", now(), &body) {
        request.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
    }
    request.push_str("\r\n");
    request.push_str(&body);

    let answer = https_exchange(gateway.addr, &pki.ca_pem, request.as_bytes()).await.unwrap();

    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""outcome":"applied""#), "{answer}");
    assert_eq!(upstream.calls().len(), 1);
}

#[tokio::test]
async fn the_https_endpoint_does_not_answer_plain_http() {
    let pki = Pki::new();
    let upstream = FakeUpstream::start().await;
    let gateway = https_gateway(&pki, &upstream).await;

    let plain = gateway.http.get(gateway.url("/healthz")).send().await;

    assert!(plain.is_err(), "plain HTTP got an answer: {plain:?}");
}

#[tokio::test]
async fn an_https_gateway_stops_gracefully() {
    let pki = Pki::new();
    let upstream = FakeUpstream::start().await;
    let gateway = https_gateway(&pki, &upstream).await;
    let request = b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n";
    let answer = https_exchange(gateway.addr, &pki.ca_pem, request).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    gateway.stop().await;
}

#[tokio::test]
async fn a_key_that_does_not_match_the_https_certificate_stops_startup() {
    let pki = Pki::new();
    let upstream = FakeUpstream::start().await;
    let mut config = config(upstream.url(), SECRET);
    config.tls = Some(ServerTls { cert: pki.path("server.pem"), key: pki.path("client.key") });

    let error = App::build(config).await.map(|_| ()).unwrap_err();

    assert!(matches!(error, StartError::Tls(_)), "{error}");
}

#[tokio::test]
async fn a_non_loopback_address_without_tls_is_refused() {
    let upstream = FakeUpstream::start().await;
    let mut config = config(upstream.url(), SECRET);
    config.listen = "0.0.0.0:0".parse().unwrap();

    let error = App::build(config).await.map(|_| ()).unwrap_err();

    assert!(matches!(error, StartError::Config(ConfigError::PlainHttpOnPublicAddress(_))), "{error}");
}

#[tokio::test]
async fn a_non_loopback_address_without_tls_starts_with_insecure() {
    let upstream = FakeUpstream::start().await;
    let mut config = config(upstream.url(), SECRET);
    config.listen = "0.0.0.0:0".parse().unwrap();
    config.insecure = true;
    let gateway = Gateway::start_with(config).await;

    let url = format!("http://127.0.0.1:{}/healthz", gateway.addr.port());
    let answer = gateway.http.get(url).send().await.unwrap();

    assert_eq!(answer.status(), 200);
}

/// Runs the binary off the async runtime with `env`; returns (exit code,
/// stderr).
async fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
    command
        .args(args)
        .env("CLERK_WEBHOOK_SIGNING_SECRET", SECRET)
        .env_remove("USER_SERVICE_TOKEN")
        .env_remove("USER_SERVICE_TOKEN_FILE")
        .env_remove("GATEWAY_INSECURE")
        .env("GATEWAY_METRICS_LISTEN", "off");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test]
async fn the_binary_refuses_plain_http_on_a_public_address_with_one_line() {
    let (code, stderr) = run_binary(&["serve", "--listen", "0.0.0.0:0"], &[]).await;

    assert_eq!(code, Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("refusing to serve plain HTTP on 0.0.0.0:0"), "{stderr}");
    assert!(stderr.contains("--insecure"), "{stderr}");
}

#[tokio::test]
async fn a_missing_token_file_stops_startup_with_one_line_naming_it() {
    let (code, stderr) =
        run_binary(&["serve", "--user-service-token-file", "/nonexistent/gateway-token"], &[]).await;

    assert_eq!(code, Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/gateway-token"), "{stderr}");
}

#[tokio::test]
async fn a_malformed_token_stops_startup_without_printing_it() {
    let (code, stderr) = run_binary(&["serve"], &[("USER_SERVICE_TOKEN", "two secret-words")]).await;

    assert_eq!(code, Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("USER_SERVICE_TOKEN") && !stderr.contains("secret-words"), "{stderr}");
}

#[tokio::test]
async fn a_token_file_and_the_token_variable_together_are_refused() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), WRITE_TOKEN).unwrap();
    let path = file.path().display().to_string();

    let (code, stderr) =
        run_binary(&["serve", "--user-service-token-file", &path], &[("USER_SERVICE_TOKEN", WRITE_TOKEN)])
            .await;

    assert_eq!(code, Some(2));
    assert!(stderr.contains("not both") && !stderr.contains(WRITE_TOKEN), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tls_handshakes_from_one_host_never_keep_an_https_client_waiting() {
    let pki = Pki::new();
    let upstream = FakeUpstream::start().await;
    let mut config = config(upstream.url(), SECRET);
    config.tls = Some(ServerTls { cert: pki.path("server.pem"), key: pki.path("server.key") });
    config.connections.max_handshakes_per_ip = 8;
    config.metrics_listen = gateway::config::MetricsListen::On("127.0.0.1:0".parse().unwrap());
    let gateway = Gateway::start_with(config).await;
    // More silent connections (no ClientHello) than the 256 pending
    // handshakes that used to stop the listener accepting.
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(gateway.addr).await.unwrap());
    }

    // Well within the 10 s handshake timeout that used to free the listener.
    let request = b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n";
    let exchange = https_exchange(gateway.addr, &pki.ca_pem, request);
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(std::time::Duration::from_secs(5), exchange).await;
    eprintln!("HTTPS exchange behind 300 silent connections took {:?}", started.elapsed());

    let answer = answer.expect("the handshake was not kept waiting").unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Beyond 8 pending handshakes, the oldest silent ones were closed.
    let text = gateway.metrics().await;
    let evicted = crate::metrics::sample(&text, "http_connections_evicted_total", &[]);
    assert!(evicted >= (300 - 8) as f64, "{text}");
    drop(silent);
}
