//! Cross-instance latency of the Redis backplane: how long from a publish
//! on instance A until a waiter held by instance B wakes, and how long
//! until every one of many waiters split over A and B has woken.
//!
//! ```sh
//! cargo run --release -p longpoll-tools --features redis --bin redis_latency -- \
//!     [--redis redis://127.0.0.1:6379/] [--rounds 1000] [--waiters 10000] \
//!     [--fanout-rounds 50] [--workers 2]
//! ```
//!
//! Two backplanes in one process stand for two instances: each has its own
//! connections to Redis, so an update travels A -> Redis -> B's subscription
//! exactly as between two machines (here over loopback). Two baselines run
//! in the same process, so the figures can be read as ratios:
//!
//! * `redis PUBLISH -> SUBSCRIBE`: the floor, redis-rs alone, one
//!   `PUBLISH` on one connection received on another. Its rounds alternate
//!   with the backplane's, so both see the same load on the machine and on
//!   Redis;
//! * `in-process notify -> wait`: a plain `Broadcaster`, no Redis.
//!
//! Keys go under a prefix of their own and are deleted at the end.

use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use longpoll::redis::{Backplane, Channel};
use longpoll::Broadcaster;
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(about = "Cross-instance latency of the Redis backplane")]
struct Args {
    /// The Redis to measure against.
    #[arg(long, default_value = "redis://127.0.0.1:6379/")]
    redis: String,
    /// Rounds of one publish and one waiter.
    #[arg(long, default_value_t = 1000)]
    rounds: usize,
    /// Waiters of the fan-out, split evenly over the two instances.
    #[arg(long, default_value_t = 10_000)]
    waiters: usize,
    /// Rounds of the fan-out.
    #[arg(long, default_value_t = 50)]
    fanout_rounds: usize,
    /// Worker threads of the tokio runtime both instances share.
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(run(args));
}

async fn run(args: Args) {
    let prefix = format!("longpoll-bench:{}:", std::process::id());
    let a = connect(&args.redis, &prefix).await;
    let b = connect(&args.redis, &prefix).await;

    println!(
        "one waiter, {} rounds (microseconds)     p50      p99    p99.9      max",
        args.rounds
    );
    let on_a: Channel<u64> = a.channel("one", 0).await.expect("channel");
    let on_b: Channel<u64> = b.channel("one", 0).await.expect("channel");
    let (floor, cross) = one_waiter(&args.redis, &prefix, &on_a, &on_b, args.rounds).await;
    report("redis PUBLISH -> SUBSCRIBE", &floor);
    report("in-process notify -> wait", &local_one(args.rounds).await);
    report("backplane publish A -> waiter B", &cross);
    println!(
        "  p50 / floor p50: {:.2}x, p99 / floor p99: {:.2}x",
        pct(&cross, 50.0) / pct(&floor, 50.0),
        pct(&cross, 99.0) / pct(&floor, 99.0)
    );

    println!(
        "\n{} waiters, {} rounds, until the last one woke (microseconds)     p50      p99    p99.9      max",
        args.waiters, args.fanout_rounds
    );
    let local = local_fanout(args.waiters, args.fanout_rounds).await;
    report("in-process, one broadcaster", &local);
    let on_a: Channel<u64> = a.channel("fan", 0).await.expect("channel");
    let on_b: Channel<u64> = b.channel("fan", 0).await.expect("channel");
    let split = cross_fanout(&on_a, &on_b, args.waiters, args.fanout_rounds).await;
    report("backplane, half on A, half on B", &split);
    println!(
        "  p50 / in-process p50: {:.2}x",
        pct(&split, 50.0) / pct(&local, 50.0)
    );

    delete_prefix(&args.redis, &prefix).await;
}

async fn connect(url: &str, prefix: &str) -> Backplane {
    match Backplane::builder(url).prefix(prefix).connect().await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("redis_latency: {url}: {e}");
            std::process::exit(1);
        }
    }
}

/// The floor and the backplane, round by round in turn, so that both see
/// the same machine and the same Redis: the floor is a `PUBLISH` on one
/// connection received on a subscription (redis-rs alone); the backplane
/// round is a publish on A until B's waiter wakes.
async fn one_waiter(
    url: &str,
    prefix: &str,
    on_a: &Channel<u64>,
    on_b: &Channel<u64>,
    rounds: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let client = redis::Client::open(url).expect("valid url");
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (mut sink, mut stream) = client.get_async_pubsub().await.unwrap().split();
    let channel = format!("{prefix}raw");
    sink.subscribe(&channel).await.unwrap();
    let mut woke = waiter(on_b.broadcaster().clone(), rounds);
    let (mut floor, mut cross) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for i in 0..rounds {
        let start = Instant::now();
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(i)
            .query_async(&mut conn)
            .await
            .unwrap();
        stream.next().await.expect("the message");
        floor.push(start.elapsed());

        until_waiting(on_b.broadcaster(), 1).await;
        let start = Instant::now();
        on_a.publish(i as u64).await.expect("publish");
        cross.push(woke.recv().await.unwrap() - start);
    }
    (floor, cross)
}

/// A waiter task on `broadcaster`, reporting when it woke, again and again.
fn waiter<T: Send + Sync + 'static>(
    broadcaster: Broadcaster<T>,
    rounds: usize,
) -> mpsc::UnboundedReceiver<Instant> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut cursor = broadcaster.current().cursor();
        for _ in 0..rounds {
            let changed = broadcaster.wait(cursor).await.expect("open");
            let _ = tx.send(Instant::now());
            cursor = changed.cursor();
        }
    });
    rx
}

/// Waits (bounded) until `b` holds `n` waiters. Sleeps rather than spins:
/// on a small machine a spinning thread takes the core the waiters need.
async fn until_waiting<T>(b: &Broadcaster<T>, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.waiter_count() < n {
        assert!(Instant::now() < deadline, "waiters did not register");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn local_one(rounds: usize) -> Vec<Duration> {
    let b = Broadcaster::new(0u64);
    let mut woke = waiter(b.clone(), rounds);
    let mut out = Vec::with_capacity(rounds);
    for i in 0..rounds {
        until_waiting(&b, 1).await;
        let start = Instant::now();
        b.notify(i as u64).unwrap();
        out.push(woke.recv().await.unwrap() - start);
    }
    out
}

/// `n` waiter tasks per broadcaster, each reporting every wake-up.
fn waiters<T: Send + Sync + 'static>(
    broadcasters: &[Broadcaster<T>],
    n: usize,
    rounds: usize,
) -> mpsc::UnboundedReceiver<Instant> {
    let (tx, rx) = mpsc::unbounded_channel();
    for b in broadcasters {
        for _ in 0..n {
            let (b, tx) = (b.clone(), tx.clone());
            tokio::spawn(async move {
                let mut cursor = b.current().cursor();
                for _ in 0..rounds {
                    let changed = b.wait(cursor).await.expect("open");
                    let _ = tx.send(Instant::now());
                    cursor = changed.cursor();
                }
            });
        }
    }
    rx
}

/// Until the last of `total` wake-ups, per round.
async fn collect_round(
    woke: &mut mpsc::UnboundedReceiver<Instant>,
    total: usize,
    start: Instant,
) -> Duration {
    let mut last = start;
    for _ in 0..total {
        last = last.max(woke.recv().await.unwrap());
    }
    last - start
}

async fn local_fanout(n: usize, rounds: usize) -> Vec<Duration> {
    let b = Broadcaster::new(0u64);
    let mut woke = waiters(std::slice::from_ref(&b), n, rounds);
    let mut out = Vec::with_capacity(rounds);
    for i in 0..rounds {
        until_waiting(&b, n).await;
        let start = Instant::now();
        b.notify(i as u64).unwrap();
        out.push(collect_round(&mut woke, n, start).await);
    }
    out
}

async fn cross_fanout(
    on_a: &Channel<u64>,
    on_b: &Channel<u64>,
    n: usize,
    rounds: usize,
) -> Vec<Duration> {
    let half = n / 2;
    let both = [on_a.broadcaster().clone(), on_b.broadcaster().clone()];
    let mut woke = waiters(&both, half, rounds);
    let mut out = Vec::with_capacity(rounds);
    for i in 0..rounds {
        until_waiting(on_a.broadcaster(), half).await;
        until_waiting(on_b.broadcaster(), half).await;
        let start = Instant::now();
        on_a.publish(i as u64).await.expect("publish");
        out.push(collect_round(&mut woke, 2 * half, start).await);
    }
    out
}

fn pct(samples: &[Duration], p: f64) -> f64 {
    let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[rank.min(v.len() - 1)]
}

fn report(what: &str, samples: &[Duration]) {
    println!(
        "  {what:<38} {:>8.0} {:>8.0} {:>8.0} {:>8.0}",
        pct(samples, 50.0),
        pct(samples, 99.0),
        pct(samples, 99.9),
        pct(samples, 100.0)
    );
}

async fn delete_prefix(url: &str, prefix: &str) {
    let client = redis::Client::open(url).expect("valid url");
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}
