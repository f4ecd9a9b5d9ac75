//! Domain types and rules, free of transport and SQL.

pub mod user;
pub mod validation;
pub mod write;
