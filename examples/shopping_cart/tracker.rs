//! The open connections, watched from one place: which have been idle too
//! long (closed), and the graceful shutdown (drained).
//!
//! Each connection shares an [`Activity`] with the tracker: a count of its
//! requests in progress, when that count last changed, and its task's waker.
//! One sweep task ([`Tracker::sweep`]) looks at every connection a few times
//! per timeout and closes the ones idle too long. A per-connection timer
//! would do the same, but it sits in every connection's task (a tokio
//! `Sleep`, a `Notify` and its `Notified` future: a few hundred bytes per
//! held poll, and a timer-wheel entry re-armed on every request); the sweep
//! costs each connection its `Activity` (under 100 bytes) and the server a
//! scan of a few microseconds per thousand connections. A connection is
//! closed between one timeout and one sweep interval (a quarter of the
//! shorter timeout, between 10 ms and 1 s) after it became idle.
//!
//! On shutdown, [`Tracker::drain`] asks every connection to finish what it
//! is answering and close (hyper's graceful shutdown); those still open
//! after the drain time are closed by [`Tracker::close_all`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;
use hyper_util::server::graceful::GracefulConnection;
use parking_lot::Mutex;
use pin_project_lite::pin_project;
use tokio::sync::OwnedSemaphorePermit;

use super::conn::Limits;

/// `Activity::state`: the connection must close now.
const CLOSE: u32 = 1 << 31;
/// `Activity::state`: the connection must finish its requests and close.
const DRAIN: u32 = 1 << 30;
/// `Activity::state`: a request has started on the connection.
const STARTED: u32 = 1 << 29;
/// `Activity::state`: the requests in progress.
const IN_FLIGHT: u32 = STARTED - 1;

/// One connection's state, shared by its task, its service and the tracker.
pub(crate) struct Activity {
    /// The flags above and the count of requests in progress.
    state: AtomicU32,
    /// When the count last fell to 0, or the connection opened ([`now`]).
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
    /// Marks a request as started, until the returned guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.state.fetch_add(1, Ordering::SeqCst);
        self.state.fetch_or(STARTED, Ordering::SeqCst);
        Busy(Arc::clone(self))
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
        let limit = if state & STARTED != 0 {
            limits.idle_timeout
        } else {
            limits.header_timeout
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
        draining: bool,
    }
}

impl<C> Tracked<C> {
    pub(crate) fn new(conn: C, activity: Arc<Activity>) -> Self {
        Tracked {
            conn,
            activity,
            draining: false,
        }
    }
}

impl<C: GracefulConnection> Future for Tracked<C> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        // Registered before the state is read: a flag raised after the read
        // wakes this task again.
        this.activity.waker.register(cx.waker());
        let state = this.activity.state.load(Ordering::SeqCst);
        if state & CLOSE != 0 {
            return Poll::Ready(());
        }
        if state & DRAIN != 0 && !*this.draining {
            *this.draining = true;
            this.conn.as_mut().graceful_shutdown();
        }
        // A connection error (a client that went away, a header timeout)
        // concerns that client only.
        this.conn.poll(cx).map(|_| ())
    }
}
