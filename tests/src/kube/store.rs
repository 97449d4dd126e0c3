//! The stand-in's objects: JSON values in memory, one resourceVersion counter for all of them
//! (as etcd's revision), and a history of changes that watches replay from a resourceVersion
//! and then follow live.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use base64::Engine;
use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

use super::select::Selectors;

/// A resource the stand-in serves.
#[derive(Debug)]
pub struct ResourceDef {
    /// "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub verbs: &'static [&'static str],
}

impl ResourceDef {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

pub const RESOURCES: &[ResourceDef] = &[
    ResourceDef {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        verbs: &[
            "create", "delete", "get", "list", "patch", "update", "watch",
        ],
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        short_names: &["po"],
        verbs: ALL_VERBS,
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "secrets",
        singular: "secret",
        kind: "Secret",
        namespaced: true,
        short_names: &[],
        verbs: ALL_VERBS,
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        namespaced: true,
        short_names: &["cm"],
        verbs: ALL_VERBS,
    },
    ResourceDef {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "rolebindings",
        singular: "rolebinding",
        kind: "RoleBinding",
        namespaced: true,
        short_names: &[],
        verbs: ALL_VERBS,
    },
    ResourceDef {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "clusterrolebindings",
        singular: "clusterrolebinding",
        kind: "ClusterRoleBinding",
        namespaced: false,
        short_names: &[],
        verbs: ALL_VERBS,
    },
];

/// The resource with this group and plural name.
pub fn resource(group: &str, plural: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.plural == plural)
}

/// Seconds since the epoch as RFC 3339 UTC, the form of Kubernetes' `metav1.Time`.
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The inverse of [`rfc3339`] (the `Z` form only; anything else is `None`).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// A change, as a watch reports it.
#[derive(Clone, Debug)]
pub struct Event {
    pub resource: &'static str,
    pub group: &'static str,
    pub namespace: String,
    pub rv: u64,
    pub kind: EventType,
    pub object: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
}

type Key = (&'static str, String, String);

/// How much history a watch can resume from.
const HISTORY: usize = 10_000;

pub struct Store {
    objects: BTreeMap<Key, Value>,
    history: Vec<Event>,
    rv: u64,
    events: broadcast::Sender<Event>,
}

static UID: AtomicU64 = AtomicU64::new(1);

fn new_uid() -> String {
    let n = UID.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        pid,
        n & 0xffff,
        (n >> 16) & 0xfff,
        n & 0xfff,
        n
    )
}

fn key(def: &ResourceDef, ns: &str, name: &str) -> Key {
    let ns = if def.namespaced { ns } else { "" };
    (def.plural, ns.to_string(), name.to_string())
}

fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

impl Store {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(4096);
        Self {
            objects: BTreeMap::new(),
            history: Vec::new(),
            rv: 1,
            events,
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn get(&self, def: &ResourceDef, ns: &str, name: &str) -> Option<&Value> {
        self.objects.get(&key(def, ns, name))
    }

    /// Objects of a resource, in one namespace or all (`None`), matching the selectors.
    pub fn list(&self, def: &ResourceDef, ns: Option<&str>, sel: &Selectors) -> Vec<Value> {
        self.objects
            .range((def.plural, String::new(), String::new())..)
            .take_while(|(k, _)| k.0 == def.plural)
            .filter(|(k, _)| ns.is_none_or(|n| !def.namespaced || k.1 == n))
            .filter(|(_, v)| sel.matches(v))
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn record(&mut self, def: &'static ResourceDef, ns: &str, kind: EventType, object: Value) {
        let ev = Event {
            resource: def.plural,
            group: def.group,
            namespace: ns.to_string(),
            rv: self.rv,
            kind,
            object,
        };
        self.history.push(ev.clone());
        if self.history.len() > HISTORY {
            self.history.drain(..HISTORY / 2);
        }
        // No receiver is fine: nobody watches.
        let _ = self.events.send(ev);
    }

    /// Events after `rv` (oldest first), and a receiver for the ones after them: taken under
    /// the same lock, so none is missed or repeated. `None` if `rv` is older than the history.
    pub fn watch_from(&self, rv: u64) -> Option<(Vec<Event>, broadcast::Receiver<Event>)> {
        if let Some(first) = self.history.first() {
            if rv + 1 < first.rv && rv < self.rv {
                return None;
            }
        }
        let past = self.history.iter().filter(|e| e.rv > rv).cloned().collect();
        Some((past, self.events.subscribe()))
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Fill in what the API server sets on create: kind, apiVersion, namespace, uid,
    /// resourceVersion, creationTimestamp; a Secret's stringData folded into data.
    pub fn create(
        &mut self,
        def: &'static ResourceDef,
        ns: &str,
        mut obj: Value,
    ) -> Result<Value, StoreError> {
        let Some(map) = obj.as_object_mut() else {
            return Err(StoreError::Invalid("the body is not an object".into()));
        };
        let kind_ok = map
            .get("kind")
            .and_then(Value::as_str)
            .is_none_or(|k| k == def.kind);
        if !kind_ok {
            return Err(StoreError::Invalid(format!(
                "the kind in the body is not {}",
                def.kind
            )));
        }
        map.insert("kind".into(), json!(def.kind));
        map.insert("apiVersion".into(), json!(def.api_version()));
        let meta = map
            .entry("metadata")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| StoreError::Invalid("metadata is not an object".into()))?;
        let mut name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() {
            let Some(prefix) = meta.get("generateName").and_then(Value::as_str) else {
                return Err(StoreError::Invalid(
                    "name or generateName is required".into(),
                ));
            };
            name = format!(
                "{prefix}{:05x}",
                UID.fetch_add(1, Ordering::Relaxed) & 0xfffff
            );
            meta.insert("name".into(), json!(name));
        }
        if def.namespaced {
            match meta.get("namespace").and_then(Value::as_str) {
                Some(n) if !n.is_empty() && n != ns => {
                    return Err(StoreError::Invalid(format!(
                        "the namespace of the provided object ({n}) does not match the namespace sent on the request ({ns})"
                    )))
                }
                _ => {}
            }
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), json!(new_uid()));
        meta.insert("creationTimestamp".into(), json!(rfc3339(now_secs())));
        meta.remove("resourceVersion");
        if def.kind == "Secret" {
            fold_string_data(map);
            map.entry("type").or_insert_with(|| json!("Opaque"));
        }
        if def.kind == "Pod" {
            default_pod_status(map);
        }
        if def.kind == "Namespace" {
            map.insert("status".into(), json!({"phase": "Active"}));
        }
        if def.namespaced
            && self
                .get(resource("", "namespaces").expect("namespaces"), "", ns)
                .is_none()
        {
            return Err(StoreError::NotFound(format!(
                "namespaces \"{ns}\" not found"
            )));
        }
        let k = key(def, ns, &name);
        if self.objects.contains_key(&k) {
            return Err(StoreError::AlreadyExists(format!(
                "{} \"{name}\" already exists",
                plural_group(def)
            )));
        }
        let rv = self.bump();
        set_rv(&mut obj, rv);
        self.objects.insert(k, obj.clone());
        self.record(def, ns, EventType::Added, obj.clone());
        Ok(obj)
    }

    /// Replace an object (PUT, or the result of a patch). A resourceVersion in the body must be
    /// the current one (optimistic concurrency, 409 otherwise).
    pub fn update(
        &mut self,
        def: &'static ResourceDef,
        ns: &str,
        name: &str,
        mut obj: Value,
    ) -> Result<Value, StoreError> {
        let k = key(def, ns, name);
        let Some(old) = self.objects.get(&k) else {
            return Err(StoreError::NotFound(format!(
                "{} \"{name}\" not found",
                plural_group(def)
            )));
        };
        if name_of(&obj) != name {
            return Err(StoreError::Invalid(
                "the name of the object does not match the name on the URL".into(),
            ));
        }
        let sent_rv = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str);
        let old_rv = old
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str);
        if sent_rv.is_some_and(|s| Some(s) != old_rv) {
            return Err(StoreError::Conflict(format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                plural_group(def)
            )));
        }
        // What the client may not change.
        for field in ["uid", "creationTimestamp", "namespace"] {
            if let (Some(v), Some(m)) = (
                old.pointer(&format!("/metadata/{field}")).cloned(),
                obj.pointer_mut("/metadata").and_then(Value::as_object_mut),
            ) {
                m.insert(field.into(), v);
            }
        }
        if let Some(map) = obj.as_object_mut() {
            map.insert("kind".into(), json!(def.kind));
            map.insert("apiVersion".into(), json!(def.api_version()));
            if def.kind == "Secret" {
                fold_string_data(map);
            }
        }
        let rv = self.bump();
        set_rv(&mut obj, rv);
        self.objects.insert(k, obj.clone());
        self.record(def, ns, EventType::Modified, obj.clone());
        Ok(obj)
    }

    pub fn delete(
        &mut self,
        def: &'static ResourceDef,
        ns: &str,
        name: &str,
    ) -> Result<Value, StoreError> {
        let Some(mut obj) = self.objects.remove(&key(def, ns, name)) else {
            return Err(StoreError::NotFound(format!(
                "{} \"{name}\" not found",
                plural_group(def)
            )));
        };
        let rv = self.bump();
        set_rv(&mut obj, rv);
        self.record(def, ns, EventType::Deleted, obj.clone());
        Ok(obj)
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

/// `pods`, or `rolebindings.rbac.authorization.k8s.io`: how the API server names a resource
/// in its messages.
pub fn plural_group(def: &ResourceDef) -> String {
    if def.group.is_empty() {
        def.plural.to_string()
    } else {
        format!("{}.{}", def.plural, def.group)
    }
}

fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(m) = obj.pointer_mut("/metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), json!(rv.to_string()));
    }
}

fn fold_string_data(map: &mut Map<String, Value>) {
    if let Some(Value::Object(sd)) = map.remove("stringData") {
        let data = map.entry("data").or_insert_with(|| json!({}));
        if let Some(data) = data.as_object_mut() {
            for (k, v) in sd {
                let s = v.as_str().unwrap_or_default();
                data.insert(
                    k,
                    json!(base64::engine::general_purpose::STANDARD.encode(s)),
                );
            }
        }
    }
}

fn default_pod_status(map: &mut Map<String, Value>) {
    let containers: Vec<Value> = map
        .get("spec")
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            json!({
                "name": c.get("name").cloned().unwrap_or(json!("main")),
                "image": c.get("image").cloned().unwrap_or(json!("")),
                "imageID": "",
                "ready": true,
                "restartCount": 0,
                "started": true,
                "state": {"running": {"startedAt": rfc3339(now_secs())}},
            })
        })
        .collect();
    // kubectl run sends `"status": {}`: the kubelet would fill it in.
    if map
        .get("status")
        .is_some_and(|s| s.as_object().is_some_and(|o| o.is_empty()))
    {
        map.remove("status");
    }
    map.entry("status").or_insert_with(|| {
        json!({
            "phase": "Running",
            "hostIP": "10.0.0.10",
            "podIP": "10.244.0.7",
            "startTime": rfc3339(now_secs()),
            "containerStatuses": statuses,
        })
    });
    if let Some(spec) = map.get_mut("spec").and_then(Value::as_object_mut) {
        spec.entry("nodeName")
            .or_insert_with(|| json!("standin-node"));
        spec.entry("restartPolicy")
            .or_insert_with(|| json!("Always"));
    }
}

/// A pod annotation whose value is the pod's log (`pods/log`); without it the log is two
/// lines naming the pod.
pub const LOG_ANNOTATION: &str = "standin.agentgate.dev/log";

/// What every stand-in starts with.
pub fn seed(store: &mut Store) {
    let ns = resource("", "namespaces").expect("namespaces");
    for n in ["default", "kube-system", "team-a"] {
        let _ = store.create(ns, "", json!({"metadata": {"name": n}}));
    }
    let pods = resource("", "pods").expect("pods");
    let _ = store.create(
        pods,
        "default",
        json!({"metadata": {"name": "web-0", "labels": {"app": "web"}},
               "spec": {"containers": [{"name": "main", "image": "nginx:1.27"}]}}),
    );
    // api-0's log (pods/log) leaks a credential, for the gateway's log-masking tests.
    let _ = store.create(
        pods,
        "default",
        json!({"metadata": {"name": "api-0", "labels": {"app": "api"},
                            "annotations": {LOG_ANNOTATION: "starting api\nconnecting to postgres://app:s3cr3t-hunter2@db:5432/app\nready\n"}},
               "spec": {"containers": [{"name": "main", "image": "ghcr.io/example/api:2.1"}]}}),
    );
    let _ = store.create(
        pods,
        "team-a",
        json!({"metadata": {"name": "worker-0", "labels": {"app": "worker"}},
               "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}]}}),
    );
    let secrets = resource("", "secrets").expect("secrets");
    let _ = store.create(
        secrets,
        "default",
        json!({"metadata": {"name": "db-credentials", "labels": {"app": "api"}},
               "type": "Opaque",
               "stringData": {"username": "app", "password": "s3cr3t-hunter2"}}),
    );
    let _ = store.create(
        secrets,
        "team-a",
        json!({"metadata": {"name": "api-token"},
               "type": "Opaque",
               "stringData": {"token": "tok-team-a-0123456789"}}),
    );
    let cms = resource("", "configmaps").expect("configmaps");
    let _ = store.create(
        cms,
        "default",
        json!({"metadata": {"name": "app-config"},
               "data": {"LOG_LEVEL": "info", "DATABASE_URL": "postgres://app:s3cr3t-hunter2@db:5432/app"}}),
    );
    let rb = resource("rbac.authorization.k8s.io", "rolebindings").expect("rolebindings");
    let _ = store.create(
        rb,
        "default",
        json!({"metadata": {"name": "viewers"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
               "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "team-a"}]}),
    );
    let crb = resource("rbac.authorization.k8s.io", "clusterrolebindings").expect("crb");
    let _ = store.create(
        crb,
        "",
        json!({"metadata": {"name": "cluster-admins"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
               "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "admin"}]}),
    );
}

/// `n` more pods `bulk-00000`.. in `default`, for list benchmarks.
pub fn seed_bulk(store: &mut Store, n: usize) {
    let pods = resource("", "pods").expect("pods");
    for i in 0..n {
        let _ = store.create(
            pods,
            "default",
            json!({"metadata": {"name": format!("bulk-{i:05}"), "labels": {"app": "bulk"}},
                   "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}]}}),
        );
    }
}
