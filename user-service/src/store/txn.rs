//! The two write algorithms of the store, written once. Each backend supplies
//! the steps (its SQL) by implementing [`UserTx`] and [`DataTx`] on its
//! transaction type, so Postgres and SQLite cannot drift apart on the order
//! of checks that makes writes idempotent, ordered and resurrection-proof.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::{DataEdit, DataEntry, DataSet, DataWrite, group::UserWrite};
use crate::{
    domain::error::{Error, Result},
    domain::{
        change::{self, Actor, NewChange},
        keys::CUSTOM_PREFIX,
        user::UserKey,
        write::{Change, CreateUser, EventContext, Existing, Outcome, WriteResult},
    },
};

/// An event to record with a write: its context, the user's `clerk_id`, and
/// the answer to replay for a redelivery.
pub(super) type Record<'a> = (&'a EventContext, &'a str, &'a WriteResult);

/// What a write finds: the recorded result of its event (a redelivery), and
/// the stored user.
pub(super) type Loaded = (Option<WriteResult>, Existing);

/// The steps of a user write, inside one transaction that already holds
/// whatever lock serialises writes for the user.
#[async_trait]
pub(super) trait UserTx: Send {
    /// Creates the users that are new (the common case) in one statement,
    /// recording their events and changes; `None` for each that is not new
    /// after all, or when the backend has no such shortcut, and the full
    /// steps decide. (A lone write takes the shortcut before its
    /// transaction, if at all.)
    async fn create_new(&mut self, cmds: &[&CreateUser]) -> Result<Vec<Option<WriteResult>>> {
        Ok(vec![None; cmds.len()])
    }

    /// The recorded result of `event` (a redelivery), and the stored user,
    /// locked for the rest of the transaction.
    async fn load(&mut self, key: &UserKey, event: Option<&EventContext>) -> Result<Loaded>;

    /// [`UserTx::load`] for the users of several writes (distinct users),
    /// in order; in one round trip where the backend can.
    async fn load_many(&mut self, writes: &[&UserWrite]) -> Result<Vec<Loaded>> {
        let mut loaded = Vec::with_capacity(writes.len());
        for write in writes {
            loaded.push(self.load(&write.key(), write.event()).await?);
        }
        Ok(loaded)
    }

    /// Makes the planned change, records the event and appends `changes` to
    /// the change log. A deletion also erases the values of the user's
    /// earlier changes and of their recorded event results.
    async fn apply(
        &mut self,
        change: &Change,
        changes: &[NewChange],
        actor: &Actor,
        record: Option<Record<'_>>,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// Commits.
    async fn commit(self) -> Result<()>;
}

/// Runs one user write: replay check, decide, apply and record, commit.
/// Dropping `tx` on an early return rolls it back.
pub(super) async fn write_user<T: UserTx>(mut tx: T, write: UserWrite) -> Result<WriteResult> {
    let result = step(&mut tx, write).await??;
    tx.commit().await?;
    Ok(result)
}

/// Runs writes in order in one transaction, each with the steps of
/// [`write_user`], and commits once. A write its plan refuses answers with
/// that error and the others go on; a database error fails the whole group.
/// The writes go in runs of distinct users (a user's second write starts a
/// new run, so it sees the first), each run in two or three round trips.
pub(super) async fn write_group<T: UserTx>(
    mut tx: T,
    writes: Vec<UserWrite>,
) -> Result<Vec<Result<WriteResult>>> {
    let mut results = Vec::with_capacity(writes.len());
    let mut writes = writes.into_iter().peekable();
    while let Some(first) = writes.next() {
        let mut run = vec![first];
        while let Some(next) = writes.next_if(|next| !run.iter().any(|w| w.same_user(next))) {
            run.push(next);
        }
        results.extend(write_run(&mut tx, run).await?);
    }
    tx.commit().await?;
    Ok(results)
}

/// Writes of distinct users, so their order does not matter: the new users
/// created in one statement, then the users of all the other writes loaded
/// in one statement, then each of those decided and applied.
async fn write_run<T: UserTx>(tx: &mut T, run: Vec<UserWrite>) -> Result<Vec<Result<WriteResult>>> {
    let creates: Vec<&CreateUser> = run
        .iter()
        .filter_map(|write| match write {
            UserWrite::Create(cmd) => Some(cmd),
            _ => None,
        })
        .collect();
    let mut created = tx.create_new(&creates).await?.into_iter();
    let mut answers: Vec<Option<Result<WriteResult>>> = run
        .iter()
        .map(|write| match write {
            UserWrite::Create(_) => created.next().flatten().map(Ok),
            _ => None,
        })
        .collect();
    let pending: Vec<(usize, UserWrite)> =
        run.into_iter().enumerate().filter(|(i, _)| answers[*i].is_none()).collect();
    let loaded = tx.load_many(&pending.iter().map(|(_, write)| write).collect::<Vec<_>>()).await?;
    if loaded.len() != pending.len() {
        return Err(Error::Internal(format!("loaded {} users for {} writes", loaded.len(), pending.len())));
    }
    for ((i, write), loaded) in pending.into_iter().zip(loaded) {
        answers[i] = Some(decide(tx, write, loaded).await?);
    }
    Ok(answers
        .into_iter()
        .map(|answer| answer.unwrap_or_else(|| Err(Error::Internal("a write without an answer".into()))))
        .collect())
}

/// The steps of one user write inside `tx`. The outer error is the
/// database's (the transaction is lost); the inner one is the plan's (the
/// transaction is intact, nothing was written for this write).
async fn step<T: UserTx>(tx: &mut T, write: UserWrite) -> Result<Result<WriteResult>> {
    let loaded = tx.load(&write.key(), write.event()).await?;
    decide(tx, write, loaded).await
}

/// The rest of [`step`], once the user is loaded (and locked): replay,
/// decide, apply and record.
async fn decide<T: UserTx>(tx: &mut T, write: UserWrite, loaded: Loaded) -> Result<Result<WriteResult>> {
    let (replayed, existing) = loaded;
    if let Some(replayed) = replayed {
        return Ok(Ok(replayed));
    }
    let key = write.key();
    let event = write.event().cloned();
    let actor = write.actor().clone();
    let before = match &existing {
        Existing::Present(user) => Some(user.clone()),
        Existing::Missing | Existing::Deleted => None,
    };
    let now = super::now();
    let plan = match write.plan(existing, now) {
        Ok(plan) => plan,
        Err(refused) => return Ok(Err(refused)),
    };
    let changes = change::of_user_write(&plan.change, before.as_ref());
    // Events are only ever keyed by clerk_id (the gRPC layer insists).
    let record = match (&event, &key) {
        (Some(event), UserKey::ClerkId(clerk_id)) => Some((event, clerk_id.as_str(), &plan.result)),
        _ => None,
    };
    if record.is_some() || !matches!(plan.change, Change::None) {
        tx.apply(&plan.change, &changes, &actor, record, now).await?;
    }
    Ok(Ok(plan.result))
}

/// The steps of a user data edit, inside one transaction.
#[async_trait]
pub(super) trait DataTx: Send {
    /// Locks the user against concurrent edits; `(id, clerk_id)`, or `None`
    /// when there is no such user.
    async fn lock_user(&mut self, user: &UserKey) -> Result<Option<(Uuid, String)>>;

    /// Whether the user was deleted.
    async fn is_tombstoned(&mut self, user: &UserKey) -> Result<bool>;

    /// The stored entries of `keys`.
    async fn entries(&mut self, user_id: Uuid, keys: &[&str]) -> Result<Vec<DataEntry>>;

    /// How many `custom.*` keys the user has.
    async fn custom_key_count(&mut self, user_id: Uuid) -> Result<u64>;

    /// The recorded result of an event, if it was seen before.
    async fn recorded(&mut self, event: &EventContext, clerk_id: &str) -> Result<Option<WriteResult>>;

    /// Writes `changes` (`None` deletes) and returns `entries` updated.
    async fn write_changes(
        &mut self,
        user_id: Uuid,
        changes: BTreeMap<String, Option<Value>>,
        entries: BTreeMap<String, DataEntry>,
        now: DateTime<Utc>,
    ) -> Result<BTreeMap<String, DataEntry>>;

    /// Records an event so a redelivery is recognised.
    async fn record(&mut self, record: Record<'_>, now: DateTime<Utc>) -> Result<()>;

    /// Appends changes to the change log.
    async fn append_changes(
        &mut self,
        changes: &[NewChange],
        actor: &Actor,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// Commits.
    async fn commit(self) -> Result<()>;
}

/// Runs one data edit: lock the user, replay check, edit, write, record,
/// commit. A deleted user gets `Outcome::UserDeleted` for an event (so the
/// sender stops retrying) and `NOT_FOUND` otherwise.
pub(super) async fn edit_data<T: DataTx>(
    mut tx: T,
    user: &UserKey,
    keys: &[&str],
    event: Option<&EventContext>,
    actor: &Actor,
    edit: DataEdit,
) -> Result<DataWrite> {
    let Some((user_id, clerk_id)) = tx.lock_user(user).await? else {
        return match event {
            Some(_) if tx.is_tombstoned(user).await? => {
                Ok(DataWrite { outcome: Some(Outcome::UserDeleted), ..Default::default() })
            }
            _ => Err(Error::NotFound { resource: "user", key: user.to_string() }),
        };
    };
    let mut set = DataSet::new(tx.entries(user_id, keys).await?);
    // Counted with the user locked, so concurrent writes cannot pass the cap
    // together; only edits of custom keys pay for the count.
    if keys.iter().any(|key| key.starts_with(CUSTOM_PREFIX)) {
        set.set_custom_key_count(tx.custom_key_count(user_id).await?);
    }
    if let Some(event) = event
        && tx.recorded(event, &clerk_id).await?.is_some()
    {
        let (entries, _) = set.into_changes();
        return Ok(DataWrite { entries, outcome: Some(Outcome::Applied), replayed: true });
    }
    edit(&mut set)?;
    let (current, changes) = set.into_changes();
    let logged: Vec<NewChange> = changes
        .iter()
        .map(|(key, after)| {
            let before = current.get(key).map(|e| e.value.clone());
            NewChange::data(user_id, &clerk_id, key, before, after.clone())
        })
        .collect();
    let now = super::now();
    let entries = tx.write_changes(user_id, changes, current, now).await?;
    if !logged.is_empty() {
        tx.append_changes(&logged, actor, now).await?;
    }
    let outcome = event.map(|_| Outcome::Applied);
    if let Some(event) = event {
        let result = WriteResult { user: None, outcome, replayed: false };
        tx.record((event, &clerk_id, &result), now).await?;
    }
    tx.commit().await?;
    Ok(DataWrite { entries, outcome, replayed: false })
}
