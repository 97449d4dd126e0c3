//! The query plans of the start-up and of every audit command, on a record database written
//! through the journal: each reads through an index what it answers about, never the whole
//! journal once per session (the start-up used to check every opening against every closing).

use rusqlite::Connection;

use super::{db, journal, sink, Db, Entry};
use crate::{admin, audit};

/// Every query a start, the audit commands, retention and the central sink's catch-up run.
fn queries() -> Vec<(&'static str, &'static str)> {
    vec![
        ("start-up: sessions left open", db::ORPHANS),
        ("sessions list", audit::sessions::LIST),
        ("sessions show", audit::sessions::SHOW),
        ("sessions list, show (counts)", audit::sessions::COUNTS),
        ("sessions replay", audit::sessions::REPLAY),
        ("agents", audit::agents::LIST),
        ("audit verify", journal::VERIFY),
        ("audit export", audit::EXPORT),
        ("retention by age", db::FIRST_KEPT),
        ("central sink catch-up", sink::CATCH_UP),
        ("console: sessions list", admin::data::LIST),
        ("console: a session's page of records", admin::data::PAGE),
        ("console: an intent's outcome", admin::data::OUTCOME),
        ("console: a session's export", admin::data::EXPORT),
        ("console: agents over time", admin::series::SESSIONS),
        ("console: revocations over time", admin::series::REVOCATIONS),
    ]
}

/// One step of a query plan.
#[derive(Debug)]
pub(crate) struct Step {
    pub depth: usize,
    pub detail: String,
    /// A loop run once per row of another (a correlated subquery's, or a join's inner loop).
    pub per_row: bool,
    /// Inside a correlated subquery.
    pub correlated: bool,
}

/// `EXPLAIN QUERY PLAN` of `sql`.
pub(crate) fn plan(conn: &Connection, sql: &str) -> Vec<Step> {
    let mut stmt = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap_or_else(|e| panic!("{e}: {sql}"));
    // Parameters left unbound (NULL): the plan does not depend on their values.
    let mut rows = stmt.raw_query();
    // Per step id: depth, whether correlated, loops among its children so far.
    let mut seen: std::collections::HashMap<i64, (usize, bool, usize)> = Default::default();
    seen.insert(0, (0, false, 0));
    let mut out = Vec::new();
    while let Some(r) = rows.next().unwrap() {
        let (id, parent, detail): (i64, i64, String) =
            (r.get(0).unwrap(), r.get(1).unwrap(), r.get(3).unwrap());
        let (pdepth, pcorrelated, ploops) = *seen.get(&parent).unwrap_or(&(0, false, 0));
        let depth = if parent == 0 { 0 } else { pdepth + 1 };
        let is_loop = detail.starts_with("SEARCH ") || detail.starts_with("SCAN ");
        let correlated = pcorrelated || detail.starts_with("CORRELATED");
        out.push(Step {
            depth,
            per_row: is_loop && (pcorrelated || ploops > 0),
            correlated: pcorrelated,
            detail,
        });
        if is_loop {
            if let Some(p) = seen.get_mut(&parent) {
                p.2 += 1;
            }
        }
        seen.insert(id, (depth, correlated, 0));
    }
    out
}

/// What is wrong with a plan: a per-row look-up by anything but record number or session (every
/// record of a kind read once per row: the quadratic start-up), a subquery materialized once
/// per row, or a scan (whole table, whole index, every record of a kind) not in `scans`.
pub(crate) fn faults(plan: &[Step], scans: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for s in plan {
        let d = &s.detail;
        if s.per_row && !(d.contains("(rowid=") || d.contains("(session=")) {
            out.push(format!("looked up per row, not by record or session: {d}"));
        }
        if s.correlated && (d.starts_with("CO-ROUTINE") || d.starts_with("MATERIALIZE")) {
            out.push(format!("made once per row: {d}"));
        }
        // Reading a subquery's own rows (`SCAN (subquery-N)`) reads what its searches found,
        // no table.
        let scan = (d.starts_with("SCAN ") && !d.starts_with("SCAN (subquery-"))
            || (!s.per_row && d.contains("(kind=?)"));
        if scan && !scans.contains(&d.trim_end_matches(" LEFT-JOIN")) {
            out.push(format!("reads all of a table or kind: {d}"));
        }
    }
    out
}

fn show(plan: &[Step]) -> String {
    plan.iter()
        .map(|s| format!("{}{}", "  ".repeat(s.depth), s.detail))
        .collect::<Vec<_>>()
        .join("\n")
}
fn write(db: &super::SharedDb, kind: &str, session: Option<&str>, body: serde_json::Value) {
    let body = body.to_string();
    Db::lock(db)
        .write(|tx, j| {
            j.append(
                tx,
                &Entry {
                    at_ms: 1,
                    kind,
                    session,
                    body: &body,
                },
            )
        })
        .unwrap();
}

/// A record database with a little of everything, written through the journal.
fn sample() -> (tempfile::TempDir, super::SharedDb) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("r.db")).unwrap();
    for i in 0..50 {
        let s = format!("s{i}");
        let open =
            serde_json::json!({"session": s, "started_ms": i, "subject": "a", "workload": "w"});
        write(&db, "session_open", Some(&s), open);
        let intent = serde_json::json!({"seq": 1, "class": "write", "decision": "allowed"});
        write(&db, "statement_intent", Some(&s), intent);
        let outcome = serde_json::json!({"seq": 1, "class": "write", "decision": "allowed"});
        write(&db, "statement", Some(&s), outcome);
        if i % 3 != 0 {
            let close = serde_json::json!({"session": s, "ended_ms": i + 1});
            write(&db, "session_close", Some(&s), close);
        }
    }
    (dir, db)
}

#[test]
fn every_query_reads_through_an_index() {
    let (_dir, db) = sample();
    let g = Db::lock(&db);
    // The scans each query may make: the start-up reads open_sessions (the sessions still open)
    // and nothing else whole; `sessions list` walks sessions newest first and stops at its
    // page; `agents` reads every session and statement once; verify reads the journal, and
    // retention by age walks it from its start to the first record it keeps.
    let scans: &[(&str, &[&str])] = &[
        ("start-up: sessions left open", &["SCAN s"]),
        ("sessions list", &["SCAN o USING INDEX audit_log_started"]),
        ("sessions list, show (counts)", &["SCAN statements"]),
        (
            "agents",
            &[
                "SEARCH audit_log USING INDEX audit_log_kind (kind=?)",
                "SEARCH i USING INDEX audit_log_kind (kind=?)",
                "SEARCH o USING INDEX audit_log_kind (kind=?)",
            ],
        ),
        ("audit verify", &["SCAN audit_log"]),
        // Newest first off the index, stopping at its page; a session's denials and approvals
        // are looked up by session.
        (
            "console: sessions list",
            &["SCAN o USING INDEX audit_log_started"],
        ),
        // As `agents`: every session once; the revocations (few) in order.
        (
            "console: agents over time",
            &["SEARCH o USING INDEX audit_log_kind (kind=?)"],
        ),
        (
            "console: revocations over time",
            &["SEARCH audit_log USING INDEX audit_log_kind (kind=?)"],
        ),
        ("retention by age", &["SCAN audit_log"]),
    ];
    let mut bad = Vec::new();
    for (name, sql) in queries() {
        let p = plan(&g.conn, sql);
        let allowed = scans
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(&[][..], |(_, s)| *s);
        let f = faults(&p, allowed);
        if !f.is_empty() {
            bad.push(format!("{name}: {}\n{}", f.join("; "), show(&p)));
        }
        if name.ends_with("sessions list") && p.iter().any(|s| s.detail.contains("ORDER BY")) {
            bad.push(format!("{name}: sorts every session\n{}", show(&p)));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n\n"));
}

/// The old start-up query and the views people query by hand: a session's end and a session's
/// statements are found by session.
#[test]
fn the_views_find_a_sessions_records_by_session() {
    let (_dir, db) = sample();
    let g = Db::lock(&db);
    for sql in [
        "SELECT * FROM sessions WHERE id = ?1",
        "SELECT * FROM statements WHERE session = ?1",
        "SELECT id FROM sessions WHERE ended_ms IS NULL",
    ] {
        let p = plan(&g.conn, sql);
        let f = faults(
            &p,
            &[
                "SEARCH o USING INDEX audit_log_kind (kind=?)",
                "SCAN statements",
            ],
        );
        assert!(f.is_empty(), "{sql}: {f:?}\n{}", show(&p));
    }
}

/// On a database no new gateway has opened yet (the read-only commands never migrate), `sessions
/// list` still answers, without the index.
#[test]
fn sessions_list_answers_without_the_new_index() {
    let (_dir, db) = sample();
    let g = Db::lock(&db);
    g.conn
        .execute_batch("DROP INDEX audit_log_started")
        .unwrap();
    let f = audit::sessions::Filter {
        limit: 2,
        ..Default::default()
    };
    let page = audit::sessions::list(&g.conn, &f).unwrap();
    let ids: Vec<&str> = page
        .iter()
        .map(|s| s["session"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["s49", "s48"]);
    assert_eq!(page[0]["statements"], 1);
    assert_eq!(page[0]["privileged"], 1);
    assert_eq!(page[0]["status"], "closed");
    // The older `statements` view (no `privileged` column) does not stop the counts either.
    g.conn
        .execute_batch(
            "DROP VIEW statements; CREATE VIEW statements AS SELECT session, \
             json_extract(body, '$.class') AS class FROM audit_log WHERE kind = 'statement';",
        )
        .unwrap();
    let page = audit::sessions::list(&g.conn, &f).unwrap();
    assert_eq!(page[0]["privileged"], 1);
    assert_eq!(page[1]["status"], "live");
}

/// Privileged actions are counted by the gate's own judgement when the record carries it (a
/// kubectl `get` is a read, an exec stream — also a GET — is not), and by `class <> 'read'` for
/// records from before it did.
#[test]
fn privileged_actions_are_counted_by_the_gates_judgement() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("r.db")).unwrap();
    let open = serde_json::json!({"session": "k1", "started_ms": 1, "subject": "a",
                                  "issuer": "i", "workload": "w", "token_expires_ms": 9});
    write(&db, "session_open", Some("k1"), open);
    for (seq, body) in [
        (1, serde_json::json!({"class": "get", "privileged": false})),
        (2, serde_json::json!({"class": "list", "privileged": false})),
        (3, serde_json::json!({"class": "get", "privileged": true})),
        (4, serde_json::json!({"class": "write"})),
        (5, serde_json::json!({"class": "read"})),
        (
            6,
            serde_json::json!({"class": "delete", "privileged": true, "decision": "denied"}),
        ),
    ] {
        let mut body = body;
        body["seq"] = seq.into();
        if body.get("decision").is_none() {
            body["decision"] = "allowed".into();
        }
        write(&db, "statement", Some("k1"), body);
    }
    let g = Db::lock(&db);
    let page = audit::sessions::list(&g.conn, &Default::default()).unwrap();
    assert_eq!(page[0]["statements"], 6);
    assert_eq!(page[0]["denied"], 1);
    assert_eq!(page[0]["privileged"], 2, "{}", page[0]);
    let agents = audit::agents::list(&g.conn, 10).unwrap();
    assert_eq!(agents[0]["privileged_actions"], 2, "{}", agents[0]);
}
