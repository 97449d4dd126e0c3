//! SSH channels through the gateway, end to end with real parts (issue 18): shells with a pty
//! (and shells spelled as execs), scp and sftp both ways, forwarding refused, ControlMaster
//! multiplexing (masking of what `cat` prints is in `ssh_mask`). Debian's sshd is the target
//! (trusting a user CA), the real `ssh`, `scp` and `sftp` clients are the agents, in a managed
//! cgroup. Setup in `ssh_common`.
//!
//! Ports: 20460–20471, 20490–20491.

mod ssh_common;

use std::{
    io::{Read, Write},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use agentgate_tests::{
    place,
    ssh::{self, DEPLOY_USER},
    unique, wait_until,
};
use ssh_common::*;

// ---------------------------------------------------------------------------------------------
// 1. Shells.
// ---------------------------------------------------------------------------------------------

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
    // The sftp streams' raw bytes (the files' contents) are not kept as output.
    let kept = agentgate_tests::record_query(
        &s.gw.record_db(),
        "SELECT json_extract(body, '$.output.stdout') FROM audit_log WHERE kind = 'statement' \
         AND json_extract(body, '$.kind') = 'subsystem'",
    );
    assert!(kept.iter().all(|row| row[0] == ""), "{kept:?}");
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
