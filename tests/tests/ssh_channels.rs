//! SSH channels through the gateway, end to end with real parts (issue 18): shells with a pty,
//! scp and sftp both ways, forwarding refused, ControlMaster multiplexing, the JWT as password,
//! revocation / expiry / reload ending a running command, 20 concurrent CI agents, and what a
//! `cat` of a secret shows. Debian's sshd is the target (trusting a user CA), the real `ssh`,
//! `scp` and `sftp` clients and paramiko are the agents, in a managed cgroup.
//!
//! Ports: 20460–20499 (sshd on the even port, the gateway on the odd one after it; forwarding
//! probes on 20490–20499).

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use agentgate_tests::{
    agentgate_bin, fixtures, mint, mint_with_key, now, place, record_query, require_root,
    ssh::{self, Sshd, SshdOptions, DEPLOY_USER, READER_USER, SYSTEM_PYTHON},
    unique, wait_until, Cgroup, Gateway, TokenFile, AUDIENCE, ISSUER,
};
use serde_json::Value;

/// How the agent proves who it is.
enum Token<'a> {
    /// The workload's token file.
    File(&'a Path),
    /// The JWT as password / keyboard-interactive answer.
    Credential,
}

/// Keys for one target: the host CA and secret the per-target host key derives from, the
/// target's known_hosts (for the gateway) and the agent's (the CA line, and the target's own key
/// for the imported mode).
struct Keys {
    dir: PathBuf,
    host_ca: ssh::KeyPair,
    secret: PathBuf,
    target_known_hosts: PathBuf,
    agent_known_hosts: PathBuf,
}

impl Keys {
    fn new(tag: &str, sshd: &Sshd) -> Keys {
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

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The policy: one workload, one ssh target on `sshd`, `deploy` logins allowed to group agents
/// (rule `agents-deploy`); `extra_rules` appended. Under `Token::Credential` the gateway
/// presents the target's own (imported) host key, so paramiko can pin it.
fn policy(
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
      user_ca_key: {user_ca}
      known_hosts: {known}
rules:
  - name: agents-deploy
    when: {{workloads: [agents], groups: [agents], logins: [{DEPLOY_USER}]}}
    targets: [build-host]
{extra_rules}",
        secret = keys.secret.display(),
        jwks = fixtures().join("test-jwks.json").display(),
        port = sshd.port,
        user_ca = sshd.user_ca_key().display(),
        known = keys.target_known_hosts.display(),
    )
}

struct Setup {
    sshd: Sshd,
    keys: Keys,
    token: TokenFile,
    cg: Cgroup,
    gw: Gateway,
    tag: String,
}

fn setup_with(tag: &str, port: u16, credential: bool, extra_rules: &str) -> Setup {
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

fn setup(tag: &str, port: u16, extra_rules: &str) -> Setup {
    setup_with(tag, port, false, extra_rules)
}

impl Setup {
    fn subject(&self) -> String {
        format!("agent-{}", self.tag)
    }

    /// `ssh` from inside the agent's cgroup as DEPLOY_USER with `extra` options.
    fn ssh(&self, extra: &[&str]) -> Command {
        let mut cmd = ssh::ssh_command(
            &self.keys.agent_known_hosts,
            self.sshd.port,
            DEPLOY_USER,
            extra,
        );
        place(&mut cmd, Some(&self.cg), None);
        cmd
    }

    fn exec(&self, command: &str) -> Output {
        let mut cmd = self.ssh(&[]);
        cmd.arg(command);
        cmd.output().expect("run ssh")
    }

    fn policy_text(&self, extra_rules: &str) -> String {
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
    fn reload(&self, text: &str) -> Value {
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

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The SSH requests on record, in order: (kind, text, decision, rule, exit status, stdout,
/// session).
fn requests(gw: &Gateway) -> Vec<Vec<Value>> {
    record_query(
        &gw.record_db(),
        "SELECT json_extract(body, '$.kind'), json_extract(body, '$.text'), \
         json_extract(body, '$.decision'), json_extract(body, '$.rule'), \
         json_extract(body, '$.exit_status'), json_extract(body, '$.output.stdout'), session \
         FROM audit_log WHERE kind = 'statement' ORDER BY seq",
    )
}

/// Waits until at least `n` requests are on record; panics with what is.
fn wait_requests(gw: &Gateway, n: usize) {
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

fn intents(gw: &Gateway) -> i64 {
    agentgate_tests::record_count(
        &gw.record_db(),
        "SELECT count(*) FROM audit_log WHERE kind = 'statement_intent'",
    )
}

/// What the handler refused outside the channels (forwarding, agent, X11), on record.
fn refused_on_record(gw: &Gateway) -> Vec<String> {
    record_query(
        &gw.record_db(),
        "SELECT json_extract(body, '$.what') FROM audit_log WHERE kind = 'ssh_refused' ORDER BY seq",
    )
    .into_iter()
    .map(|r| r[0].as_str().unwrap_or_default().to_string())
    .collect()
}

/// Waits for `child` at most `timeout`; kills it after. Returns its output and how long it ran.
fn wait_output(mut child: Child, timeout: Duration) -> (Output, Duration, bool) {
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
struct DeployDir(PathBuf);

impl DeployDir {
    fn new(tag: &str) -> Self {
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

// ---------------------------------------------------------------------------------------------
// 1. Shells.
// ---------------------------------------------------------------------------------------------

const SHELLS: &str = "  - name: shells-ok
    commands: {shell: true}
    targets: [build-host]
";

/// A shell with a pty (`ssh -tt`, commands typed on stdin) runs under a rule with
/// `commands: {shell: true}` and is on record as a shell with its exit status.
#[test]
fn a_shell_with_a_pty_runs_under_a_shell_rule_and_is_recorded() {
    let s = setup("shell", 20460, SHELLS);
    let mut cmd = s.ssh(&["-tt"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ssh -tt");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo shell-$((6*7)) on $(tty | cut -c1-8)\nexit 5\n")
        .unwrap();
    let (out, _, killed) = wait_output(child, Duration::from_secs(20));
    assert!(!killed, "the shell did not end: {}", text(&out));
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        stdout(&out).contains("shell-42 on /dev/pts"),
        "ran in a pty: {}",
        text(&out)
    );
    wait_requests(&s.gw, 1);
    let r = requests(&s.gw);
    assert_eq!(r[0][0], "shell", "{r:?}");
    assert_eq!(r[0][2], "allowed", "{r:?}");
    assert_eq!(r[0][4], 5, "{r:?}");
    assert!(
        r[0][5].as_str().unwrap_or_default().contains("shell-42"),
        "the shell's output is on record: {r:?}"
    );
    assert_eq!(intents(&s.gw), 1);
    // A shell started as an exec reading its input passes the same rule.
    let mut cmd = s.ssh(&["-T"]);
    cmd.arg("bash -s")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ssh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo stdin-$((6*7))\n")
        .unwrap();
    let (out, _, killed) = wait_output(child, Duration::from_secs(20));
    assert!(!killed && out.status.success(), "{}", text(&out));
    assert_eq!(stdout(&out).trim(), "stdin-42", "{}", text(&out));
}

/// Without a shell rule, a shell is refused whichever way it is asked for (a pty or none, the
/// shell request or an exec of a shell with no command string), with exit status 126 and a
/// message; an exec still runs.
#[test]
fn a_shell_without_a_shell_rule_is_refused() {
    let rules = "  - name: no-rm
    effect: deny
    commands: {programs: [rm]}
    targets: [build-host]
";
    let s = setup("noshell", 20462, rules);
    for flag in ["-tt", "-T"] {
        let mut cmd = s.ssh(&[flag]);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn ssh");
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all(b"echo typed-$((6*7))\nexit 0\n");
        let (out, _, killed) = wait_output(child, Duration::from_secs(20));
        assert!(!killed, "{flag}: {}", text(&out));
        assert_eq!(out.status.code(), Some(126), "{flag}: {}", text(&out));
        let said = format!("{}{}", stdout(&out), stderr(&out));
        assert!(said.contains("interactive shell"), "{flag}: {}", text(&out));
        assert!(
            !said.contains("typed-42"),
            "{flag}: the shell ran: {}",
            text(&out)
        );
    }
    // Other names for a shell: one started as an exec with no command string, reading what
    // is typed (with a pty or without).
    for (flags, command) in [
        (&["-T"][..], "bash"),
        (&["-tt"][..], "/bin/bash -i"),
        (&["-T"][..], "env TERM=dumb sh -s"),
        (&["-T"][..], "exec  /usr/bin/dash"),
    ] {
        let mut cmd = s.ssh(flags);
        cmd.arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn ssh");
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all(b"echo typed-$((6*7))\nexit 0\n");
        let (out, _, killed) = wait_output(child, Duration::from_secs(20));
        assert!(!killed, "{command}: {}", text(&out));
        assert_eq!(out.status.code(), Some(126), "{command}: {}", text(&out));
        assert!(
            !stdout(&out).contains("typed-42"),
            "{command}: the shell ran: {}",
            text(&out)
        );
    }
    let ok = s.exec("echo exec-ok");
    assert_eq!(stdout(&ok).trim(), "exec-ok", "{}", text(&ok));
    wait_requests(&s.gw, 7);
    let r = requests(&s.gw);
    for row in &r[..2] {
        assert_eq!(row[0], "shell", "{r:?}");
        assert_eq!(row[2], "denied", "{r:?}");
        assert_eq!(row[4], 126, "{r:?}");
    }
    for row in &r[2..6] {
        assert_eq!(row[0], "exec", "{r:?}");
        assert_eq!(row[2], "denied", "{r:?}");
    }
    assert_eq!(r[6][2], "allowed", "{r:?}");
    assert_eq!(intents(&s.gw), 1, "nothing refused had an intent");
}

// ---------------------------------------------------------------------------------------------
// 2. scp and sftp.
// ---------------------------------------------------------------------------------------------

fn scp(s: &Setup, extra: &[&str], from: &str, to: &str) -> Output {
    let mut cmd = ssh::scp_command(&s.keys.agent_known_hosts, s.sshd.port, extra);
    cmd.args([from, to]);
    place(&mut cmd, Some(&s.cg), None);
    cmd.output().expect("run scp")
}

fn sftp_batch(s: &Setup, batch: &str, extra: &[&str]) -> Output {
    let file = s.keys.dir.join(unique("batch"));
    std::fs::write(&file, batch).unwrap();
    let mut cmd = ssh::sftp_command(
        &s.keys.agent_known_hosts,
        s.sshd.port,
        DEPLOY_USER,
        &file,
        extra,
    );
    place(&mut cmd, Some(&s.cg), None);
    cmd.output().expect("run sftp")
}

/// scp (SFTP mode and the legacy protocol) and an sftp batch move files both ways under a rule
/// that allows the sftp subsystem.
#[test]
fn scp_and_sftp_both_ways_under_a_subsystem_rule() {
    let rules = "  - name: files
    effect: deny
    commands: {programs: [rm], subsystems: [sftp]}
    targets: [build-host]
";
    let s = setup("files", 20464, rules);
    let remote = DeployDir::new("files");
    let local = s.keys.dir.join("local");
    std::fs::create_dir_all(&local).unwrap();
    let payload = agentgate_tests::payload(18, 300_000);
    let src = local.join("up.bin");
    std::fs::write(&src, &payload).unwrap();
    let r = |name: &str| remote.0.join(name).display().to_string();

    for (mode, extra) in [("sftp", &[][..]), ("legacy", &["-O"][..])] {
        let up = scp(
            &s,
            extra,
            src.to_str().unwrap(),
            &ssh::scp_remote(DEPLOY_USER, &r(&format!("{mode}.bin"))),
        );
        assert!(up.status.success(), "scp {mode} up: {}", text(&up));
        assert_eq!(
            std::fs::read(remote.0.join(format!("{mode}.bin"))).unwrap(),
            payload,
            "scp {mode} up"
        );
        let back = local.join(format!("{mode}-back.bin"));
        let down = scp(
            &s,
            extra,
            &ssh::scp_remote(DEPLOY_USER, &r(&format!("{mode}.bin"))),
            back.to_str().unwrap(),
        );
        assert!(down.status.success(), "scp {mode} down: {}", text(&down));
        assert_eq!(std::fs::read(&back).unwrap(), payload, "scp {mode} down");
    }
    let back = local.join("sftp-get.bin");
    let out = sftp_batch(
        &s,
        &format!(
            "put {} {}\nget {} {}\n",
            src.display(),
            r("batch.bin"),
            r("batch.bin"),
            back.display()
        ),
        &[],
    );
    assert!(out.status.success(), "sftp batch: {}", text(&out));
    assert_eq!(std::fs::read(remote.0.join("batch.bin")).unwrap(), payload);
    assert_eq!(std::fs::read(&back).unwrap(), payload);

    wait_requests(&s.gw, 5);
    let r = requests(&s.gw);
    let kinds: Vec<&str> = r.iter().map(|x| x[0].as_str().unwrap_or("")).collect();
    // Two scp in SFTP mode and one sftp batch: subsystems; the legacy scp: execs of `scp -t/-f`.
    assert_eq!(
        kinds.iter().filter(|k| **k == "subsystem").count(),
        3,
        "{r:?}"
    );
    assert!(r.iter().all(|x| x[2] == "allowed"), "{r:?}");
    assert_eq!(
        r.iter()
            .filter(|x| x[0] == "exec" && x[1].as_str().unwrap_or("").starts_with("scp -"))
            .count(),
        2,
        "{r:?}"
    );
}

/// A command rule that does not list the sftp subsystem refuses it: scp in SFTP mode, an sftp
/// batch, and sftp asking to exec the sftp server by its path instead of the subsystem.
#[test]
fn sftp_is_refused_by_a_command_rule_without_the_subsystem() {
    let rules = "  - name: no-rm
    effect: deny
    commands: {programs: [rm]}
    targets: [build-host]
";
    let s = setup("nosftp", 20466, rules);
    let remote = DeployDir::new("nosftp");
    let secret = remote.0.join("secret.txt");
    std::fs::write(&secret, "target-only").unwrap();
    let local = s.keys.dir.join("got.txt");
    let out = scp(
        &s,
        &[],
        &ssh::scp_remote(DEPLOY_USER, secret.to_str().unwrap()),
        local.to_str().unwrap(),
    );
    assert!(
        !out.status.success(),
        "scp (sftp) got through: {}",
        text(&out)
    );
    assert!(!local.exists());
    let batch = format!("get {} {}\n", secret.display(), local.display());
    let out = sftp_batch(&s, &batch, &[]);
    assert!(!out.status.success(), "sftp got through: {}", text(&out));
    assert!(!local.exists());
    // Another spelling: the sftp server run as a command rather than as the subsystem.
    for server in [
        "/usr/lib/openssh/sftp-server",
        "env /usr/lib/openssh/sftp-server",
    ] {
        let out = sftp_batch(&s, &batch, &["-s", server]);
        assert!(
            !out.status.success() && !local.exists(),
            "sftp -s {server} got through: {}",
            text(&out)
        );
    }
    wait_requests(&s.gw, 4);
    let r = requests(&s.gw);
    assert!(r.iter().all(|x| x[2] == "denied"), "{r:?}");
    assert_eq!(intents(&s.gw), 0);
}

// ---------------------------------------------------------------------------------------------
// 3. Forwarding.
// ---------------------------------------------------------------------------------------------

/// `-W`, `-L`, `-R` and `-A` are refused and recorded; the session's command still runs.
#[test]
fn forwarding_is_refused_and_the_session_still_works() {
    let s = setup("fwd", 20468, "");
    let target = format!("127.0.0.1:{}", s.sshd.port);
    // -W: a direct-tcpip channel instead of a session; the client hangs up as soon as it is
    // refused, racing the refusal's record (three times, to give the race a chance).
    for _ in 0..3 {
        let out = s.ssh(&["-W", &target]).output().unwrap();
        assert!(!out.status.success(), "-W: {}", text(&out));
        assert!(
            !stdout(&out).contains("SSH-2.0"),
            "-W reached sshd: {}",
            text(&out)
        );
    }

    // -L: the local listener works, the channel behind it is refused.
    let mut cmd = s.ssh(&["-L", &format!("127.0.0.1:20490:{target}")]);
    cmd.arg("sleep 3; echo still-here")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let mut banner = Vec::new();
    wait_until("the -L listener", Duration::from_secs(10), || {
        std::net::TcpStream::connect("127.0.0.1:20490").is_ok_and(|mut c| {
            c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let _ = c.read_to_end(&mut banner);
            true
        })
    });
    assert!(
        !String::from_utf8_lossy(&banner).contains("SSH-2.0"),
        "-L reached sshd: {banner:?}"
    );
    let (out, _, killed) = wait_output(child, Duration::from_secs(20));
    assert!(
        !killed && out.status.success(),
        "-L session: {}",
        text(&out)
    );
    assert_eq!(stdout(&out).trim(), "still-here", "{}", text(&out));

    // -R: the target never listens.
    let out = s
        .ssh(&[
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            &format!("127.0.0.1:20491:{target}"),
        ])
        .arg("sleep 2; echo r-ran")
        .output()
        .unwrap();
    assert!(!out.status.success(), "-R: {}", text(&out));
    assert!(std::net::TcpStream::connect("127.0.0.1:20491").is_err());
    let out = s
        .ssh(&["-R", &format!("127.0.0.1:20491:{target}")])
        .arg("echo r-ok")
        .output()
        .unwrap();
    assert_eq!(
        stdout(&out).trim(),
        "r-ok",
        "without ExitOnForwardFailure: {}",
        text(&out)
    );

    // -A: with an agent holding a key, the session gets no agent socket.
    let sock = s.keys.dir.join("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("ssh-agent", Duration::from_secs(5), || sock.exists());
    let key = ssh::keygen(&s.keys.dir.join("agent_key"), "agent's own key");
    let added = Command::new("ssh-add")
        .arg(&key.private)
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap();
    assert!(added.status.success(), "{}", text(&added));
    let out = s
        .ssh(&["-A"])
        .env("SSH_AUTH_SOCK", &sock)
        .arg("echo \"[$SSH_AUTH_SOCK]\"; ssh-add -l; echo rc=$?")
        .output()
        .unwrap();
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(out.status.success(), "-A: {}", text(&out));
    assert!(
        stdout(&out).contains("[]"),
        "an agent socket was forwarded: {}",
        text(&out)
    );
    assert!(!stdout(&out).contains("rc=0"), "{}", text(&out));

    let deadline = Instant::now() + Duration::from_secs(10);
    while refused_on_record(&s.gw).len() < 7 {
        assert!(
            Instant::now() < deadline,
            "refusals on record: {:?}",
            refused_on_record(&s.gw)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused = refused_on_record(&s.gw);
    let has = |what: &str| refused.iter().filter(|r| r.contains(what)).count();
    assert!(has("port forwarding to 127.0.0.1") >= 4, "{refused:?}");
    assert!(has("remote port forwarding") >= 2, "{refused:?}");
    assert!(has("agent forwarding") >= 1, "{refused:?}");
}

// ---------------------------------------------------------------------------------------------
// 4. ControlMaster.
// ---------------------------------------------------------------------------------------------

/// One master connection, several `ssh -S` channels on it: each judged and recorded, one of
/// them denied, all in the one session.
#[test]
fn controlmaster_channels_are_each_judged_and_recorded() {
    let rules = "  - name: no-rm
    effect: deny
    commands: {programs: [rm]}
    targets: [build-host]
";
    let s = setup("mux", 20470, rules);
    let sock = s.keys.dir.join("mux.sock");
    let sock_s = sock.to_str().unwrap().to_string();
    let mut master = s
        .ssh(&["-M", "-S", &sock_s, "-N", "-o", "ControlPersist=no"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the control socket", Duration::from_secs(15), || {
        sock.exists()
    });
    // The clients talk to the master only: placed anywhere, they need no token of their own.
    let client = |command: &str| -> Output {
        ssh::ssh_command(
            &s.keys.agent_known_hosts,
            s.sshd.port,
            DEPLOY_USER,
            &["-S", &sock_s],
        )
        .arg(command)
        .output()
        .unwrap()
    };
    let marker = s.keys.dir.join("marker");
    std::fs::write(&marker, "x").unwrap();
    set_mode(&s.keys.dir, 0o755);
    let one = client("echo one");
    let denied = client(&format!("rm -f {}", marker.display()));
    let two = client("ls /nonexistent-agentgate");
    let parallel: Vec<Output> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..3)
            .map(|i| sc.spawn(move || client(&format!("ls /nonexistent-par-{i}"))))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let _ = Command::new("ssh")
        .args(["-S", &sock_s, "-O", "exit", "127.0.0.1"])
        .output();
    let (mout, _, _) = {
        let started = Instant::now();
        while master.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = master.kill();
        let o = master.wait_with_output().unwrap();
        (o, (), ())
    };
    assert_eq!(stdout(&one).trim(), "one", "{}", text(&one));
    assert_eq!(denied.status.code(), Some(126), "{}", text(&denied));
    assert!(
        stderr(&denied).contains("refused by rule \"no-rm\""),
        "{}",
        text(&denied)
    );
    assert!(marker.exists(), "the denied rm ran");
    assert_eq!(two.status.code(), Some(2), "{}", text(&two));
    // Each with its own exit status (sshd may send EOF before it: the status must still
    // reach the mux client, not 255).
    for (i, o) in parallel.iter().enumerate() {
        assert_eq!(o.status.code(), Some(2), "{}", text(o));
        assert!(stderr(o).contains(&format!("par-{i}")), "{}", text(o));
    }
    wait_requests(&s.gw, 6);
    let r = requests(&s.gw);
    assert_eq!(r.len(), 6, "{r:?}");
    let sessions: std::collections::BTreeSet<String> = r
        .iter()
        .map(|x| x[6].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        sessions.len(),
        1,
        "one connection, one session: {r:?}; master: {}",
        text(&mout)
    );
    assert_eq!(r.iter().filter(|x| x[2] == "denied").count(), 1, "{r:?}");
    assert!(
        r.iter()
            .any(|x| x[1] == "ls /nonexistent-agentgate" && x[4] == 2 && x[2] == "allowed"),
        "{r:?}"
    );
    let opened = agentgate_tests::record_count(
        &s.gw.record_db(),
        "SELECT count(*) FROM audit_log WHERE kind = 'session_open'",
    );
    assert_eq!(opened, 1);
}

// ---------------------------------------------------------------------------------------------
// 5. The JWT as password.
// ---------------------------------------------------------------------------------------------

/// paramiko logs in with `password` (or with `key_filename` and no password) and runs one
/// command; prints one JSON object.
const PARAMIKO: &str = r#"
import json, sys, warnings
warnings.filterwarnings("ignore")
import paramiko
host, port, user, known, password, key, command = sys.argv[1:]
c = paramiko.SSHClient()
c.load_host_keys(known)
c.set_missing_host_key_policy(paramiko.RejectPolicy())
try:
    c.connect(host, port=int(port), username=user, password=password or None,
              key_filename=key or None, look_for_keys=False, allow_agent=False,
              timeout=15, banner_timeout=15, auth_timeout=15)
    _i, o, e = c.exec_command(command, timeout=30)
    out = o.read().decode(); err = e.read().decode()
    print(json.dumps({"ok": True, "exit": o.channel.recv_exit_status(), "stdout": out, "stderr": err}))
except Exception as ex:
    print(json.dumps({"ok": False, "error_type": type(ex).__name__, "error": str(ex)}))
finally:
    c.close()
"#;

fn paramiko(s: &Setup, password: &str, key: Option<&Path>, command: &str) -> Value {
    paramiko_cmd(s, password, key, command)
        .output()
        .map(|o| {
            serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
                panic!("paramiko printed {:?} ({e}): {}", stdout(&o), stderr(&o))
            })
        })
        .expect("run paramiko")
}

fn paramiko_cmd(s: &Setup, password: &str, key: Option<&Path>, command: &str) -> Command {
    let mut cmd = Command::new(SYSTEM_PYTHON);
    cmd.args([
        "-c",
        PARAMIKO,
        "127.0.0.1",
        &s.sshd.port.to_string(),
        DEPLOY_USER,
    ])
    .arg(&s.keys.agent_known_hosts)
    .arg(password)
    .arg(key.map(|k| k.as_os_str().to_owned()).unwrap_or_default())
    .arg(command)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    place(&mut cmd, Some(&s.cg), None);
    cmd
}

/// Under `token: {from: credential}` the JWT is the password; a forged, an expired or another
/// audience's token is refused, and so is the agent's own private key without a token (also
/// when the target would accept that very key).
#[test]
fn the_jwt_as_password_and_the_agents_own_key_refused() {
    let s = setup_with("cred", 20472, true, "");
    let jwt = mint("agent-cred", &["agents"], now(), now() + 600);
    let ok = paramiko(&s, &jwt, None, "echo pw-$(whoami)");
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(
        ok["stdout"].as_str().unwrap().trim(),
        format!("pw-{DEPLOY_USER}"),
        "{ok}"
    );

    // The real ssh, answering the keyboard-interactive prompt through SSH_ASKPASS.
    let askpass = s.keys.dir.join("askpass.sh");
    std::fs::write(&askpass, "#!/bin/sh\nprintf '%s\\n' \"$AGENT_JWT\"\n").unwrap();
    set_mode(&askpass, 0o755);
    // (Not the harness's `ssh_command`: its BatchMode=yes, first on the line, would win and
    // turn off keyboard-interactive.)
    for method in ["keyboard-interactive", "password"] {
        let mut askpass_ssh = Command::new("ssh");
        askpass_ssh
            .args(["-F", "/dev/null", "-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                s.keys.agent_known_hosts.display()
            ))
            .args([
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                &format!("PreferredAuthentications={method}"),
                "-o",
                "LogLevel=ERROR",
                "-p",
                &s.sshd.port.to_string(),
                "-l",
                DEPLOY_USER,
                "127.0.0.1",
            ])
            .stdin(Stdio::null());
        place(&mut askpass_ssh, Some(&s.cg), None);
        let out = askpass_ssh
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .env("AGENT_JWT", &jwt)
            .arg("echo askpass-ok")
            .output()
            .unwrap();
        assert_eq!(
            stdout(&out).trim(),
            "askpass-ok",
            "{method}: {}",
            text(&out)
        );
    }

    let forged_key = {
        let out = Command::new("openssl")
            .args(["genrsa", "2048"])
            .stderr(Stdio::null())
            .output()
            .unwrap();
        out.stdout
    };
    let forged = mint_with_key(&forged_key, "agent-cred", &["agents"], now(), now() + 600);
    let expired = mint("agent-cred", &["agents"], now() - 600, now() - 300);
    for (what, token) in [
        ("forged", forged.as_str()),
        ("expired", expired.as_str()),
        ("garbage", "not-a-jwt"),
        ("empty-ish", " "),
    ] {
        let r = paramiko(&s, token, None, "echo should-not-run");
        assert_eq!(r["ok"], false, "{what}: {r}");
        // BadAuthenticationType is paramiko's AuthenticationException saying that after the
        // one attempt that decides, password is no longer a method offered; EOFError /
        // SSHException: the gateway's disconnect after the refusal overtook it.
        assert!(
            matches!(
                r["error_type"].as_str(),
                Some(
                    "AuthenticationException"
                        | "BadAuthenticationType"
                        | "EOFError"
                        | "SSHException"
                )
            ),
            "{what}: {r}"
        );
    }
    // The agent's own key, which the target itself accepts (its static key), is no identity
    // at the gateway.
    let key_dir = s.keys.dir.join("agent-key");
    std::fs::create_dir_all(&key_dir).unwrap();
    let own = ssh::key_for_uid(s.sshd.static_key(), &key_dir, "id_ed25519", 0);
    let r = paramiko(&s, "", Some(&own), "echo should-not-run");
    assert_eq!(r["ok"], false, "{r}");
    let out = s
        .ssh(&["-i", own.to_str().unwrap()])
        .arg("echo should-not-run")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!stdout(&out).contains("should-not-run"));
    // One attempt decides per connection (paramiko tries the key, then the password): the
    // good token after a bad one on the same connection is not tried further, which is fine;
    // a fresh connection with the good token still works.
    let again = paramiko(&s, &jwt, None, "echo again");
    assert_eq!(again["ok"], true, "{again}");
    wait_requests(&s.gw, 4);
    let subjects = record_query(&s.gw.record_db(), "SELECT DISTINCT subject FROM sessions");
    assert_eq!(
        subjects,
        vec![vec![Value::from("agent-cred")]],
        "{subjects:?}"
    );
    assert!(!s.sshd.auth_log().contains("should-not-run"));
}

// ---------------------------------------------------------------------------------------------
// 6. Revoke, expiry, reload.
// ---------------------------------------------------------------------------------------------

fn spawn_sleep(s: &Setup) -> Child {
    s.ssh(&[])
        .arg("sleep 30; echo finished")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `agentgate revoke` ends a running `sleep 30` within seconds; a new login is refused.
#[test]
fn revoke_ends_a_running_exec() {
    let s = setup("revoke", 20474, "");
    let child = spawn_sleep(&s);
    wait_until("the exec running", Duration::from_secs(15), || {
        intents(&s.gw) == 1
    });
    let revoked = Command::new(agentgate_bin())
        .args([
            "revoke",
            "--identity",
            &s.subject(),
            "--reason",
            "contractor left",
        ])
        .arg("--admin-socket")
        .arg(s.gw.admin_socket())
        .output()
        .unwrap();
    assert!(revoked.status.success(), "{}", text(&revoked));
    let (out, took, killed) = wait_output(child, Duration::from_secs(15));
    assert!(!killed, "the exec outlived the revocation: {}", text(&out));
    assert!(took < Duration::from_secs(5), "ended after {took:?}");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!stdout(&out).contains("finished"), "{}", text(&out));
    let again = s.exec("echo after-revoke");
    assert!(!again.status.success(), "{}", text(&again));
    wait_until(
        "the session closed on record",
        Duration::from_secs(10),
        || {
            !record_query(
                &s.gw.record_db(),
                "SELECT ended_by FROM sessions WHERE ended_ms IS NOT NULL",
            )
            .is_empty()
        },
    );
    let ended = record_query(&s.gw.record_db(), "SELECT ended_by FROM sessions");
    assert!(
        ended[0][0].as_str().unwrap_or("").contains("revoked"),
        "{ended:?}"
    );
    assert_cut_off_on_record(&s.gw);
}

/// The `sleep 30` cut off by the session's end is on record (its intent was), without an exit
/// status and saying why.
fn assert_cut_off_on_record(gw: &Gateway) {
    wait_requests(gw, 1);
    let r = record_query(
        &gw.record_db(),
        "SELECT json_extract(body, '$.text'), json_extract(body, '$.exit_status'), \
         json_extract(body, '$.error') FROM audit_log WHERE kind = 'statement'",
    );
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0][0], "sleep 30; echo finished", "{r:?}");
    assert_eq!(r[0][1], Value::Null, "{r:?}");
    assert!(
        r[0][2]
            .as_str()
            .unwrap_or("")
            .contains("ended with the session"),
        "{r:?}"
    );
}

/// A token valid for ~5 s ends the `sleep 30` it started at its expiry.
#[test]
fn token_expiry_ends_a_running_exec() {
    let s = setup("expiry", 20476, "");
    s.token
        .write(&mint(&s.subject(), &["agents"], now(), now() + 5));
    let started = Instant::now();
    let child = spawn_sleep(&s);
    let (out, _, killed) = wait_output(child, Duration::from_secs(20));
    let took = started.elapsed();
    assert!(!killed, "the exec outlived the token: {}", text(&out));
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "ended after {took:?}: {}",
        text(&out)
    );
    assert!(!stdout(&out).contains("finished"), "{}", text(&out));
    wait_until(
        "the session closed on record",
        Duration::from_secs(10),
        || {
            !record_query(
                &s.gw.record_db(),
                "SELECT ended_by FROM sessions WHERE ended_ms IS NOT NULL",
            )
            .is_empty()
        },
    );
    let ended = record_query(&s.gw.record_db(), "SELECT ended_by FROM sessions");
    assert!(
        ended[0][0].as_str().unwrap_or("").contains("expired"),
        "{ended:?}"
    );
    assert_cut_off_on_record(&s.gw);
}

/// A reload that takes the login away ends the running session; one that keeps it does not.
#[test]
fn a_reload_removing_the_login_rule_ends_the_session() {
    let s = setup("reload", 20478, "");
    let child = spawn_sleep(&s);
    wait_until("the exec running", Duration::from_secs(15), || {
        intents(&s.gw) == 1
    });
    // The same policy with an unrelated rule added: the session stays.
    let kept = s.policy_text(SHELLS);
    s.reload(&kept);
    std::thread::sleep(Duration::from_millis(500));
    // Another spelling of the same login list keeps it too.
    let removed = s.policy_text("").replace(
        &format!("logins: [{DEPLOY_USER}]"),
        &format!("logins: [{READER_USER}]"),
    );
    let started = Instant::now();
    let applied = s.reload(&removed);
    let (out, _, killed) = wait_output(child, Duration::from_secs(15));
    assert!(!killed, "the exec outlived the reload: {}", text(&out));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ended {:?} after the reload; applied {applied}",
        started.elapsed()
    );
    assert!(!stdout(&out).contains("finished"), "{}", text(&out));
    let again = s.exec("echo after-reload");
    assert!(!again.status.success(), "{}", text(&again));
    assert_cut_off_on_record(&s.gw);
}

// ---------------------------------------------------------------------------------------------
// 7. Twenty CI agents at once.
// ---------------------------------------------------------------------------------------------

/// Twenty short-lived agents, each with its own token (the JWT as password), at once: every
/// session on record with its own subject and its command; `agents` lists them all, then shows
/// them expired.
#[test]
fn twenty_concurrent_agents_each_on_record_with_its_subject() {
    let s = setup_with("ci", 20480, true, "");
    let children: Vec<(String, Child)> = (0..20)
        .map(|i| {
            let sub = format!("ci-job-{i}");
            // Short-lived, as CI job tokens are: `agents` shows them expiring below.
            let jwt = mint(&sub, &["agents"], now(), now() + 10);
            let child = paramiko_cmd(&s, &jwt, None, &format!("echo job-{i}"))
                .spawn()
                .unwrap();
            (sub, child)
        })
        .collect();
    for (i, (sub, child)) in children.into_iter().enumerate() {
        let (out, _, killed) = wait_output(child, Duration::from_secs(60));
        assert!(!killed, "{sub}: {}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{sub}: {e}: {}", text(&out)));
        assert_eq!(v["ok"], true, "{sub}: {v}");
        assert_eq!(
            v["stdout"].as_str().unwrap().trim(),
            format!("job-{i}"),
            "{v}"
        );
    }
    wait_until("twenty sessions closed", Duration::from_secs(20), || {
        agentgate_tests::record_count(
            &s.gw.record_db(),
            "SELECT count(*) FROM sessions WHERE ended_ms IS NOT NULL",
        ) == 20
    });
    let rows = record_query(
        &s.gw.record_db(),
        "SELECT s.subject, st.text FROM sessions s JOIN statements st ON st.session = s.id \
         ORDER BY s.subject",
    );
    assert_eq!(rows.len(), 20, "{rows:?}");
    for r in &rows {
        let sub = r[0].as_str().unwrap();
        let n = sub.strip_prefix("ci-job-").expect("subject");
        assert_eq!(r[1], format!("echo job-{n}"), "{rows:?}");
    }
    // `agents` lists each of them, SSH beside any other protocol, and sees their tokens expire.
    let agents = || -> Vec<Value> {
        let out = Command::new(agentgate_bin())
            .args(["agents", "--json", "--record-db"])
            .arg(s.gw.record_db())
            .output()
            .expect("run agentgate agents");
        assert!(out.status.success(), "{}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).expect("agents --json");
        v.as_array()
            .expect("an array")
            .iter()
            .filter(|a| a["subject"].as_str().unwrap_or("").starts_with("ci-job-"))
            .cloned()
            .collect()
    };
    assert_eq!(agents().len(), 20, "{:?}", agents());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = agents();
        if listed.len() == 20 && listed.iter().all(|a| a["status"] == "expired") {
            break;
        }
        assert!(Instant::now() < deadline, "not all expired: {listed:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------
// 8. A secret printed by `cat`.
// ---------------------------------------------------------------------------------------------

const AWS_KEY: &str = "AKIAZ7QX4PLMNB2RTUVW";
const PEM_BODY: &str = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW";

/// A file on the target holding an AWS access key and a PEM private key.
fn secret_file(remote: &DeployDir) -> PathBuf {
    let file = remote.0.join("creds");
    std::fs::write(
        &file,
        format!(
            "aws_access_key_id = {AWS_KEY}\n-----BEGIN OPENSSH PRIVATE KEY-----\n{PEM_BODY}\n-----END OPENSSH PRIVATE KEY-----\n"
        ),
    )
    .unwrap();
    set_mode(&file, 0o644);
    file
}

const MASK_SECRETS: &str = "  - name: mask-secrets
    targets: [build-host]
    mask:
      detectors: [secret]
";

/// What happens today (masking of SSH output is not built): a policy that asks to mask an SSH
/// target's output is refused, rather than loaded and silently not applied; without one, what
/// `cat` prints reaches the agent and the record as it is. When masking lands, this test
/// changes with it (and the ignored one below runs).
#[test]
fn a_secret_printed_by_cat_today_passes_as_is_and_ssh_mask_rules_are_refused() {
    let s = setup("catsecret", 20484, "");
    let dir = s.keys.dir.join("mask-policy");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("policy.yaml"), s.policy_text(MASK_SECRETS)).unwrap();
    let check = Command::new(agentgate_bin())
        .args(["policy", "check"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    assert!(
        format!("{}{}", stdout(&check), stderr(&check)).contains("masking is for postgres targets"),
        "{}",
        text(&check)
    );
    let remote = DeployDir::new("catsecret");
    let file = secret_file(&remote);
    let out = s.exec(&format!("cat {}", file.display()));
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains(AWS_KEY), "{}", text(&out));
    assert!(stdout(&out).contains(PEM_BODY), "{}", text(&out));
    wait_requests(&s.gw, 1);
    let r = requests(&s.gw);
    assert!(r[0][5].as_str().unwrap_or("").contains(AWS_KEY), "{r:?}");
}

/// An AWS key and a PEM private key printed by `cat` are masked in what the agent reads and in
/// the record.
#[test]
// Fails today at the start: the gateway refuses a mask rule on an SSH target.
#[ignore = "masking of SSH output: not built yet"]
fn a_secret_printed_by_cat_is_masked() {
    let s = setup("mask", 20482, MASK_SECRETS);
    let remote = DeployDir::new("mask");
    let file = secret_file(&remote);
    let out = s.exec(&format!("cat {}", file.display()));
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("aws_access_key_id"), "{}", text(&out));
    assert!(
        !stdout(&out).contains(AWS_KEY),
        "the agent read the key: {}",
        text(&out)
    );
    assert!(!stdout(&out).contains(PEM_BODY), "{}", text(&out));
    wait_requests(&s.gw, 1);
    let r = requests(&s.gw);
    assert!(!r[0][5].as_str().unwrap_or("").contains(AWS_KEY), "{r:?}");
    assert!(!r[0][5].as_str().unwrap_or("").contains(PEM_BODY), "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// Held commands and the session's end: the agent gives up, or a reload takes the login away.
// ---------------------------------------------------------------------------------------------

/// A command held for approval whose agent gives up (its `ssh` killed), or whose login a reload
/// takes away while it waits, is no longer pending, and approving it afterwards runs nothing.
#[test]
fn a_held_command_ends_with_its_session() {
    let rules = "  - name: touches-need-approval
    commands: {programs: [touch]}
    approval: {approvers: [oncall], timeout_secs: 60}
    targets: [build-host]
";
    let s = setup("heldend", 20486, rules);
    let remote = DeployDir::new("heldend");
    let approvals = |args: &[&str]| -> Output {
        Command::new(agentgate_bin())
            .arg("approvals")
            .args(args)
            .arg("--admin-socket")
            .arg(s.gw.admin_socket())
            .output()
            .expect("run agentgate approvals")
    };
    let pending = || -> Vec<Value> {
        let out = approvals(&["list", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["requests"].as_array().cloned().unwrap_or_default()
    };
    let held = |marker: &Path| -> (Child, String) {
        let child = s
            .ssh(&[])
            .arg(format!("touch {}", marker.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_until("the request pending", Duration::from_secs(15), || {
            pending().len() == 1
        });
        let id = pending()[0]["id"].as_str().unwrap().to_string();
        (child, id)
    };

    // The agent gives up.
    let first = remote.0.join("first");
    let (mut child, id) = held(&first);
    child.kill().unwrap();
    let _ = child.wait();
    wait_until(
        "the request no longer pending",
        Duration::from_secs(10),
        || pending().is_empty(),
    );
    let late = approvals(&["approve", &id]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!first.exists(), "ran after its agent left: {}", text(&late));

    // A reload takes the login away while it waits.
    let second = remote.0.join("second");
    let (child, id) = held(&second);
    let removed = s.policy_text(rules).replace(
        &format!("logins: [{DEPLOY_USER}]"),
        &format!("logins: [{READER_USER}]"),
    );
    s.reload(&removed);
    let (out, _, killed) = wait_output(child, Duration::from_secs(15));
    assert!(!killed, "the held exec outlived the reload: {}", text(&out));
    assert!(!out.status.success(), "{}", text(&out));
    wait_until(
        "the request no longer pending",
        Duration::from_secs(10),
        || pending().is_empty(),
    );
    let late = approvals(&["approve", &id]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!second.exists(), "ran after the reload: {}", text(&late));
    wait_requests(&s.gw, 2);
    let r = requests(&s.gw);
    assert!(r.iter().all(|x| x[2] == "denied"), "{r:?}");
    assert_eq!(intents(&s.gw), 0, "nothing went on record as about to run");
}
