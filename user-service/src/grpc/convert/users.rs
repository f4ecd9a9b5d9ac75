//! `UserService` messages ⇄ user commands and users.

use prost_types::FieldMask;
use userdata_proto::v1 as pb;

use super::{outcome_to_proto, page_size, parse_event, parse_expected_version, parse_user, timestamp};
use crate::{
    domain::{
        change::Actor,
        error::{Error, Result},
        limits::MAX_EMAIL_LEN,
        user::{
            ClerkId, Email, Profile, Role, SignupSource, Status, User, UserKey, parse_image_url, parse_name,
            parse_user_id,
        },
        validation::{Violations, no_control_chars},
        write::{CreateUser, DeleteUser, UpdateUser, UserPatch, WriteResult},
    },
    store::UserFilter,
};

impl From<User> for pb::User {
    fn from(u: User) -> Self {
        Self {
            etag: u.etag(),
            id: u.id.to_string(),
            clerk_id: u.clerk_id,
            email: u.profile.email,
            first_name: u.profile.first_name,
            last_name: u.profile.last_name,
            username: u.profile.username,
            image_url: u.profile.image_url,
            role: role_to_proto(u.role) as i32,
            status: status_to_proto(u.status) as i32,
            created_at: Some(timestamp(u.created_at)),
            updated_at: Some(timestamp(u.updated_at)),
        }
    }
}

fn role_to_proto(role: Role) -> pb::UserRole {
    match role {
        Role::User => pb::UserRole::User,
        Role::Admin => pb::UserRole::Admin,
    }
}

fn status_to_proto(status: Status) -> pb::UserStatus {
    match status {
        Status::Active => pb::UserStatus::Active,
        Status::Suspended => pb::UserStatus::Suspended,
        Status::Banned => pb::UserStatus::Banned,
    }
}

/// Parses an enum field: `Ok(None)` for UNSPECIFIED.
fn role_from_proto(value: i32) -> Result<Option<Role>, String> {
    match pb::UserRole::try_from(value) {
        Ok(pb::UserRole::Unspecified) => Ok(None),
        Ok(pb::UserRole::User) => Ok(Some(Role::User)),
        Ok(pb::UserRole::Admin) => Ok(Some(Role::Admin)),
        Err(_) => Err(format!("unknown UserRole value {value}")),
    }
}

fn status_from_proto(value: i32) -> Result<Option<Status>, String> {
    match pb::UserStatus::try_from(value) {
        Ok(pb::UserStatus::Unspecified) => Ok(None),
        Ok(pb::UserStatus::Active) => Ok(Some(Status::Active)),
        Ok(pb::UserStatus::Suspended) => Ok(Some(Status::Suspended)),
        Ok(pb::UserStatus::Banned) => Ok(Some(Status::Banned)),
        Err(_) => Err(format!("unknown UserStatus value {value}")),
    }
}

/// Parses the optional profile fields of a `User` message under `prefix`.
fn parse_optional(
    v: &mut Violations,
    field: &str,
    value: Option<&String>,
    parse: fn(&str) -> Result<String, String>,
) -> Option<String> {
    value.and_then(|s| v.check(field, parse(s)))
}

fn parse_profile(v: &mut Violations, u: &pb::User) -> Profile {
    Profile {
        email: parse_optional(v, "user.email", u.email.as_ref(), |e| Email::parse(e).map(Email::into_inner)),
        first_name: parse_optional(v, "user.first_name", u.first_name.as_ref(), parse_name),
        last_name: parse_optional(v, "user.last_name", u.last_name.as_ref(), parse_name),
        username: parse_optional(v, "user.username", u.username.as_ref(), parse_name),
        image_url: parse_optional(v, "user.image_url", u.image_url.as_ref(), parse_image_url),
    }
}

/// Parses and validates a `CreateUserRequest` made by `actor`.
pub fn create_user(req: pb::CreateUserRequest, actor: Actor) -> Result<CreateUser> {
    let Some(u) = req.user.as_ref() else {
        return Err(Error::invalid("user", "is required"));
    };
    let mut v = Violations::default();
    let clerk_id = v.check("user.clerk_id", ClerkId::parse(&u.clerk_id));
    let profile = parse_profile(&mut v, u);
    let role = v.check("user.role", role_from_proto(u.role));
    let status = v.check("user.status", status_from_proto(u.status));
    let event = parse_event(&mut v, req.event_context.as_ref(), &actor, "CreateUser");
    let signup_source = match pb::SignupSource::try_from(req.signup_source) {
        Ok(pb::SignupSource::Unspecified) if req.event_context.is_some() => Some(SignupSource::Clerk),
        Ok(pb::SignupSource::Unspecified | pb::SignupSource::Admin) => Some(SignupSource::Admin),
        Ok(pb::SignupSource::Clerk) => Some(SignupSource::Clerk),
        Ok(pb::SignupSource::Invite) => Some(SignupSource::Invite),
        Err(_) => {
            v.add("signup_source", format!("unknown SignupSource value {}", req.signup_source));
            None
        }
    };
    if req.event_context.is_some() && (role.flatten().is_some() || status.flatten().is_some()) {
        v.add("user.role", "role and status belong to this application and cannot come from an event");
    }
    let clerk_id = v.finish_parsed(clerk_id)?;
    Ok(CreateUser {
        clerk_id,
        profile,
        role: role.flatten().unwrap_or_default(),
        status: status.flatten().unwrap_or_default(),
        signup_source: signup_source.unwrap_or(SignupSource::Admin),
        actor: actor.with_event(event.as_ref()),
        event,
    })
}

/// Parses a `GetUserRequest`.
pub fn get_user(req: &pb::GetUserRequest) -> Result<UserKey> {
    super::only_user("id", &req.id, &req.clerk_id)
}

/// Default and maximum `ListUsers` page sizes.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Larger page sizes are coerced to this (AIP-158).
pub const MAX_PAGE_SIZE: u32 = 1000;

/// A parsed `ListUsersRequest`.
#[derive(Debug)]
pub struct ListUsers {
    /// Filters.
    pub filter: UserFilter,
    /// Continue after this id.
    pub after: Option<uuid::Uuid>,
    /// Page size.
    pub page_size: u32,
}

/// Parses a `ListUsersRequest`.
pub fn list_users(req: &pb::ListUsersRequest) -> Result<ListUsers> {
    let mut v = Violations::default();
    let page_size = page_size(&mut v, req.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE);
    let status = v.check("status", status_from_proto(req.status)).flatten();
    let role = v.check("role", role_from_proto(req.role)).flatten();
    let email = if req.email.is_empty() {
        None
    } else {
        v.check(
            "email",
            no_control_chars(&req.email).and_then(|()| {
                if req.email.len() > MAX_EMAIL_LEN {
                    Err("is too long".into())
                } else {
                    Ok(req.email.clone())
                }
            }),
        )
    };
    let filter = UserFilter { status, role, email };
    let after = if req.page_token.is_empty() {
        None
    } else {
        v.check("page_token", crate::grpc::page_token::decode(&req.page_token, &filter))
    };
    v.finish(|| ListUsers { filter, after, page_size })
}

const PROFILE_PATHS: [&str; 5] = ["email", "first_name", "last_name", "username", "image_url"];

/// Parses and validates an `UpdateUserRequest` made by `actor` (the
/// authenticated caller).
pub fn update_user(req: pb::UpdateUserRequest, actor: Actor) -> Result<UpdateUser> {
    let Some(u) = req.user.as_ref() else {
        return Err(Error::invalid("user", "is required"));
    };
    let mut v = Violations::default();
    let event = parse_event(&mut v, req.event_context.as_ref(), &actor, "UpdateUser");
    let key = if req.event_context.is_some() {
        if u.clerk_id.is_empty() {
            v.add("user.clerk_id", "is required with an event context");
            None
        } else {
            v.check("user.clerk_id", ClerkId::parse(&u.clerk_id)).map(UserKey::from)
        }
    } else if u.id.is_empty() {
        if u.clerk_id.is_empty() {
            v.add("user.id", "one of user.id or user.clerk_id is required");
            None
        } else {
            v.check("user.clerk_id", ClerkId::parse(&u.clerk_id)).map(UserKey::from)
        }
    } else {
        v.check("user.id", parse_user_id(&u.id)).map(UserKey::Id)
    };
    let profile = parse_profile(&mut v, u);
    let role = v.check("user.role", role_from_proto(u.role)).flatten();
    let status = v.check("user.status", status_from_proto(u.status)).flatten();

    let paths = mask_paths(&mut v, req.update_mask.as_ref(), u);
    let mut patch = UserPatch::default();
    for path in &paths {
        match path.as_str() {
            "email" => patch.email = Some(profile.email.clone()),
            "first_name" => patch.first_name = Some(profile.first_name.clone()),
            "last_name" => patch.last_name = Some(profile.last_name.clone()),
            "username" => patch.username = Some(profile.username.clone()),
            "image_url" => patch.image_url = Some(profile.image_url.clone()),
            "role" | "status" if req.event_context.is_some() => v.add(
                format!("update_mask.paths[{path}]"),
                "role and status belong to this application and cannot be set by an event",
            ),
            "role" => match role {
                Some(r) => patch.role = Some(r),
                None => v.add("user.role", "must be set when update_mask names it"),
            },
            "status" => match status {
                Some(s) => patch.status = Some(s),
                None => v.add("user.status", "must be set when update_mask names it"),
            },
            other => v.add("update_mask", format!("unknown or read-only field {other:?}")),
        }
    }
    let changed_by =
        if req.changed_by.is_empty() { None } else { v.check("changed_by", ClerkId::parse(&req.changed_by)) };
    let expected_version = parse_expected_version(&mut v, &req.etag);
    let key = v.finish_parsed(key)?;
    let actor = actor.with_event(event.as_ref()).claiming(changed_by.clone().map(ClerkId::into_inner));
    Ok(UpdateUser { key, patch, expected_version, changed_by, event, actor })
}

/// The fields an update touches: the mask's paths, `*` for all, or (AIP-134)
/// every populated field when the mask is absent.
fn mask_paths(v: &mut Violations, mask: Option<&FieldMask>, u: &pb::User) -> Vec<String> {
    match mask {
        Some(mask) if !mask.paths.is_empty() => {
            if mask.paths.iter().any(|p| p == "*") {
                if mask.paths.len() > 1 {
                    v.add("update_mask", "\"*\" must be the only path");
                }
                return PROFILE_PATHS.iter().chain(&["role", "status"]).map(|s| (*s).to_owned()).collect();
            }
            let mut paths = mask.paths.clone();
            paths.sort();
            paths.dedup();
            paths
        }
        _ => {
            let set = [
                u.email.is_some(),
                u.first_name.is_some(),
                u.last_name.is_some(),
                u.username.is_some(),
                u.image_url.is_some(),
                u.role != 0,
                u.status != 0,
            ];
            PROFILE_PATHS
                .iter()
                .chain(&["role", "status"])
                .zip(set)
                .filter(|(_, set)| *set)
                .map(|(p, _)| (*p).to_owned())
                .collect()
        }
    }
}

/// Parses a `DeleteUserRequest`.
pub fn delete_user(req: &pb::DeleteUserRequest, actor: Actor) -> Result<DeleteUser> {
    let mut v = Violations::default();
    let key = parse_user(&mut v, "id", &req.id, &req.clerk_id);
    let event = parse_event(&mut v, req.event_context.as_ref(), &actor, "DeleteUser");
    if event.is_some() && !matches!(key, Some(UserKey::ClerkId(_))) && !req.id.is_empty() {
        v.add("clerk_id", "is required with an event context");
    }
    let expected_version = parse_expected_version(&mut v, &req.etag);
    let key = v.finish_parsed(key)?;
    Ok(DeleteUser { key, expected_version, actor: actor.with_event(event.as_ref()), event })
}

/// Builds a `CreateUserResponse`.
pub fn create_response(r: WriteResult) -> pb::CreateUserResponse {
    pb::CreateUserResponse {
        outcome: outcome_to_proto(r.outcome) as i32,
        user: r.user.map(Into::into),
        replayed: r.replayed,
    }
}

/// Builds an `UpdateUserResponse`.
pub fn update_response(r: WriteResult) -> pb::UpdateUserResponse {
    pb::UpdateUserResponse {
        outcome: outcome_to_proto(r.outcome) as i32,
        user: r.user.map(Into::into),
        replayed: r.replayed,
    }
}

/// Builds a `DeleteUserResponse`.
pub fn delete_response(r: WriteResult) -> pb::DeleteUserResponse {
    pb::DeleteUserResponse { outcome: outcome_to_proto(r.outcome) as i32, replayed: r.replayed }
}
