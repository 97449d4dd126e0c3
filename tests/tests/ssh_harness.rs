//! The SSH test harness itself (`agentgate_tests::ssh`): real OpenSSH servers, the real `ssh`,
//! `scp` and `sftp` clients, paramiko and asyncssh, direct connections only (no gateway). Needs
//! root (the servers, their cgroups, the test accounts); ports 20420-20449.

use std::{fs, path::Path, process::Output, time::Duration};

use agentgate_tests::{
    fnv1a, payload, place_as, require_root,
    ssh::{
        ensure_user, home_of, key_for_uid, keygen, known_hosts_ca, known_hosts_hashed,
        known_hosts_plain, py_exec, scp_command, scp_remote, sftp_command, sign_user_cert,
        ssh_command, ssh_command_to, write_known_hosts, PyClient, Sshd, SshdOptions, TempDir,
        DEPLOY_USER, READER_USER,
    },
};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// Runs `cmd`, asserting it succeeded; returns its stdout.
fn ok(mut cmd: std::process::Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn run(mut cmd: std::process::Command) -> Output {
    cmd.output().expect("run client")
}

fn host_key_refused(out: &Output) -> bool {
    let err = text(&out.stderr);
    !out.status.success()
        && (err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || err.contains("Host key verification failed"))
}

#[test]
fn certificate_and_static_key_logins_are_logged_with_their_identity() {
    require_root();
    const PORT: u16 = 20420;
    ensure_user(DEPLOY_USER);
    ensure_user(READER_USER);
    let sshd = Sshd::start(
        PORT,
        SshdOptions {
            ipv6: true,
            ..Default::default()
        },
    );
    let tmp = TempDir::new("ssh-harness-cert");
    let kh = tmp.join("known_hosts");
    write_known_hosts(&kh, &[sshd.known_hosts_line()]);

    // A user certificate signed by the server's user CA, key id naming the agent and session.
    let agent = keygen(&tmp.join("agent_key"), "agent");
    let key_id = "ci-runner#pr-1234 session-5f2c";
    sign_user_cert(
        sshd.user_ca_key(),
        &agent.public,
        key_id,
        &[DEPLOY_USER],
        "+5m",
    );
    let key = agent.private.to_str().unwrap();
    let mut cmd = ssh_command(&kh, PORT, DEPLOY_USER, &["-i", key]);
    cmd.arg("echo hi; id -un");
    assert_eq!(
        ok(cmd, "ssh with a user certificate"),
        format!("hi\n{DEPLOY_USER}\n")
    );
    // The target's own log says who: with LogLevel VERBOSE, sshd logs
    // `Accepted publickey for agdeploy from 127.0.0.1 port N ssh2: ED25519-CERT SHA256:… ID
    // <key id> (serial 0) CA ED25519 SHA256:…`.
    let line = sshd.wait_log(
        &format!("Accepted publickey for {DEPLOY_USER} from 127.0.0.1"),
        Duration::from_secs(5),
    );
    assert!(
        line.contains("ED25519-CERT SHA256:")
            && line.contains(&format!(" ID {key_id} (serial 0) CA ED25519 SHA256:")),
        "auth log line: {line}"
    );

    // The certificate is only good for its principals: not for agreader.
    let mut cmd = ssh_command(&kh, PORT, READER_USER, &["-i", key]);
    cmd.arg("echo hi");
    let out = run(cmd);
    assert!(
        !out.status.success() && text(&out.stderr).contains("Permission denied"),
        "certificate for {DEPLOY_USER} used as {READER_USER}: {out:?}"
    );
    // A certificate signed by another CA is refused.
    let rogue_ca = keygen(&tmp.join("rogue_ca"), "rogue-ca");
    let rogue = keygen(&tmp.join("rogue_key"), "rogue");
    sign_user_cert(
        &rogue_ca.private,
        &rogue.public,
        "rogue",
        &[DEPLOY_USER],
        "+5m",
    );
    let mut cmd = ssh_command(
        &kh,
        PORT,
        DEPLOY_USER,
        &["-i", rogue.private.to_str().unwrap()],
    );
    cmd.arg("echo hi");
    let out = run(cmd);
    assert!(
        !out.status.success() && text(&out.stderr).contains("Permission denied"),
        "certificate of another CA: {out:?}"
    );

    // The static key in AuthorizedKeysFile logs in too, over IPv6 as well, and the log names
    // its plain key.
    let fingerprint = ok(
        {
            let mut c = std::process::Command::new("ssh-keygen");
            c.arg("-lf").arg(sshd.static_key());
            c
        },
        "ssh-keygen -l",
    );
    let fingerprint = fingerprint.split_whitespace().nth(1).unwrap().to_string();
    let stat = sshd.static_key().to_str().unwrap();
    let mut cmd = ssh_command(&kh, PORT, READER_USER, &["-i", stat]);
    cmd.arg("echo hi");
    assert_eq!(ok(cmd, "ssh with the static key"), "hi\n");
    let line = sshd.wait_log(
        &format!("Accepted publickey for {READER_USER}"),
        Duration::from_secs(5),
    );
    assert!(
        line.contains(&format!("ssh2: ED25519 {fingerprint}")),
        "{line}"
    );
    let kh6 = tmp.join("known_hosts6");
    write_known_hosts(
        &kh6,
        &[known_hosts_plain("::1", PORT, &sshd.host_public_line())],
    );
    let mut cmd = ssh_command_to("::1", &kh6, PORT, DEPLOY_USER, &["-i", stat]);
    cmd.arg("echo hi");
    assert_eq!(ok(cmd, "ssh over IPv6"), "hi\n");
    sshd.wait_log(
        &format!("Accepted publickey for {DEPLOY_USER} from ::1"),
        Duration::from_secs(5),
    );

    // A hashed known_hosts line pins the key as well as a plain one.
    let hashed = tmp.join("known_hosts_hashed");
    write_known_hosts(
        &hashed,
        &[known_hosts_hashed(
            "127.0.0.1",
            PORT,
            &sshd.host_public_line(),
        )],
    );
    let mut cmd = ssh_command(&hashed, PORT, DEPLOY_USER, &["-i", stat]);
    cmd.arg("echo hi");
    assert_eq!(ok(cmd, "ssh with a hashed known_hosts line"), "hi\n");

    // A key that is neither authorized nor certified is refused.
    let stranger = keygen(&tmp.join("stranger"), "stranger");
    let mut cmd = ssh_command(
        &kh,
        PORT,
        DEPLOY_USER,
        &["-i", stranger.private.to_str().unwrap()],
    );
    cmd.arg("echo hi");
    let out = run(cmd);
    assert!(
        !out.status.success() && text(&out.stderr).contains("Permission denied"),
        "unknown key: {out:?}"
    );
}

#[test]
fn wrong_or_unknown_host_key_fails_closed() {
    require_root();
    const PORT: u16 = 20421;
    ensure_user(DEPLOY_USER);
    let sshd = Sshd::start(PORT, SshdOptions::default());
    let tmp = TempDir::new("ssh-harness-hostkey");
    let stat = sshd.static_key().to_str().unwrap();

    let other = keygen(&tmp.join("other_host"), "other-host");
    let kh = tmp.join("known_hosts");
    write_known_hosts(
        &kh,
        &[known_hosts_plain("127.0.0.1", PORT, &other.public_line())],
    );
    let mut cmd = ssh_command(&kh, PORT, DEPLOY_USER, &["-i", stat]);
    cmd.arg("echo hi");
    let out = run(cmd);
    assert!(host_key_refused(&out), "wrong pinned host key: {out:?}");
    assert!(
        text(&out.stderr).contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "{out:?}");

    // Nothing known about the host: StrictHostKeyChecking=yes refuses it.
    let empty = tmp.join("known_hosts_empty");
    write_known_hosts(&empty, &[]);
    let mut cmd = ssh_command(&empty, PORT, DEPLOY_USER, &["-i", stat]);
    cmd.arg("echo hi");
    let out = run(cmd);
    assert!(host_key_refused(&out), "unknown host: {out:?}");

    // The right key, for comparison, gets in (the refusals above were about the host key).
    let good = tmp.join("known_hosts_good");
    write_known_hosts(&good, &[sshd.known_hosts_line()]);
    let mut cmd = ssh_command(&good, PORT, DEPLOY_USER, &["-i", stat]);
    cmd.arg("echo hi");
    assert_eq!(ok(cmd, "ssh with the right host key"), "hi\n");
}

#[test]
fn scp_and_sftp_both_ways() {
    require_root();
    const PORT: u16 = 20422;
    ensure_user(DEPLOY_USER);
    let home = home_of(DEPLOY_USER);
    let sshd = Sshd::start(PORT, SshdOptions::default());
    let tmp = TempDir::new("ssh-harness-files");
    let kh = tmp.join("known_hosts");
    write_known_hosts(&kh, &[sshd.known_hosts_line()]);
    let stat = sshd.static_key().to_str().unwrap();
    let data = payload(20422, 3 * 1024 * 1024 + 17);
    let up = tmp.join("up.bin");
    fs::write(&up, &data).unwrap();

    // scp over the SFTP protocol (OpenSSH 9's default), then the legacy scp protocol (-O: the
    // remote runs `scp -t` / `scp -f` as an exec).
    for (mode, extra) in [
        ("sftp", vec!["-i", stat]),
        ("legacy", vec!["-O", "-i", stat]),
    ] {
        let remote = format!("{}/scp-{mode}-{}.bin", home.display(), std::process::id());
        let mut cmd = scp_command(&kh, PORT, &extra);
        cmd.arg(&up).arg(scp_remote(DEPLOY_USER, &remote));
        ok(cmd, &format!("scp up ({mode})"));
        let stored = fs::read(&remote).expect("uploaded file");
        assert_eq!(fnv1a(&stored), fnv1a(&data), "scp up ({mode})");
        let meta = fs::metadata(&remote).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta.uid(), ensure_user(DEPLOY_USER), "owned by the login");

        let down = tmp.join(&format!("down-{mode}.bin"));
        let mut cmd = scp_command(&kh, PORT, &extra);
        cmd.arg(scp_remote(DEPLOY_USER, &remote)).arg(&down);
        ok(cmd, &format!("scp down ({mode})"));
        assert_eq!(fnv1a(&fs::read(&down).unwrap()), fnv1a(&data), "scp down");
        fs::remove_file(&remote).unwrap();
    }

    // An sftp batch: put, get, rm; then the remote file is gone.
    let remote = format!("{}/sftp-{}.bin", home.display(), std::process::id());
    let got = tmp.join("sftp-got.bin");
    let batch = tmp.join("batch");
    fs::write(
        &batch,
        format!(
            "put {} {remote}\nget {remote} {}\nrm {remote}\n",
            up.display(),
            got.display()
        ),
    )
    .unwrap();
    ok(
        sftp_command(&kh, PORT, DEPLOY_USER, &batch, &["-i", stat]),
        "sftp batch",
    );
    assert_eq!(fnv1a(&fs::read(&got).unwrap()), fnv1a(&data), "sftp get");
    assert!(!Path::new(&remote).exists(), "sftp rm left {remote}");
    // A failing batch command fails the run.
    fs::write(&batch, format!("rm {remote}\n")).unwrap();
    let out = run(sftp_command(&kh, PORT, DEPLOY_USER, &batch, &["-i", stat]));
    assert!(!out.status.success(), "rm of a missing file: {out:?}");
}

#[test]
fn python_agents_run_a_command_with_the_static_key() {
    require_root();
    const PORT: u16 = 20423;
    ensure_user(DEPLOY_USER);
    let sshd = Sshd::start(PORT, SshdOptions::default());
    let tmp = TempDir::new("ssh-harness-python");
    let kh = tmp.join("known_hosts");
    write_known_hosts(&kh, &[sshd.known_hosts_line()]);
    for client in [PyClient::Paramiko, PyClient::AsyncSsh] {
        let v = py_exec(
            client,
            "127.0.0.1",
            PORT,
            DEPLOY_USER,
            sshd.static_key(),
            &kh,
            "echo hi; echo oops >&2; exit 3",
        );
        assert_eq!(v["ok"], true, "{client:?}: {v}");
        assert_eq!(v["stdout"], "hi\n", "{client:?}: {v}");
        assert_eq!(v["stderr"], "oops\n", "{client:?}: {v}");
        assert_eq!(v["exit"], 3, "{client:?}: {v}");
    }

    // A wrong pinned host key: both refuse.
    let other = keygen(&tmp.join("other_host"), "other-host");
    let wrong = tmp.join("known_hosts_wrong");
    write_known_hosts(
        &wrong,
        &[known_hosts_plain("127.0.0.1", PORT, &other.public_line())],
    );
    for client in [PyClient::Paramiko, PyClient::AsyncSsh] {
        let v = py_exec(
            client,
            "127.0.0.1",
            PORT,
            DEPLOY_USER,
            sshd.static_key(),
            &wrong,
            "echo hi",
        );
        assert_eq!(v["ok"], false, "{client:?} with a wrong host key: {v}");
    }
    let v = py_exec(
        PyClient::Paramiko,
        "127.0.0.1",
        PORT,
        DEPLOY_USER,
        sshd.static_key(),
        &wrong,
        "echo hi",
    );
    assert_eq!(v["error_type"], "BadHostKeyException", "{v}");
}

/// The question issue 18 asks: known_hosts has BOTH a plain key pinned for `[127.0.0.1]:port`
/// (learned from an earlier server on that port) and an `@cert-authority *` line, and the server
/// now presents a host certificate signed by that CA for a DIFFERENT key. What does OpenSSH's
/// `ssh` (9.2p1, Debian 12) do?
///
/// Observed: the CERTIFICATE wins and the connection is ACCEPTED, in either order of the two
/// lines. `ssh` proposes the certificate algorithms first (`ssh-ed25519-cert-v01@openssh.com,…,
/// ssh-ed25519,…`), the server presents its certificate (`-v`: "kex: host key algorithm:
/// ssh-ed25519-cert-v01@openssh.com"), and `ssh` looks for a CA line matching the host first:
/// found, the certificate is checked against it ("Host '[127.0.0.1]:port' is known and matches
/// the ED25519-CERT host certificate") and the pinned plain key of the same host is never compared
/// with the certified key. Only when no CA line matches ("No matching CA found. Retry with plain
/// key") does `ssh` compare the certified key, as a plain key, with the pinned line: so the
/// pinned other key alone, or beside the line of a CA that did not sign the certificate, is
/// refused ("REMOTE HOST IDENTIFICATION HAS CHANGED"). `ssh` asks for the certificate even
/// when known_hosts has only the plain pinned line (no CA line at all): a server that offers a
/// certificate is checked by its certified key then, so a certificate on the pinned key itself
/// passes with the pinned line alone.
///
/// Also observed: paramiko ignores `@cert-authority` lines, so a host known only through its CA
/// is an unknown host to it (refused), while asyncssh honours them and gets in.
#[test]
fn pinned_key_and_ca_line_when_the_host_certificate_is_for_another_key() {
    require_root();
    const PORT: u16 = 20424;
    ensure_user(DEPLOY_USER);
    let tmp = TempDir::new("ssh-harness-ca");

    // The first server on the port: its plain key gets pinned, as a client that connected
    // before would have it.
    let first_key = tmp.join("first_host_key");
    let pinned = {
        let first = Sshd::start(PORT, SshdOptions::default());
        fs::copy(first.host_key_path(), &first_key).unwrap();
        fs::copy(
            format!("{}.pub", first.host_key_path().display()),
            tmp.join("first_host_key.pub"),
        )
        .unwrap();
        first.known_hosts_line()
    };
    // The port's server now has another host key, with a certificate from the host CA.
    let host_ca = keygen(&tmp.join("host_ca"), "host-ca");
    // One client key authorized on every server of this test.
    let client = keygen(&tmp.join("client_key"), "client");
    let sshd = Sshd::start(
        PORT,
        SshdOptions {
            host_ca: Some(host_ca.private.clone()),
            authorized_keys: vec![client.public_line()],
            ..Default::default()
        },
    );
    assert_ne!(
        pinned,
        sshd.known_hosts_line(),
        "the second server has another key"
    );
    let ca_line = known_hosts_ca("*", &host_ca.public_line());
    let client_key = client.private.to_str().unwrap();
    let attempt = |name: &str, lines: &[String]| -> Output {
        let kh = tmp.join(name);
        write_known_hosts(&kh, lines);
        let mut cmd = ssh_command(&kh, PORT, DEPLOY_USER, &["-v", "-i", client_key]);
        cmd.arg("echo hi");
        run(cmd)
    };

    for (name, lines) in [
        ("pinned_then_ca", vec![pinned.clone(), ca_line.clone()]),
        ("ca_then_pinned", vec![ca_line.clone(), pinned.clone()]),
    ] {
        let out = attempt(name, &lines);
        assert!(
            out.status.success(),
            "{name}: OpenSSH refused the certificate next to a pinned other key: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), "hi\n", "{name}");
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!(
                "Host '[127.0.0.1]:{PORT}' is known and matches the ED25519-CERT host certificate"
            )),
            "{name}: accepted, but not through the certificate: {err}"
        );
        assert!(
            err.contains("kex: host key algorithm: ssh-ed25519-cert-v01@openssh.com"),
            "{name}: {err}"
        );
        assert!(
            !err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
            "{name}: {err}"
        );
    }

    // The pinned other key alone: refused (no CA line, so the certified key is compared with
    // the pinned one as a plain key).
    let out = attempt("pinned_only", std::slice::from_ref(&pinned));
    assert!(host_key_refused(&out), "pinned other key only: {out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("No matching CA found. Retry with plain key")
            && err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{err}"
    );
    // The CA line alone: accepted through the certificate.
    let out = attempt("ca_only", std::slice::from_ref(&ca_line));
    assert!(out.status.success(), "CA line only: {out:?}");
    // Another CA's line beside the pinned other key: refused.
    let rogue_ca = keygen(&tmp.join("rogue_ca"), "rogue-ca");
    let out = attempt(
        "pinned_and_other_ca",
        &[pinned.clone(), known_hosts_ca("*", &rogue_ca.public_line())],
    );
    assert!(host_key_refused(&out), "untrusted CA: {out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("No matching CA found. Retry with plain key")
            && err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{err}"
    );

    // paramiko does not read @cert-authority lines: a host known only through its CA is unknown
    // to it. asyncssh does read them.
    let ca_only = tmp.join("ca_only");
    let v = py_exec(
        PyClient::Paramiko,
        "127.0.0.1",
        PORT,
        DEPLOY_USER,
        sshd.static_key(),
        &ca_only,
        "echo hi",
    );
    assert_eq!(v["ok"], false, "paramiko with only a CA line: {v}");
    assert_eq!(v["error_type"], "SSHException", "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or("")
            .contains("not found in known_hosts"),
        "{v}"
    );
    let v = py_exec(
        PyClient::AsyncSsh,
        "127.0.0.1",
        PORT,
        DEPLOY_USER,
        sshd.static_key(),
        &ca_only,
        "echo hi",
    );
    assert_eq!(v["ok"], true, "asyncssh with only a CA line: {v}");
    assert_eq!(v["stdout"], "hi\n", "{v}");
    // paramiko gets in to the same certificate-presenting server with a plain line for its key
    // (it negotiates the plain host key algorithm).
    let plain = tmp.join("plain_for_paramiko");
    write_known_hosts(&plain, &[sshd.known_hosts_line()]);
    let v = py_exec(
        PyClient::Paramiko,
        "127.0.0.1",
        PORT,
        DEPLOY_USER,
        sshd.static_key(),
        &plain,
        "echo hi",
    );
    assert_eq!(v["ok"], true, "paramiko with the plain key line: {v}");
    drop(sshd);

    // The pinned key itself with a certificate (the first server back, its key now certified):
    // a client with only the pinned line gets the certificate too, finds no CA for it, and
    // accepts the certified key because it is the pinned one.
    let sshd = Sshd::start(
        PORT,
        SshdOptions {
            host_key: Some(first_key),
            host_ca: Some(host_ca.private.clone()),
            authorized_keys: vec![client.public_line()],
            ..Default::default()
        },
    );
    assert_eq!(sshd.known_hosts_line(), pinned);
    let out = attempt("pinned_key_certified", std::slice::from_ref(&pinned));
    let err = text(&out.stderr);
    assert!(out.status.success(), "pinned key, now certified: {err}");
    assert!(
        err.contains("kex: host key algorithm: ssh-ed25519-cert-v01@openssh.com")
            && err.contains("No matching CA found. Retry with plain key"),
        "{err}"
    );
}

#[test]
fn drop_ends_sessions_and_removes_files() {
    require_root();
    const PORT: u16 = 20425;
    ensure_user(DEPLOY_USER);
    let sshd = Sshd::start(PORT, SshdOptions::default());
    let dir = sshd.dir.clone();
    let tmp = TempDir::new("ssh-harness-drop");
    let kh = tmp.join("known_hosts");
    write_known_hosts(&kh, &[sshd.known_hosts_line()]);
    let mut cmd = ssh_command(
        &kh,
        PORT,
        DEPLOY_USER,
        &["-i", sshd.static_key().to_str().unwrap()],
    );
    cmd.arg("sleep 300");
    let mut session = cmd.spawn().expect("start ssh");
    sshd.wait_log(
        &format!("Accepted publickey for {DEPLOY_USER}"),
        Duration::from_secs(10),
    );
    drop(sshd);
    // The session's sshd and its `sleep` are gone with the server: the client sees the
    // connection close well before the sleep would end.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = session.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = session.kill();
            panic!("the ssh session outlived its server");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "{status}");
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", PORT)).is_err(),
        "port {PORT} still open"
    );
}

#[test]
fn accepted_environment_and_direct_tcpip_forwarding() {
    require_root();
    const PORT: u16 = 20426;
    ensure_user(DEPLOY_USER);
    let sshd = Sshd::start(PORT, SshdOptions::default());
    let tmp = TempDir::new("ssh-harness-env");
    let kh = tmp.join("known_hosts");
    write_known_hosts(&kh, &[sshd.known_hosts_line()]);
    let stat = sshd.static_key().to_str().unwrap();

    // AcceptEnv LANG LC_* AGENT_*: the AGENT_ variable arrives, another one does not.
    let mut cmd = ssh_command(
        &kh,
        PORT,
        DEPLOY_USER,
        &["-i", stat, "-o", "SetEnv=AGENT_RUN=run-42 OTHER_VAR=nope"],
    );
    cmd.arg("echo \"${AGENT_RUN:-unset} ${OTHER_VAR:-unset}\"");
    assert_eq!(ok(cmd, "ssh with SetEnv"), "run-42 unset\n");

    // AllowTcpForwarding yes: a direct-tcpip channel (`ssh -W`) to the server's own port
    // reaches it (its banner comes back through the channel; stdin is /dev/null, so the
    // client ends after it).
    let cmd = ssh_command(
        &kh,
        PORT,
        DEPLOY_USER,
        &["-i", stat, "-W", &format!("127.0.0.1:{PORT}")],
    );
    let out = run(cmd);
    assert!(
        text(&out.stdout).starts_with("SSH-2.0-OpenSSH"),
        "ssh -W: {out:?}"
    );
}

#[test]
fn an_agent_running_as_another_uid_logs_in_with_its_own_key_copy() {
    require_root();
    const PORT: u16 = 20427;
    ensure_user(DEPLOY_USER);
    // The agent runs as agreader's uid; it logs in to the target as agdeploy.
    let agent_uid = ensure_user(READER_USER);
    let sshd = Sshd::start(PORT, SshdOptions::default());
    let tmp = TempDir::new("ssh-harness-uid");
    let kh = tmp.join("known_hosts");
    write_known_hosts(&kh, &[sshd.known_hosts_line()]);
    let agent = keygen(&tmp.join("agent_key"), "agent");
    sign_user_cert(
        sshd.user_ca_key(),
        &agent.public,
        "uid-agent",
        &[DEPLOY_USER],
        "+5m",
    );

    // Root's key file as such: ssh running as the agent cannot read it.
    let mut cmd = ssh_command(
        &kh,
        PORT,
        DEPLOY_USER,
        &["-i", agent.private.to_str().unwrap()],
    );
    cmd.arg("echo hi");
    place_as(&mut cmd, None, None, Some(agent_uid));
    let out = run(cmd);
    assert!(
        !out.status.success(),
        "root's 0600 key used by uid {agent_uid}: {out:?}"
    );

    let copy = key_for_uid(&agent.private, tmp.path(), "agent_copy", agent_uid);
    let mut cmd = ssh_command(&kh, PORT, DEPLOY_USER, &["-i", copy.to_str().unwrap()]);
    cmd.arg("echo hi");
    place_as(&mut cmd, None, None, Some(agent_uid));
    assert_eq!(ok(cmd, "ssh as another uid"), "hi\n");
    let line = sshd.wait_log(
        &format!("Accepted publickey for {DEPLOY_USER}"),
        Duration::from_secs(5),
    );
    assert!(line.contains(" ID uid-agent (serial 0)"), "{line}");

    // paramiko as that uid, with a copy of the static key.
    let stat = key_for_uid(sshd.static_key(), tmp.path(), "static_copy", agent_uid);
    let mut cmd = agentgate_tests::ssh::py_exec_command(
        PyClient::Paramiko,
        "127.0.0.1",
        PORT,
        DEPLOY_USER,
        &stat,
        &kh,
        "id -un",
    );
    place_as(&mut cmd, None, None, Some(agent_uid));
    let v: serde_json::Value = serde_json::from_str(&ok(cmd, "paramiko as another uid")).unwrap();
    assert_eq!(v["stdout"], format!("{DEPLOY_USER}\n"), "{v}");
}
