//! The masking section of `cargo xtask bench` (`--only masking`): a wide table with PII columns,
//! `SELECT * FROM wide` streamed by a client that keeps nothing, directly vs through agentgate
//! without mask rules vs through agentgate with mask rules, in text format (simple query
//! protocol, as psql) and binary format (extended protocol, as typed drivers), at two result
//! sizes; throughput and the gateway's peak memory.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use agentgate_tests::{
    pg::{agent_jwt, pg_policy, PgGateway, PgOptions, PgTargetOptions, ROLE_SCRAM},
    place,
};
use anyhow::{bail, Context};
use serde_json::Value;

use crate::{
    bench::{median, min_max},
    report::md,
    util,
};

/// Gateway listener and PostgreSQL ports of this section (bench only).
const LISTEN_PORT: u16 = 18020;
const PG_PORT: u16 = 18021;
/// The second, smaller result is this fraction of `--mask-rows` (`SELECT * FROM wide LIMIT n`).
const SMALL_DIVISOR: u64 = 5;

/// The mask rules of the "mask rules" contender (YAML list items under `rules:`).
const MASK_RULES: &str = concat!(
    "  - name: mask-email\n",
    "    when: {groups: [agents]}\n",
    "    targets: [pg]\n",
    "    mask: {columns: [wide.email], detectors: [email], strategy: redact}\n",
    "  - name: mask-card\n",
    "    when: {groups: [agents]}\n",
    "    targets: [pg]\n",
    "    mask: {columns: [wide.card_number], strategy: partial, keep_last: 4}\n",
    "  - name: mask-ssn\n",
    "    when: {groups: [agents]}\n",
    "    targets: [pg]\n",
    "    mask: {columns: [wide.ssn], strategy: hash}\n",
);

/// The table: ~100-byte notes, an email address in the notes of every 10th row.
fn create_table_sql(rows: u64) -> String {
    format!(
        "CREATE TABLE wide (id bigint PRIMARY KEY, name text, email text, card_number text, \
           ssn text, phone text, notes text, created timestamptz);\n\
         INSERT INTO wide SELECT i, \
           'Customer ' || i, \
           'user' || i || '@example.com', \
           '4' || lpad(((i * 7919) % 1000000000000000)::text, 15, '0'), \
           (100 + i % 800) || '-' || (10 + i % 90) || '-' || (1000 + i % 9000), \
           '+1-555-' || (100 + i % 900) || '-' || (1000 + i % 9000), \
           CASE WHEN i % 10 = 0 \
             THEN 'asked to be contacted at contact' || i || '@example.org about the renewal of the annual plan.' \
             ELSE 'prefers a phone call in the afternoon; renewal of the annual support plan due next quarter.' END, \
           timestamptz '2024-01-01 00:00:00+00' + i * interval '1 minute' \
         FROM generate_series(1::bigint, {rows}) AS i;\n\
         VACUUM ANALYZE wide;\n\
         CHECKPOINT;\n"
    )
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Contender {
    Direct,
    NoMask,
    Masked,
}

const CONTENDERS: [Contender; 3] = [Contender::Direct, Contender::NoMask, Contender::Masked];

impl Contender {
    fn label(self) -> &'static str {
        match self {
            Contender::Direct => "direct",
            Contender::NoMask => "agentgate, no mask rule",
            Contender::Masked => "agentgate, mask rules",
        }
    }
}

/// (label, bench-stream protocol).
const FORMATS: [(&str, &str); 2] = [
    ("text format (simple query protocol)", "simple"),
    ("binary format (extended protocol)", "extended"),
];

/// One streamed query.
#[derive(Clone, Debug)]
struct Run {
    rows: u64,
    bytes: u64,
    secs: f64,
    /// Text values containing `@`.
    at_values: u64,
    /// (column, value as text) in column order.
    first_row: Vec<(String, Value)>,
    /// Through the gateway: its VmRSS before the query, its VmHWM after it (KiB), its CPU
    /// seconds during the query.
    gateway: Option<(u64, u64, f64)>,
}

pub fn masking(rows: u64, reps: usize) -> anyhow::Result<()> {
    if rows < SMALL_DIVISOR {
        bail!("--mask-rows must be at least {SMALL_DIVISOR}");
    }
    let client = build_client()?;
    let sizes = [rows, rows / SMALL_DIVISOR];
    let cases: Vec<(usize, u64)> = (0..FORMATS.len())
        .flat_map(|f| sizes.iter().map(move |&n| (f, n)))
        .collect();
    eprintln!(
        "bench: masking section: a {rows}-row table, then {} streamed queries",
        cases.len() * CONTENDERS.len() * reps
    );

    let mut p = PgGateway::start(
        "bench-mask",
        LISTEN_PORT,
        PG_PORT,
        PgOptions::default(),
        &PgTargetOptions::default(),
    );
    let started = Instant::now();
    p.pg.sql_in("agentdb", &create_table_sql(rows));
    let table_mb = p.pg.sql_in(
        "agentdb",
        "SELECT pg_total_relation_size('wide') / 1000000;",
    );
    eprintln!(
        "bench: masking: table wide filled ({rows} rows, {table_mb} MB on disk) in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let key = std::env::temp_dir().join(format!("{}-mask-key", p.name));
    let _key = KeyFile::write(&key)?;
    let plain = pg_policy(
        p.listen,
        &p.name,
        p.pg.port,
        &p.secret,
        &p.token.path,
        &PgTargetOptions::default(),
    );
    let masked = pg_policy(
        p.listen,
        &p.name,
        p.pg.port,
        &p.secret,
        &p.token.path,
        &PgTargetOptions {
            extra_rules: MASK_RULES.into(),
            ..PgTargetOptions::default()
        },
    );
    let listen_line = format!("gateway:\n  listen_port: {}\n", p.listen);
    if !masked.contains(&listen_line) {
        bail!("pg_policy() changed: no `{listen_line}` to add mask_key after");
    }
    let masked = masked.replace(
        &listen_line,
        &format!(
            "{listen_line}  mask_key: {{from: file, path: {}}}\n",
            key.display()
        ),
    );

    // Warm-up (not counted): the table into the page cache, the server's first scan done.
    stream(&client, &p, Contender::Direct, "simple", &query(rows, rows))?;

    // results[case][path]
    let mut results: Vec<[Vec<Run>; 3]> = vec![Default::default(); cases.len()];
    for rep in 0..reps {
        for (c, &(f, n)) in cases.iter().enumerate() {
            for k in 0..CONTENDERS.len() {
                // Rotate the order by repetition and case, so no path always goes first.
                let path = CONTENDERS[(k + rep + c) % CONTENDERS.len()];
                if !p.wait_no_upstream(Duration::from_secs(15)) {
                    bail!(
                        "{} upstream sessions still open 15 s after the previous query",
                        p.upstream_backends()
                    );
                }
                match path {
                    Contender::Direct => {}
                    Contender::NoMask => fresh_gateway(&mut p, &plain)?,
                    Contender::Masked => fresh_gateway(&mut p, &masked)?,
                }
                let run = stream(&client, &p, path, FORMATS[f].1, &query(rows, n))?;
                check(&run, path, n, FORMATS[f].1)?;
                results[c][path as usize].push(run);
            }
        }
        eprintln!(
            "bench: masking repetition {}/{reps} done ({:.0} s)",
            rep + 1,
            started.elapsed().as_secs_f64()
        );
    }

    print(&results, &cases, rows, reps);
    drop(p);
    Ok(())
}

fn query(rows: u64, n: u64) -> String {
    if n == rows {
        "SELECT * FROM wide".into()
    } else {
        format!("SELECT * FROM wide LIMIT {n}")
    }
}

/// Writes the policy and starts the gateway again: a fresh process, so its VmHWM is this run's.
fn fresh_gateway(p: &mut PgGateway, policy: &str) -> anyhow::Result<()> {
    fs::write(p.gw.policy_dir().join("policy.yaml"), policy).context("write the policy")?;
    crate::bench_pg::fresh_gateway(p, false)
}

/// One `bench-stream` run of `query`, directly or from the agent cgroup through the gateway.
fn stream(
    client: &Path,
    p: &PgGateway,
    path: Contender,
    protocol: &str,
    query: &str,
) -> anyhow::Result<Run> {
    let conninfo = match path {
        Contender::Direct => p.direct_conninfo(ROLE_SCRAM),
        _ => p.agent_conninfo(&agent_jwt("bench-agent"), "disable"),
    };
    let mut cmd = Command::new(client);
    cmd.args([protocol, &conninfo, query]);
    let gw_pid = (path != Contender::Direct).then(|| p.gw.pid());
    if gw_pid.is_some() {
        place(&mut cmd, Some(&p.agent), None);
    }
    let before = gw_pid.map(util::proc_stats).transpose()?;
    let what = format!("bench-stream {protocol} {query:?} ({})", path.label());
    let out = cmd.output().with_context(|| format!("run {what}"))?;
    let after = gw_pid.map(util::proc_stats).transpose()?;
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{what} printed {:?}, stderr {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(e) = v.get("error") {
        bail!("{what}: {e}");
    }
    let field = |k: &str| {
        v[k].as_f64()
            .with_context(|| format!("{what}: no `{k}` in {v}"))
    };
    Ok(Run {
        rows: field("rows")? as u64,
        bytes: field("bytes")? as u64,
        secs: field("secs")?,
        at_values: field("at_values")? as u64,
        first_row: v["first_row"]
            .as_array()
            .map(|cols| {
                cols.iter()
                    .map(|c| (c[0].as_str().unwrap_or("").to_string(), c[1].clone()))
                    .collect()
            })
            .unwrap_or_default(),
        gateway: before
            .zip(after)
            .map(|(b, a)| (b.rss_kib, a.hwm_kib, a.cpu_secs() - b.cpu_secs())),
    })
}

/// The run returned every row, values unmasked without mask rules and masked with them.
fn check(run: &Run, path: Contender, n: u64, protocol: &str) -> anyhow::Result<()> {
    let what = format!("{} ({protocol})", path.label());
    if run.rows != n {
        bail!("{what}: {} rows, expected {n}", run.rows);
    }
    let text = |k: &str| first_value(run, k).as_str().unwrap_or("").to_string();
    let row = Value::Array(
        run.first_row
            .iter()
            .map(|(k, v)| serde_json::json!([k, v]))
            .collect(),
    );
    // An email in every row's email column: without masking each row has an `@` value.
    let at = run.at_values;
    match path {
        Contender::Direct | Contender::NoMask => {
            if at < n || !text("email").contains('@') {
                bail!(
                    "{what}: expected the real values, got {at} values with `@`, first row {row}"
                );
            }
        }
        Contender::Masked => {
            let card = text("card_number");
            if at != 0
                || text("email") != "****"
                || !(card.starts_with("****") && card.len() == 8)
                || !text("ssn").starts_with("hmac:")
            {
                bail!(
                    "{what}: the mask rules were not applied as specified ({at} values with `@`, \
                     first row {row}): has the gateway got masking?"
                );
            }
        }
    }
    Ok(())
}

fn print(results: &[[Vec<Run>; 3]], cases: &[(usize, u64)], rows: u64, reps: usize) {
    let mib = |kib: f64| kib / 1024.0;
    md!(
        "\n### masking: `SELECT * FROM wide` streamed, direct vs through agentgate without and \
         with mask rules ({reps} repetitions)\n"
    );
    md!(
        "Table `wide`: {rows} rows of id bigint, name, email, card_number, ssn, phone, notes \
         (~100 bytes; an email address in every 10th row), created timestamptz; the smaller \
         result is `SELECT * FROM wide LIMIT {}`. Client: bench-stream (tokio-postgres, reads \
         row by row and keeps nothing; counts the bytes received on its socket during the \
         query: MB/s = 10^6 bytes of result as received, smaller when values are masked). text \
         = simple query protocol (as psql); binary = extended protocol, binary results (as \
         typed drivers). direct: `{ROLE_SCRAM}` from an unmanaged process; through agentgate: \
         from the agent cgroup, JWT as the password. Mask rules: `wide.email` redact with the \
         `email` detector on every value (text columns in binary format), `wide.card_number` \
         partial (keep_last 4), `wide.ssn` hash. Each gateway run starts a fresh gateway: RSS \
         idle = its VmRSS before the query, peak = its VmHWM after (startup included); gateway \
         CPU = its user+system time during the query.",
        rows / SMALL_DIVISOR
    );
    let mut summary = Vec::new();
    for (f, (label, _)) in FORMATS.iter().enumerate() {
        md!("\n#### {label}\n");
        md!("| rows | path | rows/s (median) | rows/s min–max | MB/s (median) | query s (median) | gateway CPU s (median) | gateway RSS idle MiB (median) | gateway peak RSS MiB (median) | peak min–max | rows/s ratio to direct |");
        md!("|---|---|---|---|---|---|---|---|---|---|---|");
        for (c, &(_, n)) in cases.iter().enumerate().filter(|(_, c)| c.0 == f) {
            let runs = &results[c];
            let rate = |r: &Run| r.rows as f64 / r.secs;
            let base = median(runs[0].iter().map(rate).collect());
            let mut line = (n, [f64::NAN; 3], [f64::NAN; 3]);
            for path in CONTENDERS {
                let runs = &runs[path as usize];
                let rates: Vec<f64> = runs.iter().map(rate).collect();
                let (lo, hi) = min_max(&rates);
                let r = median(rates);
                let mbs = median(runs.iter().map(|r| r.bytes as f64 / r.secs / 1e6).collect());
                let secs = median(runs.iter().map(|r| r.secs).collect());
                let gw: Vec<(u64, u64, f64)> = runs.iter().filter_map(|r| r.gateway).collect();
                let (cpu, idle, peak, peak_range) = if gw.is_empty() {
                    ("—".into(), "—".into(), "—".into(), "—".into())
                } else {
                    let peaks: Vec<f64> = gw.iter().map(|g| mib(g.1 as f64)).collect();
                    let (plo, phi) = min_max(&peaks);
                    let peak = median(peaks);
                    line.2[path as usize] = peak;
                    (
                        format!("{:.2}", median(gw.iter().map(|g| g.2).collect())),
                        format!(
                            "{:.1}",
                            median(gw.iter().map(|g| mib(g.0 as f64)).collect())
                        ),
                        format!("{peak:.1}"),
                        format!("{plo:.1}–{phi:.1}"),
                    )
                };
                line.1[path as usize] = r / base;
                md!(
                    "| {n} | {} | {r:.0} | {lo:.0}–{hi:.0} | {mbs:.0} | {secs:.2} | {cpu} | {idle} | {peak} | {peak_range} | {:.2} |",
                    path.label(),
                    r / base
                );
            }
            summary.push((f, line));
        }
    }
    md!("\n#### ratios of rows/s, and the gateway's peak RSS by result size\n");
    md!("| format | rows | no mask rule / direct | mask rules / direct | mask rules / no mask rule | peak RSS MiB, no mask rule | peak RSS MiB, mask rules |");
    md!("|---|---|---|---|---|---|---|");
    for (f, (n, ratio, peak)) in summary {
        let format = FORMATS[f]
            .1
            .replace("simple", "text")
            .replace("extended", "binary");
        md!(
            "| {format} | {n} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} |",
            ratio[1],
            ratio[2],
            ratio[2] / ratio[1],
            peak[1],
            peak[2]
        );
    }
    goals(results, cases);
    // What the agent received: the first row, text format, direct vs with the mask rules.
    if let (Some(direct), Some(masked)) = (results[0][0].first(), results[0][2].first()) {
        md!("\nThe first row in text format, direct and as received through the mask rules:\n");
        md!("| column | direct | through agentgate, mask rules |");
        md!("|---|---|---|");
        let show = |v: &Value| match v {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        for (k, v) in &direct.first_row {
            md!("| {k} | {} | {} |", show(v), show(&first_value(masked, k)));
        }
    }
}

/// The masking goals: at least 1M rows per second per core with the mask rules (rows ÷ the
/// gateway's CPU seconds), and the gateway's peak memory flat in the result size.
fn goals(results: &[[Vec<Run>; 3]], cases: &[(usize, u64)]) {
    md!("\n#### against the goals\n");
    md!("| goal | format | figure | goal met | gap |");
    md!("|---|---|---|---|---|");
    for (f, (_, protocol)) in FORMATS.iter().enumerate() {
        let format = if *protocol == "simple" {
            "text"
        } else {
            "binary"
        };
        let masked: Vec<(u64, &Vec<Run>)> = cases
            .iter()
            .enumerate()
            .filter(|(_, c)| c.0 == f)
            .map(|(c, &(_, n))| (n, &results[c][Contender::Masked as usize]))
            .collect();
        let gateway = |runs: &Vec<Run>, pick: fn(&(u64, u64, f64)) -> f64| {
            median(
                runs.iter()
                    .filter_map(|r| r.gateway.as_ref())
                    .map(pick)
                    .collect(),
            )
        };
        if let Some((n, runs)) = masked.iter().max_by_key(|(n, _)| *n) {
            let cpu = gateway(runs, |g| g.2);
            let per_core = *n as f64 / cpu;
            // /proc counts CPU time in 10 ms ticks: a margin smaller than one tick is no margin.
            let tick = 0.01 / cpu;
            let met = if per_core >= 1e6 * (1.0 + tick) {
                "yes"
            } else if per_core >= 1e6 * (1.0 - tick) {
                "at the goal, within the 10 ms resolution of /proc CPU time"
            } else {
                "no"
            };
            md!(
                "| ≥ 1M rows/s per core, mask rules | {format}, {n} rows | {per_core:.0} rows per \
                 gateway CPU-second ({:.2} µs of gateway CPU per row, ± {:.0} %) | {met} | {} |",
                cpu * 1e6 / *n as f64,
                tick * 100.0,
                if met == "no" {
                    format!("{:.0} % short", (1.0 - per_core / 1e6) * 100.0)
                } else {
                    "—".to_string()
                }
            );
        }
        if let (Some((big_n, big)), Some((small_n, small))) = (
            masked.iter().max_by_key(|(n, _)| *n),
            masked.iter().min_by_key(|(n, _)| *n),
        ) {
            let (hi, lo) = (gateway(big, |g| g.1 as f64), gateway(small, |g| g.1 as f64));
            // Flat: five times the rows may not cost more than 10 % (or 2 MiB) more memory.
            let flat = hi <= (lo * 1.1).max(lo + 2048.0);
            md!(
                "| peak RSS flat in the result size, mask rules | {format} | {:.1} MiB at \
                 {small_n} rows, {:.1} MiB at {big_n} rows | {} | {} |",
                lo / 1024.0,
                hi / 1024.0,
                if flat { "yes" } else { "no" },
                if flat {
                    "—".to_string()
                } else {
                    format!("{:.1} MiB more", (hi - lo) / 1024.0)
                }
            );
        }
    }
}

/// The value of column `k` in the run's first row (null if there is no such column).
fn first_value(run: &Run, k: &str) -> Value {
    run.first_row
        .iter()
        .find(|(c, _)| c == k)
        .map_or(Value::Null, |(_, v)| v.clone())
}

/// Builds the streaming client (release: the client should not be the bottleneck).
fn build_client() -> anyhow::Result<PathBuf> {
    util::run(Command::new("cargo").current_dir(util::root()).args([
        "build",
        "--release",
        "-p",
        "xtask",
        "--bin",
        "bench-stream",
    ]))?;
    Ok(std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| util::root().join("target"))
        .join("release/bench-stream"))
}

/// The HMAC key of the `hash` strategy, mode 0600; removed on drop.
struct KeyFile(PathBuf);

impl KeyFile {
    fn write(path: &Path) -> anyhow::Result<Self> {
        let mut key = [0u8; 32];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))
            .context("read /dev/urandom")?;
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        fs::write(path, format!("{hex}\n")).with_context(|| format!("write {}", path.display()))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        Ok(Self(path.to_path_buf()))
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}
