//! Cancellation: a pending wait, stream or registration that is dropped
//! leaves the list at once, a dropped wait consumes nothing, a wait polled
//! from another task wakes that task, and a million register-then-drop cycles
//! leave both the count and the memory flat (`LONGPOLL_CANCEL_CYCLES` sets
//! another number of cycles for a manual run).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use cap::Cap;
use futures::StreamExt;
use longpoll::{Broadcaster, Cursor, Version, Wait};
use tokio_test::task::spawn;
use tokio_test::{assert_pending, assert_ready};

/// Counts the bytes this test binary has allocated and not yet freed.
#[global_allocator]
static ALLOCATOR: Cap<std::alloc::System> = Cap::new(std::alloc::System, usize::MAX);

/// The allocator's count is process-wide: tests in this file take turns so
/// that one test's allocations do not show up in another's measurement.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A waker that counts how often it was woken.
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl CountingWaker {
    fn wakes(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Runs `f` on a two-worker runtime.
fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn poll_with<F: Future + Unpin>(fut: &mut F, waker: &Waker) -> Poll<F::Output> {
    Pin::new(fut).poll(&mut Context::from_waker(waker))
}

#[test]
fn pending_wait_dropped_leaves_waiter_count_zero_at_once_and_releases_the_waker() {
    let _turn = one_at_a_time();
    let b = Broadcaster::new(0);
    let mut task = spawn(());
    let mut wait = b.wait(Cursor::NEXT);
    assert_pending!(task.enter(|cx, _| Pin::new(&mut wait).poll(cx)));
    assert_eq!(b.waiter_count(), 1);
    assert_eq!(task.waker_ref_count(), 2, "the list holds a clone");
    drop(wait);
    assert_eq!(b.waiter_count(), 0);
    assert_eq!(task.waker_ref_count(), 1, "the clone was dropped");
    b.notify(1).unwrap();
    assert!(!task.is_woken());
}

#[test]
fn wait_created_but_never_polled_registers_nothing_and_drops_quietly() {
    let _turn = one_at_a_time();
    let b = Broadcaster::new(0);
    let waits: Vec<_> = (0..10).map(|_| b.wait(Cursor::NEXT)).collect();
    assert_eq!(b.waiter_count(), 0);
    drop(waits);
    assert_eq!(b.notify(1).unwrap(), Version::new(1));
}

#[test]
fn wait_answered_at_once_never_registers() {
    let _turn = one_at_a_time();
    let b = Broadcaster::new(0);
    b.notify(1).unwrap();
    let mut wait = spawn(b.wait(Cursor::at(Version::ZERO)));
    assert_ready!(wait.poll()).unwrap();
    assert_eq!(b.waiter_count(), 0);
    assert_eq!(wait.waker_ref_count(), 1);
}

#[test]
fn drop_100k_pending_waits_leaves_waiter_count_zero_and_notify_wakes_none() {
    let _turn = one_at_a_time();
    let b = Broadcaster::new(0u32);
    let counter = Arc::new(CountingWaker::default());
    let waker = Waker::from(Arc::clone(&counter));
    let mut waits: Vec<Wait<'_, u32>> = (0..100_000).map(|_| b.wait(Cursor::NEXT)).collect();
    for w in &mut waits {
        assert!(poll_with(w, &waker).is_pending());
    }
    assert_eq!(b.waiter_count(), 100_000);
    assert_eq!(Arc::strong_count(&counter), 100_002);

    drop(waits);
    assert_eq!(b.waiter_count(), 0);
    assert_eq!(Arc::strong_count(&counter), 2, "every clone released");
    b.notify(1).unwrap();
    assert_eq!(counter.wakes(), 0);

    // The list is usable again and wakes the next waiter.
    let mut next = b.wait(Cursor::NEXT);
    assert!(poll_with(&mut next, &waker).is_pending());
    b.notify(2).unwrap();
    assert_eq!(counter.wakes(), 1);
}

#[test]
fn drop_every_other_pending_wait_then_notify_wakes_exactly_the_others_once() {
    let _turn = one_at_a_time();
    let b = Broadcaster::new(0u32);
    let counters: Vec<Arc<CountingWaker>> = (0..1000).map(|_| Arc::default()).collect();
    let mut waits: Vec<Option<Wait<'_, u32>>> = Vec::new();
    for c in &counters {
        let mut w = b.wait(Cursor::NEXT);
        assert!(poll_with(&mut w, &Waker::from(Arc::clone(c))).is_pending());
        waits.push(Some(w));
    }
    for w in waits.iter_mut().step_by(2) {
        *w = None;
    }
    assert_eq!(b.waiter_count(), 500);
    b.notify(1).unwrap();
    b.notify(2).unwrap();
    for (i, c) in counters.iter().enumerate() {
        assert_eq!(c.wakes(), i % 2, "waiter {i}");
    }
    for (i, w) in waits.iter_mut().enumerate() {
        if let Some(w) = w {
            let waker = Waker::from(Arc::clone(&counters[i]));
            let Poll::Ready(changed) = poll_with(w, &waker) else {
                panic!("waiter {i} woken but not ready");
            };
            assert_eq!(changed.unwrap().version(), Version::new(2));
        }
    }
}

#[test]
fn select_other_branch_wins_then_notify_then_new_wait_with_same_cursor_sees_it() {
    let _turn = one_at_a_time();
    block_on(async {
        let b = Broadcaster::new(0u32);
        let cursor = b.current().cursor();
        tokio::select! {
            biased;
            _ = b.wait(cursor) => panic!("nothing was published"),
            _ = std::future::ready(()) => {}
        }
        assert_eq!(b.waiter_count(), 0, "the losing wait unregistered");
        b.notify(1).unwrap();
        let changed = b.wait(cursor).await.unwrap();
        assert_eq!(changed.version(), Version::new(1));
        assert_eq!(changed.resync(), None);
    });
}

#[test]
fn notify_wakes_wait_then_other_select_branch_wins_then_new_wait_with_same_cursor_sees_it() {
    let _turn = one_at_a_time();
    block_on(async {
        let b = Broadcaster::new(0u32);
        let cursor = b.current().cursor();
        let mut wait = spawn(b.wait(cursor));
        assert_pending!(wait.poll());
        b.notify(1).unwrap();
        assert!(wait.is_woken());
        // Another branch won: the woken future is dropped without being polled.
        drop(wait);
        let changed = b.wait(cursor).await.unwrap();
        assert_eq!(changed.version(), Version::new(1));
        assert_eq!(**changed.value(), 1);
        assert_eq!(changed.resync(), None);
    });
}

#[test]
fn woken_wait_dropped_unpolled_does_not_unregister_a_later_waiter_in_the_same_slot() {
    let _turn = one_at_a_time();
    let b = Broadcaster::new(0u32);
    let mut old = spawn(b.wait(Cursor::NEXT));
    assert_pending!(old.poll());
    b.notify(1).unwrap();
    // A new waiter at version 1 takes the first slot of the fresh list.
    let mut new = spawn(b.wait(Cursor::NEXT));
    assert_pending!(new.poll());
    assert_eq!(b.waiter_count(), 1);
    drop(old);
    assert_eq!(
        b.waiter_count(),
        1,
        "the old slot belongs to the new waiter"
    );
    b.notify(2).unwrap();
    assert!(new.is_woken());
    assert_eq!(
        assert_ready!(new.poll()).unwrap().version(),
        Version::new(2)
    );
}

#[test]
fn wait_polled_by_task_a_then_by_task_b_then_notify_wakes_only_b() {
    let _turn = one_at_a_time();
    let b = Broadcaster::new(0u32);
    let mut wait = b.wait(Cursor::NEXT);
    let mut task_a = spawn(());
    let mut task_b = spawn(());
    assert_pending!(task_a.enter(|cx, _| Pin::new(&mut wait).poll(cx)));
    assert_eq!(task_a.waker_ref_count(), 2);
    assert_pending!(task_b.enter(|cx, _| Pin::new(&mut wait).poll(cx)));
    assert_eq!(task_a.waker_ref_count(), 1, "task a's waker was replaced");
    assert_eq!(task_b.waker_ref_count(), 2);
    assert_eq!(b.waiter_count(), 1, "still one registration");

    b.notify(1).unwrap();
    assert!(task_b.is_woken());
    assert!(!task_a.is_woken());
    let changed = assert_ready!(task_b.enter(|cx, _| Pin::new(&mut wait).poll(cx)));
    assert_eq!(changed.unwrap().version(), Version::new(1));
}

#[test]
fn wait_polled_twice_by_the_same_task_keeps_one_registration_and_one_waker() {
    let _turn = one_at_a_time();
    let b = Broadcaster::new(0u32);
    let mut wait = spawn(b.wait(Cursor::NEXT));
    assert_pending!(wait.poll());
    assert_pending!(wait.poll());
    assert_pending!(wait.poll());
    assert_eq!(b.waiter_count(), 1);
    assert_eq!(wait.waker_ref_count(), 2);
    b.notify(1).unwrap();
    assert!(wait.is_woken());
    assert_ready!(wait.poll()).unwrap();
}

#[test]
// Task one returns the pending future, unawaited, on purpose.
#[allow(clippy::async_yields_async)]
fn wait_moved_to_another_runtime_task_while_pending_is_woken_there() {
    let _turn = one_at_a_time();
    block_on(async {
        static B: LazyLock<Broadcaster<u32>> = LazyLock::new(|| Broadcaster::new(0));
        let mut wait = B.wait(Cursor::NEXT);
        // Task one polls it once and hands it over, still registered.
        let wait = tokio::spawn(async move {
            std::future::poll_fn(|cx| {
                assert!(Pin::new(&mut wait).poll(cx).is_pending());
                Poll::Ready(())
            })
            .await;
            wait
        })
        .await
        .unwrap();
        assert_eq!(B.waiter_count(), 1);
        // Task two awaits it; the publish comes once it has polled.
        let (polled_tx, polled_rx) = tokio::sync::oneshot::channel();
        let task_two = tokio::spawn(async move {
            let mut wait = wait;
            let mut polled_tx = Some(polled_tx);
            std::future::poll_fn(|cx| {
                let r = Pin::new(&mut wait).poll(cx);
                if let Some(tx) = polled_tx.take() {
                    tx.send(()).unwrap();
                }
                r
            })
            .await
        });
        polled_rx.await.unwrap();
        B.notify(1).unwrap();
        let changed = tokio::time::timeout(Duration::from_secs(10), task_two)
            .await
            .expect("task two was woken")
            .unwrap()
            .unwrap();
        assert_eq!(changed.version(), Version::new(1));
    });
}

#[test]
fn stream_moved_to_another_runtime_task_while_pending_is_woken_there() {
    let _turn = one_at_a_time();
    block_on(async {
        let b = Broadcaster::new(0u32);
        let mut stream = b.stream(Cursor::NEXT);
        let stream = tokio::spawn(async move {
            std::future::poll_fn(|cx| {
                assert!(stream.poll_next_unpin(cx).is_pending());
                Poll::Ready(())
            })
            .await;
            stream
        })
        .await
        .unwrap();
        assert_eq!(b.waiter_count(), 1);
        let (polled_tx, polled_rx) = tokio::sync::oneshot::channel();
        let task_two = tokio::spawn(async move {
            let mut stream = stream;
            let mut polled_tx = Some(polled_tx);
            std::future::poll_fn(|cx| {
                let r = stream.poll_next_unpin(cx);
                if let Some(tx) = polled_tx.take() {
                    tx.send(()).unwrap();
                }
                r
            })
            .await
        });
        polled_rx.await.unwrap();
        b.notify(1).unwrap();
        let changed = tokio::time::timeout(Duration::from_secs(10), task_two)
            .await
            .expect("task two was woken")
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(changed.version(), Version::new(1));
    });
}

#[test]
fn pending_wait_dropped_on_another_thread_unregisters() {
    let _turn = one_at_a_time();
    let b = Broadcaster::new(0u32);
    let mut wait = b.wait(Cursor::NEXT);
    let counter = Arc::new(CountingWaker::default());
    assert!(poll_with(&mut wait, &Waker::from(Arc::clone(&counter))).is_pending());
    std::thread::scope(|s| {
        s.spawn(move || drop(wait));
    });
    assert_eq!(b.waiter_count(), 0);
    assert_eq!(Arc::strong_count(&counter), 1);
}

#[test]
fn pending_stream_dropped_leaves_waiter_count_zero_at_once() {
    let _turn = one_at_a_time();
    let b = Broadcaster::new(0u32);
    let mut stream = spawn(b.stream(Cursor::NEXT));
    assert_pending!(stream.poll_next());
    assert_eq!(b.waiter_count(), 1);
    drop(stream);
    assert_eq!(b.waiter_count(), 0);
}

#[test]
fn pending_registration_dropped_leaves_waiter_count_zero_at_once() {
    let _turn = one_at_a_time();
    let b = Broadcaster::new(0u32);
    let reg = b.register(Cursor::NEXT, |_| {}).unwrap();
    assert_eq!(b.waiter_count(), 1);
    drop(reg);
    assert_eq!(b.waiter_count(), 0);
}

/// `n` from `LONGPOLL_CANCEL_CYCLES`, for a longer manual run.
fn cycles() -> usize {
    std::env::var("LONGPOLL_CANCEL_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000)
}

/// Net bytes allocated by `f(rounds)`. A short `f(10)` runs first so that
/// lazily grown buffers (the slab's first slots, the spare vector) are in
/// place before measuring.
fn net_allocated(rounds: usize, mut f: impl FnMut(usize)) -> isize {
    f(10);
    let before = ALLOCATOR.allocated() as isize;
    f(rounds);
    ALLOCATOR.allocated() as isize - before
}

#[test]
fn million_register_then_drop_cycles_keep_waiter_count_zero_and_memory_flat() {
    let _turn = one_at_a_time();
    let b = Broadcaster::new(0u32);
    let n = cycles();
    let growth = net_allocated(n, |rounds| {
        for _ in 0..rounds {
            let reg = b.register(Cursor::NEXT, |_| {}).unwrap();
            assert_eq!(b.waiter_count(), 1);
            drop(reg);
            assert_eq!(b.waiter_count(), 0);
        }
    });
    // A slab that grew by one slot per cycle would show megabytes here.
    assert!(
        growth.abs() < 64 * 1024,
        "{n} cycles changed live memory by {growth} bytes"
    );
    b.notify(1).unwrap();
}

#[test]
fn million_wait_poll_then_drop_cycles_keep_waiter_count_zero_and_memory_flat() {
    let _turn = one_at_a_time();
    let b = Broadcaster::new(0u32);
    let waker = Waker::from(Arc::new(CountingWaker::default()));
    let n = cycles();
    let growth = net_allocated(n, |rounds| {
        for _ in 0..rounds {
            let mut wait = b.wait(Cursor::NEXT);
            assert!(poll_with(&mut wait, &waker).is_pending());
            assert_eq!(b.waiter_count(), 1);
            drop(wait);
            assert_eq!(b.waiter_count(), 0);
        }
    });
    assert!(
        growth.abs() < 64 * 1024,
        "{n} cycles changed live memory by {growth} bytes"
    );
}

#[test]
fn many_register_then_notify_rounds_keep_memory_flat() {
    let _turn = one_at_a_time();
    let b = Broadcaster::new(0u32);
    let waker = Waker::from(Arc::new(CountingWaker::default()));
    let growth = net_allocated(1000, |rounds| {
        for _ in 0..rounds {
            let mut waits: Vec<_> = (0..100).map(|_| b.wait(Cursor::NEXT)).collect();
            for w in &mut waits {
                assert!(poll_with(w, &waker).is_pending());
            }
            b.notify(0).unwrap();
            for w in &mut waits {
                assert!(poll_with(w, &waker).is_ready());
            }
        }
    });
    assert!(
        growth.abs() < 64 * 1024,
        "1000 rounds of 100 waiters changed live memory by {growth} bytes"
    );
}
