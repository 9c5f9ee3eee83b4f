//! Idle cleanup racing new waiters on the same keys: a sweep must never
//! remove a broadcaster that a waiter sits on (the waiter would never hear
//! the publishes that go to the key's new broadcaster).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::noop_waker_ref;
use longpoll::keyed::Keyed;
use longpoll::{Cursor, Resync};

fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(noop_waker_ref()))
}

/// Sets the flag when dropped, so that the sweepers stop even when a worker
/// panics (the scope would otherwise wait for them forever).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Sweeps on two threads until `stop`, counting the keys removed.
fn sweepers<'s, K, T>(
    s: &'s std::thread::Scope<'s, '_>,
    hub: &Keyed<K, T>,
    stop: &'s AtomicBool,
    swept: &'s AtomicUsize,
) where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 's,
    T: Send + Sync + 's,
{
    for _ in 0..2 {
        let hub = hub.clone();
        s.spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                swept.fetch_add(hub.sweep(), Ordering::Relaxed);
                std::thread::yield_now();
            }
        });
    }
}

#[test]
fn sweeps_removing_keys_under_new_waits_never_strand_a_waiter() {
    race_waits_against_sweeps(Duration::ZERO);
}

#[test]
fn sweeps_parking_keys_under_new_waits_never_strand_a_waiter() {
    // Never idle long enough to be removed: every sweep parks the unused
    // keys, and every wait brings its key back.
    race_waits_against_sweeps(Duration::from_secs(3600));
}

fn race_waits_against_sweeps(idle: Duration) {
    let hub: Keyed<u32, u64> = Keyed::builder().idle_timeout(idle).shards(2).build();
    let stop = AtomicBool::new(false);
    let swept = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        sweepers(s, &hub, &stop, &swept);
        let swept = &swept;
        let workers: Vec<_> = (0..6u32)
            .map(|t| {
                let hub = hub.clone();
                s.spawn(move || {
                    // At least 3000 rounds, and with removal on, until a
                    // sweep removed a key under the workers (a fast
                    // machine could finish before any sweep did).
                    let rounds = (0..1_000_000u32).take_while(|&i| {
                        i < 3000 || (idle.is_zero() && swept.load(Ordering::Relaxed) == 0)
                    });
                    for i in rounds {
                        let key = (t + i) % 4;
                        let mut wait = hub.wait(&key, Cursor::NEXT).unwrap();
                        // Half the waits register before the publish, half
                        // only hold their handle.
                        if i % 2 == 0 && poll_once(&mut wait).is_ready() {
                            continue; // another worker published meanwhile
                        }
                        hub.notify(&key, u64::from(i)).unwrap();
                        match poll_once(&mut wait) {
                            Poll::Ready(r) => {
                                // The same sequence, whatever was parked:
                                // never a foreign epoch. (Other workers'
                                // publishes may have made it lag.)
                                let changed = r.unwrap();
                                assert!(
                                    matches!(changed.resync(), None | Some(Resync::Lagged { .. })),
                                    "{:?}",
                                    changed.resync()
                                );
                            }
                            Poll::Pending => panic!("waiter on key {key} stranded"),
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
    });
    if idle.is_zero() {
        // The race was real: keys were removed and recreated under the
        // workers.
        assert!(swept.load(Ordering::Relaxed) > 0);
    } else {
        assert_eq!(swept.load(Ordering::Relaxed), 0, "parked, never removed");
    }
}

#[test]
fn sweeps_racing_multi_key_waits_never_strand_a_waiter() {
    let hub: Keyed<u32, u64> = Keyed::builder()
        .idle_timeout(Duration::ZERO)
        .shards(2)
        .build();
    let stop = AtomicBool::new(false);
    let swept = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        sweepers(s, &hub, &stop, &swept);
        let swept = &swept;
        let workers: Vec<_> = (0..6u32)
            .map(|t| {
                let hub = hub.clone();
                s.spawn(move || {
                    // As above: until a sweep removed a key, too.
                    let rounds = (0..1_000_000u32)
                        .take_while(|&i| i < 2000 || swept.load(Ordering::Relaxed) == 0);
                    for i in rounds {
                        let keys = [(t + i) % 6, (t + i + 1) % 6, (t + i + 3) % 6];
                        let mut wait = hub.wait_many(keys.map(|k| (k, Cursor::NEXT))).unwrap();
                        if i % 2 == 0 && poll_once(&mut wait).is_ready() {
                            continue;
                        }
                        let target = keys[(i % 3) as usize];
                        hub.notify(&target, u64::from(i)).unwrap();
                        match poll_once(&mut wait) {
                            Poll::Ready(ready) => {
                                assert!(!ready.is_empty());
                                assert!(ready.iter().all(|(_, r)| r.is_ok()));
                            }
                            Poll::Pending => panic!("multi-key waiter stranded"),
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
    });
    assert!(swept.load(Ordering::Relaxed) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_tasks_hear_every_round_while_a_sweeper_runs() {
    let hub: Keyed<u32, u64> = Keyed::builder()
        .idle_timeout(Duration::ZERO)
        .shards(2)
        .build();
    let done = Arc::new(AtomicBool::new(false));
    let swept = Arc::new(AtomicUsize::new(0));

    let sweeper = tokio::spawn({
        let (hub, done, swept) = (hub.clone(), done.clone(), swept.clone());
        async move {
            while !done.load(Ordering::Relaxed) {
                swept.fetch_add(hub.sweep(), Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        }
    });
    let publisher = tokio::spawn({
        let (hub, done) = (hub.clone(), done.clone());
        async move {
            let mut n = 0u64;
            while !done.load(Ordering::Relaxed) {
                for key in 0..4u32 {
                    hub.notify(&key, n).unwrap();
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });

    let waiters: Vec<_> = (0..64u32)
        .map(|t| {
            let hub = hub.clone();
            tokio::spawn(async move {
                for round in 0..50u32 {
                    let key = (t + round) % 4;
                    let wait = hub.wait(&key, Cursor::NEXT).unwrap();
                    // Publishes never stop: only a stranded waiter times out.
                    tokio::time::timeout(Duration::from_secs(5), wait)
                        .await
                        .unwrap_or_else(|_| panic!("waiter {t} stranded on key {key}"))
                        .unwrap();
                    if round % 8 == 0 {
                        // Let the key fall idle between two waits.
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for w in waiters {
        w.await.unwrap();
    }
    // Between the publisher's rounds the keys are idle: the sweeper was
    // really removing keys (bounded wait, in case the machine is slow).
    for _ in 0..200 {
        if swept.load(Ordering::Relaxed) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    sweeper.await.unwrap();
    assert!(swept.load(Ordering::Relaxed) > 0, "keys were removed");
}
