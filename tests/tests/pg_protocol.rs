//! The PostgreSQL wire protocol as drivers really use it, sent message by message through the
//! gateway (`fixtures/pg_wire.py` in the agent's cgroup): the gateway must follow the server's
//! own rules for what runs, what is skipped and what answers what, and record each statement
//! with the outcome it really had.

use std::{path::Path, time::Duration};

use agentgate_tests::{pg::*, record_query, wire::*};
use serde_json::{json, Value};

/// The messages of `got` as their tags, e.g. `["1", "t", "T"]`.
fn tags(got: &[Value]) -> Vec<String> {
    got.iter()
        .map(|m| m["msg"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// The next `n` messages (for a batch that ends in Flush: no ReadyForQuery comes).
fn next_n(w: &mut Wire, n: usize) -> Vec<Value> {
    (0..n).map(|_| w.next_message()).collect()
}

/// The first column of every DataRow in `got`.
fn rows(got: &[Value]) -> Vec<String> {
    got.iter()
        .filter(|m| m["msg"] == "D")
        .map(|m| m["row"][0].as_str().unwrap_or("NULL").to_string())
        .collect()
}

/// (text, decision, error) of every statement `subject` sent, in order.
fn statements_of(db: &Path, subject: &str) -> Vec<(String, String, Option<String>)> {
    // The writer commits in batches.
    std::thread::sleep(Duration::from_millis(700));
    record_query(
        db,
        &format!(
            "SELECT st.text, st.decision, st.error FROM statements st JOIN sessions s \
             ON s.id = st.session WHERE s.subject = '{subject}' ORDER BY st.seq"
        ),
    )
    .into_iter()
    .map(|r| {
        (
            r[0].as_str().unwrap_or("").to_string(),
            r[1].as_str().unwrap_or("").to_string(),
            r[2].as_str().map(str::to_string),
        )
    })
    .collect()
}

/// asyncpg prepares with Parse/Describe/Flush (no Sync) and then sends a simple Query: the
/// server runs it, so must the gateway. After a failed message of the batch the server skips
/// the Query (no answer at all) up to the Sync; the gateway must stay in step and record the
/// Query as not executed. A denied Query inside a batch is refused like any other.
#[test]
fn a_query_inside_an_extended_batch_runs_or_is_skipped_as_on_the_server() {
    let p = PgGateway::start(
        "pgbatchq",
        19500,
        19501,
        PgOptions::default(),
        &PgTargetOptions {
            extra_rules: NO_DDL_RULE.into(),
            ..Default::default()
        },
    );
    let sub = "agent-batch-query";
    let mut w = Wire::open(&p, &agent_jwt(sub), "agentdb");

    // 1. Parse/Describe/Flush, then a Query, then the prepared statement runs.
    w.send(&json!([
        ["P", "s1", "SELECT 1 AS one"],
        ["D", "S", "s1"],
        ["H"]
    ]));
    let got = next_n(&mut w, 3);
    assert_eq!(tags(&got), ["1", "t", "T"], "{got:?}");
    let got = w.exchange(json!([["Q", "SELECT 2 AS two"]]));
    no_error("a Query after Parse/Describe/Flush", &got);
    assert_eq!(rows(&got), ["2"], "{got:?}");
    let got = w.exchange(json!([["B", "", "s1"], ["E", ""], ["S"]]));
    no_error("the prepared statement after the Query", &got);
    assert_eq!(rows(&got), ["1"], "{got:?}");

    // 2. A failed Parse: the server skips the Queries behind it until Sync, answering nothing
    //    (not even the denied CREATE TABLE's refusal, which it never reads).
    w.send(&json!([["P", "bad", "SELECT * FROM no_such_table"], ["H"]]));
    let e = w.next_message();
    assert_eq!(
        (e["msg"].as_str(), e["sqlstate"].as_str()),
        (Some("E"), Some("42P01")),
        "{e}"
    );
    let got = w.exchange(json!([
        ["Q", "SELECT 3 AS three"],
        ["Q", "CREATE TABLE skipped_ddl (x int)"],
        ["S"]
    ]));
    assert_eq!(tags(&got), ["Z"], "skipped Queries answer nothing: {got:?}");
    // In step: the next Query gets its own answer.
    let got = w.exchange(json!([["Q", "SELECT 4 AS four"]]));
    no_error("a Query after the skipped batch", &got);
    assert_eq!(rows(&got), ["4"], "{got:?}");

    // 3. A denied Query inside a batch that has not failed: refused, the batch goes on.
    w.send(&json!([["P", "s2", "SELECT 5 AS five"], ["H"]]));
    assert_eq!(tags(&next_n(&mut w, 1)), ["1"]);
    let got = w.exchange(json!([["Q", "DROP TABLE items"]]));
    assert_eq!(only_error(&got)["sqlstate"], "42501", "{got:?}");
    let got = w.exchange(json!([["B", "", "s2"], ["E", ""], ["S"]]));
    no_error("the batch after a refused Query", &got);
    assert_eq!(rows(&got), ["5"], "{got:?}");
    let got = w.exchange(json!([["Q", "SELECT count(*) FROM items"]]));
    no_error("items is still there", &got);
    w.send(&json!([["X"]]));

    let recorded = statements_of(&p.gw.record_db(), sub);
    let find = |text: &str| {
        recorded
            .iter()
            .find(|(t, _, _)| t == text)
            .unwrap_or_else(|| panic!("{text} is not on record: {recorded:?}"))
            .clone()
    };
    let (_, decision, error) = find("SELECT 2 AS two");
    assert_eq!((decision.as_str(), error), ("allowed", None));
    for skipped in ["SELECT 3 AS three", "CREATE TABLE skipped_ddl (x int)"] {
        let (_, _, error) = find(skipped);
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.starts_with("not executed")),
            "{skipped}: {error:?}"
        );
    }
    assert_eq!(find("DROP TABLE items").1, "denied");
    assert_eq!(find("SELECT 4 AS four").2, None);
    assert!(
        p.pg.sql_in("agentdb", "SELECT to_regclass('skipped_ddl') IS NULL")
            .contains('t'),
        "the skipped CREATE TABLE must not have run"
    );
}

/// A session the gateway ends because the agent broke the protocol says so in the record
/// (it showed `-` as who ended it).
#[test]
fn a_session_ended_by_a_protocol_error_records_who_ended_it() {
    let p = PgGateway::start(
        "pgendedby",
        19502,
        19503,
        PgOptions::default(),
        &PgTargetOptions::default(),
    );
    let sub = "agent-bad-message";
    let mut w = Wire::open(&p, &agent_jwt(sub), "agentdb");
    // Message type 'z' does not exist.
    w.send(&json!({"raw": "7a00000004"}));
    let got = w.until_ready();
    let fatal = got
        .iter()
        .find(|m| m["msg"] == "E")
        .unwrap_or_else(|| panic!("no FATAL: {got:?}"));
    assert_eq!(fatal["sqlstate"], "08P01", "{fatal}");
    let db = p.gw.record_db();
    let mut rows = Vec::new();
    agentgate_tests::wait_until(
        "the session's close on record",
        Duration::from_secs(10),
        || {
            rows = record_query(
            &db,
            &format!("SELECT ended_by, error FROM sessions WHERE subject = '{sub}' AND ended_ms IS NOT NULL"),
        );
            !rows.is_empty()
        },
    );
    let ended_by = rows[0][0].as_str().unwrap_or("");
    assert!(
        ended_by.starts_with("gateway: "),
        "ended_by {ended_by:?} ({rows:?})"
    );
    assert!(
        rows[0][1]
            .as_str()
            .unwrap_or("")
            .contains("unknown message type"),
        "{rows:?}"
    );
}
