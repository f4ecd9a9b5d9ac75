//! user-service goes away and comes back: the gateway answers 503 in time
//! (so Svix retries), and the retried delivery applies exactly once.

use std::time::Duration;

use http::StatusCode;

use crate::{
    clerk::{ClerkUser, T0},
    support::{Db, Harness, version_of},
};

crate::on_both_backends!(a_delivery_during_a_user_service_outage_is_503_and_its_retry_applies_once);

/// Svix gives up on an attempt after 15 s; we want a clear margin.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

async fn a_delivery_during_a_user_service_outage_is_503_and_its_retry_applies_once(db: Db) {
    let mut harness = Harness::start(db).await;
    let id = "user_e2eOutage";
    let v1 = ClerkUser::new(id).at(T0);
    harness.post(v1.created(), "msg_e2e_outage_created").await.assert_outcome("applied", "before the outage");
    let v2 = v1.named("Ada", "King").at(T0 + 1_000).updated();

    harness.stop_user_service().await;
    let during = harness.post(&v2, "msg_e2e_outage_update").await;

    assert_eq!(during.status, StatusCode::SERVICE_UNAVAILABLE, "{during:?}");
    assert!(during.headers.contains_key(http::header::RETRY_AFTER), "{during:?}");
    assert!(during.elapsed < ANSWER_WITHIN, "503 took {:?}", during.elapsed);
    println!("[{:?}] 503 during the outage answered in {:?}", harness.db, during.elapsed);

    harness.restart_user_service().await;
    let retry = harness.post(&v2, "msg_e2e_outage_update").await;
    let again = harness.post(&v2, "msg_e2e_outage_update").await;

    retry.assert_outcome("applied", "first retry after the restart");
    again.assert_outcome("duplicate", "second retry after the restart");
    let user = harness.existing_user(id).await;
    assert_eq!(user.last_name.as_deref(), Some("King"));
    assert_eq!(version_of(&user.etag), 2, "created + one update");
    assert_eq!(harness.clerk_sync_count(id).await, 2, "created + one update");
    assert_eq!(harness.history(id).await.name_history.len(), 1);
}
