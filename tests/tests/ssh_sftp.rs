//! sftp operations judged by path and recorded (issue 18), end to end with real parts: Debian's
//! sshd and sftp-server as the target, the real `sftp -b` batch client, `scp` (SFTP mode) and
//! paramiko's SFTP client as the agents, in a managed cgroup. Setup in `ssh_common`.
//!
//! Ports: 20610–20617.

mod ssh_common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use agentgate_tests::{
    agentgate_bin, mint, now, place, record_query,
    ssh::{self, DEPLOY_USER, SYSTEM_PYTHON},
    unique, wait_until,
};
use serde_json::Value;
use ssh_common::*;

fn sftp_batch(s: &Setup, batch: &str) -> Output {
    sftp_batch_with(s, batch, &[])
}

fn sftp_batch_with(s: &Setup, batch: &str, extra: &[&str]) -> Output {
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

fn scp(s: &Setup, from: &str, to: &str) -> Output {
    let mut cmd = ssh::scp_command(&s.keys.agent_known_hosts, s.sshd.port, &[]);
    cmd.args([from, to]);
    place(&mut cmd, Some(&s.cg), None);
    cmd.output().expect("run scp")
}

/// `dir` on the target, owned by the deploy login (so only the gateway can stop a write there).
fn deploy_dir(path: &Path) {
    std::fs::create_dir_all(path).unwrap();
    let uid = ssh::ensure_user(DEPLOY_USER);
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
}

fn deploy_file(path: &Path, contents: &[u8]) {
    std::fs::write(path, contents).unwrap();
    let uid = ssh::ensure_user(DEPLOY_USER);
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
}

/// The sftp operations on record, in order: (operation, text, decision, rule, error, params as
/// JSON text); the operation is the first word of the text (`class` is `sftp`). OpenSSH's client
/// renames with `posix-rename@openssh.com` where the server has it.
fn sftp_ops(s: &Setup) -> Vec<Vec<Value>> {
    let rows = record_query(
        &s.gw.record_db(),
        "SELECT json_extract(body, '$.class'), json_extract(body, '$.text'), \
         json_extract(body, '$.decision'), json_extract(body, '$.rule'), \
         json_extract(body, '$.error'), json_extract(body, '$.params') \
         FROM audit_log WHERE kind = 'statement' AND json_extract(body, '$.kind') = 'sftp' \
         ORDER BY seq",
    );
    rows.into_iter()
        .map(|mut r| {
            assert_eq!(r[0], "sftp", "class: {r:?}");
            let op = r[1].as_str().unwrap_or("").split(' ').next().unwrap_or("");
            r[0] = Value::from(op);
            r
        })
        .collect()
}

/// The file handles summed up: (path, mode, bytes read, bytes written, closed).
fn transfers(s: &Setup) -> Vec<Vec<Value>> {
    record_query(
        &s.gw.record_db(),
        "SELECT json_extract(body, '$.path'), json_extract(body, '$.mode'), \
         json_extract(body, '$.bytes_read'), json_extract(body, '$.bytes_written'), \
         json_extract(body, '$.closed') FROM audit_log WHERE kind = 'sftp_transfer' ORDER BY seq",
    )
}

fn refused(out: &Output, what: &str) {
    assert!(!out.status.success(), "{what} got through: {}", text(out));
    assert!(
        stderr(out).contains("Permission denied"),
        "{what}: sftp prints permission denied: {}",
        text(out)
    );
}

/// Under a deny list over a directory the deploy login may write: a put, rm, rename (either
/// way), chmod and mkdir there are refused (nothing changes on the target, sftp says permission
/// denied), and so is a put spelled through `..`; scp in SFTP mode too. The same operations
/// elsewhere work. Every one is on record with its path(s), the refusals with the rule; file
/// handles with their sizes (a put of 300 000 bytes, a get of 1 MiB).
#[test]
fn writes_into_denied_paths_are_refused_and_the_rest_recorded_with_sizes() {
    let remote = DeployDir::new("sftpdeny");
    let locked = remote.0.join("locked");
    let open = remote.0.join("open");
    deploy_dir(&locked);
    deploy_dir(&open);
    let keep = locked.join("keep.txt");
    deploy_file(&keep, b"keep me");
    let outside = open.join("a.txt");
    deploy_file(&outside, b"a");
    let rules = format!(
        "  - name: no-locked-writes
    effect: deny
    commands:
      sftp: {{deny_write: [\"{}/**\"]}}
    targets: [build-host]
",
        locked.display()
    );
    let s = setup("sftpdeny", 20610, &rules);
    let local = s.keys.dir.join("local");
    std::fs::create_dir_all(&local).unwrap();
    let payload = agentgate_tests::payload(18, 300_000);
    let up = local.join("up.bin");
    std::fs::write(&up, &payload).unwrap();
    let l = |p: &Path| p.display().to_string();

    // Refused: nothing changes on the target.
    let out = sftp_batch(
        &s,
        &format!("put {} {}\n", l(&up), l(&locked.join("new.bin"))),
    );
    refused(&out, "put into the denied tree");
    assert!(!locked.join("new.bin").exists());
    let out = sftp_batch(&s, &format!("rm {}\n", l(&keep)));
    refused(&out, "rm in the denied tree");
    let out = sftp_batch(
        &s,
        &format!("rename {} {}\n", l(&keep), l(&open.join("moved.txt"))),
    );
    refused(&out, "rename out of the denied tree");
    let out = sftp_batch(
        &s,
        &format!("rename {} {}\n", l(&outside), l(&locked.join("a.txt"))),
    );
    refused(&out, "rename into the denied tree");
    let out = sftp_batch(&s, &format!("chmod 600 {}\n", l(&keep)));
    refused(&out, "chmod in the denied tree");
    let out = sftp_batch(&s, &format!("mkdir {}\n", l(&locked.join("sub"))));
    refused(&out, "mkdir in the denied tree");
    // `..`: the target would resolve it into the denied tree; the gateway cannot tell.
    let dots = format!("{}/../locked/dots.bin", l(&open));
    let out = sftp_batch(&s, &format!("put {} {dots}\n", l(&up)));
    refused(&out, "put through `..`");
    assert!(!locked.join("dots.bin").exists());
    // The sftp server run as an exec by its path instead of the subsystem: read the same way.
    let out = sftp_batch_with(
        &s,
        &format!("put {} {}\n", l(&up), l(&locked.join("exec.bin"))),
        &["-s", "/usr/lib/openssh/sftp-server"],
    );
    refused(&out, "put through the sftp server run as an exec");
    assert!(!locked.join("exec.bin").exists());
    let out = scp(
        &s,
        &l(&up),
        &ssh::scp_remote(DEPLOY_USER, &l(&locked.join("scp.bin"))),
    );
    assert!(
        !out.status.success(),
        "scp into the denied tree: {}",
        text(&out)
    );
    assert!(!locked.join("scp.bin").exists());
    assert_eq!(std::fs::read(&keep).unwrap(), b"keep me");
    assert!(outside.exists() && !open.join("moved.txt").exists());
    assert!(!locked.join("sub").exists() && !locked.join("a.txt").exists());
    use std::os::unix::fs::PermissionsExt;
    assert_ne!(
        std::fs::metadata(&keep).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Allowed elsewhere, in one batch.
    let big = open.join("big.bin");
    deploy_file(&big, &agentgate_tests::payload(5, 1 << 20));
    let back = local.join("back.bin");
    let batch = format!(
        "put {up} {o}/up.bin\nrename {o}/up.bin {o}/up2.bin\nmkdir {o}/d\nrmdir {o}/d\n\
         get {o}/up2.bin {back}\nrm {o}/up2.bin\n",
        up = l(&up),
        o = l(&open),
        back = l(&back),
    );
    let out = sftp_batch(&s, &batch);
    assert!(out.status.success(), "allowed batch: {}", text(&out));
    assert_eq!(std::fs::read(&back).unwrap(), payload);
    assert!(!open.join("up2.bin").exists());
    // A get of 1 MiB with scp (SFTP mode).
    let got = local.join("big.bin");
    let out = scp(&s, &ssh::scp_remote(DEPLOY_USER, &l(&big)), &l(&got));
    assert!(out.status.success(), "scp get: {}", text(&out));
    assert_eq!(std::fs::metadata(&got).unwrap().len(), 1 << 20);

    // On record.
    let o = l(&open);
    let k = l(&keep);
    let mut ops = Vec::new();
    wait_until(
        "the sftp operations on record",
        Duration::from_secs(10),
        || {
            ops = sftp_ops(&s);
            ops.iter().any(|r| r[0] == "remove" && r[2] == "allowed")
        },
    );
    let denied: Vec<&Vec<Value>> = ops.iter().filter(|r| r[2] == "denied").collect();
    assert_eq!(denied.len(), 9, "{ops:#?}");
    assert!(
        denied.iter().all(|r| r[3] == "no-locked-writes"),
        "{ops:#?}"
    );
    let has = |class: &str, decision: &str, text: &str| {
        ops.iter()
            .any(|r| r[0] == class && r[2] == decision && r[1].as_str() == Some(text))
    };
    let nb = l(&locked.join("new.bin"));
    assert!(
        has("open", "denied", &format!("open {nb} (write,creat,trunc)")),
        "{ops:#?}"
    );
    assert!(has("remove", "denied", &format!("remove {k}")), "{ops:#?}");
    assert!(
        has(
            "posix-rename",
            "denied",
            &format!("posix-rename {k} {o}/moved.txt")
        ),
        "{ops:#?}"
    );
    assert!(
        has("setstat", "denied", &format!("setstat {k}")),
        "{ops:#?}"
    );
    assert!(
        has(
            "open",
            "denied",
            &format!("open {dots} (write,creat,trunc)")
        ),
        "{ops:#?}"
    );
    let dots_row = ops
        .iter()
        .find(|r| r[1].as_str().unwrap_or("").contains("/../"))
        .unwrap();
    assert!(
        dots_row[4].as_str().unwrap_or("").contains("`..`"),
        "{dots_row:?}"
    );
    assert!(
        has(
            "open",
            "allowed",
            &format!("open {o}/up.bin (write,creat,trunc)")
        ),
        "{ops:#?}"
    );
    assert!(
        has(
            "posix-rename",
            "allowed",
            &format!("posix-rename {o}/up.bin {o}/up2.bin")
        ),
        "{ops:#?}"
    );
    assert!(has("mkdir", "allowed", &format!("mkdir {o}/d")), "{ops:#?}");
    assert!(has("rmdir", "allowed", &format!("rmdir {o}/d")), "{ops:#?}");
    assert!(
        has("remove", "allowed", &format!("remove {o}/up2.bin")),
        "{ops:#?}"
    );
    let rename = ops
        .iter()
        .find(|r| r[0] == "posix-rename" && r[2] == "allowed")
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(rename[5].as_str().unwrap()).unwrap(),
        serde_json::json!([format!("{o}/up.bin"), format!("{o}/up2.bin")]),
        "{rename:?}"
    );
    // Every allowed one was on record before it reached the target.
    let intents = record_query(
        &s.gw.record_db(),
        "SELECT json_extract(body, '$.text') FROM audit_log WHERE kind = 'statement_intent' \
         AND json_extract(body, '$.kind') = 'sftp'",
    );
    let allowed = ops.iter().filter(|r| r[2] == "allowed").count();
    assert_eq!(intents.len(), allowed, "{intents:?} {ops:#?}");

    let mut t = Vec::new();
    wait_until("the transfers on record", Duration::from_secs(10), || {
        t = transfers(&s);
        t.iter().any(|r| r[0].as_str() == Some(&l(&big)))
    });
    let find = |path: String, mode: &str| {
        t.iter()
            .find(|r| r[0].as_str() == Some(&path) && r[1] == mode)
            .unwrap_or_else(|| panic!("no {mode} transfer of {path}: {t:#?}"))
            .clone()
    };
    let put = find(format!("{o}/up.bin"), "write");
    assert_eq!(put[3], 300_000, "{put:?}");
    assert_eq!(put[4], 1, "closed: {put:?}");
    let get = find(format!("{o}/up2.bin"), "read");
    assert_eq!(get[2], 300_000, "{get:?}");
    let big_get = find(l(&big), "read");
    assert_eq!(big_get[2], 1 << 20, "{big_get:?}");
    assert_eq!(big_get[3], 0, "{big_get:?}");
}

/// paramiko's SFTP client sends paths as given: a relative one is resolved by sftp-server
/// against the login's home, which the gateway does not know, so under a deny list it is
/// refused (put and remove); with the rule taken away (a live reload) the very same put
/// lands in the home directory, so the refusal was the gateway's.
const PARAMIKO_SFTP: &str = r#"
import json, sys, warnings
warnings.filterwarnings("ignore")
import paramiko
host, port, user, known, password, op, local, remote = sys.argv[1:]
c = paramiko.SSHClient()
c.load_host_keys(known)
c.set_missing_host_key_policy(paramiko.RejectPolicy())
try:
    c.connect(host, port=int(port), username=user, password=password,
              look_for_keys=False, allow_agent=False,
              timeout=15, banner_timeout=15, auth_timeout=15)
    s = c.open_sftp()
    if op == "put":
        s.put(local, remote)
    else:
        s.remove(remote)
    print(json.dumps({"ok": True}))
except Exception as ex:
    print(json.dumps({"ok": False, "error_type": type(ex).__name__, "error": str(ex)}))
finally:
    c.close()
"#;

fn paramiko_sftp(s: &Setup, op: &str, local: &Path, remote: &str) -> Value {
    let jwt = mint(&s.subject(), &["agents"], now(), now() + 600);
    let mut cmd = Command::new(SYSTEM_PYTHON);
    cmd.args([
        "-c",
        PARAMIKO_SFTP,
        "127.0.0.1",
        &s.sshd.port.to_string(),
        DEPLOY_USER,
    ])
    .arg(&s.keys.agent_known_hosts)
    .arg(&jwt)
    .arg(op)
    .arg(local)
    .arg(remote)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    place(&mut cmd, Some(&s.cg), None);
    let out = cmd.output().expect("run paramiko");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("paramiko printed {} ({e}): {}", stdout(&out), stderr(&out)))
}

fn home_of(user: &str) -> PathBuf {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&user)).then(|| PathBuf::from(f[5]))
        })
        .expect("deploy user in /etc/passwd")
}

#[test]
fn relative_paths_are_refused_under_a_deny_list() {
    let rules = "  - name: no-etc-writes
    effect: deny
    commands:
      sftp: {deny_write: [\"/etc/**\"]}
    targets: [build-host]
";
    let s = setup_with("sftprel", 20612, true, rules);
    let local = s.keys.dir.join("rel.txt");
    std::fs::write(&local, "relative").unwrap();
    let name = unique("sftp-rel");
    let home = home_of(DEPLOY_USER);
    let landed = home.join(&name);
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _cleanup = Cleanup(landed.clone());

    let r = paramiko_sftp(&s, "put", &local, &name);
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["error"].as_str().unwrap_or("").contains("no-etc-writes"),
        "the agent reads the rule: {r}"
    );
    assert!(!landed.exists());
    deploy_file(&landed, b"already here");
    let r = paramiko_sftp(&s, "remove", &local, &name);
    assert_eq!(r["ok"], false, "{r}");
    assert!(landed.exists(), "a relative remove got through");
    std::fs::remove_file(&landed).unwrap();

    let ops = sftp_ops(&s);
    assert_eq!(ops.len(), 2, "{ops:#?}");
    for op in &ops {
        assert_eq!(op[2], "denied", "{op:?}");
        assert!(
            op[4].as_str().unwrap_or("").contains("relative path"),
            "{op:?}"
        );
    }

    // The control: without the rule, the same put lands in the home directory.
    s.reload(&policy_with_credential(&s, ""));
    let r = paramiko_sftp(&s, "put", &local, &name);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(std::fs::read(&landed).unwrap(), b"relative");
}

/// The policy of `setup_with(.., credential = true, ..)` with `extra_rules`.
fn policy_with_credential(s: &Setup, extra_rules: &str) -> String {
    ssh_common::policy(
        s.sshd.port + 1,
        s.cg.rel.trim_start_matches('/'),
        &Token::Credential,
        &s.sshd,
        &s.keys,
        extra_rules,
    )
}

/// An approval rule holds a write: the sftp client waits; approved, the put lands; denied, it
/// does not and the agent's sftp says permission denied.
#[test]
fn a_held_write_waits_for_approval() {
    let remote = DeployDir::new("sftphold");
    let rules = "  - name: writes-need-approval
    commands:
      sftp: {allow_write: [\"/tmp/nothing-is-allowed/**\"]}
    approval: {approvers: [oncall], timeout_secs: 60}
    targets: [build-host]
";
    let s = setup("sftphold", 20614, rules);
    let local = s.keys.dir.join("held.txt");
    std::fs::write(&local, "held").unwrap();
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
    let spawn = |target: &Path| {
        let file = s.keys.dir.join(unique("batch"));
        std::fs::write(
            &file,
            format!("put {} {}\n", local.display(), target.display()),
        )
        .unwrap();
        let mut cmd = ssh::sftp_command(
            &s.keys.agent_known_hosts,
            s.sshd.port,
            DEPLOY_USER,
            &file,
            &[],
        );
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        place(&mut cmd, Some(&s.cg), None);
        cmd.spawn().expect("spawn sftp")
    };
    let first = remote.0.join("first.txt");
    let child = spawn(&first);
    wait_until("the put pending", Duration::from_secs(15), || {
        pending().len() == 1
    });
    let req = pending().remove(0);
    assert_eq!(
        req["statement"],
        format!("open {} (write,creat,trunc)", first.display()),
        "{req}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(!first.exists(), "the put waits");
    let id = req["id"].as_str().unwrap().to_string();
    let ok = approvals(&["approve", &id]);
    assert!(ok.status.success(), "{}", text(&ok));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(&first).unwrap(), b"held");

    let second = remote.0.join("second.txt");
    let child = spawn(&second);
    wait_until("the second put pending", Duration::from_secs(15), || {
        pending().len() == 1
    });
    let id2 = pending()[0]["id"].as_str().unwrap().to_string();
    let no = approvals(&["deny", &id2, "--reason", "not now"]);
    assert!(no.status.success(), "{}", text(&no));
    let out = child.wait_with_output().unwrap();
    refused(&out, "a denied put");
    assert!(!second.exists());
    let ops = sftp_ops(&s);
    let decisions: Vec<&Value> = ops.iter().map(|r| &r[2]).collect();
    assert_eq!(decisions, ["approved", "denied"], "{ops:#?}");
}

/// Under `mode: deny_and_retry` a write is refused at once (the agent's sftp says permission
/// denied, the request waits for approvers); once approved, the identical put goes through.
#[test]
fn deny_and_retry_lets_the_approved_write_through_on_retry() {
    let remote = DeployDir::new("sftpretry");
    let rules = "  - name: writes-need-approval
    commands:
      sftp: {allow_write: [\"/tmp/nothing-is-allowed/**\"]}
    approval: {approvers: [oncall], timeout_secs: 120, mode: deny_and_retry, retry_window_secs: 600}
    targets: [build-host]
";
    let s = setup("sftpretry", 20616, rules);
    let local = s.keys.dir.join("retry.txt");
    std::fs::write(&local, "retried").unwrap();
    let target = remote.0.join("retry.txt");
    let batch = format!("put {} {}\n", local.display(), target.display());
    let out = sftp_batch(&s, &batch);
    refused(&out, "a put awaiting approval");
    assert!(!target.exists());
    let approvals = |args: &[&str]| -> Output {
        Command::new(agentgate_bin())
            .arg("approvals")
            .args(args)
            .arg("--admin-socket")
            .arg(s.gw.admin_socket())
            .output()
            .expect("run agentgate approvals")
    };
    let list = approvals(&["list", "--json"]);
    let v: Value = serde_json::from_slice(&list.stdout).unwrap_or_default();
    let reqs = v["requests"].as_array().cloned().unwrap_or_default();
    assert_eq!(reqs.len(), 1, "{v}");
    let id = reqs[0]["id"].as_str().unwrap().to_string();
    let ok = approvals(&["approve", &id]);
    assert!(ok.status.success(), "{}", text(&ok));
    let out = sftp_batch(&s, &batch);
    assert!(out.status.success(), "the approved put: {}", text(&out));
    assert_eq!(std::fs::read(&target).unwrap(), b"retried");
    let ops = sftp_ops(&s);
    let decisions: Vec<&Value> = ops.iter().map(|r| &r[2]).collect();
    assert_eq!(decisions, ["denied", "approved"], "{ops:#?}");
}
