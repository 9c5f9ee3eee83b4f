//! Memory per idle key of a [`Keyed`] hub, and memory after churning
//! through many distinct keys with sweeps in between.
//!
//! A counting global allocator (the `cap` crate) reports the bytes the
//! process holds; the figures are deltas over the empty hub.
//!
//! ```text
//! cargo run --release -p longpoll-tools --bin key_memory -- [keys] [churn]
//! ```
//!
//! Defaults: 100 000 idle keys, then 1 000 000 churned keys.

use std::alloc::System;
use std::time::{Duration, Instant};

use cap::Cap;
use longpoll::keyed::Keyed;

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

fn main() {
    let mut args = std::env::args().skip(1);
    let keys: u64 = args.next().map_or(100_000, |a| a.parse().expect("keys"));
    let churn: u64 = args.next().map_or(1_000_000, |a| a.parse().expect("churn"));

    // Idle keys: `u64` keys, `()` values, a history of one.
    let hub: Keyed<u64, ()> = Keyed::builder()
        .max_keys(usize::MAX)
        .idle_timeout(Duration::from_secs(3600))
        .build();
    let before = ALLOC.allocated();
    for k in 0..keys {
        drop(hub.broadcaster(&k).expect("no limit"));
    }
    let per_key = |held: usize| held as f64 / keys as f64;
    let live = ALLOC.allocated() - before;
    println!(
        "{keys} unused live keys (u64 key, () value): {live} bytes, {:.1} per key",
        per_key(live)
    );
    let removed = hub.sweep();
    assert_eq!(removed, 0);
    let parked = ALLOC.allocated() - before;
    println!(
        "the same keys parked by a sweep: {parked} bytes, {:.1} per key (of which the key itself: {})",
        per_key(parked),
        std::mem::size_of::<u64>()
    );
    drop(hub);
    println!(
        "hub dropped: {} bytes over the start",
        ALLOC.allocated() as i64 - before as i64
    );

    let hub: Keyed<u64, ()> = Keyed::builder()
        .max_keys(usize::MAX)
        .idle_timeout(Duration::ZERO)
        .build();
    let before = ALLOC.allocated();

    // Churn: distinct keys, each used once, with a sweep every 10 000.
    let start = Instant::now();
    let mut peak = 0;
    for k in 0..churn {
        let key = keys + k;
        hub.notify(&key, ()).expect("no limit");
        if k % 10_000 == 9_999 {
            peak = peak.max(ALLOC.allocated() - before);
            hub.sweep();
        }
    }
    hub.sweep();
    println!(
        "churned {churn} distinct keys in {:.2?}: peak {peak} bytes over the empty hub, {} after the last sweep, {} keys left",
        start.elapsed(),
        ALLOC.allocated() as i64 - before as i64,
        hub.len()
    );
}
