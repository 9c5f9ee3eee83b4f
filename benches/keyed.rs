//! The keyed hub: publishing to 10 000 keys with 10 waiters each, against
//! the same publishes through handles held outside the hub, and the cost of
//! the hub's lookups.
//!
//! Groups:
//!
//! * `keyed_publish`: one round publishes once to each of 10 000 keys, each
//!   with 10 registered waiters (100 000 wake-ups). `hub_notify` looks every
//!   key up in the hub ([`Keyed::notify`]); `held_handles` calls
//!   [`Broadcaster::notify`] on handles fetched beforehand: the baseline,
//!   the same publishes without the lookup. Registering the waiters and
//!   dropping them is not timed.
//! * `keyed_lookup`: [`Keyed::broadcaster`] on a live key, on a parked key
//!   (a sweep dropped its broadcaster: the lookup builds a new one), and
//!   `wait_many` over 16 keys, registered and dropped.
//!
//! The hub's cost is the ratio `hub_notify` / `held_handles`. Memory per
//! idle key is measured by `tools/src/bin/key_memory.rs`.
//!
//! ```text
//! cargo bench --bench keyed
//! cargo bench --bench keyed -- --test   # each benchmark once (CI)
//! ```

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use criterion::{BatchSize, Criterion};
use longpoll::keyed::Keyed;
use longpoll::OwnedWait;
use longpoll::{Broadcaster, Cursor};

const KEYS: u64 = 10_000;
const WAITERS_PER_KEY: usize = 10;

/// Counts its wake-ups.
struct Counter(AtomicUsize);

impl Wake for Counter {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn hub() -> Keyed<u64, u64> {
    Keyed::builder()
        .max_keys(usize::MAX)
        .idle_timeout(Duration::from_secs(3600))
        .build()
}

/// 10 waiters on every key, each polled once (registered).
fn register(hub: &Keyed<u64, u64>, waker: &Waker) -> Vec<OwnedWait<u64>> {
    let mut cx = Context::from_waker(waker);
    let mut waits = Vec::with_capacity(KEYS as usize * WAITERS_PER_KEY);
    for k in 0..KEYS {
        for _ in 0..WAITERS_PER_KEY {
            let mut w = hub.wait(&k, Cursor::NEXT).expect("no key limit");
            assert!(Pin::new(&mut w).poll(&mut cx).is_pending());
            waits.push(w);
        }
    }
    waits
}

fn publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("keyed_publish");
    group.sample_size(10);
    let hub = hub();
    let handles: Vec<Broadcaster<u64>> = (0..KEYS).map(|k| hub.broadcaster(&k).unwrap()).collect();
    let counter = Arc::new(Counter(AtomicUsize::new(0)));
    let waker = Waker::from(Arc::clone(&counter));

    group.bench_function("hub_notify/10000x10", |b| {
        b.iter_batched(
            || register(&hub, &waker),
            |waits| {
                for k in 0..KEYS {
                    black_box(hub.notify(&k, k).unwrap());
                }
                waits
            },
            BatchSize::PerIteration,
        );
    });

    group.bench_function("held_handles/10000x10", |b| {
        b.iter_batched(
            || register(&hub, &waker),
            |waits| {
                for (k, h) in (0..KEYS).zip(&handles) {
                    black_box(h.notify(k).unwrap());
                }
                waits
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
    assert!(
        counter.0.load(Ordering::Relaxed) > 0,
        "the waiters were woken"
    );
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("keyed_lookup");
    let hub = hub();
    let live = hub.broadcaster(&1).unwrap();
    group.bench_function("live_key", |b| {
        b.iter(|| black_box(hub.broadcaster(black_box(&1)).unwrap()));
    });
    drop(live);

    hub.notify(&2, 0).unwrap();
    group.bench_function("parked_key", |b| {
        b.iter_batched(
            || {
                hub.sweep(); // parks key 2
            },
            |()| black_box(hub.broadcaster(black_box(&2)).unwrap()),
            // One sweep before each lookup: every lookup finds the key parked.
            BatchSize::PerIteration,
        );
    });

    let waker = Waker::from(Arc::new(Counter(AtomicUsize::new(0))));
    let keys: Vec<(u64, Cursor)> = (100..116).map(|k| (k, Cursor::NEXT)).collect();
    let _held: Vec<_> = (100..116).map(|k| hub.broadcaster(&k).unwrap()).collect();
    group.bench_function("wait_many_16_register_and_drop", |b| {
        let mut cx = Context::from_waker(&waker);
        b.iter(|| {
            let mut w = hub.wait_many(keys.iter().copied()).unwrap();
            assert!(Pin::new(&mut w).poll(&mut cx).is_pending());
            drop(w);
        });
    });
    group.finish();
}

criterion::criterion_group!(benches, publish, lookup);
criterion::criterion_main!(benches);
