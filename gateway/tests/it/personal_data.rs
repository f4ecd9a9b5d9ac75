//! Personal values never come back in an answer: a bad field is named with
//! the reason, not its value, whether the gateway or user-service refuses it.

use user_service::testing::{Db, TestServer};

use crate::{
    child::ChildGateway,
    support::{FakeUpstream, Gateway, SECRET, config, post_signed_with, url_of, user_event},
};

/// A `user.created` body whose field `field` holds `value`.
fn user_event_with(field: &str, value: serde_json::Value) -> String {
    let mut event: serde_json::Value = serde_json::from_str(&user_event("user.created", "user_pii")).unwrap();
    event["data"][field] = value;
    event.to_string()
}

#[tokio::test]
async fn a_mistyped_field_holding_an_email_is_400_without_the_email() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;
    let body = user_event_with("email_addresses", "ada.lovelace@example.test".into());

    let answer = gateway.post_signed("msg_pii_type", &body).await;

    assert_eq!(answer.status, 400, "{}", answer.json);
    assert_eq!(answer.json["field"], "data");
    let text = answer.json.to_string();
    assert!(text.contains("expected"), "the reason is given: {text}");
    assert!(!text.contains("ada.lovelace"), "the value is echoed: {text}");
    upstream.assert_not_called();
}

#[tokio::test]
async fn an_email_user_service_refuses_is_400_without_the_email() {
    let server = TestServer::start(Db::Sqlite).await;
    let gateway = Gateway::start_with(config(url_of(server.addr), SECRET)).await;
    let mut event: serde_json::Value = serde_json::from_str(&user_event("user.created", "user_pii")).unwrap();
    event["data"]["email_addresses"][1]["email_address"] = "ada.lovelace@example.test.".into();

    let answer = gateway.post_signed("msg_pii_invalid", &event.to_string()).await;

    assert_eq!(answer.status, 400, "{}", answer.json);
    let text = answer.json.to_string();
    assert!(text.contains("email"), "the field is named: {text}");
    assert!(!text.contains("lovelace"), "the value is echoed: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_the_gateway_parser_refuses_is_in_no_log_line_nor_the_answer() {
    const EMAIL: &str = "ada.lovelace@example.test";
    let upstream = FakeUpstream::start().await;
    // The binary, with its own JSON logs at every level we ship.
    let mut gateway = ChildGateway::start(&upstream, None, "debug").await;
    let body = user_event_with("email_addresses", EMAIL.into());

    let response = post_signed_with(&reqwest::Client::new(), gateway.addr, "msg_pii_logged", body).await;
    let status = response.status();
    let answer = response.text().await.unwrap();
    let refused = gateway.wait_for_message("verified webhook is not a valid event").await;
    let logs = gateway.stop().await;

    assert_eq!(status, 400, "{answer}");
    assert_eq!(refused["field"], "data", "the field is named: {refused}");
    assert!(!answer.contains("lovelace"), "the answer echoes the value: {answer}");
    for line in logs.lines() {
        assert!(!line.contains("lovelace"), "a log line holds the value: {line}");
    }
    upstream.assert_not_called();
}
