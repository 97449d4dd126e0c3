//! What the Kubernetes profile changes on the way through: the agent's own impersonation
//! headers refused and the gateway's put in their place (the API server's RBAC and audit log
//! see the agent, not the gateway), JSON asked for instead of protobuf where the client accepts
//! both (so the gateway can read, mask and record every answer), and Secret values masked in
//! every answer that carries a Secret.

use hyper::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT};
use serde_json::Value;

/// What a masked Secret value reads as. In `data` it is base64 like any value there, so typed
/// clients still decode the object.
pub const MASKED: &str = "[masked by agentgate]";
const MASKED_B64: &str = "W21hc2tlZCBieSBhZ2VudGdhdGVd";

/// The annotation `kubectl apply` keeps the whole last-applied object in: for a Secret, its
/// values in clear.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Whether the request carries impersonation headers of its own (`Impersonate-User`,
/// `-Group`, `-Uid`, `-Extra-*`): an agent may not pick whom the gateway speaks for.
pub fn impersonates(headers: &HeaderMap) -> bool {
    headers
        .keys()
        .any(|k| k.as_str().starts_with("impersonate-"))
}

/// The agent, as the API server is told through impersonation.
pub struct Impersonated<'a> {
    pub user: String,
    pub groups: &'a [String],
    /// `Impersonate-Extra-<key>`: the agentgate session and workload.
    pub extra: Vec<(&'static str, String)>,
}

#[derive(Debug, thiserror::Error)]
#[error("`{0}` cannot be sent as an HTTP header value")]
pub struct BadHeader(String);

/// Sets the impersonation headers (after every agent-sent one was refused).
pub fn impersonate(headers: &mut HeaderMap, who: &Impersonated<'_>) -> Result<(), BadHeader> {
    let value = |v: &str| HeaderValue::from_str(v).map_err(|_| BadHeader(v.to_string()));
    headers.insert("impersonate-user", value(&who.user)?);
    for g in who.groups {
        headers.append("impersonate-group", value(g)?);
    }
    for (key, v) in &who.extra {
        // Extra keys are percent-encoded in the header name (Kubernetes' convention); ours
        // only need `/` encoded.
        let name = format!("impersonate-extra-{}", key.replace('/', "%2F")).to_ascii_lowercase();
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| BadHeader(name))?;
        headers.insert(name, value(v)?);
    }
    Ok(())
}

/// Rewrites the request's `Accept` to JSON only (none: left as it is, the server's default is
/// JSON).
pub fn ask_for_json(headers: &mut HeaderMap) {
    let Some(accept) = headers.get(ACCEPT).and_then(|v| v.to_str().ok()) else {
        if headers.contains_key(ACCEPT) {
            headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        }
        return;
    };
    let json = super::kube_pb::json_only_accept(accept);
    if let Ok(v) = HeaderValue::from_str(&json) {
        headers.insert(ACCEPT, v);
    } else {
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    }
}

/// Masks the values of every Secret in `v`: a Secret object, the items of a list of secrets
/// (which carry no `kind`), watch events' objects, Table rows' objects. `secrets`: the request
/// was for the `secrets` resource, so kind-less objects in it are Secrets. Returns how many
/// Secrets were masked.
pub fn mask_secrets(v: &mut Value, secrets: bool) -> usize {
    let Value::Object(map) = v else {
        if let Value::Array(items) = v {
            return items.iter_mut().map(|i| mask_secrets(i, secrets)).sum();
        }
        return 0;
    };
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or("");
    let mut n = 0;
    let is_secret = kind == "Secret"
        || (secrets
            && kind.is_empty()
            && (map.contains_key("data") || map.contains_key("stringData")));
    if is_secret {
        if let Some(Value::Object(data)) = map.get_mut("data") {
            for value in data.values_mut() {
                *value = Value::String(MASKED_B64.into());
            }
        }
        if let Some(Value::Object(data)) = map.get_mut("stringData") {
            for value in data.values_mut() {
                *value = Value::String(MASKED.into());
            }
        }
        n += 1;
    }
    if is_secret || secrets {
        if let Some(Value::Object(annotations)) = map
            .get_mut("metadata")
            .and_then(|m| m.get_mut("annotations"))
        {
            if let Some(a) = annotations.get_mut(LAST_APPLIED) {
                *a = Value::String(MASKED.into());
            }
        }
    }
    // Nested objects: list items, watch events, Table rows, `List` of mixed kinds.
    for (key, value) in map.iter_mut() {
        if matches!(key.as_str(), "items" | "object" | "rows") {
            n += mask_secrets(value, secrets);
        }
    }
    n
}

/// A request body sent to the `secrets` resource as approvers and the record see it, every
/// value masked whatever form the body takes: an object with or without `kind` (the API server
/// takes the kind from the URL), a merge or strategic-merge patch (`data` with no kind), a JSON
/// patch (each operation's `value`: its path says where it goes, the value is what is hidden),
/// YAML. `None`: the body is none of these, so it cannot be shown masked.
pub fn masked_secret_body(text: &str) -> Option<Value> {
    let mut v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => serde_saphyr::from_str(text).ok()?,
    };
    match &mut v {
        Value::Object(_) => {
            mask_secrets(&mut v, true);
        }
        Value::Array(ops) => {
            for op in ops.iter_mut() {
                let Value::Object(op) = op else {
                    return None;
                };
                if let Some(value) = op.get_mut("value") {
                    *value = Value::String(MASKED.into());
                }
            }
        }
        _ => return None,
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_masked_in_objects_lists_events_and_rows() {
        let mut one = json!({"kind": "Secret", "data": {"password": "aHVudGVyMg=="},
            "stringData": {"token": "abc"},
            "metadata": {"annotations": {LAST_APPLIED: "{\"data\":{\"password\":\"aHVudGVyMg==\"}}"}}});
        assert_eq!(mask_secrets(&mut one, false), 1);
        let text = one.to_string();
        assert!(!text.contains("aHVudGVyMg=="), "{text}");
        assert!(!text.contains("abc"), "{text}");

        let mut list = json!({"kind": "SecretList", "items": [
            {"metadata": {"name": "a"}, "data": {"k": "c2VjcmV0"}},
            {"metadata": {"name": "b"}, "data": {"k": "c2VjcmV0Mg=="}}]});
        assert_eq!(mask_secrets(&mut list, true), 2);
        assert!(!list.to_string().contains("c2VjcmV0"));

        let mut event =
            json!({"type": "ADDED", "object": {"kind": "Secret", "data": {"k": "c2VjcmV0"}}});
        assert_eq!(mask_secrets(&mut event, false), 1);
        assert!(!event.to_string().contains("c2VjcmV0"));

        let mut table = json!({"kind": "Table", "rows": [{"cells": ["a"], "object": {"kind": "Secret", "data": {"k": "c2VjcmV0"}}}]});
        assert_eq!(mask_secrets(&mut table, true), 1);
        assert!(!table.to_string().contains("c2VjcmV0"));

        // A ConfigMap is not a Secret: its data is left to the detectors.
        let mut cm = json!({"kind": "ConfigMap", "data": {"k": "v"}});
        assert_eq!(mask_secrets(&mut cm, false), 0);
        assert_eq!(cm["data"]["k"], "v");
    }

    #[test]
    fn secret_request_bodies_are_masked_in_every_form() {
        for body in [
            r#"{"metadata":{"name":"a"},"data":{"k":"c2VjcmV0"}}"#,
            r#"{"metadata":{"name":"a"},"stringData":{"k":"secret"}}"#,
            r#"{"data":{"k":"c2VjcmV0"}}"#,
            r#"[{"op":"add","path":"/data/k","value":"c2VjcmV0"},{"op":"replace","path":"/data","value":{"k":"c2VjcmV0"}}]"#,
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: a\nstringData:\n  k: secret\n",
            "stringData:\n  k: secret\n",
        ] {
            let masked = masked_secret_body(body).map(|v| v.to_string());
            let masked = masked.unwrap_or_else(|| panic!("not masked: {body}"));
            assert!(!masked.contains("c2VjcmV0"), "{masked}");
            assert!(!masked.contains("secret\""), "{masked}");
        }
        for unreadable in ["\"just a string\"", "[1, 2]", "a: [", "42"] {
            assert!(masked_secret_body(unreadable).is_none(), "{unreadable}");
        }
    }

    #[test]
    fn masked_data_is_valid_base64_of_the_marker() {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(MASKED_B64)
            .unwrap_or_default();
        assert_eq!(decoded, MASKED.as_bytes());
    }

    #[test]
    fn agent_impersonation_headers_are_seen() {
        let mut h = HeaderMap::new();
        assert!(!impersonates(&h));
        h.insert(
            "impersonate-group",
            HeaderValue::from_static("system:masters"),
        );
        assert!(impersonates(&h));
    }
}
