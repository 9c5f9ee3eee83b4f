//! What a waiter saw, checked: within an epoch versions rise strictly,
//! every gap is marked (`Lagged`, or a new epoch), and every (epoch,
//! version) carries one value wherever it was seen.

use std::collections::HashMap;

use longpoll::{Changed, Cursor, Epoch, Resync, Version};

/// Everything the waiters of a test saw, and what was wrong with it.
#[derive(Default)]
pub(crate) struct Log {
    /// `(channel, epoch, version)` -> the value first seen there.
    values: HashMap<(String, Epoch, Version), u64>,
    /// Updates seen.
    pub(crate) observed: u64,
    /// Marked gaps: lags and new epochs.
    pub(crate) marked: u64,
    /// Each marked gap, described (for a failing assertion to show).
    pub(crate) marks: Vec<String>,
    pub(crate) violations: Vec<String>,
}

impl Log {
    /// Records one answer of `channel` to a wait from `cursor`.
    pub(crate) fn answer(&mut self, channel: &str, cursor: Cursor, changed: &Changed<u64>) {
        if let Err(v) = check(cursor, changed) {
            self.violations.push(format!("{channel}: {v}"));
        }
        if let Some(resync) = changed.resync() {
            self.marked += 1;
            let versions: Vec<u64> = changed
                .updates()
                .iter()
                .map(|u| u.version().get())
                .collect();
            self.marks.push(format!(
                "{channel}: {resync:?} from {cursor:?} to {} {versions:?}",
                changed.epoch()
            ));
        }
        for u in changed.updates() {
            self.record(channel, u.epoch(), u.version(), **u.value());
        }
    }

    /// Records that `channel` carried `value` at `(epoch, version)`.
    pub(crate) fn record(&mut self, channel: &str, epoch: Epoch, version: Version, value: u64) {
        self.observed += 1;
        let seen = *self
            .values
            .entry((channel.to_owned(), epoch, version))
            .or_insert(value);
        if seen != value {
            self.violations.push(format!(
                "{channel}: ({epoch}, {version}) carried {seen} and {value}"
            ));
        }
    }
}

/// Checks one answer against the cursor it answered.
pub(crate) fn check(cursor: Cursor, changed: &Changed<u64>) -> Result<(), String> {
    let updates = changed.updates();
    let (since, epoch) = (cursor.version(), cursor.epoch());
    let rising = updates.windows(2).all(|w| w[0].version() < w[1].version())
        && updates.iter().all(|u| u.epoch() == changed.epoch());
    if !rising {
        return Err(format!("an answer that does not rise: {changed:?}"));
    }
    let first = updates[0].version();
    match changed.resync() {
        None => {
            let consecutive = updates
                .windows(2)
                .all(|w| w[1].version() == w[0].version().next());
            if Some(changed.epoch()) != epoch
                || since.map(Version::next) != Some(first)
                || !consecutive
            {
                return Err(format!("an unmarked gap after {cursor:?}: {changed:?}"));
            }
        }
        Some(Resync::Lagged { .. }) => {
            if Some(changed.epoch()) != epoch || since.is_some_and(|s| first <= s) {
                return Err(format!(
                    "a lag that goes back after {cursor:?}: {changed:?}"
                ));
            }
        }
        Some(Resync::OtherEpoch) => {
            if Some(changed.epoch()) == epoch {
                return Err(format!("a new epoch that is not new after {cursor:?}"));
            }
        }
        Some(other) => return Err(format!("{other:?} after {cursor:?}: older state")),
    }
    Ok(())
}
