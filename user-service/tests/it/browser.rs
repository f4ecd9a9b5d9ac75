//! What a browser does, over real HTTP/1.1: gRPC-Web calls (unary and a
//! server stream) and CORS preflights, from an allowed origin and from
//! another one.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use reqwest::{Method, Response, header::HeaderMap};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus};
use userdata_proto::v1 as pb;

use crate::{
    helpers::{Db, TestServer},
    session::{self, APP_ORIGIN, Clerk},
};

const GRPC_WEB: &str = "application/grpc-web+proto";
const OTHER_ORIGIN: &str = "https://evil.userdata.test";

/// A server with CORS open to the app's origin, session tokens from `clerk`
/// and one user, `user_web`.
async fn browser_server(clerk: &Clerk) -> TestServer {
    let (server, _file) =
        session::server(Db::Sqlite, clerk, |config| config.cors_origins = vec![APP_ORIGIN.into()]).await;
    session::create_user(&server, "user_web").await;
    server
}

/// One gRPC-Web message frame.
fn frame(message: &impl Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut framed = BytesMut::with_capacity(5 + body.len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(body.len()).unwrap());
    framed.put_slice(&body);
    framed.freeze()
}

/// The frames of a gRPC-Web body decoded so far: messages, and the trailers
/// once the trailer frame arrived.
#[derive(Default)]
struct Frames {
    messages: Vec<Bytes>,
    trailers: Option<String>,
}

/// Splits complete frames off the front of `buffer`.
fn take_frames(buffer: &mut BytesMut, into: &mut Frames) {
    while buffer.len() >= 5 {
        let len = u32::from_be_bytes(buffer[1..5].try_into().unwrap()) as usize;
        if buffer.len() < 5 + len {
            return;
        }
        let flag = buffer.get_u8();
        buffer.advance(4);
        let payload = buffer.split_to(len).freeze();
        if flag & 0x80 != 0 {
            into.trailers = Some(String::from_utf8(payload.to_vec()).expect("trailers are text"));
        } else {
            into.messages.push(payload);
        }
    }
}

/// Posts one gRPC-Web call the way a browser's fetch does.
async fn grpc_web(
    server: &TestServer,
    path: &str,
    origin: &str,
    token: Option<&str>,
    body: Bytes,
) -> Response {
    let mut request = reqwest::Client::new()
        .post(format!("{}{path}", server.url()))
        .header("content-type", GRPC_WEB)
        .header("x-grpc-web", "1")
        .header("x-user-agent", "grpc-web-javascript/0.1")
        .header("origin", origin)
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("send a gRPC-Web request");
    assert_eq!(response.version(), reqwest::Version::HTTP_11, "browsers may speak HTTP/1.1");
    response
}

/// Reads the whole body of a unary gRPC-Web response.
async fn read_all(response: Response) -> Frames {
    let mut buffer = BytesMut::from(&response.bytes().await.expect("read the body")[..]);
    let mut frames = Frames::default();
    take_frames(&mut buffer, &mut frames);
    assert!(buffer.is_empty(), "a partial frame was left over");
    frames
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().expect("ASCII header"))
}

fn cors_headers(headers: &HeaderMap) -> Vec<String> {
    headers.keys().map(|k| k.as_str().to_owned()).filter(|k| k.starts_with("access-control-")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_web_unary_call_from_an_allowed_origin_works() {
    let clerk = Clerk::start().await;
    let server = browser_server(&clerk).await;
    let request = pb::GetUserRequest { clerk_id: "user_web".into(), ..Default::default() };
    let token = clerk.token("user_web");
    let response =
        grpc_web(&server, "/userdata.v1.UserService/GetUser", APP_ORIGIN, Some(&token), frame(&request))
            .await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(header(&headers, "content-type"), Some(GRPC_WEB));
    assert_eq!(header(&headers, "access-control-allow-origin"), Some(APP_ORIGIN));
    let exposed = header(&headers, "access-control-expose-headers").expect("exposed headers").to_owned();
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(exposed.contains(name), "{name} not in {exposed:?}");
    }
    let frames = read_all(response).await;
    assert_eq!(frames.messages.len(), 1);
    let user = pb::GetUserResponse::decode(frames.messages[0].clone()).unwrap().user.unwrap();
    assert_eq!(user.clerk_id, "user_web");
    let trailers = frames.trailers.expect("a trailer frame");
    assert!(trailers.contains("grpc-status:0"), "{trailers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_web_error_reaches_the_browser_with_its_status_and_details() {
    let clerk = Clerk::start().await;
    let server = browser_server(&clerk).await;
    session::create_user(&server, "user_other").await;
    let request = pb::GetUserRequest { clerk_id: "user_other".into(), ..Default::default() };
    let token = clerk.token("user_web");
    let response =
        grpc_web(&server, "/userdata.v1.UserService/GetUser", APP_ORIGIN, Some(&token), frame(&request))
            .await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(header(&headers, "access-control-allow-origin"), Some(APP_ORIGIN));
    // A trailers-only answer: the status travels in the (exposed) headers.
    assert_eq!(header(&headers, "grpc-status"), Some("7"), "PERMISSION_DENIED");
    assert!(header(&headers, "grpc-message").is_some_and(|m| m.contains("own%20data")), "{headers:?}");
    assert!(headers.contains_key("grpc-status-details-bin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_web_server_stream_delivers_messages_as_they_come() {
    let clerk = Clerk::start().await;
    let server = browser_server(&clerk).await;
    let request = HealthCheckRequest { service: String::new() };
    let mut response =
        grpc_web(&server, "/grpc.health.v1.Health/Watch", APP_ORIGIN, None, frame(&request)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(response.headers(), "access-control-allow-origin"), Some(APP_ORIGIN));
    // The stream stays open: read frames as they arrive until SERVING shows.
    let mut buffer = BytesMut::new();
    let mut frames = Frames::default();
    let serving = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let chunk = response.chunk().await.expect("read the stream").expect("the stream stays open");
            buffer.extend_from_slice(&chunk);
            take_frames(&mut buffer, &mut frames);
            let statuses: Vec<i32> = frames
                .messages
                .iter()
                .map(|m| HealthCheckResponse::decode(m.clone()).expect("a health message").status)
                .collect();
            if statuses.contains(&(ServingStatus::Serving as i32)) {
                return;
            }
        }
    })
    .await;
    assert!(serving.is_ok(), "no SERVING message on the stream");
    assert!(frames.trailers.is_none(), "a watch stream does not end by itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_users_change_stream_reaches_the_browser_as_changes_happen() {
    let clerk = Clerk::start().await;
    let server = browser_server(&clerk).await;
    let token = clerk.token("user_web");
    let request = pb::WatchChangesRequest::default();
    let mut response = grpc_web(
        &server,
        "/userdata.v1.ChangeService/WatchChanges",
        APP_ORIGIN,
        Some(&token),
        frame(&request),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(response.headers(), "access-control-allow-origin"), Some(APP_ORIGIN));
    assert_eq!(header(response.headers(), "grpc-status"), None, "the stream is open, not refused");

    // An administrator changes the user's data while the browser listens.
    let (_, mut admin) = session::clients(&server, Some(session::ADMIN_TOKEN.into())).await;
    admin
        .set_user_data(pb::SetUserDataRequest {
            clerk_id: "user_web".into(),
            key: "custom.note".into(),
            value: Some(prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue("hi".into())),
            }),
            ..Default::default()
        })
        .await
        .expect("an administrator writes the user's data");

    let mut buffer = BytesMut::new();
    let mut frames = Frames::default();
    let change = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let chunk = response.chunk().await.expect("read the stream").expect("the stream stays open");
            buffer.extend_from_slice(&chunk);
            take_frames(&mut buffer, &mut frames);
            let change = frames.messages.iter().find_map(|m| {
                match pb::WatchChangesResponse::decode(m.clone()).expect("a watch message").event {
                    Some(pb::watch_changes_response::Event::Change(change)) => Some(change),
                    _ => None,
                }
            });
            if let Some(change) = change {
                return change;
            }
        }
    })
    .await
    .expect("the change reaches the browser");
    assert_eq!(change.clerk_id, "user_web");
    assert_eq!(change.key, "custom.note");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflight_from_an_allowed_origin_allows_grpc_web() {
    let clerk = Clerk::start().await;
    let server = browser_server(&clerk).await;
    let response = reqwest::Client::new()
        .request(Method::OPTIONS, format!("{}/userdata.v1.UserService/GetUser", server.url()))
        .header("origin", APP_ORIGIN)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization,content-type,x-grpc-web,x-user-agent")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let headers = response.headers();
    assert_eq!(header(headers, "access-control-allow-origin"), Some(APP_ORIGIN));
    assert!(header(headers, "access-control-allow-methods").is_some_and(|m| m.contains("POST")));
    let allowed = header(headers, "access-control-allow-headers").expect("allowed headers");
    for name in ["authorization", "content-type", "x-grpc-web", "x-user-agent", "grpc-timeout"] {
        assert!(allowed.contains(name), "{name} not in {allowed:?}");
    }
    assert!(header(headers, "access-control-max-age").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disallowed_origin_gets_no_cors_headers() {
    let clerk = Clerk::start().await;
    let server = browser_server(&clerk).await;
    let preflight = reqwest::Client::new()
        .request(Method::OPTIONS, format!("{}/userdata.v1.UserService/GetUser", server.url()))
        .header("origin", OTHER_ORIGIN)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization,content-type,x-grpc-web")
        .send()
        .await
        .unwrap();
    assert_eq!(cors_headers(preflight.headers()), Vec::<String>::new());
    let request = pb::GetUserRequest { clerk_id: "user_web".into(), ..Default::default() };
    let token = clerk.token("user_web");
    let call =
        grpc_web(&server, "/userdata.v1.UserService/GetUser", OTHER_ORIGIN, Some(&token), frame(&request))
            .await;
    assert_eq!(cors_headers(call.headers()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_configured_origins_no_origin_gets_cors_headers() {
    let clerk = Clerk::start().await;
    let (server, _file) = session::server(Db::Sqlite, &clerk, |_| {}).await;
    let preflight = reqwest::Client::new()
        .request(Method::OPTIONS, format!("{}/userdata.v1.UserService/GetUser", server.url()))
        .header("origin", APP_ORIGIN)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(cors_headers(preflight.headers()), Vec::<String>::new());
}
