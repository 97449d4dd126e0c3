//! A small but strict OpenID provider for the console's sign-in tests (and the browser tests),
//! over HTTPS with its own CA, and [`Browser`], a cookie-keeping HTTP client that follows a
//! sign-in by hand.
//!
//! The provider: discovery, JWKS (`tests/fixtures/test-jwks.json`), `/authorize` (GET: a login
//! form whose user-name field is `#username` and whose button is `#sign-in`; POST: a single-use
//! code bound to the client, redirect URI, PKCE challenge and nonce), `/token` (grant type, code
//! unused and at most a minute old, client id, redirect URI exact, `code_verifier` against the
//! S256 challenge, the client secret if one is set, basic or post). ID tokens are signed with
//! the test key (`tests/fixtures/test-signing-key.pem`, kid `test-key-1`), and carry `iss`,
//! `aud`, `nonce`, `sub`, `name` and `groups` of the configured user; [`Idp::misbehave`] makes
//! the next ones wrong on purpose. It refuses what a real provider refuses: a missing PKCE
//! challenge, `plain`, an unknown client or redirect URI.
//!
//! A browser trusts it with Chromium's `--ignore-certificate-errors-spki-list=<Idp::spki_sha256>`
//! (its leaf key's SPKI hash), or with [`Idp::ca_path`].

use std::{
    collections::HashMap,
    convert::Infallible,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use base64::{
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
    Engine,
};
use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::{fixtures, now};

/// How long a code may wait before it is exchanged.
const CODE_TTL: Duration = Duration::from_secs(60);

/// What the next ID tokens get wrong, for the attack tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehave {
    No,
    WrongNonce,
    WrongAudience,
    WrongIssuer,
    Expired,
    /// Signed with a key not in the JWKS (same kid).
    ForeignKey,
}

pub struct IdpOptions {
    pub listen: SocketAddr,
    pub client_id: String,
    /// Set: a confidential client (basic or post); `None`: a public client (PKCE alone).
    pub client_secret: Option<String>,
    /// The one redirect URI registered for the client.
    pub redirect_uri: String,
    /// User name -> groups.
    pub users: Vec<(String, Vec<String>)>,
}

struct Code {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    nonce: String,
    user: String,
    issued: Instant,
    used: bool,
}

struct Inner {
    users: HashMap<String, Vec<String>>,
    codes: HashMap<String, Code>,
    misbehave: Misbehave,
    log: Vec<Value>,
}

struct State {
    issuer: String,
    client_id: String,
    client_secret: Option<String>,
    redirect_uri: String,
    inner: Mutex<Inner>,
}

/// The running provider; stopped on drop.
pub struct Idp {
    pub addr: SocketAddr,
    /// `https://127.0.0.1:PORT`, exactly as in its tokens and discovery document.
    pub issuer: String,
    /// The CA that signed its certificate (PEM file), for the gateway's `ca_file`.
    pub ca_path: PathBuf,
    /// base64(SHA-256(SubjectPublicKeyInfo)) of its leaf key, for Chromium's
    /// `--ignore-certificate-errors-spki-list`.
    pub spki_sha256: String,
    dir: PathBuf,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Idp {
    pub fn start(opts: IdpOptions) -> Self {
        // One directory per provider (tests run side by side in one process).
        let dir =
            std::env::temp_dir().join(crate::unique(&format!("oidc-idp-{}", opts.listen.port())));
        std::fs::create_dir_all(&dir).expect("idp dir");
        let (tls, ca_pem, spki) = tls(opts.listen);
        let ca_path = dir.join("idp-ca.pem");
        std::fs::write(&ca_path, ca_pem).expect("write idp CA");
        let std_listener = std::net::TcpListener::bind(opts.listen)
            .unwrap_or_else(|e| panic!("idp bind {}: {e}", opts.listen));
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("idp addr");
        let issuer = format!("https://{addr}");
        let state = Arc::new(State {
            issuer: issuer.clone(),
            client_id: opts.client_id,
            client_secret: opts.client_secret,
            redirect_uri: opts.redirect_uri,
            inner: Mutex::new(Inner {
                users: opts.users.into_iter().collect(),
                codes: HashMap::new(),
                misbehave: Misbehave::No,
                log: Vec::new(),
            }),
        });
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("idp runtime");
        let served = state.clone();
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(std_listener).expect("idp listener");
                tokio::select! {
                    _ = serve(listener, tls, served) => {}
                    _ = stop_rx => {}
                }
            });
            rt.shutdown_timeout(Duration::from_millis(200));
        });
        Idp {
            addr,
            issuer,
            ca_path,
            spki_sha256: spki,
            dir,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on, ID tokens are wrong this way (`Misbehave::No`: right again).
    pub fn misbehave(&self, m: Misbehave) {
        self.inner().misbehave = m;
    }

    /// Adds or changes a user.
    pub fn set_user(&self, name: &str, groups: &[&str]) {
        self.inner().users.insert(
            name.to_string(),
            groups.iter().map(|g| g.to_string()).collect(),
        );
    }

    /// Every request so far: `{"method", "path", "query", "form", "authorization", "status"}`.
    pub fn log(&self) -> Vec<Value> {
        self.inner().log.clone()
    }

    /// A policy `identity_providers` item (indented for the list) for this provider: discovery
    /// over HTTPS, trusting its CA.
    pub fn provider_yaml(&self, name: &str, audience: &str) -> String {
        format!(
            "  - name: {name}\n    issuer: {}\n    audiences: [{audience}]\n    jwks: {{from: discovery}}\n    algorithms: [RS256]\n    ca_file: {}\n",
            self.issuer,
            self.ca_path.display()
        )
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA, a leaf for `listen`'s address, the server config; the CA's PEM and the leaf's SPKI hash.
fn tls(listen: SocketAddr) -> (Arc<rustls::ServerConfig>, String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "agentgate-tests OIDC provider CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().expect("ca key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let ca_pem = ca_cert.pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
    params
        .distinguished_name
        .push(DnType::CommonName, "oidc-idp");
    params.subject_alt_names = vec![
        SanType::IpAddress(listen.ip()),
        SanType::DnsName("localhost".try_into().expect("dns name")),
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("leaf key");
    let spki = STANDARD.encode(Sha256::digest(key.subject_public_key_info()));
    let cert = params.signed_by(&key, &issuer).expect("leaf cert");
    let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone(), ca_cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("tls versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("idp server config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (Arc::new(config), ca_pem, spki)
}

async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<State>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(Ok(stream)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, content_type: &str, body: String) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        content_type.parse().expect("content type"),
    );
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        "no-store".parse().expect("cc"),
    );
    r
}

fn json_answer(status: StatusCode, v: Value) -> Answer {
    answer(status, "application/json", v.to_string())
}

fn oauth_error(code: &str, why: &str) -> Answer {
    json_answer(
        StatusCode::BAD_REQUEST,
        json!({"error": code, "error_description": why}),
    )
}

async fn handle(state: &State, req: Request<hyper::body::Incoming>) -> Answer {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let authorization = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match read_body(req).await {
        Some(b) => b,
        None => return answer(StatusCode::BAD_REQUEST, "text/plain", "body".into()),
    };
    let q = parse_form(&query);
    let form = parse_form(&body);
    let r = match (&method, path.as_str()) {
        (&Method::GET, "/.well-known/openid-configuration") => discovery(state),
        (&Method::GET, "/jwks") => answer(
            StatusCode::OK,
            "application/json",
            std::fs::read_to_string(fixtures().join("test-jwks.json")).unwrap_or_default(),
        ),
        (&Method::GET, "/authorize") => match check_authorize(state, &q) {
            Err(why) => answer(StatusCode::BAD_REQUEST, "text/plain", why),
            Ok(()) => login_form(&query),
        },
        (&Method::POST, "/authorize") => match check_authorize(state, &q) {
            Err(why) => answer(StatusCode::BAD_REQUEST, "text/plain", why),
            Ok(()) => issue_code(state, &q, &form),
        },
        (&Method::POST, "/token") => token(state, &form, authorization.as_deref()),
        _ => answer(StatusCode::NOT_FOUND, "text/plain", "not found".into()),
    };
    state
        .inner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .log
        .push(json!({
            "method": method.as_str(), "path": path, "query": q, "form": form,
            "authorization": authorization, "status": r.status().as_u16(),
        }));
    r
}

/// The request's body as text (a form), at most 64 KiB.
async fn read_body(req: Request<hyper::body::Incoming>) -> Option<String> {
    let body = http_body_util::Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .ok()?
        .to_bytes();
    String::from_utf8(body.to_vec()).ok()
}

fn discovery(state: &State) -> Answer {
    let iss = &state.issuer;
    let auth_methods = if state.client_secret.is_some() {
        json!(["client_secret_basic", "client_secret_post"])
    } else {
        json!(["none"])
    };
    json_answer(
        StatusCode::OK,
        json!({
            "issuer": iss,
            "authorization_endpoint": format!("{iss}/authorize"),
            "token_endpoint": format!("{iss}/token"),
            "jwks_uri": format!("{iss}/jwks"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": auth_methods,
            "scopes_supported": ["openid", "profile", "groups"],
        }),
    )
}

/// What a real provider checks before it shows its login page.
fn check_authorize(state: &State, q: &HashMap<String, String>) -> Result<(), String> {
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    if get("response_type") != "code" {
        return Err("response_type must be code".into());
    }
    if get("client_id") != state.client_id {
        return Err("unknown client_id".into());
    }
    if get("redirect_uri") != state.redirect_uri {
        return Err("redirect_uri is not the registered one".into());
    }
    if !get("scope").split(' ').any(|s| s == "openid") {
        return Err("scope must include openid".into());
    }
    if get("state").is_empty() || get("nonce").is_empty() {
        return Err("state and nonce are required".into());
    }
    if get("code_challenge_method") != "S256" || get("code_challenge").len() != 43 {
        return Err("PKCE with S256 is required".into());
    }
    Ok(())
}

fn login_form(query: &str) -> Answer {
    let action = html_escape(&format!("/authorize?{query}"));
    answer(
        StatusCode::OK,
        "text/html; charset=utf-8",
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Test IdP</title></head><body>\
             <form method=\"post\" action=\"{action}\"><label>User <input id=\"username\" name=\"username\" autocomplete=\"off\"></label>\
             <button id=\"sign-in\" type=\"submit\">Sign in</button></form></body></html>"
        ),
    )
}

fn issue_code(
    state: &State,
    q: &HashMap<String, String>,
    form: &HashMap<String, String>,
) -> Answer {
    let user = form.get("username").cloned().unwrap_or_default();
    let mut inner = state.inner.lock().unwrap_or_else(|p| p.into_inner());
    if !inner.users.contains_key(&user) {
        return answer(StatusCode::FORBIDDEN, "text/plain", "unknown user".into());
    }
    let code = random_hex();
    inner.codes.insert(
        code.clone(),
        Code {
            client_id: q["client_id"].clone(),
            redirect_uri: q["redirect_uri"].clone(),
            challenge: q["code_challenge"].clone(),
            nonce: q["nonce"].clone(),
            user,
            issued: Instant::now(),
            used: false,
        },
    );
    let location = format!(
        "{}?code={}&state={}",
        q["redirect_uri"],
        enc(&code),
        enc(&q["state"])
    );
    let mut r = answer(StatusCode::FOUND, "text/plain", String::new());
    r.headers_mut()
        .insert(hyper::header::LOCATION, location.parse().expect("location"));
    r
}

fn token(state: &State, form: &HashMap<String, String>, authorization: Option<&str>) -> Answer {
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if get("grant_type") != "authorization_code" {
        return oauth_error("unsupported_grant_type", "authorization_code only");
    }
    // Client authentication: basic, post, or none for a public client.
    let basic = authorization
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            let (id, secret) = s.split_once(':')?;
            Some((dec(id)?, dec(secret)?))
        });
    let (client_id, secret) = match &basic {
        Some((id, secret)) => (id.as_str(), Some(secret.as_str())),
        None => (
            get("client_id"),
            form.get("client_secret").map(String::as_str),
        ),
    };
    if client_id != state.client_id {
        return oauth_error("invalid_client", "unknown client");
    }
    if secret != state.client_secret.as_deref() {
        return oauth_error("invalid_client", "client authentication failed");
    }
    let mut inner = state.inner.lock().unwrap_or_else(|p| p.into_inner());
    let Some(code) = inner.codes.get_mut(get("code")) else {
        return oauth_error("invalid_grant", "unknown code");
    };
    if code.used {
        return oauth_error("invalid_grant", "code already used");
    }
    // Spent on first presentation, whatever follows.
    code.used = true;
    if code.issued.elapsed() > CODE_TTL {
        return oauth_error("invalid_grant", "code expired");
    }
    if code.client_id != client_id {
        return oauth_error("invalid_grant", "code issued to another client");
    }
    if code.redirect_uri != get("redirect_uri") {
        return oauth_error("invalid_grant", "redirect_uri differs");
    }
    let verifier = get("code_verifier");
    if !(43..=128).contains(&verifier.len())
        || URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != code.challenge
    {
        return oauth_error("invalid_grant", "code_verifier does not match");
    }
    let (user, nonce, aud) = (
        code.user.clone(),
        code.nonce.clone(),
        code.client_id.clone(),
    );
    let groups = inner.users.get(&user).cloned().unwrap_or_default();
    let m = inner.misbehave;
    drop(inner);
    let t = now();
    let (iat, exp) = if m == Misbehave::Expired {
        (t - 1000, t - 700)
    } else {
        (t, t + 300)
    };
    let claims = json!({
        "iss": if m == Misbehave::WrongIssuer { "https://evil.example".to_string() } else { state.issuer.clone() },
        "aud": if m == Misbehave::WrongAudience { "someone-else".to_string() } else { aud },
        "sub": user,
        "name": format!("{user} (test)"),
        "groups": groups,
        "nonce": if m == Misbehave::WrongNonce { "not-the-nonce".to_string() } else { nonce },
        "iat": iat,
        "exp": exp,
    });
    let key = if m == Misbehave::ForeignKey {
        foreign_key()
    } else {
        std::fs::read(fixtures().join("test-signing-key.pem")).expect("test signing key")
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-key-1".into());
    let id_token = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&key).expect("RSA PEM"),
    )
    .expect("sign ID token");
    json_answer(
        StatusCode::OK,
        json!({"access_token": random_hex(), "token_type": "Bearer", "expires_in": 300, "id_token": id_token}),
    )
}

/// An RSA key that is not the provider's (made once with openssl).
fn foreign_key() -> Vec<u8> {
    static KEY: Mutex<Option<Vec<u8>>> = Mutex::new(None);
    let mut k = KEY.lock().unwrap_or_else(|p| p.into_inner());
    k.get_or_insert_with(|| {
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .output()
            .expect("openssl genpkey");
        out.stdout
    })
    .clone()
}

fn random_hex() -> String {
    let mut b = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `k=v&…`, percent- and `+`-decoded (first value of each key).
pub fn parse_form(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for kv in s.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if let (Some(k), Some(v)) = (dec(k), dec(v)) {
            out.entry(k).or_insert(v);
        }
    }
    out
}

fn dec(s: &str) -> Option<String> {
    let s = s.replace('+', " ");
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(s.get(i + 1..i + 3)?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes all but RFC 3986's unreserved characters.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

// ---------------------------------------------------------------------------------------------
// A browser by hand
// ---------------------------------------------------------------------------------------------

/// An HTTP answer: status, headers (names lower case, every value), body.
#[derive(Debug, Clone)]
pub struct Answered {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answered {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::String(self.body.clone()))
    }

    /// The `Set-Cookie` line of cookie `name`, if the answer sets it.
    pub fn set_cookie(&self, name: &str) -> Option<&str> {
        self.headers_named("set-cookie")
            .into_iter()
            .find(|c| c.split_once('=').is_some_and(|(k, _)| k.trim() == name))
    }
}

/// Keeps cookies per `host:port` (name -> value; `Max-Age=0` removes), trusts one extra CA for
/// HTTPS. Requests are one connection each (`Connection: close`).
pub struct Browser {
    jar: HashMap<String, HashMap<String, String>>,
    tls: Arc<rustls::ClientConfig>,
}

impl Browser {
    pub fn new(ca_pem_file: &std::path::Path) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(ca_pem_file).expect("read CA");
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.expect("CA PEM")).expect("add CA");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        Browser {
            jar: HashMap::new(),
            tls: Arc::new(config),
        }
    }

    /// The cookie `name` kept for `authority` (`host:port`).
    pub fn cookie(&self, authority: &str, name: &str) -> Option<String> {
        self.jar.get(authority)?.get(name).cloned()
    }

    pub fn set_cookie(&mut self, authority: &str, name: &str, value: &str) {
        self.jar
            .entry(authority.to_string())
            .or_default()
            .insert(name.to_string(), value.to_string());
    }

    pub fn forget(&mut self, authority: &str, name: &str) {
        if let Some(j) = self.jar.get_mut(authority) {
            j.remove(name);
        }
    }

    pub fn get(&mut self, url: &str) -> Answered {
        self.request("GET", url, &[], None)
    }

    /// One request to `url` (http or https) with the jar's cookies for its host, `headers`
    /// and `body` (a form, if given as such by the caller's Content-Type header).
    pub fn request(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Answered {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            panic!("not an absolute http(s) URL: {url}")
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr: SocketAddr = authority
            .parse()
            .unwrap_or_else(|e| panic!("{authority}: only IP:port URLs here: {e}"));
        let body = body.unwrap_or("");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(j) = self.jar.get(authority).filter(|j| !j.is_empty()) {
            let c: Vec<String> = j.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req += &format!("Cookie: {}\r\n", c.join("; "));
        }
        for (k, v) in headers {
            req += &format!("{k}: {v}\r\n");
        }
        req += "\r\n";
        req += body;
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        tcp.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let mut raw = Vec::new();
        if https {
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let conn = rustls::ClientConnection::new(self.tls.clone(), name).expect("tls client");
            let mut s = rustls::StreamOwned::new(conn, tcp);
            s.write_all(req.as_bytes()).expect("send");
            let _ = s.read_to_end(&mut raw);
        } else {
            let mut s = tcp;
            s.write_all(req.as_bytes()).expect("send");
            let _ = s.read_to_end(&mut raw);
        }
        let a = parse_answer(&raw).unwrap_or_else(|| {
            panic!(
                "{method} {url}: bad answer {:?}",
                String::from_utf8_lossy(&raw)
            )
        });
        for c in a.headers_named("set-cookie") {
            let first = c.split(';').next().unwrap_or("");
            let Some((k, v)) = first.split_once('=') else {
                continue;
            };
            let gone = c
                .split(';')
                .any(|attr| attr.trim().eq_ignore_ascii_case("max-age=0"));
            let jar = self.jar.entry(authority.to_string()).or_default();
            if gone {
                jar.remove(k.trim());
            } else {
                jar.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        a
    }
}

fn parse_answer(raw: &[u8]) -> Option<Answered> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        let mut out = Vec::new();
        let mut p = 0;
        loop {
            let nl = body[p..].windows(2).position(|w| w == b"\r\n")? + p;
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&body[p..nl])
                    .split(';')
                    .next()?
                    .trim(),
                16,
            )
            .ok()?;
            p = nl + 2;
            if size == 0 {
                break;
            }
            out.extend_from_slice(body.get(p..p + size)?);
            p += size + 2;
        }
        body = out;
    }
    Some(Answered {
        status,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    })
}
