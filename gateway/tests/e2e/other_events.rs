//! Event types the gateway does not sync are acknowledged and change nothing.

use crate::{
    clerk::{ClerkUser, T0, email_created},
    support::{Db, Harness},
};

crate::on_both_backends!(an_unknown_event_type_is_acknowledged_and_changes_nothing);

async fn an_unknown_event_type_is_acknowledged_and_changes_nothing(db: Db) {
    let harness = Harness::start(db).await;
    let user = ClerkUser::new("user_e2eGetsEmail").at(T0);
    harness.post(user.created(), "msg_e2e_unknown_seed").await.assert_outcome("applied", "seed");
    let before = harness.all_users().await;

    let body = email_created(&user.id, user.primary_email().unwrap_or_default(), T0 + 1_000);
    let delivery = harness.post(body, "msg_e2e_email_created").await;

    delivery.assert_outcome("ignored", "email.created");
    assert_eq!(harness.all_users().await, before, "users changed");
    assert_eq!(harness.clerk_sync_count(&user.id).await, 1, "a Clerk write happened");
    let activity = harness.activity(&user.id).await;
    assert_eq!((activity.session_count, activity.last_active), (0, None), "activity changed");
}
