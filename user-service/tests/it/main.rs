//! Integration tests: the real user-service over gRPC on a random port, each
//! test on a fresh PostgreSQL database and again on a fresh SQLite file.

mod apply_events;
mod browser;
mod changes;
mod clerk;
mod data;
mod end_user;
mod events;
mod hardening;
mod helpers;
mod hostile;
mod http2;
mod observability;
mod operations;
mod properties;
mod security;
mod session;
mod store_contract;
mod users;
