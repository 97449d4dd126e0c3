//! Inline masking of what PostgreSQL sends back, end to end: a real PostgreSQL 15, the real
//! gateway with mask rules, real clients (psql in text format, tokio-postgres and psycopg in
//! binary format) in a managed cgroup whose connect() to the database is captured. Each test
//! compares what the agent sees through the gateway with what the same query returns directly,
//! so a gateway that masks nothing (or too much) fails. Root required.
//!
//! The masking contract these tests hold the gateway to: policy `mask:` rules (column patterns
//! matched by the column's origin, value detectors, custom regexes; strategies redact `****`,
//! partial `****` + the last N characters, hash `hmac:` + 16 hex digits of HMAC-SHA256 with
//! `gateway.mask_key`, null), applied to DataRow (text and binary), COPY TO STDOUT, error and
//! notice fields and the session record.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use agentgate_tests::{pg::*, *};
use serde_json::{json, Value};

/// A file in the temp directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &[u8]) -> Self {
        let path = std::env::temp_dir().join(unique(name));
        std::fs::write(&path, contents).expect("write temp file");
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The key of the hash strategy in these tests (no trailing newline: the file is the key).
const MASK_KEY: &str = "k3y-for-masking-tests-8d21f0";

/// `hmac:` + the first 16 hex digits of HMAC-SHA256 under this file's `MASK_KEY`.
fn hmac16(value: &str) -> String {
    agentgate_tests::pg::hmac16(MASK_KEY, value)
}

/// What psql printed for a session of `-c` commands: unaligned, tuples only, quiet (no command
/// tags), `|` between fields, NULL shown as `<NULL>`.
struct Psql {
    lines: Vec<String>,
    stderr: String,
    ok: bool,
}

fn psql_run(conn: &str, cg: Option<&Cgroup>, sqls: &[&str]) -> Psql {
    let mut cmd = psql_command(conn);
    cmd.args(["-A", "-t", "-q", "-F", "|", "-P", "null=<NULL>"]);
    for sql in sqls {
        cmd.args(["-c", sql]);
    }
    place(&mut cmd, cg, None);
    let out = cmd.output().expect("run psql");
    Psql {
        lines: String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        ok: out.status.success(),
    }
}

/// The rows of one query (psql, see [`psql_run`]); panics if psql fails or says anything on
/// stderr.
fn rows(conn: &str, cg: Option<&Cgroup>, sql: &str) -> Vec<String> {
    let r = psql_run(conn, cg, &[sql]);
    assert!(
        r.ok && r.stderr.is_empty(),
        "psql {sql:?} failed: {}\n{}",
        r.stderr,
        r.lines.join("\n")
    );
    r.lines
}

/// `pg-agent <scenario> <conninfo> [arg]` (tokio-postgres, binary results) in `cg`.
fn pg_agent(scenario: &str, conninfo: &str, arg: Option<&str>, cg: Option<&Cgroup>) -> Value {
    let mut cmd = Command::new(pg_agent_bin());
    cmd.args([scenario, conninfo]);
    cmd.args(arg);
    place(&mut cmd, cg, None);
    let out = cmd.output().expect("run pg-agent");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("pg-agent printed {}: {e}", output_text(&out)))
}

/// `pg-agent rows`: each `(sql, params)` prepared and run with binary results; returns the
/// per-statement results (`{"columns", "rows"}` or `{"error"}`).
fn binary_rows(conninfo: &str, cg: Option<&Cgroup>, stmts: &[(&str, &[&str])]) -> Vec<Value> {
    let spec: Vec<Value> = stmts
        .iter()
        .map(|(sql, params)| json!({"sql": sql, "params": params}))
        .collect();
    let v = pg_agent("rows", conninfo, Some(&Value::from(spec).to_string()), cg);
    v["results"]
        .as_array()
        .unwrap_or_else(|| panic!("pg-agent rows: {v}"))
        .clone()
}

/// psycopg (`pg_client.py`) with `statements` (JSON list), optionally binary results.
fn psycopg(conninfo: &str, cg: Option<&Cgroup>, statements: Value, binary: bool) -> Value {
    let mut cmd = pg_client_command_json(conninfo, &statements, binary);
    place(&mut cmd, cg, None);
    let out = cmd.output().expect("run pg_client.py");
    assert!(out.status.success(), "pg_client.py: {}", output_text(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("pg_client.py printed {}: {e}", output_text(&out)))
}

/// Lines of psql's stderr that come from the server's error/notice fields.
fn server_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| {
            [
                "ERROR:", "DETAIL:", "HINT:", "NOTICE:", "CONTEXT:", "QUERY:", "FATAL:",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .collect()
}

/// A mask rule (YAML list item) for target `pg`; `body` is the block under `mask:`, each line
/// without indentation.
fn mask_rule(name: &str, when: Option<&str>, body: &[&str]) -> String {
    let mut r = format!("  - name: {name}\n");
    if let Some(w) = when {
        r += &format!("    when: {w}\n");
    }
    r += "    targets: [pg]\n    mask:\n";
    for line in body {
        r += &format!("      {line}\n");
    }
    r
}

// ---------------------------------------------------------------------------------------------
// 1. Column rules and the four strategies, through psql (text format).
// ---------------------------------------------------------------------------------------------

const CUSTOMERS: &str = r#"
CREATE TABLE customers (id int PRIMARY KEY, name text, email text UNIQUE, card_number text, ssn text, phone text, notes text, doc jsonb);
INSERT INTO customers VALUES
 (1, 'Alice Martin', 'alice@example.com', '4111111111111111', '536-22-8147', '+1 415 555 0132', 'prefers email', '{"tier": "gold", "contact": "alice@example.com"}'),
 (2, 'Bob Stone', 'bob@example.org', '5500005555555559', '536-22-9012', '+1 212 555 0187', 'call after 5pm', '{"tier": "silver"}'),
 (3, 'Carol Diaz', 'carol@example.net', '4111111111111111', NULL, NULL, NULL, NULL),
 (4, 'Dan Wu', 'dan@example.com', '4012888888881881', '1234', '+44 20 7946 0958', '', '{}');
CREATE TABLE orders (id int PRIMARY KEY, customer_id int, email text, amount numeric(10,2));
INSERT INTO orders VALUES (10, 1, 'ship-alice@example.com', 25.00), (11, 2, 'bob@example.org', 12.50);
CREATE TABLE payments (id int PRIMARY KEY, order_id int, card_number text);
INSERT INTO payments VALUES (100, 10, '4111111111111111'), (101, 11, '5500005555555559');
CREATE TABLE employees (id int PRIMARY KEY, name text, ssn text);
INSERT INTO employees VALUES (1, 'Eve Park', '536-22-5566');
CREATE VIEW v AS SELECT id, email AS e FROM customers;
CREATE VIEW v_lower AS SELECT id, lower(email) AS le, name FROM customers;
CREATE VIEW v_staff AS SELECT id, name FROM employees;
CREATE VIEW vv AS SELECT id, e AS ee FROM v;
CREATE SCHEMA crm;
CREATE TABLE crm.customers (id int PRIMARY KEY, email text, doc jsonb);
INSERT INTO crm.customers VALUES (1, 'crm-alice@example.com', '{"a": 1}');
GRANT USAGE ON SCHEMA crm TO agentgate_scram;
GRANT SELECT ON crm.customers TO agentgate_scram;
"#;

fn column_rules() -> String {
    [
        mask_rule(
            "mask-email",
            None,
            &[
                r#"columns: ["customers.email", "PUBLIC.Customers.DOC", "v_staff.name"]"#,
                "strategy: redact",
            ],
        ),
        mask_rule(
            "mask-ssn",
            Some("{groups: [agents]}"),
            &[r#"columns: ["*.ssn"]"#, "strategy: partial", "keep_last: 4"],
        ),
        mask_rule(
            "mask-card",
            None,
            &[r#"columns: ["card_number"]"#, "strategy: hash"],
        ),
        mask_rule(
            "mask-phone",
            None,
            &[r#"columns: ["phone"]"#, "strategy: null"],
        ),
        // Later in the file: for ssn and email the rules above come first and win.
        mask_rule(
            "mask-late",
            None,
            &[
                r#"columns: ["customers.ssn", "customers.email"]"#,
                "strategy: null",
            ],
        ),
    ]
    .concat()
}

#[test]
fn column_rules_mask_by_origin_with_each_strategy() {
    let key = TempFile::new("mcols-mask-key", MASK_KEY.as_bytes());
    let mut opts = PgTargetOptions {
        extra_rules: column_rules(),
        mask_key: Some(key.0.clone()),
        ..Default::default()
    };
    let p = PgGateway::start("mcols", 16970, 17970, PgOptions::default(), &opts);
    p.pg.sql_in("agentdb", CUSTOMERS);
    let token = agent_jwt("agent-mcols");
    let conn = p.agent_conninfo(&token, "disable");
    let direct = p.direct_conninfo(ROLE_SCRAM);
    let through = |sql: &str| rows(&conn, Some(&p.agent), sql);
    let straight = |sql: &str| rows(&direct, None, sql);
    let (visa, mc, visa2) = (
        hmac16("4111111111111111"),
        hmac16("5500005555555559"),
        hmac16("4012888888881881"),
    );

    // SELECT *: each rule's strategy on its column; NULL stays NULL; a value no longer than
    // keep_last is all stars; jsonb becomes the JSON string "****"; unmasked columns as they are.
    let all = "SELECT * FROM customers ORDER BY id";
    assert_eq!(
        through(all),
        vec![
            format!("1|Alice Martin|****|{visa}|****8147|<NULL>|prefers email|\"****\""),
            format!("2|Bob Stone|****|{mc}|****9012|<NULL>|call after 5pm|\"****\""),
            format!("3|Carol Diaz|****|{visa}|<NULL>|<NULL>|<NULL>|<NULL>"),
            format!("4|Dan Wu|****|{visa2}|****|<NULL>||\"****\""),
        ]
    );
    // The same query directly: the real values.
    assert_eq!(
        straight(all),
        vec![
            "1|Alice Martin|alice@example.com|4111111111111111|536-22-8147|+1 415 555 0132|prefers email|{\"tier\": \"gold\", \"contact\": \"alice@example.com\"}",
            "2|Bob Stone|bob@example.org|5500005555555559|536-22-9012|+1 212 555 0187|call after 5pm|{\"tier\": \"silver\"}",
            "3|Carol Diaz|carol@example.net|4111111111111111|<NULL>|<NULL>|<NULL>|<NULL>",
            "4|Dan Wu|dan@example.com|4012888888881881|1234|+44 20 7946 0958||{}",
        ]
    );
    // Hashes are stable across sessions (another psql run gives the same), and equal values
    // give equal hashes (rows 1 and 3 share a card: checked above), so the agent can join.
    assert_eq!(
        through("SELECT card_number FROM customers WHERE id = 3"),
        vec![visa.clone()]
    );
    assert_ne!(visa, mc);

    // A join: each column by its own origin. orders.email is not customers.email (not masked,
    // even where its value equals a masked one); the bare `card_number` pattern matches
    // payments.card_number too, with the same hash as the customer's card.
    let join = "SELECT c.name, c.email, o.email AS ship_to, o.amount, p.card_number \
                FROM customers c JOIN orders o ON o.customer_id = c.id \
                JOIN payments p ON p.order_id = o.id ORDER BY o.id";
    assert_eq!(
        through(join),
        vec![
            format!("Alice Martin|****|ship-alice@example.com|25.00|{visa}"),
            format!("Bob Stone|****|bob@example.org|12.50|{mc}"),
        ]
    );
    assert_eq!(
        straight(join),
        vec![
            "Alice Martin|alice@example.com|ship-alice@example.com|25.00|4111111111111111",
            "Bob Stone|bob@example.org|bob@example.org|12.50|5500005555555559",
        ]
    );

    // Aliases do not hide a column (its origin is the same); an alias named like a masked
    // column does not mask another column (`customers.email` is table-qualified).
    let aliases = "SELECT email AS contact, ssn AS tax_id, card_number AS pan, phone AS tel, \
                   name AS email FROM customers WHERE id = 1";
    assert_eq!(
        through(aliases),
        vec![format!("****|****8147|{visa}|<NULL>|Alice Martin")]
    );
    assert_eq!(
        straight(aliases),
        vec!["alice@example.com|536-22-8147|4111111111111111|+1 415 555 0132|Alice Martin"]
    );
    // A bare pattern also matches an expression column by its output name; its value is not
    // known to be the column's, so it is redacted, not hashed (a hash of a guess would be
    // compared with the real column's).
    assert_eq!(
        through(
            "SELECT '4000000000000002'::text AS card_number, '+1 650 555 0100'::text AS phone, \
             'plain'::text AS other"
        ),
        vec!["****|<NULL>|plain"]
    );
    // Pattern parts are case-insensitive; `customers.email` is any schema's, and
    // `public.customers.doc` only public's.
    assert_eq!(
        through("SELECT email, doc FROM crm.customers"),
        vec!["****|{\"a\": 1}"]
    );
    // `*.ssn` matches every table's ssn.
    assert_eq!(
        through("SELECT name, ssn FROM employees"),
        vec!["Eve Park|****5566"]
    );

    // Views: a view column reading a masked column is masked with its rule (also when it is an
    // expression over it); a view column is also matched by its own name, which does not mask
    // the base table's column.
    assert_eq!(
        through("SELECT id, e FROM v ORDER BY id LIMIT 2"),
        vec!["1|****", "2|****"]
    );
    assert_eq!(
        straight("SELECT id, e FROM v ORDER BY id LIMIT 2"),
        vec!["1|alice@example.com", "2|bob@example.org"]
    );
    assert_eq!(through("SELECT ee FROM vv WHERE id = 2"), vec!["****"]);
    assert_eq!(
        through("SELECT le, name FROM v_lower WHERE id = 1"),
        vec!["****|Alice Martin"]
    );
    assert_eq!(through("SELECT id, name FROM v_staff"), vec!["1|****"]);
    assert_eq!(
        through("SELECT id, name FROM employees"),
        vec!["1|Eve Park"]
    );

    // Expressions have no origin, but the gateway reads the statement: a result column
    // computed in a SELECT list that names a masked column (or a whole row of its table) is
    // masked with that column's rule, however it is encoded. Columns computed from nothing
    // masked stay as they are, and a masked column used only in WHERE does not mask a count.
    let exprs = "SELECT upper(email), encode(email::bytea, 'hex') FROM customers WHERE id = 1";
    let alice_hex = "616c696365406578616d706c652e636f6d";
    assert_eq!(through(exprs), vec!["****|****"]);
    assert_eq!(
        straight(exprs),
        vec![format!("ALICE@EXAMPLE.COM|{alice_hex}")]
    );
    for whole_row in [
        "SELECT row_to_json(c)::text FROM customers c WHERE id = 1",
        "SELECT c::text FROM customers c WHERE id = 1",
        "SELECT string_agg(ssn, ',') FROM customers",
        "SELECT x FROM (SELECT lower(email) AS x FROM customers WHERE id = 1) s",
        // Qualified: crm.customers has no `name`, where it would be a whole row (an
        // unqualified name counts as every schema's table of that name, docs/masking.md).
        "UPDATE public.customers SET name = name WHERE id = 1 RETURNING email",
    ] {
        let got = through(whole_row);
        assert_eq!(got.len(), 1, "{whole_row}: {got:?}");
        assert!(
            got[0] == "****" || got[0].starts_with("****"),
            "{whole_row}: {got:?}"
        );
        assert!(!got[0].contains('@'), "{whole_row}: {got:?}");
    }
    // What the statement computes cannot be followed column by column (alias lists, VALUES,
    // functions in FROM): any computed column that refers to a column of a table with masked
    // columns is masked — also one over an unmasked column (over-masking, documented). A count
    // refers to no column and stays a count, whatever WHERE uses.
    assert_eq!(
        through("SELECT count(*) FROM customers WHERE email LIKE 'alice%'"),
        vec!["1"]
    );
    assert_eq!(
        through("SELECT upper(name), id FROM customers WHERE id = 1"),
        vec!["****|1"]
    );
    for hidden in [
        "SELECT lower(e) FROM customers c(i, n, e) WHERE i = 1",
        "SELECT lower(t.v) FROM customers c, LATERAL (VALUES (c.email)) t(v) WHERE c.id = 1",
        "SELECT j->>'email' FROM customers c, to_jsonb(c) j WHERE c.id = 1",
        "SELECT lower(e) FROM v WHERE id = 1",
    ] {
        assert_eq!(through(hidden), vec!["****"], "{hidden}");
    }
    // A table no rule covers keeps its computed columns.
    assert_eq!(
        through("SELECT amount * 2, upper(email) FROM orders WHERE id = 10"),
        vec!["50.00|SHIP-ALICE@EXAMPLE.COM"]
    );
    // A cursor's rows come without their query: what a FETCH returns without an origin is
    // masked.
    let r = psql_run(
        &conn,
        Some(&p.agent),
        &[
            "BEGIN",
            "DECLARE cur CURSOR FOR SELECT lower(email), id FROM customers ORDER BY id",
            "FETCH 1 FROM cur",
            "COMMIT",
        ],
    );
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.lines, vec!["****|1"]);

    // Copying masked values where no rule names them is refused: into a new table, into
    // another table or column, or through code the gateway cannot read. Overwriting a masked
    // column, and a view (traced like any other), are fine.
    for copy in [
        "CREATE TEMP TABLE stash AS SELECT email FROM customers",
        "SELECT email INTO TEMP stash FROM customers",
        "INSERT INTO orders (id, customer_id, email) SELECT 90 + id, id, email FROM customers",
        "UPDATE customers SET notes = email WHERE id = 1",
        "DO $$ BEGIN RAISE NOTICE '%', (SELECT email FROM customers LIMIT 1); END $$",
        // Through a view, under another name, or into a notification.
        "CREATE TEMP TABLE stash AS SELECT e FROM v",
        "CREATE TEMP TABLE stash AS SELECT y FROM customers c(i, n, y)",
        "SELECT 1 FROM customers WHERE pg_notify('ch', email) IS NULL",
        // The planner's statistics hold sample values of every column.
        "SELECT attname, histogram_bounds::text FROM pg_stats WHERE tablename = 'customers'",
    ] {
        let r = psql_run(&conn, Some(&p.agent), &[copy]);
        assert!(!r.ok, "{copy}: allowed");
        assert!(
            r.stderr.contains("ERROR:  agentgate:") && r.stderr.contains("mask rule"),
            "{copy}: {}",
            r.stderr
        );
        assert!(!r.stderr.contains("alice@"), "{copy}: {}", r.stderr);
    }
    assert_eq!(
        straight("SELECT count(*) FROM orders WHERE id > 90"),
        vec!["0"]
    );
    // COPY of a query over a view of a masked column cannot be masked column by column: the
    // view is resolved to what it reads, like a computed column's statement.
    let r = psql_run(&conn, Some(&p.agent), &["COPY (SELECT e FROM v) TO STDOUT"]);
    assert!(
        !r.ok && r.stderr.contains("ERROR:  agentgate:"),
        "{}",
        r.stderr
    );
    assert!(
        r.lines.is_empty() && !r.stderr.contains("alice@"),
        "{:?}",
        r.lines
    );
    let r = psql_run(
        &conn,
        Some(&p.agent),
        &["UPDATE public.customers SET notes = notes WHERE id = 1 RETURNING email"],
    );
    assert!(r.ok, "{}", r.stderr);
    let r = psql_run(
        &conn,
        Some(&p.agent),
        &["UPDATE public.customers SET name = name, notes = upper(notes) WHERE id = 4"],
    );
    assert!(r.ok, "{}", r.stderr);
    // Errors quote values in other classes too (`relation "536-22-8147" does not exist`), and
    // a data error quoting a value names no column: the errors of a statement that reads a
    // table with masked columns lose their texts whole (tests/tests/mask_errors.rs).
    for (sql, code) in [
        ("SELECT ssn::regclass FROM customers WHERE id = 1", "42P01"),
        ("SELECT email::int FROM customers", "22P02"),
    ] {
        let r = psql_run(&conn, Some(&p.agent), &[sql]);
        assert_eq!(
            r.stderr.trim_end(),
            format!("ERROR:  agentgate: the error text was hidden because the statement reads masked columns (SQLSTATE {code})"),
            "{sql}"
        );
    }

    // DDL in the session: the gateway resolves origins again. A column renamed to a masked name
    // is masked right after the rename; a view the agent creates is masked like any other.
    let r = psql_run(
        &conn,
        Some(&p.agent),
        &[
            "CREATE TABLE agent_t (id int, contact text)",
            "INSERT INTO agent_t VALUES (1, 'kestrel-7731-x')",
            "SELECT contact FROM agent_t",
            "ALTER TABLE agent_t RENAME COLUMN contact TO ssn",
            "SELECT ssn FROM agent_t",
            "CREATE VIEW agent_v AS SELECT id, ssn AS s FROM customers",
            "SELECT s FROM agent_v WHERE id = 1",
            "DROP VIEW agent_v",
            "DROP TABLE agent_t",
        ],
    );
    assert!(r.ok && r.stderr.is_empty(), "{}", r.stderr);
    assert_eq!(r.lines, vec!["kestrel-7731-x", "****31-x", "****8147"]);

    // With a value detector as well, orders.email (no column rule) is masked by value; the
    // expressions over customers.email stay masked whole by its column rule.
    opts.extra_rules = column_rules() + &mask_rule("detect-email", None, &["detectors: [email]"]);
    p.set_policy(&opts);
    let exprs = "SELECT upper(email), encode(email::bytea, 'hex'), 'mail ' || email, notes \
                 FROM customers WHERE id = 1";
    assert_eq!(through(exprs), vec!["****|****|****|prefers email"]);
    assert_eq!(
        straight(exprs),
        vec![format!(
            "ALICE@EXAMPLE.COM|{alice_hex}|mail alice@example.com|prefers email"
        )]
    );
    assert_eq!(
        through("SELECT email FROM orders ORDER BY id"),
        vec!["****", "****"]
    );
    // The column rules still give their own strategy to their columns.
    assert_eq!(
        through("SELECT card_number, ssn, phone FROM customers WHERE id = 2"),
        vec![format!("{mc}|****9012|<NULL>")]
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Value detectors and custom regexes on free text and expressions.
// ---------------------------------------------------------------------------------------------

const JWT_EXAMPLE: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

fn detector_rules() -> String {
    [
        mask_rule(
            "detect-pii",
            None,
            &[
                "detectors: [email, payment_card, us_ssn, phone, iban, secret]",
                r#"regexes: ["EMP-[0-9]{6}"]"#,
            ],
        ),
        // email is listed here too, but detect-pii lists it first: emails are redacted.
        mask_rule(
            "detect-ip-hashed",
            None,
            &["detectors: [ip, email]", "strategy: hash"],
        ),
        mask_rule(
            "detect-codeword",
            None,
            &[r#"regexes: ["CODEWORD-[A-Z]{4}"]"#, "strategy: null"],
        ),
        mask_rule(
            "detect-account",
            None,
            &[
                r#"regexes: ["ACCT-[0-9]{8}"]"#,
                "strategy: partial",
                "keep_last: 3",
            ],
        ),
    ]
    .concat()
}

#[test]
fn value_detectors_mask_matches_inside_any_text() {
    let key = TempFile::new("mdetect-mask-key", MASK_KEY.as_bytes());
    let p = PgGateway::start(
        "mdetect",
        16971,
        17971,
        PgOptions::default(),
        &PgTargetOptions {
            extra_rules: detector_rules(),
            mask_key: Some(key.0.clone()),
            ..Default::default()
        },
    );
    // (raw, expected through the gateway)
    let ip_hash = hmac16("203.0.113.42");
    let cases: Vec<(String, Option<String>)> = vec![
        (
            "write to alice@example.com today".into(),
            Some("write to **** today".into()),
        ),
        (
            "card 4111 1111 1111 1111 on file".into(),
            Some("card **** on file".into()),
        ),
        // Fails the Luhn check: not a card.
        (
            "ref 4111 1111 1111 1112 is not a card".into(),
            Some("ref 4111 1111 1111 1112 is not a card".into()),
        ),
        // Nine digits without separators: an id, not an SSN.
        (
            "order 123456789 shipped".into(),
            Some("order 123456789 shipped".into()),
        ),
        (
            "ssn 536-22-8147 on record".into(),
            Some("ssn **** on record".into()),
        ),
        (
            "login from 203.0.113.42 at noon".into(),
            Some(format!("login from {ip_hash} at noon")),
        ),
        (format!("bearer {JWT_EXAMPLE}"), Some("bearer ****".into())),
        // The custom regex: six digits match, five do not.
        (
            "employee EMP-123456 badge EMP-12345".into(),
            Some("employee **** badge EMP-12345".into()),
        ),
        (
            "alice@example.com, bob@example.org".into(),
            Some("****, ****".into()),
        ),
        (
            "pay to DE89370400440532013000 now".into(),
            Some("pay to **** now".into()),
        ),
        (
            "paid with 5500005555555559.".into(),
            Some("paid with ****.".into()),
        ),
        // strategy null on a detector hit: the whole value becomes NULL.
        ("the word is CODEWORD-ABCD".into(), None),
        (
            "acct ACCT-12345678 closed".into(),
            Some("acct ****678 closed".into()),
        ),
        (
            "nothing to see here".into(),
            Some("nothing to see here".into()),
        ),
        // Phone numbers with a phone's shape; ten digits written together are any integer.
        (
            "call +1 (415) 555-2671 or +44 20 7946 0958".into(),
            Some("call **** or ****".into()),
        ),
        (
            "ticket 4155552671 closed".into(),
            Some("ticket 4155552671 closed".into()),
        ),
        // Nine digits together are an SSN only right after an ssn label.
        ("SSN: 536228147".into(), Some("SSN: ****".into())),
    ];
    let mut sql =
        String::from("CREATE TABLE tickets (id int PRIMARY KEY, body text, doc jsonb);\n");
    for (i, (raw, _)) in cases.iter().enumerate() {
        sql += &format!(
            "INSERT INTO tickets (id, body) VALUES ({}, '{}');\n",
            i + 1,
            raw.replace('\'', "''")
        );
    }
    sql += "UPDATE tickets SET doc = '{\"tier\": \"gold\", \"contact\": \"carol@example.net\"}' WHERE id = 1;\n";
    p.pg.sql_in("agentdb", &sql);
    let token = agent_jwt("agent-mdetect");
    let conn = p.agent_conninfo(&token, "disable");
    let direct = p.direct_conninfo(ROLE_SCRAM);

    let q = "SELECT body FROM tickets ORDER BY id";
    let expected: Vec<String> = cases
        .iter()
        .map(|(_, e)| e.clone().unwrap_or_else(|| "<NULL>".into()))
        .collect();
    let raw: Vec<String> = cases.iter().map(|(r, _)| r.clone()).collect();
    let got = rows(&conn, Some(&p.agent), q);
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "row {} (raw {:?})", i + 1, raw[i]);
    }
    assert_eq!(got.len(), expected.len(), "{got:?}");
    assert_eq!(rows(&direct, None, q), raw);

    // Expressions carry the values with them; so does a literal; jsonb is masked inside its
    // text (text format).
    assert_eq!(
        rows(
            &conn,
            Some(&p.agent),
            "SELECT body || ' (copy)', upper(body), 'mail: ' || 'someone@example.com', doc \
             FROM tickets WHERE id = 1"
        ),
        vec!["write to **** today (copy)|WRITE TO **** TODAY|mail: ****|{\"tier\": \"gold\", \"contact\": \"****\"}"]
    );
    // Text-format values of any type are masked as text: a Luhn-valid bigint is a card number.
    assert_eq!(
        rows(
            &conn,
            Some(&p.agent),
            "SELECT 4111111111111111::bigint AS n, 42 AS answer"
        ),
        vec!["****|42"]
    );

    // Binary format (tokio-postgres): text and jsonb (after its version byte) are masked
    // alike; inside a binary bigint no detector looks (documented limit).
    let b = binary_rows(
        &conn,
        Some(&p.agent),
        &[
            (
                "SELECT id, body, doc FROM tickets WHERE id IN (1, 2, 4) ORDER BY id",
                &[],
            ),
            ("SELECT 4111111111111111::bigint AS n", &[]),
        ],
    );
    assert_eq!(
        b[0]["rows"],
        json!([
            [
                1,
                "write to **** today",
                "{\"tier\": \"gold\", \"contact\": \"****\"}"
            ],
            [2, "card **** on file", null],
            [4, "order 123456789 shipped", null]
        ]),
        "{b:?}"
    );
    assert_eq!(b[1]["rows"], json!([[4111111111111111i64]]), "{b:?}");
    let d = binary_rows(
        &direct,
        None,
        &[("SELECT id, body, doc FROM tickets WHERE id = 1", &[])],
    );
    assert_eq!(
        d[0]["rows"],
        json!([[
            1,
            "write to alice@example.com today",
            "{\"tier\": \"gold\", \"contact\": \"carol@example.net\"}"
        ]]),
        "{d:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Binary format (tokio-postgres, psycopg), binary: null / refuse, live reload.
// ---------------------------------------------------------------------------------------------

const BINARY_TABLES: &str = r#"
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn_num bigint, born date, notes text, doc jsonb, nick varchar(20), code char(4), extra jsonb);
INSERT INTO customers VALUES
 (1, 'Alice Martin', 'alice@example.com', 536228147, '1985-04-12', 'vip; wrote from alice@example.com', '{"tier": "gold"}', 'ally', 'A001', '{"backup": "alice.b@example.com"}'),
 (2, 'Bob Stone', 'bob@example.org', 536229012, '1979-11-30', 'no notes', '{"tier": "silver"}', 'bobby', 'B002', NULL);
"#;

fn binary_rules(binary: &str, extra: &str) -> String {
    mask_rule(
        "mask-pii",
        None,
        &[
            r#"columns: ["customers.email", "customers.ssn_num", "customers.born", "customers.doc", "customers.nick", "customers.code"]"#,
            "strategy: redact",
            &format!("binary: {binary}"),
        ],
    ) + &mask_rule("detect-email", None, &["detectors: [email]"])
        + extra
}

#[test]
fn binary_format_masking_and_live_reload() {
    let mut opts = PgTargetOptions {
        extra_rules: binary_rules("null", ""),
        ..Default::default()
    };
    let p = PgGateway::start("mbinary", 16972, 17972, PgOptions::default(), &opts);
    p.pg.sql_in("agentdb", BINARY_TABLES);
    let token = agent_jwt("agent-mbinary");
    let conn = p.agent_conninfo(&token, "disable");
    let direct = p.direct_conninfo(ROLE_SCRAM);
    let all = "SELECT id, name, email, ssn_num, born, notes, doc, nick, code, extra FROM customers ORDER BY id";

    // tokio-postgres asks for every column in binary: text-like types (text, varchar, bpchar,
    // jsonb with its version byte) are masked as text; a bigint and a date hit by the column rule
    // become NULL (binary: null); detectors work inside binary text and jsonb.
    let b = binary_rows(&conn, Some(&p.agent), &[(all, &[])]);
    assert_eq!(
        b[0]["rows"],
        json!([
            [
                1,
                "Alice Martin",
                "****",
                null,
                null,
                "vip; wrote from ****",
                "\"****\"",
                "****",
                "****",
                "{\"backup\": \"****\"}"
            ],
            [
                2,
                "Bob Stone",
                "****",
                null,
                null,
                "no notes",
                "\"****\"",
                "****",
                "****",
                null
            ]
        ]),
        "{b:?}"
    );
    let d = binary_rows(&direct, None, &[(all, &[])]);
    assert_eq!(
        d[0]["rows"][0],
        json!([
            1,
            "Alice Martin",
            "alice@example.com",
            536228147,
            "\\xffffeaff",
            "vip; wrote from alice@example.com",
            "{\"tier\": \"gold\"}",
            "ally",
            "A001",
            "{\"backup\": \"alice.b@example.com\"}"
        ]),
        "{d:?}"
    );

    // psycopg with binary results: the same.
    let py_all = json!([all]);
    let v = psycopg(&conn, Some(&p.agent), py_all.clone(), true);
    assert_eq!(v["error"], Value::Null, "{v}");
    assert_eq!(
        v["results"][0],
        json!([
            [
                "1",
                "Alice Martin",
                "****",
                null,
                null,
                "vip; wrote from ****",
                "****",
                "****",
                "****",
                "{'backup': '****'}"
            ],
            [
                "2",
                "Bob Stone",
                "****",
                null,
                null,
                "no notes",
                "****",
                "****",
                "****",
                null
            ]
        ]),
        "{v}"
    );
    let v = psycopg(&direct, None, py_all.clone(), true);
    assert_eq!(
        v["results"][0][0],
        json!([
            "1",
            "Alice Martin",
            "alice@example.com",
            "536228147",
            "1985-04-12",
            "vip; wrote from alice@example.com",
            "{'tier': 'gold'}",
            "ally",
            "A001",
            "{'backup': 'alice.b@example.com'}"
        ]),
        "{v}"
    );
    // Text format masks the same columns as text.
    assert_eq!(
        rows(
            &conn,
            Some(&p.agent),
            "SELECT ssn_num, born, email FROM customers WHERE id = 1"
        ),
        vec!["****|****|****"]
    );

    // A prepared statement executed again after a reload follows the policy in force at each
    // execution: unmasked, masked once a rule for `name` is added, unmasked again once it is gone.
    let mut cmd = Command::new(pg_agent_bin());
    cmd.args([
        "reexec",
        &conn,
        "SELECT id, name, notes FROM customers WHERE id = 2",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    place(&mut cmd, Some(&p.agent), None);
    let mut child = cmd.spawn().expect("spawn pg-agent reexec");
    let mut stdin = child.stdin.take().expect("stdin");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| -> Value {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("pg-agent reexec, {what}: no output ({e})"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("reexec printed {line:?}: {e}"))
    };
    let first = next("first execution");
    assert_eq!(
        first["rows"],
        json!([[2, "Bob Stone", "no notes"]]),
        "{first}"
    );
    opts.extra_rules = binary_rules(
        "null",
        &mask_rule("mask-name", None, &[r#"columns: ["customers.name"]"#]),
    );
    p.set_policy(&opts);
    writeln!(stdin, "again").expect("write to pg-agent");
    let second = next("after adding a rule");
    assert_eq!(second["rows"], json!([[2, "****", "no notes"]]), "{second}");
    opts.extra_rules = binary_rules("null", "");
    p.set_policy(&opts);
    writeln!(stdin, "again").expect("write to pg-agent");
    let third = next("after removing the rule");
    assert_eq!(
        third["rows"],
        json!([[2, "Bob Stone", "no notes"]]),
        "{third}"
    );
    drop(stdin);
    let status = child.wait().expect("wait pg-agent");
    assert!(status.success(), "pg-agent reexec: {status}");

    // binary: refuse: a binary non-text column hit by the rule ends the session with FATAL
    // 42501 naming the column, before any of its values arrive. Columns that can be masked as
    // text are still served in binary, and text format is unaffected.
    opts.extra_rules = binary_rules("refuse", "");
    p.set_policy(&opts);
    let b = binary_rows(
        &conn,
        Some(&p.agent),
        &[
            (
                "SELECT id, email, notes, doc FROM customers ORDER BY id",
                &[],
            ),
            ("SELECT id, ssn_num FROM customers ORDER BY id", &[]),
            ("SELECT 1", &[]),
        ],
    );
    assert_eq!(
        b[0]["rows"],
        json!([
            [1, "****", "vip; wrote from ****", "\"****\""],
            [2, "****", "no notes", "\"****\""]
        ]),
        "{b:?}"
    );
    let e = &b[1]["error"];
    assert_eq!(
        (e["sqlstate"].as_str(), e["severity"].as_str()),
        (Some("42501"), Some("FATAL")),
        "{b:?}"
    );
    assert!(s(e, "message").contains("ssn_num"), "{b:?}");
    assert!(b[1].get("rows").is_none(), "{b:?}");
    assert!(
        b[2].get("error").is_some(),
        "the session goes on after FATAL: {b:?}"
    );
    let v = psycopg(
        &conn,
        Some(&p.agent),
        json!(["SELECT name, born FROM customers ORDER BY id"]),
        true,
    );
    assert_eq!(v["error"]["sqlstate"], "42501", "{v}");
    assert_eq!(v["error"]["severity"], "FATAL", "{v}");
    assert!(s(&v["error"], "message").contains("born"), "{v}");
    assert_eq!(v["results"], json!([]), "{v}");
    assert_eq!(
        rows(
            &conn,
            Some(&p.agent),
            "SELECT ssn_num, born FROM customers WHERE id = 2"
        ),
        vec!["****|****"]
    );
    assert!(
        p.wait_no_upstream(Duration::from_secs(5)),
        "upstream session left behind"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. COPY, error and notice fields, and the session record.
// ---------------------------------------------------------------------------------------------

const COPY_TABLES: &str = r#"
CREATE TABLE customers (id int PRIMARY KEY, login text UNIQUE, name text, email text UNIQUE, card_number text NOT NULL, ssn text);
INSERT INTO customers VALUES
 (1, 'alice', 'Alice Martin', 'alice@example.com', '4111111111111111', '536-22-8147'),
 (2, 'kestrel-7731', 'Bob Stone', 'bob@example.org', '5500005555555559', '536-22-9012');
CREATE TABLE orders (id int PRIMARY KEY, customer_id int, note text);
INSERT INTO orders VALUES (10, 1, 'ship to alice@example.com'), (11, 2, 'gift wrap');
CREATE FUNCTION contact_notice() RETURNS void LANGUAGE plpgsql AS $$ BEGIN RAISE NOTICE 'contact %', 'bob@example.org' USING DETAIL = 'card 4111 1111 1111 1111', HINT = 'ssn 536-22-9012'; END $$;
CREATE FUNCTION cast_inside() RETURNS int LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'SELECT ''carol@example.net''::int'; RETURN 1; END $$;
"#;

/// Every sensitive value this test puts in the database or sends in a statement.
const SENSITIVE: &[&str] = &[
    "alice@example.com",
    "bob@example.org",
    "new@example.com",
    "erin@example.com",
    "carol@example.net",
    "param@example.com",
    "binparam@example.com",
    "4111111111111111",
    "4111 1111 1111 1111",
    "5500005555555559",
    "4000000000000002",
    "536-22-8147",
    "536-22-9012",
    "536-22-1111",
];

fn copy_rules() -> String {
    mask_rule(
        "mask-pii",
        None,
        &[
            r#"columns: ["customers.email", "customers.card_number", "customers.ssn"]"#,
            "detectors: [email, payment_card, us_ssn]",
        ],
    )
}

#[test]
fn copy_errors_and_the_record_are_masked() {
    let p = PgGateway::start(
        "mcopy",
        16973,
        17973,
        PgOptions::default(),
        &PgTargetOptions {
            extra_rules: copy_rules(),
            ..Default::default()
        },
    );
    p.pg.sql_in("agentdb", COPY_TABLES);
    let token = agent_jwt("agent-mcopy");
    let conn = p.agent_conninfo(&token, "disable");
    let direct = p.direct_conninfo(ROLE_SCRAM);

    // COPY table TO STDOUT (text): by column, NULL-free here; detectors on every field.
    let copy_all = "COPY customers TO STDOUT";
    assert_eq!(
        rows(&conn, Some(&p.agent), copy_all),
        vec![
            "1\talice\tAlice Martin\t****\t****\t****",
            "2\tkestrel-7731\tBob Stone\t****\t****\t****",
        ]
    );
    assert_eq!(
        rows(&direct, None, copy_all),
        vec![
            "1\talice\tAlice Martin\talice@example.com\t4111111111111111\t536-22-8147",
            "2\tkestrel-7731\tBob Stone\tbob@example.org\t5500005555555559\t536-22-9012",
        ]
    );
    assert_eq!(
        rows(
            &conn,
            Some(&p.agent),
            "COPY customers (id, email) TO STDOUT"
        ),
        vec!["1\t****", "2\t****"]
    );
    // A table no column rule names: detectors on each line, in text and in CSV, and from a query.
    assert_eq!(
        rows(&conn, Some(&p.agent), "COPY orders TO STDOUT"),
        vec!["10\t1\tship to ****", "11\t2\tgift wrap"]
    );
    assert_eq!(
        rows(&conn, Some(&p.agent), "COPY orders TO STDOUT (FORMAT csv)"),
        vec!["10,1,ship to ****", "11,2,gift wrap"]
    );
    assert_eq!(
        rows(
            &conn,
            Some(&p.agent),
            "COPY (SELECT id, note FROM orders ORDER BY id) TO STDOUT"
        ),
        vec!["10\tship to ****", "11\tgift wrap"]
    );
    // psql's \copy is COPY ... TO STDOUT on the wire.
    let r = psql_run(
        &conn,
        Some(&p.agent),
        &["\\copy customers (id, card_number, ssn) to stdout"],
    );
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.lines, vec!["1\t****\t****", "2\t****\t****"]);

    // What a column rule could apply to and cannot be masked by column: COPY (query), CSV,
    // binary. Refused with ERROR 42501 `agentgate: …`; the session goes on. Binary COPY cannot
    // be scanned at all: refused under any mask rule (docs/policy.md).
    let r = psql_run(
        &conn,
        Some(&p.agent),
        &[
            "COPY (SELECT email FROM customers) TO STDOUT",
            "COPY customers TO STDOUT (FORMAT csv)",
            "COPY customers (id, email) TO STDOUT (FORMAT binary)",
            "COPY orders TO STDOUT (FORMAT binary)",
            "SELECT 'still here'",
        ],
    );
    let errors: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("ERROR:"))
        .collect();
    assert_eq!(errors.len(), 4, "{}", r.stderr);
    assert!(
        errors.iter().all(|l| l.starts_with("ERROR:  agentgate: ")),
        "{}",
        r.stderr
    );
    assert_eq!(r.lines, vec!["still here"], "{}", r.stderr);
    let r = psql_run(
        &conn,
        Some(&p.agent),
        &[
            "\\set VERBOSITY verbose",
            "COPY (SELECT email FROM customers) TO STDOUT",
        ],
    );
    assert!(
        r.stderr.contains("ERROR:  42501: agentgate: "),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("@example"), "{}", r.stderr);

    // Error fields: the unique violation's DETAIL names the key's value, the NOT NULL
    // violation's the whole row. A statement on a table with masked columns loses every text of
    // its errors (only the SQLSTATE is left: tests/tests/mask_errors.rs); on another table, with
    // a column rule in force, the values are replaced, whatever column they are from. Message,
    // detail, hint, context and internal query go through the detectors, in errors and notices
    // alike.
    let errs = [
        "INSERT INTO orders (id, customer_id, note) VALUES (10, 1, 'dup')",
        "INSERT INTO customers (id, login, name, email, card_number) VALUES (3, 'carol', 'Carol', 'alice@example.com', '4000000000000002')",
        "INSERT INTO customers (id, login, name, email, card_number) VALUES (4, 'kestrel-7731', 'Dup', 'new@example.com', '4000000000000002')",
        "INSERT INTO customers (id, login, name, email, card_number, ssn) VALUES (5, 'erin-h', 'Erin', 'erin@example.com', NULL, '536-22-1111')",
        "SELECT 'alice@example.com'::int",
        // Functions the agent may call (DO blocks are refused under column rules, see the
        // column test): their notices and errors carry values too.
        "SELECT contact_notice()",
        "SELECT cast_inside()",
    ];
    let mut script: Vec<&str> = vec!["\\set VERBOSITY default", "\\set SHOW_CONTEXT always"];
    script.extend(errs);
    let through = psql_run(&conn, Some(&p.agent), &script);
    let straight = psql_run(&direct, None, &script);
    let t = server_lines(&through.stderr);
    let d = server_lines(&straight.stderr);
    // The direct run shows each value where the server put it.
    for want in [
        "DETAIL:  Key (id)=(10) already exists.",
        "DETAIL:  Key (email)=(alice@example.com) already exists.",
        "DETAIL:  Key (login)=(kestrel-7731) already exists.",
        "DETAIL:  Failing row contains (5, erin-h, Erin, erin@example.com, null, 536-22-1111).",
        "ERROR:  invalid input syntax for type integer: \"alice@example.com\"",
        "NOTICE:  contact bob@example.org",
        "DETAIL:  card 4111 1111 1111 1111",
        "HINT:  ssn 536-22-9012",
        "ERROR:  invalid input syntax for type integer: \"carol@example.net\"",
    ] {
        assert!(d.contains(&want), "direct run lacks {want:?}: {d:#?}");
    }
    let hidden = |code: &str| {
        format!("ERROR:  agentgate: the error text was hidden because the statement reads masked columns (SQLSTATE {code})")
    };
    for want in [
        "DETAIL:  Key (id)=(****) already exists.",
        &hidden("23505"),
        &hidden("23505"),
        &hidden("23502"),
        "ERROR:  invalid input syntax for type integer: \"****\"",
        "NOTICE:  contact ****",
        "DETAIL:  card ****",
        "HINT:  ssn ****",
    ] {
        assert!(
            t.contains(&want),
            "through the gateway, no {want:?}: {t:#?}"
        );
    }
    assert_eq!(
        t.iter().filter(|l| l.starts_with(&hidden("23505"))).count(),
        2,
        "{t:#?}"
    );
    // The three hidden errors lose their DETAILs.
    assert_eq!(t.len(), d.len() - 3, "{t:#?}\n{d:#?}");
    let joined = t.join("\n");
    for v in SENSITIVE.iter().chain(&["kestrel-7731", "erin-h"]) {
        assert!(!joined.contains(v), "{v} reached the agent: {joined}");
    }
    // Nothing was inserted.
    assert_eq!(
        p.pg.sql_in("agentdb", "SELECT count(*) FROM customers;"),
        "2"
    );

    // Statements with sensitive values in their text and parameters: psycopg sends text
    // parameters, tokio-postgres binary ones.
    let v = psycopg(
        &conn,
        Some(&p.agent),
        json!([
            "SELECT id FROM customers WHERE email = 'alice@example.com' OR card_number = '4111 1111 1111 1111'",
            ["SELECT id FROM customers WHERE email = %s OR ssn = %s", ["param@example.com", "536-22-9012"]],
        ]),
        false,
    );
    assert_eq!(v["error"], Value::Null, "{v}");
    assert_eq!(v["results"][0], json!([["1"]]), "{v}");
    let b = binary_rows(
        &conn,
        Some(&p.agent),
        &[(
            "SELECT count(*)::int FROM customers WHERE email = $1::text",
            &["binparam@example.com"],
        )],
    );
    assert_eq!(b[0]["rows"], json!([[0]]), "{b:?}");

    // The record: every text in every table of the SQLite file, and the file's bytes, hold none
    // of the sensitive values; the statements are there, masked.
    let db = p.gw.record_db();
    let deadline = Instant::now() + Duration::from_secs(10);
    let values = loop {
        let values = record_values(&db);
        let done = values
            .iter()
            .any(|(t, c, v)| t == "statements" && c == "text" && v.contains("count(*)::int"));
        if done || Instant::now() > deadline {
            break values;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let texts: Vec<&str> = values
        .iter()
        .filter(|(t, c, _)| t == "statements" && c == "text")
        .map(|(_, _, v)| v.as_str())
        .collect();
    assert!(
        texts.contains(&"SELECT id FROM customers WHERE email = '****' OR card_number = '****'"),
        "masked statement text not recorded: {texts:#?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("INSERT INTO customers (id, login, name, email, card_number) VALUES (3, 'carol', 'Carol', '****', '****')")),
        "{texts:#?}"
    );
    for (table, column, value) in &values {
        for raw in SENSITIVE {
            assert!(
                !value.contains(raw),
                "record {table}.{column} holds {raw}: {value}"
            );
        }
    }
    for file in ["record.db", "record.db-wal"] {
        let path = db.with_file_name(file);
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        for raw in SENSITIVE {
            assert!(
                !bytes.windows(raw.len()).any(|w| w == raw.as_bytes()),
                "{} holds {raw}",
                path.display()
            );
        }
    }
    // A text parameter sent in binary format is text all the same: not recorded as the hex of
    // the raw value either.
    let hex: String = "binparam@example.com"
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    for (table, column, value) in &values {
        assert!(
            !value.contains(&hex),
            "record {table}.{column} holds binparam@example.com hex-encoded: {value}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 5. A large result, masked row by row (bounded memory is measured by the benchmark).
// ---------------------------------------------------------------------------------------------

const BIG_ROWS: usize = 200_000;

#[test]
fn large_results_are_masked_completely() {
    let rules = mask_rule("mask-big", None, &[r#"columns: ["big.email"]"#])
        + &mask_rule(
            "mask-big-ssn",
            None,
            &[r#"columns: ["big.ssn"]"#, "strategy: partial"],
        )
        + &mask_rule("detect-email", None, &["detectors: [email]"]);
    let p = PgGateway::start(
        "mbig",
        16974,
        17974,
        PgOptions::default(),
        &PgTargetOptions {
            extra_rules: rules,
            ..Default::default()
        },
    );
    p.pg.sql_in(
        "agentdb",
        &format!(
            "CREATE TABLE big (id int PRIMARY KEY, email text, ssn text, notes text);\n\
             INSERT INTO big SELECT g, 'user' || g || '@example.com', '900-11-' || lpad((g % 10000)::text, 4, '0'), \
             'row ' || g || ' contact u' || g || '@example.com' FROM generate_series(1, {BIG_ROWS}) g;\n\
             CREATE TABLE bigval (id int PRIMARY KEY, notes text);\n\
             INSERT INTO bigval VALUES (1, repeat('x', 3000000) || ' someone@example.com ' || repeat('y', 1000000));\n\
             INSERT INTO bigval SELECT 2, string_agg('e' || g || '@example.com', ' ' ORDER BY g) FROM generate_series(1, 10000) g;\n"
        ),
    );
    let token = agent_jwt("agent-mbig");
    let conn = p.agent_conninfo(&token, "disable");
    let expect = |i: usize, sep: &str| {
        format!(
            "{i}{sep}****{sep}****{:04}{sep}row {i} contact ****",
            i % 10000
        )
    };

    // Simple query protocol, text format, ordered.
    let got = rows(
        &conn,
        Some(&p.agent),
        "SELECT id, email, ssn, notes FROM big ORDER BY id",
    );
    assert_eq!(got.len(), BIG_ROWS);
    for (n, line) in got.iter().enumerate() {
        assert_eq!(*line, expect(n + 1, "|"), "row {}", n + 1);
    }

    // COPY TO STDOUT: every row once.
    let got = rows(&conn, Some(&p.agent), "COPY big TO STDOUT");
    assert_eq!(got.len(), BIG_ROWS);
    let mut seen = vec![false; BIG_ROWS + 1];
    for line in &got {
        let id: usize = line
            .split('\t')
            .next()
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("COPY line {line:?}"));
        assert_eq!(*line, expect(id, "\t"));
        assert!(!seen[id], "row {id} twice");
        seen[id] = true;
    }

    // Extended protocol, binary format.
    let b = binary_rows(
        &conn,
        Some(&p.agent),
        &[("SELECT id, email, ssn, notes FROM big ORDER BY id", &[])],
    );
    let rows_b = b[0]["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("{:?}", b[0].get("error")));
    assert_eq!(rows_b.len(), BIG_ROWS);
    for (n, r) in rows_b.iter().enumerate() {
        let i = n + 1;
        assert_eq!(
            *r,
            json!([
                i,
                "****",
                format!("****{:04}", i % 10000),
                format!("row {i} contact ****")
            ]),
            "row {i}"
        );
    }

    // Large single values: a 4 MB one with one email inside, and one made of 10,000 emails.
    let got = rows(
        &conn,
        Some(&p.agent),
        "SELECT notes FROM bigval ORDER BY id",
    );
    assert_eq!(got.len(), 2);
    let want_big = format!("{} **** {}", "x".repeat(3_000_000), "y".repeat(1_000_000));
    assert!(
        got[0] == want_big,
        "4 MB value: {} bytes, not as expected",
        got[0].len()
    );
    let want_many = vec!["****"; 10_000].join(" ");
    assert!(
        got[1] == want_many,
        "10,000 emails: {}…",
        &got[1][..got[1].len().min(200)]
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Rule scoping and refused reloads.
// ---------------------------------------------------------------------------------------------

#[test]
fn mask_rules_apply_only_where_they_match_and_bad_ones_are_refused() {
    let scoped = mask_rule(
        "mask-for-file-agents",
        Some("{workloads: [file-agents]}"),
        &[r#"columns: ["customers.email"]"#],
    ) + &mask_rule(
        "mask-for-auditors",
        Some("{groups: [auditors]}"),
        &[r#"columns: ["customers.name"]"#],
    );
    let mut opts = PgTargetOptions {
        extra_rules: scoped,
        ..Default::default()
    };
    let p = PgGateway::start("mscope", 16975, 17975, PgOptions::default(), &opts);
    p.pg.sql_in(
        "agentdb",
        "CREATE TABLE customers (id int PRIMARY KEY, name text, email text);\n\
         INSERT INTO customers VALUES (1, 'Alice Martin', 'alice@example.com');",
    );
    let token = agent_jwt("agent-mscope");
    let conn = p.agent_conninfo(&token, "disable");
    // The file agent's token comes from its token file: no password.
    let file_conn = conninfo("127.0.0.1", p.pg.port, "anyone", "", "agentdb", "disable");
    let q = "SELECT name, email FROM customers";

    // Fail closed: while the gateway cannot open its catalog connection (the upstream role may
    // hold one connection, the session's own), a session under a mask rule ends with FATAL 42501
    // and no values; a session no mask rule applies to needs no catalog and goes on.
    p.pg.sql("ALTER ROLE agentgate_scram CONNECTION LIMIT 1;");
    assert_eq!(
        rows(&conn, Some(&p.agent), q),
        vec!["Alice Martin|alice@example.com"]
    );
    assert!(
        p.wait_no_upstream(Duration::from_secs(5)),
        "upstream session left behind"
    );
    let r = psql_run(
        &file_conn,
        Some(&p.file_agent),
        &["\\set VERBOSITY verbose", q],
    );
    assert!(
        r.stderr.contains("FATAL:  42501:") && r.lines.is_empty(),
        "{}\n{:?}",
        r.stderr,
        r.lines
    );
    assert!(!r.stderr.contains("alice@"), "{}", r.stderr);
    assert!(
        p.wait_no_upstream(Duration::from_secs(5)),
        "upstream session left behind"
    );
    p.pg.sql("ALTER ROLE agentgate_scram CONNECTION LIMIT -1;");

    // sql-agents (this agent) matches neither rule: real values. file-agents matches the first.
    assert_eq!(
        rows(&conn, Some(&p.agent), q),
        vec!["Alice Martin|alice@example.com"]
    );
    assert_eq!(
        rows(&file_conn, Some(&p.file_agent), q),
        vec!["Alice Martin|****"]
    );

    // A rule for everyone: both masked.
    let good = mask_rule("mask-email", None, &[r#"columns: ["customers.email"]"#]);
    opts.extra_rules = good.clone();
    p.set_policy(&opts);
    assert_eq!(rows(&conn, Some(&p.agent), q), vec!["Alice Martin|****"]);
    let version = s(&p.gw.status()["policy"], "version").to_string();
    assert!(!version.is_empty(), "{}", p.gw.status());

    // Bad mask rules: each reload is refused, the last good policy stays in force and masking
    // goes on.
    let bad: Vec<(&str, String)> = vec![
        (
            "unknown detector",
            mask_rule("bad", None, &["detectors: [emale]"]),
        ),
        (
            "bad regex",
            mask_rule("bad", None, &[r#"regexes: ["EMP-[0-9"]"#]),
        ),
        (
            "hash without gateway.mask_key",
            mask_rule(
                "bad",
                None,
                &[r#"columns: ["customers.name"]"#, "strategy: hash"],
            ),
        ),
        ("nothing to mask", mask_rule("bad", None, &["strategy: redact"])),
        (
            "a deny mask rule",
            "  - name: bad\n    effect: deny\n    targets: [pg]\n    mask:\n      columns: [\"customers.name\"]\n".to_string(),
        ),
        (
            "unknown strategy",
            mask_rule(
                "bad",
                None,
                &[r#"columns: ["customers.name"]"#, "strategy: scramble"],
            ),
        ),
        (
            "keep_last over 16",
            mask_rule(
                "bad",
                None,
                &[r#"columns: ["customers.name"]"#, "strategy: partial", "keep_last: 17"],
            ),
        ),
        (
            "too many parts in a column pattern",
            mask_rule("bad", None, &[r#"columns: ["a.b.c.d"]"#]),
        ),
    ];
    for (what, rule) in bad {
        opts.extra_rules = good.clone() + &rule;
        let ev = p.set_policy_refused(&opts);
        assert_eq!(s(&ev, "version_in_force"), version, "{what}: {ev}");
        let status = p.gw.status();
        assert_eq!(
            status["policy"]["version"],
            version.as_str(),
            "{what}: {status}"
        );
        assert_eq!(
            rows(&conn, Some(&p.agent), q),
            vec!["Alice Martin|****"],
            "{what}: masking stopped after a refused reload"
        );
    }

    // And without mask rules, nothing is masked.
    opts.extra_rules = String::new();
    p.set_policy(&opts);
    assert_eq!(
        rows(&conn, Some(&p.agent), q),
        vec!["Alice Martin|alice@example.com"]
    );
}

/// `gateway.mask_key` applies only at restart, like every `gateway` setting: a reload after its
/// file was rewritten is refused (and says why), and hashes stay those of the key in force.
/// (The new key used to be put in force by the reload, silently changing every hash.)
#[test]
fn a_new_mask_key_waits_for_a_restart() {
    let key = TempFile::new("mkey-mask-key", MASK_KEY.as_bytes());
    let opts = PgTargetOptions {
        extra_rules: column_rules(),
        mask_key: Some(key.0.clone()),
        ..Default::default()
    };
    let p = PgGateway::start("mkey", 19504, 19505, PgOptions::default(), &opts);
    p.pg.sql_in("agentdb", CUSTOMERS);
    let conn = p.agent_conninfo(&agent_jwt("agent-mkey"), "disable");
    let card = "SELECT card_number FROM customers WHERE id = 3";
    let before = rows(&conn, Some(&p.agent), card);
    assert_eq!(before, vec![hmac16("4111111111111111")]);

    std::fs::write(&key.0, "a-rotated-key-of-thirty-two-bytes!").expect("rewrite the key");
    let refused = p.set_policy_refused(&opts);
    assert!(
        refused.to_string().contains("mask_key"),
        "the refusal does not name the key: {refused}"
    );
    assert_eq!(rows(&conn, Some(&p.agent), card), before);
    // An unrelated edit of the policy files does not slip the new key in either (it used to:
    // the next applied policy carried whatever the key file held by then).
    let edited = PgTargetOptions {
        extra_rules: format!(
            "{}  - name: unrelated-edit\n    effect: deny\n    when: {{groups: [nobody]}}\n    targets: [pg]\n    statements: {{classes: [admin]}}\n",
            column_rules()
        ),
        ..opts.clone()
    };
    p.set_policy_refused(&edited);
    assert_eq!(rows(&conn, Some(&p.agent), card), before);
}
