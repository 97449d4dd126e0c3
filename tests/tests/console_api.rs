//! The web console's JSON API (issue 22), end to end: a real gateway with `--admin-http` on
//! loopback, a real PostgreSQL 15, agents' psql sessions in a managed cgroup whose connect()
//! is captured, and people's bearer tokens minted with groups: `dba`/`ops` (approvers only),
//! `auditors` and `admins` (the policy's `console:` roles). Root required.
//!
//! What is held: the role of every endpoint, server side (an approver gets 403 on the
//! record's read-outs, only an admin revokes; approvals of other groups do not exist for an
//! approver: list, show, events); the sessions list's filters; a psql session's timeline with
//! its results masked as the agent saw them (the raw value nowhere in any answer); the live
//! events (a held DROP within a second, its approval) and that a client that never reads
//! does not slow decisions; revocation through the API ending a live session, and its lift;
//! a `<script>` statement coming back as a JSON string; bad input answered 400.
//!
//! Ports: PostgreSQL 21020+n, gateway listener 21030+n, HTTP admin API 127.0.0.1:21036+n.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::mpsc,
    time::{Duration, Instant},
};

use agentgate_tests::{bg::Bg, pg::*, *};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);
const EMAIL: &str = "secret-alice@example.com";

fn ports(n: u16) -> (u16, u16, SocketAddr) {
    assert!(n < 4);
    (
        21030 + n,
        21020 + n,
        format!("127.0.0.1:{}", 21036 + n).parse().unwrap(),
    )
}

/// The policy's `console:` section, after the rules (a top-level key: the rules list ends).
fn console_section(admin: SocketAddr) -> String {
    format!(
        "console:\n  identity_provider: test-idp\n  client_id: agentgate-console\n  \
         redirect_url: http://{admin}/console/callback\n  auditors: [auditors]\n  admins: [admins]\n"
    )
}

fn start(tag: &str, n: u16, rules: &str) -> (PgGateway, SocketAddr) {
    require_root();
    let (listen, pg_port, admin) = ports(n);
    let addr = admin.to_string();
    let p = PgGateway::start_with_args(
        tag,
        listen,
        pg_port,
        PgOptions::default(),
        &PgTargetOptions {
            extra_rules: format!("{rules}{}", console_section(admin)),
            ..Default::default()
        },
        &["--admin-http", &addr],
    );
    (p, admin)
}

fn person(sub: &str, groups: &[&str]) -> String {
    mint(sub, groups, now(), now() + 900)
}

/// One HTTP request: status, headers (lowercase names), body text.
fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(WAIT)).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Authorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: bad answer {text:?}"));
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: {head}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// A JSON answer: status and body.
fn api(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let (status, headers, text) = call(addr, method, path, token, body);
    let ct = header(&headers, "content-type");
    assert_eq!(ct, "application/json", "{method} {path}: {status} {text}");
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {path}: {status} not JSON ({e}): {text}"));
    (status, v)
}

fn get(addr: SocketAddr, path: &str, token: &str) -> Value {
    let (status, v) = api(addr, "GET", path, token, None);
    assert_eq!(status, 200, "GET {path}: {v}");
    v
}

fn header(headers: &[(String, String)], name: &str) -> String {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// A server-sent events client: each `(event, data)` with when it arrived.
struct Sse {
    rx: mpsc::Receiver<(Instant, String, Value)>,
    _stream: TcpStream,
}

impl Sse {
    fn connect(addr: SocketAddr, token: &str) -> Sse {
        let mut s = TcpStream::connect(addr).unwrap();
        let req = format!(
            "GET /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut event = String::new();
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { return };
                if line.starts_with("HTTP/1.1 ") && !line.contains(" 200 ") {
                    let _ = tx.send((Instant::now(), "status".into(), json!(line)));
                }
                if line.contains(": connected") {
                    let _ = tx.send((Instant::now(), "connected".into(), Value::Null));
                }
                if let Some(e) = line.strip_prefix("event: ") {
                    event = e.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    let v = serde_json::from_str(d).unwrap_or(json!(d));
                    if tx.send((Instant::now(), event.clone(), v)).is_err() {
                        return;
                    }
                }
            }
        });
        let sse = Sse { rx, _stream: s };
        let (_, kind, v) = sse.rx.recv_timeout(WAIT).expect("event stream opens");
        assert_eq!(kind, "connected", "{v}");
        sse
    }

    /// The next event matching `f` within `timeout`, with when it came.
    fn wait(
        &self,
        timeout: Duration,
        f: impl Fn(&str, &Value) -> bool,
    ) -> Option<(Instant, Value)> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok((at, kind, v)) if f(&kind, &v) => return Some((at, v)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }
}

/// psql in the agent's cgroup running `sqls`, going on after errors.
fn psql_all(conn: &str, cg: &Cgroup, sqls: &[&str]) -> Bg {
    let mut cmd = psql_command(conn);
    cmd.args(["-v", "VERBOSITY=verbose", "-A", "-t"]);
    for sql in sqls {
        cmd.args(["-c", sql]);
    }
    Bg::spawn("psql", cmd, cg)
}

fn session_ids(v: &Value) -> Vec<String> {
    v["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("no sessions in {v}"))
        .iter()
        .map(|s| s["session"].as_str().unwrap().to_string())
        .collect()
}

fn create_owned_tables(p: &PgGateway, names: &[&str]) {
    let sql: String = names
        .iter()
        .map(|t| format!("CREATE TABLE {t} (x int); ALTER TABLE {t} OWNER TO {ROLE_SCRAM};\n"))
        .collect();
    p.pg.sql_in("agentdb", &sql);
}

// ---------------------------------------------------------------------------------------------
// 1. Roles, the sessions' filters, a masked timeline, inert text, bad input.
// ---------------------------------------------------------------------------------------------

#[test]
fn roles_filters_masked_timeline_and_bad_input() {
    let rules = [
        "  - name: mask-email\n    targets: [pg]\n    mask:\n      columns: [\"people.email\"]\n      strategy: redact\n",
        "  - name: no-truncate\n    effect: deny\n    when: {groups: [agents]}\n    targets: [pg]\n    statements: {patterns: [\"(?i)^truncate\"]}\n",
    ]
    .concat();
    let (p, admin) = start("capi-roles", 0, &rules);
    p.pg.sql_in(
        "agentdb",
        &format!(
            "CREATE TABLE people (id int, email text); INSERT INTO people VALUES (1, '{EMAIL}');\
             GRANT SELECT ON people TO {ROLE_SCRAM};"
        ),
    );
    let t0 = now() as i64 * 1000 - 1000;
    let script = "SELECT '<script>alert(1)</script>' AS x";
    let conn_a = p.agent_conninfo(&agent_jwt("agent-a"), "disable");
    let mut a = psql_all(
        &conn_a,
        &p.agent,
        &["SELECT id, email FROM people", script, "SELECT 2"],
    );
    assert!(a.wait_exit(WAIT).success(), "{}", a.text());
    assert!(
        !a.stdout().contains(EMAIL),
        "psql saw the raw value: {}",
        a.text()
    );
    let conn_b = p.agent_conninfo(&agent_jwt("agent-b"), "disable");
    let mut b = psql_all(&conn_b, &p.agent, &["SELECT 1", "TRUNCATE people"]);
    b.wait_exit(WAIT);
    assert!(
        b.stderr().contains("42501"),
        "TRUNCATE not denied: {}",
        b.text()
    );

    let approver = person("ann", &["dba"]);
    let auditor = person("aud", &["auditors"]);
    // The sessions are on record once both are closed.
    let mut list = Value::Null;
    wait_until("both sessions closed on record", WAIT, || {
        list = get(admin, "/v1/sessions?status=closed", &auditor);
        session_ids(&list).len() == 2
    });

    // An approver reads none of the record, revokes nothing; an auditor reads, revokes nothing.
    let sid_any = session_ids(&list)[0].clone();
    let reads = [
        "/v1/sessions".to_string(),
        format!("/v1/sessions/{sid_any}"),
        format!("/v1/sessions/{sid_any}/timeline"),
        format!("/v1/sessions/{sid_any}/export"),
        format!("/v1/sessions/{sid_any}/cast"),
        "/v1/agents".into(),
        "/v1/audit".into(),
        "/v1/policy".into(),
        "/v1/revocations".into(),
    ];
    for path in &reads {
        let (status, v) = api(admin, "GET", path, &approver, None);
        assert_eq!(
            (status, v["reason"].as_str()),
            (403, Some("forbidden")),
            "{path}: {v}"
        );
        // Bad input from someone without the role is still a 403: nothing is read for them.
        let (status, _) = api(admin, "GET", &format!("{path}?bogus=1"), &approver, None);
        assert_eq!(status, 403, "{path}?bogus=1");
    }
    for path in &reads[..reads.len() - 1] {
        if path.ends_with("/cast") {
            continue; // a psql session has no terminal recording: 404, checked below
        }
        let (status, v) = api(admin, "GET", path, &auditor, None);
        assert_eq!(status, 200, "auditor GET {path}: {v}");
    }
    let revoke = json!({"subject": "agent-a", "reason": "test"});
    for who in [&approver, &auditor] {
        for path in ["/v1/revocations", "/v1/revocations/lift"] {
            let (status, v) = api(admin, "POST", path, who, Some(&revoke));
            assert_eq!(
                (status, v["reason"].as_str()),
                (403, Some("forbidden")),
                "{path}: {v}"
            );
        }
    }
    assert_eq!(
        get(admin, "/v1/revocations", &auditor)["revocations"],
        json!([])
    );

    // Filters: each returns exactly the sessions it names.
    let ids = |q: &str| {
        let v = get(admin, &format!("/v1/sessions?{q}"), &auditor);
        let mut ids = session_ids(&v);
        ids.sort();
        ids
    };
    let by_subject = |sub: &str| -> String {
        list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["subject"] == sub)
            .unwrap_or_else(|| panic!("no session of {sub} in {list}"))["session"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (sa, sb) = (by_subject("agent-a"), by_subject("agent-b"));
    let mut both = vec![sa.clone(), sb.clone()];
    both.sort();
    assert_eq!(ids("identity=agent-a"), vec![sa.clone()]);
    assert_eq!(
        ids(&format!(
            "identity={}%23agent-b",
            ISSUER.replace(':', "%3A")
        )),
        vec![sb.clone()]
    );
    assert_eq!(ids("denied=1"), vec![sb.clone()]);
    assert_eq!(ids("denied=0"), both);
    assert_eq!(ids("target=pg&protocol=postgres"), both);
    assert_eq!(ids("protocol=ssh"), Vec::<String>::new());
    assert_eq!(ids("workload=sql-agents"), both);
    assert_eq!(ids("workload=file-agents"), Vec::<String>::new());
    assert_eq!(ids("approvals=1"), Vec::<String>::new());
    assert_eq!(ids(&format!("since_ms={t0}")), both);
    assert_eq!(
        ids(&format!("until_ms={}", t0 - 60_000)),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(&format!("since_ms={}", now() as i64 * 1000 + 60_000)),
        Vec::<String>::new()
    );
    let page = get(admin, "/v1/sessions?limit=1", &auditor);
    assert_eq!(session_ids(&page).len(), 1);
    assert_eq!(page["truncated"], true, "{page}");
    let first = &page["sessions"][0];
    let next = get(
        admin,
        &format!("/v1/sessions?limit=1&before={}", first["started_ms"]),
        &auditor,
    );
    assert_eq!(session_ids(&next).len(), 1, "{next}");
    assert_ne!(next["sessions"][0]["session"], first["session"]);
    assert_eq!(next["truncated"], false, "{next}");

    // The timeline: open, the three statements in order, close; results as psql got them.
    let tl = get(admin, &format!("/v1/sessions/{sa}/timeline"), &auditor);
    assert_eq!(tl["session"]["subject"], "agent-a", "{tl}");
    let events = tl["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"start"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"end"), "{kinds:?}");
    let statements: Vec<&Value> = events.iter().filter(|e| e["kind"] == "statement").collect();
    let texts: Vec<&str> = statements
        .iter()
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        ["SELECT id, email FROM people", script, "SELECT 2"],
        "{tl}"
    );
    let at: Vec<i64> = events
        .iter()
        .map(|e| e["at_ms"].as_i64().unwrap())
        .collect();
    assert!(at.windows(2).all(|w| w[0] <= w[1]), "not in order: {at:?}");
    let rows = statements[0]["results"].to_string();
    assert!(rows.contains("****"), "masked row not kept: {rows}");
    assert!(
        statements[1]["results"].to_string().contains("<script>"),
        "{tl}"
    );

    // The masked column's raw value appears in no answer.
    let (_, _, tl_raw) = call(
        admin,
        "GET",
        &format!("/v1/sessions/{sa}/timeline"),
        &auditor,
        None,
    );
    let (_, export_headers, export) = call(
        admin,
        "GET",
        &format!("/v1/sessions/{sa}/export"),
        &auditor,
        None,
    );
    assert!(
        header(&export_headers, "content-disposition").starts_with("attachment"),
        "{export_headers:?}"
    );
    let export: Value = serde_json::from_str(&export).unwrap();
    assert!(export["records"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["hash"].as_str().is_some_and(|h| h.len() == 64)));
    for path in [
        "/v1/sessions".to_string(),
        format!("/v1/sessions/{sa}"),
        format!("/v1/sessions/{sa}/timeline"),
        format!("/v1/sessions/{sa}/export"),
        "/v1/agents".into(),
        "/v1/audit".into(),
        "/v1/policy".into(),
    ] {
        let (_, _, raw) = call(admin, "GET", &path, &auditor, None);
        assert!(!raw.contains(EMAIL), "{path} has the raw value: {raw}");
        assert!(
            !raw.contains(ROLE_PASSWORD),
            "{path} has the upstream password"
        );
    }
    // `<script>` is a JSON string in a JSON answer: inert, never HTML.
    assert!(tl_raw.contains("<script>alert(1)</script>"), "{tl_raw}");
    let (_, headers, _) = call(
        admin,
        "GET",
        &format!("/v1/sessions/{sa}/timeline"),
        &auditor,
        None,
    );
    assert_eq!(header(&headers, "content-type"), "application/json");

    // The other read-outs.
    let one = get(admin, &format!("/v1/sessions/{sb}"), &auditor);
    assert_eq!(
        (one["subject"].as_str(), one["denied"].as_i64()),
        (Some("agent-b"), Some(1)),
        "{one}"
    );
    let agents = get(admin, "/v1/agents", &auditor);
    let subs: Vec<&str> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["subject"].as_str().unwrap())
        .collect();
    assert!(
        subs.contains(&"agent-a") && subs.contains(&"agent-b"),
        "{agents}"
    );
    let last = agents["series"]
        .as_array()
        .unwrap()
        .last()
        .cloned()
        .unwrap_or_default();
    assert!(
        last["idle"].as_i64().unwrap_or(0) + last["active"].as_i64().unwrap_or(0) >= 2,
        "{agents}"
    );
    let audit = get(admin, "/v1/audit", &auditor);
    assert_eq!(audit["chain"]["ok"], true, "{audit}");
    assert!(audit["chain"]["records"].as_i64().unwrap() > 4, "{audit}");
    let policy = get(admin, "/v1/policy", &auditor);
    let names: Vec<&str> = policy["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["agents-to-pg", "mask-email", "no-truncate"],
        "{policy}"
    );
    assert_eq!(policy["last_reload_error"], Value::Null);

    // Bad input: 400 with a message that names the problem.
    for (path, says) in [
        ("/v1/sessions?bogus=1", "bogus"),
        ("/v1/sessions?limit=100000", "limit"),
        ("/v1/sessions?limit=0", "limit"),
        ("/v1/sessions?since_ms=yesterday", "since_ms"),
        ("/v1/sessions?protocol=gopher", "protocol"),
        ("/v1/sessions?denied=maybe", "denied"),
        ("/v1/sessions?limit=1&limit=2", "limit"),
        ("/v1/sessions/%3Cscript%3E", "not an id"),
        ("/v1/sessions/abc/timeline?limit=999999", "limit"),
        ("/v1/approvals?state=bogus", "bogus"),
        ("/v1/approvals/a%20b", "not an id"),
    ] {
        let (status, v) = api(admin, "GET", path, &auditor, None);
        assert_eq!(
            (status, v["reason"].as_str()),
            (400, Some("bad_request")),
            "{path}: {v}"
        );
        assert!(v["error"].as_str().unwrap().contains(says), "{path}: {v}");
    }
    let (status, _) = api(admin, "GET", "/v1/sessions/ffff-0", &auditor, None);
    assert_eq!(status, 404);
    let (status, v) = api(
        admin,
        "GET",
        &format!("/v1/sessions/{sa}/cast"),
        &auditor,
        None,
    );
    assert_eq!(status, 404, "{v}");
    let admin_person = person("root-person", &["admins"]);
    let (status, v) = api(
        admin,
        "POST",
        "/v1/revocations",
        &admin_person,
        Some(&json!({"subject": "x", "reason": "r", "evil": 1})),
    );
    assert_eq!(status, 400, "{v}");
    let (status, v) = api(
        admin,
        "POST",
        "/v1/revocations",
        &admin_person,
        Some(&json!({"reason": "everyone"})),
    );
    assert_eq!(status, 400, "a revocation of everyone by omission: {v}");
}

// ---------------------------------------------------------------------------------------------
// 2. Live events: a held DROP within a second, its approval; other groups' requests unseen;
//    a client that never reads does not slow decisions.
// ---------------------------------------------------------------------------------------------

#[test]
fn events_are_live_per_group_and_a_stalled_client_slows_nothing() {
    let rules = [
        approval_rule(
            "dba-drops",
            r#"{patterns: ["(?i)^drop table t_dba"]}"#,
            "{approvers: [dba], timeout_secs: 120}",
        ),
        approval_rule(
            "ops-drops",
            r#"{patterns: ["(?i)^drop table t_ops"]}"#,
            "{approvers: [ops], timeout_secs: 120}",
        ),
        approval_rule(
            "many",
            r#"{patterns: ["(?i)^drop table many_"]}"#,
            "{approvers: [dba], timeout_secs: 600, mode: deny_and_retry}",
        ),
    ]
    .concat();
    let (p, admin) = start("capi-events", 1, &rules);
    create_owned_tables(&p, &["t_dba", "t_ops"]);
    let (dba, dba2, ops) = (
        person("dana", &["dba"]),
        person("dave", &["dba"]),
        person("olga", &["ops"]),
    );
    let dba_events = Sse::connect(admin, &dba);
    let ops_events = Sse::connect(admin, &ops);
    // Connected, never read: its socket's buffers fill and stay full.
    let stalled = TcpStream::connect(admin).unwrap();
    (&stalled)
        .write_all(
            format!(
                "GET /v1/events HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {dba2}\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();

    let conn = p.agent_conninfo(&agent_jwt("agent-ev"), "disable");
    let mut c = psql_bg(&conn, &p.agent, &["DROP TABLE t_dba"]);
    let notice = c.wait_line(WAIT, |err, l| err && l.starts_with("NOTICE:"));
    let noticed = Instant::now();
    let (at, req) = dba_events
        .wait(WAIT, |k, v| k == "approval" && v["state"] == "pending")
        .expect("the held DROP as an event");
    let id = req["id"].as_str().unwrap().to_string();
    assert!(notice.contains(&id), "{notice} / {req}");
    assert!(
        at.saturating_duration_since(noticed) < Duration::from_secs(1),
        "the event came {:?} after the NOTICE",
        at.saturating_duration_since(noticed)
    );
    assert_eq!(req["statement"], "DROP TABLE t_dba", "{req}");

    // ops: a request of their own group only; dba's does not exist for them.
    let mut c_ops = psql_bg(&conn, &p.agent, &["DROP TABLE t_ops"]);
    let notice_ops = c_ops.wait_line(WAIT, |err, l| err && l.starts_with("NOTICE:"));
    let (_, ops_req) = ops_events
        .wait(WAIT, |k, _| k == "approval")
        .expect("ops' own request as an event");
    let ops_id = ops_req["id"].as_str().unwrap().to_string();
    assert!(notice_ops.contains(&ops_id), "{notice_ops}");
    assert!(ops_events
        .wait(Duration::from_millis(500), |_, v| v["id"] == id.as_str())
        .is_none());
    let (status, v) = api(admin, "GET", &format!("/v1/approvals/{id}"), &ops, None);
    assert_eq!(status, 404, "ops sees dba's request: {v}");
    let listed = get(admin, "/v1/approvals", &ops);
    let listed: Vec<&str> = listed["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ops_id.as_str()]);
    let (status, _) = api(
        admin,
        "POST",
        &format!("/v1/approvals/{id}/approve"),
        &ops,
        Some(&json!({})),
    );
    assert_eq!(
        status, 404,
        "ops decided dba's request (or learned it exists)"
    );
    // dba does not see ops' request either.
    let listed = get(admin, "/v1/approvals", &dba);
    let listed: Vec<&str> = listed["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [id.as_str()]);

    // The approval is another event; psql completes.
    let (status, v) = api(
        admin,
        "POST",
        &format!("/v1/approvals/{id}/approve"),
        &dba2,
        Some(&json!({"reason": "ok"})),
    );
    assert_eq!(
        (status, v["state"].as_str()),
        (200, Some("approved")),
        "{v}"
    );
    dba_events
        .wait(Duration::from_secs(1), |k, v| {
            k == "approval" && v["id"] == id.as_str() && v["state"] == "approved"
        })
        .expect("the approval as an event within a second");
    assert!(c.wait_exit(WAIT).success(), "{}", c.text());
    let (status, _) = api(
        admin,
        "POST",
        &format!("/v1/approvals/{ops_id}/deny"),
        &ops,
        Some(&json!({"reason": "no"})),
    );
    assert_eq!(status, 200);
    c_ops.wait_exit(WAIT);

    // 100 decisions with the stalled client connected: in rounds of 20 (the per-identity cap
    // on pending requests), each statement refused at once and waiting for a decision.
    let mut decided = Duration::ZERO;
    let mut slowest = Duration::ZERO;
    for round in 0..5 {
        let stmts: Vec<String> = (0..20)
            .map(|i| format!("DROP TABLE many_{round}_{i}"))
            .collect();
        let stmts: Vec<&str> = stmts.iter().map(String::as_str).collect();
        let mut c = psql_all(&conn, &p.agent, &stmts);
        c.wait_exit(WAIT);
        let pending = get(admin, "/v1/approvals?state=pending", &dba);
        let ids: Vec<String> = pending["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids.len(), 20, "round {round}: {pending}");
        for id in ids {
            let t = Instant::now();
            let (status, v) = api(
                admin,
                "POST",
                &format!("/v1/approvals/{id}/approve"),
                &dba,
                Some(&json!({})),
            );
            let took = t.elapsed();
            assert_eq!(status, 200, "{v}");
            decided += took;
            slowest = slowest.max(took);
        }
    }
    eprintln!("100 decisions with a stalled event client: {decided:?} in all, slowest {slowest:?}");
    assert!(
        slowest < Duration::from_secs(1),
        "a decision took {slowest:?}"
    );
    assert!(
        decided < Duration::from_secs(20),
        "100 decisions took {decided:?}"
    );
    drop(stalled);

    // The sessions that asked for approvals, and only those.
    let auditor = person("aud", &["auditors"]);
    let mut plain = psql_bg(&conn, &p.agent, &["SELECT 1"]);
    assert!(plain.wait_exit(WAIT).success(), "{}", plain.text());
    let mut all = Value::Null;
    wait_until("every session closed on record", WAIT, || {
        all = get(admin, "/v1/sessions?status=closed", &auditor);
        session_ids(&all).len() == 8
    });
    let asked = get(admin, "/v1/sessions?approvals=1", &auditor);
    assert_eq!(session_ids(&asked).len(), 7, "{asked}");
    assert!(
        !session_ids(&asked).contains(&session_ids(&all)[0]),
        "{asked}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Revoke through the API ends the live session; lift lets the agent back.
// ---------------------------------------------------------------------------------------------

#[test]
fn revoke_through_the_api_ends_the_live_session_and_lift_lets_back() {
    let (p, admin) = start("capi-revoke", 2, "");
    let (auditor, admin_person) = (person("aud", &["auditors"]), person("adm", &["admins"]));
    let auditor_events = Sse::connect(admin, &auditor);
    let conn = p.agent_conninfo(&agent_jwt("agent-rv"), "disable");
    let mut live = psql_bg(&conn, &p.agent, &["SELECT 1", "SELECT pg_sleep(60)"]);
    live.wait_line(WAIT, |err, l| !err && l.trim() == "1");
    let body = json!({"subject": "agent-rv", "reason": "leaked token"});
    let (status, v) = api(admin, "POST", "/v1/revocations", &auditor, Some(&body));
    assert_eq!(status, 403, "an auditor revoked: {v}");
    let t = Instant::now();
    let (status, v) = api(admin, "POST", "/v1/revocations", &admin_person, Some(&body));
    assert_eq!(
        (status, v["ended_sessions"].as_i64()),
        (200, Some(1)),
        "{v}"
    );
    let st = live.wait_exit(Duration::from_secs(10));
    assert!(
        !st.success(),
        "the live session survived its revocation: {}",
        live.text()
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    let (_, ev) = auditor_events
        .wait(Duration::from_secs(2), |k, _| k == "revocation")
        .expect("the revocation as an event");
    assert_eq!(
        (ev["action"].as_str(), ev["subject"].as_str()),
        (Some("revoked"), Some("agent-rv")),
        "{ev}"
    );
    let list = get(admin, "/v1/revocations", &auditor);
    let r = &list["revocations"][0];
    assert_eq!(
        r["by"],
        format!("{ISSUER}#adm"),
        "who revoked is on record: {list}"
    );
    // A new session is refused while revoked.
    let mut refused = psql_bg(&conn, &p.agent, &["SELECT 1"]);
    assert!(
        !refused.wait_exit(WAIT).success(),
        "a revoked agent got in: {}",
        refused.text()
    );
    let agents = get(admin, "/v1/agents", &auditor);
    let me = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["subject"] == "agent-rv")
        .cloned()
        .unwrap_or_default();
    assert_eq!(me["status"], "revoked", "{agents}");

    let lift = json!({"subject": "agent-rv"});
    let (status, _) = api(admin, "POST", "/v1/revocations/lift", &auditor, Some(&lift));
    assert_eq!(status, 403);
    let (status, v) = api(
        admin,
        "POST",
        "/v1/revocations/lift",
        &admin_person,
        Some(&lift),
    );
    assert_eq!((status, v["lifted"].as_i64()), (200, Some(1)), "{v}");
    let mut again = psql_bg(&conn, &p.agent, &["SELECT 1"]);
    assert!(
        again.wait_exit(WAIT).success(),
        "lifted, still refused: {}",
        again.text()
    );
}
