//! Serving HTTP on a listener that clients cannot hold open by sending nothing: every listener of
//! the process (`hookrelay api`, the ops port, `hookrelay listen`) serves through [`serve`].
//!
//! axum's own `serve` keeps a connection as long as its client does, so 10,000 connections that
//! send nothing (or half a request head) stay open, and under a 1,024 file limit the process
//! cannot accept a real request any more. Here, per [`ConnectionLimits`]:
//! - hyper's `header_read_timeout` closes a connection whose request head has not arrived whole
//!   in time (hyper starts that clock whenever it waits for a head: a new connection, or the
//!   next request on a kept-alive one);
//! - a connection without a request in hand on which no byte moves for `idle_timeout` is closed;
//! - at most `max_connections` are open: at the bound, a new connection makes the oldest one
//!   without a request in hand close (an idle or half-sent one: the cheapest to lose, and the
//!   likeliest to be an attacker's), so that a real request still gets in while thousands of
//!   idle ones arrive; refusing the newcomer instead would refuse the real request along with
//!   them. Only when every connection has a request in hand is the newcomer closed at once.
//! - an accept error (out of file descriptors, `EMFILE`) neither stops the listener nor spins:
//!   the oldest idle connection is closed to free a descriptor and accepting resumes shortly.
//!
//! One file, though long: the slots, the accept loop and the per-connection task are one
//! bookkeeping (a slot's idle and in-hand state decides evictions), which is easier to trust
//! read together than split across files.

use crate::config::ConnectionLimits;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long accepting pauses after an accept error that is not about one connection (out of
/// file descriptors or memory): long enough not to spin, short enough that a real request
/// queued in the backlog is still answered well within a second.
const ACCEPT_PAUSE: Duration = Duration::from_millis(20);

/// How long a new connection may wait for an older one to become evictable (see [`Slot`]) or to
/// finish closing; then it is closed.
const ADMIT_WAIT: Duration = Duration::from_secs(5);

/// Connections told to close that may still hold their socket, beyond `max_connections`.
const EVICTING: usize = 32;

/// Connections the kernel completes and queues while the accept loop is busy (tokio's `bind`
/// queues 1,024). A flood can fill a short queue in a few milliseconds; a connection that finds
/// it full is dropped and its client retries only after a second.
const BACKLOG: u32 = 4096;

/// Binds `addr` (port 0: any free port) with a backlog of [`BACKLOG`].
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As tokio's `TcpListener::bind` does: a restarted server can bind at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Serves `app` on `listener` until `shutdown`; then stops accepting, lets the requests in hand
/// finish, and returns when the last connection has closed. `name` labels its log lines.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let table = Table::new(limits.max_connections);
    let tracker = TaskTracker::new();
    let mut warned = None;
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(slot) = admit(&table).await else {
                    warn_at_bound(name, &mut warned, "every connection has a request in hand");
                    continue; // dropping the stream closes it at once
                };
                let connection = Connection {
                    app: app.clone(),
                    peer,
                    slot,
                    limits: limits.clone(),
                    shutdown: shutdown.clone(),
                };
                tracker.spawn(connection.run(stream));
            }
            // The peer gave up before it was accepted: nothing to do.
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                tracing::warn!(listener = name, error = %e, "cannot accept a connection; \
                    closing the oldest idle one and pausing");
                table.evict_idle();
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_PAUSE) => {}
                }
            }
        }
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// A place for a new connection, waiting (at most [`ADMIT_WAIT`]) while the connections that could
/// make way have not been read yet or are still closing; `None` when every connection has a
/// request in hand.
async fn admit(table: &Table) -> Option<Arc<Slot>> {
    let deadline = tokio::time::Instant::now() + ADMIT_WAIT;
    loop {
        match table.admit() {
            Admission::Admitted(slot) => return Some(slot),
            Admission::Full => return None,
            Admission::NotYet if tokio::time::Instant::now() >= deadline => return None,
            Admission::NotYet => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// Warns at most once a minute that the bound is reached, so that a flood does not flood the log.
fn warn_at_bound(name: &'static str, last: &mut Option<Instant>, why: &str) {
    if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
        *last = Some(Instant::now());
        tracing::warn!(
            listener = name,
            why,
            "connection bound reached: refusing a connection"
        );
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One open connection as the accept loop sees it.
///
/// A connection is evicted only once its task has started reading it: a real client's request
/// head is usually in the socket before the connection is accepted, and when the accept loop
/// outpaces the connection tasks (a flood on a busy machine), evicting connections not read yet
/// would close real requests along with the idle ones. Accepting waits for the tasks instead,
/// and later connections wait in the listen backlog.
struct Slot {
    /// Set by the connection's task just before it first reads.
    started: AtomicBool,
    /// Requests being answered on it (0 or 1 with HTTP/1.1 without pipelining).
    in_hand: AtomicUsize,
    /// When a byte was last read or written, in milliseconds since `epoch`.
    last_io_ms: AtomicU64,
    epoch: Instant,
    /// Cancelled to make the connection close (the bound needs its place).
    evict: CancellationToken,
    closed: AtomicBool,
    /// The table's count of open sockets, decremented once when this one closes.
    open: Arc<AtomicUsize>,
}

impl Slot {
    fn new(open: Arc<AtomicUsize>) -> Self {
        Slot {
            open,
            started: AtomicBool::new(false),
            in_hand: AtomicUsize::new(0),
            last_io_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            evict: CancellationToken::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// Called once the socket is dropped.
    fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn touch(&self) {
        let ms = self
            .epoch
            .elapsed()
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX);
        self.last_io_ms.store(ms, Ordering::Relaxed);
    }

    fn is_idle(&self) -> bool {
        self.in_hand.load(Ordering::Acquire) == 0
    }

    fn is_evictable(&self) -> bool {
        self.started.load(Ordering::Acquire) && self.is_idle() && !self.is_closed()
    }

    /// When the connection will have been idle for `limit`, if nothing happens until then.
    fn idle_deadline(&self, limit: Duration) -> tokio::time::Instant {
        if !self.is_idle() {
            return tokio::time::Instant::now() + limit;
        }
        let last = self.epoch + Duration::from_millis(self.last_io_ms.load(Ordering::Relaxed));
        tokio::time::Instant::from_std(last + limit)
    }

    /// Idle for `limit` by now. Bytes may have moved while a timer slept: the deadline is
    /// computed afresh.
    fn idle_expired(&self, limit: Duration) -> bool {
        self.is_idle() && self.idle_deadline(limit) <= tokio::time::Instant::now()
    }
}

/// Counts a request in hand from the moment hyper hands it over until its response is ready.
struct InHand(Arc<Slot>);

impl InHand {
    fn new(slot: &Arc<Slot>) -> Self {
        slot.in_hand.fetch_add(1, Ordering::AcqRel);
        InHand(slot.clone())
    }
}

impl Drop for InHand {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_hand.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What [`Table::admit`] decided.
enum Admission {
    Admitted(Arc<Slot>),
    /// At the bound, and only connections not read yet could make way: try again shortly.
    NotYet,
    /// At the bound, and every connection has a request in hand.
    Full,
}

/// The open connections, oldest first.
struct Table {
    /// Those not told to close yet, oldest first; closed ones leave from the front or when the
    /// queue grows past twice the bound.
    slots: Mutex<VecDeque<Arc<Slot>>>,
    /// Connections whose socket is still open, including those told to close that have not yet.
    open: Arc<AtomicUsize>,
    max: usize,
}

impl Table {
    fn new(max: usize) -> Self {
        Table {
            slots: Mutex::new(VecDeque::new()),
            open: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// A place for a new connection: at the bound, the oldest idle connection is told to close.
    /// Sockets told to close count until they have, so that open sockets stay within
    /// `max + EVICTING` even when the connections' tasks lag behind the accept loop.
    fn admit(&self) -> Admission {
        // A std Mutex: held for a scan of at most `2 * max` entries, never across an await.
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        forget_closed(&mut slots, self.max);
        let open = self.open.load(Ordering::Acquire);
        if open >= self.max {
            if open >= self.max + EVICTING {
                return Admission::NotYet;
            }
            if !evict_oldest_idle(&mut slots) {
                let unread = slots.iter().any(|s| !s.started.load(Ordering::Acquire));
                return if unread {
                    Admission::NotYet
                } else {
                    Admission::Full
                };
            }
        }
        self.open.fetch_add(1, Ordering::AcqRel);
        let slot = Arc::new(Slot::new(self.open.clone()));
        slots.push_back(slot.clone());
        Admission::Admitted(slot)
    }

    fn evict_idle(&self) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        forget_closed(&mut slots, self.max);
        evict_oldest_idle(&mut slots);
    }
}

fn forget_closed(slots: &mut VecDeque<Arc<Slot>>, max: usize) {
    while slots.front().is_some_and(|s| s.is_closed()) {
        slots.pop_front();
    }
    if slots.len() > 2 * max {
        slots.retain(|s| !s.is_closed());
    }
}

/// Tells the oldest connection without a request in hand to close and forgets it.
fn evict_oldest_idle(slots: &mut VecDeque<Arc<Slot>>) -> bool {
    let Some(at) = slots.iter().position(|s| s.is_evictable()) else {
        return false;
    };
    if let Some(slot) = slots.remove(at) {
        slot.evict.cancel();
    }
    true
}

/// What one connection's task needs.
struct Connection {
    app: Router,
    peer: SocketAddr,
    slot: Arc<Slot>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
}

impl Connection {
    /// Serves the connection until the client closes it, a timeout or the bound closes it, or
    /// (after `shutdown`) its request in hand is answered.
    async fn run(self, stream: TcpStream) {
        let Connection {
            app,
            peer,
            slot,
            limits,
            shutdown,
        } = self;
        let _closed = ClosedOnDrop(slot.clone());
        slot.touch();
        let service = TowerToHyperService::new(app);
        let handler_slot = slot.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            // What `into_make_service_with_connect_info` would add: the client address.
            request.extensions_mut().insert(ConnectInfo(peer));
            let in_hand = InHand::new(&handler_slot);
            let response = hyper::service::Service::call(&service, request);
            async move {
                let response = response.await;
                drop(in_hand);
                response
            }
        });
        let io = TokioIo::new(Tracked {
            inner: stream,
            slot: slot.clone(),
        });
        let mut conn = pin!(http1_builder(&limits).serve_connection(io, service));
        let mut draining = false;
        slot.started.store(true, Ordering::Release);
        loop {
            let idle_deadline = slot.idle_deadline(limits.idle_timeout);
            tokio::select! {
                // The connection first: a request head already in the socket is read, and its
                // request counted in hand, before an eviction is looked at.
                biased;
                served = conn.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(%peer, error = %e, "connection ended");
                    }
                    break;
                }
                () = shutdown.cancelled(), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = slot.evict.cancelled() => break,
                () = tokio::time::sleep_until(idle_deadline) => {
                    if slot.idle_expired(limits.idle_timeout) {
                        tracing::debug!(%peer, "closing an idle connection");
                        break;
                    }
                }
            }
        }
    }
}

/// HTTP/1.1 with keep-alive, and a bound on how long a request head may take to arrive.
fn http1_builder(limits: &ConnectionLimits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder
}

/// Marks its slot closed when dropped: declared before the connection, it is dropped after it,
/// once the socket is closed (also when the task panics).
struct ClosedOnDrop(Arc<Slot>);

impl Drop for ClosedOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The connection's stream, noting when bytes move (for `idle_timeout`).
struct Tracked {
    inner: TcpStream,
    slot: Arc<Slot>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.slot.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.slot.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.slot.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Admission {
        fn slot(self) -> Option<Arc<Slot>> {
            match self {
                Admission::Admitted(slot) => Some(slot),
                Admission::NotYet | Admission::Full => None,
            }
        }
    }

    /// A place, with its connection's task started.
    fn admit_started(table: &Table) -> Arc<Slot> {
        let slot = table.admit().slot().expect("room");
        slot.started.store(true, Ordering::Release);
        slot
    }

    #[test]
    fn at_the_bound_the_oldest_idle_connection_makes_way() {
        let table = Table::new(2);
        let first = admit_started(&table);
        let second = admit_started(&table);
        let _busy = InHand::new(&first);
        let third = admit_started(&table);
        assert!(!first.evict.is_cancelled(), "a request in hand is kept");
        assert!(second.evict.is_cancelled());
        assert!(!third.evict.is_cancelled());
    }

    #[test]
    fn when_every_connection_has_a_request_in_hand_a_new_one_is_refused() {
        let table = Table::new(1);
        let only = admit_started(&table);
        let busy = InHand::new(&only);
        assert!(matches!(table.admit(), Admission::Full));
        drop(busy);
        assert!(table.admit().slot().is_some());
        assert!(only.evict.is_cancelled());
    }

    #[test]
    fn a_connection_not_read_yet_is_not_evicted_and_the_new_one_waits() {
        let table = Table::new(1);
        let unread = table.admit().slot().expect("room");
        assert!(matches!(table.admit(), Admission::NotYet));
        assert!(!unread.evict.is_cancelled());
        unread.started.store(true, Ordering::Release);
        assert!(table.admit().slot().is_some());
        assert!(unread.evict.is_cancelled());
    }

    #[test]
    fn connections_told_to_close_count_until_they_have() {
        let table = Table::new(1);
        let mut evicted = vec![admit_started(&table)];
        for _ in 0..EVICTING {
            evicted.push(admit_started(&table));
        }
        assert!(matches!(table.admit(), Admission::NotYet));
        evicted[0].close();
        assert!(table.admit().slot().is_some());
    }

    #[test]
    fn a_closed_connection_frees_its_place() {
        let table = Table::new(1);
        let only = admit_started(&table);
        let _busy = InHand::new(&only);
        only.close();
        assert!(table.admit().slot().is_some());
    }
}
