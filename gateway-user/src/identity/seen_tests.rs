//! The cache of verified signatures (`seen`): a token's signature is checked once per key, and
//! everything else at every login; expiry, key removal and a reload still refuse.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use super::tests::{claims, file_fixture, jwks_json, now, provider, refused, with, ISS};
use super::*;

fn checks(v: &Verifier) -> usize {
    v.signature_checks.load(Ordering::Relaxed)
}

#[tokio::test]
async fn a_token_seen_before_skips_only_its_signature_check() {
    let f = file_fixture();
    let t = f.rsa.sign(&claims());
    let first = f.verifier.verify(&t).await.unwrap();
    assert_eq!(checks(&f.verifier), 1);
    for _ in 0..3 {
        assert_eq!(f.verifier.verify(&t).await.unwrap(), first);
    }
    assert_eq!(checks(&f.verifier), 1, "the signature was checked again");
    // Another token, or the same one with a signature byte changed, is checked on its own.
    let other = f.ec.sign(&claims());
    f.verifier.verify(&other).await.unwrap();
    assert_eq!(checks(&f.verifier), 2);
    let (head, sig) = t.rsplit_once('.').unwrap();
    let mut sig = sig.to_string();
    let last = if sig.ends_with('A') { "B" } else { "A" };
    sig.replace_range(sig.len() - 1.., last);
    refused(&f.verifier, &format!("{head}.{sig}"), "bad_signature").await;
    // A refused token is not remembered: refused again, checked again.
    refused(&f.verifier, &format!("{head}.{sig}"), "bad_signature").await;
    assert_eq!(checks(&f.verifier), 4);
}

#[tokio::test]
async fn a_token_seen_before_expires_all_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let f = file_fixture();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks_json(&[&f.rsa])).unwrap();
    // The fixture's provider, with no clock skew.
    let v = Verifier::new(vec![ProviderConfig {
        clock_skew: Duration::ZERO,
        ..provider("corp", ISS, JwksSource::File(path))
    }])
    .unwrap();
    let t = now();
    let token = f.rsa.sign(&with(
        with(claims(), "iat", json!(t - 10)),
        "exp",
        json!(t + 2),
    ));
    v.verify(&token).await.unwrap();
    v.verify(&token).await.unwrap();
    assert_eq!(checks(&v), 1);
    while now() < t + 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    refused(&v, &token, "expired").await;
}

#[tokio::test]
async fn a_reload_forgets_what_was_seen_and_judges_the_claims_anew() {
    let f = file_fixture();
    let t = f.rsa.sign(&claims());
    f.verifier.verify(&t).await.unwrap();
    f.verifier.verify(&t).await.unwrap();
    assert_eq!(checks(&f.verifier), 1);
    let mut configs = f.verifier.configs();
    // The same providers: the keys are kept, the signatures seen are not.
    let same = f.verifier.renewed(configs.clone()).unwrap();
    same.verify(&t).await.unwrap();
    assert_eq!(checks(&same), 1);
    // A provider that no longer accepts the token's audience refuses it, seen or not.
    configs[0].audiences = vec!["someone-else".into()];
    let changed = same.renewed(configs).unwrap();
    refused(&changed, &t, "wrong_audience").await;
}
