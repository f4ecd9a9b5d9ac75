//! Svix, the webhook carrier Clerk uses: checking a delivery's signature
//! ([`verify`]) and signing like Svix does ([`sign`], for tests and
//! `gateway send`).

pub mod sign;
pub mod verify;

pub use sign::{new_msg_id, sign_headers};
pub use verify::{SVIX_ID, SVIX_SIGNATURE, SVIX_TIMESTAMP, Verifier, message_id};
