//! `session.*` events become the user's activity (`RecordLogin` /
//! `RecordActivity` in user-service), once per message.

use http::StatusCode;

use crate::{
    clerk::{ClerkUser, T0, deleted, envelope, session_created},
    support::{Db, Harness, millis},
};

crate::on_both_backends!(
    a_session_created_for_an_existing_user_records_one_login,
    a_session_for_a_user_not_created_yet_is_retried_until_the_user_exists,
    a_session_ending_after_the_user_was_deleted_is_acknowledged,
);

/// When the session in [`session_created`] bodies starts.
const SIGNED_IN_AT: i64 = T0 + 60_000;

async fn a_session_created_for_an_existing_user_records_one_login(db: Db) {
    let harness = Harness::start(db).await;
    let user = ClerkUser::new("user_e2eSignsIn").at(T0);
    harness.post(user.created(), "msg_e2e_session_seed").await.assert_outcome("applied", "seed");
    let before = harness.existing_user(&user.id).await;
    let body = session_created(&user, "sess_e2eFirstSession0001", SIGNED_IN_AT);

    let first = harness.post(&body, "msg_e2e_session_created").await;
    let retry = harness.post(&body, "msg_e2e_session_created").await;

    first.assert_outcome("applied", "session.created");
    retry.assert_outcome("duplicate", "session.created retried");
    let activity = harness.activity(&user.id).await;
    assert_eq!(activity.session_count, 1, "{activity:?}");
    assert_eq!(millis(activity.last_active.as_ref()), Some(SIGNED_IN_AT), "{activity:?}");
    let [login] = activity.login_history.as_slice() else {
        panic!("expected exactly one login: {activity:?}");
    };
    assert!(login.success);
    assert_eq!(millis(login.timestamp.as_ref()), Some(SIGNED_IN_AT));
    assert_eq!(login.device.as_deref(), Some("Firefox 140.0 on Macintosh"));
    assert_eq!(login.ip.as_deref(), Some("192.0.2.10"));
    assert_eq!(harness.existing_user(&user.id).await, before, "a session changed the profile");
}

async fn a_session_for_a_user_not_created_yet_is_retried_until_the_user_exists(db: Db) {
    let harness = Harness::start(db).await;
    let user = ClerkUser::new("user_e2eSessionFirst").at(T0);
    let body = session_created(&user, "sess_e2eEarlySession0001", SIGNED_IN_AT);

    let early = harness.post(&body, "msg_e2e_early_session").await;
    assert_eq!(early.status, StatusCode::SERVICE_UNAVAILABLE, "{early:?}");
    assert!(early.headers.contains_key(http::header::RETRY_AFTER), "{early:?}");

    harness.post(user.created(), "msg_e2e_late_user").await.assert_outcome("applied", "user.created");
    let retry = harness.post(&body, "msg_e2e_early_session").await;

    retry.assert_outcome("applied", "session.created retried after user.created");
    assert_eq!(harness.activity(&user.id).await.session_count, 1);
}

async fn a_session_ending_after_the_user_was_deleted_is_acknowledged(db: Db) {
    let harness = Harness::start(db).await;
    let user = ClerkUser::new("user_e2eDeletedWithSession").at(T0);
    harness.post(user.created(), "msg_e2e_ds_created").await.assert_outcome("applied", "user.created");
    harness
        .post(deleted(&user.id, T0 + 120_000), "msg_e2e_ds_deleted")
        .await
        .assert_outcome("applied", "deleted");
    // Clerk ends the sessions of a deleted user; the event may come after.
    let ended = envelope(
        "session.ended",
        serde_json::json!({
            "object": "session",
            "id": "sess_e2eEndedSession00001",
            "client_id": "client_e2eSessionClient01",
            "user_id": user.id,
            "status": "ended",
            "last_active_at": T0 + 90_000,
            "expire_at": T0 + 7 * 86_400_000,
            "abandon_at": T0 + 30 * 86_400_000,
            "created_at": SIGNED_IN_AT,
            "updated_at": T0 + 121_000
        }),
        T0 + 121_000,
    );

    let delivery = harness.post(ended, "msg_e2e_ds_session_ended").await;

    delivery.assert_outcome("user_deleted", "session.ended after user.deleted");
    harness.assert_not_found(&user.id, "after the session event").await;
}
