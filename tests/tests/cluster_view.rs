//! The cluster view (issue 21): `agentgate agents --central` and `agentgate sessions … --central`
//! answer for every node from the central PostgreSQL the nodes' audit sinks ship to.
//!
//! Two real gateways are two "nodes": each has its own cgroup tree, pin directory, record
//! database, target PostgreSQL and `--node-name`, and both ship to one central PostgreSQL 15.
//! Agents (psql in each node's captured cgroup) run sessions on both; one identity is on both
//! nodes and revoked on one only; one session stays live. The cluster view must show every
//! agent and session of both nodes, each with its node and state, agree with each node's own
//! view of itself, filter, and fail clearly. Root required.
//!
//! Ports: central PostgreSQL 20990, targets 20991–20992, gateway listeners 20993–20994, nothing
//! listens on 20999 (the unreachable store).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use agentgate_tests::{bg::Bg, pg::*, *};
use serde_json::Value;

const CATCH_UP: Duration = Duration::from_secs(90);

/// Removes the file when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn password_file(tag: &str, password: &str) -> TempFile {
    let path = std::env::temp_dir().join(format!("{}-central-pw", unique(tag)));
    fs::write(&path, format!("{password}\n")).expect("write password file");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
    TempFile(path)
}

fn cli_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(agentgate_bin());
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run agentgate")
}

fn cli_ok(args: &[&str]) -> String {
    let out = cli_env(args, &[]);
    assert!(
        out.status.success(),
        "agentgate {args:?} failed ({}): {}",
        out.status,
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn cli_json(args: &[&str]) -> Value {
    let out = cli_ok(args);
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("agentgate {args:?} printed {out}: {e}"))
}

/// The cluster view's common arguments.
struct View {
    conninfo: String,
    pw: TempFile,
}

impl View {
    /// `agentgate <command...> --central C --central-password-file F <rest...>`.
    fn args<'a>(&'a self, command: &[&'a str], rest: &[&'a str]) -> Vec<&'a str> {
        let mut a = command.to_vec();
        a.extend_from_slice(&[
            "--central",
            &self.conninfo,
            "--central-password-file",
            self.pw.0.to_str().unwrap(),
        ]);
        a.extend_from_slice(rest);
        a
    }

    fn agents(&self, rest: &[&str]) -> Vec<Value> {
        let mut r = vec!["--json"];
        r.extend_from_slice(rest);
        array(cli_json(&self.args(&["agents"], &r)))
    }

    fn sessions(&self, rest: &[&str]) -> Vec<Value> {
        let mut r = vec!["--json"];
        r.extend_from_slice(rest);
        array(cli_json(&self.args(&["sessions", "list"], &r)))
    }
}

fn array(v: Value) -> Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .clone()
}

fn local_agents(db: &Path) -> Vec<Value> {
    array(cli_json(&[
        "agents",
        "--json",
        "--record-db",
        db.to_str().unwrap(),
    ]))
}

fn local_sessions(db: &Path) -> Vec<Value> {
    array(cli_json(&[
        "sessions",
        "list",
        "--json",
        "--record-db",
        db.to_str().unwrap(),
    ]))
}

/// `entry` without its node, and without what depends on the moment of asking (a live agent
/// is last seen now).
fn comparable(entry: &Value) -> Value {
    let mut e = entry.clone();
    let m = e.as_object_mut().expect("an object");
    m.remove("node");
    if m.get("live_sessions").and_then(Value::as_i64) > Some(0) {
        m.remove("last_seen_ms");
    }
    e
}

/// Agents keyed by (node, workload, subject), comparable.
fn by_agent(list: &[Value], node: Option<&str>) -> BTreeMap<(String, String, String), Value> {
    list.iter()
        .map(|a| {
            let n = node
                .map(str::to_string)
                .unwrap_or_else(|| a["node"].as_str().expect("node").to_string());
            let key = (n, s(a, "workload").to_string(), s(a, "subject").to_string());
            (key, comparable(a))
        })
        .collect()
}

/// Sessions keyed by (node, id), comparable.
fn by_session(list: &[Value], node: Option<&str>) -> BTreeMap<(String, String), Value> {
    list.iter()
        .map(|x| {
            let n = node
                .map(str::to_string)
                .unwrap_or_else(|| x["node"].as_str().expect("node").to_string());
            ((n, s(x, "session").to_string()), comparable(x))
        })
        .collect()
}

/// Runs `statements` as agent `sub` through node `p`; returns whether psql succeeded, and its
/// output.
fn agent_sql(p: &PgGateway, sub: &str, statements: &[&str]) -> (bool, String) {
    let mut cmd = psql_command(&p.agent_conninfo(&agent_jwt(sub), "disable"));
    cmd.args(["-A", "-t", "-v", "ON_ERROR_STOP=1"]);
    for s in statements {
        cmd.args(["-c", s]);
    }
    place(&mut cmd, Some(&p.agent), None);
    let out = cmd.output().expect("run psql");
    (out.status.success(), output_text(&out))
}

fn node(tag: &str, listen: u16, pg_port: u16, conninfo: &str, pw: &Path, name: &str) -> PgGateway {
    PgGateway::start_with_args(
        tag,
        listen,
        pg_port,
        PgOptions::default(),
        &PgTargetOptions {
            extra_rules: NO_DDL_RULE.into(),
            ..Default::default()
        },
        &[
            "--audit-sink",
            conninfo,
            "--audit-sink-password-file",
            pw.to_str().unwrap(),
            "--node-name",
            name,
        ],
    )
}

fn status_of<'a>(
    agents: &'a BTreeMap<(String, String, String), Value>,
    node: &str,
    sub: &str,
) -> &'a str {
    agents
        .get(&(node.into(), "sql-agents".into(), sub.into()))
        .and_then(|a| a["status"].as_str())
        .unwrap_or("absent")
}

#[test]
fn two_nodes_one_central_store_one_view() {
    let central = PgServer::start("clc", 20990, PgOptions { tls: false });
    central.create_db("audit");
    central.create_db("empty");
    let sink_pw = password_file("cl-sink", ROLE_PASSWORD);
    let sink = conninfo("127.0.0.1", 20990, ROLE_SCRAM, "", "audit", "disable");
    let a = node("cla", 20993, 20991, &sink, &sink_pw.0, "node-a");
    let b = node("clb", 20994, 20992, &sink, &sink_pw.0, "node-b");
    let view = View {
        conninfo: conninfo("127.0.0.1", 20990, ROLE_SCRAM, "", "audit", ""),
        pw: password_file("cl-view", ROLE_PASSWORD),
    };

    // Node A: alpha writes; `shared` reads. Node B: beta tries DDL (denied), `shared` reads,
    // gamma stays connected.
    let (ok, out) = agent_sql(
        &a,
        "alpha",
        &[
            "INSERT INTO items (id, name) VALUES (1, 'from alpha')",
            "SELECT count(*) FROM items",
        ],
    );
    assert!(ok, "{out}");
    for p in [&a, &b] {
        let (ok, out) = agent_sql(p, "shared", &["SELECT count(*) FROM items"]);
        assert!(ok, "{out}");
    }
    let (ok, out) = agent_sql(&b, "beta", &["CREATE TABLE beta_was_here (i int)"]);
    assert!(!ok, "DDL went through: {out}");
    let mut gamma: Bg = psql_bg(
        &b.agent_conninfo(&agent_jwt("gamma"), "disable"),
        &b.agent,
        &["SELECT pg_sleep(600)"],
    );
    // `shared` is revoked on node A only.
    let out = cli_env(
        &[
            "revoke",
            "--identity",
            "shared",
            "--reason",
            "cluster test",
            "--admin-socket",
            a.gw.admin_socket().to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", output_text(&out));

    // The central store catches up with both nodes: the cluster view says what each node says
    // of itself, each entry with its node.
    let deadline = Instant::now() + CATCH_UP;
    let (agents, sessions) = loop {
        let central_agents = view.agents(&[]);
        let central_sessions = view.sessions(&[]);
        let mut local_a = by_agent(&local_agents(&a.gw.record_db()), Some("node-a"));
        local_a.append(&mut by_agent(
            &local_agents(&b.gw.record_db()),
            Some("node-b"),
        ));
        let mut local_s = by_session(&local_sessions(&a.gw.record_db()), Some("node-a"));
        local_s.append(&mut by_session(
            &local_sessions(&b.gw.record_db()),
            Some("node-b"),
        ));
        let agents = by_agent(&central_agents, None);
        let sessions = by_session(&central_sessions, None);
        let ready = status_of(&agents, "node-b", "gamma") == "active"
            && status_of(&agents, "node-a", "shared") == "revoked";
        if ready && agents == local_a && sessions == local_s {
            break (central_agents, central_sessions);
        }
        assert!(
            Instant::now() < deadline,
            "the cluster view does not match the nodes within {CATCH_UP:?}:\n\
             central agents {agents:#?}\nnodes' agents {local_a:#?}\n\
             central sessions {sessions:#?}\nnodes' sessions {local_s:#?}\n\
             --- gateway A ---\n{}\n--- gateway B ---\n{}",
            a.gw.log_tail(),
            b.gw.log_tail()
        );
        std::thread::sleep(Duration::from_millis(500));
    };

    // Every agent of both nodes, with the right node and state.
    let keyed = by_agent(&agents, None);
    let want: BTreeSet<(String, String, String)> = [
        ("node-a", "alpha"),
        ("node-a", "shared"),
        ("node-b", "beta"),
        ("node-b", "gamma"),
        ("node-b", "shared"),
    ]
    .iter()
    .map(|(n, s)| (n.to_string(), "sql-agents".to_string(), s.to_string()))
    .collect();
    assert_eq!(keyed.keys().cloned().collect::<BTreeSet<_>>(), want);
    let find = |n: &str, sub: &str| {
        agents
            .iter()
            .find(|x| x["node"] == n && x["subject"] == sub)
            .unwrap_or_else(|| panic!("no {sub} on {n}"))
            .clone()
    };
    let alpha = find("node-a", "alpha");
    assert_eq!(alpha["status"], "idle", "{alpha}");
    assert_eq!(alpha["privileged_actions"], 1, "{alpha}");
    assert_eq!(alpha["targets"], serde_json::json!(["pg"]), "{alpha}");
    let shared_a = find("node-a", "shared");
    assert_eq!(shared_a["status"], "revoked", "{shared_a}");
    assert_eq!(shared_a["revoked"]["reason"], "cluster test", "{shared_a}");
    // Revocations are per node: the same identity is not revoked on node B.
    let shared_b = find("node-b", "shared");
    assert_eq!(shared_b["status"], "idle", "{shared_b}");
    assert!(shared_b["revoked"].is_null(), "{shared_b}");
    let beta = find("node-b", "beta");
    assert_eq!(
        (beta["status"].as_str(), beta["denied"].as_i64()),
        (Some("idle"), Some(1)),
        "{beta}"
    );
    let g = find("node-b", "gamma");
    assert_eq!(
        (g["status"].as_str(), g["live_sessions"].as_i64()),
        (Some("active"), Some(1)),
        "{g}"
    );

    // Every session of both nodes: five, each with its node.
    let per_node = |list: &[Value]| {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for x in list {
            *m.entry(s(x, "node").to_string()).or_default() += 1;
        }
        m
    };
    assert_eq!(sessions.len(), 5, "{sessions:#?}");
    assert_eq!(
        per_node(&sessions),
        BTreeMap::from([("node-a".into(), 2), ("node-b".into(), 3)])
    );
    // Newest first.
    let started: Vec<i64> = sessions
        .iter()
        .map(|x| x["started_ms"].as_i64().expect("started_ms"))
        .collect();
    assert!(started.windows(2).all(|w| w[0] >= w[1]), "{started:?}");

    // Filters.
    let subjects = |list: &[Value]| -> BTreeSet<(String, String)> {
        list.iter()
            .map(|x| (s(x, "node").to_string(), s(x, "subject").to_string()))
            .collect()
    };
    let set = |v: &[(&str, &str)]| -> BTreeSet<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        subjects(&view.sessions(&["--identity", "shared"])),
        set(&[("node-a", "shared"), ("node-b", "shared")])
    );
    assert_eq!(
        subjects(&view.sessions(&["--node", "node-b"])),
        set(&[
            ("node-b", "beta"),
            ("node-b", "gamma"),
            ("node-b", "shared")
        ])
    );
    assert_eq!(
        subjects(&view.sessions(&["--status", "live"])),
        set(&[("node-b", "gamma")])
    );
    assert_eq!(
        subjects(&view.sessions(&["--statement", "insert into items"])),
        set(&[("node-a", "alpha")])
    );
    assert_eq!(
        subjects(&view.sessions(&["--identity", "shared", "--node", "node-a"])),
        set(&[("node-a", "shared")])
    );
    assert_eq!(view.sessions(&["--protocol", "postgres"]).len(), 5);
    assert_eq!(view.sessions(&["--protocol", "tcp"]).len(), 0);
    assert_eq!(view.sessions(&["--limit", "2"]), sessions[..2].to_vec());
    let until = (started[2]).to_string();
    assert_eq!(view.sessions(&["--until", &until]), sessions[2..].to_vec());
    let node_a: BTreeSet<String> = view
        .agents(&["--node", "node-a"])
        .iter()
        .map(|x| format!("{}/{}", s(x, "node"), s(x, "subject")))
        .collect();
    assert_eq!(
        node_a,
        BTreeSet::from(["node-a/alpha".to_string(), "node-a/shared".to_string()])
    );

    // A node's own commands show only its own agents and sessions.
    let own: BTreeSet<String> = local_agents(&a.gw.record_db())
        .iter()
        .map(|x| s(x, "subject").to_string())
        .collect();
    assert_eq!(own, BTreeSet::from(["alpha".into(), "shared".into()]));
    assert_eq!(local_sessions(&b.gw.record_db()).len(), 3);

    // The tables for people carry the node.
    let table = cli_ok(&view.args(&["agents"], &[]));
    for word in [
        "NODE", "STATUS", "node-a", "node-b", "revoked", "active", "alpha", "gamma",
    ] {
        assert!(table.contains(word), "{word} missing from:\n{table}");
    }
    let table = cli_ok(&view.args(&["sessions", "list"], &[]));
    for word in ["NODE", "SESSION", "node-a", "node-b", "(live)", "beta"] {
        assert!(table.contains(word), "{word} missing from:\n{table}");
    }

    // show and the replay's timeline, from the central store, say what the node says.
    let alpha_session = sessions
        .iter()
        .find(|x| x["subject"] == "alpha")
        .expect("alpha's session");
    let id = s(alpha_session, "session");
    let db_a = a.gw.record_db();
    let local_show = cli_json(&[
        "sessions",
        "show",
        id,
        "--json",
        "--record-db",
        db_a.to_str().unwrap(),
    ]);
    let mut central_show =
        cli_json(&view.args(&["sessions", "show", id], &["--json", "--node", "node-a"]));
    assert_eq!(central_show["node"], "node-a");
    central_show.as_object_mut().unwrap().remove("node");
    assert_eq!(central_show, local_show);
    let local_replay = cli_json(&[
        "sessions",
        "replay",
        id,
        "--json",
        "--record-db",
        db_a.to_str().unwrap(),
    ]);
    let central_replay = cli_json(&view.args(&["sessions", "replay", id], &["--json"]));
    assert_eq!(central_replay, local_replay);
    assert!(
        local_replay.as_array().unwrap().len() >= 4,
        "{local_replay}"
    );

    // A role that may only read the central table is enough (docs/audit-sink.md).
    central.sql_in(
        "audit",
        &format!(
            "REVOKE ALL ON agentgate_audit FROM {ROLE_MD5}; GRANT SELECT ON agentgate_audit TO {ROLE_MD5};"
        ),
    );
    let reader = View {
        conninfo: conninfo("127.0.0.1", 20990, ROLE_MD5, "", "audit", ""),
        pw: password_file("cl-reader", ROLE_PASSWORD),
    };
    assert_eq!(by_agent(&reader.agents(&[]), None), keyed);
    assert_eq!(reader.sessions(&[]), sessions);

    // Errors: clear, non-zero, no secret printed.
    let fails = |args: Vec<&str>, env: &[(&str, &str)], says: &str| {
        let out = cli_env(&args, env);
        let text = output_text(&out);
        assert!(
            !out.status.success(),
            "agentgate {args:?} succeeded: {text}"
        );
        assert!(
            text.contains(says),
            "agentgate {args:?}: `{says}` missing from: {text}"
        );
        assert!(
            !text.contains(ROLE_PASSWORD),
            "the password was printed: {text}"
        );
    };
    let wrong = password_file("cl-wrong", "not-the-password");
    let wrong_path = wrong.0.to_str().unwrap();
    fails(
        vec![
            "agents",
            "--central",
            &view.conninfo,
            "--central-password-file",
            wrong_path,
        ],
        &[],
        "password authentication failed",
    );
    let unreachable = conninfo("127.0.0.1", 20999, ROLE_SCRAM, "", "audit", "");
    fails(
        vec!["sessions", "list", "--central", &unreachable],
        &[(
            "AGENTGATE_CENTRAL_PASSWORD_FILE",
            view.pw.0.to_str().unwrap(),
        )],
        "central audit store: 127.0.0.1:20999",
    );
    let empty = conninfo("127.0.0.1", 20990, ROLE_SCRAM, "", "empty", "");
    fails(
        vec!["agents", "--central", &empty],
        &[(
            "AGENTGATE_CENTRAL_PASSWORD_FILE",
            view.pw.0.to_str().unwrap(),
        )],
        "there is no table agentgate_audit",
    );
    let off_loopback = "host=192.0.2.1 dbname=audit user=x sslmode=disable";
    fails(
        vec!["agents", "--central", off_loopback],
        &[],
        "plain connections to the central audit store are allowed",
    );
    fails(
        vec![
            "sessions",
            "list",
            "--node",
            "node-a",
            "--record-db",
            db_a.to_str().unwrap(),
        ],
        &[],
        "--central",
    );
    // The password from the environment's file works too.
    let out = cli_env(
        &["agents", "--json", "--central", &view.conninfo],
        &[(
            "AGENTGATE_CENTRAL_PASSWORD_FILE",
            view.pw.0.to_str().unwrap(),
        )],
    );
    assert!(out.status.success(), "{}", output_text(&out));

    gamma.kill();
}
