//! Hostile gRPC requests, sent as raw protobuf bytes so they can be what no
//! generated client would send: invalid UTF-8 in strings, huge repeated
//! fields, deeply nested values, messages over the 1 MiB limit, garbage and
//! unknown fields. Each gets a precise status, writes nothing, and the server
//! keeps serving other callers meanwhile.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::{Buf, BufMut};
use prost::{
    Message,
    encoding::{WireType, encode_key, encode_varint},
};
use tonic::{
    Code, Request, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};
use tonic_types::StatusExt;
use userdata_proto::v1 as pb;

use crate::helpers::{Db, TestServer, create, get_by_clerk_id};

crate::on_both_backends!(
    invalid_utf8_in_a_string_is_refused_and_writes_nothing,
    a_hundred_thousand_clerk_ids_are_refused_naming_the_field,
    many_invalid_clerk_ids_get_an_invalid_argument_of_bounded_size,
    messages_over_one_mebibyte_are_out_of_range_and_write_nothing,
    deeply_nested_values_are_refused_and_write_nothing,
    garbage_bytes_are_refused,
    unknown_fields_are_ignored,
    other_callers_are_served_throughout_a_hostile_barrage,
);

/// Sends and receives raw message bytes, so a test controls every byte.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

#[derive(Debug, Clone, Copy, Default)]
struct RawEncoder;

#[derive(Debug, Clone, Copy, Default)]
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// Calls `method` (`/package.Service/Method`) with `body` as the message.
async fn raw_call(channel: &Channel, method: &'static str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone()).max_decoding_message_size(64 << 20);
    grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static(method);
    grpc.unary(Request::new(body), path, RawCodec).await.map(tonic::Response::into_inner)
}

const GET_USER: &str = "/userdata.v1.UserService/GetUser";
const CREATE_USER: &str = "/userdata.v1.UserService/CreateUser";
const SET_USER_DATA: &str = "/userdata.v1.UserDataService/SetUserData";
const CHECK_FLAG_FOR_USERS: &str = "/userdata.v1.UserDataService/CheckFeatureFlagForUsers";

/// A length-delimited field (strings, bytes, messages).
fn field(buf: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.extend_from_slice(bytes);
}

fn message(fields: &[(u32, &[u8])]) -> Vec<u8> {
    let mut buf = Vec::new();
    for (tag, bytes) in fields {
        field(&mut buf, *tag, bytes);
    }
    buf
}

/// A `google.protobuf.Value` holding `depth` nested single-element lists
/// around a number.
fn nested_value(depth: usize) -> Vec<u8> {
    // Value.number_value = 2 (fixed64 wire type), Value.list_value = 6,
    // ListValue.values = 1.
    let mut value = Vec::new();
    encode_key(2, WireType::SixtyFourBit, &mut value);
    value.put_f64_le(1.0);
    for _ in 0..depth {
        let list = message(&[(1, &value)]);
        value = message(&[(6, &list)]);
    }
    value
}

/// `SetUserData{clerk_id, key, value}` with the value's bytes as given.
fn set_user_data(clerk_id: &str, key: &str, value: &[u8]) -> Vec<u8> {
    message(&[(2, clerk_id.as_bytes()), (3, key.as_bytes()), (4, value)])
}

async fn stored_keys(server: &TestServer, clerk_id: &str) -> Vec<String> {
    let mut users = server.users().await;
    let user = get_by_clerk_id(&mut users, clerk_id).await.expect("user");
    let data = server.store.list_user_data(user.id.parse().unwrap()).await.unwrap();
    data.into_iter().map(|d| d.key).collect()
}

/// The server answers a normal call right after.
async fn still_serving(server: &TestServer, clerk_id: &str) {
    let mut users = server.users().await;
    let user = get_by_clerk_id(&mut users, clerk_id).await;
    assert!(user.is_ok(), "the server must keep serving: {user:?}");
}

async fn invalid_utf8_in_a_string_is_refused_and_writes_nothing(db: Db) {
    let server = TestServer::start(db).await;
    let mut users = server.users().await;
    create(&mut users, "user_ok").await;
    let channel = server.channel().await;
    let bad: &[u8] = b"user_\xff\xfe";

    let status = raw_call(&channel, GET_USER, message(&[(2, bad)])).await.unwrap_err();
    // tonic maps an undecodable request to INTERNAL, as the gRPC status-code
    // guide prescribes for unparseable messages.
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(status.message().contains("UTF-8"), "{status:?}");

    // CreateUser{user{clerk_id: valid, email: invalid UTF-8}}.
    let user = message(&[(2, b"user_utf8"), (3, b"a\xc3\x28@example.org")]);
    let status = raw_call(&channel, CREATE_USER, message(&[(1, &user)])).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    let gone = get_by_clerk_id(&mut users, "user_utf8").await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "nothing may be written");

    // SetUserData with an invalid UTF-8 key and with a string value that is
    // not UTF-8 (Value.string_value = 3).
    let value = message(&[(3, b"\x80\x81")]);
    for body in
        [set_user_data("user_ok", "custom.x", &value), message(&[(2, b"user_ok"), (3, bad), (4, &value)])]
    {
        let status = raw_call(&channel, SET_USER_DATA, body).await.unwrap_err();
        assert_eq!(status.code(), Code::Internal, "{status:?}");
    }
    assert!(!stored_keys(&server, "user_ok").await.iter().any(|k| k.starts_with("custom.")));
    still_serving(&server, "user_ok").await;
}

async fn a_hundred_thousand_clerk_ids_are_refused_naming_the_field(db: Db) {
    let server = TestServer::start(db).await;
    let mut users = server.users().await;
    create(&mut users, "user_ok").await;
    let request = pb::CheckFeatureFlagForUsersRequest {
        flag_key: "beta".into(),
        clerk_ids: (0..100_000).map(|i| format!("u{i}")).collect(),
        ..Default::default()
    };
    let body = request.encode_to_vec();
    assert!(body.len() < 1 << 20, "this one must fit the message limit: {}", body.len());
    let started = std::time::Instant::now();
    let status = raw_call(&server.channel().await, CHECK_FLAG_FOR_USERS, body).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let fields: Vec<String> = status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default();
    // The limit is on user_ids and clerk_ids together; the violation is
    // reported under `user_ids`.
    assert!(fields.iter().any(|f| f == "user_ids" || f == "clerk_ids"), "{fields:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    still_serving(&server, "user_ok").await;
}

/// Ids that are each invalid: the answer must stay a usable status. (Before
/// violations were capped at 20, from about 60 invalid ids on, the
/// `grpc-status-details-bin` and `grpc-message` trailers outgrew the HTTP/2
/// header-list limit and the caller got `INTERNAL`/`RESOURCE_EXHAUSTED: h2
/// protocol error` instead of `INVALID_ARGUMENT`.) 1000 ids is the
/// documented batch size.
async fn many_invalid_clerk_ids_get_an_invalid_argument_of_bounded_size(db: Db) {
    let server = TestServer::start(db).await;
    let mut users = server.users().await;
    create(&mut users, "user_ok").await;
    for count in [100, 1_000, 100_000] {
        let request = pb::CheckFeatureFlagForUsersRequest {
            flag_key: "beta".into(),
            clerk_ids: (0..count).map(|i| format!("!{i}")).collect(),
            ..Default::default()
        };
        let status = raw_call(&server.channel().await, CHECK_FLAG_FOR_USERS, request.encode_to_vec())
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{count} invalid ids: {}",
            truncate(status.message())
        );
        let size = status.details().len() + status.message().len();
        assert!(size < 8 * 1024, "{count} invalid ids: the status is {size} bytes");
        still_serving(&server, "user_ok").await;
    }
}

fn truncate(text: &str) -> &str {
    &text[..text.len().min(300)]
}

async fn messages_over_one_mebibyte_are_out_of_range_and_write_nothing(db: Db) {
    let server = TestServer::start(db).await;
    let mut users = server.users().await;
    create(&mut users, "user_ok").await;
    let channel = server.channel().await;
    let big = "x".repeat(1 << 20);
    let value = message(&[(3, big.as_bytes())]);
    let status =
        raw_call(&channel, SET_USER_DATA, set_user_data("user_ok", "custom.big", &value)).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    let user = message(&[(2, b"user_big"), (4, big.as_bytes())]);
    let status = raw_call(&channel, CREATE_USER, message(&[(1, &user)])).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    assert_eq!(get_by_clerk_id(&mut users, "user_big").await.unwrap_err().code(), Code::NotFound);
    assert!(!stored_keys(&server, "user_ok").await.iter().any(|k| k == "custom.big"));
    still_serving(&server, "user_ok").await;
}

async fn deeply_nested_values_are_refused_and_write_nothing(db: Db) {
    let server = TestServer::start(db).await;
    let mut users = server.users().await;
    create(&mut users, "user_ok").await;
    let channel = server.channel().await;

    // Decodes, but is deeper than the documented 32 levels: the field is named.
    let status =
        raw_call(&channel, SET_USER_DATA, set_user_data("user_ok", "custom.deep", &nested_value(40)))
            .await
            .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let bad = status.get_details_bad_request().expect("BadRequest");
    assert!(bad.field_violations.iter().any(|v| v.field == "value"), "{bad:?}");

    // Deeper than protobuf decoding allows (prost stops at 100 levels): the
    // message cannot be decoded at all.
    for depth in [200, 20_000] {
        let status =
            raw_call(&channel, SET_USER_DATA, set_user_data("user_ok", "custom.deep", &nested_value(depth)))
                .await
                .unwrap_err();
        assert_eq!(status.code(), Code::Internal, "depth {depth}: {status:?}");
    }

    // Within the limit it is stored, so the refusals above are about depth.
    let ok = raw_call(&channel, SET_USER_DATA, set_user_data("user_ok", "custom.shallow", &nested_value(20)))
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    let keys = stored_keys(&server, "user_ok").await;
    assert!(
        keys.iter().any(|k| k == "custom.shallow") && !keys.iter().any(|k| k == "custom.deep"),
        "{keys:?}"
    );
    still_serving(&server, "user_ok").await;
}

async fn garbage_bytes_are_refused(db: Db) {
    let server = TestServer::start(db).await;
    let mut users = server.users().await;
    create(&mut users, "user_ok").await;
    let channel = server.channel().await;
    let garbage: [&[u8]; 4] = [
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        // A length prefix far beyond the message.
        b"\x12\xff\xff\xff\x0fuser",
        // Wire type 7 does not exist.
        b"\x0f",
        // A truncated varint.
        b"\x08\x80",
    ];
    for body in garbage {
        let status = raw_call(&channel, CREATE_USER, body.to_vec()).await.unwrap_err();
        assert_eq!(status.code(), Code::Internal, "{body:?}: {status:?}");
    }
    let all = users.list_users(pb::ListUsersRequest::default()).await.unwrap().into_inner().users;
    assert_eq!(all.len(), 1, "nothing may be written");
    still_serving(&server, "user_ok").await;
}

async fn unknown_fields_are_ignored(db: Db) {
    let server = TestServer::start(db).await;
    let channel = server.channel().await;
    // CreateUser{user{clerk_id, email, <field 99>}, <field 77 varint>, <field 500 bytes>}.
    let mut user = message(&[(2, b"user_unknown"), (3, b"u@example.org"), (99, b"surprise")]);
    encode_key(98, WireType::Varint, &mut user);
    encode_varint(12345, &mut user);
    let mut body = message(&[(1, &user), (500, b"\x00\x01")]);
    encode_key(77, WireType::Varint, &mut body);
    encode_varint(1, &mut body);
    let reply = raw_call(&channel, CREATE_USER, body).await.expect("unknown fields are ignored");
    let created = pb::CreateUserResponse::decode(reply.as_slice()).unwrap().user.unwrap();
    assert_eq!(created.clerk_id, "user_unknown");
    assert_eq!(created.email.as_deref(), Some("u@example.org"));

    let mut get = message(&[(2, b"user_unknown"), (42, b"x")]);
    encode_key(43, WireType::SixtyFourBit, &mut get);
    get.put_u64_le(7);
    let reply = raw_call(&channel, GET_USER, get).await.expect("unknown fields are ignored");
    let user = pb::GetUserResponse::decode(reply.as_slice()).unwrap().user.unwrap();
    assert_eq!(user.id, created.id);
}

async fn other_callers_are_served_throughout_a_hostile_barrage(db: Db) {
    let server = TestServer::start(db).await;
    let mut users = server.users().await;
    create(&mut users, "user_ok").await;
    let channel = server.channel().await;
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (stop, served, mut users) = (stop.clone(), served.clone(), users.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match get_by_clerk_id(&mut users, "user_ok").await {
                    Ok(_) => {
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(status) => failures.push(status),
                }
            }
            failures
        })
    };
    let big = message(&[(3, "x".repeat(1 << 20).as_bytes())]);
    let bodies: Vec<(&'static str, Vec<u8>)> = vec![
        (GET_USER, message(&[(2, b"\xff")])),
        (SET_USER_DATA, set_user_data("user_ok", "custom.deep", &nested_value(5_000))),
        (SET_USER_DATA, set_user_data("user_ok", "custom.big", &big)),
        (CREATE_USER, b"\x12\xff\xff\xff\x0f".to_vec()),
        (
            CHECK_FLAG_FOR_USERS,
            pb::CheckFeatureFlagForUsersRequest {
                flag_key: "beta".into(),
                clerk_ids: (0..60_000).map(|i| format!("user_{i}")).collect(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
    ];
    let mut attacks = Vec::new();
    for round in 0..8 {
        for (method, body) in &bodies {
            let (channel, body, method) = (channel.clone(), body.clone(), *method);
            attacks
                .push(tokio::spawn(async move { (round, method, raw_call(&channel, method, body).await) }));
        }
    }
    for attack in attacks {
        let (round, method, result) = attack.await.unwrap();
        assert!(result.is_err(), "round {round}: {method} must be refused");
    }
    stop.store(true, Ordering::SeqCst);
    let failures = reader.await.unwrap();
    assert!(failures.is_empty(), "the honest caller failed: {failures:?}");
    assert!(served.load(Ordering::SeqCst) > 0);
    let keys = stored_keys(&server, "user_ok").await;
    assert!(!keys.iter().any(|k| k.starts_with("custom.")), "{keys:?}");
}
