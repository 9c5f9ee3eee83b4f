//! What the shopping-cart page loads besides itself, and the policy it is
//! served with: its script (`/page.js`, an ES module), the browser client it
//! imports (`/longpoll.js`, the crate's `CLIENT_JS`), both revalidated by
//! `ETag`, and its icon (`/favicon.ico`), and a `Content-Security-Policy`
//! that lets no script run but the server's own files, which the page needs
//! no more than.

mod common;

use common::{client, Server};

#[tokio::test]
async fn page_is_served_with_a_policy_that_allows_scripts_from_the_server_only() {
    let server = Server::start(&[]).await;
    let resp = client().get(server.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let policy = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    let directives: Vec<&str> = policy.split(';').map(str::trim).collect();
    assert!(directives.contains(&"script-src 'self'"), "{policy}");
    assert!(directives.contains(&"default-src 'self'"), "{policy}");
    assert!(directives.contains(&"frame-ancestors 'none'"), "{policy}");

    // So the page has no inline script: its one script is the server's file.
    let body = resp.text().await.unwrap();
    let scripts: Vec<&str> = body
        .match_indices("<script")
        .map(|(i, _)| &body[i..])
        .collect();
    assert_eq!(scripts.len(), 1, "one script element");
    assert!(
        scripts[0].starts_with("<script type=\"module\" src=\"page.js\"></script>"),
        "{}",
        &scripts[0][..60.min(scripts[0].len())]
    );
    // Nor inline event handlers (` onclick="..."`).
    let handler = body.match_indices(" on").find(|(i, _)| {
        let name: String = body[i + 3..]
            .chars()
            .take_while(char::is_ascii_lowercase)
            .collect();
        !name.is_empty() && body[i + 3 + name.len()..].starts_with('=')
    });
    assert!(handler.is_none(), "an inline event handler: {handler:?}");
}

/// Checks that `path` is `body`, served as JavaScript that a browser
/// revalidates on each load: `no-cache`, a strong `ETag`, `304` without a
/// body for a request naming the tag (weakly, or in a list), and the file
/// again for another tag.
async fn assert_served_as_revalidated_javascript(server: &Server, path: &str, body: &str) {
    let client = client();
    let resp = client.get(server.url(path)).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    assert_eq!(
        resp.headers()["content-type"],
        "text/javascript; charset=utf-8",
        "{path}"
    );
    assert_eq!(resp.headers()["cache-control"], "no-cache", "{path}");
    assert_eq!(
        resp.headers()["x-content-type-options"],
        "nosniff",
        "{path}"
    );
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "{path}: {etag}"
    );
    assert_eq!(resp.text().await.unwrap(), body, "{path}");

    // Unchanged: 304, with the tag, no body.
    for tag in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"other\", {etag}"),
    ] {
        let resp = client
            .get(server.url(path))
            .header("if-none-match", &tag)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 304, "{path}, If-None-Match: {tag}");
        assert_eq!(resp.headers()["etag"], etag.as_str(), "{path}");
        assert!(resp.bytes().await.unwrap().is_empty(), "{path}");
    }
    // Another tag: the file.
    let resp = client
        .get(server.url(path))
        .header("if-none-match", "\"0000000000000000\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    assert_eq!(resp.text().await.unwrap(), body, "{path}");
}

#[tokio::test]
async fn page_script_is_served_as_javascript_and_revalidated_with_its_etag() {
    let server = Server::start(&[]).await;
    let body = include_str!("../examples/shopping_cart/page.js");
    assert_served_as_revalidated_javascript(&server, "/page.js", body).await;
    // The state comes from the page, not from the script.
    assert!(body.contains("app.dataset.session"));
    assert!(!body.contains("{{"));
}

#[tokio::test]
async fn page_script_imports_the_browser_client_the_server_serves_at_longpoll_js() {
    let server = Server::start(&[]).await;
    let script = include_str!("../examples/shopping_cart/page.js");
    assert!(
        script.contains("import { subscribe } from \"./longpoll.js\";"),
        "page.js does not import the client"
    );
    assert_served_as_revalidated_javascript(&server, "/longpoll.js", longpoll::http::CLIENT_JS)
        .await;
    // A tag of its own: a new page.js does not make browsers fetch the
    // client again, nor the other way round.
    let client = client();
    let tag = |path: &'static str| {
        let request = client.get(server.url(path));
        async move { request.send().await.unwrap().headers()["etag"].clone() }
    };
    assert_ne!(tag("/page.js").await, tag("/longpoll.js").await);
}

#[tokio::test]
async fn favicon_is_an_icon_not_a_404() {
    let server = Server::start(&[]).await;
    let client = client();
    let resp = client.get(server.url("/favicon.ico")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/svg+xml");
    let body = resp.text().await.unwrap();
    assert!(body.starts_with("<svg") && body.trim_end().ends_with("</svg>"));
    // The page names it, so browsers use it rather than guess.
    let page = client.get(server.url("/")).send().await.unwrap();
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("<link rel=\"icon\" href=\"favicon.ico\" type=\"image/svg+xml\">"));
}

#[tokio::test]
async fn assets_answer_head_and_refuse_other_methods_with_405() {
    let server = Server::start(&[]).await;
    let client = client();
    for path in ["/page.js", "/longpoll.js", "/favicon.ico"] {
        let head = client.head(server.url(path)).send().await.unwrap();
        assert_eq!(head.status(), 200, "HEAD {path}");
        let post = client.post(server.url(path)).send().await.unwrap();
        assert_eq!(post.status(), 405, "POST {path}");
        assert_eq!(post.headers()["allow"], "GET, HEAD");
    }
    let missing = client.get(server.url("/page.css")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}
