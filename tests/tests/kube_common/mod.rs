//! What the Kubernetes tests share: a stand-in API server, a gateway with a `kubernetes`
//! target for it, the agent's cgroup, and kubectl run as the agent.

#![allow(dead_code)]

use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use agentgate_tests::{
    fixtures,
    http::Ca,
    kube::{KubeStandin, StandinOptions},
    mint, now, place, record_query, require_root, unique, Cgroup, Gateway, AUDIENCE, ISSUER,
};
use serde_json::Value;

/// The value the seed's Secret `default/db-credentials` holds (`password`).
pub const SEEDED_PASSWORD: &str = "s3cr3t-hunter2";

pub struct Setup {
    pub gw: Gateway,
    pub agent: Cgroup,
    pub standin: KubeStandin,
    pub agent_ca: Ca,
    _anchor: Cgroup,
    pub dir: PathBuf,
    pub port: u16,
}

/// A stand-in API server on 127.0.0.2:`port`, a gateway on `listen` with a `kubernetes`
/// target for it, and the agent's cgroup. `rules` is appended to the policy's rules.
pub fn setup(tag: &str, listen: u16, port: u16, rules: &str) -> Setup {
    setup_with(tag, listen, port, rules, "")
}

/// As `setup`, with `workloads` appended to the policy's workloads.
pub fn setup_with(tag: &str, listen: u16, port: u16, rules: &str, workloads: &str) -> Setup {
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
         \x20   token: {{from: credential}}\n{workloads}\
         targets:\n  - name: cluster-api\n    protocol: http\n    addresses: [\"127.0.0.2\"]\n    ports: [{port}]\n\
         \x20   credential: {{from: file, path: {credential}}}\n\
         \x20   http:\n      profile: kubernetes\n\
         \x20     tls: {{ca_cert: {ca_cert}, ca_key: {ca_key}, names: [kubernetes, kubernetes.default, kubernetes.default.svc]}}\n\
         \x20     upstream_tls: {{mode: verify-full, ca_file: {standin_ca}, server_name: kubernetes}}\n\
         rules:\n  - name: agents-to-cluster\n    when: {{workloads: [agents], groups: [agents]}}\n    targets: [cluster-api]\n{rules}",
        jwks = fixtures().join("test-jwks.json").display(),
        credential = credential.display(),
        ca_cert = agent_ca.cert.display(),
        ca_key = agent_ca.key.display(),
        standin_ca = standin.ca_path.display(),
    );
    let gw = Gateway::start(tag, &policy);
    gw.wait_classified(&agent.rel);
    Setup {
        gw,
        agent,
        standin,
        agent_ca,
        _anchor: anchor,
        dir,
        port,
    }
}

pub fn token(sub: &str) -> String {
    mint(sub, &["agents"], now(), now() + 600)
}

/// A kubeconfig as the agent has it: the API server's own address, the CA it trusts (here the
/// agentgate CA), its own token.
pub fn kubeconfig(s: &Setup, name: &str, token: &str) -> PathBuf {
    let path = s.dir.join(format!("{name}.kubeconfig"));
    agentgate_tests::kube::write_kubeconfig(
        &path,
        &format!("https://127.0.0.2:{}", s.port),
        &s.agent_ca.cert,
        token,
    )
    .expect("kubeconfig");
    path
}

pub fn kubectl(s: &Setup, kubeconfig: &std::path::Path, args: &[&str]) -> Output {
    kubectl_cmd(s, kubeconfig, args)
        .output()
        .expect("run kubectl")
}

/// kubectl as the agent runs it, not started yet (stdin closed, output piped).
pub fn kubectl_cmd(s: &Setup, kubeconfig: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(s.dir.join("kube-cache"))
        .arg("--request-timeout=20s")
        .args(args)
        .env("HOME", &s.dir)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    place(&mut cmd, Some(&s.agent), None);
    cmd
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The requests on record: (text, decision, class, exit status, stdout).
pub fn requests(gw: &Gateway) -> Vec<Vec<Value>> {
    record_query(
        &gw.record_db(),
        "SELECT json_extract(body, '$.text'), json_extract(body, '$.decision'), \
         json_extract(body, '$.class'), json_extract(body, '$.exit_status'), \
         json_extract(body, '$.output.stdout') \
         FROM audit_log WHERE kind = 'statement' ORDER BY seq",
    )
}

pub fn wait_for_record(
    gw: &Gateway,
    what: &str,
    f: impl Fn(&[Vec<Value>]) -> bool,
) -> Vec<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = requests(gw);
        if f(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "{what}: {r:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
