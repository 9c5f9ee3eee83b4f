//! Keyed channels on the Redis backplane (`KeyedChannels`), measured on one
//! Redis or on a Redis Cluster, two instances in one process:
//!
//! 1. Redis memory per idle key (a key published once, history 1), beside
//!    a plain `SET` of the same value under a key of the same length;
//! 2. loading 10 000 keys on an instance (subscribe and read, in batches),
//!    beside the raw floor: `SUBSCRIBE` to 10 000 channels and a pipelined
//!    `HGETALL` of the 10 000 keys on fresh connections;
//! 3. with those 10 000 keys live on both instances, a publish on A until
//!    the waiter on B wakes (a random key each round), beside the raw
//!    floor in the same run, round by round in turn: `PUBLISH` received on
//!    a subscription (`SPUBLISH`/`SSUBSCRIBE` on the key's master on a
//!    cluster), redis-rs alone;
//! 4. catch-up: every subscription connection killed (`CLIENT KILL TYPE
//!    pubsub`, on every master of a cluster), 1 000 of the keys published
//!    at once on A; the time until B holds every one of them;
//! 5. a churn of 100 000 distinct keys (each read on B, published on A,
//!    then left idle), and the process's and Redis's memory before and
//!    after (once swept here and expired there).
//!
//! ```sh
//! cargo run --release -p longpoll-tools --features redis --bin redis_keyed -- \
//!     [--redis redis://127.0.0.1:6379/ | --cluster redis://127.0.0.1:7000/,...] \
//!     [--keys 10000] [--rounds 1000] [--churn 100000] [--workers 2]
//! ```
//!
//! Keys go under a prefix of their own; the churn's expire by themselves,
//! the others are deleted at the end.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cap::Cap;
use clap::Parser;
use longpoll::redis::{Backplane, KeyedChannels};
use longpoll::Broadcaster;
use longpoll_tools::procfs::rss_of;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, PushInfo, PushKind, Value};
use tokio::sync::mpsc;

/// Counts the heap in use: what the process holds, whatever the
/// allocator keeps of what was freed (which RSS shows).
#[global_allocator]
static ALLOCATOR: Cap<std::alloc::System> = Cap::new(std::alloc::System, usize::MAX);

#[derive(Parser, Debug)]
#[command(about = "Keyed channels on the Redis backplane: latency, catch-up, churn, memory")]
struct Args {
    /// One Redis.
    #[arg(long, default_value = "redis://127.0.0.1:6379/")]
    redis: String,
    /// A Redis Cluster instead: seed URLs, comma-separated.
    #[arg(long, value_delimiter = ',')]
    cluster: Option<Vec<String>>,
    /// Keys live on both instances.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Rounds of one publish and one waiter.
    #[arg(long, default_value_t = 1000)]
    rounds: usize,
    /// Distinct keys of the churn.
    #[arg(long, default_value_t = 100_000)]
    churn: usize,
    /// Passes of the churn, each over new keys: memory kept by the
    /// allocator after the first is reused by the next, leaked memory not.
    #[arg(long, default_value_t = 3)]
    churn_passes: usize,
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

/// The Redis under test: its masters (one, or a cluster's), and on a
/// cluster which master owns which slots.
struct Target {
    seeds: Option<Vec<String>>,
    masters: Vec<String>,
    /// `(first slot, last slot, master URL)`.
    slots: Vec<(u16, u16, String)>,
}

impl Target {
    async fn new(args: &Args) -> Target {
        let Some(seeds) = &args.cluster else {
            return Target {
                seeds: None,
                masters: vec![args.redis.clone()],
                slots: Vec::new(),
            };
        };
        let reply: Vec<Value> = query(&seeds[0], redis::cmd("CLUSTER").arg("SLOTS")).await;
        let mut slots = Vec::new();
        for range in reply {
            let Value::Array(items) = range else { continue };
            let (Some(Value::Int(lo)), Some(Value::Int(hi)), Some(Value::Array(master))) =
                (items.first(), items.get(1), items.get(2))
            else {
                continue;
            };
            let (Some(Value::BulkString(ip)), Some(Value::Int(port))) =
                (master.first(), master.get(1))
            else {
                continue;
            };
            let url = format!("redis://{}:{port}/", String::from_utf8_lossy(ip));
            slots.push((*lo as u16, *hi as u16, url));
        }
        let mut masters: Vec<String> = slots.iter().map(|s| s.2.clone()).collect();
        masters.sort();
        masters.dedup();
        Target {
            seeds: Some(seeds.clone()),
            masters,
            slots,
        }
    }

    async fn backplane(&self, prefix: &str) -> Backplane {
        let builder = match &self.seeds {
            None => Backplane::builder(self.masters[0].as_str()),
            Some(seeds) => Backplane::cluster(seeds.iter().cloned()),
        };
        builder
            .prefix(prefix)
            // Nothing periodic during the measurements.
            .check_interval(Duration::from_secs(3600))
            .ping_interval(Duration::from_secs(3600))
            .command_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap_or_else(|e| {
                eprintln!("redis_keyed: {e}");
                std::process::exit(1)
            })
    }

    /// `used_memory` summed over the masters.
    async fn used_memory(&self) -> u64 {
        let mut total = 0;
        for m in &self.masters {
            let info: String = query(m, redis::cmd("INFO").arg("memory")).await;
            total += info
                .lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .expect("INFO memory has used_memory");
        }
        total
    }

    /// Keys summed over the masters.
    async fn dbsize(&self) -> u64 {
        let mut total = 0;
        for m in &self.masters {
            total += query::<u64>(m, &redis::cmd("DBSIZE")).await;
        }
        total
    }

    /// The master (URL) that owns `key`.
    fn owner(&self, key: &str) -> &str {
        if self.seeds.is_none() {
            return &self.masters[0];
        }
        let slot = slot_of(key.as_bytes());
        self.slots
            .iter()
            .find(|(lo, hi, _)| (*lo..=*hi).contains(&slot))
            .map(|s| s.2.as_str())
            .unwrap_or_else(|| panic!("no master owns slot {slot}"))
    }
}

/// The hash slot of `key` (CRC16/XMODEM of its hash tag, modulo 16384).
fn slot_of(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &b in tagged {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

async fn query<T: redis::FromRedisValue>(url: &str, cmd: &redis::Cmd) -> T {
    let client = Client::open(url).expect("valid url");
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    cmd.query_async(&mut conn).await.unwrap()
}

fn hub(
    bp: &Backplane,
    name: &str,
    max_keys: usize,
    idle: Duration,
    ttl: Option<Duration>,
) -> KeyedChannels<u64> {
    bp.keyed(name)
        .history(1)
        .max_keys(max_keys)
        .idle_timeout(idle)
        .ttl(ttl)
        .build()
        .expect("a keyed hub")
}

async fn run(args: Args) {
    let target = Target::new(&args).await;
    let prefix = format!("longpoll-bench:{}:", std::process::id());
    let (a, b) = (
        target.backplane(&prefix).await,
        target.backplane(&prefix).await,
    );
    let kind = if target.seeds.is_some() {
        format!("Redis Cluster, {} masters", target.masters.len())
    } else {
        String::from("one Redis")
    };
    println!("{kind}; {} keys live on both instances", args.keys);
    let hour = Duration::from_secs(3600);
    let (ha, hb) = (
        hub(&a, "k", args.keys * 2, hour, None),
        hub(&b, "k", args.keys * 2, hour, None),
    );
    let keys: Vec<String> = (0..args.keys).map(|i| format!("key-{i}")).collect();

    // 1. Memory per idle key, beside a plain SET: keys published once by
    // a hub of their own, then left idle until no instance subscribes them.
    let before = target.used_memory().await;
    let idle_keys: Vec<String> = (0..args.keys).map(|i| format!("idle-{i}")).collect();
    {
        let writer = hub(&a, "m", args.keys * 2, Duration::from_millis(100), None);
        for chunk in idle_keys.chunks(200) {
            futures::future::join_all(chunk.iter().map(|k| writer.publish(k, 1))).await;
        }
        while writer.live_keys() > 0 || !writer.hub().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let created = target.used_memory().await;
    let raw_keys: Vec<String> = idle_keys
        .iter()
        .map(|k| format!("{prefix}{{x:{k}}}"))
        .collect();
    for m in &target.masters {
        let client = Client::open(m.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut pipe = redis::pipe();
        for k in &raw_keys {
            if target.owner(k) == m {
                pipe.cmd("SET").arg(k).arg(1).ignore();
            }
        }
        let _: () = pipe.query_async(&mut conn).await.unwrap();
    }
    let set = target.used_memory().await;
    let n = args.keys as f64;
    let per_key = (created.saturating_sub(before)) as f64 / n;
    let per_set = (set.saturating_sub(created)) as f64 / n;
    println!(
        "\nRedis memory per idle key (used_memory delta / {} keys, names of the same length)",
        args.keys
    );
    println!("  plain SET of the same value             {per_set:>8.0} B");
    println!(
        "  a keyed channel, history 1              {per_key:>8.0} B  ({:.2}x)",
        per_key / per_set
    );
    // The keys of the measurements that follow, live on A once published.
    for chunk in keys.chunks(200) {
        futures::future::join_all(chunk.iter().map(|k| ha.publish(k, 1))).await;
    }

    // 2. Loading, beside subscribing and reading raw.
    let floor = raw_load(&target, &ha, &keys).await;
    // On A the keys are live already (A published them); on B not yet.
    let held_a = ha
        .load(keys.iter().map(String::as_str))
        .await
        .expect("load on A");
    let start = Instant::now();
    let held_b = hb
        .load(keys.iter().map(String::as_str))
        .await
        .expect("load on B");
    let load_b = start.elapsed();
    println!(
        "\nloading {} keys on an instance (subscribe, then read)",
        args.keys
    );
    println!(
        "  raw: SUBSCRIBE all + pipelined HGETALL  {:>8.1} ms",
        ms(floor)
    );
    println!(
        "  KeyedChannels::load on B                {:>8.1} ms  ({:.2}x)",
        ms(load_b),
        ms(load_b) / ms(floor)
    );

    // 3. Latency, A to B, beside the floor, in turn.
    let (floor, cross) = latency(&target, &prefix, &ha, &hb, &held_b, &keys, args.rounds).await;
    println!(
        "\npublish on A -> waiter on B, {} rounds, a random key of {} (microseconds)      p50      p99    p99.9      max",
        args.rounds, args.keys
    );
    report("raw PUBLISH -> SUBSCRIBE (the floor)", &floor);
    report("KeyedChannels A -> B", &cross);
    println!(
        "  p50 / floor p50: {:.2}x, p99 / floor p99: {:.2}x",
        pct(&cross, 50.0) / pct(&floor, 50.0),
        pct(&cross, 99.0) / pct(&floor, 99.0)
    );

    // 4. Catch-up after every subscription connection is killed.
    let took = catch_up(&target, &ha, &held_b, &keys).await;
    println!("\ncatch-up: subscriptions killed, then 1000 keys published on A");
    println!(
        "  until B holds all 1000                  {:>8.1} ms ({} keys live on B)",
        ms(took),
        keys.len()
    );
    drop(held_a);
    drop(held_b);

    // 5. Churn, in passes: memory that a first pass leaves in the allocator's
    // hands is reused by the second, memory that leaks is not.
    let idle = Duration::from_millis(500);
    let ttl = Some(Duration::from_secs(3));
    let (ca, cb) = (
        hub(&a, "churn", 1_000_000, idle, ttl),
        hub(&b, "churn", 1_000_000, idle, ttl),
    );
    for pass in 0..args.churn_passes {
        churn(&target, &ca, &cb, args.churn, pass).await;
    }

    cleanup(&target, &prefix).await;
}

/// The floor of loading: `SUBSCRIBE` (or per master `SSUBSCRIBE`) to every
/// key's channel on a fresh connection, then a pipelined `HGETALL` of
/// every key (on a cluster, per master, in parallel).
async fn raw_load(target: &Target, hub: &KeyedChannels<u64>, keys: &[String]) -> Duration {
    let names: Vec<String> = keys.iter().map(|k| hub.redis_key(k)).collect();
    let mut by_master: HashMap<String, Vec<String>> = HashMap::new();
    for n in &names {
        by_master
            .entry(target.owner(n).to_owned())
            .or_default()
            .push(n.clone());
    }
    let mut conns = Vec::new();
    for m in by_master.keys() {
        let client = Client::open(format!("{m}?protocol=resp3")).unwrap();
        let (tx, _rx) = mpsc::unbounded_channel::<PushInfo>();
        let config = AsyncConnectionConfig::new().set_push_sender(tx);
        let sub = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap();
        let cmd = Client::open(m.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        conns.push((m.clone(), sub, cmd, _rx));
    }
    let start = Instant::now();
    let command = if target.seeds.is_some() {
        "SSUBSCRIBE"
    } else {
        "SUBSCRIBE"
    };
    let work = conns.iter_mut().map(|(m, sub, cmd, _)| {
        let names = &by_master[m];
        async move {
            for chunk in names.chunks(1000) {
                let mut pipe = redis::pipe();
                for n in chunk {
                    pipe.cmd(command).arg(n);
                }
                let _: Vec<Value> = pipe.ignore_errors().query_async(sub).await.unwrap();
            }
            let mut pipe = redis::pipe();
            for n in names {
                pipe.cmd("HGETALL").arg(n);
            }
            let _: Vec<Value> = pipe.query_async(cmd).await.unwrap();
        }
    });
    futures::future::join_all(work).await;
    start.elapsed()
}

/// A tiny random generator (xorshift), seeded by the clock.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

async fn latency(
    target: &Target,
    prefix: &str,
    ha: &KeyedChannels<u64>,
    hb: &KeyedChannels<u64>,
    held_b: &[Broadcaster<u64>],
    keys: &[String],
    rounds: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    // The floor's channel carries the hash tag of the first key, so that on
    // a cluster it lives on that key's master, as the key's updates do.
    let channel = format!("{prefix}raw-floor:{{{}}}", keys[0]);
    let owner = target.owner(&channel).to_owned();
    let mut publisher: MultiplexedConnection = Client::open(owner.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let (tx, mut pushes) = mpsc::unbounded_channel::<PushInfo>();
    let config = AsyncConnectionConfig::new().set_push_sender(tx);
    let mut sub = Client::open(format!("{owner}?protocol=resp3"))
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    let (publish, subscribe, message) = if target.seeds.is_some() {
        ("SPUBLISH", "SSUBSCRIBE", PushKind::SMessage)
    } else {
        ("PUBLISH", "SUBSCRIBE", PushKind::Message)
    };
    let _: Value = redis::cmd(subscribe)
        .arg(&channel)
        .query_async(&mut sub)
        .await
        .unwrap();
    let mut rng = Rng(Instant::now().elapsed().as_nanos() as u64 | 0x9e37_79b9_7f4a_7c15);
    let (mut floor, mut cross) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for i in 0..rounds {
        let start = Instant::now();
        let _: i64 = redis::cmd(publish)
            .arg(&channel)
            .arg(i)
            .query_async(&mut publisher)
            .await
            .unwrap();
        loop {
            let push = pushes.recv().await.expect("the floor's message");
            if push.kind == message {
                break;
            }
        }
        floor.push(start.elapsed());

        let k = rng.below(keys.len());
        let b = &held_b[k];
        let wait = hb
            .hub()
            .wait(keys[k].as_str(), b.current().cursor())
            .expect("live");
        let waiting = tokio::spawn(async move {
            wait.await.expect("open");
            Instant::now()
        });
        while b.waiter_count() == 0 {
            tokio::task::yield_now().await;
        }
        let start = Instant::now();
        ha.publish(&keys[k], i as u64 + 2).await.expect("publish");
        cross.push(waiting.await.unwrap() - start);
    }
    (floor, cross)
}

async fn catch_up(
    target: &Target,
    ha: &KeyedChannels<u64>,
    held_b: &[Broadcaster<u64>],
    keys: &[String],
) -> Duration {
    let start = Instant::now();
    for m in &target.masters {
        let _: i64 = query(
            m,
            redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"),
        )
        .await;
    }
    let step = (keys.len() / 1000).max(1);
    let picked: Vec<usize> = (0..keys.len()).step_by(step).take(1000).collect();
    let mut versions = Vec::new();
    for chunk in picked.chunks(200) {
        let published =
            futures::future::join_all(chunk.iter().map(|&i| ha.publish(&keys[i], 1_000_000))).await;
        versions.extend(published.into_iter().map(|p| p.expect("publish").version));
    }
    for (&i, v) in picked.iter().zip(versions) {
        while held_b[i].version() < v {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "B never caught up"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    start.elapsed()
}

async fn churn(
    target: &Target,
    ca: &KeyedChannels<u64>,
    cb: &KeyedChannels<u64>,
    n: usize,
    pass: usize,
) {
    let settle = |ca: KeyedChannels<u64>, cb: KeyedChannels<u64>| async move {
        while !ca.hub().is_empty() || !cb.hub().is_empty() || ca.live_keys() + cb.live_keys() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let pid = std::process::id();
    let (rss0, mem0, keys0) = (
        rss_of(pid).unwrap_or(0),
        target.used_memory().await,
        target.dbsize().await,
    );
    let heap0 = ALLOCATOR.allocated() as u64;
    let mut peak_heap = heap0;
    let start = Instant::now();
    let names: Vec<String> = (0..n).map(|i| format!("churn-{pass}-{i}")).collect();
    let mut peak_rss = rss0;
    for chunk in names.chunks(500) {
        futures::future::join_all(chunk.iter().map(|k| async {
            // Read on B (nothing is created), then published on A.
            let held = cb.broadcaster(k).await.expect("read");
            ca.publish(k, 7).await.expect("publish");
            drop(held);
        }))
        .await;
        peak_rss = peak_rss.max(rss_of(pid).unwrap_or(0));
        peak_heap = peak_heap.max(ALLOCATOR.allocated() as u64);
    }
    let took = start.elapsed();
    let mem_peak = target.used_memory().await;
    settle(ca.clone(), cb.clone()).await;
    // Redis forgets them once their time to live is over.
    while target.dbsize().await > keys0 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (rss1, mem1) = (rss_of(pid).unwrap_or(0), target.used_memory().await);
    let heap1 = ALLOCATOR.allocated() as u64;
    println!(
        "\nchurn {}: {n} distinct keys, each read on B and published on A ({:.0} keys/s), then idle",
        pass + 1,
        n as f64 / took.as_secs_f64()
    );
    println!(
        "  this process's heap  before {:>8.1} MiB   peak {:>8.1} MiB   after {:>8.1} MiB",
        mib(heap0),
        mib(peak_heap),
        mib(heap1)
    );
    println!(
        "  this process's RSS   before {:>8.1} MiB   peak {:>8.1} MiB   after {:>8.1} MiB",
        mib(rss0),
        mib(peak_rss),
        mib(rss1)
    );
    println!(
        "  Redis used_memory    before {:>8.1} MiB   peak {:>8.1} MiB   after {:>8.1} MiB (keys {keys0} before and after)",
        mib(mem0),
        mib(mem_peak),
        mib(mem1)
    );
}

async fn cleanup(target: &Target, prefix: &str) {
    for m in &target.masters {
        let keys: Vec<String> = query(m, redis::cmd("KEYS").arg(format!("{prefix}*"))).await;
        for k in keys {
            // One by one: on a cluster, keys of a DEL must share a slot.
            let _: i64 = query(m, redis::cmd("DEL").arg(k)).await;
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
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
