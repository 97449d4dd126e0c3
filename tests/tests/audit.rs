//! The audit store (issue 7), end to end: a real PostgreSQL 15, the real gateway recording into
//! its SQLite record database, real clients (pgbench, psql, psycopg 3, a raw wire client) in a
//! managed cgroup whose connect() to the database is captured, and the real `agentgate audit`,
//! `sessions`, `agents` and `revoke` commands. The record database is also read directly (python's
//! sqlite3, read-only) to check the commands against it, and copies of it are tampered with.
//!
//! Ports: PostgreSQL 16940–16949, gateway listener 17940–17949 (test `n` uses 16940+n and
//! 17940+n: 0 crash, 1 tamper, 2 flood, 3 agents, 4 revoke, 5 sessions, 6 retention, 7 a
//! crash-cut write found and counted, 8 a write through a function survives kill -9, 9 records
//! kept when the database is locked), loopback only. Root required. The central PostgreSQL sink: `audit_sink.rs`.

use std::{
    collections::{BTreeSet, HashSet},
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use agentgate_tests::{bg::Bg, pg::*, *};
use serde_json::{json, Value};

/// A generous wait for anything that should happen "at once" or after a short delay.
const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------------------------

/// Test number `n` (0–9): PostgreSQL on 16940+n, the gateway's listener on 17940+n.
fn start(tag: &str, n: u16, rules: &str, args: &[&str]) -> PgGateway {
    assert!(n < 10);
    require_root();
    PgGateway::start_with_args(
        tag,
        17940 + n,
        16940 + n,
        PgOptions::default(),
        &PgTargetOptions {
            extra_rules: rules.to_string(),
            ..Default::default()
        },
        args,
    )
}

/// A temp file removed on drop.
struct TempPath(PathBuf);

impl TempPath {
    fn new(p: &PgGateway, name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{}-{name}", p.name));
        let _ = std::fs::remove_file(&path);
        Self(path)
    }

    fn s(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        for ext in ["-wal", "-shm", "-journal"] {
            let mut p = self.0.clone().into_os_string();
            p.push(ext);
            let _ = std::fs::remove_file(p);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients in the background
// ---------------------------------------------------------------------------------------------

/// psql running `sqls` (`-c` each, each its own simple Query) in the background in `cg`.
fn psql_bg(conn: &str, cg: &Cgroup, sqls: &[&str]) -> Bg {
    let mut cmd = psql_command(conn);
    cmd.args(["-v", "VERBOSITY=verbose", "-A", "-t"]);
    for sql in sqls {
        cmd.args(["-c", sql]);
    }
    Bg::spawn("psql", cmd, cg)
}

/// Runs psql with `sqls` in `cg` to its end; returns (success, everything it said).
fn psql_run(conn: &str, cg: &Cgroup, sqls: &[&str]) -> (bool, String) {
    let mut c = psql_bg(conn, cg, sqls);
    let st = c.wait_exit(WAIT);
    (st.success(), c.text())
}

/// A raw wire-protocol session (`fixtures/pg_wire.py`) held open in `cg`: it prints every
/// message the moment it arrives, and `{"eof": true}` the moment the connection is gone, so
/// the test sees when the gateway ends the session even while the client sends nothing.
struct Wire(Bg);

impl Wire {
    fn open(p: &PgGateway, jwt: &str, cg: &Cgroup) -> Self {
        let mut w = Self(Bg::spawn(
            "pg_wire.py",
            pg_wire_command("127.0.0.1", p.pg.port, jwt, "agentdb"),
            cg,
        ));
        let (_, line) = w.0.wait_line_at(WAIT, |err, l| !err && l.starts_with('{'));
        let v: Value = serde_json::from_str(&line).expect("pg_wire.py prints JSON");
        assert_eq!(v["login"], true, "pg_wire.py login: {v}");
        w
    }

    /// Runs `sql` (simple Query); returns the messages up to ReadyForQuery.
    fn query(&mut self, sql: &str) -> Vec<Value> {
        self.0.send_line(&json!([["Q", sql]]).to_string());
        let mut got = Vec::new();
        loop {
            let (_, line) = self
                .0
                .wait_line_at(WAIT, |err, l| !err && l.starts_with('{'));
            let v: Value = serde_json::from_str(&line).expect("pg_wire.py prints JSON");
            let done = v["msg"] == "Z" || v["eof"] == true;
            got.push(v);
            if done {
                return got;
            }
        }
    }

    /// Ends the session politely (Terminate) and waits for the script to exit.
    fn close(mut self) {
        self.0.send_line(&json!([["X"]]).to_string());
        self.0.wait_exit(WAIT);
    }

    /// Waits for the connection to be gone; returns when it was seen, and all the client got.
    fn wait_eof(&mut self, timeout: Duration) -> (Instant, String) {
        let (at, _) = self
            .0
            .wait_line_at(timeout, |err, l| !err && l.contains("\"eof\""));
        (at, self.0.text())
    }
}

// ---------------------------------------------------------------------------------------------
// The record database and the CLI
// ---------------------------------------------------------------------------------------------

use agentgate_tests::record_query as query;

use agentgate_tests::record_count as count;

/// Runs `script` (statements) on the record DB file at `db`, read-write: to tamper with a copy.
fn tamper(db: &Path, script: &str) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1], timeout=30)\n\
             c.executescript(sys.argv[2])\n\
             c.commit()\n\
             c.close()",
        )
        .arg(db)
        .arg(script)
        .output()
        .expect("run python3 sqlite3");
    assert!(
        out.status.success(),
        "tampering with {}: {}",
        db.display(),
        output_text(&out)
    );
}

/// A consistent copy of the record DB at `src` (SQLite's online backup: safe while the gateway
/// writes), as one self-contained file.
fn copy_db(src: &Path, dst: &Path) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys\n\
             s = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True, timeout=30)\n\
             d = sqlite3.connect(sys.argv[2])\n\
             s.backup(d)\n\
             d.execute('PRAGMA journal_mode=DELETE')\n\
             d.close()",
        )
        .arg(src)
        .arg(dst)
        .output()
        .expect("run python3 sqlite3");
    assert!(
        out.status.success(),
        "copy record db: {}",
        output_text(&out)
    );
}

/// `agentgate <args>`.
fn cli(args: &[&str]) -> Output {
    Command::new(agentgate_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run agentgate")
}

/// `agentgate <args>`, which must succeed; its stdout.
fn cli_ok(args: &[&str]) -> String {
    let out = cli(args);
    assert!(
        out.status.success(),
        "agentgate {args:?} failed ({}): {}",
        out.status,
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `agentgate <args>` (with `--json` among them), which must succeed; its JSON.
fn cli_json(args: &[&str]) -> Value {
    let out = cli_ok(args);
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("agentgate {args:?} printed {out}: {e}"))
}

/// `agentgate audit verify --record-db <db>`.
fn verify(db: &Path) -> Output {
    cli(&["audit", "verify", "--record-db", db.to_str().unwrap()])
}

/// Asserts that `audit verify` passes on `db` (exit 0, no problems); returns its JSON report.
fn verify_ok(db: &Path) -> Value {
    let out = verify(db);
    let text = output_text(&out);
    assert!(
        out.status.success() && text.contains("the chain is intact") && !text.contains("TAMPERED"),
        "audit verify of {} failed ({}):\n{text}",
        db.display(),
        out.status
    );
    let report = verify_json(db);
    assert_eq!(report["problems"], json!([]), "{report}");
    report
}

/// `audit verify --json`: the report (whatever the exit status).
fn verify_json(db: &Path) -> Value {
    let out = cli(&[
        "audit",
        "verify",
        "--json",
        "--record-db",
        db.to_str().unwrap(),
    ]);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("audit verify --json printed {}: {e}", output_text(&out)))
}

/// `agentgate sessions <args> --record-db <db> --json`.
fn sessions(db: &Path, args: &[&str]) -> Value {
    let mut a = vec!["sessions"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["--json", "--record-db", db.to_str().unwrap()]);
    cli_json(&a)
}

/// The session ids `sessions list <filters>` returns.
fn listed(db: &Path, filters: &[&str]) -> BTreeSet<String> {
    let mut a = vec!["list"];
    a.extend_from_slice(filters);
    sessions(db, &a)
        .as_array()
        .unwrap_or_else(|| panic!("sessions list {filters:?}: not an array"))
        .iter()
        .map(|s| s["session"].as_str().expect("session id").to_string())
        .collect()
}

/// `agentgate agents --json --record-db <db>`.
fn agents(db: &Path) -> Vec<Value> {
    cli_json(&["agents", "--json", "--record-db", db.to_str().unwrap()])
        .as_array()
        .expect("agents --json is an array")
        .clone()
}

/// The `agents` entry of `subject` (in workload `sql-agents`), if any.
fn agent(db: &Path, subject: &str) -> Option<Value> {
    agents(db)
        .into_iter()
        .find(|a| a["subject"] == subject && a["workload"] == "sql-agents")
}

/// Polls `agents` until the entry of `subject` satisfies `pred`; returns it.
fn wait_agent(db: &Path, subject: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let a = agent(db, subject);
        if let Some(a) = a.as_ref().filter(|a| pred(a)) {
            return a.clone();
        }
        if Instant::now() > deadline {
            panic!("agents: {subject} not {what} within {WAIT:?}; last seen: {a:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `agentgate revoke <args> --admin-socket <the gateway's>`.
fn revoke(gw: &Gateway, args: &[&str]) -> Output {
    let mut a = vec!["revoke"];
    a.extend_from_slice(args);
    let socket = gw.admin_socket();
    a.extend_from_slice(&["--admin-socket", socket.to_str().unwrap()]);
    cli(&a)
}

/// Wall-clock milliseconds since the epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// The ids of the sessions of `subject` on record.
fn sessions_of(db: &Path, subject: &str) -> Vec<String> {
    query(
        db,
        &format!("SELECT id FROM sessions WHERE subject = '{subject}' ORDER BY started_ms"),
    )
    .into_iter()
    .map(|r| r[0].as_str().expect("id").to_string())
    .collect()
}

/// `(c, n)` of an `INSERT INTO ... VALUES (c, n)` text, or of its two parameters.
fn numbers(text: &str, params: &Value) -> Option<(i64, i64)> {
    if let Some(rest) = text.split("VALUES (").nth(1) {
        let inner = rest.split(')').next()?;
        let mut parts = inner.split(',').map(|p| p.trim());
        let (a, b) = (parts.next()?, parts.next()?);
        if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
            return Some((a, b));
        }
    }
    let p: Vec<Value> = match params {
        Value::String(s) => serde_json::from_str(s).ok()?,
        Value::Array(a) => a.clone(),
        _ => return None,
    };
    match &p[..] {
        [Value::String(a), Value::String(b)] => Some((a.parse().ok()?, b.parse().ok()?)),
        _ => None,
    }
}

// =============================================================================================
// 1. Crash consistency: kill -9 under a load of writes
// =============================================================================================

/// psycopg 3 running the statement `argv[3]` (two `%t` placeholders) with `(C, 1), (C, 2), ...`
/// until the connection goes; the numbers are parameters (`%t`: text format), so the
/// statement's record has them in `params`.
const PSYCOPG_LOOP: &str = r#"import sys, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
c, n, sql = int(sys.argv[2]), 0, sys.argv[3]
print('connected', flush=True)
try:
    while True:
        conn.execute(sql, (str(c), str(n + 1)))
        n += 1
except Exception as e:
    print('stopped after', n, type(e).__name__, e, flush=True)
"#;

/// One [`PSYCOPG_LOOP`] per number in `cs`, as the agent with token `jwt` through the gateway of
/// `p`, in its agent cgroup, each running `sql` with `(c, 1), (c, 2), ...`.
fn psycopg_loops(p: &PgGateway, jwt: &str, sql: &str, cs: std::ops::Range<i64>) -> Vec<Bg> {
    cs.map(|c| {
        let mut cmd = Command::new(python());
        clean_pg_env(&mut cmd);
        cmd.arg("-c")
            .arg(PSYCOPG_LOOP)
            .arg(p.agent_conninfo(jwt, "disable"))
            .arg(c.to_string())
            .arg(sql);
        Bg::spawn("psycopg loop", cmd, &p.agent)
    })
    .collect()
}

#[test]
fn kill_9_under_a_write_load_keeps_every_executed_statement_on_record() {
    let mut p = start("aud-crash", 0, "", &[]);
    p.pg.sql_in(
        "agentdb",
        "CREATE TABLE crash (c int NOT NULL, n int NOT NULL, PRIMARY KEY (c, n));",
    );
    let jwt = agent_jwt("agent-crash");
    let db = p.gw.record_db();

    // pgbench, simple protocol: each client numbers its rows (c = client id, n = 1, 2, ...).
    let script = TempPath::new(&p, "insert.sql");
    std::fs::write(
        &script.0,
        "\\set n :n + 1\nINSERT INTO crash (c, n) VALUES (:client_id, :n);\n",
    )
    .unwrap();
    let mut cmd = pgbench_command("127.0.0.1", p.pg.port, "agent", "agentdb");
    cmd.args([
        "-n", "-M", "simple", "-c", "6", "-j", "2", "-T", "300", "-D", "n=0", "-f",
    ])
    .arg(script.s())
    .env("PGPASSWORD", &jwt);
    let mut bench = Bg::spawn("pgbench", cmd, &p.agent);
    // Two psycopg loops, extended protocol: c = 1000 and 1001, the numbers as parameters.
    let mut loops = psycopg_loops(
        &p,
        &jwt,
        "INSERT INTO crash (c, n) VALUES (%t, %t)",
        1000..1002,
    );

    // Under load (rows from every writer arriving), the gateway is killed.
    let rows_of = |filter: &str| -> i64 {
        p.pg.sql_in(
            "agentdb",
            &format!("SELECT count(*) FROM crash WHERE {filter};"),
        )
        .parse()
        .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while !(rows_of("c < 1000") >= 1500 && rows_of("c = 1000") >= 100 && rows_of("c = 1001") >= 100)
    {
        assert!(
            Instant::now() < deadline,
            "the load did not get going: {} pgbench rows, {} + {} psycopg rows\n{}\n{}",
            rows_of("c < 1000"),
            rows_of("c = 1000"),
            rows_of("c = 1001"),
            bench.text(),
            p.gw.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(bench.running(), "pgbench ended early: {}", bench.text());
    p.gw.kill9();
    bench.wait_exit(WAIT);
    for l in &mut loops {
        l.wait_exit(WAIT);
        assert!(l.text().contains("stopped after"), "{}", l.text());
    }

    // The record is intact: the chain verifies with the gateway dead (its WAL left as it was).
    verify_ok(&db);

    // Every row the database has (each committed insert) has its statement on record.
    let rows: Vec<(i64, i64)> =
        p.pg.sql_in("agentdb", "SELECT c || ',' || n FROM crash ORDER BY c, n;")
            .lines()
            .map(|l| {
                let (c, n) = l.split_once(',').expect("c,n");
                (c.parse().unwrap(), n.parse().unwrap())
            })
            .collect();
    let mut intents = HashSet::new();
    let mut outcomes = HashSet::new();
    for r in query(
        &db,
        "SELECT kind, json_extract(body, '$.text'), json_extract(body, '$.params') FROM audit_log \
         WHERE kind IN ('statement', 'statement_intent') AND json_extract(body, '$.text') LIKE 'INSERT INTO crash%'",
    ) {
        let text = r[1].as_str().unwrap_or("");
        let num = numbers(text, &r[2])
            .unwrap_or_else(|| panic!("no numbers in the record {text} {}", r[2]));
        if r[0] == "statement_intent" {
            intents.insert(num);
        } else {
            outcomes.insert(num);
        }
    }
    let missing: Vec<&(i64, i64)> = rows
        .iter()
        .filter(|r| !intents.contains(r) && !outcomes.contains(r))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} committed rows have no statement on record, e.g. {:?}",
        missing.len(),
        rows.len(),
        &missing[..missing.len().min(10)]
    );
    // Each was on record (as an intent) before it was forwarded.
    let no_intent: Vec<&(i64, i64)> = rows.iter().filter(|r| !intents.contains(r)).collect();
    assert!(
        no_intent.is_empty(),
        "{} committed rows have no statement_intent record, e.g. {:?}",
        no_intent.len(),
        &no_intent[..no_intent.len().min(10)]
    );
    let only_intent = rows.iter().filter(|r| !outcomes.contains(r)).count();
    eprintln!(
        "crash: {} rows committed ({} by psycopg), {} statements on record with their outcome, \
         {} committed rows on record by their intent only",
        rows.len(),
        rows.iter().filter(|r| r.0 >= 1000).count(),
        outcomes.len(),
        only_intent
    );
    assert!(rows.len() >= 1700, "{} rows", rows.len());

    // Statements whose outcome the kill cut off are on record as sent: the replay of their
    // session shows them.
    let unanswered = query(
        &db,
        "SELECT i.session, i.seq, json_extract(i.body, '$.text'), json_extract(i.body, '$.params') \
         FROM audit_log i WHERE i.kind = 'statement_intent' AND NOT EXISTS (SELECT 1 FROM statements s \
         WHERE s.session = i.session AND s.seq = json_extract(i.body, '$.seq'))",
    );
    eprintln!(
        "crash: {} statements on record as sent, without an outcome",
        unanswered.len()
    );
    for u in &unanswered {
        let session = u[0].as_str().unwrap();
        let replay = sessions(&db, &["replay", session]);
        assert!(
            replay
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["record"] == u[1] && e["kind"] == "statement_intent"),
            "{u:?} not in the replay of its session: {replay}"
        );
    }

    // The sessions live at the kill have no end on record yet; the next start closes them.
    let open = count(
        &db,
        "SELECT count(*) FROM sessions WHERE subject = 'agent-crash' AND ended_ms IS NULL",
    );
    assert!(open >= 1, "no session was live at the kill");
    let before_restart = now_ms();
    p.gw.start_again();
    assert_eq!(
        count(&db, "SELECT count(*) FROM sessions WHERE ended_ms IS NULL"),
        0,
        "sessions still open after the restart: {:?}",
        query(
            &db,
            "SELECT id, started_ms FROM sessions WHERE ended_ms IS NULL"
        )
    );
    let orphans = query(
        &db,
        &format!(
            "SELECT id, ended_ms, ended_by FROM sessions WHERE subject = 'agent-crash' AND ended_ms >= {before_restart}"
        ),
    );
    assert_eq!(orphans.len() as i64, open, "{orphans:?}");
    for o in &orphans {
        assert!(
            o[2].as_str().unwrap_or("").contains("gateway stopped"),
            "orphan closed without saying why: {o:?}"
        );
    }
    verify_ok(&db);

    // Killed again while a write runs on the server: it still commits there, and it is on
    // record as sent (its outcome never came); the replay says so.
    let (session, _) = write_cut_off_by_a_crash(&mut p, &jwt);
    let replay = sessions(&db, &["replay", &session]);
    let sent: Vec<&Value> = replay
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "statement_intent")
        .collect();
    assert_eq!(sent.len(), 1, "{replay}");
    assert_eq!(sent[0]["body"]["text"], CUT_OFF_WRITE, "{replay}");
    assert_eq!(sent[0]["body"]["class"], "write", "{replay}");
    let close = &replay.as_array().unwrap().last().unwrap().clone();
    assert_eq!(close["kind"], "session_close", "{replay}");
    assert!(
        close["body"]["ended_by"]
            .as_str()
            .unwrap_or("")
            .contains("gateway stopped"),
        "{close}"
    );
    let human = cli_ok(&[
        "sessions",
        "replay",
        &session,
        "--record-db",
        db.to_str().unwrap(),
    ]);
    assert!(human.contains("SENT, OUTCOME NOT ON RECORD"), "{human}");
    verify_ok(&db);
}

/// A write that runs for a while on the server.
const CUT_OFF_WRITE: &str = "INSERT INTO crash (c, n) SELECT 4242, 1 FROM pg_sleep(2)";

/// Runs [`CUT_OFF_WRITE`] through the gateway of `p` (table `crash`) and kills the gateway with
/// -9 while the server executes it; waits until the row is committed anyway, then starts the
/// gateway again. Returns the statement's session and the client's output.
fn write_cut_off_by_a_crash(p: &mut PgGateway, jwt: &str) -> (String, String) {
    let db = p.gw.record_db();
    let mut c = psql_bg(
        &p.agent_conninfo(jwt, "disable"),
        &p.agent,
        &[CUT_OFF_WRITE],
    );
    wait_until("the write runs on the server", WAIT, || {
        p.pg.sql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE query = '{CUT_OFF_WRITE}' AND state = 'active';"
        )) == "1"
    });
    p.gw.kill9();
    c.wait_exit(WAIT);
    wait_until("the write committed on the server", WAIT, || {
        p.pg.sql_in("agentdb", "SELECT count(*) FROM crash WHERE c = 4242;") == "1"
    });
    let session = query(
        &db,
        &format!(
            "SELECT session FROM audit_log WHERE kind = 'statement_intent' \
             AND json_extract(body, '$.text') = '{CUT_OFF_WRITE}'"
        ),
    );
    assert_eq!(
        session.len(),
        1,
        "the cut-off write is not on record: {session:?}"
    );
    p.gw.start_again();
    (session[0][0].as_str().unwrap().to_string(), c.text())
}

/// Writes whose outcome a crash cut off count as writes and are found like any statement.
#[test]
fn a_write_cut_off_by_a_crash_is_found_and_counted() {
    let mut p = start("aud-cutoff", 7, "", &[]);
    p.pg.sql_in(
        "agentdb",
        "CREATE TABLE crash (c int NOT NULL, n int NOT NULL, PRIMARY KEY (c, n));",
    );
    let db = p.gw.record_db();
    let sub = "agent-cutoff";
    let (session, _) = write_cut_off_by_a_crash(&mut p, &agent_jwt(sub));
    let found = listed(&db, &["--statement", "pg_sleep(2)"]);
    let shown = sessions(&db, &["show", &session]);
    let row = sessions(&db, &["list", "--identity", sub])[0].clone();
    let a = agent(&db, sub).expect("the agent in the inventory");
    let mut wrong = Vec::new();
    if !found.contains(&session) {
        wrong.push(format!(
            "sessions list --statement does not find the session of the committed write: {found:?}"
        ));
    }
    if shown["statements"] != 1 {
        wrong.push(format!("sessions show: statements {}", shown["statements"]));
    }
    if (&row["statements"], &row["privileged"]) != (&json!(1), &json!(1)) {
        wrong.push(format!(
            "sessions list: statements {}, privileged {}",
            row["statements"], row["privileged"]
        ));
    }
    if a["privileged_actions"] != 1 {
        wrong.push(format!(
            "agents: privileged_actions {}",
            a["privileged_actions"]
        ));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A write made by a function called in a SELECT is a statement the database executed: after a
/// crash it must be on record like an INSERT, and, as a call of a function outside the gateway's
/// read-only allowlist, on record as a `statement_intent` committed before it was forwarded.
#[test]
fn kill_9_loses_no_write_made_by_a_function() {
    let mut p = start("aud-fncrash", 8, "", &[]);
    p.pg.sql_in(
        "agentdb",
        &format!(
            "CREATE TABLE crash (c int NOT NULL, n int NOT NULL, PRIMARY KEY (c, n));\n\
             CREATE FUNCTION crash_insert(c int, n int) RETURNS int LANGUAGE sql \
             AS $$ INSERT INTO crash VALUES (c, n) RETURNING n $$;\n\
             GRANT EXECUTE ON FUNCTION crash_insert(int, int) TO {ROLE_SCRAM};"
        ),
    );
    let db = p.gw.record_db();
    let jwt = agent_jwt("agent-fncrash");
    // psycopg loops calling `crash_insert(C, n)` (a function that inserts) for n = 1, 2, ...
    let mut loops = psycopg_loops(&p, &jwt, "SELECT crash_insert(%t, %t)", 2000..2004);
    wait_until("the load going", Duration::from_secs(60), || {
        p.pg.sql_in("agentdb", "SELECT count(*) FROM crash;")
            .parse::<i64>()
            .unwrap_or(0)
            >= 800
    });
    p.gw.kill9();
    for l in &mut loops {
        l.wait_exit(WAIT);
    }
    let rows: Vec<(i64, i64)> =
        p.pg.sql_in("agentdb", "SELECT c || ',' || n FROM crash ORDER BY c, n;")
            .lines()
            .map(|l| {
                let (c, n) = l.split_once(',').expect("c,n");
                (c.parse().unwrap(), n.parse().unwrap())
            })
            .collect();
    let mut on_record = HashSet::new();
    let mut intents = HashSet::new();
    for r in query(
        &db,
        "SELECT kind, json_extract(body, '$.text'), json_extract(body, '$.params') FROM audit_log \
         WHERE kind IN ('statement', 'statement_intent') AND json_extract(body, '$.text') LIKE '%crash_insert%'",
    ) {
        let Some(num) = numbers("", &r[2]) else {
            continue;
        };
        if r[0] == "statement_intent" {
            intents.insert(num);
        }
        on_record.insert(num);
    }
    let missing: Vec<&(i64, i64)> = rows.iter().filter(|r| !on_record.contains(r)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} rows written by crash_insert() have no statement on record: {missing:?}",
        missing.len(),
        rows.len()
    );
    // Each was on record (as an intent) before it was forwarded: crash_insert() is not a
    // function known not to write.
    let no_intent: Vec<&(i64, i64)> = rows.iter().filter(|r| !intents.contains(r)).collect();
    assert!(
        no_intent.is_empty(),
        "{} of {} rows written by crash_insert() have no statement_intent record, e.g. {:?}",
        no_intent.len(),
        rows.len(),
        &no_intent[..no_intent.len().min(10)]
    );
}

/// The record database is locked by someone else for longer than the writer waits (10 s): what
/// could not be written then must still be written once it can (or the statements refused),
/// never dropped.
#[test]
fn records_that_cannot_be_written_at_once_are_not_dropped() {
    let p = start("aud-locked", 9, "", &[]);
    let db = p.gw.record_db();
    let sub = "agent-locked";
    let conn = p.agent_conninfo(&agent_jwt(sub), "disable");
    let (ok, text) = psql_run(&conn, &p.agent, &["SELECT 'before'"]);
    assert!(ok, "{text}");
    wait_until("the first session closed on record", WAIT, || {
        listed(&db, &["--identity", sub, "--status", "closed"]).len() == 1
    });
    // Someone holds the write lock for 12 s (an operator's sqlite3, a backup tool...).
    let mut lock = Command::new("python3");
    lock.arg("-c")
        .arg(
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('BEGIN EXCLUSIVE')\n\
             print('locked', flush=True)\n\
             time.sleep(12)\n\
             c.execute('COMMIT')",
        )
        .arg(&db)
        .stdout(Stdio::piped());
    let mut lock = lock.spawn().expect("python3");
    let mut line = String::new();
    BufReader::new(lock.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    let (ok, text) = psql_run(
        &conn,
        &p.agent,
        &[
            "SELECT 'during'",
            "INSERT INTO items (id, name) VALUES (99, 'locked')",
        ],
    );
    assert!(lock.wait().expect("lock holder").success());
    let inserted =
        p.pg.sql_in("agentdb", "SELECT count(*) FROM items WHERE id = 99;") == "1";
    assert_eq!(ok, inserted, "{text}");
    // Once the lock is gone, everything of the second session is on record.
    wait_until("the second session's end on record", WAIT, || {
        count(
            &db,
            "SELECT count(*) FROM audit_log WHERE kind = 'session_close' AND session IN \
             (SELECT session FROM audit_log WHERE json_extract(body, '$.text') = 'SELECT ''during''')",
        ) == 1
    });
    verify_ok(&db);
    let trail = query(
        &db,
        "SELECT seq, kind, session, json_extract(body, '$.text') FROM audit_log ORDER BY seq",
    );
    let listed = sessions(&db, &["list", "--identity", sub]);
    let during: Vec<&Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["statements"] == 2)
        .collect();
    assert_eq!(
        during.len(),
        1,
        "the session that ran while the database was locked is not on record as a session (the \
         INSERT {} on the server); sessions: {listed}\nrecords: {trail:?}",
        if inserted { "ran" } else { "was refused" }
    );
}

// =============================================================================================
// 2. Tamper evidence: an edited, deleted or reordered record is named
// =============================================================================================

/// Recomputes record `seq`'s hash in the DB at `db` after its body was changed, as someone who
/// knows the chain's formula would (`SHA-256(prev ‖ seq ‖ at_ms ‖ kind ‖ session ‖ body ‖
/// has-session)`, lengths before the variable parts): the record itself then looks intact.
fn forge_hash(db: &Path, seq: i64) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            r#"import sqlite3, sys, hashlib, struct
c = sqlite3.connect(sys.argv[1])
seq = int(sys.argv[2])
at, kind, session, body, prev = c.execute(
    "SELECT at_ms, kind, session, body, prev FROM audit_log WHERE seq = ?", (seq,)).fetchone()
h = hashlib.sha256()
h.update(bytes.fromhex(prev))
h.update(struct.pack(">q", seq))
h.update(struct.pack(">q", at))
for part in (kind, session or "", body):
    b = part.encode()
    h.update(struct.pack(">Q", len(b)))
    h.update(b)
h.update(bytes([1 if session is not None else 0]))
c.execute("UPDATE audit_log SET hash = ? WHERE seq = ?", (h.hexdigest(), seq))
c.commit()
"#,
        )
        .arg(db)
        .arg(seq.to_string())
        .output()
        .expect("run python3");
    assert!(out.status.success(), "forge hash: {}", output_text(&out));
}

/// `audit verify` of a tampered copy: exits non-zero, says TAMPERED, and its problems name
/// exactly the records in `named` (and the human output names each); returns the output.
fn verify_names(db: &Path, what: &str, named: &[i64]) -> String {
    let out = verify(db);
    let text = output_text(&out);
    assert!(
        !out.status.success(),
        "{what}: audit verify passed:\n{text}"
    );
    assert!(text.contains("TAMPERED"), "{what}:\n{text}");
    let report = verify_json(db);
    let seqs: BTreeSet<i64> = report["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| p["seq"].as_i64().expect("seq"))
        .collect();
    for n in named {
        assert!(
            text.contains(&format!("record {n} ")),
            "{what}: record {n} not named:\n{text}"
        );
    }
    let expected: BTreeSet<i64> = named.iter().copied().collect();
    assert!(
        expected.is_subset(&seqs),
        "{what}: problems {seqs:?}, expected {expected:?}: {report}"
    );
    text
}

#[test]
fn tampering_is_detected_and_the_record_named() {
    let p = start("aud-tamper", 1, NO_DDL_RULE, &[]);
    let db = p.gw.record_db();
    // Real traffic from two agents: reads, writes, a denied statement, an error.
    for (sub, sqls) in [
        (
            "agent-tamper-a",
            &[
                "SELECT 1",
                "INSERT INTO items (id, name) VALUES (1, 'one')",
                "INSERT INTO items (id, name) VALUES (2, 'two')",
                "DROP TABLE items",
                "SELECT 1/0",
                "UPDATE items SET name = 'uno' WHERE id = 1",
            ][..],
        ),
        (
            "agent-tamper-b",
            &[
                "SELECT count(*) FROM items",
                "DELETE FROM items WHERE id = 2",
            ][..],
        ),
    ] {
        let (_, text) = psql_run(
            &p.agent_conninfo(&agent_jwt(sub), "disable"),
            &p.agent,
            sqls,
        );
        assert!(
            !sqls.contains(&"DROP TABLE items") || text.contains("42501"),
            "{sub}: the DROP was not denied: {text}"
        );
    }
    wait_until("both sessions closed on record", WAIT, || {
        count(
            &db,
            "SELECT count(*) FROM sessions WHERE subject LIKE 'agent-tamper-%' AND ended_ms IS NOT NULL",
        ) == 2
    });
    verify_ok(&db);

    let pristine = TempPath::new(&p, "pristine.db");
    copy_db(&db, &pristine.0);
    let report = verify_ok(&pristine.0);
    let records = report["records"].as_i64().expect("records");
    assert!(records >= 15, "{report}");
    let seq_of = |sql: &str| -> i64 { count(&pristine.0, sql) };
    let insert = seq_of(
        "SELECT min(seq) FROM audit_log WHERE kind = 'statement' \
         AND json_extract(body, '$.text') LIKE 'INSERT INTO items%'",
    );
    let delete = seq_of(
        "SELECT max(seq) FROM audit_log WHERE kind = 'statement' \
         AND json_extract(body, '$.text') LIKE 'DELETE FROM items%'",
    );
    let denied = seq_of(
        "SELECT min(seq) FROM audit_log WHERE kind = 'statement' AND json_extract(body, '$.decision') = 'denied'",
    );
    let open_b = seq_of(
        "SELECT seq FROM audit_log WHERE kind = 'session_open' \
         AND json_extract(body, '$.subject') = 'agent-tamper-b'",
    );
    let tip = seq_of("SELECT max(seq) FROM audit_log");
    assert!(insert < denied && denied < open_b && open_b < delete && delete < tip);

    // (a) A statement's text changed to something harmless.
    let edited = TempPath::new(&p, "edited.db");
    copy_db(&pristine.0, &edited.0);
    tamper(
        &edited.0,
        &format!("UPDATE audit_log SET body = json_set(body, '$.text', 'SELECT 1') WHERE seq = {insert};"),
    );
    let text = verify_names(&edited.0, "edited", &[insert]);
    assert!(text.contains("was edited"), "{text}");
    // Only its time changed: also an edit.
    let retimed = TempPath::new(&p, "retimed.db");
    copy_db(&pristine.0, &retimed.0);
    tamper(
        &retimed.0,
        &format!("UPDATE audit_log SET at_ms = at_ms - 3600000 WHERE seq = {denied};"),
    );
    verify_names(&retimed.0, "re-timed", &[denied]);
    // Edited and its own hash recomputed: the next record no longer follows it.
    let forged = TempPath::new(&p, "forged.db");
    copy_db(&pristine.0, &forged.0);
    tamper(
        &forged.0,
        &format!("UPDATE audit_log SET body = json_set(body, '$.decision', 'allowed') WHERE seq = {denied};"),
    );
    forge_hash(&forged.0, denied);
    let text = verify_names(&forged.0, "edited with a recomputed hash", &[denied + 1]);
    assert!(text.contains("does not follow"), "{text}");

    // (b) A record deleted: the gap is named, and the record after it.
    let deleted = TempPath::new(&p, "deleted.db");
    copy_db(&pristine.0, &deleted.0);
    tamper(
        &deleted.0,
        &format!("DELETE FROM audit_log WHERE seq = {open_b};"),
    );
    let text = verify_names(&deleted.0, "deleted", &[open_b + 1]);
    assert!(
        text.contains(&format!("record {open_b} is missing (deleted)")),
        "{text}"
    );
    // The oldest record deleted.
    let headless = TempPath::new(&p, "headless.db");
    copy_db(&pristine.0, &headless.0);
    tamper(&headless.0, "DELETE FROM audit_log WHERE seq = 1;");
    let text = verify_names(&headless.0, "oldest deleted", &[2]);
    assert!(text.contains("record 1 is missing (deleted)"), "{text}");
    // Deleted and the numbers closed up behind it: the next record does not follow.
    let renumbered = TempPath::new(&p, "renumbered.db");
    copy_db(&pristine.0, &renumbered.0);
    tamper(
        &renumbered.0,
        &format!(
            "DELETE FROM audit_log WHERE seq = {delete};\n\
             UPDATE audit_log SET seq = -seq WHERE seq > {delete};\n\
             UPDATE audit_log SET seq = -seq - 1 WHERE seq < 0;"
        ),
    );
    verify_names(&renumbered.0, "deleted and renumbered", &[delete]);

    // (c) Two records swapped (whole, hashes and all).
    let swapped = TempPath::new(&p, "swapped.db");
    copy_db(&pristine.0, &swapped.0);
    tamper(
        &swapped.0,
        &format!(
            "UPDATE audit_log SET seq = -1 WHERE seq = {insert};\n\
             UPDATE audit_log SET seq = {insert} WHERE seq = {delete};\n\
             UPDATE audit_log SET seq = {delete} WHERE seq = -1;"
        ),
    );
    let text = verify_names(&swapped.0, "swapped", &[insert, delete]);
    assert!(text.contains("does not follow"), "{text}");
    // Only their bodies swapped.
    let reordered = TempPath::new(&p, "reordered.db");
    copy_db(&pristine.0, &reordered.0);
    tamper(
        &reordered.0,
        &format!(
            "UPDATE audit_log SET body = (SELECT body FROM audit_log WHERE seq = {open_b}) WHERE seq = {denied};\n\
             UPDATE audit_log SET body = (SELECT body FROM audit_log WHERE seq = {insert}) WHERE seq = {open_b};"
        ),
    );
    verify_names(&reordered.0, "bodies moved", &[denied, open_b]);

    // The untouched copy and the live record still verify.
    verify_ok(&pristine.0);
    verify_ok(&db);

    // The newest records deleted from the live database while the gateway runs: the next
    // record it writes continues the chain it knows, and the gap shows.
    let tip_before = count(&db, "SELECT max(seq) FROM audit_log");
    tamper(
        &db,
        &format!("DELETE FROM audit_log WHERE seq > {};", tip_before - 2),
    );
    let (_, text) = psql_run(
        &p.agent_conninfo(&agent_jwt("agent-tamper-c"), "disable"),
        &p.agent,
        &["SELECT 2"],
    );
    assert!(text.contains('2'), "{text}");
    wait_until("new records after the deletion", WAIT, || {
        count(&db, "SELECT max(seq) FROM audit_log") > tip_before
    });
    let text = verify_names(&db, "newest records deleted", &[tip_before + 1]);
    assert!(
        text.contains(&format!(
            "records {}..{tip_before} are missing",
            tip_before - 1
        )),
        "{text}"
    );
}

// =============================================================================================
// 3. A flood of 50,000 statements: none missing
// =============================================================================================

#[test]
fn a_flood_of_50000_statements_is_on_record_without_a_gap() {
    const CLIENTS: i64 = 4;
    const PER_CLIENT: i64 = 12_500;
    let p = start("aud-flood", 2, "", &[]);
    let db = p.gw.record_db();
    let sub = "agent-flood";
    // Every statement is distinct: (client id, its n-th transaction).
    let script = TempPath::new(&p, "select.sql");
    std::fs::write(
        &script.0,
        "\\set n :n + 1\nSELECT :client_id AS c, :n AS n;\n",
    )
    .unwrap();
    let mut cmd = pgbench_command("127.0.0.1", p.pg.port, "agent", "agentdb");
    cmd.args(["-n", "-M", "simple", "-D", "n=0", "-j", "2"])
        .args(["-c", &CLIENTS.to_string(), "-t", &PER_CLIENT.to_string()])
        .arg("-f")
        .arg(script.s())
        .env("PGPASSWORD", agent_jwt(sub));
    let started = Instant::now();
    let mut bench = Bg::spawn("pgbench", cmd, &p.agent);
    // The read-only commands work while the gateway writes.
    std::thread::sleep(Duration::from_secs(3));
    assert!(bench.running(), "pgbench ended early: {}", bench.text());
    verify_ok(&db);
    let live = listed(&db, &["--identity", sub, "--status", "live"]);
    assert_eq!(live.len() as i64, CLIENTS, "{live:?}");

    let st = bench.wait_exit(Duration::from_secs(240));
    let text = bench.text();
    assert!(
        st.success()
            && text.contains(&format!(
                "actually processed: {}/{}",
                CLIENTS * PER_CLIENT,
                CLIENTS * PER_CLIENT
            )),
        "pgbench: {text}"
    );
    let ran = started.elapsed();
    // Everything is written once the sessions' ends are.
    wait_until("the flood's sessions closed on record", WAIT, || {
        count(
            &db,
            &format!("SELECT count(*) FROM sessions WHERE subject = '{sub}' AND ended_ms IS NULL"),
        ) == 0
    });
    eprintln!(
        "flood: {} statements through the gateway in {ran:?}",
        CLIENTS * PER_CLIENT
    );

    // pgbench's own connection (made first, to check the server) runs nothing; each client's
    // session has exactly its transactions' statements, numbered 1..=N without a gap.
    let per_session = query(
        &db,
        &format!(
            "SELECT s.id, count(st.record), coalesce(min(st.seq), 0), coalesce(max(st.seq), 0), \
             count(DISTINCT st.seq) FROM sessions s LEFT JOIN statements st ON st.session = s.id \
             WHERE s.subject = '{sub}' GROUP BY s.id ORDER BY s.started_ms"
        ),
    );
    let busy: Vec<&Vec<Value>> = per_session.iter().filter(|r| r[1] != 0).collect();
    assert_eq!(busy.len() as i64, CLIENTS, "{per_session:?}");
    for r in &busy {
        assert_eq!(
            (r[1].as_i64(), r[2].as_i64(), r[3].as_i64(), r[4].as_i64()),
            (
                Some(PER_CLIENT),
                Some(1),
                Some(PER_CLIENT),
                Some(PER_CLIENT)
            ),
            "session {}: statements, first, last, distinct",
            r[0]
        );
    }
    assert!(per_session.len() as i64 <= CLIENTS + 1, "{per_session:?}");

    // Every statement the clients sent is there once, with its outcome.
    let rows = query(
        &db,
        &format!(
            "SELECT st.text, st.decision, st.rows, st.error FROM statements st \
             JOIN sessions s ON s.id = st.session WHERE s.subject = '{sub}'"
        ),
    );
    assert_eq!(rows.len() as i64, CLIENTS * PER_CLIENT);
    let mut seen = HashSet::new();
    for r in &rows {
        let t = r[0].as_str().unwrap_or("");
        let (c, n) = t
            .strip_prefix("SELECT ")
            .and_then(|x| x.split_once(" AS c, "))
            .and_then(|(c, rest)| {
                Some((
                    c.parse::<i64>().ok()?,
                    rest.split(' ').next()?.parse::<i64>().ok()?,
                ))
            })
            .unwrap_or_else(|| panic!("unexpected statement on record: {r:?}"));
        assert!(seen.insert((c, n)), "recorded twice: {t}");
        assert_eq!(
            (&r[1], &r[2], &r[3]),
            (&json!("allowed"), &json!(1), &Value::Null),
            "{r:?}"
        );
    }
    for c in 0..CLIENTS {
        for n in 1..=PER_CLIENT {
            assert!(seen.contains(&(c, n)), "client {c} statement {n} missing");
        }
    }
    let report = verify_ok(&db);
    assert!(
        report["records"].as_i64().unwrap_or(0) > CLIENTS * PER_CLIENT,
        "{report}"
    );
    // The listing counts them too.
    let listed: Vec<Value> = sessions(&db, &["list", "--identity", sub])
        .as_array()
        .expect("list")
        .clone();
    let total: i64 = listed
        .iter()
        .map(|s| s["statements"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(total, CLIENTS * PER_CLIENT, "{listed:?}");
}

// =============================================================================================
// 4. The inventory: active, idle, expired, revoked
// =============================================================================================

#[test]
fn agents_show_active_idle_expired_and_revoked_as_they_change() {
    let p = start("aud-agents", 3, "", &[]);
    let db = p.gw.record_db();

    // Agent A: a token good for 8 s (well under the provider's max_lifetime of 900 s).
    let a = "agent-inv-a";
    let iat = now();
    let exp = iat + 8;
    let jwt_a = mint(a, &["agents"], iat, exp);
    assert!(agent(&db, a).is_none());
    let before = now_ms();
    let mut w = Wire::open(&p, &jwt_a, &p.agent);
    let opened = now_ms();
    let e = wait_agent(&db, a, "active", |e| e["status"] == "active");
    let started = count(
        &db,
        &format!("SELECT started_ms FROM sessions WHERE subject = '{a}'"),
    );
    assert!(
        before <= started && started <= opened,
        "{started} not in {before}..{opened}"
    );
    assert_eq!(e["first_seen_ms"], started, "{e}");
    assert_eq!(e["token_expires_ms"], json!(exp * 1000), "{e}");
    assert_eq!(e["live_sessions"], 1, "{e}");
    assert_eq!(e["sessions"], 1, "{e}");
    assert_eq!(e["targets"], json!(["pg"]), "{e}");
    assert_eq!(e["issuer"], ISSUER, "{e}");
    assert!(e["revoked"].is_null(), "{e}");
    // While live, it was last seen now.
    let t = now_ms();
    let seen = e["last_seen_ms"].as_i64().expect("last_seen_ms");
    assert!(seen >= started && seen <= t, "{e}");
    // A write is a privileged action.
    let got = w.query("INSERT INTO items (id, name) VALUES (1, 'inv')");
    assert!(got.iter().any(|m| m["tag"] == "INSERT 0 1"), "{got:?}");
    let e = wait_agent(&db, a, "with a privileged action", |e| {
        e["privileged_actions"] == 1
    });
    assert_eq!(e["status"], "active", "{e}");

    // Closed while the token is still good: idle, last seen at the session's end.
    w.close();
    let e = wait_agent(&db, a, "idle", |e| e["status"] == "idle");
    assert!(
        now() < exp,
        "the test was too slow to see agent A idle before its token expired"
    );
    let ended = count(
        &db,
        &format!("SELECT ended_ms FROM sessions WHERE subject = '{a}'"),
    );
    assert_eq!(e["last_seen_ms"], ended, "{e}");
    assert_eq!(e["first_seen_ms"], started, "{e}");
    assert_eq!(
        (e["live_sessions"].as_i64(), e["sessions"].as_i64()),
        (Some(0), Some(1)),
        "{e}"
    );

    // Agent B: two sessions at once, then one, then none.
    let b = "agent-inv-b";
    let jwt_b = agent_jwt(b);
    let w1 = Wire::open(&p, &jwt_b, &p.agent);
    let w2 = Wire::open(&p, &jwt_b, &p.agent);
    let e = wait_agent(&db, b, "active with 2 live sessions", |e| {
        e["live_sessions"] == 2
    });
    assert_eq!(
        (e["status"].as_str(), e["sessions"].as_i64()),
        (Some("active"), Some(2)),
        "{e}"
    );
    let first_b = e["first_seen_ms"].as_i64().unwrap();
    w1.close();
    let e = wait_agent(&db, b, "active with 1 live session", |e| {
        e["live_sessions"] == 1
    });
    assert_eq!(
        (e["status"].as_str(), e["sessions"].as_i64()),
        (Some("active"), Some(2)),
        "{e}"
    );
    w2.close();
    let e = wait_agent(&db, b, "idle", |e| e["status"] == "idle");
    assert_eq!(
        (e["live_sessions"].as_i64(), e["sessions"].as_i64()),
        (Some(0), Some(2)),
        "{e}"
    );
    assert_eq!(e["first_seen_ms"], first_b, "{e}");
    assert_eq!(e["privileged_actions"], 0, "{e}");

    // A's token expires: expired (it cannot come back without a new one); B stays idle.
    let wait = (exp as i64 * 1000 - now_ms() + 200).max(0) as u64;
    std::thread::sleep(Duration::from_millis(wait));
    let e = wait_agent(&db, a, "expired", |e| e["status"] == "expired");
    assert_eq!(e["last_seen_ms"], ended, "{e}");
    assert_eq!(agent(&db, b).unwrap()["status"], "idle");

    // Revoked: B (idle) and A (expired) alike.
    for sub in [a, b] {
        let out = revoke(&p.gw, &["--identity", sub, "--reason", "inventory test"]);
        assert!(out.status.success(), "{}", output_text(&out));
        let e = wait_agent(&db, sub, "revoked", |e| e["status"] == "revoked");
        assert_eq!(e["revoked"]["reason"], "inventory test", "{e}");
        assert_eq!(e["revoked"]["subject"], sub, "{e}");
    }

    // The table for people says the same.
    let table = cli_ok(&["agents", "--record-db", db.to_str().unwrap()]);
    for word in ["STATUS", "IDENTITY", a, b, "revoked", "0/1", "0/2"] {
        assert!(table.contains(word), "{word} missing from:\n{table}");
    }
    verify_ok(&db);
}

// =============================================================================================
// 5. Revoke: live sessions end within a second, new ones are refused, on record
// =============================================================================================

/// The newest `refused` event of `subject` after the first `skip` of them.
fn refusal(gw: &Gateway, subject: &str, skip: usize) -> Value {
    gw.wait_for(
        WAIT,
        |e| e["event"] == "refused" && e["subject"] == subject,
        skip,
    )
}

#[test]
fn revoke_ends_live_sessions_at_once_and_refuses_new_ones_until_lifted() {
    let mut p = start("aud-revoke", 4, "", &["--drain-secs", "1"]);
    let db = p.gw.record_db();
    let sub = "agent-revoked";
    let jwt = agent_jwt(sub);
    let conn = p.agent_conninfo(&jwt, "disable");

    // Two live sessions of the agent: one idle (the raw client watches its socket), one in the
    // middle of a long statement (psql waits for its result); and one of another agent.
    let mut idle = Wire::open(&p, &jwt, &p.agent);
    let mut busy = psql_bg(&conn, &p.agent, &["SELECT pg_sleep(60)"]);
    let mut other = Wire::open(&p, &agent_jwt("agent-bystander"), &p.agent);
    wait_until("the long statement runs on the server", WAIT, || {
        p.pg.sql("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active';")
            == "1"
    });
    wait_until("both sessions live on record", WAIT, || {
        listed(&db, &["--identity", sub, "--status", "live"]).len() == 2
    });

    let refused_before = p.gw.count("refused");
    let out = revoke(
        &p.gw,
        &[
            "--identity",
            sub,
            "--reason",
            "token leaked in a log",
            "--json",
        ],
    );
    let returned = Instant::now();
    let returned_ms = now_ms();
    assert!(out.status.success(), "revoke: {}", output_text(&out));
    let answer: Value = serde_json::from_slice(&out.stdout).expect("revoke --json");
    assert_eq!(answer["ended_sessions"], 2, "{answer}");

    // The idle session: the client sees its connection end, told why.
    let (eof_at, said) = idle.wait_eof(Duration::from_secs(5));
    let idle_after = eof_at.saturating_duration_since(returned);
    assert!(
        idle_after < Duration::from_secs(1),
        "the idle session ended {idle_after:?} after the CLI returned"
    );
    assert!(said.contains("57P01") && said.contains("revoked"), "{said}");
    // The busy one too, and its statement is cancelled on the server.
    let (exit_at, _) = busy.wait_exit_at(Duration::from_secs(5));
    let busy_after = exit_at.saturating_duration_since(returned);
    assert!(
        busy_after < Duration::from_secs(1),
        "the busy session ended {busy_after:?} after the CLI returned"
    );
    let said = busy.text();
    assert!(said.contains("revoked"), "{said}");
    wait_until(
        "the revoked session's statement is cancelled",
        Duration::from_secs(5),
        || {
            p.pg.sql("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active';")
            == "0"
        },
    );
    eprintln!(
        "revoke: idle session ended {idle_after:?}, busy one {busy_after:?} after the CLI returned"
    );
    // On record: both sessions closed, by the revocation, within a second.
    wait_until("the sessions' ends on record", WAIT, || {
        listed(&db, &["--identity", sub, "--status", "closed"]).len() == 2
    });
    for s in sessions(&db, &["list", "--identity", sub])
        .as_array()
        .unwrap()
    {
        let ended = s["ended_ms"].as_i64().expect("ended_ms");
        assert!(ended - returned_ms < 1000, "{s}");
        assert!(
            s["ended_by"].as_str().unwrap_or("").contains("revoked"),
            "{s}"
        );
    }
    // The other agent is untouched.
    let got = other.query("SELECT 'still here'");
    assert!(
        got.iter().any(|m| m["row"] == json!(["still here"])),
        "{got:?}"
    );

    // A new connection is refused, and the refusal is an event and a record.
    // (The agent is told only that no policy allows it, as for any refusal by the rules.)
    let (ok, said) = psql_run(&conn, &p.agent, &["SELECT 1"]);
    assert!(!ok, "a revoked agent got in: {said}");
    assert!(said.contains("no policy allows this connection"), "{said}");
    let ev = refusal(&p.gw, sub, 0);
    assert_eq!(ev["code"], "revoked", "{ev}");
    assert!(p.gw.count("refused") > refused_before);
    wait_until("the refusal on record", WAIT, || {
        count(
            &db,
            &format!(
                "SELECT count(*) FROM audit_log WHERE kind = 'refused' \
                 AND json_extract(body, '$.code') = 'revoked' AND json_extract(body, '$.subject') = '{sub}'"
            ),
        ) == 1
    });
    // Listed as in force.
    let list = cli_json(&[
        "revoke",
        "--list",
        "--json",
        "--admin-socket",
        p.gw.admin_socket().to_str().unwrap(),
    ]);
    let revs = list["revocations"].as_array().expect("revocations");
    assert_eq!(revs.len(), 1, "{list}");
    assert_eq!(revs[0]["subject"], sub, "{list}");
    assert_eq!(revs[0]["reason"], "token leaked in a log", "{list}");

    // A restart keeps it.
    other.close();
    assert!(p.gw.terminate(WAIT).is_some(), "the gateway did not stop");
    p.gw.start_again();
    let (ok, said) = psql_run(&conn, &p.agent, &["SELECT 1"]);
    assert!(!ok, "a revoked agent got in after a restart: {said}");
    assert_eq!(refusal(&p.gw, sub, 1)["code"], "revoked");

    // Lifted: it gets in again.
    let out = revoke(&p.gw, &["--identity", sub, "--lift", "--reason", "rotated"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 revocation(s) lifted"),
        "{}",
        output_text(&out)
    );
    let (ok, said) = psql_run(&conn, &p.agent, &["SELECT 'back' AS x"]);
    assert!(ok && said.contains("back"), "{said}");

    // A workload can be revoked as a whole: the file-token workload's agent is refused.
    let file_conn = conninfo("127.0.0.1", p.pg.port, "agent", "", "agentdb", "disable");
    let (ok, said) = psql_run(&file_conn, &p.file_agent, &["SELECT 'file' AS x"]);
    assert!(ok && said.contains("file"), "{said}");
    let out = revoke(&p.gw, &["--workload", "file-agents"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let (ok, said) = psql_run(&file_conn, &p.file_agent, &["SELECT 'file' AS x"]);
    assert!(
        !ok && said.contains("no policy allows this connection"),
        "{said}"
    );
    let ev = p.gw.wait_for(
        WAIT,
        |e| e["event"] == "refused" && e["workload"] == "file-agents",
        0,
    );
    assert_eq!(ev["code"], "revoked", "{ev}");
    let (ok, said) = psql_run(&conn, &p.agent, &["SELECT 'other workload' AS x"]);
    assert!(ok, "{said}");
    let out = revoke(&p.gw, &["--workload", "file-agents", "--lift"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let (ok, said) = psql_run(&file_conn, &p.file_agent, &["SELECT 'file' AS x"]);
    assert!(ok, "{said}");

    // The revocations and lifts are records, in order, and the chain holds.
    let trail = query(
        &db,
        "SELECT kind, json_extract(body, '$.subject'), json_extract(body, '$.workload'), \
         json_extract(body, '$.reason'), json_extract(body, '$.by') FROM audit_log \
         WHERE kind IN ('revoke', 'revoke_lifted') ORDER BY seq",
    );
    let kinds: Vec<(&str, &str)> = trail
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap_or(""),
                r[1].as_str().or(r[2].as_str()).unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("revoke", sub),
            ("revoke_lifted", sub),
            ("revoke", "file-agents"),
            ("revoke_lifted", "file-agents")
        ],
        "{trail:?}"
    );
    assert_eq!(trail[0][3], "token leaked in a log", "{trail:?}");
    assert_eq!(trail[0][4], "root", "{trail:?}");
    verify_ok(&db);
}

// =============================================================================================
// 6. sessions list | show | replay, audit export
// =============================================================================================

const SESSION_RULES: &str = concat!(
    "  - name: no-truncate\n    effect: deny\n    when: {groups: [agents]}\n    targets: [pg]\n",
    "    statements: {patterns: [\"(?i)^truncate\"]}\n",
    "  - name: drops-need-approval\n    when: {workloads: [sql-agents]}\n    targets: [pg]\n",
    "    statements: {patterns: [\"(?i)^drop table\"]}\n",
    "    approval: {approvers: [dba], timeout_secs: 120}\n",
);

/// `agentgate approvals <args> --admin-socket <the gateway's>`, which must succeed.
fn approvals_ok(gw: &Gateway, args: &[&str]) -> String {
    let mut a = vec!["approvals"];
    a.extend_from_slice(args);
    let socket = gw.admin_socket();
    a.extend_from_slice(&["--admin-socket", socket.to_str().unwrap()]);
    cli_ok(&a)
}

#[test]
fn sessions_can_be_found_shown_and_replayed_and_the_record_exported() {
    let p = start("aud-sess", 5, SESSION_RULES, &[]);
    p.pg.sql_in(
        "agentdb",
        &format!("CREATE TABLE t (x int); ALTER TABLE t OWNER TO {ROLE_SCRAM};"),
    );
    let db = p.gw.record_db();
    let a = "agent-sess-a";
    let conn_a = p.agent_conninfo(&agent_jwt(a), "disable");
    let file_sub = "agent-aud-sess";
    let t0 = now_ms();

    // A1: a read with a marker, a write, an error, a denied statement.
    let a1_sql = [
        "SELECT 'needle-7f3a' AS marker",
        "INSERT INTO items (id, name) VALUES (1, 'a')",
        "SELECT 1/0",
        "TRUNCATE items",
    ];
    let (_, text) = psql_run(&conn_a, &p.agent, &a1_sql);
    assert!(
        text.contains("needle-7f3a") && text.contains("22012") && text.contains("42501"),
        "{text}"
    );
    // A2: a DROP held for approval, approved through the CLI, then run.
    let mut c = psql_bg(&conn_a, &p.agent, &["DROP TABLE t"]);
    c.wait_line_at(WAIT, |err, l| err && l.starts_with("NOTICE:"));
    let pending: Value =
        serde_json::from_str(&approvals_ok(&p.gw, &["list", "--json"])).expect("list --json");
    let request = pending["requests"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no pending request: {pending}"))
        .to_string();
    approvals_ok(&p.gw, &["approve", &request, "--reason", "cleanup"]);
    assert!(c.wait_exit(WAIT).success(), "{}", c.text());
    // B: another workload (its token from a file), another identity.
    let file_conn = conninfo("127.0.0.1", p.pg.port, "agent", "", "agentdb", "disable");
    let (ok, text) = psql_run(&file_conn, &p.file_agent, &["SELECT count(*) FROM items"]);
    assert!(ok, "{text}");
    wait_until("three sessions closed on record", WAIT, || {
        listed(&db, &["--status", "closed"]).len() == 3
    });
    std::thread::sleep(Duration::from_millis(20));
    let t_mid = now_ms();
    std::thread::sleep(Duration::from_millis(20));
    // L: a live session.
    let live_sub = "agent-sess-live";
    let mut live = Wire::open(&p, &agent_jwt(live_sub), &p.agent);
    live.query("SELECT 'live' AS l");
    wait_until("the live session on record", WAIT, || {
        listed(&db, &["--status", "live"]).len() == 1
    });

    let ids_a = sessions_of(&db, a);
    assert_eq!(ids_a.len(), 2, "{ids_a:?}");
    let (a1, a2) = (ids_a[0].clone(), ids_a[1].clone());
    let b = sessions_of(&db, file_sub);
    assert_eq!(b.len(), 1, "{b:?}");
    let b = b[0].clone();
    let l = sessions_of(&db, live_sub)[0].clone();
    let set = |v: &[&String]| -> BTreeSet<String> { v.iter().map(|s| s.to_string()).collect() };

    // Filters.
    assert_eq!(listed(&db, &[]), set(&[&a1, &a2, &b, &l]));
    assert_eq!(listed(&db, &["--identity", a]), set(&[&a1, &a2]));
    assert_eq!(listed(&db, &["--identity", "sess-a"]), set(&[&a1, &a2]));
    assert_eq!(
        listed(&db, &["--identity", &format!("{ISSUER}#{a}")]),
        set(&[&a1, &a2])
    );
    assert_eq!(listed(&db, &["--workload", "file-agents"]), set(&[&b]));
    assert_eq!(
        listed(&db, &["--workload", "sql-agents"]),
        set(&[&a1, &a2, &l])
    );
    assert_eq!(listed(&db, &["--status", "live"]), set(&[&l]));
    assert_eq!(listed(&db, &["--status", "closed"]), set(&[&a1, &a2, &b]));
    assert_eq!(listed(&db, &["--statement", "needle-7f3a"]), set(&[&a1]));
    assert_eq!(listed(&db, &["--statement", "DROP TABLE"]), set(&[&a2]));
    assert_eq!(
        listed(&db, &["--statement", "SELECT", "--workload", "sql-agents"]),
        set(&[&a1, &l])
    );
    assert_eq!(listed(&db, &["--statement", "no such text"]), set(&[]));
    assert_eq!(
        listed(&db, &["--target", "pg", "--protocol", "postgres"]).len(),
        4
    );
    assert_eq!(listed(&db, &["--protocol", "tcp"]), set(&[]));
    assert_eq!(listed(&db, &["--since", &t_mid.to_string()]), set(&[&l]));
    assert_eq!(
        listed(&db, &["--until", &t_mid.to_string()]),
        set(&[&a1, &a2, &b])
    );
    assert_eq!(listed(&db, &["--since", "1h"]).len(), 4);
    assert_eq!(listed(&db, &["--limit", "2"]).len(), 2);
    let bad = cli(&[
        "sessions",
        "list",
        "--status",
        "dead",
        "--record-db",
        db.to_str().unwrap(),
    ]);
    assert!(!bad.status.success(), "{}", output_text(&bad));
    // The listing's counts.
    let row = sessions(&db, &["list", "--statement", "needle-7f3a"])[0].clone();
    assert_eq!(
        (
            row["statements"].as_i64(),
            row["denied"].as_i64(),
            row["privileged"].as_i64(),
            row["status"].as_str(),
            row["subject"].as_str(),
            row["workload"].as_str(),
        ),
        (
            Some(4),
            Some(1),
            Some(1),
            Some("closed"),
            Some(a),
            Some("sql-agents")
        ),
        "{row}"
    );
    // The table for people.
    let table = cli_ok(&["sessions", "list", "--record-db", db.to_str().unwrap()]);
    for word in [
        "SESSION",
        "IDENTITY",
        a1.as_str(),
        l.as_str(),
        "(live)",
        file_sub,
    ] {
        assert!(table.contains(word), "{word} missing from:\n{table}");
    }

    // show: who, from where, to what, how it ended.
    let shown = sessions(&db, &["show", &a1]);
    assert_eq!(shown["session"], a1.as_str(), "{shown}");
    assert_eq!(shown["subject"], a, "{shown}");
    assert_eq!(shown["issuer"], ISSUER, "{shown}");
    assert_eq!(shown["workload"], "sql-agents", "{shown}");
    assert_eq!(shown["cgroup"], p.agent.rel.as_str(), "{shown}");
    assert_eq!(shown["target"], "pg", "{shown}");
    assert_eq!(shown["protocol"], "postgres", "{shown}");
    assert_eq!(shown["client_user"], "agent", "{shown}");
    assert_eq!(shown["database"], "agentdb", "{shown}");
    assert_eq!(
        shown["original_dst"],
        format!("127.0.0.1:{}", p.pg.port),
        "{shown}"
    );
    assert_eq!(
        (shown["statements"].as_i64(), shown["denied"].as_i64()),
        (Some(4), Some(1))
    );
    assert!(shown["started_ms"].as_i64().unwrap() >= t0, "{shown}");
    assert!(
        shown["ended_ms"].as_i64().unwrap() >= shown["started_ms"].as_i64().unwrap(),
        "{shown}"
    );
    let live_shown = sessions(&db, &["show", &l]);
    assert!(live_shown["ended_ms"].is_null(), "{live_shown}");
    let missing = cli(&[
        "sessions",
        "show",
        "nope-1",
        "--record-db",
        db.to_str().unwrap(),
    ]);
    assert!(!missing.status.success(), "{}", output_text(&missing));

    // replay: the timeline in order, each statement with its outcome.
    let events = sessions(&db, &["replay", &a1]);
    let events = events.as_array().expect("replay --json");
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "session_open",
            "statement",
            "statement",
            "statement",
            "statement",
            "session_close"
        ],
        "{events:#?}"
    );
    let records: Vec<i64> = events
        .iter()
        .map(|e| e["record"].as_i64().unwrap())
        .collect();
    assert!(records.windows(2).all(|w| w[0] < w[1]), "{records:?}");
    let stmts: Vec<&Value> = events[1..5].iter().map(|e| &e["body"]).collect();
    for (i, (st, sql)) in stmts.iter().zip(a1_sql).enumerate() {
        assert_eq!(st["text"], sql, "{st}");
        assert_eq!(st["seq"], i as i64 + 1, "{st}");
    }
    assert_eq!(
        (&stmts[0]["rows"], &stmts[0]["error"]),
        (&json!(1), &Value::Null),
        "{}",
        stmts[0]
    );
    assert_eq!(
        stmts[0]["results"],
        json!([["needle-7f3a"]]),
        "{}",
        stmts[0]
    );
    assert_eq!(
        (&stmts[1]["class"], &stmts[1]["error"]),
        (&json!("write"), &Value::Null),
        "{}",
        stmts[1]
    );
    assert_eq!(stmts[2]["error_code"], "22012", "{}", stmts[2]);
    assert_eq!(
        (
            &stmts[3]["decision"],
            &stmts[3]["rule"],
            &stmts[3]["error_code"]
        ),
        (&json!("denied"), &json!("no-truncate"), &json!("42501")),
        "{}",
        stmts[3]
    );
    let human = cli_ok(&[
        "sessions",
        "replay",
        &a1,
        "--record-db",
        db.to_str().unwrap(),
    ]);
    let at = |s: &str| {
        human
            .find(s)
            .unwrap_or_else(|| panic!("{s} missing from:\n{human}"))
    };
    assert!(at(" open ") < at("needle-7f3a") && at("needle-7f3a") < at("INSERT INTO items"));
    assert!(at("INSERT INTO items") < at("1/0") && at("1/0") < at("TRUNCATE items"));
    assert!(at("TRUNCATE items") < at(" close "), "{human}");
    assert!(
        human.contains("error 22012") && human.contains("by no-truncate"),
        "{human}"
    );
    // The rows the agent was sent, kept with the statement.
    assert!(human.contains("| [\"needle-7f3a\"]"), "{human}");

    // The approved DROP's session: the approval's trail inside the timeline.
    let events = sessions(&db, &["replay", &a2]);
    let events = events.as_array().expect("replay --json");
    let pos = |pred: &dyn Fn(&Value) -> bool| {
        events
            .iter()
            .position(pred)
            .unwrap_or_else(|| panic!("not in the replay: {events:#?}"))
    };
    let requested = pos(&|e| e["kind"] == "approval" && e["body"]["event"] == "requested");
    let forwarded = pos(&|e| e["kind"] == "approval" && e["body"]["event"] == "forwarded");
    let voted = pos(&|e| {
        e["kind"] == "approval" && e["body"]["actor"].as_str().unwrap_or("").contains("root")
    });
    let drop = pos(&|e| e["kind"] == "statement");
    assert!(
        requested < voted && voted <= forwarded && forwarded < drop,
        "{events:#?}"
    );
    assert!(events
        .iter()
        .all(|e| e["kind"] != "approval" || e["body"]["request"] == request.as_str()));
    let st = &events[drop]["body"];
    assert_eq!(
        (&st["text"], &st["decision"]),
        (&json!("DROP TABLE t"), &json!("approved")),
        "{st}"
    );
    assert!(st["rule"].as_str().unwrap_or("").contains(&request), "{st}");
    let human = cli_ok(&[
        "sessions",
        "replay",
        &a2,
        "--record-db",
        db.to_str().unwrap(),
    ]);
    assert!(
        human.contains(&format!("approval {request} requested")),
        "{human}"
    );

    // export: every record as a JSON line, chained, from a time on.
    let export = |since: Option<&str>| -> Vec<Value> {
        let mut args = vec!["audit", "export", "--record-db", db.to_str().unwrap()];
        if let Some(s) = since {
            args.extend_from_slice(&["--since", s]);
        }
        cli_ok(&args)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("export line {l}: {e}")))
            .collect()
    };
    let all = export(None);
    let total = count(&db, "SELECT count(*) FROM audit_log");
    assert_eq!(all.len() as i64, total);
    for (i, line) in all.iter().enumerate() {
        for k in ["seq", "at_ms", "kind", "record", "prev", "hash"] {
            assert!(!line[k].is_null(), "no {k} in {line}");
        }
        assert_eq!(line["hash"].as_str().unwrap().len(), 64, "{line}");
        if i > 0 {
            assert_eq!(
                line["seq"].as_i64(),
                all[i - 1]["seq"].as_i64().map(|s| s + 1)
            );
            assert_eq!(line["prev"], all[i - 1]["hash"], "{line}");
        }
    }
    assert!(all.iter().any(|l| l["kind"] == "statement"
        && l["session"] == a1.as_str()
        && l["record"]["text"] == "SELECT 'needle-7f3a' AS marker"));
    assert_eq!(export(Some("1h")).len(), all.len());
    assert_eq!(export(Some("2020-01-01")).len(), all.len());
    let since = export(Some(&t_mid.to_string()));
    let expected = count(
        &db,
        &format!("SELECT count(*) FROM audit_log WHERE at_ms >= {t_mid}"),
    );
    assert_eq!(since.len() as i64, expected);
    assert!(!since.is_empty() && since.len() < all.len());
    assert!(since.iter().all(|l| l["at_ms"].as_i64().unwrap() >= t_mid));
    assert!(since
        .iter()
        .any(|x| x["kind"] == "session_open" && x["session"] == l.as_str()));
    let bad = cli(&[
        "audit",
        "export",
        "--since",
        "yesterday",
        "--record-db",
        db.to_str().unwrap(),
    ]);
    assert!(!bad.status.success(), "{}", output_text(&bad));
    live.close();
    verify_ok(&db);
}

// =============================================================================================
// 7. Retention: by age and by size, the chain verifiable from its anchor
// =============================================================================================

/// Bytes the record DB at `db` uses (pages in use, as the gateway counts them).
fn used_bytes(db: &Path) -> i64 {
    count(
        db,
        "SELECT ((SELECT page_count FROM pragma_page_count()) - (SELECT freelist_count FROM pragma_freelist_count())) \
         * (SELECT page_size FROM pragma_page_size())",
    )
}

/// The chain starts right after its anchor: `verify` says so, and the oldest record kept is
/// the anchor's successor. Returns (anchor, verify's report).
fn anchored(db: &Path) -> (i64, Value) {
    let report = verify_ok(db);
    let anchor = count(db, "SELECT seq FROM audit_anchor WHERE id = 1");
    assert_eq!(report["from"], anchor, "{report}");
    assert_eq!(
        count(db, "SELECT min(seq) FROM audit_log"),
        anchor + 1,
        "the oldest record kept does not follow the anchor"
    );
    let human = String::from_utf8_lossy(&verify(db).stdout).to_string();
    assert!(
        human.contains(&format!("(from record {} to ", anchor + 1)),
        "{human}"
    );
    (anchor, report)
}

#[test]
fn retention_prunes_by_age_and_size_and_the_chain_still_verifies() {
    let mut p = start("aud-retain", 6, "", &["--drain-secs", "1"]);
    let db = p.gw.record_db();
    let port = p.pg.port;
    let conn = |sub: &str| {
        conninfo(
            "127.0.0.1",
            port,
            "agent",
            &agent_jwt(sub),
            "agentdb",
            "disable",
        )
    };
    let (ok, text) = psql_run(
        &conn("agent-old"),
        &p.agent,
        &["SELECT 1", "INSERT INTO items (id) VALUES (1)", "SELECT 2"],
    );
    assert!(ok, "{text}");
    wait_until("the old session closed on record", WAIT, || {
        listed(&db, &["--identity", "agent-old", "--status", "closed"]).len() == 1
    });
    let old_tip = count(&db, "SELECT max(seq) FROM audit_log");
    assert_eq!(verify_ok(&db)["from"], 0);

    // Started with --retain-days 0: everything before the start is pruned at once.
    assert!(p.gw.terminate(WAIT).is_some());
    std::thread::sleep(Duration::from_millis(20));
    let restart = now_ms();
    p.gw.extra_args = vec![
        "--drain-secs".into(),
        "1".into(),
        "--retain-days".into(),
        "0".into(),
    ];
    p.gw.start_again();
    wait_until("a retention record", WAIT, || {
        count(
            &db,
            "SELECT count(*) FROM audit_log WHERE kind = 'retention'",
        ) == 1
    });
    let (anchor, _) = anchored(&db);
    assert!(anchor >= old_tip, "anchor {anchor}, old tip {old_tip}");
    assert_eq!(
        count(
            &db,
            &format!("SELECT count(*) FROM audit_log WHERE at_ms < {restart}")
        ),
        0
    );
    let r = query(
        &db,
        "SELECT json_extract(body, '$.pruned'), json_extract(body, '$.keep_days') FROM audit_log WHERE kind = 'retention'",
    );
    assert!(
        r[0][0].as_i64().unwrap() >= old_tip && r[0][1] == 0,
        "{r:?}"
    );
    assert!(listed(&db, &["--identity", "agent-old"]).is_empty());
    // The gateway goes on recording after the anchor.
    let (ok, text) = psql_run(&conn("agent-new"), &p.agent, &["SELECT 'after pruning'"]);
    assert!(ok, "{text}");
    wait_until("the new session closed on record", WAIT, || {
        listed(&db, &["--identity", "agent-new", "--status", "closed"]).len() == 1
    });
    let (again, report) = anchored(&db);
    assert_eq!(again, anchor);
    assert!(report["tip"].as_i64().unwrap() > anchor + 3, "{report}");

    // By size: well over a MiB of statements recorded without a limit...
    assert!(p.gw.terminate(WAIT).is_some());
    p.gw.extra_args = vec!["--drain-secs".into(), "1".into()];
    p.gw.start_again();
    let script = TempPath::new(&p, "big.sql");
    let pad = "x".repeat(2000);
    let body: String = (0..1200)
        .map(|i| format!("SELECT {i} AS n, '{pad}' AS pad \\g /dev/null\n"))
        .collect();
    std::fs::write(&script.0, body).unwrap();
    let mut cmd = psql_command(&conn("agent-big"));
    cmd.args(["-q", "-f", script.s()]);
    let mut c = Bg::spawn("psql -f big.sql", cmd, &p.agent);
    assert!(
        c.wait_exit(Duration::from_secs(120)).success(),
        "{}",
        c.text()
    );
    wait_until("the big session closed on record", WAIT, || {
        listed(&db, &["--identity", "agent-big", "--status", "closed"]).len() == 1
    });
    let used = used_bytes(&db);
    assert!(used > 2 << 20, "only {used} bytes used");
    let tip = count(&db, "SELECT max(seq) FROM audit_log");
    // ...and a start with --retain-mb 1 deletes the oldest until the rest fits.
    assert!(p.gw.terminate(WAIT).is_some());
    p.gw.extra_args = vec![
        "--drain-secs".into(),
        "1".into(),
        "--retain-mb".into(),
        "1".into(),
    ];
    p.gw.start_again();
    wait_until("a second retention record", WAIT, || {
        count(
            &db,
            "SELECT count(*) FROM audit_log WHERE kind = 'retention'",
        ) == 1
            && count(
                &db,
                "SELECT max(seq) FROM audit_log WHERE kind = 'retention'",
            ) > tip
    });
    let used = used_bytes(&db);
    assert!(used <= 1 << 20, "{used} bytes used after pruning to 1 MiB");
    let (by_size, _) = anchored(&db);
    assert!(by_size > anchor, "{by_size} <= {anchor}");
    // The newest statements are the ones kept.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM statements WHERE text LIKE 'SELECT 1199 AS n%'"
        ),
        1
    );
    assert!(
        count(
            &db,
            "SELECT count(*) FROM statements WHERE text LIKE 'SELECT 0 AS n,%'"
        ) == 0,
        "the oldest statement survived size pruning"
    );
    let r = query(
        &db,
        "SELECT json_extract(body, '$.max_bytes') FROM audit_log WHERE kind = 'retention'",
    );
    assert_eq!(r[0][0], 1 << 20, "{r:?}");
}
