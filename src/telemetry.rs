//! Tracing events and metrics, behind the `tracing` and `metrics` features.
//!
//! Every call site in the crate is one line that calls a function of this
//! module, and every function here compiles to nothing when both features
//! are off: [`Handles`] and the small values passed in are then empty, so
//! the default build neither stores nor does anything more. The events and
//! metrics are listed in the crate documentation (`src/lib.rs`, section
//! "Observability").
//!
//! # What the hot paths pay
//!
//! - A registration: with `metrics`, one increment of the waiters gauge
//!   through a handle registered when the broadcaster was built (no
//!   registry lookup), after the lock is released. Nothing with `tracing`.
//! - A publish: with `metrics`, a counter increment, and if it woke
//!   anyone, two clock reads, a gauge decrement and two histogram records.
//!   With `tracing`, one check whether its `TRACE` event is enabled (and,
//!   only if it is, two clock reads and the event). Nothing per waiter
//!   beyond counting it.
//! - A refused wait or a resync answer: a counter increment and a `DEBUG`
//!   event.
//! - A backplane publish, and each Pub/Sub message: with `metrics`, one
//!   lock of the channel's delivery slot; a publish that is timed adds two
//!   clock reads, an allocation and a histogram record (see
//!   `delivery.rs`). Nothing with `tracing`.
//!
//! A broadcaster registers its metric handles with the recorder in place
//! when it is built ([`Handles::new`]); a keyed hub does so once, for all
//! its keys; a backplane registers its delivery histogram and missed
//! versions counter when it connects. So a recorder must be installed
//! before these are built; the backplane's other metrics (rare events) are
//! looked up when they happen.
//!
//! No recorder or subscriber code runs under a lock of the crate.

// What a build without some of the features does not use.
#![cfg_attr(
    not(all(feature = "tracing", feature = "metrics", feature = "http")),
    allow(dead_code)
)]

#[cfg(any(feature = "tracing", feature = "metrics"))]
use std::time::Instant;

use crate::{Changed, Epoch, Resync, Version, WaitError};

/// The `tracing` targets.
#[cfg(feature = "tracing")]
mod target {
    pub(super) const PUBLISH: &str = "longpoll::publish";
    pub(super) const WAIT: &str = "longpoll::wait";
    pub(super) const RESYNC: &str = "longpoll::resync";
    #[cfg(feature = "redis")]
    pub(super) const BACKPLANE: &str = "longpoll::backplane";
}

/// The metric names.
#[cfg(feature = "metrics")]
mod name {
    pub(super) const WAITERS: &str = "longpoll_waiters";
    pub(super) const PUBLISHES: &str = "longpoll_publishes_total";
    pub(super) const FANOUT_SECONDS: &str = "longpoll_fanout_duration_seconds";
    pub(super) const FANOUT_WAITERS: &str = "longpoll_fanout_waiters";
    pub(super) const REFUSED: &str = "longpoll_refused_waits_total";
    pub(super) const RESYNCS: &str = "longpoll_resyncs_total";
}

/// The metric handles of one broadcaster, or of every key of a keyed hub:
/// registered once, when it is built, so that no registration or publish
/// looks anything up. Empty without the `metrics` feature.
#[derive(Clone)]
pub(crate) struct Handles {
    #[cfg(feature = "metrics")]
    m: std::sync::Arc<Metrics>,
}

#[cfg(feature = "metrics")]
struct Metrics {
    waiters: metrics::Gauge,
    publishes: metrics::Counter,
    fanout_seconds: metrics::Histogram,
    fanout_waiters: metrics::Histogram,
    refused_full: metrics::Counter,
    refused_closed: metrics::Counter,
    refused_too_many_keys: metrics::Counter,
    resync_lagged: metrics::Counter,
    resync_ahead: metrics::Counter,
    resync_other_epoch: metrics::Counter,
}

impl Handles {
    /// Registers (and describes) the core's metrics with the recorder in
    /// place now: the thread's local one, else the global one, else none.
    #[inline]
    pub(crate) fn new() -> Self {
        Handles {
            #[cfg(feature = "metrics")]
            m: std::sync::Arc::new(Metrics::register()),
        }
    }
}

#[cfg(feature = "metrics")]
impl Metrics {
    fn register() -> Self {
        use metrics::{counter, describe_counter, describe_gauge, describe_histogram};
        use metrics::{gauge, histogram, Unit};
        use name::*;
        describe_gauge!(
            WAITERS,
            Unit::Count,
            "Waiters registered now (futures, callbacks and streams that wait), over every broadcaster"
        );
        describe_counter!(
            PUBLISHES,
            Unit::Count,
            "Publishes (notify, modify, publish_at, restart)"
        );
        describe_histogram!(
            FANOUT_SECONDS,
            Unit::Seconds,
            "Time a publish that woke anyone took to wake every waiter, outside the lock"
        );
        describe_histogram!(
            FANOUT_WAITERS,
            Unit::Count,
            "Waiters woken by a publish that woke anyone"
        );
        describe_counter!(
            REFUSED,
            Unit::Count,
            "Waits refused at once: full (waiter limit), closed (or a broken backplane channel), too_many_keys"
        );
        describe_counter!(
            RESYNCS,
            Unit::Count,
            "Answers (long poll, keyed poll, SSE) that told a client to start over: lagged, ahead, other_epoch"
        );
        Metrics {
            waiters: gauge!(WAITERS),
            publishes: counter!(PUBLISHES),
            fanout_seconds: histogram!(FANOUT_SECONDS),
            fanout_waiters: histogram!(FANOUT_WAITERS),
            refused_full: counter!(REFUSED, "reason" => "full"),
            refused_closed: counter!(REFUSED, "reason" => "closed"),
            refused_too_many_keys: counter!(REFUSED, "reason" => "too_many_keys"),
            resync_lagged: counter!(RESYNCS, "reason" => "lagged"),
            resync_ahead: counter!(RESYNCS, "reason" => "ahead"),
            resync_other_epoch: counter!(RESYNCS, "reason" => "other_epoch"),
        }
    }
}

impl std::fmt::Debug for Handles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handles").finish_non_exhaustive()
    }
}

// ------------------------------------------------------------------ waiters

/// A waiter entered a broadcaster's list (call after the lock is released).
#[inline(always)]
pub(crate) fn waiter_added(h: &Handles) {
    let _ = h;
    #[cfg(feature = "metrics")]
    h.m.waiters.increment(1.0);
}

/// `n` waiters left a list without a fan-out: cancelled (call after the
/// lock is released).
#[inline(always)]
pub(crate) fn waiters_removed(h: &Handles, n: usize) {
    let _ = (h, n);
    #[cfg(feature = "metrics")]
    if n > 0 {
        h.m.waiters.decrement(n as f64);
    }
}

/// Why a wait was refused at once.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Refused {
    /// The waiter limit.
    Full { limit: usize },
    /// Closed, or the backplane channel behind the broadcaster is broken.
    Closed,
    /// A keyed hub's key limit.
    TooManyKeys { limit: usize },
}

impl Refused {
    #[cfg(feature = "tracing")]
    fn reason(self) -> &'static str {
        match self {
            Refused::Full { .. } => "full",
            Refused::Closed => "closed",
            Refused::TooManyKeys { .. } => "too_many_keys",
        }
    }
}

/// A wait was refused at once (call after the lock is released).
#[inline]
pub(crate) fn refused(h: &Handles, why: Refused) {
    let _ = (h, why);
    #[cfg(feature = "metrics")]
    match why {
        Refused::Full { .. } => h.m.refused_full.increment(1),
        Refused::Closed => h.m.refused_closed.increment(1),
        Refused::TooManyKeys { .. } => h.m.refused_too_many_keys.increment(1),
    }
    #[cfg(feature = "tracing")]
    match why {
        Refused::Full { limit } | Refused::TooManyKeys { limit } => {
            tracing::debug!(target: target::WAIT, reason = why.reason(), limit, "wait refused");
        }
        Refused::Closed => {
            tracing::debug!(target: target::WAIT, reason = why.reason(), "wait refused")
        }
    }
}

// ------------------------------------------------------------------ fan-out

/// What a fan-out answers.
#[derive(Clone, Copy, Debug)]
pub(crate) enum FanOut {
    /// A publish of this version.
    Publish(Version),
    /// A restart at this epoch and version.
    Restart(Epoch, Version),
    /// A close: every waiter gets `Closed`.
    Close,
    /// A backplane channel broke: every waiter gets `Closed`.
    Failing,
}

impl FanOut {
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    fn is_publish(self) -> bool {
        matches!(self, FanOut::Publish(_) | FanOut::Restart(..))
    }
}

/// When a fan-out started, if anyone wants to know how long it took.
pub(crate) struct Timer {
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    start: Option<Instant>,
}

/// Starts timing a fan-out of `what` that wakes anyone (`any`): reads the
/// clock only if a metric or an enabled event will use it.
#[inline(always)]
pub(crate) fn fan_out_started(what: FanOut, any: bool) -> Timer {
    let _ = (what, any);
    Timer {
        #[cfg(any(feature = "tracing", feature = "metrics"))]
        start: (any && what.is_publish() && timed(what)).then(Instant::now),
    }
}

/// Whether a metric or an enabled event uses a publish's fan-out time.
#[cfg(feature = "metrics")]
#[inline(always)]
fn timed(_: FanOut) -> bool {
    true
}

/// Whether an enabled event uses a publish's fan-out time.
#[cfg(all(feature = "tracing", not(feature = "metrics")))]
#[inline(always)]
fn timed(what: FanOut) -> bool {
    match what {
        FanOut::Publish(_) => tracing::enabled!(target: target::PUBLISH, tracing::Level::TRACE),
        _ => tracing::enabled!(target: target::PUBLISH, tracing::Level::DEBUG),
    }
}

/// A fan-out of `what` woke (or called) `woken` waiters, which have left
/// the list.
#[inline]
pub(crate) fn fanned_out(h: &Handles, what: FanOut, woken: usize, timer: Timer) {
    let _ = (h, what, woken, &timer);
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    let elapsed = timer.start.map(|t| t.elapsed());
    #[cfg(feature = "metrics")]
    {
        let m = &h.m;
        if what.is_publish() {
            m.publishes.increment(1);
        }
        if woken > 0 {
            m.waiters.decrement(woken as f64);
            if let Some(elapsed) = elapsed {
                m.fanout_seconds.record(elapsed);
                m.fanout_waiters.record(woken as f64);
            }
        }
    }
    #[cfg(feature = "tracing")]
    {
        let fanout_ns = elapsed.map_or(0, |e| u64::try_from(e.as_nanos()).unwrap_or(u64::MAX));
        match what {
            FanOut::Publish(version) => tracing::trace!(
                target: target::PUBLISH,
                version = version.get(),
                waiters = woken,
                fanout_ns,
                "published"
            ),
            FanOut::Restart(epoch, version) => tracing::debug!(
                target: target::PUBLISH,
                %epoch,
                version = version.get(),
                waiters = woken,
                fanout_ns,
                "restarted under a new epoch"
            ),
            FanOut::Close => {
                tracing::debug!(target: target::PUBLISH, waiters = woken, "closed");
            }
            FanOut::Failing => tracing::debug!(
                target: target::PUBLISH,
                waiters = woken,
                "failing: waiters answered closed"
            ),
        }
    }
}

// ------------------------------------------------------------------ answers

/// The endpoint that answered.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Endpoint {
    LongPoll,
    KeyedPoll,
    Sse,
}

impl Endpoint {
    #[cfg(feature = "tracing")]
    fn as_str(self) -> &'static str {
        match self {
            Endpoint::LongPoll => "long_poll",
            Endpoint::KeyedPoll => "keyed_poll",
            Endpoint::Sse => "sse",
        }
    }
}

/// An endpoint answers with `answer`: counts a resync if it is one.
#[inline]
pub(crate) fn answered<T>(h: &Handles, answer: &Result<Changed<T>, WaitError>, via: Endpoint) {
    if let Ok(changed) = answer {
        resync(h, changed.resync(), via);
    }
}

/// An endpoint answers with `resync` (nothing if `None`).
#[inline]
pub(crate) fn resync(h: &Handles, resync: Option<Resync>, via: Endpoint) {
    let _ = (h, via);
    let Some(resync) = resync else { return };
    #[cfg(feature = "metrics")]
    match resync {
        Resync::Lagged { .. } => h.m.resync_lagged.increment(1),
        Resync::Ahead => h.m.resync_ahead.increment(1),
        Resync::OtherEpoch => h.m.resync_other_epoch.increment(1),
    }
    #[cfg(feature = "tracing")]
    match resync {
        Resync::Lagged { skipped } => tracing::debug!(
            target: target::RESYNC,
            reason = "lagged",
            skipped,
            endpoint = via.as_str(),
            "resync"
        ),
        Resync::Ahead => tracing::debug!(
            target: target::RESYNC,
            reason = "ahead",
            endpoint = via.as_str(),
            "resync"
        ),
        Resync::OtherEpoch => tracing::debug!(
            target: target::RESYNC,
            reason = "other_epoch",
            endpoint = via.as_str(),
            "resync"
        ),
    }
    #[cfg(not(any(feature = "tracing", feature = "metrics")))]
    let _ = resync;
}

// ---------------------------------------------------------------- backplane

#[cfg(feature = "redis")]
mod backplane;
#[cfg(feature = "redis")]
mod delivery;

#[cfg(feature = "redis")]
pub(crate) use backplane::*;
#[cfg(feature = "redis")]
pub(crate) use delivery::*;
