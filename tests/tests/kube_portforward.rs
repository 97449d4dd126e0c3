//! `kubectl port-forward` through the gateway (issue 19): refused unless an `effect: allow`
//! rule with `ports` allows every port it reaches, then relayed and on record. The real
//! kubectl 1.32 (SPDY tunnelled in WebSocket, and SPDY itself with
//! `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`) in the agent's cgroup, the stand-in API server
//! forwarding the pod's port to an echo server on loopback. kubectl names the ports only in the
//! SPDY streams it opens per local connection, so a port no rule allows is refused when a
//! connection to it is made: the gateway ends the forward before the stream reaches the API
//! server.
//!
//! Ports: 20920–20929 (the echo servers take ephemeral loopback ports).

mod kube_common;

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use agentgate_tests::{agentgate_bin, place, record_query, wait_until};
use kube_common::*;
use serde_json::Value;

/// The pod port the rules allow; the stand-in forwards it to an echo server.
const POD_PORT: u16 = 8080;

const RULES: &str = "  - name: forward-to-web
    effect: allow
    targets: [cluster-api]
    requests: {verbs: [get, create], resources: [pods/portforward], namespaces: [default], names: [web-0], ports: [8080]}
  - name: forward-to-api
    effect: allow
    targets: [cluster-api]
    requests: {resources: [pods/portforward], names: [api-0], ports: [8080]}
  - name: no-forward-to-api
    effect: deny
    targets: [cluster-api]
    requests: {resources: [pods/portforward], names: [api-0]}
  - name: forward-to-held
    effect: allow
    targets: [cluster-api]
    requests: {resources: [pods/portforward], names: [held-0], ports: [8080]}
  - name: held-forwards-wait
    targets: [cluster-api]
    requests: {resources: [pods/portforward], names: [held-0]}
    approval: {approvers: [oncall], timeout_secs: 60}
";

/// An echo server on an ephemeral loopback port (lives until the test process ends).
fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("echo listener");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = conn;
                let mut buf = [0u8; 16 << 10];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// `kubectl port-forward` as the agent runs it; `websocket: false` makes kubectl use SPDY.
fn port_forward(s: &Setup, kc: &std::path::Path, args: &[&str], websocket: bool) -> Child {
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig")
        .arg(kc)
        .arg("--cache-dir")
        .arg(s.dir.join("kube-cache"))
        .arg("port-forward")
        .args(args)
        .env("HOME", &s.dir)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env(
            "KUBECTL_PORT_FORWARD_WEBSOCKETS",
            if websocket { "true" } else { "false" },
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    place(&mut cmd, Some(&s.agent), None);
    cmd.spawn().expect("spawn kubectl port-forward")
}

/// A connection to kubectl's local port once it listens (it listens once the gateway and the
/// API server agreed to the upgrade).
fn connect_local(port: u16, child: &mut Child) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(c) = TcpStream::connect(("127.0.0.1", port)) {
            c.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            return c;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("kubectl port-forward ended ({status}) before it listened on {port}");
        }
        assert!(
            Instant::now() < deadline,
            "kubectl never listened on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `msg`, closes the sending side, and reads all that comes back (empty when the
/// connection is cut).
fn round_trip(mut c: TcpStream, msg: &[u8]) -> Vec<u8> {
    let _ = c.write_all(msg);
    let _ = c.shutdown(Shutdown::Write);
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    got
}

/// kubectl's end, within `secs`, and what it printed.
fn ends_within(mut child: Child, secs: u64) -> Output {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("kubectl output");
            panic!(
                "kubectl port-forward still ran after {secs}s: {}",
                text(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().expect("kubectl output")
}

fn stop(mut child: Child) -> Output {
    let _ = child.kill();
    child.wait_with_output().expect("kubectl output")
}

/// The port-forward requests on record: (text, decision, rule, error, ports, summary).
fn forwards_on_record(s: &Setup) -> Vec<Vec<Value>> {
    record_query(
        &s.gw.record_db(),
        "SELECT json_extract(body, '$.text'), json_extract(body, '$.decision'), \
         json_extract(body, '$.rule'), json_extract(body, '$.error'), \
         json_extract(body, '$.params'), json_extract(body, '$.output.stdout') \
         FROM audit_log WHERE kind = 'statement' \
         AND json_extract(body, '$.text') LIKE '%/portforward%' ORDER BY seq",
    )
}

fn wait_forwards(s: &Setup, what: &str, f: impl Fn(&[Vec<Value>]) -> bool) -> Vec<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = forwards_on_record(s);
        if f(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "{what}: {r:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// An allowed port-forward carries bytes both ways, over WebSocket (kubectl's default) and
/// over SPDY; each is on record with its port, bytes and duration, and the API server saw the
/// impersonated agent. One an approval rule holds starts once approved.
#[test]
fn an_allowed_port_forward_carries_bytes_and_is_on_record() {
    let s = setup("kube-pf", 20920, 20921, RULES);
    s.standin
        .forward_port(POD_PORT, echo_server())
        .expect("forward port");
    let kc = kubeconfig(&s, "agent", &token("agent-pf-1"));
    for (websocket, payload) in [
        (true, &b"through the tunnel"[..]),
        (false, &b"through spdy"[..]),
    ] {
        let mut child = port_forward(&s, &kc, &["pod/web-0", "20926:8080"], websocket);
        let c = connect_local(20926, &mut child);
        let got = round_trip(c, payload);
        assert_eq!(got, payload, "websocket {websocket}: the echo came back");
        // A second connection over the same forward.
        let c = connect_local(20926, &mut child);
        assert_eq!(round_trip(c, b"again"), b"again");
        let out = stop(child);
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .contains("Forwarding from 127.0.0.1:20926 -> 8080"),
            "{}",
            text(&out)
        );
        let want = if websocket { "GET " } else { "POST " };
        let rec = wait_forwards(&s, "the forward on record", |r| {
            r.iter().any(|x| {
                str_of(&x[0]).starts_with(want) && str_of(&x[5]).starts_with("port-forward:")
            })
        });
        let row = rec
            .iter()
            .find(|x| str_of(&x[0]).starts_with(want) && str_of(&x[5]).starts_with("port-forward:"))
            .expect("row");
        assert!(
            str_of(&row[0]).contains("/api/v1/namespaces/default/pods/web-0/portforward"),
            "{row:?}"
        );
        assert_eq!(row[1], "allowed", "{row:?}");
        let ports: Value = serde_json::from_str(str_of(&row[4])).unwrap_or_default();
        assert_eq!(ports, serde_json::json!(["8080"]), "{row:?}");
        let summary = str_of(&row[5]);
        assert!(summary.contains("ports [8080], 4 streams"), "{row:?}");
        assert!(!summary.contains(" 0 bytes back"), "{row:?}");
    }
    // Both reached the stand-in as the agent (impersonated), and carried the bytes.
    let upgrades: Vec<_> = s
        .standin
        .log
        .entries()
        .into_iter()
        .filter(|e| e.path.ends_with("/portforward"))
        .collect();
    assert_eq!(upgrades.len(), 2, "{upgrades:?}");
    assert!(upgrades.iter().all(|e| e.status == 101), "{upgrades:?}");
    assert!(
        upgrades.iter().all(|e| e
            .effective_user
            .as_deref()
            .unwrap_or("")
            .ends_with("#agent-pf-1")),
        "{upgrades:?}"
    );
    let served = s.standin.log.forwards();
    assert_eq!(served.len(), 4, "{served:?}");
    assert!(served.iter().all(|f| f.port == POD_PORT && f.to.is_some()));
    let to_pod: u64 = served.iter().map(|f| f.bytes_to_pod).sum();
    assert_eq!(
        to_pod,
        (b"through the tunnel".len() + b"through spdy".len() + 2 * b"again".len()) as u64
    );

    // Held for people: nothing upgraded upstream until approved, then it carries bytes.
    let mut pod = s
        .standin
        .get("", "pods", "default", "web-0")
        .expect("web-0");
    pod["metadata"] = serde_json::json!({"name": "held-0", "namespace": "default"});
    s.standin
        .create("", "pods", "default", pod)
        .expect("create held-0");
    let mut child = port_forward(&s, &kc, &["pod/held-0", "20926:8080"], true);
    wait_until("the forward pending", Duration::from_secs(20), || {
        pending(&s).len() == 1
    });
    let req = pending(&s).remove(0);
    assert!(
        str_of(&req["statement"])
            .starts_with("GET /api/v1/namespaces/default/pods/held-0/portforward"),
        "{req}"
    );
    assert!(
        s.standin
            .log
            .entries()
            .iter()
            .all(|e| !e.path.ends_with("/held-0/portforward")),
        "upgraded before approval"
    );
    let id = str_of(&req["id"]).to_string();
    let ok = approvals(&s, &["approve", &id]);
    assert!(ok.status.success(), "{}", text(&ok));
    let c = connect_local(20926, &mut child);
    assert_eq!(round_trip(c, b"approved"), b"approved");
    stop(child);
}

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

/// What no rule allows is refused, as kubectl shows it and on record: a port outside the
/// allowing rule's list (refused when a connection to it opens its stream, before the API
/// server sees the stream); two ports where one is not allowed; a pod no rule allows a
/// forward to; a pod a deny rule covers although an allow rule lists the port.
#[test]
fn ports_and_pods_no_rule_allows_are_refused() {
    let s = setup("kube-pf-refuse", 20922, 20923, RULES);
    s.standin
        .forward_port(POD_PORT, echo_server())
        .expect("forward port");
    s.standin.forward_port(9999, echo_server()).expect("9999");
    let kc = kubeconfig(&s, "agent", &token("agent-pf-2"));

    // A port not in the list: kubectl listens (the pod may be forwarded to), the connection
    // to 9999 is refused: the forward ends, nothing reaches the pod's port.
    let mut child = port_forward(&s, &kc, &["pod/web-0", "20924:9999"], true);
    let c = connect_local(20924, &mut child);
    assert_eq!(round_trip(c, b"to a port nobody allowed"), b"");
    let out = ends_within(child, 15);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("lost connection to pod"), "{}", text(&out));
    let rec = wait_forwards(&s, "the refused port on record", |r| {
        r.iter().any(|x| x[1] == "denied")
    });
    let row = rec.iter().find(|x| x[1] == "denied").expect("denied");
    assert_eq!(row[2], "forward-to-web", "{row:?}");
    assert!(
        str_of(&row[3]).contains("port 9999 is not among the ports allowed (8080)"),
        "{row:?}"
    );
    assert!(
        s.standin.log.forwards().iter().all(|f| f.port != 9999),
        "a stream to 9999 reached the API server: {:?}",
        s.standin.log.forwards()
    );

    // Two ports, one not allowed: the allowed one works until a connection to the other.
    let mut child = port_forward(&s, &kc, &["pod/web-0", "20924:8080", "20925:9999"], true);
    let c = connect_local(20924, &mut child);
    assert_eq!(round_trip(c, b"allowed"), b"allowed");
    let c = connect_local(20925, &mut child);
    assert_eq!(round_trip(c, b"not allowed"), b"");
    let out = ends_within(child, 15);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lost connection to pod"),
        "{}",
        text(&out)
    );
    assert!(
        s.standin.log.forwards().iter().all(|f| f.port != 9999),
        "{:?}",
        s.standin.log.forwards()
    );
    wait_forwards(&s, "the second refusal on record", |r| {
        r.iter()
            .filter(|x| x[1] == "denied" && x[2] == "forward-to-web")
            .count()
            == 2
    });

    // No rule allows a forward to team-a/worker-0: refused at the request (kubectl's
    // WebSocket attempt and its SPDY retry), nothing upgraded upstream.
    let child = port_forward(
        &s,
        &kc,
        &["-n", "team-a", "pod/worker-0", "20924:8080"],
        true,
    );
    let out = ends_within(child, 20);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("error upgrading connection")
            && err.contains("refused by rule \"(no rule allows port-forwards)\""),
        "{}",
        text(&out)
    );
    // The deny rule wins over the allow rule that lists the port.
    let child = port_forward(&s, &kc, &["pod/api-0", "20924:8080"], true);
    let out = ends_within(child, 20);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("error upgrading connection")
            && err.contains("refused by rule \"no-forward-to-api\""),
        "{}",
        text(&out)
    );
    let upgraded: Vec<_> = s
        .standin
        .log
        .entries()
        .into_iter()
        .filter(|e| {
            e.path.contains("/worker-0/portforward") || e.path.contains("/api-0/portforward")
        })
        .collect();
    assert!(upgraded.is_empty(), "reached the API server: {upgraded:?}");
    let rec = wait_forwards(&s, "the request refusals on record", |r| {
        r.iter().any(|x| x[2] == "(no rule allows port-forwards)")
            && r.iter().any(|x| x[2] == "no-forward-to-api")
    });
    assert!(
        rec.iter()
            .filter(|x| x[2] == "no-forward-to-api")
            .all(|x| x[1] == "denied"),
        "{rec:#?}"
    );
}

/// `agentgate revoke` ends a live port-forward at once: the open connection through it is
/// cut, kubectl ends, the API server's side closes, the record says so.
#[test]
fn revoke_ends_a_live_port_forward() {
    let s = setup("kube-pf-revoke", 20927, 20928, RULES);
    s.standin
        .forward_port(POD_PORT, echo_server())
        .expect("forward port");
    let kc = kubeconfig(&s, "agent", &token("agent-pf-3"));
    let mut child = port_forward(&s, &kc, &["pod/web-0", "20929:8080"], true);
    let mut c = connect_local(20929, &mut child);
    c.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).expect("the echo");
    assert_eq!(&buf, b"ping");
    assert_eq!(s.standin.log.active_forward_sessions(), 1);
    let revoked = Command::new(agentgate_bin())
        .args([
            "revoke",
            "--identity",
            "agent-pf-3",
            "--reason",
            "forward no more",
        ])
        .arg("--admin-socket")
        .arg(s.gw.admin_socket())
        .output()
        .expect("revoke");
    assert!(revoked.status.success(), "{}", text(&revoked));
    let out = ends_within(child, 10);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lost connection to pod"),
        "{}",
        text(&out)
    );
    // The connection through the forward is cut (EOF or reset, never more echo).
    let _ = c.write_all(b"more");
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
    wait_until(
        "the API server's side closed",
        Duration::from_secs(10),
        || s.standin.log.active_forward_sessions() == 0,
    );
    let rec = wait_forwards(&s, "the cut forward on record", |r| {
        r.iter()
            .any(|x| str_of(&x[3]).contains("the session ended during the port-forward"))
    });
    let row = rec
        .iter()
        .find(|x| str_of(&x[3]).contains("the session ended"))
        .expect("row");
    assert!(str_of(&row[5]).contains("ports [8080]"), "{row:?}");
}
