//! The store's contract, over `dyn Store`, on both backends: what the gRPC
//! suites pin through the API, pinned here at the layer that keeps it.

use std::sync::Arc;

use serde_json::json;
use user_service::{
    domain::{
        change::{Actor, AuditQuery, ChangeFilter, ChangeKind, Cursor},
        error::Error,
        user::{ClerkId, Profile, Role, SignupSource, Status, UserKey},
        write::{CreateUser, DeleteUser, EventContext, Outcome},
    },
    store::{self, Backend, ConnectOptions, Store},
    testing::TestDatabase,
};

use crate::helpers::Db;

crate::on_both_backends!(
    a_write_and_its_changes_commit_together_and_read_back_in_order,
    a_failed_edit_writes_no_change,
    a_replayed_event_writes_nothing_and_another_kind_is_refused,
    a_deletion_erases_earlier_values_and_replays_give_no_profile,
    pruning_moves_the_retention_mark,
);

async fn open(db: Db) -> (Arc<dyn Store>, TestDatabase) {
    let database = TestDatabase::create(db).await;
    let backend = Backend::from_url(&database.url).unwrap();
    let store = store::connect(&backend, &ConnectOptions::default()).await.unwrap();
    (store, database)
}

fn actor() -> Actor {
    Actor::new("contract", Some("req-1".into()))
}

fn event(key: &str, ms: i64, kind: &str) -> EventContext {
    EventContext {
        idempotency_key: key.into(),
        source_time_ms: ms,
        event_type: None,
        source: "contract".into(),
        kind: kind.into(),
    }
}

fn create(clerk_id: &str, event: Option<EventContext>) -> CreateUser {
    CreateUser {
        clerk_id: ClerkId::parse(clerk_id).unwrap(),
        profile: Profile { email: Some(format!("{clerk_id}@example.org")), ..Profile::default() },
        role: Role::User,
        status: Status::Active,
        signup_source: SignupSource::Admin,
        actor: actor().with_event(event.as_ref()),
        event,
    }
}

async fn set(
    store: &dyn Store,
    clerk_id: &str,
    key: &'static str,
    value: serde_json::Value,
) -> Result<(), Error> {
    store
        .edit_data(
            &UserKey::ClerkId(clerk_id.into()),
            &[key],
            None,
            &actor(),
            Box::new(move |set| {
                set.put(key, value);
                Ok(())
            }),
        )
        .await
        .map(drop)
}

/// Every committed change of a user, oldest first (the audit view: it does
/// not wait for changes to become final).
async fn everything(store: &dyn Store, clerk_id: &str) -> Vec<user_service::domain::change::LoggedChange> {
    let query = AuditQuery { clerk_id: Some(clerk_id.into()), oldest_first: true, ..AuditQuery::default() };
    store.list_changes(&query, None, 1000).await.unwrap()
}

/// Waits until the newest final change is `cursor`: on PostgreSQL a change
/// is final once every older transaction in the cluster has ended, which
/// other databases' transactions may delay.
async fn wait_for_head(store: &dyn Store, cursor: Cursor) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.change_head().await.unwrap() < cursor {
        assert!(tokio::time::Instant::now() < deadline, "{cursor} never became final");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn a_write_and_its_changes_commit_together_and_read_back_in_order(db: Db) {
    let (store, _db) = open(db).await;
    store.create_user(create("user_s1", None)).await.unwrap();
    set(&*store, "user_s1", "custom.a", json!(1)).await.unwrap();
    set(&*store, "user_s1", "custom.a", json!(2)).await.unwrap();
    let log = everything(&*store, "user_s1").await;
    let kinds: Vec<ChangeKind> = log.iter().map(|c| c.change.kind).collect();
    assert_eq!(kinds, [ChangeKind::UserCreated, ChangeKind::DataSet, ChangeKind::DataSet]);
    assert!(log.windows(2).all(|w| w[0].cursor < w[1].cursor));
    assert_eq!((log[2].change.before.clone(), log[2].change.after.clone()), (Some(json!(1)), Some(json!(2))));
    assert_eq!(log[1].actor, actor());
    wait_for_head(&*store, log[2].cursor).await;
    let head = store.change_head().await.unwrap();
    assert_eq!(head, log[2].cursor);
    let filter = ChangeFilter { clerk_id: Some("user_s1".into()), keys: Vec::new() };
    let replay = store.read_changes(Cursor::START, &filter, 10).await.unwrap();
    assert_eq!(replay.changes, log);
    let after = store.read_changes(head, &ChangeFilter::default(), 10).await.unwrap();
    assert!(after.changes.is_empty() && after.head == head && !after.more);
}

async fn a_failed_edit_writes_no_change(db: Db) {
    let (store, _db) = open(db).await;
    store.create_user(create("user_s2", None)).await.unwrap();
    let before = everything(&*store, "user_s2").await.len();
    let failed = store
        .edit_data(
            &UserKey::ClerkId("user_s2".into()),
            &["custom.x"],
            None,
            &actor(),
            Box::new(|set| {
                set.put("custom.x", json!("half-done"));
                Err(Error::invalid("value", "refused after a change was staged"))
            }),
        )
        .await;
    assert!(matches!(failed, Err(Error::InvalidArgument(_))));
    assert_eq!(everything(&*store, "user_s2").await.len(), before);
}

async fn a_replayed_event_writes_nothing_and_another_kind_is_refused(db: Db) {
    let (store, _db) = open(db).await;
    let first =
        store.create_user(create("user_s3", Some(event("msg_1", 1_000, "CreateUser")))).await.unwrap();
    assert_eq!(first.outcome, Some(Outcome::Applied));
    let again =
        store.create_user(create("user_s3", Some(event("msg_1", 1_000, "CreateUser")))).await.unwrap();
    assert!(again.replayed);
    assert_eq!(everything(&*store, "user_s3").await.len(), 1);
    let delete = DeleteUser {
        key: UserKey::ClerkId("user_s3".into()),
        expected_version: None,
        event: Some(event("msg_1", 2_000, "DeleteUser")),
        actor: actor(),
    };
    assert!(matches!(store.delete_user(delete).await, Err(Error::InvalidArgument(_))));
    assert!(store.get_user(&UserKey::ClerkId("user_s3".into())).await.is_ok());
}

async fn a_deletion_erases_earlier_values_and_replays_give_no_profile(db: Db) {
    let (store, _db) = open(db).await;
    store.create_user(create("user_s4", Some(event("msg_c", 1_000, "CreateUser")))).await.unwrap();
    set(&*store, "user_s4", "custom.secret", json!("hush")).await.unwrap();
    let delete = DeleteUser {
        key: UserKey::ClerkId("user_s4".into()),
        expected_version: None,
        event: Some(event("msg_d", 2_000, "DeleteUser")),
        actor: actor(),
    };
    store.delete_user(delete).await.unwrap();
    let log = everything(&*store, "user_s4").await;
    assert_eq!(log.len(), 3);
    assert!(log[..2].iter().all(|c| c.erased && c.change.before.is_none() && c.change.after.is_none()));
    assert_eq!(log[2].change.kind, ChangeKind::UserDeleted);
    let replay =
        store.create_user(create("user_s4", Some(event("msg_c", 1_000, "CreateUser")))).await.unwrap();
    assert!(replay.replayed && replay.user.is_none());
}

async fn pruning_moves_the_retention_mark(db: Db) {
    let (store, _db) = open(db).await;
    assert_eq!(store.pruned_through().await.unwrap(), Cursor::START);
    store.create_user(create("user_s5", None)).await.unwrap();
    let newest = everything(&*store, "user_s5").await[0].cursor;
    // A retention beyond the calendar prunes nothing and never panics.
    assert_eq!(store.prune_changes(std::time::Duration::MAX).await.unwrap(), 0);
    assert_eq!(store.prune_changes(std::time::Duration::ZERO).await.unwrap(), 1);
    assert_eq!(store.pruned_through().await.unwrap(), newest);
}
