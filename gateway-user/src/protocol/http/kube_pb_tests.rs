//! Fixtures are encoded with k8s-pb's prost types (generated from the same protos as
//! kube_pb.fds, by another code generator) and, under kube_pb_fixtures/, are bodies kubectl
//! 1.32.4 sent to a dumping HTTP server.

use std::collections::BTreeMap;

use k8s_pb::api::{apps, authorization, core, rbac};
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::{RawExtension, TypeMeta, Unknown};
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost_014::Message;
use serde_json::json;

use super::*;

pub(super) fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

pub(super) fn envelope_with(
    api_version: &str,
    kind: &str,
    raw: Vec<u8>,
    encoding: Option<&str>,
) -> Vec<u8> {
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: s(api_version),
            kind: s(kind),
        }),
        raw: Some(raw),
        content_encoding: encoding.map(str::to_string),
        content_type: None,
    };
    let mut body = MAGIC.to_vec();
    body.extend(unknown.encode_to_vec());
    body
}

pub(super) fn envelope(api_version: &str, kind: &str, object: &impl Message) -> Vec<u8> {
    envelope_with(api_version, kind, object.encode_to_vec(), None)
}

pub(super) fn meta(name: &str, namespace: Option<&str>) -> Option<meta::ObjectMeta> {
    Some(meta::ObjectMeta {
        name: s(name),
        namespace: namespace.map(str::to_string),
        ..Default::default()
    })
}

pub(super) fn subject_user(name: &str) -> rbac::v1::Subject {
    rbac::v1::Subject {
        kind: s("User"),
        api_group: s("rbac.authorization.k8s.io"),
        name: s(name),
        namespace: None,
    }
}

pub(super) fn role_ref(kind: &str, name: &str) -> Option<rbac::v1::RoleRef> {
    Some(rbac::v1::RoleRef {
        api_group: s("rbac.authorization.k8s.io"),
        kind: s(kind),
        name: s(name),
    })
}

pub(super) fn rule(verbs: &[&str], resources: &[&str]) -> rbac::v1::PolicyRule {
    rbac::v1::PolicyRule {
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        api_groups: vec![String::new()],
        resources: resources.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn descriptors_load_and_tables_match_them() {
    let pool = pool().expect("kube_pb.fds loads");
    for (message, proto, _) in RENAMED {
        let desc = pool.get_message_by_name(message).expect(message);
        assert!(desc.get_field_by_name(proto).is_some(), "{message}.{proto}");
    }
    for (message, field) in INLINE {
        let desc = pool.get_message_by_name(message).expect(message);
        let f = desc.get_field_by_name(field).expect(field);
        assert!(matches!(f.kind(), Kind::Message(_)), "{message}.{field}");
    }
    for name in NAMED_SLICES {
        let desc = pool.get_message_by_name(name).expect(name);
        assert_eq!(
            desc.fields()
                .map(|f| f.name().to_string())
                .collect::<Vec<_>>(),
            ["items"]
        );
    }
    for (group, package) in GROUPS {
        assert!(
            pool.all_messages()
                .any(|m| m.package_name().starts_with(package)),
            "{group} -> {package}"
        );
    }
}

#[test]
fn rolebinding_and_clusterrolebinding() {
    let rb = rbac::v1::RoleBinding {
        metadata: meta("x", Some("default")),
        subjects: vec![
            subject_user("u"),
            rbac::v1::Subject {
                kind: s("ServiceAccount"),
                api_group: s(""),
                name: s("agent"),
                namespace: s("tools"),
            },
        ],
        role_ref: role_ref("ClusterRole", "view"),
    };
    let body = envelope("rbac.authorization.k8s.io/v1", "RoleBinding", &rb);
    assert_eq!(
        decode(&body).unwrap(),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "x", "namespace": "default"},
            "subjects": [
                {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "u"},
                {"kind": "ServiceAccount", "name": "agent", "namespace": "tools"},
            ],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        })
    );

    let crb = rbac::v1::ClusterRoleBinding {
        metadata: meta("admins", None),
        subjects: vec![subject_user("agent-7")],
        role_ref: role_ref("ClusterRole", "cluster-admin"),
    };
    let body = envelope("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", &crb);
    assert_eq!(
        decode(&body).unwrap(),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "admins"},
            "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "agent-7"}],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        })
    );
}

#[test]
fn role_and_clusterrole() {
    let role = rbac::v1::Role {
        metadata: meta("pod-reader", Some("default")),
        rules: vec![rule(&["get", "list", "watch"], &["pods", "pods/log"])],
    };
    let body = envelope("rbac.authorization.k8s.io/v1", "Role", &role);
    assert_eq!(
        decode(&body).unwrap(),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "pod-reader", "namespace": "default"},
            // An empty string in a list stays: it is the core group.
            "rules": [{"verbs": ["get", "list", "watch"], "apiGroups": [""], "resources": ["pods", "pods/log"]}],
        })
    );

    let mut labels = BTreeMap::new();
    labels.insert(
        "rbac.example.com/aggregate-to-view".to_string(),
        "true".to_string(),
    );
    let cluster_role = rbac::v1::ClusterRole {
        metadata: meta("secrets-all", None),
        rules: vec![rbac::v1::PolicyRule {
            non_resource_ur_ls: vec!["/healthz".into()],
            verbs: vec!["*".into()],
            ..Default::default()
        }],
        aggregation_rule: Some(rbac::v1::AggregationRule {
            cluster_role_selectors: vec![meta::LabelSelector {
                match_labels: labels,
                match_expressions: vec![],
            }],
        }),
    };
    let body = envelope("rbac.authorization.k8s.io/v1", "ClusterRole", &cluster_role);
    assert_eq!(
        decode(&body).unwrap(),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "secrets-all"},
            "rules": [{"verbs": ["*"], "nonResourceURLs": ["/healthz"]}],
            "aggregationRule": {"clusterRoleSelectors": [
                {"matchLabels": {"rbac.example.com/aggregate-to-view": "true"}}
            ]},
        })
    );
}

#[test]
fn secret_data_is_base64_and_string_data_plain() {
    let secret = core::v1::Secret {
        metadata: meta("db", Some("default")),
        data: BTreeMap::from([
            ("password".to_string(), b"hunter2".to_vec()),
            ("bin".to_string(), vec![0, 255, 1]),
        ]),
        string_data: BTreeMap::from([("token".to_string(), "s3cr3t".to_string())]),
        r#type: s("Opaque"),
        immutable: Some(false),
    };
    let body = envelope("v1", "Secret", &secret);
    assert_eq!(
        decode(&body).unwrap(),
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "db", "namespace": "default"},
            "data": {"password": "aHVudGVyMg==", "bin": "AP8B"},
            "stringData": {"token": "s3cr3t"},
            "type": "Opaque",
            "immutable": false,
        })
    );
}

#[test]
fn configmap_namespace_serviceaccount() {
    let cm = core::v1::ConfigMap {
        metadata: meta("settings", Some("apps")),
        data: BTreeMap::from([("k".to_string(), "v".to_string())]),
        binary_data: BTreeMap::from([("b".to_string(), b"\x01\x02".to_vec())]),
        immutable: None,
    };
    assert_eq!(
        decode(&envelope("v1", "ConfigMap", &cm)).unwrap(),
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "apps"},
            "data": {"k": "v"}, "binaryData": {"b": "AQI="},
        })
    );

    let ns = core::v1::Namespace {
        metadata: Some(meta::ObjectMeta {
            name: s("team-a"),
            labels: BTreeMap::from([("env".to_string(), "prod".to_string())]),
            creation_timestamp: Some(meta::Time {
                seconds: Some(1_700_000_000),
                nanos: Some(0),
            }),
            ..Default::default()
        }),
        spec: Some(core::v1::NamespaceSpec {
            finalizers: vec!["kubernetes".into()],
        }),
        status: None,
    };
    assert_eq!(
        decode(&envelope("v1", "Namespace", &ns)).unwrap(),
        json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "team-a", "labels": {"env": "prod"}, "creationTimestamp": "2023-11-14T22:13:20Z"},
            "spec": {"finalizers": ["kubernetes"]},
        })
    );

    let sa = core::v1::ServiceAccount {
        metadata: meta("agent", Some("tools")),
        secrets: vec![],
        image_pull_secrets: vec![core::v1::LocalObjectReference { name: s("regcred") }],
        automount_service_account_token: Some(false),
    };
    assert_eq!(
        decode(&envelope("v1", "ServiceAccount", &sa)).unwrap(),
        json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "agent", "namespace": "tools"},
            "imagePullSecrets": [{"name": "regcred"}],
            "automountServiceAccountToken": false,
        })
    );
}

pub(super) fn pod_spec() -> core::v1::PodSpec {
    core::v1::PodSpec {
        containers: vec![core::v1::Container {
            name: s("app"),
            image: s("nginx:1.27"),
            command: vec!["sh".into(), "-c".into(), "echo hi".into()],
            ports: vec![core::v1::ContainerPort {
                container_port: Some(8080),
                protocol: s("TCP"),
                ..Default::default()
            }],
            env: vec![core::v1::EnvVar {
                name: s("PASSWORD"),
                value_from: Some(core::v1::EnvVarSource {
                    secret_key_ref: Some(core::v1::SecretKeySelector {
                        local_object_reference: Some(core::v1::LocalObjectReference {
                            name: s("db"),
                        }),
                        key: s("password"),
                        optional: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            resources: Some(core::v1::ResourceRequirements {
                requests: BTreeMap::from([
                    ("cpu".to_string(), Quantity { string: s("100m") }),
                    ("memory".to_string(), Quantity { string: s("64Mi") }),
                ]),
                ..Default::default()
            }),
            liveness_probe: Some(core::v1::Probe {
                handler: Some(core::v1::ProbeHandler {
                    http_get: Some(core::v1::HttpGetAction {
                        path: s("/healthz"),
                        port: Some(IntOrString {
                            r#type: Some(1),
                            int_val: None,
                            str_val: s("http"),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                period_seconds: Some(10),
                ..Default::default()
            }),
            security_context: Some(core::v1::SecurityContext {
                privileged: Some(true),
                run_as_user: Some(0),
                ..Default::default()
            }),
            ..Default::default()
        }],
        volumes: vec![core::v1::Volume {
            name: s("creds"),
            volume_source: Some(core::v1::VolumeSource {
                secret: Some(core::v1::SecretVolumeSource {
                    secret_name: s("db"),
                    default_mode: Some(0o400),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }],
        service_account_name: s("agent"),
        automount_service_account_token: Some(false),
        host_network: Some(true),
        ..Default::default()
    }
}

pub(super) fn pod_spec_json() -> Json {
    json!({
        "containers": [{
            "name": "app",
            "image": "nginx:1.27",
            "command": ["sh", "-c", "echo hi"],
            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
            "env": [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
            "securityContext": {"privileged": true, "runAsUser": 0},
        }],
        "volumes": [{"name": "creds", "secret": {"secretName": "db", "defaultMode": 256}}],
        "serviceAccountName": "agent",
        "automountServiceAccountToken": false,
        "hostNetwork": true,
    })
}

#[test]
fn pod_with_inline_fields_quantities_and_int_or_string() {
    let pod = core::v1::Pod {
        metadata: meta("web", Some("default")),
        spec: Some(pod_spec()),
        status: Some(core::v1::PodStatus {
            pod_ip: s("10.1.2.3"),
            host_ips: vec![core::v1::HostIp { ip: s("192.0.2.1") }],
            ..Default::default()
        }),
    };
    assert_eq!(
        decode(&envelope("v1", "Pod", &pod)).unwrap(),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": pod_spec_json(),
            "status": {"podIP": "10.1.2.3", "hostIPs": [{"ip": "192.0.2.1"}]},
        })
    );
}

#[test]
fn deployment_keeps_zero_replicas() {
    let deployment = apps::v1::Deployment {
        metadata: meta("web", Some("default")),
        spec: Some(apps::v1::DeploymentSpec {
            replicas: Some(0),
            selector: Some(meta::LabelSelector {
                match_labels: BTreeMap::from([("app".to_string(), "web".to_string())]),
                match_expressions: vec![],
            }),
            template: Some(core::v1::PodTemplateSpec {
                metadata: Some(meta::ObjectMeta {
                    labels: BTreeMap::from([("app".to_string(), "web".to_string())]),
                    ..Default::default()
                }),
                spec: Some(pod_spec()),
            }),
            strategy: Some(apps::v1::DeploymentStrategy {
                r#type: s("RollingUpdate"),
                rolling_update: Some(apps::v1::RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString {
                        r#type: Some(0),
                        int_val: Some(1),
                        str_val: None,
                    }),
                    max_surge: Some(IntOrString {
                        r#type: Some(1),
                        int_val: None,
                        str_val: s("25%"),
                    }),
                }),
            }),
            ..Default::default()
        }),
        status: None,
    };
    assert_eq!(
        decode(&envelope("apps/v1", "Deployment", &deployment)).unwrap(),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod_spec_json()},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": "25%"}},
            },
        })
    );
}

#[test]
fn access_reviews() {
    let ssar = authorization::v1::SelfSubjectAccessReview {
        metadata: Some(Default::default()),
        spec: Some(authorization::v1::SelfSubjectAccessReviewSpec {
            resource_attributes: Some(authorization::v1::ResourceAttributes {
                namespace: s("default"),
                verb: s("delete"),
                resource: s("pods"),
                ..Default::default()
            }),
            non_resource_attributes: None,
        }),
        status: None,
    };
    assert_eq!(
        decode(&envelope(
            "authorization.k8s.io/v1",
            "SelfSubjectAccessReview",
            &ssar
        ))
        .unwrap(),
        json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "metadata": {},
            "spec": {"resourceAttributes": {"namespace": "default", "verb": "delete", "resource": "pods"}},
        })
    );

    let ssrr = authorization::v1::SelfSubjectRulesReview {
        metadata: None,
        spec: Some(authorization::v1::SelfSubjectRulesReviewSpec {
            namespace: s("default"),
        }),
        status: None,
    };
    assert_eq!(
        decode(&envelope(
            "authorization.k8s.io/v1",
            "SelfSubjectRulesReview",
            &ssrr
        ))
        .unwrap(),
        json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
            "spec": {"namespace": "default"},
        })
    );

    // `extra` values are Go named slices: arrays in JSON, not {"items": [...]}.
    let sar = authorization::v1::SubjectAccessReview {
        metadata: None,
        spec: Some(authorization::v1::SubjectAccessReviewSpec {
            user: s("u"),
            extra: BTreeMap::from([(
                "scopes".to_string(),
                authorization::v1::ExtraValue {
                    items: vec!["a".into(), "b".into()],
                },
            )]),
            ..Default::default()
        }),
        status: None,
    };
    assert_eq!(
        decode(&envelope(
            "authorization.k8s.io/v1",
            "SubjectAccessReview",
            &sar
        ))
        .unwrap()["spec"],
        json!({"user": "u", "extra": {"scopes": ["a", "b"]}})
    );
}

#[test]
fn delete_options_in_any_group_version_and_status() {
    let options = meta::DeleteOptions {
        grace_period_seconds: Some(0),
        propagation_policy: s("Foreground"),
        preconditions: Some(meta::Preconditions {
            uid: s("1234"),
            resource_version: None,
        }),
        dry_run: vec!["All".into()],
        ..Default::default()
    };
    let expected = |api_version: &str| {
        json!({
            "apiVersion": api_version, "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": "1234"},
            "propagationPolicy": "Foreground",
            "dryRun": ["All"],
        })
    };
    for api_version in [
        "v1",
        "meta.k8s.io/v1",
        "apps/v1",
        "rbac.authorization.k8s.io/v1",
    ] {
        let body = envelope(api_version, "DeleteOptions", &options);
        assert_eq!(
            decode(&body).unwrap(),
            expected(api_version),
            "{api_version}"
        );
    }

    let status = meta::Status {
        status: s("Failure"),
        message: s("forbidden"),
        reason: s("Forbidden"),
        code: Some(403),
        details: Some(meta::StatusDetails {
            name: s("x"),
            kind: s("rolebindings"),
            retry_after_seconds: Some(5),
            ..Default::default()
        }),
        metadata: Some(Default::default()),
    };
    assert_eq!(
        decode(&envelope("v1", "Status", &status)).unwrap(),
        json!({
            "apiVersion": "v1", "kind": "Status", "metadata": {},
            "status": "Failure", "message": "forbidden", "reason": "Forbidden", "code": 403,
            "details": {"name": "x", "kind": "rolebindings", "retryAfterSeconds": 5},
        })
    );
}

#[test]
fn lists_typed_and_raw_items() {
    let list = rbac::v1::RoleBindingList {
        metadata: Some(meta::ListMeta {
            resource_version: s("42"),
            ..Default::default()
        }),
        items: vec![rbac::v1::RoleBinding {
            metadata: meta("x", Some("default")),
            subjects: vec![],
            role_ref: role_ref("Role", "r"),
        }],
    };
    assert_eq!(
        decode(&envelope(
            "rbac.authorization.k8s.io/v1",
            "RoleBindingList",
            &list
        ))
        .unwrap(),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBindingList",
            "metadata": {"resourceVersion": "42"},
            "items": [{
                "metadata": {"name": "x", "namespace": "default"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
            }],
        })
    );

    // v1 List: items are RawExtensions, JSON or a nested protobuf object.
    let nested = envelope(
        "v1",
        "ConfigMap",
        &core::v1::ConfigMap {
            metadata: meta("c", None),
            ..Default::default()
        },
    );
    let list = core::v1::List {
        metadata: None,
        items: vec![
            RawExtension {
                raw: Some(br#"{"kind":"Secret","data":{"a":"Yg=="}}"#.to_vec()),
            },
            RawExtension { raw: Some(nested) },
        ],
    };
    assert_eq!(
        decode(&envelope("v1", "List", &list)).unwrap(),
        json!({
            "apiVersion": "v1", "kind": "List",
            "items": [
                {"kind": "Secret", "data": {"a": "Yg=="}},
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}},
            ],
        })
    );
}

/// Fields whose protobuf name is not their JSON name (RENAMED).
#[test]
fn renamed_fields() {
    use k8s_pb::api::{authentication, networking};
    let class = networking::v1::IngressClass {
        metadata: meta("nginx", None),
        spec: Some(networking::v1::IngressClassSpec {
            controller: s("example.com/ingress"),
            parameters: Some(networking::v1::IngressClassParametersReference {
                a_pi_group: s("k8s.example.com"),
                kind: s("Params"),
                name: s("p"),
                ..Default::default()
            }),
        }),
    };
    assert_eq!(
        decode(&envelope("networking.k8s.io/v1", "IngressClass", &class)).unwrap()["spec"],
        json!({
            "controller": "example.com/ingress",
            "parameters": {"apiGroup": "k8s.example.com", "kind": "Params", "name": "p"},
        })
    );
    let request = authentication::v1::TokenRequest {
        metadata: meta("agent", Some("tools")),
        spec: Some(authentication::v1::TokenRequestSpec {
            audiences: vec!["https://kubernetes.default.svc".into()],
            expiration_seconds: Some(600),
            bound_object_ref: Some(authentication::v1::BoundObjectReference {
                kind: s("Pod"),
                api_version: s("v1"),
                name: s("agent-0"),
                u_id: s("0b7c"),
            }),
        }),
        status: None,
    };
    assert_eq!(
        decode(&envelope(
            "authentication.k8s.io/v1",
            "TokenRequest",
            &request
        ))
        .unwrap()["spec"],
        json!({
            "audiences": ["https://kubernetes.default.svc"],
            "expirationSeconds": 600,
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "agent-0", "uid": "0b7c"},
        })
    );
}

#[test]
fn times_durations_and_managed_fields() {
    let cm = core::v1::ConfigMap {
        metadata: Some(meta::ObjectMeta {
            name: s("c"),
            // The zero Go time is an empty message: null, as the API server shows it.
            creation_timestamp: Some(meta::Time {
                seconds: None,
                nanos: None,
            }),
            // Time keeps seconds only; the API server drops a Time's nanoseconds too.
            deletion_timestamp: Some(meta::Time {
                seconds: Some(951_782_400),
                nanos: Some(5),
            }),
            managed_fields: vec![meta::ManagedFieldsEntry {
                manager: s("kubectl-create"),
                operation: s("Update"),
                fields_type: s("FieldsV1"),
                fields_v1: Some(meta::FieldsV1 {
                    raw: Some(br#"{"f:data":{".":{}}}"#.to_vec()),
                }),
                time: Some(meta::Time {
                    seconds: Some(0),
                    nanos: None,
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        decode(&envelope("v1", "ConfigMap", &cm)).unwrap()["metadata"],
        json!({
            "name": "c",
            "creationTimestamp": null,
            "deletionTimestamp": "2000-02-29T00:00:00Z",
            "managedFields": [{
                "manager": "kubectl-create", "operation": "Update", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:data": {".": {}}}, "time": "1970-01-01T00:00:00Z",
            }],
        })
    );

    let event = k8s_pb::api::events::v1::Event {
        metadata: meta("e", Some("default")),
        event_time: Some(meta::MicroTime {
            seconds: Some(1_700_000_000),
            nanos: Some(123_456_789),
        }),
        ..Default::default()
    };
    assert_eq!(
        decode(&envelope("events.k8s.io/v1", "Event", &event)).unwrap()["eventTime"],
        json!("2023-11-14T22:13:20.123456Z")
    );

    for (nanos, go) in [
        (0, "0s"),
        (999, "999ns"),
        (1_500, "1.5µs"),
        (1_500_000, "1.5ms"),
        (1_000_000_000, "1s"),
        (1_500_000_000, "1.5s"),
        (90_000_000_000, "1m30s"),
        (3_600_000_000_000, "1h0m0s"),
        (3_723_000_000_001, "1h2m3.000000001s"),
        (-2_000_000_000, "-2s"),
    ] {
        assert_eq!(go_duration(nanos), go, "{nanos}");
    }
    assert_eq!(civil_from_days(-1), (1969, 12, 31));
    assert_eq!(civil_from_days(19_782), (2024, 2, 29));
}
