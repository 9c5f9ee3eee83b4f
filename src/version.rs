//! The cursor types: [`Version`], [`Epoch`] and [`Cursor`].

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

use crate::error::{ParseEpochError, ParseVersionError};

/// The position of a value in a broadcaster's sequence.
///
/// A new broadcaster starts at version 0 (or at
/// [`Builder::initial_version`](crate::Builder::initial_version)); every
/// published change raises it by exactly one. A client that remembers the
/// last version it saw can hand it back as its [`Cursor`] and will never miss a
/// change.
///
/// `Version` parses from and prints as a plain decimal integer, the form it
/// takes in a query string (`?since=42`).
///
/// ```
/// use longpoll::Version;
///
/// let v: Version = "42".parse()?;
/// assert_eq!(v, Version::new(42));
/// assert_eq!(v.next(), Version::new(43));
/// assert_eq!(v.to_string(), "42");
/// assert!("-1".parse::<Version>().is_err());
/// # Ok::<(), longpoll::ParseVersionError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(u64);

impl Version {
    /// Version 0, where a new broadcaster starts.
    pub const ZERO: Version = Version(0);

    /// Wraps a raw version number.
    pub const fn new(n: u64) -> Self {
        Version(n)
    }

    /// The raw version number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The version after this one.
    ///
    /// # Panics
    ///
    /// At `u64::MAX`, which a sequence bumped a billion times a second reaches
    /// after 584 years.
    pub const fn next(self) -> Self {
        match self.0.checked_add(1) {
            Some(n) => Version(n),
            None => panic!("longpoll: version overflow"),
        }
    }
}

impl From<u64> for Version {
    fn from(n: u64) -> Self {
        Version(n)
    }
}

impl From<Version> for u64 {
    fn from(v: Version) -> Self {
        v.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for Version {
    type Err = ParseVersionError;

    /// Accepts 1 to 20 ASCII digits (no sign, no spaces) that fit in a `u64`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseVersionError(()));
        }
        s.parse::<u64>()
            .map(Version)
            .map_err(|_| ParseVersionError(()))
    }
}

/// Which version sequence a [`Version`] belongs to.
///
/// Each broadcaster draws a random epoch when it is built (unless one is
/// given with [`Builder::epoch`](crate::Builder::epoch)), so a cursor saved by
/// a client of an earlier process, or of another sequence, is recognised as
/// foreign and answered at once with the current state instead of waiting on a
/// version that will never come.
///
/// An epoch is a non-zero 64-bit number that prints as 16 lowercase hex
/// digits, the form it takes in an `ETag` or a query string.
///
/// ```
/// use longpoll::Epoch;
///
/// let e: Epoch = "00000000000000ff".parse()?;
/// assert_eq!(e.get(), 255);
/// assert_eq!(e.to_string(), "00000000000000ff");
/// assert_ne!(Epoch::random(), Epoch::random());
/// assert!("0".parse::<Epoch>().is_err());
/// # Ok::<(), longpoll::ParseEpochError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(NonZeroU64);

impl Epoch {
    /// Wraps a raw epoch; `None` for 0, which is not a valid epoch.
    pub const fn new(n: u64) -> Option<Self> {
        match NonZeroU64::new(n) {
            Some(n) => Some(Epoch(n)),
            None => None,
        }
    }

    /// The raw epoch number, never 0.
    pub const fn get(self) -> u64 {
        self.0.get()
    }

    /// A fresh epoch, distinct from any other this process drew and, with
    /// overwhelming probability, from those of other processes.
    pub fn random() -> Self {
        use std::collections::hash_map::RandomState;
        use std::hash::{BuildHasher, Hasher};
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::time::{SystemTime, UNIX_EPOCH};

        static COUNTER: AtomicU64 = AtomicU64::new(0);
        // `RandomState` is seeded from the OS once per thread and stepped per
        // call; the counter and the clock make two draws differ even so.
        let mut h = RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        Epoch(NonZeroU64::new(h.finish()).unwrap_or(NonZeroU64::MIN))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0.get())
    }
}

impl FromStr for Epoch {
    type Err = ParseEpochError;

    /// Accepts 1 to 16 hex digits (either case) that are not all zero.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseEpochError(()));
        }
        u64::from_str_radix(s, 16)
            .ok()
            .and_then(Epoch::new)
            .ok_or(ParseEpochError(()))
    }
}

/// Where a client stands: the last version it saw and the epoch it came from.
///
/// | cursor                                   | a wait ...                                  |
/// |------------------------------------------|---------------------------------------------|
/// | [`Cursor::NEXT`] (no version, no epoch)  | waits for the next change after the call    |
/// | current version, same or no epoch        | waits for the next change                   |
/// | older version, same or no epoch          | is ready at once with what it missed        |
/// | newer version (a restarted sequence)     | is ready at once with the current state     |
/// | another epoch, whatever the version      | is ready at once with the current state     |
///
/// The easy way to a cursor keeps the epoch: the answer of an earlier wait
/// converts into one (`&Changed`, `&Update`), so a polling loop chains with
/// `b.wait(&changed)` or `b.wait(changed.cursor())`, and a restart of the
/// sequence is never mistaken for a continuation. A bare [`Version`] does
/// not convert: [`Cursor::at`] says explicitly that any epoch will do, and
/// [`Cursor::new`] takes both parts from a client's request.
///
/// ```
/// use longpoll::{Cursor, Epoch, Version};
///
/// let c = Cursor::at(Version::new(3));
/// assert_eq!(c.version(), Some(Version::new(3)));
/// assert_eq!(c.epoch(), None);
/// let e = Epoch::random();
/// assert_eq!(c.with_epoch(e).epoch(), Some(e));
/// assert_eq!(Cursor::new(None, None), Cursor::NEXT);
/// ```
///
/// ```compile_fail
/// # let b = longpoll::Broadcaster::new(0);
/// // A version alone would drop the epoch: it does not convert.
/// let _wait = b.wait(longpoll::Version::new(3));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Cursor {
    version: Option<Version>,
    epoch: Option<Epoch>,
}

impl Cursor {
    /// No cursor: wait for the next change after the call.
    pub const NEXT: Cursor = Cursor {
        version: None,
        epoch: None,
    };

    /// A cursor at `version`, in whatever epoch the broadcaster has: the
    /// explicit "any epoch" form. A cursor that came from an answer
    /// (`changed.cursor()`) keeps its epoch, so that a restarted sequence
    /// is answered at once with [`Resync::OtherEpoch`](crate::Resync::OtherEpoch)
    /// instead of being taken for a continuation.
    pub const fn at(version: Version) -> Self {
        Cursor {
            version: Some(version),
            epoch: None,
        }
    }

    /// A cursor from the parts a client sent, either of which may be absent.
    pub const fn new(version: Option<Version>, epoch: Option<Epoch>) -> Self {
        Cursor { version, epoch }
    }

    /// This cursor, tied to `epoch`.
    #[must_use]
    pub const fn with_epoch(self, epoch: Epoch) -> Self {
        Cursor {
            epoch: Some(epoch),
            ..self
        }
    }

    /// The last version seen, if the client named one.
    pub const fn version(&self) -> Option<Version> {
        self.version
    }

    /// The epoch the version came from, if the client named one.
    pub const fn epoch(&self) -> Option<Epoch> {
        self.epoch
    }
}
