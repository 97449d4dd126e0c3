//! SSH through the gateway, end to end with real parts: Debian's sshd as the target (trusting a
//! user CA), the real `ssh` client as the agent in a managed cgroup with
//! StrictHostKeyChecking=yes and only a `@cert-authority` line for the gateway's host CA, the
//! eBPF capture, and the gateway's record.
//!
//! Ports: 20427–20459.

use std::{
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use agentgate_tests::{
    agentgate_bin, now, place, record_query, require_root,
    ssh::{self, Sshd, SshdOptions, DEPLOY_USER, READER_USER},
    unique, wait_until, Cgroup, Gateway, TokenFile, ISSUER,
};
use serde_json::Value;
use ssh_common::{policy_with, requests, text, Keys};

mod ssh_common;

/// The policy: one workload (token from `token`), one ssh target on `sshd`, `deploy` logins
/// allowed to group agents; `extra_rules` appended.
fn policy(
    listen: u16,
    cg: &str,
    token: &Path,
    sshd: &Sshd,
    keys: &Keys,
    extra_rules: &str,
) -> String {
    let token = format!("{{from: file, path: {}}}", token.display());
    let host_key = format!(
        "host_ca_key: {}\n      host_names: [build-host-7]",
        keys.host_ca.private.display()
    );
    policy_with(listen, cg, &token, &host_key, sshd, keys, extra_rules)
}

/// `ssh` from inside `cg` as the agent: `-l login`, the command after.
fn agent_ssh(cg: &Cgroup, keys: &Keys, port: u16, login: &str, command: &str) -> Output {
    let mut cmd = ssh::ssh_command(&keys.agent_known_hosts, port, login, &[]);
    cmd.arg(command);
    place(&mut cmd, Some(cg), None);
    cmd.output().expect("run ssh")
}

struct Setup {
    sshd: Sshd,
    keys: Keys,
    token: TokenFile,
    cg: Cgroup,
    gw: Gateway,
}

fn setup(tag: &str, listen: u16, port: u16, extra_rules: &str) -> Setup {
    require_root();
    ssh::ensure_user(DEPLOY_USER);
    ssh::ensure_user(READER_USER);
    let sshd = Sshd::start(port, SshdOptions::default());
    let keys = Keys::new(tag, &sshd);
    let token = TokenFile::valid(tag);
    let cg = Cgroup::create(&format!("/{}", unique(&format!("ssh-{tag}"))));
    let gw = Gateway::start(
        &format!("ssh-{tag}"),
        &policy(
            listen,
            cg.rel.trim_start_matches('/'),
            &token.path,
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
    }
}

/// An unmodified `ssh` with StrictHostKeyChecking=yes and only the gateway's host CA trusted
/// reaches the target through the gateway; the gateway logs in with a per-session user
/// certificate whose key id names the agent (the target's own auth log says who); the agent's
/// request is on record with its exit status and output.
#[test]
fn exec_through_the_gateway_with_a_host_certificate_and_a_user_certificate() {
    let s = setup("exec", 20451, 20450, "");
    let out = agent_ssh(
        &s.cg,
        &s.keys,
        s.sshd.port,
        DEPLOY_USER,
        "echo hello-from-$(whoami)",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("hello-from-{DEPLOY_USER}"),
        "{}",
        text(&out)
    );
    let log = s
        .sshd
        .wait_log("Accepted publickey", Duration::from_secs(10));
    assert!(
        log.contains(&format!("ID agentgate:{ISSUER}#agent-exec session ")),
        "the target's auth log names the agent: {log}"
    );
    let exit = agent_ssh(&s.cg, &s.keys, s.sshd.port, DEPLOY_USER, "exit 3");
    assert_eq!(exit.status.code(), Some(3), "{}", text(&exit));
    wait_until("two requests on record", Duration::from_secs(10), || {
        requests(&s.gw).len() >= 2
    });
    let r = requests(&s.gw);
    assert_eq!(r[0][0], "exec", "{r:?}");
    assert_eq!(r[0][1], "echo hello-from-$(whoami)", "{r:?}");
    assert_eq!(r[0][2], "allowed", "{r:?}");
    assert_eq!(r[0][4], 0, "{r:?}");
    assert_eq!(
        r[0][5].as_str().map(str::trim),
        Some(format!("hello-from-{DEPLOY_USER}").as_str()),
        "{r:?}"
    );
    assert_eq!(r[1][4], 3, "{r:?}");
    // Each request had its durable intent before it ran.
    let intents = record_query(
        &s.gw.record_db(),
        "SELECT count(*) FROM audit_log WHERE kind = 'statement_intent'",
    );
    assert_eq!(intents[0][0], 2, "{intents:?}");
    let _ = &s.token;
}

/// A login no rule allows is refused; the agent's own key is never an identity.
#[test]
fn logins_are_restricted_by_rules() {
    let s = setup("login", 20453, 20452, "");
    let out = agent_ssh(&s.cg, &s.keys, s.sshd.port, READER_USER, "true");
    assert!(!out.status.success(), "{}", text(&out));
    // The gateway's reason reaches the client (the disconnect that ends the refused login;
    // tests/tests/ssh_refusal.rs covers it), and is in the refusal event and record.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("agentgate: no rule allows"),
        "{}",
        text(&out)
    );
    wait_until("the refusal event", Duration::from_secs(10), || {
        s.gw.count("refused") >= 1
    });
    let refused: Vec<Value> =
        s.gw.events()
            .into_iter()
            .filter(|e| e["event"] == "refused")
            .collect();
    assert_eq!(refused[0]["code"], "denied", "{refused:?}");
    // The allowed login still works from the same workload.
    let ok = agent_ssh(&s.cg, &s.keys, s.sshd.port, DEPLOY_USER, "true");
    assert!(ok.status.success(), "{}", text(&ok));
}

/// Command rules: a deny list refuses with exit status 126 and a stderr line naming the rule;
/// an allow list refuses what it does not list, disguises included; shells need a rule.
#[test]
fn command_rules_deny_with_126_and_name_the_rule() {
    let rules = "  - name: no-rm
    effect: deny
    commands: {programs: [rm]}
    targets: [build-host]
  - name: only-these
    effect: deny
    commands: {allow: [\"echo *\", \"uptime\", \"true\"]}
    targets: [build-host]
";
    let s = setup("deny", 20455, 20454, rules);
    let marker = format!("/tmp/{}-marker", unique("ssh-deny"));
    std::fs::write(&marker, "x").unwrap();
    let out = agent_ssh(
        &s.cg,
        &s.keys,
        s.sshd.port,
        DEPLOY_USER,
        &format!("rm -f {marker}"),
    );
    assert_eq!(out.status.code(), Some(126), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused by rule \"no-rm\""),
        "{}",
        text(&out)
    );
    assert!(Path::new(&marker).exists(), "the denied rm never ran");
    for disguise in [
        format!("sh -c \"$(printf 'rm -f {marker}')\""),
        format!("echo x; rm -f {marker}"),
        format!("/bin/r''m -f {marker}"),
    ] {
        let out = agent_ssh(&s.cg, &s.keys, s.sshd.port, DEPLOY_USER, &disguise);
        assert_eq!(out.status.code(), Some(126), "{disguise}: {}", text(&out));
        assert!(Path::new(&marker).exists(), "{disguise} ran");
    }
    let ok = agent_ssh(&s.cg, &s.keys, s.sshd.port, DEPLOY_USER, "echo fine");
    assert!(ok.status.success(), "{}", text(&ok));
    let _ = std::fs::remove_file(&marker);
    wait_until("five requests on record", Duration::from_secs(10), || {
        requests(&s.gw).len() >= 5
    });
    let r = requests(&s.gw);
    assert_eq!(r[0][2], "denied", "{r:?}");
    assert_eq!(r[0][3], "no-rm", "{r:?}");
    assert_eq!(r[0][4], 126, "{r:?}");
    assert_eq!(r[4][2], "allowed", "{r:?}");
    // No intent for what was refused.
    let intents = record_query(
        &s.gw.record_db(),
        "SELECT count(*) FROM audit_log WHERE kind = 'statement_intent'",
    );
    assert_eq!(intents[0][0], 1, "{intents:?}");
}

/// A command held for approval waits; approved, it runs; denied, it does not, and the agent
/// reads the approver's reason.
#[test]
fn held_commands_run_only_when_approved() {
    let rules = "  - name: restarts-need-approval
    commands: {programs: [systemctl]}
    approval: {approvers: [oncall], timeout_secs: 60}
    targets: [build-host]
";
    let s = setup("held", 20457, 20456, rules);
    let spawn = |cmd: &str| {
        let mut c = ssh::ssh_command(&s.keys.agent_known_hosts, s.sshd.port, DEPLOY_USER, &[]);
        c.arg(cmd)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        place(&mut c, Some(&s.cg), None);
        c.spawn().expect("spawn ssh")
    };
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
    // `systemctl --version` stands for a restart: harmless on any machine.
    let child = spawn("systemctl --version");
    wait_until("the request pending", Duration::from_secs(15), || {
        pending().len() == 1
    });
    let req = pending().remove(0);
    assert_eq!(req["protocol"], "ssh", "{req}");
    assert_eq!(req["statement"], "systemctl --version", "{req}");
    assert_eq!(req["database"], DEPLOY_USER, "the login it runs as: {req}");
    let id = req["id"].as_str().unwrap().to_string();
    let ok = approvals(&["approve", &id]);
    assert!(ok.status.success(), "{}", text(&ok));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("systemd"),
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("request {id}")),
        "the agent was told what it waits for: {}",
        text(&out)
    );

    let child = spawn("systemctl --version");
    wait_until(
        "the second request pending",
        Duration::from_secs(15),
        || pending().len() == 1,
    );
    let id2 = pending()[0]["id"].as_str().unwrap().to_string();
    let no = approvals(&["deny", &id2, "--reason", "not during the freeze"]);
    assert!(no.status.success(), "{}", text(&no));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(126), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not during the freeze"),
        "{}",
        text(&out)
    );
    wait_until("two requests on record", Duration::from_secs(10), || {
        requests(&s.gw).len() >= 2
    });
    let r = requests(&s.gw);
    assert_eq!(r[0][2], "approved", "{r:?}");
    assert_eq!(r[1][2], "denied", "{r:?}");
}

/// The target's host key is checked: a target presenting another key is refused, and the
/// agent never gets a session.
#[test]
fn a_wrong_target_host_key_fails_closed() {
    let s = setup("hostkey", 20459, 20458, "");
    // Another server's key in the gateway's known_hosts for this target.
    let other = ssh::keygen(&s.keys.dir.join("other"), "not the target");
    ssh::write_known_hosts(
        &s.keys.target_known_hosts,
        &[ssh::known_hosts_plain(
            "127.0.0.1",
            s.sshd.port,
            &other.public_line(),
        )],
    );
    let out = agent_ssh(
        &s.cg,
        &s.keys,
        s.sshd.port,
        DEPLOY_USER,
        "echo should-not-run",
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("should-not-run"),
        "{}",
        text(&out)
    );
    wait_until("upstream_failed", Duration::from_secs(10), || {
        s.gw.count("upstream_failed") >= 1
    });
    assert!(
        !s.sshd.auth_log().contains("Accepted publickey"),
        "no login reached the target"
    );
    let _ = now();
}

/// A known_hosts with only the gateway's host CA line (the shared `agent_known_hosts` also
/// pins the target's own key, for paramiko in the imported mode).
fn ca_only(keys: &Keys) -> std::path::PathBuf {
    let path = keys.dir.join("ca_only_known_hosts");
    ssh::write_known_hosts(
        &path,
        &[ssh::known_hosts_ca("*", &keys.host_ca.public_line())],
    );
    path
}

/// paramiko reads only plain known_hosts lines: run with the JWT as its password.
const PARAMIKO: &str = r#"
import json, sys, warnings
warnings.filterwarnings("ignore")
import paramiko
host, port, user, known_hosts, password, command = sys.argv[1:]
c = paramiko.SSHClient()
c.load_host_keys(known_hosts)
c.set_missing_host_key_policy(paramiko.RejectPolicy())
try:
    c.connect(host, port=int(port), username=user, password=password, look_for_keys=False,
              allow_agent=False, timeout=15, banner_timeout=15, auth_timeout=15)
    _i, o, e = c.exec_command(command, timeout=30)
    out = o.read().decode()
    print(json.dumps({"ok": True, "exit": o.channel.recv_exit_status(), "stdout": out}))
except Exception as ex:
    print(json.dumps({"ok": False, "error_type": type(ex).__name__, "error": str(ex)}))
"#;

fn paramiko(cg: &Cgroup, port: u16, known_hosts: &Path, jwt: &str, command: &str) -> Value {
    let mut cmd = Command::new(ssh::SYSTEM_PYTHON);
    cmd.args(["-c", PARAMIKO, "127.0.0.1", &port.to_string(), DEPLOY_USER])
        .arg(known_hosts)
        .args([jwt, command]);
    place(&mut cmd, Some(cg), None);
    let out = cmd.output().expect("run paramiko");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("paramiko: {e}: {}", text(&out)))
}

/// A gateway for a `token: {from: credential}` workload (the JWT is the password) with the
/// given host-key lines.
fn credential_setup(
    tag: &str,
    listen: u16,
    port: u16,
    host_key: impl Fn(&Sshd, &Keys) -> String,
) -> (Setup, String) {
    require_root();
    ssh::ensure_user(DEPLOY_USER);
    let sshd = Sshd::start(port, SshdOptions::default());
    let keys = Keys::new(tag, &sshd);
    let token = TokenFile::valid(tag);
    let cg = Cgroup::create(&format!("/{}", unique(&format!("ssh-{tag}"))));
    let yaml = policy_with(
        listen,
        cg.rel.trim_start_matches('/'),
        "{from: credential}",
        &host_key(&sshd, &keys),
        &sshd,
        &keys,
        "",
    );
    let gw = Gateway::start(&format!("ssh-{tag}"), &yaml);
    gw.wait_classified(&cg.rel);
    let jwt = agentgate_tests::mint(&format!("agent-{tag}"), &["agents"], now(), now() + 600);
    (
        Setup {
            sshd,
            keys,
            token,
            cg,
            gw,
        },
        jwt,
    )
}

/// The target's own host key, imported: clients that pin it (paramiko with a plain line, ssh
/// with StrictHostKeyChecking=yes) connect through the gateway unchanged.
#[test]
fn an_imported_target_host_key_serves_clients_that_pin_it() {
    let (s, jwt) = credential_setup("imported", 20446, 20445, |sshd, _| {
        format!("host_key: {}", sshd.host_key_path().display())
    });
    let pinned = s.keys.dir.join("pinned_known_hosts");
    ssh::write_known_hosts(
        &pinned,
        &[ssh::known_hosts_plain(
            "127.0.0.1",
            s.sshd.port,
            &s.sshd.host_public_line(),
        )],
    );
    let r = paramiko(&s.cg, s.sshd.port, &pinned, &jwt, "echo pinned-$(whoami)");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        r["stdout"].as_str().map(str::trim),
        Some(format!("pinned-{DEPLOY_USER}").as_str()),
        "{r}"
    );
    // Only the gateway's host CA line: this target presents no certificate, so ssh refuses.
    let ca_only = paramiko(&s.cg, s.sshd.port, &ca_only(&s.keys), &jwt, "true");
    assert_eq!(ca_only["ok"], false, "{ca_only}");
}

/// A derived host key with a host certificate: paramiko ignores `@cert-authority` lines, so it
/// is refused with only the CA line and connects with a plain line for the derived key (as
/// `ssh-keyscan` of the target's address, captured, shows it).
#[test]
fn paramiko_needs_a_plain_line_for_the_derived_host_key() {
    let (s, jwt) = credential_setup("derived", 20448, 20447, |_, keys| {
        format!(
            "host_ca_key: {}\n      host_names: [build-host-7]",
            keys.host_ca.private.display()
        )
    });
    let ca_only = paramiko(&s.cg, s.sshd.port, &ca_only(&s.keys), &jwt, "true");
    assert_eq!(ca_only["ok"], false, "{ca_only}");
    assert!(
        ca_only["error"]
            .as_str()
            .unwrap_or("")
            .contains("not found in known_hosts"),
        "{ca_only}"
    );
    let mut scan = Command::new("ssh-keyscan");
    scan.args(["-t", "ed25519", "-p", &s.sshd.port.to_string(), "127.0.0.1"]);
    place(&mut scan, Some(&s.cg), None);
    let out = scan.output().expect("ssh-keyscan");
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("ssh-ed25519"))
        .unwrap_or_else(|| panic!("ssh-keyscan through the gateway: {}", text(&out)))
        .to_string();
    assert!(
        !line.contains(
            &s.sshd
                .host_public_line()
                .split_whitespace()
                .nth(1)
                .unwrap()
                .to_string()
        ),
        "the gateway presents its derived key, not the target's: {line}"
    );
    let plain = s.keys.dir.join("plain_known_hosts");
    ssh::write_known_hosts(&plain, &[line]);
    let r = paramiko(&s.cg, s.sshd.port, &plain, &jwt, "echo derived-ok");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        r["stdout"].as_str().map(str::trim),
        Some("derived-ok"),
        "{r}"
    );
}

/// Port forwarding to a named destination: `ssh -W` to a destination a rule lists reaches it
/// through the target (greeting and echo come back), on record with its bytes; any other
/// destination is refused, and remote forwarding stays refused.
#[test]
fn forwarding_reaches_only_the_destinations_a_rule_names() {
    let service = agentgate_tests::TargetServer::start("127.0.0.1:20449".parse().unwrap());
    let rules = "  - name: tunnel-to-the-service
    commands: {forward: [\"127.0.0.1:20449\"]}
    targets: [build-host]
";
    let s = setup("forward", 20444, 20443, rules);
    let w = |dest: &str| {
        let mut cmd = ssh::ssh_command(
            &s.keys.agent_known_hosts,
            s.sshd.port,
            DEPLOY_USER,
            &["-W", dest],
        );
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        place(&mut cmd, Some(&s.cg), None);
        let mut child = cmd.spawn().expect("ssh -W");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(b"ping-through-the-tunnel\n").unwrap();
            std::thread::sleep(Duration::from_millis(500));
        }
        child.wait_with_output().unwrap()
    };
    let ok = w("127.0.0.1:20449");
    let got = String::from_utf8_lossy(&ok.stdout).to_string();
    assert!(got.contains("peer="), "the service greeted: {}", text(&ok));
    assert!(
        got.contains("ping-through-the-tunnel"),
        "echoed: {}",
        text(&ok)
    );
    assert!(service.count() >= 1);

    let before = service.count();
    let refused = w("127.0.0.1:20442");
    assert!(
        !String::from_utf8_lossy(&refused.stdout).contains("peer="),
        "{}",
        text(&refused)
    );
    let other_port = w("127.0.0.1:22");
    assert!(!other_port.status.success(), "{}", text(&other_port));
    assert_eq!(
        service.count(),
        before,
        "no other connection reached the service"
    );
    wait_until("the forward on record", Duration::from_secs(10), || {
        record_query(
            &s.gw.record_db(),
            "SELECT count(*) FROM audit_log WHERE kind = 'statement' \
             AND json_extract(body, '$.kind') = 'forward'",
        )[0][0]
            == 1
    });
    let refusals = record_query(
        &s.gw.record_db(),
        "SELECT json_extract(body, '$.what') FROM audit_log WHERE kind = 'ssh_refused'",
    );
    assert!(
        refusals
            .iter()
            .any(|r| r[0].as_str().unwrap_or("").contains("127.0.0.1:20442")),
        "{refusals:?}"
    );
    // Refused by the gateway, not merely unanswered by the target.
    assert!(
        refusals
            .iter()
            .any(|r| r[0].as_str().unwrap_or("").contains("127.0.0.1:22")),
        "{refusals:?}"
    );
}

/// `deny_and_retry`: the exec is refused at once naming its request; once approved, the
/// identical command from the same agent runs exactly once; a different command does not ride
/// on it.
#[test]
fn deny_and_retry_runs_the_identical_command_once_after_approval() {
    let rules = "  - name: restarts-retry
    commands: {programs: [systemctl]}
    approval: {approvers: [oncall], mode: deny_and_retry}
    targets: [build-host]
";
    let s = setup("retry", 20441, 20440, rules);
    let run = |cmd: &str| agent_ssh(&s.cg, &s.keys, s.sshd.port, DEPLOY_USER, cmd);
    let first = run("systemctl --version");
    assert_eq!(first.status.code(), Some(126), "{}", text(&first));
    let err = String::from_utf8_lossy(&first.stderr).to_string();
    assert!(err.contains("run the identical command again"), "{err}");
    let id = err
        .split_whitespace()
        .find(|w| w.starts_with("ar-"))
        .unwrap_or_else(|| panic!("no request id in {err}"))
        .to_string();
    // A different command is not covered by that request.
    let other = run("systemctl --help");
    assert_eq!(other.status.code(), Some(126), "{}", text(&other));
    let ok = Command::new(agentgate_bin())
        .args(["approvals", "approve", &id, "--admin-socket"])
        .arg(s.gw.admin_socket())
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", text(&ok));
    let retry = run("systemctl --version");
    assert!(retry.status.success(), "{}", text(&retry));
    assert!(
        String::from_utf8_lossy(&retry.stdout).contains("systemd"),
        "{}",
        text(&retry)
    );
    let again = run("systemctl --version");
    assert_eq!(
        again.status.code(),
        Some(126),
        "once only: {}",
        text(&again)
    );
}

/// Flow control: a target sending 256 MB to an agent that reads slowly does not grow the
/// gateway's memory (russh's bounded channel queues and the peers' windows hold the target
/// back); every byte arrives.
#[test]
fn a_slow_reader_does_not_grow_the_gateway() {
    let s = setup("slow", 20439, 20438, "");
    let rss = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", s.gw.pid())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let before = rss();
    let mut cmd = ssh::ssh_command(&s.keys.agent_known_hosts, s.sshd.port, DEPLOY_USER, &[]);
    cmd.arg("head -c 268435456 /dev/zero")
        .stdout(std::process::Stdio::piped());
    place(&mut cmd, Some(&s.cg), None);
    let mut child = cmd.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut total = 0u64;
    let mut peak = before;
    let mut buf = vec![0u8; 64 * 1024];
    let mut reads = 0u64;
    loop {
        use std::io::Read;
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
        reads += 1;
        // Slow for the first 64 MB: the target is far faster than this reader.
        if total < 64 << 20 && reads.is_multiple_of(16) {
            std::thread::sleep(Duration::from_millis(5));
        }
        if reads.is_multiple_of(64) {
            peak = peak.max(rss());
        }
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(total, 268_435_456);
    let grew_kib = peak.saturating_sub(before);
    eprintln!("gateway VmRSS {before} KiB before, peak {peak} KiB while relaying 256 MB");
    assert!(
        grew_kib < 64 * 1024,
        "the gateway grew by {grew_kib} KiB while relaying 256 MB to a slow reader ({before} KiB before)"
    );
}

/// The login has a deadline, off the accept loop: clients that stay silent, or send their
/// version line and nothing more, do not stall another agent's session and are dropped when
/// the target's `login_timeout_secs` runs out (each a `refused` event with code `timeout`).
#[test]
fn silent_and_stalled_clients_are_dropped_without_stalling_others() {
    require_root();
    ssh::ensure_user(DEPLOY_USER);
    let sshd = Sshd::start(20436, SshdOptions::default());
    let keys = Keys::new("stall", &sshd);
    let token = TokenFile::valid("stall");
    let cg = Cgroup::create(&format!("/{}", unique("ssh-stall")));
    let host_key = format!(
        "host_ca_key: {}\n      login_timeout_secs: 2",
        keys.host_ca.private.display()
    );
    let yaml = policy_with(
        20437,
        cg.rel.trim_start_matches('/'),
        &format!("{{from: file, path: {}}}", token.path.display()),
        &host_key,
        &sshd,
        &keys,
        "",
    );
    let gw = Gateway::start("ssh-stall", &yaml);
    gw.wait_classified(&cg.rel);
    let hold = |send: &str| {
        let mut cmd = Command::new(ssh::SYSTEM_PYTHON);
        cmd.args([
            "-c",
            "import socket, sys, time\n\
             s = socket.create_connection(('127.0.0.1', 20436))\n\
             s.sendall(sys.argv[1].encode())\n\
             s.settimeout(8)\n\
             try:\n    data = s.recv(65536)\n    while data:\n        data = s.recv(65536)\n    print('closed')\n\
             except socket.timeout:\n    print('still open')\n",
            send,
        ])
        .stdout(std::process::Stdio::piped());
        place(&mut cmd, Some(&cg), None);
        cmd.spawn().expect("spawn a stalled client")
    };
    let silent: Vec<_> = (0..3).map(|_| hold("")).collect();
    let stalled = hold("SSH-2.0-stalled\r\n");
    std::thread::sleep(Duration::from_millis(300));
    let out = agent_ssh(&cg, &keys, sshd.port, DEPLOY_USER, "echo not-stalled");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "not-stalled");
    for child in silent.into_iter().chain([stalled]) {
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "closed",
            "the gateway closed the stalled connection"
        );
    }
    wait_until("four timeouts", Duration::from_secs(10), || {
        gw.events()
            .iter()
            .filter(|e| e["event"] == "refused" && e["code"] == "timeout")
            .count()
            == 4
    });
}

/// One connection cannot open channels without bound: beyond 64 open at once the gateway
/// refuses (paramiko's ChannelException), and the refusals are on record.
#[test]
fn channels_per_connection_are_capped() {
    let (s, jwt) = credential_setup("chans", 20435, 20434, |_, keys| {
        format!("host_ca_key: {}", keys.host_ca.private.display())
    });
    let plain = s.keys.dir.join("plain_known_hosts");
    let mut scan = Command::new("ssh-keyscan");
    scan.args(["-t", "ed25519", "-p", "20434", "127.0.0.1"]);
    place(&mut scan, Some(&s.cg), None);
    let keyscan = scan.output().unwrap();
    let line = String::from_utf8_lossy(&keyscan.stdout)
        .lines()
        .find(|l| l.contains("ssh-ed25519"))
        .unwrap_or_else(|| panic!("{}", text(&keyscan)))
        .to_string();
    ssh::write_known_hosts(&plain, &[line]);
    let script = r#"
import json, sys, warnings
warnings.filterwarnings("ignore")
import paramiko
known_hosts, password = sys.argv[1:]
c = paramiko.SSHClient()
c.load_host_keys(known_hosts)
c.set_missing_host_key_policy(paramiko.RejectPolicy())
c.connect("127.0.0.1", port=20434, username="agdeploy", password=password,
          look_for_keys=False, allow_agent=False, timeout=15)
t = c.get_transport()
opened, refused = [], 0
for _ in range(70):
    try:
        opened.append(t.open_session(timeout=10))
    except paramiko.ChannelException:
        refused += 1
print(json.dumps({"opened": len(opened), "refused": refused}))
"#;
    let mut cmd = Command::new(ssh::SYSTEM_PYTHON);
    cmd.args(["-c", script]).arg(&plain).arg(&jwt);
    place(&mut cmd, Some(&s.cg), None);
    let out = cmd.output().unwrap();
    let v: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(v["opened"], 64, "{v}");
    assert_eq!(v["refused"], 6, "{v}");
    wait_until("the refusals on record", Duration::from_secs(10), || {
        record_query(
            &s.gw.record_db(),
            "SELECT count(*) FROM audit_log WHERE kind = 'ssh_refused'",
        )[0][0]
            .as_i64()
            .unwrap_or(0)
            >= 6
    });
}

/// The static-key mode: the gateway logs in with a key the target lists in authorized_keys
/// (the target's log shows that key, no certificate); the agent never holds it.
#[test]
fn a_static_upstream_key_logs_in_for_the_agent() {
    let (s, jwt) = credential_setup("static", 20433, 20432, |sshd, keys| {
        format!(
            "host_ca_key: {}\n      private_key: {}",
            keys.host_ca.private.display(),
            sshd.static_key().display()
        )
    });
    let plain = s.keys.dir.join("plain_known_hosts");
    let mut scan = Command::new("ssh-keyscan");
    scan.args(["-t", "ed25519", "-p", "20432", "127.0.0.1"]);
    place(&mut scan, Some(&s.cg), None);
    let keyscan = scan.output().unwrap();
    let line = String::from_utf8_lossy(&keyscan.stdout)
        .lines()
        .find(|l| l.contains("ssh-ed25519"))
        .unwrap_or_else(|| panic!("{}", text(&keyscan)))
        .to_string();
    ssh::write_known_hosts(&plain, &[line]);
    let r = paramiko(&s.cg, 20432, &plain, &jwt, "echo static-$(whoami)");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        r["stdout"].as_str().map(str::trim),
        Some(format!("static-{DEPLOY_USER}").as_str()),
        "{r}"
    );
    let log = s
        .sshd
        .wait_log("Accepted publickey", Duration::from_secs(10));
    assert!(
        !log.contains("CERT"),
        "a plain key, not a certificate: {log}"
    );
}

/// Remote forwarding (`ssh -R`) only to an address on the target a rule names: a connection to
/// that listener on the target reaches the agent's side through the gateway; any other address
/// is refused (`ExitOnForwardFailure` makes ssh say so) and on record.
#[test]
fn remote_forwarding_listens_only_where_a_rule_names() {
    let service = agentgate_tests::TargetServer::start("127.0.0.1:20430".parse().unwrap());
    let rules = "  - name: callback-port
    commands: {remote_forward: [\"127.0.0.1:20431\"]}
    targets: [build-host]
";
    let s = setup("rforward", 20429, 20428, rules);
    let spawn = |spec: &str| {
        let mut cmd = ssh::ssh_command(
            &s.keys.agent_known_hosts,
            s.sshd.port,
            DEPLOY_USER,
            &["-N", "-o", "ExitOnForwardFailure=yes", "-R", spec],
        );
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        place(&mut cmd, Some(&s.cg), None);
        cmd.spawn().expect("ssh -R")
    };
    let mut tunnel = spawn("127.0.0.1:20431:127.0.0.1:20430");
    let mut greeting = String::new();
    wait_until(
        "the target listens on 20431",
        Duration::from_secs(10),
        || {
            use std::io::{BufRead, Write};
            let Ok(mut c) = std::net::TcpStream::connect("127.0.0.1:20431") else {
                return false;
            };
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = c.write_all(b"hello-back\n");
            let mut line = String::new();
            let ok = std::io::BufReader::new(&c).read_line(&mut line).is_ok();
            greeting = line;
            ok && greeting.starts_with("peer=")
        },
    );
    assert!(service.count() >= 1, "the agent's side was reached");
    let _ = tunnel.kill();
    let _ = tunnel.wait();

    let refused = spawn("127.0.0.1:20427:127.0.0.1:20430")
        .wait_with_output()
        .unwrap();
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("forwarding failed"),
        "{}",
        text(&refused)
    );
    assert!(std::net::TcpStream::connect("127.0.0.1:20427").is_err());
    let on_record = record_query(
        &s.gw.record_db(),
        "SELECT json_extract(body, '$.text') FROM audit_log WHERE kind = 'statement' \
         AND json_extract(body, '$.kind') = 'forward' ORDER BY seq",
    );
    let texts: Vec<&str> = on_record.iter().filter_map(|r| r[0].as_str()).collect();
    assert!(
        texts.contains(&"tcpip-forward 127.0.0.1:20431"),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("forwarded-tcpip 127.0.0.1:20431")),
        "{texts:?}"
    );
    wait_until("the refusal on record", Duration::from_secs(10), || {
        record_query(
            &s.gw.record_db(),
            "SELECT count(*) FROM audit_log WHERE kind = 'ssh_refused' \
             AND json_extract(body, '$.what') LIKE '%20427%'",
        )[0][0]
            == 1
    });
}
