//! `cargo xtask demo`: an agent in a fresh cgroup reaches a TCP service only through the gateway;
//! then an agent's psql session to a throwaway PostgreSQL goes through the gateway, JWT as its
//! password, and its GRANT is denied; its DROP TABLE waits for a person, who denies one and
//! approves another through `agentgate approvals`; the agent reads a customers table with its
//! personal data masked, while the database holds the real values. It ends with what the record
//! DB keeps of it all, read with `agentgate agents`, `sessions list|replay` and `audit verify`.

use std::{
    fs,
    io::{Read, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use agentgate_tests::{
    agentgate_bin, fixtures, mint, now,
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
GRANT SELECT ON customers TO PUBLIC;
SELECT count(*) FROM items;
";
/// The agent's second session: its DROP TABLE waits for a person, who denies it.
const DROP_ITEMS: &str = "\
DROP TABLE items;
SELECT count(*) FROM items;
";
/// The agent's third session: a DROP TABLE a person approves.
const DROP_SCRATCH: &str = "DROP TABLE scratch;\n";
/// Why the demo's approver denies the DROP TABLE of items.
const DENY_REASON: &str = "items is live inventory; archive it first";

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
/// (policies/demo-postgres/postgres.yaml): JWT as its password, the brokered role upstream, a denied
/// GRANT; its DROP TABLEs wait for a person's decision.
fn postgres() -> anyhow::Result<()> {
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

/// The agent's DROP TABLEs wait for a person (rule ddl-needs-approval): root on this host denies
/// one and approves the other through `agentgate approvals`; each time the agent sees the outcome
/// and the superuser what the database holds. The record DB keeps the trail of both.
fn approvals(
    gw: &Gateway,
    agent: &Cgroup,
    subject: &str,
    conn: &str,
    shown: &str,
    pg: &PgServer,
) -> anyhow::Result<()> {
    let sock = gw.admin_socket();
    println!(
        "\n-- approvals: the agent in {} drops table items and counts it, in the background (rule ddl-needs-approval: a member of group demo-dbas decides through the HTTP admin API, not started here, or root on this host through the local CLI, as below):",
        agent.rel
    );
    println!(
        "   $ printf 'DROP TABLE items;\\nSELECT count(*) FROM items;\\n' | psql -X --dbname=\"{shown}\" -a -v VERBOSITY=verbose &"
    );
    let mut held = Background::spawn(agent_psql(conn, agent), DROP_ITEMS, "drop-items.out")?;
    let request = pending(&sock, "items", &mut held)?;
    let id = s(&request, "id").to_string();
    let so_far = held.wait_output(|o| o.contains(&id), Duration::from_secs(5))?;
    println!(
        "   the demo polls `agentgate approvals list --json` until the request is pending; as root on this host (SOCK={}, the gateway's admin socket):",
        sock.display()
    );
    println!("   $ agentgate approvals list --admin-socket $SOCK");
    print_indented(&approvals_cli(&sock, &["list"])?);
    println!("   the agent's psql so far:");
    print_indented(&so_far);
    let waiting = held.running()?;
    let still = pg.sql_in("agentdb", "SELECT count(*) FROM items;");
    println!(
        "   => {}",
        if so_far.contains("approval required") && waiting {
            format!(
                "the agent was told at once (NOTICE naming request {id}) and its psql waits; items is still there ({still} rows, as the superuser sees it)"
            )
        } else {
            "the agent got NO approval-required NOTICE, or its psql does not wait (wrong)"
                .to_string()
        }
    );

    println!(
        "\n   $ agentgate approvals deny {id} --reason \"{DENY_REASON}\" --admin-socket $SOCK"
    );
    print_indented(&approvals_cli(
        &sock,
        &["deny", &id, "--reason", DENY_REASON],
    )?);
    let out = held.finish(Duration::from_secs(10))?;
    println!("   the agent's psql, to its end:");
    print_indented(&out);
    let left = pg.sql_in("agentdb", "SELECT count(*) FROM items;");
    let denied = out.contains("42501")
        && out.contains(&format!("{id} denied by root: {DENY_REASON}"))
        && out.contains("(1 row)");
    println!(
        "   => DROP TABLE: {}; items is still there ({left} rows, as the superuser sees it)",
        if denied {
            "denied by root, the agent got 42501 with the reason and its session went on"
        } else {
            "NOT DENIED with the reason (wrong)"
        }
    );

    println!(
        "\n-- the agent drops table scratch (owned by {ROLE_SCRAM}, so PostgreSQL lets it), in the background; this time root approves:"
    );
    println!(
        "   $ echo 'DROP TABLE scratch;' | psql -X --dbname=\"{shown}\" -a -v VERBOSITY=verbose &"
    );
    let mut held = Background::spawn(agent_psql(conn, agent), DROP_SCRATCH, "drop-scratch.out")?;
    let request = pending(&sock, "scratch", &mut held)?;
    let approved_id = s(&request, "id").to_string();
    held.wait_output(|o| o.contains(&approved_id), Duration::from_secs(5))?;
    let there = pg.sql_in(
        "agentdb",
        "SELECT count(*) FROM pg_tables WHERE tablename = 'scratch';",
    );
    println!(
        "   pending: request {approved_id} ({}); the agent got its NOTICE; table scratch exists: {}",
        s(&request, "statement"),
        if there == "1" { "yes" } else { "NO (wrong)" }
    );
    println!("   $ agentgate approvals approve {approved_id} --admin-socket $SOCK");
    let answer = approvals_cli(&sock, &["approve", &approved_id])?;
    println!("     {}", answer.lines().next().unwrap_or(""));
    let out = held.finish(Duration::from_secs(10))?;
    println!("   the agent's psql, to its end:");
    print_indented(&out);
    let gone = pg.sql_in(
        "agentdb",
        "SELECT count(*) FROM pg_tables WHERE tablename = 'scratch';",
    );
    let ran = out.lines().any(|l| l.trim() == "DROP TABLE") && !out.contains("ERROR");
    println!(
        "   => DROP TABLE: {}; {}",
        if ran {
            "approved by root, it ran and the agent got its normal result"
        } else {
            "did NOT run after the approval (wrong)"
        },
        if gone == "0" {
            "the superuser finds no table scratch any more"
        } else {
            "the superuser still finds table scratch (wrong)"
        }
    );

    println!("\n   $ agentgate approvals show {approved_id} --admin-socket $SOCK");
    print_indented(&approvals_cli(&sock, &["show", &approved_id])?);
    let rows = recorded(
        &gw.record_db(),
        "SELECT request, at_ms, event, actor, detail FROM approval_events WHERE request IN (?, ?) ORDER BY at_ms, rowid",
        &[&id, &approved_id],
        5,
    )?;
    println!(
        "\n   the trail (record DB, table approval_events; at: seconds after the first event):"
    );
    let first = rows.first().and_then(|r| r[1].as_i64()).unwrap_or(0);
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let at = r[1].as_i64().unwrap_or(0) - first;
            vec![
                cell(&r[0]),
                format!("+{}.{:03}", at / 1000, at % 1000),
                cell(&r[2]),
                cell(&r[3]),
                cell(&r[4]),
            ]
        })
        .collect();
    print_table(&["request", "at", "event", "actor", "detail"], &table);
    // `then`: what follows the decision (an approved statement is then forwarded).
    let trail = |id: &str, decision: &str, then: &[&str]| {
        let events: Vec<&str> = rows
            .iter()
            .filter(|r| r[0] == id)
            .filter_map(|r| r[2].as_str())
            .collect();
        let by = |event: &str, actor: &dyn Fn(&str) -> bool| {
            rows.iter()
                .any(|r| r[0] == id && r[2] == event && r[3].as_str().is_some_and(actor))
        };
        events.len() == 2 + then.len()
            && events[..2] == ["requested", decision]
            && events[2..] == *then
            && by("requested", &|a| a.ends_with(&format!("#{subject}")))
            && by(decision, &|a| a == "local#root")
    };
    println!(
        "   => {}",
        if trail(&id, "deny", &[]) && trail(&approved_id, "approve", &["forwarded"]) {
            "each request recorded with the agent who asked (its JWT's issuer#subject) and the statement, each decision with who made it (local#root), the approved statement's forwarding with it"
        } else {
            "the trail is NOT as it happened (wrong)"
        }
    );
    Ok(())
}

/// The agent reads table customers through the gateway (masked), then the superuser reads it
/// straight from the database (the real values).
fn masking(agent: &Cgroup, conn: &str, shown: &str, pg: &PgServer) -> anyhow::Result<u32> {
    println!(
        "\n-- masking: the agent in {} reads table customers (rules mask-customer-email, mask-customer-numbers, mask-emails-anywhere):",
        agent.rel
    );
    println!("   $ psql -X --dbname=\"{shown}\" -c '{CUSTOMERS_QUERY}'");
    let mut cmd = psql_command(conn);
    cmd.args(["-c", CUSTOMERS_QUERY]);
    place(&mut cmd, Some(agent), None);
    let (pid, masked) = run_merged(cmd, "")?;
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
    Ok(pid)
}

/// The end of the demo: what the agent did, as the record DB keeps it, read with the agentgate
/// CLI: the inventory (`agents`), the agent's sessions, the replay of its first psql session and
/// of its masked read, and the check of the hash chain (`audit verify`).
fn audit_record(gw: &Gateway, subject: &str, first: &str, masking_pid: u32) -> anyhow::Result<()> {
    let db = gw.record_db();
    let masked_session = s(
        &gw.wait_for(
            Duration::from_secs(5),
            |e| e["event"] == "connection_close" && e["pid"] == masking_pid,
            0,
        ),
        "session",
    )
    .to_string();
    // The recorder writes off the data path: wait until every session's close is on record.
    let agents = record_json_until(&db, &["agents"], |v| {
        v.as_array().is_some_and(|a| {
            !a.is_empty()
                && a.iter()
                    .all(|x| x["live_sessions"] == 0 && x["sessions"] == 4)
        })
    })?;
    println!(
        "\n-- the audit record: every session, statement, approval and policy version of this gateway is a record of one journal in its record DB, each chained to the one before by SHA-256; the agentgate CLI reads it (as root on this host, DB={}; also when the gateway is stopped):",
        db.display()
    );
    println!("   $ agentgate agents --record-db $DB");
    print_indented(&record_cli(&db, &["agents"])?.1);
    let list = agents.as_array().cloned().unwrap_or_default();
    let me = list.iter().find(|a| a["subject"] == subject);
    let expires = me.and_then(|a| a["token_expires_ms"].as_i64()).unwrap_or(0);
    let ok = list.len() == 1
        && me.is_some_and(|a| {
            a["workload"] == "sql-agents"
                && a["status"] == "idle"
                && a["targets"] == serde_json::json!(["demo-postgres"])
                && a["privileged_actions"] == 2
                && a["denied"] == 2
                && a["issuer"] == agentgate_tests::ISSUER
        })
        && expires > now() as i64 * 1000;
    println!(
        "   => {}",
        if ok {
            format!(
                "one agent on record: {subject} ({}) of workload sql-agents, idle (no live session; its token is good for {} s more, so it could come back), 4 sessions, all to target demo-postgres, 2 privileged actions (the INSERT, the approved DROP TABLE scratch), 2 statements denied (the GRANT, the DROP TABLE items)",
                agentgate_tests::ISSUER,
                (expires / 1000).saturating_sub(now() as i64)
            )
        } else {
            "the inventory is NOT what the agent did (wrong)".to_string()
        }
    );

    println!("\n   $ agentgate sessions list --identity {subject} --record-db $DB");
    print_indented(&record_cli(&db, &["sessions", "list", "--identity", subject])?.1);
    let sessions = record_json(&db, &["sessions", "list", "--identity", subject])?;
    let sessions = sessions.as_array().cloned().unwrap_or_default();
    let ids: Vec<&str> = sessions
        .iter()
        .filter_map(|x| x["session"].as_str())
        .collect();
    println!(
        "   => {}",
        if sessions.len() == 4
            && sessions.iter().all(|x| x["status"] == "closed")
            && ids.last() == Some(&first)
            && ids.first() == Some(&masked_session.as_str())
        {
            format!("its 4 psql sessions, newest first, all closed: {first} the first one above, {masked_session} the masked read")
        } else {
            "NOT the agent's 4 psql sessions (wrong)".to_string()
        }
    );

    println!(
        "\n   $ agentgate sessions replay {first} --record-db $DB        (the agent's first psql session)"
    );
    print_indented(&record_cli(&db, &["sessions", "replay", first])?.1);
    let replay = record_json(&db, &["sessions", "replay", first])?;
    let events = replay.as_array().cloned().unwrap_or_default();
    let statements: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "statement")
        .map(|e| &e["body"])
        .collect();
    let texts: Vec<&str> = statements
        .iter()
        .filter_map(|b| b["text"].as_str())
        .collect();
    let find = |start: &str| statements.iter().find(|b| s(b, "text").starts_with(start));
    let grant = find("GRANT").is_some_and(|b| {
        b["decision"] == "denied"
            && b["rule"] == "no-privilege-changes"
            && b["error_code"] == "42501"
    });
    let insert = find("INSERT").is_some_and(|b| b["class"] == "write" && b["rows"] == 2);
    let user =
        find("SELECT current_user").is_some_and(|b| b["results"].to_string().contains(ROLE_SCRAM));
    let framed = events
        .first()
        .is_some_and(|e| e["kind"] == "session_open" && e["body"]["subject"] == subject)
        && events.last().is_some_and(|e| e["kind"] == "session_close");
    println!(
        "   => {}",
        if texts == AGENT_SESSION.lines().collect::<Vec<_>>() && grant && insert && user && framed {
            "the session as it happened: opened by report-agent-7, its 5 statements in order with their timings, the INSERT's 2 rows, the rows the agent was sent (current_user: agentgate_scram), the GRANT denied by rule no-privilege-changes (42501), then the close"
        } else {
            "the replay is NOT what the agent did (wrong)"
        }
    );

    println!(
        "\n   $ agentgate sessions replay {masked_session} --record-db $DB        (its read of customers)"
    );
    print_indented(&record_cli(&db, &["sessions", "replay", &masked_session])?.1);
    let replay = record_json(&db, &["sessions", "replay", &masked_session])?;
    let read = replay
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["kind"] == "statement" && e["body"]["text"] == CUSTOMERS_QUERY)
        .map(|e| &e["body"]);
    let kept = read.map(|b| b["results"].to_string()).unwrap_or_default();
    println!(
        "   => {}",
        if read.is_some_and(|b| b["rows"] == 3)
            && kept.contains("hmac:")
            && kept.contains("****1111")
            && !kept.contains('@')
            && !kept.contains("4111 1111")
        {
            "the record keeps the rows as the agent got them, masked: no email address or card number the masking hid is in the record DB"
        } else {
            "the recorded rows are NOT the masked ones the agent got (wrong)"
        }
    );

    println!("\n   $ agentgate audit verify --record-db $DB");
    let (verified, out) = record_cli(&db, &["audit", "verify"])?;
    print_indented(&out);
    println!(
        "   => {}",
        if verified && out.contains("the chain is intact") {
            "every record matches its hash and follows the one before it: none was edited, deleted or reordered since it was written"
        } else {
            "the chain does NOT verify (wrong)"
        }
    );
    Ok(())
}

/// `agentgate ARGS --record-db DB` as root: whether it succeeded, and what it printed (stdout,
/// then stderr).
fn record_cli(db: &Path, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let out = Command::new(agentgate_bin())
        .args(args)
        .arg("--record-db")
        .arg(db)
        .output()
        .with_context(|| format!("run agentgate {}", args.join(" ")))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text += &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.success(), text))
}

/// `agentgate ARGS --json --record-db DB`, parsed.
fn record_json(db: &Path, args: &[&str]) -> anyhow::Result<Value> {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, out) = record_cli(db, &all)?;
    if !ok {
        bail!("agentgate {}: {out}", all.join(" "));
    }
    serde_json::from_str(&out)
        .with_context(|| format!("agentgate {} printed {out:?}", all.join(" ")))
}

/// `record_json` until `ready` says so (5 s); the last answer either way.
fn record_json_until(
    db: &Path,
    args: &[&str],
    ready: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = record_json(db, args)?;
        if ready(&v) || Instant::now() > deadline {
            return Ok(v);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `rows` under `header`, each column as wide as its widest cell (the last one unpadded).
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
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
    println!(
        "{}",
        line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>())
    );
    for r in rows {
        println!("{}", line(r));
    }
}

/// A record DB value as a table cell: `-` for NULL.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(t) => t.clone(),
        v => v.to_string(),
    }
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

/// The agent's psql (statements from stdin, echoed; errors with their SQLSTATE), in its cgroup.
fn agent_psql(conn: &str, agent: &Cgroup) -> Command {
    let mut cmd = psql_command(conn);
    cmd.args(["-a", "-v", "VERBOSITY=verbose"]);
    place(&mut cmd, Some(agent), None);
    cmd
}

/// `agentgate approvals ARGS --admin-socket SOCK` as root; its stdout, or an error with its stderr.
fn approvals_cli(sock: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(agentgate_bin())
        .arg("approvals")
        .args(args)
        .arg("--admin-socket")
        .arg(sock)
        .output()
        .context("run agentgate approvals")?;
    if !out.status.success() {
        bail!(
            "agentgate approvals {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            out.status
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `agentgate approvals list --json` (10 s) until a pending request's statement names
/// `table`; returns it.
fn pending(sock: &Path, table: &str, agent: &mut Background) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list: Value = serde_json::from_str(&approvals_cli(sock, &["list", "--json"])?)?;
        if let Some(r) = list["requests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["state"] == "pending" && s(r, "statement").contains(table))
        {
            return Ok(r.clone());
        }
        if !agent.running()? {
            bail!(
                "the agent's psql ended before a request to drop {table} was pending:\n{}",
                agent.output()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "no pending request to drop {table} after 10 s; the agent's psql so far:\n{}",
                agent.output()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An agent's psql running in the background, stdout and stderr into one file (read as it
/// grows). Killed, if still running, and its file removed when dropped.
struct Background {
    child: Child,
    path: PathBuf,
}

impl Background {
    fn spawn(mut cmd: Command, input: &str, name: &str) -> anyhow::Result<Self> {
        let path = Path::new(DEMO_DIR).join(name);
        let out = fs::File::create(&path)?;
        cmd.stdin(Stdio::piped())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd.spawn().context("run psql")?;
        drop(cmd);
        let mut bg = Self { child, path };
        let mut stdin = bg.child.stdin.take().context("psql stdin")?;
        stdin.write_all(input.as_bytes())?;
        drop(stdin);
        Ok(bg)
    }

    fn output(&self) -> String {
        fs::read_to_string(&self.path).unwrap_or_default()
    }

    fn running(&mut self) -> anyhow::Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    /// Its output once `ready` says so (while it still runs), within `timeout`.
    fn wait_output(
        &mut self,
        ready: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.output();
            if ready(&out) {
                return Ok(out);
            }
            if !self.running()? {
                bail!("the agent's psql ended early:\n{out}");
            }
            if Instant::now() > deadline {
                bail!("the agent's psql did not print what was expected:\n{out}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its whole output once it has exited (within `timeout`).
    fn finish(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        while self.running()? {
            if Instant::now() > deadline {
                bail!(
                    "the agent's psql still runs after {timeout:?}:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(self.output())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = fs::remove_file(&self.path);
    }
}

/// Runs `cmd` with `input` on stdin, stdout and stderr into one file (so an error shows where it
/// happened); returns its pid and that output once it has exited.
fn run_merged(cmd: Command, input: &str) -> anyhow::Result<(u32, String)> {
    let mut bg = Background::spawn(cmd, input, "psql.out")?;
    let pid = bg.child.id();
    Ok((pid, bg.finish(Duration::from_secs(60))?))
}

/// The rows of `query` (with `?` parameters `args`) in the gateway's record DB, each a JSON
/// array of its columns. The recorder commits in batches: waits until `expected` rows are
/// there (5 s).
fn recorded(db: &Path, query: &str, args: &[&str], expected: usize) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new("python3")
            .arg("-c")
            .arg(
                "import sqlite3, sys, json\n\
                 c = sqlite3.connect(sys.argv[1])\n\
                 print(json.dumps(c.execute(sys.argv[2], sys.argv[3:]).fetchall()))",
            )
            .arg(db)
            .arg(query)
            .args(args)
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
