//! What an RBAC change held for approval would change: approvers of a `create rolebinding` or
//! an update of a ClusterRole see the object as it is now beside what the agent sends, as a
//! unified diff of the objects' JSON (server-set fields left out), so that "adds
//! system:masters to a binding" is visible at a glance.

use serde_json::Value;
use similar::TextDiff;

use super::request_info::RequestInfo;

pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// Whether the request changes an RBAC object.
pub fn is_rbac_change(info: &RequestInfo) -> bool {
    info.is_resource_request
        && info.api_group == RBAC_GROUP
        && info.subresource.is_empty()
        && matches!(info.verb.as_str(), "create" | "update" | "patch" | "delete")
}

/// The path of the object the request changes (its name from the path, or for a create from
/// the body); `None` when it names none.
pub fn object_path(info: &RequestInfo, body: Option<&Value>) -> Option<String> {
    let name = if info.name.is_empty() {
        body?.pointer("/metadata/name")?.as_str()?.to_string()
    } else {
        info.name.clone()
    };
    // One path segment to the API server, or no read at all: this read is made with the
    // gateway's own credential, so the agent's name must not point it anywhere else. Besides
    // `/`, `.` and `..` (apimachinery's IsValidPathSegmentName also refuses `%`), nothing the
    // server would decode into a `/` or `..` (`%2F`, `%2e`), nothing that ends the path (`?`,
    // `#`), no control character or space.
    let bad = |c: char| matches!(c, '/' | '%' | '?' | '#' | ' ') || c.is_control();
    if name.is_empty() || name.contains(bad) || name == "." || name == ".." {
        return None;
    }
    let ns = if info.namespace.is_empty() {
        String::new()
    } else {
        format!("namespaces/{}/", info.namespace)
    };
    Some(format!(
        "/apis/{RBAC_GROUP}/{}/{ns}{}/{name}",
        info.api_version, info.resource
    ))
}

/// Server-set fields that say nothing about what the object grants.
fn comparable(mut v: Value) -> Value {
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "managedFields",
            "generation",
            "selfLink",
        ] {
            meta.remove(f);
        }
    }
    v
}

fn pretty(v: Option<&Value>) -> String {
    match v {
        Some(v) => serde_json::to_string_pretty(&comparable(v.clone())).unwrap_or_default() + "\n",
        None => String::new(),
    }
}

/// The text approvers read under the request: the diff, or why there is none.
pub fn describe(
    verb: &str,
    current: Result<Option<Value>, String>,
    sent: Option<&Value>,
) -> String {
    let current = match current {
        Ok(c) => c,
        Err(why) => return format!("--- the object as it is now could not be read: {why}"),
    };
    let (old, new) = match verb {
        "delete" => (pretty(current.as_ref()), String::new()),
        // A patch is shown as sent (what it merges into is the current object above it).
        "patch" => {
            return format!(
                "--- current\n{}--- patch\n{}",
                if current.is_some() {
                    pretty(current.as_ref())
                } else {
                    "(does not exist)\n".into()
                },
                pretty(sent)
            )
        }
        _ => (pretty(current.as_ref()), pretty(sent)),
    };
    let diff = TextDiff::from_lines(&old, &new);
    let mut out = diff
        .unified_diff()
        .context_radius(3)
        .header(
            if current.is_some() {
                "current"
            } else {
                "(does not exist)"
            },
            if verb == "delete" {
                "(deleted)"
            } else {
                "requested"
            },
        )
        .to_string();
    if out.is_empty() {
        out = "(no change)\n".into();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_subject_added_to_a_binding_shows_as_one_added_line_block() {
        let current = json!({"kind": "RoleBinding", "metadata": {"name": "ops", "namespace": "prod", "resourceVersion": "7"},
            "roleRef": {"kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "User", "name": "alice"}]});
        let sent = json!({"kind": "RoleBinding", "metadata": {"name": "ops", "namespace": "prod"},
            "roleRef": {"kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "User", "name": "alice"}, {"kind": "Group", "name": "system:masters"}]});
        let d = describe("update", Ok(Some(current)), Some(&sent));
        assert!(d.contains("+      \"name\": \"system:masters\""), "{d}");
        assert!(!d.contains("resourceVersion"), "{d}");
        assert!(d.starts_with("--- current"), "{d}");
    }

    #[test]
    fn creates_deletes_and_unreadable_objects_say_so() {
        let sent = json!({"metadata": {"name": "x"}, "roleRef": {"name": "view"}});
        let d = describe("create", Ok(None), Some(&sent));
        assert!(
            d.contains("--- (does not exist)") && d.contains("+  \"roleRef\""),
            "{d}"
        );
        let d = describe("delete", Ok(Some(sent.clone())), None);
        assert!(d.contains("-  \"roleRef\""), "{d}");
        let d = describe("update", Err("403 Forbidden".into()), Some(&sent));
        assert!(d.contains("could not be read: 403"), "{d}");
    }

    #[test]
    fn the_object_path_comes_from_the_path_or_the_created_body() {
        let info = super::super::request_info::resolve(
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
            None,
        )
        .expect("resolves");
        assert!(is_rbac_change(&info));
        let body = json!({"metadata": {"name": "ci-view"}});
        assert_eq!(
            object_path(&info, Some(&body)).as_deref(),
            Some("/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings/ci-view")
        );
        for name in [
            "../x",
            "x%2F..%2Fy",
            "%2e%2e",
            "y?watch=1",
            "z#f",
            "a b",
            "..",
        ] {
            assert_eq!(
                object_path(&info, Some(&json!({"metadata": {"name": name}}))),
                None,
                "{name}"
            );
        }
        let colon = json!({"metadata": {"name": "system:controller:x"}});
        assert!(object_path(&info, Some(&colon)).is_some());
        let get = super::super::request_info::resolve(
            "GET",
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/admins",
            None,
        )
        .expect("resolves");
        assert!(!is_rbac_change(&get));
    }
}
