//! Memory of the keyed hub, counted by a global allocator: a parked idle
//! key costs at most 200 bytes, and churning through many distinct keys
//! with sweeps in between leaves memory where it started.
//!
//! One test in this file: the allocator counts every thread of the binary.

use std::alloc::System;
use std::time::Duration;

use cap::Cap;
use longpoll::keyed::Keyed;

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

#[test]
fn idle_keys_are_small_and_churn_leaves_memory_flat() {
    // Parked keys: u64 keys, () values, a history of one.
    let hub: Keyed<u64, ()> = Keyed::builder()
        .max_keys(usize::MAX)
        .idle_timeout(Duration::from_secs(3600))
        .build();
    let before = ALLOC.allocated();
    const KEYS: u64 = 20_000;
    for k in 0..KEYS {
        hub.notify(&k, ()).unwrap();
    }
    let live = (ALLOC.allocated() - before) as u64 / KEYS;
    assert_eq!(hub.sweep(), 0, "parked, not removed");
    let parked = (ALLOC.allocated() - before) as u64 / KEYS;
    assert!(
        parked <= 200,
        "{parked} bytes per parked key (live: {live})"
    );
    assert!(parked < live);
    drop(hub);

    // Churn: 200 000 distinct keys, each used once, a sweep every 5 000.
    let hub: Keyed<u64, ()> = Keyed::builder()
        .max_keys(10_000)
        .idle_timeout(Duration::ZERO)
        .build();
    let before = ALLOC.allocated();
    let mut peak = 0;
    for k in 0..200_000u64 {
        hub.notify(&k, ())
            .expect("sweeps keep the hub under its limit");
        if k % 5_000 == 4_999 {
            peak = peak.max(ALLOC.allocated().saturating_sub(before));
            assert_eq!(hub.sweep(), 5_000);
        }
    }
    assert!(hub.is_empty());
    let after = ALLOC.allocated() as i64 - before as i64;
    assert!(after <= 16 * 1024, "{after} bytes left after the churn");
    // Bounded by the 5 000 keys between sweeps (~300 bytes each live),
    // whatever the number of keys churned.
    assert!(peak <= 5_000 * 600, "peak {peak} bytes over the empty hub");
}
