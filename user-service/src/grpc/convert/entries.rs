//! `UserDataService`'s generic key/value RPCs: entries in and out, keys the
//! generic RPCs may write, and `ListUserData` pages.

use serde_json::Value;
use userdata_proto::v1 as pb;

use super::{page_size, parse_expected_version, parse_user, timestamp};
use crate::{
    domain::{
        data::DataEntry,
        error::Result,
        keys::{DataKey, check_generic_write},
        user::{UserKey, etag_for},
        validation::Violations,
    },
    grpc::{json, page_token},
};

/// Default and largest `ListUserData` page.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

/// A stored entry as the generic RPCs send it.
pub fn entry_to_proto(e: &DataEntry) -> pb::UserDataEntry {
    pb::UserDataEntry {
        key: e.key.clone(),
        value: Some(json::from_json(&e.value)),
        etag: etag_for(e.version),
        update_time: Some(timestamp(e.updated_at)),
    }
}

/// A parsed `GetUserDataRequest`: the user and the key.
pub fn get_user_data(req: &pb::GetUserDataRequest) -> Result<(UserKey, DataKey)> {
    let mut v = Violations::default();
    let user = parse_user(&mut v, "user_id", &req.user_id, &req.clerk_id);
    let key = v.check("key", DataKey::parse(&req.key));
    v.finish_parsed(user.zip(key))
}

/// A parsed `ListUserDataRequest`.
#[derive(Debug)]
pub struct ListData {
    /// Whose entries.
    pub user: UserKey,
    /// Continue after this key.
    pub after: Option<DataKey>,
    /// Page size.
    pub page_size: u32,
}

/// The filters a `ListUserData` page token is bound to: the user, as the
/// request names it.
fn list_filters(req: &pb::ListUserDataRequest) -> [Option<&str>; 2] {
    [Some(req.user_id.as_str()), Some(req.clerk_id.as_str())]
}

/// Parses a `ListUserDataRequest`.
pub fn list_user_data(req: &pb::ListUserDataRequest) -> Result<ListData> {
    let mut v = Violations::default();
    let user = parse_user(&mut v, "user_id", &req.user_id, &req.clerk_id);
    let page_size = page_size(&mut v, req.page_size, DEFAULT_PAGE, MAX_PAGE);
    let after = match req.page_token.as_str() {
        "" => None,
        token => v.check("page_token", page_token::decode_key(token, &list_filters(req))),
    };
    let user = v.finish_parsed(user)?;
    Ok(ListData { user, after, page_size })
}

/// The answer to a `ListUserDataRequest` from one row more than the page
/// holds (that row tells whether another page exists).
pub fn list_user_data_response(
    req: &pb::ListUserDataRequest,
    page_size: u32,
    mut found: Vec<DataEntry>,
) -> pb::ListUserDataResponse {
    let next_page_token = if found.len() > page_size as usize {
        found.truncate(page_size as usize);
        found
            .last()
            .and_then(|e| DataKey::parse(&e.key).ok())
            .map(|key| page_token::encode_key(&key, &list_filters(req)))
            .unwrap_or_default()
    } else {
        String::new()
    };
    pb::ListUserDataResponse { entries: found.iter().map(entry_to_proto).collect(), next_page_token }
}

/// A parsed `SetUserDataRequest`: the user, a key the generic RPCs may
/// write, the value and the etag's version.
pub fn set_user_data(req: &pb::SetUserDataRequest) -> Result<(UserKey, DataKey, Value, Option<i64>)> {
    let mut v = Violations::default();
    let user = parse_user(&mut v, "user_id", &req.user_id, &req.clerk_id);
    let key = writable_key(&mut v, &req.key);
    let value = match &req.value {
        None => {
            v.add("value", "is required");
            None
        }
        Some(value) => v.check("value", json::to_json(value)),
    };
    let expected = parse_expected_version(&mut v, &req.etag);
    let ((user, key), value) = v.finish_parsed(user.zip(key).zip(value))?;
    Ok((user, key, value, expected))
}

/// A parsed `DeleteUserDataRequest`: the user, a key the generic RPCs may
/// write and the etag's version.
pub fn delete_user_data(req: &pb::DeleteUserDataRequest) -> Result<(UserKey, DataKey, Option<i64>)> {
    let mut v = Violations::default();
    let user = parse_user(&mut v, "user_id", &req.user_id, &req.clerk_id);
    let key = writable_key(&mut v, &req.key);
    let expected = parse_expected_version(&mut v, &req.etag);
    let (user, key) = v.finish_parsed(user.zip(key))?;
    Ok((user, key, expected))
}

/// A key the generic RPCs may write: not one the service keeps itself.
fn writable_key(v: &mut Violations, key: &str) -> Option<DataKey> {
    v.check("key", DataKey::parse(key).and_then(|key| check_generic_write(&key).map(|()| key)))
}
