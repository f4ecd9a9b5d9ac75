//! Opaque, tamper-evident page tokens (AIP-158), one scheme for every list
//! RPC.
//!
//! A token holds the position after which the next page starts and a
//! checksum over the RPC's name, that position and the request's filters, so
//! a token cannot be edited, nor reused with other filters or another RPC,
//! without being rejected.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{
    domain::{change::Cursor, keys::DataKey},
    store::UserFilter,
};

const VERSION: u8 = 1;
const CHECKSUM_LEN: usize = 8;

fn checksum(rpc: &str, position: &[u8], filters: &[Option<&str>]) -> [u8; CHECKSUM_LEN] {
    let mut hash = Sha256::new();
    hash.update(rpc.as_bytes());
    hash.update([VERSION]);
    hash.update(position);
    // Length-prefix each part so different filters never hash alike.
    for part in filters {
        let part = part.unwrap_or("\u{0}");
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    let mut out = [0; CHECKSUM_LEN];
    out.copy_from_slice(&digest[..CHECKSUM_LEN]);
    out
}

fn seal(rpc: &str, position: &[u8], filters: &[Option<&str>]) -> String {
    let mut bytes = Vec::with_capacity(1 + position.len() + CHECKSUM_LEN);
    bytes.push(VERSION);
    bytes.extend_from_slice(position);
    bytes.extend_from_slice(&checksum(rpc, position, filters));
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The position of a token made by [`seal`] for the same RPC and filters.
fn open(rpc: &str, token: &str, filters: &[Option<&str>]) -> Result<Vec<u8>, String> {
    let bad = || format!("is not a page token from a previous {rpc} call with the same filters");
    let mut bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    if bytes.len() < 1 + CHECKSUM_LEN || bytes[0] != VERSION {
        return Err(bad());
    }
    let sum = bytes.split_off(bytes.len() - CHECKSUM_LEN);
    let position = bytes.split_off(1);
    if sum != checksum(rpc, &position, filters) {
        return Err(bad());
    }
    Ok(position)
}

/// A fixed-size position, as [`open`] read it.
fn fixed<const N: usize>(rpc: &str, position: Vec<u8>) -> Result<[u8; N], String> {
    position
        .try_into()
        .map_err(|_| format!("is not a page token from a previous {rpc} call with the same filters"))
}

fn user_filters(filter: &UserFilter) -> [Option<String>; 3] {
    [
        filter.status.map(|s| s.as_str().to_owned()),
        filter.role.map(|r| r.as_str().to_owned()),
        filter.email.as_deref().map(str::to_lowercase),
    ]
}

fn borrowed(parts: &[Option<String>]) -> Vec<Option<&str>> {
    parts.iter().map(Option::as_deref).collect()
}

/// Makes the `ListUsers` token that continues after `last`.
pub fn encode(last: Uuid, filter: &UserFilter) -> String {
    seal("ListUsers", last.as_bytes(), &borrowed(&user_filters(filter)))
}

/// Reads a `ListUsers` token made by [`encode`] for the same filters.
pub fn decode(token: &str, filter: &UserFilter) -> Result<Uuid, String> {
    let position = open("ListUsers", token, &borrowed(&user_filters(filter)))?;
    fixed::<16>("ListUsers", position).map(Uuid::from_bytes)
}

/// Makes the `ListChanges` token that continues after `last`; `filters`
/// are the request's filters as text.
pub fn encode_cursor(last: Cursor, filters: &[Option<&str>]) -> String {
    let mut position = [0; 16];
    position[..8].copy_from_slice(&last.txid.to_be_bytes());
    position[8..].copy_from_slice(&last.id.to_be_bytes());
    seal("ListChanges", &position, filters)
}

/// Reads a `ListChanges` token made by [`encode_cursor`] for the same filters.
pub fn decode_cursor(token: &str, filters: &[Option<&str>]) -> Result<Cursor, String> {
    let position = fixed::<16>("ListChanges", open("ListChanges", token, filters)?)?;
    let half = |range: std::ops::Range<usize>| {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&position[range]);
        i64::from_be_bytes(bytes)
    };
    Ok(Cursor { txid: half(0..8), id: half(8..16) })
}

/// Makes the `ListUserData` token that continues after the key `last`;
/// `filters` name the user as the request did.
pub fn encode_key(last: &DataKey, filters: &[Option<&str>]) -> String {
    seal("ListUserData", last.as_str().as_bytes(), filters)
}

/// Reads a `ListUserData` token made by [`encode_key`] for the same user.
pub fn decode_key(token: &str, filters: &[Option<&str>]) -> Result<DataKey, String> {
    let bad = || "is not a page token from a previous ListUserData call with the same filters".to_owned();
    let position = open("ListUserData", token, filters)?;
    String::from_utf8(position).ok().and_then(|key| DataKey::parse(&key).ok()).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::user::Status;

    #[test]
    fn a_token_round_trips_with_the_same_filters() {
        let id = Uuid::now_v7();
        let filter = UserFilter { email: Some("A@x.org".into()), ..Default::default() };
        assert_eq!(decode(&encode(id, &filter), &filter), Ok(id));
    }

    #[test]
    fn a_token_is_rejected_with_other_filters() {
        let id = Uuid::now_v7();
        let token = encode(id, &UserFilter::default());
        let other = UserFilter { status: Some(Status::Banned), ..Default::default() };
        assert!(decode(&token, &other).is_err());
    }

    #[test]
    fn an_edited_or_garbage_token_is_rejected() {
        let filter = UserFilter::default();
        let token = encode(Uuid::now_v7(), &filter);
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[5] ^= 1;
        assert!(decode(&URL_SAFE_NO_PAD.encode(bytes), &filter).is_err());
        for garbage in ["", "x", "!!!!", &"A".repeat(1000)] {
            assert!(decode(garbage, &filter).is_err());
        }
    }

    #[test]
    fn a_change_token_round_trips_and_is_bound_to_its_rpc_and_filters() {
        let cursor = Cursor { txid: 9_000_000_123, id: 77 };
        let filters = [Some("user_1"), None];
        let token = encode_cursor(cursor, &filters);
        assert_eq!(decode_cursor(&token, &filters), Ok(cursor));
        assert!(decode_cursor(&token, &[Some("user_2"), None]).is_err());
        // A ListUsers token is not a ListChanges token, even of the same size.
        let users = encode(Uuid::now_v7(), &UserFilter::default());
        assert!(decode_cursor(&users, &[None, None, None]).is_err());
    }

    #[test]
    fn a_data_token_round_trips_and_is_bound_to_its_user() {
        let key = DataKey::parse("custom.theme").unwrap();
        let token = encode_key(&key, &[Some(""), Some("user_1")]);
        assert_eq!(decode_key(&token, &[Some(""), Some("user_1")]), Ok(key));
        assert!(decode_key(&token, &[Some(""), Some("user_2")]).is_err());
        assert!(decode_key("Y3VzdG9tLnRoZW1l", &[Some(""), Some("user_1")]).is_err());
    }
}
