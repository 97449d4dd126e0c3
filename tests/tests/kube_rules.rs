//! Kubernetes requests judged by the policy, end to end with the real kubectl (issue 19): a
//! delete denied naming its rule, an RBAC change (kubectl sends it as protobuf) held for people
//! and approved or denied, exec judged by its command, a revocation ending a watch, a token's
//! expiry ending an exec. Setup in `kube_common`.
//!
//! Ports: 20830–20839, 20844–20847.

mod kube_common;

use std::{
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use agentgate_tests::{agentgate_bin, mint, now, place, record_query, wait_until};
use kube_common::*;
use serde_json::Value;

const RULES: &str = "  - name: no-pod-deletes
    effect: deny
    targets: [cluster-api]
    requests: {verbs: [delete, deletecollection], resources: [pods]}
  - name: rbac-changes-need-approval
    targets: [cluster-api]
    requests: {verbs: [create, update, patch, delete], resources: [\"*.rbac.authorization.k8s.io\"]}
    approval: {approvers: [oncall], timeout_secs: 60}
  - name: exec-by-command
    targets: [cluster-api]
    requests: {resources: [pods/exec], exec: {allow: [\"echo *\", \"sleep *\"]}}
    approval: {approvers: [oncall], timeout_secs: 60}
";

fn approvals(s: &Setup, args: &[&str]) -> Output {
    Command::new(agentgate_bin())
        .arg("approvals")
        .args(args)
        .arg("--admin-socket")
        .arg(s.gw.admin_socket())
        .output()
        .expect("run agentgate approvals")
}

fn pending(s: &Setup) -> Vec<Value> {
    let out = approvals(s, &["list", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["requests"].as_array().cloned().unwrap_or_default()
}

fn spawn_kubectl(s: &Setup, kc: &std::path::Path, args: &[&str]) -> Child {
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig")
        .arg(kc)
        .arg("--cache-dir")
        .arg(s.dir.join("kube-cache"))
        .args(args)
        .env("HOME", &s.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    place(&mut cmd, Some(&s.agent), None);
    cmd.spawn().expect("spawn kubectl")
}

/// A delete of a pod is refused by the deny rule, which kubectl prints; the API server never
/// sees it; the refusal is on record.
#[test]
fn a_denied_delete_never_reaches_the_api_server() {
    let s = setup("kube-deny", 20830, 20831, RULES);
    let kc = kubeconfig(&s, "agent", &token("agent-kr-1"));
    let out = kubectl(
        &s,
        &kc,
        &["delete", "pod", "web-0", "-n", "default", "--wait=false"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Forbidden"), "{}", text(&out));
    assert!(
        err.contains("refused by rule \"no-pod-deletes\""),
        "{}",
        text(&out)
    );
    assert!(
        s.standin.get("", "pods", "default", "web-0").is_some(),
        "the pod was deleted"
    );
    assert!(
        s.standin.log.entries().iter().all(|e| e.method != "DELETE"),
        "a DELETE reached the API server"
    );
    let rec = wait_for_record(&s.gw, "the denial on record", |r| {
        r.iter().any(|x| x[1] == "denied")
    });
    let denied = rec.iter().find(|x| x[1] == "denied").expect("denied");
    assert!(
        denied[0]
            .as_str()
            .unwrap_or("")
            .starts_with("DELETE /api/v1/namespaces/default/pods/web-0"),
        "{denied:?}"
    );
    assert_eq!(denied[2], "delete");
    // Reads are not touched by the rule.
    let out = kubectl(&s, &kc, &["get", "pod", "web-0", "-n", "default"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// `kubectl create rolebinding` (a protobuf body) waits for approval; approvers see the
/// decoded object; approved, it is created; denied, it is not and kubectl prints the reason.
#[test]
fn rbac_changes_wait_for_people() {
    let s = setup("kube-rbac", 20832, 20833, RULES);
    let kc = kubeconfig(&s, "agent", &token("agent-kr-2"));
    let child = spawn_kubectl(
        &s,
        &kc,
        &[
            "create",
            "rolebinding",
            "ci-view",
            "--clusterrole=view",
            "--user=alice",
            "-n",
            "default",
        ],
    );
    wait_until("the request pending", Duration::from_secs(20), || {
        pending(&s).len() == 1
    });
    let req = pending(&s).remove(0);
    assert_eq!(req["protocol"], "kubernetes", "{req}");
    assert_eq!(req["database"], "default", "the namespace: {req}");
    assert_eq!(req["class"], "create", "{req}");
    let shown = req["statement"].as_str().unwrap_or("");
    assert!(
        shown
            .starts_with("POST /apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings"),
        "{req}"
    );
    // The protobuf body, decoded for the approver.
    assert!(
        shown.contains("\"roleRef\"") && shown.contains("\"view\"") && shown.contains("alice"),
        "{req}"
    );
    assert!(s
        .standin
        .get(
            "rbac.authorization.k8s.io",
            "rolebindings",
            "default",
            "ci-view"
        )
        .is_none());
    let id = req["id"].as_str().unwrap_or_default().to_string();
    let ok = approvals(&s, &["approve", &id]);
    assert!(ok.status.success(), "{}", text(&ok));
    let out = child.wait_with_output().expect("kubectl ends");
    assert!(out.status.success(), "{}", text(&out));
    assert!(s
        .standin
        .get(
            "rbac.authorization.k8s.io",
            "rolebindings",
            "default",
            "ci-view"
        )
        .is_some());

    let child = spawn_kubectl(
        &s,
        &kc,
        &[
            "create",
            "rolebinding",
            "ci-admin",
            "--clusterrole=admin",
            "--user=mallory",
            "-n",
            "default",
        ],
    );
    wait_until(
        "the second request pending",
        Duration::from_secs(20),
        || pending(&s).len() == 1,
    );
    let id2 = pending(&s)[0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let no = approvals(
        &s,
        &["deny", &id2, "--reason", "no admin bindings for agents"],
    );
    assert!(no.status.success(), "{}", text(&no));
    let out = child.wait_with_output().expect("kubectl ends");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no admin bindings for agents"),
        "{}",
        text(&out)
    );
    assert!(s
        .standin
        .get(
            "rbac.authorization.k8s.io",
            "rolebindings",
            "default",
            "ci-admin"
        )
        .is_none());
    let rec = wait_for_record(&s.gw, "both decisions on record", |r| {
        r.iter().filter(|x| x[2] == "create").count() >= 2
    });
    let decisions: Vec<&Value> = rec
        .iter()
        .filter(|x| x[2] == "create")
        .map(|x| &x[1])
        .collect();
    assert_eq!(decisions, vec!["approved", "denied"], "{rec:?}");
}

/// An exec whose command the allow list names runs at once; any other waits for people, and a
/// shell wrapped around a disallowed command does not get through either.
#[test]
fn exec_is_judged_by_its_command() {
    let s = setup("kube-exec-rule", 20834, 20835, RULES);
    let kc = kubeconfig(&s, "agent", &token("agent-kr-3"));
    let out = kubectl(
        &s,
        &kc,
        &[
            "exec",
            "-n",
            "default",
            "web-0",
            "--",
            "echo",
            "allowed-output",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("allowed-output"));
    assert!(pending(&s).is_empty());
    for args in [
        vec!["--", "sh", "-c", "cat /etc/hostname"],
        vec!["--", "sh", "-c", "echo ok; cat /etc/hostname"],
        vec!["--", "bash"],
    ] {
        let mut full = vec!["exec", "-n", "default", "web-0"];
        full.extend(args.iter().copied());
        let child = spawn_kubectl(&s, &kc, &full);
        wait_until("the exec held", Duration::from_secs(20), || {
            pending(&s).len() == 1
        });
        let id = pending(&s)[0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let no = approvals(&s, &["deny", &id, "--reason", "read the logs instead"]);
        assert!(no.status.success(), "{}", text(&no));
        let out = child.wait_with_output().expect("kubectl ends");
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("read the logs instead"),
            "{args:?}: {}",
            text(&out)
        );
    }
    let ran: Vec<Vec<String>> = s.standin.log.execs().into_iter().map(|e| e.argv).collect();
    assert_eq!(
        ran,
        vec![vec!["echo".to_string(), "allowed-output".to_string()]],
        "{ran:?}"
    );
}

/// `agentgate revoke` ends a running watch at once, and the agent's next request is refused.
#[test]
fn revoke_ends_a_watch() {
    let s = setup("kube-revoke", 20836, 20837, RULES);
    let kc = kubeconfig(&s, "agent", &token("agent-kr-4"));
    let child = spawn_kubectl(&s, &kc, &["get", "pods", "-n", "default", "--watch"]);
    wait_until("the watch open upstream", Duration::from_secs(20), || {
        s.standin.log.active_watches() == 1
    });
    let revoked = Command::new(agentgate_bin())
        .args([
            "revoke",
            "--identity",
            "agent-kr-4",
            "--reason",
            "contractor left",
        ])
        .arg("--admin-socket")
        .arg(s.gw.admin_socket())
        .output()
        .expect("revoke");
    assert!(revoked.status.success(), "{}", text(&revoked));
    let t0 = Instant::now();
    let out = child.wait_with_output().expect("kubectl ends");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the watch outlived the revocation"
    );
    wait_until("the watch closed upstream", Duration::from_secs(10), || {
        s.standin.log.active_watches() == 0
    });
    let _ = out;
    let again = kubectl(&s, &kc, &["get", "pods", "-n", "default"]);
    assert!(!again.status.success(), "{}", text(&again));
    let closes = record_query(
        &s.gw.record_db(),
        "SELECT json_extract(body, '$.ended_by') FROM audit_log WHERE kind = 'session_close'",
    );
    assert!(
        closes
            .iter()
            .any(|c| c[0].as_str().unwrap_or("").contains("contractor left")),
        "{closes:?}"
    );
}

/// A token that expires during an exec ends it: the process upstream is stopped, the session
/// closes as expired.
#[test]
fn expiry_ends_an_exec() {
    let s = setup("kube-expiry", 20838, 20839, RULES);
    let short = mint("agent-kr-5", &["agents"], now(), now() + 6);
    let kc = kubeconfig(&s, "agent", &short);
    let t0 = Instant::now();
    let out = kubectl(
        &s,
        &kc,
        &["exec", "-n", "default", "web-0", "--", "sleep", "60"],
    );
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "the exec outlived the token"
    );
    assert!(!out.status.success(), "{}", text(&out));
    wait_until("the exec ended upstream", Duration::from_secs(10), || {
        s.standin
            .log
            .execs()
            .iter()
            .any(|e| e.argv.first().map(String::as_str) == Some("sleep"))
    });
    let closes = record_query(
        &s.gw.record_db(),
        "SELECT json_extract(body, '$.ended_by') FROM audit_log WHERE kind = 'session_close'",
    );
    assert!(closes.iter().any(|c| c[0] == "token expired"), "{closes:?}");
}

/// A reload that takes the agent's rule away ends its running watch and exec at once.
#[test]
fn a_reload_withdrawing_the_agent_ends_its_streams() {
    let s = setup("kube-reload", 20844, 20845, RULES);
    let kc = kubeconfig(&s, "agent", &token("agent-kr-6"));
    let watch = spawn_kubectl(&s, &kc, &["get", "pods", "-n", "default", "--watch"]);
    let exec = spawn_kubectl(
        &s,
        &kc,
        &["exec", "-n", "default", "web-0", "--", "sleep", "60"],
    );
    wait_until(
        "the watch and the exec running upstream",
        Duration::from_secs(20),
        || {
            s.standin.log.active_watches() == 1
                && s.standin
                    .log
                    .entries()
                    .iter()
                    .any(|e| e.path.ends_with("/exec") && e.status == 101)
        },
    );
    let live = s.gw.policy_dir().join("policy.yaml");
    let policy = std::fs::read_to_string(&live).expect("policy");
    let withdrawn = policy.replace("groups: [agents]", "groups: [nobody-now]");
    assert_ne!(policy, withdrawn);
    let before = s.gw.count("policy_applied");
    let tmp = live.with_extension("yaml.tmp");
    std::fs::write(&tmp, withdrawn).expect("write");
    std::fs::rename(&tmp, &live).expect("rename");
    s.gw.wait_for(
        Duration::from_secs(15),
        |e| e["event"] == "policy_applied",
        before,
    );
    let t0 = Instant::now();
    let _ = watch.wait_with_output();
    let _ = exec.wait_with_output();
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "streams outlived the reload"
    );
    wait_until("both ended upstream", Duration::from_secs(10), || {
        s.standin.log.active_watches() == 0
            && s.standin
                .log
                .execs()
                .iter()
                .any(|e| e.argv.first().map(String::as_str) == Some("sleep"))
    });
    let again = kubectl(&s, &kc, &["get", "pods", "-n", "default"]);
    assert!(!again.status.success(), "{}", text(&again));
}

/// `deny_and_retry`: the request is refused at once naming its approval request; once people
/// approve it, the identical request from the same agent goes through, once.
#[test]
fn deny_and_retry_lets_the_identical_request_through_once_approved() {
    let rules = "  - name: configmap-deletes-need-a-person
    targets: [cluster-api]
    requests: {verbs: [delete], resources: [configmaps]}
    approval: {approvers: [oncall], mode: deny_and_retry}
";
    let s = setup("kube-retry", 20846, 20847, rules);
    let kc = kubeconfig(&s, "agent", &token("agent-kr-7"));
    let args = ["delete", "configmap", "app-config", "-n", "default"];
    let first = kubectl(&s, &kc, &args);
    assert!(!first.status.success(), "{}", text(&first));
    let err = String::from_utf8_lossy(&first.stderr).to_string();
    assert!(err.contains("approval required"), "{}", text(&first));
    let id = pending(&s)
        .first()
        .and_then(|r| r["id"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no pending request: {err}"));
    assert!(err.contains(&id), "the agent is told which request: {err}");
    assert!(s
        .standin
        .get("", "configmaps", "default", "app-config")
        .is_some());
    let ok = approvals(&s, &["approve", &id]);
    assert!(ok.status.success(), "{}", text(&ok));
    let second = kubectl(&s, &kc, &args);
    assert!(second.status.success(), "{}", text(&second));
    assert!(s
        .standin
        .get("", "configmaps", "default", "app-config")
        .is_none());
}
