//! What a wait resolves to: [`Update`], [`Changed`] and [`Resync`].

use std::fmt;
use std::sync::Arc;

use crate::{Cursor, Epoch, Version};

/// One published value with its place in the sequence.
///
/// The value sits behind an [`Arc`]: a fan-out to a hundred thousand waiters
/// hands each of them the same allocation, never a clone of `T`.
pub struct Update<T> {
    pub(crate) epoch: Epoch,
    pub(crate) version: Version,
    pub(crate) value: Arc<T>,
}

impl<T> Update<T> {
    /// The version this value was published at.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The epoch of the sequence it belongs to.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The value.
    pub fn value(&self) -> &Arc<T> {
        &self.value
    }

    /// The value, without touching the reference count.
    pub fn into_value(self) -> Arc<T> {
        self.value
    }

    /// The cursor of a client that has seen this update.
    pub fn cursor(&self) -> Cursor {
        Cursor::at(self.version).with_epoch(self.epoch)
    }
}

impl<T> Clone for Update<T> {
    fn clone(&self) -> Self {
        Update {
            epoch: self.epoch,
            version: self.version,
            value: Arc::clone(&self.value),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Update<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Update")
            .field("epoch", &self.epoch)
            .field("version", &self.version)
            .field("value", &self.value)
            .finish()
    }
}

/// Why an answer is a resynchronisation rather than a plain continuation of
/// the client's cursor.
///
/// A client that gets one should treat the answer's updates as a new
/// baseline (replace what it shows) rather than append them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resync {
    /// The cursor is older than the retained history: `skipped` versions
    /// after it are gone. The answer holds every retained update after the
    /// cursor, newest last.
    Lagged {
        /// How many versions after the cursor could not be delivered.
        skipped: u64,
    },
    /// The cursor names a version newer than the current one: the sequence
    /// was restarted under the same epoch, or the client made the number up.
    /// The answer holds the retained history.
    Ahead,
    /// The cursor comes from another epoch (an earlier process, another
    /// sequence). The answer holds the retained history.
    OtherEpoch,
}

/// The answer to a wait: what the client missed, newest last.
///
/// With the default history of one, this is just the current value. With a
/// longer history (see [`Builder::history`](crate::Builder::history)) a
/// client whose cursor is still within it receives every update it missed,
/// in order, each exactly once.
pub struct Changed<T> {
    updates: Updates<T>,
    resync: Option<Resync>,
}

enum Updates<T> {
    /// The common case (and the only one with a history of one): no
    /// allocation per waiter.
    One(Update<T>),
    Many(Box<[Update<T>]>),
}

impl<T> Changed<T> {
    pub(crate) fn one(update: Update<T>, resync: Option<Resync>) -> Self {
        Changed {
            updates: Updates::One(update),
            resync,
        }
    }

    /// `updates` must not be empty.
    pub(crate) fn many(mut updates: Vec<Update<T>>, resync: Option<Resync>) -> Self {
        debug_assert!(!updates.is_empty());
        let updates = if updates.len() == 1 {
            Updates::One(updates.pop().expect("one update"))
        } else {
            Updates::Many(updates.into_boxed_slice())
        };
        Changed { updates, resync }
    }

    /// Every update after the client's cursor that the broadcaster still
    /// retained, oldest first; never empty.
    pub fn updates(&self) -> &[Update<T>] {
        match &self.updates {
            Updates::One(u) => std::slice::from_ref(u),
            Updates::Many(v) => v,
        }
    }

    /// The updates, oldest first.
    pub fn into_updates(self) -> Vec<Update<T>> {
        match self.updates {
            Updates::One(u) => vec![u],
            Updates::Many(v) => v.into_vec(),
        }
    }

    /// The newest update: the broadcaster's state when the answer was made.
    pub fn latest(&self) -> &Update<T> {
        match &self.updates {
            Updates::One(u) => u,
            Updates::Many(v) => v.last().expect("never empty"),
        }
    }

    /// `None` when the answer continues the cursor without a gap; otherwise
    /// why the client must treat it as a new baseline.
    pub fn resync(&self) -> Option<Resync> {
        self.resync
    }

    /// The version of the newest update.
    pub fn version(&self) -> Version {
        self.latest().version
    }

    /// The epoch of the sequence.
    pub fn epoch(&self) -> Epoch {
        self.latest().epoch
    }

    /// The newest value.
    pub fn value(&self) -> &Arc<T> {
        &self.latest().value
    }

    /// The cursor to wait with next.
    pub fn cursor(&self) -> Cursor {
        self.latest().cursor()
    }
}

impl<T> Clone for Changed<T> {
    fn clone(&self) -> Self {
        let updates = match &self.updates {
            Updates::One(u) => Updates::One(u.clone()),
            Updates::Many(v) => Updates::Many(v.clone()),
        };
        Changed {
            updates,
            resync: self.resync,
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Changed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Changed")
            .field("updates", &self.updates())
            .field("resync", &self.resync)
            .finish()
    }
}

impl<T> From<&Update<T>> for Cursor {
    fn from(u: &Update<T>) -> Self {
        u.cursor()
    }
}

impl<T> From<&Changed<T>> for Cursor {
    fn from(c: &Changed<T>) -> Self {
        c.cursor()
    }
}
