//! The agent's DROP TABLEs wait for a person, who denies one and approves the other through
//! `agentgate approvals`.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use agentgate_tests::{
    agentgate_bin,
    pg::{PgServer, ROLE_SCRAM},
    s, Cgroup, Gateway,
};
use anyhow::{bail, Context};
use serde_json::Value;

use super::{
    background::Background,
    output::{cell, print_indented, print_table},
    postgres::agent_psql,
    record::recorded,
};

/// The agent's second session: its DROP TABLE waits for a person, who denies it.
const DROP_ITEMS: &str = "\
DROP TABLE items;
SELECT count(*) FROM items;
";
/// The agent's third session: a DROP TABLE a person approves.
const DROP_SCRATCH: &str = "DROP TABLE scratch;\n";
/// Why the demo's approver denies the DROP TABLE of items.
const DENY_REASON: &str = "items is live inventory; archive it first";

/// The agent's DROP TABLEs wait for a person (rule ddl-needs-approval): root on this host denies
/// one and approves the other through `agentgate approvals`; each time the agent sees the outcome
/// and the superuser what the database holds. The record DB keeps the trail of both.
pub(super) fn approvals(
    gw: &Gateway,
    agent: &Cgroup,
    subject: &str,
    conn: &str,
    shown: &str,
    pg: &PgServer,
) -> anyhow::Result<()> {
    let sock = gw.admin_socket();
    println!(
        "\n-- approvals: the agent in {} drops table items and counts it, in the background (rule ddl-needs-approval: a member of group demo-dbas decides through the HTTP admin API, not started here, or root on this host through the local CLI, as below):",
        agent.rel
    );
    println!(
        "   $ printf 'DROP TABLE items;\\nSELECT count(*) FROM items;\\n' | psql -X --dbname=\"{shown}\" -a -v VERBOSITY=verbose &"
    );
    let mut held = Background::spawn(agent_psql(conn, agent), DROP_ITEMS, "drop-items.out")?;
    let request = pending(&sock, "items", &mut held)?;
    let id = s(&request, "id").to_string();
    let so_far = held.wait_output(|o| o.contains(&id), Duration::from_secs(5))?;
    println!(
        "   the demo polls `agentgate approvals list --json` until the request is pending; as root on this host (SOCK={}, the gateway's admin socket):",
        sock.display()
    );
    println!("   $ agentgate approvals list --admin-socket $SOCK");
    print_indented(&approvals_cli(&sock, &["list"])?);
    println!("   the agent's psql so far:");
    print_indented(&so_far);
    let waiting = held.running()?;
    let still = pg.sql_in("agentdb", "SELECT count(*) FROM items;");
    println!(
        "   => {}",
        if so_far.contains("approval required") && waiting {
            format!(
                "the agent was told at once (NOTICE naming request {id}) and its psql waits; items is still there ({still} rows, as the superuser sees it)"
            )
        } else {
            "the agent got NO approval-required NOTICE, or its psql does not wait (wrong)"
                .to_string()
        }
    );

    println!(
        "\n   $ agentgate approvals deny {id} --reason \"{DENY_REASON}\" --admin-socket $SOCK"
    );
    print_indented(&approvals_cli(
        &sock,
        &["deny", &id, "--reason", DENY_REASON],
    )?);
    let out = held.finish(Duration::from_secs(10))?;
    println!("   the agent's psql, to its end:");
    print_indented(&out);
    let left = pg.sql_in("agentdb", "SELECT count(*) FROM items;");
    let denied = out.contains("42501")
        && out.contains(&format!("{id} denied by root: {DENY_REASON}"))
        && out.contains("(1 row)");
    println!(
        "   => DROP TABLE: {}; items is still there ({left} rows, as the superuser sees it)",
        if denied {
            "denied by root, the agent got 42501 with the reason and its session went on"
        } else {
            "NOT DENIED with the reason (wrong)"
        }
    );

    println!(
        "\n-- the agent drops table scratch (owned by {ROLE_SCRAM}, so PostgreSQL lets it), in the background; this time root approves:"
    );
    println!(
        "   $ echo 'DROP TABLE scratch;' | psql -X --dbname=\"{shown}\" -a -v VERBOSITY=verbose &"
    );
    let mut held = Background::spawn(agent_psql(conn, agent), DROP_SCRATCH, "drop-scratch.out")?;
    let request = pending(&sock, "scratch", &mut held)?;
    let approved_id = s(&request, "id").to_string();
    held.wait_output(|o| o.contains(&approved_id), Duration::from_secs(5))?;
    let there = pg.sql_in(
        "agentdb",
        "SELECT count(*) FROM pg_tables WHERE tablename = 'scratch';",
    );
    println!(
        "   pending: request {approved_id} ({}); the agent got its NOTICE; table scratch exists: {}",
        s(&request, "statement"),
        if there == "1" { "yes" } else { "NO (wrong)" }
    );
    println!("   $ agentgate approvals approve {approved_id} --admin-socket $SOCK");
    let answer = approvals_cli(&sock, &["approve", &approved_id])?;
    println!("     {}", answer.lines().next().unwrap_or(""));
    let out = held.finish(Duration::from_secs(10))?;
    println!("   the agent's psql, to its end:");
    print_indented(&out);
    let gone = pg.sql_in(
        "agentdb",
        "SELECT count(*) FROM pg_tables WHERE tablename = 'scratch';",
    );
    let ran = out.lines().any(|l| l.trim() == "DROP TABLE") && !out.contains("ERROR");
    println!(
        "   => DROP TABLE: {}; {}",
        if ran {
            "approved by root, it ran and the agent got its normal result"
        } else {
            "did NOT run after the approval (wrong)"
        },
        if gone == "0" {
            "the superuser finds no table scratch any more"
        } else {
            "the superuser still finds table scratch (wrong)"
        }
    );

    println!("\n   $ agentgate approvals show {approved_id} --admin-socket $SOCK");
    print_indented(&approvals_cli(&sock, &["show", &approved_id])?);
    let rows = recorded(
        &gw.record_db(),
        "SELECT request, at_ms, event, actor, detail FROM approval_events WHERE request IN (?, ?) ORDER BY at_ms, rowid",
        &[&id, &approved_id],
        5,
    )?;
    println!(
        "\n   the trail (record DB, table approval_events; at: seconds after the first event):"
    );
    let first = rows.first().and_then(|r| r[1].as_i64()).unwrap_or(0);
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let at = r[1].as_i64().unwrap_or(0) - first;
            vec![
                cell(&r[0]),
                format!("+{}.{:03}", at / 1000, at % 1000),
                cell(&r[2]),
                cell(&r[3]),
                cell(&r[4]),
            ]
        })
        .collect();
    print_table(&["request", "at", "event", "actor", "detail"], &table);
    // `then`: what follows the decision (an approved statement is then forwarded).
    let trail = |id: &str, decision: &str, then: &[&str]| {
        let events: Vec<&str> = rows
            .iter()
            .filter(|r| r[0] == id)
            .filter_map(|r| r[2].as_str())
            .collect();
        let by = |event: &str, actor: &dyn Fn(&str) -> bool| {
            rows.iter()
                .any(|r| r[0] == id && r[2] == event && r[3].as_str().is_some_and(actor))
        };
        events.len() == 2 + then.len()
            && events[..2] == ["requested", decision]
            && events[2..] == *then
            && by("requested", &|a| a.ends_with(&format!("#{subject}")))
            && by(decision, &|a| a == "local#root")
    };
    println!(
        "   => {}",
        if trail(&id, "deny", &[]) && trail(&approved_id, "approve", &["forwarded"]) {
            "each request recorded with the agent who asked (its JWT's issuer#subject) and the statement, each decision with who made it (local#root), the approved statement's forwarding with it"
        } else {
            "the trail is NOT as it happened (wrong)"
        }
    );
    Ok(())
}

/// `agentgate approvals ARGS --admin-socket SOCK` as root; its stdout, or an error with its stderr.
pub(super) fn approvals_cli(sock: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(agentgate_bin())
        .arg("approvals")
        .args(args)
        .arg("--admin-socket")
        .arg(sock)
        .output()
        .context("run agentgate approvals")?;
    if !out.status.success() {
        bail!(
            "agentgate approvals {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            out.status
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `agentgate approvals list --json` (10 s) until a pending request's statement names
/// `table`; returns it.
fn pending(sock: &Path, table: &str, agent: &mut Background) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list: Value = serde_json::from_str(&approvals_cli(sock, &["list", "--json"])?)?;
        if let Some(r) = list["requests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["state"] == "pending" && s(r, "statement").contains(table))
        {
            return Ok(r.clone());
        }
        if !agent.running()? {
            bail!(
                "the agent's psql ended before a request to drop {table} was pending:\n{}",
                agent.output()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "no pending request to drop {table} after 10 s; the agent's psql so far:\n{}",
                agent.output()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
