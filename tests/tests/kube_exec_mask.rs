//! `kubectl exec` output under detector rules (issue 19): what the command prints reaches the
//! agent, the record and the recording masked, with values cut across frames and pauses still
//! found; an interactive prompt is not held back; a stream the gateway cannot read (SPDY) is
//! refused on a masked target rather than relayed unmasked.
//!
//! Ports: 20960–20965.

mod kube_common;

use std::{
    io::{Read, Write},
    process::Stdio,
    sync::mpsc,
    time::Duration,
};

use agentgate_tests::record_query;
use kube_common::*;

const KEY: &str = "AKIAIOSFODNN7EXAMPLE";
const MAIL: &str = "ops-lead@example.com";
const RULES: &str =
    "  - name: mask-secrets\n    targets: [cluster-api]\n    mask: {detectors: [secret, email]}\n";

/// A key printed whole, a key printed in two writes with a pause between them, an e-mail
/// address on stderr: none reaches kubectl, the request's record or the cast; the rest of the
/// output and the exit code do.
#[test]
fn exec_output_is_masked_for_the_agent_the_record_and_the_cast() {
    let s = setup("kube-exmask", 20960, 20961, RULES);
    let kc = kubeconfig(&s, "agent", &token("agent-exmask-1"));
    // The command builds the values, so that they are not in its own text (which is on record
    // as the agent sent it).
    let script =
        "printf 'key AKIA%s end\\n' IOSFODNN7EXAMPLE; echo mail ops-lead@exam''ple.com >&2; \
                  printf 'half AKIA%s' IOSF; sleep 0.2; printf 'ODNN7EXAMPLE tail\\n'; exit 4";
    let out = kubectl(
        &s,
        &kc,
        &["exec", "-n", "default", "web-0", "--", "sh", "-c", script],
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    for shown in [&stdout, &stderr] {
        assert!(!shown.contains(KEY), "{}", text(&out));
        assert!(!shown.contains(MAIL), "{}", text(&out));
        assert!(
            !shown.contains("AKIAIOSF"),
            "the first half went out: {}",
            text(&out)
        );
    }
    assert!(
        stdout.contains("key ") && stdout.contains(" end"),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains("half ") && stdout.contains(" tail"),
        "{}",
        text(&out)
    );
    assert!(stderr.contains("mail "), "{}", text(&out));

    let rec = wait_for_record(&s.gw, "the exec on record", |r| {
        r.iter()
            .any(|x| x[0].as_str().unwrap_or("").contains("/exec") && !x[3].is_null())
    });
    let exec = rec
        .iter()
        .find(|x| x[0].as_str().unwrap_or("").contains("/exec"))
        .expect("exec request");
    assert_eq!(exec[3], 4, "{exec:?}");
    let kept = exec[4].as_str().unwrap_or("");
    assert!(kept.contains(" end"), "{exec:?}");
    // Nothing anywhere in the record holds a raw value (bodies, casts, events).
    for raw in [KEY, MAIL, "AKIAIOSF"] {
        let found = record_query(
            &s.gw.record_db(),
            &format!("SELECT count(*) FROM audit_log WHERE instr(body, '{raw}') > 0"),
        );
        assert_eq!(found[0][0], 0, "{raw} is on record");
    }
    let casts = record_query(
        &s.gw.record_db(),
        "SELECT count(*) FROM audit_log WHERE kind = 'kube_cast'",
    );
    assert!(casts[0][0].as_u64().unwrap_or(0) >= 1, "{casts:?}");
}

/// An interactive program's prompt reaches the agent while the program waits for input: the
/// masking holds nothing back once the target is quiet.
#[test]
fn an_interactive_prompt_is_not_held_back() {
    let s = setup("kube-exprompt", 20962, 20963, RULES);
    let kc = kubeconfig(&s, "agent", &token("agent-exmask-2"));
    let mut cmd = kubectl_cmd(
        &s,
        &kc,
        &[
            "exec",
            "-i",
            "-n",
            "default",
            "web-0",
            "--",
            "sh",
            "-c",
            "printf 'ready> '; read x; echo got $x; exit 0",
        ],
    );
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl exec -i");
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            let _ = tx.send(String::from_utf8_lossy(&seen).into_owned());
        }
    });
    // The prompt must come before any input is sent.
    let mut shown = String::new();
    while !shown.contains("ready> ") {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(s) => shown = s,
            Err(_) => {
                let _ = child.kill();
                panic!("the prompt never came: {shown:?}");
            }
        }
    }
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"yes\n").expect("answer");
    drop(stdin);
    while !shown.contains("got yes") {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(s) => shown = s,
            Err(_) => {
                let _ = child.kill();
                panic!("the answer never came: {shown:?}");
            }
        }
    }
    let status = child.wait().expect("kubectl ends");
    assert!(status.success(), "{status:?}");
}

/// SPDY streams are not parsed by the gateway: on a target with detector rules an exec over
/// SPDY is refused with the reason, before the API server sees it; WebSocket still works.
#[test]
fn spdy_exec_on_a_masked_target_is_refused_not_relayed_unmasked() {
    let s = setup("kube-exspdy", 20964, 20965, RULES);
    let kc = kubeconfig(&s, "agent", &token("agent-exmask-3"));
    let mut cmd = kubectl_cmd(
        &s,
        &kc,
        &["exec", "-n", "default", "web-0", "--", "echo", KEY],
    );
    cmd.env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false");
    let out = cmd.output().expect("kubectl exec over SPDY");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(KEY));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exec output on this target is masked"),
        "{}",
        text(&out)
    );
    let execs = || {
        s.standin
            .log
            .matching("/api/v1/namespaces/default/pods/web-0/exec")
    };
    assert!(
        execs().is_empty(),
        "the SPDY upgrade reached the API server: {:?}",
        execs()
    );
    let out = kubectl(
        &s,
        &kc,
        &["exec", "-n", "default", "web-0", "--", "echo", "plain"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("plain"));
    // The WebSocket offer reached the API server narrowed to the binary channel protocols.
    let offers: Vec<_> = execs()
        .into_iter()
        .map(|e| e.websocket_protocols.unwrap_or_default())
        .collect();
    assert_eq!(offers.len(), 1, "{offers:?}");
    assert!(
        offers[0].contains("channel.k8s.io") && !offers[0].contains("base64"),
        "{offers:?}"
    );
}
