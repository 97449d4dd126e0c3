//! A record database of many sessions (issue 16): the gateway starts, closes the sessions a
//! killed run left open, and the audit commands answer, on a real record database written by
//! the real gateway (and continued, valid chain and all, by a bulk writer here). The start-up
//! used to check every session's opening against every closing: about 140 s for the 20,000
//! sessions of this test, so the gateway was not ready within the harness's 30 s.
//!
//! Query plans are read with python's sqlite3 (`EXPLAIN QUERY PLAN`); the queries of the
//! commands themselves are checked in gateway-user's `record::plans` unit tests.
//!
//! Ports: PostgreSQL 19700 and 19702, gateway listeners 19701 and 19703; loopback only. Root
//! required.

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use agentgate_tests::{bg::Bg, pg::*, *};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// Sessions the bulk writer adds.
const BULK: i64 = 20_000;
/// Every this many of them is left open (an opening and an intent, no closing), as a
/// `kill -9` leaves the sessions it interrupts.
const OPEN_EVERY: i64 = 100;
/// Every this many is a denied statement.
const DENIED_EVERY: i64 = 7;
/// Identities of the bulk sessions: `bulk-0` … `bulk-9`, workload `bulk-agents`.
const IDENTITIES: i64 = 10;

fn start(tag: &str, listen: u16, pg_port: u16) -> PgGateway {
    require_root();
    PgGateway::start(
        tag,
        listen,
        pg_port,
        PgOptions::default(),
        &PgTargetOptions {
            extra_rules: NO_DDL_RULE.to_string(),
            ..Default::default()
        },
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

fn cli(args: &[&str]) -> Output {
    Command::new(agentgate_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run agentgate")
}

fn cli_json(args: &[&str]) -> Value {
    let out = cli(args);
    assert!(
        out.status.success(),
        "agentgate {args:?} failed ({}): {}",
        out.status,
        output_text(&out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("agentgate {args:?}: {e}: {}", output_text(&out)))
}

use agentgate_tests::record_count as count;

/// psql with `sqls` (one `-c` each) in `cg`, to its end; whether it succeeded.
fn psql_run(conn: &str, cg: &Cgroup, sqls: &[&str]) -> bool {
    let mut cmd = psql_command(conn);
    cmd.args(["-A", "-t"]);
    for sql in sqls {
        cmd.args(["-c", sql]);
    }
    let mut c = Bg::spawn("psql", cmd, cg);
    c.wait_exit(WAIT).success()
}

/// Continues the journal of `db` with `BULK` sessions, chained as the gateway chains
/// (`SHA-256(prev ‖ seq ‖ at_ms ‖ kind ‖ session ‖ body ‖ has-session)`), in one transaction,
/// through plain INSERTs (whatever triggers the gateway's schema has run as for its own).
/// Session `i` starts at `base + i` ms.
fn bulk_write(db: &Path, base: i64) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            r#"import sqlite3, sys, hashlib, struct, json
db, base, n, open_every, denied_every, idents = sys.argv[1], *map(int, sys.argv[2:])
c = sqlite3.connect(db, timeout=30)
row = c.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
seq, prev = row[0], bytes.fromhex(row[1])
rows = []
def add(at, kind, session, body):
    global seq, prev
    seq += 1
    body = json.dumps(body, separators=(",", ":"))
    h = hashlib.sha256()
    h.update(prev)
    h.update(struct.pack(">q", seq))
    h.update(struct.pack(">q", at))
    for part in (kind, session, body):
        b = part.encode()
        h.update(struct.pack(">Q", len(b)))
        h.update(b)
    h.update(bytes([1]))
    d = h.digest()
    rows.append((seq, at, kind, session, body, prev.hex(), d.hex()))
    prev = d
for i in range(n):
    s = "bulk-%06d" % i
    t = base + i
    add(t, "session_open", s, {"session": s, "started_ms": t, "protocol": "postgres",
        "workload": "bulk-agents", "cgroup": "/bulk", "pid": 1, "issuer": "bulk-issuer",
        "subject": "bulk-%d" % (i % idents), "groups": ["agents"], "target": "pg",
        "original_dst": "127.0.0.1:5432", "client_user": "agent", "database": "agentdb",
        "policy_version": "bulk", "token_expires_ms": base + 86400000})
    if i % open_every == 0:
        add(t, "statement_intent", s, {"session": s, "seq": 1, "started_ms": t, "kind": "simple",
            "text": "INSERT INTO items VALUES (%d)" % i, "class": "write", "decision": "allowed"})
        continue
    denied = i % denied_every == 0
    add(t, "statement", s, {"session": s, "seq": 1, "started_ms": t, "kind": "simple",
        "text": "DROP TABLE items" if denied else "SELECT %d" % i,
        "class": "ddl" if denied else "read", "decision": "denied" if denied else "allowed",
        "rows": None if denied else 1})
    add(t, "session_close", s, {"session": s, "ended_ms": t + 1, "bytes_up": 10, "bytes_down": 20})
c.executemany("INSERT INTO audit_log (seq, at_ms, kind, session, body, prev, hash) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
c.commit()
print(len(rows))
"#,
        )
        .arg(db)
        .args(
            [base, BULK, OPEN_EVERY, DENIED_EVERY, IDENTITIES]
                .iter()
                .map(|v| v.to_string()),
        )
        .output()
        .expect("run python3");
    assert!(out.status.success(), "bulk writer: {}", output_text(&out));
}

/// `EXPLAIN QUERY PLAN` of `sql` on `db` (python's sqlite3): (id, parent, detail) per step.
fn plan(db: &Path, sql: &str) -> Vec<(i64, i64, String)> {
    record_query(db, &format!("EXPLAIN QUERY PLAN {sql}"))
        .into_iter()
        .map(|r| {
            (
                r[0].as_i64().unwrap(),
                r[1].as_i64().unwrap(),
                r[3].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The steps of a plan that run once per row of another (a correlated subquery's loops, a
/// join's inner loops) and do not find their rows by record number or session: every record
/// of a kind read again for each session.
fn per_row_scans(plan: &[(i64, i64, String)]) -> Vec<String> {
    use std::collections::HashMap;
    // Per step: inside a correlated subquery; loops among its children so far.
    let mut seen: HashMap<i64, (bool, usize)> = HashMap::from([(0, (false, 0))]);
    let mut out = Vec::new();
    for (id, parent, detail) in plan {
        let (correlated, loops) = *seen.get(parent).unwrap_or(&(false, 0));
        let is_loop = detail.starts_with("SEARCH ") || detail.starts_with("SCAN ");
        if is_loop
            && (correlated || loops > 0)
            && !(detail.contains("(rowid=") || detail.contains("(session="))
        {
            out.push(detail.clone());
        }
        if is_loop {
            seen.entry(*parent).or_default().1 += 1;
        }
        seen.insert(*id, (correlated || detail.starts_with("CORRELATED"), 0));
    }
    out
}

/// The views people query, and the query the start-up used to run, find a session's records
/// by its session: none reads every record of a kind once per session.
#[test]
fn the_views_read_a_sessions_records_through_an_index() {
    let mut p = start("rscale-plan", 19703, 19702);
    let conn = p.agent_conninfo(&agent_jwt("agent-plan"), "disable");
    assert!(psql_run(
        &conn,
        &p.agent,
        &["SELECT 1", "INSERT INTO items (id) VALUES (1)"]
    ));
    p.gw.terminate(WAIT);
    let db = p.gw.record_db();
    let session = record_query(&db, "SELECT id FROM sessions LIMIT 1")[0][0]
        .as_str()
        .expect("a session on record")
        .to_string();
    let mut bad = Vec::new();
    for sql in [
        "SELECT id FROM sessions WHERE ended_ms IS NULL".to_string(),
        format!("SELECT * FROM sessions WHERE id = '{session}'"),
        format!("SELECT * FROM statements WHERE session = '{session}'"),
    ] {
        let plan = plan(&db, &sql);
        let scans = per_row_scans(&plan);
        if !scans.is_empty() {
            bad.push(format!("{sql}\n  per row: {scans:?}\n  plan: {plan:?}"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// 20,000 sessions on record, 200 of them and one real one left open by a `kill -9`: the
/// gateway starts, closes exactly those on record, the chain verifies, and `sessions list`,
/// `show`, `replay`, `agents` and `audit export` answer correctly.
#[test]
fn many_sessions_on_record_start_and_answer() {
    let mut p = start("rscale", 19701, 19700);
    let db = p.gw.record_db();
    let conn = p.agent_conninfo(&agent_jwt("agent-scale"), "disable");
    assert!(psql_run(
        &conn,
        &p.agent,
        &["SELECT 1", "INSERT INTO items (id) VALUES (1)"]
    ));
    // A real session live at the kill.
    let held_conn = p.agent_conninfo(&agent_jwt("agent-held"), "disable");
    let mut cmd = psql_command(&held_conn);
    cmd.args(["-c", "SELECT pg_sleep(600)"]);
    let mut held = Bg::spawn("psql", cmd, &p.agent);
    wait_until("the held session is on record", WAIT, || {
        count(
            &db,
            "SELECT count(*) FROM sessions WHERE subject = 'agent-held' AND ended_ms IS NULL",
        ) == 1
    });
    p.gw.kill9();
    held.kill();

    // After the real sessions (the bulk ones are the newest), before the orphans' closing.
    let base = now_ms();
    bulk_write(&db, base);
    let left_open = (BULK + OPEN_EVERY - 1) / OPEN_EVERY;
    assert_eq!(
        count(&db, "SELECT count(*) FROM sessions WHERE ended_ms IS NULL"),
        left_open + 1
    );

    let restart = now_ms();
    // Waits for `ready` (30 s at most).
    p.gw.start_again();
    assert_eq!(
        count(&db, "SELECT count(*) FROM sessions WHERE ended_ms IS NULL"),
        0
    );
    let closed_now = record_query(
        &db,
        &format!(
            "SELECT session FROM audit_log WHERE kind = 'session_close' AND at_ms >= {restart} \
             AND json_extract(body, '$.ended_by') LIKE '%gateway stopped%' ORDER BY session"
        ),
    );
    let mut expected: Vec<String> = (0..BULK)
        .filter(|i| i % OPEN_EVERY == 0)
        .map(|i| format!("bulk-{i:06}"))
        .collect();
    let held_id = record_query(&db, "SELECT id FROM sessions WHERE subject = 'agent-held'")[0][0]
        .as_str()
        .unwrap()
        .to_string();
    expected.push(held_id);
    expected.sort();
    let closed_now: Vec<String> = closed_now
        .iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(closed_now, expected, "the sessions closed at the start");

    let d = db.to_str().unwrap();
    let out = cli(&["audit", "verify", "--record-db", d]);
    assert!(
        out.status.success() && !output_text(&out).contains("TAMPERED"),
        "audit verify: {}",
        output_text(&out)
    );

    // Newest first: the last bulk sessions, with their counts.
    let list = cli_json(&[
        "sessions",
        "list",
        "--json",
        "--limit",
        "3",
        "--record-db",
        d,
    ]);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["bulk-019999", "bulk-019998", "bulk-019997"], "{list}");
    let last = &list[0];
    assert_eq!(
        (&last["statements"], &last["status"], &last["subject"]),
        (&json!(1), &json!("closed"), &json!("bulk-9")),
        "{last}"
    );
    // An interrupted one: its intent counts, its end is the start's.
    let live_then = cli_json(&[
        "sessions",
        "list",
        "--json",
        "--identity",
        "bulk-0",
        "--statement",
        "INSERT INTO items VALUES (19900)",
        "--record-db",
        d,
    ]);
    assert_eq!(live_then.as_array().unwrap().len(), 1, "{live_then}");
    assert_eq!(live_then[0]["session"], "bulk-019900");
    assert_eq!(live_then[0]["privileged"], 1, "{live_then}");
    assert!(live_then[0]["ended_ms"].as_i64().unwrap() >= restart);
    let live = cli_json(&[
        "sessions",
        "list",
        "--json",
        "--status",
        "live",
        "--record-db",
        d,
    ]);
    assert_eq!(live, json!([]));

    let show = cli_json(&[
        "sessions",
        "show",
        "bulk-000007",
        "--json",
        "--record-db",
        d,
    ]);
    assert_eq!(
        (&show["subject"], &show["denied"], &show["statements"]),
        (&json!("bulk-7"), &json!(1), &json!(1)),
        "{show}"
    );
    let replay = cli_json(&[
        "sessions",
        "replay",
        "bulk-000100",
        "--json",
        "--record-db",
        d,
    ]);
    let kinds: Vec<&str> = replay
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["session_open", "statement_intent", "session_close"],
        "{replay}"
    );

    // Per identity: its sessions, the denied statements and the privileged ones (the
    // intents whose outcome never came).
    let agents = cli_json(&["agents", "--json", "--record-db", d]);
    for k in 0..IDENTITIES {
        let subject = format!("bulk-{k}");
        let a = agents
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["subject"] == subject.as_str())
            .unwrap_or_else(|| panic!("{subject} not in agents: {agents}"));
        let mine: Vec<i64> = (0..BULK).filter(|i| i % IDENTITIES == k).collect();
        let open = mine.iter().filter(|i| *i % OPEN_EVERY == 0).count();
        let denied = mine
            .iter()
            .filter(|i| *i % OPEN_EVERY != 0 && *i % DENIED_EVERY == 0)
            .count();
        assert_eq!(
            (
                &a["sessions"],
                &a["denied"],
                &a["privileged_actions"],
                &a["live_sessions"]
            ),
            (&json!(mine.len()), &json!(denied), &json!(open), &json!(0)),
            "{a}"
        );
    }
    let real = agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["subject"] == "agent-scale")
        .unwrap_or_else(|| panic!("agent-scale not in agents: {agents}"));
    assert_eq!(real["privileged_actions"], 1, "{real}");

    // Export from a time on: the records from there, in journal order.
    let since = (base + BULK - 10).to_string();
    let out = cli(&["audit", "export", "--since", &since, "--record-db", d]);
    assert!(out.status.success(), "{}", output_text(&out));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let on_record = count(
        &db,
        &format!("SELECT count(*) FROM audit_log WHERE at_ms >= {since}"),
    );
    assert_eq!(lines.len() as i64, on_record);
    assert!(lines
        .windows(2)
        .all(|w| w[0]["seq"].as_i64() < w[1]["seq"].as_i64()));
    assert_eq!(lines[0]["session"], "bulk-019990", "{}", lines[0]);
}
