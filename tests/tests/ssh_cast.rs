//! SSH shells recorded as asciicast v2 (issue 18, "Recording"), end to end with real parts:
//! paramiko opens a shell with a pty through the gateway to Debian's sshd, types into it and
//! resizes it mid-session; the record holds the cast, `agentgate sessions export --cast`
//! writes a file that parses line by line and that asciinema itself reads, `sessions replay
//! --fast` prints what the shell printed, and the journal's chain still verifies. A shell
//! printing 50 MB is recorded up to the cap and no further, and the gateway does not grow with
//! it. Setup in `ssh_common`.
//!
//! Ports: 20580–20583.

mod ssh_common;

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use agentgate_tests::{
    agentgate_bin, mint, now, place,
    ssh::{DEPLOY_USER, SYSTEM_PYTHON},
    unique,
};
use serde_json::Value;
use ssh_common::*;

/// An AWS access key the `secret` detector masks; the shell is made to print it by a command
/// line that does not hold it (so neither the typed input nor its echo does).
const AWS_KEY: &str = "AKIAZ7QX4PLMNB2RTUVW";

const MASK_SECRETS: &str = "  - name: mask-secrets
    targets: [build-host]
    mask:
      detectors: [secret]
";

/// paramiko opens a shell with a pty (xterm, 100x30), runs a command, resizes the pty to
/// 132x43, asks the shell its size, and exits 3; prints one JSON object with what it read.
const PARAMIKO_SHELL: &str = r#"
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import paramiko
host, port, user, known, password = sys.argv[1:]
c = paramiko.SSHClient()
c.load_host_keys(known)
c.set_missing_host_key_policy(paramiko.RejectPolicy())
out = b""
def read_until(chan, needle, secs=15):
    global out
    end = time.time() + secs
    while needle not in out and time.time() < end:
        if chan.recv_ready():
            out += chan.recv(65536)
        else:
            time.sleep(0.02)
    return needle in out
try:
    c.connect(host, port=int(port), username=user, password=password, look_for_keys=False,
              allow_agent=False, timeout=15, banner_timeout=15, auth_timeout=15)
    chan = c.get_transport().open_session()
    chan.get_pty(term="xterm", width=100, height=30)
    chan.invoke_shell()
    chan.sendall(b"echo cast-$((6*7)) key AKIAZ7QX4PLM''NB2RTUVW\n")
    first = read_until(chan, b"cast-42")
    chan.resize_pty(width=132, height=43)
    time.sleep(0.3)
    chan.sendall(b"echo size-$(stty size | tr ' ' x)\n")
    second = read_until(chan, b"size-43x132")
    chan.sendall(b"exit 3\n")
    while not chan.exit_status_ready() or chan.recv_ready():
        if chan.recv_ready():
            out += chan.recv(65536)
        else:
            time.sleep(0.02)
    print(json.dumps({"ok": first and second, "exit": chan.recv_exit_status(),
                      "out": out.decode("utf-8", "replace")}))
except Exception as ex:
    print(json.dumps({"ok": False, "error": type(ex).__name__ + ": " + str(ex),
                      "out": out.decode("utf-8", "replace")}))
finally:
    c.close()
"#;

/// Reads an asciicast v2 file the way any player would, one JSON document per line, with
/// Python's own parser; prints the header and the events sorted by code.
const PARSE_CAST: &str = r#"
import json, sys
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
header = json.loads(lines[0])
events = [json.loads(l) for l in lines[1:]]
times = [e[0] for e in events]
print(json.dumps({
    "header": header,
    "count": len(events),
    "ordered": times == sorted(times),
    "codes": sorted(set(e[1] for e in events)),
    "output": "".join(e[2] for e in events if e[1] == "o"),
    "input": "".join(e[2] for e in events if e[1] == "i"),
    "resizes": [e[2] for e in events if e[1] == "r"],
    "markers": [e[2] for e in events if e[1] == "m"],
}))
"#;

/// A directory for the test's files, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(&format!("sshcast-{tag}")));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs argv[1:] in a pty (asciinema opens /dev/tty), copying what it prints to stdout.
const IN_A_PTY: &str = r#"
import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
out = b""
while True:
    try:
        b = os.read(fd, 65536)
    except OSError:
        break
    if not b:
        break
    out += b
_, st = os.waitpid(pid, 0)
sys.stdout.buffer.write(out)
sys.exit(os.waitstatus_to_exitcode(st))
"#;

fn agentgate(args: &[&str], db: &Path) -> Output {
    Command::new(agentgate_bin())
        .args(args)
        .arg("--record-db")
        .arg(db)
        .output()
        .expect("run agentgate")
}

fn parse_cast(file: &Path) -> Value {
    let out = Command::new(SYSTEM_PYTHON)
        .args(["-c", PARSE_CAST])
        .arg(file)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "the cast does not parse: {}",
        text(&out)
    );
    serde_json::from_slice(&out.stdout).expect("parser's JSON")
}

/// The shell's request on record: (session, channel number).
fn shell_on_record(s: &Setup) -> (String, u64) {
    wait_requests(&s.gw, 1);
    let rows = agentgate_tests::record_query(
        &s.gw.record_db(),
        "SELECT session, json_extract(body, '$.seq'), json_extract(body, '$.kind') \
         FROM audit_log WHERE kind = 'statement' ORDER BY seq",
    );
    assert_eq!(rows[0][2], "shell", "{rows:?}");
    (
        rows[0][0].as_str().expect("session").to_string(),
        rows[0][1].as_u64().expect("seq"),
    )
}

/// A shell with a pty is recorded as asciicast: output (masked as the agent got it), typed
/// input and a resize mid-session, exported as a file Python parses line by line and asciinema
/// plays, replayed fast, and the journal still verifies.
#[test]
fn a_shell_with_a_pty_is_recorded_exported_and_replayed() {
    let s = setup_with("cast", 20580, true, &format!("{SHELLS}{MASK_SECRETS}"));
    let jwt = mint(&s.subject(), &["agents"], now(), now() + 600);
    let mut cmd = Command::new(SYSTEM_PYTHON);
    cmd.args([
        "-c",
        PARAMIKO_SHELL,
        "127.0.0.1",
        &s.sshd.port.to_string(),
        DEPLOY_USER,
    ])
    .arg(&s.keys.agent_known_hosts)
    .arg(&jwt)
    .stdin(Stdio::null());
    place(&mut cmd, Some(&s.cg), None);
    let out = cmd.output().expect("run paramiko");
    let shell: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("paramiko printed no JSON ({e}): {}", text(&out)));
    assert_eq!(shell["ok"], true, "{shell}");
    assert_eq!(shell["exit"], 3, "{shell}");
    let got = shell["out"].as_str().unwrap();
    assert!(
        got.contains("cast-42 key ") && !got.contains(AWS_KEY),
        "the agent got the key masked: {shell}"
    );

    let (session, channel) = shell_on_record(&s);
    let db = s.gw.record_db();
    let dir = TempDir::new("cast");
    let file = dir.0.join("shell.cast");
    let export = agentgate(
        &[
            "sessions",
            "export",
            &session,
            "--cast",
            file.to_str().unwrap(),
        ],
        &db,
    );
    assert!(export.status.success(), "{}", text(&export));
    let cast = parse_cast(&file);
    let h = &cast["header"];
    assert_eq!(h["version"], 2, "{cast}");
    assert_eq!(
        (h["width"].as_u64(), h["height"].as_u64()),
        (Some(100), Some(30)),
        "{cast}"
    );
    assert_eq!(h["env"]["TERM"], "xterm", "{cast}");
    assert!(
        h["timestamp"].as_i64().unwrap_or(0) > 1_700_000_000,
        "{cast}"
    );
    assert_eq!(cast["ordered"], true, "event times go forward: {cast}");
    let output = cast["output"].as_str().unwrap();
    assert!(
        output.contains("cast-42 key "),
        "the shell's output: {cast}"
    );
    assert!(
        !output.contains(AWS_KEY) && !output.contains("AKIAZ7QX4PLMNB"),
        "the cast holds the output as masked: {cast}"
    );
    assert!(
        output.contains("size-43x132"),
        "the output after the resize: {cast}"
    );
    assert!(
        cast["input"]
            .as_str()
            .unwrap()
            .contains("echo cast-$((6*7)) key"),
        "the typed input: {cast}"
    );
    assert_eq!(cast["resizes"], serde_json::json!(["132x43"]), "{cast}");
    assert_eq!(cast["markers"], serde_json::json!([]), "{cast}");

    // asciinema itself reads the file and prints what the shell printed (in a pty: it opens
    // /dev/tty).
    let cat = Command::new(SYSTEM_PYTHON)
        .args(["-c", IN_A_PTY, "asciinema", "cat"])
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .expect("run python");
    assert!(cat.status.success(), "asciinema cat: {}", text(&cat));
    assert!(stdout(&cat).contains("cast-42"), "{}", text(&cat));

    // The same channel chosen by number; the replay prints the output.
    for args in [
        vec!["sessions", "replay", session.as_str(), "--fast"],
        vec![
            "sessions",
            "replay",
            session.as_str(),
            "--channel",
            &channel.to_string(),
            "--speed",
            "50",
        ],
    ] {
        let replay = agentgate(&args, &db);
        assert!(replay.status.success(), "{args:?}: {}", text(&replay));
        let shown = stdout(&replay);
        assert!(
            shown.contains("cast-42") && shown.contains("size-43x132"),
            "{args:?}: {}",
            text(&replay)
        );
    }
    let missing = agentgate(
        &["sessions", "replay", &session, "--channel", "99", "--fast"],
        &db,
    );
    assert!(!missing.status.success(), "{}", text(&missing));
    assert!(
        stderr(&missing).contains("no recording"),
        "{}",
        text(&missing)
    );
    // The timeline still says where the recording is.
    let timeline = agentgate(&["sessions", "replay", &session, "--timeline"], &db);
    assert!(timeline.status.success(), "{}", text(&timeline));
    assert!(
        stdout(&timeline).contains(&format!("cast     channel {channel} recorded")),
        "{}",
        text(&timeline)
    );

    // The cast is in the hash chain, and the chain verifies.
    let verify = agentgate(&["audit", "verify"], &db);
    assert!(verify.status.success(), "{}", text(&verify));
    assert!(
        stdout(&verify).contains("the chain is intact"),
        "{}",
        text(&verify)
    );
    let casts = agentgate_tests::record_count(
        &db,
        "SELECT count(*) FROM audit_log WHERE kind = 'ssh_cast'",
    );
    assert!(casts >= 1, "{casts} ssh_cast records");
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// A shell printing 50 MB: its cast stops at the 16 MiB cap with a marker, the rest is only
/// counted, the shell itself goes on unharmed, and the gateway's peak memory does not follow
/// the output. Then: an exec with a pty is cast, one without is not.
#[test]
fn a_shell_printing_50_mb_is_recorded_up_to_the_cap() {
    let s = setup("cap", 20582, SHELLS);
    let before = vm_hwm_kib(s.gw.pid());
    let dir = TempDir::new("cap");
    let seen = dir.0.join("shell-out");
    let mut cmd = s.ssh(&["-tt"]);
    cmd.stdin(Stdio::piped())
        .stdout(std::fs::File::create(&seen).unwrap())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ssh -tt");
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        b"stty -echo; yes 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ | head -c 50000000; echo; echo done-$((40+2))\nexit\n",
    )
    .unwrap();
    let (out, took, killed) = wait_output(child, Duration::from_secs(300));
    assert!(!killed, "the shell did not end in {took:?}: {}", text(&out));
    let printed = std::fs::read(&seen).unwrap();
    assert!(
        printed.len() > 50_000_000,
        "the agent got all of it: {} bytes",
        printed.len()
    );
    assert!(
        String::from_utf8_lossy(&printed[printed.len() - 200..]).contains("done-42"),
        "the shell went on past the cap"
    );
    let (session, _) = shell_on_record(&s);
    let after = vm_hwm_kib(s.gw.pid());
    let grew_mib = (after.saturating_sub(before)) / 1024;
    eprintln!("gateway VmHWM {before} kB before, {after} kB after ({grew_mib} MiB more), shell took {took:?}");
    assert!(grew_mib < 48, "the gateway's peak grew by {grew_mib} MiB");

    let db = s.gw.record_db();
    let end = agentgate_tests::record_query(
        &db,
        "SELECT json_extract(body, '$.bytes_kept'), json_extract(body, '$.bytes_not_kept') \
         FROM audit_log WHERE kind = 'ssh_cast' AND json_extract(body, '$.end')",
    );
    assert_eq!(end.len(), 1, "{end:?}");
    let kept = end[0][0].as_u64().unwrap();
    let not_kept = end[0][1].as_u64().unwrap();
    assert_eq!(kept, 16 * 1024 * 1024, "{end:?}");
    assert!(
        kept + not_kept >= 50_000_000,
        "everything the shell printed is counted: {end:?}"
    );
    let file = dir.0.join("big.cast");
    let export = agentgate(
        &[
            "sessions",
            "export",
            &session,
            "--cast",
            file.to_str().unwrap(),
        ],
        &db,
    );
    assert!(export.status.success(), "{}", text(&export));
    assert!(
        stderr(&export).contains("cut at its cap"),
        "{}",
        text(&export)
    );
    let cast = parse_cast(&file);
    let markers = cast["markers"].as_array().unwrap();
    assert_eq!(markers.len(), 1, "{markers:?}");
    assert!(markers[0]
        .as_str()
        .unwrap()
        .contains("recording stops here"));
    assert!(
        !cast["output"].as_str().unwrap().contains("done-42"),
        "nothing past the cap is in the cast"
    );
    let verify = agentgate(&["audit", "verify"], &db);
    assert!(verify.status.success(), "{}", text(&verify));

    // An exec with a pty is cast; one without keeps only its output in its record.
    let plain = s.exec("echo plain-exec");
    assert!(plain.status.success(), "{}", text(&plain));
    let mut cmd = s.ssh(&["-tt"]);
    cmd.arg("echo pty-exec-$((1+1))").stdin(Stdio::null());
    let pty = cmd.output().expect("run ssh -tt");
    assert!(pty.status.success(), "{}", text(&pty));
    wait_requests(&s.gw, 3);
    let cast_of = agentgate_tests::record_query(
        &db,
        "SELECT json_extract(s.body, '$.text'), s.session, EXISTS (SELECT 1 FROM audit_log c \
           WHERE c.kind = 'ssh_cast' AND c.session = s.session \
             AND json_extract(c.body, '$.channel') = json_extract(s.body, '$.seq')) \
         FROM audit_log s WHERE s.kind = 'statement' ORDER BY s.seq",
    );
    let cast: Vec<(&str, i64)> = cast_of
        .iter()
        .map(|r| (r[0].as_str().unwrap(), r[2].as_i64().unwrap()))
        .collect();
    assert_eq!(
        cast,
        [
            ("(interactive shell)", 1),
            ("echo plain-exec", 0),
            ("echo pty-exec-$((1+1))", 1)
        ],
        "{cast_of:?}"
    );
    let file = dir.0.join("exec.cast");
    let export = agentgate(
        &[
            "sessions",
            "export",
            cast_of[2][1].as_str().unwrap(),
            "--cast",
            file.to_str().unwrap(),
        ],
        &db,
    );
    assert!(export.status.success(), "{}", text(&export));
    assert!(
        parse_cast(&file)["output"]
            .as_str()
            .unwrap()
            .contains("pty-exec-2"),
        "{}",
        std::fs::read_to_string(&file).unwrap()
    );
    // An exec without a pty has no recording to play: the timeline, as for PostgreSQL.
    let timeline = agentgate(
        &["sessions", "replay", cast_of[1][1].as_str().unwrap()],
        &db,
    );
    assert!(timeline.status.success(), "{}", text(&timeline));
    assert!(
        stdout(&timeline).contains("echo plain-exec"),
        "{}",
        text(&timeline)
    );
}
