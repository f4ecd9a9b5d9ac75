//! The table of open connections: the global and per-client caps, and which
//! connection gives way when a cap is reached.
//!
//! A cap that simply refused new connections would let one host that holds
//! silent connections lock everybody (itself included) out, and Svix would
//! see connection errors. So at a cap the *oldest connection without a
//! request in progress* (silent, trickling its headers, mid-handshake, or
//! idle between requests) is closed to make room: a flood of idle
//! connections only ever pushes out its own kind, while connections that are
//! serving a request are never cut. Only when every connection in the way is
//! busy is the new one refused.
//!
//! Clients are keyed like the rate limit's buckets: an IPv4 address, or an
//! IPv6 /64.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Notify;

use crate::{config::limits::ConnectionLimits, http::rate_limit::client_key, metrics::Metrics};

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The client has `max_connections_per_ip` connections, all busy.
    ClientFull,
    /// The server has `max_connections` connections, all busy.
    ServerFull,
}

impl Refused {
    /// The `reason` label of the refusal metric.
    pub fn label(self) -> &'static str {
        match self {
            Self::ClientFull => "per_ip",
            Self::ServerFull => "global",
        }
    }
}

/// What the connection's own task and the table share about it.
#[derive(Debug)]
pub struct ConnectionState {
    /// Requests in progress on the connection.
    busy: AtomicUsize,
    /// Requests started on the connection so far.
    started: AtomicU64,
    /// When the connection opened or its last request ended.
    last_active: Mutex<Instant>,
    /// The TLS handshake is still running.
    handshaking: AtomicBool,
    /// Set when the connection must close to make room.
    evicted: AtomicBool,
    wake: Notify,
    /// Set once the connection's socket is closed (its ticket dropped).
    closed: AtomicBool,
    gone: Notify,
}

impl ConnectionState {
    /// Whether a request is in progress.
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire) > 0
    }

    fn new(handshaking: bool) -> Self {
        Self {
            busy: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            last_active: Mutex::new(Instant::now()),
            handshaking: AtomicBool::new(handshaking),
            evicted: AtomicBool::new(false),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            gone: Notify::new(),
        }
    }

    /// Marks a request as started; the guard marks it finished.
    pub fn request_started(self: &Arc<Self>) -> BusyGuard {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.started.fetch_add(1, Ordering::AcqRel);
        BusyGuard(self.clone())
    }

    /// When the connection must close for want of a request, if no request
    /// is in progress: `first_request` after it opened while it has not sent
    /// a complete request head yet, `between_requests` after its last answer
    /// otherwise. `None` while busy.
    pub fn idle_deadline(&self, first_request: Duration, between_requests: Duration) -> Option<Instant> {
        if self.is_busy() {
            return None;
        }
        let last = *self.last_active.lock().unwrap_or_else(PoisonError::into_inner);
        let allowed =
            if self.started.load(Ordering::Acquire) == 0 { first_request } else { between_requests };
        Some(last + allowed)
    }

    /// Completes once the connection has been chosen to make room.
    pub async fn evicted(&self) {
        until_set(&self.evicted, &self.wake).await;
    }

    /// Completes once the connection's socket is closed, so its file
    /// descriptor is free again.
    pub async fn closed(&self) {
        until_set(&self.closed, &self.gone).await;
    }

    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.wake.notify_waiters();
    }
}

/// Completes once `flag` is set; whoever sets it then wakes `notify`'s
/// waiters. Registered before the flag is read, so a wake-up between the
/// read and the wait is not lost.
async fn until_set(flag: &AtomicBool, notify: &Notify) {
    loop {
        let notified = notify.notified();
        if flag.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }
}

/// Holds a connection busy while a request is in progress.
#[derive(Debug)]
pub struct BusyGuard(Arc<ConnectionState>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        *self.0.last_active.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
struct Entry {
    client: IpAddr,
    state: Arc<ConnectionState>,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    /// Every open connection, oldest first (ids only grow).
    open: BTreeMap<u64, Entry>,
    /// Each client's connections, oldest first.
    by_client: HashMap<IpAddr, BTreeMap<u64, Arc<ConnectionState>>>,
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.open.remove(&id)?;
        if let Some(ids) = self.by_client.get_mut(&entry.client) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_client.remove(&entry.client);
            }
        }
        Some(entry)
    }

    /// Closes the oldest connection that `evictable` accepts: among
    /// `client`'s, or among all when `client` is `None`. Returns it, or
    /// `None` when none is evictable.
    fn evict_oldest(
        &mut self,
        client: Option<IpAddr>,
        evictable: impl Fn(&ConnectionState) -> bool,
    ) -> Option<Arc<ConnectionState>> {
        // Ids grow with time, so iteration order is age order.
        let victim = match client {
            Some(client) => self
                .by_client
                .get(&client)
                .and_then(|ids| ids.iter().find(|(_, state)| evictable(state)).map(|(id, _)| *id)),
            None => self.open.iter().find(|(_, entry)| evictable(&entry.state)).map(|(id, _)| *id),
        };
        let entry = victim.and_then(|id| self.remove(id))?;
        entry.state.evict();
        Some(entry.state)
    }
}

/// The open connections of one listener.
#[derive(Debug)]
pub struct Connections {
    limits: ConnectionLimits,
    table: Mutex<Table>,
    metrics: Option<Arc<Metrics>>,
}

impl Connections {
    /// An empty table enforcing `limits`.
    pub fn new(limits: ConnectionLimits, metrics: Option<Arc<Metrics>>) -> Arc<Self> {
        Arc::new(Self { limits, table: Mutex::default(), metrics })
    }

    /// Admits a connection from `peer`, closing an idle one to make room if a
    /// cap is reached. With `tls`, the connection starts as a pending
    /// handshake, which counts against `max_handshakes_per_ip`.
    pub fn admit(self: &Arc<Self>, peer: IpAddr, tls: bool) -> Result<Ticket, Refused> {
        let client = client_key(peer);
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let mut evicted = 0_u64;
        let (mine, handshakes) = table.by_client.get(&client).map_or((0, 0), |ids| {
            (ids.len(), ids.values().filter(|s| s.handshaking.load(Ordering::Acquire)).count())
        });
        if tls && handshakes >= self.limits.max_handshakes_per_ip {
            if table.evict_oldest(Some(client), |s| s.handshaking.load(Ordering::Acquire)).is_some() {
                evicted += 1;
            }
        } else if mine >= self.limits.max_connections_per_ip {
            if table.evict_oldest(Some(client), |s| !s.is_busy()).is_none() {
                drop(table);
                self.record_refused(Refused::ClientFull);
                return Err(Refused::ClientFull);
            }
            evicted += 1;
        }
        if table.open.len() >= self.limits.max_connections {
            if table.evict_oldest(None, |s| !s.is_busy()).is_none() {
                drop(table);
                self.record_refused(Refused::ServerFull);
                return Err(Refused::ServerFull);
            }
            evicted += 1;
        }
        let id = table.next_id;
        table.next_id += 1;
        let state = Arc::new(ConnectionState::new(tls));
        table.open.insert(id, Entry { client, state: state.clone() });
        table.by_client.entry(client).or_default().insert(id, state.clone());
        if let Some(metrics) = &self.metrics {
            metrics.record_connections_evicted(evicted);
            // Evicted connections left the table above.
            metrics.add_connections_open(1.0 - evicted as f64);
        }
        drop(table);
        Ok(Ticket { id, state, table: self.clone() })
    }

    /// Closes the oldest connection of anyone without a request in progress,
    /// to free its file descriptor when `accept` has run out of them.
    /// Returns it (to wait for [`ConnectionState::closed`]), or `None` when
    /// every connection is busy.
    pub fn evict_oldest_idle(&self) -> Option<Arc<ConnectionState>> {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let victim = table.evict_oldest(None, |s| !s.is_busy());
        drop(table);
        if let (Some(_), Some(metrics)) = (&victim, &self.metrics) {
            metrics.record_connections_evicted(1);
            metrics.add_connections_open(-1.0);
        }
        victim
    }

    /// Connections currently open.
    pub fn open(&self) -> usize {
        self.table.lock().unwrap_or_else(PoisonError::into_inner).open.len()
    }

    fn release(&self, id: u64) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        // An evicted connection has left the table (and the gauge) already.
        let removed = table.remove(id).is_some();
        drop(table);
        if let (true, Some(metrics)) = (removed, &self.metrics) {
            metrics.add_connections_open(-1.0);
        }
    }

    fn record_refused(&self, refused: Refused) {
        if let Some(metrics) = &self.metrics {
            metrics.record_connection_refused(refused.label());
        }
    }
}

/// An admitted connection's place in the table; dropping it frees the place.
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    state: Arc<ConnectionState>,
    table: Arc<Connections>,
}

impl Ticket {
    /// What the connection shares with the table.
    pub fn state(&self) -> &Arc<ConnectionState> {
        &self.state
    }

    /// The TLS handshake is over: the connection no longer counts as a
    /// pending handshake.
    pub fn handshake_done(&self) {
        // The time for the first request's headers starts now.
        *self.state.last_active.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.state.handshaking.store(false, Ordering::Release);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.table.release(self.id);
        // The connection's task drops its socket before its ticket.
        self.state.closed.store(true, Ordering::Release);
        self.state.gone.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 2));

    fn table(per_ip: usize, total: usize, handshakes: usize) -> Arc<Connections> {
        let limits = ConnectionLimits {
            max_connections: total,
            max_connections_per_ip: per_ip,
            max_handshakes_per_ip: handshakes,
            ..ConnectionLimits::default()
        };
        Connections::new(limits, None)
    }

    fn evicted(ticket: &Ticket) -> bool {
        ticket.state.evicted.load(Ordering::Acquire)
    }

    #[test]
    fn at_the_per_ip_cap_the_oldest_idle_connection_of_that_client_gives_way() {
        let table = table(2, 100, 100);
        let first = table.admit(A, false).unwrap();
        let second = table.admit(A, false).unwrap();
        let other = table.admit(B, false).unwrap();

        let third = table.admit(A, false).unwrap();

        assert!(evicted(&first));
        assert!(!evicted(&second) && !evicted(&other) && !evicted(&third));
        assert_eq!(table.open(), 3);
    }

    #[test]
    fn busy_connections_are_never_evicted_so_a_full_busy_client_is_refused() {
        let table = table(2, 100, 100);
        let first = table.admit(A, false).unwrap();
        let second = table.admit(A, false).unwrap();
        let _busy = (first.state().request_started(), second.state().request_started());

        assert_eq!(table.admit(A, false).err(), Some(Refused::ClientFull));
        assert!(!evicted(&first) && !evicted(&second));
    }

    #[test]
    fn at_the_global_cap_the_oldest_idle_connection_of_anyone_gives_way() {
        let table = table(10, 2, 10);
        let first = table.admit(A, false).unwrap();
        let busy = table.admit(B, false).unwrap();
        let _guard = busy.state().request_started();

        let later = table.admit(A, false).unwrap();

        assert!(evicted(&first));
        assert!(!evicted(&busy));
        let _also_busy = later.state().request_started();
        assert_eq!(table.admit(B, false).err(), Some(Refused::ServerFull));
    }

    #[test]
    fn pending_handshakes_per_ip_are_capped_by_replacing_the_oldest() {
        let table = table(100, 100, 2);
        let first = table.admit(A, true).unwrap();
        let second = table.admit(A, true).unwrap();
        second.handshake_done();
        let third = table.admit(A, true).unwrap();
        assert!(!evicted(&first), "only two handshakes were pending");

        let _fourth = table.admit(A, true).unwrap();

        assert!(evicted(&first));
        assert!(!evicted(&second) && !evicted(&third));
    }

    #[test]
    fn out_of_descriptors_the_oldest_idle_connection_of_anyone_gives_way() {
        let table = table(10, 10, 10);
        let busy = table.admit(A, false).unwrap();
        let _guard = busy.state().request_started();
        let idle = table.admit(B, false).unwrap();
        let newer = table.admit(A, false).unwrap();

        let victim = table.evict_oldest_idle().expect("an idle connection");

        assert!(Arc::ptr_eq(&victim, idle.state()));
        assert!(!evicted(&busy) && !evicted(&newer));
        assert_eq!(table.open(), 2);
    }

    #[test]
    fn dropping_a_ticket_frees_its_place() {
        let table = table(1, 1, 1);
        let ticket = table.admit(A, false).unwrap();
        drop(ticket);
        assert_eq!(table.open(), 0);
        assert!(table.admit(A, false).is_ok());
    }
}
