//! The Kubernetes API through the gateway, end to end (issue 19): the real `kubectl` 1.32, in a
//! captured cgroup, with a kubeconfig as an agent has one (the API server's real address, the
//! agent's own bearer token, the CA it trusts), talks to the tests' API-server stand-in
//! (`agentgate_tests::kube`, no real API server can be installed here). The gateway terminates
//! kubectl's TLS, forwards with its own credential plus impersonation headers, masks Secrets
//! and records every request.
//!
//! Ports: 20820–20829, 20840–20843.

mod kube_common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use agentgate_tests::{place, record_query, ISSUER};
use kube_common::*;
use serde_json::Value;

/// kubectl get through the gateway: answered, the API server saw the gateway's credential and
/// impersonation headers naming the agent (never the agent's token), every request on record.
#[test]
fn kubectl_get_reaches_the_api_server_as_the_impersonated_agent() {
    let s = setup("kube-get", 20820, 20821, "");
    let t = token("agent-kube-1");
    let kc = kubeconfig(&s, "agent", &t);
    let out = kubectl(&s, &kc, &["get", "pods", "-n", "default", "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let pods: Value = serde_json::from_slice(&out.stdout).expect("JSON from kubectl");
    let names: Vec<&str> = pods["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["metadata"]["name"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert!(names.contains(&"web-0"), "{names:?}");
    let out = kubectl(&s, &kc, &["get", "pods", "-n", "default"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("web-0"),
        "{}",
        text(&out)
    );

    assert!(
        !s.standin.log.saw_token(&t),
        "the agent's token reached the API server"
    );
    let pods_requests = s.standin.log.matching("/api/v1/namespaces/default/pods");
    assert!(!pods_requests.is_empty());
    for e in &pods_requests {
        assert_eq!(
            e.authenticated_user.as_deref(),
            Some("system:serviceaccount:agentgate:gateway"),
            "{e:?}"
        );
        assert_eq!(
            e.impersonation_values("impersonate-user"),
            vec![format!("{ISSUER}#agent-kube-1").as_str()],
            "{e:?}"
        );
        assert_eq!(
            e.impersonation_values("impersonate-group"),
            vec!["agents"],
            "{e:?}"
        );
        assert_eq!(
            e.effective_user.as_deref(),
            Some(format!("{ISSUER}#agent-kube-1").as_str())
        );
        assert!(
            !e.impersonation_values("impersonate-extra-agentgate.io%2fsession")
                .is_empty(),
            "{e:?}"
        );
        // JSON was asked for: the gateway reads every answer.
        assert!(
            !e.accept.as_deref().unwrap_or("").contains("protobuf"),
            "{e:?}"
        );
    }
    let rec = wait_for_record(&s.gw, "the pod lists on record", |r| {
        r.iter()
            .filter(|x| x[2] == "list" && x[0].as_str().unwrap_or("").contains("/pods"))
            .count()
            >= 2
    });
    assert!(rec.iter().all(|x| x[1] == "allowed"), "{rec:?}");
    // Reads wait for no commit: no intent is written before them.
    let intents = record_query(
        &s.gw.record_db(),
        "SELECT count(*) FROM audit_log WHERE kind = 'statement_intent'",
    );
    assert_eq!(intents[0][0], 0, "{intents:?}");
}

/// Secret values never reach the agent: `-o json`, `-o yaml`, the table, and a watch.
#[test]
fn secret_values_are_masked_in_every_output() {
    let s = setup("kube-secrets", 20822, 20823, "");
    let kc = kubeconfig(&s, "agent", &token("agent-kube-2"));
    for args in [
        vec![
            "get",
            "secret",
            "db-credentials",
            "-n",
            "default",
            "-o",
            "json",
        ],
        vec!["get", "secrets", "-n", "default", "-o", "yaml"],
        vec!["get", "secrets", "-A", "-o", "json"],
        vec!["get", "secrets", "-n", "default"],
        vec![
            "get",
            "secret",
            "db-credentials",
            "-n",
            "default",
            "-o",
            "jsonpath={.data.password}",
        ],
    ] {
        let out = kubectl(&s, &kc, &args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        let shown = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(!shown.contains(SEEDED_PASSWORD), "{args:?}: {shown}");
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(SEEDED_PASSWORD);
        assert!(!shown.contains(&b64), "{args:?}: {shown}");
    }
    // The stand-in does hold the value: the masking is the gateway's.
    let held = s
        .standin
        .get("", "secrets", "default", "db-credentials")
        .expect("seeded secret");
    assert!(held.to_string().contains("czNjcjN0"), "{held}");

    // A watch streams masked events as they happen.
    let mut watch = Command::new("kubectl");
    watch
        .arg("--kubeconfig")
        .arg(&kc)
        .arg("--cache-dir")
        .arg(s.dir.join("kube-cache-w"))
        .args([
            "get",
            "secrets",
            "-n",
            "default",
            "--watch",
            "-o",
            "json",
            "--request-timeout=6s",
        ])
        .env("HOME", &s.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    place(&mut watch, Some(&s.agent), None);
    let child = watch.spawn().expect("kubectl watch");
    std::thread::sleep(Duration::from_millis(1500));
    s.standin
        .create(
            "",
            "secrets",
            "default",
            serde_json::json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "new-one", "namespace": "default"},
                "data": {"key": "bmV3LXNlY3JldC12YWx1ZQ=="}}),
        )
        .expect("create secret in the stand-in");
    let out = child.wait_with_output().expect("watch ends");
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        shown.contains("new-one"),
        "the watch saw the new Secret: {}",
        text(&out)
    );
    assert!(!shown.contains("bmV3LXNlY3JldC12YWx1ZQ=="), "{shown}");
    assert!(!shown.contains("czNjcjN0"), "{shown}");
}

/// kubectl's own impersonation (`--as`) is refused: only the gateway says whom a request is for.
#[test]
fn agent_impersonation_is_refused() {
    let s = setup("kube-as", 20824, 20825, "");
    let kc = kubeconfig(&s, "agent", &token("agent-kube-3"));
    // kubectl's discovery fails first and prints only "Forbidden" (its discovery client does
    // not show a Status message); the message itself is checked with curl below.
    let out = kubectl(
        &s,
        &kc,
        &["get", "pods", "-n", "default", "--as", "system:admin"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Forbidden"),
        "{}",
        text(&out)
    );
    let t = token("agent-kube-3b");
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--cacert"])
        .arg(&s.agent_ca.cert)
        .args(["-H", &format!("Authorization: Bearer {t}")])
        .args([
            "-H",
            "Impersonate-User: system:admin",
            "-H",
            "Impersonate-Group: system:masters",
        ])
        .arg(format!(
            "https://127.0.0.2:{}/api/v1/namespaces/default/pods",
            s.port
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    place(&mut curl, Some(&s.agent), None);
    let o = curl.output().expect("curl");
    let status: Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    assert_eq!(status["kind"], "Status", "{status}");
    assert_eq!(status["code"], 403, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or("")
            .contains("impersonation headers are the gateway's"),
        "{status}"
    );
    assert!(
        s.standin
            .log
            .entries()
            .iter()
            .all(|e| e.impersonation_values("impersonate-user") != vec!["system:admin"]),
        "an agent-chosen identity reached the API server"
    );
    let rec = wait_for_record(&s.gw, "the refused request on record", |r| {
        r.iter().any(|x| x[1] == "denied")
    });
    assert!(rec.iter().any(|x| x[1] == "denied"), "{rec:?}");
}

/// `kubectl exec` over WebSocket: the command runs, its exit code reaches kubectl, and the
/// stream is on record with the command, its output and its exit code, and as a cast.
#[test]
fn exec_streams_are_relayed_and_recorded() {
    let s = setup("kube-exec", 20826, 20827, "");
    let kc = kubeconfig(&s, "agent", &token("agent-kube-4"));
    let out = kubectl(
        &s,
        &kc,
        &[
            "exec",
            "-n",
            "default",
            "web-0",
            "--",
            "sh",
            "-c",
            "echo hello-from-exec; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello-from-exec"),
        "{}",
        text(&out)
    );
    let rec = wait_for_record(&s.gw, "the exec on record", |r| {
        r.iter()
            .any(|x| x[0].as_str().unwrap_or("").contains("/exec") && !x[3].is_null())
    });
    let exec = rec
        .iter()
        .find(|x| x[0].as_str().unwrap_or("").contains("/exec"))
        .expect("exec request");
    assert!(
        exec[0].as_str().unwrap_or("").contains("command=sh"),
        "{exec:?}"
    );
    assert_eq!(exec[3], 3, "exit status on record: {exec:?}");
    assert!(
        exec[4].as_str().unwrap_or("").contains("hello-from-exec"),
        "{exec:?}"
    );
    let casts = record_query(
        &s.gw.record_db(),
        "SELECT count(*) FROM audit_log WHERE kind = 'kube_cast'",
    );
    assert!(casts[0][0].as_u64().unwrap_or(0) >= 1, "{casts:?}");
    // The cast plays back with the command's output.
    let replay = Command::new(agentgate_tests::agentgate_bin())
        .args(["sessions", "replay"])
        .arg(
            record_query(
                &s.gw.record_db(),
                "SELECT session FROM audit_log WHERE kind = 'kube_cast' LIMIT 1",
            )[0][0]
                .as_str()
                .unwrap_or(""),
        )
        .args(["--fast", "--record-db"])
        .arg(s.gw.record_db())
        .output()
        .expect("sessions replay");
    assert!(
        String::from_utf8_lossy(&replay.stdout).contains("hello-from-exec"),
        "{}",
        text(&replay)
    );
}

/// A pod's service-account token works only from that pod: replayed from another pod, from a
/// sub-cgroup that pod made and named after the token's pod, or from outside any pod, it is
/// refused before anything reaches the API server. The pods sit where a cgroupfs-driver
/// kubelet puts them, at the top of the node's cgroup tree (`/kubepods/besteffort/pod<uid>/<id>`).
#[test]
fn a_stolen_service_account_token_is_refused() {
    let node_pods =
        "  - name: node-pods\n    cgroup: \"/kubepods/besteffort/pod*/*\"\n    mode: host\n\
                     \x20   token: {from: credential}\n";
    let pods_rule = "  - name: pods-to-cluster\n    when: {workloads: [node-pods], groups: [agents]}\n    targets: [cluster-api]\n";
    let uid_a = "5f2b7c1e-9a4d-4e2b-8c3f-1a2b3c4d5e6f";
    let uid_b = "0b1c2d3e-4f50-4a6b-8c7d-8e9fa0b1c2d3";
    assert!(
        !agentgate_tests::cgroup2_root().join("kubepods").exists(),
        "/kubepods exists: this machine runs a kubelet; this test builds its own node layout"
    );
    // Declared first, dropped last: removes the whole node-level tree the test made.
    let _node_tree = agentgate_tests::Cgroup::adopt("/kubepods");
    let container = |n: u8| format!("{n:02x}").repeat(32);
    let pod_cgroup = |uid: &str, n: u8| {
        agentgate_tests::Cgroup::create(&format!("/kubepods/besteffort/pod{uid}/{}", container(n)))
    };
    let pod_a = pod_cgroup(uid_a, 1);
    let pod_b = pod_cgroup(uid_b, 2);
    // Pod B's container names a sub-cgroup after pod A (the old check read the deepest
    // `pod<uid>` level and took this for pod A).
    let forged = agentgate_tests::Cgroup::create(&format!("{}/pod{uid_a}", pod_b.rel));
    // The node's tree exists before the gateway starts, as it does on a node.
    let s = setup_with("kube-stolen", 20828, 20829, pods_rule, node_pods);
    s.gw.wait_classified(&pod_a.rel);
    s.gw.wait_classified(&pod_b.rel);
    s.gw.wait_classified(&forged.rel);
    let sa_token = agentgate_tests::mint_with_claims(
        "system:serviceaccount:ci:agent",
        &["agents"],
        agentgate_tests::now(),
        agentgate_tests::now() + 600,
        &serde_json::json!({"kubernetes.io": {"namespace": "ci",
            "pod": {"name": "job-a", "uid": uid_a},
            "serviceaccount": {"name": "agent", "uid": "3f9e8d7c-6b5a-4948-8776-655443322110"}}}),
    );
    let kc = kubeconfig(&s, "sa", &sa_token);
    let run_in = |cg: &agentgate_tests::Cgroup| {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&kc)
            .arg("--cache-dir")
            .arg(s.dir.join(format!("cache-{}", cg.id())))
            .args(["get", "pods", "-n", "default", "--request-timeout=20s"])
            .env("HOME", &s.dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        place(&mut cmd, Some(cg), None);
        cmd.output().expect("kubectl")
    };
    let own = run_in(&pod_a);
    assert!(own.status.success(), "from its own pod: {}", text(&own));
    let before = s.standin.log.len();
    let elsewhere = run_in(&pod_b);
    assert!(!elsewhere.status.success(), "{}", text(&elsewhere));
    let from_forged = run_in(&forged);
    assert!(!from_forged.status.success(), "{}", text(&from_forged));
    let outside = run_in(&s.agent);
    assert!(!outside.status.success(), "{}", text(&outside));
    assert_eq!(
        s.standin.log.len(),
        before,
        "a stolen token's request reached the API server"
    );
    let refusals: Vec<String> =
        s.gw.events()
            .into_iter()
            .filter(|e| e["event"] == "refused" && e["code"] == "token_elsewhere")
            .map(|e| e["reason"].as_str().unwrap_or("").to_string())
            .collect();
    let from_b = format!("presented from pod {uid_b}");
    assert!(
        refusals.iter().filter(|r| r.contains(&from_b)).count() >= 2,
        "pod B and its forged sub-cgroup are both pod B: {refusals:?}"
    );
    assert!(
        refusals.iter().any(|r| r.contains("outside any pod")),
        "{refusals:?}"
    );
}

/// The detector rules apply to every answer: ConfigMap values, pod logs, watch events.
#[test]
fn detectors_mask_configmaps_logs_and_watches() {
    let rules = "  - name: mask-pii\n    targets: [cluster-api]\n    mask: {detectors: [email, payment_card]}\n";
    let s = setup("kube-detect", 20840, 20841, rules);
    let kc = kubeconfig(&s, "agent", &token("agent-kube-6"));
    s.standin
        .create(
            "",
            "configmaps",
            "default",
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "contacts", "namespace": "default"},
                "data": {"oncall": "pager ops-lead@example.com now"}}),
        )
        .expect("configmap");
    s.standin
        .create(
            "",
            "pods",
            "default",
            serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "billing-0", "namespace": "default",
                    "annotations": {"standin.agentgate.dev/log":
                        "charged card 4111 1111 1111 1111 for jane.doe@example.org\nok\n"}},
                "spec": {"containers": [{"name": "main", "image": "billing:1"}]}}),
        )
        .expect("pod");
    for args in [
        vec![
            "get",
            "configmap",
            "contacts",
            "-n",
            "default",
            "-o",
            "json",
        ],
        vec!["get", "configmaps", "-n", "default", "-o", "yaml"],
        vec!["logs", "billing-0", "-n", "default"],
    ] {
        let out = kubectl(&s, &kc, &args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        let shown = String::from_utf8_lossy(&out.stdout);
        for raw in [
            "ops-lead@example.com",
            "4111 1111 1111 1111",
            "jane.doe@example.org",
        ] {
            assert!(!shown.contains(raw), "{args:?} showed {raw}: {shown}");
        }
        assert!(!shown.is_empty());
    }
    let out = kubectl(&s, &kc, &["logs", "billing-0", "-n", "default"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok"),
        "{}",
        text(&out)
    );
    // A watch: events as they happen, masked, not held back for the next one.
    let mut watch = Command::new("kubectl");
    watch
        .arg("--kubeconfig")
        .arg(&kc)
        .arg("--cache-dir")
        .arg(s.dir.join("kube-cache-w"))
        .args([
            "get",
            "configmaps",
            "-n",
            "default",
            "--watch",
            "-o",
            "json",
            "--request-timeout=5s",
        ])
        .env("HOME", &s.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    place(&mut watch, Some(&s.agent), None);
    let child = watch.spawn().expect("kubectl watch");
    std::thread::sleep(Duration::from_millis(1500));
    s.standin
        .create(
            "",
            "configmaps",
            "default",
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "late", "namespace": "default"},
                "data": {"who": "late-comer@example.net"}}),
        )
        .expect("configmap");
    let out = child.wait_with_output().expect("watch ends");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("\"late\""),
        "the watch saw the new ConfigMap: {}",
        text(&out)
    );
    assert!(!shown.contains("late-comer@example.net"), "{shown}");
    assert!(!shown.contains("ops-lead@example.com"), "{shown}");
}

/// The Python `kubernetes` client, the second client: lists, reads a Secret (masked, still
/// valid base64 it decodes), creates and deletes through the gateway; a 404 comes back as the
/// API server's.
#[test]
fn the_python_client_goes_through_unchanged() {
    let s = setup("kube-python", 20842, 20843, "");
    let t = token("agent-kube-7");
    let kc = kubeconfig(&s, "py", &t);
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(agentgate_tests::fixtures().join("kube/py_client.py"))
        .arg(&kc)
        .args(["default", "db-credentials"])
        .env("HOME", &s.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    place(&mut cmd, Some(&s.agent), None);
    let out = cmd.output().expect("python client");
    let seen: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert!(
        seen["pods"]
            .as_array()
            .is_some_and(|p| p.iter().any(|n| n == "web-0")),
        "{seen}"
    );
    assert_eq!(
        seen["secret"]["password"], "[masked by agentgate]",
        "{seen}"
    );
    assert!(!seen.to_string().contains(SEEDED_PASSWORD), "{seen}");
    assert!(
        seen["rolebindings"]
            .as_array()
            .is_some_and(|r| r.iter().any(|n| n == "viewers")),
        "{seen}"
    );
    assert!(seen["created_rv"].is_string(), "{seen}");
    assert_eq!(seen["missing"]["status"], 404, "{seen}");
    assert!(
        !s.standin.log.saw_token(&t),
        "the agent's token reached the API server"
    );
}
