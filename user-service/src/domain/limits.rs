//! Every size limit of the domain, in one place: what a field, a value or a
//! history may hold. They keep one client from filling the database and
//! keep error messages and logs small.

/// Longest accepted Clerk id. Clerk's own are about 32 characters.
pub const MAX_CLERK_ID_LEN: usize = 128;
/// Longest accepted email address (RFC 5321 path limit).
pub const MAX_EMAIL_LEN: usize = 320;
/// Longest accepted first name, last name or username.
pub const MAX_NAME_LEN: usize = 256;
/// Longest accepted image URL.
pub const MAX_URL_LEN: usize = 2048;

/// Most `custom.*` keys one user may have, so one client cannot fill the
/// database (with [`MAX_VALUE_BYTES`], at most 1.6 MiB of custom data per
/// user).
pub const MAX_CUSTOM_KEYS: u64 = 100;
/// Longest key.
pub const MAX_KEY_LEN: usize = 128;
/// Largest value, as compact JSON.
pub const MAX_VALUE_BYTES: usize = 16 * 1024;
/// Deepest nesting of a value.
pub const MAX_VALUE_DEPTH: usize = 32;

/// `name_history` keeps at most this many entries, dropping the oldest.
pub const NAME_HISTORY_LIMIT: usize = 100;
/// `login_history` keeps this many of the newest entries.
pub const LOGIN_HISTORY_LIMIT: usize = 50;
/// Longest device description in `login_history`.
pub const MAX_DEVICE_LEN: usize = 256;

/// Longest flag key.
pub const MAX_FLAG_KEY_LEN: usize = 64;
/// Most flags one user may have, and most keys one call may name.
pub const MAX_FLAGS: usize = 1000;
