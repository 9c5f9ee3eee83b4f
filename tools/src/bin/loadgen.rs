//! An HTTP load generator for long polls: holds N polls against a running
//! shopping_cart (or `raw_fanout`) server, changes the cart, and measures
//! how long every held poll takes to be answered.
//!
//! ```text
//! cargo run --release --example shopping_cart -- --addr 127.0.0.1:9999 &
//! cargo run --release -p longpoll-tools --bin loadgen -- --url http://127.0.0.1:9999 --polls 10000 --pid $!
//! ```
//!
//! One round: wait until the server's `/stats` shows all N polls held, read
//! the clock, post a cart change (`add` and `remove` alternately, with a
//! session of its own), and record for every poll the time from that
//! trigger until its whole answer has been read: p50, p99 and max per round
//! and over all rounds. Two modes, each for `--rounds` rounds:
//!
//! * `immediate`: each poll is sent again as soon as its answer is read,
//!   with the new version as `since`, as browsers do. The re-polls reach the
//!   server while it is still answering the others: the realistic herd.
//! * `deferred`: re-polls wait until every poll of the round is answered, so
//!   the figures are the server's fan-out alone.
//!
//! With `--pid` it reads the server's `VmRSS` before the polls connect and
//! once they are all held, and prints the growth per held poll (start the
//! server fresh: memory it freed earlier is reused and hides growth). It
//! also reads both processes' CPU time (`/proc/PID/stat`, 10 ms ticks)
//! around each fan-out, to show whether the load generator or the server is
//! the bottleneck.
//!
//! Plain tokio TCP on one thread with hand-written HTTP/1.1 keep-alive
//! requests: the cheapest client there is, so that its own cost stays far
//! below the server's. Every connection goes to the loopback address of
//! `--url`; the open-file soft limit is raised to the hard limit at start.
//! The whole run is bounded by `--max-seconds`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify, Semaphore};

#[derive(Parser, Debug)]
#[command(about = "Holds N long polls against a shopping_cart server and times the fan-out")]
struct Args {
    /// The server's base URL; must be a loopback address.
    #[arg(long, default_value = "http://127.0.0.1:9999")]
    url: String,
    /// Long polls held at once (one connection each).
    #[arg(long, default_value_t = 10_000)]
    polls: usize,
    /// Rounds (cart changes) per mode.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Which re-poll mode(s) to run.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    mode: Mode,
    /// The server's process id, for its RSS and CPU time.
    #[arg(long)]
    pid: Option<u32>,
    /// `timeout` sent with each poll, in seconds (it must outlast a round).
    #[arg(long, default_value_t = 120)]
    poll_timeout: u32,
    /// Connections opened at once while connecting.
    #[arg(long, default_value_t = 256)]
    connect_batch: usize,
    /// Gives up after this many seconds in total.
    #[arg(long, default_value_t = 300)]
    max_seconds: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Immediate,
    Deferred,
    Both,
}

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;

// ------------------------------------------------------------------ HTTP/1.1

/// One keep-alive connection with its read buffer.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

struct Response {
    status: u16,
    body: Vec<u8>,
}

impl Conn {
    async fn connect(addr: SocketAddr) -> Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(1024),
        })
    }

    async fn fill(&mut self) -> Result<()> {
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err("server closed the connection".into());
        }
        Ok(())
    }

    /// Reads one response (`Content-Length` or chunked body).
    async fn read_response(&mut self) -> Result<Response> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if self.buf.len() > 64 * 1024 {
                return Err("response head too large".into());
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])?;
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or("malformed status line")?;
        let mut length = None;
        let mut chunked = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<usize>()?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
        let start = head_end + 4;
        if chunked {
            return self.read_chunked(status, start).await;
        }
        let length = match (length, status) {
            (Some(n), _) => n,
            (None, 204 | 304) => 0,
            (None, _) => return Err("response without a length".into()),
        };
        while self.buf.len() < start + length {
            self.fill().await?;
        }
        let body = self.buf[start..start + length].to_vec();
        self.buf.drain(..start + length);
        Ok(Response { status, body })
    }

    async fn read_chunked(&mut self, status: u16, start: usize) -> Result<Response> {
        let mut body = Vec::new();
        let mut pos = start;
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.buf[pos..], b"\r\n") {
                    break pos + i;
                }
                self.fill().await?;
            };
            let size_text = std::str::from_utf8(&self.buf[pos..line_end])?;
            let size_text = size_text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)?;
            pos = line_end + 2;
            if size == 0 {
                // Trailers (none expected), then the blank line.
                loop {
                    if let Some(i) = find(&self.buf[pos..], b"\r\n") {
                        let blank = i == 0;
                        pos += i + 2;
                        if blank {
                            break;
                        }
                    } else {
                        self.fill().await?;
                    }
                }
                self.buf.drain(..pos);
                return Ok(Response { status, body });
            }
            while self.buf.len() < pos + size + 2 {
                self.fill().await?;
            }
            body.extend_from_slice(&self.buf[pos..pos + size]);
            pos += size + 2;
        }
    }

    async fn request(&mut self, request: &[u8]) -> Result<Response> {
        self.stream.write_all(request).await?;
        self.read_response().await
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The unsigned integer after `"name":` in a flat JSON object.
fn json_u64(body: &[u8], name: &str) -> Option<u64> {
    let key = format!("\"{name}\"");
    let rest = &body[find(body, key.as_bytes())? + key.len()..];
    let rest = &rest[rest.iter().position(|&b| b == b':')? + 1..];
    let rest = &rest[rest.iter().position(|b| !b.is_ascii_whitespace())?..];
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// The string after `"name":` in a flat JSON object (no escapes).
fn json_str(body: &[u8], name: &str) -> Option<String> {
    let key = format!("\"{name}\"");
    let rest = &body[find(body, key.as_bytes())? + key.len()..];
    let open = rest.iter().position(|&b| b == b'"')? + 1;
    let len = rest[open..].iter().position(|&b| b == b'"')?;
    String::from_utf8(rest[open..open + len].to_vec()).ok()
}

// ------------------------------------------------------------ /proc readers

/// `VmRSS` of `pid`, in bytes.
fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// User + system CPU time of a process (all threads), from `/proc/PID/stat`.
/// The kernel reports it in USER_HZ ticks, 100 per second on Linux.
fn cpu_of(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

// ------------------------------------------------------------------- rounds

/// What the pollers and the controller share.
struct Shared {
    polls: usize,
    /// When each poll of the current round was answered.
    arrivals: parking_lot::Mutex<Vec<Instant>>,
    all_answered: Notify,
    /// Whether re-polls wait for `go` (deferred mode).
    deferred: AtomicBool,
    /// Bumped by the controller to release deferred re-polls.
    go: watch::Sender<u64>,
    /// Polls that ended with an error (connection lost, unexpected status).
    failed: AtomicUsize,
    /// `204` answers (the poll's own timeout ran out), re-polled at once.
    timeouts: AtomicUsize,
}

impl Shared {
    fn answered(&self, at: Instant) {
        let mut arrivals = self.arrivals.lock();
        arrivals.push(at);
        if arrivals.len() + self.failed.load(Ordering::Relaxed) == self.polls {
            self.all_answered.notify_one();
        }
    }

    fn fail(&self, why: Error) {
        let failed = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
        if failed <= 5 {
            eprintln!("a poll failed: {why}");
        }
        if self.arrivals.lock().len() + failed == self.polls {
            self.all_answered.notify_one();
        }
    }
}

/// One held poll, re-sent after every answer for as long as the run lasts.
async fn poller(
    mut conn: Conn,
    shared: Arc<Shared>,
    host: Arc<str>,
    epoch: Arc<str>,
    since: u64,
    timeout: u32,
) {
    let mut since = since;
    let mut go = shared.go.subscribe();
    let result: Result<()> = async {
        loop {
            let request = format!(
                "GET /status?since={since}&epoch={epoch}&timeout={timeout} HTTP/1.1\r\nhost: {host}\r\n\r\n"
            );
            let response = conn.request(request.as_bytes()).await?;
            let at = Instant::now();
            match response.status {
                200 => {
                    since = json_u64(&response.body, "version").ok_or("answer without a version")?;
                    if shared.deferred.load(Ordering::Acquire) {
                        // Mark the current round seen before counting this
                        // answer: the last answer makes the controller send
                        // `go`, and that must not be missed.
                        go.borrow_and_update();
                        shared.answered(at);
                        go.changed().await?;
                    } else {
                        shared.answered(at);
                    }
                }
                204 => {
                    shared.timeouts.fetch_add(1, Ordering::Relaxed);
                }
                other => return Err(format!("status {other}: {}", String::from_utf8_lossy(&response.body)).into()),
            }
        }
    }
    .await;
    if let Err(e) = result {
        shared.fail(e);
    }
}

/// What `/stats` says.
struct Stats {
    waiters: u64,
    version: u64,
    epoch: String,
}

async fn stats(control: &mut Conn, host: &str) -> Result<Stats> {
    let r = control
        .request(format!("GET /stats HTTP/1.1\r\nhost: {host}\r\n\r\n").as_bytes())
        .await?;
    if r.status != 200 {
        return Err(format!("/stats answered {}", r.status).into());
    }
    Ok(Stats {
        waiters: json_u64(&r.body, "waiters").ok_or("/stats without waiters")?,
        version: json_u64(&r.body, "version").ok_or("/stats without version")?,
        epoch: json_str(&r.body, "epoch").ok_or("/stats without epoch")?,
    })
}

/// Polls `/stats` until at least `target` polls are held.
async fn until_held(control: &mut Conn, host: &str, target: u64, shared: &Shared) -> Result<Stats> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = stats(control, host).await?;
        let alive = target - shared.failed.load(Ordering::Relaxed) as u64;
        if s.waiters >= alive {
            return Ok(s);
        }
        if Instant::now() > deadline {
            return Err(format!("only {} of {alive} polls held after 60 s", s.waiters).into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Posts a cart change that moves the version on; returns the new version.
async fn trigger(
    control: &mut Conn,
    host: &str,
    session: &str,
    add: &mut bool,
    before: u64,
) -> Result<u64> {
    for _ in 0..2 {
        let body = format!(
            "session={session}&action={}",
            if *add { "add" } else { "remove" }
        );
        *add = !*add;
        let request = format!(
            "POST /cart HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/x-www-form-urlencoded\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        let r = control.request(request.as_bytes()).await?;
        if r.status != 200 {
            return Err(format!(
                "POST /cart answered {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            )
            .into());
        }
        let version = json_u64(&r.body, "version").ok_or("cart answer without a version")?;
        if version != before {
            return Ok(version);
        }
        // A no-op (already in, or not in, the cart): the other action will do.
    }
    Err("two cart actions in a row did not change the version".into())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

struct CpuClock {
    server: Option<String>,
}

impl CpuClock {
    fn read(&self) -> (Option<Duration>, Option<Duration>) {
        (cpu_of("self"), self.server.as_deref().and_then(cpu_of))
    }
}

fn delta(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    Some(b?.saturating_sub(a?))
}

/// What every round of a run needs.
struct Run<'a> {
    args: &'a Args,
    host: &'a str,
    shared: &'a Shared,
    /// `/stats` waiters when all our polls are held.
    target: u64,
    session: &'a str,
    cpu: CpuClock,
    /// The server's `VmRSS` before our polls connected.
    rss_before: Option<u64>,
}

async fn run_mode(name: &str, run: &Run<'_>, control: &mut Conn, add: &mut bool) -> Result<()> {
    let Run {
        args,
        host,
        shared,
        target,
        session,
        ref cpu,
        rss_before,
    } = *run;
    println!(
        "\nmode {name}: {} rounds of one change to {} held polls",
        args.rounds, args.polls
    );
    println!(
        "{:>5} {:>9} {:>9} {:>9} {:>9} {:>12} {:>12}",
        "round", "p50 ms", "p99 ms", "max ms", "post ms", "loadgen cpu", "server cpu"
    );
    let mut all = Vec::with_capacity(args.polls * args.rounds);
    let (mut own_total, mut server_total, mut wall_total) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut server_known = true;
    for round in 1..=args.rounds {
        let s = until_held(control, host, target, shared).await?;
        shared.arrivals.lock().clear();
        let (own0, server0) = cpu.read();
        let t0 = Instant::now();
        trigger(control, host, session, add, s.version).await?;
        let posted = t0.elapsed();
        tokio::time::timeout(Duration::from_secs(60), shared.all_answered.notified())
            .await
            .map_err(|_| "not every poll was answered within 60 s")?;
        let (own1, server1) = cpu.read();
        let mut lat: Vec<Duration> = shared
            .arrivals
            .lock()
            .iter()
            .map(|a| a.saturating_duration_since(t0))
            .collect();
        lat.sort_unstable();
        let own = delta(own0, own1).unwrap_or_default();
        let server = delta(server0, server1);
        server_known &= server.is_some();
        own_total += own;
        server_total += server.unwrap_or_default();
        wall_total += lat.last().copied().unwrap_or_default();
        println!(
            "{round:>5} {:>9} {:>9} {:>9} {:>9} {:>12} {:>12}",
            ms(percentile(&lat, 50.0)),
            ms(percentile(&lat, 99.0)),
            ms(lat.last().copied().unwrap_or_default()),
            ms(posted),
            ms(own),
            server.map_or("-".into(), ms),
        );
        all.extend(lat);
        if shared.deferred.load(Ordering::Acquire) {
            shared.go.send_modify(|r| *r += 1);
        }
    }
    // Memory once every poll is held again, after answers and re-polls
    // went over each connection (buffers grown for writing stay).
    until_held(control, host, target, shared).await?;
    if let (Some(pid), Some(before)) = (args.pid, rss_before) {
        if let Some(after) = rss_of(pid) {
            println!(
                "server VmRSS after {name} rounds, all polls held again: {:.1} MiB, {:.0} bytes per held poll",
                after as f64 / 1048576.0,
                after.saturating_sub(before) as f64 / args.polls as f64
            );
        }
    }
    all.sort_unstable();
    let rounds = args.rounds as u32;
    println!(
        "{name}: over {} answers: p50 {} ms, p99 {} ms, max {} ms; per round: last answer {} ms, \
         loadgen CPU {} ms, server CPU {} (CPU times in 10 ms ticks)",
        all.len(),
        ms(percentile(&all, 50.0)),
        ms(percentile(&all, 99.0)),
        ms(all.last().copied().unwrap_or_default()),
        ms(wall_total / rounds),
        ms(own_total / rounds),
        if server_known {
            format!("{} ms", ms(server_total / rounds))
        } else {
            "unknown (no --pid)".into()
        },
    );
    Ok(())
}

async fn run(args: Args) -> Result<()> {
    let authority = args
        .url
        .strip_prefix("http://")
        .ok_or("--url must start with http://")?
        .trim_end_matches('/');
    let addr = authority
        .to_socket_addrs()?
        .find(|a| a.ip().is_loopback())
        .ok_or("--url must name a loopback address (127.0.0.1 or localhost)")?;
    let host: Arc<str> = Arc::from(authority);

    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    if limit > 0 && (limit as usize) < args.polls + 64 {
        return Err(format!(
            "{} polls need {} open files, but the limit is {limit}: raise the hard limit \
             (`ulimit -Hn`, as root) or hold fewer polls",
            args.polls,
            args.polls + 64
        )
        .into());
    }

    let mut control = Conn::connect(addr).await?;
    let s0 = stats(&mut control, &host).await?;
    let target = s0.waiters + args.polls as u64;
    let rss0 = args.pid.and_then(rss_of);
    println!(
        "loadgen: {} long polls against {} (version {}, epoch {}, {} already held), pid {}",
        args.polls,
        args.url,
        s0.version,
        s0.epoch,
        s0.waiters,
        std::process::id()
    );

    let (go, _) = watch::channel(0);
    let shared = Arc::new(Shared {
        polls: args.polls,
        arrivals: parking_lot::Mutex::new(Vec::with_capacity(args.polls)),
        all_answered: Notify::new(),
        deferred: AtomicBool::new(args.mode == Mode::Deferred),
        go,
        failed: AtomicUsize::new(0),
        timeouts: AtomicUsize::new(0),
    });

    // Connect and send the first polls, a batch at a time.
    let started = Instant::now();
    let epoch: Arc<str> = Arc::from(s0.epoch.as_str());
    let permits = Arc::new(Semaphore::new(args.connect_batch.max(1)));
    let connected = Arc::new(AtomicUsize::new(0));
    for _ in 0..args.polls {
        let permit = Arc::clone(&permits).acquire_owned().await?;
        let (shared, host, epoch, connected) = (
            Arc::clone(&shared),
            Arc::clone(&host),
            Arc::clone(&epoch),
            Arc::clone(&connected),
        );
        let (since, timeout) = (s0.version, args.poll_timeout);
        tokio::spawn(async move {
            match Conn::connect(addr).await {
                Ok(conn) => {
                    connected.fetch_add(1, Ordering::Relaxed);
                    drop(permit);
                    poller(conn, shared, host, epoch, since, timeout).await;
                }
                Err(e) => {
                    drop(permit);
                    shared.fail(e);
                }
            }
        });
    }
    let s = until_held(&mut control, &host, target, &shared).await?;
    println!(
        "{} polls held after {:.2?} ({} connections, {} failed)",
        s.waiters - s0.waiters,
        started.elapsed(),
        connected.load(Ordering::Relaxed),
        shared.failed.load(Ordering::Relaxed)
    );
    if let (Some(pid), Some(before)) = (args.pid, rss0) {
        // Give the server a moment: the last polls may still be settling.
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(after) = rss_of(pid) {
            println!(
                "server pid {pid}: VmRSS {:.1} MiB before, {:.1} MiB with {} polls held: {:.0} bytes per held poll",
                before as f64 / 1048576.0,
                after as f64 / 1048576.0,
                args.polls,
                after.saturating_sub(before) as f64 / args.polls as f64
            );
        }
    }

    let session = format!(
        "loadgen-{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let mut add = true;
    let run = Run {
        args: &args,
        host: &host,
        shared: &shared,
        target,
        session: &session,
        cpu: CpuClock {
            server: args.pid.map(|p| p.to_string()),
        },
        rss_before: rss0,
    };
    if matches!(args.mode, Mode::Immediate | Mode::Both) {
        run_mode("immediate", &run, &mut control, &mut add).await?;
    }
    if matches!(args.mode, Mode::Deferred | Mode::Both) {
        // From the next answer on, re-polls wait for the round to end.
        shared.deferred.store(true, Ordering::Release);
        run_mode("deferred", &run, &mut control, &mut add).await?;
    }
    let timeouts = shared.timeouts.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
    println!("poll timeouts (204): {timeouts}, failed polls: {failed}");
    // Leave the cart as we found it.
    if !add {
        let _ = trigger(&mut control, &host, &session, &mut add, u64::MAX).await;
    }
    if failed > 0 {
        return Err(format!("{failed} polls failed").into());
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let max = Duration::from_secs(args.max_seconds);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let outcome = rt.block_on(async { tokio::time::timeout(max, run(args)).await });
    // Dropping the runtime closes every connection.
    drop(rt);
    match outcome {
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("loadgen: {e}");
            std::process::ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("loadgen: gave up after --max-seconds");
            std::process::ExitCode::FAILURE
        }
    }
}
