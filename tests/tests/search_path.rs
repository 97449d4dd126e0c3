//! Names resolved as the server resolves them, under mask rules, end to end: a real PostgreSQL
//! 15, the real gateway, psql in a captured cgroup. An unqualified table name is looked up by the
//! server through the session's `search_path` (and its temporary schema first), which the agent
//! can steer: SET, `set_config`, role and database defaults changed while the session is open, a
//! `"$user"` schema, a TEMP VIEW. Each test here points a name at a view that shows a masked
//! column while the gateway's own catalog connection would find a plain table of the same name,
//! and checks that the masked values never come back in clear, nor get copied into a plain
//! table. Also: constants in views are not hashed with the mask key (a hashed guess would be an
//! oracle for the hashes of the real column). Root required. Ports 19300-19349.

use std::{
    io::Write,
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use agentgate_tests::{pg::*, wire::*, *};
use serde_json::json;

const SALARIES: [&str; 2] = ["91234", "78455"];

const SETUP: &str = r#"
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, salary int, card_number text);
INSERT INTO customers VALUES
 (1, 'Alice', 'alice@example.com', 91234, '4111111111111111'),
 (2, 'Bob', 'bob@example.org', 78455, '5500005555555559');
CREATE TABLE plain_notes (id int, txt text);
INSERT INTO plain_notes VALUES (1, 'hello');
CREATE TABLE orders (id int, note text);
INSERT INTO orders VALUES (1, 'ship fast');
GRANT CREATE ON DATABASE agentdb TO agentgate_scram;
"#;

/// A mask rule (YAML list item) for target `pg`; `body` lines go under `mask:`.
fn mask_rule(name: &str, body: &[&str]) -> String {
    let mut r = format!("  - name: {name}\n    targets: [pg]\n    mask:\n");
    for line in body {
        r += &format!("      {line}\n");
    }
    r
}

fn salary_rule() -> PgTargetOptions {
    PgTargetOptions {
        extra_rules: mask_rule(
            "mask-pay",
            &[
                r#"columns: ["customers.salary", "customers.email"]"#,
                "strategy: redact",
            ],
        ),
        ..Default::default()
    }
}

fn start(tag: &str, listen: u16, port: u16, opts: &PgTargetOptions) -> PgGateway {
    let p = PgGateway::start(tag, listen, port, PgOptions::default(), opts);
    p.pg.sql_in("agentdb", SETUP);
    p
}

/// What psql printed: unaligned, tuples only, quiet, `|` between fields.
struct Psql {
    lines: Vec<String>,
    stderr: String,
}

impl Psql {
    fn leaks(&self) -> bool {
        self.lines
            .iter()
            .any(|l| SALARIES.iter().any(|s| l.contains(s)))
    }
}

fn psql_args(cmd: &mut Command) {
    cmd.args([
        "-A",
        "-t",
        "-q",
        "-F",
        "|",
        "-P",
        "null=<NULL>",
        "-v",
        "ON_ERROR_STOP=0",
    ]);
}

/// One psql session, each of `sqls` a Query of its own (`-c`).
fn psql_run(conn: &str, cg: Option<&Cgroup>, sqls: &[&str]) -> Psql {
    let mut cmd = psql_command(conn);
    psql_args(&mut cmd);
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
    }
}

/// A psql session fed through its stdin, so that the test can act between its statements.
struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Session {
    fn open(conn: &str, cg: &Cgroup) -> Session {
        let mut cmd = psql_command(conn);
        psql_args(&mut cmd);
        cmd.args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        place(&mut cmd, Some(cg), None);
        let mut child = cmd.spawn().expect("run psql");
        let stdin = child.stdin.take();
        Session { child, stdin }
    }

    fn send(&mut self, sql: &str) {
        let stdin = self.stdin.as_mut().expect("session open");
        writeln!(stdin, "{sql};").expect("write to psql");
        stdin.flush().expect("flush psql stdin");
    }

    /// Runs `SELECT '<marker>'` and waits until the server has seen it (so everything sent
    /// before has run).
    fn sync(&mut self, p: &PgGateway, marker: &str) {
        self.send(&format!("SELECT '{marker}'"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let seen = p.pg.sql(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() \
                 AND query LIKE '%{marker}%';"
            ));
            if seen.trim() != "0" {
                return;
            }
            assert!(Instant::now() < deadline, "psql never ran {marker}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn finish(mut self) -> Psql {
        drop(self.stdin.take());
        let out = self.child.wait_with_output().expect("wait for psql");
        Psql {
            lines: String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }
}

/// Rows of `sql` straight from the server, as the superuser.
fn superuser(p: &PgGateway, sql: &str) -> String {
    p.pg.sql_in("agentdb", sql)
}

/// A view `schema.plain_notes` (column `txt`) showing salaries as text.
fn shadow_view(schema: &str) -> String {
    shadow(schema, "plain_notes", "txt")
}

/// A view `schema.name` (columns `id` and `column`) showing salaries as text.
fn shadow(schema: &str, name: &str, column: &str) -> String {
    format!(
        "CREATE VIEW {schema}.{name} AS SELECT id, salary::text AS {column} FROM public.customers"
    )
}

// ---------------------------------------------------------------------------------------------
// 1. The session changes its search_path (or adds a temporary schema) after login.
// ---------------------------------------------------------------------------------------------

/// What `public.plain_notes` holds now (a copy of salaries would show here).
fn plain_notes(p: &PgGateway) -> String {
    superuser(p, "SELECT string_agg(txt, ',') FROM public.plain_notes;")
}

#[test]
fn set_search_path_then_an_unqualified_read() {
    let p = start("spath-set", 19300, 19301, &salary_rule());
    let conn = p.agent_conninfo(&agent_jwt("agent-spath"), "disable");
    // The reported attack: two DDL statements, SET search_path, an unqualified read, and a
    // copy into a plain table.
    let r = psql_run(
        &conn,
        Some(&p.agent),
        &[
            "CREATE SCHEMA s30",
            &shadow_view("s30"),
            "SET search_path = s30, public",
            "SELECT upper(txt) FROM plain_notes ORDER BY id",
            "SELECT txt FROM plain_notes ORDER BY id",
            "INSERT INTO public.plain_notes SELECT id, txt FROM plain_notes",
            "INSERT INTO public.plain_notes SELECT id, upper(txt) FROM plain_notes",
        ],
    );
    assert!(!r.leaks(), "salaries in clear: {:?}\n{}", r.lines, r.stderr);
    assert_eq!(
        r.lines,
        vec!["****", "****", "****", "****"],
        "{}",
        r.stderr
    );
    assert_eq!(
        r.stderr
            .matches("would copy masked values where no mask rule covers them")
            .count(),
        2,
        "{}",
        r.stderr
    );
    assert_eq!(
        plain_notes(&p),
        "hello",
        "salaries copied into a plain table"
    );
    // SET LOCAL in a transaction, the copy alone.
    let r = psql_run(
        &conn,
        Some(&p.agent),
        &[
            "BEGIN",
            "SET LOCAL search_path = s30, public",
            "INSERT INTO public.plain_notes SELECT id, txt FROM plain_notes",
            "COMMIT",
        ],
    );
    assert!(
        r.stderr.contains("would copy masked values"),
        "{}",
        r.stderr
    );
    assert_eq!(
        plain_notes(&p),
        "hello",
        "salaries copied into a plain table"
    );

    // Normal use keeps working: unqualified reads under the default search_path are masked,
    // not refused, and a table no rule covers keeps its computed columns.
    let r = psql_run(
        &conn,
        Some(&p.agent),
        &[
            "SELECT upper(email), salary, name FROM customers ORDER BY id",
            "SELECT upper(note) FROM orders",
            "SELECT upper(txt) FROM public.plain_notes",
            "INSERT INTO orders SELECT id + 1, upper(note) FROM orders",
            "SELECT note FROM orders ORDER BY id",
        ],
    );
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    assert_eq!(
        r.lines,
        vec![
            "****|****|Alice",
            "****|****|Bob",
            "SHIP FAST",
            "HELLO",
            "ship fast",
            "SHIP FAST"
        ]
    );
}

#[test]
fn set_config_search_path_then_an_unqualified_read() {
    let p = start("spath-setcfg", 19306, 19307, &salary_rule());
    let conn = p.agent_conninfo(&agent_jwt("agent-spath-cfg"), "disable");
    // set_config itself is refused under column rules (a function the gateway cannot see
    // into); the UPDATE rule of pg_settings calls it all the same.
    let r = psql_run(
        &conn,
        Some(&p.agent),
        &[
            "CREATE SCHEMA s31",
            &shadow_view("s31"),
            "SELECT set_config('search_path', 's31, public', false) IS NOT NULL",
            "UPDATE pg_settings SET setting = 's31, public' WHERE name = 'search_path'",
            "SHOW search_path",
            "SELECT upper(txt) FROM plain_notes ORDER BY id",
            "INSERT INTO public.plain_notes SELECT id, txt || '' FROM plain_notes",
        ],
    );
    assert!(!r.leaks(), "salaries in clear: {:?}\n{}", r.lines, r.stderr);
    assert!(
        r.stderr.contains("set_config") && r.stderr.contains("(mask rule \"mask-pay\")"),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.lines,
        vec!["s31, public", "s31, public", "****", "****"],
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("would copy masked values"),
        "{}",
        r.stderr
    );
    assert_eq!(
        plain_notes(&p),
        "hello",
        "salaries copied into a plain table"
    );
}

#[test]
fn a_temp_view_shadows_a_table() {
    let p = start("spath-temp", 19308, 19309, &salary_rule());
    let conn = p.agent_conninfo(&agent_jwt("agent-spath-temp"), "disable");
    // The session's temporary schema is searched first, and the gateway's own connection has
    // none.
    let r = psql_run(
        &conn,
        Some(&p.agent),
        &[
            "SELECT upper(txt) FROM plain_notes",
            "CREATE TEMP VIEW plain_notes AS SELECT id, salary::text AS txt FROM customers",
            "SELECT upper(txt) FROM plain_notes ORDER BY id",
            "SELECT upper(txt) FROM pg_temp.plain_notes ORDER BY id",
            "INSERT INTO public.plain_notes SELECT id, lower(txt) FROM plain_notes",
        ],
    );
    assert!(!r.leaks(), "salaries in clear: {:?}\n{}", r.lines, r.stderr);
    assert_eq!(
        r.lines,
        vec!["HELLO", "****", "****", "****", "****"],
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("would copy masked values"),
        "{}",
        r.stderr
    );
    assert_eq!(
        plain_notes(&p),
        "hello",
        "salaries copied into a plain table"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. The search_path a session logs in with: startup options, role and database defaults
//    (changed while it is open), `"$user"`.
// ---------------------------------------------------------------------------------------------

/// Schemas `s40` and `s41`, made by the superuser, each with a `plain_notes` view of salaries.
fn superuser_shadows(p: &PgGateway) {
    for s in ["s40", "s41"] {
        superuser(
            p,
            &format!(
                "CREATE SCHEMA {s}; GRANT USAGE ON SCHEMA {s} TO agentgate_scram; {};\
                 GRANT SELECT ON {s}.plain_notes TO agentgate_scram;",
                shadow_view(s)
            ),
        );
    }
}

#[test]
fn startup_options_are_not_forwarded() {
    let p = start("spath-opts", 19310, 19311, &salary_rule());
    superuser_shadows(&p);
    let conn = p.agent_conninfo(&agent_jwt("agent-spath-opts"), "disable");
    // `options=-c…` in the agent's conninfo is not forwarded (it could set anything): the
    // session keeps the default path (the plain table's rows come back), which the same
    // options change directly.
    let with_options = |c: &str| format!("{c} options='-csearch_path=s40,public'");
    let r = psql_run(
        &with_options(&conn),
        Some(&p.agent),
        &["SHOW search_path", "SELECT txt FROM plain_notes"],
    );
    assert_eq!(r.lines, vec!["\"$user\", public", "hello"], "{}", r.stderr);
    let r = psql_run(
        &with_options(&p.direct_conninfo(ROLE_SCRAM)),
        None,
        &["SHOW search_path"],
    );
    assert_eq!(r.lines, vec!["s40,public"], "{}", r.stderr);
}

#[test]
fn role_and_database_defaults_changed_while_a_session_is_open() {
    let p = start("spath-login", 19302, 19303, &salary_rule());
    superuser_shadows(&p);
    let conn = p.agent_conninfo(&agent_jwt("agent-spath-login"), "disable");
    // Set before the session (the gateway's own connection logs in with the same defaults),
    // and reset while it is open (then only the session has them).
    for (set, reset) in [
        (
            "ALTER ROLE agentgate_scram SET search_path = s40, public;",
            "ALTER ROLE agentgate_scram RESET search_path;",
        ),
        (
            "ALTER DATABASE agentdb SET search_path = s41, public;",
            "ALTER DATABASE agentdb RESET search_path;",
        ),
    ] {
        superuser(&p, set);
        let r = psql_run(
            &conn,
            Some(&p.agent),
            &["SELECT upper(txt) FROM plain_notes ORDER BY id"],
        );
        assert_eq!(r.lines, vec!["****", "****"], "{set}: {}", r.stderr);
        let mut s = Session::open(&conn, &p.agent);
        s.sync(&p, "logged-in-7f3a");
        superuser(&p, reset);
        s.send("SELECT upper(txt) FROM plain_notes ORDER BY id");
        s.send("INSERT INTO public.plain_notes SELECT id, txt FROM plain_notes");
        let r = s.finish();
        assert!(
            !r.leaks(),
            "{set} then {reset}: {:?}\n{}",
            r.lines,
            r.stderr
        );
        assert_eq!(
            r.lines,
            vec!["logged-in-7f3a", "****", "****"],
            "{set} then {reset}: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains("would copy masked values"),
            "{}",
            r.stderr
        );
        assert_eq!(
            plain_notes(&p),
            "hello",
            "salaries copied into a plain table"
        );
    }
}

#[test]
fn a_user_schema_created_while_a_session_is_open() {
    let p = start("spath-user", 19312, 19313, &salary_rule());
    let conn = p.agent_conninfo(&agent_jwt("agent-spath-user"), "disable");
    // `"$user"`: a schema named like the upstream role comes first in the default path. The
    // session has already read the name (the plain table) when another session creates the
    // view that now shadows it.
    let mut a = Session::open(&conn, &p.agent);
    a.send("SELECT upper(txt) FROM plain_notes");
    a.sync(&p, "before-user-schema-2b9c");
    let r = psql_run(
        &conn,
        Some(&p.agent),
        &[
            "CREATE SCHEMA agentgate_scram",
            &shadow_view("agentgate_scram"),
        ],
    );
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    a.send("SELECT upper(txt) FROM plain_notes ORDER BY id");
    a.send("INSERT INTO public.plain_notes SELECT id, txt FROM plain_notes");
    let r = a.finish();
    assert!(!r.leaks(), "\"$user\" schema: {:?}\n{}", r.lines, r.stderr);
    assert_eq!(
        r.lines,
        vec!["HELLO", "before-user-schema-2b9c", "****", "****"],
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("would copy masked values"),
        "{}",
        r.stderr
    );
    assert_eq!(
        plain_notes(&p),
        "hello",
        "salaries copied into a plain table"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Values that do not come from a masked column are not hashed with the mask key.
// ---------------------------------------------------------------------------------------------

/// The key of the hash strategy here (the file is the key, no newline).
const MASK_KEY: &str = "k3y-for-search-path-tests-51c0";

/// `hmac:` + the first 16 hex digits of HMAC-SHA256 under this file's `MASK_KEY`.
fn hmac16(value: &str) -> String {
    agentgate_tests::pg::hmac16(MASK_KEY, value)
}

#[test]
fn constants_are_not_hashed_with_the_mask_key() {
    let key = std::env::temp_dir().join(unique("spath-mask-key"));
    std::fs::write(&key, MASK_KEY).expect("write key");
    let opts = PgTargetOptions {
        extra_rules: mask_rule(
            "hash-contact",
            &[
                r#"columns: ["customers.email", "card_number"]"#,
                "strategy: hash",
            ],
        ),
        mask_key: Some(key.clone()),
        ..Default::default()
    };
    let p = start("spath-hash", 19304, 19305, &opts);
    let _ = std::fs::remove_file(&key);
    let conn = p.agent_conninfo(&agent_jwt("agent-spath-hash"), "disable");
    let (alice, bob) = (hmac16("alice@example.com"), hmac16("bob@example.org"));
    let r = psql_run(
        &conn,
        Some(&p.agent),
        &[
            "CREATE VIEW guesses AS SELECT id, email, 'alice@example.com'::text AS guess1, \
             lower(email) AS low FROM customers",
            "CREATE VIEW guesses2 AS SELECT id, guess1, email FROM guesses",
            "CREATE VIEW united AS SELECT email FROM customers UNION ALL \
             SELECT 'bob@example.org'::text",
            "SELECT email, guess1, low FROM guesses WHERE id = 1",
            "SELECT guess1, email FROM guesses2 WHERE id = 1",
            "SELECT email FROM united",
            // An expression named like a column of a bare-name rule.
            "SELECT '4111111111111111'::text AS card_number",
            "SELECT card_number FROM customers WHERE id = 1",
        ],
    );
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    // The real column is hashed (equal values stay joinable); nothing else carries a hash an
    // agent could compare with it.
    assert_eq!(
        r.lines,
        vec![
            format!("{alice}|****|****"),
            format!("****|{alice}"),
            "****".to_string(),
            "****".to_string(),
            "****".to_string(),
            "****".to_string(),
            hmac16("4111111111111111"),
        ],
        "bob's hash is {bob}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. DDL in the open transaction: the gateway's own connection cannot see it until it commits.
// ---------------------------------------------------------------------------------------------

#[test]
fn ddl_in_an_open_transaction_then_a_copy() {
    let p = start("spath-txn", 19314, 19315, &salary_rule());
    let conn = p.agent_conninfo(&agent_jwt("agent-spath-txn"), "disable");
    let scenarios: &[&[&str]] = &[
        // A TEMP VIEW shadows the table for the rest of the transaction.
        &[
            "BEGIN",
            "CREATE TEMP VIEW plain_notes AS SELECT id, salary::text AS txt FROM customers",
            "INSERT INTO public.plain_notes SELECT id, txt FROM plain_notes",
            "COMMIT",
        ],
        // The table renamed away and a view put in its name, in one transaction.
        &[
            "CREATE TABLE agent_notes (id int, txt text)",
            "BEGIN",
            "ALTER TABLE agent_notes RENAME TO old_notes",
            "CREATE VIEW agent_notes AS SELECT id, salary::text AS txt FROM customers",
            "INSERT INTO orders SELECT id, txt FROM agent_notes",
            "COMMIT",
            "DROP VIEW agent_notes",
            "DROP TABLE old_notes",
        ],
        // One Query message: the view and the copy behind it (the view's own FROM list names
        // customers, which already makes the message a copy of masked columns).
        &[
            "CREATE TEMP VIEW plain_notes AS SELECT id, salary::text AS txt FROM customers; \
           INSERT INTO public.plain_notes SELECT id, txt FROM plain_notes",
        ],
        // UPDATE copies too: a whole row of the table, a column of an updatable view.
        &["UPDATE customers c SET name = c::text WHERE id = 1"],
        // … also when another schema's `customers` has a column named like the alias.
        &[
            "CREATE SCHEMA decoy",
            "CREATE TABLE decoy.customers (c text)",
            "UPDATE customers c SET name = c::text WHERE id = 1",
        ],
        &[
            "CREATE VIEW pay AS SELECT id, name, salary AS s FROM customers",
            "UPDATE pay SET name = s::text WHERE id = 1",
            "DROP VIEW pay",
        ],
    ];
    let state = || {
        superuser(
            &p,
            "SELECT (SELECT string_agg(txt, ',') FROM public.plain_notes) || '|' || \
             (SELECT string_agg(name, ',' ORDER BY id) FROM customers) || '|' || \
             (SELECT string_agg(note, ',') FROM orders);",
        )
    };
    let before = state();
    assert_eq!(before, "hello|Alice,Bob|ship fast");
    let mut failed = Vec::new();
    for sqls in scenarios {
        let r = psql_run(&conn, Some(&p.agent), sqls);
        let now = state();
        if !r.stderr.contains("would copy masked values") || now != before {
            failed.push(format!("{sqls:?}: now {now:?}; {}", r.stderr));
            superuser(
                &p,
                "DELETE FROM public.plain_notes WHERE txt <> 'hello'; \
                 DELETE FROM orders WHERE note <> 'ship fast'; \
                 UPDATE customers SET name = 'Alice' WHERE id = 1;",
            );
        }
    }
    // Error texts that quote values are hidden while the statement reads a masked column,
    // which a view of the open transaction hides from the catalog.
    let r = psql_run(
        &conn,
        Some(&p.agent),
        &[
            "BEGIN",
            "CREATE TEMP VIEW plain_notes AS SELECT id, salary::text AS txt FROM customers",
            "SELECT make_date(txt::int, 13, 1) FROM plain_notes",
            "ROLLBACK",
        ],
    );
    if SALARIES.iter().any(|s| r.stderr.contains(s)) {
        failed.push(format!("an error text quoted a salary: {}", r.stderr));
    }
    assert!(
        failed.is_empty(),
        "masked values copied or shown:\n{}",
        failed.join("\n")
    );
    // The transaction over, copies of unmasked columns work again.
    let r = psql_run(
        &conn,
        Some(&p.agent),
        &["INSERT INTO orders SELECT id + 1, note FROM orders"],
    );
    assert!(r.stderr.is_empty(), "{}", r.stderr);
}

#[test]
fn ddl_and_a_copy_pipelined_in_one_batch() {
    let p = start("spath-pipe", 19316, 19317, &salary_rule());
    let mut w = Wire::open(&p, &agent_jwt("agent-spath-pipe"), "agentdb");
    // One write: a Query still unanswered, then a batch that creates a TEMP VIEW and copies
    // from it before the server has answered anything.
    w.send(&json!([
        ["Q", "SELECT 1"],
        [
            "P",
            "",
            "CREATE TEMP VIEW plain_notes AS SELECT id, salary::text AS txt FROM customers"
        ],
        ["B", "", ""],
        ["E", ""],
        [
            "P",
            "",
            "INSERT INTO public.plain_notes SELECT id, txt FROM plain_notes"
        ],
        ["B", "", ""],
        ["E", ""],
        ["S"]
    ]));
    let mut got = w.until_ready();
    got.extend(w.until_ready());
    let error = only_error(&got);
    assert_eq!(error["sqlstate"], "42501", "{got:?}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("would copy masked values")),
        "{got:?}"
    );
    w.send(&json!([["X"]]));
    assert_eq!(
        plain_notes(&p),
        "hello",
        "salaries copied into a plain table"
    );
}
