//! [`KeyedBuilder`]: the key limit, idle timeout and shards of a hub, and
//! the settings and first value of each new key.

use std::fmt;
use std::time::Duration;

use super::hub::{Hooks, Hub};
use super::Keyed;
use crate::sync::Arc;
use crate::Builder;

pub(crate) type Configure<K> = Box<dyn Fn(&K) -> Builder + Send + Sync>;
pub(crate) type Init<K, T> = Box<dyn Fn(&K) -> T + Send + Sync>;

/// Configures a [`Keyed`] hub: key limit, idle timeout, shards, and the
/// settings and first value of each new key.
///
/// ```
/// use longpoll::keyed::Keyed;
/// use longpoll::Builder;
/// use std::time::Duration;
///
/// let rooms: Keyed<String, Vec<String>> = Keyed::builder()
///     .max_keys(10_000)
///     .idle_timeout(Duration::from_secs(300))
///     .history(50) // every room keeps its last 50 updates ...
///     .configure(|room: &String| {
///         // ... except the announcements, which keep 500
///         let k = if room == "announcements" { 500 } else { 50 };
///         Builder::new().history(k).max_waiters(10_000)
///     })
///     .build();
/// assert_eq!(rooms.broadcaster("announcements")?.history_capacity(), 500);
/// assert_eq!(rooms.broadcaster("lobby")?.history_capacity(), 50);
/// # Ok::<(), longpoll::keyed::TooManyKeys>(())
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct KeyedBuilder<K, T> {
    max_keys: usize,
    idle_timeout: Duration,
    shards: Option<usize>,
    configure: Configure<K>,
    init: Option<Init<K, T>>,
    hooks: Option<Hooks<K, T>>,
}

impl<K, T> KeyedBuilder<K, T> {
    pub(super) fn new() -> Self {
        KeyedBuilder {
            max_keys: 100_000,
            idle_timeout: Duration::from_secs(60),
            shards: None,
            configure: Box::new(|_| Builder::new()),
            init: None,
            hooks: None,
        }
    }

    /// Installs the [`Hooks`].
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn hooks(mut self, hooks: Hooks<K, T>) -> Self {
        self.hooks = Some(hooks);
        self
    }

    /// Refuses to create keys past `n` with [`TooManyKeys`](super::TooManyKeys). Default
    /// 100 000.
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// How long a key must have been unused before [`Keyed::sweep`] removes
    /// it. Default 60 seconds; zero removes every unused key at the next
    /// sweep.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// Spreads the keys over `n` maps with a lock each (rounded up to a power
    /// of two). Default: four per available CPU, at least 8, at most 256.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    pub fn shards(mut self, n: usize) -> Self {
        assert!(n >= 1, "longpoll: a keyed hub needs at least one shard");
        self.shards = Some(n);
        self
    }

    /// Every new key keeps its last `k` updates: shorthand for
    /// [`configure`](Self::configure) with `Builder::new().history(k)`.
    ///
    /// # Panics
    ///
    /// If `k` is 0, as [`Builder::history`].
    pub fn history(self, k: usize) -> Self {
        // Check now rather than at the first key.
        let _ = Builder::new().history(k);
        self.configure(move |_| Builder::new().history(k))
    }

    /// Builds each new key's broadcaster from the [`Builder`] that `f`
    /// returns for it: per-key history, waiter limit or epoch.
    ///
    /// `f` runs outside the hub's locks, and may run for a key that another
    /// thread creates at the same moment (the loser's broadcaster is
    /// dropped unused). If it panics (or returns a builder that panics,
    /// such as `history(0)`), the panic reaches the caller that named the
    /// key and nothing is created: no place under
    /// [`max_keys`](Self::max_keys) is lost.
    pub fn configure<F>(mut self, f: F) -> Self
    where
        F: Fn(&K) -> Builder + Send + Sync + 'static,
    {
        self.configure = Box::new(f);
        self
    }

    /// Makes the first value of each new key (default: `T::default()`).
    ///
    /// Runs outside the hub's locks, like [`configure`](Self::configure),
    /// and a panic in it costs nothing either.
    pub fn init<F>(mut self, f: F) -> Self
    where
        F: Fn(&K) -> T + Send + Sync + 'static,
    {
        self.init = Some(Box::new(f));
        self
    }

    /// Builds the hub with the values of [`init`](Self::init).
    ///
    /// # Panics
    ///
    /// If no [`init`](Self::init) was given: use
    /// [`build`](Self::build) for a `T: Default`.
    pub fn build_with_init(self) -> Keyed<K, T> {
        let init = self
            .init
            .expect("longpoll: `build_with_init` needs `KeyedBuilder::init`");
        Self::assemble(
            self.max_keys,
            self.idle_timeout,
            self.shards,
            self.configure,
            init,
            self.hooks,
        )
    }

    fn assemble(
        max_keys: usize,
        idle_timeout: Duration,
        shards: Option<usize>,
        configure: Configure<K>,
        init: Init<K, T>,
        hooks: Option<Hooks<K, T>>,
    ) -> Keyed<K, T> {
        let n = shards.unwrap_or_else(|| {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cpus * 4).clamp(8, 256)
        });
        let hub = Hub::new(max_keys, idle_timeout, n, configure, init, hooks);
        Keyed {
            shared: Arc::new(hub),
        }
    }
}

impl<K, T: Default> KeyedBuilder<K, T> {
    /// Builds the hub. New keys start with [`init`](Self::init)'s value if
    /// one was given, otherwise with `T::default()`.
    pub fn build(mut self) -> Keyed<K, T> {
        let init = self
            .init
            .take()
            .unwrap_or_else(|| Box::new(|_: &K| T::default()));
        Self::assemble(
            self.max_keys,
            self.idle_timeout,
            self.shards,
            self.configure,
            init,
            self.hooks,
        )
    }
}

impl<K, T> fmt::Debug for KeyedBuilder<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBuilder")
            .field("max_keys", &self.max_keys)
            .field("idle_timeout", &self.idle_timeout)
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}
