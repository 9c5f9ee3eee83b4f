//! Tornado's chat demo, done with long polls and server-sent events on one
//! cursor: rooms are keys of a [`Keyed`](longpoll::keyed::Keyed) hub, each
//! room keeps its last messages, and a page that reconnects receives every
//! message it missed exactly once, in order (or is told it missed too many,
//! and starts over from what the room kept).
//!
//! ```sh
//! cargo run --release --features axum --example chat
//! # then open http://127.0.0.1:8888/?room=lobby (add &transport=sse for SSE)
//! ```
//!
//! The files: `app.rs` (state, routes, serving; the tests use it too) and
//! `chat.html` (the page: vanilla JS on the crate's browser client,
//! `longpoll.js`, which the server serves too; no external resources;
//! every message written with `textContent`).
//!
//! On Ctrl-C or SIGTERM the server stops accepting, closes every room (held
//! long polls get `503` with `Retry-After: 1`, event streams end, and the
//! browsers reconnect once it is back), and exits.
//!
//! Several instances serve the same rooms through Redis (feature `redis`):
//!
//! ```sh
//! cargo build --release --features axum,redis --example chat
//! target/release/examples/chat --addr 127.0.0.1:8881 --redis redis://127.0.0.1:6379/ &
//! target/release/examples/chat --addr 127.0.0.1:8882 --redis redis://127.0.0.1:6379/ &
//! # or on a Redis Cluster, any of its nodes as seeds:
//! target/release/examples/chat --redis-cluster redis://127.0.0.1:7000/,redis://127.0.0.1:7001/
//! ```

mod app;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use longpoll::http::PollConfig;
use longpoll::sse::SseConfig;
use tokio::net::TcpListener;

/// The chat demo's flags.
#[derive(Parser, Debug)]
#[command(
    name = "chat",
    about = "Chat rooms over long polls and server-sent events"
)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8888")]
    addr: SocketAddr,
    /// Messages each room keeps for clients that reconnect.
    #[arg(long, default_value_t = 100)]
    history: usize,
    /// Most rooms at once.
    #[arg(long, default_value_t = 1000)]
    max_rooms: usize,
    /// Seconds an unused room is kept.
    #[arg(long, default_value_t = 600)]
    room_idle: u64,
    /// The longest message, in characters.
    #[arg(long, default_value_t = 500)]
    max_message_chars: usize,
    /// Seconds between SSE keep-alive comments.
    #[arg(long, default_value_t = 15)]
    keep_alive: u64,
    /// Share the rooms with other instances through this Redis.
    #[arg(long, conflicts_with = "redis_cluster")]
    redis: Option<String>,
    /// Share the rooms through this Redis Cluster: seed URLs, comma-separated.
    #[arg(long, value_delimiter = ',')]
    redis_cluster: Option<Vec<String>>,
    /// The prefix of the chat's keys in Redis.
    #[arg(long, default_value = "chat:")]
    redis_prefix: String,
    /// Seconds Redis keeps a room nobody posts to.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    room_ttl: u64,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let settings = app::Settings {
        history: args.history,
        max_rooms: args.max_rooms,
        room_idle: Duration::from_secs(args.room_idle),
        room_ttl: Duration::from_secs(args.room_ttl.max(1)),
        max_message_chars: args.max_message_chars,
        poll: PollConfig::new(),
        sse: SseConfig::new().keep_alive(Duration::from_secs(args.keep_alive.max(1))),
    };
    let rooms = rooms(&args, &settings).await?;
    let listener = TcpListener::bind(args.addr).await?;
    println!("chat listening on http://{}/", listener.local_addr()?);
    app::serve(
        listener,
        app::Chat::with_rooms(settings, rooms),
        shutdown_signal(),
    )
    .await;
    Ok(())
}

/// The rooms: in this process, or on the Redis (or Redis Cluster) given.
async fn rooms(args: &Args, settings: &app::Settings) -> std::io::Result<app::Rooms> {
    if args.redis.is_none() && args.redis_cluster.is_none() {
        return Ok(app::Rooms::local(settings));
    }
    #[cfg(feature = "redis")]
    {
        use longpoll::redis::Backplane;
        let builder = match (&args.redis, &args.redis_cluster) {
            (Some(url), _) => Backplane::builder(url.as_str()),
            (None, Some(seeds)) => Backplane::cluster(seeds.iter().cloned()),
            (None, None) => unreachable!("checked above"),
        };
        let backplane = builder
            .prefix(args.redis_prefix.as_str())
            .connect()
            .await
            .map_err(std::io::Error::other)?;
        println!(
            "rooms shared through Redis{}",
            if backplane.is_cluster() {
                " Cluster"
            } else {
                ""
            }
        );
        app::Rooms::shared(settings, &backplane).map_err(std::io::Error::other)
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = settings;
        Err(std::io::Error::other(
            "--redis needs the `redis` feature: cargo run --features axum,redis --example chat",
        ))
    }
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
