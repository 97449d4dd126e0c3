//! What the agent is told about a refused token: one exact, safe message per cause, through the
//! real verifier (real RSA/EC signatures over a JWKS file).

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::tests::{
    b64, claims, claims_for, file_fixture, now, refused, with, without, TestKey, ISS, RSA1, RSA2,
};
use super::*;

/// A token with any header, signed RS256 by `key`.
fn signed(header: &Value, claims: &Value, key: &EncodingKey) -> String {
    let input = format!("{}.{}", b64(header), b64(claims));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, Algorithm::RS256).unwrap();
    format!("{input}.{sig}")
}

/// (token, reason code, exact agent message) for every cause the verifier knows.
fn cases() -> (
    super::tests::FileFixture,
    Vec<(String, &'static str, String)>,
) {
    let f = file_fixture();
    let t = now();
    let valid = f.rsa.sign(&claims());
    let parts: Vec<&str> = valid.split('.').collect();
    let not_json = URL_SAFE_NO_PAD.encode("not json");
    let rs = json!({"alg": "RS256", "kid": "k1", "typ": "JWT"});
    let key = &f.rsa.enc;
    let not_jwt = "the token is not a JWT (three base64url parts separated by dots)";
    let mut tampered: Vec<u8> = parts[2].bytes().collect();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        String::from_utf8(tampered).unwrap()
    );
    let unsigned = |alg: &str| {
        format!(
            "{}.{}.",
            b64(&json!({"alg": alg, "kid": "k1", "typ": "JWT"})),
            b64(&claims())
        )
    };
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("k1".into());
    let hs256 =
        jsonwebtoken::encode(&hs, &claims(), &EncodingKey::from_secret(b"public key")).unwrap();
    let mut rs384 = Header::new(Algorithm::RS384);
    rs384.kid = Some("k1".into());
    let rs384 = jsonwebtoken::encode(&rs384, &claims(), key).unwrap();
    let mut es_k1 = Header::new(Algorithm::ES256);
    es_k1.kid = Some("k1".into());
    let es_k1 = jsonwebtoken::encode(&es_k1, &claims(), &f.ec.enc).unwrap();
    let no_kid = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims(), key).unwrap();
    let s = |x: &str| x.to_string();
    let cases = vec![
        (s(""), "malformed", s("the token is empty")),
        (s("garbage"), "malformed", s(not_jwt)),
        (s("a.b"), "malformed", s(not_jwt)),
        (format!("{valid}.extra"), "malformed", s(not_jwt)),
        (
            format!(".{}.{}", parts[1], parts[2]),
            "malformed",
            s("the token's header is empty"),
        ),
        (
            format!("{}..{}", parts[0], parts[2]),
            "malformed",
            s("the token's payload is empty"),
        ),
        (
            s("!!!.???.###"),
            "malformed",
            s("the token's header is not base64url"),
        ),
        (
            format!("{not_json}.{}.{}", parts[1], parts[2]),
            "malformed",
            s("the token's header is not a JSON object"),
        ),
        (
            format!("{}.{}.{}", parts[0], b64(&json!([1, 2])), parts[2]),
            "malformed",
            s("the token's payload is not a JSON object"),
        ),
        (
            signed(&json!({"kid": "k1"}), &claims(), key),
            "malformed",
            s("the token's header has no alg"),
        ),
        (
            signed(&json!({"alg": 256, "kid": "k1"}), &claims(), key),
            "malformed",
            s("the token's alg is not a string"),
        ),
        (
            signed(&json!({"alg": "RS256", "kid": 1}), &claims(), key),
            "malformed",
            s("the token's kid is not a string"),
        ),
        (
            signed(&rs, &with(claims(), "iss", json!(7)), key),
            "malformed",
            s("the token's iss claim is not a string"),
        ),
        (
            format!("{}.{}.***", parts[0], parts[1]),
            "malformed",
            s("the token's signature is not base64url"),
        ),
        (
            unsigned("none"),
            "alg_not_allowed",
            s("the token's algorithm 'none' is not accepted (allowed: RS256, ES256)"),
        ),
        (
            unsigned("x\u{1}y\"z"),
            "alg_not_allowed",
            s("the token's algorithm 'x?y\"z' is not accepted (allowed: RS256, ES256)"),
        ),
        (
            hs256,
            "alg_not_allowed",
            s("the token's algorithm 'HS256' is not accepted (allowed: RS256, ES256)"),
        ),
        (
            rs384,
            "alg_not_allowed",
            s("the token's algorithm 'RS384' is not accepted (allowed: RS256, ES256)"),
        ),
        (
            signed(
                &json!({"alg": "RS256", "kid": "k1", "crit": ["exp"]}),
                &claims(),
                key,
            ),
            "unsupported_header",
            s("the token has a critical header (crit) the gateway does not understand"),
        ),
        (
            f.rsa.sign(&claims_for("https://evil.example.test")),
            "unknown_issuer",
            s("the token's issuer is not trusted"),
        ),
        (
            no_kid,
            "missing_kid",
            s("the token names no signing key (kid) and its issuer has several"),
        ),
        (
            TestKey::rsa(RSA2, "k-unknown").sign(&claims()),
            "unknown_kid",
            s("the token's signing key (kid) is unknown"),
        ),
        (
            es_k1,
            "key_alg_mismatch",
            s("the token's algorithm does not match its signing key"),
        ),
        (
            tampered,
            "bad_signature",
            s("the token's signature does not verify"),
        ),
        (
            f.rsa.sign(&without(claims(), "exp")),
            "missing_claim",
            s("the token has no exp claim"),
        ),
        (
            f.rsa.sign(&without(claims(), "iat")),
            "missing_claim",
            s("the token has no iat claim"),
        ),
        (
            f.rsa.sign(&without(claims(), "aud")),
            "missing_claim",
            s("the token has no aud claim"),
        ),
        (
            f.rsa.sign(&without(claims(), "sub")),
            "missing_claim",
            s("the token has no sub claim"),
        ),
        (
            f.rsa.sign(&with(claims(), "exp", json!("tomorrow"))),
            "invalid_claim",
            s("the token's exp claim is not a number"),
        ),
        (
            f.rsa.sign(&with(
                with(claims(), "iat", json!(t + 20)),
                "exp",
                json!(t + 10),
            )),
            "invalid_claim",
            s("the token's exp claim is before its iat"),
        ),
        (
            f.rsa.sign(&with(claims(), "aud", json!(5))),
            "invalid_claim",
            s("the token's aud claim is not a string or an array of strings"),
        ),
        (
            f.rsa.sign(&with(claims(), "sub", json!(5))),
            "invalid_claim",
            s("the token's sub claim is not a string"),
        ),
        (
            f.rsa.sign(&with(claims(), "groups", json!({"a": 1}))),
            "invalid_claim",
            s("the token's groups claim is not a string or an array of strings"),
        ),
        (
            f.rsa.sign(&with(
                with(claims(), "iat", json!(t - 1200)),
                "exp",
                json!(t - 600),
            )),
            "expired",
            s("the token has expired"),
        ),
        (
            f.rsa.sign(&with(claims(), "nbf", json!(t + 300))),
            "not_yet_valid",
            s("the token is not valid yet (nbf)"),
        ),
        (
            f.rsa.sign(&with(
                with(claims(), "iat", json!(t + 300)),
                "exp",
                json!(t + 900),
            )),
            "iat_in_future",
            s("the token is not valid yet (issued in the future: iat)"),
        ),
        (
            f.rsa.sign(&with(claims(), "aud", json!("billing"))),
            "wrong_audience",
            s("the token is not meant for this gateway (aud)"),
        ),
        (
            f.rsa.sign(&with(
                with(claims(), "iat", json!(t)),
                "exp",
                json!(t + 7200),
            )),
            "lifetime_too_long",
            s("the token's lifetime (exp - iat) of 7200 s is longer than the allowed 3600 s"),
        ),
        (
            "a".repeat(1024 * 1024),
            "too_large",
            s("the token is 1048576 bytes, over the gateway's limit of 16384 bytes"),
        ),
    ];
    (f, cases)
}

#[tokio::test]
async fn every_refusal_tells_the_agent_its_cause() {
    let (f, cases) = cases();
    let mut seen = std::collections::HashSet::new();
    for (token, reason, message) in &cases {
        let e = refused(&f.verifier, token, reason).await;
        assert_eq!(&e.agent_message(), message, "{reason}: {e}");
        seen.insert(e.reason());
    }
    // Every reason the verifier can give for a token is covered, but the unavailable keys
    // (below).
    assert_eq!(seen.len(), 16, "{seen:?}");
}

#[tokio::test]
async fn agent_messages_never_name_keys_providers_or_the_token() {
    let (f, cases) = cases();
    for (token, reason, _) in &cases {
        let e = refused(&f.verifier, token, reason).await;
        let m = e.agent_message();
        for secret in [
            "corp",
            "k1",
            "k-unknown",
            "idp.example.test",
            "evil",
            "-----",
        ] {
            assert!(!m.contains(secret), "{reason}: {m:?} names {secret:?}");
        }
        // No part of the token itself: its signature and payload are far longer than anything
        // the message may carry.
        for part in token.split('.').filter(|p| p.len() > 12) {
            assert!(!m.contains(part), "{reason}: {m:?} quotes the token");
        }
        assert!(m.len() < 120, "{reason}: {m:?}");
    }
}

#[tokio::test]
async fn unavailable_keys_are_not_the_agents_fault() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ProviderConfig {
        name: "corp".into(),
        issuer: ISS.into(),
        audiences: vec!["agentgate".into()],
        jwks: JwksSource::File(dir.path().join("missing.json")),
        algorithms: vec![Algorithm::RS256],
        groups_claim: "groups".into(),
        clock_skew: Duration::from_secs(30),
        max_lifetime: Duration::from_secs(3600),
        ca_file: None,
    };
    let v = Verifier::new(vec![cfg]).unwrap();
    let token = TestKey::rsa(RSA1, "k1").sign(&claims());
    let e = refused(&v, &token, "jwks_unavailable").await;
    assert_eq!(
        e.agent_message(),
        "the token cannot be checked right now (its issuer's keys are unavailable)"
    );
    // The operator's text keeps the detail: which provider and why.
    assert!(e.to_string().contains("corp") && e.to_string().contains("missing.json"));
}
