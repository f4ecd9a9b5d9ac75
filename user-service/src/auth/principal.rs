//! Who is calling: the one identity type every handler and the change log
//! read.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::{Client, Scope};
use crate::domain::error::Error;

/// The authenticated caller of a request. The auth layer puts exactly one in
/// the request's extensions before any handler runs
/// (`request.extensions().get::<Principal>()`, or [`Principal::of`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A service client with a token from the tokens file.
    Service(Client),
    /// A signed-in end user, by a verified Clerk session token.
    User(SignedInUser),
    /// Nobody in particular: authentication is off.
    Anonymous,
}

/// A signed-in end user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedInUser {
    clerk_id: Arc<str>,
    valid_until: Option<SystemTime>,
}

impl SignedInUser {
    /// The user with this Clerk id (the session token's `sub`, already
    /// checked to be a well-formed Clerk id).
    pub fn new(clerk_id: impl Into<Arc<str>>) -> Self {
        Self { clerk_id: clerk_id.into(), valid_until: None }
    }

    /// The same user, whose session token is accepted until `at` (its `exp`
    /// plus the tolerated clock skew).
    pub fn valid_until(self, at: SystemTime) -> Self {
        Self { valid_until: Some(at), ..self }
    }

    /// The user's Clerk id.
    pub fn clerk_id(&self) -> &str {
        &self.clerk_id
    }

    /// How long the session token stays accepted from now (zero once it is
    /// past); `None` for a token without an end.
    pub fn remaining(&self) -> Option<Duration> {
        let until = self.valid_until?;
        Some(until.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
    }
}

/// `Principal::actor` of a call made without authentication.
pub const ANONYMOUS_ACTOR: &str = "anonymous";
/// Prefix of `Principal::actor` for a signed-in user.
pub const USER_ACTOR_PREFIX: &str = "user:";

impl Principal {
    /// The principal the auth layer attached to `request`. A request that
    /// reached a handler without one bypassed the auth layer, which is a bug:
    /// it is refused rather than treated as anonymous.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<&Self, Error> {
        request.extensions().get::<Self>().ok_or_else(|| {
            Error::Internal("the call reached a handler without an authenticated caller".into())
        })
    }

    /// The name the change log and `name_history` record as the actor: the
    /// client's name for a service token, `user:<clerk_id>` for a session
    /// token, `anonymous` when authentication is off.
    pub fn actor(&self) -> String {
        match self {
            Self::Service(client) => client.name().to_owned(),
            Self::User(user) => format!("{USER_ACTOR_PREFIX}{}", user.clerk_id()),
            Self::Anonymous => ANONYMOUS_ACTOR.to_owned(),
        }
    }

    /// Whether the caller holds `scope`. Without authentication everyone
    /// holds every scope; a signed-in user holds none (their calls are
    /// governed by the end-user rules instead).
    pub fn has_scope(&self, scope: Scope) -> bool {
        match self {
            Self::Service(client) => client.scopes().contains(scope),
            Self::User(_) => false,
            Self::Anonymous => true,
        }
    }

    /// The signed-in user, if the caller is one.
    pub fn signed_in_user(&self) -> Option<&SignedInUser> {
        match self {
            Self::User(user) => Some(user),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Tokens;

    #[test]
    fn actors_name_the_client_the_user_or_anonymous() {
        let tokens = Tokens::parse("gateway read,write 0123456789abcdef-gateway").unwrap();
        let client = tokens.find(b"0123456789abcdef-gateway").unwrap().clone();
        assert_eq!(Principal::Service(client).actor(), "gateway");
        assert_eq!(Principal::User(SignedInUser::new("user_2abc")).actor(), "user:user_2abc");
        assert_eq!(Principal::Anonymous.actor(), "anonymous");
    }

    #[test]
    fn signed_in_users_hold_no_scope_and_anonymous_callers_hold_all() {
        let user = Principal::User(SignedInUser::new("user_2abc"));
        for scope in [Scope::Read, Scope::Write, Scope::Admin, Scope::Audit] {
            assert!(!user.has_scope(scope));
            assert!(Principal::Anonymous.has_scope(scope));
        }
    }
}
