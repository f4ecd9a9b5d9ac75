//! User writes: the commands ([`command`]) and the rules that turn one into
//! the changes a store makes ([`plan`]).

mod command;
mod plan;
#[cfg(test)]
mod tests;

pub use self::{
    command::{CreateUser, DeleteUser, EventContext, Outcome, UpdateUser, UserPatch, WriteResult},
    plan::{Change, Existing, Plan, plan_create, plan_delete, plan_update},
};
