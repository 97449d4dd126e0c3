//! A projected service-account token's pod claim (`kubernetes.io.pod.uid`), read into the
//! principal for `proxy::pod_binding`. Fixtures are tests.rs's.

use serde_json::json;

use super::tests::{claims, file_fixture, with};
use super::*;

/// A projected service-account token names its pod; the principal carries it (for
/// `proxy::pod_binding`). A `kubernetes.io` claim that does not name the pod as Kubernetes does
/// is refused rather than read as "no pod".
#[tokio::test]
async fn identity_reads_the_pod_of_a_service_account_token() {
    let f = file_fixture();
    let uid = "5f2b7c1e-9a4d-4e2b-8c3f-1a2b3c4d5e6f";
    let c = with(
        claims(),
        "kubernetes.io",
        json!({"namespace": "ci", "pod": {"name": "job-7", "uid": uid}, "serviceaccount": {"name": "agent", "uid": "x"}}),
    );
    let p = f.verifier.verify(&f.rsa.sign(&c)).await.unwrap();
    assert_eq!(p.pod_uid.as_deref(), Some(uid));
    // A service-account token of no pod (a TokenRequest without a bound object) is unbound.
    let c = with(
        claims(),
        "kubernetes.io",
        json!({"namespace": "ci", "serviceaccount": {"name": "agent"}}),
    );
    assert_eq!(
        f.verifier.verify(&f.rsa.sign(&c)).await.unwrap().pod_uid,
        None
    );
    for bad in [
        json!("pod"),
        json!({"pod": {"uid": 7}}),
        json!({"pod": {"name": "x"}}),
        json!({"pod": {"uid": ""}}),
    ] {
        let c = with(claims(), "kubernetes.io", bad.clone());
        let e = f.verifier.verify(&f.rsa.sign(&c)).await.unwrap_err();
        assert!(
            matches!(e, TokenError::InvalidClaim { ref claim, .. } if claim == "kubernetes.io"),
            "{bad}: {e:?}"
        );
    }
}
