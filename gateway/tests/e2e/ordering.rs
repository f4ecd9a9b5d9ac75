//! Svix does not order deliveries: whatever order the events of one user
//! arrive in, the stored state is the newest event's, and a deleted user stays
//! deleted.

use crate::{
    clerk::{ClerkUser, T0, deleted},
    support::{Db, Harness, permutations},
};

crate::on_both_backends!(
    created_updated_and_deleted_in_every_order_end_deleted,
    created_and_two_updates_in_every_order_end_at_the_newest_update,
    a_late_update_newer_than_the_deletion_does_not_bring_the_user_back,
    an_update_before_the_create_creates_the_user_and_the_late_create_is_stale,
    a_user_who_signs_up_again_with_the_same_email_gets_a_new_account,
    created_updated_and_deleted_delivered_at_once_end_deleted,
    created_and_two_updates_delivered_at_once_end_at_the_newest_update,
);

/// How many fresh users the "at once" tests race, to give interleavings a
/// chance to differ.
const RACES: usize = 5;

/// One event of a user's history: a label, its body and its message id.
#[derive(Debug, Clone)]
struct Event {
    label: &'static str,
    body: String,
    msg_id: String,
}

impl Event {
    fn new(label: &'static str, body: String, clerk_id: &str) -> Self {
        Self { label, body, msg_id: format!("msg_e2e_{clerk_id}_{label}") }
    }
}

fn labels(order: &[Event]) -> String {
    order.iter().map(|e| e.label).collect::<Vec<_>>().join(" → ")
}

async fn created_updated_and_deleted_in_every_order_end_deleted(db: Db) {
    let harness = Harness::start(db).await;
    let orders = permutations(&["created", "updated", "deleted"]);
    assert_eq!(orders.len(), 6);

    for (n, order) in orders.iter().enumerate() {
        let id = format!("user_e2eOrderCud{n}");
        let v1 = ClerkUser::new(&id).at(T0);
        let v2 = v1.clone().named("Ada", "King").at(T0 + 1_000);
        let events: Vec<Event> = order
            .iter()
            .map(|label| match *label {
                "created" => Event::new("created", v1.created(), &id),
                "updated" => Event::new("updated", v2.updated(), &id),
                _ => Event::new("deleted", deleted(&id, T0 + 2_000), &id),
            })
            .collect();
        let context = labels(&events);

        let mut deleted_yet = false;
        for event in &events {
            let delivery = harness.post(&event.body, &event.msg_id).await;
            let what = format!("{context}: {}", event.label);
            if event.label == "deleted" {
                delivery.assert_outcome("applied", &what);
                deleted_yet = true;
            } else if deleted_yet {
                delivery.assert_outcome("user_deleted", &what);
            } else {
                assert_eq!(delivery.status, 200, "{what}: {delivery:?}");
            }
            if deleted_yet {
                harness.assert_not_found(&id, &what).await;
            }
        }
        harness.assert_not_found(&id, &context).await;
    }
    assert!(harness.all_users().await.is_empty(), "no order may leave a user behind");
}

async fn created_and_two_updates_in_every_order_end_at_the_newest_update(db: Db) {
    let harness = Harness::start(db).await;
    let orders = permutations(&["created", "updated_v2", "updated_v3"]);

    for (n, order) in orders.iter().enumerate() {
        let id = format!("user_e2eOrderCuu{n}");
        let v1 = ClerkUser::new(&id).at(T0);
        let v2 = v1.clone().named("Ada", "King").with_username("ada_k").at(T0 + 1_000);
        let v3 = v2
            .clone()
            .named("Augusta Ada", "Byron")
            .with_username("countess")
            .with_image("https://img.example.test/v3.png")
            .with_primary_email("idn_v3_primary", &format!("v3.{n}@example.test"))
            .at(T0 + 2_000);
        let events: Vec<Event> = order
            .iter()
            .map(|label| match *label {
                "created" => Event::new("created", v1.created(), &id),
                "updated_v2" => Event::new("updated_v2", v2.updated(), &id),
                _ => Event::new("updated_v3", v3.updated(), &id),
            })
            .collect();
        let context = labels(&events);

        // An event is applied exactly when it is newer than everything
        // delivered before it; otherwise it is stale.
        let mut newest = i64::MIN;
        for event in &events {
            let time = match event.label {
                "created" => v1.updated_at,
                "updated_v2" => v2.updated_at,
                _ => v3.updated_at,
            };
            let delivery = harness.post(&event.body, &event.msg_id).await;
            let expected = if time > newest { "applied" } else { "stale" };
            delivery.assert_outcome(expected, &format!("{context}: {}", event.label));
            newest = newest.max(time);
        }

        let user = harness.existing_user(&id).await;
        assert_eq!(user.first_name, v3.first_name, "{context}");
        assert_eq!(user.last_name, v3.last_name, "{context}");
        assert_eq!(user.username, v3.username, "{context}");
        assert_eq!(user.image_url, v3.image_url, "{context}");
        assert_eq!(user.email.as_deref(), v3.primary_email(), "{context}");
    }
    assert_eq!(harness.all_users().await.len(), orders.len());
}

async fn a_late_update_newer_than_the_deletion_does_not_bring_the_user_back(db: Db) {
    let harness = Harness::start(db).await;
    let id = "user_e2eDeletedThenUpdated";
    let user = ClerkUser::new(id).at(T0);
    harness.post(user.created(), "msg_e2e_dtu_created").await.assert_outcome("applied", "created");
    harness.post(deleted(id, T0 + 1_000), "msg_e2e_dtu_deleted").await.assert_outcome("applied", "deleted");

    // Stamped later than the deletion: ordering alone would apply it.
    let late = user.named("Zombie", "Lovelace").at(T0 + 60_000).updated();
    let delivery = harness.post(late, "msg_e2e_dtu_late_update").await;

    delivery.assert_outcome("user_deleted", "late update");
    harness.assert_not_found(id, "after the late update").await;
}

async fn an_update_before_the_create_creates_the_user_and_the_late_create_is_stale(db: Db) {
    let harness = Harness::start(db).await;
    let id = "user_e2eUpdateFirst";
    let created = ClerkUser::new(id).named("Ada", "Byron").at(T0);
    let updated = created.clone().named("Ada", "Lovelace").with_username("ada").at(T0 + 5_000);

    harness.post(updated.updated(), "msg_e2e_uf_updated").await.assert_outcome("applied", "update first");
    let after_update = harness.existing_user(id).await;
    assert_eq!(after_update.last_name.as_deref(), Some("Lovelace"));
    assert_eq!(after_update.username.as_deref(), Some("ada"));

    let delivery = harness.post(created.created(), "msg_e2e_uf_created").await;

    delivery.assert_outcome("stale", "late create");
    assert_eq!(harness.existing_user(id).await, after_update, "the stale create changed the user");
    let history = harness.history(id).await;
    assert_eq!(history.signup_source(), userdata_proto::v1::SignupSource::Clerk);
    assert_eq!(harness.clerk_sync_count(id).await, 1, "only the update was applied");
}

async fn a_user_who_signs_up_again_with_the_same_email_gets_a_new_account(db: Db) {
    let harness = Harness::start(db).await;
    let email = "returning@example.test";
    let first = ClerkUser::new("user_e2eFirstSignup").with_only_email(email).at(T0);
    let second = ClerkUser::new("user_e2eSecondSignup").with_only_email(email).at(T0 + 86_400_000);
    harness.post(first.created(), "msg_e2e_resignup_1").await.assert_outcome("applied", "first sign-up");

    let gone = harness.post(deleted(&first.id, T0 + 3_600_000), "msg_e2e_resignup_del").await;
    let again = harness.post(second.created(), "msg_e2e_resignup_2").await;

    gone.assert_outcome("applied", "deletion of the first account");
    again.assert_outcome("applied", "second sign-up");
    harness.assert_not_found(&first.id, "the old account").await;
    let user = harness.existing_user(&second.id).await;
    assert_eq!(user.email.as_deref(), Some(email));
    let with_email: Vec<String> =
        harness.users_with_email(email).await.into_iter().map(|u| u.clerk_id).collect();
    assert_eq!(with_email, vec![second.id.clone()]);
}

async fn created_updated_and_deleted_delivered_at_once_end_deleted(db: Db) {
    let harness = Harness::start(db).await;
    for n in 0..RACES {
        let id = format!("user_e2eRaceCud{n}");
        let v1 = ClerkUser::new(&id).at(T0);
        let v2 = v1.clone().named("Ada", "King").at(T0 + 1_000);
        let messages = [
            (v1.created(), format!("msg_e2e_{id}_created")),
            (v2.updated(), format!("msg_e2e_{id}_updated")),
            (deleted(&id, T0 + 2_000), format!("msg_e2e_{id}_deleted")),
        ];

        let deliveries = harness.post_all_at_once(&messages).await;

        for (delivery, (_, msg_id)) in deliveries.iter().zip(&messages) {
            assert_eq!(delivery.status, 200, "{msg_id}: {delivery:?}");
        }
        deliveries[2].assert_outcome("applied", &format!("{id}: deleted"));
        harness.assert_not_found(&id, "after a concurrent create, update and delete").await;
    }
    assert!(harness.all_users().await.is_empty());
}

async fn created_and_two_updates_delivered_at_once_end_at_the_newest_update(db: Db) {
    let harness = Harness::start(db).await;
    for n in 0..RACES {
        let id = format!("user_e2eRaceCuu{n}");
        let v1 = ClerkUser::new(&id).at(T0);
        let v2 = v1.clone().named("Ada", "King").at(T0 + 1_000);
        let v3 = v2.clone().named("Augusta Ada", "Byron").with_username("countess").at(T0 + 2_000);
        let messages = [
            (v1.created(), format!("msg_e2e_{id}_created")),
            (v2.updated(), format!("msg_e2e_{id}_v2")),
            (v3.updated(), format!("msg_e2e_{id}_v3")),
        ];

        let deliveries = harness.post_all_at_once(&messages).await;

        deliveries[2].assert_outcome("applied", &format!("{id}: the newest update"));
        for (delivery, (_, msg_id)) in deliveries.iter().zip(&messages) {
            assert!(matches!(delivery.outcome(), "applied" | "stale"), "{msg_id}: {delivery:?}");
        }
        let user = harness.existing_user(&id).await;
        assert_eq!((user.first_name, user.last_name), (v3.first_name.clone(), v3.last_name.clone()), "{id}");
        assert_eq!(user.username, v3.username, "{id}");
    }
    assert_eq!(harness.all_users().await.len(), RACES, "one row per user");
}
