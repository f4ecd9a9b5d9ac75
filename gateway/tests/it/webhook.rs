//! Genuine, signed deliveries and what reaches user-service.

use prost_types::Timestamp;
use tonic::Code;
use userdata_proto::v1::{EventOutcome, SignupSource};

use crate::support::{
    Call, FakeUpstream, Gateway, Reply, SECOND_SECRET, SECRET, config, deleted_event, now, signed, user_event,
};

#[tokio::test]
async fn user_created_creates_the_user_with_the_primary_email_chosen_by_id() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;

    let answer = gateway.post_signed("msg_created_1", &user_event("user.created", "user_grace")).await;

    assert_eq!(answer.status, 200, "{:?}", answer.json);
    let Call::Create(call) = upstream.single_call() else {
        panic!("expected CreateUser");
    };
    let user = call.message.user.unwrap();
    assert_eq!(user.clerk_id, "user_grace");
    assert_eq!(user.email.as_deref(), Some("grace@example.test"));
    assert_eq!(user.first_name.as_deref(), Some("Grace"));
    assert_eq!(user.last_name.as_deref(), Some("Hopper"));
    assert_eq!(user.username, None);
    assert_eq!(user.image_url.as_deref(), Some("https://img.example.test/grace.png"));
    assert_eq!(call.message.signup_source, SignupSource::Clerk as i32);
}

#[tokio::test]
async fn user_created_uses_svix_id_as_key_and_updated_at_as_source_time() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;

    gateway.post_signed("msg_created_2", &user_event("user.created", "user_grace")).await;

    let Call::Create(call) = upstream.single_call() else {
        panic!("expected CreateUser");
    };
    let context = call.message.event_context.unwrap();
    assert_eq!(context.idempotency_key, "msg_created_2");
    assert_eq!(context.source_time, Some(Timestamp { seconds: 1_750_000_123, nanos: 456_000_000 }));
}

#[tokio::test]
async fn an_applied_event_answers_200_with_outcome_and_request_id() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;

    let answer = gateway.post_signed("msg_ok", &user_event("user.created", "user_ok")).await;

    assert_eq!(answer.status, 200);
    assert_eq!(answer.json["outcome"], "applied");
    let header = answer.header("x-request-id").unwrap();
    assert_eq!(answer.json["request_id"], header);
}

#[tokio::test]
async fn an_incoming_request_id_is_forwarded_upstream_and_echoed() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;
    let body = user_event("user.updated", "user_rid");
    let mut headers = signed(SECRET, "msg_rid", now(), &body);
    headers.insert("x-request-id", "req-it-42".parse().unwrap());

    let answer = gateway.post(headers, body).await;

    assert_eq!(answer.header("x-request-id"), Some("req-it-42"));
    let Call::Update(call) = upstream.single_call() else {
        panic!("expected UpdateUser");
    };
    assert_eq!(call.request_id.as_deref(), Some("req-it-42"));
}

#[tokio::test]
async fn without_an_incoming_request_id_a_uuid_is_generated_and_forwarded() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;

    let answer = gateway.post_signed("msg_norid", &user_event("user.updated", "user_norid")).await;

    let header = answer.header("x-request-id").unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&header).is_ok(), "{header}");
    let Call::Update(call) = upstream.single_call() else {
        panic!("expected UpdateUser");
    };
    assert_eq!(call.request_id, Some(header));
}

#[tokio::test]
async fn every_upstream_call_carries_a_grpc_deadline() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;

    gateway.post_signed("msg_deadline", &deleted_event("user_deadline", None)).await;

    let Call::Delete(call) = upstream.single_call() else {
        panic!("expected DeleteUser");
    };
    let timeout = call.grpc_timeout.unwrap_or_default();
    assert!(!timeout.is_empty(), "grpc-timeout metadata must be set");
}

#[tokio::test]
async fn user_updated_updates_all_profile_fields_by_clerk_id() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;

    let answer = gateway.post_signed("msg_updated", &user_event("user.updated", "user_upd")).await;

    assert_eq!(answer.status, 200);
    let Call::Update(call) = upstream.single_call() else {
        panic!("expected UpdateUser");
    };
    let user = call.message.user.unwrap();
    assert_eq!(user.clerk_id, "user_upd");
    assert!(user.id.is_empty(), "the user is found by clerk_id");
    assert_eq!(user.email.as_deref(), Some("grace@example.test"));
    assert_eq!(
        call.message.update_mask.unwrap().paths,
        ["email", "first_name", "last_name", "username", "image_url"]
    );
    let context = call.message.event_context.unwrap();
    assert_eq!(context.idempotency_key, "msg_updated");
    assert_eq!(context.source_time.map(|t| t.seconds), Some(1_750_000_123));
}

#[tokio::test]
async fn user_deleted_deletes_by_clerk_id_ordered_by_the_envelope_timestamp() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;

    let answer =
        gateway.post_signed("msg_deleted", &deleted_event("user_gone", Some(1_760_000_000_500))).await;

    assert_eq!(answer.status, 200);
    let Call::Delete(call) = upstream.single_call() else {
        panic!("expected DeleteUser");
    };
    assert_eq!(call.message.clerk_id, "user_gone");
    let context = call.message.event_context.unwrap();
    assert_eq!(context.idempotency_key, "msg_deleted");
    assert_eq!(context.source_time, Some(Timestamp { seconds: 1_760_000_000, nanos: 500_000_000 }));
}

#[tokio::test]
async fn user_deleted_without_a_timestamp_uses_the_current_time() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;
    let before = now();

    gateway.post_signed("msg_deleted_now", &deleted_event("user_gone", None)).await;

    let Call::Delete(call) = upstream.single_call() else {
        panic!("expected DeleteUser");
    };
    let seconds = call.message.event_context.unwrap().source_time.unwrap().seconds;
    assert!((before..=now()).contains(&seconds), "{seconds}");
}

#[tokio::test]
async fn an_unknown_event_type_is_acknowledged_without_calling_user_service() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;
    let body = r#"{"type":"email.created","object":"event","data":{"id":"ema_1","to_email_address":"a@example.test"}}"#;

    let answer = gateway.post_signed("msg_email", body).await;

    assert_eq!(answer.status, 200);
    assert_eq!(answer.json["outcome"], "ignored");
    upstream.assert_not_called();
}

#[tokio::test]
async fn a_replayed_event_is_acknowledged_as_duplicate() {
    let upstream = FakeUpstream::start().await;
    upstream.reply_with(Reply::Outcome(EventOutcome::Applied, true));
    let gateway = Gateway::start(&upstream).await;

    let answer = gateway.post_signed("msg_dup", &user_event("user.created", "user_dup")).await;

    assert_eq!(answer.status, 200);
    assert_eq!(answer.json["outcome"], "duplicate");
}

#[tokio::test]
async fn a_stale_event_is_acknowledged_as_stale() {
    let upstream = FakeUpstream::start().await;
    upstream.reply_with(Reply::Outcome(EventOutcome::Stale, false));
    let gateway = Gateway::start(&upstream).await;

    let answer = gateway.post_signed("msg_stale", &user_event("user.updated", "user_stale")).await;

    assert_eq!(answer.status, 200);
    assert_eq!(answer.json["outcome"], "stale");
}

#[tokio::test]
async fn an_event_for_a_deleted_user_is_acknowledged_as_user_deleted() {
    let upstream = FakeUpstream::start().await;
    upstream.reply_with(Reply::Outcome(EventOutcome::UserDeleted, false));
    let gateway = Gateway::start(&upstream).await;

    let answer = gateway.post_signed("msg_zombie", &user_event("user.updated", "user_zombie")).await;

    assert_eq!(answer.status, 200);
    assert_eq!(answer.json["outcome"], "user_deleted");
}

#[tokio::test]
async fn not_found_on_a_delete_is_acknowledged_as_already_gone() {
    let upstream = FakeUpstream::start().await;
    upstream.reply_with(Reply::Fail(Code::NotFound, "no such user"));
    let gateway = Gateway::start(&upstream).await;

    let answer = gateway.post_signed("msg_gone", &deleted_event("user_never", Some(1_760_000_000_000))).await;

    assert_eq!(answer.status, 200);
    assert_eq!(answer.json["outcome"], "already_gone");
}

#[tokio::test]
async fn during_rotation_an_event_signed_with_the_second_secret_is_accepted() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start_with(config(upstream.url(), &format!("{SECRET}, {SECOND_SECRET}"))).await;
    let body = user_event("user.created", "user_rotated");

    let answer = gateway.post(signed(SECOND_SECRET, "msg_rotated", now(), &body), body).await;

    assert_eq!(answer.status, 200, "{:?}", answer.json);
    assert_eq!(upstream.calls().len(), 1);
}

#[tokio::test]
async fn a_signature_header_listing_a_foreign_and_a_valid_signature_is_accepted() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;
    let body = user_event("user.created", "user_multi");
    let timestamp = now();
    let foreign = signed(crate::support::FOREIGN_SECRET, "msg_multi", timestamp, &body);
    let mut headers = signed(SECRET, "msg_multi", timestamp, &body);
    let both = format!(
        "{} {}",
        foreign["svix-signature"].to_str().unwrap(),
        headers["svix-signature"].to_str().unwrap()
    );
    headers.insert("svix-signature", both.parse().unwrap());

    let answer = gateway.post(headers, body).await;

    assert_eq!(answer.status, 200, "{:?}", answer.json);
}

#[tokio::test]
async fn a_signed_body_that_is_not_json_is_400_and_never_forwarded() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;

    let answer = gateway.post_signed("msg_notjson", "this is not json").await;

    assert_eq!(answer.status, 400);
    assert!(answer.json["error"].is_string());
    upstream.assert_not_called();
}

#[tokio::test]
async fn a_signed_user_event_without_an_id_is_400_naming_data_id() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;
    let body = r#"{"type":"user.updated","object":"event","data":{"first_name":"Nobody"}}"#;

    let answer = gateway.post_signed("msg_noid", body).await;

    assert_eq!(answer.status, 400);
    assert_eq!(answer.json["field"], "data.id");
    upstream.assert_not_called();
}

#[tokio::test]
async fn a_signed_user_event_without_data_is_400_naming_data() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;

    let answer = gateway.post_signed("msg_nodata", r#"{"type":"user.created","object":"event"}"#).await;

    assert_eq!(answer.status, 400);
    assert_eq!(answer.json["field"], "data");
    upstream.assert_not_called();
}

#[tokio::test]
async fn every_write_names_the_event_type_it_comes_from() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(&upstream).await;

    gateway.post_signed("msg_type_1", &user_event("user.created", "user_typed")).await;
    gateway.post_signed("msg_type_2", &user_event("user.updated", "user_typed")).await;
    gateway.post_signed("msg_type_3", &deleted_event("user_typed", Some(1_750_000_200_000))).await;

    let types: Vec<String> = upstream
        .calls()
        .into_iter()
        .map(|call| match call {
            Call::Create(c) => c.message.event_context,
            Call::Update(c) => c.message.event_context,
            Call::Delete(c) => c.message.event_context,
        })
        .map(|context| context.unwrap_or_default().event_type)
        .collect();
    assert_eq!(types, ["user.created", "user.updated", "user.deleted"]);
}
