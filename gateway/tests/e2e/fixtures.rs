//! Whole payloads, byte for byte: our own fixtures in `tests/fixtures/` and
//! the real Clerk payloads in the shared fixtures directory (see
//! [`shared_fixture_dir`]), which must exist: a test that cannot find its
//! payloads fails instead of passing without checking anything.

use std::path::{Path, PathBuf};

use serde_json::Value;
use userdata_proto::v1::{SignupSource, User, UserRole, UserStatus};

use crate::{
    clerk::ClerkUser,
    support::{Db, Harness, millis, unix_now},
};

crate::on_both_backends!(
    a_user_whose_primary_email_is_the_second_is_stored_with_the_second,
    a_phone_only_user_is_stored_without_email_or_names,
    unicode_names_and_usernames_are_stored_verbatim,
    blank_fields_of_a_first_seen_update_are_stored_as_absent,
    a_current_schema_session_for_an_unknown_user_creates_the_user_and_counts_one_login,
    every_shared_clerk_payload_is_accepted_and_read_back,
);

/// What one of our fixtures must leave in user-service.
#[derive(Debug)]
struct Expected {
    file: &'static str,
    clerk_id: &'static str,
    email: Option<&'static str>,
    first_name: Option<&'static str>,
    last_name: Option<&'static str>,
    username: Option<&'static str>,
    image_url: Option<&'static str>,
}

/// Every file in `tests/fixtures/`, with what it must store. Written by hand
/// from the files, not computed, so the gateway's logic is not repeated here.
const OWN_FIXTURES: [Expected; 5] = [
    Expected {
        file: "user.created.two-emails-primary-second.json",
        clerk_id: "user_e2eTwoEmailsPrimarySecond",
        email: Some("grace@example.test"),
        first_name: Some("Grace"),
        last_name: Some("Hopper"),
        username: Some("grace_h"),
        image_url: Some("https://img.example.test/user_e2eTwoEmailsPrimarySecond.png"),
    },
    Expected {
        file: "user.created.phone-only-no-email.json",
        clerk_id: "user_e2ePhoneOnlyNoEmail00001",
        email: None,
        first_name: None,
        last_name: None,
        username: None,
        image_url: Some("https://img.example.test/default/initials-e2e.png"),
    },
    Expected {
        file: "user.created.unicode-names-minified.json",
        clerk_id: "user_e2eUnicodeNames000000001",
        email: Some("zoe.angstrom@example.test"),
        first_name: Some("Zoë Ångström-Núñez"),
        last_name: Some("李小龍 🐉"),
        username: Some("şükrü_ø"),
        image_url: Some("https://img.example.test/%C3%BCmlaut/zo%C3%AB.png"),
    },
    Expected {
        file: "user.updated.blank-fields-and-three-emails.json",
        clerk_id: "user_e2eBlankFieldsThreeMail",
        email: Some("linus@example.test"),
        first_name: Some("Linus"),
        last_name: None,
        username: Some("torvalds_e2e"),
        image_url: None,
    },
    // Clerk's webhook schema 2025-04-15: the session carries its user in
    // `data.user`; the primary address is the second listed.
    Expected {
        file: "session.created.2025-04-15-with-user.json",
        clerk_id: "user_e2eCurrentSchemaUser0001",
        email: Some("marie@example.test"),
        first_name: Some("Marie"),
        last_name: None,
        username: None,
        image_url: Some("https://img.example.test/user_e2eCurrentSchemaUser0001.png"),
    },
];

fn own_fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Environment variable naming the shared Clerk fixtures directory.
const SHARED_FIXTURES_ENV: &str = "USERDATA_CLERK_FIXTURES";

/// The catalog session payloads (no `data.user`) that must keep working, by name.
const CATALOG_SESSION_FIXTURES: [&str; 3] = [
    "session.created.catalog-example.json",
    "session.ended.catalog-example.json",
    "session.removed.catalog-example.json",
];

/// The shared Clerk fixtures: `$USERDATA_CLERK_FIXTURES`, else
/// `<workspace>/../shared/fixtures/clerk`, else `/work/shared/fixtures/clerk`.
/// Panics naming every place looked at when none is a directory.
fn shared_fixture_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut candidates: Vec<PathBuf> =
        std::env::var_os(SHARED_FIXTURES_ENV).map(PathBuf::from).into_iter().collect();
    candidates.push(workspace.join("../shared/fixtures/clerk"));
    candidates.push(PathBuf::from("/work/shared/fixtures/clerk"));
    first_dir(&candidates).unwrap_or_else(|reason| panic!("{reason}"))
}

/// The first of `candidates` that is a directory, or why none is.
fn first_dir(candidates: &[PathBuf]) -> Result<PathBuf, String> {
    if let Some(found) = candidates.iter().find(|dir| dir.is_dir()) {
        return Ok(found.clone());
    }
    let looked: Vec<String> = candidates.iter().map(|dir| dir.display().to_string()).collect();
    Err(format!(
        "shared Clerk fixtures not found; set {SHARED_FIXTURES_ENV} to their directory (looked in: {})",
        looked.join(", ")
    ))
}

#[test]
fn missing_shared_fixtures_are_an_error_naming_where_they_were_looked_for() {
    let root = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let (absent, present) = (root.path().join("absent"), root.path().join("present"));
    std::fs::create_dir(&present).unwrap_or_else(|e| panic!("mkdir: {e}"));

    let none = first_dir(std::slice::from_ref(&absent));
    let second = first_dir(&[absent.clone(), present.clone()]);

    let reason = none.err().unwrap_or_default();
    assert!(
        reason.contains(SHARED_FIXTURES_ENV) && reason.contains(&absent.display().to_string()),
        "{reason}"
    );
    assert_eq!(second, Ok(present));
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `*.json` files of a directory, sorted by name.
fn json_files(dir: &Path) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display())).path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Checks the stored user field by field, and that the account is a regular,
/// active, Clerk-sourced one synced just now.
async fn assert_stored(harness: &Harness, expected: &Expected) -> User {
    let context = expected.file;
    let user = harness.existing_user(expected.clerk_id).await;
    assert_eq!(user.clerk_id, expected.clerk_id, "{context}");
    assert_eq!(user.email.as_deref(), expected.email, "{context}: email");
    assert_eq!(user.first_name.as_deref(), expected.first_name, "{context}: first_name");
    assert_eq!(user.last_name.as_deref(), expected.last_name, "{context}: last_name");
    assert_eq!(user.username.as_deref(), expected.username, "{context}: username");
    assert_eq!(user.image_url.as_deref(), expected.image_url, "{context}: image_url");
    assert_eq!(user.role(), UserRole::User, "{context}: role");
    assert_eq!(user.status(), UserStatus::Active, "{context}: status");
    assert!(uuid::Uuid::parse_str(&user.id).is_ok(), "{context}: id {:?}", user.id);

    let history = harness.history(expected.clerk_id).await;
    assert_eq!(history.signup_source(), SignupSource::Clerk, "{context}: signup_source");
    assert!(history.signup_date.is_some(), "{context}: signup_date");
    let synced = history.last_clerk_sync.unwrap_or_else(|| panic!("{context}: no last_clerk_sync"));
    let age = unix_now() - synced.seconds;
    assert!((-5..=300).contains(&age), "{context}: last_clerk_sync is {age} s old");
    assert!(history.name_history.is_empty(), "{context}: a first write is not a name change");
    assert_eq!(harness.clerk_sync_count(expected.clerk_id).await, 1, "{context}: one Clerk write");
    user
}

async fn delivers_own_fixture(db: Db, file: &str) {
    let expected =
        OWN_FIXTURES.iter().find(|e| e.file == file).unwrap_or_else(|| panic!("no expectation for {file}"));
    let harness = Harness::start(db).await;
    let body = read(&own_fixture_dir().join(file));

    let delivery = harness.post(&body, "msg_e2e_own_fixture_1").await;

    delivery.assert_outcome("applied", file);
    assert_stored(&harness, expected).await;
}

async fn a_user_whose_primary_email_is_the_second_is_stored_with_the_second(db: Db) {
    delivers_own_fixture(db, "user.created.two-emails-primary-second.json").await;
}

async fn a_phone_only_user_is_stored_without_email_or_names(db: Db) {
    delivers_own_fixture(db, "user.created.phone-only-no-email.json").await;
}

async fn unicode_names_and_usernames_are_stored_verbatim(db: Db) {
    delivers_own_fixture(db, "user.created.unicode-names-minified.json").await;
}

async fn blank_fields_of_a_first_seen_update_are_stored_as_absent(db: Db) {
    delivers_own_fixture(db, "user.updated.blank-fields-and-three-emails.json").await;
}

async fn a_current_schema_session_for_an_unknown_user_creates_the_user_and_counts_one_login(db: Db) {
    let file = "session.created.2025-04-15-with-user.json";
    let expected = OWN_FIXTURES.iter().find(|e| e.file == file).unwrap_or_else(|| panic!("no {file}"));
    let harness = Harness::start(db).await;
    harness.assert_not_found(expected.clerk_id, "before the session").await;
    let body = read(&own_fixture_dir().join(file));

    let first = harness.post(&body, "msg_e2e_current_session").await;
    let redelivered = harness.post(&body, "msg_e2e_current_session").await;

    first.assert_outcome("applied", file);
    redelivered.assert_outcome("duplicate", "the same svix-id again");
    assert_stored(&harness, expected).await;
    let activity = harness.activity(expected.clerk_id).await;
    assert_eq!(activity.session_count, 1, "{activity:?}");
    let [login] = activity.login_history.as_slice() else {
        panic!("expected exactly one login: {activity:?}");
    };
    assert_eq!(millis(login.timestamp.as_ref()), Some(1_761_000_000_000));
    assert_eq!(login.device.as_deref(), Some("Safari 18.4 on iPhone"));
    assert_eq!(login.ip.as_deref(), Some("198.51.100.23"));
}

#[test]
fn every_own_fixture_file_has_a_test() {
    let files: Vec<String> = json_files(&own_fixture_dir()).iter().map(|p| file_name(p)).collect();
    let mut covered: Vec<String> = OWN_FIXTURES.iter().map(|e| e.file.to_owned()).collect();
    covered.sort();
    assert_eq!(files, covered, "tests/fixtures/ and OWN_FIXTURES must list the same files");
}

/// A string field of `data`, absent when null or blank (as Clerk means it).
fn text(data: &Value, field: &str) -> Option<String> {
    data[field].as_str().filter(|s| !s.trim().is_empty()).map(str::to_owned)
}

/// The primary address a user payload implies: the listed address whose
/// `id` is `primary_email_address_id`, or none.
fn implied_email(data: &Value) -> Option<String> {
    let primary = data["primary_email_address_id"].as_str()?;
    data["email_addresses"]
        .as_array()?
        .iter()
        .find(|address| address["id"].as_str() == Some(primary))
        .and_then(|address| text(address, "email_address"))
}

/// Creates `clerk_id` with our own data, stamped before `at` (ms), so a
/// payload about an existing user can be checked against it.
async fn seed_user(harness: &Harness, clerk_id: &str, at: i64, context: &str) {
    let existing = ClerkUser::new(clerk_id).at(at - 60_000);
    harness.post(existing.created(), "msg_e2e_shared_seed").await.assert_outcome("applied", context);
    harness.existing_user(clerk_id).await;
}

async fn every_shared_clerk_payload_is_accepted_and_read_back(db: Db) {
    let dir = shared_fixture_dir();
    let files = json_files(&dir);
    let names: Vec<String> = files.iter().map(|path| file_name(path)).collect();
    for required in CATALOG_SESSION_FIXTURES {
        assert!(names.iter().any(|name| name == required), "{required} is missing from {}", dir.display());
    }
    // Payloads share Clerk ids (the catalog examples reuse a few users), so
    // each user or session payload gets its own user-service; the ignored
    // types share one.
    let others = Harness::start(db).await;
    let mut checked = 0;
    for (index, path) in files.iter().enumerate() {
        let name = file_name(path);
        let body = read(path);
        let json: Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{name}: not JSON: {e}"));
        let event_type = json["type"].as_str().unwrap_or_else(|| panic!("{name}: no type")).to_owned();
        let data = &json["data"];
        let at = json["timestamp"].as_i64().unwrap_or(0);
        let msg_id = format!("msg_e2e_shared_{index}");
        match event_type.as_str() {
            "user.created" | "user.updated" => {
                let harness = Harness::start(db).await;
                let delivery = harness.post(&body, &msg_id).await;
                delivery.assert_outcome("applied", &name);
                let clerk_id = data["id"].as_str().unwrap_or_else(|| panic!("{name}: no data.id"));
                let user = harness.existing_user(clerk_id).await;
                assert_eq!(user.clerk_id, clerk_id, "{name}");
                assert_eq!(user.email, implied_email(data), "{name}: primary email");
                assert_eq!(user.first_name, text(data, "first_name"), "{name}: first_name");
                assert_eq!(user.last_name, text(data, "last_name"), "{name}: last_name");
                assert_eq!(user.username, text(data, "username"), "{name}: username");
                assert_eq!(user.image_url, text(data, "image_url"), "{name}: image_url");
                assert_eq!(user.role(), UserRole::User, "{name}");
                assert_eq!(user.status(), UserStatus::Active, "{name}");
                assert_eq!(harness.history(clerk_id).await.signup_source(), SignupSource::Clerk, "{name}");
            }
            "user.deleted" => {
                let harness = Harness::start(db).await;
                let clerk_id = data["id"].as_str().unwrap_or_else(|| panic!("{name}: no data.id"));
                // The user must exist first, or "gone afterwards" proves nothing.
                seed_user(&harness, clerk_id, at, &name).await;

                let delivery = harness.post(&body, &msg_id).await;

                delivery.assert_outcome("applied", &name);
                harness.assert_not_found(clerk_id, &name).await;
            }
            session if session.starts_with("session.") => {
                // Session events are recorded as the user's activity; for a
                // user not created yet the gateway answers 503 on purpose
                // (STATUS_CODES.md), so the user is created first.
                let harness = Harness::start(db).await;
                let clerk_id = data["user_id"].as_str().unwrap_or_else(|| panic!("{name}: no data.user_id"));
                seed_user(&harness, clerk_id, at, &name).await;

                let delivery = harness.post(&body, &msg_id).await;

                delivery.assert_outcome("applied", &name);
                let activity = harness.activity(clerk_id).await;
                if session == "session.created" {
                    assert_eq!(activity.session_count, 1, "{name}: {activity:?}");
                    assert_eq!(activity.login_history.len(), 1, "{name}: {activity:?}");
                    assert!(activity.login_history[0].success, "{name}: {activity:?}");
                    let created_at = data["created_at"].as_i64();
                    assert_eq!(millis(activity.last_active.as_ref()), created_at, "{name}: last_active");
                } else {
                    assert_eq!(activity.session_count, 0, "{name}: {activity:?}");
                    let last_active_at = data["last_active_at"].as_i64();
                    assert_eq!(millis(activity.last_active.as_ref()), last_active_at, "{name}: last_active");
                }
            }
            _ => {
                let delivery = others.post(&body, &msg_id).await;
                assert!(delivery.status.is_success(), "{name}: {delivery:?}");
                assert_eq!(delivery.outcome(), "ignored", "{name}");
            }
        }
        checked += 1;
    }
    assert!(checked > 0, "no payloads in {}", dir.display());
    assert!(others.all_users().await.is_empty(), "ignored events must not create users");
}
