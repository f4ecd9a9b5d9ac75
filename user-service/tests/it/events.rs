//! Clerk-driven writes: idempotency keys, ordering by source time, tombstones
//! and concurrency.

use tonic::Code;
use userdata_proto::v1 as pb;

use crate::helpers::*;

crate::on_both_backends!(
    a_replayed_key_returns_the_first_result_and_changes_nothing,
    an_older_event_changes_nothing,
    an_update_before_its_create_creates_the_user_and_the_create_is_then_stale,
    every_clerk_write_sets_last_clerk_sync,
    a_late_update_or_create_never_resurrects_a_deleted_user,
    a_delete_for_an_unknown_user_is_remembered,
    events_may_not_set_role_or_status,
    a_reused_key_for_another_user_is_rejected,
    a_reused_key_for_another_kind_of_write_is_rejected,
    a_reused_key_for_another_event_type_is_rejected,
    bad_event_contexts_are_named,
    concurrent_creates_of_one_clerk_id_leave_one_row,
    concurrent_deliveries_of_one_event_have_one_effect,
);

async fn a_replayed_key_returns_the_first_result_and_changes_nothing(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    let first = client.create_user(clerk_create("user_r", "Ann", "msg_1", 1_000)).await.unwrap().into_inner();
    assert_eq!(first.outcome, pb::EventOutcome::Applied as i32);
    assert!(!first.replayed);

    let update =
        client.update_user(clerk_update("user_r", "Bea", "L", "msg_2", 2_000)).await.unwrap().into_inner();
    // msg_1 again (a Svix retry): same answer as the first time, no effect.
    let again = client.create_user(clerk_create("user_r", "Ann", "msg_1", 1_000)).await.unwrap().into_inner();
    assert!(again.replayed);
    assert_eq!(again.user, first.user);
    assert_eq!(again.outcome, first.outcome);
    let again =
        client.update_user(clerk_update("user_r", "Bea", "L", "msg_2", 2_000)).await.unwrap().into_inner();
    assert!(again.replayed);
    assert_eq!(again.user, update.user);

    let stored = get_by_clerk_id(&mut client, "user_r").await.unwrap();
    assert_eq!(Some(stored), update.user, "replays wrote something");
    let id = update.user.unwrap().id.parse().unwrap();
    let history = server.store.list_user_data(id).await.unwrap();
    let names = history.iter().find(|d| d.key == "name_history").unwrap();
    assert_eq!(names.value.as_array().unwrap().len(), 1);
}

async fn an_older_event_changes_nothing(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    client.create_user(clerk_create("user_o", "Ann", "msg_1", 1_000)).await.unwrap();
    client.update_user(clerk_update("user_o", "New", "L", "msg_3", 3_000)).await.unwrap();
    let stale =
        client.update_user(clerk_update("user_o", "Old", "L", "msg_2", 2_000)).await.unwrap().into_inner();
    assert_eq!(stale.outcome, pb::EventOutcome::Stale as i32);
    assert_eq!(stale.user.unwrap().first_name.as_deref(), Some("New"));
    assert_eq!(get_by_clerk_id(&mut client, "user_o").await.unwrap().first_name.as_deref(), Some("New"));
}

async fn an_update_before_its_create_creates_the_user_and_the_create_is_then_stale(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    let update =
        client.update_user(clerk_update("user_u", "Later", "L", "msg_2", 2_000)).await.unwrap().into_inner();
    assert_eq!(update.outcome, pb::EventOutcome::Applied as i32);
    let user = update.user.unwrap();
    assert_eq!(user.first_name.as_deref(), Some("Later"));

    let create =
        client.create_user(clerk_create("user_u", "Earlier", "msg_1", 1_000)).await.unwrap().into_inner();
    assert_eq!(create.outcome, pb::EventOutcome::Stale as i32);
    assert_eq!(get_by_clerk_id(&mut client, "user_u").await.unwrap(), user);
    let data = server.store.list_user_data(user.id.parse().unwrap()).await.unwrap();
    let source = data.iter().find(|d| d.key == "signup_source").unwrap();
    assert_eq!(source.value, "clerk");
}

async fn every_clerk_write_sets_last_clerk_sync(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    let user = client
        .create_user(clerk_create("user_s", "A", "msg_1", 1_000))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let id = user.id.parse().unwrap();
    let sync = |data: Vec<user_service::store::DataEntry>| {
        data.into_iter()
            .find(|d| d.key == "last_clerk_sync")
            .map(|d| (d.value, d.version))
            .expect("last_clerk_sync")
    };
    let (first, v1) = sync(server.store.list_user_data(id).await.unwrap());
    assert!(chrono::DateTime::parse_from_rfc3339(first.as_str().unwrap()).is_ok());
    client.update_user(clerk_update("user_s", "A", "B", "msg_2", 2_000)).await.unwrap();
    let (_, v2) = sync(server.store.list_user_data(id).await.unwrap());
    assert_eq!(v2, v1 + 1);
}

async fn a_late_update_or_create_never_resurrects_a_deleted_user(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    let user = client
        .create_user(clerk_create("user_d", "A", "msg_1", 1_000))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let deleted = client
        .delete_user(pb::DeleteUserRequest {
            clerk_id: "user_d".into(),
            event_context: event("msg_3", 3_000),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.outcome, pb::EventOutcome::Applied as i32);

    // An update stamped even later than the delete still cannot bring it back.
    let late =
        client.update_user(clerk_update("user_d", "Zombie", "Z", "msg_4", 9_000)).await.unwrap().into_inner();
    assert_eq!(late.outcome, pb::EventOutcome::UserDeleted as i32);
    assert!(late.user.is_none());
    let late = client.create_user(clerk_create("user_d", "Zombie", "msg_0", 500)).await.unwrap().into_inner();
    assert_eq!(late.outcome, pb::EventOutcome::UserDeleted as i32);

    assert_eq!(get_by_clerk_id(&mut client, "user_d").await.unwrap_err().code(), Code::NotFound);
    assert!(
        server.store.list_user_data(user.id.parse().unwrap()).await.unwrap().is_empty(),
        "user_data cascades"
    );
}

async fn a_delete_for_an_unknown_user_is_remembered(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    let deleted = client
        .delete_user(pb::DeleteUserRequest {
            clerk_id: "user_never".into(),
            event_context: event("msg_9", 9_000),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.outcome, pb::EventOutcome::Applied as i32);
    let create =
        client.create_user(clerk_create("user_never", "A", "msg_1", 1_000)).await.unwrap().into_inner();
    assert_eq!(create.outcome, pb::EventOutcome::UserDeleted as i32);
    assert_eq!(get_by_clerk_id(&mut client, "user_never").await.unwrap_err().code(), Code::NotFound);
}

async fn events_may_not_set_role_or_status(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    let mut req = clerk_update("user_rs", "A", "B", "msg_1", 1_000);
    req.update_mask = Some(mask(&["first_name", "role"]));
    req.user.as_mut().unwrap().role = pb::UserRole::Admin as i32;
    let err = client.update_user(req).await.unwrap_err();
    assert_field_violation(&err, "update_mask.paths[role]");
    let mut req = clerk_create("user_rs", "A", "msg_2", 1_000);
    req.user.as_mut().unwrap().status = pb::UserStatus::Banned as i32;
    let err = client.create_user(req).await.unwrap_err();
    assert_field_violation(&err, "user.role");
    assert_eq!(get_by_clerk_id(&mut client, "user_rs").await.unwrap_err().code(), Code::NotFound);
}

async fn a_reused_key_for_another_kind_of_write_is_rejected(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    client.create_user(clerk_create("user_kk", "A", "msg_kind", 1_000)).await.unwrap();
    let err = client.update_user(clerk_update("user_kk", "B", "C", "msg_kind", 2_000)).await.unwrap_err();
    assert_field_violation(&err, "event_context.idempotency_key");
    assert!(err.message().contains("another kind of write"), "{err:?}");
    assert_eq!(get_by_clerk_id(&mut client, "user_kk").await.unwrap().first_name.as_deref(), Some("A"));
}

async fn a_reused_key_for_another_event_type_is_rejected(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    client.create_user(clerk_create("user_kt", "A", "msg_t0", 500)).await.unwrap();
    let typed = |event_type: &str, first: &str| {
        let mut request = clerk_update("user_kt", first, "L", "msg_type", 1_000);
        request.event_context.as_mut().unwrap().event_type = event_type.into();
        request
    };
    client.update_user(typed("user.updated", "B")).await.unwrap();
    let again = client.update_user(typed("user.updated", "B")).await.unwrap().into_inner();
    assert!(again.replayed);
    let err = client.update_user(typed("session.created", "C")).await.unwrap_err();
    assert_field_violation(&err, "event_context.idempotency_key");
}

async fn a_reused_key_for_another_user_is_rejected(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    client.create_user(clerk_create("user_k1", "A", "msg_same", 1_000)).await.unwrap();
    let err = client.create_user(clerk_create("user_k2", "B", "msg_same", 1_000)).await.unwrap_err();
    assert_field_violation(&err, "event_context.idempotency_key");
    assert_eq!(get_by_clerk_id(&mut client, "user_k2").await.unwrap_err().code(), Code::NotFound);
}

async fn bad_event_contexts_are_named(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    let mut req = clerk_create("user_bad", "A", "", 1_000);
    let err = client.create_user(req.clone()).await.unwrap_err();
    assert_field_violation(&err, "event_context.idempotency_key");
    req.event_context =
        Some(pb::EventContext { idempotency_key: "msg key".into(), source_time: None, ..Default::default() });
    let err = client.create_user(req.clone()).await.unwrap_err();
    assert_field_violation(&err, "event_context.idempotency_key");
    assert_field_violation(&err, "event_context.source_time");
    req.event_context = Some(pb::EventContext {
        idempotency_key: "msg_1".into(),
        source_time: Some(prost_types::Timestamp { seconds: 1, nanos: -5 }),
        ..Default::default()
    });
    let err = client.create_user(req).await.unwrap_err();
    assert_field_violation(&err, "event_context.source_time");
    let mut req = clerk_update("", "A", "B", "msg_2", 1_000);
    req.user.as_mut().unwrap().id = uuid::Uuid::now_v7().to_string();
    let err = client.update_user(req).await.unwrap_err();
    assert_field_violation(&err, "user.clerk_id");
}

async fn concurrent_creates_of_one_clerk_id_leave_one_row(db: Db) {
    let server = TestServer::start(db).await;
    let client = server.users().await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            // Half as admins (one wins, the rest ALREADY_EXISTS), half as
            // distinct Clerk events (all succeed, one inserts).
            if i % 2 == 0 {
                client
                    .create_user(pb::CreateUserRequest {
                        user: Some(new_user("user_race")),
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
            } else {
                client
                    .create_user(clerk_create("user_race", "A", &format!("msg_{i}"), 1_000))
                    .await
                    .map(|_| ())
            }
        }));
    }
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => {}
            Err(status) => assert_eq!(status.code(), Code::AlreadyExists, "{status:?}"),
        }
    }
    let mut client = client;
    let all = client.list_users(pb::ListUsersRequest::default()).await.unwrap().into_inner().users;
    assert_eq!(all.len(), 1);
}

async fn concurrent_deliveries_of_one_event_have_one_effect(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    client.create_user(clerk_create("user_cc", "A", "msg_1", 1_000)).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .update_user(clerk_update("user_cc", "Renamed", "X", "msg_2", 2_000))
                .await
                .unwrap()
                .into_inner()
        }));
    }
    let mut fresh = 0;
    for task in tasks {
        let response = task.await.unwrap();
        fresh += usize::from(!response.replayed);
        assert_eq!(response.user.unwrap().first_name.as_deref(), Some("Renamed"));
    }
    assert_eq!(fresh, 1, "exactly one delivery applies");
    let user = get_by_clerk_id(&mut client, "user_cc").await.unwrap();
    let data = server.store.list_user_data(user.id.parse().unwrap()).await.unwrap();
    let history = data.iter().find(|d| d.key == "name_history").unwrap();
    assert_eq!(history.value.as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_namespaced_by_client() {
    use std::io::Write;
    use tonic::{Request, metadata::MetadataValue};
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "first read,write first-token-0123456789\nsecond read,write second-token-0123456789")
        .unwrap();
    let path = file.path().to_owned();
    let server = TestServer::start_with(Db::Postgres, move |c| c.auth_tokens = Some(path)).await;
    let mut client = server.users().await;
    let as_client = |token: &str, request: pb::UpdateUserRequest| {
        let mut request = Request::new(request);
        let value: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
        request
    };
    let first = client
        .update_user(as_client("first-token-0123456789", clerk_update("user_ns", "A", "L", "msg_ns", 1_000)))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.replayed);
    // The same key from another client is that client's own event, not a
    // duplicate of the first one's (nor could the first one block it).
    let second = client
        .update_user(as_client("second-token-0123456789", clerk_update("user_ns", "B", "L", "msg_ns", 2_000)))
        .await
        .unwrap()
        .into_inner();
    assert!(!second.replayed);
    assert_eq!(second.user.unwrap().first_name.as_deref(), Some("B"));
}
