//! Attacks on the HTTP / Kubernetes handler (issue 19), each with a real client: raw bytes
//! over TLS from Python's standard library (request smuggling, pipelining, duplicate and
//! odd-case headers, absolute-form targets, `Expect`, HTTP/1.0 keep-alive, smuggled upgrades,
//! a token swap, a slow client, a held request abandoned), and the real kubectl (disguised
//! exec commands). Every test asserts that a control holds: login, the gateway's credential
//! and impersonation only, the rules, Secrets masked in every answer and on record. The
//! stand-in API server logs every request it receives, so "never reached the target" is
//! checked where it matters, not inferred from the agent's answer.
//!
//! Ports: 20900–20919 (shared with http_attack_held.rs: each test has its own).

mod http_attack_common;

use std::time::Duration;

use agentgate_tests::{kube::token_fingerprint, record_query, wait_until, ISSUER};
use base64::Engine;
use serde_json::{json, Value};

use http_attack_common::*;

/// Request smuggling: Content-Length with Transfer-Encoding (the chunked body ends early and
/// a DELETE rides behind it), two Content-Lengths that disagree, chunk extensions. Whatever
/// the gateway's parser makes of the bytes, no request reaches the API server unjudged: the
/// DELETE is never sent.
#[test]
fn smuggled_requests_never_reach_the_api_server_unjudged() {
    let k = kube("att-smuggle", 20900, 20901, "", NO_POD_DELETES);
    let t = token("agent-att-1");
    let delete = k.head("DELETE /api/v1/namespaces/default/pods/web-0", &t, "");

    // CL + TE: chunked wins (the body is `0\r\n\r\n`); the DELETE after it would be a second
    // request to a front end that read Content-Length.
    let smuggled_body = format!("0\r\n\r\n{delete}");
    let first = k.head(
        "POST /api/v1/namespaces/default/configmaps",
        &t,
        &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n",
            smuggled_body.len()
        ),
    );
    let got = k.raw(Raw::send(format!("{first}{smuggled_body}")));
    assert!(
        !got.statuses().iter().any(|c| (200..300).contains(c)),
        "CL+TE: {}",
        got.data
    );
    // TE + CL the other way round, and a chunk extension: the chunked body is what is judged
    // and what is sent; the DELETE never goes.
    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"smuggle-1"},"data":{"a":"b"}}"#;
    let first = k.head(
        "POST /api/v1/namespaces/default/configmaps",
        &t,
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n",
    );
    let chunked = format!("{:x};ext=\"x\"\r\n{cm}\r\n0\r\n\r\n{delete}", cm.len());
    let got = k.raw(Raw::send(format!("{first}{chunked}")));
    assert_eq!(got.statuses(), vec![201], "{}", got.data);
    assert!(
        k.standin
            .get("", "configmaps", "default", "smuggle-1")
            .is_some(),
        "the chunked body is the one sent"
    );
    // Two Content-Lengths that disagree: refused before anything is judged.
    let two = k.head(
        "DELETE /api/v1/namespaces/default/pods/web-0",
        &t,
        "Content-Length: 0\r\nContent-Length: 5\r\n",
    );
    let got = k.raw(Raw::send(format!("{two}hello")));
    assert!(
        got.statuses().iter().all(|c| *c >= 400),
        "two lengths: {}",
        got.data
    );
    no_delete_reached(&k);
    // What reached the API server came whole: the configmap's body as judged.
    for e in k.standin.log.entries() {
        if e.method == "POST" {
            assert!(
                e.body.is_empty() || serde_json::from_slice::<Value>(&e.body).is_ok(),
                "a body that is not the judged one reached the server: {:?}",
                String::from_utf8_lossy(&e.body)
            );
        }
    }
}

/// Pipelining, `Expect: 100-continue`, HTTP/1.0 keep-alive and absolute-form targets (to the
/// API server's own address and to another host): every request on the connection is judged
/// on its own, and the DELETE is refused however it is put.
#[test]
fn every_request_on_a_connection_is_judged_however_it_is_framed() {
    let k = kube("att-pipeline", 20902, 20903, "", NO_POD_DELETES);
    let t = token("agent-att-2");
    let get = k.head("GET /api/v1/namespaces/default/pods", &t, "");
    let delete = k.head("DELETE /api/v1/namespaces/default/pods/web-0", &t, "");
    // A judged GET with the DELETE riding behind it, in one write.
    let got = k.raw(Raw::send(format!("{get}{delete}{get}")));
    assert_eq!(got.statuses(), vec![200, 403, 200], "{}", got.data);
    assert!(got.data.contains("no-pod-deletes"), "{}", got.data);
    // Expect: 100-continue with a body.
    let expect = k.head(
        "DELETE /api/v1/namespaces/default/pods/web-0",
        &t,
        "Expect: 100-continue\r\nContent-Type: application/json\r\nContent-Length: 2\r\n",
    );
    let got = k.raw(Raw::send(format!("{expect}{{}}")));
    assert!(got.statuses().contains(&403), "{}", got.data);
    // HTTP/1.0 with keep-alive, the DELETE second.
    let v10 = |m: &str| {
        format!(
            "{m} HTTP/1.0\r\nHost: kubernetes\r\nConnection: keep-alive\r\nAuthorization: Bearer {t}\r\n\r\n"
        )
    };
    let got = k.raw(Raw::send(format!(
        "{}{}",
        v10("GET /api/v1/namespaces/default/pods"),
        v10("DELETE /api/v1/namespaces/default/pods/web-0")
    )));
    assert!(
        !got.statuses().iter().skip(1).any(|c| *c < 400),
        "{}",
        got.data
    );
    // Absolute-form: the API server's own address, another host, another scheme.
    for target in [
        format!(
            "https://127.0.0.2:{}/api/v1/namespaces/default/pods/web-0",
            k.port
        ),
        "http://10.9.9.9/api/v1/namespaces/default/pods/web-0".to_string(),
        "https://kubernetes.default.svc/api/v1/namespaces/default/pods/web-0?x=1".to_string(),
    ] {
        let got = k.raw(Raw::send(k.head(&format!("DELETE {target}"), &t, "")));
        assert!(
            got.statuses().iter().all(|c| *c >= 400),
            "{target}: {}",
            got.data
        );
    }
    // Methods the classification has no verb for, and a method in lower case (methods are
    // case-sensitive: `delete` is not DELETE to the gateway, nor to the API server).
    for line in [
        format!("CONNECT 127.0.0.2:{}", k.port),
        "TRACE /api/v1/namespaces/default/pods/web-0".to_string(),
        "delete /api/v1/namespaces/default/pods/web-0".to_string(),
        "OPTIONS *".to_string(),
    ] {
        let got = k.raw(Raw::send(k.head(&line, &t, "")));
        assert!(
            got.statuses().iter().all(|c| *c >= 400),
            "{line}: {}",
            got.data
        );
    }
    // An allowed GET in absolute-form to another host goes to the target only, by path.
    let got = k.raw(Raw::send(k.head(
        "GET http://evil.example:8080/api/v1/namespaces/default/pods/web-0",
        &t,
        "",
    )));
    assert_eq!(got.statuses(), vec![200], "{}", got.data);
    no_delete_reached(&k);
    let gets: Vec<_> = k
        .standin
        .log
        .entries()
        .into_iter()
        .filter(|e| e.method == "GET")
        .collect();
    assert!(
        gets.iter()
            .all(|e| e.path.starts_with("/api/v1/namespaces/default/pods")),
        "{gets:?}"
    );
}

/// The agent's credential never leaves, and it cannot pick whom the gateway speaks for: two
/// Authorization headers, a token swapped mid-connection, impersonation headers in odd case,
/// `Impersonate-Uid`, `Impersonate-Extra-*`.
#[test]
fn identity_cannot_be_doubled_swapped_or_impersonated() {
    let k = kube("att-identity", 20904, 20905, "", "");
    let a = token("agent-att-3");
    let b = token("agent-att-3b");
    let get = |tok: &str, extra: &str| k.head("GET /api/v1/namespaces/default/pods", tok, extra);

    // A token swap on a kept-alive connection: the second request is refused, the connection
    // ends, and a third never goes.
    let got = k.raw(Raw::send(format!(
        "{}{}{}",
        get(&a, ""),
        get(&b, ""),
        get(&a, "")
    )));
    assert_eq!(got.statuses(), vec![200, 401], "{}", got.data);
    assert!(got.closed, "the connection stayed open after a token swap");
    // No token on a later request: refused too.
    let bare = "GET /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: kubernetes\r\nAccept: application/json\r\n\r\n";
    let got = k.raw(Raw::send(format!("{}{bare}", get(&a, ""))));
    assert_eq!(got.statuses(), vec![200, 401], "{}", got.data);

    // Two Authorization headers: the gateway's credential alone goes upstream.
    let got = k.raw(Raw::send(get(
        &a,
        &format!("Authorization: Bearer {b}\r\n"),
    )));
    assert_eq!(got.statuses(), vec![401], "{}", got.data);

    // Header tricks a lenient parser might read as impersonation: a folded line, a space
    // before the colon (refused by the parser), an underscore (a header of another name, which
    // the API server does not read as impersonation either).
    for h in [
        "X-Note: a\r\n Impersonate-User: system:admin",
        "Impersonate-User : system:admin",
    ] {
        let got = k.raw(Raw::send(get(&a, &format!("{h}\r\n"))));
        assert!(
            got.statuses().iter().all(|c| *c >= 400),
            "{h}: {}",
            got.data
        );
    }
    let got = k.raw(Raw::send(get(&a, "Impersonate_User: system:admin\r\n")));
    assert!(!got.statuses().is_empty(), "{}", got.data);
    // Impersonation, however spelt.
    for h in [
        "impersonate-user: system:admin",
        "IMPERSONATE-USER: system:admin",
        "Impersonate-Group: system:masters",
        "Impersonate-Uid: 1234",
        "Impersonate-Extra-Scopes: view",
        "impersonate-extra-agentgate.io%2fsession: forged",
    ] {
        let got = k.raw(Raw::send(get(&a, &format!("{h}\r\n"))));
        assert_eq!(got.statuses(), vec![403], "{h}: {}", got.data);
    }
    let gateway = token_fingerprint(&k.standin.gateway_token);
    let entries = k.standin.log.entries();
    assert!(!entries.is_empty());
    for e in &entries {
        assert_eq!(
            e.token_fingerprint.as_deref(),
            Some(gateway.as_str()),
            "a token other than the gateway's reached the API server: {e:?}"
        );
        assert_eq!(
            e.impersonation_values("impersonate-user"),
            vec![format!("{ISSUER}#agent-att-3").as_str()],
            "{e:?}"
        );
        assert!(
            e.impersonation_values("impersonate-uid").is_empty(),
            "{e:?}"
        );
        assert!(
            e.impersonation_values("impersonate-extra-scopes")
                .is_empty(),
            "{e:?}"
        );
        assert!(
            !e.impersonation
                .iter()
                .any(|(_, v)| v == "forged" || v == "system:masters" || v == "system:admin"),
            "{e:?}"
        );
    }
    assert!(!k.standin.log.saw_token(&a) && !k.standin.log.saw_token(&b));
}

/// Upgrades other than an exec's: WebSocket on port-forward and proxy, `h2c` anywhere. None
/// reaches the API server. (With the slow-client attacks first, on the same gateway.)
#[test]
fn upgrades_are_refused_except_for_exec() {
    let k = kube(
        "att-upgrade",
        20906,
        20907,
        "      login_timeout_secs: 2\n",
        "",
    );
    a_slow_client_is_dropped_at_the_login_deadline(&k);
    let t = token("agent-att-4");
    let ws = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: portforward.k8s.io\r\n";
    for (target, extra) in [
        (
            "GET /api/v1/namespaces/default/pods/web-0/portforward?ports=5432",
            ws,
        ),
        ("POST /api/v1/namespaces/default/pods/web-0/portforward", "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"),
        ("GET /api/v1/namespaces/default/pods/web-0/proxy/", ws),
        ("GET /api/v1/namespaces/default/services/web/proxy/", ws),
        ("GET /api/v1/nodes/node-1/proxy/exec", ws),
        (
            "GET /api/v1/namespaces/default/pods",
            "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
        ),
        (
            "GET /api/v1/namespaces/default/pods/web-0/exec?command=echo&command=hi&stdout=1",
            "Connection: Upgrade\r\nUpgrade: h2c\r\n",
        ),
        (
            "GET /api/v1/namespaces/default/pods/web-0/exec?command=echo&command=hi&stdout=1",
            "Connection: Upgrade\r\nUpgrade: websocket, h2c\r\n",
        ),
    ] {
        let got = k.raw(Raw::send(k.head(target, &t, extra)));
        assert!(
            got.statuses().first().is_some_and(|c| *c >= 400) && !got.data.contains(" 101 "),
            "{target} {extra:?}: {}",
            got.data
        );
    }
    let entries = k.standin.log.entries();
    assert!(
        entries.iter().all(|e| e.upgrade.is_none()),
        "an upgrade reached the API server: {entries:?}"
    );
}

fn assert_no_seeded_secret(what: &str, shown: &str) {
    assert!(!shown.contains(SEEDED_PASSWORD), "{what}: {shown}");
    assert!(!shown.contains(SEEDED_B64), "{what}: {shown}");
}

/// Secrets stay masked however they are asked for: compressed, as YAML or protobuf, as a
/// Table with the objects, as metadata only, through the legacy watch path and `?watch=true`
/// (with protobuf's watch stream asked for), across all namespaces, by field selector. The
/// record keeps no value either.
#[test]
fn secrets_stay_masked_however_they_are_asked_for() {
    let k = kube("att-secrets", 20908, 20909, "", "");
    let t = token("agent-att-5");
    let one = "/api/v1/namespaces/default/secrets/db-credentials";
    let list = "/api/v1/namespaces/default/secrets";
    let pb = "application/vnd.kubernetes.protobuf";
    let table = "application/json;as=Table;v=v1;g=meta.k8s.io";
    let meta = "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io";
    for (path, accept, extra) in [
        (
            one.to_string(),
            "application/json",
            "Accept-Encoding: gzip, deflate, br\r\n",
        ),
        (one.to_string(), "application/yaml", ""),
        (list.to_string(), "application/yaml", ""),
        (one.to_string(), pb, ""),
        (
            list.to_string(),
            &format!("{pb}, application/json") as &str,
            "",
        ),
        (format!("{list}?includeObject=Object"), table, ""),
        (format!("{list}?includeObject=Metadata"), table, ""),
        (list.to_string(), meta, ""),
        ("/api/v1/secrets".to_string(), "application/json", ""),
        (
            format!("{list}?fieldSelector=metadata.name%3Ddb-credentials"),
            "application/json",
            "Accept-Encoding: gzip\r\n",
        ),
        (
            "/api/v1/watch/namespaces/default/secrets?timeoutSeconds=2".to_string(),
            &format!("{pb};stream=watch, application/json;stream=watch") as &str,
            "",
        ),
        (
            format!("{list}?watch=true&timeoutSeconds=2"),
            &format!("{pb};stream=watch") as &str,
            "",
        ),
        (
            format!("{list}?watch=1&timeoutSeconds=2&includeObject=Object"),
            table,
            "Accept-Encoding: gzip\r\n",
        ),
        (
            format!("{one}?watch=true&timeoutSeconds=2"),
            "application/json",
            "",
        ),
        (
            "/api/v1/watch/namespaces/default/secrets/db-credentials?timeoutSeconds=2".to_string(),
            "application/json",
            "",
        ),
    ] {
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: kubernetes\r\nAuthorization: Bearer {t}\r\nAccept: {accept}\r\n{extra}\r\n"
        );
        let got = k.raw(Raw::send(head));
        let what = format!("GET {path} (Accept: {accept}; {extra:?})");
        assert_no_seeded_secret(&what, &got.data);
        assert!(
            !got.data
                .to_ascii_lowercase()
                .contains("content-encoding: gzip"),
            "{what}: {}",
            got.data
        );
    }
    // The API server was asked, and holds the value: the masking is the gateway's.
    assert!(k.standin.log.len() > 5);
    assert_no_seeded_secret("on record", &k.record_text());
}

/// What an agent sends to a Secret is not kept on record (nor shown to approvers) in clear:
/// a body without `kind` (the API server takes the kind from the URL), a JSON patch, a merge
/// patch, YAML.
#[test]
fn secret_values_sent_are_not_on_record() {
    let k = kube("att-secret-body", 20910, 20911, "", "");
    let t = token("agent-att-6");
    let b64 = base64::engine::general_purpose::STANDARD;
    let values = [
        "kindless-value-0a1",
        "json-patch-value-0b2",
        "merge-patch-value-0c3",
        "yaml-value-0d4",
        "string-data-value-0e5",
    ];
    let bodies: Vec<(String, &str, String)> = vec![
        (
            "POST /api/v1/namespaces/default/secrets".into(),
            "application/json",
            json!({"metadata": {"name": "kindless"}, "data": {"k": b64.encode(values[0])}})
                .to_string(),
        ),
        (
            "PATCH /api/v1/namespaces/default/secrets/db-credentials".into(),
            "application/json-patch+json",
            json!([{"op": "add", "path": "/data/k2", "value": b64.encode(values[1])}]).to_string(),
        ),
        (
            "PATCH /api/v1/namespaces/default/secrets/db-credentials".into(),
            "application/merge-patch+json",
            json!({"data": {"k3": b64.encode(values[2])}}).to_string(),
        ),
        (
            "POST /api/v1/namespaces/default/secrets".into(),
            "application/yaml",
            format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: from-yaml\nstringData:\n  k: {}\n",
                values[3]
            ),
        ),
        (
            "PUT /api/v1/namespaces/default/secrets/db-credentials".into(),
            "application/json",
            json!({"metadata": {"name": "db-credentials", "namespace": "default"},
                "stringData": {"k": values[4]}})
            .to_string(),
        ),
    ];
    for (line, ct, body) in &bodies {
        let head = k.head(
            line,
            &t,
            &format!("Content-Type: {ct}\r\nContent-Length: {}\r\n", body.len()),
        );
        let got = k.raw(Raw::send(format!("{head}{body}")));
        assert!(!got.statuses().is_empty(), "{line}: {}", got.data);
    }
    wait_until("every request on record", Duration::from_secs(10), || {
        record_query(
            &k.gw.record_db(),
            "SELECT count(*) FROM audit_log WHERE kind = 'statement'",
        )
        .first()
        .and_then(|r| r[0].as_i64())
            >= Some(bodies.len() as i64)
    });
    let record = k.record_text();
    for v in values {
        assert!(!record.contains(v), "`{v}` is on record in clear: {record}");
        let enc = b64.encode(v);
        assert!(
            !record.contains(enc.trim_end_matches('=')),
            "`{v}` (base64) is on record: {record}"
        );
    }
}

const RULES_DODGE: &str = "  - name: no-rolebindings
    effect: deny
    targets: [cluster-api]
    requests: {verbs: [create, update, patch], resources: [rolebindings.rbac.authorization.k8s.io]}
  - name: not-the-db-secret
    effect: deny
    targets: [cluster-api]
    requests: {verbs: [get, list, watch], resources: [secrets], names: [db-credentials]}
";

/// `dryRun` is still the verb it is, and a field selector does not dodge a `names:` rule: a
/// list that could return the named object is refused.
#[test]
fn dry_run_and_field_selectors_do_not_dodge_rules() {
    let k = kube("att-dodge", 20912, 20913, "", RULES_DODGE);
    let t = token("agent-att-7");
    let rb = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "sneaky", "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
        "subjects": [{"kind": "User", "name": "agent", "apiGroup": "rbac.authorization.k8s.io"}]})
    .to_string();
    for q in ["?dryRun=All", "?dryRun=All&fieldManager=x", "?dryRun="] {
        let head = k.head(
            &format!("POST /apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings{q}"),
            &t,
            &format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                rb.len()
            ),
        );
        let got = k.raw(Raw::send(format!("{head}{rb}")));
        assert_eq!(got.statuses(), vec![403], "{q}: {}", got.data);
    }
    let list = "/api/v1/namespaces/default/secrets";
    for path in [
        format!("{list}/db-credentials"),
        list.to_string(),
        format!("{list}?fieldSelector=metadata.name%3Ddb-credentials"),
        format!("{list}?fieldSelector=metadata.name%3D%3Ddb-credentials"),
        format!("{list}?fieldSelector=metadata.name!%3Dother"),
        format!("{list}?fieldSelector=type%3DOpaque"),
        format!("{list}?labelSelector=app%3Dapi"),
        format!("{list}?fieldSelector=metadata.name%3Ddb-credentials&limit=x"),
        "/api/v1/watch/namespaces/default/secrets?fieldSelector=metadata.name%3Dother".to_string(),
        "/api/v1/secrets?fieldSelector=metadata.name%3Ddb-credentials".to_string(),
    ] {
        let got = k.raw(Raw::send(k.head(&format!("GET {path}"), &t, "")));
        assert_eq!(got.statuses(), vec![403], "{path}: {}", got.data);
    }
    // Another name by selector is another object: allowed, and it does not return this one.
    let got = k.raw(Raw::send(k.head(
        &format!("GET {list}?fieldSelector=metadata.name%3Dother&fieldSelector=metadata.name%3Ddb-credentials"),
        &t,
        "",
    )));
    assert!(!got.data.contains("\"db-credentials\""), "{}", got.data);
    let entries = k.standin.log.entries();
    assert!(
        entries
            .iter()
            .all(|e| !e.path.contains("rolebindings") && !e.path.ends_with("/db-credentials")),
        "{entries:?}"
    );
}

const EXEC_ONLY_ECHO: &str = "  - name: exec-only-echo
    effect: deny
    targets: [cluster-api]
    requests: {resources: [pods/exec], exec: {allow: [\"echo *\"]}}
";

/// Exec commands in disguise (a shell running `printf`'s output, `env sh`, busybox, a shell
/// in `timeout`/`nice`, python) are judged by what they run: refused, never started; the
/// plain `echo` runs.
#[test]
fn disguised_exec_commands_are_refused() {
    let k = kube("att-exec", 20914, 20915, "", EXEC_ONLY_ECHO);
    let kc = k.kubeconfig(&token("agent-att-8"));
    let out = k.kubectl(
        &kc,
        &["exec", "web-0", "-n", "default", "--", "echo", "plain-echo"],
    );
    assert!(out.status.success(), "{}", text(&out));
    for argv in [
        vec!["sh", "-c", "$(printf '\\151\\144')"],
        vec!["sh", "-c", "echo hi; id"],
        vec!["env", "sh", "-c", "id"],
        vec!["/usr/bin/env", "-S", "sh -c id"],
        vec!["busybox", "sh", "-c", "id"],
        vec!["timeout", "5", "sh", "-c", "id"],
        vec!["nice", "sh"],
        vec!["python3", "-c", "import os; os.system('id')"],
        vec!["echo", "hi", ";", "id"],
        vec!["echo hi; id"],
    ] {
        let mut args = vec!["exec", "web-0", "-n", "default", "--"];
        args.extend(argv.iter().copied());
        let out = k.kubectl(&kc, &args);
        let plain_echo_args = argv[0] == "echo";
        if plain_echo_args {
            // No shell runs an exec's argv: `;` is an argument of echo.
            continue;
        }
        assert!(!out.status.success(), "{argv:?}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("exec-only-echo"),
            "{argv:?}: {}",
            text(&out)
        );
    }
    let execs = k.standin.log.execs();
    assert!(
        execs
            .iter()
            .all(|e| e.argv.first().map(String::as_str) == Some("echo")),
        "an exec other than echo ran: {execs:?}"
    );
}
