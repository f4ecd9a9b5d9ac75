//! Requests that must be refused before anything reaches user-service.

use http::{HeaderMap, HeaderValue, header};

use crate::support::{FOREIGN_SECRET, FakeUpstream, Gateway, SECRET, deleted_event, now, signed, user_event};

#[tokio::test]
async fn a_tampered_body_is_401() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;
    let body = user_event("user.updated", "user_victim");
    let headers = signed(SECRET, "msg_tamper", now(), &body);
    let tampered = body.replace("grace@example.test", "mallory@example.test");

    let answer = gateway.post(headers, tampered).await;

    assert_eq!(answer.status, 401);
    assert_eq!(answer.json["field"], "svix-signature");
    upstream.assert_not_called();
}

#[tokio::test]
async fn a_body_signed_with_another_secret_is_401() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;
    let body = deleted_event("user_victim", None);

    let answer = gateway.post(signed(FOREIGN_SECRET, "msg_foreign", now(), &body), body).await;

    assert_eq!(answer.status, 401);
    upstream.assert_not_called();
}

#[tokio::test]
async fn a_signature_older_than_five_minutes_is_401() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;
    let body = deleted_event("user_victim", None);

    let answer = gateway.post(signed(SECRET, "msg_old", now() - 6 * 60, &body), body).await;

    assert_eq!(answer.status, 401);
    assert_eq!(answer.json["field"], "svix-timestamp");
    upstream.assert_not_called();
}

#[tokio::test]
async fn a_signature_more_than_five_minutes_in_the_future_is_401() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;
    let body = deleted_event("user_victim", None);

    let answer = gateway.post(signed(SECRET, "msg_future", now() + 6 * 60, &body), body).await;

    assert_eq!(answer.status, 401);
    assert_eq!(answer.json["field"], "svix-timestamp");
    upstream.assert_not_called();
}

#[tokio::test]
async fn a_request_missing_any_svix_header_is_400_naming_it() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;
    let body = deleted_event("user_victim", None);
    let full = signed(SECRET, "msg_missing", now(), &body);

    for name in ["svix-id", "svix-timestamp", "svix-signature"] {
        let mut headers = full.clone();
        headers.remove(name);
        let answer = gateway.post(headers, body.clone()).await;
        assert_eq!(answer.status, 400, "without {name}");
        assert_eq!(answer.json["field"], name);
    }
    upstream.assert_not_called();
}

#[tokio::test]
async fn a_non_numeric_svix_timestamp_is_400() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;
    let body = deleted_event("user_victim", None);
    let mut headers = signed(SECRET, "msg_badts", now(), &body);
    headers.insert("svix-timestamp", HeaderValue::from_static("yesterday"));

    let answer = gateway.post(headers, body).await;

    assert_eq!(answer.status, 400);
    assert_eq!(answer.json["field"], "svix-timestamp");
    upstream.assert_not_called();
}

#[tokio::test]
async fn a_body_over_256_kib_is_413() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;

    // Just over the limit, and far over it (where the server stops reading
    // early and the client must still get the 413).
    for size in [256 * 1024 + 1, 4 * 1024 * 1024] {
        let padding = "x".repeat(size);
        let body = format!(r#"{{"type":"user.created","data":{{"id":"user_big","pad":"{padding}"}}}}"#);
        let headers = signed(SECRET, "msg_big", now(), &body);

        let answer = gateway.post(headers, body).await;

        assert_eq!(answer.status, 413, "size {size}");
    }
    upstream.assert_not_called();
}

#[tokio::test]
async fn a_body_just_under_the_limit_is_accepted() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;
    let skeleton = r#"{"type":"email.created","data":{"pad":""}}"#;
    let padding = "x".repeat(256 * 1024 - skeleton.len());
    let body = format!(r#"{{"type":"email.created","data":{{"pad":"{padding}"}}}}"#);
    assert_eq!(body.len(), 256 * 1024);

    let answer = gateway.post_signed("msg_limit", &body).await;

    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn a_non_json_content_type_is_415() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;
    let body = deleted_event("user_victim", None);
    let mut headers = signed(SECRET, "msg_form", now(), &body);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));

    let answer = gateway.post(headers, body).await;

    assert_eq!(answer.status, 415);
    upstream.assert_not_called();
}

#[tokio::test]
async fn a_missing_content_type_is_415() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;
    let body = deleted_event("user_victim", None);
    let mut headers = signed(SECRET, "msg_noct", now(), &body);
    headers.remove(header::CONTENT_TYPE);

    let answer = gateway.post(headers, body).await;

    assert_eq!(answer.status, 415);
    upstream.assert_not_called();
}

#[tokio::test]
async fn json_with_a_utf8_charset_is_accepted() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;
    let body = deleted_event("user_charset", None);
    let mut headers = signed(SECRET, "msg_charset", now(), &body);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));

    let answer = gateway.post(headers, body).await;

    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn an_unsigned_request_is_400_and_never_forwarded() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));

    let answer = gateway.post(headers, deleted_event("user_victim", None)).await;

    assert_eq!(answer.status, 400);
    upstream.assert_not_called();
}
