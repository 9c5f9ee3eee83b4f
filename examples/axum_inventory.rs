//! The inventory long poll in axum, on the same HTTP layer as the hyper
//! demo: neither the core nor `longpoll::http` is tied to a framework.
//!
//! ```sh
//! cargo run --example axum_inventory --features axum -- 127.0.0.1:3000
//! curl -i 'http://127.0.0.1:3000/status?since=0'   # held until a change (30 s)
//! curl -i -X POST http://127.0.0.1:3000/take        # in another terminal
//! ```
//!
//! `GET /status` is the long poll (`since`, `epoch`, `timeout`,
//! `If-None-Match`; `200`/`204`/`400`/`503`), `POST /take` and `POST /put`
//! change the stock by one within `[0, 10]`.
//!
//! The long poll's handler takes a [`PollRequest`] (the `axum` feature's
//! extractor, whose rejection is the layer's own `400`) rather than the
//! request: axum drops the request before the handler waits, so a held
//! poll keeps none of its bytes.

use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use longpoll::http::{error_response, LongPoll, PollRequest};
use longpoll::{Broadcaster, Update};

const STOCK: u32 = 10;

/// The router: everything the server does, separate from binding a port.
pub(crate) fn app(stock: Broadcaster<u32>) -> Router {
    let poll = LongPoll::new(stock, |u: &Update<u32>| {
        Bytes::from(format!(
            r#"{{"inventorycount":{},"version":{},"epoch":"{}"}}"#,
            u.value(),
            u.version(),
            u.epoch()
        ))
    });
    Router::new()
        .route("/status", get(status))
        .route("/take", post(take))
        .route("/put", post(put))
        .with_state(poll)
}

/// The long poll: the extractor parses (a malformed cursor is its `400`),
/// the layer waits and answers.
async fn status(State(poll): State<LongPoll<u32>>, request: PollRequest) -> impl IntoResponse {
    poll.serve(request).await
}

async fn take(State(poll): State<LongPoll<u32>>) -> Response {
    change(&poll, |n| n.checked_sub(1), "sold out")
}

async fn put(State(poll): State<LongPoll<u32>>) -> Response {
    change(&poll, |n| (n < STOCK).then_some(n + 1), "the stock is full")
}

/// Applies `f` atomically with its publish; `refused` when `f` declines.
fn change(poll: &LongPoll<u32>, f: impl FnOnce(u32) -> Option<u32>, refused: &str) -> Response {
    let mut after = None;
    match poll.broadcaster().modify(|&n| {
        after = f(n);
        after
    }) {
        Ok(Some(version)) => {
            let body = format!(
                r#"{{"inventorycount":{},"version":{version}}}"#,
                after.expect("a publish carries what `f` returned")
            );
            ([(CONTENT_TYPE, "application/json")], body).into_response()
        }
        Ok(None) => error_response(StatusCode::CONFLICT, refused).map(Body::from),
        Err(_) => error_response(StatusCode::SERVICE_UNAVAILABLE, "shutting down").map(Body::from),
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    let stock = Broadcaster::new(STOCK);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let closing = stock.clone();
    axum::serve(listener, app(stock))
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            // Held polls answer 503 now, so the server can stop.
            closing.close();
        })
        .await
}
