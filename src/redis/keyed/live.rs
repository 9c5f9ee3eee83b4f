//! The keys live on this instance: one relay each, made and dropped by
//! the local hub's hooks, and the absent state of a key Redis does not
//! hold.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::builder::Init;
use super::loader::Queue;
use crate::keyed::Keyed;
use crate::redis::backplane::{Backplane, Core};
use crate::redis::keys::Keys;
use crate::redis::relay::{ChannelCore, Local, Relay, SyncState};
use crate::redis::Codec;
use crate::{Broadcaster, Epoch};

pub(super) struct Inner<T> {
    pub(super) core: Arc<Core>,
    pub(super) backplane: Backplane,
    pub(super) hub: Keyed<String, T>,
    pub(super) name: String,
    pub(super) history: usize,
    pub(super) max_key_len: usize,
    pub(super) ttl: Option<Duration>,
    pub(super) once_ttl: Duration,
    pub(super) init: Init<T>,
    /// The relay of each live key, and which broadcaster it serves (by
    /// address: the hooks hold it alive while they run).
    pub(super) relays: Mutex<HashMap<String, LiveKey<T>>>,
    pub(super) queue: Arc<Queue>,
}

impl<T> Drop for Inner<T> {
    fn drop(&mut self) {
        // The loader finds the hub gone and ends.
        self.queue.wake.notify_one();
        // Nothing of this hub is relayed any more.
        let relays: Vec<Arc<dyn Relay>> = self
            .relays
            .get_mut()
            .drain()
            .map(|(_, live)| live.erased)
            .collect();
        let core = Arc::clone(&self.core);
        if !relays.is_empty() && !core.stopped.load(Ordering::Acquire) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { core.unregister(&relays).await });
            }
        }
    }
}

/// A live key's relay.
pub(super) struct LiveKey<T> {
    /// The address of the broadcaster it serves.
    pub(super) id: usize,
    pub(super) relay: Arc<ChannelCore<T>>,
    /// The same, as the backplane sees it.
    pub(super) erased: Arc<dyn Relay>,
}

/// The address that tells one broadcaster from another.
pub(super) fn id_of<T>(b: &Broadcaster<T>) -> usize {
    Arc::as_ptr(&b.shared) as *const () as usize
}

/// The epoch of the absent state of the channel `key` (its hash's name):
/// the same on every instance, without writing it (FNV-1a, 64 bits).
fn absent_epoch(key: &str) -> Epoch {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Epoch::new(h | 1).expect("odd, so not zero")
}

impl<T: Codec + Send + Sync + 'static> Inner<T> {
    pub(super) fn channel_name(&self, key: &str) -> String {
        Keys::new(&self.core.prefix, &format!("{}:{key}", self.name))
            .channel()
            .to_owned()
    }

    pub(super) fn relay_of(&self, key: &str) -> Option<Arc<ChannelCore<T>>> {
        self.relays.lock().get(key).map(|l| Arc::clone(&l.relay))
    }

    pub(super) fn is_loaded(&self, relay: &Arc<dyn Relay>) -> bool {
        relay.is_loaded()
    }

    /// The hook: `key` got the live broadcaster `b`.
    pub(super) fn went_live(&self, key: &str, b: &Broadcaster<T>) {
        let keys = Keys::new(&self.core.prefix, &format!("{}:{key}", self.name));
        let absent = absent_epoch(&keys.state);
        let (hub, owned) = (self.hub.clone(), key.to_owned());
        let id = id_of(b);
        let local = Local::Key(Box::new(move || {
            hub.live(owned.as_str()).filter(|b| id_of(b) == id)
        }));
        let relay = Arc::new(ChannelCore {
            keys,
            local,
            initial: (self.init)(key).encode(),
            absent: Some(absent),
            loaded: AtomicBool::new(false),
            load: tokio::sync::Notify::new(),
            history: self.history,
            once_ttl: self.once_ttl,
            ttl: self.ttl,
            retired: Mutex::new(Vec::new()),
            sync: SyncState::default(),
            failure: Mutex::new(None),
            delivery: crate::telemetry::Delivery::new(&self.core.telemetry),
        });
        let erased: Arc<dyn Relay> = relay.clone();
        self.relays
            .lock()
            .insert(key.to_owned(), LiveKey { id, relay, erased });
        self.queue.push(key);
    }

    /// The hook: `b`, live for `key`, left the map.
    pub(super) fn went_idle(&self, key: &str, b: &Broadcaster<T>) {
        if leave(&mut self.relays.lock(), key, id_of(b)) {
            self.queue.push(key);
        }
    }
}

/// Forgets `key`'s relay if it serves the broadcaster `id`; whether it did.
/// A key parked and brought back while the sweep that parked it was still
/// on its way to the hook has a new relay already: the late call leaves
/// it alone.
fn leave<T>(relays: &mut HashMap<String, LiveKey<T>>, key: &str, id: usize) -> bool {
    if relays.get(key).is_some_and(|l| l.id == id) {
        relays.remove(key);
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(id: usize) -> LiveKey<u64> {
        let relay = Arc::new(ChannelCore {
            keys: Keys::new("p:", "k"),
            local: Local::Key(Box::new(|| None)),
            initial: Vec::new(),
            absent: Some(absent_epoch("p:{k}")),
            loaded: AtomicBool::new(false),
            load: tokio::sync::Notify::new(),
            history: 1,
            once_ttl: Duration::from_secs(1),
            ttl: None,
            retired: Mutex::new(Vec::new()),
            sync: SyncState::default(),
            failure: Mutex::new(None),
            delivery: crate::telemetry::Delivery::new(&crate::telemetry::BackplaneMetrics::new()),
        });
        let erased: Arc<dyn Relay> = relay.clone();
        LiveKey { id, relay, erased }
    }

    #[test]
    fn a_late_idle_call_leaves_the_relay_of_a_newer_broadcaster() {
        let mut relays = HashMap::new();
        relays.insert("k".to_owned(), live(1));
        // Parked and back before the sweep's call arrived: a new relay.
        relays.insert("k".to_owned(), live(2));
        assert!(
            !leave(&mut relays, "k", 1),
            "the late call of broadcaster 1"
        );
        assert_eq!(relays["k"].id, 2);
        assert!(leave(&mut relays, "k", 2));
        assert!(relays.is_empty());
        assert!(!leave(&mut relays, "k", 2));
    }

    #[test]
    fn the_absent_epoch_is_the_same_for_a_name_and_differs_between_names() {
        assert_eq!(absent_epoch("p:{a}"), absent_epoch("p:{a}"));
        assert_ne!(absent_epoch("p:{a}"), absent_epoch("p:{b}"));
    }
}
