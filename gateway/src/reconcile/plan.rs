//! Deciding, user by user, what a reconcile must write: pure functions over
//! the local snapshot and Clerk's users, so every rule is testable without
//! a network.
//!
//! - A Clerk user missing locally is created.
//! - One whose Clerk-owned fields differ is updated; user-service then keeps
//!   whichever side is newer (Clerk's `updated_at` against what it stored),
//!   so newer local state is left alone and a deleted user stays deleted.
//! - One whose fields are equal is left alone: no write at all, so a second
//!   run changes nothing.
//! - A local user Clerk does not list is missing; it is deleted only with
//!   `--delete-missing`, and only within `--max-deletes`.
//!
//! user-service lists neither its tombstones nor the Clerk time of the copy
//! it holds, so two cases are planned as writes on every run although a run
//! leaves them alone: a user deleted here is planned as a create, and one
//! whose local copy is newer but differs as an update. user-service answers
//! them (with a replay after the first run) and the report counts them as
//! "kept deleted" and "stale", in sync; a dry run, which writes nothing,
//! cannot tell them apart and counts them as creates and updates.

use std::collections::HashSet;

use crate::{
    clerk::{Profile, UserJson},
    reconcile::{local::LocalUsers, options::DeleteMissing},
};

/// The profile fields compared, by name (as in the update mask).
pub const FIELDS: [&str; 5] = ["email", "first_name", "last_name", "username", "image_url"];

/// A write the plan asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// The user is not in user-service.
    Create(UserJson),
    /// These fields differ from user-service's.
    Update {
        /// Clerk's user.
        user: UserJson,
        /// Names of the differing fields (never their values).
        fields: Vec<&'static str>,
    },
}

impl Write {
    /// The Clerk user written.
    pub fn user(&self) -> &UserJson {
        match self {
            Self::Create(user) | Self::Update { user, .. } => user,
        }
    }
}

/// Names of the fields whose values differ.
pub fn differing_fields(clerk: &Profile, local: &Profile) -> Vec<&'static str> {
    let pairs = [
        (&clerk.email, &local.email),
        (&clerk.first_name, &local.first_name),
        (&clerk.last_name, &local.last_name),
        (&clerk.username, &local.username),
        (&clerk.image_url, &local.image_url),
    ];
    FIELDS.iter().zip(pairs).filter(|(_, (a, b))| a != b).map(|(name, _)| *name).collect()
}

/// What to do about one Clerk user given its local profile, if any; `None`
/// when they already agree.
pub fn decide(clerk: &UserJson, local: Option<&Profile>) -> Option<Write> {
    let Some(local) = local else {
        return Some(Write::Create(clerk.clone()));
    };
    let fields = differing_fields(&clerk.profile(), local);
    (!fields.is_empty()).then(|| Write::Update { user: clerk.clone(), fields })
}

/// Builds the plan page by page.
#[derive(Debug)]
pub struct Planner {
    local: LocalUsers,
    local_count: usize,
    seen: HashSet<String>,
    plan: Plan,
}

/// What a run will do.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Users listed by Clerk.
    pub listed: u64,
    /// Users in user-service when the run began.
    pub local: u64,
    /// Creates and updates, in Clerk's order.
    pub writes: Vec<Write>,
    /// Clerk users already equal locally.
    pub unchanged: u64,
    /// Clerk ids of local users Clerk does not list, sorted.
    pub missing: Vec<String>,
}

impl Plan {
    /// How many creates the plan holds.
    pub fn creates(&self) -> usize {
        self.writes.iter().filter(|w| matches!(w, Write::Create(_))).count()
    }

    /// How many updates the plan holds.
    pub fn updates(&self) -> usize {
        self.writes.len() - self.creates()
    }

    /// Whether `policy` lets this plan's deletions go ahead: `Err` with the
    /// count when more than `--max-deletes` users would go without `--force`.
    pub fn check_deletes(&self, policy: DeleteMissing) -> Result<(), DeletesRefused> {
        match policy {
            DeleteMissing::On { max, force: false } if self.missing.len() > max => {
                Err(DeletesRefused { count: self.missing.len(), max })
            }
            DeleteMissing::Off | DeleteMissing::On { .. } => Ok(()),
        }
    }
}

/// More deletions than `--max-deletes` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "refusing to delete {count} local users that Clerk does not list (more than --max-deletes {max}); nothing was \
     written. Check that --clerk-api-url and CLERK_SECRET_KEY name the right instance, then rerun with --force or \
     a higher --max-deletes"
)]
pub struct DeletesRefused {
    /// Users that would be deleted.
    pub count: usize,
    /// `--max-deletes`.
    pub max: usize,
}

impl Planner {
    /// Starts from the local snapshot.
    pub fn new(local: LocalUsers) -> Self {
        let local_count = local.len();
        Self { local, local_count, seen: HashSet::new(), plan: Plan::default() }
    }

    /// Takes one page of Clerk users. A user listed twice (an offset that
    /// shifted) counts once.
    pub fn add(&mut self, users: Vec<UserJson>) {
        for user in users {
            if !self.seen.insert(user.id.clone()) {
                continue;
            }
            self.plan.listed += 1;
            let local = self.local.remove(&user.id);
            match decide(&user, local.as_ref()) {
                Some(write) => self.plan.writes.push(write),
                None => self.plan.unchanged += 1,
            }
        }
    }

    /// The plan; whatever local user Clerk did not list is missing.
    pub fn finish(self) -> Plan {
        let mut plan = self.plan;
        plan.local = self.local_count as u64;
        plan.missing = self.local.into_keys().collect();
        plan.missing.sort();
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clerk::EmailAddressJson;

    fn clerk_user(id: &str, first: Option<&str>, email: Option<&str>) -> UserJson {
        UserJson {
            id: id.into(),
            email_addresses: email
                .map(|e| vec![EmailAddressJson { id: Some("idn_1".into()), email_address: Some(e.into()) }]),
            primary_email_address_id: email.map(|_| "idn_1".into()),
            first_name: first.map(str::to_owned),
            updated_at: Some(1_760_000_000_000),
            ..UserJson::default()
        }
    }

    fn local(users: &[UserJson]) -> LocalUsers {
        users.iter().map(|u| (u.id.clone(), u.profile())).collect()
    }

    #[test]
    fn a_missing_user_is_created_and_an_equal_one_left_alone() {
        let ada = clerk_user("user_ada", Some("Ada"), Some("ada@example.test"));
        assert_eq!(decide(&ada, None), Some(Write::Create(ada.clone())));
        assert_eq!(decide(&ada, Some(&ada.profile())), None);
    }

    #[test]
    fn an_update_names_the_differing_fields_only() {
        let stored = clerk_user("user_ada", Some("Ada"), Some("ada@example.test")).profile();
        let renamed = clerk_user("user_ada", Some("Augusta"), Some("ada@example.test"));
        assert_eq!(
            decide(&renamed, Some(&stored)),
            Some(Write::Update { user: renamed.clone(), fields: vec!["first_name"] })
        );
        let no_email = clerk_user("user_ada", Some("Ada"), None);
        let Some(Write::Update { fields, .. }) = decide(&no_email, Some(&stored)) else {
            panic!("a cleared email is a difference");
        };
        assert_eq!(fields, ["email"]);
    }

    #[test]
    fn blank_names_in_clerk_equal_absent_names_here() {
        let mut blank = clerk_user("user_blank", Some("  "), None);
        blank.last_name = Some(String::new());
        let stored = Profile { clerk_id: "user_blank".into(), ..Profile::default() };
        assert_eq!(decide(&blank, Some(&stored)), None);
    }

    #[test]
    fn the_planner_counts_and_finds_the_missing() {
        let a = clerk_user("user_a", Some("A"), None);
        let b = clerk_user("user_b", Some("B"), None);
        let gone = clerk_user("user_gone", None, None);
        let mut planner = Planner::new(local(&[a.clone(), gone]));
        let b_renamed = clerk_user("user_b", Some("B2"), None);
        planner.add(vec![a.clone(), b.clone()]);
        planner.add(vec![b_renamed]);
        let plan = planner.finish();
        assert_eq!((plan.listed, plan.local, plan.unchanged), (2, 2, 1));
        assert_eq!(plan.writes, [Write::Create(b)]);
        assert_eq!(plan.missing, ["user_gone"]);
    }

    #[test]
    fn deletes_beyond_the_limit_are_refused_unless_forced() {
        let plan =
            Plan { missing: vec!["user_1".into(), "user_2".into(), "user_3".into()], ..Plan::default() };
        assert_eq!(plan.check_deletes(DeleteMissing::Off), Ok(()));
        assert_eq!(plan.check_deletes(DeleteMissing::On { max: 3, force: false }), Ok(()));
        assert_eq!(
            plan.check_deletes(DeleteMissing::On { max: 2, force: false }),
            Err(DeletesRefused { count: 3, max: 2 })
        );
        assert_eq!(plan.check_deletes(DeleteMissing::On { max: 0, force: true }), Ok(()));
    }
}
