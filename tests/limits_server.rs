//! The shopping cart's limits, each over a real socket: connections beyond
//! `--max-connections` are answered `503` and closed while the held ones
//! keep working; a half-sent request is closed after `--header-timeout`; an
//! idle keep-alive connection (HTTP/1 and h2c) is closed after its timeout
//! while a held long poll is not; a body over 8 KiB gets `413` without being
//! read; long polls beyond `--max-waiters` get `503` with `Retry-After`; a
//! request head over `--max-header-bytes` gets `431` or a close, never an
//! answer, and is never buffered past the limit.

mod common;
mod raw_http;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use raw_http::{get, post_cart, Conn, Ending};

/// Generous bounds that only stop a broken test from hanging; nothing here
/// asserts a speed.
const HANG_GUARD: Duration = Duration::from_secs(10);

/// `/stats` on `conn`: (waiters, version, epoch).
async fn stats(conn: &mut Conn) -> (u64, u64, String) {
    let r = conn.get("/stats").await.expect("GET /stats");
    assert_eq!(r.status, 200);
    (
        r.json_u64("waiters").unwrap(),
        r.json_u64("version").unwrap(),
        r.json_str("epoch").unwrap(),
    )
}

/// Asks `/stats` on `conn` until `n` long polls are held.
async fn until_waiters(conn: &mut Conn, n: u64) {
    for _ in 0..500 {
        if stats(conn).await.0 == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the server never held {n} long polls");
}

/// A long poll from where the server stands now, held `timeout` seconds.
fn poll_from(version: u64, epoch: &str, timeout: &str) -> String {
    get(&format!(
        "/status?since={version}&epoch={epoch}&timeout={timeout}"
    ))
}

#[tokio::test]
async fn connections_beyond_max_connections_get_503_and_close_while_held_ones_keep_working() {
    let server = common::Server::start(&["--max-connections", "4"]).await;
    let mut control = Conn::connect(server.addr).await.unwrap();
    let (_, version, epoch) = stats(&mut control).await;

    // Three long polls and the control connection: all four places taken.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = Conn::connect(server.addr).await.unwrap();
        c.send(poll_from(version, &epoch, "60").as_bytes())
            .await
            .unwrap();
        held.push(c);
    }
    until_waiters(&mut control, 3).await;

    // Every connection past the limit is answered 503 and closed, at once.
    for _ in 0..20 {
        let mut extra = Conn::connect(server.addr).await.unwrap();
        let r = tokio::time::timeout(HANG_GUARD, extra.response())
            .await
            .expect("a refused connection is answered, not left hanging")
            .expect("the 503 arrives before the close");
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), Some("5"));
        assert_eq!(r.header("connection"), Some("close"));
        assert!(r
            .json_str("error")
            .unwrap()
            .contains("too many connections"));
        assert_eq!(extra.ending(HANG_GUARD).await, Ending::Closed);
    }

    // The held connections are unharmed: the idle one still serves, and the
    // three polls get the change it makes.
    let r = control
        .request(post_cart("limits", "add").as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json_u64("version"), Some(version + 1));
    for c in &mut held {
        let r = tokio::time::timeout(HANG_GUARD, c.response())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json_u64("version"), Some(version + 1));
    }

    // A connection that ends gives its place back.
    drop(held.pop());
    let mut admitted = false;
    for _ in 0..200 {
        let mut c = Conn::connect(server.addr).await.unwrap();
        if c.get("/healthz").await.is_ok_and(|r| r.status == 200) {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        admitted,
        "the closed connection's place was never given back"
    );
}

#[tokio::test]
async fn half_sent_request_is_closed_after_the_header_timeout() {
    let server = common::Server::start(&["--header-timeout", "0.3", "--idle-timeout", "60"]).await;

    let mut half = Conn::connect(server.addr).await.unwrap();
    half.send(b"GET /status?since=0 HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ")
        .await
        .unwrap();
    let mut silent = Conn::connect(server.addr).await.unwrap();

    // Meanwhile a whole request is served.
    let mut whole = Conn::connect(server.addr).await.unwrap();
    assert_eq!(whole.get("/healthz").await.unwrap().status, 200);

    assert_eq!(half.ending(HANG_GUARD).await, Ending::Closed);
    assert_eq!(silent.ending(HANG_GUARD).await, Ending::Closed);
}

#[tokio::test]
async fn idle_http1_keep_alive_connection_is_closed_after_the_header_timeout() {
    // hyper's header-read timeout starts again after each answer, so it is
    // also the idle timeout of HTTP/1 keep-alive connections.
    let server = common::Server::start(&["--header-timeout", "0.3", "--idle-timeout", "60"]).await;
    let mut c = Conn::connect(server.addr).await.unwrap();
    assert_eq!(c.get("/healthz").await.unwrap().status, 200);
    assert_eq!(c.get("/healthz").await.unwrap().status, 200);
    assert_eq!(c.ending(HANG_GUARD).await, Ending::Closed);
}

#[tokio::test]
async fn idle_http1_connection_is_closed_after_the_idle_timeout_but_not_while_a_poll_is_held() {
    let server = common::Server::start(&["--header-timeout", "60", "--idle-timeout", "0.3"]).await;
    let mut c = Conn::connect(server.addr).await.unwrap();
    let (_, version, epoch) = stats(&mut c).await;
    // Held for 1 s, three idle timeouts: a poll in progress is not idle.
    let r = c.request(poll_from(version, &epoch, "1").as_bytes()).await;
    assert_eq!(r.unwrap().status, 204);
    assert_eq!(c.ending(HANG_GUARD).await, Ending::Closed);
}

#[tokio::test]
async fn idle_h2c_connection_is_closed_after_the_idle_timeout_but_not_while_a_poll_is_held() {
    let server = common::Server::start(&["--h2c", "--idle-timeout", "0.3"]).await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c with prior knowledge");
    let conn = tokio::spawn(conn);

    let request = |path: &str| {
        hyper::Request::get(format!("http://{}{path}", server.addr))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let stats = send.send_request(request("/stats")).await.unwrap();
    assert_eq!(stats.version(), hyper::Version::HTTP_2);
    let body = stats.into_body().collect().await.unwrap().to_bytes();
    let version = raw_http::json_u64(&body, "version").unwrap();
    let epoch = raw_http::json_str(&body, "epoch").unwrap();

    let poll = send
        .send_request(request(&format!(
            "/status?since={version}&epoch={epoch}&timeout=1"
        )))
        .await
        .expect("a held poll keeps the h2 connection open");
    assert_eq!(poll.status(), 204);

    // Idle now: the server drops the connection, and the client's
    // connection future ends.
    let ended = tokio::time::timeout(HANG_GUARD, conn).await;
    assert!(ended.is_ok(), "the idle h2 connection was never closed");
}

#[tokio::test]
async fn cart_body_over_8_kib_gets_413_without_being_sent() {
    let server = common::Server::start(&[]).await;
    let mut c = Conn::connect(server.addr).await.unwrap();
    // Declares 1 GB and sends none of it: answered from the headers alone.
    let r = tokio::time::timeout(
        HANG_GUARD,
        c.request(
            b"POST /cart HTTP/1.1\r\nhost: 127.0.0.1\r\n\
              content-type: application/x-www-form-urlencoded\r\n\
              content-length: 1000000000\r\n\r\n",
        ),
    )
    .await
    .expect("answered without waiting for the body")
    .unwrap();
    assert_eq!(r.status, 413);

    // Chunked, so no length is declared: cut off once past 8 KiB.
    let mut c = Conn::connect(server.addr).await.unwrap();
    c.send(
        b"POST /cart HTTP/1.1\r\nhost: 127.0.0.1\r\n\
          content-type: application/x-www-form-urlencoded\r\n\
          transfer-encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    let chunk = format!("1000\r\n{}\r\n", "a".repeat(0x1000));
    for _ in 0..3 {
        c.send(chunk.as_bytes()).await.unwrap();
    }
    let r = tokio::time::timeout(HANG_GUARD, c.response())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 413);

    // Exactly 8 KiB is accepted.
    let head = "session=limit8k&action=add&pad=";
    let body = format!("{head}{}", "p".repeat(8 * 1024 - head.len()));
    assert_eq!(body.len(), 8 * 1024);
    let mut c = Conn::connect(server.addr).await.unwrap();
    let r = c
        .request(
            format!(
                "POST /cart HTTP/1.1\r\nhost: 127.0.0.1\r\n\
                 content-type: application/x-www-form-urlencoded\r\n\
                 content-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn long_polls_beyond_max_waiters_get_503_with_retry_after_and_freed_places_are_reused() {
    let server = common::Server::start(&["--max-waiters", "2"]).await;
    let mut control = Conn::connect(server.addr).await.unwrap();
    let (_, version, epoch) = stats(&mut control).await;
    let poll = poll_from(version, &epoch, "60");

    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = Conn::connect(server.addr).await.unwrap();
        c.send(poll.as_bytes()).await.unwrap();
        held.push(c);
    }
    until_waiters(&mut control, 2).await;

    let mut third = Conn::connect(server.addr).await.unwrap();
    let r = third.request(poll.as_bytes()).await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("5"));
    assert!(r.json_str("error").is_some());

    // One poll goes away: its place is taken by the next.
    drop(held.pop());
    until_waiters(&mut control, 1).await;
    third.send(poll.as_bytes()).await.unwrap();
    until_waiters(&mut control, 2).await;

    // Both held polls are answered by a change.
    let r = control
        .request(post_cart("waiters", "add").as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    for c in [&mut held[0], &mut third] {
        let r = tokio::time::timeout(HANG_GUARD, c.response())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json_u64("version"), Some(version + 1));
    }
}

// ---- request heads over --max-header-bytes ---------------------------------

/// A `GET /healthz` whose head is exactly `len` bytes, padded with one header.
fn head_of(len: usize) -> Vec<u8> {
    let start = "GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-pad: ";
    let end = "\r\n\r\n";
    let pad = len - start.len() - end.len();
    format!("{start}{}{end}", "p".repeat(pad)).into_bytes()
}

/// Everything the server sends on `conn` until it closes it, or `None` if
/// it is still open after [`HANG_GUARD`].
async fn all_until_close(conn: &mut Conn) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match conn.stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(HANG_GUARD, read).await.ok()?;
    Some(all)
}

/// Sends `bytes` in pieces, ignoring errors: a server that refuses the head
/// may close the connection while the rest is still being sent.
async fn send_all_ignoring_errors(conn: &mut Conn, bytes: &[u8]) {
    for piece in bytes.chunks(1024) {
        if conn.send(piece).await.is_err() {
            return;
        }
    }
}

/// What a head over the limit may get: `431` then a close, or a close alone;
/// never another answer.
fn assert_refused(answer: &[u8], what: &str) {
    let text = String::from_utf8_lossy(answer);
    assert!(
        answer.is_empty() || text.starts_with("HTTP/1.1 431 "),
        "{what}: expected 431 or a close, got {text:?}"
    );
}

#[tokio::test]
async fn request_head_over_the_default_8_kib_gets_431_or_a_close_and_one_under_it_is_served() {
    let server = common::Server::start(&["--header-timeout", "60"]).await;

    let mut c = Conn::connect(server.addr).await.unwrap();
    let r = c.request(&head_of(8 * 1024)).await.unwrap();
    assert_eq!(r.status, 200, "a head of exactly 8 KiB is served");

    for len in [8 * 1024 + 1, 12 * 1024, 20 * 1024] {
        let mut c = Conn::connect(server.addr).await.unwrap();
        send_all_ignoring_errors(&mut c, &head_of(len)).await;
        let answer = all_until_close(&mut c)
            .await
            .unwrap_or_else(|| panic!("a {len}-byte head left the connection open"));
        assert_refused(&answer, &format!("a {len}-byte head"));
    }
}

#[tokio::test]
async fn endless_request_head_is_cut_off_at_the_limit_not_buffered_until_the_header_timeout() {
    // The header timeout is far away: only the size limit can end this.
    let server = common::Server::start(&["--header-timeout", "60"]).await;
    let mut c = Conn::connect(server.addr).await.unwrap();
    let mut head = b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-endless: ".to_vec();
    head.resize(9 * 1024, b'e');
    send_all_ignoring_errors(&mut c, &head).await;
    // 9 KiB and no end of head: the server has seen more than it buffers
    // for one head, so it refuses without waiting for the rest.
    let answer = all_until_close(&mut c)
        .await
        .expect("the server kept reading a head over its limit");
    assert_refused(&answer, "an endless head");
}

#[tokio::test]
async fn max_header_bytes_flag_sets_the_limit_and_h2c_mode_keeps_it() {
    for flags in [
        &["--max-header-bytes", "16384"][..],
        &["--max-header-bytes", "16384", "--h2c"],
    ] {
        let mut all = vec!["--header-timeout", "60"];
        all.extend_from_slice(flags);
        let server = common::Server::start(&all).await;

        let mut c = Conn::connect(server.addr).await.unwrap();
        let r = c.request(&head_of(12 * 1024)).await.unwrap();
        assert_eq!(r.status, 200, "{flags:?}: a 12 KiB head is served");

        let mut c = Conn::connect(server.addr).await.unwrap();
        send_all_ignoring_errors(&mut c, &head_of(17 * 1024)).await;
        let answer = all_until_close(&mut c)
            .await
            .unwrap_or_else(|| panic!("{flags:?}: a 17 KiB head left the connection open"));
        assert_refused(&answer, &format!("{flags:?}: a 17 KiB head"));
    }
}

#[tokio::test]
async fn h2c_request_with_headers_over_the_limit_is_refused() {
    use http_body_util::Empty;

    let server = common::Server::start(&["--h2c"]).await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c with prior knowledge");
    tokio::spawn(conn);
    let request = |pad: usize| {
        hyper::Request::get(format!("http://{}/healthz", server.addr))
            .header("x-pad", "p".repeat(pad))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let small = send.send_request(request(1024)).await.unwrap();
    assert_eq!(small.status(), 200);
    // Refused: `431`, or the stream reset.
    if let Ok(resp) = send.send_request(request(12 * 1024)).await {
        assert_eq!(resp.status(), 431, "a 12 KiB header list was served");
    }
}

#[test]
fn max_header_bytes_outside_8_to_16_kib_is_refused_at_start() {
    use clap::Parser;
    for bad in ["8191", "16385", "lots"] {
        let parsed = common::shopping_cart::Args::try_parse_from([
            "shopping_cart",
            "--max-header-bytes",
            bad,
        ]);
        assert!(parsed.is_err(), "--max-header-bytes {bad} was accepted");
    }
}
