//! Unit tests of `request_info`. The first three tests are upstream's table, case for case:
//! k8s.io/apiserver/pkg/endpoints/request/requestinfo_test.go (`TestGetAPIRequestInfo`,
//! `TestGetNonAPIRequestInfo`, `TestSelectorParsing`; kubernetes/apiserver at 24a394e51).
//! The rest are this port's own: what it refuses, and the exec query.

use super::*;

/// Splits `url` at `?` as Go's `http.NewRequest` does.
fn info(method: &str, url: &str) -> Result<RequestInfo, RequestInfoError> {
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    resolve(method, path, query)
}

#[test]
fn upstream_api_request_info() {
    // (method, url, verb, prefix, group, version, namespace, resource, subresource, name, parts)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a [&'a str],
    );
    #[rustfmt::skip]
    let cases: &[Case] = &[
        // resource paths
        ("GET", "/api/v1/namespaces", "list", "api", "", "v1", "", "namespaces", "", "", &["namespaces"]),
        ("GET", "/api/v1/namespaces/other", "get", "api", "", "v1", "other", "namespaces", "", "other", &["namespaces", "other"]),
        ("GET", "/api/v1/namespaces/other/pods", "list", "api", "", "v1", "other", "pods", "", "", &["pods"]),
        ("GET", "/api/v1/namespaces/other/pods/foo", "get", "api", "", "v1", "other", "pods", "", "foo", &["pods", "foo"]),
        ("HEAD", "/api/v1/namespaces/other/pods/foo", "get", "api", "", "v1", "other", "pods", "", "foo", &["pods", "foo"]),
        ("GET", "/api/v1/pods", "list", "api", "", "v1", "", "pods", "", "", &["pods"]),
        ("HEAD", "/api/v1/pods", "list", "api", "", "v1", "", "pods", "", "", &["pods"]),
        ("GET", "/api/v1/namespaces/other/pods/foo", "get", "api", "", "v1", "other", "pods", "", "foo", &["pods", "foo"]),
        ("GET", "/api/v1/namespaces/other/pods", "list", "api", "", "v1", "other", "pods", "", "", &["pods"]),
        // special verbs
        ("GET", "/api/v1/proxy/namespaces/other/pods/foo", "proxy", "api", "", "v1", "other", "pods", "", "foo", &["pods", "foo"]),
        ("GET", "/api/v1/proxy/namespaces/other/pods/foo/subpath/not/a/subresource", "proxy", "api", "", "v1", "other", "pods", "", "foo", &["pods", "foo", "subpath", "not", "a", "subresource"]),
        ("GET", "/api/v1/watch/pods", "watch", "api", "", "v1", "", "pods", "", "", &["pods"]),
        ("GET", "/api/v1/pods?watch=true", "watch", "api", "", "v1", "", "pods", "", "", &["pods"]),
        ("GET", "/api/v1/pods?watch=false", "list", "api", "", "v1", "", "pods", "", "", &["pods"]),
        ("GET", "/api/v1/watch/namespaces/other/pods", "watch", "api", "", "v1", "other", "pods", "", "", &["pods"]),
        ("GET", "/api/v1/namespaces/other/pods?watch=1", "watch", "api", "", "v1", "other", "pods", "", "", &["pods"]),
        ("GET", "/api/v1/namespaces/other/pods?watch=0", "list", "api", "", "v1", "other", "pods", "", "", &["pods"]),
        // subresource identification
        ("GET", "/api/v1/namespaces/other/pods/foo/status", "get", "api", "", "v1", "other", "pods", "status", "foo", &["pods", "foo", "status"]),
        ("GET", "/api/v1/namespaces/other/pods/foo/proxy/subpath", "get", "api", "", "v1", "other", "pods", "proxy", "foo", &["pods", "foo", "proxy", "subpath"]),
        ("PUT", "/api/v1/namespaces/other/finalize", "update", "api", "", "v1", "other", "namespaces", "finalize", "other", &["namespaces", "other", "finalize"]),
        ("PUT", "/api/v1/namespaces/other/status", "update", "api", "", "v1", "other", "namespaces", "status", "other", &["namespaces", "other", "status"]),
        // verb identification
        ("PATCH", "/api/v1/namespaces/other/pods/foo", "patch", "api", "", "v1", "other", "pods", "", "foo", &["pods", "foo"]),
        ("DELETE", "/api/v1/namespaces/other/pods/foo", "delete", "api", "", "v1", "other", "pods", "", "foo", &["pods", "foo"]),
        ("POST", "/api/v1/namespaces/other/pods", "create", "api", "", "v1", "other", "pods", "", "", &["pods"]),
        // deletecollection verb identification
        ("DELETE", "/api/v1/nodes", "deletecollection", "api", "", "v1", "", "nodes", "", "", &["nodes"]),
        ("DELETE", "/api/v1/namespaces", "deletecollection", "api", "", "v1", "", "namespaces", "", "", &["namespaces"]),
        ("DELETE", "/api/v1/namespaces/other/pods", "deletecollection", "api", "", "v1", "other", "pods", "", "", &["pods"]),
        // Upstream's table expects prefix "api" for the next three but does not check it; the
        // prefix of `/apis/...` is `apis`.
        ("DELETE", "/apis/extensions/v1/namespaces/other/pods", "deletecollection", "apis", "extensions", "v1", "other", "pods", "", "", &["pods"]),
        // api group identification
        ("POST", "/apis/extensions/v1/namespaces/other/pods", "create", "apis", "extensions", "v1", "other", "pods", "", "", &["pods"]),
        // api version identification
        ("POST", "/apis/extensions/v1beta3/namespaces/other/pods", "create", "apis", "extensions", "v1beta3", "other", "pods", "", "", &["pods"]),
    ];
    for &(method, url, verb, prefix, group, version, ns, resource, sub, name, parts) in cases {
        let i = info(method, url).unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let want = RequestInfo {
            is_resource_request: true,
            path: url.split('?').next().unwrap().to_string(),
            verb: verb.into(),
            api_prefix: prefix.into(),
            api_group: group.into(),
            api_version: version.into(),
            namespace: ns.into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
            parts: parts.iter().map(|p| p.to_string()).collect(),
        };
        assert_eq!(i, want, "{method} {url}");
    }

    // Upstream's "error cases": not errors, non-resource requests.
    for url in [
        "/",
        "/api/version/",
        "/apis/group/version/",
        "/badprefix/version/resource",
        "/apis/version/resource",
    ] {
        let i = info("GET", url).unwrap();
        assert!(!i.is_resource_request, "{url}");
        assert_eq!(i.verb, "get", "{url}");
    }
}

#[test]
fn upstream_non_api_request_info() {
    for (url, resource) in [
        ("/api/version/resource", true),
        ("/apis/group/version/resource/name/subresource", true),
        ("/api/version/resource/name/subresource", true),
        ("/apis/batch/v1/job", true),
        ("/apis/batch/v1/job/foo", true),
        ("/apis/batch/v1/job/foo/scale", true),
        ("/not-api/version/resource", false),
        ("/apis/extensions/v1beta1", false),
        ("/apis/extensions/v1beta1/", false),
        ("/api/version", false),
        ("/api", false),
        ("/", false),
    ] {
        assert_eq!(
            info("GET", url).unwrap().is_resource_request,
            resource,
            "{url}"
        );
    }
    // Upstream's "empty" case (`""`, not a request target HTTP can carry) is refused here.
    assert_eq!(info("GET", ""), Err(RequestInfoError::NotAbsolute));
}

#[test]
fn upstream_selector_parsing() {
    // (method, url, name, verb); upstream also checks the selectors kept, which this port
    // does not keep.
    for (method, url, name, verb) in [
        ("GET", "/apis/group/version/resource", "", "list"),
        (
            "GET",
            "/apis/group/version/resource?fieldSelector=metadata.name=name1",
            "name1",
            "list",
        ),
        (
            "GET",
            "/apis/group/version/resource?watch=true&fieldSelector=metadata.name=name1",
            "name1",
            "watch",
        ),
        (
            "GET",
            "/apis/group/version/resource?fieldSelector=foo=bar&labelSelector=baz=qux",
            "",
            "list",
        ),
        (
            "GET",
            "/apis/group/version/resource?fieldSelector=metadata.name=name1,foo",
            "",
            "list",
        ),
        (
            "GET",
            "/apis/group/version/resource?fieldSelector=metadata.name=name1,foo&watch=true",
            "",
            "watch",
        ),
        (
            "GET",
            "/apis/group/version/resource?fieldSelector=metadata.name=name1,foo&watch=false",
            "",
            "list",
        ),
        (
            "DELETE",
            "/apis/group/version/resource?fieldSelector=foo=bar&labelSelector=baz=qux",
            "",
            "deletecollection",
        ),
        (
            "GET",
            "/apis/group/version/resource?fieldSelector=metadata.name=foo&fieldSelector=metadata.name=bar&labelSelector=foo=bar&labelSelector=foo=baz",
            "foo",
            "list",
        ),
        (
            "GET",
            "/apis/group/version/resource/name?fieldSelector=foo=bar&labelSelector=foo=bar",
            "name",
            "get",
        ),
        (
            "GET",
            "/apis/group/version/watch/resource?fieldSelector=metadata.name=foo&labelSelector=foo=bar",
            "",
            "watch",
        ),
        (
            "GET",
            "/apis/group/version/watch/resource/name?fieldSelector=metadata.name=foo&labelSelector=foo=bar",
            "name",
            "watch",
        ),
    ] {
        let i = info(method, url).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!((i.name.as_str(), i.verb.as_str()), (name, verb), "{url}");
    }
}

#[test]
fn watch_values_as_go_reads_a_bool() {
    // Only "0" and "false" (any case) are false; everything else, the empty value included,
    // is a watch. The first value counts.
    for (q, verb) in [
        ("watch=FALSE", "list"),
        ("watch=False", "list"),
        ("watch=0", "list"),
        ("watch=", "watch"),
        ("watch", "watch"),
        ("watch=no", "watch"),
        ("watch=yes", "watch"),
        ("watch=1&watch=0", "watch"),
        ("watch=0&watch=1", "list"),
        ("wat%63h=1", "watch"),
        ("watch=tr+ue", "watch"),
    ] {
        assert_eq!(
            resolve("GET", "/api/v1/pods", Some(q)).unwrap().verb,
            verb,
            "{q}"
        );
    }
}

#[test]
fn field_selector_name_promotion() {
    let name = |q: &str| {
        resolve("GET", "/api/v1/namespaces/ns/secrets", Some(q))
            .unwrap()
            .name
    };
    // `==` is an exact match too; `!=` is not.
    assert_eq!(name("fieldSelector=metadata.name%3D%3Ddb"), "db");
    assert_eq!(name("fieldSelector=metadata.name!%3Ddb"), "");
    // Terms are sorted before the first exact match on metadata.name is taken.
    assert_eq!(
        name("fieldSelector=metadata.name%3Db,metadata.name%3Da"),
        "a"
    );
    // Escaped values are unescaped; a bad escape spoils the selector (no name).
    assert_eq!(name("fieldSelector=metadata.name%3Da%5C%2Cb"), "a,b");
    assert_eq!(name("fieldSelector=metadata.name%3Da%5Cb"), "");
    // A name that is not one path segment is not promoted.
    assert_eq!(name("fieldSelector=metadata.name%3D.."), "");
    assert_eq!(name("fieldSelector=metadata.name%3Da%2Fb"), "");
    // A `limit` the server cannot decode spoils its list options: no name (as upstream).
    assert_eq!(name("fieldSelector=metadata.name%3Ddb&limit=x"), "");
    assert_eq!(name("fieldSelector=metadata.name%3Ddb&limit=500"), "db");
    // A name in the path wins: a get stays a get.
    let i = resolve(
        "GET",
        "/api/v1/namespaces/ns/secrets/x",
        Some("fieldSelector=metadata.name%3Ddb"),
    )
    .unwrap();
    assert_eq!((i.verb.as_str(), i.name.as_str()), ("get", "x"));
    // A deletecollection's selector is not a name: it stays a deletecollection of all.
    let i = resolve(
        "DELETE",
        "/api/v1/namespaces/ns/secrets",
        Some("fieldSelector=metadata.name%3Ddb"),
    )
    .unwrap();
    assert_eq!((i.verb.as_str(), i.name.as_str()), ("deletecollection", ""));
}

#[test]
fn non_resource_urls() {
    for (method, path, verb) in [
        ("GET", "/version", "get"),
        ("GET", "/healthz", "get"),
        ("GET", "/readyz/etcd", "get"),
        ("GET", "/openapi/v3/apis/apps/v1", "get"),
        ("GET", "/openapi/v2", "get"),
        ("GET", "/api", "get"),
        ("GET", "/api/v1", "get"),
        ("GET", "/apis", "get"),
        ("GET", "/apis/rbac.authorization.k8s.io/v1", "get"),
        ("POST", "/logs", "post"),
        // Non-resource verbs are the method in lower case, whatever the method.
        ("PROPFIND", "/healthz", "propfind"),
    ] {
        let i = resolve(method, path, None).unwrap();
        assert!(!i.is_resource_request, "{path}");
        assert_eq!(i.verb, verb, "{path}");
        assert_eq!(i.path, path);
        assert!(i.resource.is_empty() && i.parts.is_empty(), "{path}");
    }
}

#[test]
fn subresources_and_groups() {
    let i = resolve(
        "POST",
        "/api/v1/namespaces/prod/pods/web-0/exec",
        Some("command=ls"),
    )
    .unwrap();
    assert_eq!(
        (
            i.verb.as_str(),
            i.namespace.as_str(),
            i.resource.as_str(),
            i.name.as_str(),
            i.subresource.as_str()
        ),
        ("create", "prod", "pods", "web-0", "exec")
    );
    // kubectl 1.30+ execs over WebSocket: a GET.
    let i = resolve(
        "GET",
        "/api/v1/namespaces/prod/pods/web-0/exec",
        Some("command=ls"),
    )
    .unwrap();
    assert_eq!((i.verb.as_str(), i.subresource.as_str()), ("get", "exec"));
    let i = resolve(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/prod/rolebindings",
        None,
    )
    .unwrap();
    assert_eq!(
        (
            i.api_group.as_str(),
            i.verb.as_str(),
            i.resource.as_str(),
            i.namespace.as_str()
        ),
        (
            "rbac.authorization.k8s.io",
            "create",
            "rolebindings",
            "prod"
        )
    );
    let i = resolve(
        "DELETE",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/admin",
        None,
    )
    .unwrap();
    assert_eq!(
        (i.verb.as_str(), i.namespace.as_str(), i.name.as_str()),
        ("delete", "", "admin")
    );
    // A namespace object is deleted by name; its namespace is itself.
    let i = resolve("DELETE", "/api/v1/namespaces/prod", None).unwrap();
    assert_eq!(
        (
            i.verb.as_str(),
            i.resource.as_str(),
            i.namespace.as_str(),
            i.name.as_str()
        ),
        ("delete", "namespaces", "prod", "prod")
    );
    // `/api/v1/watch` alone names no resource: upstream's error, kept.
    for path in ["/api/v1/watch", "/api/v1/watch/", "/api/v1/proxy"] {
        assert!(
            matches!(
                resolve("GET", path, None),
                Err(RequestInfoError::NoResource(_))
            ),
            "{path}"
        );
    }
    assert_eq!(
        resolve("GET", "/apis/apps/v1/watch", None),
        Err(RequestInfoError::NoResource("watch".into()))
    );
}

#[test]
fn percent_decoding() {
    let i = resolve("GET", "/api/v1/namespaces/%70rod/secrets/d%62", None).unwrap();
    assert_eq!((i.namespace.as_str(), i.name.as_str()), ("prod", "db"));
    assert_eq!(i.path, "/api/v1/namespaces/prod/secrets/db");
    // A `+` in a path is a `+`.
    assert_eq!(
        resolve("GET", "/api/v1/namespaces/a/pods/x+y", None)
            .unwrap()
            .name,
        "x+y"
    );
    for bad in [
        "/api/v1/pods/%zz",
        "/api/v1/pods/%4",
        "/api/v1/pods/%",
        "/api/v1/pods/%+1",
    ] {
        assert_eq!(
            resolve("GET", bad, None),
            Err(RequestInfoError::BadPercent("path")),
            "{bad}"
        );
    }
    assert_eq!(
        resolve("GET", "/api/v1/pods/%ff", None),
        Err(RequestInfoError::NotUtf8("path"))
    );
    assert_eq!(
        resolve("GET", "/api/v1/pods/a%00b", None),
        Err(RequestInfoError::BadCharacter("path"))
    );
    assert_eq!(
        resolve("GET", "/api/v1/pods/a%0ab", None),
        Err(RequestInfoError::BadCharacter("path"))
    );
    assert_eq!(
        resolve("GET", "/api/v1/pods", Some("watch=%zz")),
        Err(RequestInfoError::BadPercent("query"))
    );
    assert_eq!(
        resolve("GET", "/api/v1/pods", Some("watch=%ff")),
        Err(RequestInfoError::NotUtf8("query"))
    );
}

#[test]
fn adversarial_paths_are_refused() {
    use RequestInfoError::*;
    for (path, err) in [
        // Dot segments: the server's router and this classification could resolve them
        // differently (`pods/../secrets`).
        ("/api/v1/namespaces/a/pods/../secrets/db", DotSegment),
        ("/api/v1/namespaces/a/pods/%2e%2e/secrets/db", DotSegment),
        ("/api/v1/namespaces/a/./secrets", DotSegment),
        ("/api/v1/namespaces/a/pods/%2E", DotSegment),
        ("/../api/v1/secrets", DotSegment),
        // Empty segments shift every part after them.
        ("/api//v1/secrets", EmptySegment),
        ("/api/v1/namespaces//secrets", EmptySegment),
        ("/api/v1/namespaces/a/secrets//db", EmptySegment),
        // An encoded slash in a name would be one segment to a router on the raw path and two
        // here.
        ("/api/v1/namespaces/a/secrets/x%2Fy", EncodedSlash),
        ("/api/v1/namespaces/a%2fsecrets/db", EncodedSlash),
        ("/api/v1/namespaces/a/secrets/x%5Cy", EncodedSlash),
        ("/api/v1/namespaces/a/secrets/x\\y", EncodedSlash),
        ("api/v1/pods", NotAbsolute),
        ("*", NotAbsolute),
        ("/api/v1/pods#x", BadCharacter("path")),
        ("/api/v1/pods/a b", BadCharacter("path")),
    ] {
        assert_eq!(resolve("GET", path, None), Err(err), "{path}");
    }
    // Very long paths.
    let long = format!("/api/v1/namespaces/a/pods/{}", "x".repeat(MAX_PATH_BYTES));
    assert_eq!(resolve("GET", &long, None), Err(PathTooLong));
    let fits = format!("/api/v1/namespaces/a/pods/{}", "x".repeat(1000));
    assert_eq!(resolve("GET", &fits, None).unwrap().name.len(), 1000);
    let long_query = "command=x&".repeat(MAX_QUERY_BYTES / 10 + 1);
    assert_eq!(
        resolve(
            "POST",
            "/api/v1/namespaces/a/pods/p/exec",
            Some(&long_query)
        ),
        Err(QueryTooLong)
    );
    // A `;` in the query: the server skips that parameter, which could hide a watch.
    assert_eq!(
        resolve("GET", "/api/v1/pods", Some("watch=1;x=2")),
        Err(Semicolon)
    );
}

#[test]
fn trailing_slashes_as_upstream() {
    // Upstream trims leading and trailing slashes before splitting.
    let a = resolve("DELETE", "/api/v1/namespaces/a/secrets/db/", None).unwrap();
    assert_eq!(
        (a.verb.as_str(), a.name.as_str(), a.resource.as_str()),
        ("delete", "db", "secrets")
    );
    let b = resolve("DELETE", "/api/v1/namespaces/a/secrets///", None).unwrap();
    assert_eq!((b.verb.as_str(), b.name.as_str()), ("deletecollection", ""));
}

#[test]
fn methods_are_case_sensitive() {
    // `delete` is not DELETE to Go's server (405); here it has no verb and is refused rather
    // than passing rules that name verbs.
    for m in ["delete", "Get", "OPTIONS", "TRACE", ""] {
        assert_eq!(
            resolve(m, "/api/v1/namespaces/a/secrets/db", None),
            Err(RequestInfoError::UnknownMethod(m.into())),
            "{m}"
        );
    }
    // Non-resource requests take the method as their verb, lower-cased, as upstream.
    assert_eq!(resolve("Get", "/version", None).unwrap().verb, "get");
}

#[test]
fn exec_query() {
    let q = "command=sh&command=-c&command=rm+-rf+%2Ftmp%2Fx&container=app&stdin=true&stdout=1&stderr=true&tty=false";
    assert_eq!(exec_command(q), vec!["sh", "-c", "rm -rf /tmp/x"]);
    assert_eq!(
        exec_options(q),
        ExecOptions {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
            container: "app".into()
        }
    );
    // Pairs Go skips are skipped (the server runs without them), in order otherwise.
    assert_eq!(
        exec_command("command=a&command=%zz&command=b;c&command=d&x=y&command="),
        vec!["a", "d", ""]
    );
    assert_eq!(exec_command(""), Vec::<String>::new());
    assert_eq!(
        exec_options("tty"),
        ExecOptions {
            tty: true,
            ..ExecOptions::default()
        }
    );
}
