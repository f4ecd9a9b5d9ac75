//! Svix delivers at least once: retries and concurrent duplicates of one
//! message (same `svix-id`) must take effect exactly once.

use crate::{
    clerk::{ClerkUser, T0, deleted},
    support::{Db, Harness, version_of},
};

crate::on_both_backends!(
    every_event_delivered_three_times_is_applied_once,
    twenty_concurrent_deliveries_of_one_create_have_one_effect,
    twenty_concurrent_deliveries_of_one_update_have_one_effect,
);

/// Delivers `body` as `msg_id` three times, each signed afresh, and checks
/// the first is `first` and the retries are `duplicate`.
async fn deliver_three_times(harness: &Harness, body: &str, msg_id: &str, first: &str) {
    for attempt in 1..=3 {
        let delivery = harness.post(body, msg_id).await;
        let expected = if attempt == 1 { first } else { "duplicate" };
        delivery.assert_outcome(expected, &format!("{msg_id} attempt {attempt}"));
    }
}

async fn every_event_delivered_three_times_is_applied_once(db: Db) {
    let harness = Harness::start(db).await;
    let id = "user_e2eRetried";
    let v1 = ClerkUser::new(id).named("Ada", "Lovelace").at(T0);
    let v2 = v1.clone().named("Ada", "King").at(T0 + 1_000);
    let v3 = v2.clone().with_image("https://img.example.test/ada-2.png").at(T0 + 2_000);

    deliver_three_times(&harness, &v1.created(), "msg_e2e_retry_created", "applied").await;
    deliver_three_times(&harness, &v2.updated(), "msg_e2e_retry_renamed", "applied").await;
    deliver_three_times(&harness, &v3.updated(), "msg_e2e_retry_new_image", "applied").await;

    let user = harness.existing_user(id).await;
    assert_eq!(user.last_name.as_deref(), Some("King"));
    assert_eq!(user.image_url.as_deref(), Some("https://img.example.test/ada-2.png"));
    // Three events changed the row: created (version 1) and two updates.
    assert_eq!(version_of(&user.etag), 3, "user row versions");
    assert_eq!(harness.clerk_sync_count(id).await, 3, "Clerk writes");
    let names = harness.history(id).await.name_history;
    assert_eq!(names.len(), 1, "one real name change, one entry: {names:?}");
    assert_eq!((names[0].first_name.as_str(), names[0].last_name.as_str()), ("Ada", "King"));

    deliver_three_times(&harness, &deleted(id, T0 + 3_000), "msg_e2e_retry_deleted", "applied").await;
    harness.assert_not_found(id, "after the deletion and its retries").await;
}

/// Checks that `count` concurrent answers are all 200 with exactly one
/// `applied` and the rest `duplicate`.
fn assert_one_applied(deliveries: &[crate::support::Delivery], count: usize) {
    assert_eq!(deliveries.len(), count);
    let mut outcomes: Vec<&str> = deliveries
        .iter()
        .map(|d| {
            assert!(d.status.is_success(), "every concurrent delivery is acknowledged: {d:?}");
            d.outcome()
        })
        .collect();
    outcomes.sort_unstable();
    let mut expected = vec!["duplicate"; count - 1];
    expected.insert(0, "applied");
    assert_eq!(outcomes, expected);
}

async fn twenty_concurrent_deliveries_of_one_create_have_one_effect(db: Db) {
    let harness = Harness::start(db).await;
    let id = "user_e2eConcurrentCreate";

    let deliveries =
        harness.post_concurrently(&ClerkUser::new(id).created(), "msg_e2e_conc_create", 20).await;

    assert_one_applied(&deliveries, 20);
    let users = harness.all_users().await;
    assert_eq!(users.len(), 1, "{users:?}");
    assert_eq!(version_of(&users[0].etag), 1);
    assert_eq!(harness.clerk_sync_count(id).await, 1);
}

async fn twenty_concurrent_deliveries_of_one_update_have_one_effect(db: Db) {
    let harness = Harness::start(db).await;
    let id = "user_e2eConcurrentUpdate";
    let v1 = ClerkUser::new(id);
    harness.post(v1.created(), "msg_e2e_conc_seed").await.assert_outcome("applied", "seed");
    let v2 = v1.named("Augusta", "King").at(T0 + 1_000);

    let deliveries = harness.post_concurrently(&v2.updated(), "msg_e2e_conc_update", 20).await;

    assert_one_applied(&deliveries, 20);
    let user = harness.existing_user(id).await;
    assert_eq!(user.first_name.as_deref(), Some("Augusta"));
    assert_eq!(version_of(&user.etag), 2);
    assert_eq!(harness.clerk_sync_count(id).await, 2);
    assert_eq!(harness.history(id).await.name_history.len(), 1);
}
