//! A bounded soak of the shopping cart: churning clients for a while, then
//! checks that the server is back where it started.
//!
//! ```sh
//! cargo build --release --example shopping_cart
//! cargo run --release -p longpoll-tools --bin soak                  # 2 minutes
//! cargo run --release -p longpoll-tools --bin soak -- --duration 30 --fanout-rounds 2  # CI
//! cargo run --release -p longpoll-tools --bin soak -- --fanout-only  # the slow-client ratio alone
//! # or against a server already running on the loopback address:
//! cargo run --release -p longpoll-tools --bin soak -- --url http://127.0.0.1:9999 --pid 1234
//! ```
//!
//! Without `--url` it starts the `shopping_cart` example of its own target
//! directory and profile (`target/release/examples/shopping_cart` beside
//! `target/release/soak`) on `127.0.0.1:0` with short timeouts. Then:
//!
//! 1. **warm-up** (a quarter of `--duration`, but at least half of a short
//!    one): the churn below, so that the server's allocator has grown to the
//!    load's size;
//! 2. the server's RSS and `/stats` are read: the **start**;
//! 3. **churn** for the rest of `--duration`, all at once: pollers following
//!    the version (keep-alive, reconnecting now and then), clients dropping
//!    mid-poll, slow readers (one trickling, one never reading until it is
//!    cut off), deliberate bad requests (each with the answer it must get),
//!    half-sent headers (must be closed by the header timeout), cart changes
//!    (`200`, or `409` when sold out);
//! 4. **end**: `/stats` must show 0 waiters within 10 s, and the RSS must
//!    be within `--rss-tolerance` percent (10) of the start;
//! 5. **fan-out with a slow client**: `--fanout-polls` (1000) held polls
//!    answered by one change, timed from the change to the last answer,
//!    alternately without and with a client that has stopped reading its
//!    answers (its socket buffers full), `--fanout-rounds` times each; the
//!    ratio of the medians is printed.
//!
//! Exits non-zero if any answer was not the one expected, the waiters do
//! not drain, or the RSS moved more than allowed. Only loopback addresses
//! are accepted.

#[path = "../../../tests/raw_http/mod.rs"]
mod raw_http;

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use raw_http::{get, post_cart, Conn, Ending};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
#[command(about = "Churns the shopping cart, then checks memory and waiters are back")]
struct Args {
    /// Warm-up and churn together, e.g. `30`, `30s` or `2m`.
    #[arg(long, default_value = "2m", value_parser = duration)]
    duration: Duration,
    /// A running server (loopback only) instead of starting one.
    #[arg(long, requires = "pid")]
    url: Option<String>,
    /// The running server's process id, for its RSS.
    #[arg(long)]
    pid: Option<u32>,
    /// The server binary to start (default: `shopping_cart` next to this one).
    #[arg(long)]
    server: Option<std::path::PathBuf>,
    /// The server's `--header-timeout` in seconds: half-sent requests must
    /// be closed within it (plus 5 s).
    #[arg(long, default_value_t = 1.0)]
    header_timeout: f64,
    /// The server's `--inventory`: small, so that `409 sold out` happens.
    #[arg(long, default_value_t = 3)]
    inventory: u32,
    /// Pollers following the version.
    #[arg(long, default_value_t = 100)]
    pollers: usize,
    /// Clients that connect, start a poll and drop it.
    #[arg(long, default_value_t = 20)]
    droppers: usize,
    /// Clients that send deliberately bad requests.
    #[arg(long, default_value_t = 8)]
    invalid: usize,
    /// Clients changing their cart.
    #[arg(long, default_value_t = 4)]
    carts: usize,
    /// Allowed RSS change between start and end, in percent.
    #[arg(long, default_value_t = 10.0)]
    rss_tolerance: f64,
    /// Held polls in the fan-out measurement (0: skip it).
    #[arg(long, default_value_t = 1000)]
    fanout_polls: usize,
    /// Only the fan-out measurement: no churn, no memory check.
    #[arg(long)]
    fanout_only: bool,
    /// Fan-out rounds without, and as many with, the slow client.
    #[arg(long, default_value_t = 10)]
    fanout_rounds: usize,
}

/// `30`, `30s`, `2m`, `1.5m`.
fn duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = match s.strip_suffix('m') {
        Some(n) => (n, 60.0),
        None => (s.strip_suffix('s').unwrap_or(s), 1.0),
    };
    number
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n > 0.0 && *n < 86_400.0)
        .map(|n| Duration::from_secs_f64(n * unit))
        .ok_or_else(|| format!("`{s}` is not a duration such as 30, 30s or 2m"))
}

type Error = Box<dyn std::error::Error + Send + Sync>;

// -------------------------------------------------------------- the server

/// The server under test: one we started, or one we were pointed at.
struct Target {
    addr: SocketAddr,
    pid: Option<u32>,
    child: Option<Child>,
}

impl Target {
    fn start(args: &Args) -> Result<Target, Error> {
        if let Some(url) = &args.url {
            let hostport = url
                .strip_prefix("http://")
                .ok_or("--url must start with http://")?
                .trim_end_matches('/');
            let addr = hostport
                .to_socket_addrs()?
                .next()
                .ok_or("--url names no address")?;
            if !addr.ip().is_loopback() {
                return Err(format!("{addr} is not a loopback address").into());
            }
            return Ok(Target {
                addr,
                pid: args.pid,
                child: None,
            });
        }
        let binary = match &args.server {
            Some(path) => path.clone(),
            None => std::env::current_exe()?
                .with_file_name("examples")
                .join("shopping_cart"),
        };
        if !binary.exists() {
            return Err(format!(
                "{} is missing: run `cargo build --release --example shopping_cart` first",
                binary.display()
            )
            .into());
        }
        let mut child = Command::new(&binary)
            .args(["--addr", "127.0.0.1:0"])
            .args(["--inventory", &args.inventory.to_string()])
            .args(["--poll-timeout", "2"])
            .args(["--header-timeout", &args.header_timeout.to_string()])
            .args(["--idle-timeout", "5"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut first = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut first,
        )?;
        let addr = first
            .trim_end()
            .strip_prefix("listening on http://")
            .ok_or_else(|| format!("the server's first line is {first:?}"))?
            .parse()?;
        Ok(Target {
            addr,
            pid: Some(child.id()),
            child: Some(child),
        })
    }

    fn rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    }

    /// SIGTERM, and how long the server took to exit.
    fn stop(&mut self) -> Option<Duration> {
        let child = self.child.as_mut()?;
        let start = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = child.try_wait() {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct Stats {
    waiters: u64,
    version: u64,
    epoch: String,
}

async fn stats(addr: SocketAddr) -> Result<Stats, Error> {
    let mut c = Conn::connect(addr).await?;
    let r = c.get("/stats").await?;
    if r.status != 200 {
        return Err(format!("/stats answered {}", r.status).into());
    }
    Ok(Stats {
        waiters: r.json_u64("waiters").ok_or("no waiters")?,
        version: r.json_u64("version").ok_or("no version")?,
        epoch: r.json_str("epoch").ok_or("no epoch")?,
    })
}

// ----------------------------------------------------------------- tallies

/// What the clients saw, by kind of outcome.
#[derive(Default)]
struct Tally {
    counts: Mutex<BTreeMap<&'static str, u64>>,
    errors: AtomicU64,
    first_errors: Mutex<Vec<String>>,
}

impl Tally {
    fn count(&self, what: &'static str) {
        *self.counts.lock().unwrap().entry(what).or_default() += 1;
    }

    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_errors.lock().unwrap();
        if first.len() < 10 {
            first.push(what);
        }
    }
}

/// What every client task shares.
struct Ctx {
    addr: SocketAddr,
    tally: Tally,
    stop: AtomicBool,
    header_timeout: Duration,
}

impl Ctx {
    fn over(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// A small xorshift generator: the mix of clients need not be
/// cryptographic, only varied.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Answers must arrive within this, whatever the request.
const ANSWER_GUARD: Duration = Duration::from_secs(10);

// ----------------------------------------------------------------- clients

/// Polls from where it stands, a few times per connection, checking that
/// versions only go up.
async fn poller(ctx: Arc<Ctx>, id: u64) {
    let mut rng = Rng::new(id);
    let mut cursor: Option<(u64, String)> = None;
    while !ctx.over() {
        let mut conn = match Conn::connect(ctx.addr).await {
            Ok(c) => c,
            Err(e) => {
                ctx.tally.error(format!("poller connect: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        for _ in 0..1 + rng.below(5) {
            let timeout = ["0.2", "0.5", "1", "1.5"][rng.below(4) as usize];
            let path = match &cursor {
                Some((v, e)) => format!("/status?since={v}&epoch={e}&timeout={timeout}"),
                // The original demo's client: no cursor, 200 even on timeout.
                None => format!("/status?timeout={timeout}&session=soak{id}"),
            };
            match tokio::time::timeout(ANSWER_GUARD, conn.get(&path)).await {
                Ok(Ok(r)) if r.status == 200 => {
                    let (Some(v), Some(e)) = (r.json_u64("version"), r.json_str("epoch")) else {
                        ctx.tally.error(format!("200 without a version: {r:?}"));
                        break;
                    };
                    if let Some((before, _)) = &cursor {
                        if v <= *before {
                            ctx.tally
                                .error(format!("asked since {before}, answered {v}"));
                        }
                    }
                    ctx.tally.count("poll 200");
                    cursor = Some((v, e));
                }
                Ok(Ok(r)) if r.status == 204 && cursor.is_some() => ctx.tally.count("poll 204"),
                Ok(Ok(r)) => ctx.tally.error(format!("poll {path}: status {}", r.status)),
                Ok(Err(e)) => {
                    ctx.tally.error(format!("poll {path}: {e}"));
                    break;
                }
                Err(_) => {
                    ctx.tally.error(format!("poll {path}: no answer in 10 s"));
                    break;
                }
            }
            if ctx.over() {
                break;
            }
        }
    }
}

/// Starts a poll and goes away before it is answered.
async fn dropper(ctx: Arc<Ctx>, id: u64) {
    let mut rng = Rng::new(id);
    while !ctx.over() {
        match Conn::connect(ctx.addr).await {
            Ok(mut c) => {
                let _ = c.send(get("/status?timeout=30").as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
                ctx.tally.count("poll dropped");
            }
            Err(e) => ctx.tally.error(format!("dropper connect: {e}")),
        }
    }
}

/// Asks for 100 pages at once and reads them 1 KiB per 50 ms for 2 s.
async fn trickle_reader(ctx: Arc<Ctx>) {
    let request =
        "GET / HTTP/1.1\r\nhost: 127.0.0.1\r\ncookie: session=trickle\r\n\r\n".repeat(100);
    while !ctx.over() {
        let Ok(mut stream) = TcpStream::connect(ctx.addr).await else {
            ctx.tally.error("trickle reader connect".into());
            continue;
        };
        let _ = stream.write_all(request.as_bytes()).await;
        let mut buf = [0u8; 1024];
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if !matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
                ctx.tally
                    .error("trickle reader: the server closed a live reader".into());
                break;
            }
        }
        ctx.tally.count("slow reader (trickle)");
    }
}

/// Asks for pages until the server stops reading, then never reads: the
/// server's idle timeout must cut it off.
async fn never_reader(ctx: Arc<Ctx>) {
    let chunk = "GET / HTTP/1.1\r\nhost: 127.0.0.1\r\ncookie: session=never\r\n\r\n".repeat(1000);
    while !ctx.over() {
        let Ok(mut stream) = TcpStream::connect(ctx.addr).await else {
            ctx.tally.error("never reader connect".into());
            continue;
        };
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(1), stream.write_all(chunk.as_bytes()))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break true,
                Err(_) => break false, // stalled: sits there
            }
        };
        if !closed {
            // Wait for the server to give up on it (idle timeout 5 s).
            let mut conn = Conn::from_stream(stream);
            if conn.ending(Duration::from_secs(15)).await != Ending::Closed {
                ctx.tally
                    .error("a client that never reads was not cut off in 15 s".into());
            }
        }
        ctx.tally.count("slow reader (never), cut off");
    }
}

/// A bad request and what it must get: a status, or the connection closed.
struct Bad {
    name: &'static str,
    request: Vec<u8>,
    expect: Option<u16>,
}

fn bad_requests() -> Vec<Bad> {
    let form = "content-type: application/x-www-form-urlencoded";
    let post = |headers: &str, body: &str| {
        format!(
            "POST /cart HTTP/1.1\r\nhost: 127.0.0.1\r\n{headers}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let bad = |name, request: Vec<u8>, expect| Bad {
        name,
        request,
        expect,
    };
    vec![
        bad("since=abc", get("/status?since=abc").into_bytes(), Some(400)),
        bad("since=-1", get("/status?since=-1").into_bytes(), Some(400)),
        bad("timeout=301", get("/status?timeout=301").into_bytes(), Some(400)),
        bad("timeout=1e3", get("/status?timeout=1e3").into_bytes(), Some(400)),
        bad("since twice", get("/status?since=1&since=2").into_bytes(), Some(400)),
        bad("epoch=zz", get("/status?since=1&epoch=zz").into_bytes(), Some(400)),
        bad("bad escape", get("/status?since=%G1").into_bytes(), Some(400)),
        bad(
            "If-None-Match garbage",
            b"GET /status HTTP/1.1\r\nhost: 127.0.0.1\r\nif-none-match: \"nope\"\r\n\r\n".to_vec(),
            Some(400),
        ),
        bad("cart json", post("content-type: application/json", "{}"), Some(415)),
        bad("cart action", post(form, "session=s&action=steal"), Some(400)),
        bad("cart no session", post(form, "action=add"), Some(400)),
        bad("cart bad escape", post(form, "session=%ZZ&action=add"), Some(400)),
        bad(
            "cart 1 GB",
            format!("POST /cart HTTP/1.1\r\nhost: 127.0.0.1\r\n{form}\r\ncontent-length: 1000000000\r\n\r\n")
                .into_bytes(),
            Some(413),
        ),
        bad("PUT /cart", b"PUT /cart HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 0\r\n\r\n".to_vec(), Some(405)),
        bad("DELETE /status", b"DELETE /status HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".to_vec(), Some(405)),
        bad("unknown path", get("/nope").into_bytes(), Some(404)),
        bad("not HTTP", b"HELLO\r\n\r\n".to_vec(), Some(400)),
        bad(
            "half-sent headers",
            b"GET /status HTTP/1.1\r\nhost: 127.0.0.1\r\nx-more: ".to_vec(),
            None,
        ),
    ]
}

/// Sends bad requests, each on a new connection, and checks their answers.
async fn invalid_client(ctx: Arc<Ctx>, id: u64) {
    let bad = bad_requests();
    let mut rng = Rng::new(id);
    while !ctx.over() {
        let b = &bad[rng.below(bad.len() as u64) as usize];
        let mut conn = match Conn::connect(ctx.addr).await {
            Ok(c) => c,
            Err(e) => {
                ctx.tally.error(format!("invalid client connect: {e}"));
                continue;
            }
        };
        if let Err(e) = conn.send(&b.request).await {
            ctx.tally.error(format!("{}: send: {e}", b.name));
            continue;
        }
        match b.expect {
            Some(status) => match tokio::time::timeout(ANSWER_GUARD, conn.response()).await {
                Ok(Ok(r)) if r.status == status => {
                    ctx.tally.count("bad request, answered as expected")
                }
                Ok(Ok(r)) => ctx.tally.error(format!(
                    "{}: status {} instead of {status}",
                    b.name, r.status
                )),
                Ok(Err(e)) => ctx.tally.error(format!("{}: {e}", b.name)),
                Err(_) => ctx.tally.error(format!("{}: no answer in 10 s", b.name)),
            },
            None => {
                let limit = ctx.header_timeout + Duration::from_secs(5);
                match conn.ending(limit).await {
                    Ending::Closed => ctx.tally.count("half-sent request, closed"),
                    Ending::StillOpen => ctx
                        .tally
                        .error(format!("{}: still open after {limit:?}", b.name)),
                }
            }
        }
    }
}

/// Adds and removes its one unit: `200`, or `409` on an add when sold out.
async fn cart_client(ctx: Arc<Ctx>, id: u64, inventory: u64) {
    let session = format!("soak-cart-{id}");
    let mut add = true;
    while !ctx.over() {
        let mut conn = match Conn::connect(ctx.addr).await {
            Ok(c) => c,
            Err(e) => {
                ctx.tally.error(format!("cart connect: {e}"));
                continue;
            }
        };
        for _ in 0..10 {
            let action = if add { "add" } else { "remove" };
            match tokio::time::timeout(
                ANSWER_GUARD,
                conn.request(post_cart(&session, action).as_bytes()),
            )
            .await
            {
                Ok(Ok(r)) => {
                    let count = r.json_u64("inventorycount");
                    if count.is_none_or(|c| c > inventory) {
                        ctx.tally
                            .error(format!("cart count {count:?} out of [0, {inventory}]"));
                    }
                    match (r.status, add) {
                        (200, _) => {
                            ctx.tally.count("cart change");
                            add = !add;
                        }
                        (409, true) => ctx.tally.count("cart sold out (409)"),
                        (s, _) => ctx.tally.error(format!("cart {action}: status {s}")),
                    }
                }
                Ok(Err(e)) => {
                    ctx.tally.error(format!("cart {action}: {e}"));
                    break;
                }
                Err(_) => {
                    ctx.tally.error(format!("cart {action}: no answer in 10 s"));
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Leave the stock as found.
    if !add {
        if let Ok(mut c) = Conn::connect(ctx.addr).await {
            let _ = c.request(post_cart(&session, "remove").as_bytes()).await;
        }
    }
}

/// Runs every kind of client for `length`, then waits for them to finish.
async fn churn(args: &Args, addr: SocketAddr, length: Duration) -> Arc<Ctx> {
    let ctx = Arc::new(Ctx {
        addr,
        tally: Tally::default(),
        stop: AtomicBool::new(false),
        header_timeout: Duration::from_secs_f64(args.header_timeout),
    });
    let mut tasks = tokio::task::JoinSet::new();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    for i in 0..args.pollers as u64 {
        tasks.spawn(poller(Arc::clone(&ctx), seed ^ i));
    }
    for i in 0..args.droppers as u64 {
        tasks.spawn(dropper(Arc::clone(&ctx), seed ^ (1000 + i)));
    }
    for i in 0..args.invalid as u64 {
        tasks.spawn(invalid_client(Arc::clone(&ctx), seed ^ (2000 + i)));
    }
    for i in 0..args.carts as u64 {
        tasks.spawn(cart_client(Arc::clone(&ctx), i, u64::from(args.inventory)));
    }
    tasks.spawn(trickle_reader(Arc::clone(&ctx)));
    tasks.spawn(never_reader(Arc::clone(&ctx)));
    tokio::time::sleep(length).await;
    ctx.stop.store(true, Ordering::Relaxed);
    // Every client ends within its own guards (at most 20 s).
    if tokio::time::timeout(Duration::from_secs(30), async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        ctx.tally
            .error("clients still running 30 s after the end".into());
        tasks.abort_all();
    }
    ctx
}

// ----------------------------------------------------------------- fan-out

/// Holds `n` polls (each on a new connection), posts one change, and
/// returns the time from the change to the last answer.
async fn fanout_round(addr: SocketAddr, n: usize) -> Result<Duration, Error> {
    let s = stats(addr).await?;
    let baseline = s.waiters;
    let poll = get(&format!(
        "/status?since={}&epoch={}&timeout=60",
        s.version, s.epoch
    ));
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        // The request right away: the server drops connections that send
        // nothing within its header timeout.
        let mut c = Conn::connect(addr).await?;
        c.send(poll.as_bytes()).await?;
        conns.push(c);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats(addr).await?.waiters < baseline + n as u64 {
        if Instant::now() > deadline {
            return Err("the polls were never all held".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut control = Conn::connect(addr).await?;
    let start = Instant::now();
    let mut version = s.version;
    for action in ["add", "remove"] {
        let r = control
            .request(post_cart("soak-fanout", action).as_bytes())
            .await?;
        version = r
            .json_u64("version")
            .ok_or("cart answer without a version")?;
        if version != s.version {
            break;
        }
    }
    if version == s.version {
        return Err("no cart change moved the version".into());
    }
    let answers = futures::future::join_all(conns.iter_mut().map(|c| c.response())).await;
    let elapsed = start.elapsed();
    for r in answers {
        let r = r?;
        if r.status != 200 || r.json_u64("version") != Some(version) {
            return Err(format!("a held poll got {} {:?}", r.status, r.json_u64("version")).into());
        }
    }
    // Put the stock back if we took a unit.
    let _ = control
        .request(post_cart("soak-fanout", "remove").as_bytes())
        .await;
    Ok(elapsed)
}

/// A write that makes no progress for this long: the server stopped reading.
const STALL: Duration = Duration::from_millis(500);

/// A client whose socket buffers are full: it asked for pages until the
/// server stopped reading, and reads nothing.
async fn stalled_client(addr: SocketAddr) -> Result<(TcpStream, usize), Error> {
    let mut stream = TcpStream::connect(addr).await?;
    let chunk = "GET / HTTP/1.1\r\nhost: 127.0.0.1\r\ncookie: session=stalled\r\n\r\n".repeat(1000);
    let mut written = 0;
    loop {
        match tokio::time::timeout(STALL, stream.write(chunk.as_bytes())).await {
            Ok(Ok(n)) => written += n,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Ok((stream, written)),
        }
        if written > 1 << 30 {
            return Err("the server read 1 GiB from a client that never reads".into());
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

// -------------------------------------------------------------------- main

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            println!("soak: FAILED");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<bool, Error> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let started = Instant::now();
    let mut target = Target::start(args)?;
    let addr = target.addr;
    println!("soak: server at http://{addr}, pid {:?}", target.pid);
    // A quarter of the run, but at least half of a short one: the server's
    // RSS takes 10 to 15 s of this churn to reach its plateau.
    let warmup = (args.duration / 4).max((args.duration / 2).min(Duration::from_secs(15)));
    let measured = args.duration - warmup;

    if args.fanout_only {
        fanout(args, &target).await?;
        target.stop();
        return Ok(true);
    }
    let ctx = churn(args, addr, warmup).await;
    let warm_errors = ctx.tally.errors.load(Ordering::Relaxed);
    settle(addr).await?;
    let rss_start = target.rss();
    let start = stats(addr).await?;
    println!(
        "soak: warm-up {warmup:?} done ({warm_errors} errors); start: RSS {}, version {}",
        rss_start.map_or("?".into(), mib),
        start.version
    );

    let mut peak = rss_start.unwrap_or(0);
    // RSS every tenth of the churn, to tell a steady climb (a leak) from a
    // plateau.
    let mut timeline = Vec::new();
    let churning = churn(args, addr, measured);
    tokio::pin!(churning);
    let mut tick = tokio::time::interval(measured / 10);
    let ctx = loop {
        tokio::select! {
            ctx = &mut churning => break ctx,
            _ = tick.tick() => {
                let rss = target.rss().unwrap_or(0);
                peak = peak.max(rss);
                timeline.push(rss);
            }
        }
    };
    let waiters_drained = settle(addr).await.is_ok();
    let end = stats(addr).await?;
    let rss_end = target.rss();

    println!(
        "soak: churn {measured:?}, {} clients at once:",
        args.pollers + args.droppers + args.invalid + args.carts + 2
    );
    for (what, n) in ctx.tally.counts.lock().unwrap().iter() {
        println!("  {n:>9}  {what}");
    }
    let errors = ctx.tally.errors.load(Ordering::Relaxed) + warm_errors;
    println!("  {errors:>9}  unexpected answers or failures");
    for e in ctx.tally.first_errors.lock().unwrap().iter() {
        println!("             e.g. {e}");
    }
    println!(
        "soak: end: waiters {} ({}), version {} -> {}",
        end.waiters,
        if waiters_drained {
            "drained"
        } else {
            "NOT drained in 10 s"
        },
        start.version,
        end.version
    );
    if timeline.iter().any(|&r| r > 0) {
        let line: Vec<String> = timeline
            .iter()
            .map(|&r| format!("{:.1}", r as f64 / f64::from(1 << 20)))
            .collect();
        println!("soak: RSS during the churn, MiB: {}", line.join(" "));
    }
    let mut ok = errors == 0 && waiters_drained;
    match (rss_start, rss_end) {
        (Some(a), Some(b)) => {
            let change = (b as f64 - a as f64) / a as f64 * 100.0;
            let within = change.abs() <= args.rss_tolerance;
            println!(
                "soak: RSS start {}, peak {}, end {}: {change:+.1}% ({} the {}% allowed)",
                mib(a),
                mib(peak),
                mib(b),
                if within { "within" } else { "OUTSIDE" },
                args.rss_tolerance
            );
            ok &= within;
        }
        _ => println!("soak: RSS not known (no --pid, or not Linux): not checked"),
    }

    if args.fanout_polls > 0 && args.fanout_rounds > 0 {
        // Measured, not judged: a figure, not a pass/fail.
        fanout(args, &target).await?;
    }
    if let Some(exit) = target.stop() {
        println!("soak: server exited {} after SIGTERM", ms(exit));
    }
    println!(
        "soak: {} in {:.0} s",
        if ok { "PASSED" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    Ok(ok)
}

/// Waits until no long poll is held (at most 10 s), then a moment more for
/// closed connections to be freed.
async fn settle(addr: SocketAddr) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if stats(addr).await?.waiters == 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("waiters did not drain".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The fan-out to `--fanout-polls` held polls, alternately without and with
/// a stalled client; prints the medians and their ratio.
async fn fanout(args: &Args, target: &Target) -> Result<(), Error> {
    let n = args.fanout_polls;
    // One round not counted: the server's first 1000 connections.
    fanout_round(target.addr, n).await?;
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let mut stalled_written = Vec::new();
    for round in 0..args.fanout_rounds {
        // Alternate the order (without-with, with-without) so that drift
        // over the run and whatever a round leaves behind weigh on both.
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for slow_client in order {
            if slow_client {
                let (slow, written) = stalled_client(target.addr).await?;
                stalled_written.push(written);
                with.push(fanout_round(target.addr, n).await?);
                drop(slow);
            } else {
                // As long as finding the stall takes, so both rounds start
                // from an idle server.
                tokio::time::sleep(STALL).await;
                without.push(fanout_round(target.addr, n).await?);
            }
        }
    }
    let (a, b) = (median(without.clone()), median(with.clone()));
    let ratio = b.as_secs_f64() / a.as_secs_f64();
    println!(
        "soak: fan-out of one change to {n} held polls, {} rounds each, from the change to the last answer:",
        args.fanout_rounds
    );
    println!(
        "  without a slow client: median {} ({})",
        ms(a),
        list(&without)
    );
    println!(
        "  with a stalled client: median {} ({})",
        ms(b),
        list(&with)
    );
    println!("  ratio with/without (medians): {ratio:.2}");
    if let (Some(lo), Some(hi)) = (stalled_written.iter().min(), stalled_written.iter().max()) {
        println!(
            "  the stalled client got {}..{} of requests into the server before it stopped reading",
            mib(*lo as u64),
            mib(*hi as u64)
        );
    }
    Ok(())
}

fn list(v: &[Duration]) -> String {
    v.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ")
}
