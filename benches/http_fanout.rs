//! The HTTP layer's fan-out: one publish, N held long polls, timed until the
//! last one has its `200` response built.
//!
//! Each round spawns N tasks that park on [`LongPoll::wait`] for the version
//! after 0. Once all are registered, the clock starts, one change is
//! published, and every task builds its response; the clock stops when the
//! last one is done. The body is a catalogue of 200 products as JSON (about
//! 10 KB), the kind of state a page long-polls for.
//!
//! * `layer`: [`LongPoll::respond`]: the body is encoded once per version and
//!   shared as `Bytes`.
//! * `encode_per_waiter`: the same wait, but each waiter encodes the body
//!   itself and builds the same response: what a handler does without the
//!   layer's cache. The baseline.
//!
//! After the criterion output, a table gives each variant's median round
//! time (over every round run, warm-up included) and its ratio to `layer`.
//!
//! ```text
//! cargo bench --features http --bench http_fanout
//! cargo bench --features http --bench http_fanout -- --test   # each once (CI)
//! ```

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion};
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, ETAG};
use longpoll::http::{etag, LongPoll, PollRequest, APPLICATION_JSON};
use longpoll::{Broadcaster, Cursor, Update, Version};
use serde::Serialize;
use tokio::runtime::Runtime;
use tokio::sync::Notify;

const NS: [usize; 2] = [1_000, 10_000];

#[derive(Serialize)]
struct Product {
    id: u32,
    name: String,
    count: u32,
}

type Catalogue = Vec<Product>;

fn catalogue(round: u32) -> Catalogue {
    (0..200)
        .map(|id| Product {
            id,
            name: format!("product number {id} in the catalogue"),
            count: (id * 7 + round) % 100,
        })
        .collect()
}

fn encode(update: &Update<Catalogue>) -> Bytes {
    Bytes::from(serde_json::to_vec(&**update.value()).expect("plain data serializes"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Layer,
    EncodePerWaiter,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Layer => "layer",
            Variant::EncodePerWaiter => "encode_per_waiter",
        }
    }
}

/// One round: N parked, one publish, timed until the last response is built.
async fn round(variant: Variant, n: usize) -> Duration {
    let b = Broadcaster::new(catalogue(0));
    let poll = LongPoll::new(b.clone(), encode);
    let request = PollRequest::new(Cursor::at(Version::ZERO), Duration::from_secs(60), true);
    let left = Arc::new(AtomicUsize::new(n));
    let done = Arc::new(Notify::new());
    let done_at = Arc::new(parking_lot::Mutex::new(None::<Instant>));
    for _ in 0..n {
        let (poll, request, left, done, done_at) = (
            poll.clone(),
            request.clone(),
            left.clone(),
            done.clone(),
            done_at.clone(),
        );
        tokio::spawn(async move {
            let answer = poll.wait(&request).await;
            let resp = match variant {
                Variant::Layer => poll.respond(&request, answer),
                Variant::EncodePerWaiter => {
                    // The same headers as the layer's `200`, the body
                    // encoded here.
                    let latest = answer.expect("a change").latest().clone();
                    let mut resp = http::Response::new(encode(&latest));
                    let h = resp.headers_mut();
                    h.insert(CONTENT_TYPE, APPLICATION_JSON);
                    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    h.insert(ETAG, etag(latest.epoch(), latest.version()));
                    resp
                }
            };
            black_box(resp);
            if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                *done_at.lock() = Some(Instant::now());
                done.notify_one();
            }
        });
    }
    while b.waiter_count() < n {
        tokio::task::yield_now().await;
    }
    let start = Instant::now();
    b.notify(catalogue(1)).expect("open");
    done.notified().await;
    let end = done_at.lock().expect("set by the last waiter");
    end - start
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut medians = Vec::new();
    let mut group = c.benchmark_group("http_fanout");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    for n in NS {
        for variant in [Variant::Layer, Variant::EncodePerWaiter] {
            let mut samples = Vec::new();
            group.bench_with_input(BenchmarkId::new(variant.name(), n), &n, |bencher, &n| {
                bencher.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let d = run(&rt, variant, n);
                        samples.push(d);
                        total += d;
                    }
                    total
                });
            });
            samples.sort();
            if let Some(median) = samples.get(samples.len() / 2) {
                medians.push((variant, n, *median));
            }
        }
    }
    group.finish();

    println!("\nvariant             N        median round   ratio to layer");
    for &(variant, n, median) in &medians {
        let layer = medians
            .iter()
            .find(|(v, m, _)| *v == Variant::Layer && *m == n)
            .map(|(_, _, d)| *d)
            .expect("layer measured first");
        println!(
            "{:<19} {:<8} {:>12.3?}   {:>6.2}x",
            variant.name(),
            n,
            median,
            median.as_secs_f64() / layer.as_secs_f64()
        );
    }
}

fn run(rt: &Runtime, variant: Variant, n: usize) -> Duration {
    rt.block_on(round(variant, n))
}

criterion::criterion_group!(benches, bench);
criterion::criterion_main!(benches);
