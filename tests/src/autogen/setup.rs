//! The story's world: a PostgreSQL with customers' personal data, a build host (Debian's sshd),
//! the Kubernetes API stand-in, and one gateway in front of all three with the team's policy.

use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use crate::{
    fixtures,
    http::Ca,
    kube::{KubeStandin, StandinOptions},
    payload,
    pg::{PgOptions, PgServer, ROLE_PASSWORD, ROLE_SCRAM},
    ssh::{self, Sshd, SshdOptions, DEPLOY_USER},
    Gateway, AUDIENCE, ISSUER,
};

use super::Options;

/// The customers table the mask rules cover: test card numbers (Luhn-valid), made-up SSNs.
const CUSTOMERS: &str = "\
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, card_number text, ssn text, note text);
INSERT INTO customers VALUES
  (1, 'Alice Martin', 'alice@example.com', '4111 1111 1111 1111', '123-45-6789', 'prefers email, cc alice.m@example.org'),
  (2, 'Bob Chen', 'bob.chen@example.net', '5555 5555 5555 4444', '987-65-4320', 'call after 5pm'),
  (3, 'Carol Diaz', 'carol.diaz@example.com', '3782 822463 10005', '078-05-1120', 'VIP since 2019');
";

/// The raw personal values of CUSTOMERS (and the Secret the stand-in is seeded with): none may
/// reach an agent.
pub const RAW_PII: &[&str] = &[
    "alice@example.com",
    "alice.m@example.org",
    "bob.chen@example.net",
    "carol.diaz@example.com",
    "4111 1111 1111 1111",
    "5555 5555 5555 4444",
    "3782 822463 10005",
    "123-45-6789",
    "987-65-4320",
    "078-05-1120",
    "s3cr3t-hunter2",
    // base64 of the Secret's value, as `kubectl get secret -o yaml` would show it unmasked.
    "czNjcjN0LWh1bnRlcjI=",
];

/// The table PR 102's agent drops once a DBA approves (owned by the gateway's role: only the
/// owner may drop a table).
pub const LEGACY_TABLE: &str = "legacy_sessions";

/// Everything the gateway's policy names, and the targets. Dropped in reverse order of the
/// fields: the gateway first.
pub struct World {
    pub gw: Gateway,
    pub standin: KubeStandin,
    pub sshd: Sshd,
    pub pg: PgServer,
    pub files: Files,
}

/// The files the policy names and the agents' trust anchors, under the story's directory.
pub struct Files {
    pub dir: PathBuf,
    pub agent_known_hosts: PathBuf,
    pub agent_kube_ca: PathBuf,
    host_ca: ssh::KeyPair,
    target_known_hosts: PathBuf,
    kube_ca: Ca,
    kube_credential: PathBuf,
    standin_ca: PathBuf,
}

impl World {
    pub fn start(opts: &Options) -> World {
        fs::create_dir_all(&opts.dir).expect("story directory");
        ssh::ensure_user(DEPLOY_USER);
        let pg = PgServer::start(&opts.tag, opts.ports.pg, PgOptions::default());
        pg.create_db("appdb");
        pg.sql_in("appdb", CUSTOMERS);
        pg.sql_in(
            "appdb",
            &format!(
                "CREATE TABLE {LEGACY_TABLE} (id int, token text);\n\
                 ALTER TABLE {LEGACY_TABLE} OWNER TO {ROLE_SCRAM};"
            ),
        );
        let sshd = Sshd::start(opts.ports.ssh, SshdOptions::default());
        let standin = KubeStandin::start(StandinOptions {
            listen: format!("127.0.0.2:{}", opts.ports.kube)
                .parse()
                .expect("address"),
            extra_names: vec!["127.0.0.2".into()],
            ..Default::default()
        })
        .expect("the Kubernetes API stand-in starts");
        let files = Files::write(opts, &sshd, &standin);
        let gw = Gateway::start(&opts.tag, &policy(opts, &files, &sshd, true));
        World {
            gw,
            standin,
            sshd,
            pg,
            files,
        }
    }

    /// The policy again, without the contractors' group: a live reload (the directory is
    /// watched). Waits until the gateway has put it in force.
    pub fn drop_contractors(&self, opts: &Options) -> serde_json::Value {
        let before = self.gw.count("policy_applied");
        fs::write(
            self.gw.policy_dir().join("policy.yaml"),
            policy(opts, &self.files, &self.sshd, false),
        )
        .expect("write the policy");
        self.gw.wait_for(
            std::time::Duration::from_secs(20),
            |e| e["event"] == "policy_applied",
            before,
        )
    }
}

impl Files {
    fn write(opts: &Options, sshd: &Sshd, standin: &KubeStandin) -> Files {
        let dir = opts.dir.clone();
        secret_file(
            &dir.join("pg-secret"),
            format!("{ROLE_PASSWORD}\n").as_bytes(),
        );
        let key: String = payload(23, 32).iter().map(|b| format!("{b:02x}")).collect();
        secret_file(&dir.join("mask.key"), format!("{key}\n").as_bytes());
        let ssh_dir = dir.join("ssh");
        fs::create_dir_all(&ssh_dir).expect("ssh dir");
        let host_ca = ssh::keygen(
            &ssh_dir.join("host-ca"),
            "agentgate host CA (autogen story)",
        );
        secret_file(&ssh_dir.join("host-secret"), &payload(29, 32));
        let target_known_hosts = ssh_dir.join("target-known-hosts");
        ssh::write_known_hosts(&target_known_hosts, &[sshd.known_hosts_line()]);
        let agent_known_hosts = ssh_dir.join("agent-known-hosts");
        ssh::write_known_hosts(
            &agent_known_hosts,
            &[ssh::known_hosts_ca("*", &host_ca.public_line())],
        );
        let kube_ca = Ca::new(&dir.join("kube"), "agentgate");
        let kube_credential = dir.join("kube").join("gateway-token");
        secret_file(&kube_credential, standin.gateway_token.as_bytes());
        Files {
            agent_known_hosts,
            agent_kube_ca: kube_ca.cert.clone(),
            dir,
            host_ca,
            target_known_hosts,
            kube_ca,
            kube_credential,
            standin_ca: standin.ca_path.clone(),
        }
    }
}

fn secret_file(path: &Path, content: &[u8]) {
    fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(content))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The group the policy lets contractors' jobs in with, until they leave.
pub const CONTRACTORS: &str = "acme-contractors";
/// The group of the team's own CI jobs.
pub const CI_AGENTS: &str = "ci-agents";

/// The team's policy: one workload for every PR job's cgroup, whose token is its password (and
/// its kubeconfig's bearer token); the database, the build host and the cluster; reads masked;
/// DDL, `systemctl` and RBAC changes held for people. `contractors`: whether group
/// acme-contractors is still let in.
pub fn policy(opts: &Options, files: &Files, sshd: &Sshd, contractors: bool) -> String {
    let groups = if contractors {
        format!("[{CI_AGENTS}, {CONTRACTORS}]")
    } else {
        format!("[{CI_AGENTS}]")
    };
    format!(
        "# The AutoGen story (docs/autogen.md): every process in a PR job's cgroup is workload
# pr-jobs; its OIDC token is its database and SSH password and its kubeconfig's bearer token.
version: 2
gateway:
  listen_port: {gw_port}
  mask_key: {{from: file, path: {dir}/mask.key}}
  ssh_host_key_secret: {dir}/ssh/host-secret
identity_providers:
  - name: ci-idp
    issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    jwks: {{from: file, path: {jwks}}}
    algorithms: [RS256]
    max_lifetime_secs: 900
workloads:
  - name: pr-jobs
    cgroup: {root}/pr-*
    mode: host
    token: {{from: credential}}
targets:
  - name: app-db
    protocol: postgres
    addresses: [127.0.0.1]
    ports: [{pg_port}]
    credential: {{from: file, path: {dir}/pg-secret}}
    postgres:
      user: {ROLE_SCRAM}
      upstream_tls: {{mode: disable}}
  - name: build-host
    protocol: ssh
    addresses: [127.0.0.1/32]
    ports: [{ssh_port}]
    ssh:
      host_ca_key: {host_ca}
      host_names: [build-host-7]
      user_ca_key: {user_ca}
      known_hosts: {target_known_hosts}
  - name: cluster-api
    protocol: http
    addresses: [127.0.0.2]
    ports: [{kube_port}]
    credential: {{from: file, path: {kube_credential}}}
    http:
      profile: kubernetes
      tls: {{ca_cert: {kube_ca_cert}, ca_key: {kube_ca_key}, names: [kubernetes, kubernetes.default, kubernetes.default.svc]}}
      upstream_tls: {{mode: verify-full, ca_file: {standin_ca}, server_name: kubernetes}}
rules:
  - name: pr-jobs-to-db-and-cluster
    when: {{workloads: [pr-jobs], groups: {groups}}}
    targets: [app-db, cluster-api]
  - name: pr-jobs-to-build-host
    when: {{workloads: [pr-jobs], groups: {groups}, logins: [{DEPLOY_USER}]}}
    targets: [build-host]
  - name: no-privilege-changes
    effect: deny
    targets: [app-db]
    statements: {{classes: [dcl, admin]}}
  - name: schema-changes-need-a-dba
    targets: [app-db]
    statements: {{classes: [ddl]}}
    approval: {{approvers: [dbas], timeout_secs: 120}}
  - name: restarts-need-oncall
    targets: [build-host]
    commands: {{programs: [systemctl]}}
    approval: {{approvers: [oncall], timeout_secs: 120}}
  - name: rbac-changes-need-platform
    targets: [cluster-api]
    requests:
      verbs: [create, update, patch, delete, deletecollection]
      resources: [\"*.rbac.authorization.k8s.io\"]
    approval: {{approvers: [platform], timeout_secs: 120}}
  - name: mask-customer-email
    targets: [app-db]
    mask: {{columns: [customers.email], strategy: hash}}
  - name: mask-customer-numbers
    targets: [app-db]
    mask: {{columns: [customers.card_number, \"*.ssn\"], strategy: partial, keep_last: 4}}
  - name: mask-emails-anywhere
    targets: [app-db, build-host]
    mask: {{detectors: [email], strategy: redact}}
",
        gw_port = opts.ports.gateway,
        dir = files.dir.display(),
        jwks = fixtures().join("test-jwks.json").display(),
        root = opts.cgroup_root,
        pg_port = opts.ports.pg,
        ssh_port = opts.ports.ssh,
        host_ca = files.host_ca.private.display(),
        user_ca = sshd.user_ca_key().display(),
        target_known_hosts = files.target_known_hosts.display(),
        kube_port = opts.ports.kube,
        kube_credential = files.kube_credential.display(),
        kube_ca_cert = files.kube_ca.cert.display(),
        kube_ca_key = files.kube_ca.key.display(),
        standin_ca = files.standin_ca.display(),
    )
}
