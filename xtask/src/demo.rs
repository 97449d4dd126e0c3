//! `cargo xtask demo`: an agent in a fresh cgroup reaches a TCP service only through the gateway;
//! then an agent's psql session to a throwaway PostgreSQL goes through the gateway, JWT as its
//! password, and its DROP TABLE is denied; the agent reads a customers table with its personal
//! data masked, while the database holds the real values.

use std::{
    fs,
    io::{Read, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agentgate_tests::{
    fixtures, mint, now,
    pg::{psql_command, PgOptions, PgServer, ROLE_PASSWORD, ROLE_SCRAM, SUPERUSER_PASSWORD},
    place, probe, s, Cgroup, Gateway, TargetServer,
};
use anyhow::{bail, Context};
use serde_json::Value;

use crate::util;

const POLICY: &str = include_str!("../../policies/demo/demo.yaml");
const PG_POLICY: &str = include_str!("../../policies/demo-postgres/postgres.yaml");
/// Where policies/demo-postgres/postgres.yaml expects the database (its gateway listens on 7440).
const PG_PORT: u16 = 7441;
const DEMO_DIR: &str = "/tmp/agentgate-demo";

/// The table the mask rules of postgres.yaml cover (test card numbers, Luhn-valid).
const CUSTOMERS: &str = "\
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, card_number text, ssn text, note text);
INSERT INTO customers VALUES
  (1, 'Alice Martin', 'alice@example.com', '4111 1111 1111 1111', '123-45-6789', 'prefers email, cc alice.m@example.org'),
  (2, 'Bob Chen', 'bob.chen@example.net', '5555 5555 5555 4444', '987-65-4320', 'call after 5pm'),
  (3, 'Carol Diaz', 'carol.diaz@example.com', '3782 822463 10005', '078-05-1120', 'VIP since 2019');
";
/// What the agent, and then the superuser, ask of the customers table.
const CUSTOMERS_QUERY: &str = "SELECT * FROM customers ORDER BY id";

/// The agent's psql session: statements from stdin, one per line, echoed by `psql -a`.
const AGENT_SESSION: &str = "\
INSERT INTO items (id, name, price) VALUES (1, 'widget', 9.50), (2, 'gadget', 24.00);
SELECT id, name, price FROM items ORDER BY id;
SELECT current_user;
DROP TABLE items;
SELECT count(*) FROM items;
";

pub fn run() -> anyhow::Result<()> {
    util::require_root("the demo")?;
    let bins = util::build(false)?;
    std::env::set_var("AGENTGATE_BIN", &bins.agentgate);
    std::env::set_var("AGENT_PROBE_BIN", &bins.probe);

    // Declared first so that it is removed last, after the gateways and the agents' cgroups.
    let _anchor = Cgroup::adopt("/agentgate-demo");
    let _files = DemoFiles::create()?;
    tcp_service()?;
    postgres()?;
    println!("\n== done: cleaning up (gateway, PostgreSQL server and its directory, cgroups, pinned programs, token and secret files)");
    Ok(())
}

/// An agent reaches a plain TCP service only through the gateway (policies/demo/demo.yaml).
fn tcp_service() -> anyhow::Result<()> {
    let service = TargetServer::start("127.0.0.2:7432".parse()?);
    println!("== a TCP service listens on 127.0.0.2:7432 (it greets each client with the address it sees)");

    let mut gw = Gateway::start("demo", POLICY);
    println!(
        "== agentgate runs (pid {}) with policies/demo/demo.yaml",
        gw.pid()
    );
    let agent = Cgroup::create("/agentgate-demo/agent-1");
    let ev = gw.wait_classified(&agent.rel);
    println!(
        "== a CI job creates cgroup {} -> gateway classifies it: workload {}",
        agent.rel,
        s(&ev, "workload")
    );

    let r = probe(Some(&agent), None, service.addr);
    println!(
        "\n-- agent in {} connects to 127.0.0.2:7432, unmodified:",
        agent.rel
    );
    println!(
        "   its socket: local {}, getpeername() {}",
        show(r.local),
        show(r.peer)
    );
    println!("   the service says: {}", r.greeting);
    let ev = gw.connection_of(r.pid);
    println!(
        "   the gateway recorded: conn {} from pid {} cgroup {} (workload {}) as {} to {} via target `{}`",
        ev["conn"],
        ev["pid"],
        s(&ev, "cgroup"),
        s(&ev, "workload"),
        s(&ev, "subject"),
        s(&ev, "original_dst"),
        s(&ev, "target")
    );
    println!(
        "   => {}",
        if r.went_direct() {
            "WENT DIRECT (capture failed)"
        } else {
            "went through the gateway: the service saw the gateway's socket, not the agent's"
        }
    );

    let r = probe(None, None, service.addr);
    println!("\n-- a process outside managed cgroups connects to the same service:");
    println!(
        "   local {}, the service says: {} => {}",
        show(r.local),
        r.greeting,
        if r.went_direct() {
            "direct, untouched"
        } else {
            "CAPTURED (wrong)"
        }
    );

    println!("\n-- the agent's token is swapped for one of group `contractors` (valid, signed, not allowed):");
    std::fs::write(
        "/tmp/agentgate-demo/agent-token",
        mint("contractor-agent-9", &["contractors"], now(), now() + 600),
    )?;
    let r = probe(Some(&agent), None, service.addr);
    let ev = gw.wait_for(
        std::time::Duration::from_secs(5),
        |e| e["event"] == "refused" && e["pid"] == r.pid,
        0,
    );
    println!(
        "   the agent's connection is closed before any byte reaches the service; the gateway logged: {} ({}): {}",
        s(&ev, "code"),
        s(&ev, "subject"),
        s(&ev, "reason")
    );
    std::fs::write(
        "/tmp/agentgate-demo/agent-token",
        mint("code-review-agent-1", &["demo-agents"], now(), now() + 600),
    )?;

    println!("\n-- the gateway is killed with SIGKILL (crash, upgrade):");
    gw.kill9();
    let r = probe(Some(&agent), None, service.addr);
    println!(
        "   the agent's connect(): {} => fail closed, nothing reached the service directly",
        r.errno
            .map(|e| std::io::Error::from_raw_os_error(e).to_string())
            .unwrap_or_else(|| format!("CONNECTED ({})", r.greeting))
    );
    gw.restart();
    std::thread::sleep(Duration::from_millis(100));
    let r = probe(Some(&agent), None, service.addr);
    println!(
        "   after restart: the service says {} (through the gateway: {})",
        r.greeting,
        !r.went_direct()
    );
    println!(
        "\n== {} connections reached the service; stopping this gateway (agent cgroup, pinned programs removed)",
        service.count()
    );
    Ok(())
}

/// An agent's psql session to a throwaway PostgreSQL goes through the gateway
/// (policies/demo-postgres/postgres.yaml): JWT as its password, the brokered role upstream, a denied DROP.
fn postgres() -> anyhow::Result<()> {
    // Locals drop in reverse order: the gateway first, then the agent's cgroup, then the server.
    let pg = PgServer::start("demo", PG_PORT, PgOptions::default());
    pg.create_db("agentdb");
    pg.sql_in(
        "agentdb",
        "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(8, 2));",
    );
    pg.sql_in("agentdb", CUSTOMERS);
    let secret = Path::new(DEMO_DIR).join("pg-secret");
    fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&secret)
        .and_then(|mut f| writeln!(f, "{ROLE_PASSWORD}"))
        .with_context(|| format!("write {}", secret.display()))?;
    let key = Path::new(DEMO_DIR).join("mask.key");
    write_mask_key(&key)?;
    println!(
        "\n== a throwaway PostgreSQL 15 on 127.0.0.1:{PG_PORT} (database agentdb, tables items and customers); agentgate holds the only password (role {ROLE_SCRAM}, in {}, mode 0600)",
        secret.display()
    );
    let agent = Cgroup::create("/agentgate-demo/sql-agent-1");
    let gw = Gateway::start("demo-pg", PG_POLICY);
    println!(
        "== a second agentgate runs (pid {}) with policies/demo-postgres/postgres.yaml: PostgreSQL target, rule no-ddl denies ddl/dcl/admin statements, rules mask-* mask the customers' personal data",
        gw.pid()
    );
    let ev = gw.wait_classified(&agent.rel);
    println!(
        "== the agent's cgroup {} -> gateway classifies it: workload {}",
        agent.rel,
        s(&ev, "workload")
    );

    let subject = "report-agent-7";
    let jwt = mint(subject, &["demo-agents"], now(), now() + 600);
    let conn = format!("host=127.0.0.1 port={PG_PORT} dbname=agentdb user=agent password={jwt}");
    let shown = conn.replace(&jwt, &format!("{}…(JWT, 600 s)", &jwt[..8]));
    println!(
        "\n-- agent in {} (subject {subject}, group demo-agents) runs plain psql against the database's own address, its JWT as the password:",
        agent.rel
    );
    println!("   $ psql -X --dbname=\"{shown}\" -a -v VERBOSITY=verbose < session.sql");
    let mut cmd = psql_command(&conn);
    cmd.args(["-a", "-v", "VERBOSITY=verbose"]);
    place(&mut cmd, Some(&agent), None);
    let (pid, out) = run_merged(cmd, AGENT_SESSION)?;
    print_indented(&out);
    let brokered = out.lines().any(|l| l.trim() == ROLE_SCRAM);
    let denied = out.contains("42501") && out.contains("\"no-ddl\"");
    let left = pg.sql_in("agentdb", "SELECT count(*) FROM items;");
    println!(
        "   => current_user: {}",
        if brokered {
            "agentgate_scram: the agent logged in as `agent` with a JWT, the database saw the role the gateway logged in as"
        } else {
            "NOT the brokered role (wrong)"
        }
    );
    println!(
        "   => DROP TABLE: {}; the table is still there ({left} rows, as the superuser sees it)",
        if denied {
            "stopped at the gateway (42501, rule no-ddl) and the session went on"
        } else {
            "NOT DENIED (wrong)"
        }
    );

    println!("\n-- what the gateway saw:");
    let allowed = gw.wait_for(
        Duration::from_secs(5),
        |e| e["event"] == "allowed" && e["pid"] == pid,
        0,
    );
    println!(
        "   event allowed: conn {} from pid {} cgroup {} (workload {}) as {} to {} via target `{}`, rule {}",
        allowed["conn"],
        allowed["pid"],
        s(&allowed, "cgroup"),
        s(&allowed, "workload"),
        s(&allowed, "subject"),
        s(&allowed, "original_dst"),
        s(&allowed, "target"),
        s(&allowed, "rule")
    );
    let close = gw.wait_for(
        Duration::from_secs(5),
        |e| e["event"] == "connection_close" && e["pid"] == pid,
        0,
    );
    println!(
        "   event connection_close: {} statements, {} denied",
        close["statements"], close["denied_statements"]
    );
    let session = s(&close, "session");
    let expected = close["statements"].as_u64().unwrap_or(0) as usize;
    let rows = recorded(&gw.record_db(), session, expected)?;
    println!("   recorded statements (record DB, table statements, session {session}):");
    let cell = |r: &Value, i: usize| match &r[i] {
        Value::Null => "-".to_string(),
        Value::String(t) => t.clone(),
        v => v.to_string(),
    };
    let header = ["seq", "class", "decision", "rule", "code", "text"];
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| (0..header.len()).map(|i| cell(r, i)).collect())
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            table
                .iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let mut l = String::from("     ");
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l += c;
            } else {
                l += &format!("{c:<w$}  ", w = widths[i]);
            }
        }
        l
    };
    println!("{}", line(&header.map(String::from)));
    for r in &table {
        println!("{}", line(r));
    }

    println!("\n-- the same psql command from outside managed cgroups (straight to the database):");
    let direct = |conn: &str| -> anyhow::Result<String> {
        let out = psql_command(conn).args(["-c", "SELECT 1"]).output()?;
        Ok(if out.status.success() {
            "CONNECTED (wrong)".to_string()
        } else {
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
    };
    println!("   {}", direct(&conn)?);
    println!("   and as user {ROLE_SCRAM}, the JWT still as the password:");
    println!(
        "   {}",
        direct(&conn.replace("user=agent ", &format!("user={ROLE_SCRAM} ")))?
    );
    println!(
        "   => the database knows no JWTs: the agent gets in only through the gateway, which holds the password"
    );

    masking(&agent, &conn, &shown, &pg)
}

/// The agent reads table customers through the gateway (masked), then the superuser reads it
/// straight from the database (the real values).
fn masking(agent: &Cgroup, conn: &str, shown: &str, pg: &PgServer) -> anyhow::Result<()> {
    println!(
        "\n-- masking: the agent in {} reads table customers (rules mask-customer-email, mask-customer-numbers, mask-emails-anywhere):",
        agent.rel
    );
    println!("   $ psql -X --dbname=\"{shown}\" -c '{CUSTOMERS_QUERY}'");
    let mut cmd = psql_command(conn);
    cmd.args(["-c", CUSTOMERS_QUERY]);
    place(&mut cmd, Some(agent), None);
    let (_, masked) = run_merged(cmd, "")?;
    print_indented(masked.trim_end());

    let superuser = pg.conninfo("postgres", SUPERUSER_PASSWORD, "agentdb", "disable");
    println!("\n-- the same query as the superuser, from outside managed cgroups (straight to the database):");
    println!(
        "   $ psql -X --dbname=\"host=127.0.0.1 port={PG_PORT} dbname=agentdb user=postgres password=…\" -c '{CUSTOMERS_QUERY}'"
    );
    let mut cmd = psql_command(&superuser);
    cmd.args(["-c", CUSTOMERS_QUERY]);
    let (_, real) = run_merged(cmd, "")?;
    print_indented(real.trim_end());
    println!();

    let ok = masked.contains("hmac:")
        && masked.contains("****1111")
        && masked.contains("****6789")
        && masked.contains("cc ****")
        && !masked.contains('@')
        && real.contains("alice@example.com");
    println!(
        "   => {}",
        if ok {
            "the agent got email as hmac:… (HMAC-SHA256 with the key in /tmp/agentgate-demo/mask.key: \
             equal emails mask alike, so joins still work),\n      \
             card_number and ssn as **** and their last 4 characters, the address inside note as ****; \
             the database keeps the real values"
        } else {
            "the agent's rows are NOT masked as postgres.yaml says (wrong)"
        }
    );
    Ok(())
}

fn print_indented(text: &str) {
    for line in text.lines().map(str::trim_end) {
        if line.is_empty() {
            println!();
        } else {
            println!("     {line}");
        }
    }
}

/// A random HMAC key for the `hash` mask strategy, mode 0600, where postgres.yaml expects it.
fn write_mask_key(path: &Path) -> anyhow::Result<()> {
    let mut key = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .context("read /dev/urandom")?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| writeln!(f, "{hex}"))
        .with_context(|| format!("write {}", path.display()))
}

/// Runs `cmd` with `input` on stdin, stdout and stderr into one file (so an error shows where it
/// happened); returns its pid and that output.
fn run_merged(mut cmd: Command, input: &str) -> anyhow::Result<(u32, String)> {
    let path = Path::new(DEMO_DIR).join("psql.out");
    let out = fs::File::create(&path)?;
    cmd.stdin(Stdio::piped())
        .stdout(out.try_clone()?)
        .stderr(out);
    let mut child = cmd.spawn().context("run psql")?;
    drop(cmd);
    let mut stdin = child.stdin.take().context("psql stdin")?;
    stdin.write_all(input.as_bytes())?;
    drop(stdin);
    child.wait()?;
    let mut text = String::new();
    fs::File::open(&path)?.read_to_string(&mut text)?;
    let _ = fs::remove_file(&path);
    Ok((child.id(), text))
}

/// The statements the gateway recorded for `session`: [seq, class, decision, rule, error_code,
/// text] each. The recorder commits in batches: waits until `expected` rows are there (5 s).
fn recorded(db: &Path, session: &str, expected: usize) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new("python3")
            .arg("-c")
            .arg(
                "import sqlite3, sys, json\n\
                 c = sqlite3.connect(sys.argv[1])\n\
                 print(json.dumps(c.execute('SELECT seq, class, decision, rule, error_code, text FROM statements WHERE session = ? ORDER BY seq', (sys.argv[2],)).fetchall()))",
            )
            .arg(db)
            .arg(session)
            .output()
            .context("python3 (its sqlite3 module reads the record DB)")?;
        if !out.status.success() {
            bail!(
                "reading {}: {}",
                db.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let rows: Vec<Value> = serde_json::from_slice(&out.stdout)?;
        if rows.len() >= expected || Instant::now() > deadline {
            return Ok(rows);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The identity provider's keys and the agent's token, where policies/demo/demo.yaml expects them
/// (and, later, the PostgreSQL target's secret, where postgres.yaml expects it).
struct DemoFiles(std::path::PathBuf);

impl DemoFiles {
    fn create() -> anyhow::Result<Self> {
        let dir = std::path::PathBuf::from(DEMO_DIR);
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(fixtures().join("test-jwks.json"), dir.join("jwks.json"))?;
        std::fs::write(
            dir.join("agent-token"),
            mint("code-review-agent-1", &["demo-agents"], now(), now() + 600),
        )?;
        println!("== an OIDC token for subject code-review-agent-1 (group demo-agents, 10 min) is in /tmp/agentgate-demo/agent-token");
        Ok(Self(dir))
    }
}

impl Drop for DemoFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn show(a: Option<std::net::SocketAddr>) -> String {
    a.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
}
