//! user-service: a gRPC service that owns the `users` and `user_data` tables,
//! on PostgreSQL or an embedded SQLite file.
//!
//! Layers: [`grpc`] (transport) → [`domain`] (validation and rules) →
//! [`store`] (SQL). Errors are one [`domain::error::Error`] enum, mapped to gRPC codes
//! in one place.

pub mod app;
pub mod auth;
pub mod config;
pub mod domain;
pub mod feed;
pub mod grpc;
pub mod metrics;
pub mod middleware;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
