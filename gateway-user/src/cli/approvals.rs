//! `agentgate approvals list|show|approve|deny`.

use super::ApprovalsCommand;
use crate::{
    admin::{self, api::StateFilter, AdminRequest},
    approval::Verdict,
    audit,
};

pub fn approvals(socket: &std::path::Path, command: ApprovalsCommand) -> anyhow::Result<()> {
    let (req, json_out) = match &command {
        ApprovalsCommand::List { all, state, json } => {
            let state = if *all {
                StateFilter::All
            } else {
                StateFilter::parse(state.as_deref().unwrap_or("pending"))
                    .map_err(anyhow::Error::msg)?
            };
            (AdminRequest::ApprovalsList { state }, *json)
        }
        ApprovalsCommand::Show { id, json } => {
            (AdminRequest::ApprovalsShow { id: id.clone() }, *json)
        }
        ApprovalsCommand::Approve { id, reason, json } => (
            AdminRequest::ApprovalsDecide {
                id: id.clone(),
                verdict: Verdict::Approve,
                reason: reason.clone(),
            },
            *json,
        ),
        ApprovalsCommand::Deny { id, reason, json } => (
            AdminRequest::ApprovalsDecide {
                id: id.clone(),
                verdict: Verdict::Deny,
                reason: Some(reason.clone()),
            },
            *json,
        ),
    };
    // What is printed reads the answer as JSON: the same fields the --json output shows.
    let answer = serde_json::to_value(admin::request(socket, &req)?)?;
    if json_out {
        println!("{answer}");
        return Ok(());
    }
    match command {
        ApprovalsCommand::List { .. } => {
            let list = answer["requests"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no requests");
            }
            for r in &list {
                let f = |k: &str| field(r, k);
                println!(
                    "{}  {:<9}  {}/{} on {}/{}  {}  {}",
                    f("id"),
                    f("state"),
                    f("workload"),
                    f("subject"),
                    f("target"),
                    f("database"),
                    f("rule"),
                    one_line(&f("statement"), 60),
                );
            }
            if answer["truncated"] == true {
                println!("(the newest {} only)", list.len());
            }
        }
        _ => show_request(&answer),
    }
    Ok(())
}

/// A string field of an answer, made safe for a terminal: agent-controlled text (statements,
/// names) cannot move the cursor or rewrite what an approver reads.
fn field(v: &serde_json::Value, k: &str) -> String {
    // A statement's own lines stay visibly inside its field: none can pass for a line of the
    // output (a forged vote, say).
    audit::print::escaped(v[k].as_str().unwrap_or(""), "\n           | ")
}

fn one_line(s: &str, max: usize) -> String {
    audit::print::cut(&s.split_whitespace().collect::<Vec<_>>().join(" "), max)
}

fn show_request(r: &serde_json::Value) {
    let s = |k: &str| field(r, k);
    println!("request    {} ({})", s("id"), s("state"));
    println!(
        "agent      {} ({}) from workload {}",
        s("subject"),
        s("issuer"),
        s("workload")
    );
    println!(
        "target     {} via {}, database {}, session {}",
        s("target"),
        s("protocol"),
        s("database"),
        s("session")
    );
    println!("statement  {}", s("statement"));
    if let Some(p) = r["params"].as_array().filter(|p| !p.is_empty()) {
        // JSON escapes control characters itself.
        println!("params     {}", serde_json::Value::Array(p.clone()));
    }
    println!(
        "class      {}; rule {}; mode {}",
        s("class"),
        s("rule"),
        s("mode")
    );
    if let Some(n) = r["trial_rows"].as_u64() {
        println!("trial      touched {n} rows in the gateway's trial run (rolled back; max_rows)");
    }
    println!(
        "needs      {} approval(s) from {}",
        r["quorum"], r["approvers"]
    );
    let at = |k: &str| match r[k].as_i64() {
        Some(ms) => format!(
            "{:.1} s after the request",
            (ms - r["created_ms"].as_i64().unwrap_or(ms)) as f64 / 1000.0
        ),
        None => "-".into(),
    };
    println!("created    {} (unix ms)", r["created_ms"]);
    match r["state"].as_str() {
        Some("pending") => println!("expires    {}", at("expires_ms")),
        _ => println!("decided    {}", at("decided_ms")),
    }
    for v in r["votes"].as_array().into_iter().flatten() {
        let from = match v["via"].as_str() {
            Some("local") => "on the node's admin socket".to_string(),
            _ => format!("token of {}, via the HTTP admin API", field(v, "issuer")),
        };
        let reason = field(v, "reason");
        println!(
            "vote       {} by {} ({from}){}",
            field(v, "verdict"),
            field(v, "approver"),
            if reason.is_empty() {
                String::new()
            } else {
                format!(": {reason}")
            }
        );
    }
    if r["reason"].is_string() {
        println!("reason     {}", s("reason"));
    }
}
