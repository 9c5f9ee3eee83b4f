//! [`Builder`]: history, waiter limit, epoch and first version of a
//! [`Broadcaster`].

use std::collections::VecDeque;

use crate::changed::Update;
use crate::shared::{Inner, Shared};
use crate::sync::{Arc, AtomicUsize, Mutex};
use crate::telemetry::Handles;
use crate::{Broadcaster, Epoch, Version};

/// Configures a [`Broadcaster`]: history, waiter limit, epoch, first version.
///
/// ```
/// use longpoll::{Broadcaster, Version};
///
/// let b = Broadcaster::builder()
///     .history(64)          // cursors up to 64 versions behind miss nothing
///     .max_waiters(100_000) // the 100 001st waiter gets `WaitError::Full`
///     .build(String::from("hello"));
/// assert_eq!(b.version(), Version::ZERO);
/// assert_eq!(b.max_waiters(), Some(100_000));
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder {
    history: usize,
    max_waiters: Option<usize>,
    epoch: Option<Epoch>,
    initial_version: Version,
    hold_ahead: u8,
    failing: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            history: 1,
            max_waiters: None,
            epoch: None,
            initial_version: Version::ZERO,
            hold_ahead: 0,
            failing: false,
        }
    }
}

impl Builder {
    /// The defaults: a history of one, no waiter limit, a random epoch,
    /// version 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps the last `k` updates (default 1: latest-value semantics).
    ///
    /// A cursor at most `k` versions behind the current one receives every
    /// update it missed, in order. An older one receives what is retained,
    /// flagged [`Resync::Lagged`](crate::Resync::Lagged) with the number of versions it lost.
    ///
    /// # Panics
    ///
    /// If `k` is 0: the current value is always retained.
    pub fn history(mut self, k: usize) -> Self {
        assert!(
            k >= 1,
            "longpoll: history must keep at least the current value"
        );
        self.history = k;
        self
    }

    /// Refuses registrations past `n` waiters with
    /// [`WaitError::Full`](crate::WaitError::Full). Default: no limit.
    ///
    /// Futures, callbacks and streams count together. A future or a
    /// callback takes a place while it is registered; a
    /// [`ChangedStream`](crate::ChangedStream) takes one the first time it
    /// has to wait and keeps it, between items too, until it ends or is
    /// dropped, so that a stream never meets `Full` once it runs.
    pub fn max_waiters(mut self, n: usize) -> Self {
        self.max_waiters = Some(n);
        self
    }

    /// Uses `epoch` instead of a random one: for a sequence that continues
    /// one kept elsewhere (a database, a backplane).
    pub fn epoch(mut self, epoch: Epoch) -> Self {
        self.epoch = Some(epoch);
        self
    }

    /// Starts the sequence at `version` instead of 0.
    pub fn initial_version(mut self, version: Version) -> Self {
        self.initial_version = version;
        self
    }

    /// Lets a cursor of the current epoch up to `max` versions ahead wait
    /// for that version instead of being answered at once with
    /// [`Resync::Ahead`](crate::Resync::Ahead) (futures and streams; a
    /// callback is still answered at once). For a backplane, whose
    /// instances reach a version one after the other.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn hold_ahead(mut self, max: u8) -> Self {
        self.hold_ahead = max;
        self
    }

    /// Builds the broadcaster failing (see `Inner::failing`): its waits are
    /// refused until `set_failing(false)`. For a key of the Redis
    /// backplane's keyed hub, whose state is read from Redis after its
    /// broadcaster is made.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn refusing_waits(mut self) -> Self {
        self.failing = true;
        self
    }

    /// Builds the broadcaster, holding `initial` at the initial version.
    pub fn build<T>(self, initial: T) -> Broadcaster<T> {
        self.build_in(initial, Handles::new())
    }

    /// As [`build`](Self::build), recording through `telemetry` (a keyed
    /// hub's, shared by its keys).
    pub(crate) fn build_in<T>(self, initial: T, telemetry: Handles) -> Broadcaster<T> {
        let first = Update {
            epoch: self.epoch.unwrap_or_else(Epoch::random),
            version: self.initial_version,
            value: std::sync::Arc::new(initial),
        };
        self.build_from_in(vec![first], telemetry)
    }

    /// Builds a broadcaster that continues `retained` (oldest first, never
    /// empty): its epoch, versions and history, with this builder's limits.
    /// The keyed hub uses it to bring back a key it parked while idle; the
    /// builder's epoch and initial version are not used.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn build_from<T>(self, retained: Vec<Update<T>>) -> Broadcaster<T> {
        self.build_from_in(retained, Handles::new())
    }

    /// As [`build_from`](Self::build_from), recording through `telemetry`.
    pub(crate) fn build_from_in<T>(
        self,
        retained: Vec<Update<T>>,
        telemetry: Handles,
    ) -> Broadcaster<T> {
        debug_assert!(!retained.is_empty());
        let skip = retained.len().saturating_sub(self.history);
        let mut history = VecDeque::with_capacity(self.history.min(1024));
        history.extend(retained.into_iter().skip(skip));
        let mut inner = Inner::new(history);
        inner.failing = self.failing;
        Broadcaster::from_shared(Arc::new(Shared {
            inner: Mutex::new(inner),
            history: self.history,
            max_waiters: self.max_waiters.unwrap_or(usize::MAX),
            spare: Mutex::new(Vec::new()),
            handles: AtomicUsize::new(0),
            hold_ahead: self.hold_ahead,
            telemetry,
        }))
    }
}
