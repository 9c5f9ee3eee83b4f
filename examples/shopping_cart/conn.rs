//! What one connection may cost: how many connections are open at once,
//! how long one may take to send its headers, and how long one may sit with
//! no request in progress.
//!
//! * `--max-connections`: a [`Semaphore`] with one permit per connection.
//!   The accept loop always accepts, then takes a permit without waiting; a
//!   connection that finds none is answered `503` and closed at once
//!   ([`refuse`]). Waiting for a permit *before* accepting would leave the
//!   extra clients in the kernel's backlog with no answer until their own
//!   timeout, which is slower to notice and looks like a dead server. The
//!   permit travels with the connection's task and is returned when the
//!   connection ends, however it ends.
//! * `--header-timeout`: hyper's HTTP/1 header-read timeout. hyper starts it
//!   when it starts reading a request *and* again after each answer on a
//!   keep-alive connection, so it is also HTTP/1's idle keep-alive timeout.
//!   It does not cover a connection that has sent nothing yet: hyper-util's
//!   auto builder first reads until it can tell HTTP/1 from HTTP/2, with no
//!   timeout. So a connection on which no request has started within
//!   `--header-timeout` is dropped here too ([`Activity::until_idle`]),
//!   whichever protocol it speaks.
//! * `--idle-timeout`: a connection with no request in progress for this long
//!   is dropped ([`Activity::until_idle`]). It is the idle timeout of HTTP/2
//!   connections, where hyper has no header timeout, and it ends a connection
//!   whose client stopped reading its answers: hyper has no write timeout, so
//!   without it such a connection would keep its task, its buffers and its
//!   place under `--max-connections` forever. A held long poll is a request
//!   in progress, so it is never idle.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// The per-connection limits, from the flags.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Time to send a request's headers, from the connection's start or the
    /// end of the previous answer (HTTP/1).
    pub(crate) header_timeout: Duration,
    /// Time a connection may stay open with no request in progress.
    pub(crate) idle_timeout: Duration,
    /// Connections open at once.
    pub(crate) max_connections: usize,
}

impl Default for Limits {
    /// The flags' defaults: 10 s, 60 s, 100 000 connections.
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 100_000,
        }
    }
}

/// The places under `--max-connections`.
pub(crate) struct ConnectionSlots(Arc<Semaphore>);

impl ConnectionSlots {
    pub(crate) fn new(max_connections: usize) -> Self {
        ConnectionSlots(Arc::new(Semaphore::new(
            max_connections.min(Semaphore::MAX_PERMITS),
        )))
    }

    /// A place for one more connection, or `None` if all are taken. Never
    /// waits.
    pub(crate) fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.0).try_acquire_owned().ok()
    }
}

/// What a connection over the limit gets before it is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
    content-type: application/json\r\n\
    cache-control: no-store\r\n\
    retry-after: 5\r\n\
    connection: close\r\n\
    content-length: 55\r\n\
    \r\n\
    {\"error\":\"too many connections are open; retry later\"}\n";

/// Answers a connection over the limit with `503` and closes it, without
/// waiting for anything: the answer is written only if the socket takes it
/// at once (a fresh socket always does). A client that had already sent its
/// request may see a reset instead of the `503`; either way it learns at
/// once that it was refused.
pub(crate) fn refuse(tcp: TcpStream) {
    let _ = tcp.try_write(REFUSED);
    drop(tcp);
}

/// Requests in progress on one connection, and whether any has started.
#[derive(Default)]
pub(crate) struct Activity {
    in_flight: AtomicUsize,
    started: AtomicBool,
    changed: Notify,
}

/// One request in progress: ends when dropped.
pub(crate) struct Busy(Arc<Activity>);

impl Activity {
    /// Marks a request as started, until the returned guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.started.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
        Busy(Arc::clone(self))
    }

    /// Completes once the connection has been idle too long: no request
    /// started within `limits.header_timeout` of its opening, or none in
    /// progress for `limits.idle_timeout` since.
    pub(crate) async fn until_idle(&self, limits: &Limits) {
        loop {
            // Created before the state is read: a `notify_waiters` after the
            // read reaches it even before it is first polled.
            let changed = self.changed.notified();
            if self.in_flight.load(Ordering::SeqCst) > 0 {
                changed.await;
                continue;
            }
            let limit = if self.started.load(Ordering::SeqCst) {
                limits.idle_timeout
            } else {
                limits.header_timeout
            };
            if tokio::time::timeout(limit, changed).await.is_err() {
                return;
            }
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}
