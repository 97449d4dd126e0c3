//! sftp reads under a mask rule (issue 18, "Masking … over stdout/stderr and sftp reads"), end
//! to end with real parts: Debian's sshd and sftp-server as the target; the real `sftp` batch
//! client, `scp` (which speaks SFTP in OpenSSH 9) and paramiko's SFTP client as the agents, in a
//! managed cgroup. A file with secrets placed across the read boundaries clients use (32 KiB,
//! 64 KiB, sftp-server's 255 KiB read cap, the answer size the gateway announces) arrives with
//! every secret masked, its length kept and every other byte unchanged; a large file in flat
//! memory. Setup in `ssh_common`.
//!
//! Ports: 20640–20649 (sshd on the even port, the gateway on the odd one after it).

mod ssh_common;

use std::{
    ops::Range,
    path::Path,
    process::{Command, Output, Stdio},
};

use agentgate_tests::{
    mint, now, place, record_query,
    ssh::{self, DEPLOY_USER, SYSTEM_PYTHON},
    unique,
};
use serde_json::Value;
use ssh_common::*;

const CARD: &str = "4111 1111 1111 1111";
const EMAIL: &str = "alice.secret@example.com";
const AWS_KEY: &str = "AKIAZ7QX4PLMNB2RTUVW";
const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
const PEM_BODY: &str = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW";

fn pem() -> String {
    format!(
        "-----BEGIN OPENSSH PRIVATE KEY-----\n{PEM_BODY}\n{PEM_BODY}\n{PEM_BODY}\n-----END OPENSSH PRIVATE KEY-----"
    )
}

const MASK_RULES: &str = "  - name: mask-secrets
    targets: [build-host]
    mask:
      detectors: [secret, payment_card, email]
";

/// Text lines of `size` bytes with each value written at its offset (a space before it, a
/// newline after): the file and where the values are.
fn file_with(size: usize, values: &[(usize, String)]) -> (Vec<u8>, Vec<Range<usize>>) {
    let line = b"lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor\n";
    let mut file: Vec<u8> = line.iter().copied().cycle().take(size).collect();
    let mut at = Vec::new();
    for (off, v) in values {
        file[off - 1] = b' ';
        file[*off..off + v.len()].copy_from_slice(v.as_bytes());
        if off + v.len() < size {
            file[off + v.len()] = b'\n';
        }
        at.push(*off..off + v.len());
    }
    (file, at)
}

/// Secrets straddling the read boundaries of the clients and of the gateway's windows, and one
/// at the very end of the file.
fn secrets_file(size: usize) -> (Vec<u8>, Vec<Range<usize>>) {
    const KIB: usize = 1024;
    let values = vec![
        (32 * KIB - 9, CARD.to_string()),
        (64 * KIB - 100, pem()),
        (96 * KIB - 6, EMAIL.to_string()),
        (128 * KIB - 10, AWS_KEY.to_string()),
        // The gateway answers at most 252,800 bytes a READ; sftp-server reads at most 261,120.
        (252_800 - 30, JWT.to_string()),
        (261_120 - 5, CARD.to_string()),
        (1024 * KIB - 50, pem()),
        (2 * 1024 * KIB - 3, AWS_KEY.to_string()),
        (size - EMAIL.len(), EMAIL.to_string()),
    ];
    file_with(size, &values)
}

/// `got` is `want` masked: the same length, every byte outside the values unchanged, every byte
/// of a value that is not whitespace masked, no value in clear.
fn assert_masked(what: &str, want: &[u8], got: &[u8], values: &[Range<usize>]) {
    assert_eq!(got.len(), want.len(), "{what}: the length changed");
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        if values.iter().any(|r| r.contains(&i)) {
            if !w.is_ascii_whitespace() {
                assert_eq!(*g, b'*', "{what}: byte {i} of a value not masked");
            }
        } else {
            assert_eq!(w, g, "{what}: byte {i} changed");
        }
    }
    let text = String::from_utf8_lossy(got);
    for secret in [CARD, EMAIL, AWS_KEY, JWT, PEM_BODY, "BEGIN OPENSSH"] {
        assert!(!text.contains(secret), "{what}: {secret} in clear");
    }
}

fn sftp_batch(s: &Setup, batch: &str) -> Output {
    let file = s.keys.dir.join(unique("batch"));
    std::fs::write(&file, batch).unwrap();
    let mut cmd = ssh::sftp_command(
        &s.keys.agent_known_hosts,
        s.sshd.port,
        DEPLOY_USER,
        &file,
        &[],
    );
    place(&mut cmd, Some(&s.cg), None);
    cmd.output().expect("run sftp")
}

fn scp(s: &Setup, from: &str, to: &Path) -> Output {
    let mut cmd = ssh::scp_command(&s.keys.agent_known_hosts, s.sshd.port, &[]);
    cmd.arg(from).arg(to);
    place(&mut cmd, Some(&s.cg), None);
    cmd.output().expect("run scp")
}

/// paramiko's `SFTPClient.get` (32 KiB requests, prefetched), the JWT as the password.
const PARAMIKO_GET: &str = r#"
import json, sys, warnings
warnings.filterwarnings("ignore")
import paramiko
host, port, user, known, password, remote, local = sys.argv[1:]
c = paramiko.SSHClient()
c.load_host_keys(known)
c.set_missing_host_key_policy(paramiko.RejectPolicy())
try:
    c.connect(host, port=int(port), username=user, password=password,
              look_for_keys=False, allow_agent=False,
              timeout=15, banner_timeout=15, auth_timeout=15)
    s = c.open_sftp()
    s.get(remote, local)
    print(json.dumps({"ok": True}))
except Exception as ex:
    print(json.dumps({"ok": False, "error_type": type(ex).__name__, "error": str(ex)}))
finally:
    c.close()
"#;

fn paramiko_get(s: &Setup, remote: &Path, local: &Path) -> Value {
    let jwt = mint(&s.subject(), &["agents"], now(), now() + 600);
    let mut cmd = Command::new(SYSTEM_PYTHON);
    cmd.args([
        "-c",
        PARAMIKO_GET,
        "127.0.0.1",
        &s.sshd.port.to_string(),
        DEPLOY_USER,
    ])
    .arg(&s.keys.agent_known_hosts)
    .arg(&jwt)
    .arg(remote)
    .arg(local)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    place(&mut cmd, Some(&s.cg), None);
    let out = cmd.output().expect("run paramiko");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("paramiko printed {} ({e}): {}", stdout(&out), stderr(&out)))
}

/// Bytes read per file handle on record for `path`.
fn bytes_read(s: &Setup, path: &Path) -> Vec<i64> {
    record_query(
        &s.gw.record_db(),
        &format!(
            "SELECT json_extract(body, '$.bytes_read') FROM audit_log WHERE kind = 'sftp_transfer' \
             AND json_extract(body, '$.path') = '{}' ORDER BY seq",
            path.display()
        ),
    )
    .into_iter()
    .map(|r| r[0].as_i64().unwrap_or(-1))
    .collect()
}

/// `sftp get` and `scp` of a 3 MiB file with secrets across read boundaries: the download has
/// the file's length, every secret masked and every other byte unchanged; each read is on
/// record with its size. On the old code the read was refused.
#[test]
fn sftp_and_scp_downloads_are_masked_keeping_the_length() {
    let s = setup("sftpmask", 20640, MASK_RULES);
    let remote = DeployDir::new("sftpmask");
    let (content, values) = secrets_file(3 << 20);
    let file = remote.0.join("secrets.txt");
    std::fs::write(&file, &content).unwrap();
    set_mode(&file, 0o644);
    let local = ssh::TempDir::new("sftpmask-local");

    let got = local.join("by-sftp.txt");
    let out = sftp_batch(&s, &format!("get {} {}\n", file.display(), got.display()));
    assert!(out.status.success(), "sftp get: {}", text(&out));
    assert_masked("sftp get", &content, &std::fs::read(&got).unwrap(), &values);

    let got = local.join("by-scp.txt");
    let out = scp(
        &s,
        &ssh::scp_remote(DEPLOY_USER, &file.display().to_string()),
        &got,
    );
    assert!(out.status.success(), "scp: {}", text(&out));
    assert_masked("scp", &content, &std::fs::read(&got).unwrap(), &values);

    // A small file read whole in one READ, its secret in the middle.
    let (small, small_values) = file_with(300, &[(100, AWS_KEY.to_string())]);
    let small_file = remote.0.join("small.txt");
    std::fs::write(&small_file, &small).unwrap();
    set_mode(&small_file, 0o644);
    let got = local.join("small.txt");
    let out = sftp_batch(
        &s,
        &format!("get {} {}\n", small_file.display(), got.display()),
    );
    assert!(out.status.success(), "sftp get: {}", text(&out));
    assert_masked(
        "small",
        &small,
        &std::fs::read(&got).unwrap(),
        &small_values,
    );

    let denied = record_query(
        &s.gw.record_db(),
        "SELECT count(*) FROM audit_log WHERE kind = 'statement' \
         AND json_extract(body, '$.decision') = 'denied'",
    );
    assert_eq!(denied[0][0], 0, "nothing refused");
    agentgate_tests::wait_until(
        "both reads on record",
        std::time::Duration::from_secs(10),
        || bytes_read(&s, &file).len() >= 2,
    );
    assert_eq!(
        bytes_read(&s, &file),
        vec![content.len() as i64; 2],
        "each read on record with its size"
    );
}

/// paramiko (32 KiB requests, many in flight) gets the same masked file.
#[test]
fn paramiko_downloads_are_masked_keeping_the_length() {
    let s = setup_with("sftpmaskpy", 20642, true, MASK_RULES);
    let remote = DeployDir::new("sftpmaskpy");
    let (content, values) = secrets_file(3 << 20);
    let file = remote.0.join("secrets.txt");
    std::fs::write(&file, &content).unwrap();
    set_mode(&file, 0o644);
    let local = ssh::TempDir::new("sftpmaskpy-local");
    let got = local.join("by-paramiko.txt");
    let r = paramiko_get(&s, &file, &got);
    assert_eq!(r["ok"], true, "{r}");
    assert_masked(
        "paramiko get",
        &content,
        &std::fs::read(&got).unwrap(),
        &values,
    );
}

/// The gateway's peak resident memory (VmHWM) in KiB.
fn vm_hwm(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM")
}

/// A 64 MiB file with a key every 64 KiB, fetched with sftp through a masked session: every key
/// masked, the length kept, and the gateway's peak memory grows by less than 32 MiB.
#[test]
fn a_large_masked_download_keeps_memory_flat() {
    let s = setup("sftpmaskbig", 20644, MASK_RULES);
    let remote = DeployDir::new("sftpmaskbig");
    let size = 64 << 20;
    let keys: Vec<(usize, String)> = (1..size / 65_536)
        .map(|i| (i * 65_536 - 7, AWS_KEY.to_string()))
        .collect();
    let (content, values) = file_with(size, &keys);
    let file = remote.0.join("big.txt");
    std::fs::write(&file, &content).unwrap();
    set_mode(&file, 0o644);
    let local = ssh::TempDir::new("sftpmaskbig-local");

    // A first small get, so that what a session and a channel cost is in the baseline.
    let warm = remote.0.join("warm.txt");
    std::fs::write(&warm, b"warm\n").unwrap();
    set_mode(&warm, 0o644);
    let out = sftp_batch(
        &s,
        &format!("get {} {}\n", warm.display(), local.join("warm").display()),
    );
    assert!(out.status.success(), "{}", text(&out));

    let before = vm_hwm(s.gw.pid());
    let got = local.join("big.txt");
    let started = std::time::Instant::now();
    let out = sftp_batch(&s, &format!("get {} {}\n", file.display(), got.display()));
    assert!(out.status.success(), "sftp get: {}", text(&out));
    let took = started.elapsed();
    let after = vm_hwm(s.gw.pid());
    let got = std::fs::read(&got).unwrap();
    assert_eq!(got.len(), content.len());
    assert!(!String::from_utf8_lossy(&got).contains(AWS_KEY));
    assert_eq!(got, {
        let mut want = content.clone();
        for r in &values {
            want[r.clone()].fill(b'*');
        }
        want
    });
    let grew = after.saturating_sub(before);
    eprintln!("64 MiB masked over sftp in {took:?}: VmHWM {before} KiB before, {after} KiB after (+{grew} KiB)");
    assert!(grew < 32 * 1024, "the gateway grew by {grew} KiB");
}
