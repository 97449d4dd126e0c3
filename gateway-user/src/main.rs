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
mod statement;
mod tls;
mod upstream;

use clap::Parser;

use cli::{ApprovalsCommand, AuditCommand, Cli, Command, PolicyCommand, SessionsCommand};

// Only for measuring (`cargo xtask bench --only flood`): the default build keeps glibc's malloc.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        Command::Sessions { record_db, command } => sessions_command(&record_db, command),
        Command::Agents { record_db, json } => agents_command(&record_db, json),
        Command::Revoke {
            admin_socket,
            identity,
            issuer,
            workload,
            reason,
            lift,
            list,
            json,
        } => {
            let cmd = if list {
                "revocations"
            } else if lift {
                "revoke.lift"
            } else {
                "revoke"
            };
            revoke_command(
                &admin_socket,
                serde_json::json!({"cmd": cmd, "subject": identity, "issuer": issuer,
                                   "workload": workload, "reason": reason}),
                json,
            )
        }
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

fn sessions_command(db: &std::path::Path, command: SessionsCommand) -> anyhow::Result<()> {
    use audit::print::{cell, cut, duration, safe, table, time};
    let conn = audit::open(db)?;
    let now = record::now_ms();
    match command {
        SessionsCommand::List {
            identity,
            workload,
            target,
            protocol,
            since,
            until,
            status,
            statement,
            limit,
            json,
        } => {
            let filter = audit::sessions::Filter {
                identity,
                workload,
                target,
                protocol,
                since_ms: since.map(|s| audit::parse_since(&s, now)).transpose()?,
                until_ms: until.map(|s| audit::parse_since(&s, now)).transpose()?,
                status,
                statement,
                limit,
            };
            let list = audit::sessions::list(&conn, &filter)?;
            if json {
                println!("{}", serde_json::Value::Array(list));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|s| {
                    let started = s["started_ms"].as_i64();
                    let ended = s["ended_ms"].as_i64();
                    vec![
                        cell(&s["session"]),
                        time(started),
                        match (started, ended) {
                            (Some(a), Some(b)) => duration(b - a),
                            (Some(a), None) => format!("{} (live)", duration(now - a)),
                            _ => "-".into(),
                        },
                        cell(&s["workload"]),
                        cell(&s["subject"]),
                        format!("{}/{}", cell(&s["target"]), cell(&s["protocol"])),
                        format!(
                            "{} ({} denied, {} privileged)",
                            s["statements"], s["denied"], s["privileged"]
                        ),
                        cut(&cell(&s["ended_by"]), 50),
                    ]
                })
                .collect();
            table(
                &[
                    "SESSION",
                    "STARTED (UTC)",
                    "DURATION",
                    "WORKLOAD",
                    "IDENTITY",
                    "TARGET",
                    "STATEMENTS",
                    "ENDED BY",
                ],
                &rows,
            );
        }
        SessionsCommand::Show { id, json } => {
            let s = audit::sessions::show(&conn, &id)?;
            if json {
                println!("{s}");
                return Ok(());
            }
            for (k, v) in s.as_object().into_iter().flatten() {
                let v = match k.as_str() {
                    "started_ms" | "ended_ms" | "token_expires_ms" => time(v.as_i64()),
                    _ => cell(v),
                };
                println!("{k:<18} {v}");
            }
        }
        SessionsCommand::Replay { id, json } => {
            let events = audit::sessions::replay(&conn, &id)?;
            if json {
                println!("{}", serde_json::Value::Array(events));
                return Ok(());
            }
            let start = events
                .first()
                .and_then(|e| e["at_ms"].as_i64())
                .unwrap_or(0);
            for e in &events {
                let at = e["at_ms"].as_i64().unwrap_or(start);
                let b = &e["body"];
                let head = format!("+{:>9}  #{:<6}", duration(at - start), e["record"]);
                match e["kind"].as_str().unwrap_or("") {
                    "session_open" => println!(
                        "{head} open     {} ({}) from workload {} pid {} to {} {} as {}; token until {}",
                        cell(&b["subject"]),
                        cell(&b["issuer"]),
                        cell(&b["workload"]),
                        b["pid"],
                        cell(&b["target"]),
                        cell(&b["original_dst"]),
                        cell(&b["client_user"]),
                        time(b["token_expires_ms"].as_i64())
                    ),
                    "statement" | "statement_intent" => {
                        let outcome = if e["kind"] == "statement_intent" {
                            "SENT, OUTCOME NOT ON RECORD".to_string()
                        } else if b["error"].is_string() {
                            format!("error {} {}", cell(&b["error_code"]), cell(&b["error"]))
                        } else {
                            format!(
                                "rows: {}, in {}",
                                cell(&b["rows"]),
                                duration(b["duration_us"].as_i64().unwrap_or(0) / 1000)
                            )
                        };
                        println!(
                            "{head} {:<8} [{} {}{}] {}",
                            cell(&b["kind"]),
                            cell(&b["class"]),
                            cell(&b["decision"]),
                            b["rule"]
                                .as_str()
                                .map(|r| format!(" by {}", safe(r)))
                                .unwrap_or_default(),
                            safe(b["text"].as_str().unwrap_or(""))
                        );
                        if let Some(p) = b["params"].as_array().filter(|p| !p.is_empty()) {
                            println!("{:29}params {}", "", serde_json::Value::Array(p.clone()));
                        }
                        println!("{:29}-> {outcome}", "");
                        if let Some(rows) = b["results"].as_array() {
                            for r in rows {
                                println!("{:29}   | {}", "", cell(r));
                            }
                            if b["results_cut"] == true {
                                println!("{:29}   | … (more rows not kept)", "");
                            }
                        }
                    }
                    "approval" => println!(
                        "{head} approval {} {} by {}",
                        cell(&b["request"]),
                        cell(&b["event"]),
                        cell(&b["actor"])
                    ),
                    "session_close" => println!(
                        "{head} close    {} up, {} down{}{}",
                        cell(&b["bytes_up"]),
                        cell(&b["bytes_down"]),
                        b["ended_by"]
                            .as_str()
                            .map(|x| format!("; ended by {}", safe(x)))
                            .unwrap_or_default(),
                        b["error"]
                            .as_str()
                            .map(|x| format!("; error {}", safe(x)))
                            .unwrap_or_default()
                    ),
                    other => println!("{head} {other} {}", cell(b)),
                }
            }
        }
    }
    Ok(())
}

fn agents_command(db: &std::path::Path, json: bool) -> anyhow::Result<()> {
    use audit::print::{cell, table, time};
    let conn = audit::open(db)?;
    let list = audit::agents::list(&conn, record::now_ms())?;
    if json {
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            vec![
                cell(&a["status"]),
                cell(&a["workload"]),
                cell(&a["subject"]),
                time(a["first_seen_ms"].as_i64()),
                time(a["last_seen_ms"].as_i64()),
                time(a["token_expires_ms"].as_i64()),
                format!("{}/{}", a["live_sessions"], a["sessions"]),
                a["targets"]
                    .as_array()
                    .map(|t| t.iter().map(cell).collect::<Vec<_>>().join(","))
                    .unwrap_or_default(),
                format!("{} ({} denied)", a["privileged_actions"], a["denied"]),
            ]
        })
        .collect();
    table(
        &[
            "STATUS",
            "WORKLOAD",
            "IDENTITY",
            "FIRST SEEN (UTC)",
            "LAST SEEN",
            "TOKEN UNTIL",
            "LIVE/ALL",
            "TARGETS",
            "PRIVILEGED",
        ],
        &rows,
    );
    Ok(())
}

fn revoke_command(
    socket: &std::path::Path,
    req: serde_json::Value,
    json: bool,
) -> anyhow::Result<()> {
    let answer = admin::request(socket, &req)?;
    if let Some(e) = answer["error"].as_str() {
        anyhow::bail!("{e}");
    }
    if json {
        println!("{answer}");
        return Ok(());
    }
    if let Some(list) = answer["revocations"].as_array() {
        if list.is_empty() {
            println!("nothing is revoked");
        }
        for r in list {
            println!(
                "{}  identity {} (issuer {}) workload {}: {} (by {})",
                audit::print::time(r["at_ms"].as_i64()),
                audit::print::cell(&r["subject"]),
                audit::print::cell(&r["issuer"]),
                audit::print::cell(&r["workload"]),
                audit::print::cell(&r["reason"]),
                audit::print::cell(&r["by"])
            );
        }
    } else if let Some(n) = answer["lifted"].as_u64() {
        println!("{n} revocation(s) lifted");
    } else {
        println!(
            "revoked: {} live session(s) ended; new connections are refused",
            answer["ended_sessions"]
        );
    }
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
