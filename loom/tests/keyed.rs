//! Loom models of the keyed hub: a sweep racing a lookup that waits, a
//! publish and a close, through the crate's sync shim (the shard locks, the
//! key count, the closed flag and every `Arc` are loom's).
//!
//! Run as `loom.rs` says, with `LOOM_MAX_PREEMPTIONS=2`.
#![cfg(loom)]

use std::time::Duration;

use loom::future::block_on;
use loom::thread;
use longpoll::keyed::Keyed;
use longpoll::Cursor;

fn hub() -> Keyed<u32, u32> {
    // One shard, and idle keys removed at the first sweep that finds them
    // unused: the most a sweep can do to a waiter.
    Keyed::builder()
        .shards(1)
        .idle_timeout(Duration::ZERO)
        .build()
}

/// A sweep (which may remove the key) races a wait on the key; a publish
/// follows the wait. The waiter always hears the publish: it either
/// re-created the key after the sweep, or held it so that the sweep kept it.
#[test]
fn sweep_racing_wait_then_notify_never_strands_the_waiter() {
    loom::model(|| {
        let hub = hub();
        hub.notify(&1, 1).unwrap();
        let sweeper = {
            let hub = hub.clone();
            thread::spawn(move || {
                hub.sweep();
            })
        };
        let wait = hub.wait(&1, Cursor::NEXT).unwrap();
        let publisher = {
            let hub = hub.clone();
            thread::spawn(move || hub.notify(&1, 2).unwrap())
        };
        let changed = block_on(wait).unwrap();
        assert_eq!(**changed.value(), 2);
        sweeper.join().unwrap();
        publisher.join().unwrap();
    });
}

/// A sweep, a wait on the key and a close of the hub, all at once: the
/// waiter always resolves `Closed` (whichever broadcaster it got, the close
/// reached it), never hangs, and the hub ends closed.
#[test]
fn sweep_racing_wait_and_close_resolves_the_waiter_closed() {
    loom::model(|| {
        let hub = hub();
        hub.notify(&1, 1).unwrap();
        let sweeper = {
            let hub = hub.clone();
            thread::spawn(move || {
                hub.sweep();
            })
        };
        let closer = {
            let hub = hub.clone();
            thread::spawn(move || assert!(hub.close()))
        };
        let wait = hub.wait(&1, Cursor::NEXT).unwrap();
        assert!(block_on(wait).unwrap_err().is_closed());
        sweeper.join().unwrap();
        closer.join().unwrap();
        assert!(hub.is_closed());
    });
}

/// The hub is dropped on another thread while a keyed wait is pending: the
/// map's handle was the last one, so the wait resolves `Closed`.
#[test]
fn hub_dropped_racing_a_keyed_wait_resolves_it_closed() {
    loom::model(|| {
        let hub = hub();
        let wait = hub.wait(&1, Cursor::NEXT).unwrap();
        let dropper = thread::spawn(move || drop(hub));
        assert!(block_on(wait).unwrap_err().is_closed());
        dropper.join().unwrap();
    });
}
