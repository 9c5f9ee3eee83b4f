//! Fan-out: one publish, N parked tasks, timed until the last one has seen it.
//!
//! Every variant runs the same harness. For each timed round it spawns N
//! tasks that each create a waiter for the version after `since`, poll it
//! once (which registers it) and count themselves as parked. A notifier task
//! waits until all N are parked, reads the clock, and publishes `since + 1`.
//! Each waiter that then observes the new version decrements a countdown; the
//! last one reads the clock again. Only that span is timed: spawning,
//! registering and tearing down are not.
//!
//! The variants:
//!
//! * `longpoll`: [`Broadcaster::wait`] on `Cursor::at(since)`, `notify`.
//! * `minimal_wakers`: a `parking_lot::Mutex<Vec<Waker>>` and an `AtomicU64`
//!   version, polled by a hand-written future: the least a fan-out can do (no
//!   cancellation, no value, no cursor rules). A reference line.
//! * `tokio_watch`: a `watch::Receiver` per waiter (`subscribe`, `changed`),
//!   `send_modify`.
//! * `tokio_broadcast`: a `broadcast::Receiver` per waiter (`subscribe`,
//!   `recv`), `send`.
//! * `tokio_notify`: `Notify::notified` plus an `AtomicU64` version,
//!   `notify_waiters`.
//! * `seed_callbacks`: the original demo's callback list, a
//!   `Mutex<Vec<Box<dyn FnOnce(u64) + Send>>>` whose callbacks each complete
//!   a `tokio::sync::oneshot` that its task awaits.
//!
//! Groups: `fanout` (multi-thread runtime, 2 workers: the notifier's wakes
//! are spread over both) and `fanout_current_thread`. Ids read
//! `fanout/longpoll/100000`. After the criterion output, a table gives each
//! variant's median round time and its ratio to `longpoll`.
//!
//! ```text
//! cargo bench --bench fanout                        # everything (~5 min on 2 quiet cores)
//! cargo bench --bench fanout -- 'fanout/.*/10000$'  # one N, both groups
//! cargo bench --bench fanout -- --test              # each benchmark once (CI)
//! ```
//!
//! Built with `--features tracing,metrics`, the longpoll variant records
//! through the `metrics` facade and `tracing`; with no recorder or
//! subscriber installed that costs what the README's "Observability"
//! section measures. `LONGPOLL_BENCH_TELEMETRY=1` installs what a server
//! would, before any broadcaster is built: a Prometheus recorder (with its
//! upkeep every 5 s) and a `tracing` subscriber at `info` writing to a sink;
//! any other value is the subscriber's filter (`longpoll::publish=trace`
//! turns every publish's event on).

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex as StdMutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode};
use longpoll::{Broadcaster, Cursor};
use tokio::runtime::{Builder as RtBuilder, Runtime};
use tokio::sync::{broadcast, oneshot, watch, Notify};

/// The numbers of parked waiters.
const NS: [usize; 5] = [1, 100, 1_000, 10_000, 100_000];

/// One fan-out primitive under test. `&'static self`: the handle is leaked
/// once per benchmark, so that no variant pays a per-task `Arc` clone for
/// the harness's sake (those that need one per waiter, like a watch
/// receiver, pay it because the primitive requires it).
trait Fanout: Sync + Send + 'static {
    /// A waiter for the first version after `since`; resolves to the
    /// version it observed. Called on the waiting task, registers when
    /// first polled.
    fn waiter(&'static self, since: u64) -> impl Future<Output = u64> + Send + 'static;
    /// Publishes `version` (always `since + 1`) and wakes every waiter.
    fn publish(&'static self, version: u64);
}

// ---------------------------------------------------------------- longpoll

struct LongPoll(Broadcaster<u64>);

impl Fanout for LongPoll {
    async fn waiter(&'static self, since: u64) -> u64 {
        let changed = self.0.wait(Cursor::at(since.into())).await;
        changed.expect("never closed").version().get()
    }

    fn publish(&'static self, version: u64) {
        let v = self.0.notify(version).expect("never closed");
        debug_assert_eq!(v.get(), version);
    }
}

// ---------------------------------------------------------- minimal_wakers

/// The least a fan-out can do: a version and a list of wakers.
#[derive(Default)]
struct MinimalWakers {
    version: AtomicU64,
    wakers: parking_lot::Mutex<Vec<Waker>>,
}

struct MinimalWait {
    shared: &'static MinimalWakers,
    since: u64,
}

impl Future for MinimalWait {
    type Output = u64;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
        let v = self.shared.version.load(Ordering::Acquire);
        if v != self.since {
            return Poll::Ready(v);
        }
        // Check again under the lock the publisher takes to drain the list:
        // either it bumped the version before we locked, or it drains us.
        let mut wakers = self.shared.wakers.lock();
        let v = self.shared.version.load(Ordering::Acquire);
        if v != self.since {
            return Poll::Ready(v);
        }
        wakers.push(cx.waker().clone());
        Poll::Pending
    }
}

impl Fanout for MinimalWakers {
    fn waiter(&'static self, since: u64) -> impl Future<Output = u64> + Send + 'static {
        MinimalWait {
            shared: self,
            since,
        }
    }

    fn publish(&'static self, version: u64) {
        self.version.store(version, Ordering::Release);
        let wakers = std::mem::take(&mut *self.wakers.lock());
        wakers.into_iter().for_each(Waker::wake);
    }
}

// ------------------------------------------------------------- tokio_watch

struct TokioWatch(watch::Sender<u64>);

impl Fanout for TokioWatch {
    fn waiter(&'static self, _since: u64) -> impl Future<Output = u64> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            rx.changed().await.expect("sender kept");
            *rx.borrow_and_update()
        }
    }

    fn publish(&'static self, version: u64) {
        self.0.send_modify(|v| *v = version);
    }
}

// --------------------------------------------------------- tokio_broadcast

struct TokioBroadcast(broadcast::Sender<u64>);

impl Fanout for TokioBroadcast {
    fn waiter(&'static self, _since: u64) -> impl Future<Output = u64> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move { rx.recv().await.expect("no lag, sender kept") }
    }

    fn publish(&'static self, version: u64) {
        self.0.send(version).expect("receivers are parked");
    }
}

// ------------------------------------------------------------ tokio_notify

#[derive(Default)]
struct TokioNotify {
    version: AtomicU64,
    notify: Notify,
}

impl Fanout for TokioNotify {
    async fn waiter(&'static self, _since: u64) -> u64 {
        self.notify.notified().await;
        self.version.load(Ordering::Acquire)
    }

    fn publish(&'static self, version: u64) {
        self.version.store(version, Ordering::Release);
        self.notify.notify_waiters();
    }
}

// ---------------------------------------------------------- seed_callbacks

/// The original demo's `ShoppingCart.callbacks`: `register` appends a
/// callback, `notifyCallbacks` calls them all with the new count and clears
/// the list. Each callback completes a oneshot that its request task awaits.
#[derive(Default)]
struct SeedCallbacks {
    #[allow(clippy::type_complexity)]
    callbacks: StdMutex<Vec<Box<dyn FnOnce(u64) + Send>>>,
}

impl Fanout for SeedCallbacks {
    fn waiter(&'static self, _since: u64) -> impl Future<Output = u64> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        self.callbacks
            .lock()
            .expect("not poisoned")
            .push(Box::new(move |v| {
                let _ = tx.send(v);
            }));
        async move { rx.await.expect("callback ran") }
    }

    fn publish(&'static self, version: u64) {
        let callbacks = std::mem::take(&mut *self.callbacks.lock().expect("not poisoned"));
        for callback in callbacks {
            callback(version);
        }
    }
}

// ----------------------------------------------------------------- harness

/// What one round's tasks share. Leaked once per benchmark and reset between
/// rounds, so that tasks hold a plain reference.
struct Round {
    n: AtomicUsize,
    parked: AtomicUsize,
    remaining: AtomicUsize,
    all_parked: Notify,
    done: Notify,
    start: StdMutex<Option<Instant>>,
    end: StdMutex<Option<Instant>>,
}

impl Round {
    fn leak() -> &'static Round {
        Box::leak(Box::new(Round {
            n: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            remaining: AtomicUsize::new(0),
            all_parked: Notify::new(),
            done: Notify::new(),
            start: StdMutex::new(None),
            end: StdMutex::new(None),
        }))
    }
}

/// Polls `inner`, counting the task as parked after its first poll. The
/// first poll must be pending: nothing is published before all are parked.
struct Parked<'a, F> {
    inner: Pin<&'a mut F>,
    round: &'static Round,
    first: bool,
}

impl<F: Future> Future for Parked<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let r = self.inner.as_mut().poll(cx);
        if std::mem::take(&mut self.first) {
            assert!(r.is_pending(), "a waiter was ready before the publish");
            let round = self.round;
            if round.parked.fetch_add(1, Ordering::AcqRel) + 1 == round.n.load(Ordering::Relaxed) {
                round.all_parked.notify_one();
            }
        }
        r
    }
}

/// One timed fan-out of `since -> since + 1` to `n` freshly parked tasks.
async fn round<F: Fanout>(f: &'static F, r: &'static Round, n: usize, since: u64) -> Duration {
    r.n.store(n, Ordering::Relaxed);
    r.parked.store(0, Ordering::Relaxed);
    r.remaining.store(n, Ordering::Relaxed);
    *r.start.lock().unwrap() = None;
    *r.end.lock().unwrap() = None;

    let (go, go_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        go_rx.await.expect("harness sends go");
        let t0 = Instant::now();
        f.publish(since + 1);
        *r.start.lock().unwrap() = Some(t0);
    });
    for _ in 0..n {
        tokio::spawn(async move {
            let waiter = std::pin::pin!(f.waiter(since));
            let parked = Parked {
                inner: waiter,
                round: r,
                first: true,
            };
            let seen = parked.await;
            assert_eq!(seen, since + 1, "observed the new version");
            black_box(seen);
            if r.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                *r.end.lock().unwrap() = Some(Instant::now());
                r.done.notify_one();
            }
        });
    }
    r.all_parked.notified().await;
    go.send(()).expect("notifier waits");
    r.done.notified().await;
    // The last observer may finish before the notifier stores the start.
    loop {
        if let Some(t0) = *r.start.lock().unwrap() {
            let t1 = r.end.lock().unwrap().expect("set before done");
            return t1.saturating_duration_since(t0);
        }
        tokio::task::yield_now().await;
    }
}

/// Median round times, collected for the closing ratio table.
type Medians = Vec<(String, &'static str, usize, Duration)>;

fn bench_variant<F: Fanout>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &Runtime,
    name: &'static str,
    n: usize,
    f: &'static F,
    medians: &mut Medians,
    group_name: &str,
) {
    let r = Round::leak();
    let mut since = 0u64;
    let mut rounds = Vec::new();
    group.bench_with_input(BenchmarkId::new(name, n), &n, |b, &n| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let d = round(f, r, n, since).await;
                    since += 1;
                    rounds.push(d);
                    total += d;
                }
                total
            })
        })
    });
    rounds.sort_unstable();
    if let Some(m) = rounds.get(rounds.len() / 2) {
        medians.push((group_name.to_owned(), name, n, *m));
    }
}

fn leak<T>(t: T) -> &'static T {
    Box::leak(Box::new(t))
}

fn run_group(c: &mut Criterion, group_name: &str, rt: &Runtime, medians: &mut Medians) {
    let mut group = c.benchmark_group(group_name);
    group.sampling_mode(SamplingMode::Flat);
    for n in NS {
        // Criterion fills the measurement time with *timed* fan-outs, but
        // each round also spawns and parks N tasks untimed, which costs
        // several times the fan-out itself (~40x at N = 1). These budgets
        // keep every benchmark near 2-10 s of wall time.
        let (samples, millis) = match n {
            0..=1 => (30, 50),
            2..=100 => (30, 500),
            101..=1_000 => (20, 1_000),
            1_001..=10_000 => (15, 2_000),
            _ => (10, 2_500),
        };
        group.sample_size(samples);
        group.warm_up_time(Duration::from_millis(300));
        group.measurement_time(Duration::from_millis(millis));
        let g = group_name;
        bench_variant(
            &mut group,
            rt,
            "longpoll",
            n,
            leak(LongPoll(Broadcaster::new(0))),
            medians,
            g,
        );
        bench_variant(
            &mut group,
            rt,
            "minimal_wakers",
            n,
            leak(MinimalWakers::default()),
            medians,
            g,
        );
        bench_variant(
            &mut group,
            rt,
            "tokio_watch",
            n,
            leak(TokioWatch(watch::Sender::new(0))),
            medians,
            g,
        );
        bench_variant(
            &mut group,
            rt,
            "tokio_broadcast",
            n,
            leak(TokioBroadcast(broadcast::Sender::new(16))),
            medians,
            g,
        );
        bench_variant(
            &mut group,
            rt,
            "tokio_notify",
            n,
            leak(TokioNotify::default()),
            medians,
            g,
        );
        bench_variant(
            &mut group,
            rt,
            "seed_callbacks",
            n,
            leak(SeedCallbacks::default()),
            medians,
            g,
        );
    }
    group.finish();
}

fn print_ratios(medians: &Medians) {
    if medians.is_empty() {
        return;
    }
    println!("\nfan-out, median of timed rounds, and ratio to longpoll (lower is faster):");
    println!(
        "{:<24} {:>7} {:<16} {:>12} {:>10}",
        "group", "N", "variant", "median", "/longpoll"
    );
    for (group, name, n, m) in medians {
        let base = medians
            .iter()
            .find(|(g, v, k, _)| g == group && *v == "longpoll" && k == n)
            .map(|e| e.3);
        let ratio = base
            .filter(|b| !b.is_zero())
            .map(|b| format!("{:.2}x", m.as_secs_f64() / b.as_secs_f64()))
            .unwrap_or_else(|| "-".into());
        println!(
            "{group:<24} {n:>7} {name:<16} {:>12} {ratio:>10}",
            format!("{m:.1?}")
        );
    }
}

/// A Prometheus recorder and a `tracing` subscriber into a sink, with
/// `LONGPOLL_BENCH_TELEMETRY` set (see the module docs).
#[cfg(all(feature = "tracing", feature = "metrics"))]
fn install_telemetry() {
    let Ok(filter) = std::env::var("LONGPOLL_BENCH_TELEMETRY") else {
        println!("telemetry: compiled in, no recorder or subscriber installed\n");
        return;
    };
    let filter = if filter == "1" {
        "info".to_owned()
    } else {
        filter
    };
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the first recorder");
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(5));
        handle.run_upkeep();
    });
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&filter))
        .with_writer(std::io::sink)
        .init();
    println!("telemetry: a Prometheus recorder and a tracing subscriber ({filter}) installed\n");
}

fn main() {
    println!(
        "fan-out: one publish to N parked tasks, timed from the publish until the last \
         task has observed the new version.\nvariants: longpoll (Broadcaster::wait), \
         minimal_wakers (Mutex<Vec<Waker>> + AtomicU64), tokio_watch, tokio_broadcast, \
         tokio_notify (Notify + AtomicU64), seed_callbacks (Mutex<Vec<Box<dyn FnOnce>>> \
         completing oneshots)\n"
    );
    let mut c = Criterion::default().configure_from_args();
    let mut medians = Medians::new();
    #[cfg(all(feature = "tracing", feature = "metrics"))]
    install_telemetry();

    let multi = RtBuilder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    run_group(&mut c, "fanout", &multi, &mut medians);
    drop(multi);

    let current = RtBuilder::new_current_thread().build().expect("runtime");
    run_group(&mut c, "fanout_current_thread", &current, &mut medians);
    drop(current);

    c.final_summary();
    print_ratios(&medians);
}
