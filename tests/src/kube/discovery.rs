//! Discovery: `/version`, `/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>`, in the legacy
//! form and in the aggregated form (`apidiscovery.k8s.io/v2`) that kubectl 1.32 asks for first
//! (Accept `application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,...`).

use serde_json::{json, Value};

use super::store::{ResourceDef, RESOURCES};

/// The content type of an aggregated discovery answer.
pub const AGGREGATED_V2: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0-agentgate-standin",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2024-12-11T00:00:00Z",
        "goVersion": "go1.23.4",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

/// The group of `SelfSubjectAccessReview` (`kubectl auth can-i`): answered, not stored.
pub const AUTHZ_GROUP: &str = "authorization.k8s.io";

fn groups() -> Vec<&'static str> {
    let mut g: Vec<&str> = RESOURCES
        .iter()
        .map(|r| r.group)
        .filter(|g| !g.is_empty())
        .collect();
    g.dedup();
    g.push(AUTHZ_GROUP);
    g
}

/// Whether the client asked for aggregated discovery v2 (it lists it in Accept).
pub fn wants_aggregated(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|part| {
            let p: Vec<&str> = part.split(';').map(str::trim).collect();
            p.contains(&"g=apidiscovery.k8s.io")
                && p.contains(&"v=v2")
                && p.contains(&"as=APIGroupDiscoveryList")
        })
    })
}

pub fn api_versions(server: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}]
    })
}

pub fn api_group_list() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .map(|g| {
            let gv = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn subresources(r: &ResourceDef) -> Vec<(&'static str, &'static str, &'static [&'static str])> {
    if r.plural == "pods" {
        vec![
            ("exec", "PodExecOptions", &["create", "get"]),
            ("log", "Pod", &["get"]),
        ]
    } else {
        Vec::new()
    }
}

fn categories(r: &ResourceDef) -> Vec<&'static str> {
    if r.plural == "pods" {
        vec!["all"]
    } else {
        Vec::new()
    }
}

/// `/api/v1` or `/apis/<group>/v1`; `None` for a group version the stand-in does not serve.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    if version != "v1" || !(group.is_empty() || groups().contains(&group)) {
        return None;
    }
    let gv = if group.is_empty() {
        "v1".to_string()
    } else {
        format!("{group}/v1")
    };
    let mut resources = Vec::new();
    if group == AUTHZ_GROUP {
        resources.push(json!({
            "name": "selfsubjectaccessreviews",
            "singularName": "selfsubjectaccessreview",
            "namespaced": false,
            "kind": "SelfSubjectAccessReview",
            "verbs": ["create"],
        }));
    }
    for r in RESOURCES.iter().filter(|r| r.group == group) {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs,
            "shortNames": r.short_names,
            "categories": categories(r),
            "storageVersionHash": "standin",
        }));
        for (sub, kind, verbs) in subresources(r) {
            resources.push(json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": kind,
                "verbs": verbs,
            }));
        }
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}

fn aggregated_resources(group: &str) -> Vec<Value> {
    if group == AUTHZ_GROUP {
        return vec![json!({
            "resource": "selfsubjectaccessreviews",
            "responseKind": {"group": AUTHZ_GROUP, "version": "v1", "kind": "SelfSubjectAccessReview"},
            "scope": "Cluster",
            "singularResource": "selfsubjectaccessreview",
            "verbs": ["create"],
        })];
    }
    RESOURCES
        .iter()
        .filter(|r| r.group == group)
        .map(|r| {
            let subs: Vec<Value> = subresources(r)
                .into_iter()
                .map(|(sub, kind, verbs)| {
                    json!({"subresource": sub,
                           "responseKind": {"group": "", "version": "v1", "kind": kind},
                           "verbs": verbs})
                })
                .collect();
            json!({
                "resource": r.plural,
                "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": r.singular,
                "verbs": r.verbs,
                "shortNames": r.short_names,
                "categories": categories(r),
                "subresources": subs,
            })
        })
        .collect()
}

/// The aggregated discovery document for `/api` (the core group) or `/apis` (the others).
pub fn aggregated(core: bool) -> Value {
    let items: Vec<Value> = if core {
        vec![json!({
            "metadata": {"creationTimestamp": null},
            "versions": [{"version": "v1", "resources": aggregated_resources(""), "freshness": "Current"}]
        })]
    } else {
        groups()
            .into_iter()
            .map(|g| {
                json!({
                    "metadata": {"name": g, "creationTimestamp": null},
                    "versions": [{"version": "v1", "resources": aggregated_resources(g), "freshness": "Current"}]
                })
            })
            .collect()
    };
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}
