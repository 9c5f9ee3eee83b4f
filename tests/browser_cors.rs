//! A page on another origin long-polls through `tower-http`'s `CorsLayer`,
//! in a real browser (Debian's headless `chromium` over WebDriver).
//!
//! Two servers on 127.0.0.1, on two ports, are two origins: one serves the
//! page, the other the long poll. The page sends its cursor in the query,
//! so no poll needs a preflight (the test counts the `OPTIONS` requests:
//! none), and reads every answer, `200` (with its `ETag`), `204`, `400`
//! and `503` (with its `Retry-After`), including a poll held until a
//! change. The same poll without the layer is refused by the browser: the
//! page cannot read it.
//!
//! Without `/usr/bin/chromium` and `/usr/bin/chromedriver`, or without the
//! `tower` feature, the test prints `skipped: ...` and passes, unless
//! `LONGPOLL_REQUIRE_BROWSER=1` is set, as in CI.
//!
//! ```sh
//! LONGPOLL_REQUIRE_BROWSER=1 cargo test --features tower --test browser_cors
//! ```

#![allow(missing_docs)]

#[allow(dead_code)]
#[path = "common/webdriver.rs"]
mod webdriver;

#[cfg(not(feature = "tower"))]
#[test]
fn a_page_on_another_origin_reads_every_answer_without_a_preflight() {
    webdriver::skip("the CORS test needs the `tower` feature (cargo test --features tower)");
}

#[cfg(feature = "tower")]
mod in_chromium {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use axum::extract::Request;
    use axum::http::{HeaderValue, Method};
    use axum::middleware::{self, Next};
    use axum::response::Html;
    use axum::routing::get;
    use axum::Router;
    use bytes::Bytes;
    use longpoll::http::{LongPoll, EXPOSED_HEADERS};
    use longpoll::{Broadcaster, Update};
    use serde_json::{json, Value};
    use tokio::net::TcpListener;
    use tower_http::cors::CorsLayer;

    use crate::webdriver::{self, wait_until, ChromeDriver};

    const UI_TIMEOUT: Duration = Duration::from_secs(15);

    /// The page: runs every poll once loaded and leaves what it read in
    /// `window.results` (one entry per poll, in order), then sets
    /// `window.done`.
    const PAGE: &str = r#"<!doctype html><meta charset="utf-8"><title>cors</title>
<script>
const API = "{{API}}";
window.results = [];
async function poll(label, path) {
  try {
    const r = await fetch(API + path, { cache: "no-store" });
    const text = await r.text();
    window.results.push({ label, status: r.status, etag: r.headers.get("ETag"),
                          retryAfter: r.headers.get("Retry-After"), body: text });
    return r;
  } catch (e) {
    window.results.push({ label, error: String(e) });
  }
}
(async () => {
  const first = await poll("no cursor", "/status?timeout=0");
  const [epoch, version] = JSON.parse(first ? window.results[0].body : "{}").id.split("-");
  await poll("up to date", `/status?since=${version}&epoch=${epoch}&timeout=0.2`);
  await poll("malformed", "/status?since=x");
  await poll("closed", "/closed?since=0");
  window.held = true;
  await poll("held", `/status?since=${version}&epoch=${epoch}&timeout=30`);
  await poll("no cors", `/plain?since=0&epoch=${epoch}`);
  window.done = true;
})();
</script>"#;

    async fn serve(app: Router) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    fn encode(u: &Update<u32>) -> Bytes {
        Bytes::from(format!(
            r#"{{"n":{},"id":"{}-{}"}}"#,
            u.value(),
            u.epoch(),
            u.version()
        ))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_page_on_another_origin_reads_every_answer_without_a_preflight() {
        if let Err(reason) = webdriver::browser_available() {
            webdriver::skip(&reason);
            return;
        }
        // The page's origin: a port of its own.
        let page_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let page_origin = format!("http://{}", page_listener.local_addr().unwrap());

        // The API's origin: the long poll behind the CORS layer, a closed one
        // (503), and the same poll without the layer.
        let stock = Broadcaster::new(7u32);
        let closed = Broadcaster::new(0u32);
        closed.close();
        let options = Arc::new(AtomicUsize::new(0));
        let cors = CorsLayer::new()
            .allow_origin(HeaderValue::from_str(&page_origin).unwrap())
            .allow_methods([Method::GET])
            .expose_headers(EXPOSED_HEADERS);
        let counted = {
            let options = options.clone();
            move |req: Request, next: Next| {
                let options = options.clone();
                async move {
                    if req.method() == Method::OPTIONS {
                        options.fetch_add(1, Ordering::SeqCst);
                    }
                    next.run(req).await
                }
            }
        };
        let api = Router::new()
            .route_service("/status", LongPoll::new(stock.clone(), encode))
            .route_service("/closed", LongPoll::new(closed, encode))
            .layer(cors)
            .route_service("/plain", LongPoll::new(stock.clone(), encode))
            .layer(middleware::from_fn(counted));
        let api = serve(api).await;

        let page = PAGE.replace("{{API}}", &format!("http://{api}"));
        let pages = Router::new().route("/", get(move || async move { Html(page) }));
        tokio::spawn(async move { axum::serve(page_listener, pages).await });

        let driver = ChromeDriver::start().expect("chromedriver starts");
        let session = driver.new_session(400, 300).await.expect("a browser");
        session.goto(&format!("{page_origin}/")).await.unwrap();

        // The held poll waits on the server; a change answers it.
        wait_until("the held poll to wait", UI_TIMEOUT, || async {
            let held = session
                .execute("return window.held === true;", json!([]))
                .await?;
            Ok(if held == json!(true) && stock.waiter_count() == 1 {
                Ok(())
            } else {
                Err(format!("held: {held}, waiters: {}", stock.waiter_count()))
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        stock.notify(8).unwrap();
        let results: Value = wait_until("the page to finish", UI_TIMEOUT, || async {
            let done = session
                .execute("return window.done === true;", json!([]))
                .await?;
            if done != json!(true) {
                return Ok(Err(format!("not done: {done}")));
            }
            Ok(Ok(session
                .execute("return window.results;", json!([]))
                .await?))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        session.quit().await.unwrap();

        let by = |label: &str| -> &Value {
            results
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["label"] == label)
                .unwrap_or_else(|| panic!("no {label} in {results}"))
        };
        let epoch = stock.epoch();
        assert_eq!(by("no cursor")["status"], 200, "{results}");
        assert_eq!(by("no cursor")["etag"], format!("\"{epoch}-0\""));
        assert_eq!(by("up to date")["status"], 204);
        assert_eq!(by("malformed")["status"], 400);
        assert!(by("malformed")["body"].as_str().unwrap().contains("since"));
        assert_eq!(by("closed")["status"], 503);
        assert_eq!(by("closed")["retryAfter"], "1");
        assert_eq!(by("held")["status"], 200);
        assert_eq!(by("held")["etag"], format!("\"{epoch}-1\""));
        assert!(by("held")["body"].as_str().unwrap().contains(r#""n":8"#));
        // Without the layer the browser keeps the answer from the page.
        assert!(
            by("no cors")["error"].as_str().is_some(),
            "the page read an answer without CORS headers: {results}"
        );
        assert_eq!(
            options.load(Ordering::SeqCst),
            0,
            "a poll with its cursor in the query needs no preflight"
        );
    }
}
