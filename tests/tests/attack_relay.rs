//! Attacks on the relay's newest controls (a Query inside an extended-protocol batch, the
//! pending queue after errors, `max_rows` trials, CancelRequests of held statements), end to
//! end: a real PostgreSQL, the real gateway, real clients (psql, the raw wire client
//! `fixtures/pg_wire.py`) in a managed cgroup whose connect() is captured. Each test shows a
//! hole an attack review found in 90deca2: each failed there and passes since the fixes
//! (trials count every changed row and start only from a known state; Close and COPY-time
//! Syncs are tracked; an answer that fits nothing sent ends the session; a portal refused at
//! Bind or whose Bind the server refused is never run as the gateway's guess). Root required.
//!
//! Ports: PostgreSQL 19600+n, gateway listener 19625+n (n < 25).

use std::time::{Duration, Instant};

use agentgate_tests::{pg::*, wire::*};
use serde_json::{json, Value};

/// Test number `n`: (gateway listener, PostgreSQL port).
fn ports(n: u16) -> (u16, u16) {
    assert!(n < 25);
    (19625 + n, 19600 + n)
}

fn start(tag: &str, n: u16, rules: String) -> PgGateway {
    let (listen, pg_port) = ports(n);
    PgGateway::with_rules(tag, listen, pg_port, rules)
}

/// Lets psql run `sql` through the gateway until it is held for approval (its NOTICE), ends or
/// fails, or 10 s pass; returns what it printed. psql is stopped either way.
fn run_until_held_or_done(p: &PgGateway, sql: &str) -> String {
    let conn = p.agent_conninfo(&agent_jwt("agent-attack"), "disable");
    let mut c = psql_bg(&conn, &p.agent, &[sql]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && c.running() {
        if c.unread()
            .iter()
            .any(|(_, err, text)| *err && text.starts_with("NOTICE:"))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The gateway has had its say (a held statement waits; one that ran has run).
    std::thread::sleep(Duration::from_millis(300));
    let text = c.text();
    c.kill();
    text
}

/// Messages of `w` up to and including the first one `pred` accepts.
fn until(w: &mut Wire, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let v = w.next_message();
        let done = pred(&v) || v["eof"] == true;
        got.push(v);
        if done {
            return got;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// max_rows: the command tag is not the rows a statement changed
// ---------------------------------------------------------------------------------------------

/// A data-modifying CTE inside an INSERT: the top-level statement is an InsertStmt (so it is
/// "triable"), its command tag counts only the outer INSERT's rows (0), and the trial is
/// committed as "within the limit" while the CTE deleted every row of `big`.
#[test]
fn writable_cte_inside_insert_deletes_everything_under_max_rows() {
    let p = start("atk-cte", 0, max_rows_rule("big"));
    p.pg.sql_in(
        "agentdb",
        &format!(
            "CREATE TABLE big (x int); INSERT INTO big SELECT generate_series(1, 10); \
             ALTER TABLE big OWNER TO {ROLE_SCRAM};"
        ),
    );
    // Sanity: the rule works on a plain DELETE of everything (held, nothing deleted).
    let plain = run_until_held_or_done(&p, "DELETE FROM big");
    assert!(plain.contains("NOTICE:"), "{plain}");
    assert_eq!(table_rows(&p, "big"), 10, "{plain}");

    let out = run_until_held_or_done(
        &p,
        "WITH gone AS (DELETE FROM big RETURNING x) INSERT INTO big SELECT x FROM gone WHERE false",
    );
    assert_eq!(
        table_rows(&p, "big"),
        10,
        "10 rows deleted under max_rows 3 without approval; psql: {out}"
    );
}

/// ON DELETE CASCADE: `DELETE FROM parent WHERE id = 1` says `DELETE 1`, and the server deletes
/// every child row with it. The trial counts 1 and commits.
#[test]
fn cascading_delete_touches_more_rows_than_its_tag_says() {
    let p = start("atk-cascade", 1, max_rows_rule("parent, child"));
    p.pg.sql_in(
        "agentdb",
        &format!(
            "CREATE TABLE parent (id int PRIMARY KEY); INSERT INTO parent VALUES (1), (2); \
             CREATE TABLE child (id int, pid int REFERENCES parent ON DELETE CASCADE); \
             INSERT INTO child SELECT g, 1 FROM generate_series(1, 10) g; \
             ALTER TABLE parent OWNER TO {ROLE_SCRAM}; ALTER TABLE child OWNER TO {ROLE_SCRAM};"
        ),
    );
    let plain = run_until_held_or_done(&p, "DELETE FROM child WHERE pid = 1");
    assert!(plain.contains("NOTICE:"), "{plain}");
    assert_eq!(table_rows(&p, "child"), 10, "{plain}");

    let out = run_until_held_or_done(&p, "DELETE FROM parent WHERE id = 1");
    assert_eq!(
        table_rows(&p, "child"),
        10,
        "a one-row DELETE removed 10 more rows under max_rows 3 without approval; psql: {out}"
    );
}

// ---------------------------------------------------------------------------------------------
// max_rows: the transaction state the trial relies on
// ---------------------------------------------------------------------------------------------

/// The gateway decides BEGIN or SAVEPOINT from the last ReadyForQuery. An Execute of COMMIT
/// without Sync (Flush only) ends the agent's block with no ReadyForQuery: the gateway still
/// sees `T`, sends `SAVEPOINT agentgate_trial` (which fails: no block), and the tried DELETE
/// runs in autocommit and is committed at once; the ROLLBACK TO SAVEPOINT that should undo it
/// fails too. The statement is then put to approvers — after it already ran.
#[test]
fn commit_without_sync_makes_the_trial_autocommit() {
    let p = start("atk-nosync", 2, max_rows_rule("big"));
    p.pg.sql_in(
        "agentdb",
        &format!(
            "CREATE TABLE big (x int); INSERT INTO big SELECT generate_series(1, 10); \
             ALTER TABLE big OWNER TO {ROLE_SCRAM};"
        ),
    );
    let mut w = Wire::open(&p, &agent_jwt("agent-attack"), "agentdb");
    let got = w.exchange(json!([["Q", "BEGIN"]]));
    assert_eq!(got.last().unwrap()["status"], "T", "{got:?}");
    w.send(&json!([
        ["P", "", "COMMIT"],
        ["B", "", "", []],
        ["E", ""],
        ["H"]
    ]));
    let got = until(&mut w, |m| m["msg"] == "C" || m["msg"] == "E");
    assert_eq!(got.last().unwrap()["tag"], "COMMIT", "{got:?}");

    w.send(&json!([["Q", "DELETE FROM big"]]));
    // Held (its NOTICE) or refused: either way nothing may have been deleted.
    let got = until(&mut w, |m| m["msg"] == "N" || m["msg"] == "Z");
    assert_eq!(
        table_rows(&p, "big"),
        10,
        "the tried DELETE of 10 rows (max_rows 3) was committed; agent got {got:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The pending queue: a message the server consumes without answering it
// ---------------------------------------------------------------------------------------------

/// In COPY FROM STDIN the server ignores a Sync (PostgreSQL does so for clients that send one
/// without noticing the command was a COPY): it is consumed and never answered. The gateway
/// queued it as a Sync waiting for its ReadyForQuery, and from then on pairs every answer
/// with the statement before it: the rows of `SELECT upper(email) FROM customers` are judged
/// by the previous, harmless Query's classification, and a computed column of a masked column
/// arrives unmasked.
#[test]
fn a_sync_swallowed_by_copy_shifts_masking_to_the_wrong_statement() {
    let rules = "  - name: mask-email\n    targets: [pg]\n    mask:\n      columns: [\"customers.email\"]\n      strategy: redact\n".to_string();
    let p = start("atk-copyq", 3, rules);
    p.pg.sql_in(
        "agentdb",
        "CREATE TABLE customers (id int PRIMARY KEY, email text); \
         INSERT INTO customers VALUES (1, 'alice@example.com'); \
         CREATE TABLE sink (x text);",
    );
    let mut w = Wire::open(&p, &agent_jwt("agent-attack"), "agentdb");
    let leak = "SELECT upper(email) AS u FROM customers WHERE id = 1";
    let rows = |got: &[Value]| -> Vec<Value> {
        got.iter()
            .filter(|m| m["msg"] == "D")
            .map(|m| m["row"].clone())
            .collect()
    };
    // Masked as it should be.
    let got = w.exchange(json!([["Q", leak]]));
    assert_eq!(rows(&got), vec![json!(["****"])], "{got:?}");

    w.send(&json!([["Q", "COPY sink FROM STDIN"]]));
    let got = until(&mut w, |m| m["msg"] == "G" || m["msg"] == "Z");
    assert_eq!(got.last().unwrap()["msg"], "G", "{got:?}");
    // A Sync in COPY mode: ignored by the server, queued by the gateway. Then CopyDone.
    w.send(&json!([["S"]]));
    w.send(&json!({"raw": "6300000004"}));
    let got = w.until_ready();
    no_error("COPY with a Sync inside", &got);
    // Any statement: its answer now ends the stale Sync, and it stays queued.
    let got = w.exchange(json!([["Q", "SELECT 'harmless'::text AS h"]]));
    no_error("harmless", &got);

    let got = w.exchange(json!([["Q", leak]]));
    assert!(
        !got.iter()
            .any(|m| m.to_string().contains("ALICE@EXAMPLE.COM")),
        "a masked column reached the agent unmasked: {got:?}"
    );
    assert_eq!(rows(&got), vec![json!(["****"])], "{got:?}");
}

// ---------------------------------------------------------------------------------------------
// A portal the gateway believes denied, which the server still holds
// ---------------------------------------------------------------------------------------------

/// The gateway forwards the Execute of a portal it saw bound to a denied statement as it is,
/// unjudged, unrecorded and unqueued ("the server skips it"). But a failed Bind leaves an
/// older portal of the same name in place, and ROLLBACK TO SAVEPOINT keeps portals made
/// before the savepoint: bind `p` to a DELETE that needs approval (a Bind asks nobody; the
/// Execute would), re-bind `p` to a denied statement under a savepoint, roll back to it, and
/// Execute `p`: the DELETE runs with no approval and no record.
#[test]
fn a_portal_shadowed_by_a_denied_bind_runs_unapproved_and_unrecorded() {
    let rules = format!(
        "{NO_DDL_RULE}{}",
        approval_rule(
            "big-writes",
            "{classes: [write, write_unbounded], tables: [big]}",
            "{approvers: [dba], timeout_secs: 120}",
        )
    );
    let p = start("atk-portal", 4, rules);
    p.pg.sql_in(
        "agentdb",
        &format!(
            "CREATE TABLE big (x int); INSERT INTO big SELECT generate_series(1, 10); \
             ALTER TABLE big OWNER TO {ROLE_SCRAM};"
        ),
    );
    let sub = "agent-portal";
    let mut w = Wire::open(&p, &agent_jwt(sub), "agentdb");
    let last = |got: &[Value]| got.last().unwrap()["status"].clone();

    let got = w.exchange(json!([["Q", "BEGIN"]]));
    assert_eq!(last(&got), "T", "{got:?}");
    let got = w.exchange(json!([
        ["P", "sa", "DELETE FROM big"],
        ["B", "p", "sa", []],
        ["S"]
    ]));
    no_error("Parse/Bind of the DELETE", &got);
    let got = w.exchange(json!([["Q", "SAVEPOINT s"]]));
    no_error("SAVEPOINT", &got);
    let got = w.exchange(json!([
        ["P", "sd", "DROP TABLE big"],
        ["B", "p", "sd", []],
        ["S"]
    ]));
    assert_eq!(only_error(&got)["sqlstate"], "42501", "{got:?}");
    let got = w.exchange(json!([["Q", "ROLLBACK TO SAVEPOINT s"]]));
    assert_eq!(last(&got), "T", "{got:?}");
    // Correct: held for approval (a NOTICE) or refused. The hole: it runs.
    w.send(&json!([["E", "p"], ["S"]]));
    let got = until(&mut w, |m| m["msg"] == "N" || m["msg"] == "Z");
    if got.last().unwrap()["msg"] == "Z" {
        let _ = w.exchange(json!([["Q", "COMMIT"]]));
    }
    std::thread::sleep(Duration::from_millis(700));
    let record = agentgate_tests::record_query(
        &p.gw.record_db(),
        &format!(
            "SELECT st.kind, st.text, st.decision, st.rows, st.error FROM statements st \
             JOIN sessions s ON s.id = st.session WHERE s.subject = '{sub}' ORDER BY st.seq"
        ),
    );
    assert_eq!(
        table_rows(&p, "big"),
        10,
        "the DELETE ran without approval; agent got {got:?}; the record: {record:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The pending queue and the record
// ---------------------------------------------------------------------------------------------

/// After a Sync swallowed by COPY, the queue is one behind. A Parse + Flush is then answered
/// (ParseComplete) while the stale Sync is in front, so the Parse stays queued; an INSERT Query
/// runs and commits; a failing Query next is taken for the failure of that Parse, the gateway
/// "skips to Sync", and records the INSERT that ran as "not executed".
#[test]
fn a_write_that_ran_is_recorded_as_not_executed() {
    let p = start("atk-record", 5, String::new());
    p.pg.sql_in(
        "agentdb",
        "CREATE TABLE sink (x text); CREATE TABLE t (x int);",
    );
    let sub = "agent-record";
    let mut w = Wire::open(&p, &agent_jwt(sub), "agentdb");
    w.send(&json!([["Q", "COPY sink FROM STDIN"]]));
    let got = until(&mut w, |m| m["msg"] == "G" || m["msg"] == "Z");
    assert_eq!(got.last().unwrap()["msg"], "G", "{got:?}");
    w.send(&json!([["S"]]));
    w.send(&json!({"raw": "6300000004"}));
    no_error("COPY with a Sync inside", &w.until_ready());
    w.send(&json!([["P", "s1", "SELECT 1"], ["H"]]));
    let got = until(&mut w, |m| m["msg"] == "1" || m["msg"] == "E");
    assert_eq!(got.last().unwrap()["msg"], "1", "{got:?}");
    let got = w.exchange(json!([["Q", "INSERT INTO t VALUES (42)"]]));
    no_error("INSERT", &got);
    let got = w.exchange(json!([["Q", "SELECT 1/0"]]));
    assert_eq!(only_error(&got)["sqlstate"], "22012", "{got:?}");
    assert_eq!(table_rows(&p, "t"), 1, "the INSERT ran and committed");
    std::thread::sleep(Duration::from_millis(700));
    let record = agentgate_tests::record_query(
        &p.gw.record_db(),
        &format!(
            "SELECT st.error FROM statements st JOIN sessions s ON s.id = st.session \
             WHERE s.subject = '{sub}' AND st.text = 'INSERT INTO t VALUES (42)'"
        ),
    );
    assert_eq!(record.len(), 1, "{record:?}");
    assert!(
        record[0][0].is_null(),
        "the record says the INSERT that ran did not: {record:?}"
    );
}

/// A Close of an unknown kind is a protocol error on the server, which then skips to Sync;
/// the gateway queues nothing for a Close and so never learns that the server is skipping.
/// A Query sent next is skipped by the server but recorded as run, and the Sync's
/// ReadyForQuery is taken for that Query's: the stale Sync shifts masking as above.
#[test]
fn a_bad_close_shifts_masking_to_the_wrong_statement() {
    let rules = "  - name: mask-email\n    targets: [pg]\n    mask:\n      columns: [\"customers.email\"]\n      strategy: redact\n".to_string();
    let p = start("atk-close", 6, rules);
    p.pg.sql_in(
        "agentdb",
        "CREATE TABLE customers (id int PRIMARY KEY, email text); \
         INSERT INTO customers VALUES (1, 'alice@example.com');",
    );
    let mut w = Wire::open(&p, &agent_jwt("agent-close"), "agentdb");
    let leak = "SELECT upper(email) AS u FROM customers WHERE id = 1";
    let got = w.exchange(json!([["C", "X", ""], ["Q", "SELECT 1"], ["S"]]));
    assert!(!wire_errors(&got).is_empty(), "{got:?}");
    // Fixed: the gateway refuses such a Close and ends the session (it cannot tell what the
    // server skips after it), so nothing can go on out of step.
    if got.iter().any(|m| m["eof"] == true) {
        let fatal = only_error(&got);
        assert_eq!(
            (fatal["severity"].as_str(), fatal["sqlstate"].as_str()),
            (Some("FATAL"), Some("08P01")),
            "{got:?}"
        );
        return;
    }
    let _ = w.exchange(json!([["Q", "SELECT 'harmless'::text AS h"]]));
    let got = w.exchange(json!([["Q", leak]]));
    assert!(
        !got.iter()
            .any(|m| m.to_string().contains("ALICE@EXAMPLE.COM")),
        "a masked column reached the agent unmasked: {got:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// A trial the server never answers
// ---------------------------------------------------------------------------------------------

/// After a failed extended-protocol message (a Bind of an unknown statement, then Flush, no
/// Sync) the server skips everything up to Sync, the trial's BEGIN and statement too. The
/// gateway starts the trial anyway (nothing is pending) and waits for its answer without end:
/// it no longer reads from the agent, so the agent can neither send the Sync that would unstick
/// it nor be seen leaving. The session and its server backend stay until the idle timeout
/// (an hour by default), after the agent is gone.
#[test]
fn a_trial_while_the_server_skips_to_sync_hangs_the_session_past_the_agent() {
    let p = start("atk-hang", 8, max_rows_rule("big"));
    p.pg.sql_in(
        "agentdb",
        &format!(
            "CREATE TABLE big (x int); INSERT INTO big SELECT generate_series(1, 10); \
             ALTER TABLE big OWNER TO {ROLE_SCRAM};"
        ),
    );
    let mut w = Wire::open(&p, &agent_jwt("agent-hang"), "agentdb");
    w.send(&json!([["B", "", "no_such_statement", []], ["H"]]));
    let got = until(&mut w, |m| m["msg"] == "E");
    assert_eq!(got.last().unwrap()["sqlstate"], "26000", "{got:?}");
    w.send(&json!([["Q", "DELETE FROM big WHERE x = 1"], ["S"]]));
    std::thread::sleep(Duration::from_secs(2));
    w.send(&json!({"close": true}));
    assert!(
        p.wait_no_upstream(Duration::from_secs(10)),
        "the agent left 10 s ago; its session and server backend are still there"
    );
}

/// The same shadowed portal against masking: a write that copies a masked column into a table
/// no rule covers is refused where it runs (Query, Execute), not at Bind. Bound, shadowed by a
/// denied Bind under a savepoint and executed after ROLLBACK TO SAVEPOINT, it is never judged:
/// the masked e-mail addresses land in `leak`, and a plain SELECT reads them.
#[test]
fn a_portal_shadowed_by_a_denied_bind_copies_masked_values_out() {
    let rules = format!(
        "{NO_DDL_RULE}  - name: mask-email\n    targets: [pg]\n    mask:\n      columns: [\"customers.email\"]\n      strategy: redact\n"
    );
    let p = start("atk-portal-mask", 9, rules);
    p.pg.sql_in(
        "agentdb",
        "CREATE TABLE customers (id int PRIMARY KEY, email text); \
         INSERT INTO customers VALUES (1, 'alice@example.com'); \
         CREATE TABLE leak (x text);",
    );
    let mut w = Wire::open(&p, &agent_jwt("agent-portal-mask"), "agentdb");
    let copy = "INSERT INTO leak SELECT email FROM customers";
    // Refused as a Query, as it should be.
    let got = w.exchange(json!([["Q", copy]]));
    assert_eq!(only_error(&got)["sqlstate"], "42501", "{got:?}");

    let _ = w.exchange(json!([["Q", "BEGIN"]]));
    let got = w.exchange(json!([["P", "sa", copy], ["B", "p", "sa", []], ["S"]]));
    no_error("Parse/Bind of the copy", &got);
    let _ = w.exchange(json!([["Q", "SAVEPOINT s"]]));
    let got = w.exchange(json!([
        ["P", "sd", "DROP TABLE leak"],
        ["B", "p", "sd", []],
        ["S"]
    ]));
    assert_eq!(only_error(&got)["sqlstate"], "42501", "{got:?}");
    let _ = w.exchange(json!([["Q", "ROLLBACK TO SAVEPOINT s"]]));
    let ran = w.exchange(json!([["E", "p"], ["S"]]));
    let _ = w.exchange(json!([["Q", "COMMIT"]]));
    let got = w.exchange(json!([["Q", "SELECT x FROM leak"]]));
    assert!(
        !got.iter()
            .any(|m| m.to_string().contains("alice@example.com")),
        "masked values copied out and read back in clear: Execute got {ran:?}; then {got:?}"
    );
}

/// No denial needed: a Bind to a named portal that already exists fails on the server
/// (`cursor "p" already exists`) and leaves the old portal, but the gateway now takes `p` for
/// the new statement. Under a savepoint (rolled back to) the old portal survives: the Execute
/// is judged, approved-or-not, recorded and masked as the harmless `SELECT 1`, and the server
/// runs the DELETE that needed approval.
#[test]
fn a_portal_rebound_in_vain_runs_its_old_statement_as_the_new_one() {
    let rules = approval_rule(
        "big-writes",
        "{classes: [write, write_unbounded], tables: [big]}",
        "{approvers: [dba], timeout_secs: 120}",
    );
    let p = start("atk-rebind", 10, rules);
    p.pg.sql_in(
        "agentdb",
        &format!(
            "CREATE TABLE big (x int); INSERT INTO big SELECT generate_series(1, 10); \
             ALTER TABLE big OWNER TO {ROLE_SCRAM};"
        ),
    );
    let sub = "agent-rebind";
    let mut w = Wire::open(&p, &agent_jwt(sub), "agentdb");
    let _ = w.exchange(json!([["Q", "BEGIN"]]));
    let got = w.exchange(json!([
        ["P", "sa", "DELETE FROM big"],
        ["B", "p", "sa", []],
        ["S"]
    ]));
    no_error("Parse/Bind of the DELETE", &got);
    let _ = w.exchange(json!([["Q", "SAVEPOINT s"]]));
    let got = w.exchange(json!([
        ["P", "sb", "SELECT 1"],
        ["B", "p", "sb", []],
        ["S"]
    ]));
    assert_eq!(only_error(&got)["sqlstate"], "42P03", "{got:?}");
    let _ = w.exchange(json!([["Q", "ROLLBACK TO SAVEPOINT s"]]));
    w.send(&json!([["E", "p"], ["S"]]));
    let got = until(&mut w, |m| m["msg"] == "N" || m["msg"] == "Z");
    if got.last().unwrap()["msg"] == "Z" {
        let _ = w.exchange(json!([["Q", "COMMIT"]]));
    }
    std::thread::sleep(Duration::from_millis(700));
    let record = agentgate_tests::record_query(
        &p.gw.record_db(),
        &format!(
            "SELECT st.kind, st.text, st.decision, st.rows, st.error FROM statements st \
             JOIN sessions s ON s.id = st.session WHERE s.subject = '{sub}' ORDER BY st.seq"
        ),
    );
    assert_eq!(
        table_rows(&p, "big"),
        10,
        "the DELETE ran without approval; agent got {got:?}; the record: {record:?}"
    );
}

/// The same against masking: the gateway's Describe of `p` before the Execute describes the
/// server's portal (`upper(email)`, a computed column), and the gateway judges its rows by the
/// statement it believes bound (`SELECT 'x'`, computed from nothing): the e-mail in clear.
#[test]
fn a_portal_rebound_in_vain_unmasks_a_computed_column() {
    let rules = "  - name: mask-email\n    targets: [pg]\n    mask:\n      columns: [\"customers.email\"]\n      strategy: redact\n".to_string();
    let p = start("atk-rebind-mask", 11, rules);
    p.pg.sql_in(
        "agentdb",
        "CREATE TABLE customers (id int PRIMARY KEY, email text); \
         INSERT INTO customers VALUES (1, 'alice@example.com');",
    );
    let mut w = Wire::open(&p, &agent_jwt("agent-rebind-mask"), "agentdb");
    let _ = w.exchange(json!([["Q", "BEGIN"]]));
    let got = w.exchange(json!([
        ["P", "sa", "SELECT upper(email) AS u FROM customers"],
        ["B", "p", "sa", []],
        ["S"]
    ]));
    no_error("Parse/Bind", &got);
    let _ = w.exchange(json!([["Q", "SAVEPOINT s"]]));
    let got = w.exchange(json!([
        ["P", "sb", "SELECT 'x'::text AS u"],
        ["B", "p", "sb", []],
        ["S"]
    ]));
    assert_eq!(only_error(&got)["sqlstate"], "42P03", "{got:?}");
    let _ = w.exchange(json!([["Q", "ROLLBACK TO SAVEPOINT s"]]));
    let got = w.exchange(json!([["E", "p"], ["S"]]));
    assert!(
        !got.iter()
            .any(|m| m.to_string().contains("ALICE@EXAMPLE.COM")),
        "a masked column reached the agent unmasked: {got:?}"
    );
}
