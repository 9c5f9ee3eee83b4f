//! The chat page in a real browser: Debian's headless `chromium`, driven
//! over WebDriver by `chromedriver`.
//!
//! Two pages open the same room, one receiving by long poll, the other by
//! server-sent events. A message sent from either shows in both, written as
//! text (markup in it stays text). Then the network between the browser and
//! the server is cut (a loopback proxy in the test drops every connection
//! and refuses new ones) while messages are posted: once it is back, each
//! page shows every message it missed exactly once, in order. Cut again
//! while more messages go by than the room keeps: each page says it missed
//! some and shows what the room kept.
//!
//! With the `redis` feature, two pages on two chat instances that share
//! their rooms through Redis see each other's messages, also after one of
//! the instances restarts (and the messages posted while it was down).
//!
//! Without `/usr/bin/chromium` and `/usr/bin/chromedriver`, or without the
//! `http` feature, the test prints `skipped: ...` and passes, unless
//! `LONGPOLL_REQUIRE_BROWSER=1` is set, as in CI. With
//! `LONGPOLL_SCREENSHOT_DIR=DIR` it saves both pages as `DIR/chat-poll.png`
//! and `DIR/chat-sse.png`.
//!
//! ```sh
//! LONGPOLL_REQUIRE_BROWSER=1 cargo test --features http --test browser_chat -- --nocapture
//! ```

#![allow(missing_docs)]

// The WebDriver client; each browser test uses part of it.
#[allow(dead_code)]
#[path = "common/webdriver.rs"]
mod webdriver;
use webdriver::skip;

#[cfg(not(feature = "axum"))]
#[test]
fn chat_pages_by_poll_and_sse_see_every_message_once_across_network_cuts() {
    skip("the chat example needs the `axum` feature (cargo test --features axum)");
}

#[cfg(feature = "axum")]
#[path = "../examples/chat/app.rs"]
mod app;

#[cfg(feature = "axum")]
#[path = "common/cut_proxy.rs"]
mod cut_proxy;

#[cfg(all(feature = "axum", feature = "redis"))]
#[path = "redis_common/mod.rs"]
mod redis_common;

#[cfg(feature = "axum")]
mod in_chromium {
    use std::net::SocketAddr;
    use std::time::Duration;

    use serde_json::json;
    use tokio::net::TcpListener;

    use crate::app;
    use crate::cut_proxy::Proxy;
    use crate::webdriver::{self, wait_until, ChromeDriver, Session};

    /// Long enough for a change to reach a page over loopback many times.
    const UI_TIMEOUT: Duration = Duration::from_secs(10);
    /// The pages' client backs off up to 30 s, but after a 2 s cut waits
    /// a few seconds at most.
    const RECONNECT_TIMEOUT: Duration = Duration::from_secs(25);
    /// How long the network stays cut.
    const CUT: Duration = Duration::from_secs(2);
    const HISTORY: usize = 5;
    const ROOM: &str = "e2e";

    /// `[name, text]` of every message a page shows, in order.
    async fn shown(page: &Session<'_>) -> webdriver::Result<Vec<(String, String)>> {
        let v = page
            .execute(
                "return Array.from(document.querySelectorAll('#messages li'))
                     .map(li => [li.querySelector('.name').textContent,
                                 li.querySelector('.text').textContent]);",
                json!([]),
            )
            .await?;
        Ok(v.as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p[0].as_str().unwrap().to_string(),
                    p[1].as_str().unwrap().to_string(),
                )
            })
            .collect())
    }

    fn texts(list: &[(String, String)]) -> Vec<String> {
        list.iter().map(|(_, t)| t.clone()).collect()
    }

    /// Waits until `page` shows exactly `want` (texts, in order).
    async fn wait_for_texts(page: &Session<'_>, what: &str, want: &[String], timeout: Duration) {
        wait_until(what, timeout, || async {
            let got = texts(&shown(page).await?);
            Ok(if got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }

    async fn wait_live(page: &Session<'_>, what: &str, timeout: Duration) {
        wait_until(what, timeout, || async {
            let status = page.text("#status").await?;
            Ok(if status == "live" {
                Ok(())
            } else {
                Err(status)
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Types into the page's form and clicks Send.
    async fn send(page: &Session<'_>, name: &str, text: &str) {
        page.execute(
            "document.getElementById('name').value = arguments[0];
             document.getElementById('text').value = arguments[1];",
            json!([name, text]),
        )
        .await
        .unwrap();
        page.click("#send-button").await.unwrap();
        wait_until(
            "the text box to empty after sending",
            UI_TIMEOUT,
            || async {
                let v = page
                    .execute("return document.getElementById('text').value;", json!([]))
                    .await?;
                Ok(if v == "" { Ok(()) } else { Err(v.to_string()) })
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Posts straight to the server (not through the proxy).
    async fn post(server: SocketAddr, text: &str) {
        let resp = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("http://{server}/rooms/{ROOM}/messages"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("name=server&text={text}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chat_pages_by_poll_and_sse_see_every_message_once_across_network_cuts() {
        if let Err(reason) = webdriver::browser_available() {
            crate::skip(&reason);
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let settings = app::Settings {
            history: HISTORY,
            ..app::Settings::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(app::serve(listener, app::Chat::new(settings), async {
            let _ = stopped.await;
        }));
        let proxy = Proxy::start(server).await;

        let driver = ChromeDriver::start().expect("chromedriver starts");
        let poll_page = driver.new_session(600, 700).await.expect("browser A");
        let sse_page = driver.new_session(600, 700).await.expect("browser B");
        let base = format!("http://{}/?room={ROOM}", proxy.addr);
        poll_page
            .goto(&format!("{base}&transport=poll"))
            .await
            .unwrap();
        sse_page
            .goto(&format!("{base}&transport=sse"))
            .await
            .unwrap();
        wait_live(&poll_page, "the long-poll page to be live", UI_TIMEOUT).await;
        wait_live(&sse_page, "the SSE page to be live", UI_TIMEOUT).await;
        assert_eq!(
            sse_page.text("#transport").await.unwrap(),
            "server-sent events"
        );

        // A message from either page shows in both; markup stays text.
        let xss = "<img src=x onerror=\"window.pwned=1\"> <b>bold?</b>";
        send(&poll_page, "alice", xss).await;
        send(&sse_page, "bob", "hi alice").await;
        let mut all: Vec<String> = vec![xss.into(), "hi alice".into()];
        for (page, what) in [(&poll_page, "poll page"), (&sse_page, "sse page")] {
            wait_for_texts(
                page,
                &format!("both messages on the {what}"),
                &all,
                UI_TIMEOUT,
            )
            .await;
            let list = shown(page).await.unwrap();
            assert_eq!(list[0].0, "alice");
            assert_eq!(list[1].0, "bob");
            let injected = page
                .execute(
                    "return [typeof window.pwned, document.querySelectorAll('#messages img, #messages b').length];",
                    json!([]),
                )
                .await
                .unwrap();
            assert_eq!(
                injected,
                json!(["undefined", 0]),
                "markup ran on the {what}"
            );
        }
        if let Some(dir) = std::env::var_os("LONGPOLL_SCREENSHOT_DIR") {
            let dir = std::path::PathBuf::from(dir);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, page) in [("chat-poll.png", &poll_page), ("chat-sse.png", &sse_page)] {
                std::fs::write(dir.join(name), page.screenshot_png().await.unwrap()).unwrap();
            }
        }

        // Cut within history: 3 messages go by (the room keeps 5).
        proxy.cut();
        for i in 1..=3 {
            let text = format!("missed-{i}");
            post(server, &text).await;
            all.push(text);
        }
        tokio::time::sleep(CUT).await;
        proxy.restore();
        for (page, what) in [(&poll_page, "poll page"), (&sse_page, "sse page")] {
            wait_for_texts(
                page,
                &format!("every missed message once, in order, on the {what}"),
                &all,
                RECONNECT_TIMEOUT,
            )
            .await;
            let notice = page.displayed("#notice").await.unwrap();
            assert!(!notice, "no 'missed' notice within history on the {what}");
        }
        // Stable: nothing arrives twice later.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(texts(&shown(&poll_page).await.unwrap()), all);
        assert_eq!(texts(&shown(&sse_page).await.unwrap()), all);

        // Cut beyond history: 8 messages go by, the room keeps the last 5.
        proxy.cut();
        let mut beyond = Vec::new();
        for i in 1..=8 {
            let text = format!("beyond-{i}");
            post(server, &text).await;
            beyond.push(text);
        }
        tokio::time::sleep(CUT).await;
        proxy.restore();
        let kept = beyond[3..].to_vec();
        for (page, what) in [(&poll_page, "poll page"), (&sse_page, "sse page")] {
            wait_for_texts(
                page,
                &format!("the kept messages on the {what}"),
                &kept,
                RECONNECT_TIMEOUT,
            )
            .await;
            let notice = page.text("#notice").await.unwrap();
            assert_eq!(
                notice, "You missed 3 message(s) while away; showing the ones the room kept.",
                "on the {what}"
            );
        }

        // And the pages are live again: a new message shows in both.
        send(&sse_page, "bob", "after the cut").await;
        let mut after = kept.clone();
        after.push("after the cut".into());
        wait_for_texts(
            &poll_page,
            "the new message on the poll page",
            &after,
            UI_TIMEOUT,
        )
        .await;
        wait_for_texts(
            &sse_page,
            "the new message on the sse page",
            &after,
            UI_TIMEOUT,
        )
        .await;

        poll_page.quit().await.unwrap();
        sse_page.quit().await.unwrap();
        drop(driver);
        drop(proxy);
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(5), serving)
            .await
            .expect("the server stops")
            .unwrap();
    }

    /// A chat instance on the shared Redis, serving on `listener` until
    /// `stop` fires.
    #[cfg(feature = "redis")]
    async fn shared_instance(
        listener: TcpListener,
        url: &str,
        prefix: &str,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let settings = app::Settings {
            history: HISTORY,
            ..app::Settings::default()
        };
        let backplane = longpoll::redis::Backplane::builder(url)
            .prefix(prefix)
            .connect()
            .await
            .expect("Redis answers");
        let rooms = app::Rooms::shared(&settings, &backplane).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(app::serve(
            listener,
            app::Chat::with_rooms(settings, rooms),
            async {
                let _ = stopped.await;
            },
        ));
        (stop, serving)
    }

    #[cfg(feature = "redis")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pages_on_two_instances_see_each_others_messages_also_after_a_restart() {
        if let Err(reason) = webdriver::browser_available() {
            crate::skip(&reason);
            return;
        }
        let Some(url) = crate::redis_common::shared_redis("chat pages on two instances") else {
            return;
        };
        let prefix = crate::redis_common::unique_prefix("browser-chat");
        let (la, lb) = (
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        );
        let (addr_a, addr_b) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
        let (stop_a, serving_a) = shared_instance(la, &url, &prefix).await;
        let (stop_b, serving_b) = shared_instance(lb, &url, &prefix).await;

        let driver = ChromeDriver::start().expect("chromedriver starts");
        let page_a = driver.new_session(600, 700).await.expect("browser A");
        let page_b = driver.new_session(600, 700).await.expect("browser B");
        page_a
            .goto(&format!("http://{addr_a}/?room={ROOM}&transport=poll"))
            .await
            .unwrap();
        page_b
            .goto(&format!("http://{addr_b}/?room={ROOM}&transport=sse"))
            .await
            .unwrap();
        wait_live(&page_a, "the page on instance A to be live", UI_TIMEOUT).await;
        wait_live(&page_b, "the page on instance B to be live", UI_TIMEOUT).await;

        // Across instances, both ways.
        send(&page_a, "alice", "from A").await;
        send(&page_b, "bob", "from B").await;
        let mut all: Vec<String> = vec!["from A".into(), "from B".into()];
        wait_for_texts(&page_a, "both messages on page A", &all, UI_TIMEOUT).await;
        wait_for_texts(&page_b, "both messages on page B", &all, UI_TIMEOUT).await;
        assert!(
            !page_a.displayed("#notice").await.unwrap(),
            "a room's first message is no reset"
        );

        // Instance B stops; a message is posted on A meanwhile; B comes
        // back on the same address with a new backplane, and its page
        // gets what it missed, then live messages again.
        let _ = stop_b.send(());
        tokio::time::timeout(Duration::from_secs(5), serving_b)
            .await
            .expect("instance B stops")
            .unwrap();
        send(&page_a, "alice", "while B was down").await;
        all.push("while B was down".into());
        let lb = TcpListener::bind(addr_b)
            .await
            .expect("B's address is free again");
        let (stop_b, serving_b) = shared_instance(lb, &url, &prefix).await;
        wait_for_texts(
            &page_b,
            "the missed message on page B after B restarted",
            &all,
            RECONNECT_TIMEOUT,
        )
        .await;
        wait_live(
            &page_b,
            "the page on the restarted B to be live",
            RECONNECT_TIMEOUT,
        )
        .await;
        send(&page_b, "bob", "B is back").await;
        all.push("B is back".into());
        wait_for_texts(&page_a, "B's message on page A", &all, UI_TIMEOUT).await;
        wait_for_texts(&page_b, "B's message on page B", &all, UI_TIMEOUT).await;

        page_a.quit().await.unwrap();
        page_b.quit().await.unwrap();
        drop(driver);
        for (stop, serving) in [(stop_a, serving_a), (stop_b, serving_b)] {
            let _ = stop.send(());
            tokio::time::timeout(Duration::from_secs(5), serving)
                .await
                .expect("the instance stops")
                .unwrap();
        }
        crate::redis_common::delete_prefix(&url, &prefix).await;
    }
}
