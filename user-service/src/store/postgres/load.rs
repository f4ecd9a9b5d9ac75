//! What a user write reads first, with the user locked: the recorded result
//! of its event, the tombstone and the user row; for one write or many.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, types::Json};
use uuid::Uuid;

use crate::store::{
    group::UserWrite,
    rows::{self, UserRow},
    txn::Loaded,
};
use crate::{
    domain::error::Result,
    domain::{
        user::{User, UserKey},
        write::{EventContext, Existing, WriteResult},
    },
};

/// Everything a user write needs to know, read in one statement after the
/// lock: the idempotency record, the tombstone and the user row (locked).
#[derive(sqlx::FromRow)]
pub(super) struct StateRow {
    pub(super) replay_clerk_id: Option<String>,
    pub(super) replay_kind: Option<String>,
    pub(super) replay_result: Option<Json<WriteResult>>,
    pub(super) deleted: bool,
    pub(super) id: Option<Uuid>,
    pub(super) clerk_id: Option<String>,
    pub(super) email: Option<String>,
    pub(super) first_name: Option<String>,
    pub(super) last_name: Option<String>,
    pub(super) username: Option<String>,
    pub(super) image_url: Option<String>,
    pub(super) role: Option<String>,
    pub(super) status: Option<String>,
    pub(super) created_at: Option<DateTime<Utc>>,
    pub(super) updated_at: Option<DateTime<Utc>>,
    pub(super) source_updated_at: Option<i64>,
    pub(super) version: Option<i64>,
}

impl StateRow {
    /// What a write for `key` with `event` finds in this row.
    fn loaded(mut self, key: &UserKey, event: Option<&EventContext>) -> Result<Loaded> {
        let recorded = self.replay_clerk_id.take().map(|clerk_id| crate::store::Recorded {
            clerk_id,
            kind: self.replay_kind.take().unwrap_or_default(),
            result: self.replay_result.take(),
        });
        let replayed = match (recorded, key, event) {
            (Some(recorded), UserKey::ClerkId(clerk_id), Some(event)) => {
                crate::store::replay(Some(recorded), clerk_id, event)?
            }
            _ => None,
        };
        let deleted = self.deleted;
        let existing = match self.user()? {
            Some(user) => Existing::Present(user),
            None if deleted => Existing::Deleted,
            None => Existing::Missing,
        };
        Ok((replayed, existing))
    }

    fn user(self) -> Result<Option<User>> {
        let (
            Some(id),
            Some(clerk_id),
            Some(role),
            Some(status),
            Some(created_at),
            Some(updated_at),
            Some(version),
        ) = (self.id, self.clerk_id, self.role, self.status, self.created_at, self.updated_at, self.version)
        else {
            return Ok(None);
        };
        let row = UserRow::<Uuid> {
            id,
            clerk_id,
            email: self.email,
            first_name: self.first_name,
            last_name: self.last_name,
            username: self.username,
            image_url: self.image_url,
            role,
            status,
            created_at,
            updated_at,
            source_updated_at: self.source_updated_at,
            version,
        };
        Ok(Some(row.try_into()?))
    }
}

/// Reads the replay record (for an event), the tombstone and the locked user.
pub(super) async fn load_state(
    tx: &mut PgConnection,
    key: &UserKey,
    event: Option<&EventContext>,
) -> Result<Loaded> {
    let (user_filter, tomb_filter, bind) = match key {
        UserKey::Id(id) => ("id = $1::text::uuid", "user_id = $1::text::uuid", id.to_string()),
        UserKey::ClerkId(clerk_id) => ("clerk_id = $1", "clerk_id = $1", clerk_id.clone()),
    };
    let row: StateRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select pe.clerk_id as replay_clerk_id, pe.kind as replay_kind, pe.result as replay_result, \
                exists(select 1 from deleted_users where {tomb_filter}) as deleted, u.* \
         from (select 1) as one \
         left join lateral (select clerk_id, kind, result from processed_events \
             where idempotency_key = $2 and source in ($3, '') limit 1) pe on true \
         left join lateral (select {} from users where {user_filter} for update) u on true",
        rows::USER_COLUMNS
    )))
    .bind(bind)
    .bind(event.map(|e| e.idempotency_key.as_str()))
    .bind(event.map(|e| e.source.as_str()))
    .fetch_one(tx)
    .await?;
    row.loaded(key, event)
}

/// [`load_state`] for the users of several event writes (addressed by
/// `clerk_id`, as groups are) in one statement; one by one otherwise. Every
/// lookup is a lateral join with `limit`, so each stays an index probe per
/// write even in a generic plan (an `exists` here becomes, in a generic plan,
/// a hash of every tombstone, built at every execution).
pub(super) async fn load_states(tx: &mut PgConnection, writes: &[&UserWrite]) -> Result<Vec<Loaded>> {
    let clerk_ids: Option<Vec<&str>> = writes.iter().map(|write| write.group_lock()).collect();
    let Some(clerk_ids) = clerk_ids.filter(|ids| ids.len() > 1) else {
        let mut loaded = Vec::with_capacity(writes.len());
        for write in writes {
            loaded.push(load_state(&mut *tx, &write.key(), write.event()).await?);
        }
        return Ok(loaded);
    };
    let events: Vec<Option<&EventContext>> = writes.iter().map(|write| write.event()).collect();
    let rows: Vec<StateRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select pe.clerk_id as replay_clerk_id, pe.kind as replay_kind, pe.result as replay_result, \
                d.deleted is not null as deleted, u.* \
         from unnest($1::text[], $2::text[], $3::text[]) with ordinality as k(clerk_id, event_key, source, n) \
         left join lateral (select clerk_id, kind, result from processed_events \
             where idempotency_key = k.event_key and source in (k.source, '') limit 1) pe on true \
         left join lateral (select true as deleted from deleted_users \
             where clerk_id = k.clerk_id limit 1) d on true \
         left join lateral (select {} from users where clerk_id = k.clerk_id for update) u on true \
         order by k.n",
        rows::USER_COLUMNS
    )))
    .bind(&clerk_ids)
    .bind(events.iter().map(|e| e.map(|e| e.idempotency_key.as_str())).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.map(|e| e.source.as_str())).collect::<Vec<_>>())
    .fetch_all(tx)
    .await?;
    rows.into_iter().zip(writes).map(|(row, write)| row.loaded(&write.key(), write.event())).collect()
}
