//! Parsing tests, over bodies shaped like Clerk's.

use serde_json::Value;

use super::*;

#[test]
fn data_given_as_an_array_is_refused_naming_data() {
    for event_type in ["user.created", "user.deleted", "session.created"] {
        let body = format!(r#"{{"type":"{event_type}","object":"event","data":["user_1",null,""]}}"#);
        let error = parse_event(body.as_bytes()).err();
        assert_eq!(error.and_then(|e| e.field), Some("data"), "{event_type}");
    }
}

// Payloads below are written for these tests, shaped like Clerk's but not
// copied from any real delivery.

fn user_event(event_type: &str, data: Value) -> Vec<u8> {
    serde_json::json!({
        "type": event_type,
        "object": "event",
        "timestamp": 1_700_000_000_123_i64,
        "data": data,
    })
    .to_string()
    .into_bytes()
}

fn parse_user(data: Value) -> UserJson {
    match parse_event(&user_event(USER_CREATED, data)).map(|e| e.payload) {
        Ok(Payload::UserCreated(user)) => user,
        other => panic!("expected a user.created payload, got {other:?}"),
    }
}

#[test]
fn primary_email_is_the_address_whose_id_matches_not_the_first() {
    let user = parse_user(serde_json::json!({
        "id": "user_a1",
        "primary_email_address_id": "idn_second",
        "email_addresses": [
            {"id": "idn_first", "email_address": "old@example.test"},
            {"id": "idn_second", "email_address": "new@example.test"}
        ]
    }));
    assert_eq!(user.primary_email(), Some("new@example.test"));
}

#[test]
fn primary_id_without_a_matching_address_gives_no_email() {
    let user = parse_user(serde_json::json!({
        "id": "user_a2",
        "primary_email_address_id": "idn_gone",
        "email_addresses": [{"id": "idn_other", "email_address": "x@example.test"}]
    }));
    assert_eq!(user.primary_email(), None);
}

#[test]
fn primary_id_with_an_empty_address_list_gives_no_email() {
    let user = parse_user(serde_json::json!({
        "id": "user_a3",
        "primary_email_address_id": "idn_1",
        "email_addresses": []
    }));
    assert_eq!(user.primary_email(), None);
}

#[test]
fn addresses_without_a_primary_id_give_no_email() {
    let user = parse_user(serde_json::json!({
        "id": "user_a4",
        "primary_email_address_id": null,
        "email_addresses": [{"id": "idn_1", "email_address": "x@example.test"}]
    }));
    assert_eq!(user.primary_email(), None);
}

#[test]
fn a_phone_only_user_has_no_email_and_null_lists_are_fine() {
    let user = parse_user(serde_json::json!({
        "id": "user_phone",
        "primary_email_address_id": null,
        "email_addresses": null,
        "primary_phone_number_id": "idn_phone",
        "phone_numbers": [{"id": "idn_phone", "phone_number": "+15555550100"}],
        "first_name": null,
        "last_name": null
    }));
    assert_eq!(user.profile(), Profile { clerk_id: "user_phone".into(), ..Profile::default() });
}

#[test]
fn empty_and_blank_names_become_none() {
    let user = parse_user(serde_json::json!({
        "id": "user_blank",
        "first_name": "",
        "last_name": "   ",
        "username": "",
        "image_url": ""
    }));
    let profile = user.profile();
    assert_eq!(profile.first_name, None);
    assert_eq!(profile.last_name, None);
    assert_eq!(profile.username, None);
    assert_eq!(profile.image_url, None);
}

#[test]
fn unicode_names_are_kept_verbatim() {
    let user = parse_user(serde_json::json!({
        "id": "user_unicode",
        "first_name": "Zoë Ångström",
        "last_name": "李小龍 🐉",
        "username": "şükrü"
    }));
    let profile = user.profile();
    assert_eq!(profile.first_name.as_deref(), Some("Zoë Ångström"));
    assert_eq!(profile.last_name.as_deref(), Some("李小龍 🐉"));
    assert_eq!(profile.username.as_deref(), Some("şükrü"));
}

#[test]
fn unknown_fields_everywhere_are_ignored() {
    let body = serde_json::json!({
        "type": "user.updated",
        "object": "event",
        "instance_id": "ins_test",
        "brand_new_envelope_field": {"nested": [1, 2, 3]},
        "event_attributes": {"http_request": {"client_ip": "", "user_agent": "test"}},
        "data": {
            "id": "user_extra",
            "object": "user",
            "public_metadata": {"plan": "pro"},
            "private_metadata": null,
            "passkeys": [],
            "updated_at": 1_700_000_000_999_i64,
            "email_addresses": [{
                "id": "idn_1",
                "email_address": "e@example.test",
                "verification": null,
                "reserved": true,
                "linked_to": []
            }],
            "primary_email_address_id": "idn_1"
        }
    })
    .to_string();
    let event = parse_event(body.as_bytes());
    let Ok(Event { payload: Payload::UserUpdated(user), instance_id, .. }) = event else {
        panic!("expected user.updated, got {event:?}");
    };
    assert_eq!(instance_id.as_deref(), Some("ins_test"));
    assert_eq!(user.updated_at, Some(1_700_000_000_999));
    assert_eq!(user.primary_email(), Some("e@example.test"));
}

#[test]
fn a_deleted_user_needs_only_its_id() {
    let body =
        user_event(USER_DELETED, serde_json::json!({"id": "user_del", "deleted": true, "object": "user"}));
    let event = parse_event(&body);
    assert!(
        matches!(&event, Ok(Event { payload: Payload::UserDeleted(d), timestamp: Some(_), .. }) if d.id == "user_del"),
        "{event:?}"
    );
}

#[test]
fn a_user_event_without_data_names_the_data_field() {
    let body = br#"{"type":"user.created","object":"event"}"#;
    assert_eq!(parse_event(body).err().and_then(|e| e.field), Some("data"));
    let body = br#"{"type":"user.created","data":null}"#;
    assert_eq!(parse_event(body).err().and_then(|e| e.field), Some("data"));
}

#[test]
fn a_user_event_without_an_id_names_data_id() {
    for data in [
        serde_json::json!({"first_name": "No Id"}),
        serde_json::json!({"id": ""}),
        serde_json::json!({"id": 42}),
    ] {
        let error = parse_event(&user_event(USER_UPDATED, data)).err();
        assert_eq!(error.and_then(|e| e.field), Some("data.id"));
    }
    let error = parse_event(&user_event(USER_DELETED, serde_json::json!({"deleted": true})));
    assert_eq!(error.err().and_then(|e| e.field), Some("data.id"));
}

#[test]
fn a_mistyped_user_field_is_invalid_data() {
    let error = parse_event(&user_event(USER_CREATED, serde_json::json!({"id": "user_x", "first_name": 7})));
    assert_eq!(error.err().and_then(|e| e.field), Some("data"));
}

#[test]
fn a_missing_type_names_the_type_field() {
    let error = parse_event(br#"{"object":"event","data":{"id":"user_x"}}"#);
    assert_eq!(error.err().and_then(|e| e.field), Some("type"));
}

#[test]
fn non_json_and_non_object_bodies_are_invalid() {
    for body in [&b"not json"[..], b"[1,2]", b"\"user.created\"", b""] {
        let error = parse_event(body);
        assert!(matches!(error, Err(InvalidEvent { field: None, .. })), "{error:?}");
    }
}

#[test]
fn other_event_types_are_unhandled_without_looking_at_data() {
    let body = br#"{"type":"organization.created","data":{"weird":true}}"#;
    assert!(matches!(parse_event(body), Ok(Event { payload: Payload::Unhandled, .. })));
}

fn session_event(data: Value) -> Result<Payload, InvalidEvent> {
    let body = serde_json::json!({"type": "session.created", "timestamp": 1, "data": data}).to_string();
    parse_event(body.as_bytes()).map(|event| event.payload)
}

#[test]
fn a_session_carrying_its_user_parses_the_user_like_user_created() {
    let payload = session_event(serde_json::json!({
        "id": "sess_1", "user_id": "user_s1",
        "user": {
            "id": "user_s1", "first_name": "Zoë", "last_name": null,
            "primary_email_address_id": "idn_2",
            "email_addresses": [
                {"id": "idn_1", "email_address": "one@example.test"},
                {"id": "idn_2", "email_address": "two@example.test"}
            ],
            "updated_at": 1_760_000_000_000_i64
        }
    }));
    let Ok(Payload::SessionCreated(SessionJson { user: Some(user), .. })) = payload else {
        panic!("expected a session with its user, got {payload:?}");
    };
    assert_eq!(user.primary_email(), Some("two@example.test"));
    assert_eq!(user.profile().first_name.as_deref(), Some("Zoë"));
    assert_eq!(user.updated_at, Some(1_760_000_000_000));
}

#[test]
fn a_null_session_user_is_no_user() {
    let payload = session_event(serde_json::json!({"id": "sess_1", "user_id": "user_s1", "user": null}));
    assert!(matches!(payload, Ok(Payload::SessionCreated(SessionJson { user: None, .. }))), "{payload:?}");
}

#[test]
fn a_session_user_about_someone_else_names_data_user_id() {
    let payload = session_event(serde_json::json!({"user_id": "user_s1", "user": {"id": "user_other"}}));
    assert_eq!(payload.err().and_then(|e| e.field), Some("data.user.id"));
}

#[test]
fn a_malformed_session_user_names_data_user() {
    for user in [
        serde_json::json!({"first_name": "no id"}),
        serde_json::json!("user_s1"),
        serde_json::json!({"id": "user_s1", "first_name": 7}),
    ] {
        let payload = session_event(serde_json::json!({"user_id": "user_s1", "user": user}));
        assert_eq!(payload.err().and_then(|e| e.field), Some("data.user"), "{user}");
    }
}

#[test]
fn a_session_event_needs_a_user_id() {
    let body = serde_json::json!({"type": "session.created", "data": {"id": "sess_1"}}).to_string();
    let error = parse_event(body.as_bytes()).err();
    assert_eq!(error.and_then(|e| e.field), Some("data.user_id"));
    let body = serde_json::json!({"type": "session.ended", "data": {"id": "sess_1", "user_id": "user_1"}})
        .to_string();
    assert!(matches!(parse_event(body.as_bytes()).map(|e| e.payload), Ok(Payload::SessionActivity(_))));
}
