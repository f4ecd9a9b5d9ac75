//! The write transaction (`BEGIN IMMEDIATE`) and the steps of the shared
//! write algorithms.

use std::{collections::BTreeMap, sync::Arc};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Sqlite, Transaction};
use tokio::sync::OwnedMutexGuard;
use uuid::{Uuid, fmt::Hyphenated};

use crate::store::{
    ChangeSignal, DataEntry,
    group::{UserWrite, UserWriter},
    rows::{self, EntryRow, entry},
    txn::{self, DataTx, Record, UserTx},
};
use crate::{
    domain::error::Result,
    domain::{
        change::{Actor, NewChange},
        user::UserKey,
        write::{Change, EventContext, Existing, WriteResult},
    },
};

use super::{SqliteWriter, statements::*};

/// A write transaction (`BEGIN IMMEDIATE`: it takes the write lock up front,
/// because these transactions read then write, and a deferred one could not
/// upgrade if another connection wrote first), with the steps of the shared
/// write algorithms.
pub(super) struct SqliteTx {
    tx: Transaction<'static, Sqlite>,
    /// This writer's turn, held until the transaction ends.
    _turn: OwnedMutexGuard<()>,
    signal: Arc<ChangeSignal>,
    recorded_changes: bool,
}

impl SqliteTx {
    pub(super) async fn begin(writer: &SqliteWriter) -> Result<Self> {
        let turn = writer.turn.clone().lock_owned().await;
        Ok(Self {
            tx: writer.pool.begin_with("BEGIN IMMEDIATE").await?,
            _turn: turn,
            signal: writer.signal.clone(),
            recorded_changes: false,
        })
    }

    async fn append(&mut self, changes: &[NewChange], actor: &Actor, now: DateTime<Utc>) -> Result<()> {
        append_changes(&mut self.tx, changes, actor, now).await?;
        self.recorded_changes |= !changes.is_empty();
        Ok(())
    }

    async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        if self.recorded_changes {
            self.signal.wake();
        }
        Ok(())
    }
}

#[async_trait]
impl UserTx for SqliteTx {
    async fn load(
        &mut self,
        key: &UserKey,
        event: Option<&EventContext>,
    ) -> Result<(Option<WriteResult>, Existing)> {
        if let (Some(event), UserKey::ClerkId(clerk_id)) = (event, key)
            && let Some(replayed) = rows::recorded_result(&mut *self.tx, event, clerk_id).await?
        {
            return Ok((Some(replayed), Existing::Missing));
        }
        Ok((None, load_existing(&mut self.tx, key).await?))
    }

    async fn apply(
        &mut self,
        change: &Change,
        changes: &[NewChange],
        actor: &Actor,
        record: Option<Record<'_>>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        apply(&mut self.tx, change, now).await?;
        if let Some(record) = record {
            record_event(&mut self.tx, record, now).await?;
        }
        self.append(changes, actor, now).await
    }

    async fn commit(self) -> Result<()> {
        SqliteTx::commit(self).await
    }
}

#[async_trait]
impl DataTx for SqliteTx {
    async fn lock_user(&mut self, user: &UserKey) -> Result<Option<(Uuid, String)>> {
        // The write lock taken by BEGIN IMMEDIATE already serialises edits.
        let (filter, bind) = user_where(user);
        let found: Option<(Hyphenated, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select u.id, u.clerk_id from users u where {filter}"
        )))
        .bind(bind)
        .fetch_optional(&mut *self.tx)
        .await?;
        Ok(found.map(|(id, clerk_id)| (id.into_uuid(), clerk_id)))
    }

    async fn is_tombstoned(&mut self, user: &UserKey) -> Result<bool> {
        is_tombstoned(&mut self.tx, user).await
    }

    async fn entries(&mut self, user_id: Uuid, keys: &[&str]) -> Result<Vec<DataEntry>> {
        let rows: Vec<EntryRow> = sqlx::query_as(
            "select key, value, version, updated_at from user_data \
             where user_id = $1 and key in (select value from json_each($2))",
        )
        .bind(text_id(user_id))
        .bind(json_list(keys))
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows.into_iter().map(entry).collect())
    }

    async fn custom_key_count(&mut self, user_id: Uuid) -> Result<u64> {
        let (count,): (i64,) =
            sqlx::query_as(rows::CUSTOM_KEY_COUNT).bind(text_id(user_id)).fetch_one(&mut *self.tx).await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn recorded(&mut self, event: &EventContext, clerk_id: &str) -> Result<Option<WriteResult>> {
        rows::recorded_result(&mut *self.tx, event, clerk_id).await
    }

    async fn write_changes(
        &mut self,
        user_id: Uuid,
        changes: BTreeMap<String, Option<Value>>,
        entries: BTreeMap<String, DataEntry>,
        now: DateTime<Utc>,
    ) -> Result<BTreeMap<String, DataEntry>> {
        write_changes(&mut self.tx, user_id, changes, entries, now).await
    }

    async fn record(&mut self, record: Record<'_>, now: DateTime<Utc>) -> Result<()> {
        record_event(&mut self.tx, record, now).await
    }

    async fn append_changes(
        &mut self,
        changes: &[NewChange],
        actor: &Actor,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.append(changes, actor, now).await
    }

    async fn commit(self) -> Result<()> {
        SqliteTx::commit(self).await
    }
}

#[async_trait]
impl UserWriter for SqliteWriter {
    async fn write_one(&self, write: UserWrite) -> Result<WriteResult> {
        txn::write_user(SqliteTx::begin(self).await?, write).await
    }

    async fn write_group(&self, writes: Vec<UserWrite>) -> Result<Vec<Result<WriteResult>>> {
        txn::write_group(SqliteTx::begin(self).await?, writes).await
    }
}
