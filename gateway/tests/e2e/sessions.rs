//! `session.*` events become the user's activity (`RecordLogin` /
//! `RecordActivity` in user-service), once per message. A session that
//! carries its user (`data.user`) applies it first, like `user.updated`.

use http::StatusCode;

use crate::{
    clerk::{ClerkUser, T0, deleted, envelope, session_created, session_with_user, session_without_user},
    support::{Db, Harness, millis, unix_now},
};

crate::on_both_backends!(
    a_session_created_for_an_existing_user_records_one_login,
    a_session_for_a_user_not_created_yet_is_retried_until_the_user_exists,
    a_session_ending_after_the_user_was_deleted_is_acknowledged,
    a_session_carrying_an_unknown_user_creates_it_and_counts_one_login,
    a_session_carrying_an_older_user_object_leaves_the_newer_profile_alone,
    a_session_carrying_a_newer_user_object_updates_the_profile,
    a_session_carrying_a_deleted_user_does_not_bring_it_back,
    an_old_session_revoked_for_an_unknown_user_is_acknowledged_as_unknown_user,
    a_session_whose_user_object_is_refused_is_still_recorded_for_a_known_user,
    an_old_session_whose_user_object_is_refused_is_unknown_user_for_an_unknown_user,
    a_session_whose_user_write_fails_transiently_is_retried_and_counts_one_login,
    a_session_revoked_carrying_an_unknown_user_creates_it_without_a_login,
    a_session_ended_carrying_an_unknown_user_creates_it_without_a_login,
);

/// Longer than any name user-service accepts (256 characters), so it refuses
/// the write with `INVALID_ARGUMENT`.
fn refused_name() -> String {
    "N".repeat(300)
}

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
    // Without `data.user` the gateway cannot create the user, and a session
    // this young may simply have beaten its `user.created`.
    let body =
        session_without_user("session.created", &user.id, "sess_e2eEarlySession0001", unix_now() * 1000);

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

async fn a_session_carrying_an_unknown_user_creates_it_and_counts_one_login(db: Db) {
    let harness = Harness::start(db).await;
    let user = ClerkUser::new("user_e2eAdoptedApp").named("Ana", "Existing").at(T0 - 86_400_000);
    harness.assert_not_found(&user.id, "before the session").await;
    let body = session_created(&user, "sess_e2eAdoptedSession01", SIGNED_IN_AT);

    let delivery = harness.post(&body, "msg_e2e_adopted_session").await;

    delivery.assert_outcome("applied", "session.created carrying an unknown user");
    let stored = harness.existing_user(&user.id).await;
    assert_eq!(
        (stored.email.as_deref(), stored.first_name.as_deref(), stored.last_name.as_deref()),
        (user.primary_email(), Some("Ana"), Some("Existing"))
    );
    assert_eq!(harness.activity(&user.id).await.session_count, 1);
}

async fn a_session_carrying_an_older_user_object_leaves_the_newer_profile_alone(db: Db) {
    let harness = Harness::start(db).await;
    let newer = ClerkUser::new("user_e2eSessionOlderUser").named("Renamed", "Later").at(T0 + 300_000);
    harness.post(newer.updated(), "msg_e2e_older_seed").await.assert_outcome("applied", "seed");
    let older = ClerkUser::new("user_e2eSessionOlderUser").at(T0);

    let delivery =
        harness.post(session_created(&older, "sess_e2eOlderUser0001", SIGNED_IN_AT), "msg_e2e_older").await;

    delivery.assert_outcome("applied", "the login is recorded");
    let stored = harness.existing_user(&newer.id).await;
    assert_eq!((stored.first_name.as_deref(), stored.last_name.as_deref()), (Some("Renamed"), Some("Later")));
    assert_eq!(harness.clerk_sync_count(&newer.id).await, 1, "the stale user object wrote nothing");
    assert_eq!(harness.activity(&newer.id).await.session_count, 1);
}

async fn a_session_carrying_a_newer_user_object_updates_the_profile(db: Db) {
    let harness = Harness::start(db).await;
    let user = ClerkUser::new("user_e2eSessionNewerUser").at(T0);
    harness.post(user.created(), "msg_e2e_newer_seed").await.assert_outcome("applied", "seed");
    let renamed = user.clone().named("Ada", "King").at(T0 + 30_000);

    let body = session_created(&renamed, "sess_e2eNewerUser0001", SIGNED_IN_AT);
    harness.post(&body, "msg_e2e_newer").await.assert_outcome("applied", "session.created");
    harness.post(&body, "msg_e2e_newer").await.assert_outcome("duplicate", "redelivered");

    let stored = harness.existing_user(&user.id).await;
    assert_eq!(stored.last_name.as_deref(), Some("King"));
    assert_eq!(harness.clerk_sync_count(&user.id).await, 2, "created, then one update for both deliveries");
    assert_eq!(harness.activity(&user.id).await.session_count, 1);
}

async fn a_session_carrying_a_deleted_user_does_not_bring_it_back(db: Db) {
    let harness = Harness::start(db).await;
    let user = ClerkUser::new("user_e2eSessionDeletedUser").at(T0);
    harness.post(user.created(), "msg_e2e_sdu_created").await.assert_outcome("applied", "seed");
    harness
        .post(deleted(&user.id, T0 + 10_000), "msg_e2e_sdu_deleted")
        .await
        .assert_outcome("applied", "deleted");
    let later = user.clone().at(T0 + 50_000);

    let delivery =
        harness.post(session_created(&later, "sess_e2eDeletedUser0001", SIGNED_IN_AT), "msg_e2e_sdu").await;

    delivery.assert_outcome("user_deleted", "session for a deleted user");
    harness.assert_not_found(&user.id, "after the session").await;
}

async fn an_old_session_revoked_for_an_unknown_user_is_acknowledged_as_unknown_user(db: Db) {
    let harness = Harness::start(db).await;
    // Two hours old: past the default one-hour retry window.
    let two_hours_ago = (unix_now() - 2 * 3600) * 1000;
    let body =
        session_without_user("session.revoked", "user_e2eNeverSeen", "sess_e2eNeverSeen0001", two_hours_ago);

    let delivery = harness.post(&body, "msg_e2e_old_revoked").await;

    delivery.assert_outcome("unknown_user", "old session.revoked for an unknown user");
    harness.assert_not_found("user_e2eNeverSeen", "after the session").await;
}

async fn a_session_whose_user_object_is_refused_is_still_recorded_for_a_known_user(db: Db) {
    let harness = Harness::start(db).await;
    let user = ClerkUser::new("user_e2eRefusedUserObject").at(T0);
    harness.post(user.created(), "msg_e2e_refused_seed").await.assert_outcome("applied", "seed");
    let before = harness.existing_user(&user.id).await;
    let invalid = user.clone().named(&refused_name(), "Lovelace").at(T0 + 30_000);

    let delivery = harness
        .post(session_created(&invalid, "sess_e2eRefusedUser0001", SIGNED_IN_AT), "msg_e2e_refused")
        .await;

    delivery.assert_outcome("applied", "the session of a known user");
    assert_eq!(harness.existing_user(&user.id).await, before, "the refused user object changed the profile");
    assert_eq!(harness.activity(&user.id).await.session_count, 1);
}

async fn an_old_session_whose_user_object_is_refused_is_unknown_user_for_an_unknown_user(db: Db) {
    let harness = Harness::start(db).await;
    let invalid = ClerkUser::new("user_e2eRefusedUnknown").named(&refused_name(), "Lovelace").at(T0);

    // Signed in at T0 + 60 s, long past the one-hour retry window.
    let delivery = harness
        .post(session_created(&invalid, "sess_e2eRefusedUnknown01", SIGNED_IN_AT), "msg_e2e_refused_unknown")
        .await;

    delivery.assert_outcome("unknown_user", "a refused user object creates nobody");
    harness.assert_not_found(&invalid.id, "after the session").await;
}

async fn a_session_whose_user_write_fails_transiently_is_retried_and_counts_one_login(db: Db) {
    let mut harness = Harness::start(db).await;
    let user = ClerkUser::new("user_e2eTransientUserWrite").named("Tess", "Retry").at(T0);
    let body = session_created(&user, "sess_e2eTransientUser01", SIGNED_IN_AT);
    harness.stop_user_service().await;

    let failed = harness.post(&body, "msg_e2e_transient_user").await;
    harness.restart_user_service().await;
    let retried = harness.post(&body, "msg_e2e_transient_user").await;
    let again = harness.post(&body, "msg_e2e_transient_user").await;

    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE, "{failed:?}");
    assert!(failed.headers.contains_key(http::header::RETRY_AFTER), "{failed:?}");
    retried.assert_outcome("applied", "Svix's retry");
    again.assert_outcome("duplicate", "a further redelivery");
    let stored = harness.existing_user(&user.id).await;
    assert_eq!((stored.first_name.as_deref(), stored.last_name.as_deref()), (Some("Tess"), Some("Retry")));
    assert_eq!(harness.clerk_sync_count(&user.id).await, 1, "one profile write");
    let activity = harness.activity(&user.id).await;
    assert_eq!((activity.session_count, activity.login_history.len()), (1, 1), "{activity:?}");
}

/// A `session.*` event other than `session.created` carrying a user nobody
/// created: the user is created and the session moves `last_active`, with
/// no login counted.
async fn an_ending_session_creates_its_user(db: Db, event_type: &str, user: ClerkUser) {
    let harness = Harness::start(db).await;
    let body = session_with_user(event_type, &user, "sess_e2eEndingWithUser01", SIGNED_IN_AT);

    let delivery = harness.post(&body, "msg_e2e_ending_with_user").await;

    delivery.assert_outcome("applied", event_type);
    let stored = harness.existing_user(&user.id).await;
    assert_eq!(
        (stored.email.as_deref(), stored.first_name.as_deref(), stored.last_name.as_deref()),
        (user.primary_email(), user.first_name.as_deref(), user.last_name.as_deref()),
        "{event_type}"
    );
    let activity = harness.activity(&user.id).await;
    assert_eq!(activity.session_count, 0, "{event_type}: {activity:?}");
    assert_eq!(millis(activity.last_active.as_ref()), Some(SIGNED_IN_AT), "{event_type}: {activity:?}");
}

async fn a_session_revoked_carrying_an_unknown_user_creates_it_without_a_login(db: Db) {
    let user = ClerkUser::new("user_e2eRevokedCarriesUser").named("Rev", "Oked").at(T0);
    an_ending_session_creates_its_user(db, "session.revoked", user).await;
}

async fn a_session_ended_carrying_an_unknown_user_creates_it_without_a_login(db: Db) {
    let user = ClerkUser::new("user_e2eEndedCarriesUser").named("End", "Ed").at(T0);
    an_ending_session_creates_its_user(db, "session.ended", user).await;
}
