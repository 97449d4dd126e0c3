//! What operators watch the gateway with, end to end: `/metrics` scraped before, during and after
//! a real PostgreSQL session through real capture (the counters move as the session does), the
//! exposition parsed by the official Prometheus client's parser (tests/fixtures/prom_parse.py),
//! `/healthz` and `/readyz`, the audit sink lag, and `--log-format json`. Root required. Ports
//! 20200-20249.

use std::{
    io::{Read, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agentgate_tests::{bg::Bg, pg::*, *};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

/// `GET path` on 127.0.0.1:`port`: (status, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to the metrics port {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the HTTP answer");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {raw:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_string())
}

/// One scrape of `/metrics`, parsed: every sample as (name, labels, value).
struct Scrape {
    samples: Vec<(String, Value, f64)>,
    families: Vec<Value>,
    text: String,
}

impl Scrape {
    fn take(port: u16) -> Scrape {
        let (status, text) = http_get(port, "/metrics");
        assert_eq!(status, 200, "{text}");
        let mut child = Command::new("/usr/bin/python3")
            .arg(fixtures().join("prom_parse.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run prom_parse.py (apt package python3-prometheus-client)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the exposition does not parse: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let parsed: Value = serde_json::from_slice(&out.stdout).unwrap();
        let families = parsed["families"].as_array().unwrap().clone();
        let samples = families
            .iter()
            .flat_map(|f| f["samples"].as_array().unwrap().clone())
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_string(),
                    s["labels"].clone(),
                    s["value"].as_f64().unwrap_or(f64::NAN),
                )
            })
            .collect();
        Scrape {
            samples,
            families,
            text,
        }
    }

    /// The sample `name` with exactly these labels; 0 if absent (a series not created yet).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && l.as_object().map(|o| o.len()) == Some(labels.len())
                    && labels.iter().all(|(k, v)| l[*k] == *v)
            })
            .map(|(_, _, v)| *v)
            .unwrap_or(0.0)
    }

    fn family_type(&self, name: &str) -> Option<String> {
        self.families
            .iter()
            .find(|f| f["name"] == name)
            .and_then(|f| f["type"].as_str())
            .map(str::to_string)
    }

    /// Every label value of every sample.
    fn label_values(&self) -> Vec<String> {
        self.samples
            .iter()
            .flat_map(|(_, l, _)| {
                l.as_object()
                    .into_iter()
                    .flat_map(|o| o.values())
                    .map(|v| v.as_str().unwrap_or_default().to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// Scrapes until `done` holds for a scrape (the record and events are written off the data
/// path, a moment after the client sees its answer); returns that scrape.
fn scrape_until(port: u16, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = Scrape::take(port);
        if done(&s) {
            return s;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}; last scrape:\n{}", s.text);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

const SESSION: [(&str, &str); 3] = [
    ("workload", "sql-agents"),
    ("target", "pg"),
    ("protocol", "postgres"),
];

fn with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    SESSION
        .iter()
        .copied()
        .chain(extra.iter().copied())
        .collect()
}

/// The request id (`ar-` and 12 hex digits) in an approval refusal's message.
fn request_id(text: &str) -> String {
    text.match_indices("ar-")
        .map(|(i, _)| &text[i..(i + 15).min(text.len())])
        .find(|id| id.len() == 15 && id[3..].bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no request id in {text}"))
        .to_string()
}

#[test]
fn metrics_follow_a_postgres_session() {
    const METRICS: u16 = 20202;
    // Agents may not run DDL; writes to items wait for a person (refused at once, retried once
    // approved); names are masked.
    let rules = [
        NO_DDL_RULE.to_string(),
        approval_rule(
            "writes-need-approval",
            "{classes: [write], tables: [items]}",
            "{approvers: [dba], timeout_secs: 120, mode: deny_and_retry, retry_window_secs: 600}",
        ),
        "  - name: mask-names\n    targets: [pg]\n    mask:\n      columns: [\"items.name\"]\n      strategy: redact\n".to_string(),
    ]
    .concat();
    let opts = PgTargetOptions {
        extra_rules: rules,
        ..Default::default()
    };
    let p = PgGateway::start_with_args(
        "telemetry",
        20200,
        20201,
        PgOptions::default(),
        &opts,
        &["--metrics", &format!("127.0.0.1:{METRICS}")],
    );
    p.pg.sql_in(
        "agentdb",
        "INSERT INTO items (id, name) VALUES (1, 'alpha'), (2, 'beta'), (3, 'gamma');",
    );

    // Started: alive and ready (the gateway said `ready`), unknown paths 404.
    assert_eq!(http_get(METRICS, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(http_get(METRICS, "/readyz"), (200, "ready\n".to_string()));
    assert_eq!(http_get(METRICS, "/nope").0, 404);

    let before = Scrape::take(METRICS);
    let version = policy_version(&p.gw.policy_dir());
    assert_eq!(
        before.get("agentgate_policy_info", &[("version", &version)]),
        1.0,
        "{}",
        before.text
    );
    for map in ["AG_BY_COOKIE", "AG_BY_PEER", "AG_BYPASS"] {
        assert_eq!(
            before.get("agentgate_ebpf_map_capacity", &[("map", map)]),
            65536.0,
            "{}",
            before.text
        );
        assert_eq!(
            before.family_type("agentgate_ebpf_map_entries").as_deref(),
            Some("gauge")
        );
    }
    let allowed = with(&[("decision", "allowed"), ("code", "")]);
    let live = SESSION.to_vec();
    let ended = with(&[("cause", "client_closed")]);
    let read = [("class", "read"), ("decision", "allowed")];
    let ddl_denied = [("class", "ddl"), ("decision", "denied")];
    let token_ok = [("outcome", "ok")];
    let c = "agentgate_connections_total";
    let st = "agentgate_statements_total";
    let tv = "agentgate_token_verifications_total";
    assert_eq!(before.get("agentgate_sessions_live", &live), 0.0);

    // A session: two reads (one of three masked rows), a DDL statement the rules deny, a write
    // held for approval.
    let subject = "agent-telemetry";
    let token = agent_jwt(subject);
    let mut session = Bg::spawn(
        "pg_session.py",
        pg_session_command(&p.agent_conninfo(&token, "disable")),
        &p.agent,
    );
    session.wait_line(WAIT, |err, l| !err && l.contains("connected"));
    let mut run = |sql: &str| -> Value {
        session.send_line(&Value::from(sql).to_string());
        let line = session.wait_line(WAIT, |err, l| {
            !err && (l.starts_with("{\"ok\"") || l.starts_with("{\"error\""))
        });
        serde_json::from_str(&line).unwrap()
    };
    assert!(run("SELECT 1").get("ok").is_some());
    let names = run("SELECT name FROM items ORDER BY id");
    let rows = names["ok"].as_array().unwrap_or_else(|| panic!("{names}"));
    assert_eq!(rows.len(), 3, "{names}");
    assert!(!names.to_string().contains("alpha"), "not masked: {names}");
    let denied = run("CREATE TABLE telemetry_denied (i int)");
    assert_eq!(denied["error"]["sqlstate"], "42501", "{denied}");
    let held = run("INSERT INTO items (id, name) VALUES (10, 'x')");
    assert_eq!(held["error"]["sqlstate"], "42501", "{held}");
    let request = request_id(held["error"]["message"].as_str().unwrap_or_default());

    let write_denied = [("class", "write"), ("decision", "denied")];
    let during = scrape_until(METRICS, "the session's statements", |s| {
        s.get(st, &read) - before.get(st, &read) >= 2.0
            && s.get(st, &ddl_denied) - before.get(st, &ddl_denied) >= 1.0
            && s.get(st, &write_denied) - before.get(st, &write_denied) >= 1.0
    });
    assert_eq!(
        during.get(st, &write_denied) - before.get(st, &write_denied),
        1.0
    );
    let masked = "agentgate_mask_rows_rewritten_total";
    assert_eq!(during.get(masked, &[]) - before.get(masked, &[]), 3.0);
    let requested = "agentgate_approvals_requested_total";
    assert_eq!(during.get(requested, &[]) - before.get(requested, &[]), 1.0);
    assert_eq!(during.get("agentgate_approvals_pending", &[]), 1.0);
    assert_eq!(during.get(c, &allowed) - before.get(c, &allowed), 1.0);
    assert_eq!(during.get("agentgate_sessions_live", &live), 1.0);
    assert_eq!(during.get(st, &read) - before.get(st, &read), 2.0);
    assert_eq!(
        during.get(st, &ddl_denied) - before.get(st, &ddl_denied),
        1.0
    );
    assert_eq!(during.get(tv, &token_ok) - before.get(tv, &token_ok), 1.0);
    assert!(during.get("agentgate_record_commit_seconds_count", &[]) > 0.0);
    // The kernel keeps one record for the agent's captured socket while it is open.
    let by_cookie = [("map", "AG_BY_COOKIE")];
    assert_eq!(before.get("agentgate_ebpf_map_entries", &by_cookie), 0.0);
    assert_eq!(
        during.get("agentgate_ebpf_map_entries", &by_cookie),
        1.0,
        "{}",
        during.text
    );

    // A person denies the request: decided once, nothing pending.
    let out = Command::new(agentgate_bin())
        .args([
            "approvals",
            "deny",
            &request,
            "--reason",
            "not now",
            "--admin-socket",
        ])
        .arg(p.gw.admin_socket())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let decided = [("outcome", "denied")];
    let d = "agentgate_approvals_decided_total";
    let settled = scrape_until(METRICS, "the decision", |s| {
        s.get("agentgate_approvals_pending", &[]) == 0.0
    });
    assert_eq!(settled.get(d, &decided) - before.get(d, &decided), 1.0);

    // The agent goes away: the session ends, its cause is counted once, nothing is live.
    session.kill();
    let after = scrape_until(METRICS, "the session's end", |s| {
        s.get("agentgate_sessions_live", &live) == 0.0
    });
    assert_eq!(
        after.get("agentgate_sessions_ended_total", &ended)
            - before.get("agentgate_sessions_ended_total", &ended),
        1.0,
        "{}",
        after.text
    );
    let proto = [("protocol", "postgres")];
    assert_eq!(
        after.get("agentgate_session_duration_seconds_count", &proto)
            - before.get("agentgate_session_duration_seconds_count", &proto),
        1.0
    );

    // A connection with an expired token: refused with its code, the verification counted.
    let expired = mint("agent-expired", &["agents"], now() - 1200, now() - 600);
    let mut cmd = psql_command(&p.agent_conninfo(&expired, "disable"));
    cmd.args(["-c", "SELECT 1"]);
    place(&mut cmd, Some(&p.agent), None);
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{}", output_text(&out));
    let refused = with(&[("decision", "refused"), ("code", "expired")]);
    let token_expired = [("outcome", "expired")];
    let last = scrape_until(METRICS, "the refusal", |s| {
        s.get(c, &refused) - before.get(c, &refused) >= 1.0
    });
    assert_eq!(last.get(c, &refused) - before.get(c, &refused), 1.0);
    assert_eq!(
        last.get(tv, &token_expired) - before.get(tv, &token_expired),
        1.0
    );
    // The refusal did not count as allowed, nor open a session.
    assert_eq!(last.get(c, &allowed) - before.get(c, &allowed), 1.0);
    assert_eq!(last.get("agentgate_sessions_live", &live), 0.0);

    // A policy the gateway refuses, then one it applies: counted by result, and the info
    // metric follows the version in force (one series).
    let reloads = "agentgate_policy_reloads_total";
    p.set_policy_refused(&PgTargetOptions {
        extra_rules: format!(
            "{}  - name: broken\n    targets: [no-such-target]\n",
            opts.extra_rules
        ),
        ..opts.clone()
    });
    p.set_policy(&PgTargetOptions {
        extra_rules: format!(
            "{}  - name: nobody\n    when: {{groups: [nobody]}}\n    targets: [pg]\n",
            opts.extra_rules
        ),
        ..opts.clone()
    });
    let new_version = policy_version(&p.gw.policy_dir());
    assert_ne!(new_version, version);
    let last = scrape_until(METRICS, "the reloads", |s| {
        s.get(reloads, &[("result", "applied")]) >= 1.0
    });
    assert_eq!(
        last.get(reloads, &[("result", "refused")]),
        1.0,
        "{}",
        last.text
    );
    assert_eq!(
        last.get(reloads, &[("result", "applied")]),
        1.0,
        "{}",
        last.text
    );
    let info: Vec<_> = last
        .samples
        .iter()
        .filter(|(n, _, _)| n == "agentgate_policy_info")
        .collect();
    assert_eq!(info.len(), 1, "{}", last.text);
    assert_eq!(info[0].1["version"], new_version.as_str(), "{}", last.text);

    // Each family with its type (families without a series yet are not exposed at all).
    for (family, kind) in [
        ("agentgate_connections", "counter"),
        ("agentgate_statements", "counter"),
        ("agentgate_record_commit_seconds", "histogram"),
        ("agentgate_session_duration_seconds", "histogram"),
        ("agentgate_record_queue_depth", "gauge"),
        ("agentgate_approvals_pending", "gauge"),
        ("agentgate_mask_rows_rewritten", "counter"),
        ("agentgate_approvals_decided", "counter"),
        ("agentgate_token_verifications", "counter"),
    ] {
        assert_eq!(
            last.family_type(family).as_deref(),
            Some(kind),
            "{family}\n{}",
            last.text
        );
    }
    // Bounded labels: no subject, token, address or statement text became a label value.
    for s in [&before, &during, &settled, &after, &last] {
        for v in s.label_values() {
            for secret in [
                subject,
                "agent-expired",
                "127.0.0.1",
                "SELECT",
                "items",
                "alpha",
                "telemetry_denied",
                &request,
            ] {
                assert!(
                    !v.contains(secret),
                    "label value {v:?} holds {secret:?}\n{}",
                    s.text
                );
            }
            assert!(
                !v.contains(&token[..20]),
                "a token in the labels\n{}",
                s.text
            );
        }
    }
    assert_eq!(http_get(METRICS, "/readyz").0, 200);

    // The record database deleted under the gateway: its records would be lost, so it is not
    // ready, and says why (the process is still alive).
    std::fs::remove_file(p.gw.record_db()).unwrap();
    let (status, body) = http_get(METRICS, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("not ready:\n")
            && body.contains("\nrecord: ")
            && body.contains("not writable"),
        "{body}"
    );
    assert_eq!(http_get(METRICS, "/healthz").0, 200);
}

#[test]
fn json_logs_carry_the_connection_span_on_every_line() {
    let p = PgGateway::start_with_args(
        "telemjson",
        20210,
        20211,
        PgOptions::default(),
        &PgTargetOptions::default(),
        &["--log-format", "json"],
    );
    let token = agent_jwt("agent-json-logs");
    let mut cmd = psql_command(&p.agent_conninfo(&token, "disable"));
    cmd.args(["-c", "SELECT 1"]);
    place(&mut cmd, Some(&p.agent), None);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let close = p.gw.wait_for(
        WAIT,
        |e| e["event"] == "connection_close" && e["subject"] == "agent-json-logs",
        0,
    );
    let (conn, pid) = (
        close["conn"].as_u64().unwrap(),
        close["pid"].as_u64().unwrap(),
    );
    // The "closed" line is logged just before the event; give the writer a moment anyway.
    std::thread::sleep(Duration::from_millis(200));

    let log = std::fs::read_to_string(p.gw.dir.join("gateway.log")).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 5, "{log}");
    for l in &lines {
        assert!(
            l["timestamp"].is_string() && l["level"].is_string() && l["fields"].is_object(),
            "{l}"
        );
    }
    let of_conn: Vec<&Value> = lines
        .iter()
        .filter(|l| l["span"]["name"] == "conn" && l["span"]["id"].as_u64() == Some(conn))
        .collect();
    let messages: Vec<&str> = of_conn
        .iter()
        .filter_map(|l| l["fields"]["message"].as_str())
        .collect();
    assert!(
        messages.contains(&"relaying postgres") && messages.contains(&"closed"),
        "lines of connection {conn}: {messages:?}\n{log}"
    );
    for l in &of_conn {
        let span = &l["span"];
        assert_eq!(span["pid"].as_u64(), Some(pid), "{l}");
        assert_eq!(span["dst"], "127.0.0.1:20211", "{l}");
        assert_eq!(span["cgroup"], p.agent.rel.as_str(), "{l}");
        assert!(
            l["spans"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["name"] == "conn")),
            "{l}"
        );
    }
}

#[test]
fn metrics_stay_off_the_network_unless_asked() {
    require_root();
    let dir = std::env::temp_dir().join(unique("telempub"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("policy.yaml"),
        policy(
            20220,
            "/telempub/job-*",
            "host",
            &["127.0.0.1"],
            20221,
            &dir.join("token"),
        ),
    )
    .unwrap();
    let pin_dir = "/sys/fs/bpf/agentgate-telempub-never-created";
    let run = |extra: &[&str]| {
        Command::new(agentgate_bin())
            .args(["run", "--pin-dir", pin_dir, "--policies"])
            .arg(&dir)
            .arg("--admin-socket")
            .arg(dir.join("admin.sock"))
            .arg("--record-db")
            .arg(dir.join("record.db"))
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // A non-loopback address is refused before anything else starts (nothing is bound, the
    // kernel is not touched).
    let out = run(&["--metrics", "0.0.0.0:20222"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--metrics-public"),
        "{}",
        output_text(&out)
    );
    assert!(!std::path::Path::new(pin_dir).exists());
    // So is an address that is not one.
    let out = run(&["--metrics", "localhost"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn audit_sink_lag_rises_while_the_central_store_is_away_and_falls_back() {
    const METRICS: u16 = 20232;
    let central = PgServer::start("telemsinkc", 20231, PgOptions::default());
    central.create_db("audit");
    let pw = std::env::temp_dir().join(format!("{}-central-pw", unique("telemsink")));
    std::fs::write(&pw, format!("{ROLE_PASSWORD}\n")).unwrap();
    let sink = conninfo(
        "127.0.0.1",
        central.port,
        ROLE_SCRAM,
        "",
        "audit",
        "disable",
    );
    let p = PgGateway::start_with_args(
        "telemsink",
        20230,
        20233,
        PgOptions::default(),
        &PgTargetOptions::default(),
        &[
            "--audit-sink",
            &sink,
            "--audit-sink-password-file",
            pw.to_str().unwrap(),
            "--metrics",
            &format!("127.0.0.1:{METRICS}"),
        ],
    );
    let lag = |s: &Scrape| s.get("agentgate_audit_sink_lag_records", &[]);
    let agent = |sql: &str| {
        let mut cmd = psql_command(&p.agent_conninfo(&agent_jwt("agent-sink"), "disable"));
        cmd.args(["-c", sql]);
        place(&mut cmd, Some(&p.agent), None);
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
    };
    // Wait for the gateway's first records to arrive centrally: caught up, nothing behind.
    let wait = Duration::from_secs(60);
    wait_until("the sink catching up", wait, || {
        central.sql_in(
            "audit",
            "SELECT to_regclass('agentgate_audit') IS NOT NULL;",
        ) == "t"
            && lag(&Scrape::take(METRICS)) == 0.0
    });

    // The central store goes away: what is recorded meanwhile is behind.
    central.stop();
    agent("SELECT 1");
    agent("SELECT 2");
    wait_until("records behind the central store", wait, || {
        lag(&Scrape::take(METRICS)) >= 4.0
    });
    // Back: shipped, nothing behind.
    central.start_again();
    wait_until("the sink catching up again", wait, || {
        lag(&Scrape::take(METRICS)) == 0.0
    });
    let _ = std::fs::remove_file(&pw);
}
