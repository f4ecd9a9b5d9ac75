//! The documented `user_data` keys (the original plan's `UserDataValues`)
//! and the namespace callers may use freely. One list, shared by the user
//! writes, the typed data rules and the generic key/value RPCs.

/// ISO-8601 time the user was created here.
pub const SIGNUP_DATE: &str = "signup_date";
/// `clerk`, `invite` or `admin`.
pub const SIGNUP_SOURCE: &str = "signup_source";
/// ISO-8601 time of the last write driven by a Clerk event.
pub const LAST_CLERK_SYNC: &str = "last_clerk_sync";
/// Array of `{first_name, last_name, timestamp, changed_by?, claimed_by?}`.
pub const NAME_HISTORY: &str = "name_history";
/// `{theme, notifications, language, timezone}`.
pub const PREFERENCES: &str = "preferences";
/// `{flag_key: bool}`.
pub const FEATURE_FLAGS: &str = "feature_flags";
/// `{step, completed, started_at, completed_at?}`.
pub const ONBOARDING_STATUS: &str = "onboarding_status";
/// Number of sessions.
pub const SESSION_COUNT: &str = "session_count";
/// ISO-8601 time of the latest activity.
pub const LAST_ACTIVE: &str = "last_active";
/// Array of `{timestamp, device?, ip?, success}`, newest first.
pub const LOGIN_HISTORY: &str = "login_history";

/// Prefix of keys that callers may define freely.
pub const CUSTOM_PREFIX: &str = "custom.";
/// Every documented key, in the original plan's order.
pub const DOCUMENTED_KEYS: [&str; 10] = [
    PREFERENCES,
    FEATURE_FLAGS,
    ONBOARDING_STATUS,
    SESSION_COUNT,
    LAST_ACTIVE,
    LOGIN_HISTORY,
    NAME_HISTORY,
    LAST_CLERK_SYNC,
    SIGNUP_DATE,
    SIGNUP_SOURCE,
];

/// Documented keys the service keeps itself. The generic key/value RPCs
/// refuse to write them; each has its own RPC.
pub const SYSTEM_KEYS: [(&str, &str); 7] = [
    (SESSION_COUNT, "RecordLogin"),
    (LAST_ACTIVE, "RecordLogin or RecordActivity"),
    (LOGIN_HISTORY, "RecordLogin"),
    (NAME_HISTORY, "UpdateUser"),
    (LAST_CLERK_SYNC, "the Clerk webhooks (CreateUser or UpdateUser with an event context)"),
    (SIGNUP_DATE, "CreateUser"),
    (SIGNUP_SOURCE, "CreateUser"),
];
