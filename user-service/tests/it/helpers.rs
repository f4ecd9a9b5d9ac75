//! Shared test helpers.

use prost_types::{FieldMask, Timestamp};
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;
use userdata_proto::v1::{self as pb, user_service_client::UserServiceClient};

pub use user_service::testing::{Db, TestServer};

/// A `UserService` client.
pub type Client = UserServiceClient<Channel>;

/// Generates one `#[tokio::test]` per backend for each listed async fn taking
/// a `Db`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::helpers::Db::Postgres).await })+
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::helpers::Db::Sqlite).await })+
        }
    };
}

/// A user message with a clerk id and a few profile fields.
pub fn new_user(clerk_id: &str) -> pb::User {
    pb::User {
        clerk_id: clerk_id.into(),
        email: Some(format!("{clerk_id}@example.org")),
        first_name: Some("Ada".into()),
        last_name: Some("Lovelace".into()),
        ..Default::default()
    }
}

/// Creates a user as an admin would and returns it.
pub async fn create(client: &mut Client, clerk_id: &str) -> pb::User {
    client
        .create_user(pb::CreateUserRequest { user: Some(new_user(clerk_id)), ..Default::default() })
        .await
        .expect("create user")
        .into_inner()
        .user
        .expect("created user")
}

/// An event context for `key` at `ms` milliseconds since the epoch.
pub fn event(key: &str, ms: i64) -> Option<pb::EventContext> {
    Some(pb::EventContext {
        idempotency_key: key.into(),
        source_time: Some(Timestamp { seconds: ms / 1000, nanos: ((ms % 1000) * 1_000_000) as i32 }),
        ..Default::default()
    })
}

/// The update a Clerk `user.updated` event makes.
pub fn clerk_update(clerk_id: &str, first: &str, last: &str, key: &str, ms: i64) -> pb::UpdateUserRequest {
    pb::UpdateUserRequest {
        user: Some(pb::User {
            clerk_id: clerk_id.into(),
            email: Some(format!("{clerk_id}@example.org")),
            first_name: Some(first.into()),
            last_name: Some(last.into()),
            ..Default::default()
        }),
        update_mask: Some(mask(&["email", "first_name", "last_name", "username", "image_url"])),
        event_context: event(key, ms),
        ..Default::default()
    }
}

/// The create a Clerk `user.created` event makes.
pub fn clerk_create(clerk_id: &str, first: &str, key: &str, ms: i64) -> pb::CreateUserRequest {
    pb::CreateUserRequest {
        user: Some(pb::User { first_name: Some(first.into()), ..new_user(clerk_id) }),
        signup_source: pb::SignupSource::Clerk as i32,
        event_context: event(key, ms),
    }
}

/// A field mask.
pub fn mask(paths: &[&str]) -> FieldMask {
    FieldMask { paths: paths.iter().map(|p| (*p).to_owned()).collect() }
}

/// Reads a user by clerk id, or the status.
pub async fn get_by_clerk_id(client: &mut Client, clerk_id: &str) -> Result<pb::User, Status> {
    client
        .get_user(pb::GetUserRequest { clerk_id: clerk_id.into(), ..Default::default() })
        .await
        .map(|r| r.into_inner().user.expect("user in response"))
}

/// Asserts an `INVALID_ARGUMENT` whose `BadRequest` names `field`.
pub fn assert_field_violation(status: &Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let bad = status.get_details_bad_request().expect("BadRequest details");
    let fields: Vec<&str> = bad.field_violations.iter().map(|v| v.field.as_str()).collect();
    assert!(fields.contains(&field), "expected a violation of {field}, got {fields:?} ({status:?})");
}

/// A `UserDataService` client.
pub type DataClient = userdata_proto::v1::user_data_service_client::UserDataServiceClient<Channel>;

/// A server with one user; returns the server, a data client and the user.
pub async fn with_user(db: Db) -> (TestServer, DataClient, pb::User) {
    let server = TestServer::start(db).await;
    let mut users = server.users().await;
    let user = create(&mut users, "user_data").await;
    let data = DataClient::new(server.channel().await);
    (server, data, user)
}

/// A JSON value as a protobuf `Value`.
pub fn pb_value(json: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match json {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => {
            Kind::ListValue(prost_types::ListValue { values: a.into_iter().map(pb_value).collect() })
        }
        serde_json::Value::Object(m) => Kind::StructValue(prost_types::Struct {
            fields: m.into_iter().map(|(k, v)| (k, pb_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}
