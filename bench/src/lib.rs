//! Shared parts of the project's load tools: Clerk-shaped events, a
//! fixed-concurrency load runner, database seeding, and running the release
//! binaries as child processes.

pub mod events;
pub mod follow;
pub mod load;
pub mod scenarios;
pub mod seed;
pub mod services;
pub mod storm;
