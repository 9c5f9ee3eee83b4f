//! The backplane's events: rare, so each metric is looked up when it
//! happens, with the recorder in place then.

#[cfg(any(feature = "tracing", feature = "metrics"))]
use std::time::Instant;

#[cfg(feature = "tracing")]
use super::target::BACKPLANE;
use crate::redis::BackplaneError;
use crate::{Epoch, Version};

#[cfg(feature = "metrics")]
mod name {
    pub(super) const CONNECTED: &str = "longpoll_backplane_connected";
    pub(super) const RECONNECTS: &str = "longpoll_backplane_reconnects_total";
    pub(super) const DOWNTIME: &str = "longpoll_backplane_downtime_seconds";
    pub(super) const CATCHUP_VERSIONS: &str = "longpoll_backplane_catchup_versions";
    pub(super) const CATCHUP_SECONDS: &str = "longpoll_backplane_catchup_duration_seconds";
    pub(super) const RESTARTS: &str = "longpoll_backplane_epoch_restarts_total";
    pub(super) const FAILURES: &str = "longpoll_backplane_channel_failures_total";
    pub(super) const HEALS: &str = "longpoll_backplane_channel_heals_total";
    pub(super) const REJECTED: &str = "longpoll_backplane_rejected_messages_total";
    pub(super) const HISTORY_DROPPED: &str = "longpoll_backplane_unreadable_history_total";
}

#[cfg(feature = "metrics")]
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    use name::*;
    describe_gauge!(
        CONNECTED,
        Unit::Count,
        "Backplanes whose subscription is up and caught up"
    );
    describe_counter!(
        RECONNECTS,
        Unit::Count,
        "Times a backplane's subscription was lost"
    );
    describe_histogram!(
        DOWNTIME,
        Unit::Seconds,
        "From a subscription lost to subscribed and caught up again"
    );
    describe_histogram!(
        CATCHUP_VERSIONS,
        Unit::Count,
        "Versions a catch-up after (re)subscribing moved the channels forward, summed over channels"
    );
    describe_histogram!(
        CATCHUP_SECONDS,
        Unit::Seconds,
        "Time of a catch-up read of every channel"
    );
    describe_counter!(
        RESTARTS,
        Unit::Count,
        "Channels moved to a new epoch: Redis lost their data or came back behind"
    );
    describe_counter!(
        FAILURES,
        Unit::Count,
        "Times a channel broke (unusable data in Redis)"
    );
    describe_counter!(HEALS, Unit::Count, "Times a broken channel healed");
    describe_counter!(
        REJECTED,
        Unit::Count,
        "Pub/Sub messages that did not parse or decode"
    );
    describe_counter!(
        HISTORY_DROPPED,
        Unit::Count,
        "History entries read from Redis that did not parse or decode, left out (their versions count as lost)"
    );
}

/// A backplane connected to Redis (its first subscription is opened).
pub(crate) fn backplane_connected(prefix: &str) {
    let _ = prefix;
    #[cfg(feature = "metrics")]
    describe();
    #[cfg(feature = "tracing")]
    tracing::info!(target: BACKPLANE, prefix, "backplane connected");
}

/// The subscription task's view of its link: since when it is down,
/// and how many attempts failed since. Empty without the features.
#[derive(Default)]
pub(crate) struct Link {
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    down_since: Option<Instant>,
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    attempts: u32,
}

/// Subscribed to every channel and caught up: the link is up.
pub(crate) fn subscription_up(link: &mut Link, m: &super::BackplaneMetrics) {
    let _ = &link;
    super::delivery::link_changed(m);
    #[cfg(feature = "metrics")]
    metrics::gauge!(name::CONNECTED).increment(1.0);
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    if let Some(since) = link.down_since.take() {
        let down = since.elapsed();
        let attempts = std::mem::take(&mut link.attempts) + 1;
        let _ = attempts;
        #[cfg(feature = "metrics")]
        metrics::histogram!(name::DOWNTIME).record(down);
        #[cfg(feature = "tracing")]
        tracing::info!(
            target: BACKPLANE,
            downtime_ms = u64::try_from(down.as_millis()).unwrap_or(u64::MAX),
            attempts,
            "backplane subscription restored"
        );
    } else {
        #[cfg(feature = "tracing")]
        tracing::debug!(target: BACKPLANE, "backplane subscribed");
    }
}

/// The live subscription was lost (`reason`): the task reconnects.
pub(crate) fn subscription_lost(link: &mut Link, m: &super::BackplaneMetrics, reason: &str) {
    let _ = (&link, reason);
    super::delivery::link_changed(m);
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    {
        link.down_since = Some(Instant::now());
        link.attempts = 0;
    }
    #[cfg(feature = "metrics")]
    {
        metrics::gauge!(name::CONNECTED).decrement(1.0);
        metrics::counter!(name::RECONNECTS).increment(1);
    }
    #[cfg(feature = "tracing")]
    tracing::warn!(target: BACKPLANE, reason, "backplane subscription lost; reconnecting");
}

/// An attempt to subscribe (and catch up) failed: the first of an
/// outage at `WARN`, the next ones at `DEBUG`.
pub(crate) fn reconnect_failed(link: &mut Link, error: &BackplaneError) {
    let _ = (&link, error);
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    {
        link.down_since.get_or_insert_with(Instant::now);
        link.attempts += 1;
    }
    #[cfg(feature = "tracing")]
    if link.attempts == 1 {
        tracing::warn!(target: BACKPLANE, %error, "backplane cannot subscribe; retrying with backoff");
    } else {
        tracing::debug!(target: BACKPLANE, %error, attempts = link.attempts, "backplane cannot subscribe yet");
    }
}

/// The backplane's last handle is gone; `connected`: its link was up.
pub(crate) fn backplane_stopped(connected: bool) {
    let _ = connected;
    #[cfg(feature = "metrics")]
    if connected {
        metrics::gauge!(name::CONNECTED).decrement(1.0);
    }
    #[cfg(feature = "tracing")]
    tracing::debug!(target: BACKPLANE, "backplane stopped");
}

/// A catch-up of every channel started, from these positions.
pub(crate) struct CatchUp {
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    start: Instant,
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    before: Vec<(Epoch, Version)>,
}

/// A catch-up starts; `before`: each channel's position (not read
/// without the features).
pub(crate) fn catch_up_started(before: impl Iterator<Item = (Epoch, Version)>) -> CatchUp {
    let _ = &before;
    CatchUp {
        #[cfg(any(feature = "tracing", feature = "metrics"))]
        start: Instant::now(),
        #[cfg(any(feature = "tracing", feature = "metrics"))]
        before: before.collect(),
    }
}

/// The catch-up is applied; `after`: each channel's position, in the
/// same order. A channel on a new epoch counts as restarted, not in
/// versions.
pub(crate) fn caught_up(catch_up: CatchUp, after: impl Iterator<Item = (Epoch, Version)>) {
    let _ = (&catch_up, &after);
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    {
        let elapsed = catch_up.start.elapsed();
        let (mut versions, mut restarted) = (0u64, 0usize);
        for ((e0, v0), (e1, v1)) in catch_up.before.iter().zip(after) {
            if *e0 == e1 {
                versions += v1.get().saturating_sub(v0.get());
            } else {
                restarted += 1;
            }
        }
        let _ = restarted;
        #[cfg(feature = "metrics")]
        {
            metrics::histogram!(name::CATCHUP_VERSIONS).record(versions as f64);
            metrics::histogram!(name::CATCHUP_SECONDS).record(elapsed);
        }
        #[cfg(feature = "tracing")]
        tracing::info!(
            target: BACKPLANE,
            channels = catch_up.before.len(),
            versions,
            restarted,
            elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            "backplane caught up"
        );
    }
}

/// `channel` moved to a new epoch, `epoch`.
pub(crate) fn epoch_restarted(channel: &str, epoch: Epoch) {
    let _ = (channel, epoch);
    #[cfg(feature = "metrics")]
    metrics::counter!(name::RESTARTS).increment(1);
    #[cfg(feature = "tracing")]
    tracing::warn!(
        target: BACKPLANE,
        channel,
        %epoch,
        "channel restarted under a new epoch: Redis lost its data or came back behind"
    );
}

/// `channel` broke: what Redis holds for it is unusable.
pub(crate) fn channel_broke(channel: &str, error: &BackplaneError) {
    let _ = (channel, error);
    #[cfg(feature = "metrics")]
    metrics::counter!(name::FAILURES).increment(1);
    #[cfg(feature = "tracing")]
    tracing::warn!(target: BACKPLANE, channel, %error, "channel broken; its waits are refused until it heals");
}

/// `channel`, broken, holds a usable state again.
pub(crate) fn channel_healed(channel: &str) {
    let _ = channel;
    #[cfg(feature = "metrics")]
    metrics::counter!(name::HEALS).increment(1);
    #[cfg(feature = "tracing")]
    tracing::info!(target: BACKPLANE, channel, "channel healed");
}

/// A Pub/Sub message of `channel` could not be relayed.
pub(crate) fn message_rejected(channel: &str, error: &BackplaneError) {
    let _ = (channel, error);
    #[cfg(feature = "metrics")]
    metrics::counter!(name::REJECTED).increment(1);
    #[cfg(feature = "tracing")]
    tracing::warn!(target: BACKPLANE, channel, %error, "message rejected; reading the channel again");
}

/// A read of `channel` left out `n` history entries that did not parse or
/// decode: bad data in Redis, which clients see as a lag.
pub(crate) fn history_dropped(channel: &str, n: usize) {
    let _ = (channel, n);
    #[cfg(feature = "metrics")]
    metrics::counter!(name::HISTORY_DROPPED).increment(n as u64);
    #[cfg(feature = "tracing")]
    tracing::warn!(target: BACKPLANE, channel, entries = n, "unreadable history entries left out; their versions count as lost");
}
