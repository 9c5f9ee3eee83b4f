//! A randomized fault soak of the backplane, on a private `redis-server`:
//! three instances in one process, publishers and long-poll waiters on
//! several channels, and random faults for the whole run (subscriptions
//! killed; restarts with and without persistence; the store restored
//! behind, by rewriting a channel's state or by loading an older RDB file;
//! `FLUSHALL`; a key of the wrong type; a value or a message that does not
//! decode; `DEBUG SLEEP` longer than the command timeout). Afterwards:
//!
//! - every waiter's versions rise strictly within an epoch (and a waiter
//!   whose polls go to random instances is never answered with older state
//!   of its cursor's epoch);
//! - every gap is marked (`Lagged`, or a new epoch);
//! - every (epoch, version) of a channel carries one value, on every
//!   instance, and no value is published at two versions of one epoch;
//! - every instance converges on what Redis holds.
//!
//! About 30 s by default; `LONGPOLL_SOAK_SECS=600` for a longer run, and
//! `LONGPOLL_SOAK_SEED=<n>` to replay the faults of a failed run (the seed
//! is printed at the start).

mod redis_common;
// The answer check the cluster tests use; their `Log` is not needed here.
#[allow(dead_code)]
#[path = "redis_cluster_common/sequence.rs"]
mod sequence;

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use longpoll::redis::{Backplane, Channel, ModifyScript};
use longpoll::{Epoch, Resync, Version, WaitError};
use parking_lot::Mutex;
use redis_common::OwnRedis;
use sequence::check;

const INSTANCES: usize = 3;
const CHANNELS: usize = 4;
const PUBLISHERS: usize = 4;
const WAITERS: usize = 2; // per instance and channel
const HISTORY: usize = 16;

/// xorshift64*: a small seeded generator, so that a run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Everything the waiters saw, and what was wrong with it.
#[derive(Default)]
struct Log {
    /// `(channel, epoch, version)` -> value.
    values: HashMap<(usize, Epoch, Version), u64>,
    /// `(channel, value)` -> where it was seen.
    places: HashMap<(usize, u64), Vec<(Epoch, Version)>>,
    observed: u64,
    violations: Vec<String>,
}

impl Log {
    fn record(&mut self, channel: usize, epoch: Epoch, version: Version, value: u64) {
        self.observed += 1;
        let seen = *self
            .values
            .entry((channel, epoch, version))
            .or_insert(value);
        if seen != value {
            self.violations.push(format!(
                "channel {channel}: ({epoch}, {version}) carried {seen} and {value}"
            ));
        }
        let places = self.places.entry((channel, value)).or_default();
        if !places.contains(&(epoch, version)) {
            if value != 0 && places.iter().any(|(e, _)| *e == epoch) {
                self.violations.push(format!(
                    "channel {channel}: value {value} published twice in epoch {epoch}: {places:?} and {version}"
                ));
            }
            places.push((epoch, version));
        }
    }
}

/// A long-poll client that stays on one instance.
async fn waiter(ch: Channel<u64>, index: usize, log: Arc<Mutex<Log>>, stop: Arc<AtomicBool>) {
    let current = ch.current();
    log.lock()
        .record(index, current.epoch(), current.version(), **current.value());
    let mut cursor = current.cursor();
    while !stop.load(Ordering::Relaxed) {
        match ch
            .broadcaster()
            .wait_timeout(cursor, Duration::from_millis(500))
            .await
        {
            Ok(changed) => {
                let mut log = log.lock();
                if let Err(v) = check(cursor, &changed) {
                    log.violations.push(format!("channel {index}: {v}"));
                }
                for u in changed.updates() {
                    log.record(index, u.epoch(), u.version(), **u.value());
                }
                cursor = changed.cursor();
            }
            Err(WaitError::TimedOut) => {}
            // A broken channel (a key of the wrong type): back off.
            Err(WaitError::Closed) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("{e}"),
        }
    }
}

/// A long-poll client behind a load balancer: each poll goes to a random
/// instance, with the cursor the last answer gave. An answer in the
/// cursor's epoch must be newer than the cursor (a lagging instance holds
/// the poll rather than answer with older state); across epochs only the
/// marking is checked, since instances learn of a new epoch one after the
/// other.
async fn roaming_waiter(
    channels: Vec<Channel<u64>>,
    index: usize,
    seed: u64,
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = Rng(seed | 1);
    let mut cursor = channels[0].current().cursor();
    while !stop.load(Ordering::Relaxed) {
        let ch = &channels[rng.below(channels.len() as u64) as usize];
        match ch
            .broadcaster()
            .wait_timeout(cursor, Duration::from_millis(300))
            .await
        {
            Ok(changed) => {
                let mut log = log.lock();
                let same = Some(changed.epoch()) == cursor.epoch();
                let bad = match changed.resync() {
                    Some(Resync::Ahead) => true,
                    Some(Resync::OtherEpoch) => same,
                    _ => !same || cursor.version() >= Some(changed.updates()[0].version()),
                };
                if bad {
                    log.violations.push(format!(
                        "channel {index}, roaming: {changed:?} after {cursor:?}"
                    ));
                }
                for u in changed.updates() {
                    log.record(index, u.epoch(), u.version(), **u.value());
                }
                cursor = changed.cursor();
            }
            Err(WaitError::TimedOut) => {}
            Err(WaitError::Closed) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("{e}"),
        }
    }
}

/// Publishes unique values at random instances and channels: a third with
/// an idempotency key, retried while Redis is away; a third through a
/// modify script, whose answer (epoch, version, value) goes to the log.
async fn publisher(
    index: usize,
    channels: Arc<Vec<Vec<Channel<u64>>>>,
    seed: u64,
    stop: Arc<AtomicBool>,
    published: Arc<AtomicU64>,
    log: Arc<Mutex<Log>>,
) {
    let mut rng = Rng(seed | 1);
    let mut seq = 0u64;
    let set = ModifyScript::new("return ARGV[1]");
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let value = ((index as u64 + 1) << 40) | seq;
        let c = rng.below(CHANNELS as u64) as usize;
        let ch = &channels[rng.below(INSTANCES as u64) as usize][c];
        let mode = rng.below(3);
        let ok = if mode == 2 {
            match ch.modify(&set).arg(value.to_string()).invoke().await {
                Ok(done) => {
                    let u = done.update();
                    log.lock().record(c, u.epoch(), u.version(), **u.value());
                    true
                }
                Err(_) => false,
            }
        } else if mode == 1 {
            let id = format!("p{index}-{seq}");
            let mut ok = false;
            for _ in 0..3 {
                match ch.publish_once(&id, value).await {
                    Ok(_) => {
                        ok = true;
                        break;
                    }
                    Err(e) if e.is_unavailable() => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(_) => break,
                }
            }
            ok
        } else {
            ch.publish(value).await.is_ok()
        };
        if ok {
            published.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(2 + rng.below(8))).await;
    }
}

async fn run_cmd<T: redis::FromRedisValue>(url: &str, cmd: &redis::Cmd) -> Option<T> {
    let client = redis::Client::open(url).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    cmd.query_async(&mut conn).await.ok()
}

/// A channel's hash (state and history) as it was at some point, to write
/// back later.
struct Saved {
    state: String,
    fields: Vec<(String, Vec<u8>)>,
}

async fn save(url: &str, state: &str) -> Option<Saved> {
    let fields: HashMap<String, Vec<u8>> = run_cmd(url, redis::cmd("HGETALL").arg(state)).await?;
    if fields.is_empty() {
        return None;
    }
    Some(Saved {
        state: state.to_owned(),
        fields: fields.into_iter().collect(),
    })
}

async fn write_back(url: &str, saved: &Saved) {
    let mut pipe = redis::pipe();
    pipe.atomic().del(&saved.state);
    for (k, v) in &saved.fields {
        pipe.hset(&saved.state, k, v);
    }
    let client = redis::Client::open(url).unwrap();
    if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
        let _: Result<(), _> = pipe.query_async(&mut conn).await;
    }
}

/// An instance that joins late, again and again: what it loads from
/// Redis (state and history) goes to the log.
async fn late_joiner(url: String, prefix: String, log: Arc<Mutex<Log>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Ok(bp) = Backplane::builder(&url)
            .prefix(&prefix)
            .command_timeout(Duration::from_millis(300))
            .connect_timeout(Duration::from_millis(300))
            .connect()
            .await
        else {
            continue;
        };
        for c in 0..CHANNELS {
            let opened = bp
                .channel_builder(&format!("c{c}"))
                .history(HISTORY)
                .open(0u64)
                .await;
            if let Ok(ch) = opened {
                let mut log = log.lock();
                for u in ch.broadcaster().history() {
                    log.record(c, u.epoch(), u.version(), **u.value());
                }
            }
        }
    }
}

async fn all_connected(instances: &[Backplane], within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline && !instances.iter().all(Backplane::is_connected) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn say(line: &str) {
    // Straight to stderr: the harness captures the output of passing tests.
    let _ = writeln!(std::io::stderr(), "redis_soak: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_faults_lose_repeat_and_strand_nothing() {
    let Some(mut redis) =
        OwnRedis::start_with("random_faults_lose_repeat_and_strand_nothing", true)
    else {
        return;
    };
    let seed = std::env::var("LONGPOLL_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Epoch::random().get());
    let secs: u64 = std::env::var("LONGPOLL_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    say(&format!(
        "seed {seed} (LONGPOLL_SOAK_SEED={seed} replays it), {secs} s"
    ));
    let mut rng = Rng(seed | 1);
    let url = redis.url();
    let prefix = redis_common::unique_prefix("soak");

    let mut instances = Vec::new();
    let mut channels = Vec::new();
    for _ in 0..INSTANCES {
        let bp = Backplane::builder(&url)
            .prefix(&prefix)
            .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(300))
            .command_timeout(Duration::from_millis(300))
            .connect_timeout(Duration::from_millis(300))
            .ping_interval(Duration::from_secs(1))
            .check_interval(Duration::from_millis(500))
            .connect()
            .await
            .unwrap();
        let mut mine = Vec::new();
        for c in 0..CHANNELS {
            let ch: Channel<u64> = bp
                .channel_builder(&format!("c{c}"))
                .history(HISTORY)
                .open(0)
                .await
                .unwrap();
            mine.push(ch);
        }
        instances.push(bp);
        channels.push(mine);
    }
    let channels = Arc::new(channels);
    let keys: Vec<String> = channels[0].iter().map(|c| c.key().to_owned()).collect();

    let log = Arc::new(Mutex::new(Log::default()));
    let stop_waiters = Arc::new(AtomicBool::new(false));
    let stop_publishers = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let mut waiters = Vec::new();
    for mine in channels.iter() {
        for (c, ch) in mine.iter().enumerate() {
            for _ in 0..WAITERS {
                waiters.push(tokio::spawn(waiter(
                    ch.clone(),
                    c,
                    log.clone(),
                    stop_waiters.clone(),
                )));
            }
        }
    }
    for c in 0..CHANNELS {
        let mine: Vec<Channel<u64>> = channels.iter().map(|m| m[c].clone()).collect();
        waiters.push(tokio::spawn(roaming_waiter(
            mine,
            c,
            rng.next(),
            log.clone(),
            stop_waiters.clone(),
        )));
    }
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            tokio::spawn(publisher(
                p,
                channels.clone(),
                rng.next(),
                stop_publishers.clone(),
                published.clone(),
                log.clone(),
            ))
        })
        .collect();

    let joiner = tokio::spawn(late_joiner(
        url.clone(),
        prefix.clone(),
        log.clone(),
        stop_publishers.clone(),
    ));

    let mut faults: HashMap<&str, u32> = HashMap::new();
    let mut saved: Option<Saved> = None;
    let mut rdb: Option<Vec<u8>> = None;
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100 + rng.below(300))).await;
        // Remember a state to go back to, from time to time.
        if rng.below(3) == 0 {
            saved = save(&url, &keys[rng.below(CHANNELS as u64) as usize]).await;
        }
        if rng.below(4) == 0 {
            rdb = redis.snapshot().await.or(rdb);
        }
        let fault = match rng.below(11) {
            0 | 1 => {
                let _: Option<i64> = run_cmd(
                    &url,
                    redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"),
                )
                .await;
                "subscriptions killed"
            }
            2 => {
                redis.restart();
                "restart with persistence"
            }
            3 => {
                redis.restart_empty();
                "restart without persistence"
            }
            4 => {
                // Behind what the instances saw, once they all saw it.
                all_connected(&instances, Duration::from_secs(5)).await;
                match &saved {
                    Some(s) => write_back(&url, s).await,
                    None => continue,
                }
                "a channel's state rewritten behind"
            }
            5 => {
                all_connected(&instances, Duration::from_secs(5)).await;
                match &rdb {
                    Some(r) => redis.restore(r),
                    None => continue,
                }
                "an older RDB file loaded"
            }
            6 => {
                let _: Option<()> = run_cmd(&url, &redis::cmd("FLUSHALL")).await;
                "FLUSHALL"
            }
            7 => {
                let key = &keys[rng.below(CHANNELS as u64) as usize];
                let _: Option<i64> = run_cmd(&url, redis::cmd("DEL").arg(key)).await;
                let _: Option<()> = run_cmd(&url, redis::cmd("SET").arg(key).arg("x")).await;
                tokio::time::sleep(Duration::from_millis(50 + rng.below(200))).await;
                let _: Option<i64> = run_cmd(&url, redis::cmd("DEL").arg(key)).await;
                "a key of the wrong type"
            }
            8 => {
                // A message of another program on a channel's Pub/Sub name
                // (the name of its hash).
                let name = &keys[rng.below(CHANNELS as u64) as usize];
                let garbage = [
                    "garbage",
                    "00000000000000ff 1",
                    "zz 1 x",
                    "00000000000000ff 99999999999 7",
                ];
                let payload = garbage[rng.below(garbage.len() as u64) as usize];
                let _: Option<i64> =
                    run_cmd(&url, redis::cmd("PUBLISH").arg(name).arg(payload)).await;
                "a garbage message"
            }
            9 => {
                // A value another program wrote, that does not decode: one
                // atomic step, or the old value would show at the new version.
                let key = &keys[rng.below(CHANNELS as u64) as usize];
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .hincr(key, "version", 1)
                    .ignore()
                    .hset(key, "value", "not a number")
                    .ignore();
                let client = redis::Client::open(url.as_str()).unwrap();
                if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                    let _: Result<(), _> = pipe.query_async(&mut conn).await;
                }
                "a value that does not decode"
            }
            _ => {
                redis.sleep(0.4 + rng.below(5) as f64 / 10.0).await;
                "DEBUG SLEEP beyond the command timeout"
            }
        };
        *faults.entry(fault).or_default() += 1;
    }

    // Quiet: publishers stop, then every instance must match Redis.
    stop_publishers.store(true, Ordering::Relaxed);
    for p in publishers {
        p.await.unwrap();
    }
    joiner.await.unwrap();
    // A value that does not decode stays in Redis until a good one follows,
    // and the last fault may have written one after the publishers' last
    // publish to that channel: one more publish to every channel (a value
    // of its own, retried while Redis is away) heals it, as it would a
    // server's. Every instance must then converge on it.
    for (c, ch) in channels[0].iter().enumerate() {
        let value = ((PUBLISHERS as u64 + 1) << 40) | c as u64;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match ch.publish(value).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "seed {seed}: the last publish to c{c}: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        published.fetch_add(1, Ordering::Relaxed);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    let converged = loop {
        let mut ok = instances.iter().all(Backplane::is_connected);
        for (c, key) in keys.iter().enumerate() {
            let stored: Option<Vec<Option<String>>> = run_cmd(
                &url,
                redis::cmd("HMGET")
                    .arg(key)
                    .arg("epoch")
                    .arg("version")
                    .arg("value"),
            )
            .await;
            for (i, mine) in channels.iter().enumerate() {
                let cur = mine[c].current();
                let held = vec![
                    Some(cur.epoch().to_string()),
                    Some(cur.version().to_string()),
                    Some(cur.value().to_string()),
                ];
                if stored.as_ref() != Some(&held) || mine[c].failure().is_some() {
                    ok = false;
                    last = format!(
                        "instance {i} channel {c}: holds {held:?}, Redis {stored:?}, failure {:?}",
                        mine[c].failure()
                    );
                }
            }
        }
        if ok {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop_waiters.store(true, Ordering::Relaxed);
    for w in waiters {
        w.await.unwrap();
    }

    let log = log.lock();
    let stats: Vec<_> = instances.iter().map(Backplane::stats).collect();
    say(&format!(
        "{} publishes, {} observations, faults {faults:?}",
        published.load(Ordering::Relaxed),
        log.observed
    ));
    say(&format!("instance stats {stats:?}"));
    assert!(
        converged,
        "seed {seed}: instances do not converge on Redis: {last}"
    );
    assert!(
        log.violations.is_empty(),
        "seed {seed}: {} violations, first: {:#?}",
        log.violations.len(),
        &log.violations[..log.violations.len().min(10)]
    );
    assert!(faults.values().sum::<u32>() >= 1, "faults were injected");
    assert!(log.observed > 100, "the waiters saw changes");
}
