//! Domain types and rules, free of transport and SQL.

pub mod change;
pub mod data;
pub mod error;
pub mod keys;
pub mod limits;
pub mod time;
pub mod user;
pub mod validation;
pub mod write;
