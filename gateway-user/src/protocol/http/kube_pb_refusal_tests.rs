//! The refusals and edges of `kube_pb`: the real kubectl bodies, bodies it must refuse, unknown
//! kinds, every prefix of a real body, arbitrary bytes, and Accept headers. The fixtures and
//! their helpers are in kube_pb_tests.rs.

use k8s_pb::api::{apps, core, rbac};
use k8s_pb::apimachinery::pkg::runtime::{RawExtension, TypeMeta, Unknown};
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;
use prost_014::Message;
use serde_json::json;

use super::tests::*;
use super::*;

/// Bodies kubectl 1.32.4 sent to a loopback HTTP server that dumped them, for
/// `kubectl --server=http://127.0.0.1:20760 ...` `create rolebinding x --clusterrole=view
/// --user=u -n default`, `create secret generic s1 --from-literal=password=hunter2 -n default`,
/// `create configmap c1 --from-literal=k=v -n default` and `auth can-i delete pods -n default`
/// (each with `Content-Type: application/vnd.kubernetes.protobuf` and `Accept:
/// application/vnd.kubernetes.protobuf,application/json`). `kubectl delete pod` sent JSON
/// DeleteOptions, so there is no protobuf fixture of it.
#[test]
fn real_kubectl_bodies() {
    let created =
        json!({"name": "x", "namespace": "default", "generation": 0, "creationTimestamp": null});
    assert_eq!(
        decode(include_bytes!(
            "kube_pb_fixtures/kubectl-1.32-create-rolebinding.pb"
        ))
        .unwrap(),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": created,
            "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "u"}],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        })
    );
    let created = |name: &str| json!({"name": name, "namespace": "default", "generation": 0, "creationTimestamp": null});
    assert_eq!(
        decode(include_bytes!(
            "kube_pb_fixtures/kubectl-1.32-create-secret.pb"
        ))
        .unwrap(),
        json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": created("s1"),
            "data": {"password": "aHVudGVyMg=="},
        })
    );
    assert_eq!(
        decode(include_bytes!(
            "kube_pb_fixtures/kubectl-1.32-create-configmap.pb"
        ))
        .unwrap(),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": created("c1"), "data": {"k": "v"}})
    );
    assert_eq!(
        decode(include_bytes!(
            "kube_pb_fixtures/kubectl-1.32-auth-can-i.pb"
        ))
        .unwrap(),
        json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "metadata": {"generation": 0, "creationTimestamp": null},
            "spec": {"resourceAttributes": {"namespace": "default", "verb": "delete", "resource": "pods"}},
            // Go's encoder writes every plain bool: `false` is on the wire and shown.
            "status": {"allowed": false, "denied": false},
        })
    );
}

#[test]
fn refused_bodies() {
    let secret = core::v1::Secret {
        metadata: meta("db", None),
        ..Default::default()
    };
    let good = envelope("v1", "Secret", &secret);
    assert!(decode(&good).is_ok());

    assert_eq!(decode(b""), Err(KubePbError::NoMagic));
    assert_eq!(decode(&good[4..]), Err(KubePbError::NoMagic));
    assert_eq!(decode(br#"{"kind":"Secret"}"#), Err(KubePbError::NoMagic));

    // Cut inside the envelope's raw field: the length says more than there is.
    assert!(matches!(
        decode(&good[..good.len() - 2]),
        Err(KubePbError::Malformed(..))
    ));
    // A length prefix far past the end of the body.
    let mut oversized = MAGIC.to_vec();
    oversized.extend([0x12, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3]);
    assert!(matches!(
        decode(&oversized),
        Err(KubePbError::Malformed(..))
    ));
    // A varint longer than ten bytes.
    let mut long_varint = MAGIC.to_vec();
    long_varint.extend([0x08; 1]);
    long_varint.extend([0xff; 11]);
    assert!(matches!(
        decode(&long_varint),
        Err(KubePbError::Malformed(..))
    ));
    // Garbage in the object.
    let garbage = envelope_with("v1", "Secret", vec![0x0a, 0x05, 0xff, 0xff], None);
    assert!(matches!(decode(&garbage), Err(KubePbError::Malformed(..))));

    let gzip = envelope_with("v1", "Secret", secret.encode_to_vec(), Some("gzip"));
    assert_eq!(
        decode(&gzip),
        Err(KubePbError::ContentEncoding("gzip".into()))
    );
    let json_inside = {
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: s("v1"),
                kind: s("Secret"),
            }),
            raw: Some(b"{}".to_vec()),
            content_encoding: None,
            content_type: s("application/json"),
        };
        let mut body = MAGIC.to_vec();
        body.extend(unknown.encode_to_vec());
        body
    };
    assert_eq!(
        decode(&json_inside),
        Err(KubePbError::ContentType("application/json".into()))
    );

    // A field the descriptor does not know (a newer server's) is refused, not skipped.
    let mut raw = secret.encode_to_vec();
    raw.extend([0xf8, 0x06, 0x01]); // field 111, varint 1
    assert_eq!(
        decode(&envelope_with("v1", "Secret", raw, None)),
        Err(KubePbError::UnknownField("api.core.v1.Secret".into(), 111))
    );
    let mut raw = secret.encode_to_vec();
    raw.extend([0x0a, 0x03, 0xf8, 0x06, 0x01]); // metadata again, with field 111
    assert_eq!(
        decode(&envelope_with("v1", "Secret", raw, None)),
        Err(KubePbError::UnknownField(
            "apimachinery.pkg.apis.meta.v1.ObjectMeta".into(),
            111
        ))
    );

    let bad_int_or_string = apps::v1::Deployment {
        spec: Some(apps::v1::DeploymentSpec {
            strategy: Some(apps::v1::DeploymentStrategy {
                r#type: None,
                rolling_update: Some(apps::v1::RollingUpdateDeployment {
                    max_surge: Some(IntOrString {
                        r#type: Some(7),
                        ..Default::default()
                    }),
                    max_unavailable: None,
                }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert!(matches!(
        decode(&envelope("apps/v1", "Deployment", &bad_int_or_string)),
        Err(KubePbError::InvalidValue("IntOrString type", _))
    ));

    let not_json = core::v1::List {
        metadata: None,
        items: vec![RawExtension {
            raw: Some(b"\x01\x02not json".to_vec()),
        }],
    };
    assert!(matches!(
        decode(&envelope("v1", "List", &not_json)),
        Err(KubePbError::InvalidValue("embedded JSON", _))
    ));

    // Lists in lists in lists...: refused past a few envelopes, no stack overflow.
    let mut body = envelope("v1", "List", &core::v1::List::default());
    for _ in 0..10 {
        let list = core::v1::List {
            metadata: None,
            items: vec![RawExtension { raw: Some(body) }],
        };
        body = envelope("v1", "List", &list);
    }
    assert_eq!(decode(&body), Err(KubePbError::TooDeep));

    // Deeply nested groups in an unknown field: an error, not a stack overflow.
    let mut raw = Vec::new();
    for _ in 0..100_000 {
        raw.extend([0x9b, 0x06]); // field 99, start group
    }
    assert!(decode(&envelope_with("v1", "Secret", raw, None)).is_err());
}

#[test]
fn unknown_kinds() {
    let rb = rbac::v1::RoleBinding::default();
    let unknown = |api_version: &str, kind: &str| {
        assert_eq!(
            decode(&envelope(api_version, kind, &rb)),
            Err(KubePbError::UnknownKind(api_version.into(), kind.into())),
            "{api_version} {kind}"
        );
    };
    // Beta and alpha versions are not in the descriptor set.
    unknown("rbac.authorization.k8s.io/v1beta1", "RoleBinding");
    // A custom resource group, even with a built-in kind's name.
    unknown("rbac.example.com/v1", "RoleBinding");
    unknown("example.com/v1", "Widget");
    // Not a kind: a part of one, or names reaching into other packages.
    unknown("v1", "PodSpec");
    unknown("v1", "ObjectMeta");
    unknown("v1", "v1.Secret");
    unknown("rbac.authorization.k8s.io/v1", "");
    unknown("", "");
    unknown("v1.core", "Secret");
    // No envelope type at all.
    let mut body = MAGIC.to_vec();
    body.extend(
        Unknown {
            raw: Some(vec![]),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    assert_eq!(
        decode(&body),
        Err(KubePbError::UnknownKind(String::new(), String::new()))
    );
}

#[test]
fn every_prefix_of_a_real_body_is_handled() {
    let body = include_bytes!("kube_pb_fixtures/kubectl-1.32-create-rolebinding.pb");
    for end in 0..body.len() {
        // Some prefixes end on a field boundary and decode to less; none may panic, and the
        // cut inside the envelope's raw field is always an error.
        let _ = decode(&body[..end]);
    }
    assert!(decode(&body[..body.len() - 1]).is_err());
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
        let mut with_magic = MAGIC.to_vec();
        with_magic.extend(&bytes);
        let _ = decode(&with_magic);
    }

    #[test]
    fn arbitrary_objects_of_known_kinds_never_panic(
        kind in prop::sample::select(vec!["Secret", "Pod", "List", "ConfigMap", "Status"]),
        raw in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let _ = decode(&envelope_with("v1", kind, raw, None));
    }
}

const KUBECTL_GET: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

#[test]
fn accept_headers() {
    // kubectl get: JSON only (tables), left as it is.
    assert!(!accepts_protobuf(KUBECTL_GET));
    assert_eq!(json_only_accept(KUBECTL_GET), KUBECTL_GET);

    // Typed clients (kubectl create, auth can-i): protobuf first.
    let typed = "application/vnd.kubernetes.protobuf,application/json";
    assert!(accepts_protobuf(typed));
    assert_eq!(json_only_accept(typed), "application/json");
    assert!(accepts_protobuf("application/vnd.kubernetes.protobuf"));
    assert_eq!(
        json_only_accept("application/vnd.kubernetes.protobuf"),
        "application/json"
    );

    // Watches.
    let watch = "application/vnd.kubernetes.protobuf;stream=watch, application/json;stream=watch";
    assert!(accepts_protobuf(watch));
    assert_eq!(json_only_accept(watch), "application/json;stream=watch");
    let table_watch = "application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io;stream=watch,application/json;as=Table;v=v1;g=meta.k8s.io;stream=watch,application/json";
    assert!(accepts_protobuf(table_watch));
    assert_eq!(
        json_only_accept(table_watch),
        "application/json;as=Table;v=v1;g=meta.k8s.io;stream=watch,application/json"
    );

    // Case, spacing, q=0, wildcards, YAML, empty.
    assert!(accepts_protobuf(
        " Application/VND.Kubernetes.Protobuf ; q=0.5"
    ));
    assert!(!accepts_protobuf(
        "application/vnd.kubernetes.protobuf;q=0, application/json"
    ));
    assert!(!accepts_protobuf("*/*"));
    assert!(!accepts_protobuf(""));
    assert_eq!(json_only_accept("*/*"), "application/json");
    assert_eq!(json_only_accept(""), "application/json");
    assert_eq!(
        json_only_accept("application/yaml, application/json"),
        "application/json"
    );
    assert_eq!(
        json_only_accept("application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io"),
        "application/json"
    );
}
