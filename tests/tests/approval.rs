//! Just-in-time human approval of high-risk statements (issue 6), end to end: a real
//! PostgreSQL 15, the real gateway with approval rules, real clients (psql on libpq, psycopg 3,
//! tokio-postgres) in a managed cgroup whose connect() to the database is captured, decisions
//! through the real `agentgate approvals` CLI (local admin socket) and the HTTP admin API with
//! approver JWTs, a loopback webhook receiver. Root required.
//!
//! The contract (see the approval interface spec): a statement an approval rule matches is held
//! (mode `hold`: a NOTICE with the request id at once, the outcome once decided) or refused at
//! once with the id (mode `deny_and_retry`: once approved, the identical statement from the same
//! identity runs once). Approved → the statement runs; denied → 42501 with the reason; timeout →
//! 42501 `expired`; disconnect → `cancelled`; gateway restart → held requests `cancelled`.
//!
//! Ports: PostgreSQL 16980–16999, gateway listener 17980–17999, HTTP admin API on 127.0.0.7 at
//! the listener's port; webhook receivers on an ephemeral 127.0.0.1 port. Tests 10–19 (ports
//! 16990–16999 / 17990–17999) are the regressions of the attacker review: statements whose text
//! or values cannot be shown, the retry key, the database, patterns, the per-identity cap, a
//! policy change while held, backlog behind a held statement, refusals that say nothing,
//! idleness while held and the `forwarded` trail event.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use agentgate_tests::{bg::Bg, pg::*, wire::*, *};
use serde_json::{json, Value};

/// A generous wait for anything that should happen "at once" or after a short delay.
const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Clients in the background
// ---------------------------------------------------------------------------------------------

/// Waits for psql's NOTICE that its statement is held; returns the line.
fn psql_notice(c: &mut Bg) -> String {
    c.wait_line(WAIT, |err, l| err && l.starts_with("NOTICE:"))
}

/// An interactive psycopg 3 session (`fixtures/pg_session.py`) in `cg`: psycopg sends a statement
/// without parameters as a simple Query, one with parameters with the extended protocol.
struct PySession(Bg);

impl PySession {
    fn open(conn: &str, cg: &Cgroup) -> Self {
        let mut s = Self(Bg::spawn("pg_session.py", pg_session_command(conn), cg));
        let v = s.next_json(WAIT);
        assert_eq!(v["connected"], true, "pg_session.py: {v}");
        s
    }

    /// The next JSON object the session printed.
    fn next_json(&mut self, timeout: Duration) -> Value {
        let line = self
            .0
            .wait_line(timeout, |err, l| !err && l.starts_with('{'));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("pg_session.py printed {line}: {e}"))
    }

    fn send(&mut self, sql: &str) {
        self.0.send_line(&json!(sql).to_string());
    }

    /// The next thing the session reports must be a notice (the statement is held): returns it.
    fn notice(&mut self) -> Value {
        let v = self.next_json(WAIT);
        assert!(
            v["notice"].is_object(),
            "expected a notice (statement held), got {v}"
        );
        v["notice"].clone()
    }

    /// The outcome (`{"ok": ...}` or `{"error": ...}`) of the statement sent last; notices before
    /// it are skipped.
    fn outcome(&mut self) -> Value {
        loop {
            let v = self.next_json(WAIT);
            if v.get("ok").is_some() || v.get("error").is_some() {
                return v;
            }
            assert!(
                v["notice"].is_object(),
                "unexpected from pg_session.py: {v}"
            );
        }
    }

    fn run(&mut self, sql: &str) -> Value {
        self.send(sql);
        self.outcome()
    }

    /// Runs `[sql, [params]]` (psycopg `%s` placeholders: the extended query protocol).
    fn run_json(&mut self, statement: &Value) -> Value {
        self.0.send_line(&statement.to_string());
        self.outcome()
    }

    /// Runs `sql` and expects rows; returns them.
    fn rows(&mut self, sql: &str) -> Value {
        let v = self.run(sql);
        assert!(v["ok"].is_array(), "{sql}: {v}");
        v["ok"].clone()
    }

    /// True if an outcome has already been reported for the statement sent last (looks at what
    /// has arrived, does not wait).
    fn has_outcome(&mut self) -> bool {
        self.0
            .unread()
            .iter()
            .any(|(_, err, l)| !err && (l.starts_with("{\"ok\"") || l.starts_with("{\"error\"")))
    }
}

/// `pg-agent rows` (tokio-postgres: prepare, then execute) with `sql` in `cg`; returns the
/// statement's result (`{"columns", "rows"}` or `{"error"}`).
fn tokio_postgres_run(conn: &str, cg: &Cgroup, sql: &str) -> Value {
    let spec = json!([{"sql": sql, "params": []}]).to_string();
    let mut c = Bg::spawn(
        "pg-agent",
        {
            let mut cmd = Command::new(pg_agent_bin());
            cmd.args(["rows", conn, &spec]);
            cmd
        },
        cg,
    );
    c.wait_exit(WAIT);
    let out = c.stdout();
    let v: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("pg-agent printed {out}: {e}\n{}", c.text()));
    v["results"][0].clone()
}

// ---------------------------------------------------------------------------------------------
// Request ids, the CLI, the HTTP admin API
// ---------------------------------------------------------------------------------------------

/// Every distinct request id (`ar-` + 12 lowercase hex digits) in `text`, in order.
fn ids_in(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while let Some(k) = text[i..].find("ar-") {
        let start = i + k;
        i = start + 3;
        let before_ok = start == 0 || !b[start - 1].is_ascii_alphanumeric();
        let hex = &b[start + 3..];
        let digits = hex
            .iter()
            .take_while(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
            .count();
        let after_ok = hex.get(12).is_none_or(|c| !c.is_ascii_alphanumeric());
        if before_ok && digits == 12 && after_ok {
            let id = text[start..start + 15].to_string();
            if !out.contains(&id) {
                out.push(id);
            }
        }
    }
    out
}

/// The one request id in `text`.
fn one_id(text: &str) -> String {
    let ids = ids_in(text);
    assert_eq!(
        ids.len(),
        1,
        "expected one request id (ar-<12 hex>) in: {text}"
    );
    ids[0].clone()
}

/// `agentgate approvals <args> --admin-socket <the gateway's socket>`.
fn approvals(gw: &Gateway, args: &[&str]) -> Output {
    Command::new(agentgate_bin())
        .arg("approvals")
        .args(args)
        .arg("--admin-socket")
        .arg(gw.admin_socket())
        .stdin(Stdio::null())
        .output()
        .expect("run agentgate approvals")
}

/// Like [`approvals`], which must succeed; returns stdout.
fn approvals_ok(gw: &Gateway, args: &[&str]) -> String {
    let out = approvals(gw, args);
    assert!(
        out.status.success(),
        "agentgate approvals {args:?} failed ({}): {}",
        out.status,
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `approvals list --json [--all]`: the requests.
fn list(gw: &Gateway, all: bool) -> Vec<Value> {
    let mut args = vec!["list", "--json"];
    if all {
        args.push("--all");
    }
    let out = approvals_ok(gw, &args);
    let v: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("approvals list --json printed {out}: {e}"));
    v["requests"]
        .as_array()
        .unwrap_or_else(|| panic!("approvals list --json: no requests array: {v}"))
        .clone()
}

/// The request `id` from `list --all --json`; panics if it is not there.
fn request(gw: &Gateway, id: &str) -> Value {
    let all = list(gw, true);
    all.iter()
        .find(|r| r["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("request {id} not listed: {all:?}"))
}

/// Polls `list --all --json` until request `id` satisfies `pred`; returns it.
fn wait_request(gw: &Gateway, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = list(gw, true).into_iter().find(|r| r["id"] == id);
        if let Some(r) = &r {
            if pred(r) {
                return r.clone();
            }
        }
        if Instant::now() > deadline {
            panic!("request {id}: not {what} within {WAIT:?}; last seen: {r:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `list --json` (pending only) until a request of `subject` is pending; returns it.
fn wait_pending_of(gw: &Gateway, subject: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(r) = list(gw, false)
            .into_iter()
            .find(|r| r["subject"] == subject)
        {
            return r;
        }
        if Instant::now() > deadline {
            panic!(
                "no pending request of {subject} within {WAIT:?}: {:?}",
                list(gw, true)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An HTTP/1.1 request to the admin API (`Connection: close`); returns (status, JSON body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect to the HTTP admin API at {addr}: {e}"));
    s.set_read_timeout(Some(WAIT)).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req += "Content-Type: application/json\r\n";
    }
    if let Some(t) = bearer {
        req += &format!("Authorization: Bearer {t}\r\n");
    }
    req += "\r\n";
    req += &body;
    s.write_all(req.as_bytes()).expect("send HTTP request");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let (status, headers, body) = parse_http(&raw).unwrap_or_else(|| {
        panic!(
            "{method} {path}: bad HTTP answer {:?}",
            String::from_utf8_lossy(&raw)
        )
    });
    let status: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: status line {status:?}"));
    let _ = headers;
    let text = String::from_utf8_lossy(&body).to_string();
    let v = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, v)
}

/// Splits an HTTP message into (first line, lower-cased headers, body); de-chunks the body.
/// None while the message is incomplete.
fn parse_http(raw: &[u8]) -> Option<(String, HashMap<String, String>, Vec<u8>)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let mut lines = head.split("\r\n");
    let first = lines.next()?.to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        let mut body = Vec::new();
        let mut p = 0;
        loop {
            let nl = rest[p..].windows(2).position(|w| w == b"\r\n")? + p;
            let size_text = String::from_utf8_lossy(&rest[p..nl]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            p = nl + 2;
            if size == 0 {
                return Some((first, headers, body));
            }
            if rest.len() < p + size + 2 {
                return None;
            }
            body.extend_from_slice(&rest[p..p + size]);
            p += size + 2;
        }
    }
    match headers
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(n) if rest.len() < n => None,
        Some(n) => Some((first, headers, rest[..n].to_vec())),
        None => Some((first, headers, rest.to_vec())),
    }
}

/// A token of the test identity provider for an approver in `groups`, valid ten minutes.
fn approver_jwt(sub: &str, groups: &[&str]) -> String {
    mint(sub, groups, now(), now() + 600)
}

/// The `error` reason code of an admin API error answer.
fn reason_of(v: &Value) -> &str {
    v["reason"].as_str().unwrap_or("")
}

// ---------------------------------------------------------------------------------------------
// A loopback webhook receiver
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Delivery {
    path: String,
    content_type: String,
    body: Value,
    /// The status this receiver answered with.
    answered: u16,
}

/// Accepts POSTs on 127.0.0.1 (ephemeral port), records them and answers with
/// `answer(path, how many POSTs to that path came before)`.
struct HookServer {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Delivery>>>,
    stop: Arc<AtomicBool>,
}

impl HookServer {
    fn start(answer: impl Fn(&str, usize) -> u16 + Send + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind webhook receiver");
        let addr = listener.local_addr().unwrap();
        let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (g, st) = (got.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let mut raw = Vec::new();
                let mut buf = [0u8; 8192];
                let parsed = loop {
                    if let Some(p) = parse_http(&raw) {
                        break Some(p);
                    }
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break parse_http(&raw),
                        Ok(n) => raw.extend_from_slice(&buf[..n]),
                    }
                };
                let Some((first, headers, body)) = parsed else {
                    continue;
                };
                let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut got = g.lock().unwrap();
                let before = got.iter().filter(|d| d.path == path).count();
                let status = answer(&path, before);
                got.push(Delivery {
                    path,
                    content_type: headers.get("content-type").cloned().unwrap_or_default(),
                    body: serde_json::from_slice(&body).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&body).to_string())
                    }),
                    answered: status,
                });
                drop(got);
                let _ = conn.write_all(
                    format!(
                        "HTTP/1.1 {status} Status\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                    .as_bytes(),
                );
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
        });
        Self { addr, got, stop }
    }

    fn deliveries(&self, path: &str) -> Vec<Delivery> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `path` has POSTs satisfying `enough`; returns them.
    fn wait(&self, path: &str, what: &str, enough: impl Fn(&[Delivery]) -> bool) -> Vec<Delivery> {
        let deadline = Instant::now() + WAIT;
        loop {
            let d = self.deliveries(path);
            if enough(&d) {
                return d;
            }
            if Instant::now() > deadline {
                panic!("webhook {path}: {what} not seen within {WAIT:?}; received: {d:#?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for HookServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------------------------

const DROP_TABLE: &str = r#"{patterns: ["(?i)^drop table"]}"#;

/// Test number `n` (0–19): PostgreSQL on 16980+n, gateway listener 17980+n; (20–29):
/// PostgreSQL on 19520+n, gateway listener 19510+n.
fn ports(n: u16) -> (u16, u16) {
    assert!(n < 30);
    if n < 20 {
        (17980 + n, 16980 + n)
    } else {
        (19510 + n, 19520 + n)
    }
}

/// The HTTP admin API address of test `n`: 127.0.0.7 at the listener's port.
fn admin_http(n: u16) -> SocketAddr {
    format!("127.0.0.7:{}", 17980 + n).parse().unwrap()
}

/// [`start`] with the HTTP admin API on [`admin_http`]`(n)`, returned with the gateway.
fn start_with_http(tag: &str, n: u16, rules: String) -> (PgGateway, SocketAddr) {
    let http_addr = admin_http(n);
    let addr_arg = http_addr.to_string();
    let p = start(tag, n, rules, String::new(), &["--admin-http", &addr_arg]);
    (p, http_addr)
}

fn start(tag: &str, n: u16, rules: String, gateway_extra: String, args: &[&str]) -> PgGateway {
    require_root();
    let (listen, pg_port) = ports(n);
    PgGateway::start_with_args(
        tag,
        listen,
        pg_port,
        PgOptions::default(),
        &PgTargetOptions {
            extra_rules: rules,
            gateway_extra,
            ..Default::default()
        },
        args,
    )
}

/// Creates tables owned by the agents' upstream role (only an owner may drop), one row each.
fn create_tables(p: &PgGateway, names: &[&str]) {
    let sql: String = names
        .iter()
        .map(|t| {
            format!(
                "CREATE TABLE {t} (x int); INSERT INTO {t} VALUES (1); ALTER TABLE {t} OWNER TO {ROLE_SCRAM};\n"
            )
        })
        .collect();
    p.pg.sql_in("agentdb", &sql);
}

/// Whether table `t` exists on the server (asked directly, not through the gateway).
fn table_exists(p: &PgGateway, t: &str) -> bool {
    let v = p.pg.sql_in(
        "agentdb",
        &format!("SELECT to_regclass('public.{t}') IS NOT NULL;"),
    );
    match v.trim() {
        "t" => true,
        "f" => false,
        other => panic!("to_regclass({t}): {other}"),
    }
}

/// Rows of `table` in the record DB as JSON objects (column → value), via python's sqlite3.
fn record_rows(db: &Path, table: &str) -> Vec<Value> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys, json\n\
             c = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True)\n\
             cur = c.execute('SELECT * FROM ' + sys.argv[2])\n\
             names = [d[0] for d in cur.description]\n\
             print(json.dumps([dict(zip(names, r)) for r in cur.fetchall()], default=str))",
        )
        .arg(db)
        .arg(table)
        .output()
        .expect("read record db");
    assert!(
        out.status.success(),
        "record db table {table}: {}",
        output_text(&out)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout)
        .unwrap_or_else(|e| panic!("record db: {e}: {}", output_text(&out)))
}

/// Rows of `table` that mention request `id` in any column, waiting (the recorder writes in
/// batches) until `enough` holds.
fn wait_record(db: &Path, table: &str, id: &str, enough: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let rows: Vec<Value> = record_rows(db, table)
            .into_iter()
            .filter(|r| r.to_string().contains(id))
            .collect();
        if enough(&rows) {
            return rows;
        }
        if Instant::now() > deadline {
            panic!("record db {table}: rows for {id} not as expected within {WAIT:?}: {rows:#?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn field(row: &Value, k: &str) -> String {
    match &row[k] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

/// A temp file removed on drop.
struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Approve through the CLI: the held DROP runs.
// ---------------------------------------------------------------------------------------------

#[test]
fn held_drop_runs_once_approved_through_the_cli() {
    require_root();
    let rules = approval_rule(
        "drops-need-approval",
        "{classes: [ddl], tables: [t]}",
        "{approvers: [dba], timeout_secs: 120}",
    );
    let p = start("apr-approve", 0, rules, String::new(), &[]);
    create_tables(&p, &["t", "other"]);
    let sub = "agent-approve";
    let conn = p.agent_conninfo(&agent_jwt(sub), "disable");

    // DDL on a table the rule does not name is not held.
    let mut c = psql_bg(&conn, &p.agent, &["DROP TABLE other"]);
    let st = c.wait_exit(WAIT);
    assert!(st.success(), "DROP TABLE other: {}", c.text());
    assert!(!c.stderr().contains("NOTICE"), "{}", c.text());
    assert!(!table_exists(&p, "other"));
    assert!(list(&p.gw, true).is_empty(), "{:?}", list(&p.gw, true));

    // The DROP of t is held: the NOTICE with the request id comes at once, psql keeps waiting.
    let mut c = psql_bg(&conn, &p.agent, &["DROP TABLE t"]);
    let notice = psql_notice(&mut c);
    assert!(notice.contains("approval required"), "{notice}");
    let id = one_id(&notice);
    assert!(
        c.running(),
        "psql ended while its statement is held: {}",
        c.text()
    );
    assert!(table_exists(&p, "t"), "the held DROP ran before approval");

    // Pending, with who asks for what.
    let pending = list(&p.gw, false);
    assert_eq!(pending.len(), 1, "{pending:?}");
    let r = &pending[0];
    assert_eq!(r["id"], id.as_str(), "{r}");
    assert_eq!(r["state"], "pending", "{r}");
    assert_eq!(r["issuer"], ISSUER, "{r}");
    assert_eq!(r["subject"], sub, "{r}");
    assert_eq!(r["workload"], "sql-agents", "{r}");
    assert_eq!(r["target"], "pg", "{r}");
    assert_eq!(r["protocol"], "postgres", "{r}");
    assert!(s(r, "statement").contains("DROP TABLE t"), "{r}");
    assert_eq!(r["class"], "ddl", "{r}");
    assert_eq!(r["rule"], "drops-need-approval", "{r}");
    assert_eq!(r["mode"], "hold", "{r}");
    assert_eq!(r["quorum"], 1, "{r}");
    assert_eq!(r["approvers"], json!(["dba"]), "{r}");
    assert!(r["votes"].as_array().is_some_and(|v| v.is_empty()), "{r}");
    let created = r["created_ms"].as_u64().expect("created_ms");
    assert!(
        r["expires_ms"].as_u64().expect("expires_ms") > created,
        "{r}"
    );
    // `show` gives the same request.
    let shown: Value = serde_json::from_str(&approvals_ok(&p.gw, &["show", &id, "--json"]))
        .expect("show --json is JSON");
    assert_eq!(shown["id"], id.as_str(), "{shown}");
    assert_eq!(shown["state"], "pending", "{shown}");

    // Approve: psql gets its normal result and the table is really gone.
    approvals_ok(&p.gw, &["approve", &id, "--reason", "planned cleanup"]);
    let st = c.wait_exit(WAIT);
    assert!(st.success(), "psql after approval: {}", c.text());
    assert!(c.stdout().contains("DROP TABLE"), "{}", c.text());
    assert!(!c.stderr().contains("ERROR"), "{}", c.text());
    assert!(!table_exists(&p, "t"), "approved DROP did not run");

    let r = request(&p.gw, &id);
    assert_eq!(r["state"], "approved", "{r}");
    assert!(r["decided_ms"].as_u64().unwrap_or(0) >= created, "{r}");
    let votes = r["votes"].as_array().expect("votes");
    assert_eq!(votes.len(), 1, "{r}");
    assert_eq!(votes[0]["approver"], "root", "{r}");
    assert_eq!(votes[0]["issuer"], "local", "{r}");
    assert_eq!(votes[0]["via"], "local", "{r}");
    assert_eq!(votes[0]["verdict"], "approve", "{r}");
    assert!(
        list(&p.gw, false).is_empty(),
        "decided request still pending"
    );
    // A decided request cannot be decided again.
    let again = approvals(&p.gw, &["approve", &id]);
    assert!(
        !again.status.success(),
        "second approve accepted: {}",
        output_text(&again)
    );
    assert!(!again.stderr.is_empty(), "refusal without a message");

    // The events and the audit store have the request and the decision, with the approver.
    p.gw.wait_for(
        WAIT,
        |e| e["event"] == "approval_requested" && e.to_string().contains(&id),
        0,
    );
    let decided = p.gw.wait_for(
        WAIT,
        |e| e["event"] == "approval_decided" && e.to_string().contains(&id),
        0,
    );
    assert!(decided.to_string().contains("approved"), "{decided}");
    let db = p.gw.record_db();
    let events = wait_record(&db, "approval_events", &id, |rows| {
        rows.iter().any(|r| field(r, "event").contains("request"))
            && rows.iter().any(|r| !field(r, "event").contains("request"))
    });
    assert!(
        events
            .iter()
            .any(|r| { field(r, "event").contains("request") && field(r, "actor").contains(sub) }),
        "no request event naming the agent {sub}: {events:#?}"
    );
    assert!(
        events.iter().any(|r| {
            !field(r, "event").contains("request")
                && field(r, "actor").contains("root")
                && r.to_string().contains("approved")
        }),
        "no decision event naming the approver root: {events:#?}"
    );
    let stored = wait_record(&db, "approval_requests", &id, |rows| {
        rows.iter().any(|r| r.to_string().contains("approved"))
    });
    // The statement's own record points at the approval it ran under.
    let ran = wait_record(&db, "statements", &id, |rows| !rows.is_empty());
    assert!(
        ran.iter().all(|r| field(r, "text") == "DROP TABLE t"),
        "{ran:#?}"
    );
    assert_eq!(stored.len(), 1, "{stored:#?}");
}

// ---------------------------------------------------------------------------------------------
// 2. Deny with a reason through the CLI.
// ---------------------------------------------------------------------------------------------

#[test]
fn denied_drop_gets_42501_with_the_reason() {
    require_root();
    let rules = approval_rule(
        "drops-need-approval",
        DROP_TABLE,
        "{approvers: [dba], timeout_secs: 120}",
    );
    let p = start("apr-deny", 1, rules, String::new(), &[]);
    create_tables(&p, &["t"]);
    let sub = "agent-deny";
    let mut a = PySession::open(&p.agent_conninfo(&agent_jwt(sub), "disable"), &p.agent);
    assert_eq!(a.rows("SELECT 1"), json!([["1"]]));

    a.send("DROP TABLE t");
    let notice = a.notice();
    let msg = s(&notice, "message").to_string();
    assert!(msg.contains("approval required"), "{notice}");
    let id = one_id(&msg);
    assert!(
        !a.has_outcome(),
        "the held statement already has an outcome"
    );
    let r = wait_pending_of(&p.gw, sub);
    assert_eq!(r["id"], id.as_str(), "{r}");

    // deny needs a reason.
    let no_reason = approvals(&p.gw, &["deny", &id]);
    assert!(
        !no_reason.status.success(),
        "deny without --reason accepted: {}",
        output_text(&no_reason)
    );
    assert_eq!(request(&p.gw, &id)["state"], "pending");

    approvals_ok(&p.gw, &["deny", &id, "--reason", "not today"]);
    let v = a.outcome();
    let e = &v["error"];
    assert_eq!(e["sqlstate"], "42501", "{v}");
    let m = s(e, "message");
    assert!(
        m.contains(&id) && m.contains("denied by") && m.contains("not today"),
        "{v}"
    );
    assert!(table_exists(&p, "t"), "denied DROP ran");
    // The session goes on.
    assert_eq!(a.rows("SELECT 2"), json!([["2"]]));

    let r = request(&p.gw, &id);
    assert_eq!(r["state"], "denied", "{r}");
    assert_eq!(r["reason"], "not today", "{r}");
    let votes = r["votes"].as_array().expect("votes");
    assert_eq!(votes.len(), 1, "{r}");
    assert_eq!(votes[0]["verdict"], "deny", "{r}");
    assert_eq!(votes[0]["approver"], "root", "{r}");

    // Other spacing (and a comment) is the same statement to the server: held all the same.
    a.send("DROP  TABLE /* spaced */ t");
    let v = a.next_json(WAIT);
    assert!(
        v["notice"].is_object(),
        "`DROP  TABLE /* spaced */ t` was not held by the pattern rule `(?i)^drop table`: {v}; \
         table t still exists: {}",
        table_exists(&p, "t")
    );
    let id2 = one_id(s(&v["notice"], "message"));
    assert_ne!(id2, id);
    approvals_ok(&p.gw, &["deny", &id2, "--reason", "still not today"]);
    let v = a.outcome();
    assert_eq!(v["error"]["sqlstate"], "42501", "{v}");
    assert!(table_exists(&p, "t"), "denied DROP ran");
}

// ---------------------------------------------------------------------------------------------
// 3. Nobody decides: the request expires (tokio-postgres, prepare + execute).
// ---------------------------------------------------------------------------------------------

#[test]
fn undecided_request_expires() {
    require_root();
    let rules = approval_rule(
        "drops-need-approval",
        DROP_TABLE,
        "{approvers: [dba], timeout_secs: 2}",
    );
    let p = start("apr-timeout", 2, rules, String::new(), &[]);
    create_tables(&p, &["t"]);
    let sub = "agent-timeout";
    let conn = p.agent_conninfo(&agent_jwt(sub), "disable");

    let v = tokio_postgres_run(&conn, &p.agent, "DROP TABLE t");
    let e = &v["error"];
    assert_eq!(e["sqlstate"], "42501", "{v}");
    let m = s(e, "message");
    assert!(m.contains("expired"), "{v}");
    let id = one_id(m);
    let r = request(&p.gw, &id);
    assert_eq!(r["state"], "expired", "{r}");
    assert_eq!(r["subject"], sub, "{r}");
    assert!(r["votes"].as_array().is_some_and(|v| v.is_empty()), "{r}");
    assert!(table_exists(&p, "t"), "expired DROP ran");
    // Too late to approve.
    let late = approvals(&p.gw, &["approve", &id]);
    assert!(
        !late.status.success(),
        "approve after expiry accepted: {}",
        output_text(&late)
    );
    assert!(table_exists(&p, "t"));
}

// ---------------------------------------------------------------------------------------------
// 4. Quorum of two over the HTTP admin API; self-approval refused.
// ---------------------------------------------------------------------------------------------

#[test]
fn quorum_of_two_over_http_without_self_approval() {
    require_root();
    let rules = approval_rule(
        "drops-need-two",
        DROP_TABLE,
        "{approvers: [dba], quorum: 2, timeout_secs: 120}",
    );
    let (p, http_addr) = start_with_http("apr-quorum", 3, rules);
    create_tables(&p, &["t"]);
    let sub = "agent-quorum";
    let mut a = PySession::open(&p.agent_conninfo(&agent_jwt(sub), "disable"), &p.agent);
    a.send("DROP TABLE t");
    let id = one_id(s(&a.notice(), "message"));
    let base = format!("/v1/approvals/{id}");
    let (alice, bob, carol) = (
        approver_jwt("alice", &["dba"]),
        approver_jwt("bob", &["dba", "ops"]),
        approver_jwt("carol", &["dba"]),
    );

    // An approver sees it; someone outside the approver groups does not, and may not vote.
    let (st, v) = http(http_addr, "GET", "/v1/approvals", Some(&alice), None);
    assert_eq!(st, 200, "{v}");
    let listed = v["requests"].as_array().expect("requests");
    assert!(listed.iter().any(|r| r["id"] == id.as_str()), "{v}");
    let eve = approver_jwt("eve", &["agents"]);
    let (st, v) = http(http_addr, "GET", "/v1/approvals", Some(&eve), None);
    assert_eq!(st, 200, "{v}");
    assert!(
        !v["requests"]
            .as_array()
            .expect("requests")
            .iter()
            .any(|r| r["id"] == id.as_str()),
        "a non-approver sees the request: {v}"
    );
    let (st, v) = http(
        http_addr,
        "POST",
        &format!("{base}/approve"),
        Some(&eve),
        None,
    );
    assert_eq!((st, reason_of(&v)), (404, "unknown_request"), "{v}");

    // The requester itself (same issuer and subject as the agent), even in group dba: refused.
    let me = approver_jwt(sub, &["dba", "agents"]);
    let (st, v) = http(
        http_addr,
        "POST",
        &format!("{base}/approve"),
        Some(&me),
        None,
    );
    assert_eq!((st, reason_of(&v)), (403, "self_approval"), "{v}");

    // One approval: still pending. The same approver again does not count twice.
    let (st, v) = http(
        http_addr,
        "POST",
        &format!("{base}/approve"),
        Some(&alice),
        None,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["state"], "pending", "{v}");
    let votes = v["votes"].as_array().expect("votes");
    assert_eq!(votes.len(), 1, "{v}");
    assert_eq!(votes[0]["approver"], "alice", "{v}");
    assert_eq!(votes[0]["issuer"], ISSUER, "{v}");
    assert_eq!(votes[0]["via"], "http", "{v}");
    assert_eq!(votes[0]["verdict"], "approve", "{v}");
    let (st, v) = http(
        http_addr,
        "POST",
        &format!("{base}/approve"),
        Some(&alice),
        None,
    );
    assert_eq!((st, reason_of(&v)), (409, "already_counted"), "{v}");
    let (st, v) = http(http_addr, "GET", &base, Some(&alice), None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["state"], "pending", "{v}");
    assert_eq!(v["votes"].as_array().map(Vec::len), Some(1), "{v}");
    assert!(
        !a.has_outcome(),
        "statement released after one of two approvals"
    );
    assert!(table_exists(&p, "t"), "DROP ran after one of two approvals");

    // A second, distinct approver: approved, the statement runs.
    let (st, v) = http(
        http_addr,
        "POST",
        &format!("{base}/approve"),
        Some(&bob),
        Some(&json!({"reason": "lgtm"})),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["state"], "approved", "{v}");
    assert_eq!(v["votes"].as_array().map(Vec::len), Some(2), "{v}");
    let out = a.outcome();
    assert!(out.get("ok").is_some(), "approved DROP failed: {out}");
    assert!(!table_exists(&p, "t"), "approved DROP did not run");
    assert_eq!(a.rows("SELECT 3"), json!([["3"]]));

    // Decided: no more votes; unknown ids are 404.
    let (st, v) = http(
        http_addr,
        "POST",
        &format!("{base}/approve"),
        Some(&carol),
        None,
    );
    assert_eq!((st, reason_of(&v)), (409, "not_pending"), "{v}");
    let (st, v) = http(
        http_addr,
        "GET",
        "/v1/approvals/ar-000000000000",
        Some(&alice),
        None,
    );
    assert_eq!(st, 404, "{v}");
    let (st, v) = http(
        http_addr,
        "POST",
        "/v1/approvals/ar-000000000000/approve",
        Some(&alice),
        None,
    );
    assert_eq!((st, reason_of(&v)), (404, "unknown_request"), "{v}");
    let r = request(&p.gw, &id);
    assert_eq!(r["state"], "approved", "{r}");
    let approvers: Vec<&str> = r["votes"]
        .as_array()
        .expect("votes")
        .iter()
        .filter_map(|v| v["approver"].as_str())
        .collect();
    assert_eq!(approvers, vec!["alice", "bob"], "{r}");
}

// ---------------------------------------------------------------------------------------------
// 5. Forged and expired approver tokens decide nothing.
// ---------------------------------------------------------------------------------------------

#[test]
fn forged_and_expired_approver_tokens_are_refused() {
    require_root();
    let rules = approval_rule(
        "drops-need-approval",
        DROP_TABLE,
        "{approvers: [dba], timeout_secs: 120}",
    );
    let (p, http_addr) = start_with_http("apr-forged", 4, rules);
    create_tables(&p, &["t"]);
    let conn = p.agent_conninfo(&agent_jwt("agent-forged"), "disable");

    // Another RSA key, same kid, issuer, audience and claims: a forgery.
    let key = TempPath(std::env::temp_dir().join(format!("{}-forger.pem", p.name)));
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key.0)
        .output()
        .expect("run openssl genpkey");
    assert!(
        out.status.success(),
        "openssl genpkey: {}",
        output_text(&out)
    );
    let forger_key = std::fs::read(&key.0).expect("forger key");
    let forged = mint_with_key(&forger_key, "mallory", &["dba"], now(), now() + 600);
    let expired = mint("mallory", &["dba"], now() - 1200, now() - 600);

    let mut c = psql_bg(&conn, &p.agent, &["DROP TABLE t"]);
    let id = one_id(&psql_notice(&mut c));
    let base = format!("/v1/approvals/{id}");

    for (what, token, code) in [
        ("no token", None, None),
        ("forged", Some(forged.as_str()), Some("bad_signature")),
        ("expired", Some(expired.as_str()), Some("expired")),
    ] {
        let (st, v) = http(http_addr, "POST", &format!("{base}/approve"), token, None);
        assert_eq!(st, 401, "{what} approve: {v}");
        if let Some(code) = code {
            assert_eq!(reason_of(&v), code, "{what} approve: {v}");
        }
        let (st, v) = http(
            http_addr,
            "POST",
            &format!("{base}/deny"),
            token,
            Some(&json!({"reason": "forged deny"})),
        );
        assert_eq!(st, 401, "{what} deny: {v}");
        let (st, v) = http(http_addr, "GET", "/v1/approvals", token, None);
        assert_eq!(st, 401, "{what} list: {v}");
        assert!(
            v.get("requests").is_none(),
            "{what} list leaked requests: {v}"
        );
    }
    // Nothing was decided, nothing counted, the statement still waits.
    let r = request(&p.gw, &id);
    assert_eq!(r["state"], "pending", "{r}");
    assert!(r["votes"].as_array().is_some_and(|v| v.is_empty()), "{r}");
    assert!(c.running(), "psql ended: {}", c.text());
    assert!(table_exists(&p, "t"));

    // A valid approver: deny needs a reason (400), then denies.
    let dave = approver_jwt("dave", &["dba"]);
    let (st, v) = http(
        http_addr,
        "POST",
        &format!("{base}/deny"),
        Some(&dave),
        None,
    );
    assert_eq!((st, reason_of(&v)), (400, "bad_request"), "{v}");
    assert_eq!(request(&p.gw, &id)["state"], "pending");
    let (st, v) = http(
        http_addr,
        "POST",
        &format!("{base}/deny"),
        Some(&dave),
        Some(&json!({"reason": "forgeries seen"})),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["state"], "denied", "{v}");
    let st = c.wait_exit(WAIT);
    assert!(!st.success(), "psql succeeded after a denial: {}", c.text());
    let err = c.stderr();
    assert!(
        err.contains("ERROR:  42501") && err.contains(&id) && err.contains("forgeries seen"),
        "{err}"
    );
    assert!(table_exists(&p, "t"), "denied DROP ran");
    let r = request(&p.gw, &id);
    let votes = r["votes"].as_array().expect("votes");
    assert_eq!(votes.len(), 1, "{r}");
    assert_eq!(votes[0]["approver"], "dave", "{r}");
    assert_eq!(votes[0]["verdict"], "deny", "{r}");
}

// ---------------------------------------------------------------------------------------------
// 6. The agent disconnects while held: cancelled, never run.
// ---------------------------------------------------------------------------------------------

/// A CancelRequest (psql sends one on SIGINT) for a statement held for approval withdraws the
/// request: it is recorded as cancelled, the agent gets PostgreSQL's 57014, and no later
/// approval makes the statement run. (It used to go to the server, which had nothing to
/// cancel, and the agent kept waiting.)
#[test]
fn a_cancel_withdraws_a_held_statement() {
    require_root();
    let rules = approval_rule(
        "drops-need-approval",
        DROP_TABLE,
        "{approvers: [dba], timeout_secs: 120}",
    );
    let p = start("apr-cancel", 20, rules, String::new(), &[]);
    create_tables(&p, &["t"]);
    let conn = p.agent_conninfo(&agent_jwt("agent-cancel"), "disable");

    let mut c = psql_bg(&conn, &p.agent, &["DROP TABLE t"]);
    let id = one_id(&psql_notice(&mut c));
    assert_eq!(request(&p.gw, &id)["state"], "pending");
    // SAFETY: a plain kill(2) of the psql child this test spawned.
    assert_eq!(unsafe { libc::kill(c.pid() as i32, libc::SIGINT) }, 0);
    let err = c.wait_line(WAIT, |err, l| err && l.starts_with("ERROR:"));
    assert!(
        err.contains("57014") && err.contains(&format!("request {id} withdrawn")),
        "{err}"
    );
    c.wait_exit(WAIT);
    let r = wait_request(&p.gw, &id, "cancelled", |r| r["state"] == "cancelled");
    assert!(reason_of(&r).contains("CancelRequest"), "{r}");
    let late = approvals(&p.gw, &["approve", &id]);
    assert!(
        !late.status.success(),
        "approve of a withdrawn request accepted: {}",
        output_text(&late)
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(table_exists(&p, "t"), "the cancelled DROP ran");
}

/// `max_rows`: a write is tried first. Within the limit it stands (no one is asked); beyond it
/// it is rolled back and put to approvers with the real count, also a write the classifier
/// calls bounded (`WHERE x IN (SELECT x FROM big)` is every row); approved, it runs for real;
/// denied, nothing of it remains. Inside the agent's own transaction the trial is a savepoint
/// and the transaction goes on.
#[test]
fn max_rows_tries_writes_and_asks_for_the_ones_that_touch_too_many() {
    require_root();
    let rules = approval_rule(
        "big-writes",
        "{classes: [write, write_unbounded], tables: [big]}",
        "{approvers: [dba], timeout_secs: 120, max_rows: 3}",
    );
    let p = start("apr-maxrows", 21, rules, String::new(), &[]);
    p.pg.sql_in(
        "agentdb",
        &format!(
            "CREATE TABLE big (x int); INSERT INTO big SELECT generate_series(1, 10); \
             ALTER TABLE big OWNER TO {ROLE_SCRAM};"
        ),
    );
    let sub = "agent-maxrows";
    let conn = p.agent_conninfo(&agent_jwt(sub), "disable");

    // Within the limit: runs at once, its answer as usual, nobody asked.
    let mut c = psql_bg(&conn, &p.agent, &["UPDATE big SET x = x WHERE x <= 2"]);
    assert!(c.wait_exit(WAIT).success(), "{}", c.text());
    assert!(c.stdout().contains("UPDATE 2"), "{}", c.text());
    assert!(!c.stderr().contains("NOTICE"), "{}", c.text());
    assert!(list(&p.gw, true).is_empty(), "{:?}", list(&p.gw, true));

    // Inside the agent's transaction: a savepoint, and the transaction goes on.
    let mut c = psql_bg(
        &conn,
        &p.agent,
        &[
            "BEGIN",
            "DELETE FROM big WHERE x = 1",
            "SELECT count(*) FROM big",
            "ROLLBACK",
        ],
    );
    assert!(c.wait_exit(WAIT).success(), "{}", c.text());
    assert!(
        c.stdout().contains("DELETE 1") && c.stdout().contains("\n9\n"),
        "{}",
        c.text()
    );
    assert_eq!(table_rows(&p, "big"), 10);

    // Beyond the limit, though "bounded": tried, rolled back, held with the real count.
    let mut c = psql_bg(
        &conn,
        &p.agent,
        &["DELETE FROM big WHERE x IN (SELECT x FROM big)"],
    );
    let id = one_id(&psql_notice(&mut c));
    let r = request(&p.gw, &id);
    assert_eq!(r["trial_rows"], 10, "{r}");
    assert_eq!(table_rows(&p, "big"), 10, "the trial was not rolled back");
    let shown = approvals_ok(&p.gw, &["show", &id]);
    assert!(shown.contains("touched 10 rows"), "{shown}");
    approvals_ok(&p.gw, &["deny", &id, "--reason", "too many"]);
    let err = c.wait_line(WAIT, |err, l| err && l.starts_with("ERROR:"));
    assert!(err.contains("42501") && err.contains("too many"), "{err}");
    c.wait_exit(WAIT);
    assert_eq!(
        table_rows(&p, "big"),
        10,
        "a denied write left rows changed"
    );

    // Approved: runs for real.
    let mut c = psql_bg(&conn, &p.agent, &["DELETE FROM big WHERE x > 5"]);
    let id = one_id(&psql_notice(&mut c));
    assert_eq!(request(&p.gw, &id)["trial_rows"], 5);
    approvals_ok(&p.gw, &["approve", &id]);
    assert!(c.wait_exit(WAIT).success(), "{}", c.text());
    assert!(c.stdout().contains("DELETE 5"), "{}", c.text());
    assert_eq!(table_rows(&p, "big"), 5);

    // The record: the rolled-back trials with their counts, and the runs.
    std::thread::sleep(Duration::from_millis(700));
    let rows = agentgate_tests::record_query(
        &p.gw.record_db(),
        &format!(
            "SELECT st.text, st.rows, st.error FROM statements st JOIN sessions s \
             ON s.id = st.session WHERE s.subject = '{sub}' AND st.text LIKE 'DELETE%' ORDER BY st.seq"
        ),
    );
    let rolled_back: Vec<&Vec<Value>> = rows
        .iter()
        .filter(|r| {
            r[2].as_str()
                .is_some_and(|e| e.starts_with("rolled back by the gateway"))
        })
        .collect();
    assert_eq!(rolled_back.len(), 2, "{rows:?}");
    assert!(
        rows.iter()
            .any(|r| r[0] == "DELETE FROM big WHERE x > 5" && r[1] == 5 && r[2].is_null()),
        "{rows:?}"
    );
}

#[test]
fn disconnect_while_held_cancels_the_request() {
    require_root();
    let rules = approval_rule(
        "drops-need-approval",
        DROP_TABLE,
        "{approvers: [dba], timeout_secs: 120}",
    );
    let p = start("apr-disconnect", 5, rules, String::new(), &[]);
    create_tables(&p, &["t"]);
    let conn = p.agent_conninfo(&agent_jwt("agent-disconnect"), "disable");

    let mut c = psql_bg(&conn, &p.agent, &["DROP TABLE t"]);
    let id = one_id(&psql_notice(&mut c));
    assert_eq!(request(&p.gw, &id)["state"], "pending");
    c.kill();

    let r = wait_request(&p.gw, &id, "cancelled", |r| r["state"] == "cancelled");
    assert!(r["votes"].as_array().is_some_and(|v| v.is_empty()), "{r}");
    assert!(
        p.wait_no_upstream(WAIT),
        "the held session's upstream connection was left open"
    );
    // Too late to approve; the statement never ran.
    let late = approvals(&p.gw, &["approve", &id]);
    assert!(
        !late.status.success(),
        "approve of a cancelled request accepted: {}",
        output_text(&late)
    );
    assert_eq!(request(&p.gw, &id)["state"], "cancelled");
    assert!(
        table_exists(&p, "t"),
        "the DROP of a disconnected agent ran"
    );

    // The same with the extended protocol: tokio-postgres sends Bind, Execute and Sync in one
    // write, so a Sync waits behind the held Execute; the agent leaving must still be seen.
    create_tables(&p, &["t2"]);
    let ext = p.agent_conninfo(&agent_jwt("agent-disconnect-ext"), "disable");
    let spec = json!([{"sql": "DROP TABLE t2", "params": []}]).to_string();
    let mut c = Bg::spawn(
        "pg-agent",
        {
            let mut cmd = Command::new(pg_agent_bin());
            cmd.args(["rows", &ext, &spec]);
            cmd
        },
        &p.agent,
    );
    let pending = wait_pending_of(&p.gw, "agent-disconnect-ext");
    let id = pending["id"].as_str().unwrap().to_string();
    c.kill();
    let r = wait_request(&p.gw, &id, "cancelled", |r| r["state"] == "cancelled");
    assert!(
        reason_of(&r).contains("disconnected"),
        "cancelled for another reason: {r}"
    );
    assert!(
        table_exists(&p, "t2"),
        "the DROP of a disconnected extended-protocol agent ran"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. deny_and_retry: refused at once; once approved the identical statement runs once.
// ---------------------------------------------------------------------------------------------

#[test]
fn deny_and_retry_runs_the_approved_statement_once() {
    require_root();
    // Class and table conditions (not a text pattern): every spelling of these statements is
    // covered, so what is tested is the retry, not the rule's match.
    let rules = approval_rule(
        "changes-need-approval",
        "{classes: [ddl, write], tables: [t, u]}",
        "{approvers: [dba], timeout_secs: 120, mode: deny_and_retry, retry_window_secs: 600}",
    );
    let p = start("apr-retry", 6, rules, String::new(), &[]);
    create_tables(&p, &["t", "u"]);
    p.pg.sql_in("agentdb", "INSERT INTO u VALUES (2);");
    let sub = "agent-retry";
    let conn = p.agent_conninfo(&agent_jwt(sub), "disable");

    // First attempt (psql): 42501 at once, with the id and what to do.
    let mut c = psql_bg(&conn, &p.agent, &["DROP TABLE t"]);
    let st = c.wait_exit(WAIT);
    assert!(!st.success(), "{}", c.text());
    let err = c.stderr();
    assert!(err.contains("ERROR:  42501"), "{err}");
    assert!(
        err.contains("approval required") && err.contains("retry"),
        "{err}"
    );
    let id1 = one_id(&err);
    let r = request(&p.gw, &id1);
    assert_eq!(r["state"], "pending", "{r}");
    assert_eq!(r["mode"], "deny_and_retry", "{r}");
    assert_eq!(r["subject"], sub, "{r}");
    assert!(table_exists(&p, "t"));

    // A retry while pending, from another connection (psycopg): the same request.
    let mut a = PySession::open(&conn, &p.agent);
    let v = a.run("DROP TABLE t");
    assert_eq!(v["error"]["sqlstate"], "42501", "{v}");
    assert_eq!(one_id(s(&v["error"], "message")), id1, "{v}");
    assert_eq!(list(&p.gw, false).len(), 1, "{:?}", list(&p.gw, false));

    approvals_ok(&p.gw, &["approve", &id1]);
    assert_eq!(request(&p.gw, &id1)["state"], "approved");

    // A different statement is not covered: refused with a new request.
    let v = a.run("DROP TABLE u");
    assert_eq!(v["error"]["sqlstate"], "42501", "{v}");
    let id2 = one_id(s(&v["error"], "message"));
    assert_ne!(id2, id1, "{v}");
    assert!(table_exists(&p, "u"), "unapproved DROP ran");

    // The identical statement (other case and spacing) runs, once.
    let v = a.run("drop   table  t");
    assert!(v.get("ok").is_some(), "approved retry refused: {v}");
    assert!(!table_exists(&p, "t"), "approved retry did not run");
    let v = a.run("DROP TABLE t");
    assert_eq!(
        v["error"]["sqlstate"], "42501",
        "a second use of a one-time approval reached the server: {v}"
    );
    let id3 = one_id(s(&v["error"], "message"));
    assert!(id3 != id1 && id3 != id2, "{v}");
    assert_eq!(a.rows("SELECT 4"), json!([["4"]]));

    // With parameters (extended query protocol): the same parameters only.
    let delete = |x: i64| json!(["DELETE FROM u WHERE x = %s", [x]]);
    let v = a.run_json(&delete(1));
    assert_eq!(v["error"]["sqlstate"], "42501", "{v}");
    let id4 = one_id(s(&v["error"], "message"));
    assert!(![&id1, &id2, &id3].contains(&&id4), "{v}");
    assert_eq!(request(&p.gw, &id4)["class"], "write");
    approvals_ok(&p.gw, &["approve", &id4]);
    let v = a.run_json(&delete(2));
    assert_eq!(
        v["error"]["sqlstate"], "42501",
        "approval of x = 1 let x = 2 through: {v}"
    );
    let id5 = one_id(s(&v["error"], "message"));
    assert!(![&id1, &id2, &id3, &id4].contains(&&id5), "{v}");
    let v = a.run_json(&json!(["delete from u where x = %s", [1]]));
    assert_eq!(
        v["ok"]["rowcount"], 1,
        "approved retry with parameters: {v}"
    );
    assert_eq!(
        p.pg.sql_in("agentdb", "SELECT string_agg(x::text, ',') FROM u;"),
        "2"
    );

    let pending: Vec<String> = list(&p.gw, false)
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .collect();
    let mut expected = vec![id2.clone(), id3.clone(), id5.clone()];
    expected.sort();
    let mut got = pending.clone();
    got.sort();
    assert_eq!(got, expected, "pending after the retries");
    assert!(table_exists(&p, "u"));
}

// ---------------------------------------------------------------------------------------------
// 8. Two sessions held at once, a third keeps working.
// ---------------------------------------------------------------------------------------------

#[test]
fn two_held_sessions_and_a_third_that_keeps_working() {
    require_root();
    let rules = approval_rule(
        "drops-need-approval",
        DROP_TABLE,
        "{approvers: [dba], timeout_secs: 120}",
    );
    let p = start("apr-two", 7, rules, String::new(), &[]);
    create_tables(&p, &["a", "b"]);
    let conn = p.agent_conninfo(&agent_jwt("agent-two"), "disable");

    let mut first = PySession::open(&conn, &p.agent);
    first.send("DROP TABLE a");
    let id_a = one_id(s(&first.notice(), "message"));
    let mut second = psql_bg(&conn, &p.agent, &["DROP TABLE b"]);
    let id_b = one_id(&psql_notice(&mut second));
    assert_ne!(id_a, id_b);
    let pending = list(&p.gw, false);
    assert_eq!(pending.len(), 2, "{pending:?}");
    let sessions: Vec<&Value> = pending.iter().map(|r| &r["session"]).collect();
    assert_ne!(sessions[0], sessions[1], "{pending:?}");

    // Meanwhile a third session of the same agent works normally, reads and writes.
    let mut third = PySession::open(&conn, &p.agent);
    for i in 0..20 {
        assert_eq!(third.rows("SELECT count(*) FROM a"), json!([["1"]]));
        assert_eq!(third.rows("SELECT count(*) FROM b"), json!([["1"]]));
        let v = third.run(&format!("INSERT INTO items (id, name) VALUES ({i}, 'x')"));
        assert_eq!(v["ok"]["rowcount"], 1, "{v}");
    }
    assert!(!first.has_outcome(), "first session released undecided");
    assert!(second.running(), "second session ended: {}", second.text());

    // Each gets its own decision.
    approvals_ok(&p.gw, &["approve", &id_a]);
    approvals_ok(&p.gw, &["deny", &id_b, "--reason", "keep b"]);
    let v = first.outcome();
    assert!(v.get("ok").is_some(), "approved DROP failed: {v}");
    let st = second.wait_exit(WAIT);
    assert!(!st.success(), "denied psql succeeded: {}", second.text());
    let err = second.stderr();
    assert!(
        err.contains("ERROR:  42501") && err.contains(&id_b) && err.contains("keep b"),
        "{err}"
    );
    assert!(!err.contains(&id_a), "{err}");
    assert!(!table_exists(&p, "a"), "approved DROP did not run");
    assert!(table_exists(&p, "b"), "denied DROP ran");
    assert_eq!(first.rows("SELECT 'after'"), json!([["after"]]));
    assert_eq!(third.rows("SELECT count(*) FROM items"), json!([["20"]]));
    assert_eq!(request(&p.gw, &id_a)["state"], "approved");
    assert_eq!(request(&p.gw, &id_b)["state"], "denied");
}

// ---------------------------------------------------------------------------------------------
// 9. Webhooks: delivered to a loopback receiver, retried after a failure, Slack format.
// ---------------------------------------------------------------------------------------------

#[test]
fn webhooks_are_retried_and_never_decide() {
    require_root();
    // /hook fails the first POST, then accepts; /slack accepts.
    let hooks = HookServer::start(|path, before| {
        if path == "/hook" && before == 0 {
            500
        } else {
            200
        }
    });
    let extra = format!(
        "  approval_webhooks:\n    - url: http://{a}/hook\n      format: json\n    - url: http://{a}/slack\n      format: slack\n",
        a = hooks.addr
    );
    let rules = approval_rule(
        "drops-need-approval",
        DROP_TABLE,
        "{approvers: [dba], timeout_secs: 120}",
    );
    let p = start("apr-webhook", 8, rules, extra, &[]);
    create_tables(&p, &["t"]);
    let conn = p.agent_conninfo(&agent_jwt("agent-webhook"), "disable");

    let mut c = psql_bg(&conn, &p.agent, &["DROP TABLE t"]);
    let id = one_id(&psql_notice(&mut c));

    // JSON: the failed POST is retried; both carry the request.
    let got = hooks.wait("/hook", "two POSTs", |d| d.len() >= 2);
    assert_eq!(got[0].answered, 500);
    assert_eq!(got[1].answered, 200);
    for d in &got[..2] {
        assert!(d.content_type.starts_with("application/json"), "{d:?}");
        assert_eq!(d.body["event"], "approval_requested", "{d:?}");
        assert_eq!(d.body["request"]["id"], id.as_str(), "{d:?}");
        assert_eq!(d.body["request"]["state"], "pending", "{d:?}");
        assert!(
            s(&d.body["request"], "statement").contains("DROP TABLE t"),
            "{d:?}"
        );
    }
    // Slack: text with the id and the statement.
    let slack = hooks.wait("/slack", "a POST", |d| !d.is_empty());
    let text = s(&slack[0].body, "text");
    assert!(
        text.contains(&id) && text.contains("DROP TABLE t"),
        "{:?}",
        slack[0]
    );
    assert!(
        slack[0].content_type.starts_with("application/json"),
        "{:?}",
        slack[0]
    );

    // The events say so.
    let failed = p.gw.wait_for(
        WAIT,
        |e| e["event"] == "webhook_failed" && e["id"] == id.as_str(),
        0,
    );
    assert!(s(&failed, "url").ends_with("/hook"), "{failed}");
    assert_eq!(failed["attempt"], 1, "{failed}");
    assert_eq!(failed["status"], 500, "{failed}");
    p.gw.wait_for(
        WAIT,
        |e| {
            e["event"] == "webhook_delivered"
                && e["id"] == id.as_str()
                && s(e, "url").ends_with("/hook")
                && e["attempt"] == 2
        },
        0,
    );

    // A notification (failed or not) decides nothing.
    assert_eq!(request(&p.gw, &id)["state"], "pending");
    assert!(c.running(), "psql ended: {}", c.text());
    assert!(table_exists(&p, "t"));

    // The decision is sent too.
    approvals_ok(&p.gw, &["deny", &id, "--reason", "webhook test"]);
    let st = c.wait_exit(WAIT);
    assert!(!st.success(), "{}", c.text());
    assert!(c.stderr().contains("webhook test"), "{}", c.text());
    let got = hooks.wait("/hook", "approval_decided", |d| {
        d.iter().any(|d| d.body["event"] == "approval_decided")
    });
    let decided = got
        .iter()
        .find(|d| d.body["event"] == "approval_decided")
        .unwrap();
    assert_eq!(decided.body["request"]["id"], id.as_str(), "{decided:?}");
    assert_eq!(decided.body["request"]["state"], "denied", "{decided:?}");
    // Delivered requests are not sent again.
    let requested = got
        .iter()
        .filter(|d| d.body["event"] == "approval_requested")
        .count();
    assert_eq!(requested, 2, "{got:#?}");
    assert!(table_exists(&p, "t"));
}

// ---------------------------------------------------------------------------------------------
// 10. A gateway restart cancels held requests; deny_and_retry ones stay pending.
// ---------------------------------------------------------------------------------------------

#[test]
fn restart_cancels_held_requests() {
    require_root();
    let rules = [
        approval_rule(
            "drops-need-approval",
            DROP_TABLE,
            "{approvers: [dba], timeout_secs: 300}",
        ),
        approval_rule(
            "truncates-need-approval",
            r#"{patterns: ["(?i)^truncate"]}"#,
            "{approvers: [dba], timeout_secs: 300, mode: deny_and_retry}",
        ),
    ]
    .concat();
    let mut p = start(
        "apr-restart",
        9,
        rules,
        String::new(),
        &["--drain-secs", "1"],
    );
    create_tables(&p, &["t", "u"]);
    let conn = p.agent_conninfo(&agent_jwt("agent-restart"), "disable");

    let mut held = psql_bg(&conn, &p.agent, &["DROP TABLE t"]);
    let id_held = one_id(&psql_notice(&mut held));
    let mut c = psql_bg(&conn, &p.agent, &["TRUNCATE u"]);
    c.wait_exit(WAIT);
    let err = c.stderr();
    assert!(err.contains("ERROR:  42501"), "{err}");
    let id_retry = one_id(&err);

    // Stopped the way a service manager does (SIGTERM); the held connection goes with it.
    let status = p.gw.terminate(WAIT);
    assert!(status.is_some(), "the gateway did not exit on SIGTERM");
    let st = held.wait_exit(WAIT);
    assert!(!st.success(), "held psql succeeded: {}", held.text());
    assert!(table_exists(&p, "t"), "the held DROP ran");
    p.gw.start_again();
    let r = request(&p.gw, &id_held);
    assert_eq!(r["state"], "cancelled", "{r}");
    let reason = s(&r, "reason").to_lowercase();
    assert!(
        ["restart", "stop", "shut"]
            .iter()
            .any(|w| reason.contains(w)),
        "the reason does not say the gateway stopped: {r}"
    );
    let r = request(&p.gw, &id_retry);
    assert_eq!(r["state"], "pending", "{r}");

    // Killed (a crash, nothing cleaned up): the next start cancels the held request.
    let mut held = psql_bg(&conn, &p.agent, &["DROP TABLE t"]);
    let id_crash = one_id(&psql_notice(&mut held));
    p.gw.restart();
    let st = held.wait_exit(WAIT);
    assert!(!st.success(), "held psql succeeded: {}", held.text());
    let r = request(&p.gw, &id_crash);
    assert_eq!(r["state"], "cancelled", "{r}");
    assert!(
        s(&r, "reason").to_lowercase().contains("restart"),
        "the reason does not mention the restart: {r}"
    );
    assert!(table_exists(&p, "t"), "the held DROP ran");
    assert_eq!(
        list(&p.gw, false)
            .iter()
            .map(|r| r["id"].clone())
            .collect::<Vec<_>>(),
        vec![json!(id_retry)],
        "pending after two restarts"
    );

    // The surviving deny_and_retry request can still be approved, and the retry runs.
    approvals_ok(&p.gw, &["approve", &id_retry]);
    let mut c = psql_bg(&conn, &p.agent, &["TRUNCATE u"]);
    let st = c.wait_exit(WAIT);
    assert!(
        st.success(),
        "approved TRUNCATE after restart: {}",
        c.text()
    );
    assert_eq!(p.pg.sql_in("agentdb", "SELECT count(*) FROM u;"), "0");
    assert!(table_exists(&p, "t"));
}

// =============================================================================================
// Regressions of the attacker review (tests 10–19): each fails on the code before the fixes.
// =============================================================================================

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The conninfo of the agent for database `db` (the target names none: the agent picks).
fn agent_conninfo_in(p: &PgGateway, jwt: &str, db: &str) -> String {
    conninfo("127.0.0.1", p.pg.port, "agent", jwt, db, "disable")
}

/// `plpgsql` functions that run their argument as SQL (dynamic SQL: what the gateway shows
/// approvers is the argument).
fn create_exec_functions(p: &PgGateway, names: &[&str]) {
    let sql: String = names
        .iter()
        .map(|f| {
            format!(
                "CREATE FUNCTION {f}(q text) RETURNS void LANGUAGE plpgsql AS $$BEGIN EXECUTE q; END$$;\n"
            )
        })
        .collect();
    p.pg.sql_in("agentdb", &sql);
}

/// The `approval_events` rows of request `id` whose event is `event` (read now, not waited for).
fn trail_events(p: &PgGateway, id: &str, event: &str) -> Vec<Value> {
    record_rows(&p.gw.record_db(), "approval_events")
        .into_iter()
        .filter(|r| r.to_string().contains(id) && field(r, "event") == event)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 10. Statements whose text the gateway does not know (a statement prepared with SQL PREPARE
//     and bound over the protocol, a name the gateway was made to forget, SQL EXECUTE) are
//     refused outright: no request, nothing an approval of "" could later let through.
// ---------------------------------------------------------------------------------------------

#[test]
fn statements_whose_text_is_unknown_are_refused_without_a_request() {
    require_root();
    // `classes: [ddl]` also covers opaque statements (fail closed).
    let rules = approval_rule(
        "ddl-needs-approval",
        "{classes: [ddl]}",
        "{approvers: [dba], timeout_secs: 120, mode: deny_and_retry}",
    );
    let p = start("apr-unshown", 10, rules, String::new(), &[]);
    create_tables(&p, &["victim"]);
    let jwt = agent_jwt("agent-unshown");
    let mut w = Wire::open(&p, &jwt, "agentdb");

    // Had a request been made for a statement of unknown text (the code before the fix made
    // one, for the statement ""), approving it must still let nothing else through.
    let approve_any = |e: &Value| {
        for id in ids_in(s(e, "message")) {
            approvals_ok(&p.gw, &["approve", &id]);
        }
    };

    // Prepared with SQL PREPARE (a read: not held), bound and executed over the protocol: the
    // gateway never saw the text it runs.
    let got = w.exchange(json!([["Q", "PREPARE harmless AS SELECT 1"]]));
    no_error("PREPARE harmless", &got);
    let harmless = only_error(&w.exchange(json!([["B", "", "harmless"], ["E", ""], ["S"]])));
    assert_eq!(harmless["sqlstate"], "42501", "{harmless}");
    approve_any(&harmless);

    // The server holds `evil` = DROP TABLE victim; a Close behind a failing Parse (skipped by
    // the server, not by the gateway) makes the gateway forget the name; then `evil` is bound.
    let got = w.exchange(json!([["P", "evil", "DROP TABLE victim"], ["S"]]));
    no_error("Parse evil", &got);
    let got = w.exchange(json!([
        ["P", "broken", "SELECT FROM WHERE"],
        ["C", "S", "evil"],
        ["S"]
    ]));
    let e = only_error(&got);
    assert_eq!(e["sqlstate"], "42601", "the failing Parse: {e}");
    let got = w.exchange(json!([["B", "", "evil"], ["E", ""], ["S"]]));
    assert!(
        table_exists(&p, "victim"),
        "a DROP under a name the gateway forgot ran: {got:?}"
    );
    let evil = only_error(&got);
    assert_eq!(evil["sqlstate"], "42501", "{evil}");

    // SQL EXECUTE: the text it runs is not in the query (and may be re-prepared at will).
    let got = w.exchange(json!([["Q", "PREPARE p2 AS SELECT 1"]]));
    no_error("PREPARE p2", &got);
    let execute = only_error(&w.exchange(json!([["Q", "EXECUTE p2"]])));
    assert_eq!(execute["sqlstate"], "42501", "{execute}");
    approve_any(&execute);
    for sql in ["DEALLOCATE p2", "PREPARE p2 AS DELETE FROM victim"] {
        let got = w.exchange(json!([["Q", sql]]));
        no_error(sql, &got);
    }
    let got = w.exchange(json!([["Q", "EXECUTE p2"]]));
    assert_eq!(
        p.pg.sql_in("agentdb", "SELECT count(*) FROM victim;"),
        "1",
        "EXECUTE of a re-prepared DELETE ran: {got:?}"
    );
    let execute2 = only_error(&got);
    assert_eq!(execute2["sqlstate"], "42501", "{execute2}");

    // Each refused outright, saying why; none put to approvers.
    for (e, why) in [
        (&harmless, "does not know its text"),
        (&evil, "does not know its text"),
        (&execute, "SQL EXECUTE"),
        (&execute2, "SQL EXECUTE"),
    ] {
        let m = s(e, "message");
        assert!(
            m.contains("needs approval") && m.contains(why),
            "the refusal does not say the text cannot be shown ({why}): {e}"
        );
        assert!(
            ids_in(m).is_empty(),
            "a statement of unknown text was put to approvers: {e}"
        );
    }
    assert!(
        list(&p.gw, true).is_empty(),
        "requests were made for statements of unknown text: {:?}",
        list(&p.gw, true)
    );

    // The rule is in force: the DROP sent with its text is put to approvers.
    let got = w.exchange(json!([["Q", "DROP TABLE victim"]]));
    let e = only_error(&got);
    assert_eq!(e["sqlstate"], "42501", "{e}");
    let id = one_id(s(&e, "message"));
    let all = list(&p.gw, true);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["id"], id.as_str());
    assert_eq!(all[0]["statement"], "DROP TABLE victim", "{all:?}");
    assert!(table_exists(&p, "victim"));
}

// ---------------------------------------------------------------------------------------------
// 11. Parameters longer than what approvers are shown (4096 bytes) are refused outright: what
//     follows the cut (`;DROP TABLE victim`) never rides on an approval of what precedes it.
// ---------------------------------------------------------------------------------------------

#[test]
fn parameters_too_long_to_show_are_refused() {
    require_root();
    let rules = [
        approval_rule(
            "exec-needs-approval",
            "{functions: [exec_sql]}",
            "{approvers: [dba], timeout_secs: 120, mode: deny_and_retry}",
        ),
        approval_rule(
            "exec-held",
            "{functions: [exec_sql_held]}",
            "{approvers: [dba], timeout_secs: 120}",
        ),
    ]
    .concat();
    let p = start("apr-longparam", 11, rules, String::new(), &[]);
    create_tables(&p, &["victim", "victim2"]);
    create_exec_functions(&p, &["exec_sql", "exec_sql_held"]);
    let conn = p.agent_conninfo(&agent_jwt("agent-longparam"), "disable");
    let mut a = PySession::open(&conn, &p.agent);

    // The rule is in force: a short value is put to approvers.
    let v = a.run_json(&json!(["SELECT exec_sql(%s)", ["SELECT 1"]]));
    assert_eq!(v["error"]["sqlstate"], "42501", "{v}");
    let id_short = one_id(s(&v["error"], "message"));

    // The same first 4096 bytes, then only spaces / then a DROP.
    let pad = " ".repeat(4200);
    let spaces = format!("SELECT 1{pad}");
    let tail = format!("SELECT 1{pad};DROP TABLE victim");
    let first = a.run_json(&json!(["SELECT exec_sql(%s)", [spaces]]));
    assert_eq!(first["error"]["sqlstate"], "42501", "{first}");
    // Had a request been made (the code before the fix made one, showing the first 4096
    // bytes), its approval must still not let the other value through.
    for id in ids_in(s(&first["error"], "message")) {
        if id != id_short {
            approvals_ok(&p.gw, &["approve", &id]);
        }
    }
    let second = a.run_json(&json!(["SELECT exec_sql(%s)", [tail]]));
    assert_eq!(
        second["error"]["sqlstate"], "42501",
        "the value with a DROP past the cut was not refused: {second}"
    );
    assert!(
        table_exists(&p, "victim"),
        "the DROP past the shown part of a parameter ran"
    );
    // Refused outright, saying why; never put to approvers.
    for v in [&first, &second] {
        let m = s(&v["error"], "message");
        assert!(m.contains("too long to show"), "{v}");
        assert!(
            ids_in(m).is_empty(),
            "a cut value was put to approvers: {v}"
        );
    }
    let all = list(&p.gw, true);
    assert_eq!(
        all.iter().map(|r| r["id"].clone()).collect::<Vec<_>>(),
        vec![json!(id_short)],
        "requests: {all:?}"
    );

    // Mode hold: refused at once, no notice, nothing held.
    let tail2 = format!("SELECT 1{pad};DROP TABLE victim2");
    a.0.send_line(&json!(["SELECT exec_sql_held(%s)", [tail2]]).to_string());
    let v = a.next_json(WAIT);
    assert!(
        v["notice"].is_null(),
        "a cut value was held for approval: {v}"
    );
    assert_eq!(v["error"]["sqlstate"], "42501", "{v}");
    assert!(
        s(&v["error"], "message").contains("too long to show"),
        "{v}"
    );
    assert!(table_exists(&p, "victim2"));
    assert_eq!(list(&p.gw, true).len(), 1, "{:?}", list(&p.gw, true));
    assert_eq!(a.rows("SELECT 2"), json!([["2"]]));
}

// ---------------------------------------------------------------------------------------------
// 12. A text parameter `\x4452…` and the binary bytes 44 52 … look the same to approvers but
//     are different values: an approval of one is no approval of the other.
// ---------------------------------------------------------------------------------------------

#[test]
fn text_and_binary_parameters_that_look_alike_are_different_retries() {
    require_root();
    let rules = approval_rule(
        "exec-needs-approval",
        "{functions: [exec_sql]}",
        "{approvers: [dba], timeout_secs: 120, mode: deny_and_retry}",
    );
    let p = start("apr-binparam", 12, rules, String::new(), &[]);
    create_tables(&p, &["victim"]);
    create_exec_functions(&p, &["exec_sql"]);
    let mut w = Wire::open(&p, &agent_jwt("agent-binparam"), "agentdb");
    let drop = hex(b"DROP TABLE victim");
    let run = |format: i16| {
        let param = if format == 0 {
            json!(format!("\\x{drop}"))
        } else {
            json!({ "hex": drop })
        };
        json!([
            ["P", "", "SELECT exec_sql($1)"],
            ["B", "", "", [param], [format]],
            ["E", ""],
            ["S"]
        ])
    };

    // Text: the string `\x44524f50…` (as SQL, a syntax error). Approved.
    let e = only_error(&w.exchange(run(0)));
    assert_eq!(e["sqlstate"], "42501", "{e}");
    let id1 = one_id(s(&e, "message"));
    approvals_ok(&p.gw, &["approve", &id1]);

    // Binary: the bytes of `DROP TABLE victim`, shown as the same `\x44524f50…`. A new request.
    let got = w.exchange(run(1));
    assert!(
        table_exists(&p, "victim"),
        "the approval of the text parameter let the binary one through: {got:?}"
    );
    let e = only_error(&got);
    assert_eq!(e["sqlstate"], "42501", "{e}");
    let id2 = one_id(s(&e, "message"));
    assert_ne!(id1, id2, "{e}");
    let (r1, r2) = (request(&p.gw, &id1), request(&p.gw, &id2));
    assert_eq!(
        r1["params"], r2["params"],
        "the two values should look alike to approvers"
    );
    assert_eq!(r2["state"], "pending", "{r2}");

    // The identical (text) retry is what the approval covers: it reaches the server.
    let e = only_error(&w.exchange(run(0)));
    assert_eq!(
        e["sqlstate"], "42601",
        "the approved retry did not run: {e}"
    );
    assert!(table_exists(&p, "victim"));
}

// ---------------------------------------------------------------------------------------------
// 13. The database is part of the request and of the retry: an approval given in `scratch` does
//     not run the identical statement in `agentdb`.
// ---------------------------------------------------------------------------------------------

#[test]
fn an_approval_in_one_database_is_no_approval_in_another() {
    require_root();
    let rules = approval_rule(
        "drops-need-approval",
        DROP_TABLE,
        "{approvers: [dba], timeout_secs: 120, mode: deny_and_retry}",
    );
    let p = start("apr-database", 13, rules, String::new(), &[]);
    p.pg.create_db("scratch");
    create_tables(&p, &["t"]);
    p.pg.sql_in(
        "scratch",
        &format!("CREATE TABLE t (x int); ALTER TABLE t OWNER TO {ROLE_SCRAM};"),
    );
    let exists_in_scratch = || {
        p.pg.sql_in("scratch", "SELECT to_regclass('public.t') IS NOT NULL;") == "t"
    };
    let jwt = agent_jwt("agent-database");
    let (scratch, agentdb) = (
        agent_conninfo_in(&p, &jwt, "scratch"),
        agent_conninfo_in(&p, &jwt, "agentdb"),
    );
    let refused = |conn: &str| {
        let mut c = psql_bg(conn, &p.agent, &["DROP TABLE t"]);
        let st = c.wait_exit(WAIT);
        let err = c.stderr();
        assert!(
            !st.success() && err.contains("ERROR:  42501"),
            "DROP TABLE t was not refused: {}",
            c.text()
        );
        one_id(&err)
    };

    let id1 = refused(&scratch);
    approvals_ok(&p.gw, &["approve", &id1]);

    // The identical statement, same identity and target, in the other database: a new request.
    let id2 = refused(&agentdb);
    assert_ne!(id1, id2);
    assert!(table_exists(&p, "t"), "the DROP ran in agentdb");
    let r = request(&p.gw, &id1);
    assert_eq!(r["database"], "scratch", "{r}");
    let r = request(&p.gw, &id2);
    assert_eq!(r["database"], "agentdb", "{r}");
    assert_eq!(r["state"], "pending", "{r}");
    assert_eq!(request(&p.gw, &id1)["state"], "approved");
    assert!(
        trail_events(&p, &id1, "retry_used").is_empty(),
        "the scratch approval was used up in agentdb"
    );

    // In `scratch` the approval is used: the DROP runs there, and the trail says it was sent.
    let mut c = psql_bg(&scratch, &p.agent, &["DROP TABLE t"]);
    let st = c.wait_exit(WAIT);
    assert!(st.success(), "approved retry in scratch: {}", c.text());
    assert!(
        !exists_in_scratch(),
        "the approved DROP did not run in scratch"
    );
    assert!(table_exists(&p, "t"));
    wait_record(&p.gw.record_db(), "approval_events", &id1, |rows| {
        rows.iter().any(|r| field(r, "event") == "forwarded")
    });
}

// ---------------------------------------------------------------------------------------------
// 14. Patterns match each statement as PostgreSQL's parser prints it back: a comment in front,
//     a statement in front, a comment for a space, a line comment: all held.
// ---------------------------------------------------------------------------------------------

#[test]
fn patterns_are_not_hidden_by_comments_or_statements_in_front() {
    require_root();
    let rules = approval_rule(
        "drops-need-approval",
        DROP_TABLE,
        "{approvers: [dba], timeout_secs: 120}",
    );
    let p = start("apr-patterns", 14, rules, String::new(), &[]);
    let tables = ["v1", "v2", "v3", "v4", "v5"];
    create_tables(&p, &tables);
    let conn = p.agent_conninfo(&agent_jwt("agent-patterns"), "disable");

    let sqls = [
        "/* hi */ DROP TABLE v1",
        "SELECT 1; DROP TABLE v2",
        "DROP/**/TABLE v3",
        "-- c\nDROP TABLE v4",
        // Terminal escapes (clear the screen, move up) in a comment.
        "DROP TABLE v5 /* \x1b[2J\x1b[1A\r */",
    ];
    let mut held = Vec::new();
    for sql in sqls {
        let mut c = psql_bg(&conn, &p.agent, &[sql]);
        // A NOTICE (held), an ERROR, or any result on stdout (it ran): whichever comes first.
        let line = c.wait_line(WAIT, |err, l| {
            !err || l.starts_with("NOTICE:") || l.starts_with("ERROR:")
        });
        assert!(
            line.starts_with("NOTICE:") && line.contains("approval required"),
            "{sql:?} was not held: {}",
            c.text()
        );
        let id = one_id(&line);
        held.push((sql, c, id));
    }
    for t in tables {
        assert!(table_exists(&p, t), "{t} dropped before any decision");
    }
    let pending = list(&p.gw, false);
    assert_eq!(pending.len(), 5, "{pending:?}");
    // What approvers read on a terminal: agent-controlled text cannot drive it.
    let id5 = held[4].2.clone();
    for args in [vec!["list"], vec!["show", id5.as_str()]] {
        let out = approvals(&p.gw, &args);
        assert!(out.status.success(), "{}", output_text(&out));
        assert!(
            !out.stdout.iter().any(|b| *b == 0x1b || *b == b'\r'),
            "approvals {args:?} prints the agent's control characters: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("DROP TABLE v5"),
            "{}",
            output_text(&out)
        );
    }
    for (sql, c, id) in &mut held {
        assert!(c.running(), "{sql:?}: psql ended while held: {}", c.text());
        approvals_ok(&p.gw, &["deny", id, "--reason", "pattern test"]);
        let st = c.wait_exit(WAIT);
        assert!(!st.success(), "{sql:?}: {}", c.text());
        assert!(
            c.stderr().contains("ERROR:  42501") && c.stderr().contains(id.as_str()),
            "{sql:?}: {}",
            c.text()
        );
    }
    for t in tables {
        assert!(table_exists(&p, t), "denied DROP of {t} ran");
    }
}

// ---------------------------------------------------------------------------------------------
// 15. At most 20 pending requests per identity; the approvers' list is filtered by group before
//     its limit, so a flood of other requests hides nobody's.
// ---------------------------------------------------------------------------------------------

#[test]
fn one_identity_cannot_flood_the_approvers() {
    require_root();
    let rules = [
        approval_rule(
            "drops-need-approval",
            DROP_TABLE,
            "{approvers: [dba], timeout_secs: 600, mode: deny_and_retry}",
        ),
        approval_rule(
            "truncates-need-sre",
            r#"{patterns: ["(?i)^truncate"]}"#,
            "{approvers: [sre], timeout_secs: 600, mode: deny_and_retry}",
        ),
    ]
    .concat();
    let (p, http_addr) = start_with_http("apr-flood", 15, rules);
    create_tables(&p, &["u"]);

    // Another identity's request, for group sre (the oldest of all).
    let mut c = psql_bg(
        &p.agent_conninfo(&agent_jwt("agent-sre-asker"), "disable"),
        &p.agent,
        &["TRUNCATE u"],
    );
    c.wait_exit(WAIT);
    let id_sre = one_id(&c.stderr());

    // 21 DROPs pipelined by one identity: 20 requests, the 21st refused without one.
    let flood = |w: &mut Wire, n: usize| -> Vec<Value> {
        let msgs: Vec<Value> = (0..n)
            .map(|i| json!(["Q", format!("DROP TABLE f{i}")]))
            .collect();
        w.send(&Value::Array(msgs));
        (0..n)
            .map(|_| only_error(&w.until_ready()))
            .collect::<Vec<_>>()
    };
    let mut w = Wire::open(&p, &agent_jwt("agent-flood"), "agentdb");
    let errors = flood(&mut w, 21);
    assert!(
        errors.iter().all(|e| e["sqlstate"] == "42501"),
        "{errors:?}"
    );
    let mut ids: Vec<String> = errors[..20]
        .iter()
        .map(|e| one_id(s(e, "message")))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "{errors:?}");
    let last = &errors[20];
    assert!(
        ids_in(s(last, "message")).is_empty(),
        "the 21st pending request of one identity was made: {last}"
    );
    let mine: Vec<Value> = list(&p.gw, true)
        .into_iter()
        .filter(|r| r["subject"] == "agent-flood")
        .collect();
    assert_eq!(mine.len(), 20, "{mine:?}");

    // Once one is decided, there is room for one more.
    approvals_ok(&p.gw, &["deny", &ids[0], "--reason", "flood test"]);
    let got = w.exchange(json!([["Q", "DROP TABLE f20"]]));
    let e = only_error(&got);
    let id21 = one_id(s(&e, "message"));
    assert!(!ids.contains(&id21), "{e}");

    // 25 more identities, 20 each: 520 requests for dba, newer than the one for sre, more than
    // the list's limit (500).
    let mut others: Vec<Wire> = (0..25)
        .map(|i| Wire::open(&p, &agent_jwt(&format!("agent-flood-{i}")), "agentdb"))
        .collect();
    for w in &mut others {
        let msgs: Vec<Value> = (0..20)
            .map(|i| json!(["Q", format!("DROP TABLE f{i}")]))
            .collect();
        w.send(&Value::Array(msgs));
    }
    for w in &mut others {
        for _ in 0..20 {
            let e = only_error(&w.until_ready());
            assert_eq!(ids_in(s(&e, "message")).len(), 1, "{e}");
        }
    }
    let sre = approver_jwt("sam", &["sre"]);
    let (st, v) = http(http_addr, "GET", "/v1/approvals", Some(&sre), None);
    assert_eq!(st, 200, "{v}");
    let listed: Vec<&Value> = v["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .map(|r| &r["id"])
        .collect();
    assert_eq!(
        listed,
        vec![&json!(id_sre)],
        "the sre approver's request is buried under the flood"
    );
    let dba = approver_jwt("dora", &["dba"]);
    let (st, v) = http(http_addr, "GET", "/v1/approvals", Some(&dba), None);
    assert_eq!(st, 200, "{v}");
    assert!(
        !v["requests"]
            .as_array()
            .expect("requests")
            .iter()
            .any(|r| r["id"] == id_sre.as_str()),
        "{v}"
    );

    // The agent is told why.
    let m = s(last, "message").to_lowercase();
    assert!(
        m.contains("too many") || (m.contains("20") && m.contains("waiting")),
        "the refusal of the 21st does not say too many requests wait: {last}"
    );
}

// ---------------------------------------------------------------------------------------------
// 16. A policy change while a request waits: an approval runs the statement only if the policy
//     in force still asks the same people the same way (hold), and a retry counts only an
//     approval given under the same rule, approvers and at least the same quorum.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_policy_change_while_waiting_voids_the_approval() {
    require_root();
    let drops = |approvers: &str| {
        approval_rule(
            "drops-need-approval",
            DROP_TABLE,
            &format!("{{approvers: [{approvers}], timeout_secs: 120}}"),
        )
    };
    let truncates = |approvers: &str, quorum: u32| {
        approval_rule(
            "truncates-need-approval",
            r#"{patterns: ["(?i)^truncate"]}"#,
            &format!(
                "{{approvers: [{approvers}], quorum: {quorum}, timeout_secs: 120, mode: deny_and_retry}}"
            ),
        )
    };
    let p = start(
        "apr-policychange",
        16,
        [drops("dba"), truncates("interns", 1)].concat(),
        String::new(),
        &[],
    );
    create_tables(&p, &["victim", "victim2", "u"]);
    let conn = p.agent_conninfo(&agent_jwt("agent-policychange"), "disable");

    // Held under the first policy.
    let mut a = PySession::open(&conn, &p.agent);
    a.send("DROP TABLE victim");
    let id_held = one_id(s(&a.notice(), "message"));
    // Approved for a retry by interns, quorum 1.
    let mut b = PySession::open(&conn, &p.agent);
    let v = b.run("TRUNCATE u");
    assert_eq!(v["error"]["sqlstate"], "42501", "{v}");
    let id_retry = one_id(s(&v["error"], "message"));
    approvals_ok(&p.gw, &["approve", &id_retry]);

    // New policy: DDL on victim is denied outright; truncates need two of dba.
    let deny_victim = "  - name: no-drop-victim\n    effect: deny\n    when: {workloads: [sql-agents]}\n    targets: [pg]\n    statements: {classes: [ddl], tables: [victim]}\n";
    p.set_policy(&PgTargetOptions {
        extra_rules: [deny_victim.to_string(), drops("dba"), truncates("dba", 2)].concat(),
        ..Default::default()
    });

    approvals_ok(&p.gw, &["approve", &id_held]);
    let v = a.outcome();
    assert!(
        table_exists(&p, "victim"),
        "the approved DROP ran though the policy now denies it: {v}"
    );
    assert_eq!(v["error"]["sqlstate"], "42501", "{v}");
    assert_eq!(request(&p.gw, &id_held)["state"], "approved");
    assert!(
        trail_events(&p, &id_held, "forwarded").is_empty(),
        "the trail says the refused statement was sent"
    );

    let v = b.run("TRUNCATE u");
    assert_eq!(
        p.pg.sql_in("agentdb", "SELECT count(*) FROM u;"),
        "1",
        "the retry ran on an approval by interns, quorum 1, after the policy asked two of dba: {v}"
    );
    assert_eq!(v["error"]["sqlstate"], "42501", "{v}");
    let id_new = one_id(s(&v["error"], "message"));
    assert_ne!(id_new, id_retry, "{v}");
    let r = request(&p.gw, &id_new);
    assert_eq!(r["approvers"], json!(["dba"]), "{r}");
    assert_eq!(r["quorum"], 2, "{r}");

    // Held again; the rule now asks other people before the decision: the approval is void.
    a.send("DROP TABLE victim2");
    let id_held2 = one_id(s(&a.notice(), "message"));
    p.set_policy(&PgTargetOptions {
        extra_rules: [
            deny_victim.to_string(),
            drops("dba, sre"),
            truncates("dba", 2),
        ]
        .concat(),
        ..Default::default()
    });
    approvals_ok(&p.gw, &["approve", &id_held2]);
    let v = a.outcome();
    assert!(
        table_exists(&p, "victim2"),
        "the approved DROP ran though the rule now asks other people: {v}"
    );
    assert_eq!(v["error"]["sqlstate"], "42501", "{v}");
    let m = s(&v["error"], "message");
    assert!(m.contains(&id_held2) && m.contains("policy changed"), "{v}");
    assert_eq!(a.rows("SELECT 5"), json!([["5"]]));
}

// ---------------------------------------------------------------------------------------------
// 17. More than 1 MiB sent behind a held statement ends the session: the request is cancelled,
//     an approval that comes later runs nothing.
// ---------------------------------------------------------------------------------------------

#[test]
fn backlog_behind_a_held_statement_ends_the_session() {
    require_root();
    let rules = approval_rule(
        "drops-need-approval",
        DROP_TABLE,
        "{approvers: [dba], timeout_secs: 120}",
    );
    let p = start("apr-backlog", 17, rules, String::new(), &[]);
    create_tables(&p, &["victim"]);
    let mut w = Wire::open(&p, &agent_jwt("agent-backlog"), "agentdb");

    w.send(&json!([["Q", "DROP TABLE victim"]]));
    let n = w.next_message();
    assert_eq!(n["msg"], "N", "{n}");
    let id = one_id(s(&n, "message"));
    assert_eq!(request(&p.gw, &id)["state"], "pending");

    // 1.5 MiB of queries pipelined behind it, then the agent closes.
    w.send(&json!({"flood": 3 << 19}));
    let flooded = loop {
        let v = w.next_message();
        if v.get("flooded").is_some() {
            break v;
        }
    };
    w.send(&json!({"close": true}));
    let r = wait_request(&p.gw, &id, "cancelled", |r| r["state"] == "cancelled");
    assert!(
        s(&r, "reason").contains("too much"),
        "cancelled for another reason: {r} (flood: {flooded})"
    );
    assert!(
        p.wait_no_upstream(WAIT),
        "the session's server connection is still open"
    );
    let late = approvals(&p.gw, &["approve", &id]);
    assert!(
        !late.status.success(),
        "a cancelled request was approved: {}",
        output_text(&late)
    );
    assert!(table_exists(&p, "victim"), "the cancelled DROP ran");
    assert!(trail_events(&p, &id, "forwarded").is_empty());

    // Half a message behind a held statement, and then nothing: the agent may not keep the
    // gateway from acting on the decision. The session ends within seconds (08P01).
    let mut w = Wire::open(&p, &agent_jwt("agent-backlog"), "agentdb");
    w.send(&json!([["Q", "DROP TABLE victim"]]));
    let n = w.next_message();
    assert_eq!(n["msg"], "N", "{n}");
    let id = one_id(s(&n, "message"));
    // A Query announcing 100 bytes, of which 7 come.
    w.send(&json!({"raw": format!("51{:08x}{}", 100, hex(b"SELECT "))}));
    let r = wait_request(&p.gw, &id, "cancelled", |r| r["state"] == "cancelled");
    assert!(
        s(&r, "reason").contains("stalled"),
        "cancelled for another reason: {r}"
    );
    let ended = w.until_ready();
    assert!(
        ended.last().is_some_and(|v| v["eof"] == true),
        "the stalled session was not ended: {ended:?}"
    );
    let e = only_error(&ended);
    assert_eq!(e["sqlstate"], "08P01", "{e}");
    assert!(
        !approvals(&p.gw, &["approve", &id]).status.success(),
        "a cancelled request was approved"
    );
    assert!(table_exists(&p, "victim"), "the cancelled DROP ran");
}

// ---------------------------------------------------------------------------------------------
// 18. Who may decide is checked before the state: a non-approver gets 404 on a decided request
//     too, and the refusal names no approver group.
// ---------------------------------------------------------------------------------------------

#[test]
fn non_approvers_learn_nothing_of_a_request() {
    require_root();
    let rules = approval_rule(
        "drops-need-approval",
        DROP_TABLE,
        "{approvers: [dba-secret-7f3a], timeout_secs: 120}",
    );
    let (p, http_addr) = start_with_http("apr-nonapprover", 18, rules);
    create_tables(&p, &["t"]);
    let conn = p.agent_conninfo(&agent_jwt("agent-nonapprover"), "disable");
    let mut c = psql_bg(&conn, &p.agent, &["DROP TABLE t"]);
    let id = one_id(&psql_notice(&mut c));
    let base = format!("/v1/approvals/{id}");
    let eve = approver_jwt("eve", &["agents", "ops"]);
    let refused = |what: &str, st: u16, v: &Value| {
        assert_eq!((st, reason_of(v)), (404, "unknown_request"), "{what}: {v}");
        assert!(
            !v.to_string().contains("dba-secret-7f3a"),
            "{what}: the refusal names the approver groups: {v}"
        );
    };

    let (st, v) = http(
        http_addr,
        "POST",
        &format!("{base}/approve"),
        Some(&eve),
        None,
    );
    refused("approve while pending", st, &v);
    approvals_ok(&p.gw, &["deny", &id, "--reason", "not now"]);
    let st = c.wait_exit(WAIT);
    assert!(!st.success(), "{}", c.text());
    let (st, v) = http(
        http_addr,
        "POST",
        &format!("{base}/approve"),
        Some(&eve),
        None,
    );
    refused("approve once denied", st, &v);
    let (st, v) = http(
        http_addr,
        "POST",
        &format!("{base}/deny"),
        Some(&eve),
        Some(&json!({"reason": "x"})),
    );
    refused("deny once denied", st, &v);
    // An approver is told it is decided.
    let dba = approver_jwt("dan", &["dba-secret-7f3a"]);
    let (st, v) = http(
        http_addr,
        "POST",
        &format!("{base}/approve"),
        Some(&dba),
        None,
    );
    assert_eq!((st, reason_of(&v)), (409, "not_pending"), "{v}");
    assert!(table_exists(&p, "t"));
    assert_eq!(request(&p.gw, &id)["state"], "denied");
}

// ---------------------------------------------------------------------------------------------
// 19. Waiting for people is not idleness: a statement held past the gateway's idle timeout runs
//     once approved; the trail has `forwarded` after the approval.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_held_statement_is_not_idle() {
    require_root();
    let rules = approval_rule(
        "drops-need-approval",
        DROP_TABLE,
        "{approvers: [dba], timeout_secs: 30}",
    );
    let p = start(
        "apr-idle",
        19,
        rules,
        "  idle_timeout_ms: 3000\n".to_string(),
        &[],
    );
    create_tables(&p, &["victim"]);
    let conn = p.agent_conninfo(&agent_jwt("agent-idle"), "disable");
    let mut a = PySession::open(&conn, &p.agent);
    assert_eq!(a.rows("SELECT 1"), json!([["1"]]));
    a.send("DROP TABLE victim");
    let id = one_id(s(&a.notice(), "message"));

    // Twice the idle timeout.
    std::thread::sleep(Duration::from_secs(6));
    assert!(!a.has_outcome(), "the held statement ended: {}", a.0.text());
    assert_eq!(request(&p.gw, &id)["state"], "pending");
    approvals_ok(&p.gw, &["approve", &id]);
    let v = a.outcome();
    assert!(v.get("ok").is_some(), "the approved DROP failed: {v}");
    assert!(!table_exists(&p, "victim"), "the approved DROP did not run");

    // The trail: requested, approved, then forwarded (sent to the server), by the gateway.
    let rows = wait_record(&p.gw.record_db(), "approval_events", &id, |rows| {
        rows.iter().any(|r| field(r, "event") == "forwarded")
    });
    let at = |event: &str| {
        rows.iter()
            .find(|r| field(r, "event") == event)
            .and_then(|r| r["at_ms"].as_i64())
            .unwrap_or_else(|| panic!("no {event} event with at_ms: {rows:#?}"))
    };
    let fwd = rows
        .iter()
        .find(|r| field(r, "event") == "forwarded")
        .unwrap();
    assert_eq!(field(fwd, "actor"), "gateway", "{fwd}");
    assert!(at("forwarded") >= at("approve"), "{rows:#?}");

    // The idle timeout is in force otherwise: the session ends once nothing happens.
    std::thread::sleep(Duration::from_secs(5));
    let v = a.run("SELECT 1");
    assert!(
        v.get("error").is_some(),
        "the session outlived the idle timeout: {v}"
    );
}
