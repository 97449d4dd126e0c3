//! The console's answers under `/console/` (sign-in, callback, sign-out, the page shell and its
//! files) and `/v1/me`, plus the small HTTP helpers they need (cookies, query strings, the
//! `next` check, pages).

use std::time::{Duration, Instant, SystemTime};

use http_body_util::BodyExt;
use hyper::{body::Bytes, header, HeaderMap, Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::{
    oidc::{random_token, OidcError},
    store, ConsoleAuth, Lookup, SignedIn, LOGIN_COOKIE, SESSION_COOKIE,
};
use crate::{
    admin::{
        assets,
        caller::{Caller, Via},
        http::{refuse, reply},
        routes::{whole, Body},
    },
    approval::Approver,
};

type Answer = Response<Body>;

/// Where a sign-in goes when it was given no (acceptable) `next`.
const HOME: &str = "/console/";

/// Answers a request for `/console` or anything under `/console/`. The caller adds the
/// console's security headers.
pub async fn handle<B>(auth: &ConsoleAuth, req: Request<B>) -> Answer {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    if auth.policy.borrow().console.is_none() {
        // Ends what sessions are left, too.
        let _ = auth.in_force();
        return refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            "the console is not configured (policy `console:`)",
        );
    }
    let method = req.method().clone();
    if let Some(file) = path.strip_prefix("/console/assets/") {
        return match (
            method,
            assets::serve_conditional(file, req.headers().get(header::IF_NONE_MATCH))
                .map(|r| r.map(|b| b.boxed_unsync())),
        ) {
            (Method::GET | Method::HEAD, Some(r)) => r,
            _ => refuse(StatusCode::NOT_FOUND, "not_found", "no such file"),
        };
    }
    match (method, path.as_str()) {
        (Method::GET, "/console/login") => login(auth, &query, req.headers()).await,
        (Method::GET, "/console/callback") => callback(auth, &query, req.headers()).await,
        (Method::POST, "/console/logout") => logout(auth, req.headers()),
        (Method::GET | Method::HEAD, _) => match auth.lookup(req.headers()) {
            Lookup::Valid(_) if path == "/console" || path == HOME => {
                assets::index().map(|b| b.boxed_unsync())
            }
            Lookup::Valid(_) => refuse(StatusCode::NOT_FOUND, "not_found", "no such page"),
            Lookup::None | Lookup::Invalid => {
                let next = safe_next(&path).unwrap_or_else(|| HOME.to_string());
                redirect(&format!("/console/login?next={}", percent_encode(&next)))
            }
        },
        _ => refuse(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    }
}

async fn login(auth: &ConsoleAuth, query: &str, headers: &HeaderMap) -> Answer {
    let client = match auth.client() {
        Ok(Some(c)) => c,
        Ok(None) => return refuse(StatusCode::NOT_FOUND, "not_found", "no console"),
        Err(e) => return failed(StatusCode::BAD_GATEWAY, &e),
    };
    let next = query_param(query, "next")
        .and_then(|n| safe_next(&n))
        .unwrap_or_else(|| HOME.to_string());
    let fresh = || -> Result<_, OidcError> {
        Ok((random_token(32)?, random_token(32)?, random_token(32)?))
    };
    let (state, nonce, verifier) = match fresh() {
        Ok(v) => v,
        Err(e) => return failed(StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    // One binding per browser, kept across its logins (two tabs signing in at once both work).
    let browser = match cookie(headers, LOGIN_COOKIE).filter(|b| is_token(b)) {
        Some(b) => b,
        None => match random_token(32) {
            Ok(b) => b,
            Err(e) => return failed(StatusCode::INTERNAL_SERVER_ERROR, &e),
        },
    };
    let url = match client.authorization_url(&state, &nonce, &verifier).await {
        Ok(u) => u,
        Err(e) => return failed(StatusCode::BAD_GATEWAY, &e),
    };
    auth.store
        .start_login(&state, verifier, nonce, next, store::key(&browser), client);
    let mut r = redirect(&url);
    set_cookie(
        &mut r,
        &format!(
            "{LOGIN_COOKIE}={browser}; Path=/console/; Max-Age={}; HttpOnly; Secure; SameSite=Lax",
            store::PENDING_TTL.as_secs()
        ),
    );
    r
}

async fn callback(auth: &ConsoleAuth, query: &str, headers: &HeaderMap) -> Answer {
    let bad_state = || {
        page(
            StatusCode::BAD_REQUEST,
            "bad_state",
            "This sign-in is unknown, expired or already used. Sign in again.",
        )
    };
    let Some(state) = query_param(query, "state") else {
        return bad_state();
    };
    // Taken out now: whatever follows, this state is spent.
    let Some(pending) = auth.store.finish_login(&state) else {
        tracing::warn!("console sign-in refused: unknown or used state");
        return bad_state();
    };
    let browser = cookie(headers, LOGIN_COOKIE).map(|b| store::key(&b));
    if browser != Some(pending.browser) {
        tracing::warn!("console sign-in refused: the callback came to another browser");
        return bad_state();
    }
    if let Some(error) = query_param(query, "error") {
        return page(
            StatusCode::BAD_REQUEST,
            "provider_error",
            &format!("The identity provider refused the sign-in: {error}"),
        );
    }
    let Some(code) = query_param(query, "code").filter(|c| !c.is_empty()) else {
        return page(
            StatusCode::BAD_REQUEST,
            "no_code",
            "No code from the identity provider.",
        );
    };
    let client = match auth.client() {
        Ok(Some(c)) if std::sync::Arc::ptr_eq(&c, &pending.client) => c,
        Ok(_) => {
            return page(
                StatusCode::BAD_REQUEST,
                "console_changed",
                "The console's settings changed during this sign-in. Sign in again.",
            )
        }
        Err(e) => return failed(StatusCode::BAD_GATEWAY, &e),
    };
    let ttl = match auth.policy.borrow().console.as_ref() {
        Some(c) => c.session_ttl,
        None => return refuse(StatusCode::NOT_FOUND, "not_found", "no console"),
    };
    let identity = match client
        .sign_in(&code, &pending.verifier, &pending.nonce)
        .await
    {
        Ok(i) => i,
        Err(e) => return failed(StatusCode::BAD_GATEWAY, &e),
    };
    let (id, csrf) = match (random_token(32), random_token(32)) {
        (Ok(i), Ok(c)) => (i, c),
        (Err(e), _) | (_, Err(e)) => return failed(StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    tracing::info!(issuer = %identity.issuer, subject = %identity.subject, "console sign-in");
    auth.store.insert(
        &id,
        store::Session {
            issuer: identity.issuer,
            subject: identity.subject,
            name: identity.name,
            groups: identity.groups,
            csrf_token: csrf,
            expires: Instant::now() + ttl,
            expires_at: SystemTime::now() + ttl,
        },
    );
    // A page, not a redirect: the provider's redirect here is a cross-site navigation, and a
    // SameSite=Strict cookie is sent only once the browser navigates again from our own page.
    let next = html_escape(&pending.next);
    let mut r = html(
        StatusCode::OK,
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"0;url={next}\"><title>Signed in</title></head><body><p>Signed in. <a href=\"{next}\">Continue</a></p></body></html>"
        ),
    );
    set_cookie(
        &mut r,
        &format!(
            "{SESSION_COOKIE}={id}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
            ttl.as_secs()
        ),
    );
    r
}

fn logout(auth: &ConsoleAuth, headers: &HeaderMap) -> Answer {
    let signed = match auth.lookup(headers) {
        Lookup::Valid(s) => s,
        Lookup::None | Lookup::Invalid => {
            return refuse(StatusCode::UNAUTHORIZED, "no_session", "not signed in")
        }
    };
    if let Err(why) = auth.check_csrf(&signed, headers) {
        return refuse(StatusCode::FORBIDDEN, "csrf", why);
    }
    auth.store.remove(&signed.id);
    let mut r = reply(StatusCode::OK, json!({"signed_out": true}));
    set_cookie(
        &mut r,
        &format!("{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict"),
    );
    r
}

/// `GET /v1/me`: who the caller is. `bearer` is the token a bearer caller presented (verified).
pub fn me(caller: &Caller, session: Option<&SignedIn>, bearer: Option<&str>) -> Answer {
    let Approver::Oidc {
        issuer,
        subject,
        groups,
    } = &caller.approver
    else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "no_token",
            "not an OIDC principal",
        );
    };
    let ms = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    };
    let (name, expires_ms, csrf) = match (session, &caller.via) {
        (Some(s), Via::Session { csrf_token }) => (
            s.session.name.clone(),
            ms(s.session.expires_at),
            Some(csrf_token.clone()),
        ),
        _ => {
            let claims = bearer.and_then(super::oidc::payload).unwrap_or_default();
            let name = claims
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or(subject)
                .to_string();
            let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
            (
                name,
                ms(SystemTime::UNIX_EPOCH + Duration::from_secs(exp)),
                None,
            )
        }
    };
    let mut body = json!({
        "issuer": issuer,
        "subject": subject,
        "name": name,
        "groups": groups,
        "role": caller.role,
        "via": if csrf.is_some() { "session" } else { "bearer" },
        "expires_ms": expires_ms,
    });
    if let Some(c) = csrf {
        body["csrf_token"] = Value::String(c);
    }
    let mut r = reply(StatusCode::OK, body);
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

fn failed(status: StatusCode, e: &OidcError) -> Answer {
    tracing::warn!(code = e.code(), "console sign-in failed: {e}");
    page(status, e.code(), &format!("Sign-in failed: {e}"))
}

/// A small HTML page: `code` for scripts and tests, `text` for people (escaped).
fn page(status: StatusCode, code: &str, text: &str) -> Answer {
    html(
        status,
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>agentgate sign-in</title></head><body><p id=\"error\" data-reason=\"{}\">{}</p><p><a href=\"/console/login\">Sign in</a></p></body></html>",
            html_escape(code),
            html_escape(text)
        ),
    )
}

fn html(status: StatusCode, body: String) -> Answer {
    let mut r = Response::new(whole(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

fn redirect(location: &str) -> Answer {
    let mut r = Response::new(whole(Bytes::new()));
    *r.status_mut() = StatusCode::FOUND;
    if let Ok(v) = header::HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

fn set_cookie(r: &mut Answer, value: &str) {
    if let Ok(v) = header::HeaderValue::from_str(value) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// The value of cookie `name` in the request's `Cookie` headers (the first one).
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// A value we made with [`random_token`]`(32)`: 43 base64url characters.
fn is_token(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `next` if it is a path of the console itself (`/console` or under `/console/`), so a
/// sign-in link can send no one elsewhere: no scheme or host, no `//`, no backslash, no
/// `..` segment, no control or quoting characters.
pub fn safe_next(next: &str) -> Option<String> {
    let ok_chars = next
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'\\' | b'"' | b'\'' | b'<' | b'>' | b'`'));
    let path = next.split(['?', '#']).next().unwrap_or("");
    let ok = ok_chars
        && next.len() <= 512
        && (path == "/console" || path.starts_with("/console/"))
        && !next.contains("//")
        && !path.split('/').any(|seg| seg == ".." || seg == ".")
        && !path.contains('%');
    ok.then(|| next.to_string())
}

/// `scheme://host[:port]` of an absolute URL, lower case, without the scheme's default port:
/// what a browser sends as `Origin`.
pub fn origin_of(url: &str) -> Option<String> {
    let uri: hyper::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let auth = uri.authority()?;
    if auth.as_str().contains('@') {
        return None;
    }
    let host = auth.host().to_ascii_lowercase();
    match (scheme.as_str(), auth.port_u16()) {
        ("https", Some(443)) | ("http", Some(80)) | (_, None) => Some(format!("{scheme}://{host}")),
        (_, Some(p)) => Some(format!("{scheme}://{host}:{p}")),
    }
}

/// The first value of `name` in a query string, percent- and `+`-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| percent_decode(&v.replace('+', " ")))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// RFC 3986 unreserved characters as they are, every other byte `%XX`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `k=v&k=v`, each part percent-encoded.
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_a_console_path_or_nothing() {
        for good in [
            "/console",
            "/console/",
            "/console/#/approvals/ar-1",
            "/console/?x=1",
        ] {
            assert_eq!(safe_next(good).as_deref(), Some(good));
        }
        for bad in [
            "https://evil.example/",
            "//evil",
            "/console//evil.example",
            "/\\evil",
            "/console/\\\\evil",
            "/consolex",
            "/console/../v1/approvals",
            "/console/%2e%2e/x",
            "javascript:alert(1)",
            "/console/\"><script>",
            "",
        ] {
            assert_eq!(safe_next(bad), None, "{bad}");
        }
    }

    #[test]
    fn origins_and_queries() {
        assert_eq!(
            origin_of("https://GW.example:443/console/callback").as_deref(),
            Some("https://gw.example")
        );
        assert_eq!(
            origin_of("http://127.0.0.1:21002/console/callback").as_deref(),
            Some("http://127.0.0.1:21002")
        );
        assert_eq!(
            query_param("a=1&next=%2Fconsole%2F%23%2Fx&b", "next").as_deref(),
            Some("/console/#/x")
        );
        assert_eq!(query_param("a=%zz", "a"), None);
        assert_eq!(form_encode(&[("a b", "c&d=/")]), "a%20b=c%26d%3D%2F");
    }
}
