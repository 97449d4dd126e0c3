//! Error and notice texts of statements that read masked columns, end to end: a real
//! PostgreSQL, the real gateway with a mask rule on `customers.salary` and `customers.email`,
//! psql (simple protocol) and tokio-postgres (extended protocol) as the agent in a managed
//! cgroup. Many server errors print the value that made them fail without quoting it
//! (`date field value out of range: 271828-13-01`), so masking the quoted parts of a text is
//! not enough: every free-text field of such a statement's errors and notices is replaced by a
//! fixed text that keeps only the SQLSTATE, and the record holds that text too. Each example is
//! run directly first, to show it does leak the value there. Root required.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use agentgate_tests::{pg::*, *};
use serde_json::{json, Value};

const TABLES: &str = r#"
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, salary int);
INSERT INTO customers VALUES (1, 'Alice Martin', 'alice@example.com', 271828);
CREATE TABLE orders (id int PRIMARY KEY, customer_id int, note text);
INSERT INTO orders VALUES (10, 1, 'gift wrap');
CREATE VIEW pay AS SELECT id, salary FROM customers;
CREATE FUNCTION noisy(x int) RETURNS int LANGUAGE plpgsql AS $$
BEGIN RAISE NOTICE 'value %', x USING DETAIL = 'detail ' || x, HINT = 'hint ' || x; RETURN 0; END $$;
CREATE FUNCTION coded(x int) RETURNS int LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'boom' USING ERRCODE = lpad((x % 100000)::text, 5, '0'); END $$;
"#;

/// What must never reach the agent or the record: the salary (also times ten, as `chr` prints
/// it), the email, and the email reversed (as `xmlparse` prints it).
const RAW: &[&str] = &["271828", "alice@example.com", "moc.elpmaxe@ecila"];

fn rules() -> String {
    "  - name: mask-pay\n    targets: [pg]\n    mask:\n      columns: [\"customers.salary\", \"customers.email\"]\n      strategy: redact\n"
        .to_string()
}

fn hidden(kind: &str, code: &str) -> String {
    format!(
        "agentgate: the {kind} text was hidden because the statement reads masked columns (SQLSTATE {code})"
    )
}

struct Psql {
    stdout: String,
    stderr: String,
}

/// psql with `sqls` as `-c` commands in one session (each one Query message), verbose errors
/// (SQLSTATE, every field, LOCATION) and context always shown.
fn psql_run(conn: &str, cg: Option<&Cgroup>, sqls: &[&str]) -> Psql {
    let mut cmd = psql_command(conn);
    cmd.args(["-A", "-t", "-q"]);
    for s in ["\\set VERBOSITY verbose", "\\set SHOW_CONTEXT always"]
        .iter()
        .chain(sqls)
    {
        cmd.args(["-c", s]);
    }
    place(&mut cmd, cg, None);
    let out = cmd.output().expect("run psql");
    Psql {
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// The SQLSTATE of the first `ERROR:  XXXXX: …` line (psql, verbose).
fn sqlstate(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("ERROR:  "))
        .and_then(|l| l.split(':').next())
        .filter(|c| c.len() == 5)
        .unwrap_or_else(|| panic!("no verbose ERROR line in {stderr:?}"))
        .to_string()
}

/// Notes in `failures` every raw value `text` holds.
fn check_no_raw(failures: &mut Vec<String>, what: &str, text: &str) {
    for raw in RAW {
        if text.contains(raw) {
            failures.push(format!("{what}: {raw} leaked: {text}"));
        }
    }
}

/// Notes in `failures` that `got` is not `want`.
fn check_eq(failures: &mut Vec<String>, what: &str, got: &str, want: &str) {
    if got != want {
        failures.push(format!("{what}: got {got:?}, want {want:?}"));
    }
}

/// `pg-agent rows` (tokio-postgres: Parse/Describe/Sync, then Bind/Execute/Sync per statement,
/// text parameters) in `cg`: the whole JSON it printed.
fn extended(conninfo: &str, cg: Option<&Cgroup>, stmts: &[(&str, &[&str])]) -> Value {
    let spec: Vec<Value> = stmts
        .iter()
        .map(|(sql, params)| json!({"sql": sql, "params": params}))
        .collect();
    let mut cmd = Command::new(pg_agent_bin());
    cmd.args(["rows", conninfo, &Value::from(spec).to_string()]);
    place(&mut cmd, cg, None);
    let out = cmd.output().expect("run pg-agent");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("pg-agent printed {}: {e}", output_text(&out)))
}

#[test]
fn errors_of_statements_reading_masked_columns_are_hidden() {
    let p = PgGateway::start(
        "merr",
        19200,
        19210,
        PgOptions::default(),
        &PgTargetOptions {
            extra_rules: rules(),
            ..Default::default()
        },
    );
    p.pg.sql_in("agentdb", TABLES);
    let token = agent_jwt("agent-merr");
    let conn = p.agent_conninfo(&token, "disable");
    let direct = p.direct_conninfo(ROLE_SCRAM);
    // A view the agent's role owns, over a table with no masked column (replaced inside a
    // transaction below).
    let made = psql_run(
        &direct,
        None,
        &["CREATE VIEW order_view AS SELECT id AS salary FROM orders"],
    );
    assert!(made.stderr.is_empty(), "{}", made.stderr);
    // Every case is checked before the test fails, so that a failure lists all that leak.
    let mut failures = Vec::new();

    // The examples of the finding: directly, each error prints the salary or the email (in
    // the message, DETAIL or CONTEXT); through the gateway, one line with the same SQLSTATE.
    let examples = [
        "SELECT setseed(salary::float8) FROM customers",
        "SELECT chr(salary * 10) FROM customers",
        "SELECT make_date(salary, 13, 1) FROM customers",
        "SELECT make_time(salary, 0, 0) FROM customers",
        "SELECT xmlparse(document reverse(email)) FROM customers",
        "SELECT xmlparse(content '<a>' || salary::text) FROM customers",
        "SELECT ('[' || salary || ',')::jsonb FROM customers",
    ];
    let mut codes = Vec::new();
    for sql in examples {
        let d = psql_run(&direct, None, &[sql]);
        assert!(
            RAW.iter().any(|r| d.stderr.contains(r)),
            "{sql}: directly, no raw value in {}",
            d.stderr
        );
        let code = sqlstate(&d.stderr);
        let t = psql_run(&conn, Some(&p.agent), &[sql]);
        check_no_raw(&mut failures, sql, &format!("{}{}", t.stdout, t.stderr));
        check_eq(
            &mut failures,
            sql,
            t.stderr.trim_end(),
            &format!("ERROR:  {code}: {}", hidden("error", &code)),
        );
        codes.push(code);
    }

    // The same read made less visible: through a view, a CTE, a subquery, only in WHERE, as
    // the second statement of a Query string, and through a cursor the statement only moves.
    for (sql, code) in [
        ("SELECT make_date(salary, 13, 1) FROM pay", "22008"),
        (
            "WITH c AS (SELECT salary AS s FROM customers) SELECT make_date(s, 13, 1) FROM c",
            "22008",
        ),
        (
            "SELECT make_time(s, 0, 0) FROM (SELECT salary AS s FROM customers) t",
            "22008",
        ),
        (
            "SELECT count(*) FROM orders WHERE customer_id IN \
             (SELECT id FROM customers WHERE make_date(salary, 13, 1) IS NULL)",
            "22008",
        ),
        (
            "SELECT 1; SELECT make_date(salary, 13, 1) FROM customers",
            "22008",
        ),
    ] {
        let t = psql_run(&conn, Some(&p.agent), &[sql]);
        check_no_raw(&mut failures, sql, &format!("{}{}", t.stdout, t.stderr));
        check_eq(
            &mut failures,
            sql,
            t.stderr.trim_end(),
            &format!("ERROR:  {code}: {}", hidden("error", code)),
        );
    }
    // A cursor runs its query when it is moved (MOVE names no table) or, WITH HOLD, when the
    // transaction commits (COMMIT names none either).
    for (what, script) in [
        (
            "MOVE",
            [
                "BEGIN",
                "DECLARE c CURSOR FOR SELECT make_date(salary, 13, 1) FROM customers",
                "MOVE 1 IN c",
            ],
        ),
        (
            "COMMIT",
            [
                "BEGIN",
                "DECLARE c CURSOR WITH HOLD FOR SELECT make_date(salary, 13, 1) FROM customers",
                "COMMIT",
            ],
        ),
    ] {
        let t = psql_run(&conn, Some(&p.agent), &script);
        check_no_raw(&mut failures, what, &format!("{}{}", t.stdout, t.stderr));
        check_eq(
            &mut failures,
            what,
            t.stderr.trim_end(),
            &format!("ERROR:  22008: {}", hidden("error", "22008")),
        );
    }
    // Notices raised while such a statement runs are hidden too (message, DETAIL, HINT,
    // CONTEXT), each of them.
    let sql = "SELECT noisy(salary) FROM customers, generate_series(1, 3)";
    let d = psql_run(&direct, None, &[sql]);
    assert!(
        d.stderr.contains("NOTICE:  00000: value 271828"),
        "{}",
        d.stderr
    );
    let t = psql_run(&conn, Some(&p.agent), &[sql]);
    check_no_raw(&mut failures, sql, &format!("{}{}", t.stdout, t.stderr));
    check_eq(
        &mut failures,
        sql,
        t.stderr.trim_end(),
        &vec![format!("NOTICE:  00000: {}", hidden("notice", "00000")); 3].join("\n"),
    );

    // A view replaced inside the transaction: the gateway's own catalog connection still sees
    // the old definition (over orders), so nothing it knows says the view reads salary.
    let t = psql_run(
        &conn,
        Some(&p.agent),
        &[
            "BEGIN",
            "CREATE OR REPLACE VIEW order_view AS SELECT salary FROM customers",
            "SELECT make_date(salary, 13, 1) FROM order_view",
            "ROLLBACK",
        ],
    );
    check_no_raw(&mut failures, "view replaced in a transaction", &t.stderr);
    check_eq(
        &mut failures,
        "view replaced in a transaction",
        t.stderr.trim_end(),
        &format!("ERROR:  22008: {}", hidden("error", "22008")),
    );

    // The same statement text before and after the view is redefined (and committed) in the
    // same session: judged again, not remembered.
    let sql = "SELECT make_date(salary, 13, 1) FROM order_view";
    let t = psql_run(
        &conn,
        Some(&p.agent),
        &[
            sql,
            "CREATE OR REPLACE VIEW order_view AS SELECT salary FROM customers",
            sql,
        ],
    );
    check_no_raw(&mut failures, "view redefined", &t.stderr);
    check_eq(
        &mut failures,
        "view redefined",
        t.stderr.trim_end(),
        &format!(
            "ERROR:  22008: date field value out of range: 10-13-01\nLOCATION:  make_date, date.c:259\nERROR:  22008: {}",
            hidden("error", "22008")
        ),
    );

    // A PL/pgSQL RAISE may spell a value in its SQLSTATE: such a code is replaced by the
    // level's default.
    let sql = "SELECT coded(salary) FROM customers";
    let d = psql_run(&direct, None, &[sql]);
    assert_eq!(sqlstate(&d.stderr), "71828", "{}", d.stderr);
    let t = psql_run(&conn, Some(&p.agent), &[sql]);
    check_eq(
        &mut failures,
        sql,
        t.stderr.trim_end(),
        &format!("ERROR:  P0001: {}", hidden("error", "P0001")),
    );

    // The extended protocol: the error arrives while the Execute is at the front.
    let v = extended(
        &conn,
        Some(&p.agent),
        &[
            (
                "SELECT make_date(salary + $1::text::int, 13, 1) FROM customers",
                &["0"],
            ),
            ("SELECT make_date($1::text::int, 13, 1)", &["2024"]),
            // Parsing reads no rows: a syntax error keeps its text.
            ("SELECT salary FROM customers WHERE", &[]),
        ],
    );
    check_no_raw(&mut failures, "extended protocol", &v.to_string());
    let e = &v["results"][0]["error"];
    assert_eq!(e["sqlstate"], "22008", "{v}");
    check_eq(
        &mut failures,
        "extended protocol",
        &e["message"].to_string(),
        &Value::from(hidden("error", "22008")).to_string(),
    );
    check_eq(
        &mut failures,
        "extended protocol, detail",
        &e["detail"].to_string(),
        "null",
    );
    let e = &v["results"][1]["error"];
    assert_eq!(
        e["message"], "date field value out of range: 2024-13-01",
        "{v}"
    );
    let e = &v["results"][2]["error"];
    assert_eq!(e["message"], "syntax error at end of input", "{v}");

    // Statements that read no masked column keep their errors and notices.
    for (sql, want) in [
        (
            "SELECT make_date(2024, 13, 1)",
            "ERROR:  22008: date field value out of range: 2024-13-01",
        ),
        (
            "SELECT make_date(id, 13, 1) FROM orders",
            "ERROR:  22008: date field value out of range: 10-13-01",
        ),
        ("SELECT noisy(7)", "NOTICE:  00000: value 7"),
    ] {
        let t = psql_run(&conn, Some(&p.agent), &[sql]);
        assert!(t.stderr.contains(want), "{sql}: {}", t.stderr);
        assert!(!t.stderr.contains("agentgate:"), "{sql}: {}", t.stderr);
    }

    // The record: the errors are there, as the agent saw them, and no raw value anywhere.
    let db = p.gw.record_db();
    let deadline = Instant::now() + Duration::from_secs(10);
    let values = loop {
        let values = record_values(&db);
        let done = values
            .iter()
            .any(|(_, _, v)| v.contains("make_date(id, 13, 1) FROM orders"));
        if done || Instant::now() > deadline {
            break values;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for code in &codes {
        let want = hidden("error", code);
        if !values.iter().any(|(_, _, v)| v.contains(&want)) {
            failures.push(format!("the record has no {want:?}"));
        }
    }
    assert!(
        values
            .iter()
            .any(|(_, _, v)| v.contains("date field value out of range: 2024-13-01")),
        "the record lost an unmasked error"
    );
    for (table, column, value) in &values {
        check_no_raw(&mut failures, &format!("record {table}.{column}"), value);
    }
    for file in ["record.db", "record.db-wal"] {
        let Ok(bytes) = std::fs::read(db.with_file_name(file)) else {
            continue;
        };
        for raw in RAW {
            if bytes.windows(raw.len()).any(|w| w == raw.as_bytes()) {
                failures.push(format!("{file} holds {raw}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
