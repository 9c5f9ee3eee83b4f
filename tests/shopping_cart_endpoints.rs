//! Every endpoint and status of the shopping-cart contract, over a real
//! socket: the page and its cookie, the long poll's cursor cases, the cart's
//! answers and refusals, `/stats`, `/healthz`, 404, h2c, the header-read
//! timeout, and the request shapes of the original jQuery client.

mod common;

use std::time::{Duration, Instant};

use common::{client, json, post_cart, stats, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FORM: &str = "application/x-www-form-urlencoded";

async fn get(client: &reqwest::Client, server: &Server, path: &str) -> reqwest::Response {
    client.get(server.url(path)).send().await.unwrap()
}

/// `GET path` with an `If-None-Match` header.
async fn get_if_none_match(
    client: &reqwest::Client,
    server: &Server,
    path: &str,
    etag: &str,
) -> reqwest::Response {
    client
        .get(server.url(path))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap()
}

async fn epoch(client: &reqwest::Client, server: &Server) -> String {
    stats(client, server).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Waits until the server holds `n` long polls.
async fn until_waiters(client: &reqwest::Client, server: &Server, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats(client, server).await["waiters"] != n {
        assert!(Instant::now() < deadline, "the server never held {n} polls");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts a long poll in the background.
fn spawn_poll(
    client: &reqwest::Client,
    server: &Server,
    path: &str,
) -> tokio::task::JoinHandle<reqwest::Response> {
    let req = client.get(server.url(path));
    tokio::spawn(async move { req.send().await.unwrap() })
}

// ---- GET / ---------------------------------------------------------------

fn render(
    session: &str,
    count: u64,
    inventory: u64,
    version: u64,
    epoch: &str,
    in_cart: bool,
) -> String {
    include_str!("../examples/shopping_cart/index.html")
        .replace("{{SESSION}}", session)
        .replace("{{COUNT}}", &count.to_string())
        .replace("{{INVENTORY}}", &inventory.to_string())
        .replace("{{VERSION}}", &version.to_string())
        .replace("{{EPOCH}}", epoch)
        .replace("{{IN_CART}}", if in_cart { "true" } else { "false" })
}

fn cookie_session(resp: &reqwest::Response) -> String {
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    let (pair, attrs) = cookie.split_once("; ").unwrap();
    assert_eq!(attrs, "Path=/; SameSite=Lax; HttpOnly");
    let id = pair.strip_prefix("session=").unwrap();
    assert!(
        id.len() >= 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    id.to_owned()
}

#[tokio::test]
async fn page_gives_a_new_visitor_a_session_cookie_and_the_current_state() {
    let server = Server::start(&["--inventory", "7"]).await;
    let client = client();
    let resp = get(&client, &server, "/").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let session = cookie_session(&resp);
    let body = resp.text().await.unwrap();
    let epoch = epoch(&client, &server).await;
    assert_eq!(body, render(&session, 7, 7, 0, &epoch, false));
    for id in ["id=\"count\"", "id=\"add-button\"", "id=\"remove-button\""] {
        assert!(body.contains(id), "the page lacks {id}");
    }
    assert!(!body.contains("{{"), "a placeholder was left unfilled");

    // Two visitors, two sessions.
    let other = cookie_session(&get(&client, &server, "/").await);
    assert_ne!(session, other);
}

#[tokio::test]
async fn page_keeps_a_valid_session_and_shows_its_cart_after_a_reload() {
    let server = Server::start(&[]).await;
    let client = client();
    let session = cookie_session(&get(&client, &server, "/").await);
    json(post_cart(&client, &server, &session, "add").await, 200).await;

    let resp = client
        .get(server.url("/"))
        .header("cookie", format!("theme=dark; session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().get("set-cookie").is_none(),
        "a valid session is kept"
    );
    let body = resp.text().await.unwrap();
    let epoch = epoch(&client, &server).await;
    assert_eq!(body, render(&session, 9, 10, 1, &epoch, true));
}

#[tokio::test]
async fn page_replaces_a_session_cookie_that_is_not_an_id() {
    let server = Server::start(&[]).await;
    let client = client();
    for bad in ["\"><script>alert(1)</script>", "", &"a".repeat(129)] {
        let resp = client
            .get(server.url("/"))
            .header("cookie", format!("session={bad}"))
            .send()
            .await
            .unwrap();
        let fresh = cookie_session(&resp);
        let body = resp.text().await.unwrap();
        assert!(
            !body.contains("<script>alert"),
            "the cookie reached the page"
        );
        assert!(body.contains(&fresh));
    }
}

// ---- GET /status: the cursor cases ----------------------------------------

#[tokio::test]
async fn status_without_cursor_waits_for_the_next_change() {
    let server = Server::start(&[]).await;
    let client = client();
    let poll = spawn_poll(&client, &server, "/status?timeout=10");
    until_waiters(&client, &server, 1).await;
    json(post_cart(&client, &server, "a", "add").await, 200).await;

    let resp = poll.await.unwrap();
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    let body = json(resp, 200).await;
    assert_eq!(body["inventorycount"], 9);
    assert_eq!(body["version"], 1);
    assert_eq!(etag, format!("\"{}-1\"", body["epoch"].as_str().unwrap()));
}

#[tokio::test]
async fn status_without_cursor_gets_200_with_the_current_state_on_timeout() {
    let server = Server::start(&[]).await;
    let client = client();
    let resp = get(&client, &server, "/status?timeout=0.2").await;
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body = json(resp, 200).await;
    assert_eq!(body["inventorycount"], 10);
    assert_eq!(body["version"], 0);
}

#[tokio::test]
async fn status_at_the_current_version_times_out_with_204() {
    let server = Server::start(&[]).await;
    let client = client();
    let started = Instant::now();
    let resp = get(&client, &server, "/status?since=0&timeout=0.3").await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(resp.status(), 204);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert!(resp.bytes().await.unwrap().is_empty());

    // The same with the right epoch, and with timeout=0 (no wait at all).
    let epoch = epoch(&client, &server).await;
    let resp = get(
        &client,
        &server,
        &format!("/status?since=0&epoch={epoch}&timeout=0"),
    )
    .await;
    assert_eq!(resp.status(), 204);
    assert_eq!(stats(&client, &server).await["waiters"], 0);
}

#[tokio::test]
async fn status_at_the_current_version_is_answered_by_the_next_change() {
    let server = Server::start(&[]).await;
    let client = client();
    let epoch = epoch(&client, &server).await;
    let poll = spawn_poll(
        &client,
        &server,
        &format!("/status?since=0&epoch={epoch}&timeout=10"),
    );
    until_waiters(&client, &server, 1).await;
    json(post_cart(&client, &server, "a", "add").await, 200).await;
    let body = json(poll.await.unwrap(), 200).await;
    assert_eq!(body["version"], 1);
    assert_eq!(body["inventorycount"], 9);
}

#[tokio::test]
async fn status_behind_is_answered_at_once_with_the_current_state() {
    let server = Server::start(&[]).await;
    let client = client();
    for s in ["a", "b"] {
        json(post_cart(&client, &server, s, "add").await, 200).await;
    }
    let started = Instant::now();
    let body = json(
        get(&client, &server, "/status?since=0&timeout=30").await,
        200,
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(body["version"], 2);
    assert_eq!(body["inventorycount"], 8);
    let body = json(
        get(&client, &server, "/status?since=1&timeout=30").await,
        200,
    )
    .await;
    assert_eq!(body["version"], 2);
}

#[tokio::test]
async fn status_ahead_is_answered_at_once() {
    let server = Server::start(&[]).await;
    let client = client();
    let body = json(
        get(&client, &server, "/status?since=99&timeout=30").await,
        200,
    )
    .await;
    assert_eq!(body["version"], 0);
    assert_eq!(body["inventorycount"], 10);
}

#[tokio::test]
async fn status_from_another_epoch_is_answered_at_once_whatever_since_says() {
    let server = Server::start(&[]).await;
    let client = client();
    let ours = epoch(&client, &server).await;
    let other = if ours == "0000000000000001" {
        "0000000000000002"
    } else {
        "0000000000000001"
    };
    // Another hex epoch, and epochs of any other form (another deployment,
    // a made-up string, zero): all foreign, never a 400.
    for query in [
        format!("since=0&epoch={other}"),
        format!("epoch={other}"),
        "since=0&epoch=xyz".to_owned(),
        "since=0&epoch=0".to_owned(),
        "epoch=00000000000000001".to_owned(),
    ] {
        let body = json(
            get(&client, &server, &format!("/status?{query}&timeout=30")).await,
            200,
        )
        .await;
        assert_eq!(body["version"], 0);
        assert_eq!(body["epoch"], ours.as_str());
    }
}

#[tokio::test]
async fn if_none_match_with_the_current_etag_waits_and_with_an_old_one_answers_at_once() {
    let server = Server::start(&[]).await;
    let client = client();
    let current = get(&client, &server, "/status?timeout=0").await;
    let etag0 = current.headers()["etag"].to_str().unwrap().to_owned();

    let resp = get_if_none_match(&client, &server, "/status?timeout=0.2", &etag0).await;
    assert_eq!(resp.status(), 204, "the current ETag waits, then times out");

    json(post_cart(&client, &server, "a", "add").await, 200).await;
    let resp = get_if_none_match(&client, &server, "/status?timeout=30", &etag0).await;
    let etag1 = resp.headers()["etag"].to_str().unwrap().to_owned();
    assert_ne!(etag1, etag0);
    assert_eq!(json(resp, 200).await["version"], 1);

    // A weak form of the current tag waits too.
    let resp = get_if_none_match(
        &client,
        &server,
        "/status?timeout=0.1",
        &format!("W/{etag1}"),
    )
    .await;
    assert_eq!(resp.status(), 204);
}

#[tokio::test]
async fn query_since_wins_over_if_none_match() {
    let server = Server::start(&[]).await;
    let client = client();
    let etag0 = get(&client, &server, "/status?timeout=0").await.headers()["etag"]
        .to_str()
        .unwrap()
        .to_owned();
    json(post_cart(&client, &server, "a", "add").await, 200).await;
    // The header says "behind", the query says "current": the query wins.
    let resp = get_if_none_match(&client, &server, "/status?since=1&timeout=0.1", &etag0).await;
    assert_eq!(resp.status(), 204);
}

#[tokio::test]
async fn malformed_cursor_or_timeout_gets_400_with_a_json_error() {
    let server = Server::start(&[]).await;
    let client = client();
    let cases: &[(&str, Option<&str>, &str)] = &[
        ("since=abc", None, "since"),
        ("since=-1", None, "since"),
        ("since=", None, "since"),
        ("since=18446744073709551616", None, "since"),
        ("since=1.5", None, "since"),
        ("since=1&since=2", None, "since"),
        // A foreign epoch is answered at once (spec v1.1); only an absurd
        // length is malformed.
        (&*format!("epoch={}", "e".repeat(65)), None, "epoch"),
        ("timeout=abc", None, "timeout"),
        ("timeout=-1", None, "timeout"),
        ("timeout=300.5", None, "timeout"),
        ("timeout=1e2", None, "timeout"),
        ("timeout=%ZZ", None, "timeout"),
    ];
    for (query, inm, names) in cases {
        let mut req = client.get(server.url(&format!("/status?{query}")));
        if let Some(inm) = inm {
            req = req.header("if-none-match", *inm);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(
            resp.headers()["content-type"],
            "application/json",
            "{query}"
        );
        let body = json(resp, 400).await;
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(names), "{query}: {error}");
    }
    // The biggest accepted values are fine.
    let resp = get(
        &client,
        &server,
        "/status?since=18446744073709551615&timeout=300",
    )
    .await;
    assert_eq!(resp.status(), 200, "ahead: answered at once");
}

#[tokio::test]
async fn unknown_parameters_are_ignored_and_names_are_percent_decoded() {
    let server = Server::start(&[]).await;
    let client = client();
    let resp = get(
        &client,
        &server,
        "/status?%73ince=0&t%69meout=0.1&x=%ZZ&_=1712345&flag",
    )
    .await;
    assert_eq!(
        resp.status(),
        204,
        "since=0 and timeout=0.1 were understood"
    );
}

// ---- POST /cart -----------------------------------------------------------

#[tokio::test]
async fn cart_add_and_remove_each_bump_the_version_by_one() {
    let server = Server::start(&[]).await;
    let client = client();
    let resp = post_cart(&client, &server, "alice", "add").await;
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body = json(resp, 200).await;
    let epoch = epoch(&client, &server).await;
    assert_eq!(
        body,
        serde_json::json!({"inventorycount": 9, "version": 1, "epoch": epoch, "in_cart": true})
    );
    let body = json(post_cart(&client, &server, "alice", "remove").await, 200).await;
    assert_eq!(
        body,
        serde_json::json!({"inventorycount": 10, "version": 2, "epoch": epoch, "in_cart": false})
    );
}

#[tokio::test]
async fn cart_no_ops_answer_200_and_keep_the_version() {
    let server = Server::start(&[]).await;
    let client = client();
    let body = json(post_cart(&client, &server, "bob", "remove").await, 200).await;
    assert_eq!(
        (body["version"].as_u64(), body["in_cart"].as_bool()),
        (Some(0), Some(false))
    );
    json(post_cart(&client, &server, "bob", "add").await, 200).await;
    for _ in 0..3 {
        let body = json(post_cart(&client, &server, "bob", "add").await, 200).await;
        assert_eq!(body["version"], 1);
        assert_eq!(body["inventorycount"], 9);
        assert_eq!(body["in_cart"], true);
    }
    // No-ops woke nobody: a poll at version 1 is still held.
    let resp = get(&client, &server, "/status?since=1&timeout=0.1").await;
    assert_eq!(resp.status(), 204);
    assert_eq!(stats(&client, &server).await["version"], 1);
}

#[tokio::test]
async fn cart_add_when_sold_out_is_409_and_changes_nothing() {
    let server = Server::start(&["--inventory", "1"]).await;
    let client = client();
    json(post_cart(&client, &server, "first", "add").await, 200).await;
    let resp = post_cart(&client, &server, "second", "add").await;
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body = json(resp, 409).await;
    assert_eq!(body["error"], "sold out");
    assert_eq!(body["inventorycount"], 0);
    assert_eq!(body["version"], 1);
    assert_eq!(body["in_cart"], false);
    // The holder can still remove, and then the other can add.
    json(post_cart(&client, &server, "first", "remove").await, 200).await;
    let body = json(post_cart(&client, &server, "second", "add").await, 200).await;
    assert_eq!(
        (body["inventorycount"].as_u64(), body["version"].as_u64()),
        (Some(0), Some(3))
    );
}

#[tokio::test]
async fn cart_refuses_malformed_forms_with_400() {
    let server = Server::start(&[]).await;
    let client = client();
    let long = format!("session={}&action=add", "s".repeat(129));
    let cases = [
        ("action=add", "session"),
        ("session=&action=add", "session"),
        (long.as_str(), "128"),
        ("session=a%01b&action=add", "control"),
        ("session=a", "action"),
        ("session=a&action=buy", "action"),
        ("session=a&action=%ZZ", "form"),
        ("session=%FF&action=add", "form"),
    ];
    for (body, mentions) in cases {
        let resp = client
            .post(server.url("/cart"))
            .header("content-type", FORM)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let json = json(resp, 400).await;
        assert!(
            json["error"].as_str().unwrap().contains(mentions),
            "{body}: {json}"
        );
    }
    // 128 bytes and any printable characters are a fine session.
    let ok = format!("session={}&action=add", "%C3%A9".repeat(64));
    let resp = client
        .post(server.url("/cart"))
        .header("content-type", FORM)
        .body(ok)
        .send()
        .await
        .unwrap();
    assert_eq!(json(resp, 200).await["in_cart"], true);
    assert_eq!(
        stats(&client, &server).await["version"],
        1,
        "only the valid post changed anything"
    );
}

#[tokio::test]
async fn cart_other_methods_get_405_with_allow_post() {
    let server = Server::start(&[]).await;
    let client = client();
    for method in [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let resp = client
            .request(method.clone(), server.url("/cart"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{method}");
        assert_eq!(resp.headers()["allow"], "POST");
    }
    // And the read-only endpoints refuse writes.
    for (path, allow) in [
        ("/status", "GET"),
        ("/", "GET, HEAD"),
        ("/stats", "GET, HEAD"),
        ("/healthz", "GET, HEAD"),
    ] {
        let resp = client.post(server.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 405, "{path}");
        assert_eq!(resp.headers()["allow"], allow);
    }
}

#[tokio::test]
async fn cart_body_over_8_kib_is_413() {
    let server = Server::start(&[]).await;
    let client = client();
    // Declared with Content-Length.
    let body = format!("session=a&action=add&pad={}", "x".repeat(8 * 1024));
    let resp = client
        .post(server.url("/cart"))
        .header("content-type", FORM)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);

    // Chunked, so only reading finds out.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let chunk = "x".repeat(4096);
    let mut req = format!(
        "POST /cart HTTP/1.1\r\nhost: x\r\ncontent-type: {FORM}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    for _ in 0..3 {
        req.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    req.push_str("0\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .expect("answered")
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(stats(&client, &server).await["version"], 0);

    // Exactly 8 KiB is accepted.
    let body = "session=a&action=add&pad=";
    let body = format!("{body}{}", "x".repeat(8 * 1024 - body.len()));
    let resp = client
        .post(server.url("/cart"))
        .header("content-type", FORM)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn cart_other_content_types_are_415() {
    let server = Server::start(&[]).await;
    let client = client();
    for ct in [
        Some("application/json"),
        Some("text/plain"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut req = client
            .post(server.url("/cart"))
            .body("session=a&action=add");
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 415, "{ct:?}");
    }
    // Parameters and case do not matter.
    let resp = client
        .post(server.url("/cart"))
        .header(
            "content-type",
            "Application/X-WWW-Form-URLEncoded ; charset=utf-8",
        )
        .body("session=a&action=add")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

// ---- /stats, /healthz, 404 -------------------------------------------------

#[tokio::test]
async fn stats_counts_held_polls_and_reports_version_and_epoch() {
    let server = Server::start(&[]).await;
    let client = client();
    let s = stats(&client, &server).await;
    assert_eq!(s["waiters"], 0);
    assert_eq!(s["version"], 0);
    let epoch = s["epoch"].as_str().unwrap();
    assert_eq!(epoch.len(), 16);
    let polls: Vec<_> = (0..3)
        .map(|_| spawn_poll(&client, &server, "/status?since=0&timeout=10"))
        .collect();
    until_waiters(&client, &server, 3).await;
    json(post_cart(&client, &server, "a", "add").await, 200).await;
    for poll in polls {
        assert_eq!(json(poll.await.unwrap(), 200).await["version"], 1);
    }
    let s = stats(&client, &server).await;
    assert_eq!(
        (s["waiters"].as_u64(), s["version"].as_u64()),
        (Some(0), Some(1))
    );
}

#[tokio::test]
async fn healthz_is_200_and_other_paths_are_404() {
    let server = Server::start(&[]).await;
    let client = client();
    assert_eq!(get(&client, &server, "/healthz").await.status(), 200);
    for path in ["/nope", "/status/", "/cart/x", "/index.html"] {
        assert_eq!(get(&client, &server, path).await.status(), 404, "{path}");
    }
}

// ---- the original jQuery client ---------------------------------------------

#[tokio::test]
async fn jquery_client_request_shapes_keep_working() {
    let server = Server::start(&["--poll-timeout", "0.3"]).await;
    let client = client();
    // `jQuery.getJSON('status', {session: ...})`: no cursor, an extra
    // parameter, jQuery's Accept header. Held until a change ...
    let getjson = |client: &reqwest::Client| {
        client
            .get(server.url("/status?session=4f2a-9c"))
            .header("accept", "application/json, text/javascript, */*; q=0.01")
            .header("x-requested-with", "XMLHttpRequest")
            .send()
    };
    let poll = tokio::spawn(getjson(&client));
    until_waiters(&client, &server, 1).await;
    // ... `jQuery.ajax({type: 'POST', data: {session, action}, dataType: 'json'})`.
    let resp = client
        .post(server.url("/cart"))
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=UTF-8",
        )
        .header("accept", "application/json, text/javascript, */*; q=0.01")
        .header("x-requested-with", "XMLHttpRequest")
        .body("session=4f2a-9c&action=add")
        .send()
        .await
        .unwrap();
    assert_eq!(json(resp, 200).await["in_cart"], true);
    let body = json(poll.await.unwrap().unwrap(), 200).await;
    assert_eq!(body["inventorycount"], 9);

    // A quiet period: still JSON the client can read, never a 204.
    let body = json(getjson(&client).await.unwrap(), 200).await;
    assert_eq!(body["inventorycount"], 9);
}

// ---- transport: h2c and the header-read timeout ----------------------------

#[tokio::test]
async fn h2c_with_prior_knowledge_is_served_with_the_h2c_flag() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let server = Server::start(&["--h2c"]).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("an h2c handshake");
    tokio::spawn(conn);
    let req = http::Request::get(server.url("/status?since=5&timeout=1"))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["version"], 0);
}

#[tokio::test]
async fn without_the_h2c_flag_an_http2_preface_gets_no_http2_answer() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let server = Server::start(&[]).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let handshake = tokio::time::timeout(
        Duration::from_secs(10),
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)),
    )
    .await
    .expect("the handshake ends");
    // hyper's client sends its preface and settings without waiting, so the
    // handshake itself may succeed; the first request must not.
    if let Ok((mut send, conn)) = handshake {
        tokio::spawn(conn);
        let req = http::Request::get(server.url("/healthz"))
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
            .await
            .expect("the request ends");
        assert!(
            answer.is_err(),
            "an HTTP/1.1-only server answered h2: {answer:?}"
        );
    }
    // HTTP/1.1 is served as ever.
    let resp = client().get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn half_sent_request_is_dropped_after_the_header_timeout() {
    let server = Server::start(&["--header-timeout", "0.3"]).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf))
        .await
        .expect("the server closes a half-sent request")
        .ok();
    assert!(started.elapsed() >= Duration::from_millis(250));
    let answer = String::from_utf8_lossy(&buf);
    assert!(!answer.contains("200 OK"), "{answer}");

    // A complete request on a fresh connection is still served.
    let client = client();
    assert_eq!(get(&client, &server, "/healthz").await.status(), 200);
}
