//! Serving the webhook endpoint over TCP or TLS with our own accept loop, so
//! that every connection is bounded: hyper's HTTP/1.1 header-read timeout
//! (which needs a timer, absent under `axum::serve`), an idle timeout that
//! also covers HTTP/2 and the TLS handshake, HTTP/2 stream and header limits,
//! and the global and per-client caps of [`Connections`].
//!
//! The loop never stops accepting: a connection over a cap replaces an idle
//! one or is closed at once, and handshakes run in the connections' own
//! tasks, so no number of silent clients can keep a new one (Svix) waiting in
//! the kernel's backlog. Out of file descriptors, it closes the oldest idle
//! connection to free one, rather than pausing while silent clients hold
//! them all.
//!
//! Graceful shutdown: the listener is closed, every connection is asked to
//! finish (HTTP/1.1 closes after the answer in progress, HTTP/2 sends
//! GOAWAY); a request in progress may take the longest a request may take,
//! while a connection without one (silent, trickling its head, idle) is
//! dropped after a second, so such clients cannot delay a restart.

use std::{convert::Infallible, future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
    time::Instant,
};
use tokio_rustls::{TlsAcceptor, rustls::ServerConfig};
use tower::ServiceExt;

use crate::{
    config::limits::{self, ConnectionLimits},
    http::REQUEST_TIMEOUT,
    http::connections::{ConnectionState, Connections, Ticket},
    metrics::Metrics,
};

/// How long a connection asked to close, with no request in progress, may
/// take to say goodbye (HTTP/2 GOAWAY) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Out of file descriptors: how long to wait for an evicted connection to
/// close (it has no request in progress, so it closes at once; the bound
/// only keeps the loop moving if it does not).
const EVICTION_WAIT: Duration = Duration::from_millis(50);

/// Out of file descriptors with every connection busy: how long to wait
/// before trying again (a request ends within `REQUEST_TIMEOUT`).
const ALL_BUSY_PAUSE: Duration = Duration::from_millis(100);

/// At most one log line per this period about running out of file
/// descriptors: a flood would otherwise flood the log too.
const DESCRIPTOR_WARNING_PERIOD: Duration = Duration::from_secs(10);

/// How long a connection asked to close (e.g. at shutdown) may take to finish
/// a request in progress: the longest a request may take, plus a margin to
/// send the answer.
const SHUTDOWN_GRACE: Duration = REQUEST_TIMEOUT.saturating_add(Duration::from_secs(1));

/// The webhook server: a bound listener and what each connection needs.
pub struct Server {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: ConnectionLimits,
    connections: Arc<Connections>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .field("https", &self.tls.is_some())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server for `router` on `listener`, terminating TLS with `tls` if
    /// given.
    pub fn new(
        listener: TcpListener,
        tls: Option<Arc<ServerConfig>>,
        router: Router,
        limits: ConnectionLimits,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        Self {
            listener,
            tls: tls.map(TlsAcceptor::from),
            router,
            limits,
            connections: Connections::new(limits, metrics),
        }
    }

    /// Accepts and serves connections until `shutdown` completes, then shuts
    /// down gracefully.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> io::Result<()> {
        let Self { listener, tls, router, limits, connections } = self;
        let builder = Arc::new(http_builder(&limits));
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut out_of_descriptors = DescriptorWarning::default();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let ticket = match connections.admit(peer.ip(), tls.is_some()) {
                            Ok(ticket) => ticket,
                            Err(refused) => {
                                // Debug only: a flood would otherwise flood the log.
                                tracing::debug!(reason = refused.label(), "connection refused: cap reached");
                                continue;
                            }
                        };
                        let _ = stream.set_nodelay(true);
                        let connection = Connection {
                            peer,
                            ticket,
                            router: router.clone(),
                            builder: builder.clone(),
                            limits,
                            stopped: stopped.clone(),
                        };
                        tasks.spawn(connection.run(stream, tls.clone()));
                    }
                    Err(error) => accept_failed(error, &connections, &mut out_of_descriptors).await,
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        drop(listener);
        let _ = stop.send(true);
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}

/// HTTP/1.1 and HTTP/2 (chosen by the client's first bytes) with the limits
/// of [`limits`].
fn http_builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits::H1_MAX_HEADERS)
        .max_buf_size(limits::H1_MAX_BUF_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits::H2_MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(limits::H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(limits::H2_MAX_LOCAL_ERROR_RESET_STREAMS)
        .max_header_list_size(limits::MAX_HEADER_BYTES)
        .keep_alive_interval(limits::H2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(limits::H2_KEEPALIVE_TIMEOUT);
    builder
}

/// One admitted connection.
struct Connection {
    peer: SocketAddr,
    ticket: Ticket,
    router: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: ConnectionLimits,
    stopped: watch::Receiver<bool>,
}

impl Connection {
    async fn run(mut self, stream: TcpStream, tls: Option<TlsAcceptor>) {
        let Some(acceptor) = tls else {
            return self.serve(stream).await;
        };
        let state = self.ticket.state().clone();
        let handshake = tokio::time::timeout(self.limits.tls_handshake_timeout, acceptor.accept(stream));
        let stream = tokio::select! {
            done = handshake => match done {
                Ok(Ok(stream)) => stream,
                // Scanners and clients that do not trust us fail here all the
                // time: not worth more than a debug line.
                Ok(Err(error)) => return tracing::debug!(%error, "TLS handshake failed"),
                Err(_) => return tracing::debug!("TLS handshake timed out"),
            },
            () = state.evicted() => return,
            _ = self.stopped.wait_for(|stop| *stop) => return,
        };
        self.ticket.handshake_done();
        self.serve(stream).await;
    }

    /// Serves HTTP on `io` until the client closes, the connection is idle
    /// too long, it is evicted, or the server shuts down.
    async fn serve<Io>(self, io: Io)
    where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let state = self.ticket.state().clone();
        let service = {
            let (state, router, peer) = (state.clone(), self.router.clone(), self.peer);
            service_fn(move |mut request: hyper::Request<Incoming>| {
                let busy = state.request_started();
                request.extensions_mut().insert(ConnectInfo(peer));
                let router = router.clone();
                async move {
                    let response = router.oneshot(request).await;
                    drop(busy);
                    Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
                }
            })
        };
        let Self { ticket: _ticket, builder, limits, mut stopped, .. } = self;
        let connection = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        // Once set, the connection was asked to close: `Closing` says when
        // it is dropped if it has not closed by then.
        let mut closing: Option<Closing> = None;
        loop {
            let wake_at = closing.as_ref().map_or_else(|| idle_check_at(&limits, &state), |c| c.drop_at);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                    return;
                }
                () = state.evicted(), if closing.is_none() => {
                    connection.as_mut().graceful_shutdown();
                    closing = Some(Closing::start());
                }
                _ = stopped.wait_for(|stop| *stop), if closing.is_none() => {
                    connection.as_mut().graceful_shutdown();
                    closing = Some(Closing::start());
                }
                () = tokio::time::sleep_until(wake_at) => match closing.as_mut() {
                    Some(closing) => {
                        if !closing.extend_if_busy(&state) {
                            return;
                        }
                    }
                    None => {
                        if idle_check_at(&limits, &state) <= Instant::now() {
                            connection.as_mut().graceful_shutdown();
                            closing = Some(Closing::start());
                        }
                    }
                },
            }
        }
    }
}

/// A connection asked to close (idle, evicted, or the server stopping). One
/// without a request in progress gets [`CLOSE_GRACE`] to say goodbye (a
/// silent or trickling client would otherwise hold it until its timeout); a
/// request in progress may finish within [`SHUTDOWN_GRACE`].
struct Closing {
    drop_at: Instant,
    latest: Instant,
}

impl Closing {
    fn start() -> Self {
        let now = Instant::now();
        Self { drop_at: now + CLOSE_GRACE, latest: now + SHUTDOWN_GRACE }
    }

    /// At `drop_at`: waits on until `latest` if a request is in progress;
    /// false when the connection is to be dropped now.
    fn extend_if_busy(&mut self, state: &ConnectionState) -> bool {
        if state.is_busy() && Instant::now() < self.latest {
            self.drop_at = self.latest;
            true
        } else {
            false
        }
    }
}

/// When to look again whether the connection has been idle too long.
fn idle_check_at(limits: &ConnectionLimits, state: &ConnectionState) -> Instant {
    match state.idle_deadline(limits.header_read_timeout, limits.idle_timeout) {
        Some(deadline) => Instant::from_std(deadline),
        // Busy: a request ends within REQUEST_TIMEOUT; look again after it.
        None => Instant::now() + REQUEST_TIMEOUT,
    }
}

/// Errors from `accept` that concern one connection are skipped. Out of file
/// descriptors, the oldest idle connection is closed to free one (silent
/// clients must not be able to hold them all while new connections wait in
/// the backlog). Other errors get a pause so the loop does not spin.
async fn accept_failed(error: io::Error, connections: &Connections, warning: &mut DescriptorWarning) {
    let per_connection = matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    );
    if per_connection {
        return;
    }
    if !is_out_of_descriptors(&error) {
        tracing::error!(%error, "cannot accept connections; retrying in 1s");
        tokio::time::sleep(Duration::from_secs(1)).await;
        return;
    }
    let victim = connections.evict_oldest_idle();
    warning.record(&error, victim.is_some());
    match victim {
        Some(victim) => {
            let _ = tokio::time::timeout(EVICTION_WAIT, victim.closed()).await;
        }
        None => tokio::time::sleep(ALL_BUSY_PAUSE).await,
    }
}

/// `EMFILE` (this process) or `ENFILE` (the whole system).
fn is_out_of_descriptors(error: &io::Error) -> bool {
    #[cfg(unix)]
    {
        use nix::errno::Errno;
        error
            .raw_os_error()
            .is_some_and(|code| matches!(Errno::from_raw(code), Errno::EMFILE | Errno::ENFILE))
    }
    #[cfg(not(unix))]
    {
        let _ = error;
        false
    }
}

/// Logs running out of file descriptors at most once per
/// [`DESCRIPTOR_WARNING_PERIOD`], with how often it happened meanwhile.
#[derive(Debug, Default)]
struct DescriptorWarning {
    last: Option<Instant>,
    since: u64,
}

impl DescriptorWarning {
    fn record(&mut self, error: &io::Error, evicted: bool) {
        self.since += 1;
        if self.last.is_some_and(|last| last.elapsed() < DESCRIPTOR_WARNING_PERIOD) {
            return;
        }
        tracing::warn!(
            %error,
            times = self.since,
            evicted,
            "out of file descriptors: closing the oldest idle connection to accept a new one; \
             raise the open-files limit (RLIMIT_NOFILE) or lower --max-connections"
        );
        self.last = Some(Instant::now());
        self.since = 0;
    }
}
