//! A publish into a full history reuses the allocation of the update it
//! evicts when nobody holds that one any more: an answer a client still
//! holds is never touched, every old value is dropped exactly once, and
//! its drop runs after the lock is released.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use longpoll::{Broadcaster, Cursor, Version};
use tokio_test::assert_ready;
use tokio_test::task::spawn;

#[test]
fn nobody_holds_the_evicted_update_then_the_next_publish_reuses_its_allocation() {
    let b = Broadcaster::new(0u64);
    b.notify(1).unwrap();
    let before = Arc::as_ptr(b.current().value());
    b.notify(2).unwrap();
    assert_eq!(Arc::as_ptr(b.current().value()), before);
    assert_eq!(**b.current().value(), 2);
}

#[test]
fn held_answer_then_later_publishes_leave_its_value_alone() {
    let b = Broadcaster::new(0u64);
    b.notify(1).unwrap();
    let held = assert_ready!(spawn(b.wait(Cursor::at(Version::ZERO))).poll()).unwrap();
    let held_update = b.current();
    for v in 2..10 {
        b.notify(v).unwrap();
    }
    assert_eq!(**held.value(), 1);
    assert_eq!(**held_update.value(), 1);
    assert_eq!(**b.current().value(), 9);
}

#[test]
fn full_history_of_three_then_publishes_keep_every_retained_value() {
    let b = Broadcaster::builder().history(3).build(0u64);
    for v in 1..=20 {
        b.notify(v).unwrap();
        let kept: Vec<u64> = b.history().iter().map(|u| **u.value()).collect();
        let first = v.saturating_sub(2);
        assert_eq!(kept, (first..=v).collect::<Vec<_>>());
    }
    let changed = assert_ready!(spawn(b.wait(Cursor::at(Version::new(18)))).poll()).unwrap();
    let seen: Vec<u64> = changed.updates().iter().map(|u| **u.value()).collect();
    assert_eq!(seen, [19, 20]);
}

static DROPS: AtomicUsize = AtomicUsize::new(0);
static B: OnceLock<Broadcaster<Counted>> = OnceLock::new();

/// Counts its drops, and reads the broadcaster when dropped: a drop under
/// its lock would deadlock.
struct Counted(u64);

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(b) = B.get() {
            let _ = b.version();
        }
        DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn publishes_into_a_full_history_drop_each_old_value_once_outside_the_lock() {
    let b = B.get_or_init(|| Broadcaster::new(Counted(0)));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for v in 1..=100 {
            b.notify(Counted(v)).unwrap();
            b.modify(|c| Some(Counted(c.0 + 1000))).unwrap();
        }
        tx.send(()).unwrap();
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("a value's drop ran under the lock (deadlock)");
    assert_eq!(
        DROPS.load(Ordering::SeqCst),
        200,
        "every replaced value, once"
    );
    assert_eq!(b.current().value().0, 1100);
}

/// Publishers reuse allocations while readers on other threads hold,
/// clone, re-read and drop answers: every value a reader ever sees matches
/// its version, however long it is held.
#[test]
fn stress_readers_holding_and_dropping_answers_while_publishes_reuse_allocations() {
    const VERSIONS: u64 = 20_000;
    let b = Broadcaster::builder().history(2).build(0u64);
    // Taken before any publish: a reader that starts late still hears them.
    let start = b.current().cursor();
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let b = b.clone();
            std::thread::spawn(move || {
                let mut held: Vec<longpoll::Changed<u64>> = Vec::new();
                let mut cursor = start;
                loop {
                    let changed = futures::executor::block_on(b.wait(cursor)).unwrap();
                    for u in changed.updates() {
                        assert_eq!(**u.value(), u.version().get());
                    }
                    cursor = changed.cursor();
                    let done = changed.version().get() == VERSIONS;
                    // Keep a few answers (and clones) alive for a while.
                    if changed.version().get().is_multiple_of(r + 2) {
                        held.push(changed.clone());
                    }
                    if held.len() > 8 {
                        held.drain(..4);
                    }
                    for h in &held {
                        assert_eq!(**h.value(), h.version().get(), "a held answer changed");
                    }
                    if done {
                        return;
                    }
                }
            })
        })
        .collect();
    for v in 1..=VERSIONS {
        if v % 2 == 0 {
            b.notify(v).unwrap();
        } else {
            b.modify(|_| Some(v)).unwrap();
        }
    }
    for r in readers {
        r.join().unwrap();
    }
}
