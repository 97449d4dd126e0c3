//! The record-scale section of `cargo xtask bench` (`--only record-scale`): a record database of
//! many sessions, and what it costs to start the gateway on it and to query it. The database is
//! made by the gateway (its schema), then filled by a bulk writer (python's sqlite3) that chains
//! every record exactly as the gateway does, so that `audit verify` passes on it. Each session is
//! ten records (an opening, six reads, a write's intent and outcome, a closing); one in a
//! thousand is left open, as a `kill -9` leaves them: the first start closes those, the next
//! ones are ordinary restarts. Then the audit commands, each timed as a process run to its end.
//! (Not measured: the one-time migration of a database of an earlier version, which the
//! harness's 30 s wait for `ready` would not cover at this size.)

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agentgate_tests::{agentgate_bin, policy, Gateway, TokenFile};
use anyhow::{bail, Context};

use crate::{
    bench::{median, min_max},
    report::md,
};

/// This section's gateway listener (bench only; nothing connects to it).
const LISTEN_PORT: u16 = 19740;
/// Records per closed session.
const RECORDS_PER_SESSION: u64 = 10;

/// Appends sessions to the journal, chained as the gateway chains them
/// (`SHA-256(prev ‖ seq ‖ at_ms ‖ kind ‖ session ‖ body ‖ has-session)`), committing every
/// 100,000 records. Arguments: db, first session number, sessions, leave every Nth open, the
/// first session's start (ms), drop-new-schema (1: take the database back to the previous
/// version's schema first).
const BULK_WRITER: &str = r#"import sqlite3, sys, hashlib, struct, json
db, first, n, open_every, base, old = sys.argv[1], *map(int, sys.argv[2:])
c = sqlite3.connect(db, timeout=60)
c.execute("PRAGMA synchronous=OFF")
if old:
    for o in ("TRIGGER open_sessions_opened", "TRIGGER open_sessions_closed", "TABLE open_sessions",
              "INDEX audit_log_close", "INDEX audit_log_intent", "INDEX audit_log_started"):
        c.execute("DROP %s IF EXISTS %s" % tuple(o.split(" ")))
    c.commit()
row = c.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
seq, prev = (row[0], bytes.fromhex(row[1])) if row else (0, bytes(32))
sha, pack = hashlib.sha256, struct.pack
rows = []
def add(at, kind, session, body):
    global seq, prev
    seq += 1
    body = json.dumps(body, separators=(",", ":"))
    k, s, b = kind.encode(), session.encode(), body.encode()
    d = sha(prev + pack(">qqQ", seq, at, len(k)) + k + pack(">Q", len(s)) + s
            + pack(">Q", len(b)) + b + b"\x01").digest()
    rows.append((seq, at, kind, session, body, prev.hex(), d.hex()))
    prev = d
def flush():
    c.executemany("INSERT INTO audit_log (seq, at_ms, kind, session, body, prev, hash) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    c.commit()
    rows.clear()
for i in range(first, first + n):
    s = "bench-%08d" % i
    t = base + (i - first) * 10
    add(t, "session_open", s, {"session": s, "started_ms": t, "protocol": "postgres",
        "workload": "bench-agents", "cgroup": "/bench/job-%d" % (i % 50), "pid": 1000 + i % 30000,
        "issuer": "https://idp.bench", "subject": "agent-%d" % (i % 500), "groups": ["agents"],
        "target": "pg-%d" % (i % 5), "original_dst": "10.0.0.%d:5432" % (i % 5),
        "client_user": "agent", "database": "app", "policy_version": "bench",
        "token_expires_ms": base + 3600000})
    for q in range(1, 7):
        denied = (i + q) % 50 == 0
        add(t + q, "statement", s, {"session": s, "seq": q, "started_ms": t + q, "kind": "extended",
            "text": "SELECT id, name, price FROM items WHERE id = $1", "params": [str(i * 7 + q)],
            "class": "read", "tables": ["public.items"], "functions": [],
            "decision": "denied" if denied else "allowed", "rule": "no-pii" if denied else None,
            "duration_us": 180, "rows": 0 if denied else 1, "error_code": "42501" if denied else None,
            "error": None, "results": None if denied else [[str(i), "widget", "9.5"]], "results_cut": False})
    write = {"session": s, "seq": 7, "started_ms": t + 7, "kind": "simple",
             "text": "UPDATE items SET price = price * 1.01 WHERE id = %d" % i, "class": "write",
             "tables": ["public.items"], "functions": [], "decision": "allowed", "rule": None}
    add(t + 7, "statement_intent", s, write)
    if open_every and (i - first) % open_every == 0:
        continue
    add(t + 8, "statement", s, dict(write, duration_us=900, rows=1, error_code=None, error=None,
        results=None, results_cut=False))
    add(t + 9, "session_close", s, {"session": s, "ended_ms": t + 9, "bytes_up": 1200,
        "bytes_down": 5400, "ended_by": None, "error": None})
    if len(rows) >= 100000:
        flush()
flush()
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
"#;

fn bulk_write(
    db: &Path,
    first: u64,
    n: u64,
    open_every: u64,
    base_ms: i64,
    old: bool,
) -> anyhow::Result<()> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(BULK_WRITER)
        .arg(db)
        .args([
            first.to_string(),
            n.to_string(),
            open_every.to_string(),
            base_ms.to_string(),
            (old as u8).to_string(),
        ])
        .output()
        .context("python3")?;
    if !out.status.success() {
        bail!("bulk writer: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Runs `agentgate args` to its end (stdout discarded); its wall time in seconds.
fn timed(args: &[&str]) -> anyhow::Result<f64> {
    let t = Instant::now();
    let out = Command::new(agentgate_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("agentgate {args:?}"))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "agentgate {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(secs)
}

fn count(db: &Path, sql: &str) -> anyhow::Result<i64> {
    let out = Command::new("python3")
        .arg("-c")
        .arg("import sqlite3, sys\nc = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True)\nprint(c.execute(sys.argv[2]).fetchone()[0])")
        .arg(db)
        .arg(sql)
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("{sql}: {}", String::from_utf8_lossy(&out.stderr)))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

pub fn record_scale(sessions: u64, reps: usize) -> anyhow::Result<()> {
    let token = TokenFile::valid("bench-scale");
    let mut gw = Gateway::start(
        "bench-scale",
        &policy(
            LISTEN_PORT,
            "/agbench-scale/job-*",
            "host",
            &["127.0.0.2"],
            LISTEN_PORT + 1,
            &token.path,
        ),
    );
    gw.terminate(Duration::from_secs(30));
    let db = gw.record_db();
    let open_every = 1000;
    eprintln!(
        "bench: record-scale: writing {sessions} sessions into {}",
        db.display()
    );
    let t = Instant::now();
    // Ten ms apart, ending about now.
    let base = now_ms() - sessions as i64 * 10 - 60_000;
    bulk_write(&db, 0, sessions, open_every, base, false)?;
    let build_secs = t.elapsed().as_secs_f64();
    let records = count(&db, "SELECT count(*) FROM audit_log")?;
    let bytes = std::fs::metadata(&db)?.len();
    let left_open = count(
        &db,
        "SELECT count(*) FROM audit_log o WHERE kind = 'session_open' AND NOT EXISTS \
         (SELECT 1 FROM audit_log c WHERE c.kind = 'session_close' AND c.session = o.session)",
    )?;
    eprintln!("bench: record-scale: {records} records in {build_secs:.0} s");

    let mut start = |what: &str| -> anyhow::Result<(String, f64)> {
        let t = Instant::now();
        gw.start_again();
        let secs = t.elapsed().as_secs_f64();
        gw.terminate(Duration::from_secs(60));
        eprintln!("bench: record-scale: {what}: {secs:.2} s");
        Ok((what.to_string(), secs))
    };
    let first = start(&format!(
        "first start: {left_open} sessions left open, closed on record"
    ))?;
    let mut restarts = Vec::new();
    for _ in 0..reps {
        restarts.push(start("restart")?.1);
    }

    let d = db.to_str().context("utf-8 path")?;
    let some = format!("bench-{:08}", sessions / 2);
    let commands: Vec<(String, Vec<String>, usize)> = vec![
        (
            "`sessions list` (newest 50)".into(),
            vec!["sessions".into(), "list".into()],
            reps,
        ),
        (
            "`sessions list --identity agent-7 --limit 20`".into(),
            vec![
                "sessions".into(),
                "list".into(),
                "--identity".into(),
                "agent-7".into(),
                "--limit".into(),
                "20".into(),
            ],
            reps,
        ),
        (
            format!("`sessions show {some}`"),
            vec!["sessions".into(), "show".into(), some.clone()],
            reps,
        ),
        (
            format!("`sessions replay {some}`"),
            vec!["sessions".into(), "replay".into(), some.clone()],
            reps,
        ),
        ("`agents`".into(), vec!["agents".into()], 1),
        (
            "`audit export --since 1h`".into(),
            vec![
                "audit".into(),
                "export".into(),
                "--since".into(),
                "1h".into(),
            ],
            1,
        ),
        (
            "`audit verify`".into(),
            vec!["audit".into(), "verify".into()],
            1,
        ),
        (
            "`audit export` (everything)".into(),
            vec![
                "audit".into(),
                "export".into(),
                "--since".into(),
                "0".into(),
            ],
            1,
        ),
    ];
    let mut timings = Vec::new();
    for (label, args, n) in &commands {
        let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
        a.extend(["--record-db", d]);
        let mut v = Vec::new();
        for _ in 0..*n {
            v.push(timed(&a)?);
        }
        eprintln!("bench: record-scale: {label}: {:.2} s", median(v.clone()));
        timings.push((label.clone(), v));
    }

    md!(
        "\n### record scale: {sessions} sessions, {records} records ({:.1} GiB)\n",
        bytes as f64 / (1u64 << 30) as f64
    );
    md!(
        "Built in {build_secs:.0} s by the bulk writer (python sqlite3, chained as the gateway \
         chains; {RECORDS_PER_SESSION} records a session, one session in {open_every} left \
         open). Start: `agentgate run` spawned until its \
         `ready` event. Commands: the process run to its end, output discarded.\n"
    );
    md!("| start-up to ready | s |");
    md!("|---|---|");
    md!("| {} | {:.2} |", first.0, first.1);
    let (lo, hi) = min_max(&restarts);
    md!(
        "| restart, nothing left open (median of {}; min–max {lo:.2}–{hi:.2}) | {:.2} |",
        restarts.len(),
        median(restarts.clone())
    );
    md!("\n| command | s (median) | min–max | runs |");
    md!("|---|---|---|---|");
    for (label, v) in &timings {
        let (lo, hi) = min_max(v);
        md!(
            "| {label} | {:.2} | {lo:.2}–{hi:.2} | {} |",
            median(v.clone()),
            v.len()
        );
    }
    let list = median(timings[0].1.clone());
    let worst_start = restarts
        .iter()
        .copied()
        .chain([first.1])
        .fold(0.0, f64::max);
    md!("\n#### against the goals\n");
    md!("| goal | measured | met |");
    md!("|---|---|---|");
    md!(
        "| start-up under 1 s (first start and restarts) | {worst_start:.2} s (slowest) | {} |",
        if worst_start < 1.0 { "yes" } else { "no" }
    );
    md!(
        "| `sessions list` under 1 s | {list:.2} s | {} |",
        if list < 1.0 { "yes" } else { "no" }
    );
    Ok(())
}
