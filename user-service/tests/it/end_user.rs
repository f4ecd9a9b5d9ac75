//! What a signed-in user may do with a Clerk session token: their own data
//! through every RPC the end-user table opens, and nothing else.

use prost::Message;
use prost_types::{FieldMask, FileDescriptorSet};
use serde_json::json;
use tonic::{Code, Status};
use tonic_types::StatusExt;
use userdata_proto::v1 as pb;

use crate::{
    helpers::{Db, TestServer, pb_value},
    session::{self, ADMIN_TOKEN, Clerk, Data, Users},
};

crate::on_both_backends!(
    watch_changes_follows_only_the_users_own_changes_whatever_the_request_names,
    a_signed_in_user_reaches_their_own_data_through_every_open_rpc,
    another_users_data_is_permission_denied_on_every_open_rpc,
    suspended_banned_and_deleted_users_are_permission_denied,
);

const ALICE: &str = "user_alice";
const BOB: &str = "user_bob";

/// How a request names its user.
#[derive(Clone, Copy, Debug)]
enum Naming {
    ById,
    ByClerkId,
}

/// The user a request names, in both forms.
#[derive(Clone)]
struct Target {
    id: String,
    clerk_id: String,
}

impl Target {
    fn of(user: &pb::User) -> Self {
        Self { id: user.id.clone(), clerk_id: user.clerk_id.clone() }
    }

    /// `(user_id, clerk_id)` fields of a request naming this user.
    fn fields(&self, naming: Naming) -> (String, String) {
        match naming {
            Naming::ById => (self.id.clone(), String::new()),
            Naming::ByClerkId => (String::new(), self.clerk_id.clone()),
        }
    }
}

/// RPCs a signed-in user may call on their own data, in an order in which
/// each succeeds on its own user (writes before the reads that need them).
const OPEN: [&str; 15] = [
    "UserService/GetUser",
    "UserDataService/GetPreferences",
    "UserDataService/UpdatePreferences",
    "UserDataService/ListFeatureFlags",
    "UserDataService/GetFeatureFlag",
    "UserDataService/CheckFeatureFlags",
    "UserDataService/GetOnboarding",
    "UserDataService/AdvanceOnboarding",
    "UserDataService/GetActivity",
    "UserDataService/GetUserHistory",
    "UserDataService/SetUserData",
    "UserDataService/GetUserData",
    "UserDataService/ListUserData",
    "UserDataService/DeleteUserData",
    // Narrowed to the caller's own user by the service, not refused.
    "ChangeService/WatchChanges",
];

/// RPCs a signed-in user may never call, whoever they name.
const CLOSED: [&str; 11] = [
    "UserService/CreateUser",
    "UserService/ListUsers",
    "UserService/UpdateUser",
    "UserService/DeleteUser",
    "UserDataService/UpdateFeatureFlags",
    "UserDataService/CheckFeatureFlagForUsers",
    "UserDataService/ResetOnboarding",
    "UserDataService/RecordLogin",
    "UserDataService/RecordActivity",
    "ChangeService/ListChanges",
    "EventService/ApplyEvents",
];

/// Calls `rpc` naming `target` (the calls of [`OPEN`]).
async fn call_open(
    rpc: &str,
    users: &mut Users,
    data: &mut Data,
    target: &Target,
    naming: Naming,
) -> Result<(), Status> {
    let (user_id, clerk_id) = target.fields(naming);
    let note = "custom.note";
    match rpc {
        "UserService/GetUser" => {
            let (id, clerk_id) = (user_id, clerk_id);
            users.get_user(pb::GetUserRequest { id, clerk_id }).await.map(drop)
        }
        "UserDataService/GetPreferences" => {
            data.get_preferences(pb::GetPreferencesRequest { user_id, clerk_id }).await.map(drop)
        }
        "UserDataService/UpdatePreferences" => data
            .update_preferences(pb::UpdatePreferencesRequest {
                user_id,
                clerk_id,
                preferences: Some(pb::Preferences { theme: pb::Theme::Dark as i32, ..Default::default() }),
                update_mask: Some(FieldMask { paths: vec!["theme".into()] }),
                etag: String::new(),
            })
            .await
            .map(drop),
        "UserDataService/ListFeatureFlags" => {
            data.list_feature_flags(pb::ListFeatureFlagsRequest { user_id, clerk_id }).await.map(drop)
        }
        "UserDataService/GetFeatureFlag" => data
            .get_feature_flag(pb::GetFeatureFlagRequest { user_id, clerk_id, flag_key: "beta".into() })
            .await
            .map(drop),
        "UserDataService/CheckFeatureFlags" => data
            .check_feature_flags(pb::CheckFeatureFlagsRequest {
                user_id,
                clerk_id,
                flag_keys: vec!["beta".into()],
            })
            .await
            .map(drop),
        "UserDataService/GetOnboarding" => {
            data.get_onboarding(pb::GetOnboardingRequest { user_id, clerk_id }).await.map(drop)
        }
        "UserDataService/AdvanceOnboarding" => data
            .advance_onboarding(pb::AdvanceOnboardingRequest {
                user_id,
                clerk_id,
                step: pb::OnboardingStep::Profile as i32,
                etag: String::new(),
            })
            .await
            .map(drop),
        "UserDataService/GetActivity" => {
            data.get_activity(pb::GetActivityRequest { user_id, clerk_id }).await.map(drop)
        }
        "UserDataService/GetUserHistory" => {
            data.get_user_history(pb::GetUserHistoryRequest { user_id, clerk_id }).await.map(drop)
        }
        "UserDataService/SetUserData" => data
            .set_user_data(pb::SetUserDataRequest {
                user_id,
                clerk_id,
                key: note.into(),
                value: Some(pb_value(json!({"text": "hello"}))),
                etag: String::new(),
            })
            .await
            .map(drop),
        "UserDataService/GetUserData" => {
            data.get_user_data(pb::GetUserDataRequest { user_id, clerk_id, key: note.into() }).await.map(drop)
        }
        "UserDataService/ListUserData" => data
            .list_user_data(pb::ListUserDataRequest { user_id, clerk_id, ..Default::default() })
            .await
            .map(drop),
        "UserDataService/DeleteUserData" => data
            .delete_user_data(pb::DeleteUserDataRequest {
                user_id,
                clerk_id,
                key: note.into(),
                etag: String::new(),
            })
            .await
            .map(drop),
        "ChangeService/WatchChanges" => Ok(()), // checked by its own tests
        other => panic!("no call for {other}"),
    }
}

/// Calls `rpc` naming `target` (the calls of [`CLOSED`]).
async fn call_closed(rpc: &str, server: &TestServer, token: &str, target: &Target) -> Result<(), Status> {
    let (mut users, mut data) = session::clients(server, Some(token.to_owned())).await;
    let (user_id, clerk_id) = (target.id.clone(), String::new());
    let user = || pb::User { id: target.id.clone(), first_name: Some("Eve".into()), ..Default::default() };
    match rpc {
        "UserService/CreateUser" => users
            .create_user(pb::CreateUserRequest {
                user: Some(pb::User { clerk_id: "user_new".into(), ..Default::default() }),
                ..Default::default()
            })
            .await
            .map(drop),
        "UserService/ListUsers" => users.list_users(pb::ListUsersRequest::default()).await.map(drop),
        "UserService/UpdateUser" => users
            .update_user(pb::UpdateUserRequest { user: Some(user()), ..Default::default() })
            .await
            .map(drop),
        "UserService/DeleteUser" => {
            users.delete_user(pb::DeleteUserRequest { id: user_id, ..Default::default() }).await.map(drop)
        }
        "UserDataService/UpdateFeatureFlags" => data
            .update_feature_flags(pb::UpdateFeatureFlagsRequest {
                user_id,
                clerk_id,
                set: [("beta".to_owned(), true)].into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "UserDataService/CheckFeatureFlagForUsers" => data
            .check_feature_flag_for_users(pb::CheckFeatureFlagForUsersRequest {
                flag_key: "beta".into(),
                user_ids: vec![user_id],
                clerk_ids: Vec::new(),
            })
            .await
            .map(drop),
        "UserDataService/ResetOnboarding" => {
            data.reset_onboarding(pb::ResetOnboardingRequest { user_id, clerk_id }).await.map(drop)
        }
        "UserDataService/RecordLogin" => data
            .record_login(pb::RecordLoginRequest {
                user_id,
                clerk_id,
                login: Some(pb::LoginRecord { success: true, ..Default::default() }),
                event_context: None,
            })
            .await
            .map(drop),
        "UserDataService/RecordActivity" => data
            .record_activity(pb::RecordActivityRequest { user_id, clerk_id, ..Default::default() })
            .await
            .map(drop),
        "ChangeService/ListChanges" => {
            let mut changes = pb::change_service_client::ChangeServiceClient::with_interceptor(
                server.channel().await,
                session::Bearer(Some(token.to_owned())),
            );
            changes.list_changes(pb::ListChangesRequest { user_id, ..Default::default() }).await.map(drop)
        }
        "EventService/ApplyEvents" => {
            let mut events = pb::event_service_client::EventServiceClient::with_interceptor(
                server.channel().await,
                session::Bearer(Some(token.to_owned())),
            );
            let login = pb::RecordLoginRequest {
                user_id,
                clerk_id,
                login: Some(pb::LoginRecord { success: true, ..Default::default() }),
                event_context: None,
            };
            let write = pb::EventWrite {
                request_id: String::new(),
                write: Some(pb::event_write::Write::RecordLogin(login)),
            };
            events.apply_events(pb::ApplyEventsRequest { writes: vec![write] }).await.map(drop)
        }
        other => panic!("no call for {other}"),
    }
}

fn assert_denied(result: Result<(), Status>, reason: &str, context: &str) {
    let status = result.expect_err(context);
    assert_eq!(status.code(), Code::PermissionDenied, "{context}: {status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, reason, "{context}: {status:?}");
}

/// A server with Alice and Bob; Alice has the `beta` flag set by an admin.
async fn alice_and_bob(db: Db, clerk: &Clerk) -> (TestServer, pb::User, pb::User) {
    let (server, _file) = session::server(db, clerk, |_| {}).await;
    let alice = session::create_user(&server, ALICE).await;
    let bob = session::create_user(&server, BOB).await;
    let (_, mut admin) = session::clients(&server, Some(ADMIN_TOKEN.into())).await;
    admin
        .update_feature_flags(pb::UpdateFeatureFlagsRequest {
            user_id: alice.id.clone(),
            set: [("beta".to_owned(), true)].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    (server, alice, bob)
}

#[test]
fn every_rpc_has_a_test_of_its_end_user_rule() {
    let set = FileDescriptorSet::decode(userdata_proto::FILE_DESCRIPTOR_SET).unwrap();
    for file in set.file.iter().filter(|f| f.package() == "userdata.v1") {
        for service in &file.service {
            for method in &service.method {
                let rpc = format!("{}/{}", service.name(), method.name());
                assert!(
                    OPEN.contains(&rpc.as_str()) != CLOSED.contains(&rpc.as_str()),
                    "{rpc} must be in exactly one of OPEN and CLOSED"
                );
            }
        }
    }
}

async fn a_signed_in_user_reaches_their_own_data_through_every_open_rpc(db: Db) {
    let clerk = Clerk::start().await;
    let (server, alice, _) = alice_and_bob(db, &clerk).await;
    let (mut users, mut data) = session::clients(&server, Some(clerk.token(ALICE))).await;
    for naming in [Naming::ByClerkId, Naming::ById] {
        for rpc in OPEN {
            let result = call_open(rpc, &mut users, &mut data, &Target::of(&alice), naming).await;
            assert!(result.is_ok(), "{rpc} {naming:?}: {result:?}");
        }
    }
}

async fn another_users_data_is_permission_denied_on_every_open_rpc(db: Db) {
    let clerk = Clerk::start().await;
    let (server, _, bob) = alice_and_bob(db, &clerk).await;
    let (mut users, mut data) = session::clients(&server, Some(clerk.token(ALICE))).await;
    for naming in [Naming::ByClerkId, Naming::ById] {
        for rpc in OPEN.into_iter().filter(|rpc| !rpc.starts_with("ChangeService/")) {
            let result = call_open(rpc, &mut users, &mut data, &Target::of(&bob), naming).await;
            assert_denied(result, "NOT_YOUR_DATA", &format!("{rpc} {naming:?}"));
        }
    }
    // Nothing of Bob's changed.
    let (_, mut admin) = session::clients(&server, Some(ADMIN_TOKEN.into())).await;
    let listed = admin
        .list_user_data(pb::ListUserDataRequest { user_id: bob.id, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<String> = listed.entries.into_iter().map(|e| e.key).collect();
    assert_eq!(keys, ["signup_date", "signup_source"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_closed_rpc_is_permission_denied_even_on_the_users_own_data() {
    let clerk = Clerk::start().await;
    let (server, alice, _) = alice_and_bob(Db::Sqlite, &clerk).await;
    let token = clerk.token(ALICE);
    for rpc in CLOSED {
        let result = call_closed(rpc, &server, &token, &Target::of(&alice)).await;
        let status = result.as_ref().expect_err(rpc);
        assert!(status.message().starts_with("a signed-in user may not call"), "{rpc}: {status:?}");
        assert_denied(result, "NOT_ALLOWED_FOR_USERS", rpc);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_user_writes_only_custom_keys_with_the_generic_rpcs() {
    let clerk = Clerk::start().await;
    let (server, alice, _) = alice_and_bob(Db::Sqlite, &clerk).await;
    let (_, mut data) = session::clients(&server, Some(clerk.token(ALICE))).await;
    for key in ["feature_flags", "onboarding_status", "preferences"] {
        let value = match key {
            "feature_flags" => json!({"beta": false}),
            "onboarding_status" => json!({"step": "welcome", "completed": false}),
            _ => json!({"theme": "dark", "notifications": true, "language": "en", "timezone": "UTC"}),
        };
        let set = data
            .set_user_data(pb::SetUserDataRequest {
                user_id: alice.id.clone(),
                key: key.into(),
                value: Some(pb_value(value)),
                ..Default::default()
            })
            .await;
        assert_denied(set.map(drop), "NOT_YOUR_DATA", key);
        let delete = data
            .delete_user_data(pb::DeleteUserDataRequest {
                user_id: alice.id.clone(),
                key: key.into(),
                ..Default::default()
            })
            .await;
        assert_denied(delete.map(drop), "NOT_YOUR_DATA", key);
    }
}

async fn suspended_banned_and_deleted_users_are_permission_denied(db: Db) {
    let clerk = Clerk::start().await;
    let (server, alice, bob) = alice_and_bob(db, &clerk).await;
    let (mut admin, _) = session::clients(&server, Some(ADMIN_TOKEN.into())).await;
    for (status, name) in [(pb::UserStatus::Suspended, "suspended"), (pb::UserStatus::Banned, "banned")] {
        admin
            .update_user(pb::UpdateUserRequest {
                user: Some(pb::User { id: alice.id.clone(), status: status as i32, ..Default::default() }),
                update_mask: Some(FieldMask { paths: vec!["status".into()] }),
                ..Default::default()
            })
            .await
            .unwrap();
        let (mut users, mut data) = session::clients(&server, Some(clerk.token(ALICE))).await;
        let result = call_open(
            "UserDataService/GetPreferences",
            &mut users,
            &mut data,
            &Target::of(&alice),
            Naming::ByClerkId,
        )
        .await;
        let message = result.as_ref().unwrap_err().message().to_owned();
        assert!(message.contains(name), "{message:?}");
        assert_denied(result, "USER_NOT_ACTIVE", name);
    }
    admin.delete_user(pb::DeleteUserRequest { id: bob.id.clone(), ..Default::default() }).await.unwrap();
    let (mut users, mut data) = session::clients(&server, Some(clerk.token(BOB))).await;
    let result =
        call_open("UserService/GetUser", &mut users, &mut data, &Target::of(&bob), Naming::ByClerkId).await;
    assert_denied(result, "USER_NOT_ACTIVE", "deleted");
}

async fn watch_changes_follows_only_the_users_own_changes_whatever_the_request_names(db: Db) {
    let clerk = Clerk::start().await;
    let (server, alice, bob) = alice_and_bob(db, &clerk).await;
    let mut changes = pb::change_service_client::ChangeServiceClient::with_interceptor(
        server.channel().await,
        session::Bearer(Some(clerk.token(ALICE))),
    );
    // Alice asks for Bob's changes: she gets her own.
    let mut stream = changes
        .watch_changes(pb::WatchChangesRequest { clerk_id: BOB.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let (_, mut admin) = session::clients(&server, Some(ADMIN_TOKEN.into())).await;
    for (user, key) in [(&bob, "custom.bobs"), (&alice, "custom.alices")] {
        admin
            .set_user_data(pb::SetUserDataRequest {
                user_id: user.id.clone(),
                key: key.into(),
                value: Some(pb_value(json!(1))),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // Bob's change was written first, so had the filter let it through it
    // would come before Alice's. (On PostgreSQL a stream "from now" may also
    // replay recent changes above the snapshot horizon: Alice's own only.)
    let seen = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut seen = Vec::new();
        loop {
            let message = stream.message().await.unwrap().expect("the stream stays open");
            if let Some(pb::watch_changes_response::Event::Change(change)) = message.event {
                seen.push((change.clerk_id.clone(), change.key.clone()));
                if change.key == "custom.alices" {
                    return seen;
                }
            }
        }
    })
    .await
    .expect("Alice's change within 10 s");
    assert!(seen.iter().all(|(clerk_id, _)| clerk_id == ALICE), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_user_cannot_watch_changes() {
    let clerk = Clerk::start().await;
    let (server, alice, _) = alice_and_bob(Db::Sqlite, &clerk).await;
    let (mut admin, _) = session::clients(&server, Some(ADMIN_TOKEN.into())).await;
    admin
        .update_user(pb::UpdateUserRequest {
            user: Some(pb::User {
                id: alice.id,
                status: pb::UserStatus::Suspended as i32,
                ..Default::default()
            }),
            update_mask: Some(FieldMask { paths: vec!["status".into()] }),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut changes = pb::change_service_client::ChangeServiceClient::with_interceptor(
        server.channel().await,
        session::Bearer(Some(clerk.token(ALICE))),
    );
    let result = changes.watch_changes(pb::WatchChangesRequest::default()).await.map(drop);
    assert_denied(result, "USER_NOT_ACTIVE", "suspended watcher");
}
