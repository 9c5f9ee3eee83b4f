//! Shutdown of the shopping-cart example: held long polls are answered `503`
//! with `Retry-After: 1`, and the server (and the process) end within a
//! second. Also the binary's first stdout line and its flags.

mod common;

use std::time::{Duration, Instant};

use common::{client, json, post_cart, spawn_binary, stats, Server};

/// Starts `n` long polls that will be held (`since` = current version) and
/// waits until the server holds all of them.
async fn hold_polls(
    client: &reqwest::Client,
    base: &str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<reqwest::Response>> {
    let polls: Vec<_> = (0..n)
        .map(|_| {
            let req = client.get(format!("{base}/status?since=0&timeout=60"));
            tokio::spawn(async move { req.send().await.expect("a held poll is answered") })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats: serde_json::Value = client
            .get(format!("{base}/stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if stats["waiters"] == n {
            break;
        }
        assert!(Instant::now() < deadline, "polls not held: {stats}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    polls
}

async fn assert_all_503_retry_after_1(polls: Vec<tokio::task::JoinHandle<reqwest::Response>>) {
    for poll in polls {
        let resp = tokio::time::timeout(Duration::from_secs(1), poll)
            .await
            .expect("a held poll is answered within a second of shutdown")
            .unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "1");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(body["error"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_held_polls_503_and_serve_returns_within_a_second() {
    let server = Server::start(&[]).await;
    let client = client();
    let base = server.url("");
    let polls = hold_polls(&client, &base, 20).await;

    let started = Instant::now();
    let served = server.shutdown();
    assert_all_503_retry_after_1(polls).await;
    tokio::time::timeout(Duration::from_secs(1), served)
        .await
        .expect("serve returns within a second")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));

    // Nothing listens any more.
    assert!(client.get(format!("{base}/healthz")).send().await.is_err());
}

/// Sends `signal` to the child, and checks what held polls get and how fast
/// the process exits.
async fn signal_ends_the_process(signal: &str) {
    let (mut child, addr) = spawn_binary(&[]);
    let base = format!("http://{addr}");
    let client = client();
    let healthz = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), 200);
    let polls = hold_polls(&client, &base, 10).await;

    let started = Instant::now();
    let status = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    assert_all_503_retry_after_1(polls).await;

    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        if started.elapsed() > Duration::from_secs(3) {
            child.kill().unwrap();
            panic!("the process did not exit within 3 s of {signal}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let took = started.elapsed();
    assert!(exit.success(), "exit status {exit}");
    assert!(took < Duration::from_secs(1), "exit took {took:?}");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_held_polls_503_and_the_process_exits_within_a_second() {
    signal_ends_the_process("-TERM").await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_answers_held_polls_503_and_the_process_exits_within_a_second() {
    signal_ends_the_process("-INT").await;
}

#[tokio::test]
async fn binary_prints_its_address_first_and_obeys_its_flags() {
    let (mut child, addr) = spawn_binary(&["--inventory", "3", "--poll-timeout", "0.2"]);
    let base = format!("http://{addr}");
    let client = client();

    // --poll-timeout: a poll without `timeout` is held 0.2 s, then 204.
    let started = Instant::now();
    let resp = client
        .get(format!("{base}/status?since=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(started.elapsed() >= Duration::from_millis(200));

    // --inventory: three units, then sold out.
    for (i, session) in ["a", "b", "c"].into_iter().enumerate() {
        let resp = client
            .post(format!("{base}/cart"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("session={session}&action=add"))
            .send()
            .await
            .unwrap();
        let body = json(resp, 200).await;
        assert_eq!(body["inventorycount"], 2 - i);
    }
    let resp = client
        .post(format!("{base}/cart"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("session=d&action=add")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);

    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn binary_refuses_a_poll_timeout_over_300_seconds() {
    let out = std::process::Command::new(common::example_binary())
        .args(["--addr", "127.0.0.1:0", "--poll-timeout", "301"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing listened");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("0 to 300"), "{stderr}");
}

#[tokio::test]
async fn in_process_server_is_the_same_app() {
    // The in-process server the other tests use answers like the binary.
    let server = Server::start(&["--inventory", "1"]).await;
    let client = client();
    let body = json(post_cart(&client, &server, "s", "add").await, 200).await;
    assert_eq!(body["inventorycount"], 0);
    assert_eq!(stats(&client, &server).await["version"], 1);
    server.shutdown().await.unwrap();
}
