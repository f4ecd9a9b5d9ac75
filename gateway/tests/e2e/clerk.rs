//! Clerk-shaped webhook bodies built from our own data.
//!
//! The shape follows Clerk's `UserJSON` and the event envelope (see
//! `/work/shared/design/clerk-webhooks.md`); the values are made up here and
//! use `example.test` addresses. Nothing is copied from a real payload.

use serde_json::{Value, json};

/// A point in time (Unix ms) the built events start from: 2025-10-09.
pub const T0: i64 = 1_760_000_000_000;

/// One of a user's email addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    /// Clerk's id for it (`idn_...`).
    pub id: String,
    /// The address.
    pub address: String,
}

/// A Clerk user, as `user.created` / `user.updated` carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClerkUser {
    /// `user_...`.
    pub id: String,
    /// All addresses, in the order Clerk lists them.
    pub emails: Vec<Email>,
    /// Id of the primary address; may name no listed address.
    pub primary_email_address_id: Option<String>,
    /// `(id, number)` of phone numbers; the first is primary.
    pub phones: Vec<(String, String)>,
    /// Given name.
    pub first_name: Option<String>,
    /// Family name.
    pub last_name: Option<String>,
    /// Username.
    pub username: Option<String>,
    /// Profile image.
    pub image_url: Option<String>,
    /// Creation time (ms).
    pub created_at: i64,
    /// Last change (ms); user-service orders events by it.
    pub updated_at: i64,
}

impl ClerkUser {
    /// A user with one primary address `<id>@example.test`, named Ada
    /// Lovelace, with an image, created and last changed at [`T0`].
    pub fn new(id: &str) -> Self {
        let email_id = format!("idn_{}", id.trim_start_matches("user_"));
        Self {
            id: id.to_owned(),
            emails: vec![Email { id: email_id.clone(), address: format!("{id}@example.test") }],
            primary_email_address_id: Some(email_id),
            phones: Vec::new(),
            first_name: Some("Ada".into()),
            last_name: Some("Lovelace".into()),
            username: None,
            image_url: Some(format!("https://img.example.test/{id}.png")),
            created_at: T0,
            updated_at: T0,
        }
    }

    /// The same user with other names.
    pub fn named(mut self, first: &str, last: &str) -> Self {
        self.first_name = Some(first.into());
        self.last_name = Some(last.into());
        self
    }

    /// The same user with another username.
    pub fn with_username(mut self, username: &str) -> Self {
        self.username = Some(username.into());
        self
    }

    /// The same user with another image.
    pub fn with_image(mut self, url: &str) -> Self {
        self.image_url = Some(url.into());
        self
    }

    /// The same user with one more address, made primary.
    pub fn with_primary_email(mut self, id: &str, address: &str) -> Self {
        self.emails.push(Email { id: id.into(), address: address.into() });
        self.primary_email_address_id = Some(id.into());
        self
    }

    /// The same user whose only address is `address`.
    pub fn with_only_email(mut self, address: &str) -> Self {
        let id = format!("idn_{}_only", self.id.trim_start_matches("user_"));
        self.emails = vec![Email { id: id.clone(), address: address.into() }];
        self.primary_email_address_id = Some(id);
        self
    }

    /// The same user as last changed at `ms`.
    pub fn at(mut self, ms: i64) -> Self {
        self.updated_at = ms;
        self
    }

    /// The primary address: the listed one whose id is the primary id.
    pub fn primary_email(&self) -> Option<&str> {
        let primary = self.primary_email_address_id.as_deref()?;
        self.emails.iter().find(|e| e.id == primary).map(|e| e.address.as_str())
    }

    /// `data` of a user event, with the fields the gateway ignores too.
    pub fn data(&self) -> Value {
        let emails: Vec<Value> = self
            .emails
            .iter()
            .map(|e| {
                json!({
                    "id": e.id,
                    "object": "email_address",
                    "email_address": e.address,
                    "reserved": false,
                    "verification": {
                        "status": "verified",
                        "strategy": "email_code",
                        "attempts": 1,
                        "expire_at": self.created_at + 600_000
                    },
                    "linked_to": [],
                    "matches_sso_connection": false,
                    "created_at": self.created_at,
                    "updated_at": self.updated_at
                })
            })
            .collect();
        let phones: Vec<Value> = self
            .phones
            .iter()
            .map(|(id, number)| {
                json!({
                    "id": id,
                    "object": "phone_number",
                    "phone_number": number,
                    "reserved_for_second_factor": false,
                    "default_second_factor": false,
                    "verification": {"status": "verified", "strategy": "phone_code", "attempts": 1},
                    "linked_to": [],
                    "backup_codes": null,
                    "created_at": self.created_at,
                    "updated_at": self.updated_at
                })
            })
            .collect();
        json!({
            "id": self.id,
            "object": "user",
            "external_id": null,
            "primary_email_address_id": self.primary_email_address_id,
            "primary_phone_number_id": self.phones.first().map(|(id, _)| id),
            "primary_web3_wallet_id": null,
            "username": self.username,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "image_url": self.image_url,
            "has_image": self.image_url.is_some(),
            "email_addresses": emails,
            "phone_numbers": phones,
            "web3_wallets": [],
            "passkeys": [],
            "external_accounts": [],
            "saml_accounts": [],
            "enterprise_accounts": [],
            "public_metadata": {"plan": "free"},
            "private_metadata": {},
            "unsafe_metadata": {},
            "password_enabled": true,
            "two_factor_enabled": false,
            "totp_enabled": false,
            "backup_code_enabled": false,
            "banned": false,
            "locked": false,
            "lockout_expires_in_seconds": null,
            "verification_attempts_remaining": 100,
            "delete_self_enabled": true,
            "create_organization_enabled": true,
            "last_sign_in_at": null,
            "last_active_at": self.updated_at,
            "legal_accepted_at": null,
            "created_at": self.created_at,
            "updated_at": self.updated_at
        })
    }

    /// A `user.created` body for this user.
    pub fn created(&self) -> String {
        envelope("user.created", self.data(), self.updated_at + 7)
    }

    /// A `user.updated` body for this user.
    pub fn updated(&self) -> String {
        envelope("user.updated", self.data(), self.updated_at + 7)
    }
}

/// A `user.deleted` body: `data` is only `{id, object, deleted}` and the
/// envelope `timestamp` (ms) is the only time it carries.
pub fn deleted(clerk_id: &str, timestamp: i64) -> String {
    envelope("user.deleted", json!({"deleted": true, "id": clerk_id, "object": "user"}), timestamp)
}

/// An `email.created` body (a type the gateway does not sync) about a user.
pub fn email_created(clerk_id: &str, to: &str, timestamp: i64) -> String {
    envelope(
        "email.created",
        json!({
            "object": "email",
            "id": "ema_e2eVerificationCode01",
            "slug": "verification_code",
            "from_email_name": "notifications",
            "to_email_address": to,
            "email_address_id": "idn_e2eEmailCreated01",
            "user_id": clerk_id,
            "subject": "123456 is your verification code",
            "body": "<p>123456</p>",
            "body_plain": "123456",
            "status": "queued",
            "delivered_by_clerk": true,
            "data": {"otp_code": "123456", "app": {"name": "e2e"}}
        }),
        timestamp,
    )
}

/// A `session.created` body for a user's new session, in today's webhook
/// shape (with the embedded `user`).
pub fn session_created(user: &ClerkUser, session_id: &str, timestamp: i64) -> String {
    session_with_user("session.created", user, session_id, timestamp)
}

/// A `session.*` body in today's webhook shape (with the embedded `user`),
/// the session last active at `timestamp`.
pub fn session_with_user(event_type: &str, user: &ClerkUser, session_id: &str, timestamp: i64) -> String {
    let status = match event_type.trim_start_matches("session.") {
        "created" => "active",
        other => other,
    };
    envelope(
        event_type,
        json!({
            "object": "session",
            "id": session_id,
            "client_id": "client_e2eSessionClient01",
            "user_id": user.id,
            "status": status,
            "actor": null,
            "last_active_organization_id": null,
            "latest_activity": {
                "id": "sess_activity_e2e01",
                "object": "session_activity",
                "device_type": "Macintosh",
                "is_mobile": false,
                "browser_name": "Firefox",
                "browser_version": "140.0",
                "ip_address": "192.0.2.10",
                "city": "Lisbon",
                "country": "PT"
            },
            "last_active_at": timestamp,
            "expire_at": timestamp + 7 * 86_400_000,
            "abandon_at": timestamp + 30 * 86_400_000,
            "created_at": timestamp,
            "updated_at": timestamp,
            "user": user.data()
        }),
        timestamp,
    )
}

/// A session event in the shape Clerk sent before its 2025-04-15 schema (and
/// its dashboard catalog still shows): no embedded `user`.
pub fn session_without_user(event_type: &str, clerk_id: &str, session_id: &str, timestamp: i64) -> String {
    envelope(
        event_type,
        json!({
            "object": "session",
            "id": session_id,
            "client_id": "client_e2eSessionClient01",
            "user_id": clerk_id,
            "status": event_type.trim_start_matches("session.").replace("created", "active"),
            "last_active_at": timestamp,
            "expire_at": timestamp + 7 * 86_400_000,
            "abandon_at": timestamp + 30 * 86_400_000,
            "created_at": timestamp,
            "updated_at": timestamp
        }),
        timestamp,
    )
}

/// The envelope every Clerk webhook has.
pub fn envelope(event_type: &str, data: Value, timestamp: i64) -> String {
    json!({
        "data": data,
        "event_attributes": {"http_request": {"client_ip": "192.0.2.10", "user_agent": "e2e-test/1.0"}},
        "instance_id": "ins_e2eTestInstance000000001",
        "object": "event",
        "timestamp": timestamp,
        "type": event_type
    })
    .to_string()
}
