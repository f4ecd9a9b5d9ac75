//! End-to-end tests: the real gateway over HTTP in front of the real
//! user-service over gRPC, on a fresh PostgreSQL database and again on a
//! fresh SQLite file. Deliveries are signed exactly as Svix signs them; results
//! are read back from user-service over gRPC.
//!
//! Postgres comes from `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); the tests fail, not skip,
//! when it is unreachable.

mod clerk;
mod fake_clerk_api;
mod fixtures;
mod ordering;
mod other_events;
mod outage;
mod reconcile;
mod retries;
mod sessions;
mod support;
