//! Domain types and rules, free of transport and SQL.
//!
//! - [`user`], [`data`]: the resources and the rules of their fields and
//!   values; [`keys`] names the documented `user_data` keys and parses a
//!   [`keys::DataKey`]; [`limits`] holds every size limit; [`time`] the
//!   stored time format.
//! - [`write`]: user write commands and the plan that decides each one.
//! - [`change`]: the change log's entries, cursors and filters.
//! - [`validation`] gathers every bad field of a request; [`error`] is the
//!   one error type, mapped to gRPC in `grpc::status`.

pub mod change;
pub mod data;
pub mod error;
pub mod keys;
pub mod limits;
pub mod time;
pub mod user;
pub mod validation;
pub mod write;
