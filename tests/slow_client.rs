//! Clients that do not read their answers: the server stops reading from
//! them once their socket buffers are full (so they cost no more memory than
//! that), everyone else is served as usual (a change still reaches 1000 held
//! long polls), the idle timeout (not the header timeout) disconnects them,
//! and one that reads at last gets every answer, in order.
//!
//! How much a slow client slows the fan-out is measured, not asserted here:
//! `cargo run --release -p longpoll-tools --bin soak -- --fanout-only` prints
//! the ratio.

mod common;
mod raw_http;

use std::time::Duration;

use raw_http::{get, post_cart, Conn, Ending};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Generous bounds that only stop a broken test from hanging.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// A write that makes no progress for this long: the server stopped reading.
const STALLED: Duration = Duration::from_secs(1);

/// The most a slow client may push into the server before it stalls: its
/// own send buffer, the server's receive buffer (each at most 4 and 6 MiB
/// on a default Linux) and hyper's read buffer, with room to spare. Far
/// below the 256 MiB it tries to send.
const BUFFERED_AT_MOST: usize = 32 << 20;
const FLOOD: usize = 256 << 20;

/// How a flood of pipelined requests ended.
#[derive(Debug, PartialEq, Eq)]
enum Flood {
    /// No progress for [`STALLED`]: the server stopped reading.
    Stalled,
    /// All [`FLOOD`] bytes went in.
    AllWritten,
    /// The server closed the connection.
    Closed,
}

/// Pipelines `request` over and over without reading, until the server
/// stops taking bytes, [`FLOOD`] bytes are out, or the server closes the
/// connection. Returns the bytes written and how it ended.
async fn flood_without_reading(stream: &mut TcpStream, request: &str) -> (usize, Flood) {
    let chunk = request.repeat((64 * 1024) / request.len());
    let mut written = 0;
    let mut offset = 0;
    while written < FLOOD {
        let bytes = &chunk.as_bytes()[offset..];
        match tokio::time::timeout(STALLED, stream.write(bytes)).await {
            Err(_) => return (written, Flood::Stalled),
            Ok(Ok(n)) => {
                written += n;
                offset = (offset + n) % chunk.len();
            }
            Ok(Err(_)) => return (written, Flood::Closed),
        }
    }
    (written, Flood::AllWritten)
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads_stalls_at_its_buffers_and_1000_polls_still_get_the_change() {
    // Two sockets per poll in this process, the server's and the client's.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let server = common::Server::start(&[]).await;

    // Every `GET /` answers a 40-byte request with the whole page: the
    // server's writes back up long before the client's do.
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    let page = "GET / HTTP/1.1\r\nhost: 127.0.0.1\r\ncookie: session=slow\r\n\r\n";
    let (written, ended) = flood_without_reading(&mut slow, page).await;
    assert_eq!(ended, Flood::Stalled, "after {written} bytes");
    assert!(
        written < BUFFERED_AT_MOST,
        "{written} bytes went in before the server stopped reading"
    );

    let mut control = Conn::connect(server.addr).await.unwrap();
    let (_, version, epoch) = stats(&mut control).await;
    let poll = get(&format!(
        "/status?since={version}&epoch={epoch}&timeout=120"
    ));
    let polls: Vec<_> = (0..1000)
        .map(|_| {
            let poll = poll.clone();
            let addr = server.addr;
            tokio::spawn(async move {
                let mut c = Conn::connect(addr).await?;
                c.request(poll.as_bytes()).await
            })
        })
        .collect();
    let mut held = false;
    for _ in 0..3000 {
        if stats(&mut control).await.0 == 1000 {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(held, "1000 polls were never held at once");

    let r = control
        .request(post_cart("fanout", "add").as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json_u64("version"), Some(version + 1));
    for poll in polls {
        let answer = tokio::time::timeout(HANG_GUARD, poll)
            .await
            .expect("every held poll is answered")
            .unwrap()
            .expect("a whole answer");
        assert_eq!(answer.status, 200);
        assert_eq!(answer.json_u64("version"), Some(version + 1));
    }

    // The slow client is still connected, and still not served past its
    // buffers.
    let (more, ended) = flood_without_reading(&mut slow, page).await;
    assert_eq!(ended, Flood::Stalled);
    assert!(more < BUFFERED_AT_MOST, "{more} more bytes went in");
}

#[tokio::test]
async fn client_that_never_reads_is_disconnected_after_the_idle_timeout() {
    let server = common::Server::start(&["--idle-timeout", "0.5"]).await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    let page = "GET / HTTP/1.1\r\nhost: 127.0.0.1\r\ncookie: session=slow\r\n\r\n";
    let (written, ended) = flood_without_reading(&mut slow, page).await;
    // Once its answers back up, no request is in progress: idle. The
    // server closes it, maybe while the client is still writing.
    assert_ne!(ended, Flood::AllWritten, "after {written} bytes");
    if ended == Flood::Stalled {
        // Reading now drains what was sent, then finds the connection
        // closed (or reset).
        let mut conn = Conn::from_stream(slow);
        assert_eq!(conn.ending(HANG_GUARD).await, Ending::Closed);
    }
}

#[tokio::test]
async fn client_whose_answers_are_stuck_gets_the_idle_timeout_not_the_header_timeout() {
    // A request head must come within 0.3 s of the previous answer; but an
    // answer the client is not reading is not the client's next head, so
    // the connection gets the idle timeout, 2 s, from when its answers
    // stopped moving.
    let server = common::Server::start(&["--header-timeout", "0.3", "--idle-timeout", "2"]).await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    let page = "GET / HTTP/1.1\r\nhost: 127.0.0.1\r\ncookie: session=stuck\r\n\r\n";
    let chunk = page.repeat((64 * 1024) / page.len());
    let mut last_progress = std::time::Instant::now();
    let mut offset = 0;
    // Write until the server closes the connection: a stalled write then
    // fails (reset), as the server drops requests it never read.
    let closed_after = loop {
        let write = slow.write(&chunk.as_bytes()[offset..]);
        match tokio::time::timeout(HANG_GUARD, write).await {
            Err(_) => panic!("the connection stayed open for {HANG_GUARD:?}"),
            Ok(Ok(n)) => {
                offset = (offset + n) % chunk.len();
                last_progress = std::time::Instant::now();
            }
            Ok(Err(_)) => break last_progress.elapsed(),
        }
    };
    assert!(
        closed_after >= Duration::from_millis(1200),
        "closed {closed_after:?} after the answers got stuck: the header timeout, not the idle timeout"
    );
}

#[tokio::test]
async fn slow_reader_that_reads_at_last_gets_every_answer_in_order() {
    let server = common::Server::start(&[]).await;
    let mut c = Conn::connect(server.addr).await.unwrap();
    const N: usize = 5000;
    let mut pipelined = String::new();
    for i in 0..N {
        pipelined.push_str(&get(&format!("/status?since=0&epoch=1&timeout=0&n={i}")));
        pipelined.push_str(&get("/healthz"));
    }
    c.send(pipelined.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, version, epoch) = {
        let mut control = Conn::connect(server.addr).await.unwrap();
        stats(&mut control).await
    };
    for _ in 0..N {
        // `epoch=1` is not the server's: answered at once with the state.
        let r = c.response().await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json_u64("version"), Some(version));
        assert_eq!(r.json_str("epoch").as_deref(), Some(epoch.as_str()));
        let r = c.response().await.unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"ok\n"[..]));
    }
}
