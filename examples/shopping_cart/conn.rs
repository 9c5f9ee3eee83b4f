//! What one connection may cost: how many connections are open at once,
//! how big a request head may be, how long one may take to send its headers,
//! and how long one may sit with no request in progress.
//!
//! * `--max-connections`: a [`Semaphore`] with one permit per connection.
//!   The accept loop always accepts, then takes a permit without waiting; a
//!   connection that finds none is answered `503` and closed at once
//!   ([`refuse`]). Waiting for a permit *before* accepting would leave the
//!   extra clients in the kernel's backlog with no answer until their own
//!   timeout, which is slower to notice and looks like a dead server. The
//!   permit travels with the connection's [`Activity`](super::tracker::Activity)
//!   and is returned when the connection ends, however it ends.
//! * `--max-header-bytes`: hyper's read buffer never grows past it
//!   (`max_buf_size`), and a request head longer than it is answered `431`
//!   and the connection closed (`max_header_size`; with `--h2c`, the buffer
//!   limit alone for HTTP/1.1 and `max_header_list_size` for HTTP/2). So a
//!   connection never buffers more than that for one request head, where
//!   hyper's default would let it buffer about 400 KiB.
//! * `--header-timeout` and `--idle-timeout`: enforced by the
//!   [tracker](super::tracker), which sweeps every connection a few times per
//!   timeout instead of keeping a timer in each: the next request's head
//!   must arrive within `--header-timeout` of the connection's start or
//!   (HTTP/1.1 keep-alive) of its previous answer; a connection with no
//!   request in progress, or whose answer has been stuck in its socket (the
//!   client stopped reading), is closed after `--idle-timeout`. hyper has no
//!   write timeout: without the second, a client that stops reading would
//!   keep its task, its buffers and its place under `--max-connections`
//!   forever. A held long poll is a request in progress, so it is never
//!   idle.
//!
//! HTTP/1.1 is served by hyper's own `http1` builder; `--h2c` switches to
//! hyper-util's auto builder, which serves HTTP/2 with prior knowledge on the
//! same port. The auto builder costs every connection about 1 KB more (its
//! connection future holds both protocols' state: 11.0 KB per held poll
//! against 10.1 KB, `loadgen` at 10 000 polls), for a protocol that only
//! proxies use in cleartext: browsers speak HTTP/2 only over TLS. (Its
//! first read, a peek at the protocol, would also make hyper's read buffer
//! double to 16 KiB; `--max-header-bytes` caps the buffer, which stops
//! that.)

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
    /// The largest request head (request line and headers), in bytes.
    pub(crate) max_header_bytes: usize,
    /// Whether HTTP/2 with prior knowledge (h2c) is served beside HTTP/1.1.
    pub(crate) h2c: bool,
}

impl Default for Limits {
    /// The flags' defaults: 10 s, 60 s, 100 000 connections, 8 KiB heads,
    /// HTTP/1.1 only.
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 100_000,
            max_header_bytes: 8 * 1024,
            h2c: false,
        }
    }
}

/// How connections are served: HTTP/1.1 alone, or (`--h2c`) HTTP/1.1 and
/// HTTP/2 with prior knowledge through hyper-util's auto builder.
pub(crate) enum Builders {
    Http1(http1::Builder),
    Auto(auto::Builder<TokioExecutor>),
}

impl Builders {
    /// The builders for `limits`.
    pub(crate) fn new(limits: &Limits) -> Builders {
        // hyper's read buffer never grows past this, so a request head over
        // it is answered 431 (`max_header_size` says so for the head alone).
        let max_buf = limits.max_header_bytes;
        if limits.h2c {
            let mut auto = auto::Builder::new(TokioExecutor::new());
            // The header timeout is the tracker's (see its docs), not a
            // timer of hyper's per request.
            auto.http1().header_read_timeout(None).max_buf_size(max_buf);
            auto.http2()
                .max_header_list_size(limits.max_header_bytes as u32);
            Builders::Auto(auto)
        } else {
            let mut http1 = http1::Builder::new();
            http1
                .header_read_timeout(None)
                .max_buf_size(max_buf)
                .max_header_size(limits.max_header_bytes);
            Builders::Http1(http1)
        }
    }
}

/// The places under `--max-connections`.
pub(crate) struct ConnectionSlots {
    slots: Arc<Semaphore>,
    max: u32,
}

impl ConnectionSlots {
    pub(crate) fn new(max_connections: usize) -> Self {
        let max = max_connections
            .min(Semaphore::MAX_PERMITS)
            .min(u32::MAX as usize) as u32;
        ConnectionSlots {
            slots: Arc::new(Semaphore::new(max as usize)),
            max,
        }
    }

    /// A place for one more connection, or `None` if all are taken. Never
    /// waits.
    pub(crate) fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.slots).try_acquire_owned().ok()
    }

    /// Completes once every place is free again: every connection ended.
    pub(crate) async fn all_free(&self) {
        let _all = self.slots.acquire_many(self.max).await;
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
