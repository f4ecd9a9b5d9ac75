//! The server-side fixes that came with browser exposure: role and status
//! need `admin`, the generic RPCs keep off the system's keys, the actor of a
//! name change is the authenticated caller, custom keys are capped, and the
//! SQLite file is private.

use std::io::Write;

use prost_types::FieldMask;
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;
use user_service::{domain::limits::MAX_CUSTOM_KEYS, testing::TestDatabase};
use userdata_proto::v1 as pb;

use crate::{
    helpers::{Db, TestServer, assert_field_violation, new_user, pb_value},
    session::{self, Data, Users},
};

crate::on_both_backends!(custom_keys_are_capped_per_user);

const WRITER: &str = "writer-token-0123456789abcdef";
const ADMIN: &str = "admin-token-0123456789abcdef";

/// A server with a `writer` (read, write) and an `ops` (read, write, admin)
/// service client.
async fn server(db: Db) -> TestServer {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "writer read,write {WRITER}\nops read,write,admin {ADMIN}").unwrap();
    let path = file.path().to_owned();
    TestServer::start_with(db, move |config| config.auth_tokens = Some(path)).await
}

async fn as_client(server: &TestServer, token: &str) -> (Users, Data) {
    session::clients(server, Some(token.to_owned())).await
}

fn assert_missing_scope(status: &tonic::Status, what: &str) {
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(status.get_details_error_info().unwrap().reason, "MISSING_SCOPE");
    assert!(status.message().contains(what) && status.message().contains("`admin`"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setting_role_or_status_needs_the_admin_scope() {
    let server = server(Db::Sqlite).await;
    let (mut writer, _) = as_client(&server, WRITER).await;
    let (mut admin, _) = as_client(&server, ADMIN).await;
    let promoted = pb::User { role: pb::UserRole::Admin as i32, ..new_user("user_sneaky") };
    let err = writer
        .create_user(pb::CreateUserRequest { user: Some(promoted.clone()), ..Default::default() })
        .await
        .unwrap_err();
    assert_missing_scope(&err, "role or status");

    let user = writer
        .create_user(pb::CreateUserRequest { user: Some(new_user("user_plain")), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    for (path, change) in [
        ("role", pb::User { id: user.id.clone(), role: pb::UserRole::Admin as i32, ..Default::default() }),
        (
            "status",
            pb::User { id: user.id.clone(), status: pb::UserStatus::Banned as i32, ..Default::default() },
        ),
    ] {
        let update = pb::UpdateUserRequest {
            user: Some(change),
            update_mask: Some(FieldMask { paths: vec![path.into()] }),
            ..Default::default()
        };
        assert_missing_scope(&writer.update_user(update.clone()).await.unwrap_err(), "role or status");
        admin.update_user(update).await.unwrap();
    }
    let stored = admin
        .get_user(pb::GetUserRequest { id: user.id, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!((stored.role, stored.status), (pb::UserRole::Admin as i32, pb::UserStatus::Banned as i32));
    admin.create_user(pb::CreateUserRequest { user: Some(promoted), ..Default::default() }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generic_rpcs_refuse_the_keys_the_service_keeps() {
    let server = server(Db::Sqlite).await;
    let user = session::create_user_with(&server, ADMIN, "user_keys").await;
    let (_, mut admin) = as_client(&server, ADMIN).await;
    let valid = [
        ("session_count", json!(7)),
        ("last_active", json!("2026-01-01T00:00:00Z")),
        ("login_history", json!([])),
        ("name_history", json!([])),
        ("last_clerk_sync", json!("2026-01-01T00:00:00Z")),
        ("signup_date", json!("2026-01-01T00:00:00Z")),
        ("signup_source", json!("admin")),
    ];
    for (key, value) in valid {
        let set = pb::SetUserDataRequest {
            user_id: user.id.clone(),
            key: key.into(),
            value: Some(pb_value(value)),
            ..Default::default()
        };
        let err = admin.set_user_data(set).await.unwrap_err();
        assert_field_violation(&err, "key");
        assert!(err.message().contains("kept by the service"), "{err:?}");
        let delete =
            pb::DeleteUserDataRequest { user_id: user.id.clone(), key: key.into(), ..Default::default() };
        assert_field_violation(&admin.delete_user_data(delete).await.unwrap_err(), "key");
    }
    let history = admin
        .get_user_history(pb::GetUserHistoryRequest { user_id: user.id, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.signup_source, pb::SignupSource::Admin as i32, "signup_source is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_onboarding_with_the_generic_rpcs_needs_the_admin_scope() {
    let server = server(Db::Sqlite).await;
    let user = session::create_user_with(&server, ADMIN, "user_onboarding").await;
    let (_, mut writer) = as_client(&server, WRITER).await;
    let (_, mut admin) = as_client(&server, ADMIN).await;
    writer
        .advance_onboarding(pb::AdvanceOnboardingRequest {
            user_id: user.id.clone(),
            step: pb::OnboardingStep::Complete as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let reset = pb::DeleteUserDataRequest {
        user_id: user.id.clone(),
        key: "onboarding_status".into(),
        ..Default::default()
    };
    assert_missing_scope(&writer.delete_user_data(reset.clone()).await.unwrap_err(), "onboarding_status");
    let rewind = pb::SetUserDataRequest {
        user_id: user.id.clone(),
        key: "onboarding_status".into(),
        value: Some(pb_value(json!({"step": "welcome", "completed": false}))),
        ..Default::default()
    };
    assert_missing_scope(&writer.set_user_data(rewind).await.unwrap_err(), "onboarding_status");
    admin.delete_user_data(reset).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_history_records_the_authenticated_caller_beside_the_claimed_admin() {
    let server = server(Db::Sqlite).await;
    let user = session::create_user_with(&server, ADMIN, "user_renamed").await;
    let (mut writer, mut data) = as_client(&server, WRITER).await;
    writer
        .update_user(pb::UpdateUserRequest {
            user: Some(pb::User {
                id: user.id.clone(),
                first_name: Some("Augusta".into()),
                ..Default::default()
            }),
            changed_by: "user_someadmin".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let history = data
        .get_user_history(pb::GetUserHistoryRequest { user_id: user.id, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let change = &history.name_history[0];
    assert_eq!(change.first_name, "Augusta");
    assert_eq!(change.changed_by.as_deref(), Some("writer"));
    assert_eq!(change.claimed_by.as_deref(), Some("user_someadmin"));
}

async fn custom_keys_are_capped_per_user(db: Db) {
    let server = server(db).await;
    let user = session::create_user_with(&server, ADMIN, "user_hoarder").await;
    let (_, mut data) = as_client(&server, WRITER).await;
    let set = |key: String| pb::SetUserDataRequest {
        user_id: user.id.clone(),
        key,
        value: Some(pb_value(json!(1))),
        ..Default::default()
    };
    for n in 0..MAX_CUSTOM_KEYS {
        data.set_user_data(set(format!("custom.k{n}"))).await.unwrap();
    }
    let err = data.set_user_data(set("custom.one_too_many".into())).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains(&format!("{MAX_CUSTOM_KEYS} custom keys")), "{err:?}");
    // Existing keys stay writable, documented keys are not counted, and
    // deleting one makes room.
    data.set_user_data(set("custom.k0".into())).await.unwrap();
    data.set_user_data(pb::SetUserDataRequest {
        key: "preferences".into(),
        value: Some(pb_value(
            json!({"theme": "dark", "notifications": true, "language": "en", "timezone": "UTC"}),
        )),
        ..set(String::new())
    })
    .await
    .unwrap();
    data.delete_user_data(pb::DeleteUserDataRequest {
        user_id: user.id.clone(),
        key: "custom.k1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    data.set_user_data(set("custom.one_too_many".into())).await.unwrap();
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_file_and_its_directory_are_private() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let db_dir = dir.path().join("state").join("userdata");
    let file = db_dir.join("userdata.db");
    let database = TestDatabase::create(Db::Sqlite).await.with_url(format!("sqlite://{}", file.display()));
    let server = TestServer::start_on(database, "127.0.0.1:0".parse().unwrap()).await;
    session::create_user_with(&server, ADMIN, "user_private").await;
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&db_dir), 0o700, "directory");
    assert_eq!(mode(&file), 0o600, "database file");
    let wal = db_dir.join("userdata.db-wal");
    assert!(wal.exists(), "a write went through the WAL");
    assert_eq!(mode(&wal), 0o600, "WAL file");
}
