//! PostgreSQL through the gateway, end to end: a real PostgreSQL 15 started by the test, real
//! clients (psql, pgbench, tokio-postgres, psycopg) in a managed cgroup whose connect() to the
//! database is captured, the agent's JWT as its password, the upstream password only in the
//! gateway's secret file. Root required.

use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

use agentgate_tests::{pg::*, *};
use serde_json::Value;

/// Runs `cmd` inside the agent cgroup.
fn in_cgroup(mut cmd: Command, cg: &Cgroup) -> Output {
    place(&mut cmd, Some(cg), None);
    cmd.output().expect("run agent command")
}

fn pg_agent(scenario: &str, conninfo: &str, cg: Option<&Cgroup>) -> Value {
    let mut cmd = Command::new(pg_agent_bin());
    cmd.args([scenario, conninfo]);
    place(&mut cmd, cg, None);
    let out = cmd.output().expect("run pg-agent");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("pg-agent printed {}: {e}", output_text(&out)))
}

/// The statements the gateway recorded for sessions of `subject`: (text, class, decision,
/// error_code, params).
fn recorded(p: &PgGateway, subject: &str) -> Vec<(String, String, String, Option<String>, String)> {
    // The gateway's writer commits in batches: give it a moment.
    std::thread::sleep(Duration::from_millis(500));
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys, json\n\
             c = sqlite3.connect(sys.argv[1])\n\
             rows = c.execute(\"SELECT st.text, st.class, st.decision, st.error_code, st.params FROM statements st JOIN sessions se ON se.id = st.session WHERE se.subject = ? ORDER BY se.started_ms, st.seq\", (sys.argv[2],)).fetchall()\n\
             print(json.dumps(rows))",
        )
        .arg(p.gw.record_db())
        .arg(subject)
        .output()
        .expect("read record db");
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("record db: {e}: {}", output_text(&out)));
    rows.iter()
        .map(|r| {
            (
                r[0].as_str().unwrap_or("").to_string(),
                r[1].as_str().unwrap_or("").to_string(),
                r[2].as_str().unwrap_or("").to_string(),
                r[3].as_str().map(str::to_string),
                r[4].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

const PSQL_SCRIPT: &str = r#"\set VERBOSITY default
SELECT 1 AS one, 'two'::text AS two, 3.5::numeric AS three, NULL AS four, true AS five, '{"a": [1, 2]}'::jsonb AS six;
BEGIN;
INSERT INTO items (id, name, price) SELECT g, 'n' || g, g * 1.5 FROM generate_series(1, 50) g;
SELECT count(*), sum(price) FROM items;
\copy items (id, name, price) FROM stdin
1001	c1	1.0
1002	c2	2.0
\.
UPDATE items SET name = upper(name) WHERE id > 1000 RETURNING id, name;
WITH d AS (DELETE FROM items WHERE id = 1 RETURNING id) SELECT * FROM d;
SELECT id, name, price FROM items ORDER BY id DESC LIMIT 5;
\copy (SELECT id, name FROM items WHERE id > 45 ORDER BY id) TO stdout
SELECT 'a' AS x \; SELECT 'b' AS y;
ROLLBACK;
SELECT 1/0;
SELECT 'after error' AS still, count(*) FROM items;
"#;

#[test]
fn clients_get_identical_results_through_the_gateway() {
    let p = PgGateway::start(
        "pgsame",
        16960,
        17960,
        PgOptions::default(),
        &PgTargetOptions {
            extra_rules: NO_DDL_RULE.into(),
            ..Default::default()
        },
    );
    let token = agent_jwt("agent-same");

    // psql: one script, direct as the upstream role vs through the gateway as the agent.
    let script = std::env::temp_dir().join(format!("{}-script.sql", p.name));
    std::fs::write(&script, PSQL_SCRIPT).unwrap();
    let run_psql = |conninfo: &str, cg: Option<&Cgroup>| {
        let mut cmd = psql_command(conninfo);
        cmd.args(["-f", script.to_str().unwrap()]);
        place(&mut cmd, cg, None);
        output_text(&cmd.output().expect("psql"))
    };
    let direct = run_psql(&p.direct_conninfo(ROLE_SCRAM), None);
    let through = run_psql(&p.agent_conninfo(&token, "disable"), Some(&p.agent));
    let _ = std::fs::remove_file(&script);
    assert!(
        direct.contains("division by zero") && direct.contains("after error"),
        "{direct}"
    );
    assert!(direct.contains("1001\tC1"), "copy out missing: {direct}");
    assert_eq!(through, direct, "psql output differs through the gateway");

    // The session went through the gateway, as the agent's identity.
    let ev = p.gw.wait_for(
        Duration::from_secs(5),
        |e| e["event"] == "allowed" && e["subject"] == "agent-same",
        0,
    );
    assert_eq!(s(&ev, "target"), "pg");
    assert_eq!(s(&ev, "client_user"), "agent");

    // tokio-postgres: binary formats, prepared statements, transactions, COPY, a 3 MiB value.
    let reset = || p.pg.sql_in("agentdb", "TRUNCATE items;");
    reset();
    let direct = pg_agent("script", &p.direct_conninfo(ROLE_SCRAM), None);
    reset();
    let through = pg_agent(
        "script",
        &p.agent_conninfo(&token, "disable"),
        Some(&p.agent),
    );
    assert!(direct.get("steps").is_some(), "{direct}");
    assert_eq!(through, direct, "tokio-postgres results differ");
    assert_eq!(direct["steps"][22]["copied_in"], 1000, "{direct}");

    // psycopg 3 with its defaults (sslmode prefer: declined, plaintext on the node).
    let stmts = [
        "INSERT INTO items (id, name, price, flag) VALUES (9001, 'py', 2.5, true)",
        "SELECT id, name, price, flag, data FROM items WHERE id = 9001",
        "SELECT count(*) FROM items",
        "INSERT INTO items (id, name) VALUES (9001, 'dup')",
    ];
    reset();
    let direct = pg_client(&p.direct_conninfo(ROLE_SCRAM), &stmts);
    reset();
    let mut cmd = pg_client_command(&p.agent_conninfo(&token, ""), &stmts);
    place(&mut cmd, Some(&p.agent), None);
    let out = cmd.output().expect("pg_client.py");
    let through: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("pg_client.py: {e}: {}", output_text(&out)));
    assert_eq!(direct["error"]["sqlstate"], "23505", "{direct}");
    assert_eq!(through, direct, "psycopg results differ");

    // Notifications reach the agent.
    let mut cmd = psql_command(&p.agent_conninfo(&token, "disable"));
    cmd.args([
        "-c",
        "LISTEN agents",
        "-c",
        "NOTIFY agents, 'hello'",
        "-c",
        "SELECT 1",
    ]);
    let t = output_text(&in_cgroup(cmd, &p.agent));
    assert!(
        t.contains("Asynchronous notification \"agents\" with payload \"hello\" received"),
        "{t}"
    );

    // pgbench in all three protocol modes, and one connection per transaction.
    p.pg.create_db("bench");
    let init = pgbench_command("127.0.0.1", p.pg.port, "postgres", "bench")
        .args(["-i", "-s", "1", "-q"])
        .env("PGPASSWORD", SUPERUSER_PASSWORD)
        .output()
        .unwrap();
    assert!(init.status.success(), "pgbench -i: {}", output_text(&init));
    p.pg.sql_in(
        "bench",
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO agentgate_scram;",
    );
    for args in [
        &["-S", "-M", "simple", "-c", "4", "-j", "2", "-t", "100"][..],
        &["-S", "-M", "extended", "-c", "4", "-j", "2", "-t", "100"][..],
        &["-S", "-M", "prepared", "-c", "4", "-j", "2", "-t", "100"][..],
        &["-S", "-C", "-c", "2", "-t", "25"][..],
    ] {
        let mut cmd = pgbench_command("127.0.0.1", p.pg.port, "agent", "bench");
        cmd.args(args).env("PGPASSWORD", &token);
        let out = in_cgroup(cmd, &p.agent);
        let t = output_text(&out);
        let expected = if args.contains(&"-C") {
            "50/50"
        } else {
            "400/400"
        };
        assert!(
            out.status.success() && t.contains(&format!("actually processed: {expected}")),
            "pgbench {args:?}: {t}"
        );
    }

    // Everything was recorded under the agent's identity, parameters included; the CTE-hidden
    // DELETE is a write.
    let rec = recorded(&p, "agent-same");
    assert!(rec.len() > 100, "only {} statements recorded", rec.len());
    let cte = rec
        .iter()
        .find(|r| r.0.starts_with("WITH d AS (DELETE"))
        .expect("CTE statement recorded");
    assert_eq!((cte.1.as_str(), cte.2.as_str()), ("write", "allowed"));
    // tokio-postgres sends parameters in binary: recorded as hex ("item-7", int4 7).
    let inserts: Vec<_> = rec
        .iter()
        .filter(|r| r.0.starts_with("INSERT INTO items (id, name, price, data"))
        .collect();
    assert_eq!(inserts.len(), 20, "{inserts:?}");
    assert!(
        inserts
            .iter()
            .any(|r| r.4.contains(r#""\\x00000007","\\x6974656d2d37""#)),
        "prepared insert with its parameters not recorded: {:?}",
        inserts.first()
    );
    let zero = rec
        .iter()
        .find(|r| r.0 == "SELECT 1/0;")
        .expect("failing statement recorded");
    assert_eq!(zero.3.as_deref(), Some("22012"));
}

#[test]
fn statement_rules_deny_and_the_session_goes_on() {
    let rules = format!(
        "{NO_DDL_RULE}  - name: audit-is-append-only\n    effect: deny\n    when: {{groups: [agents]}}\n    targets: [pg]\n    statements: {{classes: [write, write_unbounded], tables: [\"audit_*\"]}}\n"
    );
    let p = PgGateway::start(
        "pgdeny",
        16961,
        17961,
        PgOptions::default(),
        &PgTargetOptions {
            extra_rules: rules,
            ..Default::default()
        },
    );
    p.pg.sql_in(
        "agentdb",
        "CREATE TABLE audit_log (id int, what text); INSERT INTO audit_log VALUES (1, 'x'), (2, 'y');",
    );
    let token = agent_jwt("agent-deny");
    let conn = p.agent_conninfo(&token, "disable");

    // A denied DROP gets 42501 naming the rule; the session stays usable; the table stays.
    let mut cmd = psql_command(&conn);
    cmd.args([
        "-v",
        "VERBOSITY=verbose",
        "-c",
        "DROP TABLE items",
        "-c",
        "SELECT 'still usable' AS s",
        "-c",
        "DO $$ BEGIN EXECUTE 'DROP TABLE items'; END $$",
        "-c",
        "WITH d AS (DELETE FROM audit_log WHERE id = 1 RETURNING *) SELECT * FROM d",
        "-c",
        "SELECT count(*) AS audit_rows FROM audit_log",
    ]);
    let out = in_cgroup(cmd, &p.agent);
    let t = output_text(&out);
    assert!(
        t.contains("ERROR:  42501: agentgate: statement denied by policy rule \"no-ddl\""),
        "{t}"
    );
    assert!(t.contains("still usable"), "{t}");
    assert!(
        t.contains("policy rule \"audit-is-append-only\""),
        "CTE-hidden DELETE on audit_log was not denied: {t}"
    );
    assert!(
        t.contains("DETAIL:  statement class: write; tables: audit_log"),
        "{t}"
    );
    assert_eq!(
        t.matches("42501").count(),
        3,
        "DROP, DO block, CTE delete: {t}"
    );
    assert_eq!(
        p.pg.sql_in("agentdb", "SELECT count(*) FROM items;").trim(),
        "0"
    );
    assert_eq!(
        p.pg.sql_in("agentdb", "SELECT count(*) FROM audit_log;")
            .trim(),
        "2"
    );

    // Pipelined: the denied statement fails alone, the ones around it run.
    let v = pg_agent("pipeline", &conn, Some(&p.agent));
    assert_eq!(v["first"], 1, "{v}");
    assert_eq!(v["drop"]["error"]["sqlstate"], "42501", "{v}");
    assert_eq!(v["third"], 1, "{v}");
    assert_eq!(v["both_inserted"], 2, "{v}");

    // In a transaction, a denial aborts it like any error: the earlier insert is rolled back.
    let v = pg_agent("abort", &conn, Some(&p.agent));
    assert_eq!(v["begin"], "ok", "{v}");
    assert_eq!(v["denied"]["error"]["sqlstate"], "42501", "{v}");
    assert_eq!(v["next_in_tx"]["error"]["sqlstate"], "25P02", "{v}");
    // (COMMIT of an aborted transaction answers with the tag ROLLBACK, which tokio-postgres
    // reports as 0 rows; `kept` is the proof.)
    assert!(v["commit"].is_array(), "{v}");
    assert_eq!(v["kept"], 0, "{v}");

    // Denials are recorded with their class.
    let rec = recorded(&p, "agent-deny");
    let drop = rec
        .iter()
        .find(|r| r.0 == "DROP TABLE items")
        .expect("DROP recorded");
    assert_eq!(
        (drop.1.as_str(), drop.2.as_str(), drop.3.as_deref()),
        ("ddl", "denied", Some("42501"))
    );
    let cte = rec
        .iter()
        .find(|r| r.0.starts_with("WITH d AS"))
        .expect("CTE recorded");
    assert_eq!((cte.1.as_str(), cte.2.as_str()), ("write", "denied"));
    let do_block = rec
        .iter()
        .find(|r| r.0.starts_with("DO $$"))
        .expect("DO recorded");
    assert_eq!(
        (do_block.1.as_str(), do_block.2.as_str()),
        ("opaque", "denied")
    );

    // Re-preparing a name with a denied statement: the server keeps the old one (the denied
    // Parse fails there). The gateway learns that from the server's answer to the Parse, so the
    // Bind runs the statement the name really holds, `SELECT 1`.
    let mut cmd = Command::new("python3");
    cmd.arg(pg_raw_script())
        .args(["127.0.0.1", &p.pg.port.to_string(), &token, "rebind"]);
    let out = in_cgroup(cmd, &p.agent);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("pg_raw rebind: {e}: {}", output_text(&out)));
    assert_eq!(
        v["batches"],
        serde_json::json!([[[], 0], [["42501"], 0], [[], 1]]),
        "{v}"
    );
    assert_eq!(
        p.pg.sql_in("agentdb", "SELECT to_regclass('items') IS NOT NULL;")
            .trim(),
        "t"
    );

    // Settings that would make the server read SQL differently from the gateway's parser: with
    // statement rules in force they are opaque, so denied; an encoding with quote-swallowing
    // characters is refused at startup.
    let mut cmd = psql_command(&conn);
    cmd.args(["-c", "SET standard_conforming_strings = off"]);
    let t = output_text(&in_cgroup(cmd, &p.agent));
    assert!(
        t.contains("statement denied by policy rule \"no-ddl\""),
        "{t}"
    );
    let mut cmd = psql_command(&conn);
    cmd.env("PGCLIENTENCODING", "SJIS").args(["-c", "SELECT 1"]);
    let t = output_text(&in_cgroup(cmd, &p.agent));
    assert!(t.contains("client_encoding SJIS is not supported"), "{t}");

    // A FunctionCall message (libpq's large-object calls use it) is opaque: denied by no-ddl.
    let blob = std::env::temp_dir().join(format!("{}-blob", p.name));
    std::fs::write(&blob, b"large object").unwrap();
    let lo_import = |p: &PgGateway| {
        let mut c = psql_command(&conn);
        c.args(["-c", &format!("\\lo_import {}", blob.display())]);
        in_cgroup(c, &p.agent)
    };
    let t = output_text(&lo_import(&p));
    assert!(
        t.contains("statement denied by policy rule \"no-ddl\""),
        "{t}"
    );

    // Live reload: once the rule is gone, the same agent may drop a table and call functions.
    let made = psql(
        &p.direct_conninfo(ROLE_SCRAM),
        &["-c", "CREATE TABLE scratch (x int)"],
    );
    assert!(made.status.success(), "{}", output_text(&made));
    p.set_policy(&PgTargetOptions::default());
    let out = in_cgroup(
        {
            let mut c = psql_command(&conn);
            c.args(["-c", "DROP TABLE scratch"]);
            c
        },
        &p.agent,
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let out = lo_import(&p);
    assert!(
        out.status.success() && output_text(&out).contains("lo_import "),
        "{}",
        output_text(&out)
    );
    let _ = std::fs::remove_file(&blob);

    // Without statement rules the SET itself is allowed, but the server's report of the new
    // setting ends the session: the gateway would no longer read SQL as the server does.
    let mut cmd = psql_command(&conn);
    cmd.args([
        "-c",
        "SET standard_conforming_strings = off",
        "-c",
        "SELECT 'not reached'",
    ]);
    let t = output_text(&in_cgroup(cmd, &p.agent));
    assert!(
        t.contains("standard_conforming_strings changed to off") && !t.contains("not reached"),
        "{t}"
    );
    let rec = recorded(&p, "agent-deny");
    let calls: Vec<_> = rec
        .iter()
        .filter(|r| r.0.starts_with("<FunctionCall of function oid "))
        .map(|r| r.2.as_str())
        .collect();
    assert!(
        calls.contains(&"denied") && calls.contains(&"allowed"),
        "{calls:?}"
    );
}

#[test]
fn identity_tls_and_upstream_logins() {
    let p = PgGateway::start(
        "pgauth",
        16962,
        17962,
        PgOptions { tls: true },
        &PgTargetOptions::default(),
    );
    let psql_as = |conn: &str, cg: &Cgroup| {
        let mut cmd = psql_command(conn);
        cmd.args(["-A", "-t", "-c", "SELECT current_user || ' ' || coalesce((SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()), '?')"]);
        in_cgroup(cmd, cg)
    };

    // Refusals are PostgreSQL errors with the right SQLSTATE and a reason about the token.
    let cases = [
        ("not-a-jwt".to_string(), "28P01", "token is not a JWT"),
        (
            mint("agent-old", &["agents"], now() - 1200, now() - 600),
            "28P01",
            "token has expired",
        ),
        (
            mint("agent-other", &["strangers"], now(), now() + 600),
            "28000",
            "no policy allows",
        ),
    ];
    for (token, code, words) in &cases {
        let v = pg_agent("ping", &p.agent_conninfo(token, "disable"), Some(&p.agent));
        let e = &v["connect_error"];
        assert_eq!(e["sqlstate"], *code, "{v}");
        let m = s(e, "message");
        assert!(m.contains(words), "expected {words}: {v}");
        assert!(
            !m.contains("agents-to-pg") && !m.contains("policy.yaml"),
            "leaks policy internals: {v}"
        );
    }

    // The workload's token file: no password asked.
    let out = psql_as(
        &conninfo("127.0.0.1", p.pg.port, "anyone", "", "agentdb", "disable"),
        &p.file_agent,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "agentgate_scram false",
        "{}",
        output_text(&out)
    );

    // Upstream: SCRAM (channel binding over TLS), md5 and cleartext, each as the server asks.
    let token = agent_jwt("agent-auth");
    for (user, tls, expect) in [
        (
            ROLE_MD5,
            "{mode: disable}".to_string(),
            "agentgate_md5 false",
        ),
        (
            ROLE_PLAIN,
            "{mode: disable}".to_string(),
            "agentgate_plain false",
        ),
        (
            ROLE_TLS,
            format!(
                "{{mode: verify-full, ca_file: {}}}",
                p.pg.ca_file().display()
            ),
            "agentgate_tls true",
        ),
    ] {
        p.set_policy(&PgTargetOptions {
            user: user.into(),
            upstream_tls: tls,
            ..Default::default()
        });
        let out = psql_as(&p.agent_conninfo(&token, "disable"), &p.agent);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            expect,
            "{}",
            output_text(&out)
        );
    }
    // verify-full checks the name: `localhost` is in the server certificate too.
    p.set_policy(&PgTargetOptions {
        user: ROLE_TLS.into(),
        upstream_tls: format!(
            "{{mode: verify-full, ca_file: {}, server_name: localhost}}",
            p.pg.ca_file().display()
        ),
        ..Default::default()
    });
    let out = psql_as(&p.agent_conninfo(&token, "disable"), &p.agent);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "agentgate_tls true",
        "server_name localhost: {}",
        output_text(&out)
    );

    // verify-full against the wrong CA: the gateway refuses to log in, the agent gets 08004.
    let other_ca = std::env::temp_dir().join(format!("{}-other-ca", p.name));
    std::fs::create_dir_all(&other_ca).unwrap();
    let gen = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=not the CA",
        ])
        .arg("-keyout")
        .arg(other_ca.join("key.pem"))
        .arg("-out")
        .arg(other_ca.join("cert.pem"))
        .output()
        .unwrap();
    assert!(gen.status.success(), "{}", output_text(&gen));
    p.set_policy(&PgTargetOptions {
        user: ROLE_TLS.into(),
        upstream_tls: format!(
            "{{mode: verify-full, ca_file: {}}}",
            other_ca.join("cert.pem").display()
        ),
        ..Default::default()
    });
    let v = pg_agent("ping", &p.agent_conninfo(&token, "disable"), Some(&p.agent));
    assert_eq!(v["connect_error"]["sqlstate"], "08004", "{v}");
    assert!(
        s(&v["connect_error"], "message").contains("could not log in to the target"),
        "{v}"
    );
    p.gw.wait_for(
        Duration::from_secs(5),
        |e| e["event"] == "upstream_failed",
        0,
    );

    // The agent's side: without client_tls, prefer and disable work and require fails; with it,
    // all three work, and require really is TLS to the gateway.
    p.set_policy(&PgTargetOptions::default());
    for (mode, ok) in [("disable", true), ("prefer", true), ("require", false)] {
        let out = psql_as(&p.agent_conninfo(&token, mode), &p.agent);
        assert_eq!(
            out.status.success(),
            ok,
            "sslmode={mode}: {}",
            output_text(&out)
        );
    }
    p.set_policy(&PgTargetOptions {
        client_tls: Some((other_ca.join("cert.pem"), other_ca.join("key.pem"))),
        ..Default::default()
    });
    let before = p.gw.count("allowed");
    for mode in ["disable", "prefer", "require"] {
        let out = psql_as(&p.agent_conninfo(&token, mode), &p.agent);
        assert!(
            out.status.success(),
            "sslmode={mode} with client_tls: {}",
            output_text(&out)
        );
    }
    let allowed: Vec<Value> =
        p.gw.events()
            .into_iter()
            .filter(|e| e["event"] == "allowed")
            .skip(before)
            .collect();
    let tls: Vec<bool> = allowed
        .iter()
        .map(|e| e["client_tls"].as_bool().unwrap_or(false))
        .collect();
    assert_eq!(tls, vec![false, true, true], "{allowed:?}");
    let _ = std::fs::remove_dir_all(&other_ca);

    // A session ends at its token's exp, with a FATAL that says so.
    let short = mint("agent-short", &["agents"], now(), now() + 3);
    let mut cmd = psql_command(&p.agent_conninfo(&short, "disable"));
    cmd.args(["-c", "SELECT pg_sleep(20)"]);
    let started = Instant::now();
    let t = output_text(&in_cgroup(cmd, &p.agent));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "not ended at exp: {t}"
    );
    assert!(t.contains("session ended: token expired"), "{t}");
    assert!(
        p.wait_no_upstream(Duration::from_secs(5)),
        "upstream session left behind"
    );
}

#[test]
fn cancel_and_bad_input() {
    let p = PgGateway::start(
        "pgbad",
        16963,
        17963,
        PgOptions::default(),
        &PgTargetOptions::default(),
    );
    let token = agent_jwt("agent-bad");
    let conn = p.agent_conninfo(&token, "disable");

    // Cancel through the gateway: a new captured connection carrying the gateway's key.
    let v = pg_agent("cancel", &conn, Some(&p.agent));
    assert_eq!(v["code"], "57014", "{v}");
    assert!(v["elapsed_ms"].as_u64().unwrap_or(u64::MAX) < 10_000, "{v}");
    assert_eq!(v["usable_after"], 42, "{v}");
    p.gw.wait_for(
        Duration::from_secs(5),
        |e| e["event"] == "cancel" && e["forwarded"] == true,
        0,
    );

    let raw = |case: &str| -> Value {
        let mut cmd = Command::new("python3");
        cmd.arg(pg_raw_script())
            .args(["127.0.0.1", &p.pg.port.to_string(), &token, case]);
        let out = in_cgroup(cmd, &p.agent);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("pg_raw {case}: {e}: {}", output_text(&out)))
    };
    let fatal = |code| Some((code, "FATAL", true));
    for (case, expected) in [
        ("unknown-type", fatal("08P01")),
        ("short-length", fatal("08P01")),
        ("oversized", fatal("08P01")),
        // As on the server: the failing Execute's error, the Query behind it skipped, the
        // session goes on (tests/tests/pg_protocol.rs has the whole exchange).
        ("query-in-batch", Some(("22012", "ERROR", false))),
        ("truncated", None),
        ("mid-copy", None),
    ] {
        let v = raw(case);
        assert_eq!(v["login"], true, "{case}: {v}");
        if let Some((code, severity, closed)) = expected {
            assert_eq!(v["error"]["sqlstate"], code, "{case}: {v}");
            assert_eq!(v["error"]["severity"], severity, "{case}: {v}");
            assert_eq!(v["closed"], closed, "{case}: {v}");
        }
        // The upstream session is cleaned up, and nothing of a broken COPY was committed.
        assert!(
            p.wait_no_upstream(Duration::from_secs(5)),
            "{case}: upstream session left behind"
        );
    }
    assert_eq!(
        p.pg.sql_in("agentdb", "SELECT count(*) FROM items WHERE id >= 7000;")
            .trim(),
        "0"
    );
    let v = raw("garbage-startup");
    assert_eq!(v["login"], false, "{v}");
    // Nothing else was affected: a normal session still works.
    let out = in_cgroup(
        {
            let mut c = psql_command(&conn);
            c.args(["-A", "-t", "-c", "SELECT 'fine'"]);
            c
        },
        &p.agent,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "fine",
        "{}",
        output_text(&out)
    );
    let closes: Vec<Value> =
        p.gw.events()
            .into_iter()
            .filter(|e| e["event"] == "connection_close")
            .collect();
    assert!(
        closes
            .iter()
            .any(|e| s(e, "error").contains("unknown message type")),
        "{closes:?}"
    );
    assert!(
        closes
            .iter()
            .any(|e| s(e, "error").contains("over the limit")),
        "{closes:?}"
    );
}
