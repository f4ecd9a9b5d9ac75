//! The handlers' half of authorization: which user a caller may touch. The
//! auth layer has already admitted the call by its method (scope or end-user
//! rule, `middleware::methods`); only a handler reads the request, so only a
//! handler can tell whose data it names.

use crate::{
    auth::{Principal, Scope, SignedInUser},
    domain::{
        error::{Error, Result},
        keys::CUSTOM_PREFIX,
        user::{Status, User, UserKey},
    },
    store::Store,
};

/// `ErrorInfo.reason` when a signed-in user names someone else's data.
pub const NOT_YOUR_DATA: &str = "NOT_YOUR_DATA";
/// `ErrorInfo.reason` when a signed-in user is deleted, banned or suspended
/// here (or not synced from Clerk yet).
pub const USER_NOT_ACTIVE: &str = "USER_NOT_ACTIVE";
/// `ErrorInfo.reason` when a service client lacks a scope a field needs.
pub const MISSING_SCOPE: &str = "MISSING_SCOPE";

/// Checks that the caller may act on `target`: anyone the auth layer let in
/// may, except a signed-in user, who may only act on their own, active user.
pub async fn authorize(store: &dyn Store, principal: &Principal, target: &UserKey) -> Result<()> {
    let Principal::User(user) = principal else {
        return Ok(());
    };
    // A Clerk id is compared without a database read.
    if let UserKey::ClerkId(clerk_id) = target
        && clerk_id != user.clerk_id()
    {
        return Err(not_yours());
    }
    let own = own_user(store, user).await?;
    match target {
        UserKey::Id(id) if *id != own.id => Err(not_yours()),
        _ => Ok(()),
    }
}

/// The signed-in user's own record, if they may use this service: a user
/// deleted, banned or suspended here is refused, and so is one not synced
/// from Clerk yet (nothing of theirs is here to reach).
pub async fn own_user(store: &dyn Store, user: &SignedInUser) -> Result<User> {
    match store.get_user(&UserKey::ClerkId(user.clerk_id().to_owned())).await {
        Ok(own) if own.status == Status::Active => Ok(own),
        Ok(own) => Err(Error::denied(USER_NOT_ACTIVE, format!("your account is {}", own.status.as_str()))),
        Err(Error::NotFound { .. }) => Err(Error::denied(
            USER_NOT_ACTIVE,
            "your user is not known here: deleted, or not yet synced from Clerk",
        )),
        Err(err) => Err(err),
    }
}

/// Checks that the caller may write `key` through the generic key/value
/// RPCs: a signed-in user only their `custom.*` keys.
pub fn authorize_key(principal: &Principal, key: &str) -> Result<()> {
    match principal {
        Principal::User(_) if !key.starts_with(CUSTOM_PREFIX) => Err(Error::denied(
            NOT_YOUR_DATA,
            format!("a signed-in user may only write their own {CUSTOM_PREFIX}* keys"),
        )),
        _ => Ok(()),
    }
}

/// Checks that the caller holds `scope`, for a part of a request (`what`)
/// that needs more than the method's scope.
pub fn require_scope(principal: &Principal, scope: Scope, what: &str) -> Result<()> {
    if principal.has_scope(scope) {
        Ok(())
    } else {
        Err(Error::denied(MISSING_SCOPE, format!("{what} needs the `{scope}` scope")))
    }
}

fn not_yours() -> Error {
    Error::denied(
        NOT_YOUR_DATA,
        "a signed-in user may only reach their own data; the request names another user",
    )
}
