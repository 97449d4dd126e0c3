//! Attacks on the HTTP / Kubernetes handler (issue 19), each with a real client: raw bytes
//! over TLS from Python's standard library (request smuggling, pipelining, duplicate and
//! odd-case headers, absolute-form targets, `Expect`, HTTP/1.0 keep-alive, smuggled upgrades,
//! a token swap, a slow client, a held request abandoned), and the real kubectl (disguised
//! exec commands). Every test asserts that a control holds: login, the gateway's credential
//! and impersonation only, the rules, Secrets masked in every answer and on record. The
//! stand-in API server logs every request it receives, so "never reached the target" is
//! checked where it matters, not inferred from the agent's answer.
//!
//! Ports: 20900–20919.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use agentgate_tests::{
    agentgate_bin, cgroup2_root, fixtures,
    http::{header_values, Ca, Upstream},
    kube::{token_fingerprint, KubeStandin, StandinOptions},
    mint, now, place, record_query, require_root, unique, wait_until, Cgroup, Gateway, AUDIENCE,
    ISSUER,
};
use base64::Engine;
use serde_json::{json, Value};

/// The value the seed's Secret `default/db-credentials` holds (`password`).
const SEEDED_PASSWORD: &str = "s3cr3t-hunter2";
/// Its base64 (as `data` carries it), without the padding.
const SEEDED_B64: &str = "czNjcjN0LWh1bnRlcjI";

struct Kube {
    gw: Gateway,
    agent: Cgroup,
    standin: KubeStandin,
    agent_ca: Ca,
    _anchor: Cgroup,
    dir: PathBuf,
    port: u16,
    policy: String,
}

/// A stand-in API server on 127.0.0.2:`port`, a gateway on `listen` with a `kubernetes`
/// target for it (`http_extra`: more lines of the target's `http:`), the agent's cgroup.
fn kube(tag: &str, listen: u16, port: u16, http_extra: &str, rules: &str) -> Kube {
    require_root();
    let dir = std::env::temp_dir().join(unique(&format!("{tag}-pki")));
    std::fs::create_dir_all(&dir).expect("dir");
    let standin = KubeStandin::start(StandinOptions {
        listen: format!("127.0.0.2:{port}").parse().expect("address"),
        extra_names: vec!["127.0.0.2".into()],
        ..Default::default()
    })
    .expect("stand-in starts");
    let agent_ca = Ca::new(&dir.join("agent"), "agentgate");
    let credential = dir.join("gateway-token");
    std::fs::write(&credential, &standin.gateway_token).expect("credential");
    let name = unique(tag);
    let anchor = Cgroup::create(&format!("/{name}"));
    let agent = Cgroup::create(&format!("/{name}/job-1"));
    let policy = format!(
        "version: 2\ngateway:\n  listen_port: {listen}\n\
         identity_providers:\n  - name: test-idp\n    issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n\
         \x20   jwks: {{from: file, path: {jwks}}}\n    algorithms: [RS256]\n\
         workloads:\n  - name: agents\n    cgroup: \"/{name}/job-*\"\n    mode: host\n\
         \x20   token: {{from: credential}}\n\
         targets:\n  - name: cluster-api\n    protocol: http\n    addresses: [\"127.0.0.2\"]\n    ports: [{port}]\n\
         \x20   credential: {{from: file, path: {credential}}}\n\
         \x20   http:\n      profile: kubernetes\n\
         \x20     tls: {{ca_cert: {ca_cert}, ca_key: {ca_key}, names: [kubernetes, kubernetes.default, kubernetes.default.svc]}}\n\
         \x20     upstream_tls: {{mode: verify-full, ca_file: {standin_ca}, server_name: kubernetes}}\n{http_extra}\
         rules:\n  - name: agents-to-cluster\n    when: {{workloads: [agents], groups: [agents]}}\n    targets: [cluster-api]\n{rules}",
        jwks = fixtures().join("test-jwks.json").display(),
        credential = credential.display(),
        ca_cert = agent_ca.cert.display(),
        ca_key = agent_ca.key.display(),
        standin_ca = standin.ca_path.display(),
    );
    let gw = Gateway::start(tag, &policy);
    gw.wait_classified(&agent.rel);
    Kube {
        gw,
        agent,
        standin,
        agent_ca,
        _anchor: anchor,
        dir,
        port,
        policy,
    }
}

fn token(sub: &str) -> String {
    mint(sub, &["agents"], now(), now() + 600)
}

/// What the raw client does: send each segment (then sleep, or wait for a file to exist),
/// then read until the connection closes or `quiet` seconds pass with nothing.
#[derive(Default)]
struct Raw {
    segments: Vec<Segment>,
    quiet: f64,
    /// Close without reading anything more after the last segment.
    no_read: bool,
    /// The address dialled (default 127.0.0.2).
    host: Option<&'static str>,
}

#[derive(Default)]
struct Segment {
    data: Vec<u8>,
    sleep: f64,
    wait_file: Option<PathBuf>,
}

impl Raw {
    fn send(data: impl Into<Vec<u8>>) -> Self {
        Raw {
            segments: vec![Segment {
                data: data.into(),
                ..Default::default()
            }],
            quiet: 3.0,
            no_read: false,
            host: None,
        }
    }
}

/// What came back: every byte (Latin-1 in a `String`), and whether the gateway closed.
struct Got {
    data: String,
    closed: bool,
}

impl Got {
    /// The status codes of every response, in order.
    fn statuses(&self) -> Vec<u16> {
        let mut out = Vec::new();
        let mut rest = self.data.as_str();
        while let Some(i) = rest.find("HTTP/1.") {
            let line = &rest[i..];
            if let Some(code) = line.get(9..12).and_then(|c| c.parse().ok()) {
                out.push(code);
            }
            rest = &rest[i + 7..];
        }
        out
    }
}

const RAW_CLIENT: &str = r#"
import base64, json, os, socket, ssl, sys, time
spec = json.load(open(sys.argv[1]))
s = socket.create_connection((spec["host"], spec["port"]), timeout=30)
if spec.get("ca"):
    ctx = ssl.create_default_context(cafile=spec["ca"])
    s = ctx.wrap_socket(s, server_hostname=spec["sni"])
out = b""
closed = False
def drain(quiet):
    global out, closed
    s.settimeout(quiet)
    while True:
        try:
            b = s.recv(65536)
        except (socket.timeout, TimeoutError):
            return
        except OSError:
            closed = True
            return
        if not b:
            closed = True
            return
        out += b
for seg in spec["segments"]:
    data = base64.b64decode(seg["data"])
    if data and not closed:
        try:
            s.sendall(data)
        except OSError:
            closed = True
    if seg.get("sleep"):
        time.sleep(seg["sleep"])
    if seg.get("wait_file"):
        while not os.path.exists(seg["wait_file"]):
            time.sleep(0.05)
if not spec.get("no_read") and not closed:
    drain(spec["quiet"])
s.close()
print(json.dumps({"data": out.decode("latin-1"), "closed": closed}))
"#;

/// Runs the raw client in the agent's cgroup against 127.0.0.2:`port` (TLS with `ca`).
fn raw(agent: &Cgroup, dir: &Path, port: u16, ca: Option<&Path>, sni: &str, spec: Raw) -> Got {
    let script = dir.join("raw_client.py");
    if !script.exists() {
        std::fs::write(&script, RAW_CLIENT).expect("raw client");
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let spec = json!({
        "host": spec.host.unwrap_or("127.0.0.2"),
        "port": port,
        "ca": ca.map(|c| c.display().to_string()),
        "sni": sni,
        "quiet": spec.quiet,
        "no_read": spec.no_read,
        "segments": spec.segments.iter().map(|s| json!({
            "data": b64.encode(&s.data),
            "sleep": s.sleep,
            "wait_file": s.wait_file.as_ref().map(|p| p.display().to_string()),
        })).collect::<Vec<_>>(),
    });
    let spec_file = dir.join(format!("{}.json", unique("raw")));
    std::fs::write(&spec_file, spec.to_string()).expect("spec");
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .arg(&spec_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    place(&mut cmd, Some(agent), None);
    let out = cmd.output().expect("run the raw client");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "raw client: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Got {
        data: v["data"].as_str().unwrap_or("").to_string(),
        closed: v["closed"].as_bool().unwrap_or(false),
    }
}

impl Kube {
    fn raw(&self, spec: Raw) -> Got {
        raw(
            &self.agent,
            &self.dir,
            self.port,
            Some(&self.agent_ca.cert),
            "kubernetes",
            spec,
        )
    }

    /// One request's head: `method target`, the agent's token, `extra` header lines.
    fn head(&self, method_target: &str, token: &str, extra: &str) -> String {
        format!(
            "{method_target} HTTP/1.1\r\nHost: kubernetes:{}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\n{extra}\r\n",
            self.port
        )
    }

    /// Every record body (statements, intents, session records) as one text.
    fn record_text(&self) -> String {
        record_query(
            &self.gw.record_db(),
            "SELECT body FROM audit_log ORDER BY seq",
        )
        .into_iter()
        .map(|r| r[0].to_string())
        .collect::<Vec<_>>()
        .join("\n")
    }

    /// Puts `text` in force as the policy and waits until the gateway says it is.
    fn reload(&self, text: &str) {
        let live = self.gw.policy_dir().join("policy.yaml");
        let before = self.gw.count("policy_applied");
        let tmp = live.with_extension("yaml.tmp");
        std::fs::write(&tmp, text).expect("policy");
        std::fs::rename(&tmp, &live).expect("policy in place");
        self.gw.wait_for(
            Duration::from_secs(15),
            |e| e["event"] == "policy_applied",
            before,
        );
    }

    fn approvals(&self, args: &[&str]) -> Output {
        Command::new(agentgate_bin())
            .arg("approvals")
            .args(args)
            .arg("--admin-socket")
            .arg(self.gw.admin_socket())
            .output()
            .expect("run agentgate approvals")
    }

    fn pending(&self) -> Vec<Value> {
        let out = self.approvals(&["list", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["requests"].as_array().cloned().unwrap_or_default()
    }

    fn kubectl(&self, kc: &Path, args: &[&str]) -> Output {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(kc)
            .arg("--cache-dir")
            .arg(self.dir.join("kube-cache"))
            .arg("--request-timeout=20s")
            .args(args)
            .env("HOME", &self.dir)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        place(&mut cmd, Some(&self.agent), None);
        cmd.output().expect("run kubectl")
    }

    fn kubeconfig(&self, token: &str) -> PathBuf {
        let path = self.dir.join(format!("{}.kubeconfig", unique("kc")));
        agentgate_tests::kube::write_kubeconfig(
            &path,
            &format!("https://127.0.0.2:{}", self.port),
            &self.agent_ca.cert,
            token,
        )
        .expect("kubeconfig");
        path
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const NO_POD_DELETES: &str = "  - name: no-pod-deletes
    effect: deny
    targets: [cluster-api]
    requests: {verbs: [delete, deletecollection], resources: [pods]}
";

fn no_delete_reached(k: &Kube) {
    let entries = k.standin.log.entries();
    assert!(
        entries.iter().all(|e| e.method != "DELETE"),
        "a DELETE reached the API server: {entries:?}"
    );
    assert!(
        k.standin.get("", "pods", "default", "web-0").is_some(),
        "the pod was deleted"
    );
}

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

const RBAC_APPROVAL: &str = "  - name: rbac-needs-approval
    targets: [cluster-api]
    requests: {verbs: [create], resources: [\"rolebindings.rbac.authorization.k8s.io\"]}
    approval: {approvers: [oncall], timeout_secs: 60}
";

fn rolebinding(name: &str) -> String {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
        "subjects": [{"kind": "User", "name": "agent", "apiGroup": "rbac.authorization.k8s.io"}]})
    .to_string()
}

/// A held request whose agent hung up, one whose agent was revoked while it was held, and one
/// under a reload that turned its approval rule into a deny: none reaches the API server,
/// however approvers decide afterwards.
#[test]
fn an_abandoned_revoked_or_reloaded_held_request_is_never_forwarded() {
    let k = kube("att-held", 20916, 20917, "", RBAC_APPROVAL);
    for (who, how) in [
        ("agent-att-9", "hang up"),
        ("agent-att-9r", "revoke"),
        ("agent-att-9p", "reload"),
    ] {
        let t = token(who);
        let body = rolebinding(who);
        let head = k.head(
            "POST /apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
            &t,
            &format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ),
        );
        let go = k.dir.join(format!("{who}.go"));
        let spec = Raw {
            segments: vec![Segment {
                data: format!("{head}{body}").into_bytes(),
                wait_file: Some(go.clone()),
                ..Default::default()
            }],
            quiet: 10.0,
            no_read: how == "hang up",
            host: None,
        };
        std::thread::scope(|scope| {
            let client = scope.spawn(|| k.raw(spec));
            let held = |p: &Value| p["statement"].as_str().is_some_and(|s| s.contains(who));
            wait_until("the request held", Duration::from_secs(20), || {
                k.pending().iter().any(held)
            });
            let id = k
                .pending()
                .into_iter()
                .find(|p| held(p))
                .and_then(|p| p["id"].as_str().map(str::to_string))
                .expect("pending id");
            match how {
                "revoke" => {
                    let out = Command::new(agentgate_bin())
                        .args(["revoke", "--identity", who, "--reason", "attack test"])
                        .arg("--admin-socket")
                        .arg(k.gw.admin_socket())
                        .output()
                        .expect("revoke");
                    assert!(out.status.success(), "{}", text(&out));
                    std::thread::sleep(Duration::from_millis(500));
                }
                "reload" => {
                    // The same request is now denied outright; people approve the old ask.
                    k.reload(&k.policy.replace(
                        RBAC_APPROVAL,
                        &RBAC_APPROVAL.replace(
                            "    approval: {approvers: [oncall], timeout_secs: 60}\n",
                            "    effect: deny\n",
                        ),
                    ));
                    let approved = k.approvals(&["approve", &id]);
                    eprintln!("{who}: approved after the reload: {}", text(&approved));
                }
                _ => {}
            }
            std::fs::write(&go, "").expect("go");
            let got = client.join().expect("client");
            // Revoked: the session ends, the connection with it (no answer, or a refusal).
            // Reloaded: refused by the rule now in force.
            match how {
                "revoke" => assert!(
                    got.closed && !got.statuses().iter().any(|c| *c < 400),
                    "{who}: {}",
                    got.data
                ),
                "reload" => {
                    assert_eq!(got.statuses(), vec![403], "{who}: {}", got.data);
                    assert!(got.data.contains("rbac-needs-approval"), "{}", got.data);
                }
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(1000));
            if how != "reload" {
                // Withdrawn when its agent went: approving it is refused.
                let approved = k.approvals(&["approve", &id]);
                assert!(!approved.status.success(), "{who}: {}", text(&approved));
                assert!(
                    String::from_utf8_lossy(&approved.stderr).contains("cancelled"),
                    "{who}: {}",
                    text(&approved)
                );
                std::thread::sleep(Duration::from_millis(1500));
            }
            let entries = k.standin.log.entries();
            // (The gateway's own GET of the object, for the approvers' diff, is not it.)
            let sent = entries
                .iter()
                .any(|e| e.method != "GET" && e.path.contains("rolebindings"));
            assert!(
                !sent,
                "{who} ({how}): the held request reached the API server: {entries:?}"
            );
            assert!(k
                .standin
                .get("rbac.authorization.k8s.io", "rolebindings", "default", who)
                .is_none());
        });
    }

    // The approvers' diff reads the object as it is now with the gateway's own credential (no
    // impersonation), at a path made from the name in the agent's body. A name that is not one
    // path segment to the API server (an encoded `/` or `.`, a `?`) must not point that read
    // anywhere else: a Secret read with the gateway's credential and put before approvers, say.
    k.reload(&k.policy);
    let t = token("agent-att-9n");
    let before = k.standin.log.len();
    for name in [
        "x%2F..%2F..%2F..%2F..%2F..%2F..%2Fapi%2Fv1%2Fnamespaces%2Fdefault%2Fsecrets%2Fdb-credentials",
        "%2e%2e",
        "y?watch=1",
        "z#frag",
        "ok-9n",
    ] {
        let mut body: Value = serde_json::from_str(&rolebinding("n")).expect("json");
        body["metadata"]["name"] = Value::String(name.into());
        let body = body.to_string();
        let head = k.head(
            "POST /apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
            &t,
            &format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()),
        );
        // Held; the agent leaves after a moment (the read is made before the hold).
        let _ = k.raw(Raw {
            segments: vec![Segment {
                data: format!("{head}{body}").into_bytes(),
                sleep: 2.0,
                ..Default::default()
            }],
            quiet: 0.1,
            no_read: true,
            host: None,
        });
    }
    let reads: Vec<_> = k.standin.log.entries().into_iter().skip(before).collect();
    // (The plain name shows the diff's read is made: it is the only one.)
    assert!(!reads.is_empty(), "the approvers' diff read nothing");
    for e in &reads {
        assert!(
            e.path == "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings/ok-9n"
                && e.query.is_empty(),
            "the gateway's own read went to a path the name made: {} {}?{}",
            e.method,
            e.path,
            e.query
        );
    }
}

/// (In `upgrades_are_refused_except_for_exec`.) A client that dawdles over its first request (or its TLS handshake) is dropped at the
/// login deadline; nothing reaches the API server.
fn a_slow_client_is_dropped_at_the_login_deadline(k: &Kube) {
    let t = token("agent-att-10");
    let head = k.head("GET /api/v1/namespaces/default/pods", &t, "");
    let (a, b) = head.split_at(30);
    let got = k.raw(Raw {
        segments: vec![
            Segment {
                data: a.as_bytes().to_vec(),
                sleep: 4.0,
                ..Default::default()
            },
            Segment {
                data: b.as_bytes().to_vec(),
                ..Default::default()
            },
        ],
        quiet: 3.0,
        no_read: false,
        host: None,
    });
    assert!(
        !got.statuses().contains(&200),
        "the slow request was served: {}",
        got.data
    );
    assert!(got.closed, "the connection is still open: {}", got.data);
    // No TLS handshake at all: closed at the deadline too.
    let started = std::time::Instant::now();
    let got = raw(
        &k.agent,
        &k.dir,
        k.port,
        None,
        "",
        Raw {
            segments: vec![Segment::default()],
            quiet: 8.0,
            no_read: false,
            host: None,
        },
    );
    assert!(
        got.closed && started.elapsed() < Duration::from_secs(7),
        "{}",
        got.data
    );
    assert!(k.standin.log.is_empty(), "{:?}", k.standin.log.entries());
}

/// A plain HTTP target. `upstream_identity: pass-through`: the agent's verified token goes
/// on, and nothing else: a second `Authorization` header (which a server may read instead of
/// the first) is refused, never forwarded. And an approval given (deny-and-retry) for a request
/// with a body that is not text covers that body only: another body of the same length is not
/// "the identical request".
#[test]
fn plain_http_pass_through_and_opaque_bodies() {
    require_root();
    let _ = cgroup2_root();
    let (listen, port) = (20918, 20919);
    let tag = "att-passthrough";
    let dir = std::env::temp_dir().join(unique(&format!("{tag}-pki")));
    std::fs::create_dir_all(&dir).expect("dir");
    let agent_ca = Ca::new(&dir.join("agent"), "agentgate");
    let service_ca = Ca::new(&dir.join("service"), "service");
    let (cert, key) = service_ca.leaf("service", &["service.test"], &["127.0.0.2"]);
    let upstream = Upstream::start(
        format!("127.0.0.2:{port}").parse().expect("address"),
        Some((&cert, &key)),
    );
    let name = unique(tag);
    let _anchor = Cgroup::create(&format!("/{name}"));
    let agent = Cgroup::create(&format!("/{name}/job-1"));
    let policy = format!(
        "version: 2\ngateway:\n  listen_port: {listen}\n\
         identity_providers:\n  - name: test-idp\n    issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n\
         \x20   jwks: {{from: file, path: {jwks}}}\n    algorithms: [RS256]\n\
         workloads:\n  - name: agents\n    cgroup: \"/{name}/job-*\"\n    mode: host\n\
         \x20   token: {{from: credential}}\n\
         targets:\n  - name: service\n    protocol: http\n    addresses: [\"127.0.0.2\"]\n    ports: [{port}]\n\
         \x20   http:\n      upstream_identity: pass-through\n\
         \x20     tls: {{ca_cert: {ca_cert}, ca_key: {ca_key}, names: [service.test]}}\n\
         \x20     upstream_tls: {{mode: verify-full, ca_file: {service_ca}, server_name: service.test}}\n\
         \x20 - name: static\n    protocol: http\n    addresses: [\"127.0.0.3\"]\n    ports: [{port}]\n\
         \x20   http: {{upstream_tls: {{mode: disable}}}}\n\
         rules:\n  - name: agents-to-service\n    when: {{workloads: [agents], groups: [agents]}}\n    targets: [service, static]\n\
         \x20 - name: uploads-need-approval\n    targets: [service]\n    requests: {{methods: [POST], paths: [\"/upload*\"]}}\n\
         \x20   approval: {{approvers: [oncall], timeout_secs: 60, mode: deny_and_retry}}\n\
         \x20 - name: mask-pii\n    targets: [static]\n    mask: {{detectors: [email]}}\n",
        jwks = fixtures().join("test-jwks.json").display(),
        ca_cert = agent_ca.cert.display(),
        ca_key = agent_ca.key.display(),
        service_ca = service_ca.cert.display(),
    );
    let nginx = Nginx::start(&dir, &format!("127.0.0.3:{port}"));
    let gw = Gateway::start(tag, &policy);
    gw.wait_classified(&agent.rel);
    let t = token("agent-att-11");
    let forged = "forged-token-never-verified";
    let req = |extra: &str| {
        format!(
            "GET /hello HTTP/1.1\r\nHost: service.test\r\nAuthorization: Bearer {t}\r\n{extra}\r\n"
        )
    };
    let send = |data: String| {
        raw(
            &agent,
            &dir,
            port,
            Some(&agent_ca.cert),
            "service.test",
            Raw::send(data),
        )
    };
    // The plain case goes through with the agent's own token.
    let got = send(req(""));
    assert_eq!(got.statuses(), vec![200], "{}", got.data);
    // A second Authorization header, on the first request and on a later one.
    let got = send(req(&format!("Authorization: Bearer {forged}\r\n")));
    assert!(got.statuses().iter().all(|c| *c >= 400), "{}", got.data);
    let got = send(format!(
        "{}{}",
        req(""),
        req(&format!("authorization: Bearer {forged}\r\n"))
    ));
    assert_eq!(got.statuses().first(), Some(&200), "{}", got.data);
    assert!(
        got.statuses().iter().skip(1).all(|c| *c >= 400),
        "{}",
        got.data
    );

    // Deny-and-retry with a body that is not text: approved for body A, retried with body B.
    let upload = |body: &[u8]| {
        let mut r = format!(
            "POST /upload HTTP/1.1\r\nHost: service.test\r\nAuthorization: Bearer {t}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        raw(
            &agent,
            &dir,
            port,
            Some(&agent_ca.cert),
            "service.test",
            Raw::send(r),
        )
    };
    let (body_a, body_b) = (b"\xff\xfeBODY-A-0123456789", b"\xff\xfeBODY-B-0123456789");
    let got = upload(body_a);
    assert_eq!(got.statuses(), vec![403], "{}", got.data);
    let id = got
        .data
        .split("request ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .filter(|id| id.starts_with("ar-"))
        .unwrap_or_else(|| panic!("no request id: {}", got.data))
        .to_string();
    let approved = Command::new(agentgate_bin())
        .args(["approvals", "approve", &id])
        .arg("--admin-socket")
        .arg(gw.admin_socket())
        .output()
        .expect("approve");
    assert!(approved.status.success(), "{}", text(&approved));
    let got = upload(body_b);
    assert_eq!(
        got.statuses(),
        vec![403],
        "another body passed as the approved one: {}",
        got.data
    );
    let got = upload(body_a);
    assert_eq!(got.statuses(), vec![200], "the approved body: {}", got.data);

    let seen = upstream.requests();
    assert!(
        !seen
            .iter()
            .any(|r| r["body"].as_str().is_some_and(|b| b.contains("BODY-B"))),
        "a body nobody approved reached the service: {seen:?}"
    );
    assert!(!seen.is_empty());
    for r in &seen {
        assert_eq!(
            header_values(r, "authorization"),
            vec![format!("Bearer {t}")],
            "the service got an Authorization the gateway never verified: {r}"
        );
    }

    // Detector masking against byte ranges: nginx serves a file with an e-mail address in it;
    // whole, the address is masked. Asked for in pieces (`Range`), no piece holds a whole
    // address for the detector to find, and the agent puts them together.
    let whole = |extra: &str| {
        raw(
            &agent,
            &dir,
            port,
            None,
            "",
            Raw {
                host: Some("127.0.0.3"),
                ..Raw::send(format!(
                    "GET /contacts.txt HTTP/1.1\r\nHost: static\r\nAuthorization: Bearer {t}\r\n{extra}\r\n"
                ))
            },
        )
    };
    let got = whole("");
    assert_eq!(got.statuses(), vec![200], "{}", got.data);
    assert!(!got.data.contains(nginx.email), "{}", got.data);
    let mut pieces = String::new();
    // The address is bytes 21–44, its `@` byte 33: "alice.attack@exam" and "ple.com".
    for range in ["bytes=0-37", "bytes=38-99"] {
        let got = whole(&format!("Range: {range}\r\n"));
        if let Some((_, body)) = got.data.split_once("\r\n\r\n") {
            if got.statuses() == vec![206] {
                pieces.push_str(&dechunk(body));
            }
        }
    }
    assert!(
        !pieces.contains(nginx.email),
        "the address put together from byte ranges: {pieces:?}"
    );
    drop(gw);
}

/// A chunked body's data (the whole body when it is not chunked).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_string();
        };
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            return body.to_string();
        };
        if n == 0 || after.len() < n {
            return out;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
}

/// nginx serving a directory with one file that holds an e-mail address; stopped on drop.
struct Nginx {
    child: std::process::Child,
    email: &'static str,
}

impl Nginx {
    fn start(dir: &Path, listen: &str) -> Self {
        let email = "alice.attack@example.com";
        let www = dir.join("www");
        std::fs::create_dir_all(&www).expect("www");
        std::fs::write(
            www.join("contacts.txt"),
            format!("name: alice\ncontact: {email}\nend\n"),
        )
        .expect("file");
        let conf = dir.join("nginx.conf");
        let d = dir.display();
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nuser root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
                 events {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/cb;\n  proxy_temp_path {d}/pt;\n\
                 fastcgi_temp_path {d}/ft;\n  uwsgi_temp_path {d}/ut;\n  scgi_temp_path {d}/st;\n\
                 server {{\n    listen {listen};\n    root {www};\n  }}\n}}\n",
                www = www.display()
            ),
        )
        .expect("nginx.conf");
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nginx");
        wait_until("nginx listening", Duration::from_secs(10), || {
            std::net::TcpStream::connect(listen).is_ok()
        });
        Nginx { child, email }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
