//! The loader of a [`KeyedChannels`](super::KeyedChannels) hub: brings
//! the backplane in line with the keys that are live on this instance, in
//! batches.
//!
//! The local hub's hooks only note that a key changed (it got a live
//! broadcaster, or lost it) and wake the loader. The loader takes up to
//! [`BATCH`] changed keys at a time and, for each, compares what is wanted
//! (the key's relay, if it is live) with what the backplane holds:
//!
//! - wanted and not registered: registered and subscribed (one batch of
//!   `SUBSCRIBE`, or per master of `SSUBSCRIBE`, for all of them), then
//!   read (one pipeline of read-only `sync.lua` calls for all of them);
//! - wanted, and another relay of the key registered (the key was parked
//!   and came back before the loader saw it): the new relay replaces it,
//!   still subscribed, and is read;
//! - not wanted, registered: unregistered and unsubscribed, in one batch.
//!
//! A key's waiters wait for its first read only; other keys go on. Keys
//! that change while a batch is on its way are taken by the next one.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::live::Inner;
use crate::redis::backplane::Core;
use crate::redis::relay::Relay;
use crate::redis::Codec;

/// The most keys the loader takes at once.
pub(super) const BATCH: usize = 1000;

/// The keys that changed, in order, each once.
#[derive(Default)]
pub(super) struct Queue {
    keys: Mutex<(VecDeque<String>, HashSet<String>)>,
    pub(super) wake: tokio::sync::Notify,
}

impl Queue {
    /// Notes that `key` changed, and wakes the loader.
    pub(super) fn push(&self, key: &str) {
        let mut keys = self.keys.lock();
        let (order, set) = &mut *keys;
        if set.insert(key.to_owned()) {
            order.push_back(key.to_owned());
        }
        drop(keys);
        self.wake.notify_one();
    }

    /// Takes up to [`BATCH`] keys.
    fn take(&self) -> Vec<String> {
        let mut keys = self.keys.lock();
        let (order, set) = &mut *keys;
        let n = order.len().min(BATCH);
        let taken: Vec<String> = order.drain(..n).collect();
        for k in &taken {
            set.remove(k);
        }
        taken
    }
}

/// The loader task of one hub: runs until the hub is dropped.
pub(super) async fn run<T>(core: Arc<Core>, queue: Arc<Queue>, hub: Weak<Inner<T>>)
where
    T: Codec + Send + Sync + 'static,
{
    loop {
        let keys = queue.take();
        if keys.is_empty() {
            if hub.strong_count() == 0 {
                return; // the hub is gone (its drop woke us)
            }
            queue.wake.notified().await;
            continue;
        }
        let Some(inner) = hub.upgrade() else { return };
        let mut register: Vec<Arc<dyn Relay>> = Vec::new();
        let mut unregister: Vec<Arc<dyn Relay>> = Vec::new();
        let mut read: Vec<Arc<dyn Relay>> = Vec::new();
        for key in &keys {
            let wanted: Option<Arc<dyn Relay>> = inner.relay_of(key).map(|r| r as Arc<dyn Relay>);
            let name = inner.channel_name(key);
            let held = core.channels.read().get(&name).cloned();
            match (wanted, held) {
                (Some(w), None) => {
                    read.push(Arc::clone(&w));
                    register.push(w);
                }
                (Some(w), Some(h)) if !Arc::ptr_eq(&w, &h) => {
                    // Still subscribed under the name: swap the relay.
                    core.channels.write().insert(name, Arc::clone(&w));
                    read.push(w);
                }
                (Some(w), Some(_)) => {
                    if !inner.is_loaded(&w) {
                        read.push(w);
                    }
                }
                (None, Some(h)) => unregister.push(h),
                (None, None) => {}
            }
        }
        drop(inner);
        if !unregister.is_empty() {
            core.unregister(&unregister).await;
        }
        if !register.is_empty() {
            // Subscribed before the read: nothing published in between is
            // missed, and what arrives twice is dropped by version.
            core.register(register).await;
        }
        if !read.is_empty() {
            let failed = core.catch_up(read.clone()).await.is_err();
            for relay in &read {
                if failed {
                    relay.sync().stale.store(true, Ordering::Release);
                }
                if relay.sync().stale.load(Ordering::Acquire) {
                    // Redis is away: read again with backoff; the waiters
                    // that wait for the first read are told meanwhile.
                    core.request_resync(Arc::clone(relay));
                }
                relay.load_attempted();
            }
        }
    }
}
