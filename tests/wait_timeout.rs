//! `wait_timeout` on tokio's paused clock: a timeout answers `TimedOut` and
//! unregisters at once, a change before (or at) the deadline wins, and
//! closed, full and timed out stay distinct.
#![cfg(feature = "tokio")]

use std::time::Duration;

use longpoll::{Broadcaster, Cursor, Version, WaitError};
use tokio::time::{advance, sleep, Instant};
use tokio_test::task::spawn;
use tokio_test::{assert_pending, assert_ready};

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(start_paused = true)]
async fn no_change_then_deadline_times_out_and_unregisters_before_the_future_is_dropped() {
    let b = Broadcaster::new(0u32);
    let start = Instant::now();
    let mut wait = std::pin::pin!(b.wait_timeout(Cursor::NEXT, DEADLINE));
    let err = wait.as_mut().await.unwrap_err();
    assert_eq!(err, WaitError::TimedOut);
    assert!(err.is_timed_out() && !err.is_closed() && !err.is_full());
    assert_eq!(start.elapsed(), DEADLINE);
    assert_eq!(b.waiter_count(), 0, "unregistered though not yet dropped");
    assert_eq!(
        WaitError::TimedOut.to_string(),
        "timed out waiting for a change"
    );
}

#[tokio::test(start_paused = true)]
async fn pending_then_deadline_minus_one_ms_still_pending_then_deadline_times_out() {
    let b = Broadcaster::new(0u32);
    let mut wait = spawn(b.wait_timeout(Cursor::NEXT, DEADLINE));
    assert_pending!(wait.poll());
    assert_eq!(b.waiter_count(), 1);
    advance(DEADLINE - Duration::from_millis(1)).await;
    assert_pending!(wait.poll());
    advance(Duration::from_millis(1)).await;
    assert!(wait.is_woken());
    assert_eq!(assert_ready!(wait.poll()).unwrap_err(), WaitError::TimedOut);
    assert_eq!(b.waiter_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn change_before_the_deadline_wins() {
    let b = Broadcaster::new(0u32);
    let publisher = tokio::spawn({
        let b = b.clone();
        async move {
            sleep(Duration::from_secs(10)).await;
            b.notify(1).unwrap();
        }
    });
    let start = Instant::now();
    let changed = b.wait_timeout(Cursor::NEXT, DEADLINE).await.unwrap();
    assert_eq!(changed.version(), Version::new(1));
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    publisher.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn change_and_deadline_both_due_at_the_next_poll_then_the_change_wins() {
    let b = Broadcaster::new(0u32);
    let mut wait = spawn(b.wait_timeout(Cursor::NEXT, DEADLINE));
    assert_pending!(wait.poll());
    b.notify(1).unwrap();
    advance(DEADLINE * 2).await;
    let changed = assert_ready!(wait.poll()).unwrap();
    assert_eq!(changed.version(), Version::new(1));
}

#[tokio::test(start_paused = true)]
async fn cursor_behind_with_zero_timeout_is_answered_not_timed_out() {
    let b = Broadcaster::new(0u32);
    b.notify(1).unwrap();
    let changed = b
        .wait_timeout(Cursor::at(Version::ZERO), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(changed.version(), Version::new(1));
}

#[tokio::test(start_paused = true)]
async fn zero_timeout_at_current_cursor_times_out_at_once_and_leaves_no_waiter() {
    let b = Broadcaster::new(0u32);
    let start = Instant::now();
    let r = b.wait_timeout(Cursor::NEXT, Duration::ZERO).await;
    assert_eq!(r.unwrap_err(), WaitError::TimedOut);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(b.waiter_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn close_before_the_deadline_answers_closed_not_timed_out() {
    let b = Broadcaster::new(0u32);
    let closer = tokio::spawn({
        let b = b.clone();
        async move {
            sleep(Duration::from_secs(5)).await;
            b.close();
        }
    });
    let start = Instant::now();
    let err = b.wait_timeout(Cursor::NEXT, DEADLINE).await.unwrap_err();
    assert_eq!(err, WaitError::Closed);
    assert!(err.is_closed() && !err.is_timed_out());
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    closer.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn closed_before_the_call_answers_closed_at_once() {
    let b = Broadcaster::new(0u32);
    b.close();
    let start = Instant::now();
    let err = b.wait_timeout(Cursor::NEXT, DEADLINE).await.unwrap_err();
    assert_eq!(err, WaitError::Closed);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn full_answers_full_at_once_not_timed_out() {
    let b = Broadcaster::builder().max_waiters(1).build(0u32);
    let mut holder = spawn(b.wait(Cursor::NEXT));
    assert_pending!(holder.poll());
    let start = Instant::now();
    let err = b.wait_timeout(Cursor::NEXT, DEADLINE).await.unwrap_err();
    assert_eq!(err, WaitError::Full { limit: 1 });
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn pending_wait_timeout_dropped_unregisters_at_once() {
    let b = Broadcaster::new(0u32);
    let mut wait = spawn(b.wait_timeout(Cursor::NEXT, DEADLINE));
    assert_pending!(wait.poll());
    assert_eq!(b.waiter_count(), 1);
    drop(wait);
    assert_eq!(b.waiter_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn timed_out_then_wait_again_with_the_same_cursor_sees_a_later_change() {
    let b = Broadcaster::new(0u32);
    let cursor = b.current().cursor();
    let r = b.wait_timeout(cursor, DEADLINE).await;
    assert!(r.unwrap_err().is_timed_out());
    b.notify(1).unwrap();
    let changed = b.wait_timeout(cursor, DEADLINE).await.unwrap();
    assert_eq!(changed.version(), Version::new(1));
    assert_eq!(changed.resync(), None);
}

#[tokio::test(start_paused = true)]
async fn many_waits_time_out_together_and_leave_the_list_empty() {
    let b = Broadcaster::new(0u32);
    let waits = (0..1000).map(|_| b.wait_timeout(Cursor::NEXT, DEADLINE));
    let results = futures::future::join_all(waits).await;
    assert!(results
        .iter()
        .all(|r| r.as_ref().unwrap_err().is_timed_out()));
    assert_eq!(b.waiter_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn long_poll_loop_with_timeouts_sees_every_change_once() {
    let b = Broadcaster::builder().history(4).build(0u32);
    let publisher = tokio::spawn({
        let b = b.clone();
        async move {
            for v in 1..=5 {
                // Longer than the poll timeout: the client times out in between.
                sleep(Duration::from_secs(45)).await;
                b.notify(v).unwrap();
            }
        }
    });
    let mut cursor = b.current().cursor();
    let (mut seen, mut timeouts) = (Vec::new(), 0);
    while seen.len() < 5 {
        match b.wait_timeout(cursor, DEADLINE).await {
            Ok(changed) => {
                assert_eq!(changed.resync(), None);
                seen.extend(changed.updates().iter().map(|u| **u.value()));
                cursor = changed.cursor();
            }
            Err(e) if e.is_timed_out() => timeouts += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(seen, [1, 2, 3, 4, 5]);
    assert_eq!(timeouts, 5);
    publisher.await.unwrap();
}

#[test]
#[should_panic]
fn wait_timeout_outside_a_runtime_panics() {
    let b = Broadcaster::new(());
    drop(b.wait_timeout(Cursor::NEXT, DEADLINE));
}
