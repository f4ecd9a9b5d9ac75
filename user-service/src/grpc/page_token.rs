//! Opaque, tamper-evident page tokens for `ListUsers` (AIP-158).
//!
//! A token holds the id of the last user returned and a checksum over that id
//! and the request's filters, so a token cannot be edited or reused with other
//! filters without being rejected.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::store::UserFilter;

const VERSION: u8 = 1;
const LEN: usize = 1 + 16 + 8;

fn checksum(id: &Uuid, filter: &UserFilter) -> [u8; 8] {
    let mut hash = Sha256::new();
    hash.update(b"userdata.v1.ListUsers");
    hash.update([VERSION]);
    hash.update(id.as_bytes());
    let email = filter.email.as_deref().map(str::to_lowercase);
    // Length-prefix each part so different filters never hash alike.
    for part in [filter.status.map(|s| s.as_str()), filter.role.map(|r| r.as_str()), email.as_deref()] {
        let part = part.unwrap_or("\u{0}");
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    let mut out = [0; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// Makes the token that continues after `last`.
pub fn encode(last: Uuid, filter: &UserFilter) -> String {
    let mut bytes = Vec::with_capacity(LEN);
    bytes.push(VERSION);
    bytes.extend_from_slice(last.as_bytes());
    bytes.extend_from_slice(&checksum(&last, filter));
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Reads a token made by [`encode`] for the same filters.
pub fn decode(token: &str, filter: &UserFilter) -> Result<Uuid, String> {
    const BAD: &str = "is not a page token from a previous ListUsers call with the same filters";
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| BAD.to_string())?;
    if bytes.len() != LEN || bytes[0] != VERSION {
        return Err(BAD.into());
    }
    let id = Uuid::from_slice(&bytes[1..17]).map_err(|_| BAD.to_string())?;
    if bytes[17..] != checksum(&id, filter) {
        return Err(BAD.into());
    }
    Ok(id)
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
}
