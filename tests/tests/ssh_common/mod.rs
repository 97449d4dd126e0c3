//! What the SSH end-to-end binaries (`ssh`, `ssh_channels`, `ssh_sessions`, `ssh_mask`, …)
//! share: a Debian sshd as the target (trusting a user CA), the gateway in front of it with one ssh target and a rule
//! letting group `agents` log in as DEPLOY_USER, and the agent's clients in a managed cgroup.
//!
//! Ports: 20460–20499 (sshd on the even port, the gateway on the odd one after it; forwarding
//! probes on 20490–20499).

#![allow(dead_code)] // each binary uses part of it

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output},
    time::{Duration, Instant},
};

use agentgate_tests::{
    fixtures, place, record_query, require_root,
    ssh::{self, Sshd, SshdOptions, DEPLOY_USER, READER_USER},
    unique, Cgroup, Gateway, TokenFile, AUDIENCE, ISSUER,
};
use serde_json::Value;

/// How the agent proves who it is.
pub enum Token<'a> {
    /// The workload's token file.
    File(&'a Path),
    /// The JWT as password / keyboard-interactive answer.
    Credential,
}

/// Keys for one target: the host CA and secret the per-target host key derives from, the
/// target's known_hosts (for the gateway) and the agent's (the CA line, and the target's own key
/// for the imported mode).
pub struct Keys {
    pub dir: PathBuf,
    pub host_ca: ssh::KeyPair,
    pub secret: PathBuf,
    pub target_known_hosts: PathBuf,
    pub agent_known_hosts: PathBuf,
}

impl Keys {
    pub fn new(tag: &str, sshd: &Sshd) -> Keys {
        let dir = std::env::temp_dir().join(unique(&format!("sshkeys-{tag}")));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let host_ca = ssh::keygen(&dir.join("host_ca"), "agentgate host CA");
        let secret = dir.join("host_secret");
        std::fs::write(&secret, agentgate_tests::payload(7, 32)).unwrap();
        set_mode(&secret, 0o600);
        let target_known_hosts = dir.join("target_known_hosts");
        ssh::write_known_hosts(&target_known_hosts, &[sshd.known_hosts_line()]);
        let agent_known_hosts = dir.join("agent_known_hosts");
        ssh::write_known_hosts(
            &agent_known_hosts,
            &[
                ssh::known_hosts_ca("*", &host_ca.public_line()),
                // For paramiko (which ignores @cert-authority) under the imported host key.
                sshd.known_hosts_line(),
            ],
        );
        Keys {
            dir,
            host_ca,
            secret,
            target_known_hosts,
            agent_known_hosts,
        }
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The policy: one workload, one ssh target on `sshd`, `deploy` logins allowed to group agents
/// (rule `agents-deploy`); `extra_rules` appended. Under `Token::Credential` the gateway
/// presents the target's own (imported) host key, so paramiko can pin it.
pub fn policy(
    listen: u16,
    cg: &str,
    token: &Token<'_>,
    sshd: &Sshd,
    keys: &Keys,
    extra_rules: &str,
) -> String {
    let token = match token {
        Token::File(p) => format!("{{from: file, path: {}}}", p.display()),
        Token::Credential => "{from: credential}".to_string(),
    };
    let host_key = match token.contains("credential") {
        true => format!("host_key: {}", sshd.host_key_path().display()),
        false => format!(
            "host_ca_key: {}\n      host_names: [build-host-7]",
            keys.host_ca.private.display()
        ),
    };
    policy_with(listen, cg, &token, &host_key, sshd, keys, extra_rules)
}

/// Like [`policy`], with the workload's `token:` and the target's host-key lines given as
/// YAML; a `private_key:` among the host-key lines is the upstream credential instead of the
/// server's user CA.
pub fn policy_with(
    listen: u16,
    cg: &str,
    token: &str,
    host_key: &str,
    sshd: &Sshd,
    keys: &Keys,
    extra_rules: &str,
) -> String {
    format!(
        "version: 2
gateway:
  listen_port: {listen}
  ssh_host_key_secret: {secret}
identity_providers:
  - name: test-idp
    issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    jwks: {{from: file, path: {jwks}}}
    algorithms: [RS256]
workloads:
  - name: agents
    cgroup: \"/{cg}\"
    mode: host
    token: {token}
targets:
  - name: build-host
    protocol: ssh
    addresses: [127.0.0.1/32]
    ports: [{port}]
    ssh:
      {host_key}
      {upstream}
      known_hosts: {known}
rules:
  - name: agents-deploy
    when: {{workloads: [agents], groups: [agents], logins: [{DEPLOY_USER}]}}
    targets: [build-host]
{extra_rules}",
        secret = keys.secret.display(),
        jwks = fixtures().join("test-jwks.json").display(),
        port = sshd.port,
        upstream = if host_key.contains("private_key:") {
            String::new()
        } else {
            format!("user_ca_key: {}", sshd.user_ca_key().display())
        },
        known = keys.target_known_hosts.display(),
    )
}

pub struct Setup {
    pub sshd: Sshd,
    pub keys: Keys,
    pub token: TokenFile,
    pub cg: Cgroup,
    pub gw: Gateway,
    pub tag: String,
}

pub fn setup_with(tag: &str, port: u16, credential: bool, extra_rules: &str) -> Setup {
    require_root();
    ssh::ensure_user(DEPLOY_USER);
    ssh::ensure_user(READER_USER);
    let sshd = Sshd::start(port, SshdOptions::default());
    let keys = Keys::new(tag, &sshd);
    let token = TokenFile::valid(tag);
    let cg = Cgroup::create(&format!("/{}", unique(&format!("sshc-{tag}"))));
    let source = if credential {
        Token::Credential
    } else {
        Token::File(&token.path)
    };
    let gw = Gateway::start(
        &format!("sshc-{tag}"),
        &policy(
            port + 1,
            cg.rel.trim_start_matches('/'),
            &source,
            &sshd,
            &keys,
            extra_rules,
        ),
    );
    gw.wait_classified(&cg.rel);
    Setup {
        sshd,
        keys,
        token,
        cg,
        gw,
        tag: tag.to_string(),
    }
}

pub fn setup(tag: &str, port: u16, extra_rules: &str) -> Setup {
    setup_with(tag, port, false, extra_rules)
}

impl Setup {
    pub fn subject(&self) -> String {
        format!("agent-{}", self.tag)
    }

    /// `ssh` from inside the agent's cgroup as DEPLOY_USER with `extra` options.
    pub fn ssh(&self, extra: &[&str]) -> Command {
        let mut cmd = ssh::ssh_command(
            &self.keys.agent_known_hosts,
            self.sshd.port,
            DEPLOY_USER,
            extra,
        );
        place(&mut cmd, Some(&self.cg), None);
        cmd
    }

    pub fn exec(&self, command: &str) -> Output {
        let mut cmd = self.ssh(&[]);
        cmd.arg(command);
        cmd.output().expect("run ssh")
    }

    pub fn policy_text(&self, extra_rules: &str) -> String {
        policy(
            self.sshd.port + 1,
            self.cg.rel.trim_start_matches('/'),
            &Token::File(&self.token.path),
            &self.sshd,
            &self.keys,
            extra_rules,
        )
    }

    /// Replaces the policy file in one step and waits for the gateway to apply it.
    pub fn reload(&self, text: &str) -> Value {
        let live = self.gw.policy_dir().join("policy.yaml");
        let before = self.gw.count("policy_applied");
        let tmp = live.with_extension("yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &live).unwrap();
        self.gw.wait_for(
            Duration::from_secs(15),
            |e| e["event"] == "policy_applied",
            before,
        )
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The SSH requests on record, in order: (kind, text, decision, rule, exit status, stdout,
/// session).
pub fn requests(gw: &Gateway) -> Vec<Vec<Value>> {
    record_query(
        &gw.record_db(),
        "SELECT json_extract(body, '$.kind'), json_extract(body, '$.text'), \
         json_extract(body, '$.decision'), json_extract(body, '$.rule'), \
         json_extract(body, '$.exit_status'), json_extract(body, '$.output.stdout'), session \
         FROM audit_log WHERE kind = 'statement' ORDER BY seq",
    )
}

/// Waits until at least `n` requests are on record; panics with what is.
pub fn wait_requests(gw: &Gateway, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while requests(gw).len() < n {
        assert!(
            Instant::now() < deadline,
            "{n} requests not on record in 10 s: {:?}",
            requests(gw)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn intents(gw: &Gateway) -> i64 {
    agentgate_tests::record_count(
        &gw.record_db(),
        "SELECT count(*) FROM audit_log WHERE kind = 'statement_intent'",
    )
}

/// What the handler refused outside the channels (forwarding, agent, X11), on record.
pub fn refused_on_record(gw: &Gateway) -> Vec<String> {
    record_query(
        &gw.record_db(),
        "SELECT json_extract(body, '$.what') FROM audit_log WHERE kind = 'ssh_refused' ORDER BY seq",
    )
    .into_iter()
    .map(|r| r[0].as_str().unwrap_or_default().to_string())
    .collect()
}

/// Waits for `child` at most `timeout`; kills it after. Returns its output and how long it ran.
pub fn wait_output(mut child: Child, timeout: Duration) -> (Output, Duration, bool) {
    let started = Instant::now();
    let mut killed = false;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (
        child.wait_with_output().expect("wait"),
        started.elapsed(),
        killed,
    )
}

/// A directory on the target the deploy login may write, removed on drop.
pub struct DeployDir(pub PathBuf);

impl DeployDir {
    pub fn new(tag: &str) -> Self {
        let uid = ssh::ensure_user(DEPLOY_USER);
        let dir = std::env::temp_dir().join(unique(&format!("sshc-files-{tag}")));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(uid), None).unwrap();
        set_mode(&dir, 0o755);
        Self(dir)
    }
}

impl Drop for DeployDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A rule letting shells through.
pub const SHELLS: &str = "  - name: shells-ok
    commands: {shell: true}
    targets: [build-host]
";
