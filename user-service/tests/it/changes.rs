//! The change log: what writes record, `WatchChanges` (exactly once, in
//! order, resumable, across replicas and crashes) and `ListChanges`.

use std::{collections::HashMap, io::Write, time::Duration};

use serde_json::json;
use tokio_stream::StreamExt;
use tonic::{Code, Request, Status, Streaming, metadata::MetadataValue};
use tonic_types::StatusExt;
use userdata_proto::v1::{
    self as pb, change_service_client::ChangeServiceClient, watch_changes_response::Event,
};

use crate::helpers::*;

/// A `ChangeService` client.
type Changes = ChangeServiceClient<tonic::transport::Channel>;

/// Longest wait for something the test expects to happen.
const PATIENCE: Duration = Duration::from_secs(10);

crate::on_both_backends!(
    every_write_path_records_its_changes_with_the_actor,
    flags_onboarding_activity_role_and_clerk_events_record_their_changes,
    rejected_stale_replayed_and_no_op_writes_record_nothing,
    concurrent_writers_reach_a_follower_exactly_once_and_in_commit_order_per_user,
    a_follower_resuming_from_its_last_cursor_misses_nothing_and_repeats_nothing,
    a_follower_starting_now_sees_only_later_changes,
    a_key_filter_passes_those_keys_and_the_users_own_changes,
    an_idle_stream_gets_heartbeats_with_its_cursor,
    a_filtered_followers_heartbeats_move_past_other_users_changes,
    a_follower_too_slow_for_the_fan_out_reads_the_log_and_misses_nothing,
    a_cursor_older_than_retention_is_out_of_range_naming_the_oldest_cursor,
    deleting_a_user_erases_their_values_and_keeps_the_facts,
    list_changes_pages_and_filters_by_user_actor_kind_and_order,
    list_changes_by_user_id_actor_and_time_window_pages_oldest_first,
    watch_changes_by_user_id_passes_only_that_users_changes,
    bad_watch_and_list_requests_name_the_field,
    followers_resume_after_user_service_is_killed,
);

async fn changes_client(server: &TestServer) -> Changes {
    ChangeServiceClient::new(server.channel().await)
}

/// Opens a stream after `cursor` (empty: now) with a filter.
async fn watch(
    client: &mut Changes,
    request: pb::WatchChangesRequest,
) -> Streaming<pb::WatchChangesResponse> {
    client.watch_changes(request).await.expect("watch changes").into_inner()
}

/// The next change on the stream, skipping heartbeats.
async fn next_change(stream: &mut Streaming<pb::WatchChangesResponse>) -> pb::Change {
    loop {
        let message = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .expect("a change within the patience")
            .expect("the stream is open")
            .expect("a message, not an error");
        if let Some(Event::Change(change)) = message.event {
            return change;
        }
    }
}

/// The next `n` changes.
async fn next_changes(stream: &mut Streaming<pb::WatchChangesResponse>, n: usize) -> Vec<pb::Change> {
    let mut changes = Vec::with_capacity(n);
    for _ in 0..n {
        changes.push(next_change(stream).await);
    }
    changes
}

/// Every change in the log, oldest first.
async fn all_changes(client: &mut Changes, clerk_id: &str) -> Vec<pb::Change> {
    let mut found = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_changes(pb::ListChangesRequest {
                clerk_id: clerk_id.into(),
                order: pb::ChangeOrder::OldestFirst as i32,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("list changes")
            .into_inner();
        found.extend(page.changes);
        if page.next_page_token.is_empty() {
            return found;
        }
        token = page.next_page_token;
    }
}

/// Waits until the log hands out the first `count` changes of `clerk_id`
/// to a follower (a change is handed out once every older transaction has
/// ended): a follower starting "now" after this sees none of them.
async fn wait_final(client: &mut Changes, clerk_id: &str, count: usize) {
    let from_start =
        pb::WatchChangesRequest { cursor: "0_0".into(), clerk_id: clerk_id.into(), ..Default::default() };
    let mut stream = watch(client, from_start).await;
    next_changes(&mut stream, count).await;
}

fn json_of(value: Option<&prost_types::Value>) -> serde_json::Value {
    use prost_types::value::Kind;
    let Some(value) = value else { return serde_json::Value::Null };
    match value.kind.as_ref() {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => json!(b),
        // Integers come back as integers, so they compare with `json!(3)`.
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 1e15 => json!(*n as i64),
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::ListValue(l)) => l.values.iter().map(|v| json_of(Some(v))).collect(),
        Some(Kind::StructValue(s)) => s
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), json_of(Some(v))))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    }
}

fn kind(change: &pb::Change) -> pb::ChangeKind {
    pb::ChangeKind::try_from(change.kind).unwrap()
}

fn set_custom(clerk_id: &str, key: &str, value: serde_json::Value) -> pb::SetUserDataRequest {
    pb::SetUserDataRequest {
        clerk_id: clerk_id.into(),
        key: key.into(),
        value: Some(pb_value(value)),
        ..Default::default()
    }
}

fn theme(clerk_id: &str, theme: pb::Theme) -> pb::UpdatePreferencesRequest {
    pb::UpdatePreferencesRequest {
        clerk_id: clerk_id.into(),
        preferences: Some(pb::Preferences { theme: theme as i32, ..Default::default() }),
        update_mask: Some(mask(&["theme"])),
        ..Default::default()
    }
}

async fn every_write_path_records_its_changes_with_the_actor(db: Db) {
    let server = TestServer::start(db).await;
    let (mut users, mut data, mut changes) =
        (server.users().await, DataClient::new(server.channel().await), changes_client(&server).await);
    let mut create = clerk_create("user_log", "Ada", "msg_create", 1_000);
    create.event_context.as_mut().unwrap().event_type = "user.created".into();
    users.create_user(create).await.unwrap();
    let mut rename = Request::new(pb::UpdateUserRequest {
        user: Some(pb::User {
            clerk_id: "user_log".into(),
            first_name: Some("Grace".into()),
            ..Default::default()
        }),
        update_mask: Some(mask(&["first_name"])),
        changed_by: "user_admin".into(),
        ..Default::default()
    });
    rename.metadata_mut().insert("x-request-id", MetadataValue::from_static("req-rename-1"));
    users.update_user(rename).await.unwrap();
    data.update_preferences(theme("user_log", pb::Theme::Dark)).await.unwrap();
    data.set_user_data(set_custom("user_log", "custom.color", json!("teal"))).await.unwrap();
    data.delete_user_data(pb::DeleteUserDataRequest {
        clerk_id: "user_log".into(),
        key: "custom.color".into(),
        ..Default::default()
    })
    .await
    .unwrap();

    let log = all_changes(&mut changes, "user_log").await;
    let summary: Vec<(pb::ChangeKind, &str)> = log.iter().map(|c| (kind(c), c.key.as_str())).collect();
    assert_eq!(
        summary,
        [
            (pb::ChangeKind::UserCreated, ""),
            (pb::ChangeKind::UserUpdated, ""),
            (pb::ChangeKind::DataSet, "preferences"),
            (pb::ChangeKind::DataSet, "custom.color"),
            (pb::ChangeKind::DataDeleted, "custom.color"),
        ]
    );
    let created = &log[0];
    assert_eq!(json_of(created.after.as_ref())["first_name"], "Ada");
    let actor = created.actor.as_ref().unwrap();
    assert_eq!((actor.client.as_str(), actor.event_id.as_str()), ("anonymous", "msg_create"));
    assert_eq!(actor.event_type, "user.created");
    let renamed = &log[1];
    assert_eq!(json_of(renamed.before.as_ref())["first_name"], "Ada");
    assert_eq!(json_of(renamed.after.as_ref())["first_name"], "Grace");
    let actor = renamed.actor.as_ref().unwrap();
    assert_eq!((actor.changed_by.as_str(), actor.request_id.as_str()), ("user_admin", "req-rename-1"));
    assert!(actor.event_id.is_empty());
    assert_eq!(json_of(log[2].after.as_ref())["theme"], "dark");
    assert_eq!(json_of(log[4].before.as_ref()), json!("teal"));
    assert!(log[4].after.is_none());
    let cursors: Vec<&String> = log.iter().map(|c| &c.cursor).collect();
    assert!(cursors.windows(2).all(|w| w[0] != w[1]), "{cursors:?}");
}

async fn flags_onboarding_activity_role_and_clerk_events_record_their_changes(db: Db) {
    let server = TestServer::start(db).await;
    let (mut users, mut data, mut changes) =
        (server.users().await, DataClient::new(server.channel().await), changes_client(&server).await);
    let clerk_id = "user_paths";
    users.create_user(clerk_create(clerk_id, "Ada", "msg_c", 1_000)).await.unwrap();
    let named = |n: &str| n.to_owned();
    data.update_feature_flags(pb::UpdateFeatureFlagsRequest {
        clerk_id: named(clerk_id),
        set: [("beta".to_owned(), true)].into(),
        ..Default::default()
    })
    .await
    .unwrap();
    data.advance_onboarding(pb::AdvanceOnboardingRequest {
        clerk_id: named(clerk_id),
        step: pb::OnboardingStep::Profile as i32,
        ..Default::default()
    })
    .await
    .unwrap();
    data.reset_onboarding(pb::ResetOnboardingRequest { clerk_id: named(clerk_id), ..Default::default() })
        .await
        .unwrap();
    let mut session = event("msg_s", 2_000);
    session.as_mut().unwrap().event_type = "session.created".into();
    data.record_login(pb::RecordLoginRequest {
        clerk_id: named(clerk_id),
        login: Some(pb::LoginRecord { success: true, ..Default::default() }),
        event_context: session,
        ..Default::default()
    })
    .await
    .unwrap();
    data.record_activity(pb::RecordActivityRequest {
        clerk_id: named(clerk_id),
        active_at: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 }),
        ..Default::default()
    })
    .await
    .unwrap();
    let role = pb::UpdateUserRequest {
        user: Some(pb::User {
            clerk_id: named(clerk_id),
            role: pb::UserRole::Admin as i32,
            ..Default::default()
        }),
        update_mask: Some(mask(&["role"])),
        ..Default::default()
    };
    users.update_user(role).await.unwrap();
    let mut updated = clerk_update(clerk_id, "Grace", "Hopper", "msg_u", 3_000);
    updated.event_context.as_mut().unwrap().event_type = "user.updated".into();
    users.update_user(updated).await.unwrap();
    let mut deleted = pb::DeleteUserRequest { clerk_id: named(clerk_id), ..Default::default() };
    deleted.event_context = event("msg_d", 4_000);
    deleted.event_context.as_mut().unwrap().event_type = "user.deleted".into();
    users.delete_user(deleted).await.unwrap();

    let log = all_changes(&mut changes, clerk_id).await;
    let has = |kind_of: pb::ChangeKind, key: &str| log.iter().any(|c| kind(c) == kind_of && c.key == key);
    assert!(has(pb::ChangeKind::DataSet, "feature_flags"), "{log:?}");
    assert!(has(pb::ChangeKind::DataSet, "onboarding_status"), "{log:?}");
    assert!(has(pb::ChangeKind::DataDeleted, "onboarding_status"), "a reset removes the key: {log:?}");
    for key in ["session_count", "login_history", "last_active"] {
        assert!(has(pb::ChangeKind::DataSet, key), "{key}: {log:?}");
    }
    let login = log.iter().find(|c| c.key == "login_history").unwrap().actor.clone().unwrap();
    assert_eq!((login.event_id.as_str(), login.event_type.as_str()), ("msg_s", "session.created"));
    let users_changed: Vec<&pb::Change> = log.iter().filter(|c| c.key.is_empty()).collect();
    let kinds: Vec<pb::ChangeKind> = users_changed.iter().map(|c| kind(c)).collect();
    assert_eq!(
        kinds,
        [
            pb::ChangeKind::UserCreated,
            pb::ChangeKind::UserUpdated,
            pb::ChangeKind::UserUpdated,
            pb::ChangeKind::UserDeleted
        ]
    );
    let by_event = users_changed[2].actor.as_ref().unwrap();
    assert_eq!((by_event.event_id.as_str(), by_event.event_type.as_str()), ("msg_u", "user.updated"));
    let deletion = users_changed[3].actor.as_ref().unwrap();
    assert_eq!((deletion.event_id.as_str(), deletion.event_type.as_str()), ("msg_d", "user.deleted"));
}

async fn rejected_stale_replayed_and_no_op_writes_record_nothing(db: Db) {
    let server = TestServer::start(db).await;
    let (mut users, mut data, mut changes) =
        (server.users().await, DataClient::new(server.channel().await), changes_client(&server).await);
    users.create_user(clerk_create("user_quiet", "Ada", "msg_1", 2_000)).await.unwrap();
    data.update_preferences(theme("user_quiet", pb::Theme::Dark)).await.unwrap();
    let before = all_changes(&mut changes, "user_quiet").await.len();

    // Rejected: an invalid time zone.
    let mut bad = theme("user_quiet", pb::Theme::Light);
    bad.preferences.as_mut().unwrap().timezone = "Mars/Olympus".into();
    bad.update_mask = Some(mask(&["theme", "timezone"]));
    assert_eq!(data.update_preferences(bad).await.unwrap_err().code(), Code::InvalidArgument);
    // Stale: older than what is stored.
    users.update_user(clerk_update("user_quiet", "Old", "Name", "msg_2", 1_000)).await.unwrap();
    // Replayed: the same event again.
    users.create_user(clerk_create("user_quiet", "Ada", "msg_1", 2_000)).await.unwrap();
    // No-op: the value it already has.
    data.update_preferences(theme("user_quiet", pb::Theme::Dark)).await.unwrap();
    // A stale etag.
    let mut stale = set_custom("user_quiet", "custom.x", json!(1));
    stale.etag = "\"v99\"".into();
    assert!(data.set_user_data(stale).await.is_err());

    assert_eq!(all_changes(&mut changes, "user_quiet").await.len(), before);
}

async fn concurrent_writers_reach_a_follower_exactly_once_and_in_commit_order_per_user(db: Db) {
    const WRITERS: usize = 8;
    const USERS: usize = 4;
    const WRITES: usize = 25;
    let server = TestServer::start_with(db, |c| c.max_connections = 8).await;
    let mut users = server.users().await;
    let mut changes = changes_client(&server).await;
    for u in 0..USERS {
        create(&mut users, &format!("user_c{u}")).await;
        wait_final(&mut changes, &format!("user_c{u}"), 1).await;
    }
    let mut stream = watch(&mut changes, pb::WatchChangesRequest::default()).await;

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut data = DataClient::new(server.channel().await);
        writers.push(tokio::spawn(async move {
            for i in 0..WRITES {
                let user = format!("user_c{}", (w + i) % USERS);
                data.set_user_data(set_custom(&user, "custom.counter", json!(format!("{w}-{i}"))))
                    .await
                    .expect("write");
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }

    let received = next_changes(&mut stream, WRITERS * WRITES).await;
    let mut seen = std::collections::HashSet::new();
    let mut last_value: HashMap<String, serde_json::Value> = HashMap::new();
    let mut last_cursor: Option<String> = None;
    for change in &received {
        assert_eq!(kind(change), pb::ChangeKind::DataSet);
        let after = json_of(change.after.as_ref());
        assert!(seen.insert(after.clone()), "{after} delivered twice");
        // Each user's changes chain: what one wrote is what the next found.
        let before = json_of(change.before.as_ref());
        let previous = last_value.insert(change.clerk_id.clone(), after).unwrap_or(serde_json::Value::Null);
        assert_eq!(before, previous, "out of commit order for {}", change.clerk_id);
        assert_ne!(last_cursor.as_ref(), Some(&change.cursor));
        last_cursor = Some(change.cursor.clone());
    }
    assert_eq!(seen.len(), WRITERS * WRITES);
    // Nothing more arrives: the next message is a heartbeat or nothing.
    let extra = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(
        !matches!(&extra, Ok(Some(Ok(pb::WatchChangesResponse { event: Some(Event::Change(_)) })))),
        "{extra:?}"
    );
}

async fn a_follower_resuming_from_its_last_cursor_misses_nothing_and_repeats_nothing(db: Db) {
    let server = TestServer::start(db).await;
    let (mut users, mut data, mut changes) =
        (server.users().await, DataClient::new(server.channel().await), changes_client(&server).await);
    create(&mut users, "user_resume").await;
    wait_final(&mut changes, "user_resume", 1).await;
    let mut stream = watch(&mut changes, pb::WatchChangesRequest::default()).await;
    for i in 0..5 {
        data.set_user_data(set_custom("user_resume", "custom.n", json!(i))).await.unwrap();
    }
    let first = next_changes(&mut stream, 3).await;
    drop(stream);
    for i in 5..10 {
        data.set_user_data(set_custom("user_resume", "custom.n", json!(i))).await.unwrap();
    }
    let resumed = pb::WatchChangesRequest { cursor: first[2].cursor.clone(), ..Default::default() };
    let mut stream = watch(&mut changes, resumed).await;
    let rest = next_changes(&mut stream, 7).await;
    let values: Vec<serde_json::Value> =
        first.iter().chain(&rest).map(|c| json_of(c.after.as_ref())).collect();
    assert_eq!(values, (0..10).map(|i| json!(i)).collect::<Vec<_>>());
}

async fn a_follower_starting_now_sees_only_later_changes(db: Db) {
    let server = TestServer::start(db).await;
    let (mut users, mut data, mut changes) =
        (server.users().await, DataClient::new(server.channel().await), changes_client(&server).await);
    create(&mut users, "user_now").await;
    data.set_user_data(set_custom("user_now", "custom.n", json!("before"))).await.unwrap();
    wait_final(&mut changes, "user_now", 2).await;
    let mut stream = watch(&mut changes, pb::WatchChangesRequest::default()).await;
    data.set_user_data(set_custom("user_now", "custom.n", json!("after"))).await.unwrap();
    let change = next_change(&mut stream).await;
    assert_eq!(json_of(change.after.as_ref()), json!("after"));
}

async fn a_key_filter_passes_those_keys_and_the_users_own_changes(db: Db) {
    let server = TestServer::start(db).await;
    let (mut users, mut data, mut changes) =
        (server.users().await, DataClient::new(server.channel().await), changes_client(&server).await);
    create(&mut users, "user_keys").await;
    create(&mut users, "user_other").await;
    wait_final(&mut changes, "user_keys", 1).await;
    let request = pb::WatchChangesRequest {
        clerk_id: "user_keys".into(),
        keys: vec!["preferences".into()],
        ..Default::default()
    };
    let mut stream = watch(&mut changes, request).await;
    data.set_user_data(set_custom("user_keys", "custom.skip", json!(1))).await.unwrap();
    data.update_preferences(theme("user_other", pb::Theme::Dark)).await.unwrap();
    data.update_preferences(theme("user_keys", pb::Theme::Light)).await.unwrap();
    users
        .delete_user(pb::DeleteUserRequest { clerk_id: "user_keys".into(), ..Default::default() })
        .await
        .unwrap();
    let got = next_changes(&mut stream, 2).await;
    assert_eq!(
        (kind(&got[0]), got[0].key.as_str(), got[0].clerk_id.as_str()),
        (pb::ChangeKind::DataSet, "preferences", "user_keys")
    );
    assert_eq!(kind(&got[1]), pb::ChangeKind::UserDeleted);
}

async fn a_follower_too_slow_for_the_fan_out_reads_the_log_and_misses_nothing(db: Db) {
    use crate::observability::{sample, scrape, with_metrics};
    const WRITES: usize = 400;
    let server = TestServer::start_with(db, |c| {
        with_metrics(c);
        c.change_fanout_capacity = std::num::NonZeroUsize::new(8).unwrap();
    })
    .await;
    let (mut users, mut data, mut changes) =
        (server.users().await, DataClient::new(server.channel().await), changes_client(&server).await);
    create(&mut users, "user_slow").await;
    wait_final(&mut changes, "user_slow", 1).await;
    // A follower that reads nothing while the writes happen: its stream's
    // buffers fill, its task waits, and the fan-out moves on without it.
    let mut stream = watch(&mut changes, pb::WatchChangesRequest::default()).await;
    // Big enough that the HTTP/2 windows and the stream's buffer fill.
    let padding = "x".repeat(12_000);
    for i in 0..WRITES {
        data.set_user_data(set_custom("user_slow", "custom.n", json!({"i": i, "pad": padding})))
            .await
            .unwrap();
    }
    let received = next_changes(&mut stream, WRITES).await;
    let order: Vec<serde_json::Value> =
        received.iter().map(|c| json_of(c.after.as_ref())["i"].clone()).collect();
    assert_eq!(order, (0..WRITES).map(|i| json!(i)).collect::<Vec<_>>());
    let metrics = scrape(server.metrics_addr.unwrap()).await;
    let fallbacks = sample(&metrics, "change_stream_fallbacks_total", &[]).unwrap_or(0.0);
    assert!(fallbacks >= 1.0, "the follower never fell behind the fan-out:\n{metrics}");
}

async fn an_idle_stream_gets_heartbeats_with_its_cursor(db: Db) {
    let server =
        TestServer::start_with(db, |c| c.change_heartbeat_interval = Duration::from_millis(100)).await;
    let (mut users, mut data, mut changes) =
        (server.users().await, DataClient::new(server.channel().await), changes_client(&server).await);
    create(&mut users, "user_beat").await;
    wait_final(&mut changes, "user_beat", 1).await;
    let mut stream = watch(&mut changes, pb::WatchChangesRequest::default()).await;
    data.set_user_data(set_custom("user_beat", "custom.n", json!(1))).await.unwrap();
    let change = next_change(&mut stream).await;
    let message = tokio::time::timeout(PATIENCE, stream.next()).await.unwrap().unwrap().unwrap();
    let Some(Event::Heartbeat(beat)) = message.event else { panic!("expected a heartbeat, got {message:?}") };
    assert_eq!(beat.cursor, change.cursor);
}

async fn a_filtered_followers_heartbeats_move_past_other_users_changes(db: Db) {
    let server =
        TestServer::start_with(db, |c| c.change_heartbeat_interval = Duration::from_millis(100)).await;
    let (mut users, mut data, mut changes) =
        (server.users().await, DataClient::new(server.channel().await), changes_client(&server).await);
    create(&mut users, "user_quiet").await;
    create(&mut users, "user_busy").await;
    let quiet = pb::WatchChangesRequest { clerk_id: "user_quiet".into(), ..Default::default() };
    let mut stream = watch(&mut changes, quiet).await;
    data.set_user_data(set_custom("user_busy", "custom.n", json!("busy"))).await.unwrap();
    let busy = all_changes(&mut changes, "user_busy").await.pop().expect("the busy user's change");

    // Heartbeats until one has moved past the busy user's change: resuming
    // the whole log from it must not bring that change again.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let message = tokio::time::timeout(PATIENCE, stream.next()).await.unwrap().unwrap().unwrap();
        let Some(Event::Heartbeat(beat)) = message.event else { panic!("only heartbeats: {message:?}") };
        let mut everything =
            watch(&mut changes, pb::WatchChangesRequest { cursor: beat.cursor, ..Default::default() }).await;
        data.set_user_data(set_custom("user_busy", "custom.probe", json!("probe"))).await.unwrap();
        let next = next_change(&mut everything).await;
        if next.cursor != busy.cursor {
            assert_eq!(next.key, "custom.probe", "{next:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no heartbeat moved past the busy user's change");
    }
}

async fn a_cursor_older_than_retention_is_out_of_range_naming_the_oldest_cursor(db: Db) {
    let server = TestServer::start(db).await;
    let (mut users, mut data, mut changes) =
        (server.users().await, DataClient::new(server.channel().await), changes_client(&server).await);
    create(&mut users, "user_old").await;
    data.set_user_data(set_custom("user_old", "custom.n", json!(1))).await.unwrap();
    let first = all_changes(&mut changes, "user_old").await[0].cursor.clone();
    data.set_user_data(set_custom("user_old", "custom.n", json!(2))).await.unwrap();
    // Everything written so far is past a zero retention.
    assert!(server.store.prune_changes(Duration::ZERO).await.unwrap() >= 3);

    let request = pb::WatchChangesRequest { cursor: first, ..Default::default() };
    let err = changes.watch_changes(request).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    let info = err.get_details_error_info().expect("ErrorInfo");
    let oldest = info.metadata.get("oldest_cursor").expect("oldest_cursor").clone();
    assert!(err.message().contains(&oldest), "{err:?}");

    let mut stream =
        watch(&mut changes, pb::WatchChangesRequest { cursor: oldest, ..Default::default() }).await;
    // Reloading and watching from now works too, though nothing is left.
    let mut from_now = watch(&mut changes, pb::WatchChangesRequest::default()).await;
    data.set_user_data(set_custom("user_old", "custom.n", json!(3))).await.unwrap();
    assert_eq!(json_of(next_change(&mut stream).await.after.as_ref()), json!(3));
    assert_eq!(json_of(next_change(&mut from_now).await.after.as_ref()), json!(3));
}

async fn deleting_a_user_erases_their_values_and_keeps_the_facts(db: Db) {
    let server = TestServer::start(db).await;
    let (mut users, mut data, mut changes) =
        (server.users().await, DataClient::new(server.channel().await), changes_client(&server).await);
    users.create_user(clerk_create("user_gone", "Ada", "msg_c", 1_000)).await.unwrap();
    data.record_login(pb::RecordLoginRequest {
        clerk_id: "user_gone".into(),
        login: Some(pb::LoginRecord { ip: Some("203.0.113.9".into()), success: true, ..Default::default() }),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut delete = pb::DeleteUserRequest { clerk_id: "user_gone".into(), ..Default::default() };
    delete.event_context = event("msg_d", 2_000);
    users.delete_user(delete).await.unwrap();

    let log = all_changes(&mut changes, "user_gone").await;
    assert_eq!(kind(log.last().unwrap()), pb::ChangeKind::UserDeleted);
    for change in &log {
        assert!(change.before.is_none() && change.after.is_none(), "{change:?}");
    }
    assert!(log[..log.len() - 1].iter().all(|c| c.erased));
    assert_eq!(log[0].actor.as_ref().unwrap().event_id, "msg_c");
    let text = format!("{log:?}");
    assert!(
        !text.contains("203.0.113.9") && !text.contains("Ada") && !text.contains("example.org"),
        "{text}"
    );

    // A redelivered create is recognised, and gives nothing back.
    let replay =
        users.create_user(clerk_create("user_gone", "Ada", "msg_c", 1_000)).await.unwrap().into_inner();
    assert!(replay.replayed);
    assert!(replay.user.is_none(), "{replay:?}");
}

async fn list_changes_pages_and_filters_by_user_actor_kind_and_order(db: Db) {
    let server = TestServer::start(db).await;
    let (mut users, mut data, mut changes) =
        (server.users().await, DataClient::new(server.channel().await), changes_client(&server).await);
    create(&mut users, "user_a").await;
    create(&mut users, "user_b").await;
    for i in 0..5 {
        data.set_user_data(set_custom("user_a", "custom.n", json!(i))).await.unwrap();
    }
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = changes
            .list_changes(pb::ListChangesRequest {
                clerk_id: "user_a".into(),
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages.push(page.changes);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 2]);
    let newest_first: Vec<pb::Change> = pages.into_iter().flatten().collect();
    assert_eq!(kind(newest_first.last().unwrap()), pb::ChangeKind::UserCreated);
    assert_eq!(json_of(newest_first[0].after.as_ref()), json!(4));

    let only = |kind: pb::ChangeKind, actor: &str| pb::ListChangesRequest {
        kind: kind as i32,
        actor: actor.into(),
        ..Default::default()
    };
    let created = changes.list_changes(only(pb::ChangeKind::UserCreated, "")).await.unwrap().into_inner();
    assert_eq!(created.changes.len(), 2);
    let nobody =
        changes.list_changes(only(pb::ChangeKind::Unspecified, "reporting")).await.unwrap().into_inner();
    assert!(nobody.changes.is_empty());
    let future = pb::ListChangesRequest {
        start_time: Some(prost_types::Timestamp { seconds: 4_000_000_000, nanos: 0 }),
        ..Default::default()
    };
    assert!(changes.list_changes(future).await.unwrap().into_inner().changes.is_empty());

    // A token is bound to its filters.
    let first = changes
        .list_changes(pb::ListChangesRequest {
            clerk_id: "user_a".into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let err = changes
        .list_changes(pb::ListChangesRequest {
            clerk_id: "user_b".into(),
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_field_violation(&err, "page_token");
}

async fn list_changes_by_user_id_actor_and_time_window_pages_oldest_first(db: Db) {
    let server = TestServer::start(db).await;
    let (mut users, mut data, mut changes) =
        (server.users().await, DataClient::new(server.channel().await), changes_client(&server).await);
    let a = create(&mut users, "user_a").await;
    create(&mut users, "user_b").await;
    for i in 0..3 {
        data.set_user_data(set_custom("user_a", "custom.n", json!(i))).await.unwrap();
    }
    data.set_user_data(set_custom("user_b", "custom.n", json!("b"))).await.unwrap();

    let by_id = pb::ListChangesRequest {
        user_id: a.id.clone(),
        order: pb::ChangeOrder::OldestFirst as i32,
        page_size: 2,
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut request = by_id.clone();
    loop {
        let page = changes.list_changes(request.clone()).await.unwrap().into_inner();
        assert!(page.changes.len() <= 2);
        seen.extend(page.changes);
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    assert!(seen.iter().all(|c| c.clerk_id == "user_a"), "only user_a's changes: {seen:?}");
    assert_eq!(kind(&seen[0]), pb::ChangeKind::UserCreated, "oldest first");
    let values: Vec<serde_json::Value> = seen[1..].iter().map(|c| json_of(c.after.as_ref())).collect();
    assert_eq!(values, [json!(0), json!(1), json!(2)]);

    // Without authentication every write's actor is "anonymous".
    let anonymous = pb::ListChangesRequest { actor: "anonymous".into(), ..Default::default() };
    assert_eq!(changes.list_changes(anonymous).await.unwrap().into_inner().changes.len(), 6);
    let before_any = pb::ListChangesRequest {
        end_time: Some(prost_types::Timestamp { seconds: 1_000_000_000, nanos: 0 }),
        ..Default::default()
    };
    assert!(changes.list_changes(before_any).await.unwrap().into_inner().changes.is_empty());
    let until_later = pb::ListChangesRequest {
        end_time: Some(prost_types::Timestamp { seconds: 4_000_000_000, nanos: 0 }),
        ..Default::default()
    };
    assert_eq!(changes.list_changes(until_later).await.unwrap().into_inner().changes.len(), 6);
}

async fn watch_changes_by_user_id_passes_only_that_users_changes(db: Db) {
    let server = TestServer::start(db).await;
    let (mut users, mut data, mut changes) =
        (server.users().await, DataClient::new(server.channel().await), changes_client(&server).await);
    let a = create(&mut users, "user_a").await;
    create(&mut users, "user_b").await;
    let mut stream =
        watch(&mut changes, pb::WatchChangesRequest { user_id: a.id, ..Default::default() }).await;
    data.set_user_data(set_custom("user_b", "custom.n", json!("b"))).await.unwrap();
    data.set_user_data(set_custom("user_a", "custom.n", json!("a"))).await.unwrap();
    let change = next_change(&mut stream).await;
    assert_eq!((change.clerk_id.as_str(), json_of(change.after.as_ref())), ("user_a", json!("a")));
}

async fn bad_watch_and_list_requests_name_the_field(db: Db) {
    let server = TestServer::start(db).await;
    let mut changes = changes_client(&server).await;
    let cases: [(pb::WatchChangesRequest, &str); 4] = [
        (pb::WatchChangesRequest { cursor: "yesterday".into(), ..Default::default() }, "cursor"),
        (
            pb::WatchChangesRequest { user_id: "x".into(), clerk_id: "user_1".into(), ..Default::default() },
            "user_id",
        ),
        (pb::WatchChangesRequest { keys: vec!["nope".into()], ..Default::default() }, "keys[0]"),
        (pb::WatchChangesRequest { user_id: "not-a-uuid".into(), ..Default::default() }, "user_id"),
    ];
    for (request, field) in cases {
        let err = changes.watch_changes(request).await.unwrap_err();
        assert_field_violation(&err, field);
    }
    let err = changes
        .list_changes(pb::ListChangesRequest { page_size: -1, ..Default::default() })
        .await
        .unwrap_err();
    assert_field_violation(&err, "page_size");
    let err = changes
        .list_changes(pb::ListChangesRequest { page_token: "garbage".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_field_violation(&err, "page_token");
    let unknown = pb::WatchChangesRequest { user_id: uuid::Uuid::now_v7().to_string(), ..Default::default() };
    assert_eq!(changes.watch_changes(unknown).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_held_open_is_delivered_when_it_commits() {
    use sqlx::Connection;
    let server = TestServer::start(Db::Postgres).await;
    let (mut users, mut data, mut changes) =
        (server.users().await, DataClient::new(server.channel().await), changes_client(&server).await);
    create(&mut users, "user_held").await;
    wait_final(&mut changes, "user_held", 1).await;
    let mut stream = watch(&mut changes, pb::WatchChangesRequest::default()).await;

    // A slow writer: its transaction takes an id and writes a change, then
    // stays open while later writes commit.
    let mut slow = sqlx::PgConnection::connect(&server.database.url).await.unwrap();
    let mut held = slow.begin().await.unwrap();
    sqlx::query(
        "insert into changes (at, clerk_id, kind, key, after, actor_client) \
         values (now(), 'user_held', 'data_set', 'custom.slow', '\"held\"', 'test')",
    )
    .execute(&mut *held)
    .await
    .unwrap();
    for i in 0..3 {
        data.set_user_data(set_custom("user_held", "custom.fast", json!(i))).await.unwrap();
    }
    // Committed, but behind the open transaction: nothing may be handed out
    // yet, or the slow change would land behind the follower's cursor.
    let early = tokio::time::timeout(Duration::from_millis(500), next_change(&mut stream)).await;
    assert!(early.is_err(), "a change overtook an open transaction: {early:?}");

    held.commit().await.unwrap();
    let got = next_changes(&mut stream, 4).await;
    let values: Vec<serde_json::Value> = got.iter().map(|c| json_of(c.after.as_ref())).collect();
    assert_eq!(values, [json!("held"), json!(0), json!(1), json!(2)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_of_a_user_waits_for_the_users_lock_before_it_writes() {
    // Per-user log order is commit order only if every write of a user takes
    // the user's advisory lock before its transaction has an id (CHANGES.md);
    // writes that name the user by our id and data edits included.
    use sqlx::Connection;
    let server = TestServer::start(Db::Postgres).await;
    let (mut users, data) = (server.users().await, DataClient::new(server.channel().await));
    let user = create(&mut users, "user_locked").await;
    let mut holder = sqlx::PgConnection::connect(&server.database.url).await.unwrap();
    let mut held = holder.begin().await.unwrap();
    sqlx::query(
        "select pg_advisory_xact_lock(\
         ('x' || left(encode(sha256(convert_to($1, 'UTF8')), 'hex'), 16))::bit(64)::bigint)",
    )
    .bind("user_locked")
    .execute(&mut *held)
    .await
    .unwrap();

    let by_id = user.id.clone();
    let mut writes = tokio::task::JoinSet::new();
    let (mut d, id) = (data.clone(), by_id.clone());
    writes.spawn(async move {
        let mut request = theme("", pb::Theme::Dark);
        request.user_id = id;
        d.update_preferences(request).await.map(drop)
    });
    let (mut d, id) = (data.clone(), by_id.clone());
    writes.spawn(async move {
        let request = pb::SetUserDataRequest { user_id: id, ..set_custom("", "custom.n", json!(1)) };
        d.set_user_data(request).await.map(drop)
    });
    let mut d = data.clone();
    writes.spawn(
        async move { d.set_user_data(set_custom("user_locked", "custom.m", json!(2))).await.map(drop) },
    );
    let mut u = users.clone();
    writes.spawn(async move {
        let renamed = pb::User { id: by_id, first_name: Some("Grace".into()), ..Default::default() };
        let request = pb::UpdateUserRequest {
            user: Some(renamed),
            update_mask: Some(mask(&["first_name"])),
            ..Default::default()
        };
        u.update_user(request).await.map(drop)
    });

    // All four queue on the advisory lock: none has written yet.
    let mut probe = sqlx::PgConnection::connect(&server.database.url).await.unwrap();
    let waiting = "select count(*) from pg_locks where locktype = 'advisory' and not granted \
                   and database = (select oid from pg_database where datname = current_database())";
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (n,): (i64,) = sqlx::query_as(waiting).fetch_one(&mut probe).await.unwrap();
        if n == 4 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{n} of 4 writes wait for the user's lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(writes.try_join_next().is_none(), "a write finished while the user was locked");
    held.commit().await.unwrap();
    while let Some(done) = writes.join_next().await {
        done.unwrap().expect("the write completes once the lock is free");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_replica_reaches_a_follower_on_another() {
    // No safety poll to speak of: only NOTIFY can wake replica B in time.
    let slow_poll = |c: &mut user_service::config::Config| c.change_poll_interval = Duration::from_secs(3600);
    let a = TestServer::start_with(Db::Postgres, slow_poll).await;
    let database = user_service::testing::TestDatabase::shared(&a.database.url);
    let b = TestServer::try_start(database, "127.0.0.1:0".parse().unwrap(), slow_poll).await.unwrap();
    let mut users = a.users().await;
    create(&mut users, "user_two").await;
    let mut changes = changes_client(&b).await;
    wait_final(&mut changes, "user_two", 1).await;
    let mut follower = watch(&mut changes, pb::WatchChangesRequest::default()).await;
    let mut data = DataClient::new(a.channel().await);
    let started = std::time::Instant::now();
    data.set_user_data(set_custom("user_two", "custom.n", json!("via a"))).await.unwrap();
    let change = next_change(&mut follower).await;
    assert_eq!(json_of(change.after.as_ref()), json!("via a"));
    // The write's own round trip included: NOTIFY wakes replica B at once.
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
}

async fn followers_resume_after_user_service_is_killed(db: Db) {
    let database = user_service::testing::TestDatabase::create(db).await;
    let url = database.url.clone();
    let mut service = Spawned::start(&url);
    let channel = service.channel().await;
    let mut users = userdata_proto::v1::user_service_client::UserServiceClient::new(channel.clone());
    let mut data = DataClient::new(channel.clone());
    create(&mut users, "user_kill").await;
    let mut stream = watch(&mut ChangeServiceClient::new(channel), pb::WatchChangesRequest::default()).await;
    data.set_user_data(set_custom("user_kill", "custom.n", json!(0))).await.unwrap();
    let seen = next_change(&mut stream).await;
    data.set_user_data(set_custom("user_kill", "custom.n", json!(1))).await.unwrap();

    service.kill();
    let mut service = Spawned::start(&url);
    let channel = service.channel().await;
    let mut data = DataClient::new(channel.clone());
    data.set_user_data(set_custom("user_kill", "custom.n", json!(2))).await.unwrap();
    let resumed = pb::WatchChangesRequest { cursor: seen.cursor, ..Default::default() };
    let mut stream = watch(&mut ChangeServiceClient::new(channel), resumed).await;
    let rest = next_changes(&mut stream, 2).await;
    let values: Vec<serde_json::Value> = rest.iter().map(|c| json_of(c.after.as_ref())).collect();
    assert_eq!(values, [json!(1), json!(2)]);
    service.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_the_change_log_needs_the_audit_scope() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "reader read,write,admin reader-token-0123456789\nauditor audit auditor-token-0123456789")
        .unwrap();
    let path = file.path().to_owned();
    let server = TestServer::start_with(Db::Sqlite, move |c| c.auth_tokens = Some(path)).await;
    let call = |token: &'static str| {
        let mut request = Request::new(pb::ListChangesRequest::default());
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    };
    let mut changes = changes_client(&server).await;
    let err: Status = changes.list_changes(call("reader-token-0123456789")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("audit"), "{err:?}");
    assert!(changes.list_changes(call("auditor-token-0123456789")).await.is_ok());
}

/// A user-service process of its own, to be killed.
struct Spawned {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Spawned {
    fn start(database_url: &str) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_user-service"))
            .env("DATABASE_URL", database_url)
            .env("USER_SERVICE_LISTEN", "127.0.0.1:0")
            .env("USER_SERVICE_METRICS_LISTEN", "off")
            .env("LOG_FORMAT", "json")
            .stdout(std::process::Stdio::inherit())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start user-service");
        // Logs go to stderr, one flat JSON object per line.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("user-service logged its address").unwrap();
            if let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line)
                && entry["message"] == "user-service listening"
            {
                break entry["addr"].as_str().unwrap().parse().unwrap();
            }
        };
        // Keep draining its logs so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, addr }
    }

    async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    fn kill(&mut self) {
        // SIGKILL: no graceful shutdown, nothing flushed on the way out.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_user_watches_only_their_own_changes_whatever_they_ask() {
    use crate::session::{self, Bearer, Clerk};
    let clerk = Clerk::start().await;
    let (server, _tokens) = session::server(Db::Sqlite, &clerk, |_| {}).await;
    session::create_user(&server, "user_alice").await;
    session::create_user(&server, "user_bob").await;
    let alice = Bearer(Some(clerk.token("user_alice")));
    let mut changes = ChangeServiceClient::with_interceptor(server.channel().await, alice.clone());
    // Alice asks for Bob's changes, and for everybody's: she gets her own.
    for asked in ["user_bob", ""] {
        let request = pb::WatchChangesRequest { clerk_id: asked.into(), ..Default::default() };
        let mut stream = changes.watch_changes(request).await.expect("watch").into_inner();
        let (_, mut admin) = session::clients(&server, Some(session::ADMIN_TOKEN.into())).await;
        admin
            .set_user_data(set_custom("user_bob", "custom.who", json!(format!("bob {asked}"))))
            .await
            .unwrap();
        admin
            .set_user_data(set_custom("user_alice", "custom.who", json!(format!("alice {asked}"))))
            .await
            .unwrap();
        let change = next_change(&mut stream).await;
        assert_eq!(change.clerk_id, "user_alice");
        assert_eq!(json_of(change.after.as_ref()), json!(format!("alice {asked}")));
    }
    // Her writes are recorded as hers.
    let (_, mut data) = session::clients(&server, Some(clerk.token("user_alice"))).await;
    data.set_user_data(set_custom("user_alice", "custom.mine", json!(true))).await.unwrap();
    let mut audit = ChangeServiceClient::with_interceptor(
        server.channel().await,
        Bearer(Some(session::ADMIN_TOKEN.into())),
    );
    let log = audit
        .list_changes(pb::ListChangesRequest {
            clerk_id: "user_alice".into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(log.changes[0].actor.as_ref().unwrap().client, "user:user_alice");
    // And the audit list is not for her.
    let err = changes.list_changes(pb::ListChangesRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_with_unavailable_when_the_server_shuts_down() {
    let server = TestServer::start(Db::Sqlite).await;
    let mut changes = changes_client(&server).await;
    let mut stream = watch(&mut changes, pb::WatchChangesRequest::default()).await;
    let stopping = tokio::spawn(server.stop());
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(status)) => return Some(status),
                None => return None,
            }
        }
    })
    .await
    .expect("the stream ends");
    let status = ended.expect("an error, not a silent end");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.get_details_error_info().unwrap().reason, "SHUTTING_DOWN");
    stopping.await.unwrap();
}
