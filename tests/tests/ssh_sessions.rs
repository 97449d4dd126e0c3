//! SSH sessions through the gateway, end to end with real parts (issue 18): the JWT as password
//! (paramiko, and ssh through SSH_ASKPASS) and the agent's own key refused; revocation, token
//! expiry and a reload ending a running command; a held command ending with its session; 20
//! concurrent CI agents. Setup in `ssh_common`.
//!
//! Ports: 20472–20481, 20486–20487.

mod ssh_common;

use std::{
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use agentgate_tests::{
    agentgate_bin, mint, mint_with_key, now, place, record_query,
    ssh::{self, DEPLOY_USER, READER_USER, SYSTEM_PYTHON},
    wait_until, Gateway,
};
use serde_json::Value;
use ssh_common::*;

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
