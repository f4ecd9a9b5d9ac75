//! Hostile input for the parts of the gateway that read untrusted bytes:
//! `clerk::parse_event` and the Svix verification path, directly and over
//! HTTP. Properties: nothing panics, every input takes bounded time, and every
//! input is either parsed/verified or rejected with a message (and a field
//! where one is at fault). Case counts are modest so the suite runs in
//! seconds.

use std::time::{Duration, Instant};

use gateway::{
    SigningSecrets,
    clerk::{Payload, parse_event},
    error::RequestError,
    svix::{SVIX_ID, SVIX_SIGNATURE, SVIX_TIMESTAMP, Verifier, sign_headers},
};
use http::{HeaderMap, HeaderValue};
use proptest::{prelude::*, test_runner::TestRunner};
use serde_json::{Map, Value, json};

use crate::support::{Call, FakeUpstream, Gateway, SECRET, deleted_event, now, signed, user_event};

/// Parsing one body must take far less than this, whatever it is. It guards
/// against super-linear parsing (a quadratic parse of the 200,000-deep bodies
/// below takes minutes), not speed: a linear parse of them in a debug build on
/// a busy 2-core machine has taken over a second.
const PARSE_BUDGET: Duration = Duration::from_secs(5);

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, max_shrink_iters: 512, ..ProptestConfig::default() }
}

/// Fields the gateway reads, so generated objects hit them often.
const KNOWN_KEYS: [&str; 18] = [
    "type",
    "data",
    "object",
    "timestamp",
    "instance_id",
    "event_attributes",
    "id",
    "user_id",
    "first_name",
    "last_name",
    "username",
    "image_url",
    "email_addresses",
    "email_address",
    "primary_email_address_id",
    "updated_at",
    "created_at",
    "latest_activity",
];

const KNOWN_TYPES: [&str; 10] = [
    "user.created",
    "user.updated",
    "user.deleted",
    "session.created",
    "session.ended",
    "session.removed",
    "session.revoked",
    "organization.created",
    "email.created",
    "",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(&KNOWN_KEYS[..]).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

/// Any JSON value, a few levels deep, biased to the shapes Clerk sends.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        prop::sample::select(&KNOWN_TYPES[..]).prop_map(Value::from),
        Just(Value::from("user_fuzz")),
        Just(Value::from(1_750_000_000_000_i64)),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// An envelope whose fields are each either right or arbitrary.
fn envelope() -> impl Strategy<Value = Value> {
    let event_type = prop_oneof![
        4 => prop::sample::select(&KNOWN_TYPES[..]).prop_map(Value::from),
        1 => json_value(),
    ];
    let data = prop_oneof![
        2 => prop::collection::btree_map(prop::sample::select(&KNOWN_KEYS[..]), json_value(), 0..10)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        1 => json_value(),
    ];
    let timestamp = prop_oneof![
        3 => any::<i64>().prop_map(Value::from),
        1 => Just(Value::Null),
        1 => json_value(),
    ];
    (event_type, data, timestamp, prop::option::of(json_value())).prop_map(|(t, d, ts, extra)| {
        let mut body = json!({"type": t, "data": d, "object": "event", "timestamp": ts});
        if let Some(extra) = extra {
            body["event_attributes"] = extra;
        }
        body
    })
}

/// Parses `body` and checks the contract: bounded time; `Ok` events carry a
/// type and the id their payload needs; errors carry a message and, when a
/// field is at fault, one of the documented field names. Also exercises the
/// accessors the gateway calls on parsed events.
fn check_parse(body: &[u8]) -> Result<(), TestCaseError> {
    // Timed: not while a connection flood of another test takes the CPU.
    let _quiet = crate::support::cpu_heavy();
    let started = Instant::now();
    let result = parse_event(body);
    prop_assert!(started.elapsed() < PARSE_BUDGET, "parsing took {:?}", started.elapsed());
    match result {
        Ok(event) => {
            prop_assert!(!event.event_type.is_empty());
            match &event.payload {
                Payload::UserCreated(user) | Payload::UserUpdated(user) => {
                    prop_assert!(!user.id.is_empty());
                    let profile = user.profile();
                    prop_assert_eq!(&profile.clerk_id, &user.id);
                    prop_assert!(profile.email.is_none_or(|e| !e.trim().is_empty()));
                }
                Payload::UserDeleted(deleted) => prop_assert!(!deleted.id.is_empty()),
                Payload::SessionCreated(session) | Payload::SessionActivity(session) => {
                    prop_assert!(!session.user_id.is_empty());
                    prop_assert!(session.device().is_none_or(|d| d.chars().count() <= 256));
                    prop_assert!(session.ip().is_none_or(|ip| ip.parse::<std::net::IpAddr>().is_ok()));
                }
                Payload::Unhandled => {}
            }
        }
        Err(invalid) => {
            prop_assert!(!invalid.message.is_empty());
            prop_assert!(
                matches!(invalid.field, None | Some("type" | "data" | "data.id" | "data.user_id")),
                "undocumented field {:?}",
                invalid.field
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_bytes_are_parsed_or_rejected(body in prop::collection::vec(any::<u8>(), 0..512)) {
        check_parse(&body)?;
    }

    #[test]
    fn arbitrary_json_is_parsed_or_rejected(value in json_value()) {
        let body = serde_json::to_vec(&value).unwrap();
        check_parse(&body)?;
        // Not an object: never an event, and no field is blamed.
        if !value.is_object() {
            let error = parse_event(&body).err();
            prop_assert!(matches!(error, Some(ref e) if e.field.is_none()), "{:?}", error);
        }
    }

    #[test]
    fn arbitrary_envelopes_are_parsed_or_rejected_naming_the_field(value in envelope()) {
        let body = serde_json::to_vec(&value).unwrap();
        check_parse(&body)?;
        let result = parse_event(&body);
        // The envelope's own fields well-typed (a mistyped `timestamp`,
        // `object` or `type` rejects the whole body, with no field named).
        let envelope_ok = value["type"].is_string()
            && (value["timestamp"].is_i64() || value["timestamp"].is_null())
            && (value["object"].is_string() || value["object"].is_null());
        let event_type = value["type"].as_str().unwrap_or_default();
        if !envelope_ok {
            prop_assert!(result.is_err() || value["type"].is_string());
        } else if event_type.is_empty() {
            prop_assert_eq!(result.err().and_then(|e| e.field), Some("type"));
        } else if event_type.starts_with("user.")
            && value["data"]["id"].as_str().is_none_or(str::is_empty)
        {
            let field = result.err().and_then(|e| e.field);
            prop_assert!(matches!(field, Some("data" | "data.id")), "{:?}", field);
        } else if event_type.starts_with("session.")
            && value["data"]["user_id"].as_str().is_none_or(str::is_empty)
        {
            let field = result.err().and_then(|e| e.field);
            prop_assert!(matches!(field, Some("data" | "data.user_id")), "{:?}", field);
        }
    }

    #[test]
    fn mutated_valid_events_are_parsed_or_rejected(
        kind in prop::sample::select(&["user.created", "user.updated", "user.deleted"][..]),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<u8>()), 1..8),
    ) {
        let mut body = if kind == "user.deleted" {
            deleted_event("user_fuzz", Some(1_750_000_000_000))
        } else {
            user_event(kind, "user_fuzz")
        }
        .into_bytes();
        for (at, op, byte) in edits {
            if body.is_empty() {
                break;
            }
            let i = at.index(body.len());
            match op {
                0 => body[i] = byte,
                1 => { body.remove(i); }
                2 => body.insert(i, byte),
                _ => body.truncate(i),
            }
        }
        check_parse(&body)?;
    }

    #[test]
    fn any_utf8_body_signed_with_our_secret_verifies_and_any_change_does_not(
        body in any::<String>(),
        flip in any::<prop::sample::Index>(),
        msg in "[a-zA-Z0-9_]{1,40}",
    ) {
        let verifier = verifier(SECRET);
        let headers = signed(SECRET, &format!("msg_{msg}"), now(), &body);
        prop_assert!(verifier.verify(body.as_bytes(), &headers).is_ok());
        if !body.is_empty() {
            let mut tampered = body.clone().into_bytes();
            let i = flip.index(tampered.len());
            tampered[i] ^= 0x01;
            let result = verifier.verify(&tampered, &headers);
            prop_assert!(
                matches!(result, Err(RequestError::InvalidSignature | RequestError::NonUtf8Body)),
                "{:?}", result
            );
        }
    }

    #[test]
    fn arbitrary_svix_headers_never_verify(
        id in prop::option::of(header_text()),
        timestamp in prop::option::of(prop_oneof![header_text(), any::<i64>().prop_map(|t| t.to_string())]),
        signature in prop::option::of(header_text()),
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut headers = HeaderMap::new();
        for (name, value) in [(SVIX_ID, id), (SVIX_TIMESTAMP, timestamp), (SVIX_SIGNATURE, signature)] {
            if let Some(value) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
                headers.insert(name, value);
            }
        }
        let started = Instant::now();
        let result = verifier(SECRET).verify(&body, &headers);
        prop_assert!(started.elapsed() < PARSE_BUDGET);
        prop_assert!(result.is_err(), "forged headers verified: {:?}", headers);
    }

    #[test]
    fn a_valid_signature_among_garbage_entries_verifies_and_garbage_alone_does_not(
        garbage in prop::collection::vec("[ -~&&[^ ]]{0,60}", 0..6),
        at in any::<prop::sample::Index>(),
    ) {
        let body = user_event("user.updated", "user_fuzz");
        let mut headers = signed(SECRET, "msg_garbage", now(), &body);
        let valid = headers[SVIX_SIGNATURE].to_str().unwrap().to_owned();
        let mut entries = garbage.clone();
        entries.insert(at.index(entries.len() + 1), valid.clone());
        headers.insert(SVIX_SIGNATURE, HeaderValue::from_str(&entries.join(" ")).unwrap());
        prop_assert!(verifier(SECRET).verify(body.as_bytes(), &headers).is_ok());

        let only_garbage: Vec<String> = garbage.into_iter().filter(|g| *g != valid).collect();
        if let Ok(value) = HeaderValue::from_str(&only_garbage.join(" ")) {
            headers.insert(SVIX_SIGNATURE, value);
            prop_assert!(verifier(SECRET).verify(body.as_bytes(), &headers).is_err());
        }
    }

    #[test]
    fn a_timestamp_is_accepted_only_within_five_minutes(offset in -900i64..900) {
        // One second either side of the edge depends on when the clock ticks.
        prop_assume!(!(299..=301).contains(&offset.abs()));
        let body = deleted_event("user_fuzz", None);
        let headers = signed(SECRET, "msg_skew", now() + offset, &body);
        let result = verifier(SECRET).verify(body.as_bytes(), &headers);
        if offset.abs() < 300 {
            prop_assert!(result.is_ok(), "{:?}", result);
        } else {
            prop_assert!(matches!(result, Err(RequestError::SignatureExpired(_))), "{:?}", result);
        }
    }
}

/// Visible ASCII header text, sometimes shaped like a real value.
fn header_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,80}",
        "v1,[A-Za-z0-9+/=]{0,60}",
        "msg_[a-zA-Z0-9]{0,30}",
        any::<u32>().prop_map(|n| n.to_string()),
    ]
}

fn verifier(secrets: &str) -> Verifier {
    Verifier::new(SigningSecrets::parse(secrets).unwrap())
}

fn nested(depth: usize, open: &str, close: &str, leaf: &str) -> String {
    let mut text = String::with_capacity(depth * (open.len() + close.len()) + leaf.len());
    for _ in 0..depth {
        text.push_str(open);
    }
    text.push_str(leaf);
    for _ in 0..depth {
        text.push_str(close);
    }
    text
}

#[test]
fn deeply_nested_json_never_exhausts_the_stack() {
    for depth in [200, 10_000, 200_000] {
        let arrays = nested(depth, "[", "]", "1");
        let objects = nested(depth, r#"{"a":"#, "}", "1");
        // Not an object at all: always rejected.
        let error = parse_event(arrays.as_bytes()).err();
        assert!(error.is_some_and(|e| e.field.is_none()), "depth {depth}: a bare array is no event");
        // Deep values where the gateway reads nothing (or skips an unknown
        // field) may be accepted or refused, but within the time budget and
        // under the usual contract.
        let bodies = [
            format!(
                r#"{{"type":"user.created","data":{{"id":"user_deep","first_name":"x","extra":{arrays}}}}}"#
            ),
            format!(r#"{{"type":"user.updated","data":{objects}}}"#),
            format!(r#"{{"type":"organization.created","data":{arrays}}}"#),
            format!(r#"{{"type":"user.created","event_attributes":{objects},"data":{{"id":"user_deep"}}}}"#),
            format!(r#"{{"type":"user.created","data":{{"id":"user_deep","first_name":{arrays}}}}}"#),
        ];
        for body in bodies {
            if let Err(failure) = check_parse(body.as_bytes()) {
                panic!("depth {depth}: {failure}");
            }
        }
        // A deep value where a string is required is always refused.
        let wrong = format!(r#"{{"type":"user.created","data":{{"id":"user_deep","first_name":{arrays}}}}}"#);
        assert!(parse_event(wrong.as_bytes()).is_err(), "depth {depth}: first_name must be a string");
    }
}

#[test]
fn huge_strings_parse_in_bounded_time() {
    // Just under the gateway's 256 KiB body limit.
    let long = "x".repeat(250 * 1024);
    let body = json!({
        "type": "user.updated",
        "data": {"id": "user_huge", "first_name": long, "email_addresses": [], "updated_at": 1}
    })
    .to_string();
    let started = Instant::now();
    let event = parse_event(body.as_bytes());
    assert!(started.elapsed() < PARSE_BUDGET);
    assert!(
        matches!(event.map(|e| e.payload), Ok(Payload::UserUpdated(u)) if u.first_name.as_ref().map(String::len) == Some(250 * 1024))
    );

    let id = "u".repeat(250 * 1024);
    let body = json!({"type": "user.deleted", "data": {"id": id}}).to_string();
    assert!(parse_event(body.as_bytes()).is_ok(), "a huge id is the upstream's to refuse");

    let many: Vec<Value> = (0..20_000).map(|i| json!({"id": format!("idn_{i}")})).collect();
    let body =
        json!({"type": "user.created", "data": {"id": "user_many", "email_addresses": many}}).to_string();
    let started = Instant::now();
    assert!(parse_event(body.as_bytes()).is_ok());
    assert!(started.elapsed() < PARSE_BUDGET);
}

/// Over HTTP: any signed body gets a 2xx only if it parses, a 4xx with an
/// `error` (and the parser's field) otherwise, never a 5xx for a user event
/// (the fake upstream answers `applied`), and user-service is called exactly
/// once per accepted user event.
#[test]
fn signed_hostile_bodies_over_http_are_answered_and_only_valid_events_go_upstream() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (upstream, gateway) = runtime.block_on(async {
        let upstream = FakeUpstream::start().await;
        let gateway = Gateway::start(&upstream).await;
        (upstream, gateway)
    });
    let strategy = prop_oneof![
        2 => envelope().prop_map(|v| serde_json::to_string(&v).unwrap()),
        1 => json_value().prop_map(|v| serde_json::to_string(&v).unwrap()),
        1 => any::<String>(),
    ];
    let mut runner = TestRunner::new(config(96));
    let case = std::sync::atomic::AtomicUsize::new(0);
    let result = runner.run(&strategy, |body| {
        let case = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The fake user-service only implements UserService: leave session
        // events (UserDataService) to the real-service tests.
        let parsed = parse_event(body.as_bytes());
        if matches!(parsed, Ok(ref e) if matches!(e.payload, Payload::SessionCreated(_) | Payload::SessionActivity(_))) {
            return Ok(());
        }
        let calls_before = upstream.calls().len();
        let answer =
            runtime.block_on(gateway.post_signed(&format!("msg_http_fuzz_{case}"), &body));
        let mut expected_calls = calls_before;
        match &parsed {
            Ok(event) => {
                prop_assert_eq!(answer.status, 200, "{}: {}", body, answer.json);
                if !matches!(event.payload, Payload::Unhandled) {
                    expected_calls += 1;
                }
            }
            Err(invalid) => {
                prop_assert_eq!(answer.status, 400, "{}: {}", body, answer.json);
                prop_assert!(answer.json["error"].as_str().is_some_and(|e| !e.is_empty()));
                prop_assert_eq!(answer.json["field"].as_str(), invalid.field);
            }
        }
        let calls = upstream.calls().len();
        prop_assert_eq!(calls, expected_calls, "upstream calls");
        Ok(())
    });
    runtime.block_on(async {
        gateway.stop().await;
        upstream.stop().await;
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

/// Unsigned and wrongly signed hostile bodies never reach user-service.
#[test]
fn forged_hostile_bodies_over_http_never_go_upstream() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (upstream, gateway) = runtime.block_on(async {
        let upstream = FakeUpstream::start().await;
        let gateway = Gateway::start(&upstream).await;
        (upstream, gateway)
    });
    let strategy = (envelope(), 0u8..4, header_text());
    let mut runner = TestRunner::new(config(64));
    let result = runner.run(&strategy, |(value, how, text)| {
        let body = serde_json::to_string(&value).unwrap();
        let mut headers = signed(SECRET, "msg_forged_fuzz", now(), &body);
        match how {
            0 => {
                headers.remove(SVIX_SIGNATURE);
            }
            1 => {
                if let Ok(v) = HeaderValue::from_str(&text) {
                    headers.insert(SVIX_SIGNATURE, v);
                }
            }
            2 => {
                if let Ok(v) = HeaderValue::from_str(&text) {
                    headers.insert(SVIX_TIMESTAMP, v);
                }
            }
            _ => {
                let secrets = SigningSecrets::parse(crate::support::FOREIGN_SECRET).unwrap();
                headers = sign_headers(secrets.first(), "msg_forged_fuzz", now(), body.as_bytes()).unwrap();
            }
        }
        // A header value that happens to be the real signature is no forgery.
        let genuine = signed(SECRET, "msg_forged_fuzz", now(), &body);
        prop_assume!(headers.get(SVIX_SIGNATURE) != genuine.get(SVIX_SIGNATURE));
        let answer = runtime.block_on(gateway.post(headers, body));
        prop_assert!(matches!(answer.status.as_u16(), 400 | 401), "{}", answer.status);
        prop_assert!(upstream.calls().is_empty(), "{:?}", upstream.calls().first().map(call_name));
        Ok(())
    });
    runtime.block_on(async {
        gateway.stop().await;
        upstream.stop().await;
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

fn call_name(call: &Call) -> &'static str {
    match call {
        Call::Create(_) => "create",
        Call::Update(_) => "update",
        Call::Delete(_) => "delete",
    }
}
