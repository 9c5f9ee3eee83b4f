//! The backplane's metrics of normal operation, behind `metrics` only: how
//! long a publish takes to come back over Pub/Sub to the instance that
//! made it, and how many versions the periodic check found missing.
//!
//! Both are recorded through handles registered once per backplane, when
//! it is built ([`BackplaneMetrics::new`]), so that no publish and no
//! message looks anything up.
//!
//! # Timing a delivery
//!
//! Each channel (each live key of a keyed hub) holds one slot
//! ([`Delivery`]) for one publish in flight: the instant before its script
//! is sent, then its position once the reply is in. The reply and the
//! publish's own Pub/Sub message come in either order, on two connections:
//! a message that comes first is kept (its position and arrival, the first
//! `EARLY` of them), and whichever of the two comes second records the
//! sample. Only this instance's clock is read.
//!
//! A publish is timed only while the subscription is up, once its channel
//! is subscribed and read, and only if the slot is free: a publish made
//! while another timed one of the channel is still out (concurrent
//! publishes, or one right after the last whose message has not come back
//! yet) goes untimed. Which publishes are timed so does not depend on how
//! long their own messages take, and the samples are not biased towards
//! fast deliveries, as they would be if each publish took the slot. A
//! timed publish is dropped, recording nothing, if the subscription goes
//! down before its message comes back (the message is lost with it), if it
//! published nothing or failed, and once it is older than `GIVE_UP` when
//! the next publish comes.

#[cfg(feature = "metrics")]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "metrics")]
use std::sync::Arc;
#[cfg(feature = "metrics")]
use std::time::{Duration, Instant};

#[cfg(feature = "metrics")]
use parking_lot::Mutex;

use crate::{Epoch, Version};

/// A channel's position: its epoch and version.
type Position = (Epoch, Version);

#[cfg(feature = "metrics")]
mod name {
    pub(super) const DELIVERY_SECONDS: &str = "longpoll_backplane_delivery_duration_seconds";
    pub(super) const MISSED_VERSIONS: &str = "longpoll_backplane_missed_versions_total";
}

/// How many messages that come before a timed publish's reply are kept to
/// be matched with it: more (other instances publishing to the channel in
/// that moment) and the publish may go untimed.
#[cfg(feature = "metrics")]
const EARLY: usize = 4;

/// How old a timed publish whose message has not come back may be before
/// the next publish takes its slot.
#[cfg(feature = "metrics")]
const GIVE_UP: Duration = Duration::from_secs(10);

/// One backplane's handles, registered with the recorder in place when it
/// is built, and the generation of its subscription. Cheap to clone (one
/// `Arc`); empty without `metrics`.
#[derive(Clone)]
pub(crate) struct BackplaneMetrics {
    #[cfg(feature = "metrics")]
    m: Arc<Shared>,
}

#[cfg(feature = "metrics")]
struct Shared {
    delivery: metrics::Histogram,
    missed: metrics::Counter,
    /// Counts the subscription's changes, up and down, so that it is odd
    /// while the subscription is up. A publish records the value it was
    /// timed under; any change since drops it.
    link: AtomicU64,
}

impl BackplaneMetrics {
    /// Describes and registers the metrics with the recorder in place now.
    pub(crate) fn new() -> Self {
        BackplaneMetrics {
            #[cfg(feature = "metrics")]
            m: Arc::new(Shared::register()),
        }
    }
}

#[cfg(feature = "metrics")]
impl Shared {
    fn register() -> Self {
        use metrics::{counter, describe_counter, describe_histogram, histogram, Unit};
        use name::*;
        describe_histogram!(
            DELIVERY_SECONDS,
            Unit::Seconds,
            "From a publish sent to Redis to its Pub/Sub message back on the same instance"
        );
        describe_counter!(
            MISSED_VERSIONS,
            Unit::Count,
            "Versions the periodic check found missing and a read supplied, without a reconnect"
        );
        Shared {
            delivery: histogram!(DELIVERY_SECONDS),
            missed: counter!(MISSED_VERSIONS),
            link: AtomicU64::new(0),
        }
    }

    fn link(&self) -> u64 {
        self.link.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for BackplaneMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackplaneMetrics").finish_non_exhaustive()
    }
}

/// The subscription went up or down (call on each change only).
#[inline]
pub(super) fn link_changed(m: &BackplaneMetrics) {
    let _ = m;
    #[cfg(feature = "metrics")]
    m.m.link.fetch_add(1, Ordering::AcqRel);
}

// ----------------------------------------------------------------- delivery

/// A channel's slot for one timed publish. Empty without `metrics`.
pub(crate) struct Delivery {
    #[cfg(feature = "metrics")]
    m: Arc<Shared>,
    #[cfg(feature = "metrics")]
    slot: Mutex<Slot>,
}

#[cfg(feature = "metrics")]
struct Slot {
    /// Publishes timed so far: each one's ticket.
    timed: u64,
    flight: Option<Box<Flight>>,
}

/// A timed publish.
#[cfg(feature = "metrics")]
struct Flight {
    ticket: u64,
    /// The link it was timed under.
    link: u64,
    sent: Instant,
    /// Its position, once its reply is in.
    at: Option<Position>,
    /// Messages that came before its reply: position and arrival.
    early: [Option<(Position, Instant)>; EARLY],
}

impl Delivery {
    /// A free slot, recording into `m`.
    pub(crate) fn new(m: &BackplaneMetrics) -> Self {
        let _ = m;
        Delivery {
            #[cfg(feature = "metrics")]
            m: Arc::clone(&m.m),
            #[cfg(feature = "metrics")]
            slot: Mutex::new(Slot {
                timed: 0,
                flight: None,
            }),
        }
    }
}

/// What the publisher holds of its publish: which one it is, if timed.
pub(crate) struct Sent {
    #[cfg(feature = "metrics")]
    ticket: Option<u64>,
}

/// A publish of the channel is about to be sent: times it if the
/// subscription is up, the channel is on it (`subscribed`, not called
/// without `metrics`), and the slot is free (or holds a publish of an
/// older link, or one older than `GIVE_UP`).
#[inline]
pub(crate) fn publish_sending(d: &Delivery, subscribed: impl FnOnce() -> bool) -> Sent {
    let _ = (d, &subscribed);
    #[cfg(feature = "metrics")]
    {
        let link = d.m.link();
        // Even: the subscription is down.
        if link.is_multiple_of(2) || !subscribed() {
            return Sent { ticket: None };
        }
        let now = Instant::now();
        let mut slot = d.slot.lock();
        if let Some(f) = &slot.flight {
            if f.link == link && now.saturating_duration_since(f.sent) < GIVE_UP {
                return Sent { ticket: None };
            }
        }
        slot.timed += 1;
        let ticket = slot.timed;
        slot.flight = Some(Box::new(Flight {
            ticket,
            link,
            sent: now,
            at: None,
            early: [None; EARLY],
        }));
        Sent {
            ticket: Some(ticket),
        }
    }
    #[cfg(not(feature = "metrics"))]
    Sent {}
}

/// The publish's reply is in: `published` is its position if it published
/// a version (`None`: it published nothing, or failed). Records the sample
/// if its message came first.
#[inline]
pub(crate) fn publish_replied(d: &Delivery, sent: Sent, published: Option<(Epoch, Version)>) {
    let _ = (d, &sent, published);
    #[cfg(feature = "metrics")]
    {
        let Some(ticket) = sent.ticket else { return };
        let link = d.m.link();
        let mut slot = d.slot.lock();
        let Some(f) = slot.flight.as_deref_mut().filter(|f| f.ticket == ticket) else {
            return; // given up, and taken by a newer publish
        };
        let mut sample = None;
        if let Some(at) = published.filter(|_| f.link == link) {
            match f.early.iter().flatten().find(|(p, _)| *p == at) {
                Some((_, arrived)) => sample = Some(arrived.saturating_duration_since(f.sent)),
                None => {
                    f.at = Some(at);
                    f.early = [None; EARLY];
                    return; // its message comes next
                }
            }
        }
        slot.flight = None;
        drop(slot);
        if let Some(sample) = sample {
            d.m.delivery.record(sample);
        }
    }
}

/// A Pub/Sub message of the channel, at `(epoch, version)`, arrived on the
/// subscription. Records the sample if it is the timed publish's, whose
/// reply came first.
#[inline]
pub(crate) fn message_arrived(d: &Delivery, epoch: Epoch, version: Version) {
    let _ = (d, epoch, version);
    #[cfg(feature = "metrics")]
    {
        let mut slot = d.slot.lock();
        let Some(f) = slot.flight.as_deref_mut() else {
            return;
        };
        let now = Instant::now();
        if f.link != d.m.link() {
            slot.flight = None; // timed under a subscription that is gone
            return;
        }
        let sample = match f.at {
            Some(at) if at == (epoch, version) => now.saturating_duration_since(f.sent),
            Some(_) => return, // another publish's
            None => {
                if let Some(free) = f.early.iter_mut().find(|e| e.is_none()) {
                    *free = Some(((epoch, version), now));
                }
                return;
            }
        };
        slot.flight = None;
        drop(slot);
        d.m.delivery.record(sample);
    }
}

// ----------------------------------------------------------- missed versions

/// Where Redis was for a channel when the periodic check last found this
/// instance elsewhere, until a read of the channel takes it. Empty without
/// `metrics`.
#[derive(Default)]
pub(crate) struct Behind {
    #[cfg(feature = "metrics")]
    at: Mutex<Option<Position>>,
}

/// The periodic check found the channel out of line: Redis holds `at`
/// (`None`: nothing, or a reply that did not parse).
#[inline]
pub(crate) fn check_found_behind(b: &Behind, at: Option<(Epoch, Version)>) {
    let _ = (b, at);
    #[cfg(feature = "metrics")]
    if let Some(at) = at {
        *b.at.lock() = Some(at);
    }
}

/// A read of the channel, about to be applied: where the check found Redis
/// and where the channel was before the read. Empty without `metrics`, or
/// if no check found it out of line.
pub(crate) struct Healing {
    #[cfg(feature = "metrics")]
    from: Option<(Position, Position)>,
}

/// A read of the channel is about to be applied (call with its sync lock
/// held); `position` gives what the channel holds now (not called
/// without `metrics`).
#[inline]
pub(crate) fn read_applying(b: &Behind, position: impl FnOnce() -> Position) -> Healing {
    let _ = (b, &position);
    Healing {
        #[cfg(feature = "metrics")]
        from: b.at.lock().take().map(|checked| (checked, position())),
    }
}

/// The versions a read healed, to count once its lock is released.
pub(crate) struct Healed {
    #[cfg(feature = "metrics")]
    versions: u64,
}

/// The read is applied (call with the sync lock still held): the versions
/// it moved the channel forward, up to where the check found Redis, in the
/// same epoch. `position` as for [`read_applying`].
#[inline]
pub(crate) fn read_applied(healing: Healing, position: impl FnOnce() -> Position) -> Healed {
    let _ = (&healing, &position);
    Healed {
        #[cfg(feature = "metrics")]
        versions: healing
            .from
            .map_or(0, |((e_checked, v_checked), (e0, v0))| {
                let (e1, v1) = position();
                if e_checked != e0 || e1 != e0 {
                    return 0; // a new epoch: counted as a restart
                }
                v_checked.min(v1).get().saturating_sub(v0.get())
            }),
    }
}

/// Counts what a read healed (call after releasing the sync lock).
#[inline]
pub(crate) fn versions_healed(m: &BackplaneMetrics, healed: Healed) {
    let _ = (m, &healed);
    #[cfg(feature = "metrics")]
    if healed.versions > 0 {
        m.m.missed.increment(healed.versions);
    }
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::*;

    /// A histogram's samples.
    #[derive(Default)]
    struct Samples(Mutex<Vec<f64>>);

    impl metrics::HistogramFn for Samples {
        fn record(&self, value: f64) {
            self.0.lock().push(value);
        }
    }

    /// A backplane whose subscription is up, its samples, a channel's slot.
    fn up() -> (BackplaneMetrics, Arc<Samples>, Delivery) {
        let samples = Arc::new(Samples::default());
        let m = BackplaneMetrics {
            m: Arc::new(Shared {
                delivery: metrics::Histogram::from_arc(Arc::clone(&samples)),
                missed: metrics::Counter::noop(),
                link: AtomicU64::new(0),
            }),
        };
        link_changed(&m);
        let d = Delivery::new(&m);
        (m, samples, d)
    }

    fn at(v: u64) -> Position {
        (Epoch::new(7).unwrap(), Version::new(v))
    }

    fn count(s: &Samples) -> usize {
        s.0.lock().len()
    }

    #[test]
    fn the_second_of_reply_and_message_records_one_sample() {
        let (_m, s, d) = up();
        // The reply first.
        let sent = publish_sending(&d, || true);
        publish_replied(&d, sent, Some(at(1)));
        assert_eq!(count(&s), 0);
        message_arrived(&d, at(2).0, at(2).1); // another publish's
        assert_eq!(count(&s), 0);
        message_arrived(&d, at(1).0, at(1).1);
        assert_eq!(count(&s), 1);
        message_arrived(&d, at(1).0, at(1).1); // a duplicate
        assert_eq!(count(&s), 1);
        // The message first, after another instance's.
        let sent = publish_sending(&d, || true);
        message_arrived(&d, at(2).0, at(2).1);
        message_arrived(&d, at(3).0, at(3).1);
        assert_eq!(count(&s), 1);
        publish_replied(&d, sent, Some(at(3)));
        assert_eq!(count(&s), 2);
        assert!(s.0.lock().iter().all(|x| *x >= 0.0));
    }

    #[test]
    fn a_publish_while_another_is_out_is_not_timed() {
        let (_m, s, d) = up();
        let first = publish_sending(&d, || true);
        let second = publish_sending(&d, || true);
        assert!(first.ticket.is_some() && second.ticket.is_none());
        publish_replied(&d, second, Some(at(2)));
        message_arrived(&d, at(2).0, at(2).1);
        assert_eq!(count(&s), 0, "the untimed one");
        publish_replied(&d, first, Some(at(1)));
        message_arrived(&d, at(1).0, at(1).1);
        assert_eq!(count(&s), 1);
    }

    #[test]
    fn a_publish_that_published_nothing_or_failed_frees_the_slot() {
        let (_m, s, d) = up();
        let sent = publish_sending(&d, || true);
        message_arrived(&d, at(1).0, at(1).1); // a restart's message
        publish_replied(&d, sent, None);
        assert_eq!(count(&s), 0);
        let sent = publish_sending(&d, || true);
        assert!(sent.ticket.is_some(), "the slot is free");
        publish_replied(&d, sent, Some(at(2)));
        message_arrived(&d, at(2).0, at(2).1);
        assert_eq!(count(&s), 1);
    }

    #[test]
    fn a_lost_subscription_drops_the_publish_and_frees_the_slot() {
        let (m, s, d) = up();
        let sent = publish_sending(&d, || true);
        publish_replied(&d, sent, Some(at(1)));
        link_changed(&m); // down: the message is lost with it
        assert!(
            publish_sending(&d, || true).ticket.is_none(),
            "not timed while down"
        );
        link_changed(&m); // up again
        message_arrived(&d, at(1).0, at(1).1); // cannot be; recorded if it were
        assert_eq!(count(&s), 0);
        // Lost before the reply.
        let sent = publish_sending(&d, || true);
        assert!(sent.ticket.is_some());
        message_arrived(&d, at(2).0, at(2).1);
        link_changed(&m);
        link_changed(&m);
        publish_replied(&d, sent, Some(at(2)));
        assert_eq!(count(&s), 0);
        // Taken by the next publish of the new link.
        let _ = publish_sending(&d, || true);
        link_changed(&m);
        link_changed(&m);
        let sent = publish_sending(&d, || true);
        assert!(
            sent.ticket.is_some(),
            "a publish of an older link gives way"
        );
        publish_replied(&d, sent, Some(at(3)));
        message_arrived(&d, at(3).0, at(3).1);
        assert_eq!(count(&s), 1);
    }

    #[test]
    fn a_read_counts_the_versions_it_brought_up_to_the_check() {
        let b = Behind::default();
        // No check found it behind: nothing.
        let healing = read_applying(&b, || at(1));
        assert_eq!(read_applied(healing, || at(5)).versions, 0);
        // Found at 4 while at 1; Pub/Sub brought 2, the read 3 and 4, and
        // 5 (published after the check).
        check_found_behind(&b, Some(at(4)));
        let healing = read_applying(&b, || at(2));
        assert_eq!(read_applied(healing, || at(5)).versions, 2);
        // Taken: the next read counts nothing.
        let healing = read_applying(&b, || at(5));
        assert_eq!(read_applied(healing, || at(6)).versions, 0);
        // Pub/Sub had brought everything by the read.
        check_found_behind(&b, Some(at(8)));
        let healing = read_applying(&b, || at(8));
        assert_eq!(read_applied(healing, || at(8)).versions, 0);
        // A new epoch is a restart, not missed versions.
        check_found_behind(&b, Some(at(12)));
        let other = (Epoch::new(9).unwrap(), Version::new(3));
        let healing = read_applying(&b, || at(8));
        assert_eq!(read_applied(healing, || other).versions, 0);
    }
}
