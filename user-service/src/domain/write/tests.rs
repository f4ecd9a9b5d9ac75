//! The planning rules, decided without a database.

use chrono::Utc;

use super::{plan::new_user, *};
use crate::domain::{
    change::Actor,
    error::Error,
    keys,
    user::{ClerkId, Profile, Role, SignupSource, Status, User, UserKey},
};

fn event(key: &str, ms: i64) -> Option<EventContext> {
    Some(EventContext {
        idempotency_key: key.into(),
        source_time_ms: ms,
        event_type: None,
        source: String::new(),
        kind: String::new(),
    })
}

fn stored(first: &str, source: Option<i64>) -> User {
    let mut u = new_user("user_1".into(), Profile::default(), Role::User, Status::Active, Utc::now(), source);
    u.profile.first_name = Some(first.into());
    u
}

fn rename(first: &str) -> UserPatch {
    UserPatch { first_name: Some(Some(first.into())), ..Default::default() }
}

fn update(patch: UserPatch, event: Option<EventContext>) -> UpdateUser {
    UpdateUser {
        key: UserKey::ClerkId("user_1".into()),
        patch,
        expected_version: None,
        changed_by: None,
        event,
        actor: Actor::new("gateway", None),
    }
}

#[test]
fn an_older_event_is_stale_and_changes_nothing() {
    let plan = plan_update(
        update(rename("New"), event("k", 5)),
        Existing::Present(stored("Old", Some(10))),
        Utc::now(),
    )
    .unwrap();
    assert!(matches!(plan.change, Change::None));
    assert_eq!(plan.result.outcome, Some(Outcome::Stale));
}

#[test]
fn an_event_as_old_as_the_stored_state_is_stale() {
    let plan = plan_update(
        update(rename("New"), event("k", 10)),
        Existing::Present(stored("Old", Some(10))),
        Utc::now(),
    )
    .unwrap();
    assert_eq!(plan.result.outcome, Some(Outcome::Stale));
}

#[test]
fn a_name_change_appends_history_and_an_unchanged_name_does_not() {
    let plan = plan_update(
        update(rename("New"), event("k", 11)),
        Existing::Present(stored("Old", Some(10))),
        Utc::now(),
    )
    .unwrap();
    let Change::Update { name_entry: Some(entry), .. } = plan.change else { panic!("expected a name entry") };
    assert_eq!(entry["first_name"], "New");
    assert_eq!(entry["last_name"], "");

    let plan = plan_update(
        update(rename("Old"), event("k", 12)),
        Existing::Present(stored("Old", Some(10))),
        Utc::now(),
    )
    .unwrap();
    assert!(matches!(plan.change, Change::Update { name_entry: None, .. }));
}

#[test]
fn an_update_before_the_create_creates_the_user() {
    let plan = plan_update(update(rename("A"), event("k", 1)), Existing::Missing, Utc::now()).unwrap();
    let Change::Insert { user, data } = plan.change else { panic!("expected insert") };
    assert_eq!(user.profile.first_name.as_deref(), Some("A"));
    assert!(data.iter().any(|(k, v)| *k == keys::SIGNUP_SOURCE && v == "clerk"));
}

#[test]
fn events_for_deleted_users_never_resurrect_them() {
    for plan in [
        plan_update(update(rename("A"), event("k", 99)), Existing::Deleted, Utc::now()).unwrap(),
        plan_create(
            CreateUser {
                clerk_id: ClerkId::parse("user_1").unwrap(),
                profile: Profile::default(),
                role: Role::User,
                status: Status::Active,
                signup_source: SignupSource::Clerk,
                event: event("k", 99),
                actor: Actor::new("gateway", None),
            },
            Existing::Deleted,
            Utc::now(),
        )
        .unwrap(),
    ] {
        assert!(matches!(plan.change, Change::None));
        assert_eq!(plan.result.outcome, Some(Outcome::UserDeleted));
    }
}

#[test]
fn a_stale_etag_is_rejected() {
    let mut cmd = update(rename("B"), None);
    cmd.expected_version = Some(7);
    assert!(matches!(
        plan_update(cmd, Existing::Present(stored("A", None)), Utc::now()),
        Err(Error::EtagMismatch { .. })
    ));
}

#[test]
fn an_admin_update_that_changes_nothing_keeps_the_version() {
    let user = stored("A", None);
    let plan = plan_update(update(rename("A"), None), Existing::Present(user.clone()), Utc::now()).unwrap();
    assert!(matches!(plan.change, Change::None));
    assert_eq!(plan.result.user.unwrap().version, user.version);
}
