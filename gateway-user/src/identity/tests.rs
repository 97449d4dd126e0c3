//! Identity tests: real RSA/EC crypto, a JWT attack suite, and JWKS/discovery over real TLS on
//! 127.0.0.1 (rcgen certificate, trusted through `ca_file`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::FetchError;
use super::jwks::{JwksCache, KeySet, MIN_REFRESH_INTERVAL};
use super::*;
use crate::net::http::HttpError;

pub(super) const RSA1: &str = include_str!("testdata/rsa1.pem");
const RSA1_PUB: &str = include_str!("testdata/rsa1.pub.pem");
pub(super) const RSA2: &str = include_str!("testdata/rsa2.pem");
pub(super) const ISS: &str = "https://idp.example.test";
pub(super) const AUD: &str = "agentgate";

pub(super) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub(super) struct TestKey {
    kid: String,
    alg: Algorithm,
    pub(super) enc: EncodingKey,
    jwk: Value,
}

impl TestKey {
    fn new(enc: EncodingKey, alg: Algorithm, kid: &str) -> Self {
        let mut jwk = Jwk::from_encoding_key(&enc, alg).unwrap();
        jwk.common.key_id = Some(kid.to_string());
        TestKey {
            kid: kid.to_string(),
            alg,
            enc,
            jwk: serde_json::to_value(jwk).unwrap(),
        }
    }

    pub(super) fn rsa(pem: &str, kid: &str) -> Self {
        Self::new(
            EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            Algorithm::RS256,
            kid,
        )
    }

    fn ec(kid: &str) -> Self {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        Self::new(
            EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
            Algorithm::ES256,
            kid,
        )
    }

    pub(super) fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.enc).unwrap()
    }
}

pub(super) fn jwks_json(keys: &[&TestKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

pub(super) fn claims_for(iss: &str) -> Value {
    let t = now();
    json!({
        "iss": iss,
        "aud": ["other-service", AUD],
        "sub": "alice@example.test",
        "groups": ["dba", "dev"],
        "iat": t,
        "exp": t + 600,
    })
}

pub(super) fn claims() -> Value {
    claims_for(ISS)
}

pub(super) fn with(mut v: Value, key: &str, val: Value) -> Value {
    v[key] = val;
    v
}

pub(super) fn without(mut v: Value, key: &str) -> Value {
    v.as_object_mut().unwrap().remove(key);
    v
}

pub(super) fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

pub(super) fn provider(name: &str, issuer: &str, jwks: JwksSource) -> ProviderConfig {
    ProviderConfig {
        name: name.to_string(),
        issuer: issuer.to_string(),
        audiences: vec![AUD.to_string()],
        jwks,
        algorithms: vec![Algorithm::RS256, Algorithm::ES256],
        groups_claim: "groups".to_string(),
        clock_skew: Duration::from_secs(30),
        max_lifetime: Duration::from_secs(3600),
        ca_file: None,
    }
}

fn write_atomically(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A verifier over a JWKS file holding an RSA key "k1" and an EC key "e1".
pub(super) struct FileFixture {
    _dir: tempfile::TempDir,
    pub(super) rsa: TestKey,
    pub(super) ec: TestKey,
    pub(super) verifier: Verifier,
}

pub(super) fn file_fixture() -> FileFixture {
    let dir = tempfile::tempdir().unwrap();
    let rsa = TestKey::rsa(RSA1, "k1");
    let ec = TestKey::ec("e1");
    let path = dir.path().join("jwks.json");
    write_atomically(&path, &jwks_json(&[&rsa, &ec]));
    let verifier = Verifier::new(vec![provider("corp", ISS, JwksSource::File(path))]).unwrap();
    FileFixture {
        _dir: dir,
        rsa,
        ec,
        verifier,
    }
}

pub(super) async fn refused(v: &Verifier, token: &str, reason: &str) -> TokenError {
    match v.verify(token).await {
        Ok(p) => panic!("token accepted as {p:?}, expected refusal {reason}"),
        Err(e) => {
            assert_eq!(e.reason(), reason, "wrong refusal: {e}");
            e
        }
    }
}

// ---------------------------------------------------------------- valid tokens

#[tokio::test]
async fn identity_accepts_valid_rs256_with_groups() {
    let f = file_fixture();
    let c = claims();
    let p = f.verifier.verify(&f.rsa.sign(&c)).await.unwrap();
    assert_eq!(
        p,
        Principal {
            provider: "corp".into(),
            issuer: ISS.into(),
            subject: "alice@example.test".into(),
            groups: vec!["dba".into(), "dev".into()],
            expires_at: UNIX_EPOCH + Duration::from_secs(c["exp"].as_u64().unwrap()),
            pod_uid: None,
        }
    );
}

#[tokio::test]
async fn identity_accepts_valid_es256_with_single_string_group() {
    let f = file_fixture();
    let c = with(claims(), "groups", json!("ops"));
    let c = with(c, "aud", json!(AUD));
    let p = f.verifier.verify(&f.ec.sign(&c)).await.unwrap();
    assert_eq!(p.groups, vec!["ops".to_string()]);
    assert_eq!(p.subject, "alice@example.test");
    // No groups claim at all: no groups.
    let p = f
        .verifier
        .verify(&f.ec.sign(&without(claims(), "groups")))
        .await
        .unwrap();
    assert!(p.groups.is_empty());
}

#[tokio::test]
async fn identity_accepts_expired_within_clock_skew() {
    let f = file_fixture();
    let t = now();
    let c = with(with(claims(), "iat", json!(t - 600)), "exp", json!(t - 10));
    f.verifier.verify(&f.rsa.sign(&c)).await.unwrap();
}

// ---------------------------------------------------------------- attack suite

#[tokio::test]
async fn identity_refuses_alg_none() {
    let f = file_fixture();
    for alg in ["none", "None", "NONE"] {
        let token = format!(
            "{}.{}.",
            b64(&json!({"alg": alg, "kid": "k1", "typ": "JWT"})),
            b64(&claims())
        );
        let e = refused(&f.verifier, &token, "alg_not_allowed").await;
        assert!(matches!(
            e,
            TokenError::AlgNotAllowed { provider: None, .. }
        ));
    }
}

#[tokio::test]
async fn identity_refuses_hs256_signed_with_rsa_public_key() {
    let f = file_fixture();
    for kid in [Some("k1".to_string()), None] {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = kid;
        let token = jsonwebtoken::encode(
            &h,
            &claims(),
            &EncodingKey::from_secret(RSA1_PUB.as_bytes()),
        )
        .unwrap();
        refused(&f.verifier, &token, "alg_not_allowed").await;
    }
}

#[tokio::test]
async fn identity_refuses_alg_outside_provider_list() {
    let f = file_fixture();
    let mut h = Header::new(Algorithm::RS384);
    h.kid = Some("k1".into());
    let token = jsonwebtoken::encode(&h, &claims(), &f.rsa.enc).unwrap();
    let e = refused(&f.verifier, &token, "alg_not_allowed").await;
    assert!(matches!(e, TokenError::AlgNotAllowed { provider: Some(ref p), .. } if p == "corp"));
}

#[tokio::test]
async fn identity_refuses_key_type_not_matching_alg() {
    let f = file_fixture();
    // ES256 token that names the RSA key.
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("k1".into());
    let token = jsonwebtoken::encode(&h, &claims(), &f.ec.enc).unwrap();
    refused(&f.verifier, &token, "key_alg_mismatch").await;
}

#[tokio::test]
async fn identity_refuses_expired() {
    let f = file_fixture();
    let t = now();
    let c = with(
        with(claims(), "iat", json!(t - 1200)),
        "exp",
        json!(t - 600),
    );
    let e = refused(&f.verifier, &f.rsa.sign(&c), "expired").await;
    assert!(matches!(e, TokenError::Expired { exp, .. } if exp == t - 600));
}

#[tokio::test]
async fn identity_refuses_nbf_in_future() {
    let f = file_fixture();
    let c = with(claims(), "nbf", json!(now() + 300));
    refused(&f.verifier, &f.rsa.sign(&c), "not_yet_valid").await;
}

#[tokio::test]
async fn identity_refuses_iat_in_future() {
    let f = file_fixture();
    let t = now();
    let c = with(with(claims(), "iat", json!(t + 300)), "exp", json!(t + 900));
    refused(&f.verifier, &f.rsa.sign(&c), "iat_in_future").await;
}

#[tokio::test]
async fn identity_refuses_missing_exp_or_iat() {
    let f = file_fixture();
    for claim in ["exp", "iat", "aud", "sub"] {
        let e = refused(
            &f.verifier,
            &f.rsa.sign(&without(claims(), claim)),
            "missing_claim",
        )
        .await;
        assert!(matches!(e, TokenError::MissingClaim(ref c) if c == claim));
    }
}

#[tokio::test]
async fn identity_refuses_wrong_issuer() {
    let f = file_fixture();
    let c = claims_for("https://evil.example.test");
    let e = refused(&f.verifier, &f.rsa.sign(&c), "unknown_issuer").await;
    assert!(e.to_string().contains("evil.example.test"));
    // Exact match: a trailing slash is another issuer.
    let c = claims_for(&format!("{ISS}/"));
    refused(&f.verifier, &f.rsa.sign(&c), "unknown_issuer").await;
}

#[tokio::test]
async fn identity_refuses_wrong_audience() {
    let f = file_fixture();
    let c = with(claims(), "aud", json!(["billing", "crm"]));
    refused(&f.verifier, &f.rsa.sign(&c), "wrong_audience").await;
    let c = with(claims(), "aud", json!("billing"));
    refused(&f.verifier, &f.rsa.sign(&c), "wrong_audience").await;
}

#[tokio::test]
async fn identity_refuses_unknown_kid() {
    let f = file_fixture();
    let other = TestKey::rsa(RSA2, "k-unknown");
    let e = refused(&f.verifier, &other.sign(&claims()), "unknown_kid").await;
    assert!(matches!(e, TokenError::UnknownKid { ref kid, .. } if kid == "k-unknown"));
}

#[tokio::test]
async fn identity_refuses_missing_kid_with_several_keys() {
    let f = file_fixture();
    let token =
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims(), &f.rsa.enc).unwrap();
    let e = refused(&f.verifier, &token, "missing_kid").await;
    assert!(matches!(e, TokenError::MissingKid { keys: 2, .. }));
}

#[tokio::test]
async fn identity_refuses_tampered_signature() {
    let f = file_fixture();
    let token = f.rsa.sign(&claims());
    let (input, sig) = token.rsplit_once('.').unwrap();
    let mut sig: Vec<u8> = sig.bytes().collect();
    let mid = sig.len() / 2;
    sig[mid] = if sig[mid] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{input}.{}", String::from_utf8(sig).unwrap());
    refused(&f.verifier, &tampered, "bad_signature").await;
    // EC too.
    let token = f.ec.sign(&claims());
    let (input, sig) = token.rsplit_once('.').unwrap();
    let mut raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
    raw[10] ^= 1;
    let tampered = format!("{input}.{}", URL_SAFE_NO_PAD.encode(raw));
    refused(&f.verifier, &tampered, "bad_signature").await;
}

#[tokio::test]
async fn identity_refuses_tampered_payload() {
    let f = file_fixture();
    let token = f.rsa.sign(&claims());
    let parts: Vec<&str> = token.split('.').collect();
    let forged = with(claims(), "groups", json!(["admin"]));
    let tampered = format!("{}.{}.{}", parts[0], b64(&forged), parts[2]);
    refused(&f.verifier, &tampered, "bad_signature").await;
}

#[tokio::test]
async fn identity_refuses_lifetime_over_max() {
    let f = file_fixture();
    let t = now();
    let c = with(with(claims(), "iat", json!(t)), "exp", json!(t + 7200));
    let e = refused(&f.verifier, &f.rsa.sign(&c), "lifetime_too_long").await;
    assert!(matches!(
        e,
        TokenError::LifetimeTooLong {
            lifetime: 7200,
            max: 3600,
            ..
        }
    ));
}

#[tokio::test]
async fn identity_refuses_garbage() {
    let f = file_fixture();
    let valid = f.rsa.sign(&claims());
    let parts: Vec<&str> = valid.split('.').collect();
    let not_json = URL_SAFE_NO_PAD.encode("not json");
    let cases = [
        String::new(),
        "garbage".to_string(),
        "a.b".to_string(),
        format!("{valid}.extra"),
        "!!!.???.###".to_string(),
        format!("{not_json}.{}.{}", parts[1], parts[2]),
        format!("{}.{not_json}.{}", parts[0], parts[2]),
        format!("{}.{}.{}", b64(&json!([1, 2])), parts[1], parts[2]),
        format!("{}.{}.{}", b64(&json!({"kid": "k1"})), parts[1], parts[2]),
        format!(".{}.{}", parts[1], parts[2]),
        format!("{}.{}.{}", parts[0], parts[1], "***"),
        format!("{valid} "),
    ];
    for case in &cases {
        let e = refused(&f.verifier, case, "malformed").await;
        assert!(matches!(e, TokenError::Malformed(_)), "{case:?}: {e}");
    }
}

#[tokio::test]
async fn identity_refuses_oversized_tokens() {
    let f = file_fixture();
    let huge = "a".repeat(1024 * 1024);
    let e = refused(&f.verifier, &huge, "too_large").await;
    assert!(matches!(e, TokenError::TooLarge { len, max: 16384 } if len == 1024 * 1024));
    // A well-formed, validly signed token just over the limit is refused too.
    let c = with(claims(), "pad", json!("x".repeat(16 * 1024)));
    refused(&f.verifier, &f.rsa.sign(&c), "too_large").await;
}

#[tokio::test]
async fn identity_refuses_crit_header() {
    let f = file_fixture();
    let valid = f.rsa.sign(&claims());
    let parts: Vec<&str> = valid.split('.').collect();
    let h = b64(&json!({"alg": "RS256", "kid": "k1", "crit": ["b64"], "b64": false}));
    let token = format!("{h}.{}.{}", parts[1], parts[2]);
    refused(&f.verifier, &token, "unsupported_header").await;
}

// ---------------------------------------------------------------- configuration

#[test]
fn identity_config_validation() {
    let file = || JwksSource::File(PathBuf::from("/nonexistent/jwks.json"));
    let err = |cfgs: Vec<ProviderConfig>| Verifier::new(cfgs).unwrap_err();

    let mut p = provider("a", ISS, file());
    p.algorithms = vec![Algorithm::RS256, Algorithm::HS256];
    assert!(matches!(
        err(vec![p]),
        IdentityError::SymmetricAlgorithm {
            alg: Algorithm::HS256,
            ..
        }
    ));
    let mut p = provider("a", ISS, file());
    p.algorithms.clear();
    assert!(matches!(err(vec![p]), IdentityError::NoAlgorithms { .. }));
    let mut p = provider("a", ISS, file());
    p.audiences.clear();
    assert!(matches!(err(vec![p]), IdentityError::EmptyAudiences { .. }));
    let mut p = provider("a", ISS, file());
    p.audiences.push(String::new());
    assert!(matches!(err(vec![p]), IdentityError::EmptyAudience { .. }));
    let p = provider("a", "", file());
    assert!(matches!(err(vec![p]), IdentityError::EmptyIssuer { .. }));
    let p = provider(" ", ISS, file());
    assert!(matches!(err(vec![p]), IdentityError::EmptyName));
    let mut p = provider("a", ISS, file());
    p.max_lifetime = Duration::ZERO;
    assert!(matches!(
        err(vec![p]),
        IdentityError::ZeroMaxLifetime { .. }
    ));
    assert!(matches!(
        err(vec![provider("a", ISS, file()), provider("b", ISS, file())]),
        IdentityError::DuplicateIssuer { .. }
    ));
    assert!(matches!(
        err(vec![
            provider("a", ISS, file()),
            provider("a", "https://other", file())
        ]),
        IdentityError::DuplicateName(_)
    ));
    // Plain http only to loopback; discovery follows the issuer's scheme.
    let p = provider(
        "a",
        ISS,
        JwksSource::Url("http://idp.example.test/jwks".into()),
    );
    assert!(matches!(
        err(vec![p]),
        IdentityError::Url {
            source: FetchError::Http(HttpError::InsecureUrl),
            ..
        }
    ));
    let p = provider("a", "http://10.1.2.3", JwksSource::Discovery);
    assert!(matches!(
        err(vec![p]),
        IdentityError::Url {
            source: FetchError::Http(HttpError::InsecureUrl),
            ..
        }
    ));
    let p = provider("a", ISS, JwksSource::Url("ftp://x/jwks".into()));
    assert!(matches!(
        err(vec![p]),
        IdentityError::Url {
            source: FetchError::Http(HttpError::InvalidUrl(_)),
            ..
        }
    ));
    let mut p = provider("a", ISS, JwksSource::Url("https://x/jwks".into()));
    p.ca_file = Some(PathBuf::from("/nonexistent/ca.pem"));
    assert!(matches!(err(vec![p]), IdentityError::CaFile { .. }));
    // Accepted: loopback http, https, discovery.
    Verifier::new(vec![
        provider(
            "a",
            "https://a",
            JwksSource::Url("http://127.0.0.1:1/jwks".into()),
        ),
        provider(
            "b",
            "https://b",
            JwksSource::Url("http://localhost:1/jwks".into()),
        ),
        provider("c", "https://c", JwksSource::Discovery),
        provider("d", "https://d", file()),
    ])
    .unwrap();
}

// ---------------------------------------------------------------- JWKS cache

#[test]
fn identity_refresh_interval_is_ten_seconds() {
    assert_eq!(MIN_REFRESH_INTERVAL, Duration::from_secs(10));
    assert_eq!(JwksCache::new().min_interval, Duration::from_secs(10));
}

/// Sixteen callers that all saw generation 0 ask for a refresh at once; each must end up with
/// generation 1. Counts the loads in `loads`.
async fn sixteen_concurrent_refreshes(cache: &Arc<JwksCache>, loads: &Arc<AtomicUsize>, doc: &str) {
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (cache, loads, doc) = (cache.clone(), loads.clone(), doc.to_string());
        tasks.push(tokio::spawn(async move {
            cache
                .refresh(0, || async {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    KeySet::parse("t", doc.as_bytes())
                })
                .await
                .generation
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 1);
    }
}

#[tokio::test]
async fn identity_cache_single_flight_and_rate_limit() {
    let key = TestKey::rsa(RSA1, "k1");
    let doc = jwks_json(&[&key]);
    let cache = Arc::new(JwksCache::new());
    let loads = Arc::new(AtomicUsize::new(0));
    sixteen_concurrent_refreshes(&cache, &loads, &doc).await;
    assert_eq!(loads.load(Ordering::SeqCst), 1, "one shared fetch");
    // A caller that has seen generation 1 asks again: rate-limited (10 s), no fetch.
    let snap = cache
        .refresh(1, || async {
            loads.fetch_add(1, Ordering::SeqCst);
            KeySet::parse("t", doc.as_bytes())
        })
        .await;
    assert_eq!(snap.generation, 1);
    assert_eq!(loads.load(Ordering::SeqCst), 1, "rate-limited");
}

#[tokio::test]
async fn identity_cache_single_flight_without_rate_limit() {
    // Even with no rate limit, callers queued behind an in-flight refresh reuse its result.
    let key = TestKey::rsa(RSA1, "k1");
    let doc = jwks_json(&[&key]);
    let mut cache = JwksCache::new();
    cache.min_interval = Duration::ZERO;
    let cache = Arc::new(cache);
    let loads = Arc::new(AtomicUsize::new(0));
    sixteen_concurrent_refreshes(&cache, &loads, &doc).await;
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn identity_file_source_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let k1 = TestKey::rsa(RSA1, "k1");
    let k2 = TestKey::rsa(RSA2, "k2");
    // Signed up front: RSA signing in a debug build on a loaded machine can take longer than
    // the refresh interval, which would let the re-read happen inside the "within" window.
    let (t1, t2) = (k1.sign(&claims()), k2.sign(&claims()));
    write_atomically(&path, &jwks_json(&[&k1]));
    let v = Verifier::new(vec![provider("corp", ISS, JwksSource::File(path.clone()))])
        .unwrap()
        .with_min_refresh_interval(Duration::from_secs(2));
    v.verify(&t1).await.unwrap();

    write_atomically(&path, &jwks_json(&[&k2]));
    // Within the refresh interval the new kid is unknown: the file is not re-read.
    refused(&v, &t2, "unknown_kid").await;
    v.verify(&t1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Unknown kid -> refresh -> the replaced file is read.
    let p = v.verify(&t2).await.unwrap();
    assert_eq!(p.subject, "alice@example.test");
    // The old key is gone.
    refused(&v, &t1, "unknown_kid").await;
}

#[tokio::test]
async fn identity_file_source_unreadable() {
    let v = Verifier::new(vec![provider(
        "corp",
        ISS,
        JwksSource::File(PathBuf::from("/nonexistent/jwks.json")),
    )])
    .unwrap();
    let e = refused(
        &v,
        &TestKey::rsa(RSA1, "k1").sign(&claims()),
        "jwks_unavailable",
    )
    .await;
    assert!(e.to_string().contains("/nonexistent/jwks.json"), "{e}");
}

// ---------------------------------------------------------------- HTTPS test server

#[derive(Default)]
struct ServerState {
    issuer: Mutex<String>,
    jwks: Mutex<String>,
    discovery_issuer: Mutex<Option<String>>,
    jwks_hits: AtomicUsize,
    discovery_hits: AtomicUsize,
}

struct TestServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
    ca_file: Option<PathBuf>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    async fn start(tls: bool) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ServerState::default());
        let scheme = if tls { "https" } else { "http" };
        *state.issuer.lock().unwrap() = format!("{scheme}://{addr}");
        let (acceptor, ca_file) = if tls {
            let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
            let ca = dir.path().join("ca.pem");
            std::fs::write(&ca, ck.cert.pem()).unwrap();
            let key = rustls_pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
            let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
            (
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg))),
                Some(ca),
            )
        } else {
            (None, None)
        };
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (st, acceptor) = (st.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        Some(a) => {
                            if let Ok(s) = a.accept(stream).await {
                                serve(s, &st).await;
                            }
                        }
                        None => serve(stream, &st).await,
                    }
                });
            }
        });
        TestServer {
            addr,
            state,
            ca_file,
            _dir: dir,
            task,
        }
    }

    fn issuer(&self) -> String {
        self.state.issuer.lock().unwrap().clone()
    }

    fn set_jwks(&self, keys: &[&TestKey]) {
        *self.state.jwks.lock().unwrap() = jwks_json(keys);
    }

    fn jwks_hits(&self) -> usize {
        self.state.jwks_hits.load(Ordering::SeqCst)
    }

    fn discovery_hits(&self) -> usize {
        self.state.discovery_hits.load(Ordering::SeqCst)
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, st: &ServerState) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let req = String::from_utf8_lossy(&buf);
    let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
    let issuer = st.issuer.lock().unwrap().clone();
    let (status, body, with_length) = match path.as_str() {
        "/.well-known/openid-configuration" => {
            st.discovery_hits.fetch_add(1, Ordering::SeqCst);
            let named = st
                .discovery_issuer
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_else(|| issuer.clone());
            let doc = json!({"issuer": named, "jwks_uri": format!("{issuer}/jwks")});
            ("200 OK", doc.to_string(), true)
        }
        "/jwks" => {
            st.jwks_hits.fetch_add(1, Ordering::SeqCst);
            ("200 OK", st.jwks.lock().unwrap().clone(), true)
        }
        "/big" => ("200 OK", " ".repeat(2 * 1024 * 1024), true),
        "/big-no-length" => ("200 OK", " ".repeat(2 * 1024 * 1024), false),
        _ => ("404 Not Found", String::new(), true),
    };
    let mut head =
        format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nConnection: close\r\n");
    if with_length {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let _ = s.write_all(head.as_bytes()).await;
    let _ = s.write_all(body.as_bytes()).await;
    let _ = s.shutdown().await;
}

fn https_provider(server: &TestServer, jwks: JwksSource) -> ProviderConfig {
    let mut p = provider("corp", &server.issuer(), jwks);
    p.ca_file = server.ca_file.clone();
    p
}

#[tokio::test]
async fn identity_https_discovery_and_key_rotation() {
    let server = TestServer::start(true).await;
    let k1 = TestKey::rsa(RSA1, "k1");
    let k2 = TestKey::rsa(RSA2, "k2");
    server.set_jwks(&[&k1]);
    let iss = server.issuer();
    let v = Arc::new(
        uncaptured(Verifier::new(vec![https_provider(&server, JwksSource::Discovery)]).unwrap())
            .with_min_refresh_interval(Duration::from_millis(1500)),
    );

    let p = v.verify(&k1.sign(&claims_for(&iss))).await.unwrap();
    assert_eq!(p.issuer, iss);
    assert_eq!(p.groups, vec!["dba".to_string(), "dev".to_string()]);
    assert_eq!((server.discovery_hits(), server.jwks_hits()), (1, 1));
    // Cached.
    v.verify(&k1.sign(&claims_for(&iss))).await.unwrap();
    assert_eq!(server.jwks_hits(), 1);

    // The IdP rotates to k2. Right away the refresh is rate-limited: unknown kid, no fetch.
    server.set_jwks(&[&k2]);
    let t2 = k2.sign(&claims_for(&iss));
    refused(&v, &t2, "unknown_kid").await;
    assert_eq!(server.jwks_hits(), 1);

    tokio::time::sleep(Duration::from_millis(1600)).await;
    // Many concurrent callers with the new kid share one refresh.
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (v, t2) = (v.clone(), t2.clone());
        tasks.push(tokio::spawn(async move { v.verify(&t2).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().subject, "alice@example.test");
    }
    assert_eq!(
        server.jwks_hits(),
        2,
        "one refresh for all concurrent callers"
    );
    assert_eq!(server.discovery_hits(), 1, "jwks_uri is cached");

    // The removed key is refused, and its unknown kid does not trigger another fetch yet.
    refused(&v, &k1.sign(&claims_for(&iss)), "unknown_kid").await;
    refused(&v, &k1.sign(&claims_for(&iss)), "unknown_kid").await;
    assert_eq!(server.jwks_hits(), 2);
}

/// A verifier whose sockets need no exemption (no capture runs in unit tests).
fn uncaptured(v: Verifier) -> Verifier {
    v.with_own_sockets(Arc::new(crate::net::Uncaptured))
}

/// Records the cookies the verifier registers as the gateway's own.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<(&'static str, u64)>>);

impl OwnSockets for Recorder {
    fn begin(&self, cookie: u64) -> Result<(), crate::net::ExemptionError> {
        self.0.lock().unwrap().push(("begin", cookie));
        Ok(())
    }
    fn end(&self, cookie: u64) {
        self.0.lock().unwrap().push(("end", cookie));
    }
}

#[tokio::test]
async fn identity_https_fetches_are_registered_as_own_sockets() {
    let server = TestServer::start(true).await;
    let k1 = TestKey::ec("e1");
    server.set_jwks(&[&k1]);
    let url = format!("{}/jwks", server.issuer());
    let rec = Arc::new(Recorder::default());
    let v = Verifier::new(vec![https_provider(&server, JwksSource::Url(url))])
        .unwrap()
        .with_own_sockets(rec.clone());
    let p = v
        .verify(&k1.sign(&claims_for(&server.issuer())))
        .await
        .unwrap();
    assert_eq!(p.subject, "alice@example.test");
    assert_eq!(server.jwks_hits(), 1);
    let calls = rec.0.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!((calls[0].0, calls[1].0), ("begin", "end"));
    assert!(calls[0].1 != 0 && calls[0].1 == calls[1].1, "{calls:?}");
    // A renewed verifier keeps the registration.
    let v2 = v
        .renewed(vec![https_provider(
            &server,
            JwksSource::Url(format!("{}/jwks2", server.issuer())),
        )])
        .unwrap();
    let _ = v2.verify(&k1.sign(&claims_for(&server.issuer()))).await;
    assert!(rec.0.lock().unwrap().len() > 2);
}

/// A registry that cannot register anything (the kernel map refused the write).
struct Refusing;

impl OwnSockets for Refusing {
    fn begin(&self, _cookie: u64) -> Result<(), crate::net::ExemptionError> {
        Err(crate::net::ExemptionError(
            "map write refused (test)".into(),
        ))
    }
    fn end(&self, _cookie: u64) {}
}

#[tokio::test]
async fn identity_fetches_fail_closed_when_their_sockets_cannot_be_registered() {
    let server = TestServer::start(true).await;
    let k1 = TestKey::ec("e1");
    server.set_jwks(&[&k1]);
    let url = format!("{}/jwks", server.issuer());
    let cfg = || vec![https_provider(&server, JwksSource::Url(url.clone()))];
    // Given no registry, and given one that fails: neither verifier connects (an unregistered
    // socket to a captured address would loop into the gateway's own listener).
    for (v, why) in [
        (Verifier::new(cfg()).unwrap(), "no registry"),
        (
            Verifier::new(cfg())
                .unwrap()
                .with_own_sockets(Arc::new(Refusing)),
            "map write refused (test)",
        ),
    ] {
        let e = refused(
            &v,
            &k1.sign(&claims_for(&server.issuer())),
            "jwks_unavailable",
        )
        .await;
        let text = e.to_string();
        assert!(text.contains("not connecting to"), "{text}");
        assert!(text.contains(why), "{text}");
    }
    assert_eq!(server.jwks_hits(), 0, "the identity provider was reached");
}

#[tokio::test]
async fn identity_https_untrusted_certificate_refused() {
    let server = TestServer::start(true).await;
    let k1 = TestKey::rsa(RSA1, "k1");
    server.set_jwks(&[&k1]);
    let mut p = https_provider(
        &server,
        JwksSource::Url(format!("{}/jwks", server.issuer())),
    );
    p.ca_file = None;
    let v = uncaptured(Verifier::new(vec![p]).unwrap());
    let e = refused(
        &v,
        &k1.sign(&claims_for(&server.issuer())),
        "jwks_unavailable",
    )
    .await;
    assert!(e.to_string().contains("TLS handshake"), "{e}");
    assert_eq!(server.jwks_hits(), 0);
}

#[tokio::test]
async fn identity_https_oversized_jwks_refused() {
    let server = TestServer::start(true).await;
    let k1 = TestKey::rsa(RSA1, "k1");
    for path in ["/big", "/big-no-length"] {
        let url = format!("{}{path}", server.issuer());
        let v =
            uncaptured(Verifier::new(vec![https_provider(&server, JwksSource::Url(url))]).unwrap());
        let e = refused(
            &v,
            &k1.sign(&claims_for(&server.issuer())),
            "jwks_unavailable",
        )
        .await;
        assert!(e.to_string().contains("1048576-byte limit"), "{path}: {e}");
    }
}

#[tokio::test]
async fn identity_https_discovery_issuer_mismatch_refused() {
    let server = TestServer::start(true).await;
    let k1 = TestKey::rsa(RSA1, "k1");
    server.set_jwks(&[&k1]);
    *server.state.discovery_issuer.lock().unwrap() = Some("https://evil.example.test".into());
    let v =
        uncaptured(Verifier::new(vec![https_provider(&server, JwksSource::Discovery)]).unwrap());
    let e = refused(
        &v,
        &k1.sign(&claims_for(&server.issuer())),
        "jwks_unavailable",
    )
    .await;
    assert!(
        e.to_string().contains("discovery document names issuer"),
        "{e}"
    );
    assert_eq!(server.jwks_hits(), 0);
}

#[tokio::test]
async fn identity_plain_http_to_loopback() {
    let server = TestServer::start(false).await;
    let k1 = TestKey::rsa(RSA1, "k1");
    server.set_jwks(&[&k1]);
    let url = format!("http://{}/jwks", server.addr);
    let v = uncaptured(Verifier::new(vec![provider("corp", ISS, JwksSource::Url(url))]).unwrap());
    v.verify(&k1.sign(&claims())).await.unwrap();
    assert_eq!(server.jwks_hits(), 1);
}
