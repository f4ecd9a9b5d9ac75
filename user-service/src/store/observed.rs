//! A [`Store`] wrapper that counts the calls in flight, so the metrics can
//! say how many are waiting for a database connection (sqlx's pool reports
//! only connections in use and idle).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use uuid::Uuid;

use super::{ChangeBatch, DataEdit, DataEntry, DataWrite, PoolStats, Store, UserFilter, UserValue};
use crate::domain::{
    change::{Actor, AuditQuery, ChangeFilter, Cursor, LoggedChange},
    error::Result,
    user::{User, UserKey},
    write::{CreateUser, DeleteUser, EventContext, UpdateUser, WriteResult},
};

/// Wraps a store and counts its calls in flight.
pub struct Observed {
    inner: Arc<dyn Store>,
    in_flight: AtomicU32,
}

impl Observed {
    /// Observes `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self { inner, in_flight: AtomicU32::new(0) }
    }

    fn enter(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }
}

/// One call in flight; leaving (or being cancelled) counts it out.
struct InFlight<'a>(&'a AtomicU32);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Store for Observed {
    async fn ping(&self) -> Result<()> {
        let _call = self.enter();
        self.inner.ping().await
    }

    async fn close(&self) {
        self.inner.close().await;
    }

    /// Each call holds at most one connection, so the calls in flight beyond
    /// the connections in use are waiting for one.
    fn group_stats(&self) -> super::GroupStats {
        self.inner.group_stats()
    }

    fn pool_stats(&self) -> PoolStats {
        let stats = self.inner.pool_stats();
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        PoolStats { waiting: in_flight.saturating_sub(stats.in_use), ..stats }
    }

    async fn create_user(&self, cmd: CreateUser) -> Result<WriteResult> {
        let _call = self.enter();
        self.inner.create_user(cmd).await
    }

    async fn get_user(&self, key: &UserKey) -> Result<User> {
        let _call = self.enter();
        self.inner.get_user(key).await
    }

    async fn list_users(&self, filter: &UserFilter, after: Option<Uuid>, limit: u32) -> Result<Vec<User>> {
        let _call = self.enter();
        self.inner.list_users(filter, after, limit).await
    }

    async fn update_user(&self, cmd: UpdateUser) -> Result<WriteResult> {
        let _call = self.enter();
        self.inner.update_user(cmd).await
    }

    async fn delete_user(&self, cmd: DeleteUser) -> Result<WriteResult> {
        let _call = self.enter();
        self.inner.delete_user(cmd).await
    }

    async fn read_data(&self, user: &UserKey, keys: &[&str]) -> Result<Vec<DataEntry>> {
        let _call = self.enter();
        self.inner.read_data(user, keys).await
    }

    async fn list_data(&self, user: &UserKey, after: Option<&str>, limit: u32) -> Result<Vec<DataEntry>> {
        let _call = self.enter();
        self.inner.list_data(user, after, limit).await
    }

    async fn edit_data(
        &self,
        user: &UserKey,
        keys: &[&str],
        event: Option<&EventContext>,
        actor: &Actor,
        edit: DataEdit,
    ) -> Result<DataWrite> {
        let _call = self.enter();
        self.inner.edit_data(user, keys, event, actor, edit).await
    }

    async fn data_for_users(&self, ids: &[Uuid], clerk_ids: &[String], key: &str) -> Result<Vec<UserValue>> {
        let _call = self.enter();
        self.inner.data_for_users(ids, clerk_ids, key).await
    }

    async fn prune_processed_events(&self, age: Duration) -> Result<u64> {
        let _call = self.enter();
        self.inner.prune_processed_events(age).await
    }

    fn change_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.change_signal()
    }

    async fn read_changes(&self, after: Cursor, filter: &ChangeFilter, limit: u32) -> Result<ChangeBatch> {
        let _call = self.enter();
        self.inner.read_changes(after, filter, limit).await
    }

    async fn change_head(&self) -> Result<Cursor> {
        let _call = self.enter();
        self.inner.change_head().await
    }

    async fn pruned_through(&self) -> Result<Cursor> {
        let _call = self.enter();
        self.inner.pruned_through().await
    }

    async fn list_changes(
        &self,
        query: &AuditQuery,
        after: Option<Cursor>,
        limit: u32,
    ) -> Result<Vec<LoggedChange>> {
        let _call = self.enter();
        self.inner.list_changes(query, after, limit).await
    }

    async fn prune_changes(&self, age: Duration) -> Result<u64> {
        let _call = self.enter();
        self.inner.prune_changes(age).await
    }
}
