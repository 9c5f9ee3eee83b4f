//! The open connections, watched from one place: which have been idle too
//! long (closed), and the graceful shutdown (drained).
//!
//! Each connection shares an [`Activity`] with the tracker: its requests in
//! progress, whether it speaks HTTP/2, whether an answer is stuck in its
//! socket (the client stopped reading), since when it has been idle, and its
//! task's waker. Its service marks requests ([`Activity::begin`]) and its
//! socket ([`Io`]) marks writes that cannot go out. One sweep task
//! ([`Tracker::sweep`]) looks at every connection a few times per timeout
//! and closes the ones idle too long. A connection with a request in
//! progress (a held long poll) is never idle; otherwise it is closed after
//!
//! * `--header-timeout` when no request has started since it opened, or
//!   (HTTP/1.1) since its last answer: the next request's head must arrive
//!   within it, whether the client sends nothing or sends it too slowly;
//! * `--idle-timeout` when no request has been in progress that long (an
//!   idle keep-alive connection, HTTP/1.1 or HTTP/2), or an answer has been
//!   stuck in its socket that long (the client stopped reading).
//!
//! The alternative, a timer per connection, sits in every connection: hyper's
//! header-read timeout is a boxed tokio `Sleep` created and registered for
//! every request, and an idle timer costs each connection's task a `Sleep`, a
//! `Notify` and its `Notified` future (a few hundred bytes per held poll).
//! The sweep costs each connection its `Activity` (under 100 bytes, no
//! timer) and the server a scan of a few microseconds per thousand
//! connections. A connection is closed between its timeout and one sweep
//! interval (a quarter of the shorter timeout, from 10 ms to 1 s) later.
//!
//! On shutdown, [`Tracker::drain`] asks every connection to finish what it
//! is answering and close (hyper's graceful shutdown); those still open
//! after the drain time are closed by [`Tracker::close_all`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulConnection;
use parking_lot::Mutex;
use pin_project_lite::pin_project;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::conn::Limits;

/// `Activity::state`: the connection must close now.
const CLOSE: u32 = 1 << 31;
/// `Activity::state`: the connection must finish its requests and close.
const DRAIN: u32 = 1 << 30;
/// `Activity::state`: a request has started on the connection.
const STARTED: u32 = 1 << 29;
/// `Activity::state`: a request came as HTTP/2.
const HTTP2: u32 = 1 << 28;
/// `Activity::state`: a write could not go out (the socket's buffer is full)
/// and none has since.
const STUCK: u32 = 1 << 27;
/// `Activity::state`: the requests in progress.
const IN_FLIGHT: u32 = STUCK - 1;

/// One connection's state, shared by its task, its service and the tracker.
pub(crate) struct Activity {
    /// The flags above and the count of requests in progress.
    state: AtomicU32,
    /// When the connection opened, its count of requests last fell to 0,
    /// or its writes got stuck or went out again ([`now`]).
    idle_since: AtomicU64,
    /// The connection task's, woken when the tracker sets a flag.
    waker: AtomicWaker,
    /// The connection's place under `--max-connections`, returned with the
    /// last reference to this (the task's and its service's).
    _slot: OwnedSemaphorePermit,
}

/// One request in progress: ends when dropped.
pub(crate) struct Busy(Arc<Activity>);

impl Activity {
    /// Marks a request as started, until the returned guard is dropped;
    /// `http2` if it came as HTTP/2.
    pub(crate) fn begin(self: &Arc<Self>, http2: bool) -> Busy {
        let before = self.state.fetch_add(1, Ordering::SeqCst);
        let flags = STARTED | if http2 { HTTP2 } else { 0 };
        if before & flags != flags {
            self.state.fetch_or(flags, Ordering::SeqCst);
        }
        Busy(Arc::clone(self))
    }

    /// Notes a write to the socket: `stuck` if it could not go out.
    fn wrote(&self, stuck: bool) {
        let state = self.state.load(Ordering::Relaxed);
        if (state & STUCK != 0) != stuck {
            // Since when it is stuck, or since it moved again.
            self.idle_since.store(now(), Ordering::SeqCst);
            if stuck {
                self.state.fetch_or(STUCK, Ordering::SeqCst);
            } else {
                self.state.fetch_and(!STUCK, Ordering::SeqCst);
            }
        }
    }

    /// Sets `flag` and wakes the connection's task to act on it.
    fn raise(&self, flag: u32) {
        self.state.fetch_or(flag, Ordering::SeqCst);
        self.waker.wake();
    }

    /// Closes the connection if it has been idle longer than `limits` allow
    /// at `now`; never one with a request in progress.
    fn close_if_idle(&self, now: u64, limits: &Limits) {
        let state = self.state.load(Ordering::SeqCst);
        if state & (IN_FLIGHT | CLOSE) != 0 {
            return;
        }
        let limit = if state & STARTED == 0 {
            limits.header_timeout
        } else if state & (STUCK | HTTP2) != 0 {
            limits.idle_timeout
        } else {
            // HTTP/1.1 waiting for the next request's head.
            limits.header_timeout.min(limits.idle_timeout)
        };
        let idle = now.saturating_sub(self.idle_since.load(Ordering::SeqCst));
        // Only if no request started since the state was read.
        if u128::from(idle) >= limit.as_nanos()
            && self
                .state
                .compare_exchange(state, state | CLOSE, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            self.waker.wake();
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        // The time first: a sweep that sees the count at 0 sees it too.
        self.0.idle_since.store(now(), Ordering::SeqCst);
        self.0.state.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Nanoseconds since the first call in this process: a clock that fits in
/// an atomic.
fn now() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Every open connection's [`Activity`], and the limits they are held to.
pub(crate) struct Tracker {
    limits: Limits,
    /// Compacted by each sweep; a connection that ended leaves a dead entry
    /// until then.
    open: Mutex<Vec<Weak<Activity>>>,
}

impl Tracker {
    pub(crate) fn new(limits: Limits) -> Tracker {
        Tracker {
            limits,
            open: Mutex::new(Vec::new()),
        }
    }

    /// Starts tracking a new connection, which holds `slot`; returns its
    /// [`Activity`] for its service and [`Tracked`].
    pub(crate) fn open(&self, slot: OwnedSemaphorePermit) -> Arc<Activity> {
        let activity = Arc::new(Activity {
            state: AtomicU32::new(0),
            idle_since: AtomicU64::new(now()),
            waker: AtomicWaker::new(),
            _slot: slot,
        });
        self.open.lock().push(Arc::downgrade(&activity));
        activity
    }

    /// How often [`sweep`](Self::sweep) looks: a quarter of the shorter
    /// timeout, from 10 ms to 1 s.
    fn interval(&self) -> Duration {
        let shorter = self.limits.header_timeout.min(self.limits.idle_timeout);
        (shorter / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// Closes idle connections, forever (abort it to stop).
    pub(crate) async fn sweep(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = now();
            self.open.lock().retain(|weak| match weak.upgrade() {
                Some(activity) => {
                    activity.close_if_idle(now, &self.limits);
                    true
                }
                None => false,
            });
        }
    }

    /// Asks every connection to finish the requests it is answering, then
    /// close (hyper's graceful shutdown: no new request is read).
    pub(crate) fn drain(&self) {
        self.raise_all(DRAIN);
    }

    /// Closes every connection now.
    pub(crate) fn close_all(&self) {
        self.raise_all(CLOSE);
    }

    fn raise_all(&self, flag: u32) {
        for activity in self.open.lock().iter().filter_map(Weak::upgrade) {
            activity.raise(flag);
        }
    }
}

pin_project! {
    /// A connection's future, ended early when its [`Activity`] says so:
    /// at once on `CLOSE`, after hyper's graceful shutdown on `DRAIN`.
    pub(crate) struct Tracked<C> {
        #[pin]
        conn: C,
        activity: Arc<Activity>,
        // The waker last given to `activity`: registered again only when
        // the task's waker changes or a flag was raised (which takes it).
        registered: Option<Waker>,
        draining: bool,
    }
}

impl<C> Tracked<C> {
    pub(crate) fn new(conn: C, activity: Arc<Activity>) -> Self {
        Tracked {
            conn,
            activity,
            registered: None,
            draining: false,
        }
    }
}

impl<C: GracefulConnection> Future for Tracked<C> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        // Registered before the state is read: a flag raised after the read
        // wakes this task again. A tokio task's waker stays the same from
        // poll to poll, so this is one comparison almost always.
        if !this
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            this.activity.waker.register(cx.waker());
            *this.registered = Some(cx.waker().clone());
        }
        let state = this.activity.state.load(Ordering::SeqCst);
        if state & CLOSE != 0 {
            return Poll::Ready(());
        }
        if state & DRAIN != 0 && !*this.draining {
            *this.draining = true;
            // The flag's wake took the registered waker: a later `CLOSE`
            // needs it again.
            this.activity.waker.register(cx.waker());
            this.conn.as_mut().graceful_shutdown();
        }
        // A connection error (a client that went away, a header timeout)
        // concerns that client only.
        this.conn.poll(cx).map(|_| ())
    }
}

/// A connection's socket, telling its [`Activity`] when an answer cannot
/// go out (the client stopped reading) and when it goes out again.
pub(crate) struct Io {
    inner: TokioIo<TcpStream>,
    activity: Arc<Activity>,
}

impl Io {
    pub(crate) fn new(tcp: TcpStream, activity: Arc<Activity>) -> Io {
        Io {
            inner: TokioIo::new(tcp),
            activity,
        }
    }

    fn noted<T>(&self, written: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.activity.wrote(written.is_pending());
        written
    }
}

impl hyper::rt::Read for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.noted(written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.noted(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
