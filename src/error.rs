//! Error types. Each says what went wrong and what the caller can do about it.

use crate::Version;

/// A wait or a callback registration did not produce a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The broadcaster was closed (see [`Broadcaster::close`](crate::Broadcaster::close)),
    /// or its last [handle](crate::Broadcaster#handles-and-the-last-one) was
    /// dropped: no change will ever come. An HTTP server answers `503` with
    /// `Retry-After` so clients come back after the restart.
    #[error("broadcaster closed")]
    Closed,
    /// The broadcaster already holds its maximum number of waiters (see
    /// [`Builder::max_waiters`](crate::Builder::max_waiters)). Nothing was
    /// registered; retry later, or answer `503`. A stream meets it only the
    /// first time it has to wait (and then ends); once running, it keeps
    /// its place.
    #[error("too many waiters (limit {limit})")]
    Full {
        /// The configured maximum.
        limit: usize,
    },
    /// The deadline of a [`wait_timeout`](crate::Broadcaster::wait_timeout)
    /// passed with no change. Poll again with the same cursor.
    #[error("timed out waiting for a change")]
    TimedOut,
}

impl WaitError {
    /// Whether this is [`WaitError::Closed`].
    pub fn is_closed(&self) -> bool {
        matches!(self, WaitError::Closed)
    }

    /// Whether this is [`WaitError::Full`].
    pub fn is_full(&self) -> bool {
        matches!(self, WaitError::Full { .. })
    }

    /// Whether this is [`WaitError::TimedOut`].
    pub fn is_timed_out(&self) -> bool {
        matches!(self, WaitError::TimedOut)
    }
}

/// A publish on a closed broadcaster: nothing was stored and nobody woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("broadcaster closed")]
pub struct ClosedError;

/// A publish at an explicit version ([`Broadcaster::publish_at`](crate::Broadcaster::publish_at))
/// was refused; nothing was stored and nobody woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The broadcaster was closed.
    #[error("broadcaster closed")]
    Closed,
    /// The version is not newer than the current one: versions never go
    /// backwards. Drop the stale update (it was already delivered or
    /// superseded), or start a new epoch with
    /// [`Broadcaster::restart`](crate::Broadcaster::restart).
    #[error("version {version} is not newer than the current version {current}")]
    NotNewer {
        /// The version that was offered.
        version: Version,
        /// The broadcaster's current version.
        current: Version,
    },
}

/// A string that is not a [`Version`]: it must be 1 to 20 ASCII digits that
/// fit in an unsigned 64-bit integer. An HTTP server answers `400`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid version: expected an unsigned 64-bit decimal integer")]
pub struct ParseVersionError(pub(crate) ());

/// A string that is not an [`Epoch`](crate::Epoch): it must be 1 to 16 hex
/// digits, not all zero. An HTTP server answers `400`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid epoch: expected 1 to 16 hex digits, not all zero")]
pub struct ParseEpochError(pub(crate) ());
