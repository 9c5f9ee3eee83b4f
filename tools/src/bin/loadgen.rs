//! An HTTP load generator for long polls: holds N polls against a running
//! server, triggers one change, and measures how long every held poll takes
//! to be answered. It speaks two protocols (`--target`):
//!
//! * `cart` (the default): the shopping cart's contract, also spoken by
//!   `raw_fanout`. Held polls are `GET /status?since=V&epoch=E&timeout=S`,
//!   counted by `GET /stats`; the trigger is `POST /cart` (`add` and
//!   `remove` alternately, with a session of its own).
//! * `nchan`: nginx with the Nchan module (`tools/nchan/nginx.conf`). Held
//!   polls are `GET /sub/CHANNEL` with the previous answer's `Last-Modified`
//!   and `ETag` as `If-Modified-Since` and `If-None-Match`, counted by the
//!   `subscribers` of `GET /nchan_status` (`nchan_stub_status`); the trigger
//!   is `POST /pub/CHANNEL` with a body the size of the cart's answer.
//!
//! ```text
//! cargo run --release --example shopping_cart -- --addr 127.0.0.1:9999 &
//! cargo run --release -p longpoll-tools --bin loadgen -- --url http://127.0.0.1:9999 --polls 10000 --pid $!
//! # nginx + Nchan, its workers found from the master's pid:
//! cargo run --release -p longpoll-tools --bin loadgen -- --target nchan \
//!     --url http://127.0.0.1:8080 --polls 10000 --children-of MASTER_PID
//! ```
//!
//! `nchan_bench` runs both servers (and `raw_fanout`) side by side with it.
//!
//! One round: wait until the server counts all N polls held, read the
//! clock, trigger the change, and record for every poll the time from the
//! trigger until its whole answer has been read: p50, p99 and max per round
//! and over all rounds. Two modes, each for `--rounds` rounds:
//!
//! * `immediate`: each poll is sent again as soon as its answer is read,
//!   with the new cursor, as browsers do. The re-polls reach the server
//!   while it is still answering the others: the realistic herd.
//! * `deferred`: re-polls wait until every poll of the round is answered, so
//!   the figures are the server's fan-out alone.
//!
//! With `--pid` (repeatable) or `--children-of` it reads the server's
//! `VmRSS` (summed over its processes) before the polls connect, once they
//! are all held, and after each mode's rounds once every poll is held again,
//! and prints the growth per held poll (start the server fresh: memory it
//! freed earlier is reused and hides growth). It also reads both sides' CPU
//! time (`/proc/PID/task/*/schedstat`, in nanoseconds) around each fan-out,
//! to show whether the load generator or the server is the bottleneck.
//! `--summary` ends the output with one `summary: {...}` JSON line of the
//! medians over rounds.
//!
//! Plain tokio TCP on one thread with hand-written HTTP/1.1 keep-alive
//! requests: the cheapest client there is, so that its own cost stays far
//! below the server's. Every connection goes to the loopback address of
//! `--url`; the open-file soft limit is raised to the hard limit at start.
//! The whole run is bounded by `--max-seconds`.

use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use longpoll_tools::client::{json_str, json_u64, Conn, Error, Response, Result};
use longpoll_tools::procfs::{children_of, cpu_of, cpu_sum, rss_sum};
use tokio::sync::{watch, Notify, Semaphore};

#[derive(Parser, Debug)]
#[command(about = "Holds N long polls against a server and times the fan-out of one change")]
struct Args {
    /// The server's base URL; must be a loopback address.
    #[arg(long, default_value = "http://127.0.0.1:9999")]
    url: String,
    /// The protocol the server speaks.
    #[arg(long, value_enum, default_value_t = Target::Cart)]
    target: Target,
    /// Nchan's channel (`--target nchan`).
    #[arg(long, default_value = "cart")]
    channel: String,
    /// Long polls held at once (one connection each).
    #[arg(long, default_value_t = 10_000)]
    polls: usize,
    /// Rounds (changes) per mode.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Which re-poll mode(s) to run.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    mode: Mode,
    /// A process of the server, for its RSS and CPU time (repeatable, or
    /// comma-separated).
    #[arg(long, value_delimiter = ',')]
    pid: Vec<u32>,
    /// Measures the child processes of this one too (nginx's workers, given
    /// the master's pid).
    #[arg(long)]
    children_of: Option<u32>,
    /// `timeout` sent with each cart poll, in seconds (it must outlast a
    /// round; Nchan's is in its config).
    #[arg(long, default_value_t = 120)]
    poll_timeout: u32,
    /// Connections opened at once while connecting.
    #[arg(long, default_value_t = 256)]
    connect_batch: usize,
    /// Ends with one `summary: {...}` JSON line.
    #[arg(long)]
    summary: bool,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Target {
    /// The shopping cart's contract (also `raw_fanout`).
    Cart,
    /// nginx with Nchan: `/sub/CHANNEL` and `/pub/CHANNEL`.
    Nchan,
}

// ---------------------------------------------------------------- protocols

/// How to talk to the server under test.
struct Protocol {
    target: Target,
    host: String,
    channel: String,
    /// The cart's epoch, sent with every poll.
    epoch: String,
}

/// Where a poll stands: what it names as the last answer it saw.
#[derive(Clone, Debug)]
enum Cursor {
    /// The cart's version.
    Since(u64),
    /// Nchan's message id, as the previous answer's `Last-Modified` and
    /// `ETag`; none on the first poll (it waits for the next message).
    Message {
        last_modified: Option<String>,
        etag: Option<String>,
    },
}

/// What a poll's answer was.
enum Answer {
    /// A change, and the cursor to poll from next.
    Changed(Cursor),
    /// The poll's own timeout ran out: poll again from the same cursor.
    TimedOut,
}

impl Protocol {
    fn poll_request(&self, cursor: &Cursor, timeout: u32) -> String {
        let host = &self.host;
        match cursor {
            Cursor::Since(since) => format!(
                "GET /status?since={since}&epoch={}&timeout={timeout} HTTP/1.1\r\nhost: {host}\r\n\r\n",
                self.epoch
            ),
            Cursor::Message {
                last_modified,
                etag,
            } => {
                let mut r = format!("GET /sub/{} HTTP/1.1\r\nhost: {host}\r\n", self.channel);
                if let Some(t) = last_modified {
                    r.push_str(&format!("if-modified-since: {t}\r\n"));
                }
                if let Some(e) = etag {
                    r.push_str(&format!("if-none-match: {e}\r\n"));
                }
                r.push_str("\r\n");
                r
            }
        }
    }

    fn first_cursor(&self, version: u64) -> Cursor {
        match self.target {
            Target::Cart => Cursor::Since(version),
            Target::Nchan => Cursor::Message {
                last_modified: None,
                etag: None,
            },
        }
    }

    fn answer(&self, r: &Response) -> Result<Answer> {
        match (self.target, r.status) {
            (Target::Cart, 200) => Ok(Answer::Changed(Cursor::Since(
                json_u64(&r.body, "version").ok_or("answer without a version")?,
            ))),
            (Target::Nchan, 200) => Ok(Answer::Changed(Cursor::Message {
                last_modified: r.last_modified.clone(),
                etag: r.etag.clone(),
            })),
            (Target::Cart, 204) | (Target::Nchan, 304 | 408) => Ok(Answer::TimedOut),
            (_, other) => {
                Err(format!("status {other}: {}", String::from_utf8_lossy(&r.body)).into())
            }
        }
    }

    /// Held polls as the server counts them, and the current version (the
    /// cart's; Nchan's messages are counted instead).
    async fn held(&self, control: &mut Conn) -> Result<(u64, u64)> {
        let host = &self.host;
        match self.target {
            Target::Cart => {
                let r = control
                    .request(format!("GET /stats HTTP/1.1\r\nhost: {host}\r\n\r\n").as_bytes())
                    .await?;
                if r.status != 200 {
                    return Err(format!("/stats answered {}", r.status).into());
                }
                Ok((
                    json_u64(&r.body, "waiters").ok_or("/stats without waiters")?,
                    json_u64(&r.body, "version").ok_or("/stats without version")?,
                ))
            }
            Target::Nchan => {
                // `nchan_stub_status`: the totals over every worker. (The
                // channel's own `subscribers`, from `GET /pub/CHANNEL`, can
                // miss another worker's subscribers for good.)
                let r = control
                    .request(
                        format!("GET /nchan_status HTTP/1.1\r\nhost: {host}\r\n\r\n").as_bytes(),
                    )
                    .await?;
                if r.status != 200 {
                    return Err(format!("/nchan_status answered {}", r.status).into());
                }
                let text = String::from_utf8_lossy(&r.body);
                let field = |name: &str| -> Option<u64> {
                    text.lines()
                        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                };
                Ok((
                    field("subscribers:").ok_or("/nchan_status without subscribers")?,
                    field("total published messages:").unwrap_or(0),
                ))
            }
        }
    }

    /// Makes one change that every held poll must be answered with.
    async fn trigger(&self, control: &mut Conn, state: &mut TriggerState) -> Result<()> {
        let host = &self.host;
        match self.target {
            Target::Cart => {
                for _ in 0..2 {
                    let body = format!(
                        "session={}&action={}",
                        state.session,
                        if state.add { "add" } else { "remove" }
                    );
                    state.add = !state.add;
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
                    let version =
                        json_u64(&r.body, "version").ok_or("cart answer without a version")?;
                    if version != state.version {
                        state.version = version;
                        return Ok(());
                    }
                    // A no-op (already in, or not in, the cart): the other action will do.
                }
                Err("two cart actions in a row did not change the version".into())
            }
            Target::Nchan => {
                state.version += 1;
                state.add = !state.add;
                // The shape and size of the cart's long-poll answer.
                let body = format!(
                    r#"{{"inventorycount":{},"version":{},"epoch":"{:016x}"}}"#,
                    if state.add { 9 } else { 10 },
                    state.version,
                    0x1d2c_3b4a_5968_7786u64
                );
                let request = format!(
                    "POST /pub/{} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\n\r\n{body}",
                    self.channel,
                    body.len()
                );
                let r = control.request(request.as_bytes()).await?;
                if !(200..=202).contains(&r.status) {
                    return Err(format!("POST /pub answered {}", r.status).into());
                }
                Ok(())
            }
        }
    }
}

/// What the trigger changes next.
struct TriggerState {
    session: String,
    add: bool,
    /// The version before the next trigger.
    version: u64,
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
    /// Timeouts of the polls' own (re-polled at once).
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
    protocol: Arc<Protocol>,
    mut cursor: Cursor,
    timeout: u32,
) {
    let mut go = shared.go.subscribe();
    let result: Result<()> = async {
        loop {
            let request = protocol.poll_request(&cursor, timeout);
            let response = conn.request(request.as_bytes()).await?;
            let at = Instant::now();
            match protocol.answer(&response)? {
                Answer::Changed(next) => {
                    cursor = next;
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
                Answer::TimedOut => {
                    shared.timeouts.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    .await;
    if let Err(e) = result {
        shared.fail(e);
    }
}

/// Asks the server until at least `target` polls are held; returns the
/// current version.
async fn until_held(
    protocol: &Protocol,
    control: &mut Conn,
    target: u64,
    shared: &Shared,
) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (held, version) = protocol.held(control).await?;
        let alive = target - shared.failed.load(Ordering::Relaxed) as u64;
        if held >= alive {
            return Ok(version);
        }
        if Instant::now() > deadline {
            return Err(format!("only {held} of {alive} polls held after 60 s").into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of `values` (the lower middle one for an even count).
fn median(values: &[Duration]) -> Duration {
    let mut v = values.to_vec();
    v.sort_unstable();
    v.get(v.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn delta(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    Some(b?.saturating_sub(a?))
}

/// What every round of a run needs.
struct Run<'a> {
    args: &'a Args,
    protocol: &'a Protocol,
    shared: &'a Shared,
    /// Held polls counted by the server when all ours are held.
    target: u64,
    /// The server's processes.
    pids: &'a [u32],
    /// The server's `VmRSS` before our polls connected.
    rss_before: Option<u64>,
}

/// The medians of one mode's rounds.
#[derive(Default)]
struct ModeSummary {
    /// Trigger to the last answer of a round.
    last: Duration,
    /// The median answer of a round.
    p50: Duration,
    server_cpu: Option<Duration>,
    loadgen_cpu: Duration,
    /// Growth of the server's RSS per poll, once all are held again.
    rss_per_poll: Option<f64>,
}

async fn run_mode(
    name: &str,
    run: &Run<'_>,
    control: &mut Conn,
    trigger: &mut TriggerState,
) -> Result<ModeSummary> {
    let Run {
        args,
        protocol,
        shared,
        target,
        pids,
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
    let own_pid = std::process::id();
    let mut all = Vec::with_capacity(args.polls * args.rounds);
    let (mut lasts, mut p50s, mut owns, mut servers) = (vec![], vec![], vec![], vec![]);
    let mut server_known = !pids.is_empty();
    for round in 1..=args.rounds {
        trigger.version = until_held(protocol, control, target, shared).await?;
        shared.arrivals.lock().clear();
        let (own0, server0) = (cpu_of(own_pid), cpu_sum(pids));
        let t0 = Instant::now();
        protocol.trigger(control, trigger).await?;
        let posted = t0.elapsed();
        tokio::time::timeout(Duration::from_secs(60), shared.all_answered.notified())
            .await
            .map_err(|_| "not every poll was answered within 60 s")?;
        let (own1, server1) = (cpu_of(own_pid), cpu_sum(pids));
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
        let last = lat.last().copied().unwrap_or_default();
        lasts.push(last);
        p50s.push(percentile(&lat, 50.0));
        owns.push(own);
        servers.push(server.unwrap_or_default());
        println!(
            "{round:>5} {:>9} {:>9} {:>9} {:>9} {:>12} {:>12}",
            ms(percentile(&lat, 50.0)),
            ms(percentile(&lat, 99.0)),
            ms(last),
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
    until_held(protocol, control, target, shared).await?;
    let mut rss_per_poll = None;
    if let (Some(before), Some(after)) = (rss_before, rss_sum(pids)) {
        let per_poll = after.saturating_sub(before) as f64 / args.polls as f64;
        rss_per_poll = Some(per_poll);
        println!(
            "server VmRSS after {name} rounds, all polls held again: {:.1} MiB, {per_poll:.0} bytes per held poll",
            after as f64 / 1048576.0,
        );
    }
    all.sort_unstable();
    let summary = ModeSummary {
        last: median(&lasts),
        p50: median(&p50s),
        server_cpu: server_known.then(|| median(&servers)),
        loadgen_cpu: median(&owns),
        rss_per_poll,
    };
    println!(
        "{name}: over {} answers: p50 {} ms, p99 {} ms, max {} ms; median of rounds: last answer {} ms, \
         loadgen CPU {} ms, server CPU {}",
        all.len(),
        ms(percentile(&all, 50.0)),
        ms(percentile(&all, 99.0)),
        ms(all.last().copied().unwrap_or_default()),
        ms(summary.last),
        ms(summary.loadgen_cpu),
        summary
            .server_cpu
            .map_or_else(|| "unknown (no --pid)".into(), |d| format!("{} ms", ms(d))),
    );
    Ok(summary)
}

fn mode_json(m: &ModeSummary) -> serde_json::Value {
    serde_json::json!({
        "last_ms": m.last.as_secs_f64() * 1e3,
        "p50_ms": m.p50.as_secs_f64() * 1e3,
        "server_cpu_ms": m.server_cpu.map(|d| d.as_secs_f64() * 1e3),
        "loadgen_cpu_ms": m.loadgen_cpu.as_secs_f64() * 1e3,
        "rss_per_poll": m.rss_per_poll,
    })
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
    let mut pids = args.pid.clone();
    if let Some(parent) = args.children_of {
        pids.extend(children_of(parent));
    }

    let mut control = Conn::connect(addr).await?;
    let mut protocol = Protocol {
        target: args.target,
        host: authority.to_owned(),
        channel: args.channel.clone(),
        epoch: String::new(),
    };
    if args.target == Target::Cart {
        let r = control
            .request(format!("GET /stats HTTP/1.1\r\nhost: {authority}\r\n\r\n").as_bytes())
            .await?;
        protocol.epoch = json_str(&r.body, "epoch").ok_or("/stats without an epoch")?;
    }
    let protocol = Arc::new(protocol);
    let (held0, version0) = protocol.held(&mut control).await?;
    let target = held0 + args.polls as u64;
    let rss0 = rss_sum(&pids);
    println!(
        "loadgen: {} long polls against {} ({:?}, version {version0}, {held0} already held), \
         pid {}, server pids {pids:?}",
        args.polls,
        args.url,
        args.target,
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
    let permits = Arc::new(Semaphore::new(args.connect_batch.max(1)));
    let connected = Arc::new(AtomicUsize::new(0));
    for _ in 0..args.polls {
        let permit = Arc::clone(&permits).acquire_owned().await?;
        let (shared, protocol, connected) = (
            Arc::clone(&shared),
            Arc::clone(&protocol),
            Arc::clone(&connected),
        );
        let (cursor, timeout) = (protocol.first_cursor(version0), args.poll_timeout);
        tokio::spawn(async move {
            match Conn::connect(addr).await {
                Ok(conn) => {
                    connected.fetch_add(1, Ordering::Relaxed);
                    drop(permit);
                    poller(conn, shared, protocol, cursor, timeout).await;
                }
                Err(e) => {
                    drop(permit);
                    shared.fail(e);
                }
            }
        });
    }
    // A fresh control connection: the first one sat idle while the polls
    // connected, longer than a server's keep-alive timeout may allow.
    let mut control = Conn::connect(addr).await?;
    until_held(&protocol, &mut control, target, &shared).await?;
    println!(
        "{} polls held after {:.2?} ({} connections, {} failed)",
        args.polls,
        started.elapsed(),
        connected.load(Ordering::Relaxed),
        shared.failed.load(Ordering::Relaxed)
    );
    let mut first_rss_per_poll = None;
    if let Some(before) = rss0 {
        // Give the server a moment: the last polls may still be settling.
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(after) = rss_sum(&pids) {
            let per_poll = after.saturating_sub(before) as f64 / args.polls as f64;
            first_rss_per_poll = Some(per_poll);
            println!(
                "server VmRSS {:.1} MiB before, {:.1} MiB with {} polls held: {per_poll:.0} bytes per held poll",
                before as f64 / 1048576.0,
                after as f64 / 1048576.0,
                args.polls,
            );
        }
    }

    let mut trigger = TriggerState {
        session: format!(
            "loadgen-{}-{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ),
        add: true,
        version: version0,
    };
    let run = Run {
        args: &args,
        protocol: &protocol,
        shared: &shared,
        target,
        pids: &pids,
        rss_before: rss0,
    };
    let mut immediate = None;
    let mut deferred = None;
    if matches!(args.mode, Mode::Immediate | Mode::Both) {
        immediate = Some(run_mode("immediate", &run, &mut control, &mut trigger).await?);
    }
    if matches!(args.mode, Mode::Deferred | Mode::Both) {
        // From the next answer on, re-polls wait for the round to end.
        shared.deferred.store(true, Ordering::Release);
        deferred = Some(run_mode("deferred", &run, &mut control, &mut trigger).await?);
    }
    let timeouts = shared.timeouts.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
    println!("poll timeouts: {timeouts}, failed polls: {failed}");
    // Leave the cart as we found it.
    if args.target == Target::Cart && !trigger.add {
        trigger.version = u64::MAX;
        let _ = protocol.trigger(&mut control, &mut trigger).await;
    }
    if failed > 0 {
        return Err(format!("{failed} polls failed").into());
    }
    if args.summary {
        let summary = serde_json::json!({
            "polls": args.polls,
            "rounds": args.rounds,
            "rss_per_poll_first_hold": first_rss_per_poll,
            "immediate": immediate.as_ref().map(mode_json),
            "deferred": deferred.as_ref().map(mode_json),
        });
        println!("summary: {summary}");
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
