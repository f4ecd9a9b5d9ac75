//! The store's contract, over `dyn Store`, on both backends: what the gRPC
//! suites pin through the API, pinned here at the layer that keeps it.

use std::sync::Arc;

use futures::future::join_all;

use serde_json::json;
use user_service::{
    domain::{
        change::{Actor, AuditQuery, ChangeFilter, ChangeKind, Cursor},
        error::Error,
        keys,
        user::{ClerkId, Profile, Role, SignupSource, Status, UserKey},
        write::{CreateUser, DeleteUser, EventContext, Outcome, UpdateUser, UserPatch, WriteResult},
    },
    store::{self, Backend, ConnectOptions, GroupStats, Store},
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

/// Group commit: these run on a current-thread runtime, where every write
/// started by one `join_all` is queued before the store's worker runs, so
/// the writes form one group whatever the machine's timing.
macro_rules! on_both_backends_queued {
    ($($name:ident),+ $(,)?) => {
        mod queued {
            mod postgres {
                $(#[tokio::test(flavor = "current_thread")]
                async fn $name() { super::super::$name($crate::helpers::Db::Postgres).await })+
            }
            mod sqlite {
                $(#[tokio::test(flavor = "current_thread")]
                async fn $name() { super::super::$name($crate::helpers::Db::Sqlite).await })+
            }
        }
    };
}

on_both_backends_queued!(
    event_writes_queued_together_commit_as_one_group_each_with_its_own_answer,
    a_database_error_rolls_the_group_back_and_its_writes_run_alone,
    events_of_one_user_in_one_group_apply_in_arrival_order,
    creates_in_one_group_for_new_known_and_deleted_users_each_keep_their_own_rows,
    updates_and_deletes_of_distinct_users_in_one_group_each_get_their_own_outcome,
    a_group_erases_the_users_it_deletes_and_keeps_the_name_history_of_those_it_renames,
    with_group_commit_off_writes_commit_alone,
);

async fn open(db: Db) -> (Arc<dyn Store>, TestDatabase) {
    open_with(db, ConnectOptions::default()).await
}

async fn open_with(db: Db, options: ConnectOptions) -> (Arc<dyn Store>, TestDatabase) {
    let database = TestDatabase::create(db).await;
    let backend = Backend::from_url(&database.url).unwrap();
    let store = store::connect(&backend, &options).await.unwrap();
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
    let delete = deletion("user_s3", event("msg_1", 2_000, "DeleteUser"));
    assert!(matches!(store.delete_user(delete).await, Err(Error::InvalidArgument(_))));
    assert!(store.get_user(&UserKey::ClerkId("user_s3".into())).await.is_ok());
}

async fn a_deletion_erases_earlier_values_and_replays_give_no_profile(db: Db) {
    let (store, _db) = open(db).await;
    store.create_user(create("user_s4", Some(event("msg_c", 1_000, "CreateUser")))).await.unwrap();
    set(&*store, "user_s4", "custom.secret", json!("hush")).await.unwrap();
    let delete = deletion("user_s4", event("msg_d", 2_000, "DeleteUser"));
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

fn update_name(clerk_id: &str, first_name: &str, event: EventContext) -> UpdateUser {
    UpdateUser {
        key: UserKey::ClerkId(clerk_id.into()),
        patch: UserPatch { first_name: Some(Some(first_name.into())), ..UserPatch::default() },
        expected_version: None,
        changed_by: None,
        actor: actor().with_event(Some(&event)),
        event: Some(event),
    }
}

fn deletion(clerk_id: &str, event: EventContext) -> DeleteUser {
    DeleteUser {
        key: UserKey::ClerkId(clerk_id.into()),
        expected_version: None,
        actor: actor(),
        event: Some(event),
    }
}

fn outcome(result: &Result<WriteResult, Error>) -> Option<Outcome> {
    result.as_ref().ok().and_then(|r| r.outcome)
}

async fn event_writes_queued_together_commit_as_one_group_each_with_its_own_answer(db: Db) {
    let (store, _db) = open(db).await;
    let results = join_all([
        store.create_user(create("user_g1", Some(event("msg_g1", 1_000, "CreateUser")))),
        store.create_user(create("user_g2", Some(event("msg_g2", 1_000, "CreateUser")))),
        // A redelivery of the first, in the same group.
        store.create_user(create("user_g1", Some(event("msg_g1", 1_000, "CreateUser")))),
        store.create_user(create("user_g3", Some(event("msg_g3", 1_000, "CreateUser")))),
    ])
    .await;
    let answers: Vec<(Option<Outcome>, bool)> =
        results.iter().map(|r| (outcome(r), r.as_ref().is_ok_and(|r| r.replayed))).collect();
    let applied = (Some(Outcome::Applied), false);
    assert_eq!(answers, [applied, applied, (Some(Outcome::Applied), true), applied]);
    assert_eq!(store.group_stats(), GroupStats { groups: 1, grouped_writes: 4, rollbacks: 0 });
    for id in ["user_g1", "user_g2", "user_g3"] {
        assert_eq!(everything(&*store, id).await.len(), 1, "{id} created once");
    }
}

async fn a_database_error_rolls_the_group_back_and_its_writes_run_alone(db: Db) {
    let (store, _db) = open(db).await;
    store.create_user(create("user_r1", Some(event("msg_taken", 1_000, "CreateUser")))).await.unwrap();
    let results = join_all([
        store.create_user(create("user_r2", Some(event("msg_r2", 1_000, "CreateUser")))),
        // The key is another user's: refused, and on PostgreSQL it fails the
        // group's transaction, so everything is written again one by one.
        store.create_user(create("user_r3", Some(event("msg_taken", 1_000, "CreateUser")))),
        store.create_user(create("user_r4", Some(event("msg_r4", 1_000, "CreateUser")))),
    ])
    .await;
    assert_eq!(outcome(&results[0]), Some(Outcome::Applied));
    assert!(
        matches!(&results[1], Err(Error::InvalidArgument(v)) if v.iter().any(|v| v.field == "event_context.idempotency_key")),
        "{:?}",
        results[1]
    );
    assert_eq!(outcome(&results[2]), Some(Outcome::Applied));
    assert_eq!(store.group_stats(), GroupStats { groups: 0, grouped_writes: 0, rollbacks: 1 });
    assert!(matches!(store.get_user(&UserKey::ClerkId("user_r3".into())).await, Err(Error::NotFound { .. })));
    for id in ["user_r2", "user_r4"] {
        assert_eq!(everything(&*store, id).await.len(), 1, "{id} created once");
    }
}

async fn events_of_one_user_in_one_group_apply_in_arrival_order(db: Db) {
    let (store, _db) = open(db).await;
    let results = join_all([
        Box::pin(store.create_user(create("user_o1", Some(event("msg_o1", 1_000, "CreateUser")))))
            as std::pin::Pin<Box<dyn Future<Output = Result<WriteResult, Error>>>>,
        Box::pin(store.update_user(update_name("user_o1", "Newest", event("msg_o3", 3_000, "UpdateUser")))),
        // Older than the one before it: stale, even though it came later.
        Box::pin(store.update_user(update_name("user_o1", "Older", event("msg_o2", 2_000, "UpdateUser")))),
    ])
    .await;
    let outcomes: Vec<Option<Outcome>> = results.iter().map(outcome).collect();
    assert_eq!(outcomes, [Some(Outcome::Applied), Some(Outcome::Applied), Some(Outcome::Stale)]);
    assert_eq!(store.group_stats(), GroupStats { groups: 1, grouped_writes: 3, rollbacks: 0 });
    let user = store.get_user(&UserKey::ClerkId("user_o1".into())).await.unwrap();
    assert_eq!(user.profile.first_name.as_deref(), Some("Newest"));
    assert_eq!(everything(&*store, "user_o1").await.len(), 2, "created, then one update");
}

/// Creates queued together are inserted together (one statement on
/// PostgreSQL): each new user gets exactly its own profile, data, event
/// record and change, and the ones that are not new take the full path.
async fn creates_in_one_group_for_new_known_and_deleted_users_each_keep_their_own_rows(db: Db) {
    let (store, _db) = open(db).await;
    store.create_user(create("user_k1", Some(event("msg_k1", 1_000, "CreateUser")))).await.unwrap();
    store.create_user(create("user_d1", Some(event("msg_d1", 1_000, "CreateUser")))).await.unwrap();
    let delete = deletion("user_d1", event("msg_d1x", 2_000, "DeleteUser"));
    store.delete_user(delete).await.unwrap();
    let before = store.group_stats();

    let mut known = create("user_k1", Some(event("msg_k1b", 2_000, "CreateUser")));
    known.profile.first_name = Some("Known".into());
    let results = join_all([
        store.create_user(create("user_c1", Some(event("msg_c1", 1_000, "CreateUser")))),
        store.create_user(known),
        store.create_user(create("user_c2", Some(event("msg_c2", 1_000, "CreateUser")))),
        store.create_user(create("user_d1", Some(event("msg_d1b", 3_000, "CreateUser")))),
        store.create_user(create("user_c3", Some(event("msg_c3", 1_000, "CreateUser")))),
    ])
    .await;
    let outcomes: Vec<Option<Outcome>> = results.iter().map(outcome).collect();
    let applied = Some(Outcome::Applied);
    assert_eq!(outcomes, [applied, applied, applied, Some(Outcome::UserDeleted), applied]);
    let after = store.group_stats();
    assert_eq!((after.groups - before.groups, after.grouped_writes - before.grouped_writes), (1, 5));

    for id in ["user_c1", "user_c2", "user_c3"] {
        let user = store.get_user(&UserKey::ClerkId(id.into())).await.unwrap();
        assert_eq!(user.profile.email.as_deref(), Some(format!("{id}@example.org").as_str()), "{id}");
        let data = store.list_data(&UserKey::ClerkId(id.into()), None, 100).await.unwrap();
        let keys: Vec<&str> = data.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["last_clerk_sync", "signup_date", "signup_source"], "{id}");
        let log = everything(&*store, id).await;
        assert_eq!(log.len(), 1, "{id}");
        assert_eq!(log[0].change.kind, ChangeKind::UserCreated);
        assert_eq!(log[0].change.after.as_ref().and_then(|a| a["clerk_id"].as_str()), Some(id));
        assert_eq!(log[0].change.user_id, Some(user.id));
        let msg_id = format!("msg_{}", &id["user_".len()..]);
        assert_eq!(log[0].actor.event_id.as_deref(), Some(msg_id.as_str()), "{id}");
        let replay = store.create_user(create(id, Some(event(&msg_id, 1_000, "CreateUser"))));
        assert!(replay.await.unwrap().replayed, "{id}: its event was recorded");
    }
    let known = store.get_user(&UserKey::ClerkId("user_k1".into())).await.unwrap();
    assert_eq!(known.profile.first_name.as_deref(), Some("Known"));
    assert!(matches!(store.get_user(&UserKey::ClerkId("user_d1".into())).await, Err(Error::NotFound { .. })));
}

/// The users of a group's other writes are loaded together (one statement
/// on PostgreSQL): each write still decides on its own user's state.
async fn updates_and_deletes_of_distinct_users_in_one_group_each_get_their_own_outcome(db: Db) {
    let (store, _db) = open(db).await;
    for id in ["user_u1", "user_u2", "user_u3", "user_u4"] {
        store.create_user(create(id, Some(event(&format!("msg_{id}"), 2_000, "CreateUser")))).await.unwrap();
    }
    let gone = deletion("user_u4", event("msg_u4d", 3_000, "DeleteUser"));
    store.delete_user(gone).await.unwrap();
    let delete = deletion("user_u3", event("msg_u3d", 3_000, "DeleteUser"));
    let before = store.group_stats();

    let results = join_all([
        Box::pin(store.update_user(update_name("user_u1", "Newer", event("msg_u1u", 3_000, "UpdateUser"))))
            as std::pin::Pin<Box<dyn Future<Output = Result<WriteResult, Error>>>>,
        // Older than what user_u2 holds: stale.
        Box::pin(store.update_user(update_name("user_u2", "Older", event("msg_u2u", 1_000, "UpdateUser")))),
        Box::pin(store.delete_user(delete)),
        Box::pin(store.update_user(update_name("user_u4", "Back", event("msg_u4u", 4_000, "UpdateUser")))),
        // A redelivery of user_u1's create: the recorded answer.
        Box::pin(store.create_user(create("user_u5", None))),
        Box::pin(store.create_user(create("user_u1", Some(event("msg_user_u1", 2_000, "CreateUser"))))),
    ])
    .await;
    let outcomes: Vec<Option<Outcome>> = results.iter().map(outcome).collect();
    let applied = Some(Outcome::Applied);
    assert_eq!(outcomes, [applied, Some(Outcome::Stale), applied, Some(Outcome::UserDeleted), None, applied]);
    assert!(results[5].as_ref().is_ok_and(|r| r.replayed), "{:?}", results[5]);
    let after = store.group_stats();
    assert_eq!((after.groups - before.groups, after.grouped_writes - before.grouped_writes), (1, 5));

    let name = |id: &'static str| {
        let store = store.clone();
        async move { store.get_user(&UserKey::ClerkId(id.into())).await.map(|u| u.profile.first_name) }
    };
    assert_eq!(name("user_u1").await.unwrap().as_deref(), Some("Newer"));
    assert_eq!(name("user_u2").await.unwrap(), None);
    assert!(matches!(name("user_u3").await, Err(Error::NotFound { .. })));
    assert!(matches!(name("user_u4").await, Err(Error::NotFound { .. })));
    assert_eq!(name("user_u5").await.unwrap(), None);
    let kinds = |log: Vec<user_service::domain::change::LoggedChange>| {
        log.into_iter().map(|c| c.change.kind).collect::<Vec<_>>()
    };
    assert_eq!(
        kinds(everything(&*store, "user_u1").await),
        [ChangeKind::UserCreated, ChangeKind::UserUpdated]
    );
    assert_eq!(kinds(everything(&*store, "user_u2").await), [ChangeKind::UserCreated]);
    assert_eq!(
        kinds(everything(&*store, "user_u3").await),
        [ChangeKind::UserCreated, ChangeKind::UserDeleted]
    );
}

async fn a_group_erases_the_users_it_deletes_and_keeps_the_name_history_of_those_it_renames(db: Db) {
    let (store, _db) = open(db).await;
    for id in ["user_g1", "user_g2", "user_g3"] {
        store.create_user(create(id, Some(event(&format!("msg_{id}"), 1_000, "CreateUser")))).await.unwrap();
        store
            .update_user(update_name(id, "First", event(&format!("msg_{id}_u"), 2_000, "UpdateUser")))
            .await
            .unwrap();
    }
    let delete = |id: &str| deletion(id, event(&format!("msg_{id}_d"), 3_000, "DeleteUser"));
    let before = store.group_stats();

    let results = join_all([
        // Keeps the worker busy, so the three behind it queue into one group.
        Box::pin(store.create_user(create("user_g0", None)))
            as std::pin::Pin<Box<dyn Future<Output = Result<WriteResult, Error>>>>,
        Box::pin(store.update_user(update_name(
            "user_g1",
            "Second",
            event("msg_g1_u2", 3_000, "UpdateUser"),
        ))),
        Box::pin(store.delete_user(delete("user_g2"))),
        Box::pin(store.delete_user(delete("user_g3"))),
    ])
    .await;
    assert!(results[1..].iter().all(|r| outcome(r) == Some(Outcome::Applied)), "{results:?}");
    let after = store.group_stats();
    assert_eq!((after.groups - before.groups, after.grouped_writes - before.grouped_writes), (1, 3));

    let renamed = everything(&*store, "user_g1").await;
    assert_eq!(renamed.len(), 3);
    assert!(renamed.iter().all(|c| !c.erased && c.change.after.is_some()));
    let user = store.get_user(&UserKey::ClerkId("user_g1".into())).await.unwrap();
    assert_eq!(user.profile.first_name.as_deref(), Some("Second"));
    let history = store.read_data(&UserKey::ClerkId("user_g1".into()), &[keys::NAME_HISTORY]).await.unwrap();
    let names = history[0].value.as_array().map(|entries| entries.len());
    assert_eq!(names, Some(2), "{history:?}");
    for id in ["user_g2", "user_g3"] {
        let log = everything(&*store, id).await;
        let kinds: Vec<ChangeKind> = log.iter().map(|c| c.change.kind).collect();
        assert_eq!(kinds, [ChangeKind::UserCreated, ChangeKind::UserUpdated, ChangeKind::UserDeleted]);
        assert!(log[..2].iter().all(|c| c.erased && c.change.before.is_none() && c.change.after.is_none()));
        let replay = store
            .create_user(create(id, Some(event(&format!("msg_{id}"), 1_000, "CreateUser"))))
            .await
            .unwrap();
        assert!(replay.replayed && replay.user.is_none(), "{id}: {replay:?}");
    }
}

async fn with_group_commit_off_writes_commit_alone(db: Db) {
    let (store, _db) =
        open_with(db, ConnectOptions { group_commit_max: 1, ..ConnectOptions::default() }).await;
    let results = join_all([
        store.create_user(create("user_n1", Some(event("msg_n1", 1_000, "CreateUser")))),
        store.create_user(create("user_n2", Some(event("msg_n2", 1_000, "CreateUser")))),
    ])
    .await;
    assert!(results.iter().all(|r| outcome(r) == Some(Outcome::Applied)));
    assert_eq!(store.group_stats(), GroupStats::default());
}

/// PostgreSQL only (SQLite has one writer and no row locks): a group whose
/// user is locked by another transaction gives up after its lock timeout and
/// runs its writes alone, so the other users' writes do not wait for that
/// transaction.
#[tokio::test(flavor = "current_thread")]
async fn a_user_locked_elsewhere_does_not_hold_up_its_group_postgres() {
    use sqlx::{Connection, PgConnection};

    let (store, db) = open(Db::Postgres).await;
    for id in ["user_l1", "user_l2"] {
        store.create_user(create(id, Some(event(&format!("msg_{id}"), 1_000, "CreateUser")))).await.unwrap();
    }
    let mut holder = PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql("begin; select 1 from users where clerk_id = 'user_l1' for update")
        .execute(&mut holder)
        .await
        .unwrap();

    let blocked = tokio::spawn({
        let store = store.clone();
        async move {
            store.update_user(update_name("user_l1", "Later", event("msg_l1u", 2_000, "UpdateUser"))).await
        }
    });
    let free = tokio::spawn({
        let store = store.clone();
        async move {
            store.update_user(update_name("user_l2", "Now", event("msg_l2u", 2_000, "UpdateUser"))).await
        }
    });
    assert_eq!(outcome(&free.await.unwrap()), Some(Outcome::Applied));
    assert!(!blocked.is_finished(), "user_l1 waits for the transaction that holds it");
    assert_eq!(store.group_stats(), GroupStats { groups: 0, grouped_writes: 0, rollbacks: 1 });

    sqlx::raw_sql("commit").execute(&mut holder).await.unwrap();
    assert_eq!(outcome(&blocked.await.unwrap()), Some(Outcome::Applied));
    let user = store.get_user(&UserKey::ClerkId("user_l1".into())).await.unwrap();
    assert_eq!(user.profile.first_name.as_deref(), Some("Later"));
}
