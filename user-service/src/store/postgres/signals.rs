//! Wake-ups for change-log readers: local at once, other replicas through
//! `LISTEN`/`NOTIFY`.

use std::time::Duration;

use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::Notify;

use crate::store::ChangeSignal;

/// The channel on which replicas tell each other that changes committed.
pub(super) const CHANGES_CHANNEL: &str = "userdata_changes";

/// The shortest time between two `NOTIFY`s. Each is a transaction of its own
/// with a commit (a WAL flush), so under load they are kept well below the
/// rate of commits; other replicas' followers learn of a change at most this
/// much later than local ones.
pub(super) const NOTIFY_INTERVAL: Duration = Duration::from_millis(20);

/// Wake-ups for change-log readers: here at once, on other replicas through
/// `NOTIFY`, sent after commit by one task so writers never wait for it.
#[derive(Debug, Default)]
pub(super) struct Signals {
    pub(super) local: ChangeSignal,
    pub(super) notify_replicas: Notify,
    /// The listening and notifying tasks, which end with the store.
    pub(super) tasks: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for Signals {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.get_mut() {
            tasks.iter().for_each(tokio::task::AbortHandle::abort);
        }
    }
}

impl Signals {
    pub(super) fn committed(&self) {
        self.local.wake();
        self.notify_replicas.notify_one();
    }
}

/// Listens for other replicas' commits. Called before the store is handed
/// out, so a replica that is up hears every later `NOTIFY` (if it cannot
/// listen yet, the background task keeps trying and the poll covers the gap).
pub(super) async fn listen(url: &str) -> Option<PgListener> {
    let listening = async {
        let mut listener = PgListener::connect(url).await?;
        listener.listen(CHANGES_CHANNEL).await?;
        Ok::<_, sqlx::Error>(listener)
    };
    match listening.await {
        Ok(listener) => Some(listener),
        Err(err) => {
            tracing::warn!(error = %err, "cannot LISTEN for changes yet; retrying in the background");
            None
        }
    }
}

/// Wakes local readers whenever another replica notifies (and after a lost
/// connection, since notifications may have been missed meanwhile). Listens
/// on a connection of its own, outside the pool. Aborted when the store goes.
pub(super) async fn listen_for_replicas(
    url: String,
    mut listener: Option<PgListener>,
    signals: std::sync::Weak<Signals>,
) {
    loop {
        let Some(current) = listener.as_mut() else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            listener = listen(&url).await;
            continue;
        };
        let received = current.try_recv().await;
        let Some(signals) = signals.upgrade() else { return };
        match received {
            Ok(Some(_)) => {}
            // The connection dropped (sqlx reconnects on the next call):
            // notifications may have been missed, so catch up.
            Ok(None) => {}
            Err(_) => listener = None,
        }
        signals.local.wake();
    }
}

/// Sends `NOTIFY` after local commits that recorded changes, coalesced: at
/// most one in flight and one every [`NOTIFY_INTERVAL`].
pub(super) async fn notify_replicas(pool: PgPool, signals: std::sync::Weak<Signals>) {
    loop {
        let Some(strong) = signals.upgrade() else { return };
        // Wake up now and then to notice that the store is gone.
        let woke = tokio::time::timeout(Duration::from_secs(5), strong.notify_replicas.notified()).await;
        drop(strong);
        if woke.is_err() {
            continue;
        }
        if pool.is_closed() {
            return;
        }
        if let Err(err) = sqlx::query("select pg_notify($1, '')").bind(CHANGES_CHANNEL).execute(&pool).await {
            tracing::debug!(error = %err, "cannot NOTIFY other replicas; their safety poll will catch up");
        }
        tokio::time::sleep(NOTIFY_INTERVAL).await;
    }
}
