//! The events of a storm and the state they should leave behind.
//!
//! Every user gets a `user.created` (version 1), `updates` `user.updated`
//! events (versions 2, 3, …, each with a new first name and a newer
//! `updated_at`), `sessions` `session.created` events (each counts one login)
//! and, for some users, a final `user.deleted`. Because every version has a
//! distinct first name, the stored user says which version won, and every
//! applied update adds exactly one `name_history` entry; because every login
//! counts once, `session_count` shows a login lost or counted twice.

use crate::{events, storm::rng::Rng};

/// What a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `user.created` (profile version 1).
    Created,
    /// `user.updated` with profile version `n` (2, 3, …).
    Updated(u32),
    /// `user.deleted`.
    Deleted,
    /// `session.created` number `n` of the user.
    Session(u32),
}

impl Kind {
    /// The profile version a user event carries (`None` for other kinds).
    pub fn version(self) -> Option<u32> {
        match self {
            Self::Created => Some(1),
            Self::Updated(v) => Some(v),
            Self::Deleted | Self::Session(_) => None,
        }
    }
}

/// One Svix message: its id stays the same on every retry.
#[derive(Debug, Clone)]
pub struct Message {
    /// `svix-id`.
    pub id: String,
    /// Index into [`Plan::users`].
    pub user: usize,
    /// What it is.
    pub kind: Kind,
    /// The exact JSON body (signed anew for each attempt).
    pub body: Vec<u8>,
}

/// One user of the storm.
#[derive(Debug, Clone)]
pub struct UserPlan {
    /// Its Clerk id, unique to this run.
    pub clerk_id: String,
    /// The number used in its names and email (see [`expected_first_name`]).
    pub n: usize,
    /// Highest profile version sent (1 + updates).
    pub versions: u32,
    /// Whether a `user.deleted` is sent.
    pub deleted: bool,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Users.
    pub users: usize,
    /// `user.updated` events per user.
    pub updates_per_user: u32,
    /// `session.created` events per user (at most 50, the kept login history).
    pub sessions_per_user: u32,
    /// Fraction of users that are deleted at the end of their life.
    pub delete_fraction: f64,
    /// Seed for the shuffle and the choice of deleted users.
    pub seed: u64,
    /// Unique tag of this run, part of every Clerk id.
    pub run: String,
}

/// All messages, already shuffled, and the users they are about.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The users.
    pub users: Vec<UserPlan>,
    /// The messages in the order they are first sent.
    pub messages: Vec<Message>,
}

/// Milliseconds between two versions of a user (and between its events).
const STEP_MS: i64 = 1_000;

/// The first name version `version` of user `n` carries (as `events` writes it).
pub fn expected_first_name(n: usize, version: u32) -> String {
    format!("First{n}v{version}")
}

/// The last name every version of user `n` carries.
pub fn expected_last_name(n: usize) -> String {
    format!("Last{n}")
}

/// The primary email every version of user `n` carries.
pub fn expected_email(n: usize) -> String {
    format!("user{n}@example.org")
}

/// The profile version a stored first name belongs to, if it is one of
/// user `n`'s.
pub fn version_of(n: usize, first_name: &str) -> Option<u32> {
    first_name.strip_prefix(&format!("First{n}v"))?.parse().ok()
}

/// Builds the messages of a storm, shuffled with `options.seed`.
pub fn build(options: &PlanOptions) -> Plan {
    let mut rng = Rng::new(options.seed);
    // Clerk times ten minutes in the past: nothing looks like it is from the
    // future, and every event is as recent as Svix's deliveries are, well
    // inside the gateway's `--unknown-user-retry-window` (1 h). A day back,
    // every session that beat its user's `user.created` was acknowledged as
    // `unknown_user` and its login counted as lost.
    let base = chrono::Utc::now().timestamp_millis() - 600_000;
    let sessions = options.sessions_per_user.min(50);
    let mut users = Vec::with_capacity(options.users);
    let mut messages = Vec::new();
    for i in 0..options.users {
        let clerk_id = format!("user_storm_{}_{i}", options.run);
        let versions = 1 + options.updates_per_user;
        let deleted = rng.chance(options.delete_fraction);
        let time = |step: u32| base + i64::from(step) * STEP_MS;
        let mut push = |kind: Kind, body: Vec<u8>| {
            messages.push(Message { id: gateway::svix::new_msg_id(), user: i, kind, body });
        };
        push(Kind::Created, events::user_created(&clerk_id, i, time(1)));
        for v in 2..=versions {
            push(Kind::Updated(v), events::user_updated(&clerk_id, i, v, time(v)));
        }
        for s in 0..sessions {
            let n = i * 50 + s as usize;
            push(Kind::Session(s), events::session_created(&clerk_id, n, time(versions + 1 + s)));
        }
        if deleted {
            push(Kind::Deleted, events::user_deleted(&clerk_id, time(versions + sessions + 2)));
        }
        users.push(UserPlan { clerk_id, n: i, versions, deleted });
    }
    rng.shuffle(&mut messages);
    Plan { users, messages }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> PlanOptions {
        PlanOptions {
            users: 20,
            updates_per_user: 3,
            sessions_per_user: 2,
            delete_fraction: 0.5,
            seed: 1,
            run: "t".into(),
        }
    }

    #[test]
    fn every_user_gets_create_updates_sessions_and_maybe_a_delete() {
        let plan = build(&options());
        for (i, user) in plan.users.iter().enumerate() {
            let kinds: Vec<Kind> = plan.messages.iter().filter(|m| m.user == i).map(|m| m.kind).collect();
            assert_eq!(kinds.len(), 1 + 3 + 2 + usize::from(user.deleted));
            assert!(kinds.contains(&Kind::Created) && kinds.contains(&Kind::Updated(4)));
        }
        let mut ids: Vec<&str> = plan.messages.iter().map(|m| m.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), plan.messages.len(), "svix ids are unique");
    }

    #[test]
    fn bodies_parse_as_the_events_they_claim_to_be() {
        let plan = build(&options());
        for message in &plan.messages {
            let event = gateway::clerk::parse_event(&message.body).expect("valid event");
            let user = &plan.users[message.user];
            match (&message.kind, event.payload) {
                (Kind::Created, gateway::clerk::Payload::UserCreated(u))
                | (Kind::Updated(_), gateway::clerk::Payload::UserUpdated(u)) => {
                    let version = message.kind.version().unwrap_or_default();
                    assert_eq!(u.first_name, Some(expected_first_name(user.n, version)));
                    assert_eq!(version_of(user.n, &expected_first_name(user.n, version)), Some(version));
                    assert_eq!(u.primary_email(), Some(expected_email(user.n).as_str()));
                }
                (Kind::Deleted, gateway::clerk::Payload::UserDeleted(d)) => assert_eq!(d.id, user.clerk_id),
                (Kind::Session(_), gateway::clerk::Payload::SessionCreated(s)) => {
                    assert_eq!(s.user_id, user.clerk_id);
                }
                (kind, payload) => panic!("{kind:?} parsed as {payload:?}"),
            }
        }
    }
}
