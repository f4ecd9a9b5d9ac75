//! Typed and generic user data over gRPC.

use std::collections::HashMap;

use serde_json::json;
use tonic::Code;
use userdata_proto::v1 as pb;

use crate::helpers::*;

crate::on_both_backends!(
    preferences_have_documented_defaults,
    preferences_update_only_the_masked_fields,
    invalid_preferences_name_the_field_and_change_nothing,
    a_stale_preferences_etag_is_aborted,
    flags_are_set_cleared_and_checked_in_bulk,
    invalid_flag_keys_are_named,
    concurrent_flag_writes_lose_nothing,
    onboarding_moves_forward_only_until_reset,
    concurrent_logins_lose_no_increment,
    login_history_keeps_the_newest_entries,
    a_redelivered_or_reordered_session_event_counts_once,
    history_exposes_signup_and_name_changes,
    generic_and_typed_views_agree,
    generic_writes_of_documented_keys_are_validated,
    custom_keys_have_a_namespace_and_limits,
    generic_data_pages_and_deletes_with_etags,
    unknown_and_deleted_users_get_no_data,
);

async fn preferences_have_documented_defaults(db: Db) {
    let (_server, mut data, user) = with_user(db).await;
    let got = data
        .get_preferences(pb::GetPreferencesRequest { user_id: user.id, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let prefs = got.preferences.unwrap();
    assert_eq!(prefs.theme, pb::Theme::System as i32);
    assert!(prefs.notifications);
    assert_eq!(prefs.language, "en");
    assert_eq!(prefs.timezone, "UTC");
    assert!(got.etag.is_empty(), "nothing stored yet");
}

async fn preferences_update_only_the_masked_fields(db: Db) {
    let (server, mut data, user) = with_user(db).await;
    let update = |prefs: pb::Preferences, paths: &[&str]| pb::UpdatePreferencesRequest {
        clerk_id: user.clerk_id.clone(),
        preferences: Some(prefs),
        update_mask: Some(mask(paths)),
        ..Default::default()
    };
    data.update_preferences(update(
        pb::Preferences { theme: pb::Theme::Dark as i32, ..Default::default() },
        &["theme"],
    ))
    .await
    .unwrap();
    let second = data
        .update_preferences(update(
            pb::Preferences {
                timezone: "Europe/Berlin".into(),
                language: "ignored".into(),
                ..Default::default()
            },
            &["timezone", "notifications"],
        ))
        .await
        .unwrap()
        .into_inner();
    let prefs = second.preferences.unwrap();
    assert_eq!(prefs.theme, pb::Theme::Dark as i32);
    assert_eq!(prefs.timezone, "Europe/Berlin");
    assert!(!prefs.notifications, "named in the mask and false");
    assert_eq!(prefs.language, "en");
    // Stored in the original plan's JSON shape.
    let stored = server.store.list_user_data(user.id.parse().unwrap()).await.unwrap();
    let value = &stored.iter().find(|d| d.key == "preferences").unwrap().value;
    assert_eq!(
        value,
        &json!({"theme": "dark", "notifications": false, "language": "en", "timezone": "Europe/Berlin"})
    );
}

async fn invalid_preferences_name_the_field_and_change_nothing(db: Db) {
    let (_server, mut data, user) = with_user(db).await;
    let cases = [
        (
            pb::Preferences { language: "en_US".into(), ..Default::default() },
            "language",
            "preferences.language",
        ),
        (
            pb::Preferences { language: "xx-YY".into(), ..Default::default() },
            "language",
            "preferences.language",
        ),
        (
            pb::Preferences { timezone: "Mars/Olympus".into(), ..Default::default() },
            "timezone",
            "preferences.timezone",
        ),
        (pb::Preferences { theme: 9, ..Default::default() }, "theme", "preferences.theme"),
        (pb::Preferences::default(), "theme", "preferences.theme"),
        (pb::Preferences::default(), "colour", "update_mask"),
    ];
    for (prefs, path, field) in cases {
        let err = data
            .update_preferences(pb::UpdatePreferencesRequest {
                user_id: user.id.clone(),
                preferences: Some(prefs),
                update_mask: Some(mask(&[path])),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_field_violation(&err, field);
    }
    let got = data
        .get_preferences(pb::GetPreferencesRequest { user_id: user.id, ..Default::default() })
        .await
        .unwrap();
    assert!(got.into_inner().etag.is_empty(), "a rejected update wrote something");
}

async fn a_stale_preferences_etag_is_aborted(db: Db) {
    let (_server, mut data, user) = with_user(db).await;
    let dark = |etag: String| pb::UpdatePreferencesRequest {
        user_id: user.id.clone(),
        preferences: Some(pb::Preferences { theme: pb::Theme::Dark as i32, ..Default::default() }),
        etag,
        ..Default::default()
    };
    let first = data.update_preferences(dark(String::new())).await.unwrap().into_inner();
    data.update_preferences(dark(first.etag.clone())).await.unwrap();
    let light = pb::UpdatePreferencesRequest {
        preferences: Some(pb::Preferences { theme: pb::Theme::Light as i32, ..Default::default() }),
        ..dark("\"1\"".into())
    };
    // Version 1 is current: the dark→dark write changed nothing.
    data.update_preferences(light.clone()).await.unwrap();
    let err = data.update_preferences(light).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
}

async fn flags_are_set_cleared_and_checked_in_bulk(db: Db) {
    let (server, mut data, user) = with_user(db).await;
    let mut users = server.users().await;
    let other = create(&mut users, "user_other").await;
    let set = |u: &pb::User, flags: &[(&str, bool)], clear: &[&str]| pb::UpdateFeatureFlagsRequest {
        user_id: u.id.clone(),
        set: flags.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        clear: clear.iter().map(|k| (*k).to_owned()).collect(),
        ..Default::default()
    };
    data.update_feature_flags(set(&user, &[("beta_features", true), ("new-ui", false), ("old", true)], &[]))
        .await
        .unwrap();
    let after =
        data.update_feature_flags(set(&user, &[("checkout.v2", true)], &["old"])).await.unwrap().into_inner();
    let expected: HashMap<String, bool> = [("beta_features", true), ("new-ui", false), ("checkout.v2", true)]
        .map(|(k, v)| (k.to_owned(), v))
        .into();
    assert_eq!(after.flags, expected);
    data.update_feature_flags(set(&other, &[("beta_features", false)], &[])).await.unwrap();

    let one = data
        .get_feature_flag(pb::GetFeatureFlagRequest {
            clerk_id: user.clerk_id.clone(),
            flag_key: "beta_features".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(one.enabled);
    let missing = data
        .get_feature_flag(pb::GetFeatureFlagRequest {
            user_id: user.id.clone(),
            flag_key: "old".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let many = data
        .check_feature_flags(pb::CheckFeatureFlagsRequest {
            user_id: user.id.clone(),
            flag_keys: vec!["beta_features".into(), "new-ui".into(), "unset".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(many.flags, HashMap::from([("beta_features".into(), true), ("new-ui".into(), false)]));

    let nobody = uuid::Uuid::now_v7().to_string();
    let bulk = data
        .check_feature_flag_for_users(pb::CheckFeatureFlagForUsersRequest {
            flag_key: "beta_features".into(),
            user_ids: vec![user.id.clone(), nobody.clone()],
            clerk_ids: vec!["user_other".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let summary: Vec<(String, bool, bool, bool)> =
        bulk.values.into_iter().map(|v| (v.user, v.user_found, v.is_set, v.enabled)).collect();
    assert_eq!(
        summary,
        [
            (user.id.clone(), true, true, true),
            (nobody, false, false, false),
            ("user_other".into(), true, true, false)
        ]
    );
    let listed = data
        .list_feature_flags(pb::ListFeatureFlagsRequest { user_id: user.id, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.flags, expected);
}

async fn invalid_flag_keys_are_named(db: Db) {
    let (_server, mut data, user) = with_user(db).await;
    let err = data
        .update_feature_flags(pb::UpdateFeatureFlagsRequest {
            user_id: user.id.clone(),
            set: HashMap::from([("Bad Key".into(), true)]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_field_violation(&err, "set[Bad Key]");
    let err = data
        .update_feature_flags(pb::UpdateFeatureFlagsRequest {
            user_id: user.id.clone(),
            set: HashMap::from([("a".into(), true)]),
            clear: vec!["a".into(), "9x".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_field_violation(&err, "clear[1]");
    assert_field_violation(&err, "clear");
    let err = data
        .check_feature_flag_for_users(pb::CheckFeatureFlagForUsersRequest {
            flag_key: "ok".into(),
            user_ids: vec!["nope".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_field_violation(&err, "user_ids[0]");
    let listed =
        data.list_feature_flags(pb::ListFeatureFlagsRequest { user_id: user.id, ..Default::default() }).await;
    assert!(listed.unwrap().into_inner().flags.is_empty());
}

async fn concurrent_flag_writes_lose_nothing(db: Db) {
    let (_server, data, user) = with_user(db).await;
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let mut data = data.clone();
            let id = user.id.clone();
            tokio::spawn(async move {
                data.update_feature_flags(pb::UpdateFeatureFlagsRequest {
                    user_id: id,
                    set: HashMap::from([(format!("flag{i}"), i % 2 == 0)]),
                    ..Default::default()
                })
                .await
                .unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut data = data;
    let listed =
        data.list_feature_flags(pb::ListFeatureFlagsRequest { user_id: user.id, ..Default::default() }).await;
    assert_eq!(listed.unwrap().into_inner().flags.len(), 24);
}

async fn onboarding_moves_forward_only_until_reset(db: Db) {
    let (_server, mut data, user) = with_user(db).await;
    let advance = |step: pb::OnboardingStep| pb::AdvanceOnboardingRequest {
        user_id: user.id.clone(),
        step: step as i32,
        ..Default::default()
    };
    let fresh = data
        .get_onboarding(pb::GetOnboardingRequest { user_id: user.id.clone(), ..Default::default() })
        .await
        .unwrap();
    let status = fresh.into_inner().status.unwrap();
    assert_eq!(status.step, pb::OnboardingStep::Welcome as i32);
    assert!(status.started_at.is_none() && !status.completed);

    let profile = data.advance_onboarding(advance(pb::OnboardingStep::Profile)).await.unwrap().into_inner();
    let started = profile.status.as_ref().unwrap().started_at;
    assert!(started.is_some());
    let again = data.advance_onboarding(advance(pb::OnboardingStep::Profile)).await.unwrap().into_inner();
    assert_eq!(again.etag, profile.etag, "the same step again is a no-op");
    let back = data.advance_onboarding(advance(pb::OnboardingStep::Welcome)).await.unwrap_err();
    assert_eq!(back.code(), Code::FailedPrecondition);

    let done = data.advance_onboarding(advance(pb::OnboardingStep::Complete)).await.unwrap().into_inner();
    let status = done.status.unwrap();
    assert!(status.completed);
    assert!(status.completed_at.is_some());
    assert_eq!(status.started_at, started, "started_at is set once");
    let err = data.advance_onboarding(advance(pb::OnboardingStep::Unspecified)).await.unwrap_err();
    assert_field_violation(&err, "step");

    data.reset_onboarding(pb::ResetOnboardingRequest { user_id: user.id.clone(), ..Default::default() })
        .await
        .unwrap();
    let restarted = data.advance_onboarding(advance(pb::OnboardingStep::Welcome)).await.unwrap().into_inner();
    assert!(!restarted.status.unwrap().completed);
}

fn login(ms: i64, success: bool) -> pb::LoginRecord {
    pb::LoginRecord {
        timestamp: Some(prost_types::Timestamp { seconds: ms / 1000, nanos: 0 }),
        device: Some("Firefox on Linux".into()),
        ip: Some("203.0.113.9".into()),
        success,
    }
}

async fn concurrent_logins_lose_no_increment(db: Db) {
    let (_server, data, user) = with_user(db).await;
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let mut data = data.clone();
            let id = user.id.clone();
            tokio::spawn(async move {
                data.record_login(pb::RecordLoginRequest {
                    user_id: id,
                    login: Some(login(1_700_000_000_000 + i * 1000, true)),
                    ..Default::default()
                })
                .await
                .unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut data = data;
    let activity = data.get_activity(pb::GetActivityRequest { user_id: user.id, ..Default::default() }).await;
    let activity = activity.unwrap().into_inner().activity.unwrap();
    assert_eq!(activity.session_count, 40);
    assert_eq!(activity.last_active.unwrap().seconds, 1_700_000_039);
}

async fn login_history_keeps_the_newest_entries(db: Db) {
    let (_server, mut data, user) = with_user(db).await;
    for i in 0..55 {
        data.record_login(pb::RecordLoginRequest {
            user_id: user.id.clone(),
            login: Some(login(1_700_000_000_000 + i * 1000, i % 5 != 0)),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let activity =
        data.get_activity(pb::GetActivityRequest { user_id: user.id.clone(), ..Default::default() }).await;
    let activity = activity.unwrap().into_inner().activity.unwrap();
    assert_eq!(activity.login_history.len(), 50);
    assert_eq!(activity.login_history[0].timestamp.as_ref().unwrap().seconds, 1_700_000_054);
    assert_eq!(activity.session_count, 44);
    let err = data
        .record_login(pb::RecordLoginRequest {
            user_id: user.id,
            login: Some(pb::LoginRecord { ip: Some("999.1.1.1".into()), ..login(0, true) }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_field_violation(&err, "login.ip");
}

async fn a_redelivered_or_reordered_session_event_counts_once(db: Db) {
    let (_server, mut data, user) = with_user(db).await;
    let session = |key: &str, ms: i64| pb::RecordLoginRequest {
        clerk_id: user.clerk_id.clone(),
        login: Some(login(ms, true)),
        event_context: event(key, ms),
        ..Default::default()
    };
    // Newer first, then older, each delivered three times.
    for _ in 0..3 {
        data.record_login(session("msg_s2", 1_700_000_200_000)).await.unwrap();
    }
    for _ in 0..3 {
        data.record_login(session("msg_s1", 1_700_000_100_000)).await.unwrap();
    }
    let last = data.record_login(session("msg_s1", 1_700_000_100_000)).await.unwrap().into_inner();
    assert!(last.replayed);
    let activity = last.activity.unwrap();
    assert_eq!(activity.session_count, 2);
    assert_eq!(activity.login_history.len(), 2);
    assert_eq!(activity.last_active.unwrap().seconds, 1_700_000_200);
}

async fn history_exposes_signup_and_name_changes(db: Db) {
    let (server, mut data, user) = with_user(db).await;
    let mut users = server.users().await;
    users
        .update_user(clerk_update(&user.clerk_id, "Grace", "Hopper", "msg_n1", 1_700_000_000_000))
        .await
        .unwrap();
    let history = data
        .get_user_history(pb::GetUserHistoryRequest { user_id: user.id, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.signup_source, pb::SignupSource::Admin as i32);
    assert!(history.signup_date.is_some());
    assert!(history.last_clerk_sync.is_some());
    assert_eq!(history.name_history.len(), 1);
    assert_eq!(history.name_history[0].first_name, "Grace");
    assert_eq!(history.name_history[0].timestamp.as_ref().unwrap().seconds, 1_700_000_000);
}

async fn generic_and_typed_views_agree(db: Db) {
    let (_server, mut data, user) = with_user(db).await;
    data.set_user_data(pb::SetUserDataRequest {
        user_id: user.id.clone(),
        key: "preferences".into(),
        value: Some(pb_value(
            json!({"theme": "light", "notifications": false, "language": "de", "timezone": "Europe/Berlin"}),
        )),
        ..Default::default()
    })
    .await
    .unwrap();
    let prefs = data
        .get_preferences(pb::GetPreferencesRequest { user_id: user.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(prefs.preferences.unwrap().theme, pb::Theme::Light as i32);

    data.update_feature_flags(pb::UpdateFeatureFlagsRequest {
        user_id: user.id.clone(),
        set: HashMap::from([("beta".into(), true)]),
        ..Default::default()
    })
    .await
    .unwrap();
    let generic = data
        .get_user_data(pb::GetUserDataRequest {
            user_id: user.id.clone(),
            key: "feature_flags".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(generic.value, Some(pb_value(json!({"beta": true}))));
    assert_eq!(generic.etag, "\"1\"");
}

async fn generic_writes_of_documented_keys_are_validated(db: Db) {
    let (_server, mut data, user) = with_user(db).await;
    let cases = [
        ("preferences", json!({"theme": "neon", "notifications": true, "language": "en", "timezone": "UTC"})),
        ("preferences", json!({"theme": "dark"})),
        (
            "preferences",
            json!({"theme": "dark", "notifications": true, "language": "en", "timezone": "Nowhere"}),
        ),
        ("feature_flags", json!({"beta": "yes"})),
        (
            "onboarding_status",
            json!({"step": "complete", "completed": false, "started_at": "2026-01-01T00:00:00Z"}),
        ),
    ];
    for (key, value) in cases {
        let err = data
            .set_user_data(pb::SetUserDataRequest {
                user_id: user.id.clone(),
                key: key.into(),
                value: Some(pb_value(value.clone())),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_field_violation(&err, "value");
    }
    let ok = data
        .set_user_data(pb::SetUserDataRequest {
            user_id: user.id.clone(),
            key: "feature_flags".into(),
            value: Some(pb_value(json!({"beta": true}))),
            ..Default::default()
        })
        .await;
    assert!(ok.is_ok());
    let flags = data
        .list_feature_flags(pb::ListFeatureFlagsRequest { user_id: user.id, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(flags.into_inner().flags.get("beta"), Some(&true));
}

async fn custom_keys_have_a_namespace_and_limits(db: Db) {
    let (_server, mut data, user) = with_user(db).await;
    let set = |key: &str, value: serde_json::Value| pb::SetUserDataRequest {
        user_id: user.id.clone(),
        key: key.into(),
        value: Some(pb_value(value)),
        ..Default::default()
    };
    assert!(data.set_user_data(set("custom.favourite_colour", json!({"rgb": [1, 2, 3]}))).await.is_ok());
    let err = data.set_user_data(set("favourite_colour", json!(1))).await.unwrap_err();
    assert_field_violation(&err, "key");
    let err = data.set_user_data(set("custom.big", json!("x".repeat(20_000)))).await.unwrap_err();
    assert_field_violation(&err, "value");
    let mut deep = json!(0);
    for _ in 0..40 {
        deep = json!([deep]);
    }
    let err = data.set_user_data(set("custom.deep", deep)).await.unwrap_err();
    assert_field_violation(&err, "value");
    let err = data
        .set_user_data(pb::SetUserDataRequest {
            value: Some(prost_types::Value { kind: None }),
            ..set("custom.x", json!(1))
        })
        .await
        .unwrap_err();
    assert_field_violation(&err, "value");
}

async fn generic_data_pages_and_deletes_with_etags(db: Db) {
    let (_server, mut data, user) = with_user(db).await;
    for i in 0..5 {
        data.set_user_data(pb::SetUserDataRequest {
            user_id: user.id.clone(),
            key: format!("custom.k{i}"),
            value: Some(pb_value(json!(i))),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let mut keys = Vec::new();
    let mut token = String::new();
    loop {
        let page = data
            .list_user_data(pb::ListUserDataRequest {
                user_id: user.id.clone(),
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        keys.extend(page.entries.into_iter().map(|e| e.key));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    // Two sign-up keys plus five custom ones, in key order.
    assert_eq!(
        keys,
        ["custom.k0", "custom.k1", "custom.k2", "custom.k3", "custom.k4", "signup_date", "signup_source"]
    );

    let delete = |etag: &str| pb::DeleteUserDataRequest {
        user_id: user.id.clone(),
        key: "custom.k0".into(),
        etag: etag.into(),
        ..Default::default()
    };
    assert_eq!(data.delete_user_data(delete("\"7\"")).await.unwrap_err().code(), Code::Aborted);
    data.delete_user_data(delete("\"1\"")).await.unwrap();
    assert_eq!(data.delete_user_data(delete("")).await.unwrap_err().code(), Code::NotFound);
    let err = data
        .list_user_data(pb::ListUserDataRequest {
            user_id: user.id,
            page_token: "forged!".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_field_violation(&err, "page_token");
}

async fn unknown_and_deleted_users_get_no_data(db: Db) {
    let (server, mut data, user) = with_user(db).await;
    let mut users = server.users().await;
    users.delete_user(pb::DeleteUserRequest { id: user.id.clone(), ..Default::default() }).await.unwrap();
    let set = data
        .set_user_data(pb::SetUserDataRequest {
            user_id: user.id.clone(),
            key: "custom.x".into(),
            value: Some(pb_value(json!(1))),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(set.code(), Code::NotFound);
    let get = data
        .get_preferences(pb::GetPreferencesRequest { user_id: user.id.clone(), ..Default::default() })
        .await;
    assert_eq!(get.unwrap_err().code(), Code::NotFound);
    let login = data
        .record_login(pb::RecordLoginRequest {
            clerk_id: user.clerk_id.clone(),
            login: Some(login(1_000, true)),
            event_context: event("msg_late", 1_000),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(login.outcome, pb::EventOutcome::UserDeleted as i32);
    assert!(server.store.list_user_data(user.id.parse().unwrap()).await.unwrap().is_empty());
    let err = data.get_activity(pb::GetActivityRequest::default()).await.unwrap_err();
    assert_field_violation(&err, "user_id");
}
