//! The smallest OpenAPI v3 kubectl 1.32 needs for `create -f` and `apply -f` (it insists: with
//! no `/openapi/v3` nor `/openapi/v2` they fail with "failed to download openapi"). kubectl's
//! default `--validate=strict` looks, in `/openapi/v3/<group-version>`, for the PATCH operation
//! of the object's kind (`x-kubernetes-group-version-kind`) with a `fieldValidation` query
//! parameter: found, it leaves validation to the server and validates nothing itself. So each
//! group version lists, per resource, its item path with that PATCH operation; no schemas
//! (client-side apply then computes its strategic merge patch from kubectl's built-in types).
//! The stand-in itself ignores `fieldValidation` (it does not check unknown fields).

use serde_json::{json, Map, Value};

use super::store::RESOURCES;

fn gv_key(group: &str) -> String {
    if group.is_empty() {
        "api/v1".into()
    } else {
        format!("apis/{group}/v1")
    }
}

fn groups() -> Vec<&'static str> {
    let mut g: Vec<&str> = RESOURCES.iter().map(|r| r.group).collect();
    g.dedup();
    g
}

/// `/openapi/v3`: the group versions and where their documents are.
pub fn root() -> Value {
    let paths: Map<String, Value> = groups()
        .into_iter()
        .map(|g| {
            let key = gv_key(g);
            let url = format!("/openapi/v3/{key}?hash=standin");
            (key, json!({"serverRelativeURL": url}))
        })
        .collect();
    json!({"paths": paths})
}

/// `/openapi/v3/api/v1`, `/openapi/v3/apis/<group>/v1`; `None` for anything else.
pub fn group_version(path: &str) -> Option<Value> {
    let key = path.strip_prefix("/openapi/v3/")?.trim_end_matches('/');
    let group = groups().into_iter().find(|g| gv_key(g) == key)?;
    let mut paths = Map::new();
    for r in RESOURCES.iter().filter(|r| r.group == group) {
        let prefix = format!("/{}", gv_key(group));
        let item = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{prefix}/{}/{{name}}", r.plural)
        };
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let param = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string"}});
        paths.insert(
            item,
            json!({
                "patch": {
                    "operationId": format!("patch{}", r.kind),
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": gvk,
                    "parameters": [param("dryRun"), param("fieldManager"), param("fieldValidation"), param("force")],
                    "responses": {"200": {"description": "OK"}},
                },
            }),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}
