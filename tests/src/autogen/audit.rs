//! The operator's side: `agentgate approvals`, `revoke`, `agents` and `sessions`, run as root on
//! the node the way a person would.

use std::{path::Path, process::Command};

use serde_json::Value;

use crate::{agentgate_bin, pg::output_text, Gateway};

/// `agentgate <pre> <db> <post>`: its stdout (panics if it fails).
pub fn cli(pre: &[&str], db: &Path, post: &[&str]) -> String {
    let out = Command::new(agentgate_bin())
        .args(pre)
        .arg(db)
        .args(post)
        .output()
        .expect("run agentgate");
    assert!(
        out.status.success(),
        "agentgate {pre:?} {post:?}: {}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like [`cli`], its stdout parsed as JSON.
pub fn json(pre: &[&str], db: &Path, post: &[&str]) -> Value {
    let text = cli(pre, db, post);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("agentgate {pre:?} {post:?}: {e}: {text}"))
}

/// `agentgate approvals <args> --admin-socket <the gateway's>`: its stdout.
pub fn approvals_cli(gw: &Gateway, args: &[&str]) -> String {
    let out = Command::new(agentgate_bin())
        .arg("approvals")
        .args(args)
        .arg("--admin-socket")
        .arg(gw.admin_socket())
        .output()
        .expect("run agentgate approvals");
    assert!(
        out.status.success(),
        "agentgate approvals {args:?}: {}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The requests: pending ones, or all of them with `all`.
pub fn approvals(gw: &Gateway, all: bool) -> Vec<Value> {
    let args: &[&str] = if all {
        &["list", "--all", "--json"]
    } else {
        &["list", "--json"]
    };
    let v: Value = serde_json::from_str(&approvals_cli(gw, args)).unwrap_or_default();
    v["requests"].as_array().cloned().unwrap_or_default()
}

/// Approves `request` (no reason) or denies it with `reason`, printing the command a person
/// would type and who they are (`who`).
pub fn decide(gw: &Gateway, request: &Value, reason: Option<&str>, who: &str) {
    let id = request["id"].as_str().unwrap_or_default();
    let out = match reason {
        None => {
            println!("   {who} -> $ agentgate approvals approve {id}");
            approvals_cli(gw, &["approve", id])
        }
        Some(r) => {
            println!("   {who} -> $ agentgate approvals deny {id} --reason '{r}'");
            approvals_cli(gw, &["deny", id, "--reason", r])
        }
    };
    super::transcript::print_list(&out);
}

/// `agentgate revoke --identity <subject> --reason <reason>`: its stdout.
pub fn revoke(gw: &Gateway, subject: &str, reason: &str) -> String {
    let out = Command::new(agentgate_bin())
        .args(["revoke", "--identity", subject, "--reason", reason])
        .arg("--admin-socket")
        .arg(gw.admin_socket())
        .output()
        .expect("run agentgate revoke");
    assert!(
        out.status.success(),
        "agentgate revoke: {}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
