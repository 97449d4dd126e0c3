//! Kubernetes protobuf, as the API server writes it: the 4-byte magic `k8s\0`, then a
//! `runtime.Unknown` whose typeMeta names the kind and whose `raw` is the object's message
//! (k8s-pb's prost types). Watch streams are length-prefixed (4 bytes, big-endian)
//! `meta.v1.WatchEvent` messages without the magic, whose `object.raw` is an enveloped object.
//!
//! The stand-in keeps objects as JSON, so this module converts both ways for the kinds it
//! serves: Namespace, Pod (the fields listed in docs/kubernetes-standin.md), Secret,
//! ConfigMap, RoleBinding, ClusterRoleBinding, their lists, Status and
//! SelfSubjectAccessReview. A kind it cannot convert is an error (the caller answers JSON or
//! refuses the body), never a silent empty object.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_pb::{
    api::{authorization::v1 as authz, core::v1 as core, rbac::v1 as rbac},
    apimachinery::pkg::{
        apis::meta::v1 as meta,
        runtime::{RawExtension, TypeMeta, Unknown},
    },
};
use prost::Message;
use serde_json::{json, Map, Value};

use super::store::{parse_rfc3339, rfc3339};
use core::{ConfigMapList, NamespaceList, PodList, SecretList};
use rbac::{ClusterRoleBindingList, RoleBindingList};

pub const MAGIC: &[u8; 4] = b"k8s\0";

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("kind {0:?} has no protobuf form in the stand-in")]
    Unsupported(String),
    #[error("the body does not start with the Kubernetes protobuf magic k8s\\0")]
    NoMagic,
    #[error("protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("the protobuf envelope has no raw object")]
    Empty,
}

// ---- JSON -> protobuf ----

fn st(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_string)
}

fn strs(v: &Value, k: &str) -> Vec<String> {
    v.get(k)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn smap(v: &Value, k: &str) -> BTreeMap<String, String> {
    v.get(k)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn b64map(v: &Value, k: &str) -> BTreeMap<String, Vec<u8>> {
    smap(v, k)
        .into_iter()
        .map(|(k, s)| {
            let b = base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .unwrap_or_else(|_| s.into_bytes());
            (k, b)
        })
        .collect()
}

fn time(v: &Value, k: &str) -> Option<meta::Time> {
    let secs = parse_rfc3339(v.get(k)?.as_str()?)?;
    Some(meta::Time {
        seconds: Some(secs),
        nanos: Some(0),
    })
}

fn int(v: &Value, k: &str) -> Option<i64> {
    v.get(k).and_then(Value::as_i64)
}

fn objs<'a>(v: &'a Value, k: &str) -> impl Iterator<Item = &'a Value> {
    v.get(k).and_then(Value::as_array).into_iter().flatten()
}

fn null() -> &'static Value {
    &Value::Null
}

fn object_meta(v: &Value) -> meta::ObjectMeta {
    let m = v.get("metadata").unwrap_or(null());
    meta::ObjectMeta {
        name: st(m, "name"),
        generate_name: st(m, "generateName"),
        namespace: st(m, "namespace"),
        uid: st(m, "uid"),
        resource_version: st(m, "resourceVersion"),
        generation: int(m, "generation"),
        creation_timestamp: time(m, "creationTimestamp"),
        deletion_timestamp: time(m, "deletionTimestamp"),
        labels: smap(m, "labels"),
        annotations: smap(m, "annotations"),
        finalizers: strs(m, "finalizers"),
        owner_references: objs(m, "ownerReferences")
            .map(|o| meta::OwnerReference {
                api_version: st(o, "apiVersion"),
                kind: st(o, "kind"),
                name: st(o, "name"),
                uid: st(o, "uid"),
                controller: o.get("controller").and_then(Value::as_bool),
                block_owner_deletion: o.get("blockOwnerDeletion").and_then(Value::as_bool),
            })
            .collect(),
        ..Default::default()
    }
}

fn list_meta(v: &Value) -> meta::ListMeta {
    let m = v.get("metadata").unwrap_or(null());
    meta::ListMeta {
        resource_version: st(m, "resourceVersion"),
        r#continue: st(m, "continue"),
        ..Default::default()
    }
}

fn container(c: &Value) -> core::Container {
    core::Container {
        name: st(c, "name"),
        image: st(c, "image"),
        command: strs(c, "command"),
        args: strs(c, "args"),
        working_dir: st(c, "workingDir"),
        image_pull_policy: st(c, "imagePullPolicy"),
        ports: objs(c, "ports")
            .map(|p| core::ContainerPort {
                name: st(p, "name"),
                container_port: int(p, "containerPort").map(|n| n as i32),
                protocol: st(p, "protocol"),
                ..Default::default()
            })
            .collect(),
        env: objs(c, "env")
            .map(|e| core::EnvVar {
                name: st(e, "name"),
                value: st(e, "value"),
                ..Default::default()
            })
            .collect(),
        stdin: c.get("stdin").and_then(Value::as_bool),
        tty: c.get("tty").and_then(Value::as_bool),
        ..Default::default()
    }
}

fn container_status(c: &Value) -> core::ContainerStatus {
    let running = c.pointer("/state/running").map(|r| core::ContainerState {
        running: Some(core::ContainerStateRunning {
            started_at: time(r, "startedAt"),
        }),
        ..Default::default()
    });
    core::ContainerStatus {
        name: st(c, "name"),
        state: running,
        ready: c.get("ready").and_then(Value::as_bool),
        restart_count: int(c, "restartCount").map(|n| n as i32),
        image: st(c, "image"),
        image_id: st(c, "imageID"),
        started: c.get("started").and_then(Value::as_bool),
        ..Default::default()
    }
}

fn pod(v: &Value) -> core::Pod {
    let s = v.get("spec").unwrap_or(null());
    let t = v.get("status");
    core::Pod {
        metadata: Some(object_meta(v)),
        spec: Some(core::PodSpec {
            containers: objs(s, "containers").map(container).collect(),
            restart_policy: st(s, "restartPolicy"),
            node_name: st(s, "nodeName"),
            service_account_name: st(s, "serviceAccountName"),
            termination_grace_period_seconds: int(s, "terminationGracePeriodSeconds"),
            dns_policy: st(s, "dnsPolicy"),
            ..Default::default()
        }),
        status: t.map(|t| core::PodStatus {
            phase: st(t, "phase"),
            host_ip: st(t, "hostIP"),
            pod_ip: st(t, "podIP"),
            start_time: time(t, "startTime"),
            container_statuses: objs(t, "containerStatuses").map(container_status).collect(),
            ..Default::default()
        }),
    }
}

fn namespace(v: &Value) -> core::Namespace {
    core::Namespace {
        metadata: Some(object_meta(v)),
        spec: v.get("spec").map(|s| core::NamespaceSpec {
            finalizers: strs(s, "finalizers"),
        }),
        status: v.get("status").map(|s| core::NamespaceStatus {
            phase: st(s, "phase"),
            ..Default::default()
        }),
    }
}

fn secret(v: &Value) -> core::Secret {
    core::Secret {
        metadata: Some(object_meta(v)),
        immutable: v.get("immutable").and_then(Value::as_bool),
        data: b64map(v, "data"),
        string_data: smap(v, "stringData"),
        r#type: st(v, "type"),
    }
}

fn configmap(v: &Value) -> core::ConfigMap {
    core::ConfigMap {
        metadata: Some(object_meta(v)),
        immutable: v.get("immutable").and_then(Value::as_bool),
        data: smap(v, "data"),
        binary_data: b64map(v, "binaryData"),
    }
}

fn subjects(v: &Value) -> Vec<rbac::Subject> {
    objs(v, "subjects")
        .map(|s| rbac::Subject {
            kind: st(s, "kind"),
            api_group: st(s, "apiGroup"),
            name: st(s, "name"),
            namespace: st(s, "namespace"),
        })
        .collect()
}

fn role_ref(v: &Value) -> Option<rbac::RoleRef> {
    v.get("roleRef").map(|r| rbac::RoleRef {
        api_group: st(r, "apiGroup"),
        kind: st(r, "kind"),
        name: st(r, "name"),
    })
}

fn rolebinding(v: &Value) -> rbac::RoleBinding {
    rbac::RoleBinding {
        metadata: Some(object_meta(v)),
        subjects: subjects(v),
        role_ref: role_ref(v),
    }
}

fn clusterrolebinding(v: &Value) -> rbac::ClusterRoleBinding {
    rbac::ClusterRoleBinding {
        metadata: Some(object_meta(v)),
        subjects: subjects(v),
        role_ref: role_ref(v),
    }
}

fn status(v: &Value) -> meta::Status {
    let d = v.get("details");
    meta::Status {
        metadata: Some(list_meta(v)),
        status: st(v, "status"),
        message: st(v, "message"),
        reason: st(v, "reason"),
        code: int(v, "code").map(|c| c as i32),
        details: d.map(|d| meta::StatusDetails {
            name: st(d, "name"),
            group: st(d, "group"),
            kind: st(d, "kind"),
            uid: st(d, "uid"),
            causes: objs(d, "causes")
                .map(|c| meta::StatusCause {
                    reason: st(c, "reason"),
                    message: st(c, "message"),
                    field: st(c, "field"),
                })
                .collect(),
            retry_after_seconds: int(d, "retryAfterSeconds").map(|n| n as i32),
        }),
    }
}

fn ssar(v: &Value) -> authz::SelfSubjectAccessReview {
    let spec = v.get("spec").unwrap_or(null());
    authz::SelfSubjectAccessReview {
        metadata: Some(object_meta(v)),
        spec: Some(authz::SelfSubjectAccessReviewSpec {
            resource_attributes: spec.get("resourceAttributes").map(|r| {
                authz::ResourceAttributes {
                    namespace: st(r, "namespace"),
                    verb: st(r, "verb"),
                    group: st(r, "group"),
                    version: st(r, "version"),
                    resource: st(r, "resource"),
                    subresource: st(r, "subresource"),
                    name: st(r, "name"),
                    ..Default::default()
                }
            }),
            non_resource_attributes: spec.get("nonResourceAttributes").map(|r| {
                authz::NonResourceAttributes {
                    path: st(r, "path"),
                    verb: st(r, "verb"),
                }
            }),
        }),
        status: v.get("status").map(|s| authz::SubjectAccessReviewStatus {
            allowed: s.get("allowed").and_then(Value::as_bool),
            denied: s.get("denied").and_then(Value::as_bool),
            reason: st(s, "reason"),
            evaluation_error: st(s, "evaluationError"),
        }),
    }
}

macro_rules! list_of {
    ($v:expr, $list:ident, $item:expr) => {{
        let msg = $list {
            metadata: Some(list_meta($v)),
            items: objs($v, "items").map($item).collect(),
        };
        msg.encode_to_vec()
    }};
}

/// The message bytes of a JSON object of a supported kind.
fn message(v: &Value) -> Result<Vec<u8>, ProtoError> {
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
    Ok(match kind {
        "Pod" => pod(v).encode_to_vec(),
        "PodList" => list_of!(v, PodList, pod),
        "Namespace" => namespace(v).encode_to_vec(),
        "NamespaceList" => list_of!(v, NamespaceList, namespace),
        "Secret" => secret(v).encode_to_vec(),
        "SecretList" => list_of!(v, SecretList, secret),
        "ConfigMap" => configmap(v).encode_to_vec(),
        "ConfigMapList" => list_of!(v, ConfigMapList, configmap),
        "RoleBinding" => rolebinding(v).encode_to_vec(),
        "RoleBindingList" => list_of!(v, RoleBindingList, rolebinding),
        "ClusterRoleBinding" => clusterrolebinding(v).encode_to_vec(),
        "ClusterRoleBindingList" => list_of!(v, ClusterRoleBindingList, clusterrolebinding),
        "Status" => status(v).encode_to_vec(),
        "SelfSubjectAccessReview" => ssar(v).encode_to_vec(),
        other => return Err(ProtoError::Unsupported(other.to_string())),
    })
}

/// `k8s\0` + Unknown{typeMeta, raw}: the API server's protobuf form of an object.
pub fn encode(v: &Value) -> Result<Vec<u8>, ProtoError> {
    let raw = message(v)?;
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: st(v, "apiVersion"),
            kind: st(v, "kind"),
        }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = MAGIC.to_vec();
    unknown
        .encode(&mut out)
        .map_err(|_| ProtoError::Unsupported("encode".into()))?;
    Ok(out)
}

/// One frame of a protobuf watch stream.
pub fn encode_watch_event(event_type: &str, v: &Value) -> Result<Vec<u8>, ProtoError> {
    let ev = meta::WatchEvent {
        r#type: Some(event_type.to_string()),
        object: Some(RawExtension {
            raw: Some(encode(v)?),
        }),
    };
    let body = ev.encode_to_vec();
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    Ok(out)
}

// ---- protobuf -> JSON ----

/// A JSON object under construction that leaves out what Go's `omitempty` leaves out.
#[derive(Default)]
struct Obj(Map<String, Value>);

impl Obj {
    fn s(mut self, k: &str, v: &Option<String>) -> Self {
        if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
            self.0.insert(k.into(), json!(v));
        }
        self
    }
    fn b(mut self, k: &str, v: Option<bool>) -> Self {
        if let Some(v) = v {
            self.0.insert(k.into(), json!(v));
        }
        self
    }
    fn i(mut self, k: &str, v: Option<i64>) -> Self {
        if let Some(v) = v {
            self.0.insert(k.into(), json!(v));
        }
        self
    }
    fn t(mut self, k: &str, v: &Option<meta::Time>) -> Self {
        if let Some(secs) = v.as_ref().and_then(|t| t.seconds) {
            self.0.insert(k.into(), json!(rfc3339(secs)));
        }
        self
    }
    fn strs(mut self, k: &str, v: &[String]) -> Self {
        if !v.is_empty() {
            self.0.insert(k.into(), json!(v));
        }
        self
    }
    fn map(mut self, k: &str, v: &BTreeMap<String, String>) -> Self {
        if !v.is_empty() {
            self.0.insert(k.into(), json!(v));
        }
        self
    }
    fn bytes_map(mut self, k: &str, v: &BTreeMap<String, Vec<u8>>) -> Self {
        if !v.is_empty() {
            let m: Map<String, Value> = v
                .iter()
                .map(|(k, b)| {
                    (
                        k.clone(),
                        json!(base64::engine::general_purpose::STANDARD.encode(b)),
                    )
                })
                .collect();
            self.0.insert(k.into(), Value::Object(m));
        }
        self
    }
    fn v(mut self, k: &str, v: Option<Value>) -> Self {
        if let Some(v) = v {
            self.0.insert(k.into(), v);
        }
        self
    }
    fn arr(mut self, k: &str, v: Vec<Value>) -> Self {
        if !v.is_empty() {
            self.0.insert(k.into(), Value::Array(v));
        }
        self
    }
    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

fn meta_json(m: &Option<meta::ObjectMeta>) -> Value {
    let Some(m) = m else { return json!({}) };
    Obj::default()
        .s("name", &m.name)
        .s("generateName", &m.generate_name)
        .s("namespace", &m.namespace)
        .s("uid", &m.uid)
        .s("resourceVersion", &m.resource_version)
        .i("generation", m.generation)
        .t("creationTimestamp", &m.creation_timestamp)
        .t("deletionTimestamp", &m.deletion_timestamp)
        .map("labels", &m.labels)
        .map("annotations", &m.annotations)
        .strs("finalizers", &m.finalizers)
        .arr(
            "ownerReferences",
            m.owner_references
                .iter()
                .map(|o| {
                    Obj::default()
                        .s("apiVersion", &o.api_version)
                        .s("kind", &o.kind)
                        .s("name", &o.name)
                        .s("uid", &o.uid)
                        .b("controller", o.controller)
                        .b("blockOwnerDeletion", o.block_owner_deletion)
                        .done()
                })
                .collect(),
        )
        .done()
}

fn typed(kind: &str, api_version: &str, m: &Option<meta::ObjectMeta>) -> Obj {
    Obj::default()
        .v("kind", Some(json!(kind)))
        .v("apiVersion", Some(json!(api_version)))
        .v("metadata", Some(meta_json(m)))
}

fn container_json(c: &core::Container) -> Value {
    Obj::default()
        .s("name", &c.name)
        .s("image", &c.image)
        .strs("command", &c.command)
        .strs("args", &c.args)
        .s("workingDir", &c.working_dir)
        .s("imagePullPolicy", &c.image_pull_policy)
        .arr(
            "ports",
            c.ports
                .iter()
                .map(|p| {
                    Obj::default()
                        .s("name", &p.name)
                        .i("containerPort", p.container_port.map(i64::from))
                        .s("protocol", &p.protocol)
                        .done()
                })
                .collect(),
        )
        .arr(
            "env",
            c.env
                .iter()
                .map(|e| {
                    Obj::default()
                        .s("name", &e.name)
                        .s("value", &e.value)
                        .done()
                })
                .collect(),
        )
        .b("stdin", c.stdin)
        .b("tty", c.tty)
        .done()
}

fn pod_json(p: &core::Pod) -> Value {
    let spec = p.spec.as_ref().map(|s| {
        Obj::default()
            .arr(
                "containers",
                s.containers.iter().map(container_json).collect(),
            )
            .s("restartPolicy", &s.restart_policy)
            .s("nodeName", &s.node_name)
            .s("serviceAccountName", &s.service_account_name)
            .i(
                "terminationGracePeriodSeconds",
                s.termination_grace_period_seconds,
            )
            .s("dnsPolicy", &s.dns_policy)
            .done()
    });
    let status = p.status.as_ref().map(|s| {
        Obj::default()
            .s("phase", &s.phase)
            .s("hostIP", &s.host_ip)
            .s("podIP", &s.pod_ip)
            .t("startTime", &s.start_time)
            .arr(
                "containerStatuses",
                s.container_statuses
                    .iter()
                    .map(|c| {
                        let state = c
                            .state
                            .as_ref()
                            .and_then(|st| st.running.as_ref())
                            .map(|r| json!({"running": Obj::default().t("startedAt", &r.started_at).done()}));
                        Obj::default()
                            .s("name", &c.name)
                            .v("state", state)
                            .b("ready", c.ready)
                            .i("restartCount", c.restart_count.map(i64::from))
                            .s("image", &c.image)
                            .s("imageID", &c.image_id)
                            .b("started", c.started)
                            .done()
                    })
                    .collect(),
            )
            .done()
    });
    typed("Pod", "v1", &p.metadata)
        .v("spec", spec)
        .v("status", status)
        .done()
}

fn subjects_json(s: &[rbac::Subject]) -> Vec<Value> {
    s.iter()
        .map(|s| {
            Obj::default()
                .s("kind", &s.kind)
                .s("apiGroup", &s.api_group)
                .s("name", &s.name)
                .s("namespace", &s.namespace)
                .done()
        })
        .collect()
}

fn role_ref_json(r: &Option<rbac::RoleRef>) -> Option<Value> {
    r.as_ref().map(|r| {
        Obj::default()
            .s("apiGroup", &r.api_group)
            .s("kind", &r.kind)
            .s("name", &r.name)
            .done()
    })
}

/// A protobuf object (magic + envelope: a request body or an answer) as the JSON object it
/// stands for. Lists and Status too, so tests can read what the server or a gateway answered.
pub fn decode(body: &[u8]) -> Result<Value, ProtoError> {
    let rest = body.strip_prefix(MAGIC).ok_or(ProtoError::NoMagic)?;
    let unknown = Unknown::decode(rest)?;
    let tm = unknown.type_meta.unwrap_or_default();
    let kind = tm.kind.unwrap_or_default();
    let raw = unknown.raw.ok_or(ProtoError::Empty)?;
    decode_raw(&kind, &raw)
}

fn list_json(
    kind: &str,
    api_version: &str,
    m: &Option<meta::ListMeta>,
    items: Vec<Value>,
) -> Value {
    let meta = m.as_ref().map(|m| {
        Obj::default()
            .s("resourceVersion", &m.resource_version)
            .s("continue", &m.r#continue)
            .done()
    });
    json!({"kind": kind, "apiVersion": api_version, "metadata": meta.unwrap_or(json!({})), "items": items})
}

macro_rules! decode_list {
    ($raw:expr, $list:ident, $kind:expr, $av:expr, $item_kind:expr) => {{
        let l = $list::decode($raw)?;
        let items = l
            .items
            .iter()
            .map(|i| decode_raw($item_kind, &i.encode_to_vec()))
            .collect::<Result<Vec<_>, _>>()?;
        list_json($kind, $av, &l.metadata, items)
    }};
}

/// The message of `kind` as JSON.
fn decode_raw(kind: &str, raw: &[u8]) -> Result<Value, ProtoError> {
    Ok(match kind {
        "Pod" => pod_json(&core::Pod::decode(raw)?),
        "Namespace" => {
            let n = core::Namespace::decode(raw)?;
            typed("Namespace", "v1", &n.metadata)
                .v(
                    "spec",
                    n.spec
                        .map(|s| Obj::default().strs("finalizers", &s.finalizers).done()),
                )
                .v(
                    "status",
                    n.status.map(|s| Obj::default().s("phase", &s.phase).done()),
                )
                .done()
        }
        "Secret" => {
            let s = core::Secret::decode(raw)?;
            typed("Secret", "v1", &s.metadata)
                .b("immutable", s.immutable)
                .bytes_map("data", &s.data)
                .map("stringData", &s.string_data)
                .s("type", &s.r#type)
                .done()
        }
        "ConfigMap" => {
            let c = core::ConfigMap::decode(raw)?;
            typed("ConfigMap", "v1", &c.metadata)
                .b("immutable", c.immutable)
                .map("data", &c.data)
                .bytes_map("binaryData", &c.binary_data)
                .done()
        }
        "RoleBinding" => {
            let r = rbac::RoleBinding::decode(raw)?;
            typed("RoleBinding", "rbac.authorization.k8s.io/v1", &r.metadata)
                .arr("subjects", subjects_json(&r.subjects))
                .v("roleRef", role_ref_json(&r.role_ref))
                .done()
        }
        "ClusterRoleBinding" => {
            let r = rbac::ClusterRoleBinding::decode(raw)?;
            typed(
                "ClusterRoleBinding",
                "rbac.authorization.k8s.io/v1",
                &r.metadata,
            )
            .arr("subjects", subjects_json(&r.subjects))
            .v("roleRef", role_ref_json(&r.role_ref))
            .done()
        }
        "SelfSubjectAccessReview" => {
            let r = authz::SelfSubjectAccessReview::decode(raw)?;
            let spec = r.spec.unwrap_or_default();
            let ra = spec.resource_attributes.map(|a| {
                Obj::default()
                    .s("namespace", &a.namespace)
                    .s("verb", &a.verb)
                    .s("group", &a.group)
                    .s("version", &a.version)
                    .s("resource", &a.resource)
                    .s("subresource", &a.subresource)
                    .s("name", &a.name)
                    .done()
            });
            let nra = spec
                .non_resource_attributes
                .map(|a| Obj::default().s("path", &a.path).s("verb", &a.verb).done());
            typed(
                "SelfSubjectAccessReview",
                "authorization.k8s.io/v1",
                &r.metadata,
            )
            .v(
                "spec",
                Some(
                    Obj::default()
                        .v("resourceAttributes", ra)
                        .v("nonResourceAttributes", nra)
                        .done(),
                ),
            )
            .done()
        }
        "PodList" => decode_list!(raw, PodList, "PodList", "v1", "Pod"),
        "NamespaceList" => decode_list!(raw, NamespaceList, "NamespaceList", "v1", "Namespace"),
        "SecretList" => decode_list!(raw, SecretList, "SecretList", "v1", "Secret"),
        "ConfigMapList" => decode_list!(raw, ConfigMapList, "ConfigMapList", "v1", "ConfigMap"),
        "RoleBindingList" => decode_list!(
            raw,
            RoleBindingList,
            "RoleBindingList",
            "rbac.authorization.k8s.io/v1",
            "RoleBinding"
        ),
        "ClusterRoleBindingList" => decode_list!(
            raw,
            ClusterRoleBindingList,
            "ClusterRoleBindingList",
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding"
        ),
        "Status" => {
            let s = meta::Status::decode(raw)?;
            let details = s.details.map(|d| {
                Obj::default()
                    .s("name", &d.name)
                    .s("group", &d.group)
                    .s("kind", &d.kind)
                    .arr(
                        "causes",
                        d.causes
                            .iter()
                            .map(|c| {
                                Obj::default()
                                    .s("reason", &c.reason)
                                    .s("message", &c.message)
                                    .s("field", &c.field)
                                    .done()
                            })
                            .collect(),
                    )
                    .done()
            });
            Obj::default()
                .v("kind", Some(json!("Status")))
                .v("apiVersion", Some(json!("v1")))
                .v("metadata", Some(json!({})))
                .s("status", &s.status)
                .s("message", &s.message)
                .s("reason", &s.reason)
                .i("code", s.code.map(i64::from))
                .v("details", details)
                .done()
        }
        other => return Err(ProtoError::Unsupported(other.to_string())),
    })
}

/// The frames of a protobuf watch stream, decoded (for the stand-in's own tests and the
/// gateway's: what a client-go watcher would see).
pub fn decode_watch_stream(mut b: &[u8]) -> Result<Vec<(String, Value)>, ProtoError> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let Some(frame) = b.get(4..4 + n) else { break };
        let ev = meta::WatchEvent::decode(frame)?;
        let raw = ev.object.and_then(|o| o.raw).ok_or(ProtoError::Empty)?;
        out.push((ev.r#type.unwrap_or_default(), decode(&raw)?));
        b = &b[4 + n..];
    }
    Ok(out)
}
