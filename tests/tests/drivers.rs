//! The popular PostgreSQL drivers through the gateway, end to end: asyncpg, pgJDBC and
//! node-postgres each run their normal workload (`tests/fixtures/drivers/`: prepared statements,
//! binary types with arrays, an enum and a composite type, COPY in and out, cancel of a running
//! statement, LISTEN/NOTIFY, commit and rollback, errors and the session going on after them),
//! printing a canonical text of everything they saw. Each program runs once directly against a
//! real PostgreSQL 15 as the upstream role, and through the gateway (in the managed agent cgroup,
//! dialing the server's own address, its JWT as the password) under three policies:
//!
//! - `plain`: no statement or mask rule: the output is identical to the direct one;
//! - `mask`: a mask rule on `people.email`: identical except exactly the email values, `****`;
//! - `deny`: NO_DDL_RULE and a deny of table `vault`: identical except the two denied
//!   statements, which get the gateway's 42501 naming their rule; the DDL did not happen.
//!
//! One PostgreSQL and one gateway serve the whole binary: the first test to need them runs every
//! program (in parallel, each run in a database of its own copied from one template) and the
//! tests compare the outputs of their driver. Ports 19100 (gateway) and 19101 (PostgreSQL).
//! Needs root, `python3` with asyncpg, javac and `/usr/share/java/postgresql.jar`, node with
//! `tests/fixtures/drivers/node/node_modules` (all from `cargo xtask setup`).

use std::{
    collections::BTreeMap,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use agentgate_tests::{pg::*, *};

const GATEWAY_PORT: u16 = 19100;
const PG_PORT: u16 = 19101;
/// A program still running after this is killed (its own waits are 10 s at most).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
const PGJDBC_JAR: &str = "/usr/share/java/postgresql.jar";

/// The masked values of the `mask` variant (`people.email`) and what the agent must see.
const EMAILS: &[&str] = &["ann@drivers.example", "ben@drivers.example"];
const REDACTED: &str = "****";

/// The schema every run starts from (a template database; the programs expect exactly this).
const SCHEMA: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE pair AS (a int, b text);
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2), score float8, tags text[], nums int[], mood mood, p pair, data bytea, at timestamptz, day date, u uuid, doc jsonb, flag bool);
INSERT INTO items VALUES
 (1, 'one', 1.50, 0.25, '{a,"b c"}', '{1,2}', 'happy', ROW(1, 'x'), '\xdeadbeef', '2024-01-02 03:04:05+00', '2024-01-02', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"k": "v"}', true),
 (2, 'two', 2.00, -1e10, '{}', '{NULL}', 'sad', ROW(NULL, 'y,z'), '', '1999-12-31 23:59:59.999+00', '1999-12-31', NULL, '[1, 2.5, null]', false),
 (3, 'three', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
CREATE TABLE people (id int PRIMARY KEY, name text, email text);
INSERT INTO people VALUES (1, 'Ann', 'ann@drivers.example'), (2, 'Ben', 'ben@drivers.example'), (3, 'Cy', NULL);
CREATE TABLE sink (id int PRIMARY KEY, name text, mood mood, tags text[]);
CREATE TABLE vault (id int, secret text);
INSERT INTO vault VALUES (1, 's1'), (2, 's2');
"#;

const MASK_RULE: &str = "  - name: mask-email\n    targets: [pg]\n    mask:\n      columns: [\"people.email\"]\n      strategy: redact\n";
const DENY_VAULT_RULE: &str = "  - name: deny-vault\n    effect: deny\n    when: {groups: [agents]}\n    targets: [pg]\n    statements: {tables: [vault]}\n";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Driver {
    Asyncpg,
    Pgjdbc,
    NodePostgres,
}

const DRIVERS: [Driver; 3] = [Driver::Asyncpg, Driver::Pgjdbc, Driver::NodePostgres];

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Variant {
    Plain,
    Mask,
    Deny,
}

const VARIANTS: [Variant; 3] = [Variant::Plain, Variant::Mask, Variant::Deny];

impl Driver {
    fn name(self) -> &'static str {
        match self {
            Driver::Asyncpg => "asyncpg",
            Driver::Pgjdbc => "pgjdbc",
            Driver::NodePostgres => "node",
        }
    }
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Mask => "mask",
            Variant::Deny => "deny",
        }
    }

    fn rules(self) -> String {
        match self {
            Variant::Plain => String::new(),
            Variant::Mask => MASK_RULE.into(),
            Variant::Deny => format!("{NO_DDL_RULE}{DENY_VAULT_RULE}"),
        }
    }
}

/// What one program printed.
#[derive(Clone, Debug)]
struct Run {
    stdout: String,
    stderr: String,
    /// Exit code, or a description of how it ended otherwise.
    status: String,
}

/// One driver run through the gateway under one policy variant.
#[derive(Clone, Debug)]
struct GatewayRun {
    run: Run,
    /// The gateway recorded an `allowed` connection of this run's subject.
    went_through: bool,
    /// `drv_probe` exists in this run's database after it (the DDL was executed).
    probe_created: bool,
    /// The gateway log's lines about this run's connections, for the failure message.
    gateway_log: String,
}

struct Outcomes {
    direct: BTreeMap<Driver, (Run, bool)>,
    through: BTreeMap<(Driver, Variant), GatewayRun>,
}

/// Everything run once for the whole binary (a panic inside is kept and reported by each test).
fn outcomes() -> &'static Result<Outcomes, String> {
    static CELL: OnceLock<Result<Outcomes, String>> = OnceLock::new();
    CELL.get_or_init(|| {
        std::panic::catch_unwind(run_everything).map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into())
        })
    })
}

fn database(driver: Driver, variant: Option<Variant>) -> String {
    format!(
        "drv_{}_{}",
        driver.name(),
        variant.map(Variant::name).unwrap_or("direct")
    )
}

fn subject(driver: Driver, variant: Variant) -> String {
    format!("drv-{}-{}", driver.name(), variant.name())
}

fn run_everything() -> Outcomes {
    let classes = std::thread::spawn(compile_pgjdbc_client);
    assert!(
        node_dir().join("node_modules/pg/package.json").exists()
            && node_dir()
                .join("node_modules/pg-copy-streams/package.json")
                .exists(),
        "node-postgres is not installed in {}: run `cargo xtask setup`",
        node_dir().display()
    );
    let p = PgGateway::start(
        "drivers",
        GATEWAY_PORT,
        PG_PORT,
        PgOptions::default(),
        &PgTargetOptions::default(),
    );
    p.pg.create_db("drv_template");
    p.pg.sql_in("drv_template", SCHEMA);
    let mut create = String::new();
    for d in DRIVERS {
        for v in std::iter::once(None).chain(VARIANTS.map(Some)) {
            create += &format!(
                "CREATE DATABASE {} TEMPLATE drv_template;\n",
                database(d, v)
            );
        }
    }
    p.pg.sql(&create);
    let classes = classes
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    let ctx = Ctx {
        classes: classes.path().to_path_buf(),
    };

    let mut direct = BTreeMap::new();
    let mut through = BTreeMap::new();
    for variant in VARIANTS {
        let opts = PgTargetOptions {
            extra_rules: variant.rules(),
            ..Default::default()
        };
        if variant != Variant::Plain {
            p.set_policy(&opts);
        }
        let before = p.gw.events().len();
        let runs: Vec<(Driver, Option<Variant>, Run)> = std::thread::scope(|s| {
            let mut handles = Vec::new();
            for d in DRIVERS {
                // The direct runs do not depend on the policy: once, beside the first variant.
                if variant == Variant::Plain {
                    let ctx = &ctx;
                    let p = &p;
                    handles.push(s.spawn(move || {
                        let conn = Conn {
                            user: ROLE_SCRAM.into(),
                            password: ROLE_PASSWORD.into(),
                            database: database(d, None),
                            port: p.pg.port,
                        };
                        (d, None, run_program(ctx, d, &conn, None))
                    }));
                }
                let ctx = &ctx;
                let p = &p;
                handles.push(s.spawn(move || {
                    let conn = Conn {
                        user: "agent".into(),
                        password: agent_jwt(&subject(d, variant)),
                        database: database(d, Some(variant)),
                        port: p.pg.port,
                    };
                    (d, Some(variant), run_program(ctx, d, &conn, Some(&p.agent)))
                }));
            }
            handles
                .into_iter()
                .map(|h| h.join().expect("driver thread"))
                .collect()
        });
        let events = p.gw.events();
        let log = std::fs::read_to_string(p.gw.dir.join("gateway.log")).unwrap_or_default();
        for (d, v, run) in runs {
            let probe_created = probe_exists(&p, &database(d, v));
            match v {
                None => {
                    direct.insert(d, (run, probe_created));
                }
                Some(v) => {
                    let sub = subject(d, v);
                    let went_through = events
                        .iter()
                        .skip(before)
                        .any(|e| e["event"] == "allowed" && e["subject"] == sub.as_str());
                    through.insert(
                        (d, v),
                        GatewayRun {
                            run,
                            went_through,
                            probe_created,
                            gateway_log: log_of_database(&log, &database(d, Some(v))),
                        },
                    );
                }
            }
        }
    }
    Outcomes { direct, through }
}

/// The lines of the gateway log `log` about connections to database `db` (without colours,
/// the last 60, each cut at 600 characters).
fn log_of_database(log: &str, db: &str) -> String {
    let plain: Vec<String> = log.lines().map(strip_ansi).collect();
    let marker = format!("\"database\":\"{db}\"");
    let ids: std::collections::BTreeSet<String> = plain
        .iter()
        .filter(|l| l.contains(&marker))
        .filter_map(|l| {
            let rest = &l[l.find("conn{id=")? + "conn{id=".len()..];
            Some(rest[..rest.find([' ', '}'])?].to_string())
        })
        .collect();
    let lines: Vec<String> = plain
        .into_iter()
        .filter(|l| {
            ids.iter().any(|id| {
                l.contains(&format!("conn{{id={id} ")) || l.contains(&format!("conn{{id={id}}}"))
            })
        })
        .map(|l| l.chars().take(600).collect())
        .collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// `s` without ANSI escape sequences (the gateway log is coloured).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn probe_exists(p: &PgGateway, db: &str) -> bool {
    p.pg.sql_in(db, "SELECT to_regclass('public.drv_probe') IS NOT NULL;") == "t"
}

struct Ctx {
    /// Where PgJdbcClient.class is.
    classes: PathBuf,
}

struct Conn {
    user: String,
    password: String,
    database: String,
    port: u16,
}

fn drivers_dir() -> PathBuf {
    fixtures().join("drivers")
}

fn node_dir() -> PathBuf {
    drivers_dir().join("node")
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `javac` of `fixtures/drivers/jdbc/PgJdbcClient.java` against Debian's pgJDBC jar.
fn compile_pgjdbc_client() -> TempDir {
    assert!(
        Path::new(PGJDBC_JAR).exists(),
        "{PGJDBC_JAR} missing (package libpostgresql-jdbc-java): run `cargo xtask setup`"
    );
    let dir = TempDir(std::env::temp_dir().join(unique("drivers-jdbc")));
    let _ = std::fs::remove_dir_all(dir.path());
    std::fs::create_dir_all(dir.path()).expect("mkdir classes");
    let out = Command::new("javac")
        .args(["-cp", PGJDBC_JAR, "-d"])
        .arg(dir.path())
        .arg(drivers_dir().join("jdbc/PgJdbcClient.java"))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("javac (run `cargo xtask setup`): {e}"));
    assert!(out.status.success(), "javac: {}", output_text(&out));
    dir
}

fn program(ctx: &Ctx, driver: Driver) -> Command {
    let mut cmd = match driver {
        Driver::Asyncpg => {
            let mut c = Command::new(python());
            c.arg(drivers_dir().join("asyncpg_client.py"));
            c
        }
        Driver::Pgjdbc => {
            let mut c = Command::new("java");
            c.args(["-Duser.timezone=UTC", "-XX:TieredStopAtLevel=1", "-cp"])
                .arg(format!("{PGJDBC_JAR}:{}", ctx.classes.display()))
                .arg("PgJdbcClient");
            c
        }
        Driver::NodePostgres => {
            let mut c = Command::new("node");
            c.arg(node_dir().join("client.js"));
            c
        }
    };
    clean_pg_env(&mut cmd);
    cmd.env("TZ", "UTC");
    cmd
}

/// Runs `driver`'s program against `conn` (on 127.0.0.1), in `cgroup` if given; kills it after
/// [`RUN_TIMEOUT`].
fn run_program(ctx: &Ctx, driver: Driver, conn: &Conn, cgroup: Option<&Cgroup>) -> Run {
    let mut cmd = program(ctx, driver);
    cmd.args(["127.0.0.1", &conn.port.to_string(), &conn.user])
        .arg(&conn.password)
        .arg(&conn.database)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    place(&mut cmd, cgroup, None);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("start {} client: {e}", driver.name()));
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("stdout")));
    let stderr = read(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for client") {
            break match st.code() {
                Some(c) => format!("exit {c}"),
                None => format!("{st}"),
            };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break format!("killed after {} s", RUN_TIMEOUT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
        status,
    }
}

/// The output a run through the gateway under `variant` must print, from the direct one.
fn expected(direct: &str, variant: Variant, driver: Driver) -> String {
    match variant {
        Variant::Plain => direct.to_string(),
        Variant::Mask => {
            let masked = EMAILS
                .iter()
                .fold(direct.to_string(), |s, e| s.replace(e, REDACTED));
            // Under a column rule the gateway hides every quoted text of an error message (from
            // the first quote to the last; gateway-user/src/mask/notice.rs): a data error can
            // quote a masked value and nothing says which column it came from.
            // An error of a Query message naming a relation the gateway's catalog does not know
            // is hidden whole (it might read masked columns; docs/masking.md). node-postgres
            // sends a statement without parameters as a Query; asyncpg and pgJDBC Parse it,
            // and a Parse error reads no rows and keeps its text.
            masked
                .lines()
                .map(|line| match line.split_once(": error ") {
                    Some((step, rest))
                        if driver == Driver::NodePostgres && rest.starts_with("42P01 ") =>
                    {
                        format!("{step}: error 42P01 agentgate: the error text was hidden because the statement reads masked columns (SQLSTATE 42P01)")
                    }
                    Some((step, rest)) => format!("{step}: error {}", hide_quoted(rest)),
                    None => line.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n")
                + "\n"
        }
        Variant::Deny => {
            let denied = |rule: &str| {
                format!("error 42501 agentgate: statement denied by policy rule \"{rule}\"")
            };
            let mut lines = Vec::new();
            let mut last = "";
            for line in direct.lines() {
                let step = line.split(": ").next().unwrap_or("");
                let replacement = match step {
                    "ddl" => Some(format!("ddl: {}", denied("no-ddl"))),
                    "vault" => Some(format!("vault: {}", denied("deny-vault"))),
                    _ => None,
                };
                match replacement {
                    // A step's lines become its one error line.
                    Some(r) if step != last => lines.push(r),
                    Some(_) => {}
                    None => lines.push(line.to_string()),
                }
                last = step;
            }
            lines.join("\n") + "\n"
        }
    }
}

/// `text` with everything from its first double quote to its last replaced by `"****"`.
fn hide_quoted(text: &str) -> String {
    match (text.find('"'), text.rfind('"')) {
        (Some(first), Some(last)) if last > first => {
            format!("{}\"{REDACTED}\"{}", &text[..first], &text[last + 1..])
        }
        _ => text.to_string(),
    }
}

/// A line diff (longest common subsequence): `-` expected only, `+` actual only, two lines of
/// context around each change.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            ops.push(('+', b[j]));
            j += 1;
        } else {
            ops.push(('-', a[i]));
            i += 1;
        }
    }
    let changed: Vec<usize> = (0..ops.len()).filter(|&k| ops[k].0 != ' ').collect();
    let near = |k: usize| changed.iter().any(|&c| c.abs_diff(k) <= 2);
    let mut out = String::new();
    let mut skipped = false;
    for (k, (op, line)) in ops.iter().enumerate() {
        if near(k) {
            out += &format!("{op} {line}\n");
            skipped = false;
        } else if !skipped {
            out += "  …\n";
            skipped = true;
        }
    }
    out
}

/// The last `n` lines of `s`.
fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Compares `driver`'s runs through the gateway with its direct run; panics with every
/// difference (all variants) at once.
fn check_driver(driver: Driver) {
    let o = match outcomes() {
        Ok(o) => o,
        Err(e) => panic!("the drivers' runs could not be made: {e}"),
    };
    let (direct, direct_probe) = &o.direct[&driver];
    // The direct run must have done the whole workload, or the comparison proves little.
    let landmarks = [
        "hello: user=agentgate_scram",
        "ann@drivers.example",
        "tx-error: error 22012 division by zero",
        "tx-error: error 25P02",
        "copy-out: sink",
        "errors: error 23505",
        "vault: count 2",
        "notify: received 2",
        "cancel: running seen true",
        "stopped on the server true",
        "end: ok",
    ];
    let lower = direct.stdout.to_lowercase();
    let missing: Vec<&&str> = landmarks
        .iter()
        .filter(|l| !lower.contains(&l.to_lowercase()))
        .collect();
    assert!(
        missing.is_empty() && direct.status == "exit 0" && *direct_probe,
        "{} directly against PostgreSQL did not run its workload ({}; missing {missing:?}; \
         drv_probe created: {direct_probe}):\n{}\n--- stderr ---\n{}",
        driver.name(),
        direct.status,
        direct.stdout,
        tail(&direct.stderr, 40)
    );
    let cancelled = [
        "cancel: error 57014 canceling statement due to user request",
        "cancel: task cancelled",
    ];
    assert!(
        cancelled.iter().any(|c| direct.stdout.contains(c)),
        "{}: the sleep was not cancelled directly:\n{}",
        driver.name(),
        direct.stdout
    );

    let mut failures = Vec::new();
    for variant in VARIANTS {
        let g = &o.through[&(driver, variant)];
        let want = expected(&direct.stdout, variant, driver);
        let mut problems = Vec::new();
        if !g.went_through {
            problems.push(format!(
                "the gateway recorded no allowed session of {}",
                subject(driver, variant)
            ));
        }
        if g.run.stdout != want {
            problems.push(format!(
                "output differs from the expected (- expected, + through the gateway):\n{}",
                diff(&want, &g.run.stdout)
            ));
        }
        if g.run.status != "exit 0" {
            problems.push(format!("the program ended with {}", g.run.status));
        }
        if variant == Variant::Mask && EMAILS.iter().any(|e| g.run.stdout.contains(e)) {
            problems.push("an unmasked email reached the agent".into());
        }
        let want_probe = variant != Variant::Deny;
        if g.probe_created != want_probe {
            problems.push(format!(
                "drv_probe created through the gateway: {} (expected {want_probe})",
                g.probe_created
            ));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "=== {} through the gateway, policy `{}`:\n{}\n--- program stderr (tail) ---\n{}\n\
                 --- gateway log of this run's connections (tail) ---\n{}",
                driver.name(),
                variant.name(),
                problems.join("\n"),
                tail(&g.run.stderr, 30),
                g.gateway_log
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} through the gateway:\n{}",
        driver.name(),
        failures.join("\n\n")
    );
}

#[test]
fn asyncpg_works_through_the_gateway() {
    check_driver(Driver::Asyncpg);
}

#[test]
fn pgjdbc_works_through_the_gateway() {
    check_driver(Driver::Pgjdbc);
}

#[test]
fn node_postgres_works_through_the_gateway() {
    check_driver(Driver::NodePostgres);
}

#[test]
fn expected_outputs_follow_the_variant() {
    let direct =
        "a: 1\npeople: ann@drivers.example\nddl: status CREATE TABLE\nvault: count 2\nz: ok\n";
    assert_eq!(expected(direct, Variant::Plain, Driver::Asyncpg), direct);
    assert_eq!(
        expected(direct, Variant::Mask, Driver::Asyncpg),
        "a: 1\npeople: ****\nddl: status CREATE TABLE\nvault: count 2\nz: ok\n"
    );
    assert_eq!(
        expected(
            "e: error 42P01 relation \"t\" does not exist\nf: \"quoted\"\n",
            Variant::Mask,
            Driver::Asyncpg
        ),
        "e: error 42P01 relation \"****\" does not exist\nf: \"quoted\"\n"
    );
    assert_eq!(
        expected(direct, Variant::Deny, Driver::Asyncpg),
        "a: 1\npeople: ann@drivers.example\n\
         ddl: error 42501 agentgate: statement denied by policy rule \"no-ddl\"\n\
         vault: error 42501 agentgate: statement denied by policy rule \"deny-vault\"\nz: ok\n"
    );
    let d = diff("a\nb\nc\n", "a\nx\nc\n");
    assert!(d.contains("- b\n") && d.contains("+ x\n"), "{d}");
}
