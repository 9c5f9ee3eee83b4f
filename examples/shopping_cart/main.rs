//! The long-poll inventory demo: one product, a fixed stock, and every open
//! page seeing the count change the moment anyone adds or removes a unit.
//!
//! ```sh
//! cargo run --release --example shopping_cart   # then open http://127.0.0.1:9999
//! cargo run --release --example shopping_cart -- --addr 127.0.0.1:0 --inventory 3
//! ```
//!
//! | endpoint          | what                                                        |
//! |-------------------|-------------------------------------------------------------|
//! | `GET /`           | the page, with a `session` cookie for a new visitor         |
//! | `GET /page.js`    | the page's script; `GET /favicon.ico`: its icon             |
//! | `GET /longpoll.js` | the browser client the script imports (`longpoll::http::CLIENT_JS`) |
//! | `GET /status`     | the long poll: `since`, `epoch`, `timeout`, `If-None-Match` |
//! | `POST /cart`      | `session=<id>&action=add\|remove`, form-encoded, at most 8 KiB |
//! | `GET /stats`      | held long polls, version, epoch                             |
//! | `GET /healthz`    | `200` once the server accepts requests                      |
//! | `GET /metrics`    | Prometheus text: `longpoll_*` (with `--features metrics`) and the cart's `shopping_cart_*` gauges |
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default `info`); with
//! `--features tracing` they include `longpoll`'s events
//! (`RUST_LOG=info,longpoll=debug` for refused waits and resyncs,
//! `longpoll::publish=trace` for every publish).
//!
//! The files:
//!
//! * `main.rs`: flags, the accept loop (a task per connection, HTTP/1.1, and
//!   h2c too with `--h2c`) and graceful shutdown;
//! * `routes.rs`: a `match` on method and path, one function per endpoint;
//! * `cart.rs`: the cart state, changed atomically with its version;
//! * `redis_store.rs`: the cart in Redis (`--redis URL`, feature `redis`),
//!   so that several instances behind a load balancer share one inventory;
//! * `conn.rs`: what one connection may cost (`--max-connections`,
//!   `--max-header-bytes`, the header and idle timeouts);
//! * `tracker.rs`: the open connections, swept for idle ones, and drained
//!   on shutdown;
//! * `telemetry.rs`: the Prometheus recorder behind `/metrics`, and the logs;
//! * `index.html`: the page, served with the state filled in, and
//!   `page.js`, its script (vanilla JS); `assets.rs` serves the script and
//!   the icon, `favicon.svg`, and holds the page's Content-Security-Policy.
//!
//! On SIGINT or SIGTERM the server stops accepting and closes the
//! broadcaster, so every held long poll is answered `503` with
//! `Retry-After: 1` at once, and exits within a second.

mod assets;
mod cart;
mod conn;
mod redis_store;
mod routes;
mod telemetry;
mod tracker;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;

pub(crate) use conn::Limits;
pub(crate) use routes::App;
use tracker::{Io, Tracked, Tracker};

/// How long connections get, once the broadcaster is closed, to send their
/// last answers before the process exits anyway.
const DRAIN: Duration = Duration::from_millis(800);

/// The inventory demo's flags.
#[derive(Parser, Debug, Clone)]
#[command(name = "shopping_cart", about = "The long-poll inventory demo")]
pub(crate) struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:9999")]
    pub(crate) addr: SocketAddr,
    /// Units in stock at start.
    #[arg(long, default_value_t = 10)]
    pub(crate) inventory: u32,
    /// Seconds a long poll is held when it does not ask for a `timeout`
    /// (decimal allowed, at most 300).
    #[arg(long, default_value = "30", value_parser = seconds)]
    pub(crate) poll_timeout: Duration,
    /// Long polls held at once; the next one is answered 503.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) max_waiters: usize,
    /// Seconds a client has to send a request's headers before the
    /// connection is closed (decimal allowed).
    #[arg(long, default_value = "10", value_parser = seconds)]
    pub(crate) header_timeout: Duration,
    /// Seconds a connection may stay open with no request in progress
    /// (decimal allowed); also ends a connection whose client stopped
    /// reading its answers.
    #[arg(long, default_value = "60", value_parser = seconds)]
    pub(crate) idle_timeout: Duration,
    /// Connections open at once; a connection beyond them is answered 503
    /// and closed at once.
    #[arg(long, default_value_t = 100_000, value_parser = at_least_one)]
    pub(crate) max_connections: usize,
    /// Bytes a request head (request line and headers) may take, 8192 to
    /// 16384 (the HTTP contract's ceiling); a longer one is answered `431`
    /// and its connection closed.
    #[arg(long, default_value_t = 8 * 1024, value_parser = header_bytes)]
    pub(crate) max_header_bytes: usize,
    /// Also serve HTTP/2 with prior knowledge (h2c) on the same port, for
    /// proxies that speak it; browsers speak HTTP/2 only over TLS.
    #[arg(long)]
    pub(crate) h2c: bool,
    /// Keep the cart in the Redis at this URL (`redis://host:port/`), so
    /// that every instance started with it shares one inventory.
    #[arg(long, value_name = "URL")]
    pub(crate) redis: Option<String>,
    /// Prefix of the Redis keys: instances of one shop share it.
    #[arg(long, default_value = "shopping_cart:", requires = "redis")]
    pub(crate) redis_prefix: String,
}

impl Args {
    /// The app these flags ask for: in this process, or on Redis with
    /// `--redis` (which fails if Redis does not answer).
    pub(crate) async fn connect_app(&self) -> std::io::Result<Arc<App>> {
        // Before any broadcaster is built: each registers its metrics then.
        telemetry::recorder();
        match &self.redis {
            None => Ok(self.app()),
            Some(url) => redis_store::app(self, url).await,
        }
    }

    pub(crate) fn app(&self) -> Arc<App> {
        telemetry::recorder();
        Arc::new(App::new(
            self.inventory,
            self.poll_timeout,
            self.max_waiters,
        ))
    }
}

impl Args {
    /// The per-connection limits the flags ask for.
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
            max_header_bytes: self.max_header_bytes,
            h2c: self.h2c,
        }
    }
}

/// A count of at least 1.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{s}` is not a whole number of at least 1")),
    }
}

/// A request-head limit: 8 KiB (hyper's smallest read buffer) to 16 KiB (the
/// contract: a head over 16 KiB is refused).
fn header_bytes(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (8 * 1024..=16 * 1024).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a number of bytes from 8192 to 16384")),
    }
}

/// Decimal seconds, 0 to 300.
fn seconds(s: &str) -> Result<Duration, String> {
    longpoll::http::parse_timeout(s, Duration::from_secs(300))
        .map_err(|_| format!("`{s}` is not a number of seconds from 0 to 300"))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    telemetry::init_logs();
    // Before listening: with `--redis`, a Redis that does not answer is an
    // error at start, not a server that answers 503 to everything.
    let app = match args.connect_app().await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("shopping_cart: {e}");
            std::process::exit(1);
        }
    };
    let listener = TcpListener::bind(args.addr).await?;
    // The first line of stdout, for scripts that started us with port 0.
    println!("listening on http://{}", listener.local_addr()?);
    serve_with(listener, app, args.limits(), shutdown_signal()).await;
    Ok(())
}

/// Serves `app` on `listener` within `limits` until `shutdown` completes,
/// then closes the app (held long polls get `503`) and waits at most
/// [`DRAIN`] for the connections to finish.
pub(crate) async fn serve_with(
    listener: TcpListener,
    app: Arc<App>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let builders = conn::Builders::new(&limits);
    let slots = conn::ConnectionSlots::new(limits.max_connections);
    let tracker = Arc::new(Tracker::new(limits));
    let sweep = tokio::spawn(Arc::clone(&tracker).sweep());
    let mut shutdown = pin!(shutdown);

    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let tcp = match accepted {
                    Ok((tcp, _peer)) => tcp,
                    Err(e) => {
                        // Out of file descriptors, most likely: back off
                        // instead of spinning on the same error.
                        tracing::warn!("accept error: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(slot) = slots.try_take() else {
                    conn::refuse(tcp);
                    continue;
                };
                let activity = tracker.open(slot);
                let service = routes::Service::new(Arc::clone(&app), Arc::clone(&activity));
                let io = Io::new(tcp, Arc::clone(&activity));
                // A task per connection: a held long poll must not delay
                // anyone else. Its place under `--max-connections` is
                // returned when it ends: done, failed, or closed by the
                // tracker.
                match &builders {
                    conn::Builders::Http1(http1) => {
                        let conn = http1.serve_connection(io, service);
                        tokio::spawn(Tracked::new(conn, activity));
                    }
                    conn::Builders::Auto(auto) => {
                        let conn = auto.serve_connection(io, service).into_owned();
                        tokio::spawn(Tracked::new(conn, activity));
                    }
                }
            }
            () = &mut shutdown => break,
        }
    }

    drop(listener);
    // Held long polls are answered now rather than at their timeout, so the
    // connections below can finish.
    app.close();
    tracker.drain();
    if tokio::time::timeout(DRAIN, slots.all_free()).await.is_err() {
        tracing::warn!("some connections did not finish in time; closing them");
        tracker.close_all();
    }
    sweep.abort();
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler can be installed");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
