//! `cargo xtask bench`: side by side in one run, contenders alternating run by run.
//!
//! Capture overhead:
//! - connect() latency to 127.0.0.2 from (a) a process with no hook, (b) a managed cgroup to a
//!   destination that is not a target (hook runs, passes), (c) a managed cgroup to a target
//!   (hook runs, redirects to the gateway listener);
//! - bulk upload throughput to a sink: direct vs through the gateway's TCP relay.
//!
//! PostgreSQL (a throwaway PostgreSQL 15 on 127.0.0.1:18011, the gateway listening on 18010):
//! - `pgbench -S` (select-only, scale 1) in the simple, extended and prepared protocols with 1
//!   and 8 clients, and with `-C` (a new connection per transaction), each directly as the
//!   upstream role vs from the agent cgroup through the gateway (JWT as the password).
//!
//! Masking (a PostgreSQL 15 on 127.0.0.1:18021, the gateway on 18020; see bench_mask.rs):
//! - `SELECT * FROM wide` (1 000 000 rows with PII columns by default, and a fifth of it)
//!   streamed by a client that keeps nothing, in text and in binary format, directly vs through
//!   the gateway without mask rules vs with mask rules: rows/s, MB/s, the gateway's peak RSS.
//!
//! Recording (a durable PostgreSQL 15 on 127.0.0.1:7451, the gateway on 7450; see
//! bench_record.rs):
//! - pgbench reads, one-INSERT writes and TPC-B-like transactions (4 clients) through the gateway
//!   with its audit writer in the loop vs with `--record-off`: TPS, records/s written, record DB
//!   bytes per 1000 statements.

use std::{net::SocketAddr, process::Command, time::Duration};

use agentgate_tests::{
    mint, now,
    pg::{
        pgbench_command, PgGateway, PgOptions, PgTargetOptions, ROLE_PASSWORD, ROLE_SCRAM,
        SUPERUSER_PASSWORD,
    },
    place, policy, Cgroup, Gateway, TargetServer, TokenFile,
};
use anyhow::{bail, Context};
use serde_json::Value;

use crate::util;

/// Which sections `cargo xtask bench` runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Only {
    /// connect() latency and TCP relay throughput.
    Capture,
    /// pgbench direct vs through the gateway.
    Postgres,
    /// A wide PII table streamed direct vs through the gateway without and with mask rules.
    Masking,
    /// pgbench reads and writes through the gateway with its audit writer vs `--record-off`.
    Record,
}

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Repetitions of each measurement (contenders alternate within each repetition).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Bytes per throughput run.
    #[arg(long, default_value_t = 1 << 30)]
    pub bytes: u64,
    /// connect() calls per latency run.
    #[arg(long, default_value_t = 2000)]
    pub connects: usize,
    /// Run only this section (default: all).
    #[arg(long, value_enum)]
    pub only: Option<Only>,
    /// Seconds per pgbench run (`-T`), also of the recording section.
    #[arg(long, default_value_t = 10)]
    pub pg_secs: u64,
    /// Repetitions of each pgbench, masking and recording measurement (contenders alternate
    /// within each).
    #[arg(long, default_value_t = 3)]
    pub pg_reps: usize,
    /// Rows of the masking section's table (its second result size is a fifth of this).
    #[arg(long, default_value_t = 1_000_000)]
    pub mask_rows: u64,
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    util::require_root("the benchmark")?;
    if o.pg_secs == 0 || o.pg_reps == 0 || o.reps == 0 {
        bail!("--reps, --pg-reps and --pg-secs must be at least 1");
    }
    let bins = util::build(true)?;
    std::env::set_var("AGENTGATE_BIN", &bins.agentgate);
    std::env::set_var("AGENT_PROBE_BIN", &bins.probe);
    std::env::set_var("PG_AGENT_BIN", &bins.pg_agent);

    let kernel = String::from_utf8_lossy(&Command::new("uname").arg("-r").output()?.stdout)
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mut command = String::from("cargo xtask bench");
    if let Some(only) = o.only {
        command += &format!(" --only {}", format!("{only:?}").to_lowercase());
    }
    let runs = |section: Only| o.only.is_none_or(|only| only == section);
    if runs(Only::Capture) {
        command += &format!(
            " --reps {} --bytes {} --connects {}",
            o.reps, o.bytes, o.connects
        );
    }
    if runs(Only::Postgres) || runs(Only::Record) {
        command += &format!(" --pg-secs {}", o.pg_secs);
    }
    if runs(Only::Postgres) || runs(Only::Masking) || runs(Only::Record) {
        command += &format!(" --pg-reps {}", o.pg_reps);
    }
    if runs(Only::Masking) {
        command += &format!(" --mask-rows {}", o.mask_rows);
    }
    println!("\n## agentgate benchmark\n");
    println!("machine: {cores} cores, kernel {kernel}; contenders alternating run by run");
    println!("command: {command}");

    if runs(Only::Capture) {
        capture(o.reps, o.bytes, o.connects)?;
    }
    if runs(Only::Postgres) {
        postgres(o.pg_secs, o.pg_reps)?;
    }
    if runs(Only::Masking) {
        crate::bench_mask::masking(o.mask_rows, o.pg_reps)?;
    }
    if runs(Only::Record) {
        crate::bench_record::recording(o.pg_secs, o.pg_reps)?;
    }
    Ok(())
}

/// connect() latency and relay throughput; prints its tables.
fn capture(reps: usize, bytes: u64, connects: usize) -> anyhow::Result<()> {
    let name = format!("agbench-{}", std::process::id());
    let _anchor = Cgroup::create(&format!("/{name}"));
    let agent = Cgroup::create(&format!("/{name}/job-1"));
    let target: SocketAddr = "127.0.0.2:18001".parse()?;
    let non_target: SocketAddr = "127.0.0.3:18001".parse()?;
    let _sink = TargetServer::start_sink(target);
    let _other = TargetServer::start_sink(non_target);
    let token = TokenFile::valid("bench");
    let gw = Gateway::start(
        "bench",
        &policy(
            18000,
            &format!("/{name}/job-*"),
            "host",
            &["127.0.0.2"],
            18001,
            &token.path,
        ),
    );
    gw.wait_classified(&agent.rel);

    let contenders_connect: [(&str, Option<&Cgroup>, SocketAddr); 3] = [
        ("no hook (unmanaged process)", None, target),
        ("hook, destination not a target", Some(&agent), non_target),
        ("hook, redirected to gateway", Some(&agent), target),
    ];
    let mut lat: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); 3];
    let mut thr: Vec<Vec<f64>> = vec![Vec::new(); 2];
    for rep in 0..reps {
        // Rotate the order each repetition so no contender always goes first.
        for k in 0..3 {
            let i = (k + rep) % 3;
            let (_, cg, addr) = &contenders_connect[i];
            let v = probe_json(
                *cg,
                &["connect-bench", &addr.to_string(), &connects.to_string()],
            )?;
            lat[i].push((num(&v, "mean_us")?, num(&v, "p50_us")?, num(&v, "p99_us")?));
        }
        // Alternate which side goes first, so neither always runs on a warmer machine.
        let order: [(usize, Option<&Cgroup>); 2] = if rep % 2 == 0 {
            [(0, None), (1, Some(&agent))]
        } else {
            [(1, Some(&agent)), (0, None)]
        };
        for (i, cg) in order {
            let v = probe_json(cg, &["throughput", &target.to_string(), &bytes.to_string()])?;
            thr[i].push(num(&v, "mb_per_s")?);
        }
        eprintln!("bench: repetition {}/{reps} done", rep + 1);
    }

    println!("\n### capture ({reps} repetitions)\n");
    println!("| connect() | p50 µs (median) | p50 min–max | mean µs (median) | p99 µs (median) | p50 ratio to no hook |");
    println!("|---|---|---|---|---|---|");
    let base = median(lat[0].iter().map(|x| x.1).collect());
    for (i, (label, _, _)) in contenders_connect.iter().enumerate() {
        let col = |f: fn(&(f64, f64, f64)) -> f64| lat[i].iter().map(f).collect::<Vec<f64>>();
        let p50s = col(|x| x.1);
        let (lo, hi) = min_max(&p50s);
        let m = median(p50s);
        println!(
            "| {label} | {m:.1} | {lo:.1}–{hi:.1} | {:.1} | {:.1} | {:.2} |",
            median(col(|x| x.0)),
            median(col(|x| x.2)),
            m / base
        );
    }
    println!(
        "\n| upload {} MiB to a sink | MB/s (median) | min–max | ratio to direct |",
        bytes >> 20
    );
    println!("|---|---|---|---|");
    let direct = median(thr[0].clone());
    for (i, label) in ["direct", "through agentgate (tcp relay)"]
        .iter()
        .enumerate()
    {
        let (lo, hi) = min_max(&thr[i]);
        let m = median(thr[i].clone());
        println!("| {label} | {m:.0} | {lo:.0}–{hi:.0} | {:.2} |", m / direct);
    }
    Ok(())
}

/// Gateway listener and PostgreSQL ports of the PostgreSQL section (bench only).
const PG_LISTEN_PORT: u16 = 18010;
const PG_PORT: u16 = 18011;
/// The database pgbench runs in (`pgbench -i -s 1`: 100 000 accounts).
const PG_BENCH_DB: &str = "bench";
const PG_CLIENTS: [usize; 2] = [1, 8];
/// pgbench's `-M` modes; the last group is `-C` (simple protocol, a new connection per
/// transaction).
const PG_GROUPS: [&str; 4] = ["simple", "extended", "prepared", "connect"];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Via {
    Direct,
    Gateway,
}

impl Via {
    fn label(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Gateway => "through agentgate",
        }
    }
}

/// What one pgbench run reported.
#[derive(Clone, Copy, Debug)]
struct PgRun {
    tps: f64,
    latency_ms: f64,
    /// `-C` only: "average connection time".
    connect_ms: Option<f64>,
}

/// pgbench direct vs through the gateway; prints its tables. Everything it starts (PostgreSQL,
/// the gateway, the cgroups) lives in `p` and is stopped and removed when `p` drops, also on an
/// early return or a panic.
fn postgres(secs: u64, reps: usize) -> anyhow::Result<()> {
    let cases: Vec<(usize, usize)> = (0..PG_GROUPS.len())
        .flat_map(|g| PG_CLIENTS.iter().map(move |&c| (g, c)))
        .collect();
    let total = cases.len() as u64 * 2 * reps as u64 * secs;
    eprintln!(
        "bench: PostgreSQL section: {} pgbench runs of {secs} s (about {} min)",
        cases.len() * 2 * reps,
        total.div_ceil(60)
    );
    let p = PgGateway::start(
        "bench-pg",
        PG_LISTEN_PORT,
        PG_PORT,
        PgOptions::default(),
        &PgTargetOptions::default(),
    );
    pgbench_init(&p.pg, PG_BENCH_DB)?;
    p.pg.sql_in(
        PG_BENCH_DB,
        &format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {ROLE_SCRAM};"),
    );
    let version = Command::new(pgbench_command("127.0.0.1", 0, "", "").get_program())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();

    // results[case][via as usize]
    let mut results: Vec<[Vec<PgRun>; 2]> = vec![[Vec::new(), Vec::new()]; cases.len()];
    let started = std::time::Instant::now();
    for rep in 0..reps {
        for (k, &(g, clients)) in cases.iter().enumerate() {
            // Alternate which side goes first, by repetition and by case.
            let order = if (rep + k) % 2 == 0 {
                [Via::Direct, Via::Gateway]
            } else {
                [Via::Gateway, Via::Direct]
            };
            for via in order {
                // Each run starts on an idle server: the previous run's sessions are gone.
                if !p.wait_no_upstream(Duration::from_secs(15)) {
                    bail!(
                        "{} upstream sessions still open 15 s after the previous pgbench run",
                        p.upstream_backends()
                    );
                }
                let args = pgbench_args(PG_GROUPS[g], clients, secs);
                let run = pgbench(&p, via, &args)?;
                results[k][via as usize].push(run);
            }
        }
        eprintln!(
            "bench: PostgreSQL repetition {}/{reps} done ({:.0} s)",
            rep + 1,
            started.elapsed().as_secs_f64()
        );
    }

    println!(
        "\n### PostgreSQL: pgbench -S, direct vs through agentgate ({reps} repetitions of {secs} s)\n"
    );
    println!(
        "{version}, scale 1, server and gateway on loopback. direct: `{ROLE_SCRAM}` (SCRAM) \
         from an unmanaged process; through agentgate: from the agent cgroup, JWT as the \
         password, the gateway logs in upstream as `{ROLE_SCRAM}` (SCRAM) and records every \
         statement. Medians over repetitions (N = clients, `-j min(N,2)`); added latency = \
         median gateway latency − median direct latency. With `-C`, pgbench's latency includes \
         connecting (and, with more clients than threads, waiting for the thread's other \
         clients); added connect = the same difference of pgbench's average connection time."
    );
    let mut summary = Vec::new();
    for (g, mode) in PG_GROUPS.iter().enumerate() {
        let connect = *mode == "connect";
        // The group's command line with the client count as N.
        let args = pgbench_args(mode, 0, secs);
        let example = args
            .iter()
            .zip(std::iter::once("").chain(args.iter().map(String::as_str)))
            .map(|(a, prev)| match prev {
                "-c" => "N",
                "-j" => "min(N,2)",
                _ => a.as_str(),
            })
            .collect::<Vec<_>>()
            .join(" ");
        if connect {
            println!("\n#### `pgbench {example}` (a new connection per transaction; TPS = connections/s)\n");
            println!("| clients | path | TPS (median) | TPS min–max | latency avg ms (median) | connect ms (median) | TPS ratio to direct | added latency µs | added connect µs |");
            println!("|---|---|---|---|---|---|---|---|---|");
        } else {
            println!("\n#### `pgbench {example}`\n");
            println!("| clients | path | TPS (median) | TPS min–max | latency avg ms (median) | TPS ratio to direct | added latency µs |");
            println!("|---|---|---|---|---|---|---|");
        }
        for (k, &(_, clients)) in cases.iter().enumerate().filter(|(_, c)| c.0 == g) {
            let col = |via: Via, f: fn(&PgRun) -> f64| -> Vec<f64> {
                results[k][via as usize].iter().map(f).collect()
            };
            let base_tps = median(col(Via::Direct, |r| r.tps));
            let base_lat = median(col(Via::Direct, |r| r.latency_ms));
            let connect_ms = |r: &PgRun| r.connect_ms.unwrap_or(f64::NAN);
            let base_conn = median(col(Via::Direct, connect_ms));
            for via in [Via::Direct, Via::Gateway] {
                let tps = col(via, |r| r.tps);
                let (lo, hi) = min_max(&tps);
                let tps = median(tps);
                let lat = median(col(via, |r| r.latency_ms));
                let conn = median(col(via, connect_ms));
                let ratio = tps / base_tps;
                let (added, added_conn) = if via == Via::Direct {
                    ("—".to_string(), "—".to_string())
                } else {
                    let us = (lat - base_lat) * 1000.0;
                    let conn_us = connect.then_some((conn - base_conn) * 1000.0);
                    summary.push((mode, clients, ratio, us, conn_us));
                    (
                        format!("{us:+.0}"),
                        format!("{:+.0}", (conn - base_conn) * 1000.0),
                    )
                };
                let conn_cols = if connect {
                    (format!(" {conn:.3} |"), format!(" {added_conn} |"))
                } else {
                    (String::new(), String::new())
                };
                println!(
                    "| {clients} | {} | {tps:.0} | {lo:.0}–{hi:.0} | {lat:.3} |{} {ratio:.2} | {added} |{}",
                    via.label(),
                    conn_cols.0,
                    conn_cols.1
                );
            }
        }
    }
    println!("\n#### ratios, through agentgate / direct\n");
    println!("| pgbench -S | clients | TPS ratio | added latency µs | added connect µs |");
    println!("|---|---|---|---|---|");
    for (mode, clients, ratio, us, conn_us) in summary {
        let mode = if *mode == "connect" {
            "-C (simple)".to_string()
        } else {
            format!("-M {mode}")
        };
        let conn_us = conn_us.map_or("—".to_string(), |c| format!("{c:+.0}"));
        println!("| {mode} | {clients} | {ratio:.2} | {us:+.0} | {conn_us} |");
    }
    drop(p);
    Ok(())
}

/// `pgbench` arguments (besides host, port, user, database) of a group's run.
fn pgbench_args(group: &str, clients: usize, secs: u64) -> Vec<String> {
    let mut args: Vec<String> = vec!["-S".into(), "-n".into()];
    if group == "connect" {
        args.extend(["-C".into(), "-M".into(), "simple".into()]);
    } else {
        args.extend(["-M".into(), group.into()]);
    }
    args.extend([
        "-c".into(),
        clients.to_string(),
        "-j".into(),
        clients.min(2).to_string(),
        "-T".into(),
        secs.to_string(),
    ]);
    args
}

/// One pgbench run, directly as the upstream role or from the agent cgroup through the gateway.
/// Through the gateway the user is `agent` and the password a fresh JWT: PostgreSQL itself
/// rejects both (pg_hba), so a run that succeeds went through the gateway.
fn pgbench(p: &PgGateway, via: Via, args: &[String]) -> anyhow::Result<PgRun> {
    let (user, password) = match via {
        Via::Direct => (ROLE_SCRAM, ROLE_PASSWORD.to_string()),
        Via::Gateway => (
            "agent",
            mint("bench-agent", &["agents"], now(), now() + 600),
        ),
    };
    let mut cmd = pgbench_command("127.0.0.1", p.pg.port, user, PG_BENCH_DB);
    cmd.args(args).env("PGPASSWORD", &password);
    if via == Via::Gateway {
        place(&mut cmd, Some(&p.agent), None);
    }
    let what = format!("pgbench {} ({})", args.join(" "), via.label());
    let out = cmd.output().with_context(|| format!("run {what}"))?;
    let text = output_text(&out);
    if !out.status.success() {
        bail!("{what} failed ({}):\n{text}", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    // "tps = 1234.5 (without initial connection time)", with -C "(including reconnection times)".
    let tps = stat(&stdout, "tps = ").with_context(|| format!("{what} printed no tps:\n{text}"))?;
    let latency_ms = stat(&stdout, "latency average = ")
        .with_context(|| format!("{what} printed no average latency:\n{text}"))?;
    let connect_ms = stat(&stdout, "average connection time = ");
    let processed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|r| r.split('/').next())
        .and_then(|n| n.trim().parse::<u64>().ok());
    if processed.unwrap_or(0) == 0 || tps.is_nan() || tps <= 0.0 {
        bail!("{what} processed no transactions:\n{text}");
    }
    if let Some(failed) = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
    {
        if failed > 0 {
            bail!("{what}: {failed} transactions failed:\n{text}");
        }
    }
    if args.iter().any(|a| a == "-C") && connect_ms.is_none() {
        bail!("{what} printed no average connection time:\n{text}");
    }
    Ok(PgRun {
        tps,
        latency_ms,
        connect_ms,
    })
}

/// The number after `prefix` at the start of a line of pgbench's report.
/// A new database `db` with pgbench's tables at scale 1.
pub(crate) fn pgbench_init(pg: &agentgate_tests::pg::PgServer, db: &str) -> anyhow::Result<()> {
    pg.create_db(db);
    let init = pgbench_command("127.0.0.1", pg.port, "postgres", db)
        .args(["-i", "-s", "1", "-q"])
        .env("PGPASSWORD", SUPERUSER_PASSWORD)
        .output()
        .context("run pgbench -i")?;
    if !init.status.success() {
        bail!(
            "pgbench -i -s 1 failed ({}):\n{}",
            init.status,
            output_text(&init)
        );
    }
    Ok(())
}

pub(crate) fn stat(report: &str, prefix: &str) -> Option<f64> {
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

pub(crate) fn output_text(out: &std::process::Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

fn probe_json(cgroup: Option<&Cgroup>, args: &[&str]) -> anyhow::Result<Value> {
    let mut cmd = Command::new(agentgate_tests::probe_bin());
    cmd.args(args);
    place(&mut cmd, cgroup, None);
    let out = cmd.output().context("agent-probe")?;
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "agent-probe said {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    if let Some(e) = v.get("error") {
        bail!("agent-probe {args:?}: {e}");
    }
    Ok(v)
}

fn num(v: &Value, k: &str) -> anyhow::Result<f64> {
    v[k].as_f64().with_context(|| format!("no `{k}` in {v}"))
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub(crate) fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        })
}
