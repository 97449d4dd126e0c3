//! The Kubernetes API server stand-in itself (`agentgate_tests::kube`), driven by the real
//! `kubectl` 1.32 and the Python `kubernetes` client straight to it (no gateway): proof that it
//! is realistic enough for the gateway's tests, which reuse it. Ports 20700-20749.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use agentgate_tests::{
    kube::{proto, write_kubeconfig_cert, KubeStandin, StandinOptions},
    wait_until,
};
use serde_json::{json, Value};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

fn standin(port: u16) -> KubeStandin {
    standin_with(port, StandinOptions::default())
}

fn standin_with(port: u16, opts: StandinOptions) -> KubeStandin {
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    KubeStandin::start(StandinOptions { listen, ..opts }).expect("start the kube stand-in")
}

/// `kubectl` with this kubeconfig and a discovery cache of the stand-in's own (so every test
/// sees kubectl's discovery requests, and no stale cache from another run is used).
fn kubectl(k: &KubeStandin, kubeconfig: &Path) -> Command {
    let mut c = Command::new("kubectl");
    c.arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(k.dir.join("kubectl-cache"))
        .arg("--request-timeout=20s");
    c
}

fn run(mut cmd: Command, args: &[&str]) -> Output {
    cmd.args(args).output().expect("run kubectl")
}

fn ok(cmd: Command, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn kubectl_gets_pods_and_secrets_as_json_yaml_and_table() {
    let k = standin(20700);
    let kc = k.kubeconfig("kc", &k.gateway_token.clone());

    let pods: Value =
        serde_json::from_str(&ok(kubectl(&k, &kc), &["get", "pods", "-o", "json"])).expect("json");
    assert_eq!(pods["kind"], "List");
    assert_eq!(names(&pods), ["api-0", "web-0"]);
    assert_eq!(
        pods["items"][1]["spec"]["containers"][0]["image"],
        "nginx:1.27"
    );

    let secrets = ok(kubectl(&k, &kc), &["get", "secrets", "-o", "yaml"]);
    // base64("s3cr3t-hunter2"): the stand-in serves Secret data as the API server does.
    assert!(
        secrets.contains("password: czNjcjN0LWh1bnRlcjI="),
        "{secrets}"
    );
    assert!(secrets.contains("name: db-credentials"), "{secrets}");

    let table = ok(kubectl(&k, &kc), &["get", "pods"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0]
            .split_whitespace()
            .eq(["NAME", "READY", "STATUS", "RESTARTS", "AGE"]),
        "{table}"
    );
    assert!(
        lines[1].starts_with("api-0") && lines[1].contains("1/1") && lines[1].contains("Running"),
        "{table}"
    );
    let secret_table = ok(kubectl(&k, &kc), &["get", "secrets", "-n", "team-a"]);
    assert!(
        secret_table.contains("api-token") && secret_table.contains("Opaque"),
        "{secret_table}"
    );

    // What reached the server: the Table request negotiated as a Table, the JSON one as JSON,
    // every request with the kubeconfig's token.
    let lists: Vec<_> = k
        .log
        .matching("/api/v1/namespaces/default/pods")
        .into_iter()
        .filter(|e| e.method == "GET")
        .collect();
    assert_eq!(lists.len(), 2, "{lists:?}");
    assert_eq!(
        lists[0].response_content_type.as_deref(),
        Some("application/json")
    );
    assert!(lists[1]
        .accept
        .as_deref()
        .unwrap_or("")
        .starts_with("application/json;as=Table;v=v1;g=meta.k8s.io"));
    assert_eq!(
        lists[1].response_content_type.as_deref(),
        Some("application/json;as=Table;v=v1;g=meta.k8s.io")
    );
    assert!(k.log.entries().iter().all(|e| e.auth == "bearer"));
    assert!(k.log.saw_token(&k.gateway_token));
    assert!(!k.log.saw_token("some-other-token"));
    // kubectl 1.32 asks for aggregated discovery and gets it.
    let apis = k.log.matching("/apis");
    assert!(apis.iter().any(|e| e.path == "/apis"
        && e.response_content_type.as_deref()
            == Some("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList")));
}

#[test]
fn kubectl_watch_sees_an_object_created_meanwhile() {
    let k = standin(20701);
    let kc = k.kubeconfig("kc", &k.gateway_token.clone());
    let mut child = kubectl(&k, &kc)
        .args(["get", "pods", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl get -w");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    wait_until("kubectl's watch request", Duration::from_secs(20), || {
        k.log
            .entries()
            .iter()
            .any(|e| e.query.contains("watch=true"))
    });
    k.create(
        "",
        "pods",
        "default",
        json!({"metadata": {"name": "late-0"}, "spec": {"containers": [{"name": "main", "image": "busybox"}]}}),
    )
    .expect("create late-0");
    let mut seen = Vec::new();
    let found = loop {
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(l) if l.contains("late-0") => break Some(l),
            Ok(l) => seen.push(l),
            Err(_) => break None,
        }
    };
    assert_eq!(k.log.active_watches(), 1);
    let _ = child.kill();
    let _ = child.wait();
    let line = found.unwrap_or_else(|| panic!("late-0 never appeared in the watch: {seen:?}"));
    // The watch ends at the stand-in when its client goes away.
    wait_until("the watch ended", Duration::from_secs(10), || {
        k.log.active_watches() == 0
    });
    assert!(line.starts_with("ADDED"), "{line}");
    let watch = k
        .log
        .entries()
        .into_iter()
        .find(|e| e.query.contains("watch=true"))
        .expect("watch request");
    // A watch from the list's resourceVersion, streamed as Table events.
    assert!(watch.query.contains("resourceVersion="), "{}", watch.query);
    assert_eq!(watch.status, 200);
}

#[test]
fn kubectl_create_rolebinding_and_secret_send_protobuf() {
    let k = standin(20702);
    let kc = k.kubeconfig("kc", &k.gateway_token.clone());
    ok(
        kubectl(&k, &kc),
        &[
            "create",
            "rolebinding",
            "rb1",
            "--clusterrole=view",
            "--user=bob",
            "--group=devs",
        ],
    );
    let rb = k
        .get(
            "rbac.authorization.k8s.io",
            "rolebindings",
            "default",
            "rb1",
        )
        .expect("rb1 stored");
    assert_eq!(
        rb["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"})
    );
    let subjects: Vec<(&str, &str)> = rb["subjects"]
        .as_array()
        .expect("subjects")
        .iter()
        .map(|s| {
            (
                s["kind"].as_str().unwrap_or(""),
                s["name"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(subjects, [("User", "bob"), ("Group", "devs")]);

    ok(
        kubectl(&k, &kc),
        &[
            "create",
            "secret",
            "generic",
            "s1",
            "--from-literal=token=abc123",
        ],
    );
    let s1 = k.get("", "secrets", "default", "s1").expect("s1 stored");
    assert_eq!(s1["data"]["token"], "YWJjMTIz");

    for (path, kind) in [
        (
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
            "RoleBinding",
        ),
        ("/api/v1/namespaces/default/secrets", "Secret"),
    ] {
        let post = k
            .log
            .matching(path)
            .into_iter()
            .find(|e| e.method == "POST")
            .unwrap_or_else(|| panic!("no POST {path}"));
        // kubectl 1.32 sends built-in types as protobuf and asks for protobuf back.
        assert_eq!(
            post.content_type.as_deref(),
            Some("application/vnd.kubernetes.protobuf")
        );
        assert!(post.body.starts_with(b"k8s\0"), "{path}");
        assert_eq!(proto::decode(&post.body).expect("decode")["kind"], kind);
        assert_eq!(
            post.response_content_type.as_deref(),
            Some("application/vnd.kubernetes.protobuf")
        );
        assert_eq!(post.status, 201);
    }

    // A second create of the same name is a 409 AlreadyExists Status, as kubectl prints it.
    let again = run(
        kubectl(&k, &kc),
        &["create", "secret", "generic", "s1", "--from-literal=a=b"],
    );
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("secrets \"s1\" already exists"),
        "{}",
        text(&again.stderr)
    );
    let conflict = k
        .log
        .entries()
        .into_iter()
        .rev()
        .find(|e| e.method == "POST")
        .expect("POST");
    // The Status in protobuf, since kubectl asked for protobuf first.
    assert_eq!(conflict.status, 409);
    assert_eq!(
        conflict.response_content_type.as_deref(),
        Some("application/vnd.kubernetes.protobuf")
    );

    // kubectl auth can-i: a SelfSubjectAccessReview in protobuf.
    assert_eq!(
        ok(kubectl(&k, &kc), &["auth", "can-i", "delete", "pods"]).trim(),
        "yes"
    );
}

#[test]
fn kubectl_delete_pod_and_missing_objects() {
    let k = standin(20703);
    let kc = k.kubeconfig("kc", &k.gateway_token.clone());
    let out = ok(kubectl(&k, &kc), &["delete", "pod", "web-0"]);
    assert!(out.contains("pod \"web-0\" deleted"), "{out}");
    assert!(k.get("", "pods", "default", "web-0").is_none());
    let del = k
        .log
        .matching("/api/v1/namespaces/default/pods/web-0")
        .into_iter()
        .find(|e| e.method == "DELETE")
        .expect("DELETE reached the server");
    assert_eq!(del.status, 200);

    let missing = run(kubectl(&k, &kc), &["get", "pod", "web-0"]);
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains("Error from server (NotFound): pods \"web-0\" not found"),
        "{}",
        text(&missing.stderr)
    );

    // deletecollection by label.
    ok(kubectl(&k, &kc), &["delete", "pods", "-l", "app=api"]);
    assert!(k.get("", "pods", "default", "api-0").is_none());
    assert!(k.get("", "pods", "team-a", "worker-0").is_some());
}

/// The stand-in's record of the exec whose argv contains `arg` (kubectl may exit before the
/// stand-in has written it: it closes the session after sending the exit status).
fn exec_record(k: &KubeStandin, arg: &str) -> agentgate_tests::kube::ExecRecord {
    let find = || {
        k.log
            .execs()
            .into_iter()
            .find(|r| r.argv.iter().any(|a| a == arg))
    };
    wait_until("the exec record", Duration::from_secs(10), || {
        find().is_some()
    });
    find().expect("exec record")
}

#[test]
fn kubectl_exec_streams_and_returns_the_exit_code() {
    let k = standin(20704);
    let kc = k.kubeconfig("kc", &k.gateway_token.clone());
    let out = run(
        kubectl(&k, &kc),
        &[
            "exec",
            "web-0",
            "--",
            "sh",
            "-c",
            "echo hi; echo oops >&2; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    assert!(text(&out.stderr).contains("oops"), "{}", text(&out.stderr));
    let up = k
        .log
        .matching("/api/v1/namespaces/default/pods/web-0/exec")
        .pop()
        .expect("exec request");
    assert_eq!(up.upgrade.as_deref(), Some("websocket"));
    assert!(up
        .websocket_protocols
        .as_deref()
        .unwrap_or("")
        .contains("v5.channel.k8s.io"));
    assert_eq!(up.status, 101);
    assert!(up.query.contains("command=sh"), "{}", up.query);
    let rec = exec_record(&k, "echo hi; echo oops >&2; exit 3");
    assert_eq!(rec.argv, ["sh", "-c", "echo hi; echo oops >&2; exit 3"]);
    assert_eq!((rec.exit_code, rec.ended_by_client), (Some(3), false));
    assert_eq!((rec.stdout_bytes, rec.stderr_bytes), (3, 5));

    // stdin reaches the process and its end is signalled (v5 close).
    let mut child = kubectl(&k, &kc)
        .args([
            "exec",
            "-i",
            "web-0",
            "--",
            "sh",
            "-c",
            "tr a-z A-Z; echo done",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl exec -i");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"hello stand-in\n").expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "HELLO STAND-IN\ndone\n");
    let rec = exec_record(&k, "tr a-z A-Z; echo done");
    assert_eq!(rec.stdin_bytes, 15);

    // The client goes away mid-exec: the stand-in kills the process and says so.
    let mut child = kubectl(&k, &kc)
        .args(["exec", "web-0", "--", "sleep", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl exec sleep");
    wait_until("the sleep exec upgraded", Duration::from_secs(20), || {
        k.log
            .entries()
            .iter()
            .any(|e| e.query.contains("command=sleep") && e.status == 101)
    });
    let _ = child.kill();
    let _ = child.wait();
    wait_until(
        "the exec ended at the stand-in",
        Duration::from_secs(10),
        || k.log.execs().iter().any(|r| r.argv[0] == "sleep"),
    );
    let rec = k
        .log
        .execs()
        .into_iter()
        .find(|r| r.argv[0] == "sleep")
        .expect("record");
    assert!(rec.ended_by_client && rec.exit_code.is_none(), "{rec:?}");

    // A pod that does not exist.
    let out = run(kubectl(&k, &kc), &["exec", "nope", "--", "true"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("pods \"nope\" not found"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn spdy_exec_is_refused() {
    let k = standin(20705);
    let kc = k.kubeconfig("kc", &k.gateway_token.clone());
    // kubectl falls back to SPDY when told not to use WebSockets.
    let out = kubectl(&k, &kc)
        .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")
        .args(["exec", "web-0", "--", "echo", "hi"])
        .output()
        .expect("kubectl");
    assert!(!out.status.success());
    assert_eq!(text(&out.stdout), "");
    assert!(
        text(&out.stderr).contains("SPDY is refused"),
        "{}",
        text(&out.stderr)
    );
    let up = k
        .log
        .matching("/api/v1/namespaces/default/pods/web-0/exec")
        .pop()
        .expect("exec request");
    assert!(
        up.upgrade.as_deref().unwrap_or("").starts_with("SPDY/"),
        "{up:?}"
    );
    assert_eq!(up.status, 400);
}

#[test]
fn python_client_lists_and_gets() {
    let k = standin(20706);
    let kc = k.kubeconfig("kc", &k.gateway_token.clone());
    let script = agentgate_tests::fixtures().join("kube/py_client.py");
    // /usr/bin/python3 has Debian's python3-kubernetes (see xtask setup).
    let out = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(&kc)
        .args(["default", "db-credentials"])
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["pods"], json!(["api-0", "web-0"]));
    assert_eq!(
        v["secret"],
        json!({"password": "s3cr3t-hunter2", "username": "app"})
    );
    assert_eq!(v["rolebindings"], json!(["viewers"]));
    assert_eq!(v["missing"], json!({"status": 404, "reason": "NotFound"}));
    assert!(k.get("", "configmaps", "default", "from-python").is_none());
    assert!(k.log.entries().iter().any(|e| e
        .user_agent
        .as_deref()
        .unwrap_or("")
        .contains("python")));
}

#[test]
fn impersonation_only_from_the_gateway_credential() {
    let mut opts = StandinOptions::default();
    opts.agent_tokens.insert(
        "agent-token-1".into(),
        ("agent-1".into(), vec!["agents".into()]),
    );
    let k = standin_with(20707, opts);
    let gw = k.kubeconfig("gw", &k.gateway_token.clone());
    let agent = k.kubeconfig("agent", "agent-token-1");
    let unknown = k.kubeconfig("unknown", "not-a-token");

    // The gateway's token may impersonate: the request runs as alice in devs.
    ok(
        kubectl(&k, &gw),
        &["get", "pods", "--as=alice", "--as-group=devs", "-o", "name"],
    );
    let e = k
        .log
        .matching("/api/v1/namespaces/default/pods")
        .pop()
        .expect("list");
    assert_eq!(e.impersonation_values("impersonate-user"), ["alice"]);
    assert_eq!(e.impersonation_values("impersonate-group"), ["devs"]);
    assert_eq!(
        e.authenticated_user.as_deref(),
        Some("system:serviceaccount:agentgate:gateway")
    );
    assert_eq!(e.effective_user.as_deref(), Some("alice"));
    assert_eq!(e.status, 200);

    // An agent's own token works in pass-through mode, but may not impersonate.
    ok(kubectl(&k, &agent), &["get", "pods", "-o", "name"]);
    let out = run(kubectl(&k, &agent), &["get", "pods", "--as=alice"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("User \"agent-1\" cannot impersonate resource \"users\""),
        "{}",
        text(&out.stderr)
    );
    let e = k
        .log
        .entries()
        .into_iter()
        .rev()
        .find(|e| !e.impersonation.is_empty())
        .expect("entry");
    assert_eq!(e.status, 403);
    assert!(k.log.saw_token("agent-token-1"));

    // An unknown token: 401.
    let out = run(kubectl(&k, &unknown), &["get", "pods"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("Unauthorized"),
        "{}",
        text(&out.stderr)
    );

    // A client certificate the stand-in issued.
    let cert = k.client_cert("carol", &["ops"]).expect("cert");
    let ckc = k.dir.join("cert");
    write_kubeconfig_cert(&ckc, &k.url, &k.ca_path, &cert).expect("kubeconfig");
    ok(kubectl(&k, &ckc), &["get", "ns", "-o", "name"]);
    let e = k.log.matching("/api/v1/namespaces").pop().expect("ns list");
    assert_eq!(
        (e.auth.as_str(), e.effective_user.as_deref()),
        ("cert", Some("carol"))
    );
}

/// curl straight to the stand-in: what kubectl does not ask for (protobuf replies and watch
/// streams) and what it must refuse.
fn curl(k: &KubeStandin, args: &[&str]) -> (u16, String, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(&k.ca_path)
        .args(["-H", &format!("Authorization: Bearer {}", k.gateway_token)])
        .args(["-o", "-", "-w", "\n%{http_code} %{content_type}"])
        .args(args)
        .output()
        .expect("curl");
    let mut body = out.stdout;
    let tail_at = body.iter().rposition(|b| *b == b'\n').expect("status line");
    let tail = text(&body[tail_at + 1..]);
    body.truncate(tail_at);
    let (code, ct) = tail.split_once(' ').unwrap_or((&tail, ""));
    (code.parse().unwrap_or(0), ct.to_string(), body)
}

#[test]
fn protobuf_replies_and_strict_refusals() {
    let k = standin(20708);
    let url = |p: &str| format!("{}{p}", k.url);
    let pb = "Accept: application/vnd.kubernetes.protobuf, application/json";

    let (code, ct, body) = curl(
        &k,
        &[
            "-H",
            pb,
            &url("/api/v1/namespaces/default/secrets/db-credentials"),
        ],
    );
    assert_eq!(
        (code, ct.as_str()),
        (200, "application/vnd.kubernetes.protobuf")
    );
    assert!(body.starts_with(b"k8s\0"));
    let secret = proto::decode(&body).expect("decode Secret");
    assert_eq!(secret["data"]["password"], "czNjcjN0LWh1bnRlcjI=");

    let (code, _, body) = curl(&k, &["-H", pb, &url("/api/v1/namespaces/default/pods")]);
    assert_eq!(code, 200);
    assert!(body.starts_with(b"k8s\0"));

    // A protobuf watch: length-prefixed WatchEvents, each object enveloped.
    let (code, ct, body) = curl(
        &k,
        &[
            "-H",
            pb,
            &url("/api/v1/namespaces/default/pods?watch=1&timeoutSeconds=1"),
        ],
    );
    assert_eq!(
        (code, ct.as_str()),
        (200, "application/vnd.kubernetes.protobuf;stream=watch")
    );
    let events = proto::decode_watch_stream(&body).expect("decode watch");
    let added: Vec<&str> = events
        .iter()
        .map(|(t, o)| {
            assert_eq!(t, "ADDED");
            o["metadata"]["name"].as_str().unwrap_or("")
        })
        .collect();
    assert_eq!(added, ["api-0", "web-0"]);

    // Not found is a Status, in the negotiated form.
    let (code, _, body) = curl(
        &k,
        &["-H", pb, &url("/api/v1/namespaces/default/pods/nope")],
    );
    assert_eq!(code, 404);
    assert_eq!(proto::decode(&body).expect("Status")["reason"], "NotFound");

    // Unknown path, unacceptable Accept, unsupported body type, unknown upgrade.
    let (code, _, body) = curl(&k, &[&url("/apis/apps/v1/namespaces/default/deployments")]);
    assert_eq!(code, 404, "{}", text(&body));
    let (code, _, _) = curl(
        &k,
        &[
            "-H",
            "Accept: application/yaml",
            &url("/api/v1/namespaces/default/pods"),
        ],
    );
    assert_eq!(code, 406);
    let (code, _, body) = curl(
        &k,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/yaml",
            "--data-binary",
            "kind: Secret",
            &url("/api/v1/namespaces/default/secrets"),
        ],
    );
    assert_eq!(code, 415, "{}", text(&body));
    let (code, _, body) = curl(
        &k,
        &[
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: h2c",
            &url("/api/v1/namespaces/default/pods/web-0/exec?command=true"),
        ],
    );
    assert_eq!(code, 400, "{}", text(&body));
    assert!(text(&body).contains("not supported by the kube stand-in"));
    // No credentials at all: 401.
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&k.ca_path)
        .arg(url("/api/v1/namespaces"))
        .output()
        .expect("curl");
    assert_eq!(text(&out.stdout), "401");
}

#[test]
fn kubectl_apply_label_and_logs() {
    let k = standin(20709);
    let kc = k.kubeconfig("kc", &k.gateway_token.clone());
    let manifest = k.dir.join("cm.yaml");
    let write = |v: &str| {
        std::fs::write(
            &manifest,
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\ndata:\n  a: \"{v}\"\n"),
        )
        .expect("manifest")
    };
    // apply (create, then a strategic merge patch): kubectl needs /openapi/v3 for both.
    write("1");
    let m = manifest.to_string_lossy().to_string();
    assert!(ok(kubectl(&k, &kc), &["apply", "-f", &m]).contains("configmap/applied created"));
    write("2");
    assert!(ok(kubectl(&k, &kc), &["apply", "-f", &m]).contains("configmap/applied configured"));
    let cm = k
        .get("", "configmaps", "default", "applied")
        .expect("stored");
    assert_eq!(cm["data"], json!({"a": "2"}));
    let patch = k
        .log
        .entries()
        .into_iter()
        .find(|e| e.method == "PATCH")
        .expect("apply's PATCH");
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/strategic-merge-patch+json")
    );

    // label: a merge patch.
    ok(kubectl(&k, &kc), &["label", "pod", "web-0", "tier=front"]);
    let pod = k.get("", "pods", "default", "web-0").expect("web-0");
    assert_eq!(
        pod["metadata"]["labels"],
        json!({"app": "web", "tier": "front"})
    );
    let selected = ok(
        kubectl(&k, &kc),
        &["get", "pods", "-l", "tier=front", "-o", "name"],
    );
    assert_eq!(selected.trim(), "pod/web-0");

    // pods/log: the pod's text.
    assert_eq!(
        ok(kubectl(&k, &kc), &["logs", "web-0"]),
        "web-0: started\nweb-0: ready\n"
    );
    let api_log = ok(kubectl(&k, &kc), &["logs", "api-0"]);
    assert!(
        api_log.contains("postgres://app:s3cr3t-hunter2@db:5432/app"),
        "{api_log}"
    );
}

#[test]
fn kubectl_falls_back_to_legacy_discovery() {
    let k = standin_with(
        20710,
        StandinOptions {
            aggregated_discovery: false,
            ..StandinOptions::default()
        },
    );
    let kc = k.kubeconfig("kc", &k.gateway_token.clone());
    let out = ok(kubectl(&k, &kc), &["get", "rolebindings", "-o", "name"]);
    assert_eq!(out.trim(), "rolebinding.rbac.authorization.k8s.io/viewers");
    // Without aggregated discovery kubectl reads each group version's resource list.
    let gv = k.log.matching("/apis/rbac.authorization.k8s.io/v1");
    assert!(
        gv.iter()
            .any(|e| e.path == "/apis/rbac.authorization.k8s.io/v1" && e.status == 200),
        "{gv:?}"
    );
    assert!(k
        .log
        .matching("/apis")
        .iter()
        .all(|e| e.response_content_type.as_deref()
            != Some("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList")));
}
