//! Churn: the per-operation costs around a fan-out, each beside a tokio
//! baseline where one does the same job.
//!
//! * `churn/register_drop/*`: create a waiter, poll it once (it registers),
//!   drop it (it unregisters). What a long poll that times out, or whose
//!   client goes away, costs. Polled with a no-op waker, so waker clones
//!   cost nothing for every variant.
//! * `churn/notify_no_waiters/*`: publish with nobody waiting (tokio's
//!   channels keep one idle receiver, as `send` needs one).
//! * `churn/modify_contended/*`: a read-modify-publish from 2 threads at
//!   once; the time is per operation over both threads.
//! * `churn/modify_uncontended/*`: the same from one thread.
//! * `churn/wait_behind/*`: a wait whose cursor is already behind, so it is
//!   answered on its first poll: the path most re-polls take.
//!
//! ```text
//! cargo bench --bench churn                 # everything (~1 min)
//! cargo bench --bench churn -- wait_behind  # one function
//! cargo bench --bench churn -- --test       # each benchmark once (CI)
//! ```

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::Criterion;
use longpoll::{Broadcaster, Cursor, Version};
use tokio::sync::{broadcast, watch, Notify};

/// Polls `fut` once with a no-op waker.
fn poll_once<F: Future>(fut: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

fn register_drop(c: &mut Criterion) {
    let mut group = c.benchmark_group("churn/register_drop");

    let b = Broadcaster::new(0u64);
    group.bench_function("longpoll", |bench| {
        bench.iter(|| {
            let wait = pin!(b.wait(Cursor::at(Version::ZERO)));
            assert!(poll_once(wait).is_pending());
        })
    });
    // A client without a cursor: the wait reads the current version first.
    group.bench_function("longpoll_next", |bench| {
        bench.iter(|| {
            let wait = pin!(b.wait(Cursor::NEXT));
            assert!(poll_once(wait).is_pending());
        })
    });
    assert_eq!(b.waiter_count(), 0, "every dropped wait unregistered");

    let (tx, mut rx) = watch::channel(0u64);
    group.bench_function("tokio_watch", |bench| {
        bench.iter(|| {
            let changed = pin!(rx.changed());
            assert!(poll_once(changed).is_pending());
        })
    });
    drop(tx);

    let (tx, mut rx) = broadcast::channel::<u64>(16);
    group.bench_function("tokio_broadcast", |bench| {
        bench.iter(|| {
            let recv = pin!(rx.recv());
            assert!(poll_once(recv).is_pending());
        })
    });
    drop(tx);

    let notify = Notify::new();
    group.bench_function("tokio_notify", |bench| {
        bench.iter(|| {
            let notified = pin!(notify.notified());
            assert!(poll_once(notified).is_pending());
        })
    });
    group.finish();
}

fn notify_no_waiters(c: &mut Criterion) {
    let mut group = c.benchmark_group("churn/notify_no_waiters");

    let b = Broadcaster::new(0u64);
    let mut i = 0u64;
    group.bench_function("longpoll", |bench| {
        bench.iter(|| {
            i += 1;
            black_box(b.notify(black_box(i)).unwrap());
        })
    });

    // The same minimal pair as in the fan-out bench.
    let version = AtomicU64::new(0);
    let wakers = parking_lot::Mutex::new(Vec::<Waker>::new());
    group.bench_function("minimal_wakers", |bench| {
        bench.iter(|| {
            version.fetch_add(1, Ordering::Release);
            let taken = std::mem::take(&mut *wakers.lock());
            taken.into_iter().for_each(Waker::wake);
        })
    });

    let (tx, _idle) = watch::channel(0u64);
    let mut i = 0u64;
    group.bench_function("tokio_watch", |bench| {
        bench.iter(|| {
            i += 1;
            tx.send(black_box(i)).unwrap();
        })
    });

    let (tx, _idle) = broadcast::channel::<u64>(16);
    let mut i = 0u64;
    group.bench_function("tokio_broadcast", |bench| {
        bench.iter(|| {
            i += 1;
            black_box(tx.send(black_box(i)).unwrap());
        })
    });

    let version = AtomicU64::new(0);
    let notify = Notify::new();
    group.bench_function("tokio_notify", |bench| {
        bench.iter(|| {
            version.fetch_add(1, Ordering::Release);
            notify.notify_waiters();
        })
    });
    group.finish();
}

/// Runs `op` `iters` times in total, split over `threads` threads started
/// together; returns the wall time from the start to the last thread's end.
fn spread(iters: u64, threads: u64, op: &(dyn Fn() + Sync)) -> Duration {
    let barrier = Barrier::new(threads as usize + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                let share = iters / threads + u64::from(t < iters % threads);
                s.spawn(move || {
                    barrier.wait();
                    for _ in 0..share {
                        op();
                    }
                    Instant::now()
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let end = handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .max()
            .expect("at least one thread");
        end.saturating_duration_since(start)
    })
}

fn modify(c: &mut Criterion) {
    for (name, threads) in [
        ("churn/modify_contended", 2),
        ("churn/modify_uncontended", 1),
    ] {
        let mut group = c.benchmark_group(name);

        let b = Broadcaster::new(0u64);
        group.bench_function("longpoll", |bench| {
            bench.iter_custom(|iters| {
                spread(iters, threads, &|| {
                    black_box(b.modify(|v| Some(v + 1)).unwrap());
                })
            })
        });
        let total = b.version().get();
        assert_eq!(*b.current().value().as_ref(), total, "no lost update");

        let (tx, _idle) = watch::channel(0u64);
        group.bench_function("tokio_watch", |bench| {
            bench.iter_custom(|iters| {
                spread(iters, threads, &|| {
                    black_box(tx.send_if_modified(|v| {
                        *v += 1;
                        true
                    }));
                })
            })
        });
        group.finish();
    }
}

fn wait_behind(c: &mut Criterion) {
    let mut group = c.benchmark_group("churn/wait_behind");

    // One version behind, latest-value history: the usual re-poll after a
    // client missed a change while its previous answer was in flight.
    let b = Broadcaster::new(0u64);
    b.notify(1).unwrap();
    group.bench_function("longpoll", |bench| {
        bench.iter(|| {
            let wait = pin!(b.wait(Cursor::at(Version::ZERO)));
            let Poll::Ready(Ok(changed)) = poll_once(wait) else {
                panic!("a cursor behind is answered at once");
            };
            black_box(changed.version());
        })
    });

    // Eight versions behind with a history of 16: eight updates delivered.
    let b = Broadcaster::builder().history(16).build(0u64);
    for v in 1..=16 {
        b.notify(v).unwrap();
    }
    group.bench_function("longpoll_history16_8behind", |bench| {
        bench.iter(|| {
            let wait = pin!(b.wait(Cursor::at(Version::new(8))));
            let Poll::Ready(Ok(changed)) = poll_once(wait) else {
                panic!("a cursor behind is answered at once");
            };
            assert_eq!(changed.updates().len(), 8);
            black_box(changed.version());
        })
    });

    // A watch receiver that has not seen the current value.
    let (tx, mut rx) = watch::channel(0u64);
    tx.send(1).unwrap();
    group.bench_function("tokio_watch", |bench| {
        bench.iter(|| {
            rx.mark_changed();
            {
                let changed = pin!(rx.changed());
                assert!(poll_once(changed).is_ready());
            }
            black_box(*rx.borrow_and_update());
        })
    });
    group.finish();
}

fn main() {
    println!(
        "churn: register-then-drop, publish without waiters, contended modify, \
         and a wait already behind; longpoll beside tokio's primitives\n"
    );
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    register_drop(&mut c);
    notify_no_waiters(&mut c);
    modify(&mut c);
    wait_behind(&mut c);
    c.final_summary();
}
