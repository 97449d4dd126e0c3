//! Scene two: an agent's psql session to a throwaway PostgreSQL through the gateway, JWT as its
//! password; then its approvals, its masked read and the record (`approvals`, `masking`,
//! `record`).

use std::{
    fs,
    io::{Read, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
    process::Command,
    time::Duration,
};

use agentgate_tests::{
    mint, now,
    pg::{psql_command, PgOptions, PgServer, ROLE_PASSWORD, ROLE_SCRAM},
    place, s, Cgroup, Gateway,
};
use anyhow::Context;

use super::{
    approvals::approvals,
    background::run_merged,
    masking::masking,
    output::{cell, print_indented, print_table},
    record::{audit_record, recorded},
    DEMO_DIR,
};

const PG_POLICY: &str = include_str!("../../../policies/demo-postgres/postgres.yaml");
/// Where policies/demo-postgres/postgres.yaml expects the database (its gateway listens on 7440).
pub(super) const PG_PORT: u16 = 7441;

/// The table the mask rules of postgres.yaml cover (test card numbers, Luhn-valid).
const CUSTOMERS: &str = "\
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, card_number text, ssn text, note text);
INSERT INTO customers VALUES
  (1, 'Alice Martin', 'alice@example.com', '4111 1111 1111 1111', '123-45-6789', 'prefers email, cc alice.m@example.org'),
  (2, 'Bob Chen', 'bob.chen@example.net', '5555 5555 5555 4444', '987-65-4320', 'call after 5pm'),
  (3, 'Carol Diaz', 'carol.diaz@example.com', '3782 822463 10005', '078-05-1120', 'VIP since 2019');
";
/// What the agent, and then the superuser, ask of the customers table.
pub(super) const CUSTOMERS_QUERY: &str = "SELECT * FROM customers ORDER BY id";

/// The agent's psql session: statements from stdin, one per line, echoed by `psql -a`.
pub(super) const AGENT_SESSION: &str = "\
INSERT INTO items (id, name, price) VALUES (1, 'widget', 9.50), (2, 'gadget', 24.00);
SELECT id, name, price FROM items ORDER BY id;
SELECT current_user;
GRANT SELECT ON customers TO PUBLIC;
SELECT count(*) FROM items;
";

/// An agent's psql session to a throwaway PostgreSQL goes through the gateway
/// (policies/demo-postgres/postgres.yaml): JWT as its password, the brokered role upstream, a denied
/// GRANT; its DROP TABLEs wait for a person's decision.
pub(super) fn postgres() -> anyhow::Result<()> {
    // Locals drop in reverse order: the gateway first, then the agent's cgroup, then the server.
    let pg = PgServer::start("demo", PG_PORT, PgOptions::default());
    pg.create_db("agentdb");
    pg.sql_in(
        "agentdb",
        "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(8, 2));",
    );
    pg.sql_in("agentdb", CUSTOMERS);
    // Owned by the gateway's role: PostgreSQL lets only the owner drop a table.
    pg.sql_in(
        "agentdb",
        &format!(
            "CREATE TABLE scratch (id int, note text);\n\
             INSERT INTO scratch VALUES (1, 'draft');\n\
             ALTER TABLE scratch OWNER TO {ROLE_SCRAM};"
        ),
    );
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
        "\n== a throwaway PostgreSQL 15 on 127.0.0.1:{PG_PORT} (database agentdb, tables items, customers and scratch, the last owned by {ROLE_SCRAM}); agentgate holds the only password (role {ROLE_SCRAM}, in {}, mode 0600)",
        secret.display()
    );
    let agent = Cgroup::create("/agentgate-demo/sql-agent-1");
    let gw = Gateway::start("demo-pg", PG_POLICY);
    println!(
        "== a second agentgate runs (pid {}) with policies/demo-postgres/postgres.yaml: PostgreSQL target, rule no-privilege-changes denies dcl/admin statements, rule ddl-needs-approval holds ddl statements for a person's approval, rules mask-* mask the customers' personal data",
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
    let (pid, out) = run_merged(agent_psql(&conn, &agent), AGENT_SESSION)?;
    print_indented(&out);
    let brokered = out.lines().any(|l| l.trim() == ROLE_SCRAM);
    let denied = out.contains("42501") && out.contains("\"no-privilege-changes\"");
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
        "   => GRANT: {}; table items is there as before ({left} rows, as the superuser sees it)",
        if denied {
            "stopped at the gateway (42501, rule no-privilege-changes) and the session went on"
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
    let rows = recorded(
        &gw.record_db(),
        "SELECT seq, class, decision, rule, error_code, text FROM statements WHERE session = ? ORDER BY seq",
        &[session],
        expected,
    )?;
    println!("   recorded statements (record DB, table statements, session {session}):");
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| (0..6).map(|i| cell(&r[i])).collect())
        .collect();
    print_table(
        &["seq", "class", "decision", "rule", "code", "text"],
        &table,
    );

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

    approvals(&gw, &agent, subject, &conn, &shown, &pg)?;
    let masking_pid = masking(&agent, &conn, &shown, &pg)?;
    audit_record(&gw, subject, session, masking_pid)
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

/// The agent's psql (statements from stdin, echoed; errors with their SQLSTATE), in its cgroup.
pub(super) fn agent_psql(conn: &str, agent: &Cgroup) -> Command {
    let mut cmd = psql_command(conn);
    cmd.args(["-a", "-v", "VERBOSITY=verbose"]);
    place(&mut cmd, Some(agent), None);
    cmd
}
