//! What the attack tests share: a gateway with a Kubernetes target before the stand-in, a raw
//! TLS client in Python that writes requests byte for byte, and the checks they repeat.

#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use agentgate_tests::{
    agentgate_bin, fixtures,
    http::Ca,
    kube::{KubeStandin, StandinOptions},
    mint, now, place, record_query, require_root, unique, Cgroup, Gateway, AUDIENCE, ISSUER,
};
use base64::Engine;
use serde_json::{json, Value};

/// The value the seed's Secret `default/db-credentials` holds (`password`).
pub const SEEDED_PASSWORD: &str = "s3cr3t-hunter2";
/// Its base64 (as `data` carries it), without the padding.
pub const SEEDED_B64: &str = "czNjcjN0LWh1bnRlcjI";

pub struct Kube {
    pub gw: Gateway,
    pub agent: Cgroup,
    pub standin: KubeStandin,
    pub agent_ca: Ca,
    pub _anchor: Cgroup,
    pub dir: PathBuf,
    pub port: u16,
    pub policy: String,
}

/// A stand-in API server on 127.0.0.2:`port`, a gateway on `listen` with a `kubernetes`
/// target for it (`http_extra`: more lines of the target's `http:`), the agent's cgroup.
pub fn kube(tag: &str, listen: u16, port: u16, http_extra: &str, rules: &str) -> Kube {
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

pub fn token(sub: &str) -> String {
    mint(sub, &["agents"], now(), now() + 600)
}

/// What the raw client does: send each segment (then sleep, or wait for a file to exist),
/// then read until the connection closes or `quiet` seconds pass with nothing.
#[derive(Default)]
pub struct Raw {
    pub segments: Vec<Segment>,
    pub quiet: f64,
    /// Close without reading anything more after the last segment.
    pub no_read: bool,
    /// The address dialled (default 127.0.0.2).
    pub host: Option<&'static str>,
}

#[derive(Default)]
pub struct Segment {
    pub data: Vec<u8>,
    pub sleep: f64,
    pub wait_file: Option<PathBuf>,
}

impl Raw {
    pub fn send(data: impl Into<Vec<u8>>) -> Self {
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
pub struct Got {
    pub data: String,
    pub closed: bool,
}

impl Got {
    /// The status codes of every response, in order.
    pub fn statuses(&self) -> Vec<u16> {
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

pub const RAW_CLIENT: &str = r#"
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
pub fn raw(agent: &Cgroup, dir: &Path, port: u16, ca: Option<&Path>, sni: &str, spec: Raw) -> Got {
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
    pub fn raw(&self, spec: Raw) -> Got {
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
    pub fn head(&self, method_target: &str, token: &str, extra: &str) -> String {
        format!(
            "{method_target} HTTP/1.1\r\nHost: kubernetes:{}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\n{extra}\r\n",
            self.port
        )
    }

    /// Every record body (statements, intents, session records) as one text.
    pub fn record_text(&self) -> String {
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
    pub fn reload(&self, text: &str) {
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

    pub fn approvals(&self, args: &[&str]) -> Output {
        Command::new(agentgate_bin())
            .arg("approvals")
            .args(args)
            .arg("--admin-socket")
            .arg(self.gw.admin_socket())
            .output()
            .expect("run agentgate approvals")
    }

    pub fn pending(&self) -> Vec<Value> {
        let out = self.approvals(&["list", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["requests"].as_array().cloned().unwrap_or_default()
    }

    pub fn kubectl(&self, kc: &Path, args: &[&str]) -> Output {
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

    pub fn kubeconfig(&self, token: &str) -> PathBuf {
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

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub const NO_POD_DELETES: &str = "  - name: no-pod-deletes
    effect: deny
    targets: [cluster-api]
    requests: {verbs: [delete, deletecollection], resources: [pods]}
";

pub fn no_delete_reached(k: &Kube) {
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

/// (In `upgrades_are_refused_except_for_exec`.) A client that dawdles over its first request (or its TLS handshake) is dropped at the
/// login deadline; nothing reaches the API server.
pub fn a_slow_client_is_dropped_at_the_login_deadline(k: &Kube) {
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
