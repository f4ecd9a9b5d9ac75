//! The HTTP/2 limits user-service sets itself (tonic leaves them unlimited,
//! or hyper's protections off, unless told), seen from a raw HTTP/2 client.

use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tonic::{Code, Request, metadata::MetadataValue};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::helpers::{Db, TestServer};

/// An HTTP/2 connection of our own, driven by a task that ends with it.
async fn connect(server: &TestServer) -> (h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let (send, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (send, driver)
}

/// One gRPC health check over `send`, answered 200.
async fn health_check(send: h2::client::SendRequest<Bytes>, server: &TestServer) {
    let mut send = send.ready().await.expect("a stream may open");
    let request = http::Request::post(format!("http://{}/grpc.health.v1.Health/Check", server.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = send.send_request(request, false).expect("send the request");
    // An empty HealthCheckRequest: one uncompressed frame of length 0.
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true).expect("send the message");
    let response = response.await.expect("a response");
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_limits_the_streams_a_connection_may_open() {
    let server = TestServer::start_with(Db::Sqlite, |c| c.http2_max_concurrent_streams = 7).await;
    let (send, _driver) = connect(&server).await;
    // After a round trip the server's SETTINGS are in.
    health_check(send.clone(), &server).await;
    assert_eq!(send.current_max_send_streams(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_block_over_16_kib_is_refused_and_the_server_keeps_serving() {
    let server = TestServer::start(Db::Sqlite).await;
    let mut health = HealthClient::new(server.channel().await);
    let call = |padding: usize| {
        let mut request = Request::new(HealthCheckRequest::default());
        let value = MetadataValue::try_from("x".repeat(padding)).unwrap();
        request.metadata_mut().insert("x-padding", value);
        request
    };
    assert!(health.check(call(8 * 1024)).await.is_ok(), "8 KiB of headers pass");
    let refused = health.check(call(20 * 1024)).await.expect_err("20 KiB of headers are refused");
    assert_ne!(refused.code(), Code::Ok);
    let mut fresh = HealthClient::new(server.channel().await);
    assert!(fresh.check(call(0)).await.is_ok(), "the server still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_older_than_the_max_age_is_closed() {
    let server = TestServer::start_with(Db::Sqlite, |c| c.max_connection_age = Duration::from_secs(1)).await;
    let (send, driver) = connect(&server).await;
    health_check(send.clone(), &server).await;
    // GOAWAY at the age, then the close: nothing is in flight to wait for.
    // (`send` is held: a client that drops every handle closes by itself.)
    tokio::time::timeout(Duration::from_secs(10), driver)
        .await
        .expect("the connection is closed after its max age")
        .unwrap();
    drop(send);
}
