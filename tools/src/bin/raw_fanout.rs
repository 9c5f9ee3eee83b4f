//! A minimal long-poll server on raw tokio sockets: the baseline that
//! `loadgen` holds the shopping_cart example against.
//!
//! ```text
//! cargo run --release -p longpoll-tools --bin raw_fanout -- [--addr 127.0.0.1:9998] [--core minimal|longpoll]
//! cargo run --release -p longpoll-tools --bin loadgen -- --url http://127.0.0.1:9998 --pid <its pid>
//! ```
//!
//! It speaks just enough HTTP/1.1 (keep-alive, `Content-Length` bodies, no
//! chunked requests) for the three routes `loadgen` uses, with the same
//! shapes as the shopping_cart contract:
//!
//! * `GET /status?since=V`: answers at once if `V` is not the current
//!   version, else holds the request until the next change;
//! * `GET /stats`: `{"waiters": held polls, "version": V, "epoch": "..."}`;
//! * `POST /cart` with `action=add|remove`: takes or returns the one unit of
//!   its single cart and wakes every held poll if that changed the count.
//!
//! No parsing beyond that, no timeouts, no limits, no graceful shutdown:
//! the least a server needs to do to fan a change out to held polls. With
//! `--core minimal` (the default) the polls wait on a
//! `parking_lot::Mutex<Vec<Waker>>` and an atomic version, as
//! `minimal_wakers` in `benches/fanout.rs`; with `--core longpoll` they wait
//! on a [`Broadcaster`], which separates the cost of the HTTP stack from the
//! cost of the waiter list when the figures are compared.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use clap::{Parser, ValueEnum};
use longpoll::{Broadcaster, Cursor, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser, Debug)]
#[command(about = "A minimal raw-socket long-poll server (HTTP fan-out baseline)")]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:9998")]
    addr: SocketAddr,
    /// What held polls wait on.
    #[arg(long, value_enum, default_value_t = CoreKind::Minimal)]
    core: CoreKind,
    /// Units in stock at start.
    #[arg(long, default_value_t = 10)]
    inventory: u64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CoreKind {
    /// A mutex-guarded `Vec<Waker>` and an atomic version.
    Minimal,
    /// `longpoll::Broadcaster`.
    Longpoll,
}

/// The waiter list of `--core minimal`: the least a fan-out can do.
#[derive(Default)]
struct Minimal {
    version: AtomicU64,
    count: AtomicU64,
    wakers: parking_lot::Mutex<Vec<Waker>>,
    waiting: AtomicUsize,
}

struct MinimalWait<'a> {
    shared: &'a Minimal,
    since: u64,
}

impl Future for MinimalWait<'_> {
    type Output = u64;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
        let v = self.shared.version.load(Ordering::Acquire);
        if v != self.since {
            return Poll::Ready(v);
        }
        // Check again under the lock that `publish` drains the list under.
        let mut wakers = self.shared.wakers.lock();
        let v = self.shared.version.load(Ordering::Acquire);
        if v != self.since {
            return Poll::Ready(v);
        }
        wakers.push(cx.waker().clone());
        Poll::Pending
    }
}

enum Core {
    Minimal(Minimal),
    Longpoll(Broadcaster<u64>),
}

struct App {
    core: Core,
    /// The single cart: whether its one unit is taken. Serialises changes.
    in_cart: parking_lot::Mutex<bool>,
}

impl App {
    /// `(version, count)` now.
    fn current(&self) -> (u64, u64) {
        match &self.core {
            Core::Minimal(m) => (
                m.version.load(Ordering::Acquire),
                m.count.load(Ordering::Acquire),
            ),
            Core::Longpoll(b) => {
                let u = b.current();
                (u.version().get(), **u.value())
            }
        }
    }

    fn waiters(&self) -> usize {
        match &self.core {
            Core::Minimal(m) => m.waiting.load(Ordering::Relaxed),
            Core::Longpoll(b) => b.waiter_count(),
        }
    }

    /// Waits for a version other than `since`; returns `(version, count)`.
    async fn wait(&self, since: u64) -> (u64, u64) {
        match &self.core {
            Core::Minimal(m) => {
                /// Counts a held poll until it is answered or dropped.
                struct Held<'a>(&'a AtomicUsize);
                impl Drop for Held<'_> {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                m.waiting.fetch_add(1, Ordering::Relaxed);
                let _held = Held(&m.waiting);
                let v = MinimalWait { shared: m, since }.await;
                (v, m.count.load(Ordering::Acquire))
            }
            Core::Longpoll(b) => {
                let changed = b
                    .wait(Cursor::at(Version::new(since)))
                    .await
                    .expect("never closed");
                (changed.version().get(), **changed.value())
            }
        }
    }

    /// Applies `add` (take the unit) or `remove`; wakes everyone on a change.
    fn cart(&self, add: bool) -> (u64, u64) {
        let mut in_cart = self.in_cart.lock();
        if *in_cart != add {
            *in_cart = add;
            match &self.core {
                Core::Minimal(m) => {
                    if add {
                        m.count.fetch_sub(1, Ordering::AcqRel);
                    } else {
                        m.count.fetch_add(1, Ordering::AcqRel);
                    }
                    m.version.fetch_add(1, Ordering::AcqRel);
                    let wakers = std::mem::take(&mut *m.wakers.lock());
                    wakers.into_iter().for_each(Waker::wake);
                }
                Core::Longpoll(b) => {
                    b.modify(|n| Some(if add { n - 1 } else { n + 1 }))
                        .expect("never closed");
                }
            }
        }
        drop(in_cart);
        self.current()
    }
}

/// The parts of a request this server looks at.
struct Request {
    post: bool,
    target: String,
    body: Vec<u8>,
}

/// Reads one request from `stream`, buffering in `buf`. `None` at a clean
/// end of stream.
async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Request>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end])
                .map_err(|_| std::io::Error::other("request head is not UTF-8"))?;
            let mut lines = head.split("\r\n");
            let mut request_line = lines.next().unwrap_or("").split(' ');
            let post = request_line.next() == Some("POST");
            let target = request_line.next().unwrap_or("/").to_owned();
            let length = lines
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let total = end + 4 + length;
            while buf.len() < total {
                if stream.read_buf(buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            let body = buf[end + 4..total].to_vec();
            buf.drain(..total);
            return Ok(Some(Request { post, target, body }));
        }
        if buf.len() > 16 * 1024 {
            return Err(std::io::Error::other("request head too large"));
        }
        if stream.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
    }
}

fn query_param<'a>(target: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = target.split_once('?')?;
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncache-control: no-store\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await
}

fn state_json(version: u64, count: u64) -> String {
    format!(r#"{{"inventorycount":{count},"version":{version},"epoch":"0000000000000001"}}"#)
}

async fn connection(mut stream: TcpStream, app: Arc<App>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(512);
    while let Some(req) = read_request(&mut stream, &mut buf).await? {
        let path = req.target.split('?').next().unwrap_or("");
        match (req.post, path) {
            (false, "/status") => {
                let (version, count) = app.current();
                let since = query_param(&req.target, "since").and_then(|s| s.parse().ok());
                let (version, count) = match since {
                    Some(s) if s != version => (version, count),
                    _ => {
                        let since = since.unwrap_or(version);
                        // Hold the poll, but notice a client that goes away.
                        tokio::select! {
                            answer = app.wait(since) => answer,
                            read = stream.read_buf(&mut buf) => {
                                if read? == 0 {
                                    return Ok(());
                                }
                                // A pipelined request: answer the poll first.
                                app.wait(since).await
                            }
                        }
                    }
                };
                respond(&mut stream, "200 OK", &state_json(version, count)).await?;
            }
            (false, "/stats") => {
                let (version, _) = app.current();
                let body = format!(
                    r#"{{"waiters":{},"version":{version},"epoch":"0000000000000001"}}"#,
                    app.waiters()
                );
                respond(&mut stream, "200 OK", &body).await?;
            }
            (true, "/cart") => {
                let body = String::from_utf8_lossy(&req.body);
                let action = body
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| *k == "action")
                    .map(|(_, v)| v);
                match action {
                    Some(a @ ("add" | "remove")) => {
                        let (version, count) = app.cart(a == "add");
                        respond(&mut stream, "200 OK", &state_json(version, count)).await?;
                    }
                    _ => respond(&mut stream, "400 Bad Request", r#"{"error":"action"}"#).await?,
                }
            }
            _ => respond(&mut stream, "404 Not Found", r#"{"error":"not found"}"#).await?,
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    // Each held poll is a socket: allow as many as the hard limit permits.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => eprintln!("open-file limit: {n}"),
        Err(e) => eprintln!("could not raise the open-file limit: {e}"),
    }
    let core = match args.core {
        CoreKind::Minimal => Core::Minimal(Minimal {
            count: AtomicU64::new(args.inventory),
            ..Minimal::default()
        }),
        CoreKind::Longpoll => Core::Longpoll(Broadcaster::new(args.inventory)),
    };
    let app = Arc::new(App {
        core,
        in_cart: parking_lot::Mutex::new(false),
    });
    let listener = TcpListener::bind(args.addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    eprintln!("core: {:?}, pid {}", args.core, std::process::id());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, Arc::clone(&app)));
                }
                Err(e) => {
                    // Out of file descriptors, most likely: back off, do not spin.
                    eprintln!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
