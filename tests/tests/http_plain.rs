//! `protocol: http` end to end with real parts (issue 19): the real `curl` as the agent, in a
//! captured cgroup, dialling the service's own address with no proxy settings; the gateway
//! terminating its TLS with a leaf from the operator's CA; a real HTTPS service (Python's
//! standard library) upstream, verified in full. Checks what reached the service (the gateway's
//! credential, never the agent's token), what is on record, and the refusals.
//!
//! Ports: 20800–20819.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use agentgate_tests::{
    cgroup2_root, fixtures,
    http::{header_values, Ca, Upstream},
    mint, now, place, record_query, require_root, unique, Cgroup, Gateway, AUDIENCE, ISSUER,
};
use serde_json::Value;

const GATEWAY_CREDENTIAL: &str = "gateway-own-credential-7f3a";

struct Setup {
    gw: Gateway,
    agent: Cgroup,
    upstream: Upstream,
    agent_ca: Ca,
    _anchor: Cgroup,
    dir: PathBuf,
    port: u16,
}

/// A gateway listening on `listen`, an HTTPS service on 127.0.0.2:`port`, the agent's cgroup.
/// `rules` is appended to the policy's rules.
fn setup(tag: &str, listen: u16, port: u16, rules: &str) -> Setup {
    require_root();
    let _ = cgroup2_root();
    let dir = std::env::temp_dir().join(unique(&format!("{tag}-pki")));
    std::fs::create_dir_all(&dir).expect("dir");
    let agent_ca = Ca::new(&dir.join("agent"), "agentgate");
    let service_ca = Ca::new(&dir.join("service"), "service");
    let (cert, key) = service_ca.leaf("service", &["service.test"], &["127.0.0.2"]);
    let upstream = Upstream::start(
        format!("127.0.0.2:{port}").parse().expect("address"),
        Some((&cert, &key)),
    );
    let credential = dir.join("credential");
    std::fs::write(&credential, GATEWAY_CREDENTIAL).expect("credential");
    let name = unique(tag);
    let anchor = Cgroup::create(&format!("/{name}"));
    let agent = Cgroup::create(&format!("/{name}/job-1"));
    let policy = format!(
        "version: 2\ngateway:\n  listen_port: {listen}\n\
         identity_providers:\n  - name: test-idp\n    issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n\
         \x20   jwks: {{from: file, path: {jwks}}}\n    algorithms: [RS256]\n\
         workloads:\n  - name: agents\n    cgroup: \"/{name}/job-*\"\n    mode: host\n\
         \x20   token: {{from: credential}}\n\
         targets:\n  - name: service\n    protocol: http\n    addresses: [\"127.0.0.2\"]\n    ports: [{port}]\n\
         \x20   credential: {{from: file, path: {credential}}}\n\
         \x20   http:\n      tls: {{ca_cert: {ca_cert}, ca_key: {ca_key}, names: [service.test]}}\n\
         \x20     upstream_tls: {{mode: verify-full, ca_file: {service_ca}, server_name: service.test}}\n\
         rules:\n  - name: agents-to-service\n    when: {{workloads: [agents], groups: [agents]}}\n    targets: [service]\n{rules}",
        jwks = fixtures().join("test-jwks.json").display(),
        credential = credential.display(),
        ca_cert = agent_ca.cert.display(),
        ca_key = agent_ca.key.display(),
        service_ca = service_ca.cert.display(),
    );
    let gw = Gateway::start(tag, &policy);
    gw.wait_classified(&agent.rel);
    Setup {
        gw,
        agent,
        upstream,
        agent_ca,
        _anchor: anchor,
        dir,
        port,
    }
}

fn token(sub: &str) -> String {
    mint(sub, &["agents"], now(), now() + 600)
}

/// `curl` in the agent's cgroup: status code and body. `args` go before the URL.
fn curl(s: &Setup, token: Option<&str>, args: &[&str], path: &str) -> (u16, String) {
    let out = curl_output(s, &s.agent_ca.cert, token, args, path);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = code.trim().parse().unwrap_or_else(|_| {
        panic!(
            "curl printed no status ({text:?}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, body.to_string())
}

fn curl_output(s: &Setup, ca: &Path, token: Option<&str>, args: &[&str], path: &str) -> Output {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "--noproxy", "*", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("service.test:{}:127.0.0.2", s.port)])
        .args(["-w", "\n%{http_code}"]);
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    cmd.args(args)
        .arg(format!("https://service.test:{}{path}", s.port))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    place(&mut cmd, Some(&s.agent), None);
    cmd.output().expect("run curl")
}

/// The requests on record: (text, decision, rule, exit status, stdout).
fn requests(gw: &Gateway) -> Vec<Vec<Value>> {
    record_query(
        &gw.record_db(),
        "SELECT json_extract(body, '$.text'), json_extract(body, '$.decision'), \
         json_extract(body, '$.rule'), json_extract(body, '$.exit_status'), \
         json_extract(body, '$.output.stdout') \
         FROM audit_log WHERE kind = 'statement' ORDER BY seq",
    )
}

fn wait_requests(gw: &Gateway, n: usize) -> Vec<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = requests(gw);
        if r.len() >= n {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{n} requests not on record: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The agent's request reaches the service through the gateway: TLS from the gateway's leaf
/// (checked by curl against the agentgate CA), the service sees the gateway's credential and
/// never the agent's token, and the request and its answer are on record.
#[test]
fn requests_are_relayed_with_the_gateways_credential_and_recorded() {
    let s = setup("http-relay", 20800, 20801, "");
    let t = token("agent-http-1");
    let (code, body) = curl(&s, Some(&t), &[], "/echo/hello?x=1");
    assert_eq!(code, 200, "{body}");
    let echoed: Value = serde_json::from_str(&body).expect("JSON from the service");
    assert_eq!(echoed["path"], "/echo/hello?x=1");
    let (code, body) = curl(
        &s,
        Some(&t),
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            "{\"a\":1}",
        ],
        "/echo/post",
    );
    assert_eq!(code, 200, "{body}");
    let seen = s.upstream.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for r in &seen {
        assert_eq!(
            header_values(r, "authorization"),
            vec![format!("Bearer {GATEWAY_CREDENTIAL}")],
            "{r}"
        );
        assert!(
            !r.to_string().contains(&t),
            "the agent's token reached the service: {r}"
        );
    }
    assert_eq!(seen[1]["body"], "{\"a\":1}");
    // The service is asked by the name the policy gives it, whatever Host the agent wrote.
    let (code, _) = curl(&s, Some(&t), &["-H", "Host: intranet.other"], "/echo/host");
    assert_eq!(code, 200);
    let seen = s.upstream.requests();
    assert_eq!(
        header_values(&seen[2], "host"),
        vec![format!("service.test:{}", s.port)],
        "{}",
        seen[2]
    );
    let rec = wait_requests(&s.gw, 2);
    assert_eq!(rec[0][0], "GET /echo/hello?x=1", "{rec:?}");
    assert_eq!(rec[0][1], "allowed");
    assert_eq!(rec[0][3], 200);
    assert!(
        rec[0][4].as_str().unwrap_or("").contains("/echo/hello"),
        "{rec:?}"
    );
    assert_eq!(rec[1][0], "POST /echo/post\n{\"a\":1}", "{rec:?}");
    let sessions = record_query(
        &s.gw.record_db(),
        "SELECT json_extract(body, '$.protocol'), json_extract(body, '$.subject') FROM audit_log WHERE kind = 'session_open'",
    );
    assert_eq!(sessions.len(), 3, "one session per curl: {sessions:?}");
    assert_eq!(sessions[0][0], "http");
    assert_eq!(sessions[0][1], "agent-http-1");
}

/// No token, a forged token, a token that is not a bearer: refused before anything reaches the
/// service, with the reason in the answer.
#[test]
fn agents_without_a_valid_token_reach_nothing() {
    let s = setup("http-refuse", 20802, 20803, "");
    let (code, body) = curl(&s, None, &[], "/echo/none");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("agentgate:"), "{body}");
    let forged = {
        let key = Command::new("openssl")
            .args(["genrsa", "2048"])
            .output()
            .expect("openssl genrsa");
        agentgate_tests::mint_with_key(&key.stdout, "agent-forger", &["agents"], now(), now() + 600)
    };
    let (code, body) = curl(&s, Some(&forged), &[], "/echo/forged");
    assert_eq!(code, 401, "{body}");
    let (code, body) = curl(&s, None, &["-u", "user:password"], "/echo/basic");
    assert_eq!(code, 401, "{body}");
    assert!(
        s.upstream.requests().is_empty(),
        "{:?}",
        s.upstream.requests()
    );
}

/// The agent's client checks the gateway's certificate: a client that trusts another CA
/// refuses it (the leaf is not something any client accepts).
#[test]
fn the_leaf_is_signed_by_the_configured_ca_only() {
    let s = setup("http-leaf", 20804, 20805, "");
    let other = Ca::new(&s.dir.join("other"), "other");
    let t = token("agent-http-2");
    let out = curl_output(&s, &other.cert, Some(&t), &[], "/echo/x");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("certificate") || stderr.contains("SSL"),
        "curl with another CA: {stderr}"
    );
    assert!(s.upstream.requests().is_empty());
    // The same request with the configured CA is accepted: the refusal above is the CA's.
    let (code, _) = curl(&s, Some(&t), &[], "/echo/ok");
    assert_eq!(code, 200);
}

/// A large answer streams through (chunked, not held whole) and the record keeps its first
/// bytes and the count.
#[test]
fn large_answers_stream_and_the_record_keeps_the_count() {
    let s = setup("http-large", 20806, 20807, "");
    let t = token("agent-http-3");
    let n = 50 << 20;
    let (code, body) = curl(&s, Some(&t), &[], &format!("/bytes/{n}"));
    assert_eq!(code, 200);
    assert_eq!(body.len(), n);
    let bytes = record_query(
        &s.gw.record_db(),
        "SELECT json_extract(body, '$.output.bytes'), json_extract(body, '$.output.cut') FROM audit_log WHERE kind = 'statement'",
    );
    assert_eq!(bytes[0][0], n as u64, "{bytes:?}");
    assert_eq!(bytes[0][1], 1, "cut: {bytes:?}");
}

const PLAIN_RULES: &str = "  - name: no-admin-deletes
    effect: deny
    targets: [service]
    requests: {methods: [DELETE], paths: [\"/admin/**\"]}
";

/// A method/path deny rule refuses the request before the service sees it, however the path is
/// spelled (dot segments, doubled slashes, percent-encoding); other requests pass.
#[test]
fn path_rules_hold_however_the_path_is_spelled() {
    let s = setup("http-rules", 20808, 20809, PLAIN_RULES);
    let t = token("agent-http-4");
    for path in [
        "/admin/users/7",
        "/public/../admin/users/7",
        "/admin//users/7",
        "/%61dmin/users/7",
        "/ADMIN/users/7",
    ] {
        let (code, body) = curl(&s, Some(&t), &["-X", "DELETE", "--path-as-is"], path);
        assert_ne!(code, 200, "{path}: {body}");
        assert!(code == 403 || code == 400, "{path}: {code} {body}");
    }
    let (code, body) = curl(&s, Some(&t), &["-X", "DELETE"], "/public/users/7");
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl(&s, Some(&t), &[], "/admin/users/7");
    assert_eq!(code, 200, "a GET is not a DELETE: {body}");
    let seen: Vec<String> = s
        .upstream
        .requests()
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["method"].as_str().unwrap_or(""),
                r["path"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec!["DELETE /public/users/7", "GET /admin/users/7"],
        "{seen:?}"
    );
    let rec = wait_requests(&s.gw, 7);
    let denied = rec.iter().filter(|r| r[1] == "denied").count();
    assert_eq!(denied, 5, "{rec:?}");
}

/// A Python agent (the standard library's HTTPS client, as agent tools use it) through the
/// gateway, verifying the leaf against the agentgate CA.
#[test]
fn a_python_client_goes_through_unchanged() {
    let s = setup("http-python", 20810, 20811, "");
    let t = token("agent-http-5");
    let script = r#"
import json, ssl, sys, urllib.request
ca, port, token = sys.argv[1:]
ctx = ssl.create_default_context(cafile=ca)
req = urllib.request.Request(f"https://127.0.0.2:{port}/echo/py", data=b'{"k": 1}',
    headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"}, method="PUT")
with urllib.request.urlopen(req, context=ctx, timeout=20) as r:
    print(json.dumps({"status": r.status, "body": json.loads(r.read())}))
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script])
        .arg(&s.agent_ca.cert)
        .arg(s.port.to_string())
        .arg(&t)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    place(&mut cmd, Some(&s.agent), None);
    let out = cmd.output().expect("python");
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("python: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["body"]["method"], "PUT", "{v}");
    assert_eq!(v["body"]["body"], "{\"k\": 1}", "{v}");
    let rec = wait_requests(&s.gw, 1);
    assert_eq!(rec[0][0], "PUT /echo/py\n{\"k\": 1}", "{rec:?}");
}
