//! The end of the demo: what the record DB keeps of it all, read with the agentgate CLI.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use agentgate_tests::{agentgate_bin, now, pg::ROLE_SCRAM, s, Gateway};
use anyhow::{bail, Context};
use serde_json::Value;

use super::{
    output::print_indented,
    postgres::{AGENT_SESSION, CUSTOMERS_QUERY},
};

/// The end of the demo: what the agent did, as the record DB keeps it, read with the agentgate
/// CLI: the inventory (`agents`), the agent's sessions, the replay of its first psql session and
/// of its masked read, and the check of the hash chain (`audit verify`).
pub(super) fn audit_record(
    gw: &Gateway,
    subject: &str,
    first: &str,
    masking_pid: u32,
) -> anyhow::Result<()> {
    let db = gw.record_db();
    let masked_session = s(
        &gw.wait_for(
            Duration::from_secs(5),
            |e| e["event"] == "connection_close" && e["pid"] == masking_pid,
            0,
        ),
        "session",
    )
    .to_string();
    // The recorder writes off the data path: wait until every session's close is on record.
    let agents = record_json_until(&db, &["agents"], |v| {
        v.as_array().is_some_and(|a| {
            !a.is_empty()
                && a.iter()
                    .all(|x| x["live_sessions"] == 0 && x["sessions"] == 4)
        })
    })?;
    println!(
        "\n-- the audit record: every session, statement, approval and policy version of this gateway is a record of one journal in its record DB, each chained to the one before by SHA-256; the agentgate CLI reads it (as root on this host, DB={}; also when the gateway is stopped):",
        db.display()
    );
    println!("   $ agentgate agents --record-db $DB");
    print_indented(&record_cli(&db, &["agents"])?.1);
    let list = agents.as_array().cloned().unwrap_or_default();
    let me = list.iter().find(|a| a["subject"] == subject);
    let expires = me.and_then(|a| a["token_expires_ms"].as_i64()).unwrap_or(0);
    let ok = list.len() == 1
        && me.is_some_and(|a| {
            a["workload"] == "sql-agents"
                && a["status"] == "idle"
                && a["targets"] == serde_json::json!(["demo-postgres"])
                && a["privileged_actions"] == 2
                && a["denied"] == 2
                && a["issuer"] == agentgate_tests::ISSUER
        })
        && expires > now() as i64 * 1000;
    println!(
        "   => {}",
        if ok {
            format!(
                "one agent on record: {subject} ({}) of workload sql-agents, idle (no live session; its token is good for {} s more, so it could come back), 4 sessions, all to target demo-postgres, 2 privileged actions (the INSERT, the approved DROP TABLE scratch), 2 statements denied (the GRANT, the DROP TABLE items)",
                agentgate_tests::ISSUER,
                (expires / 1000).saturating_sub(now() as i64)
            )
        } else {
            "the inventory is NOT what the agent did (wrong)".to_string()
        }
    );

    println!("\n   $ agentgate sessions list --identity {subject} --record-db $DB");
    print_indented(&record_cli(&db, &["sessions", "list", "--identity", subject])?.1);
    let sessions = record_json(&db, &["sessions", "list", "--identity", subject])?;
    let sessions = sessions.as_array().cloned().unwrap_or_default();
    let ids: Vec<&str> = sessions
        .iter()
        .filter_map(|x| x["session"].as_str())
        .collect();
    println!(
        "   => {}",
        if sessions.len() == 4
            && sessions.iter().all(|x| x["status"] == "closed")
            && ids.last() == Some(&first)
            && ids.first() == Some(&masked_session.as_str())
        {
            format!("its 4 psql sessions, newest first, all closed: {first} the first one above, {masked_session} the masked read")
        } else {
            "NOT the agent's 4 psql sessions (wrong)".to_string()
        }
    );

    println!(
        "\n   $ agentgate sessions replay {first} --record-db $DB        (the agent's first psql session)"
    );
    print_indented(&record_cli(&db, &["sessions", "replay", first])?.1);
    let replay = record_json(&db, &["sessions", "replay", first])?;
    let events = replay.as_array().cloned().unwrap_or_default();
    let statements: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "statement")
        .map(|e| &e["body"])
        .collect();
    let texts: Vec<&str> = statements
        .iter()
        .filter_map(|b| b["text"].as_str())
        .collect();
    let find = |start: &str| statements.iter().find(|b| s(b, "text").starts_with(start));
    let grant = find("GRANT").is_some_and(|b| {
        b["decision"] == "denied"
            && b["rule"] == "no-privilege-changes"
            && b["error_code"] == "42501"
    });
    let insert = find("INSERT").is_some_and(|b| b["class"] == "write" && b["rows"] == 2);
    let user =
        find("SELECT current_user").is_some_and(|b| b["results"].to_string().contains(ROLE_SCRAM));
    let framed = events
        .first()
        .is_some_and(|e| e["kind"] == "session_open" && e["body"]["subject"] == subject)
        && events.last().is_some_and(|e| e["kind"] == "session_close");
    println!(
        "   => {}",
        if texts == AGENT_SESSION.lines().collect::<Vec<_>>() && grant && insert && user && framed {
            "the session as it happened: opened by report-agent-7, its 5 statements in order with their timings, the INSERT's 2 rows, the rows the agent was sent (current_user: agentgate_scram), the GRANT denied by rule no-privilege-changes (42501), then the close"
        } else {
            "the replay is NOT what the agent did (wrong)"
        }
    );

    println!(
        "\n   $ agentgate sessions replay {masked_session} --record-db $DB        (its read of customers)"
    );
    print_indented(&record_cli(&db, &["sessions", "replay", &masked_session])?.1);
    let replay = record_json(&db, &["sessions", "replay", &masked_session])?;
    let read = replay
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["kind"] == "statement" && e["body"]["text"] == CUSTOMERS_QUERY)
        .map(|e| &e["body"]);
    let kept = read.map(|b| b["results"].to_string()).unwrap_or_default();
    println!(
        "   => {}",
        if read.is_some_and(|b| b["rows"] == 3)
            && kept.contains("hmac:")
            && kept.contains("****1111")
            && !kept.contains('@')
            && !kept.contains("4111 1111")
        {
            "the record keeps the rows as the agent got them, masked: no email address or card number the masking hid is in the record DB"
        } else {
            "the recorded rows are NOT the masked ones the agent got (wrong)"
        }
    );

    println!("\n   $ agentgate audit verify --record-db $DB");
    let (verified, out) = record_cli(&db, &["audit", "verify"])?;
    print_indented(&out);
    println!(
        "   => {}",
        if verified && out.contains("the chain is intact") {
            "every record matches its hash and follows the one before it: none was edited, deleted or reordered since it was written"
        } else {
            "the chain does NOT verify (wrong)"
        }
    );
    Ok(())
}

/// `agentgate ARGS --record-db DB` as root: whether it succeeded, and what it printed (stdout,
/// then stderr).
pub(super) fn record_cli(db: &Path, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let out = Command::new(agentgate_bin())
        .args(args)
        .arg("--record-db")
        .arg(db)
        .output()
        .with_context(|| format!("run agentgate {}", args.join(" ")))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text += &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.success(), text))
}

/// `agentgate ARGS --json --record-db DB`, parsed.
pub(super) fn record_json(db: &Path, args: &[&str]) -> anyhow::Result<Value> {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, out) = record_cli(db, &all)?;
    if !ok {
        bail!("agentgate {}: {out}", all.join(" "));
    }
    serde_json::from_str(&out)
        .with_context(|| format!("agentgate {} printed {out:?}", all.join(" ")))
}

/// `record_json` until `ready` says so (5 s); the last answer either way.
pub(super) fn record_json_until(
    db: &Path,
    args: &[&str],
    ready: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = record_json(db, args)?;
        if ready(&v) || Instant::now() > deadline {
            return Ok(v);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The rows of `query` (with `?` parameters `args`) in the gateway's record DB, each a JSON
/// array of its columns. The recorder commits in batches: waits until `expected` rows are
/// there (5 s).
pub(super) fn recorded(
    db: &Path,
    query: &str,
    args: &[&str],
    expected: usize,
) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new("python3")
            .arg("-c")
            .arg(
                "import sqlite3, sys, json\n\
                 c = sqlite3.connect(sys.argv[1])\n\
                 print(json.dumps(c.execute(sys.argv[2], sys.argv[3:]).fetchall()))",
            )
            .arg(db)
            .arg(query)
            .args(args)
            .output()
            .context("python3 (its sqlite3 module reads the record DB)")?;
        if !out.status.success() {
            bail!(
                "reading {}: {}",
                db.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let rows: Vec<Value> = serde_json::from_slice(&out.stdout)?;
        if rows.len() >= expected || Instant::now() > deadline {
            return Ok(rows);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
