//! Health, reflection, restarts, database outages and startup errors.

use std::{net::SocketAddr, process::Command, time::Duration};

use tokio::{net::TcpListener, task::JoinHandle};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::*;

crate::on_both_backends!(
    health_reports_serving_for_the_server_and_the_user_service,
    reflection_v1_and_v1alpha_list_every_service_and_know_error_details,
    data_survives_a_restart,
);

async fn health_reports_serving_for_the_server_and_the_user_service(db: Db) {
    let server = TestServer::start(db).await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "userdata.v1.UserService"] {
        let status = wait_for_health(&mut health, service, ServingStatus::Serving).await;
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
    let unknown = health.check(HealthCheckRequest { service: "nope.Service".into() }).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

async fn reflection_v1_and_v1alpha_list_every_service_and_know_error_details(db: Db) {
    use tonic_reflection::pb::{v1, v1alpha};
    let server = TestServer::start(db).await;

    let mut client = v1::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let requests = [
        v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
        },
        v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::FileContainingSymbol(
                "google.rpc.BadRequest".into(),
            )),
        },
    ];
    let mut responses =
        client.server_reflection_info(tokio_stream::iter(requests)).await.unwrap().into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "userdata.v1.UserService",
        "userdata.v1.ChangeService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    let found = responses.next().await.unwrap().unwrap().message_response;
    assert!(
        matches!(found, Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(_))),
        "google.rpc.BadRequest not resolvable: {found:?}"
    );

    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut responses =
        alpha.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let response = responses.next().await.unwrap().unwrap();
    assert!(format!("{response:?}").contains("userdata.v1.UserService"));
}

async fn data_survives_a_restart(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    let user = create(&mut client, "user_keep").await;
    drop(client);
    let database = server.stop().await;

    let server = TestServer::start_on(database, "127.0.0.1:0".parse().unwrap()).await;
    let mut client = server.users().await;
    assert_eq!(get_by_clerk_id(&mut client, "user_keep").await.unwrap(), user);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_not_serving_and_unavailable_then_recovers() {
    let database = user_service::testing::TestDatabase::create(Db::Postgres).await;
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let via_proxy = database.url.replacen("127.0.0.1:5432", &proxy.addr.to_string(), 1);
    assert_ne!(via_proxy, database.url, "the test database URL must name 127.0.0.1:5432");
    let server = TestServer::start_on(database.with_url(via_proxy), "127.0.0.1:0".parse().unwrap()).await;
    let mut client = server.users().await;
    let mut health = HealthClient::new(server.channel().await);
    create(&mut client, "user_out").await;

    let proxy = proxy.stop().await;
    assert_eq!(wait_for_health(&mut health, "", ServingStatus::NotServing).await, ServingStatus::NotServing);
    let err = get_by_clerk_id(&mut client, "user_out").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    let _proxy = Proxy::restart(proxy).await;
    assert_eq!(wait_for_health(&mut health, "", ServingStatus::Serving).await, ServingStatus::Serving);
    assert!(get_by_clerk_id(&mut client, "user_out").await.is_ok());
}

#[test]
fn an_unsupported_database_url_stops_startup_with_one_line() {
    let output = Command::new(env!("CARGO_BIN_EXE_user-service"))
        .env("DATABASE_URL", "mysql://root@127.0.0.1/test")
        .env("USER_SERVICE_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("DATABASE_URL must start with"), "{stderr}");
}

#[test]
fn an_unreachable_database_stops_startup_with_one_line() {
    let output = Command::new(env!("CARGO_BIN_EXE_user-service"))
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:9/postgres")
        .env("USER_SERVICE_LISTEN", "127.0.0.1:0")
        .env("DATABASE_ACQUIRE_TIMEOUT", "1s")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot open the database"), "{stderr}");
}

async fn wait_for_health(
    health: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
    want: ServingStatus,
) -> ServingStatus {
    let mut last = ServingStatus::Unknown;
    for _ in 0..100 {
        if let Ok(response) = health.check(HealthCheckRequest { service: service.into() }).await {
            last = response.into_inner().status();
            if last == want {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

/// A TCP proxy to the database that a test can cut, as an outage would.
struct Proxy {
    addr: SocketAddr,
    accept: JoinHandle<()>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    upstream: SocketAddr,
}

impl Proxy {
    /// Listens on `at` (port 0 for any), forwarding to Postgres.
    async fn start_at(upstream: SocketAddr, at: SocketAddr) -> Self {
        let listener = TcpListener::bind(at).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let tracked = connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let handle = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tracked.lock().unwrap().push(handle);
            }
        });
        Self { addr, accept, connections, upstream }
    }

    async fn start(upstream: SocketAddr) -> Self {
        Self::start_at(upstream, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Closes the listener and every connection; returns what restarts it.
    async fn stop(self) -> ProxyAddr {
        self.accept.abort();
        let _ = self.accept.await;
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
        ProxyAddr { addr: self.addr, upstream: self.upstream }
    }
}

/// Where a stopped proxy listened, to start it again on the same port.
struct ProxyAddr {
    addr: SocketAddr,
    upstream: SocketAddr,
}

impl Proxy {
    /// Listens again where a stopped proxy did.
    async fn restart(stopped: ProxyAddr) -> Self {
        Self::start_at(stopped.upstream, stopped.addr).await
    }
}
