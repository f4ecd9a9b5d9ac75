//! Authentication, scopes, TLS and mutual TLS, the non-loopback guard and
//! reflection switch, through the real server.

use std::{io::Write, path::PathBuf, process::Command, time::Duration};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use sha2::{Digest, Sha256};
use tonic::{
    Code, Request, Status,
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_types::StatusExt;
use user_service::testing::TestDatabase;
use userdata_proto::v1::{
    self as pb, user_data_service_client::UserDataServiceClient, user_service_client::UserServiceClient,
};

use crate::helpers::*;

const READ_TOKEN: &str = "reader-token-0123456789abcdef";
const WRITE_TOKEN: &str = "writer-token-0123456789abcdef";
const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
const HASHED_TOKEN: &str = "hashed-token-0123456789abcdef";

/// For startup checks that must fail before the database is opened: if one
/// did not, startup would fail later with another message.
const UNREACHABLE_DATABASE: &str = "postgres://postgres@127.0.0.1:9/postgres";

/// A tokens file with a reader, a reader-writer, an admin-only client and
/// a reader given by the digest of its token.
fn tokens_file() -> tempfile::NamedTempFile {
    let digest: String = Sha256::digest(HASHED_TOKEN.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        file,
        "# name scopes token\n\
         reader read {READ_TOKEN}\n\
         \n\
         writer read,write {WRITE_TOKEN}   # the gateway\n\
         ops admin {ADMIN_TOKEN}\n\
         hashed read sha256:{digest}"
    )
    .unwrap();
    file
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
struct Bearer(Option<&'static str>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = self.0 {
            let value: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

type AuthedUsers = UserServiceClient<InterceptedService<Channel, Bearer>>;
type AuthedData = UserDataServiceClient<InterceptedService<Channel, Bearer>>;

/// A server with authentication on (and the tokens file kept alive).
async fn server_with_tokens(db: Db) -> (TestServer, tempfile::NamedTempFile) {
    let file = tokens_file();
    let path = file.path().to_owned();
    let server = TestServer::start_with(db, move |config| config.auth_tokens = Some(path)).await;
    (server, file)
}

async fn users_as(server: &TestServer, token: Option<&'static str>) -> AuthedUsers {
    UserServiceClient::with_interceptor(server.channel().await, Bearer(token))
}

async fn data_as(server: &TestServer, token: Option<&'static str>) -> AuthedData {
    UserDataServiceClient::with_interceptor(server.channel().await, Bearer(token))
}

async fn get_user(client: &mut AuthedUsers, clerk_id: &str) -> Result<pb::User, Status> {
    client
        .get_user(pb::GetUserRequest { clerk_id: clerk_id.into(), ..Default::default() })
        .await
        .map(|r| r.into_inner().user.unwrap())
}

async fn create_user(client: &mut AuthedUsers, clerk_id: &str) -> Result<pb::User, Status> {
    client
        .create_user(pb::CreateUserRequest { user: Some(new_user(clerk_id)), ..Default::default() })
        .await
        .map(|r| r.into_inner().user.unwrap())
}

fn assert_reason(status: &Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo details");
    assert_eq!(info.reason, reason, "{status:?}");
}

crate::on_both_backends!(a_read_token_can_read_but_not_write, a_write_token_can_create_and_read_users);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_events_needs_the_write_scope_and_each_write_keeps_its_own_checks() {
    use pb::{
        event_service_client::EventServiceClient, event_write::Write, event_write_result::Result as Answer,
    };
    let (server, _file) = server_with_tokens(Db::Sqlite).await;
    let batch = |user: pb::User| pb::ApplyEventsRequest {
        writes: vec![pb::EventWrite {
            write: Some(Write::CreateUser(pb::CreateUserRequest {
                user: Some(user),
                event_context: event("msg_sec", 1_000),
                ..Default::default()
            })),
            ..Default::default()
        }],
    };
    let mut reader = EventServiceClient::with_interceptor(server.channel().await, Bearer(Some(READ_TOKEN)));
    let err = reader.apply_events(batch(new_user("user_sec"))).await.unwrap_err();
    assert_reason(&err, Code::PermissionDenied, "MISSING_SCOPE");

    let mut writer = EventServiceClient::with_interceptor(server.channel().await, Bearer(Some(WRITE_TOKEN)));
    let admin_only = pb::User { role: pb::UserRole::Admin as i32, ..new_user("user_sec") };
    let mut stream = writer.apply_events(batch(admin_only)).await.unwrap().into_inner();
    let results = stream.message().await.unwrap().map(|m| m.results).unwrap_or_default();
    let Some(Answer::Error(error)) = results.first().and_then(|r| r.result.clone()) else {
        panic!("setting a role needs admin in a batch too: {results:?}");
    };
    assert_eq!(error.code, Code::PermissionDenied as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_a_token_is_unauthenticated() {
    let (server, _file) = server_with_tokens(Db::Sqlite).await;
    let err = get_user(&mut users_as(&server, None).await, "user_a").await.unwrap_err();
    assert_reason(&err, Code::Unauthenticated, "UNAUTHENTICATED");
    assert!(err.message().contains("missing bearer token"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_with_an_unknown_token_is_unauthenticated() {
    let (server, _file) = server_with_tokens(Db::Sqlite).await;
    let wrong = "reader-token-0123456789abcdeX";
    let err = get_user(&mut users_as(&server, Some(wrong)).await, "user_a").await.unwrap_err();
    assert_reason(&err, Code::Unauthenticated, "UNAUTHENTICATED");
    assert!(!err.message().contains(wrong), "the token must not be echoed: {err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_the_needed_scope_is_permission_denied_naming_the_scope() {
    let (server, _file) = server_with_tokens(Db::Sqlite).await;
    let mut data = data_as(&server, Some(WRITE_TOKEN)).await;
    let err = data
        .reset_onboarding(pb::ResetOnboardingRequest { clerk_id: "user_a".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_reason(&err, Code::PermissionDenied, "MISSING_SCOPE");
    assert!(err.message().contains("`admin`"), "{err:?}");
    assert!(!err.message().contains(WRITE_TOKEN), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_scope_alone_does_not_grant_reads() {
    let (server, _file) = server_with_tokens(Db::Sqlite).await;
    let err = get_user(&mut users_as(&server, Some(ADMIN_TOKEN)).await, "user_a").await.unwrap_err();
    assert_reason(&err, Code::PermissionDenied, "MISSING_SCOPE");
    assert!(err.message().contains("`read`"), "{err:?}");
}

async fn a_read_token_can_read_but_not_write(db: Db) {
    let (server, _file) = server_with_tokens(db).await;
    create_user(&mut users_as(&server, Some(WRITE_TOKEN)).await, "user_r").await.unwrap();
    let mut reader = users_as(&server, Some(READ_TOKEN)).await;

    assert_eq!(get_user(&mut reader, "user_r").await.unwrap().clerk_id, "user_r");
    let err = create_user(&mut reader, "user_other").await.unwrap_err();
    assert_reason(&err, Code::PermissionDenied, "MISSING_SCOPE");
    assert!(err.message().contains("`write`"), "{err:?}");
    let mut data = data_as(&server, Some(READ_TOKEN)).await;
    let err = data
        .set_user_data(pb::SetUserDataRequest { clerk_id: "user_r".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
}

async fn a_write_token_can_create_and_read_users(db: Db) {
    let (server, _file) = server_with_tokens(db).await;
    let mut writer = users_as(&server, Some(WRITE_TOKEN)).await;
    let created = create_user(&mut writer, "user_w").await.unwrap();
    assert_eq!(get_user(&mut writer, "user_w").await.unwrap(), created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sha256_token_line_authenticates_the_token_it_hashes() {
    let (server, _file) = server_with_tokens(Db::Sqlite).await;
    let err = get_user(&mut users_as(&server, Some(HASHED_TOKEN)).await, "user_none").await.unwrap_err();
    // Past authentication and authorisation: the user simply does not exist.
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_work_without_a_token() {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest,
    };
    let (server, _file) = server_with_tokens(Db::Sqlite).await;
    let mut health = HealthClient::new(server.channel().await);
    health.check(HealthCheckRequest { service: String::new() }).await.unwrap();

    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let response = responses.next().await.unwrap().unwrap();
    assert!(format!("{response:?}").contains("userdata.v1.UserService"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_can_be_turned_off() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest,
    };
    let server = TestServer::start_with(Db::Sqlite, |config| config.no_reflection = true).await;
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let err = reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
}

#[test]
fn a_malformed_tokens_file_stops_startup_naming_the_file_and_line() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "# clients\nreader read {READ_TOKEN}\nwriter read,root {WRITE_TOKEN}").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_user-service"))
        .env("USER_SERVICE_AUTH_TOKENS_FILE", file.path())
        .env("USER_SERVICE_LISTEN", "127.0.0.1:0")
        .env("USER_SERVICE_METRICS_LISTEN", "off")
        .env("DATABASE_URL", UNREACHABLE_DATABASE)
        .env("DATABASE_ACQUIRE_TIMEOUT", "1s")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("{}:3:", file.path().display())), "{stderr}");
    assert!(!stderr.contains(WRITE_TOKEN) && !stderr.contains(READ_TOKEN), "{stderr}");
}

#[test]
fn a_non_loopback_address_without_authentication_stops_startup() {
    let output = Command::new(env!("CARGO_BIN_EXE_user-service"))
        .env("USER_SERVICE_LISTEN", "0.0.0.0:0")
        .env("USER_SERVICE_METRICS_LISTEN", "off")
        .env("DATABASE_URL", UNREACHABLE_DATABASE)
        .env("DATABASE_ACQUIRE_TIMEOUT", "1s")
        .env_remove("USER_SERVICE_AUTH_TOKENS_FILE")
        .env_remove("USER_SERVICE_INSECURE")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("refusing to serve on 0.0.0.0:0 without authentication"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_address_without_authentication_is_refused_by_the_app() {
    let database = TestDatabase::create(Db::Sqlite).await;
    let err = TestServer::try_start(database, "0.0.0.0:0".parse().unwrap(), |_| {}).await.err().unwrap();
    assert!(err.to_string().contains("without authentication"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_address_without_authentication_starts_with_insecure() {
    let database = TestDatabase::create(Db::Sqlite).await;
    let server =
        TestServer::try_start(database, "0.0.0.0:0".parse().unwrap(), |config| config.insecure = true)
            .await
            .unwrap_or_else(|err| panic!("{err}"));
    let url = format!("http://127.0.0.1:{}", server.addr.port());
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel);
    health.check(HealthCheckRequest { service: String::new() }).await.unwrap();
}

/// A CA, a server certificate for `localhost` and a client certificate,
/// written as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    client: Identity,
    stranger: Identity,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca("user-service test CA");
        let server_key = KeyPair::generate().unwrap();
        let mut server_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server_params.signed_by(&server_key, &ca).unwrap();
        std::fs::write(dir.path().join("server.pem"), server_cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let client = client_identity(&ca, "gateway");
        let stranger = client_identity(&ca_for_strangers(), "stranger");
        Self { dir, ca_pem: ca.pem(), client, stranger }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Turns TLS on, with client certificates required when `mutual`.
    fn configure(&self, config: &mut user_service::config::Config, mutual: bool) {
        config.tls_cert = Some(self.path("server.pem"));
        config.tls_key = Some(self.path("server.key"));
        if mutual {
            config.tls_client_ca = Some(self.path("ca.pem"));
        }
    }

    /// A TLS channel to `server` trusting our CA, with `identity` if given.
    async fn channel(&self, server: &TestServer, identity: Option<Identity>) -> Result<Channel, String> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name("localhost");
        if let Some(identity) = identity {
            tls = tls.identity(identity);
        }
        let url = format!("https://127.0.0.1:{}", server.addr.port());
        let endpoint = Channel::from_shared(url).unwrap().tls_config(tls).map_err(|e| e.to_string())?;
        endpoint.timeout(Duration::from_secs(5)).connect().await.map_err(|e| format!("{e:?}"))
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn ca_for_strangers() -> CertifiedIssuer<'static, KeyPair> {
    ca("some other CA")
}

fn client_identity(ca: &CertifiedIssuer<'static, KeyPair>, name: &str) -> Identity {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, ca).unwrap();
    Identity::from_pem(cert.pem(), key.serialize_pem())
}

async fn health_over(channel: Channel) -> Result<(), Status> {
    HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_calls_and_plain_text_to_the_tls_port_fails() {
    let pki = Pki::new();
    let server = TestServer::start_with(Db::Sqlite, |config| pki.configure(config, false)).await;

    let channel = pki.channel(&server, None).await.unwrap();
    let mut users = UserServiceClient::new(channel.clone());
    create(&mut users, "user_tls").await;
    health_over(channel).await.unwrap();

    let plain = Channel::from_shared(server.url()).unwrap().timeout(Duration::from_secs(5));
    let plain = match plain.connect().await {
        Ok(channel) => health_over(channel).await.map_err(|s| s.code()),
        Err(_) => Err(Code::Unavailable),
    };
    assert!(plain.is_err(), "plain text reached the TLS port: {plain:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_rejects_a_client_without_a_certificate() {
    let pki = Pki::new();
    let server = TestServer::start_with(Db::Sqlite, |config| pki.configure(config, true)).await;
    let outcome = match pki.channel(&server, None).await {
        Ok(channel) => health_over(channel).await.map_err(|s| format!("{s:?}")),
        Err(err) => Err(err),
    };
    assert!(outcome.is_err(), "a client without a certificate got through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_rejects_a_certificate_from_another_ca() {
    let pki = Pki::new();
    let server = TestServer::start_with(Db::Sqlite, |config| pki.configure(config, true)).await;
    let outcome = match pki.channel(&server, Some(pki.stranger.clone())).await {
        Ok(channel) => health_over(channel).await.map_err(|s| format!("{s:?}")),
        Err(err) => Err(err),
    };
    assert!(outcome.is_err(), "a certificate from another CA got through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_accepts_a_client_certificate_signed_by_the_ca() {
    let pki = Pki::new();
    let server = TestServer::start_with(Db::Sqlite, |config| pki.configure(config, true)).await;
    let channel = pki.channel(&server, Some(pki.client.clone())).await.unwrap();
    health_over(channel.clone()).await.unwrap();
    create(&mut UserServiceClient::new(channel), "user_mtls").await;
}

#[test]
fn a_missing_tls_key_file_stops_startup_with_one_line() {
    let pki = Pki::new();
    let output = Command::new(env!("CARGO_BIN_EXE_user-service"))
        .env("USER_SERVICE_LISTEN", "127.0.0.1:0")
        .env("USER_SERVICE_METRICS_LISTEN", "off")
        .env("USER_SERVICE_TLS_CERT", pki.path("server.pem"))
        .env("USER_SERVICE_TLS_KEY", pki.path("missing.key"))
        .env("DATABASE_URL", UNREACHABLE_DATABASE)
        .env("DATABASE_ACQUIRE_TIMEOUT", "1s")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot set up TLS") && stderr.contains("missing.key"), "{stderr}");
}

#[test]
fn a_key_that_does_not_match_the_certificate_stops_startup_with_one_line() {
    let pki = Pki::new();
    std::fs::write(pki.path("other.key"), KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_user-service"))
        .env("USER_SERVICE_LISTEN", "127.0.0.1:0")
        .env("USER_SERVICE_METRICS_LISTEN", "off")
        .env("USER_SERVICE_TLS_CERT", pki.path("server.pem"))
        .env("USER_SERVICE_TLS_KEY", pki.path("other.key"))
        .env("DATABASE_URL", UNREACHABLE_DATABASE)
        .env("DATABASE_ACQUIRE_TIMEOUT", "1s")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot set up TLS"), "{stderr}");
}
