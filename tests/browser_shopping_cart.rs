//! The shopping-cart page in a real browser: Debian's headless `chromium`,
//! driven over WebDriver by `chromedriver`.
//!
//! Two visitors (two browsers with separate profiles, so separate `session`
//! cookies) open the page; its policy stops an injected inline script, and
//! its own script (`page.js`) runs. One adds the item to their cart; the other's count
//! drops without a reload; the first one's buttons swap and survive a reload;
//! removing it brings the other's count back. Then the stock runs out: the
//! pages say so, and a page whose polls were stalled, still showing stock,
//! is told "sold out" (409) when it tries to add. Then the server shuts down
//! and comes back on the same address with a new epoch and empty carts: the
//! pages back off (honouring `Retry-After`, with growing delays) and then
//! show the new server's state, cart included.
//!
//! Without `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian packages
//! `chromium` and `chromium-driver`), or without the `http` feature, the test
//! prints `skipped: ...` and passes, unless `LONGPOLL_REQUIRE_BROWSER=1` is
//! set, as in CI. With `LONGPOLL_SCREENSHOT_DIR=DIR` it also saves both pages,
//! after the first add, as `DIR/visitor-a.png` and `DIR/visitor-b.png`.
//!
//! ```sh
//! LONGPOLL_REQUIRE_BROWSER=1 cargo test --features http --test browser_shopping_cart -- --nocapture
//! ```

#![allow(missing_docs)]

// The WebDriver client; each browser test uses part of it.
#[allow(dead_code)]
#[path = "common/webdriver.rs"]
mod webdriver;
use webdriver::skip;

#[cfg(not(feature = "http"))]
#[test]
fn two_visitors_see_each_others_cart_changes_without_reload() {
    skip("the shopping_cart example needs the `http` feature (cargo test --features http)");
}

#[cfg(feature = "http")]
mod common;

#[cfg(feature = "http")]
mod in_chromium {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use clap::Parser;
    use serde_json::{json, Value};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    use crate::common::shopping_cart::{serve_with, Args};
    use crate::webdriver::{self, wait_until, ChromeDriver, Session};

    /// Long enough for any change to reach a page over loopback many times over.
    const UI_TIMEOUT: Duration = Duration::from_secs(10);
    /// How long the server stays away during the restart: the pages' first
    /// retry comes 1.25 to 1.5 s after the `503`, so it finds nobody.
    const DOWNTIME: Duration = Duration::from_secs(3);
    /// The pages' back-off after the restart: at most ~2 s + ~4 s more.
    const RECONNECT_TIMEOUT: Duration = Duration::from_secs(20);
    const INVENTORY: u32 = 10;
    /// Browser window size: the whole card fits, for the screenshots.
    const WIDTH: u32 = 500;
    const HEIGHT: u32 = 820;

    /// Wraps the page's `fetch` so that every `status` poll is logged in
    /// `window.pollLog` with when it started and ended (page clock, ms) and
    /// its status (0: network error) and `Retry-After`.
    const LOG_POLLS: &str = r#"
        window.pollLog = [];
        const realFetch = window.fetch;
        window.fetch = function (resource, init) {
            const entry = { url: String(resource), start: performance.now(),
                            end: null, status: null, retryAfter: null };
            if (entry.url.startsWith("status")) window.pollLog.push(entry);
            return realFetch.call(this, resource, init).then(
                (r) => { entry.end = performance.now(); entry.status = r.status;
                         entry.retryAfter = r.headers.get("Retry-After"); return r; },
                (e) => { entry.end = performance.now(); entry.status = 0; throw e; });
        };
    "#;

    /// Makes the page's `status` polls hang (until aborted), as on a
    /// network that stopped delivering answers.
    const STALL_POLLS: &str = r#"
        window.unstalledFetch = window.fetch;
        window.fetch = function (resource, init) {
            if (!String(resource).startsWith("status")) {
                return window.unstalledFetch.call(this, resource, init);
            }
            return new Promise((_, reject) => init.signal.addEventListener("abort",
                () => reject(new DOMException("aborted", "AbortError"))));
        };
    "#;

    /// Adds an inline script to the page; returns whether it ran.
    const INJECT_INLINE_SCRIPT: &str = r#"
        window.inlineRan = false;
        const script = document.createElement("script");
        script.textContent = "window.inlineRan = true;";
        document.head.appendChild(script);
        return window.inlineRan;
    "#;

    /// Undoes [`STALL_POLLS`] and tells the page the network is back.
    const UNSTALL_POLLS: &str = r#"
        window.fetch = window.unstalledFetch;
        window.dispatchEvent(new Event("online"));
    "#;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_visitors_see_each_others_cart_changes_without_reload() {
        if let Err(reason) = webdriver::browser_available() {
            crate::skip(&reason);
            return;
        }
        let started = Instant::now();
        let step = |what: &str| eprintln!("{:>6.2?} {what}", started.elapsed());

        let mut server = Server::start("127.0.0.1:0".parse().unwrap()).await;
        let base = format!("http://{}/", server.addr);
        let driver = ChromeDriver::start().expect("start chromedriver");
        let (a, b) = tokio::join!(
            driver.new_session(WIDTH, HEIGHT),
            driver.new_session(WIDTH, HEIGHT)
        );
        let (a, b) = (a.expect("start browser A"), b.expect("start browser B"));
        step("server and two browsers started");

        // Both visitors open the page: full stock, add button shown.
        let (opened_a, opened_b) = tokio::join!(a.goto(&base), b.goto(&base));
        opened_a.expect("A opens the page");
        opened_b.expect("B opens the page");
        for (who, page) in [("A", &a), ("B", &b)] {
            assert_eq!(count(page).await, INVENTORY, "{who}: initial count");
            wait_for_buttons(page, who, false).await;
        }
        // The page's Content-Security-Policy is in force: a script injected
        // inline does not run. (The page's own script, page.js, runs: it
        // set up the buttons above.)
        for (who, page) in [("A", &a), ("B", &b)] {
            let ran = page.execute(INJECT_INLINE_SCRIPT, json!([])).await.unwrap();
            assert_eq!(ran, json!(false), "{who}: an injected inline script ran");
        }
        // Anything that reloads B's page would drop this marker.
        b.execute("window.notReloaded = true;", json!([]))
            .await
            .unwrap();
        step("both pages show the full stock");

        // A adds: B's count drops to 9 by itself, A's add button gives way
        // to remove.
        a.click("#add-button").await.expect("A clicks add");
        wait_for_count(&b, "B", INVENTORY - 1).await;
        wait_for_count(&a, "A", INVENTORY - 1).await;
        wait_for_buttons(&a, "A after adding", true).await;
        wait_for_buttons(&b, "B after A added", false).await;
        step("A added; B saw the count drop; A's buttons swapped");
        save_screenshots(&a, &b).await;

        // A reloads: the session cookie brings back the same cart.
        a.refresh().await.expect("A reloads");
        assert_eq!(count(&a).await, INVENTORY - 1, "A's count after reload");
        wait_for_buttons(&a, "A after reload", true).await;
        step("A reloaded and kept its cart");

        // A removes: B is back at full stock.
        a.click("#remove-button").await.expect("A clicks remove");
        wait_for_count(&b, "B", INVENTORY).await;
        wait_for_buttons(&a, "A after removing", false).await;
        let not_reloaded = b
            .execute("return window.notReloaded === true;", json!([]))
            .await
            .unwrap();
        assert_eq!(not_reloaded, json!(true), "B's page was reloaded");
        step("A removed; B saw the full stock again, without a reload");

        // Other visitors (plain HTTP clients) take the whole stock, while
        // A's long polls are stalled (as on a bad network) after it saw the
        // first of them. A still shows 9 and tries to add: the server says
        // sold out (409), and A shows that, and the real count.
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let cart = |session: String, action: &'static str| {
            let request = http
                .post(format!("{base}cart"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("session={session}&action={action}"));
            async move {
                let response = request.send().await.expect("POST /cart");
                assert_eq!(response.status(), 200, "{session} {action}");
            }
        };
        a.execute(STALL_POLLS, json!([])).await.unwrap();
        cart("buyer-0".to_owned(), "add").await;
        wait_for_count(&a, "A", INVENTORY - 1).await;
        for i in 1..INVENTORY {
            cart(format!("buyer-{i}"), "add").await;
        }
        wait_for_count(&b, "B", 0).await;
        assert_eq!(count(&a).await, INVENTORY - 1, "A's polls were not stalled");
        a.click("#add-button").await.expect("A clicks add");
        wait_for_count(&a, "A", 0).await;
        let message = a.text("#message").await.unwrap();
        assert!(
            message.starts_with("Sold out"),
            "A: no sold-out message after a 409: {message:?}"
        );
        wait_for_buttons(&a, "A after the 409", false).await;
        a.execute(UNSTALL_POLLS, json!([])).await.unwrap();
        step("A, stalled at 9, tried to add: told sold out, shown 0");

        for (who, page) in [("A", &a), ("B", &b)] {
            assert!(
                page.displayed("#sold-out").await.unwrap(),
                "{who}: no sold-out notice at 0"
            );
            assert!(
                !page.enabled("#add-button").await.unwrap(),
                "{who}: add button enabled while sold out"
            );
        }
        step("sold out shown on both pages");

        // From here on the pages log their polls. A unit comes back (which
        // also clears A's sold-out message, and shows that A's polls run
        // again after the network came back) and A takes it: both pages then
        // hold a logged poll.
        for page in [&a, &b] {
            page.execute(LOG_POLLS, json!([])).await.unwrap();
        }
        cart("buyer-0".to_owned(), "remove").await;
        wait_for_count(&a, "A", 1).await;
        wait_for_count(&b, "B", 1).await;
        assert_eq!(a.text("#message").await.unwrap(), "", "A: message kept");
        a.click("#add-button").await.expect("A clicks add");
        wait_for_count(&b, "B", 0).await;
        wait_for_buttons(&a, "A after adding the last unit", true).await;
        step("A took the last unit");

        // The server shuts down (held polls: 503, Retry-After: 1), stays
        // away, and comes back on the same address with a new epoch, empty
        // carts and a full stock, at a version lower than the pages have
        // seen. The pages must find it again and show its state rather than
        // keep their own, A's empty cart included.
        let addr = server.addr;
        server.stop().await;
        step("server stopped");
        tokio::time::sleep(DOWNTIME).await;
        server = Server::start(addr).await;
        step("server restarted");
        for (who, page) in [("A", &a), ("B", &b)] {
            wait_until(
                &format!("{who} to show the restarted server's count {INVENTORY}"),
                RECONNECT_TIMEOUT,
                || async move {
                    let shown = page.text("#count").await?;
                    Ok(if shown == INVENTORY.to_string() {
                        Ok(())
                    } else {
                        Err(shown)
                    })
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        }
        wait_for_buttons(&a, "A after the restart", false).await;
        assert!(
            b.enabled("#add-button").await.unwrap(),
            "B: add button still disabled after the restock"
        );
        step("both pages show the restarted server's state");
        for (who, page) in [("A", &a), ("B", &b)] {
            let log = page
                .execute("return window.pollLog;", json!([]))
                .await
                .unwrap();
            let gaps = assert_backed_off(who, &log);
            step(&format!("{who} waited {gaps:.0?} ms before its retries"));
        }

        a.quit().await.expect("end session A");
        b.quit().await.expect("end session B");
        drop(driver);
        server.stop().await;
    }

    /// The polls from the `503` to the first answer after the restart: the
    /// first retry waited out `Retry-After: 1`, the next ones at least 0.5 s,
    /// 1 s, 2 s ... (the page's exponential back-off, jitter drawing from the
    /// upper half of each step). Returns the waits, in ms.
    fn assert_backed_off(who: &str, log: &Value) -> Vec<f64> {
        let polls = log.as_array().expect("pollLog is an array");
        let shown = || serde_json::to_string_pretty(log).unwrap();
        let first = polls
            .iter()
            .position(|p| p["status"] == 503)
            .unwrap_or_else(|| panic!("{who}: no poll answered 503 at shutdown: {}", shown()));
        assert_eq!(polls[first]["retryAfter"], "1", "{who}: {}", shown());
        let failed: Vec<&Value> = polls[first..]
            .iter()
            .take_while(|p| p["status"] == 503 || p["status"] == 0)
            .collect();
        assert!(
            failed.len() >= 2,
            "{who}: no retry failed while the server was away: {}",
            shown()
        );
        assert!(
            polls.len() > first + failed.len(),
            "{who}: no poll after the retries: {}",
            shown()
        );
        let retries = polls[first..].iter().skip(1).take(failed.len());
        let mut gaps = Vec::new();
        for (k, (failure, retry)) in failed.iter().zip(retries).enumerate() {
            let gap = retry["start"].as_f64().unwrap() - failure["end"].as_f64().unwrap();
            let floor = if k == 0 {
                1000.0
            } else {
                250.0 * 2f64.powi(k as i32)
            };
            assert!(
                gap >= floor,
                "{who}: retry {} came {gap:.0} ms after the failure, sooner than {floor} ms: {}",
                k + 1,
                shown()
            );
            gaps.push(gap);
        }
        gaps
    }

    /// The count `page` shows now.
    async fn count(page: &Session<'_>) -> u32 {
        let text = page.text("#count").await.expect("read #count");
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("#count is not a number: {text:?}"))
    }

    async fn wait_for_count(page: &Session<'_>, who: &str, expected: u32) {
        let want = expected.to_string();
        let want = want.as_str();
        wait_until(
            &format!("{who}'s #count to become {expected}"),
            UI_TIMEOUT,
            || async move {
                let shown = page.text("#count").await?;
                Ok(if shown == want { Ok(()) } else { Err(shown) })
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Waits until exactly one of the two buttons is shown: remove if the
    /// item is in this visitor's cart, add otherwise.
    async fn wait_for_buttons(page: &Session<'_>, who: &str, in_cart: bool) {
        let want = if in_cart { "remove" } else { "add" };
        wait_until(
            &format!("{who} to show only the {want} button"),
            UI_TIMEOUT,
            || async move {
                let add = page.displayed("#add-button").await?;
                let remove = page.displayed("#remove-button").await?;
                Ok(if (add, remove) == (!in_cart, in_cart) {
                    Ok(())
                } else {
                    Err(format!("add shown: {add}, remove shown: {remove}"))
                })
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }

    async fn save_screenshots(a: &Session<'_>, b: &Session<'_>) {
        let Some(dir) = std::env::var_os("LONGPOLL_SCREENSHOT_DIR") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Let the count's highlight fade.
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (name, page) in [("visitor-a.png", a), ("visitor-b.png", b)] {
            let png = page.screenshot_png().await.expect("screenshot");
            std::fs::write(dir.join(name), png).unwrap();
        }
    }

    /// The example's server, in this process (the code its binary runs, minus
    /// the flags and the signal handler; see `common`).
    struct Server {
        addr: SocketAddr,
        shutdown: Option<oneshot::Sender<()>>,
        task: Option<JoinHandle<()>>,
    }

    impl Server {
        /// Starts the server on `addr` (port 0: a free one).
        async fn start(addr: SocketAddr) -> Server {
            let args = Args::try_parse_from([
                "shopping_cart",
                "--addr",
                &addr.to_string(),
                "--inventory",
                &INVENTORY.to_string(),
            ])
            .expect("valid flags");
            let listener = TcpListener::bind(args.addr)
                .await
                .unwrap_or_else(|e| panic!("bind {}: {e}", args.addr));
            let addr = listener.local_addr().unwrap();
            let (tx, rx) = oneshot::channel::<()>();
            let task = tokio::spawn(serve_with(
                listener,
                args.app(),
                args.limits(),
                async move {
                    let _ = rx.await;
                },
            ));
            Server {
                addr,
                shutdown: Some(tx),
                task: Some(task),
            }
        }

        /// Shuts down as on SIGTERM (held polls get 503 with `Retry-After`) and
        /// waits until the server has stopped.
        async fn stop(&mut self) {
            if let Some(tx) = self.shutdown.take() {
                let _ = tx.send(());
            }
            if let Some(task) = self.task.take() {
                tokio::time::timeout(Duration::from_secs(5), task)
                    .await
                    .expect("the server stops within 5 s")
                    .expect("the server task does not panic");
            }
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            if let Some(task) = self.task.take() {
                task.abort();
            }
        }
    }
}
