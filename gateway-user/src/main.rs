//! agentgate: the binary edge. Everything below `run` is library-style code with typed errors.

mod admin;
mod approval;
mod audit;
mod capture;
mod cli;
mod ebpf;
mod fswatch;
mod identity;
mod mask;
mod policy;
mod protocol;
mod proxy;
mod record;
mod run;
mod sockopt;
mod upstream;

use clap::Parser;

use cli::{ApprovalsCommand, AuditCommand, Cli, Command, PolicyCommand};

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AGENTGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Policy {
            command: PolicyCommand::Check { dir },
        } => policy_check(&dir),
        Command::Uninstall { pin_dir } => uninstall(&pin_dir),
        Command::Status { admin_socket, json } => status(&admin_socket, json),
        Command::Approvals {
            admin_socket,
            command,
        } => approvals(&admin_socket, command),
        Command::Audit { record_db, command } => audit_command(&record_db, command),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentgate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn policy_check(dir: &std::path::Path) -> anyhow::Result<()> {
    // Problems go out one per line, each starting with file:line:column, for editors and CI.
    let p = policy::load_dir(dir).map_err(|e| {
        eprintln!("{e}");
        anyhow::anyhow!("policy {} is invalid", dir.display())
    })?;
    // The same checks `run` and a reload make before putting a policy in force.
    proxy::check_providers(&p).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    println!(
        "{}: ok, version {} ({} identity providers, {} workloads, {} targets, {} rules)",
        dir.display(),
        p.version,
        p.identity_providers.len(),
        p.workloads.len(),
        p.targets.len(),
        p.rules.len()
    );
    // The gateway, not this shell, must have them; a missing one is worth a look, not an error.
    for t in &p.targets {
        if let Some(Err(e)) = t.credential.as_ref().map(|c| c.resolve()) {
            println!("warning: target `{}`: upstream credential: {e}", t.name);
        }
    }
    Ok(())
}

fn uninstall(pin_dir: &std::path::Path) -> anyhow::Result<()> {
    let removed = ebpf::uninstall(pin_dir)?;
    for p in &removed {
        println!("removed {}", p.display());
    }
    println!(
        "agentgate uninstalled from {} ({} pinned objects removed); workloads now connect directly",
        pin_dir.display(),
        removed.len()
    );
    Ok(())
}

fn status(socket: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let answer = admin::request(socket, &serde_json::json!({"cmd": "status"}))?;
    if json {
        println!("{answer}");
        return Ok(());
    }
    let p = &answer["policy"];
    println!("agentgate pid {}", answer["pid"]);
    println!(
        "policy     {} (generation {}, from {})",
        p["version"].as_str().unwrap_or("?"),
        p["generation"],
        p["dir"].as_str().unwrap_or("?")
    );
    match p["last_error"].as_object() {
        Some(e) => println!(
            "last reload REFUSED (the policy above stays in force):\n  {}",
            e.get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("?")
                .replace('\n', "\n  ")
        ),
        None => println!("last reload ok"),
    }
    if let Some(e) = answer["capture_error"].as_str() {
        println!("CAPTURE NOT FULLY APPLIED: {e}");
    }
    println!("sessions   {} live", answer["sessions"]);
    Ok(())
}

fn audit_command(db: &std::path::Path, command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify { json } => {
            let report = audit::verify(db)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                for p in &report.problems {
                    println!("TAMPERED  {}", p.what);
                }
                println!(
                    "{}: {} records checked (from record {} to {}): {}",
                    db.display(),
                    report.records,
                    report.from + 1,
                    report
                        .tip
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "-".into()),
                    if report.problems.is_empty() {
                        "the chain is intact".to_string()
                    } else {
                        format!("{} problems", report.problems.len())
                    }
                );
            }
            if !report.problems.is_empty() {
                anyhow::bail!(
                    "the audit record of {} has been tampered with",
                    db.display()
                );
            }
            Ok(())
        }
        AuditCommand::Export { since } => {
            let since = match since {
                Some(s) => audit::parse_since(&s, record::now_ms())?,
                None => i64::MIN,
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            audit::export(db, since, &mut out)?;
            std::io::Write::flush(&mut out)?;
            Ok(())
        }
    }
}

fn approvals(socket: &std::path::Path, command: ApprovalsCommand) -> anyhow::Result<()> {
    use serde_json::json;
    let (req, json_out) = match &command {
        ApprovalsCommand::List { all, state, json } => (
            json!({"cmd": "approvals.list",
                   "state": if *all { "all" } else { state.as_deref().unwrap_or("pending") }}),
            *json,
        ),
        ApprovalsCommand::Show { id, json } => (json!({"cmd": "approvals.show", "id": id}), *json),
        ApprovalsCommand::Approve { id, reason, json } => (
            json!({"cmd": "approvals.decide", "id": id, "verdict": "approve", "reason": reason}),
            *json,
        ),
        ApprovalsCommand::Deny { id, reason, json } => (
            json!({"cmd": "approvals.decide", "id": id, "verdict": "deny", "reason": reason}),
            *json,
        ),
    };
    let answer = admin::request(socket, &req)?;
    if let Some(e) = answer["error"].as_str() {
        anyhow::bail!("{e}");
    }
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
    let mut out = String::new();
    for c in v[k].as_str().unwrap_or("").chars() {
        match c {
            // A statement's own lines stay visibly inside its field: none can pass for a line
            // of the output (a forged vote, say).
            '\n' => out.push_str("\n           | "),
            '\t' => out.push(c),
            c if c.is_control() => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out
}

fn one_line(s: &str, max: usize) -> String {
    let flat = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
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
