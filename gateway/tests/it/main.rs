//! Integration tests: the real gateway over HTTP (or HTTPS) against a fake
//! user-service over gRPC, or a real one (`user_service::testing`) where the
//! behaviour depends on it, all on 127.0.0.1 with OS-chosen ports.

mod batching;
mod child;
mod cli;
mod descriptors;
mod forged;
mod forged_storm;
mod fuzz;
mod health;
mod hostile;
mod lifecycle;
mod metrics;
mod observability;
mod personal_data;
mod pki;
mod rate_limit;
mod replicas;
mod security;
mod support;
mod unknown_user;
mod upstream;
mod webhook;
