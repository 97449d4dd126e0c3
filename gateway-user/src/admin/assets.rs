//! The web console's files, built into the binary (no CDN, nothing fetched at run time), and
//! the security headers every console answer carries.
//!
//! The page shell (`index`) is answered only to a signed-in person (`http.rs` checks first);
//! the static files under `/console/assets/` hold no data and are served to anyone.

use http_body_util::Full;
use hyper::{body::Bytes, header, HeaderMap, Response, StatusCode};

/// The console's single page (its client-side routes are `#/inbox`, `#/sessions`, …).
pub fn index() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(
        b"<!doctype html><html><head><meta charset=\"utf-8\"><title>agentgate</title></head><body><p>The agentgate console is being built.</p></body></html>",
    )));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    harden(r.headers_mut());
    r
}

/// A static file under `/console/assets/`, or `None` (the caller answers 404).
pub fn serve(path: &str) -> Option<Response<Full<Bytes>>> {
    let _ = path;
    let _ = StatusCode::OK;
    None
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
        headers.insert(name, header::HeaderValue::from_static(value));
    }
}
