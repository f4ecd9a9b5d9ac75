//! Every RPC this server knows, with who may call it: the scope a service
//! token needs, and what a signed-in user (Clerk session token) may do. The
//! auth layer, the handlers and the metrics labels all read these tables.

use crate::auth::Scope;

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token (health and reflection).
    Public,
    /// Clients whose token has this scope.
    Scope(Scope),
}

/// Services served without authentication.
const PUBLIC_SERVICES: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Our RPCs, as `(HTTP path, scope)`.
const RPCS: [(&str, Scope); 26] = {
    use Scope::{Admin, Audit, Read, Write};
    [
        ("/userdata.v1.UserService/CreateUser", Write),
        ("/userdata.v1.UserService/GetUser", Read),
        ("/userdata.v1.UserService/ListUsers", Read),
        ("/userdata.v1.UserService/UpdateUser", Write),
        ("/userdata.v1.UserService/DeleteUser", Write),
        ("/userdata.v1.UserDataService/GetPreferences", Read),
        ("/userdata.v1.UserDataService/UpdatePreferences", Write),
        ("/userdata.v1.UserDataService/ListFeatureFlags", Read),
        ("/userdata.v1.UserDataService/GetFeatureFlag", Read),
        ("/userdata.v1.UserDataService/UpdateFeatureFlags", Write),
        ("/userdata.v1.UserDataService/CheckFeatureFlagForUsers", Read),
        ("/userdata.v1.UserDataService/CheckFeatureFlags", Read),
        ("/userdata.v1.UserDataService/GetOnboarding", Read),
        ("/userdata.v1.UserDataService/AdvanceOnboarding", Write),
        ("/userdata.v1.UserDataService/ResetOnboarding", Admin),
        ("/userdata.v1.UserDataService/GetActivity", Read),
        ("/userdata.v1.UserDataService/RecordLogin", Write),
        ("/userdata.v1.UserDataService/RecordActivity", Write),
        ("/userdata.v1.UserDataService/GetUserHistory", Read),
        ("/userdata.v1.UserDataService/GetUserData", Read),
        ("/userdata.v1.UserDataService/ListUserData", Read),
        ("/userdata.v1.UserDataService/SetUserData", Write),
        ("/userdata.v1.UserDataService/DeleteUserData", Write),
        ("/userdata.v1.ChangeService/WatchChanges", Audit),
        ("/userdata.v1.ChangeService/ListChanges", Audit),
        ("/userdata.v1.EventService/ApplyEvents", Write),
    ]
};

/// What a signed-in user may do with an RPC. Every rule but `Denied` still
/// needs the handler to check the user the request names
/// (`grpc::access`), because only the handler reads the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserRule {
    /// On their own user only.
    Own,
    /// On their own user's `custom.*` keys only.
    OwnCustomKeys,
    /// Allowed, narrowed to their own user whatever the request names.
    ForcedOwn,
    /// Refused, for this reason.
    Denied(&'static str),
}

/// Reason given for methods the end-user table does not list.
const NOT_FOR_USERS: &str = "this method is not open to signed-in users";

/// What a signed-in user may do, per RPC: their own data, nothing else.
const USER_RULES: [(&str, UserRule); 26] = {
    use UserRule::{Denied, ForcedOwn, Own, OwnCustomKeys};
    [
        ("/userdata.v1.UserService/CreateUser", Denied("users are created from Clerk's webhooks")),
        ("/userdata.v1.UserService/GetUser", Own),
        ("/userdata.v1.UserService/ListUsers", Denied("listing users is for services")),
        (
            "/userdata.v1.UserService/UpdateUser",
            Denied("profiles change in Clerk; role and status are for administrators"),
        ),
        ("/userdata.v1.UserService/DeleteUser", Denied("users are deleted through Clerk")),
        ("/userdata.v1.UserDataService/GetPreferences", Own),
        ("/userdata.v1.UserDataService/UpdatePreferences", Own),
        ("/userdata.v1.UserDataService/ListFeatureFlags", Own),
        ("/userdata.v1.UserDataService/GetFeatureFlag", Own),
        (
            "/userdata.v1.UserDataService/UpdateFeatureFlags",
            Denied("feature flags are decided by the application"),
        ),
        (
            "/userdata.v1.UserDataService/CheckFeatureFlagForUsers",
            Denied("checks across users are for services"),
        ),
        ("/userdata.v1.UserDataService/CheckFeatureFlags", Own),
        ("/userdata.v1.UserDataService/GetOnboarding", Own),
        ("/userdata.v1.UserDataService/AdvanceOnboarding", Own),
        (
            "/userdata.v1.UserDataService/ResetOnboarding",
            Denied("resetting onboarding is for administrators"),
        ),
        ("/userdata.v1.UserDataService/GetActivity", Own),
        ("/userdata.v1.UserDataService/RecordLogin", Denied("logins are recorded from Clerk's events")),
        ("/userdata.v1.UserDataService/RecordActivity", Denied("activity is recorded by services")),
        ("/userdata.v1.UserDataService/GetUserHistory", Own),
        ("/userdata.v1.UserDataService/GetUserData", Own),
        ("/userdata.v1.UserDataService/ListUserData", Own),
        ("/userdata.v1.UserDataService/SetUserData", OwnCustomKeys),
        ("/userdata.v1.UserDataService/DeleteUserData", OwnCustomKeys),
        ("/userdata.v1.ChangeService/WatchChanges", ForcedOwn),
        (
            "/userdata.v1.ChangeService/ListChanges",
            Denied("the audit list is for services with the `audit` scope"),
        ),
        ("/userdata.v1.EventService/ApplyEvents", Denied("events come from Clerk's webhooks")),
    ]
};

/// Public RPCs that get their own metrics label.
const PUBLIC_RPCS: [&str; 4] = [
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// Label for every path not in the tables (bounds the metrics' cardinality).
pub const UNKNOWN_METHOD: &str = "unknown";

/// Who may call `path` (`/package.Service/Method`). Anything not known,
/// including new `userdata.v1` methods, needs `admin`: closed by default.
pub fn access(path: &str) -> Access {
    if PUBLIC_SERVICES.iter().any(|service| path.starts_with(service)) {
        return Access::Public;
    }
    RPCS.iter().find(|(rpc, _)| *rpc == path).map_or(Access::Scope(Scope::Admin), |(_, s)| Access::Scope(*s))
}

/// What a signed-in user may do with `path`; anything not in the table is
/// refused: closed by default.
pub fn user_rule(path: &str) -> UserRule {
    USER_RULES.iter().find(|(rpc, _)| *rpc == path).map_or(UserRule::Denied(NOT_FOR_USERS), |(_, rule)| *rule)
}

/// A bounded label for `path`: `package.Service/Method` for a known RPC,
/// [`UNKNOWN_METHOD`] otherwise.
pub fn label(path: &str) -> &'static str {
    RPCS.iter()
        .map(|(rpc, _)| *rpc)
        .chain(PUBLIC_RPCS)
        .find(|rpc| *rpc == path)
        .map_or(UNKNOWN_METHOD, |rpc| &rpc[1..])
}

/// Whether the call's work runs in its response stream (a batch streams each
/// write's result as it commits), so the concurrency limit and the call
/// timeout must cover the stream, not only the handler.
pub fn works_in_its_stream(path: &str) -> bool {
    path == "/userdata.v1.EventService/ApplyEvents"
}

/// Whether `path` is a health check (exempt from the concurrency limit, so
/// that an overloaded server is not also reported dead).
pub fn is_health(path: &str) -> bool {
    path.starts_with(PUBLIC_SERVICES[0])
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost_types::FileDescriptorSet;

    use super::*;

    /// Every `userdata.v1` RPC the protos declare.
    fn our_rpcs() -> Vec<String> {
        let set = FileDescriptorSet::decode(userdata_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut paths = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    paths.push(format!("/{}.{}/{}", file.package(), service.name(), method.name()));
                }
            }
        }
        paths.retain(|p| p.starts_with("/userdata.v1."));
        paths
    }

    #[test]
    fn every_rpc_in_the_protos_has_an_explicit_scope() {
        let ours = our_rpcs();
        assert_eq!(ours.len(), RPCS.len(), "{ours:?}");
        for path in ours {
            assert!(RPCS.iter().any(|(rpc, _)| *rpc == path), "{path} has no scope in the table");
        }
    }

    #[test]
    fn every_rpc_in_the_protos_has_an_end_user_rule() {
        let ours = our_rpcs();
        assert_eq!(ours.len(), USER_RULES.len(), "{ours:?}");
        for path in ours {
            assert!(USER_RULES.iter().any(|(rpc, _)| *rpc == path), "{path} has no end-user rule");
        }
    }

    #[test]
    fn signed_in_users_reach_their_own_data_and_nothing_else() {
        assert_eq!(user_rule("/userdata.v1.UserService/GetUser"), UserRule::Own);
        assert_eq!(user_rule("/userdata.v1.UserDataService/SetUserData"), UserRule::OwnCustomKeys);
        assert_eq!(user_rule("/userdata.v1.ChangeService/WatchChanges"), UserRule::ForcedOwn);
        for denied in [
            "/userdata.v1.UserService/ListUsers",
            "/userdata.v1.UserService/UpdateUser",
            "/userdata.v1.UserDataService/UpdateFeatureFlags",
            "/userdata.v1.UserDataService/ResetOnboarding",
            "/userdata.v1.ChangeService/ListChanges",
            "/userdata.v1.EventService/ApplyEvents",
            "/userdata.v1.UserService/DropAllUsers",
        ] {
            assert!(matches!(user_rule(denied), UserRule::Denied(_)), "{denied}");
        }
    }

    #[test]
    fn reads_writes_and_admin_calls_need_their_scope() {
        assert_eq!(access("/userdata.v1.UserService/GetUser"), Access::Scope(Scope::Read));
        assert_eq!(access("/userdata.v1.UserDataService/CheckFeatureFlags"), Access::Scope(Scope::Read));
        assert_eq!(access("/userdata.v1.UserDataService/SetUserData"), Access::Scope(Scope::Write));
        assert_eq!(access("/userdata.v1.UserDataService/ResetOnboarding"), Access::Scope(Scope::Admin));
    }

    #[test]
    fn unknown_methods_need_admin_and_health_and_reflection_are_public() {
        assert_eq!(access("/userdata.v1.UserService/DropAllUsers"), Access::Scope(Scope::Admin));
        assert_eq!(access("/other.Service/Method"), Access::Scope(Scope::Admin));
        assert_eq!(access("/grpc.health.v1.Health/Check"), Access::Public);
        assert_eq!(access("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"), Access::Public);
    }

    #[test]
    fn labels_are_known_names_or_unknown() {
        assert_eq!(label("/userdata.v1.UserService/GetUser"), "userdata.v1.UserService/GetUser");
        assert_eq!(label("/grpc.health.v1.Health/Check"), "grpc.health.v1.Health/Check");
        assert_eq!(label("/userdata.v1.UserService/Nope"), UNKNOWN_METHOD);
        assert_eq!(label("/x"), UNKNOWN_METHOD);
    }
}
