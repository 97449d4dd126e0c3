//! `meta.k8s.io/v1` Tables: what `kubectl get` prints without `-o`. The columns follow the
//! real server's printers for these kinds (priority 1 columns appear with `-o wide`).

use serde_json::{json, Value};

use super::store::{now_secs, parse_rfc3339, ResourceDef};

/// `includeObject=`: what each row carries besides its cells (the server's default: metadata).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn parse(q: Option<&str>) -> Self {
        match q {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

fn col(name: &str, ty: &str, format: &str, priority: u8) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": name, "priority": priority})
}

/// `5m`, `3h`, `2d`: kubectl's short durations.
fn age(obj: &Value) -> String {
    let Some(t) = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(parse_rfc3339)
    else {
        return "<unknown>".into();
    };
    let s = (now_secs() - t).max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn s<'a>(obj: &'a Value, ptr: &str) -> &'a str {
    obj.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn subjects(obj: &Value, kind: &str) -> String {
    obj.get("subjects")
        .and_then(Value::as_array)
        .map(|subs| {
            subs.iter()
                .filter(|x| s(x, "/kind") == kind)
                .map(|x| {
                    if kind == "ServiceAccount" {
                        format!("{}/{}", s(x, "/namespace"), s(x, "/name"))
                    } else {
                        s(x, "/name").to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn columns(def: &ResourceDef) -> Vec<Value> {
    let name = col("Name", "string", "name", 0);
    match def.kind {
        "Pod" => vec![
            name,
            col("Ready", "string", "", 0),
            col("Status", "string", "", 0),
            col("Restarts", "string", "", 0),
            col("Age", "string", "", 0),
            col("IP", "string", "", 1),
            col("Node", "string", "", 1),
        ],
        "Secret" => vec![
            name,
            col("Type", "string", "", 0),
            col("Data", "string", "", 0),
            col("Age", "string", "", 0),
        ],
        "ConfigMap" => vec![
            name,
            col("Data", "string", "", 0),
            col("Age", "string", "", 0),
        ],
        "Namespace" => vec![
            name,
            col("Status", "string", "", 0),
            col("Age", "string", "", 0),
        ],
        _ => vec![
            name,
            col("Role", "string", "", 0),
            col("Age", "string", "", 0),
            col("Users", "string", "", 1),
            col("Groups", "string", "", 1),
            col("ServiceAccounts", "string", "", 1),
        ],
    }
}

fn count(obj: &Value, field: &str) -> usize {
    obj.get(field)
        .and_then(Value::as_object)
        .map_or(0, |m| m.len())
}

fn cells(def: &ResourceDef, obj: &Value) -> Vec<Value> {
    let name = json!(s(obj, "/metadata/name"));
    match def.kind {
        "Pod" => {
            let st = obj
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let ready = st
                .iter()
                .filter(|c| c.get("ready") == Some(&json!(true)))
                .count();
            let total = obj
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(st.len(), Vec::len);
            let restarts: i64 = st
                .iter()
                .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
                .sum();
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(s(obj, "/status/phase")),
                json!(restarts.to_string()),
                json!(age(obj)),
                json!(s(obj, "/status/podIP")),
                json!(s(obj, "/spec/nodeName")),
            ]
        }
        "Secret" => vec![
            name,
            json!(s(obj, "/type")),
            json!(count(obj, "data")),
            json!(age(obj)),
        ],
        "ConfigMap" => vec![
            name,
            json!(count(obj, "data") + count(obj, "binaryData")),
            json!(age(obj)),
        ],
        "Namespace" => vec![name, json!(s(obj, "/status/phase")), json!(age(obj))],
        _ => vec![
            name,
            json!(format!(
                "{}/{}",
                s(obj, "/roleRef/kind"),
                s(obj, "/roleRef/name")
            )),
            json!(age(obj)),
            json!(subjects(obj, "User")),
            json!(subjects(obj, "Group")),
            json!(subjects(obj, "ServiceAccount")),
        ],
    }
}

fn row(def: &ResourceDef, obj: &Value, include: Include) -> Value {
    let mut row = json!({"cells": cells(def, obj)});
    match include {
        Include::None => {}
        Include::Metadata => {
            row["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
            })
        }
        Include::Object => row["object"] = obj.clone(),
    }
    row
}

/// A Table of these objects; `rv` and `cont` are the list's resourceVersion and continue token.
pub fn table(
    def: &ResourceDef,
    objects: &[Value],
    include: Include,
    rv: &str,
    cont: Option<&str>,
) -> Value {
    let mut meta = json!({"resourceVersion": rv});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": columns(def),
        "rows": objects.iter().map(|o| row(def, o, include)).collect::<Vec<_>>(),
    })
}
