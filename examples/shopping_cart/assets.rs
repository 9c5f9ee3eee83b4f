//! The files the page loads besides itself: its script and its icon, built
//! into the binary and served as they are.
//!
//! The script is a file of its own rather than inline in the page so that
//! the page's `Content-Security-Policy` ([`PAGE_POLICY`]) can allow no script
//! but this server's: an injected inline script would not run. The state it
//! starts from travels in the page's `data-` attributes, not in the script,
//! so the script is the same for every visitor and can be cached; it is
//! revalidated on each load (`no-cache` with an `ETag`), so a new build is
//! picked up at once.

use std::sync::OnceLock;

use bytes::Bytes;
use hyper::header::{
    HeaderValue, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH, X_CONTENT_TYPE_OPTIONS,
};
use hyper::{HeaderMap, Response, StatusCode};

/// The page's policy: everything from this origin only; scripts from files
/// of this origin only (no inline script, no `eval`); the page's own inline
/// `<style>`; no plugins, no `<base>`, forms posted here only, no framing.
pub(crate) const PAGE_POLICY: HeaderValue = HeaderValue::from_static(
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
);

/// One file: its bytes, type and caching.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    cache_control: &'static str,
}

/// `GET /page.js`.
const PAGE_JS: Asset = Asset {
    body: include_str!("page.js"),
    content_type: "text/javascript; charset=utf-8",
    cache_control: "no-cache",
};

/// `GET /favicon.ico`: an SVG icon (browsers go by its type, not its name).
const FAVICON: Asset = Asset {
    body: include_str!("favicon.svg"),
    content_type: "image/svg+xml",
    cache_control: "public, max-age=86400",
};

/// The asset at `path`, if there is one.
fn asset(path: &str) -> Option<(&'static Asset, &'static HeaderValue)> {
    static TAGS: OnceLock<[HeaderValue; 2]> = OnceLock::new();
    let tags = TAGS.get_or_init(|| [etag_of(PAGE_JS.body), etag_of(FAVICON.body)]);
    match path {
        "/page.js" => Some((&PAGE_JS, &tags[0])),
        "/favicon.ico" => Some((&FAVICON, &tags[1])),
        _ => None,
    }
}

/// Whether `path` names an asset.
pub(crate) fn is_asset(path: &str) -> bool {
    asset(path).is_some()
}

/// The answer to `GET path` (or `HEAD`; hyper leaves the body out): the
/// file, or `304` if `If-None-Match` names its current tag; `None` if `path`
/// names no asset.
pub(crate) fn get(path: &str, headers: &HeaderMap) -> Option<Response<Bytes>> {
    let (asset, tag) = asset(path)?;
    let fresh = headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == tag);
    let mut resp = if fresh {
        let mut resp = Response::new(Bytes::new());
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        resp
    } else {
        let mut resp = Response::new(Bytes::from_static(asset.body.as_bytes()));
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
        resp
    };
    let h = resp.headers_mut();
    h.insert(ETAG, tag.clone());
    h.insert(CACHE_CONTROL, HeaderValue::from_static(asset.cache_control));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    Some(resp)
}

/// A strong tag of `body`: 64 bits of SipHash (fixed keys), in hex.
fn etag_of(body: &str) -> HeaderValue {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    body.hash(&mut hasher);
    HeaderValue::try_from(format!("\"{:016x}\"", hasher.finish())).expect("hex is header-safe")
}
