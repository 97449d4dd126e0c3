//! The web console's files, built into the binary (no CDN, nothing fetched at run time), and
//! the security headers every console answer carries.
//!
//! The page shell (`index`) is answered only to a signed-in person (`http.rs` checks first);
//! the static files under `/console/assets/` hold no data and are served to anyone.
//!
//! Every file has an ETag (a hash of its bytes, computed at compile time) and
//! `Cache-Control: no-cache`: browsers keep a copy but ask each time, so a new binary's files
//! are used at once although their names do not change.

use http_body_util::Full;
use hyper::{
    body::Bytes,
    header::{self, HeaderValue},
    HeaderMap, Response, StatusCode,
};

/// Where the files are served (the shell's `<script>` and `<link>` name them so).
pub const PREFIX: &str = "/console/assets/";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
    etag: u64,
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            bytes: include_bytes!(concat!("../../console/", $name)),
            etag: fnv1a(include_bytes!(concat!("../../console/", $name))),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

static INDEX: Asset = asset!("index.html", "text/html; charset=utf-8");

static FILES: &[Asset] = &[
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("inbox.js", JS),
    asset!("sessions.js", JS),
    asset!("term.js", JS),
    asset!("agents.js", JS),
    asset!("audit.js", JS),
];

/// FNV-1a, 64 bits: an ETag only has to change when the bytes do (not a security hash).
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
}

/// The console's single page (its client-side routes are `#/inbox`, `#/sessions`, …).
pub fn index() -> Response<Full<Bytes>> {
    answer(&INDEX, None)
}

/// A static file under `/console/assets/` (`path` is the request's path, or the file's name),
/// or `None` (the caller answers 404). The tests' short form of [`serve_conditional`].
#[cfg(test)]
pub fn serve(path: &str) -> Option<Response<Full<Bytes>>> {
    serve_conditional(path, None)
}

/// A static file, as `serve` in the tests, answering 304 Not Modified when `if_none_match` (the request's
/// `If-None-Match`) names the file's current ETag.
pub fn serve_conditional(
    path: &str,
    if_none_match: Option<&HeaderValue>,
) -> Option<Response<Full<Bytes>>> {
    let name = path.strip_prefix(PREFIX).unwrap_or(path);
    FILES
        .iter()
        .find(|a| a.name == name)
        .map(|a| answer(a, if_none_match))
}

fn etag(a: &Asset) -> String {
    format!("\"{:016x}\"", a.etag)
}

fn answer(a: &Asset, if_none_match: Option<&HeaderValue>) -> Response<Full<Bytes>> {
    let tag = etag(a);
    let fresh = if_none_match
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut r = if fresh {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Full::new(Bytes::from_static(a.bytes)));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(a.content_type),
        );
        r
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    harden(h);
    r
}

/// Headers for every console answer: no script or style but our own files, never framed.
pub fn harden(headers: &mut HeaderMap) {
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn body(r: Response<Full<Bytes>>) -> Bytes {
        r.into_body().collect().await.unwrap().to_bytes()
    }

    fn header(r: &Response<Full<Bytes>>, name: header::HeaderName) -> &str {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    #[tokio::test]
    async fn every_file_the_shell_and_modules_name_is_served_with_its_type_and_headers() {
        let shell = index();
        assert_eq!(
            header(&shell, header::CONTENT_TYPE),
            "text/html; charset=utf-8"
        );
        let html = String::from_utf8(body(shell).await.to_vec()).unwrap();
        // Every asset the shell or a module refers to exists, so a missing file fails here
        // rather than as a blank page.
        let mut named = vec![];
        for text in std::iter::once(html.clone()).chain(
            FILES
                .iter()
                .filter(|a| a.content_type == JS)
                .map(|a| String::from_utf8(a.bytes.to_vec()).unwrap()),
        ) {
            for part in text.split(['"', '\'']) {
                if let Some(n) = part.strip_prefix(PREFIX).or(part.strip_prefix("./")) {
                    if n.ends_with(".js") || n.ends_with(".css") {
                        named.push(n.to_string());
                    }
                }
            }
        }
        assert!(named.contains(&"app.js".to_string()) && named.contains(&"term.js".to_string()));
        for n in &named {
            assert!(
                serve(&format!("{PREFIX}{n}")).is_some(),
                "{n} is named but not served"
            );
        }
        for a in FILES {
            let r = serve(&format!("{PREFIX}{}", a.name)).unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let want = if a.name.ends_with(".js") {
                JS
            } else {
                "text/css; charset=utf-8"
            };
            assert_eq!(header(&r, header::CONTENT_TYPE), want, "{}", a.name);
            assert_eq!(
                header(&r, header::CONTENT_SECURITY_POLICY),
                "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
            );
            assert_eq!(header(&r, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
            assert_eq!(header(&r, header::REFERRER_POLICY), "no-referrer");
            assert_eq!(header(&r, header::CACHE_CONTROL), "no-cache");
            assert!(header(&r, header::ETAG).starts_with('"'));
            assert_eq!(body(r).await.as_ref(), a.bytes);
        }
    }

    #[tokio::test]
    async fn an_unknown_or_escaping_path_is_not_served() {
        for p in [
            "/console/assets/",
            "/console/assets/nope.js",
            "/console/assets/../../Cargo.toml",
            "/console/assets/index.html",
            "/console/assets/APP.JS",
        ] {
            assert!(serve(p).is_none(), "{p}");
        }
    }

    #[tokio::test]
    async fn a_current_etag_is_answered_304_and_a_stale_one_gets_the_file() {
        let first = serve("/console/assets/app.js").unwrap();
        let tag = first.headers().get(header::ETAG).unwrap().clone();
        let again = serve_conditional("/console/assets/app.js", Some(&tag)).unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(header(&again, header::ETAG), tag.to_str().unwrap());
        assert!(body(again).await.is_empty());
        let stale = HeaderValue::from_static("\"0000000000000000\"");
        let r = serve_conditional("/console/assets/app.js", Some(&stale)).unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        // Another file's tag does not make this one fresh.
        let other = serve("/console/assets/app.css").unwrap();
        let r = serve_conditional("/console/assets/app.js", other.headers().get(header::ETAG));
        assert_eq!(r.unwrap().status(), StatusCode::OK);
    }

    #[test]
    fn the_console_files_put_no_api_text_into_markup() {
        // The pages' XSS rule, checked on the source: no innerHTML/outerHTML/insertAdjacentHTML
        // /document.write, no eval or string timers, no inline handlers in the shell.
        for a in FILES.iter().chain(std::iter::once(&INDEX)) {
            let text = std::str::from_utf8(a.bytes).unwrap();
            for bad in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
                "onclick=\"",
                "style=\"",
            ] {
                assert!(!text.contains(bad), "{} contains {bad}", a.name);
            }
        }
    }
}
