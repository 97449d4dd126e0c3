//! The central PostgreSQL audit sink (issue 7), end to end: the real gateway in front of a real
//! PostgreSQL 15 (the agent's target), a second real PostgreSQL 15 as the central store, psql in
//! a managed cgroup whose connect() is captured. The gateway runs with
//! `--audit-sink CONNINFO --audit-sink-password-file F --node-name N`; the tests compare the
//! central table with the node's own journal (the SQLite `audit_log`). Root required.
//!
//! Ports: target PostgreSQL 16964–16966, central PostgreSQL 16967–16968, gateway listener
//! 17964–17966.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use agentgate_tests::{pg::*, *};

/// A generous wait for the central store to catch up.
const CATCH_UP: Duration = Duration::from_secs(90);

/// What the central copy must verify with, run in the central store: every record's hash
/// recomputed from its content and `prev`, and every record following the one before it (the
/// query in docs/audit-sink.md).
const VERIFY_SQL: &str = r"
WITH c AS (
  SELECT node, seq, prev, hash,
         lag(seq) OVER w AS prev_seq,
         lag(hash) OVER w AS prev_hash,
         encode(sha256(
             decode(prev, 'hex') || int8send(seq) || int8send(at_ms)
             || int8send(octet_length(convert_to(kind, 'UTF8'))::int8) || convert_to(kind, 'UTF8')
             || int8send(coalesce(octet_length(convert_to(session, 'UTF8')), 0)::int8)
             || convert_to(coalesce(session, ''), 'UTF8')
             || int8send(octet_length(convert_to(body, 'UTF8'))::int8) || convert_to(body, 'UTF8')
             || CASE WHEN session IS NULL THEN '\x00'::bytea ELSE '\x01'::bytea END
         ), 'hex') AS recomputed
  FROM agentgate_audit
  WINDOW w AS (PARTITION BY node ORDER BY seq)
)
SELECT node, seq,
       CASE WHEN recomputed <> hash THEN 'edited'
            WHEN prev_seq <> seq - 1 THEN 'records missing before it'
            ELSE 'does not follow the record before it' END AS problem
FROM c
WHERE recomputed <> hash OR prev_seq <> seq - 1 OR prev <> prev_hash
ORDER BY node, seq;
";

/// One journal record as both sides keep it: (seq, kind, hash).
type Rec = (i64, String, String);

/// The node's own journal, read from its SQLite file.
fn local_records(db: &Path) -> Vec<Rec> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys, json\n\
             c = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True)\n\
             print(json.dumps(c.execute('SELECT seq, kind, hash FROM audit_log ORDER BY seq').fetchall()))",
        )
        .arg(db)
        .output()
        .expect("read record db");
    let rows: Vec<(i64, String, String)> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("record db {}: {e}: {}", db.display(), output_text(&out)));
    rows
}

/// The central table's rows of `node`.
fn central_records(central: &PgServer, node: &str) -> Vec<Rec> {
    let exists = central.sql_in(
        "audit",
        "SELECT to_regclass('agentgate_audit') IS NOT NULL;",
    );
    if exists != "t" {
        return Vec::new();
    }
    central
        .sql_in(
            "audit",
            &format!(
                "SELECT seq, kind, hash FROM agentgate_audit WHERE node = '{node}' ORDER BY seq;"
            ),
        )
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut f = l.split('|');
            let seq = f.next().unwrap().parse().expect("seq");
            let kind = f.next().expect("kind").to_string();
            let hash = f.next().expect("hash").to_string();
            (seq, kind, hash)
        })
        .collect()
}

/// Waits until the central table holds exactly the node's journal; returns it.
fn wait_caught_up(gw: &Gateway, central: &PgServer, node: &str) -> Vec<Rec> {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let local = local_records(&gw.record_db());
        let there = central_records(central, node);
        if !local.is_empty() && there == local {
            return local;
        }
        if Instant::now() > deadline {
            panic!(
                "the central store did not catch up within {CATCH_UP:?}: {} records here \
                 (last {:?}), {} there (last {:?})\n--- gateway log ---\n{}",
                local.len(),
                local.last(),
                there.len(),
                there.last(),
                gateway_log(gw)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn gateway_log(gw: &Gateway) -> String {
    fs::read_to_string(gw.dir.join("gateway.log")).unwrap_or_default()
}

/// No problem found by [`VERIFY_SQL`], no two rows with one (node, seq), and the records of
/// `node` numbered without gaps.
fn assert_central_sound(central: &PgServer, node: &str) {
    let problems = central.sql_in("audit", VERIFY_SQL);
    assert_eq!(problems, "", "the central copy does not verify");
    let dups = central.sql_in(
        "audit",
        "SELECT count(*) FROM (SELECT node, seq FROM agentgate_audit GROUP BY node, seq HAVING count(*) > 1) d;",
    );
    assert_eq!(dups, "0");
    let span = central.sql_in(
        "audit",
        &format!(
            "SELECT count(*) = max(seq) - min(seq) + 1 FROM agentgate_audit WHERE node = '{node}';"
        ),
    );
    assert_eq!(
        span, "t",
        "records of {node} are missing in the central store"
    );
}

/// The central store: a second server with database `audit`.
fn central_server(name: &str, port: u16, tls: bool) -> PgServer {
    let central = PgServer::start(name, port, PgOptions { tls });
    central.create_db("audit");
    central
}

fn password_file(tag: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}-central-pw", unique(tag)));
    fs::write(&path, format!("{ROLE_PASSWORD}\n")).expect("write password file");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

/// Removes the file when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// A gateway in front of a fresh target server that ships its journal to `conninfo` as `node`.
fn gateway(
    tag: &str,
    listen: u16,
    pg_port: u16,
    conninfo: &str,
    pw: &Path,
    node: &str,
) -> PgGateway {
    PgGateway::start_with_args(
        tag,
        listen,
        pg_port,
        PgOptions::default(),
        &PgTargetOptions::default(),
        &[
            "--audit-sink",
            conninfo,
            "--audit-sink-password-file",
            pw.to_str().unwrap(),
            "--node-name",
            node,
        ],
    )
}

/// Runs `statements` as an agent through the gateway (psql in the captured cgroup); panics
/// unless all of them succeed. Returns psql's output.
fn agent_sql(p: &PgGateway, statements: &[&str]) -> String {
    let token = agent_jwt("sink-agent");
    let mut cmd = psql_command(&p.agent_conninfo(&token, "disable"));
    cmd.args(["-A", "-t", "-v", "ON_ERROR_STOP=1"]);
    for s in statements {
        cmd.args(["-c", s]);
    }
    place(&mut cmd, Some(&p.agent), None);
    let out = cmd.output().expect("run psql");
    let text = output_text(&out);
    assert!(
        out.status.success(),
        "psql through the gateway failed: {text}"
    );
    text
}

/// A few sessions with writes and reads.
fn workload(p: &PgGateway, from: i32, sessions: i32) {
    for i in from..from + sessions {
        let insert = format!("INSERT INTO items (id, name, price) VALUES ({i}, 'item {i}', {i}.5)");
        let out = agent_sql(
            p,
            &[
                &insert,
                "SELECT count(*) FROM items",
                "UPDATE items SET price = price + 1 WHERE id = (SELECT max(id) FROM items)",
            ],
        );
        assert!(out.contains("INSERT 0 1"), "{out}");
    }
}

#[test]
fn records_arrive_over_tls_and_verify_centrally() {
    // The central store takes only TLS for this role (hostssl), certificate checked against
    // the test CA, name against 127.0.0.1. `channel_binding=require` (tokio-postgres honours
    // it): the sink fails to log in rather than fall back to SCRAM without channel binding, so
    // a session of the sink's role at all proves SCRAM-SHA-256-PLUS.
    let central = central_server("sinkc1", 16967, true);
    let pw = TempFile(password_file("sink1"));
    let conninfo = format!(
        "{} channel_binding=require",
        central.conninfo(ROLE_TLS, "", "audit", "verify-full")
    );
    let p = gateway("sinkt1", 17964, 16964, &conninfo, &pw.0, "node-a");
    workload(&p, 1, 5);

    let records = wait_caught_up(&p.gw, &central, "node-a");
    let kinds: Vec<&str> = records.iter().map(|r| r.1.as_str()).collect();
    for kind in ["session_open", "statement", "session_close"] {
        assert!(kinds.contains(&kind), "no {kind} record shipped: {kinds:?}");
    }
    assert_eq!(
        kinds.iter().filter(|k| **k == "session_open").count(),
        5,
        "{kinds:?}"
    );
    assert_central_sound(&central, "node-a");
    // Bodies arrive as the node chained them, byte for byte (the hashes above recompute).
    let body = central.sql_in(
        "audit",
        "SELECT body::jsonb ->> 'text' FROM agentgate_audit WHERE node = 'node-a' AND kind = 'statement' ORDER BY seq LIMIT 1;",
    );
    assert!(body.contains("INSERT INTO items"), "{body}");
    // Over TLS, with SCRAM channel binding (required by the conninfo: without it, no login).
    let ssl = central.sql(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.usename = 'agentgate_tls' AND s.ssl;",
    );
    assert_eq!(ssl, "1", "the sink is not connected over TLS");
    assert!(
        central.log_contents().contains("agentgate_tls"),
        "the central store never saw the sink's role"
    );

    // The central check is not vacuous: an edited and a deleted record are named.
    let n = records.len() as i64;
    let (edited, deleted) = (n / 3, 2 * n / 3);
    central.sql_in(
        "audit",
        &format!(
            "CREATE TABLE kept AS SELECT * FROM agentgate_audit WHERE node = 'node-a' AND seq IN ({edited}, {deleted});
             UPDATE agentgate_audit SET body = body || ' ' WHERE node = 'node-a' AND seq = {edited};
             DELETE FROM agentgate_audit WHERE node = 'node-a' AND seq = {deleted};"
        ),
    );
    assert_eq!(
        central.sql_in("audit", VERIFY_SQL),
        format!(
            "node-a|{edited}|edited\nnode-a|{}|records missing before it",
            deleted + 1
        )
    );
    central.sql_in(
        "audit",
        &format!(
            "DELETE FROM agentgate_audit WHERE node = 'node-a' AND seq = {edited};
             INSERT INTO agentgate_audit SELECT * FROM kept; DROP TABLE kept;"
        ),
    );
    assert_central_sound(&central, "node-a");

    // More records keep arriving on the same connection.
    workload(&p, 100, 2);
    let more = wait_caught_up(&p.gw, &central, "node-a");
    assert!(more.len() > records.len());
    assert_central_sound(&central, "node-a");
}

#[test]
fn an_outage_of_the_central_store_is_caught_up_without_loss_or_duplicates() {
    let central = central_server("sinkc2", 16968, false);
    let pw = TempFile(password_file("sink2"));
    let conninfo = conninfo(
        "localhost",
        central.port,
        ROLE_SCRAM,
        "",
        "audit",
        "disable",
    );
    let p = gateway("sinkt2", 17965, 16965, &conninfo, &pw.0, "node-b");
    workload(&p, 1, 3);
    let before = wait_caught_up(&p.gw, &central, "node-b");

    // The central store goes away; the gateway goes on serving and recording.
    central.stop();
    let t0 = Instant::now();
    workload(&p, 10, 6);
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "statements slowed down by the outage: {:?}",
        t0.elapsed()
    );
    let during = local_records(&p.gw.record_db());
    assert!(during.len() > before.len());
    // Long enough for the sink to notice and back off a few times.
    wait_until(
        "the sink saying the central store is unavailable",
        Duration::from_secs(30),
        || gateway_log(&p.gw).contains("central audit store unavailable"),
    );
    std::thread::sleep(Duration::from_secs(3));
    workload(&p, 20, 2);

    // Back: everything recorded meanwhile arrives, once.
    central.start_again();
    let after = wait_caught_up(&p.gw, &central, "node-b");
    assert!(after.len() > during.len());
    assert_eq!(after[..before.len()], before[..]);
    let count: usize = central
        .sql_in(
            "audit",
            "SELECT count(*) FROM agentgate_audit WHERE node = 'node-b';",
        )
        .parse()
        .unwrap();
    let max: i64 = central
        .sql_in(
            "audit",
            "SELECT max(seq) FROM agentgate_audit WHERE node = 'node-b';",
        )
        .parse()
        .unwrap();
    assert_eq!(count, after.len());
    assert_eq!(max, after.last().unwrap().0);
    assert_central_sound(&central, "node-b");
    assert!(
        gateway_log(&p.gw).contains("central audit store reachable again"),
        "{}",
        gateway_log(&p.gw)
    );

    // And it keeps shipping afterwards.
    workload(&p, 30, 1);
    wait_caught_up(&p.gw, &central, "node-b");
    assert_central_sound(&central, "node-b");
}

/// Records of the central store whose insert was attempted more than once.
fn attempted_twice(central: &PgServer) -> String {
    central.sql_in(
        "audit",
        "SELECT string_agg(seq::text, ',') FROM (SELECT seq FROM attempts GROUP BY node, seq HAVING count(*) > 1) d;",
    )
}

/// A gateway whose own process runs in a managed cgroup (`/<name>/job-gateway`, matched by
/// the `sql-agents` workload glob), in front of a fresh target server that `setup` prepares
/// before the gateway starts; `setup` returns the `--audit-sink` connection string. Returns the
/// gateway and its cgroup.
fn gateway_in_managed_cgroup(
    tag: &str,
    listen: u16,
    pg_port: u16,
    setup: impl FnOnce(&PgServer) -> String,
    pw: &Path,
    node: &str,
) -> (PgGateway, Cgroup) {
    let (p, own) = PgGateway::start_prepared(
        tag,
        listen,
        pg_port,
        PgOptions::default(),
        &PgTargetOptions::default(),
        true,
        |pg| {
            let conninfo = setup(pg);
            vec![
                "--audit-sink".into(),
                conninfo,
                "--audit-sink-password-file".into(),
                pw.to_str().unwrap().into(),
                "--node-name".into(),
                node.into(),
            ]
        },
    );
    let own = own.expect("the gateway's own cgroup");
    let ev = p.gw.wait_classified(&own.rel);
    assert_eq!(
        ev["workload"], "sql-agents",
        "the gateway's cgroup is managed: {ev}"
    );
    (p, own)
}

#[test]
fn a_restarted_gateway_continues_where_the_central_store_ends() {
    // The central store is the agent's target server itself (database `audit`): an address the
    // gateway captures, and the gateway runs in a managed cgroup. Only the bypass registration
    // of the sink's socket keeps its connection from being redirected into the gateway's own
    // listener.
    //
    // The table is made beforehand by the central store's owner: the sink's role may only read
    // and insert (no CREATE, no UPDATE, no DELETE). A trigger counts every insert attempt,
    // also those ON CONFLICT DO NOTHING would hide.
    let pw = TempFile(password_file("sink3"));
    let (mut p, _own) = gateway_in_managed_cgroup(
        "sinkt3",
        17966,
        16966,
        |central| {
            central.create_db("audit");
            central.sql_in(
                "audit",
                &format!(
                    "CREATE TABLE agentgate_audit (node text NOT NULL, seq bigint NOT NULL, at_ms bigint NOT NULL,
                         kind text NOT NULL, session text, body text NOT NULL, prev text NOT NULL,
                         hash text NOT NULL, received_at timestamptz NOT NULL DEFAULT now(),
                         PRIMARY KEY (node, seq));
                     CREATE TABLE attempts (node text, seq bigint);
                     CREATE FUNCTION count_attempt() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS
                         $$ BEGIN INSERT INTO attempts VALUES (NEW.node, NEW.seq); RETURN NEW; END $$;
                     CREATE TRIGGER count_attempt BEFORE INSERT ON agentgate_audit
                         FOR EACH ROW EXECUTE FUNCTION count_attempt();
                     REVOKE ALL ON agentgate_audit, attempts FROM {ROLE_SCRAM};
                     GRANT SELECT, INSERT ON agentgate_audit TO {ROLE_SCRAM};
                     REVOKE CREATE ON SCHEMA public FROM {ROLE_SCRAM};"
                ),
            );
            // No sslmode: prefer (this server has no TLS, so plain, on loopback).
            conninfo("127.0.0.1", central.port, ROLE_SCRAM, "", "audit", "")
        },
        &pw.0,
        "node-c",
    );
    let central = &p.pg;
    workload(&p, 1, 3);
    let first = wait_caught_up(&p.gw, central, "node-c");

    // A clean restart: the central store has everything; the new process starts after it.
    p.gw.terminate(Duration::from_secs(20))
        .expect("the gateway did not stop on SIGTERM");
    p.gw.start_again();
    workload(&p, 10, 2);
    let second = wait_caught_up(&p.gw, central, "node-c");
    assert!(second.len() > first.len());
    assert_eq!(second[..first.len()], first[..]);
    assert_eq!(attempted_twice(central), "", "records were sent again");

    // A crash: the same.
    p.gw.kill9();
    p.gw.start_again();
    workload(&p, 20, 2);
    let third = wait_caught_up(&p.gw, central, "node-c");
    assert!(third.len() > second.len());
    assert_eq!(attempted_twice(central), "", "records were sent again");
    assert_central_sound(central, "node-c");
    let log = gateway_log(&p.gw);
    assert!(
        log.contains(&format!(
            "shipping from record {}",
            first.last().unwrap().0 + 1
        )),
        "{log}"
    );

    // A node whose record database was replaced would ship a second chain under the same
    // name: the central store is ahead of its journal, and the sink refuses rather than mix
    // them. The gateway itself works on.
    p.gw.terminate(Duration::from_secs(20))
        .expect("the gateway did not stop on SIGTERM");
    for suffix in ["", "-wal", "-shm"] {
        let _ = fs::remove_file(format!("{}{suffix}", p.gw.record_db().display()));
    }
    p.gw.start_again();
    workload(&p, 30, 1);
    wait_until(
        "the sink refusing a second chain under one name",
        Duration::from_secs(30),
        || gateway_log(&p.gw).contains("NOT SHIPPING"),
    );
    assert_eq!(central_records(central, "node-c"), third);
    assert_eq!(attempted_twice(central), "");
    assert_central_sound(central, "node-c");
}
