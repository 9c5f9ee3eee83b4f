//! Multi-threaded stress: publishers on several threads against many waiters
//! (tasks, threads, callbacks) that chain their cursors, cancel and
//! re-register. A lost wake-up shows up as a waiter that never reaches the
//! final version, which fails the test after a bounded wait instead of
//! hanging it.
//!
//! Sizes: 4 publisher threads x `LONGPOLL_STRESS_ITERS` publishes (default
//! 10 000) against `LONGPOLL_STRESS_WAITERS` tasks (default 1 000). The
//! full-history test hands every version to every task, work that grows with
//! tasks x versions: in a debug build it uses a quarter of the tasks unless
//! `LONGPOLL_STRESS_WAITERS` is set. For a longer run:
//!
//! ```text
//! LONGPOLL_STRESS_ITERS=100000 cargo test --release --test stress -- --nocapture
//! ```
//!
//! The tests take turns: each has both cores to itself, and the timings each
//! prints (with `--nocapture`) are its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use longpoll::{Broadcaster, Changed, Cursor, Resync, Version, WaitError};

const PUBLISHERS: u64 = 4;

/// How long any waiter may go without reaching the final version once the
/// publishers are done: far above what the work needs, so only a lost
/// wake-up (or a deadlock) trips it.
const GRACE: Duration = Duration::from_secs(60);

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// Publishes per publisher thread.
fn iters() -> u64 {
    env("LONGPOLL_STRESS_ITERS").unwrap_or(10_000)
}

/// Waiting tasks; `debug_share` is the fraction used in a debug build when
/// the variable is not set.
fn waiters(debug_share: u64) -> u64 {
    let default = if cfg!(debug_assertions) {
        1_000 / debug_share
    } else {
        1_000
    };
    env("LONGPOLL_STRESS_WAITERS").unwrap_or(default)
}

fn one_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Starts `PUBLISHERS` threads that each bump the value by one `n` times
/// with `modify`, once `start` opens. The value therefore always equals the
/// version (the broadcaster starts at 0 holding 0).
///
/// With `pace`, each publisher yields its core after every publish: on two
/// cores the publishers would otherwise be done before most waiters ran.
fn publishers(
    b: &Broadcaster<u64>,
    n: u64,
    start: &Arc<Barrier>,
    pace: bool,
) -> Vec<thread::JoinHandle<()>> {
    (0..PUBLISHERS)
        .map(|_| {
            let (b, start) = (b.clone(), Arc::clone(start));
            thread::spawn(move || {
                start.wait();
                for _ in 0..n {
                    b.modify(|v| Some(v + 1)).unwrap();
                    if pace {
                        thread::yield_now();
                    }
                }
            })
        })
        .collect()
}

/// What one waiting task saw, checked as it goes.
#[derive(Debug, Default)]
struct Seen {
    /// The last version received.
    last: u64,
    /// Every version received was the one after the previous.
    contiguous: bool,
    answers: u64,
    lagged: u64,
    cancelled: u64,
}

impl Seen {
    fn new() -> Self {
        Seen {
            contiguous: true,
            ..Seen::default()
        }
    }

    fn record(&mut self, r: Result<Changed<u64>, WaitError>) -> Cursor {
        let changed = r.expect("no close, no limit");
        self.answers += 1;
        match changed.resync() {
            None => {}
            Some(Resync::Lagged { .. }) => self.lagged += 1,
            Some(other) => panic!("unexpected resync {other:?}"),
        }
        for u in changed.updates() {
            let v = u.version().get();
            assert_eq!(**u.value(), v, "value published at its version");
            assert!(v > self.last, "versions rise: {v} after {}", self.last);
            self.contiguous &= v == self.last + 1;
            self.last = v;
        }
        changed.cursor()
    }
}

/// Chains `wait(cursor)` until the final version. With `cancel_first`, a
/// `wait` first loses a `select!` (registered, then dropped) before each
/// real wait, so cancellation races the publishers too.
async fn chain_waits(b: Broadcaster<u64>, last: u64, cancel_first: bool) -> Seen {
    let mut cursor = Cursor::at(Version::ZERO).with_epoch(b.epoch());
    let mut seen = Seen::new();
    while seen.last != last {
        if cancel_first {
            tokio::select! {
                biased;
                r = b.wait(cursor) => {
                    // Ready at once: used like any answer.
                    cursor = seen.record(r);
                    continue;
                }
                () = tokio::task::yield_now() => seen.cancelled += 1,
            }
        }
        cursor = seen.record(b.wait(cursor).await);
    }
    seen
}

/// Runs the publishers against `w` chaining tasks, all parked at version 0
/// before the first publish, and returns what each task saw.
fn publishers_against_chained_tasks(history: usize, w: u64) -> (Vec<Seen>, u64) {
    let n = iters();
    let last = PUBLISHERS * n;
    let b = Broadcaster::builder().history(history).build(0u64);
    let rt = runtime();
    let tasks: Vec<_> = (0..w)
        .map(|i| rt.spawn(chain_waits(b.clone(), last, i % 2 == 1)))
        .collect();
    let parked = Instant::now();
    while b.waiter_count() < w as usize {
        assert!(parked.elapsed() < GRACE, "tasks did not start");
        thread::sleep(Duration::from_millis(1));
    }
    let start = Arc::new(Barrier::new(PUBLISHERS as usize + 1));
    let threads = publishers(&b, n, &start, true);
    let began = Instant::now();
    start.wait();
    for t in threads {
        t.join().unwrap();
    }
    let published = began.elapsed();
    let seen = rt.block_on(async {
        tokio::time::timeout(GRACE, futures::future::try_join_all(tasks))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "waiters did not reach version {last} within {GRACE:?} of the last publish \
                     ({} still registered): lost wake-up",
                    b.waiter_count()
                )
            })
            .unwrap()
    });
    assert_eq!(b.version(), Version::new(last));
    assert_eq!(**b.current().value(), last);
    assert_eq!(b.waiter_count(), 0);
    let answers: u64 = seen.iter().map(|s| s.answers).sum();
    let lagged: u64 = seen.iter().map(|s| s.lagged).sum();
    let cancelled: u64 = seen.iter().map(|s| s.cancelled).sum();
    eprintln!(
        "{PUBLISHERS} publishers x {n} modify vs {w} tasks, history {history}: \
         published in {published:?}, all tasks done in {:?}; \
         {answers} answers ({lagged} lagged), {cancelled} waits lost a select!",
        began.elapsed()
    );
    (seen, last)
}

#[test]
fn four_publishers_modify_while_waiter_tasks_chain_since_and_every_task_ends_at_the_final_version()
{
    let _turn = one_at_a_time();
    let (seen, last) = publishers_against_chained_tasks(1, waiters(1));
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.last, last, "task {i}");
    }
}

#[test]
fn four_publishers_modify_while_waiter_tasks_chain_since_with_full_history_and_each_sees_every_version_once_in_order(
) {
    let _turn = one_at_a_time();
    // Longer than the whole run: no cursor can fall out of it.
    let history = (PUBLISHERS * iters() + 1) as usize;
    let (seen, last) = publishers_against_chained_tasks(history, waiters(4));
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.lagged, 0, "task {i} lagged");
        assert!(s.contiguous, "task {i} missed a version");
        assert_eq!(s.last, last, "task {i}");
    }
}

/// Registers a callback that records what it is given and registers again,
/// from inside, at the cursor it was answered with, until it sees `last`.
fn chain_callbacks(
    b: Broadcaster<u64>,
    cursor: Cursor,
    last: u64,
    seen: Arc<Mutex<Seen>>,
    done: mpsc::Sender<()>,
) {
    let again = b.clone();
    let reg = b.register(cursor, move |r| {
        let next = seen.lock().unwrap().record(r);
        if next.version() == Some(Version::new(last)) {
            done.send(()).unwrap();
        } else {
            chain_callbacks(again, next, last, seen, done);
        }
    });
    reg.expect("no limit").detach();
}

#[test]
fn four_publishers_modify_while_callbacks_re_register_from_inside_and_each_chain_sees_every_version_once(
) {
    let _turn = one_at_a_time();
    let n = iters();
    let chains = 20;
    let last = PUBLISHERS * n;
    let b = Broadcaster::builder()
        .history(last as usize + 1)
        .build(0u64);
    let (done_tx, done_rx) = mpsc::channel();
    let seen: Vec<Arc<Mutex<Seen>>> = (0..chains)
        .map(|_| Arc::new(Mutex::new(Seen::new())))
        .collect();
    for s in &seen {
        chain_callbacks(
            b.clone(),
            b.current().cursor(),
            last,
            Arc::clone(s),
            done_tx.clone(),
        );
    }
    drop(done_tx);
    let start = Arc::new(Barrier::new(PUBLISHERS as usize + 1));
    let threads = publishers(&b, n, &start, false);
    let began = Instant::now();
    start.wait();
    for t in threads {
        t.join().unwrap();
    }
    for i in 0..chains {
        done_rx
            .recv_timeout(GRACE)
            .unwrap_or_else(|e| panic!("{i} of {chains} chains finished ({e}): lost wake-up"));
    }
    let answers: u64 = seen.iter().map(|s| s.lock().unwrap().answers).sum();
    eprintln!(
        "{PUBLISHERS} publishers x {n} modify vs {chains} callback chains: {:?}, {answers} callbacks",
        began.elapsed()
    );
    assert_eq!(b.waiter_count(), 0);
    for (i, s) in seen.iter().enumerate() {
        let s = s.lock().unwrap();
        assert_eq!(s.lagged, 0, "chain {i} lagged");
        assert!(s.contiguous, "chain {i} missed a version");
        assert_eq!(s.last, last, "chain {i}");
    }
}

/// Wakes the thread that waits on it.
struct Unpark {
    woken: AtomicBool,
    thread: thread::Thread,
}

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        self.thread.unpark();
    }
}

#[test]
fn threads_poll_drop_and_repoll_waits_against_concurrent_publishers_and_no_wake_up_is_lost() {
    let _turn = one_at_a_time();
    let n = iters();
    let last = PUBLISHERS * n;
    let b = Broadcaster::new(0u64);
    let start = Arc::new(Barrier::new(PUBLISHERS as usize + 1));
    let threads = publishers(&b, n, &start, true);
    let (cancelled, parked) = (AtomicU64::new(0), AtomicU64::new(0));
    let began = Instant::now();
    thread::scope(|s| {
        for t in 0..4u64 {
            let (b, cancelled, parked) = (&b, &cancelled, &parked);
            s.spawn(move || {
                let mut cursor = Cursor::at(Version::ZERO);
                let mut round = t;
                while cursor.version() != Some(Version::new(last)) {
                    round += 1;
                    let unpark = Arc::new(Unpark {
                        woken: AtomicBool::new(false),
                        thread: thread::current(),
                    });
                    let waker = Waker::from(Arc::clone(&unpark));
                    let mut cx = Context::from_waker(&waker);
                    let mut wait = b.wait(cursor);
                    let r = match Pin::new(&mut wait).poll(&mut cx) {
                        Poll::Ready(r) => r,
                        // Give up on it, racing whatever publish is under way.
                        Poll::Pending if round.is_multiple_of(3) => {
                            drop(wait);
                            cancelled.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Poll::Pending => {
                            parked.fetch_add(1, Ordering::Relaxed);
                            let deadline = Instant::now() + GRACE;
                            while !unpark.woken.load(Ordering::SeqCst) {
                                assert!(
                                    Instant::now() < deadline,
                                    "thread {t} at {cursor:?}, broadcaster at {}: lost wake-up",
                                    b.version()
                                );
                                thread::park_timeout(Duration::from_millis(100));
                            }
                            match Pin::new(&mut wait).poll(&mut cx) {
                                Poll::Ready(r) => r,
                                Poll::Pending => panic!("woken, yet not ready"),
                            }
                        }
                    };
                    let changed = r.unwrap();
                    assert!(changed.version() > cursor.version().unwrap());
                    cursor = changed.cursor();
                }
            });
        }
        start.wait();
    });
    for t in threads {
        t.join().unwrap();
    }
    eprintln!(
        "{PUBLISHERS} publishers x {n} modify vs 4 polling threads: {:?}; \
         {} waits parked until woken, {} dropped while registered",
        began.elapsed(),
        parked.load(Ordering::Relaxed),
        cancelled.load(Ordering::Relaxed)
    );
    assert_eq!(b.waiter_count(), 0);
}

#[test]
fn threads_register_and_cancel_against_concurrent_publishers_and_each_callback_runs_or_is_cancelled_never_both(
) {
    let _turn = one_at_a_time();
    let n = iters();
    let b = Broadcaster::new(0u64);
    let start = Arc::new(Barrier::new(PUBLISHERS as usize + 1));
    let threads = publishers(&b, n, &start, true);
    let ran = Arc::new(AtomicUsize::new(0));
    let registered = AtomicUsize::new(0);
    let cancelled = AtomicUsize::new(0);
    let publishing_done = AtomicBool::new(false);
    let began = Instant::now();
    thread::scope(|s| {
        let registrants: Vec<_> = (0..2)
            .map(|_| {
                let (b, ran, registered, cancelled, done) =
                    (&b, &ran, &registered, &cancelled, &publishing_done);
                s.spawn(move || {
                    let mut round = 0u64;
                    while !done.load(Ordering::SeqCst) {
                        round += 1;
                        let once = Arc::new(AtomicBool::new(false));
                        let reg = b
                            .register(Cursor::NEXT, {
                                let (ran, once) = (Arc::clone(ran), Arc::clone(&once));
                                move |r| {
                                    assert!(r.is_ok());
                                    assert!(!once.swap(true, Ordering::SeqCst), "ran twice");
                                    ran.fetch_add(1, Ordering::SeqCst);
                                }
                            })
                            .unwrap();
                        registered.fetch_add(1, Ordering::SeqCst);
                        // Every other time, let a publisher in between
                        // register and cancel.
                        if round.is_multiple_of(2) {
                            thread::yield_now();
                        }
                        if reg.cancel() {
                            cancelled.fetch_add(1, Ordering::SeqCst);
                            assert!(!once.load(Ordering::SeqCst), "cancelled, yet it ran");
                        }
                    }
                })
            })
            .collect();
        start.wait();
        for t in threads {
            t.join().unwrap();
        }
        publishing_done.store(true, Ordering::SeqCst);
        for r in registrants {
            r.join().unwrap();
        }
    });
    let (ran, registered, cancelled) = (
        ran.load(Ordering::SeqCst),
        registered.load(Ordering::SeqCst),
        cancelled.load(Ordering::SeqCst),
    );
    eprintln!(
        "{PUBLISHERS} publishers x {n} modify vs 2 registering threads: {:?}; \
         {registered} registrations, {ran} ran, {cancelled} cancelled",
        began.elapsed()
    );
    // `cancel` answers `false` only for a callback already taken for calling,
    // and the publishing thread calls it before its publish returns.
    assert_eq!(ran + cancelled, registered);
    assert!(ran > 0, "no callback ever ran");
    assert_eq!(b.waiter_count(), 0);
}
