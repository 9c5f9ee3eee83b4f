//! The browser client, `client/longpoll.js`, in a real browser (Debian's
//! headless `chromium` over WebDriver), against endpoints of the crate's
//! HTTP layer on another origin.
//!
//! One page (served with the module by one server) subscribes to endpoints
//! of another server (another origin, behind `tower-http`'s `CorsLayer`),
//! most of them through a proxy that can cut the network. The page records
//! every callback and every request; the test drives the servers and reads
//! the records:
//!
//! * every update is delivered once, in order, by long poll, by SSE, by SSE
//!   with `EventSource` missing, by SSE whose stream endpoint fails (the long
//!   poll takes over, after exactly two tries), over several keys, and in
//!   the `Latest` format from a cursor the page was given;
//! * a network cut within the history loses nothing; one beyond it is a
//!   `lagged` resync with the right count, then the retained updates;
//! * a server restart (the broadcaster closed, a new one with a new epoch)
//!   is an `other-epoch` resync, then the new baseline, never an update of
//!   the old epoch;
//! * `503`s are waited out: each wait, measured by the page, is at least the
//!   `Retry-After` plus the lower half of the backoff ceiling, and each
//!   planned delay is at most `Retry-After` plus the capped ceiling;
//! * overlapping, stale and foreign-epoch answers from a scripted server
//!   (long poll and SSE) are delivered once, or as a resync;
//! * the browser back online cuts a wait short, and the backoff starts
//!   over;
//! * aborting the signal stops everything: held polls and streams are
//!   released on the server, no request follows (also from a backoff
//!   wait), and no callback;
//! * no request needs a preflight.
//!
//! Without `/usr/bin/chromium` and `/usr/bin/chromedriver` the test prints
//! `skipped: ...` and passes, unless `LONGPOLL_REQUIRE_BROWSER=1` is set, as
//! in CI.
//!
//! ```sh
//! LONGPOLL_REQUIRE_BROWSER=1 cargo test --test browser_client -- --nocapture
//! ```

#![allow(missing_docs)]

#[allow(dead_code)]
#[path = "common/webdriver.rs"]
mod webdriver;

#[cfg(not(feature = "http"))]
#[test]
fn the_client_delivers_every_update_once_across_cuts_restarts_and_503s() {
    webdriver::skip("the browser client test needs the `http` feature");
}

#[cfg(feature = "http")]
#[path = "common/cut_proxy.rs"]
mod cut_proxy;

#[cfg(feature = "http")]
#[path = "browser_client/servers.rs"]
mod servers;

#[cfg(feature = "http")]
mod in_chromium {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use serde_json::{json, Value};

    use crate::cut_proxy::Proxy;
    use crate::servers::{Feed, Servers, FLAKY_SCRIPT, REPLAY_E, REPLAY_F};
    use crate::webdriver::{self, wait_until, ChromeDriver, Session};

    /// Long enough for anything to reach a page over loopback many times.
    const UI_TIMEOUT: Duration = Duration::from_secs(15);
    /// How long the network stays cut.
    const CUT: Duration = Duration::from_millis(500);
    /// The two keys of the multi-key subscription (the second needs
    /// encoding in a query).
    const KEY_A: &str = "a";
    const KEY_B: &str = "b c/é";
    /// The backoff of the subscription that meets the scripted `503`s.
    const FLAKY_BASE_MS: f64 = 200.0;
    const FLAKY_CAP_MS: f64 = 400.0;
    /// Timer and clock granularity of the page's measurements.
    const CLOCK_SLACK_MS: f64 = 2.0;

    /// What a subscription told the page, status reports aside.
    #[derive(Clone, Debug, PartialEq)]
    enum Ev {
        Resync {
            reason: String,
            skipped: Option<u64>,
            epoch: String,
        },
        Update {
            epoch: String,
            version: u64,
            data: Value,
        },
    }

    fn resync(reason: &str, skipped: Option<u64>, epoch: &str) -> Ev {
        Ev::Resync {
            reason: reason.into(),
            skipped,
            epoch: epoch.into(),
        }
    }

    fn update(epoch: &str, version: u64, data: Value) -> Ev {
        Ev::Update {
            epoch: epoch.into(),
            version,
            data,
        }
    }

    /// The updates `versions` of `epoch` as the feed encodes them
    /// (`{"n": value}`, the value `offset + version`).
    fn feed_updates(epoch: &str, versions: impl IntoIterator<Item = u64>, offset: u64) -> Vec<Ev> {
        versions
            .into_iter()
            .map(|v| update(epoch, v, json!({ "n": offset + v })))
            .collect()
    }

    async fn log(page: &Session<'_>, name: &str) -> webdriver::Result<Value> {
        page.execute("return window.logs[arguments[0]] || [];", json!([name]))
            .await
    }

    /// The resyncs and updates of a log (of `key`, if given), in order.
    fn events(log: &Value, key: Option<&str>) -> Vec<Ev> {
        log.as_array()
            .unwrap()
            .iter()
            .filter(|e| key.is_none_or(|k| e["key"] == k))
            .filter_map(|e| match e["t"].as_str().unwrap() {
                "resync" => Some(Ev::Resync {
                    reason: e["reason"].as_str().unwrap().into(),
                    skipped: e["skipped"].as_u64(),
                    epoch: e["epoch"].as_str().unwrap().into(),
                }),
                "update" => Some(Ev::Update {
                    epoch: e["epoch"].as_str().unwrap().into(),
                    version: e["version"].as_u64().unwrap(),
                    data: e["data"].clone(),
                }),
                _ => None,
            })
            .collect()
    }

    /// The status reports of a log.
    fn statuses(log: &Value) -> Vec<Value> {
        log.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["t"] == "status")
            .cloned()
            .collect()
    }

    /// Waits until `name` (its `key`, if given) has delivered exactly `want`.
    async fn wait_events(page: &Session<'_>, name: &str, key: Option<&str>, want: &[Ev]) {
        wait_until(
            &format!("{name} {} to deliver {want:?}", key.unwrap_or("")),
            UI_TIMEOUT,
            || async {
                let got = events(&log(page, name).await?, key);
                Ok(if got == want {
                    Ok(())
                } else {
                    Err(format!("{got:?}"))
                })
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Waits until `name` reports itself live over `transport`.
    async fn wait_live(page: &Session<'_>, name: &str, transport: &str) {
        wait_until(
            &format!("{name} to be live by {transport}"),
            UI_TIMEOUT,
            || async {
                let s = statuses(&log(page, name).await?);
                Ok(match s.last() {
                    Some(last) if last["state"] == "live" && last["transport"] == transport => {
                        Ok(())
                    }
                    _ => Err(format!("{s:?}")),
                })
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }

    async fn start(page: &Session<'_>, name: &str, url: &str, options: Value) {
        page.execute(
            "window.start(arguments[0], arguments[1], arguments[2]);",
            json!([name, url, options]),
        )
        .await
        .unwrap();
    }

    /// The subscriptions that follow the feed, and the transport each ends
    /// on.
    const FEED_SUBS: [(&str, &str); 4] = [
        ("poll", "poll"),
        ("sse", "sse"),
        ("no-event-source", "poll"),
        ("broken-stream", "poll"),
    ];

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_client_delivers_every_update_once_across_cuts_restarts_and_503s() {
        if let Err(reason) = webdriver::browser_available() {
            webdriver::skip(&reason);
            return;
        }
        let servers = Servers::start().await;
        let api = servers.api.clone();
        let (latest_b, rooms_hub, flaky_b) = (
            servers.latest.clone(),
            servers.rooms.clone(),
            servers.flaky.clone(),
        );
        let page_origin = servers.page_origin.clone();
        // Most endpoints through the proxy, which cuts the network.
        let proxy = Proxy::start(servers.api_addr).await;
        let via = format!("http://{}", proxy.addr);
        let direct = format!("http://{}", servers.api_addr);

        let driver = ChromeDriver::start().expect("chromedriver starts");
        let page = driver.new_session(400, 300).await.expect("a browser");
        page.goto(&format!("{page_origin}/")).await.unwrap();
        wait_until("the page to load the module", UI_TIMEOUT, || async {
            let ready = page
                .execute("return window.ready === true;", json!([]))
                .await?;
            Ok(if ready == json!(true) {
                Ok(())
            } else {
                Err(ready.to_string())
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));

        let fast = json!({ "base": 100, "cap": 1000 });
        let e1 = api.feed.lock().broadcaster.epoch().to_string();
        let latest_epoch = latest_b.epoch().to_string();
        let feed_url = format!("{via}/feed");
        let events_url = format!("{via}/feed/events");
        start(
            &page,
            "poll",
            &feed_url,
            json!({ "transport": "poll", "retry": fast }),
        )
        .await;
        start(
            &page,
            "sse",
            &feed_url,
            json!({ "events": events_url, "retry": fast }),
        )
        .await;
        start(
            &page,
            "no-event-source",
            &feed_url,
            json!({ "events": events_url, "noEventSource": true, "retry": fast }),
        )
        .await;
        start(
            &page,
            "broken-stream",
            &feed_url,
            json!({ "events": format!("{direct}/broken-events"), "retry": fast }),
        )
        .await;
        start(
            &page,
            "keys",
            &format!("{via}/rooms"),
            json!({ "keys": [KEY_A, KEY_B], "retry": fast }),
        )
        .await;
        start(
            &page,
            "latest",
            &format!("{via}/latest"),
            json!({ "format": "latest", "cursor": { "epoch": latest_epoch, "version": 0 }, "retry": fast }),
        )
        .await;
        start(
            &page,
            "flaky",
            &format!("{direct}/flaky"),
            json!({ "retry": { "base": FLAKY_BASE_MS, "cap": FLAKY_CAP_MS } }),
        )
        .await;
        start(
            &page,
            "replay",
            &format!("{direct}/replay"),
            json!({ "retry": { "base": 100, "cap": 200 } }),
        )
        .await;
        start(
            &page,
            "replay-stream",
            &format!("{direct}/no-such-poll"),
            json!({ "events": format!("{direct}/replay/events"), "retry": { "base": 100, "cap": 200 } }),
        )
        .await;
        start(
            &page,
            "online",
            &format!("{direct}/down-for-a-minute"),
            json!({}),
        )
        .await;
        start(
            &page,
            "down",
            &format!("{direct}/down"),
            json!({ "retry": { "base": 100, "cap": 200 } }),
        )
        .await;

        // Live: the baselines, then every update once, in order.
        let mut want_feed = vec![resync("initial", None, &e1)];
        want_feed.extend(feed_updates(&e1, [0], 0));
        for (name, _) in FEED_SUBS {
            wait_events(&page, name, None, &want_feed).await;
        }
        wait_live(&page, "sse", "sse").await;
        let room_epoch = |k: &str| rooms_hub.broadcaster(k).unwrap().epoch().to_string();
        let (ea, eb) = (room_epoch(KEY_A), room_epoch(KEY_B));
        let mut want_a = vec![resync("initial", None, &ea)];
        want_a.extend(feed_updates(&ea, [0], 0));
        let mut want_b = vec![resync("initial", None, &eb)];
        want_b.extend(feed_updates(&eb, [0], 0));
        wait_events(&page, "keys", Some(KEY_A), &want_a).await;
        wait_events(&page, "keys", Some(KEY_B), &want_b).await;
        wait_live(&page, "latest", "poll").await;

        let feed_b = api.feed.lock().broadcaster.clone();
        for v in 1..=5u64 {
            feed_b.notify(v).unwrap();
            if v == 3 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        for v in 1..=3u64 {
            rooms_hub.notify(KEY_A, v).unwrap();
            latest_b.notify(v).unwrap();
        }
        for v in 1..=2u64 {
            rooms_hub.notify(KEY_B, v).unwrap();
        }
        want_feed.extend(feed_updates(&e1, 1..=5, 0));
        want_a.extend(feed_updates(&ea, 1..=3, 0));
        want_b.extend(feed_updates(&eb, 1..=2, 0));
        for (name, _) in FEED_SUBS {
            wait_events(&page, name, None, &want_feed).await;
        }
        wait_events(&page, "keys", Some(KEY_A), &want_a).await;
        wait_events(&page, "keys", Some(KEY_B), &want_b).await;
        let by = |log: &Value| -> Vec<String> {
            log.as_array()
                .unwrap()
                .iter()
                .filter(|e| e["t"] == "update")
                .map(|e| e["by"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            by(&log(&page, "sse").await.unwrap()),
            ["sse"; 6],
            "the stream brought every update"
        );

        // A cut within the history: every missed update, once, no resync.
        proxy.cut();
        for v in 6..=8u64 {
            feed_b.notify(v).unwrap();
        }
        for v in 4..=5u64 {
            rooms_hub.notify(KEY_A, v).unwrap();
        }
        latest_b.notify(4).unwrap();
        tokio::time::sleep(CUT).await;
        proxy.restore();
        want_feed.extend(feed_updates(&e1, 6..=8, 0));
        want_a.extend(feed_updates(&ea, 4..=5, 0));
        for (name, _) in FEED_SUBS {
            wait_events(&page, name, None, &want_feed).await;
        }
        wait_events(&page, "keys", Some(KEY_A), &want_a).await;

        // A cut beyond it: `lagged`, how many were lost, what was kept.
        proxy.cut();
        for v in 9..=20u64 {
            feed_b.notify(v).unwrap();
        }
        for v in 6..=15u64 {
            rooms_hub.notify(KEY_A, v).unwrap();
        }
        tokio::time::sleep(CUT).await;
        proxy.restore();
        // At 8, 12 went by, the last 8 are kept: 9 to 12 are lost.
        want_feed.push(resync("lagged", Some(4), &e1));
        want_feed.extend(feed_updates(&e1, 13..=20, 0));
        // At 5, 10 went by: 6 and 7 are lost.
        want_a.push(resync("lagged", Some(2), &ea));
        want_a.extend(feed_updates(&ea, 8..=15, 0));
        for (name, _) in FEED_SUBS {
            wait_events(&page, name, None, &want_feed).await;
        }
        wait_events(&page, "keys", Some(KEY_A), &want_a).await;
        wait_events(&page, "keys", Some(KEY_B), &want_b).await;

        // A restart: the broadcaster closes (held polls get 503, streams
        // end), the network drops, a new broadcaster (a new epoch) serves.
        feed_b.close();
        proxy.cut();
        let e2 = {
            let mut feed = api.feed.lock();
            *feed = Feed::new(100);
            feed.broadcaster.notify(101).unwrap();
            feed.broadcaster.notify(102).unwrap();
            feed.broadcaster.epoch().to_string()
        };
        assert_ne!(e1, e2);
        tokio::time::sleep(CUT).await;
        proxy.restore();
        want_feed.push(resync("other-epoch", None, &e2));
        want_feed.extend(feed_updates(&e2, 0..=2, 100));
        for (name, transport) in FEED_SUBS {
            wait_events(&page, name, None, &want_feed).await;
            wait_live(&page, name, transport).await;
        }
        // The SSE subscription went back to its stream; the other two never
        // opened one; the broken stream was tried twice, then left alone.
        let transports = |log: &Value| -> Vec<String> {
            statuses(log)
                .iter()
                .map(|s| s["transport"].as_str().unwrap().to_owned())
                .collect()
        };
        let no_es = log(&page, "no-event-source").await.unwrap();
        assert!(transports(&no_es).iter().all(|t| t == "poll"));
        assert!(by(&no_es).iter().all(|t| t == "poll"));
        let broken = log(&page, "broken-stream").await.unwrap();
        assert!(by(&broken).iter().all(|t| t == "poll"));
        assert_eq!(api.count("/broken-events"), 2);

        // Latest: from the page's cursor, newer states only, no resync.
        let latest_log = log(&page, "latest").await.unwrap();
        let got = events(&latest_log, None);
        let versions: Vec<u64> = got
            .iter()
            .map(|e| match e {
                Ev::Update { version, data, .. } => {
                    assert_eq!(data["n"], *version);
                    *version
                }
                Ev::Resync { .. } => panic!("a resync in the latest format: {got:?}"),
            })
            .collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        assert_eq!(versions.last(), Some(&4), "{versions:?}");
        let requests = page
            .execute("return window.requests.map(r => r.url);", json!([]))
            .await
            .unwrap();
        let first_latest = requests
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u.as_str().unwrap().contains("/latest"))
            .unwrap();
        assert!(
            first_latest
                .as_str()
                .unwrap()
                .contains(&format!("since=0&epoch={latest_epoch}")),
            "{first_latest}"
        );

        // 503s: each wait at least Retry-After plus half the backoff
        // ceiling, as measured by the page; each planned delay at most
        // Retry-After plus the capped ceiling.
        let mut want_flaky = vec![resync("initial", None, &flaky_b.epoch().to_string())];
        want_flaky.extend(feed_updates(&flaky_b.epoch().to_string(), [0], 0));
        wait_events(&page, "flaky", None, &want_flaky).await;
        let flaky_requests = page
            .execute(
                "return window.requests.filter(r => r.url.includes('/flaky'));",
                json!([]),
            )
            .await
            .unwrap();
        let flaky_requests = flaky_requests.as_array().unwrap();
        let retrying: Vec<Value> = statuses(&log(&page, "flaky").await.unwrap())
            .into_iter()
            .filter(|s| s["state"] == "retrying")
            .collect();
        assert_eq!(retrying.len(), FLAKY_SCRIPT.len(), "{retrying:?}");
        assert!(flaky_requests.len() > FLAKY_SCRIPT.len());
        for (i, retry_after) in FLAKY_SCRIPT.iter().enumerate() {
            let (req, next, report) = (&flaky_requests[i], &flaky_requests[i + 1], &retrying[i]);
            assert_eq!(req["status"], 503, "{req}");
            assert_eq!(report["status"], 503);
            assert_eq!(report["attempt"], i + 1);
            let retry_after_ms = f64::from(retry_after.unwrap_or(0)) * 1000.0;
            assert_eq!(report["retryAfter"].as_f64().unwrap(), retry_after_ms);
            let ceiling = FLAKY_CAP_MS.min(FLAKY_BASE_MS * 2f64.powi(i as i32));
            let floor = retry_after_ms + ceiling / 2.0;
            let delay = report["delay"].as_f64().unwrap();
            assert!(
                delay >= floor && delay <= retry_after_ms + ceiling,
                "attempt {i}: a delay of {delay} ms, not in [{floor}, {}]",
                retry_after_ms + ceiling
            );
            let waited = next["start"].as_f64().unwrap() - req["end"].as_f64().unwrap();
            assert!(
                waited + CLOCK_SLACK_MS >= delay,
                "attempt {i}: waited {waited} ms, planned {delay} ms (floor {floor} ms)"
            );
        }
        assert_eq!(flaky_requests[FLAKY_SCRIPT.len()]["status"], 200);

        // The scripted server: overlaps and stale answers dropped, a foreign
        // epoch a resync; the cursor sent back is what was delivered.
        let v = |n: u64| json!({ "v": n });
        wait_events(
            &page,
            "replay",
            None,
            &[
                resync("initial", None, REPLAY_E),
                update(REPLAY_E, 1, v(1)),
                update(REPLAY_E, 2, v(2)),
                update(REPLAY_E, 3, v(3)),
                resync("other-epoch", None, REPLAY_F),
                update(REPLAY_F, 7, v(7)),
            ],
        )
        .await;
        {
            let polls = api.replay_polls.lock();
            let cursor = |i: usize| {
                polls[i]
                    .split('&')
                    .filter(|p| !p.starts_with("timeout="))
                    .collect::<Vec<_>>()
                    .join("&")
            };
            assert_eq!(cursor(0), "", "{polls:?}");
            assert_eq!(cursor(1), format!("since=2&epoch={REPLAY_E}"));
            assert_eq!(cursor(2), format!("since=3&epoch={REPLAY_E}"));
            // The stale answer moved nothing.
            assert_eq!(cursor(3), format!("since=3&epoch={REPLAY_E}"));
            assert_eq!(cursor(4), format!("since=7&epoch={REPLAY_F}"));
        }
        let stale = statuses(&log(&page, "replay").await.unwrap())
            .into_iter()
            .filter(|s| s["state"] == "retrying")
            .collect::<Vec<_>>();
        assert_eq!(stale.len(), 1, "a stale answer is waited out: {stale:?}");
        assert_eq!(stale[0]["status"], 200);
        wait_events(
            &page,
            "replay-stream",
            None,
            &[
                resync("initial", None, REPLAY_E),
                update(REPLAY_E, 1, v(1)),
                update(REPLAY_E, 2, v(2)),
                update(REPLAY_E, 3, v(3)),
                update(REPLAY_E, 4, v(4)),
            ],
        )
        .await;
        assert_eq!(
            api.replay_streams.lock()[1],
            format!("since=3&epoch={REPLAY_E}")
        );
        assert_eq!(
            api.count("/no-such-poll"),
            0,
            "the stream never failed to open"
        );

        // Back online (the browser says so): no more waiting.
        let retrying = |log: &Value| -> Vec<Value> {
            statuses(log)
                .into_iter()
                .filter(|s| s["state"] == "retrying")
                .collect()
        };
        let reports = wait_until("a minute's wait", UI_TIMEOUT, || async {
            let reports = retrying(&log(&page, "online").await?);
            Ok(if reports.is_empty() {
                Err("no retry yet".to_owned())
            } else {
                Ok(reports)
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0]["retryAfter"], 60_000);
        assert_eq!(api.count("/down-for-a-minute"), 1);
        page.execute("window.dispatchEvent(new Event('online'));", json!([]))
            .await
            .unwrap();
        wait_until("a retry once back online", UI_TIMEOUT, || async {
            let reports = retrying(&log(&page, "online").await?);
            Ok(if reports.len() == 2 {
                Ok(reports)
            } else {
                Err(format!("{reports:?}"))
            })
        })
        .await
        .map(|reports| assert_eq!(reports[1]["attempt"], 1, "the backoff starts over"))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(api.count("/down-for-a-minute"), 2);

        // Abort while waiting out a 503: no request follows.
        page.execute("window.abort('down');", json!([]))
            .await
            .unwrap();
        let down = api.count("/down");
        assert!(down >= 1);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(api.count("/down"), down, "a request after the abort");

        // Abort the rest: held polls and streams are released on the
        // server, and nothing follows, however much is published.
        for name in [
            "poll",
            "sse",
            "no-event-source",
            "broken-stream",
            "keys",
            "latest",
            "flaky",
            "replay",
            "replay-stream",
            "online",
        ] {
            page.execute("window.abort(arguments[0]);", json!([name]))
                .await
                .unwrap();
        }
        let feed_now = api.feed.lock().broadcaster.clone();
        let rooms_a = rooms_hub.broadcaster(KEY_A).unwrap();
        let rooms_b = rooms_hub.broadcaster(KEY_B).unwrap();
        wait_until("every held poll and stream to end", UI_TIMEOUT, || async {
            let open = page
                .execute("return window.openStreams();", json!([]))
                .await?;
            let waiters = [&feed_now, &latest_b, &flaky_b]
                .iter()
                .map(|b| b.waiter_count())
                .chain([&rooms_a, &rooms_b].iter().map(|b| b.waiter_count()))
                .collect::<Vec<_>>();
            Ok(if open == json!(0) && waiters.iter().all(|&w| w == 0) {
                Ok(())
            } else {
                Err(format!("open streams {open}, waiters {waiters:?}"))
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let counts = api.counts.lock().clone();
        let logs = page
            .execute("return window.logs;", json!([]))
            .await
            .unwrap();
        feed_now.notify(103).unwrap();
        rooms_hub.notify(KEY_A, 16).unwrap();
        latest_b.notify(5).unwrap();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(*api.counts.lock(), counts, "a request after the abort");
        assert_eq!(
            page.execute("return window.logs;", json!([]))
                .await
                .unwrap(),
            logs,
            "a callback after the abort"
        );
        for (name, entries) in logs.as_object().unwrap() {
            let last = entries.as_array().unwrap().last().unwrap();
            assert_eq!(last["state"], "stopped", "{name}: {last}");
        }

        // Another origin, and not one preflight.
        assert_eq!(api.options.load(Ordering::SeqCst), 0);
        page.quit().await.unwrap();
        drop(driver);
        drop(proxy);
    }
}
