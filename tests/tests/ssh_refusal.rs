//! A refused SSH login's reason reaches the agent's client (issue 18): the real `ssh` client
//! prints it (the gateway ends the refused login with a DISCONNECT carrying the reason), and
//! Python clients get it (asyncssh in its exception, paramiko in its log); a refused agent never
//! gets a channel: its command does not run. Debian's sshd is the target, the agents run in a
//! managed cgroup (setup in `ssh_common`).
//!
//! Ports: 20650–20659 (sshd on the even port, the gateway on the odd one after it).

mod ssh_common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use agentgate_tests::{
    mint, now, place,
    ssh::{self, DEPLOY_USER, READER_USER, SYSTEM_PYTHON},
    wait_until,
};
use serde_json::Value;
use ssh_common::*;

/// `ssh -l user` from the agent's cgroup running `command`.
fn ssh_as(s: &Setup, user: &str, command: &str) -> std::process::Output {
    let mut cmd = ssh::ssh_command(&s.keys.agent_known_hosts, s.sshd.port, user, &[]);
    cmd.arg(command);
    place(&mut cmd, Some(&s.cg), None);
    cmd.output().expect("run ssh")
}

/// The refusal events' codes and messages, in order.
fn refusals(s: &Setup) -> Vec<(String, String)> {
    s.gw.events()
        .into_iter()
        .filter(|e| e["event"] == "refused")
        .map(|e| {
            (
                e["code"].as_str().unwrap_or_default().to_string(),
                e["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn wait_refusals(s: &Setup, n: usize) -> Vec<(String, String)> {
    wait_until("the refusal events", Duration::from_secs(10), || {
        s.gw.count("refused") >= n
    });
    refusals(s)
}

/// A login no rule allows (the rules restrict logins to DEPLOY_USER), and one with an expired
/// token and then no token in the workload's file: `ssh` (and `sftp`, for the first) prints the
/// gateway's reason on stderr, the same one the refusal event has; the command never runs on the
/// target; nothing is on record as a request.
#[test]
fn ssh_prints_why_its_login_was_refused() {
    let s = setup("refusal", 20650, "");
    let remote = DeployDir::new("refusal");
    let marker = remote.0.join("ran");
    let touch = format!("touch {}", marker.display());

    let out = ssh_as(&s, READER_USER, &touch);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out));
    let err = stderr(&out);
    assert!(err.contains("Received disconnect from"), "{}", text(&out));
    let r = wait_refusals(&s, 1);
    assert_eq!(r[0].0, "denied", "{r:?}");
    assert!(
        err.contains(&format!("agentgate: {}", r[0].1)),
        "ssh shows the refusal's reason {:?}: {}",
        r[0].1,
        text(&out)
    );
    assert!(!err.contains("Permission denied"), "{err}");
    // sftp runs ssh: the same.
    let batch = s.keys.dir.join("batch");
    std::fs::write(&batch, "ls /\n").unwrap();
    let mut cmd = ssh::sftp_command(
        &s.keys.agent_known_hosts,
        s.sshd.port,
        READER_USER,
        &batch,
        &[],
    );
    place(&mut cmd, Some(&s.cg), None);
    let out = cmd.output().expect("run sftp");
    assert!(!out.status.success(), "{}", text(&out));
    let r = wait_refusals(&s, 2);
    assert!(
        stderr(&out).contains(&format!("agentgate: {}", r[1].1)),
        "sftp shows the reason: {}",
        text(&out)
    );

    // An expired token in the workload's file.
    s.token
        .write(&mint(&s.subject(), &["agents"], now() - 600, now() - 300));
    let out = ssh_as(&s, DEPLOY_USER, &touch);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out));
    let r = wait_refusals(&s, 3);
    assert!(
        stderr(&out).contains(&format!("agentgate: {}", r[2].1)),
        "{r:?}: {}",
        text(&out)
    );
    assert!(stderr(&out).contains("expired"), "{}", text(&out));

    // No token at all.
    std::fs::remove_file(&s.token.path).unwrap();
    let out = ssh_as(&s, DEPLOY_USER, &touch);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out));
    let r = wait_refusals(&s, 4);
    assert!(
        stderr(&out).contains(&format!("agentgate: {}", r[3].1)),
        "{r:?}: {}",
        text(&out)
    );
    assert!(stderr(&out).contains("token file"), "{}", text(&out));

    assert!(!marker.exists(), "a refused agent's command ran");
    assert!(requests(&s.gw).is_empty(), "{:?}", requests(&s.gw));

    // A good token again: the same workload logs in and runs its command.
    s.token
        .write(&mint(&s.subject(), &["agents"], now(), now() + 600));
    let ok = ssh_as(&s, DEPLOY_USER, &touch);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(marker.exists());
}

/// asyncssh, then paramiko, with the JWT as the password: an expired token and a login no
/// rule allows are refused, and the reason reaches the client (see [`assert_reason_reached`]);
/// the command never runs.
const PY_CLIENTS: &str = r#"
import asyncio, json, logging, sys, warnings
warnings.filterwarnings("ignore")
client, host, port, user, known, password, command = sys.argv[1:]

def asyncssh_run():
    import asyncssh
    async def main():
        async with asyncssh.connect(host, port=int(port), username=user, password=password,
                                    known_hosts=known, client_keys=None, agent_path=None,
                                    preferred_auth=["password"]) as c:
            r = await c.run(command)
            return r.stdout
    return asyncio.run(asyncio.wait_for(main(), 20))

def paramiko_run():
    import paramiko
    c = paramiko.SSHClient()
    c.load_host_keys(known)
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        c.connect(host, port=int(port), username=user, password=password,
                  look_for_keys=False, allow_agent=False,
                  timeout=15, banner_timeout=15, auth_timeout=15)
        _i, o, _e = c.exec_command(command, timeout=15)
        return o.read().decode()
    finally:
        c.close()

logs = []
class Keep(logging.Handler):
    def emit(self, record):
        logs.append(record.getMessage())
for name in ("paramiko", "asyncssh"):
    logging.getLogger(name).addHandler(Keep())
    logging.getLogger(name).setLevel(logging.INFO)
try:
    out = asyncssh_run() if client == "asyncssh" else paramiko_run()
    print(json.dumps({"ok": True, "stdout": out, "logs": logs}))
except BaseException as ex:
    print(json.dumps({"ok": False, "error_type": type(ex).__name__, "error": str(ex), "logs": logs}))
"#;

fn py(s: &Setup, client: &str, user: &str, password: &str, command: &str) -> Value {
    let mut cmd = Command::new(SYSTEM_PYTHON);
    cmd.args([
        "-c",
        PY_CLIENTS,
        client,
        "127.0.0.1",
        &s.sshd.port.to_string(),
        user,
    ])
    .arg(&s.keys.agent_known_hosts)
    .arg(password)
    .arg(command)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    place(&mut cmd, Some(&s.cg), None);
    let out = cmd.output().expect("run python");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{client} printed {} ({e}): {}", stdout(&out), stderr(&out)))
}

/// The client's exception or its INFO log carries the gateway's reason. asyncssh and paramiko
/// see the login succeed and the connection end at once with the reason (asyncssh logs
/// `Connection failure: <reason>`, paramiko `Disconnect (code 14): <reason>`); their
/// exception is the failed channel open that follows.
fn assert_reason_reached(r: &Value, reason: &str) {
    let want = format!("agentgate: {reason}");
    let error = r["error"].as_str().unwrap_or_default();
    let logs = r["logs"].to_string();
    assert!(
        error.contains(&want) || logs.contains(&want),
        "the reason {want:?} reached the client: {r}"
    );
}

#[test]
fn python_clients_get_the_reason() {
    let s = setup_with("refusalpy", 20652, true, "");
    let remote = DeployDir::new("refusalpy");
    let marker = remote.0.join("ran");
    let touch = format!("touch {}", marker.display());
    let expired = mint(&s.subject(), &["agents"], now() - 600, now() - 300);
    let good = mint(&s.subject(), &["agents"], now(), now() + 600);

    let r = py(&s, "asyncssh", DEPLOY_USER, &expired, &touch);
    assert_eq!(r["ok"], false, "{r}");
    let reasons = wait_refusals(&s, 1);
    assert_eq!(reasons[0].0, "expired", "{reasons:?}");
    assert_reason_reached(&r, &reasons[0].1);

    let r = py(&s, "asyncssh", READER_USER, &good, &touch);
    assert_eq!(r["ok"], false, "{r}");
    let reasons = wait_refusals(&s, 2);
    assert_eq!(reasons[1].0, "denied", "{reasons:?}");
    assert_reason_reached(&r, &reasons[1].1);

    let r = py(&s, "paramiko", DEPLOY_USER, &expired, &touch);
    assert_eq!(r["ok"], false, "{r}");
    let reasons = wait_refusals(&s, 3);
    assert_reason_reached(&r, &reasons[2].1);

    assert!(!marker.exists(), "a refused agent's command ran");
    assert!(requests(&s.gw).is_empty(), "{:?}", requests(&s.gw));
    let ok = py(&s, "asyncssh", DEPLOY_USER, &good, &touch);
    assert_eq!(ok["ok"], true, "{ok}");
    assert!(marker.exists());
}
