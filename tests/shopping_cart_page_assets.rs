//! What the shopping-cart page loads besides itself, and the policy it is
//! served with: its script (`/page.js`, revalidated by `ETag`) and its icon
//! (`/favicon.ico`), and a `Content-Security-Policy` that lets no script run
//! but the server's own files, which the page needs no more than.

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
        scripts[0].starts_with("<script src=\"page.js\"></script>"),
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

#[tokio::test]
async fn page_script_is_served_as_javascript_and_revalidated_with_its_etag() {
    let server = Server::start(&[]).await;
    let client = client();
    let resp = client.get(server.url("/page.js")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let body = resp.text().await.unwrap();
    assert_eq!(body, include_str!("../examples/shopping_cart/page.js"));
    // The state comes from the page, not from the script.
    assert!(body.contains("app.dataset.session"));
    assert!(!body.contains("{{"));

    // Unchanged: 304, with the tag, no body.
    for tag in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"other\", {etag}"),
    ] {
        let resp = client
            .get(server.url("/page.js"))
            .header("if-none-match", &tag)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 304, "If-None-Match: {tag}");
        assert_eq!(resp.headers()["etag"], etag.as_str());
        assert!(resp.bytes().await.unwrap().is_empty());
    }
    // Another tag: the file.
    let resp = client
        .get(server.url("/page.js"))
        .header("if-none-match", "\"0000000000000000\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
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
    for path in ["/page.js", "/favicon.ico"] {
        let head = client.head(server.url(path)).send().await.unwrap();
        assert_eq!(head.status(), 200, "HEAD {path}");
        let post = client.post(server.url(path)).send().await.unwrap();
        assert_eq!(post.status(), 405, "POST {path}");
        assert_eq!(post.headers()["allow"], "GET, HEAD");
    }
    let missing = client.get(server.url("/page.css")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}
