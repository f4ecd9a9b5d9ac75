//! Clerk-shaped webhook bodies, made up for the benchmark (shaped like the
//! real ones in shared/fixtures/clerk).

use serde_json::{Value, json};

fn user_data(clerk_id: &str, n: usize, version: u32, updated_at_ms: i64) -> Value {
    let email_id = format!("idn_{clerk_id}_{version}");
    json!({
        "id": clerk_id,
        "object": "user",
        "username": null,
        "first_name": format!("First{n}v{version}"),
        "last_name": format!("Last{n}"),
        "image_url": format!("https://img.clerk.com/{clerk_id}"),
        "has_image": false,
        "primary_email_address_id": email_id,
        "primary_phone_number_id": null,
        "primary_web3_wallet_id": null,
        "password_enabled": false,
        "two_factor_enabled": false,
        "email_addresses": [
            {"id": format!("idn_{clerk_id}_old"), "object": "email_address",
             "email_address": format!("old{n}@example.org"), "reserved": false,
             "verification": {"status": "verified", "strategy": "email_code", "attempts": 1, "expire_at": null},
             "linked_to": [], "created_at": 1_700_000_000_000i64, "updated_at": 1_700_000_000_000i64},
            {"id": email_id, "object": "email_address",
             "email_address": format!("user{n}@example.org"), "reserved": false,
             "verification": {"status": "verified", "strategy": "email_code", "attempts": 1, "expire_at": null},
             "linked_to": [], "created_at": 1_700_000_000_000i64, "updated_at": updated_at_ms}
        ],
        "phone_numbers": [],
        "web3_wallets": [],
        "external_accounts": [],
        "public_metadata": {},
        "private_metadata": {},
        "unsafe_metadata": {},
        "external_id": null,
        "banned": false,
        "locked": false,
        "last_sign_in_at": null,
        "created_at": 1_700_000_000_000i64,
        "updated_at": updated_at_ms,
    })
}

fn envelope(kind: &str, data: Value, timestamp_ms: i64) -> Vec<u8> {
    let body = json!({
        "data": data,
        "object": "event",
        "type": kind,
        "timestamp": timestamp_ms,
        "instance_id": "ins_benchmark",
        "event_attributes": {"http_request": {"client_ip": "", "user_agent": "userdata-bench"}},
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// A `user.created` body.
pub fn user_created(clerk_id: &str, n: usize, updated_at_ms: i64) -> Vec<u8> {
    envelope("user.created", user_data(clerk_id, n, 1, updated_at_ms), updated_at_ms)
}

/// A `user.updated` body with name version `version`.
pub fn user_updated(clerk_id: &str, n: usize, version: u32, updated_at_ms: i64) -> Vec<u8> {
    envelope("user.updated", user_data(clerk_id, n, version, updated_at_ms), updated_at_ms)
}

/// A `user.deleted` body.
pub fn user_deleted(clerk_id: &str, timestamp_ms: i64) -> Vec<u8> {
    envelope("user.deleted", json!({"id": clerk_id, "object": "user", "deleted": true}), timestamp_ms)
}

/// A `session.created` body.
pub fn session_created(clerk_id: &str, n: usize, timestamp_ms: i64) -> Vec<u8> {
    let data = json!({
        "id": format!("sess_bench_{n}"),
        "object": "session",
        "client_id": format!("client_bench_{n}"),
        "user_id": clerk_id,
        "status": "active",
        "last_active_at": timestamp_ms,
        "expire_at": timestamp_ms + 604_800_000,
        "abandon_at": timestamp_ms + 2_592_000_000i64,
        "created_at": timestamp_ms,
        "updated_at": timestamp_ms,
        "latest_activity": {"id": format!("sess_activity_{n}"), "object": "session_activity",
            "browser_name": "Firefox", "browser_version": "140.0", "device_type": "Linux",
            "ip_address": "203.0.113.7", "city": "Berlin", "country": "DE", "is_mobile": false},
    });
    envelope("session.created", data, timestamp_ms)
}
