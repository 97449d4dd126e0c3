//! The recording section of `cargo xtask bench` (`--only record`): what the audit journal costs.
//! One PostgreSQL 15 (made durable: fsync and synchronous_commit on) on 127.0.0.1:7451 and the
//! gateway on 7450, started afresh for every run, once with its writer in the loop (the default:
//! every statement a record, every privileged statement forwarded only once its intent has
//! committed) and once with `--record-off` (the recorder discards), alternating. Workloads, 4
//! clients each, from the agent cgroup through the gateway: `pgbench -S` (reads), a one-INSERT
//! script (every statement privileged) and pgbench's TPC-B-like default. Reported: TPS of both
//! and their ratio, the records per second the writer actually committed (audit_log rows added
//! during the run, read from the record DB), and the record DB's size per 1000 statements.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use agentgate_tests::{
    pg::{agent_jwt, output_text, pgbench_command, PgGateway, PgOptions, PgTargetOptions},
    place,
};
use anyhow::{bail, Context};

use crate::{
    bench::{median, min_max},
    bench_pg::{pgbench_report, PgRun},
    report::md,
};

/// Gateway listener and PostgreSQL ports of this section (bench only).
const LISTEN_PORT: u16 = 7450;
const PG_PORT: u16 = 7451;
/// The database pgbench runs in (`pgbench -i -s 1`).
const BENCH_DB: &str = "bench";
const CLIENTS: usize = 4;
/// The custom write script: one INSERT per transaction, no index, no contention.
const INSERT_SCRIPT: &str = "INSERT INTO record_bench (client, note) VALUES (:client_id, 'agentgate recording benchmark');\n";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Recording {
    On,
    Off,
}

impl Recording {
    fn label(self) -> &'static str {
        match self {
            Recording::On => "recording on",
            Recording::Off => "--record-off",
        }
    }
}

struct Workload {
    /// In the tables.
    label: &'static str,
    /// pgbench's script selection (before the common arguments).
    args: Vec<String>,
    /// SQL statements per pgbench transaction.
    statements: u64,
}

/// What one run measured.
#[derive(Clone, Debug)]
struct Run {
    tps: f64,
    latency_ms: f64,
    /// Transactions pgbench completed.
    transactions: u64,
    /// Wall time of the pgbench process.
    secs: f64,
    /// audit_log rows added while pgbench ran.
    records: u64,
    /// After the gateway stopped (its recorder flushed): all records, `statement` records,
    /// `statement_intent` records, and the record DB's size in bytes (its WAL checkpointed).
    total_records: u64,
    statements_on_record: u64,
    intents: u64,
    db_bytes: u64,
    /// The gateway's user + system CPU seconds while pgbench ran (all its threads).
    cpu_secs: f64,
}

pub fn recording(secs: u64, reps: usize) -> anyhow::Result<()> {
    let workloads = [
        Workload {
            label: "`pgbench -S` (reads)",
            args: vec!["-S".into()],
            statements: 1,
        },
        Workload {
            label: "INSERT script (writes)",
            args: vec!["-f".into(), String::new()], // the script's path, below
            statements: 1,
        },
        Workload {
            label: "TPC-B-like (pgbench default)",
            args: Vec::new(),
            statements: 7,
        },
    ];
    eprintln!(
        "bench: recording section: {} pgbench runs of {secs} s, a fresh gateway each (about {} min)",
        workloads.len() * 2 * reps,
        (workloads.len() as u64 * 2 * reps as u64 * (secs + 3)).div_ceil(60)
    );
    let mut p = PgGateway::start(
        "bench-rec",
        LISTEN_PORT,
        PG_PORT,
        PgOptions::default(),
        &PgTargetOptions::default(),
    );
    let script = ScriptFile::write(
        &std::env::temp_dir().join(format!("{}-insert.sql", p.name)),
        INSERT_SCRIPT,
    )?;
    let mut workloads = workloads;
    workloads[1].args[1] = script.0.display().to_string();

    // A database that commits durably, as one in use would (the test harness turns that off).
    for setting in ["fsync", "synchronous_commit", "full_page_writes"] {
        p.pg.sql(&format!("ALTER SYSTEM SET {setting} = on;"));
    }
    p.pg.sql("SELECT pg_reload_conf();");
    std::thread::sleep(Duration::from_millis(500));
    let durable = p.pg.sql("SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes');");
    if durable != "fsync=on, full_page_writes=on, synchronous_commit=on" {
        bail!("PostgreSQL did not take the durable settings: {durable}");
    }
    crate::bench_pg::pgbench_init(&p.pg, BENCH_DB)?;
    // create_db gives the agentgate_* roles every privilege on the tables created in it.
    p.pg.sql_in(
        BENCH_DB,
        "CREATE TABLE record_bench (client int, at timestamptz DEFAULT now(), note text);",
    );
    let fs_type = Command::new("df")
        .args(["--output=fstype"])
        .arg(&p.gw.dir)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)
                .unwrap_or("?")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|_| "?".into());
    // Every run starts its own gateway.
    if p.gw.terminate(Duration::from_secs(30)).is_none() {
        bail!("the gateway did not stop on SIGTERM within 30 s");
    }

    // results[workload][recording as usize]
    let mut results: Vec<[Vec<Run>; 2]> = vec![Default::default(); workloads.len()];
    let started = Instant::now();
    for rep in 0..reps {
        for (k, w) in workloads.iter().enumerate() {
            // Alternate which side goes first, by repetition and by workload.
            let order = if (rep + k) % 2 == 0 {
                [Recording::On, Recording::Off]
            } else {
                [Recording::Off, Recording::On]
            };
            for rec in order {
                let run = run_once(&mut p, rec, w, secs)?;
                results[k][rec as usize].push(run);
            }
        }
        eprintln!(
            "bench: recording repetition {}/{reps} done ({:.0} s)",
            rep + 1,
            started.elapsed().as_secs_f64()
        );
    }
    print(&workloads, &results, secs, reps, &fs_type);
    drop(script);
    drop(p);
    Ok(())
}

/// One run on a fresh gateway (and a fresh record DB); the gateway is stopped on entry and on
/// return.
fn run_once(p: &mut PgGateway, rec: Recording, w: &Workload, secs: u64) -> anyhow::Result<Run> {
    p.gw.extra_args = match rec {
        Recording::On => Vec::new(),
        Recording::Off => vec!["--record-off".into()],
    };
    crate::bench_pg::fresh_gateway(p, true)?;
    let db = p.gw.record_db();
    if !p.wait_no_upstream(Duration::from_secs(15)) {
        bail!(
            "{} upstream sessions still open 15 s after the previous run",
            p.upstream_backends()
        );
    }
    // Each run starts with no dirty pages of the previous one left to write.
    p.pg.sql("CHECKPOINT;");
    let base = counts(&db)?;

    let mut args = w.args.clone();
    args.extend(
        [
            "-n",
            "-M",
            "simple",
            "-c",
            &CLIENTS.to_string(),
            "-j",
            "2",
            "-T",
            &secs.to_string(),
        ]
        .map(String::from),
    );
    let mut cmd = pgbench_command("127.0.0.1", p.pg.port, "agent", BENCH_DB);
    cmd.args(&args).env("PGPASSWORD", agent_jwt("bench-agent"));
    place(&mut cmd, Some(&p.agent), None);
    let what = format!("pgbench {} ({})", args.join(" "), rec.label());
    let gw_pid = p.gw.pid();
    let cpu0 = crate::util::proc_stats(gw_pid)?;
    let t0 = Instant::now();
    let out = cmd.output().with_context(|| format!("run {what}"))?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = crate::util::proc_stats(gw_pid)?.cpu_secs() - cpu0.cpu_secs();
    let end = counts(&db)?;
    let PgRun {
        tps,
        latency_ms,
        transactions,
        ..
    } = pgbench_report(&out, &what, false)?;

    // SIGTERM: the gateway drains, its recorder flushes, SQLite folds the WAL into the file.
    if p.gw.terminate(Duration::from_secs(30)).is_none() {
        bail!("{what}: the gateway did not stop on SIGTERM within 30 s");
    }
    let fin = counts(&db)?;
    let db_bytes = checkpointed_size(&db)?;
    Ok(Run {
        tps,
        latency_ms,
        transactions,
        secs: wall,
        records: end.0.saturating_sub(base.0),
        total_records: fin.0,
        statements_on_record: fin.1,
        intents: fin.2,
        db_bytes,
        cpu_secs: cpu,
    })
}

/// (records, `statement` records, `statement_intent` records) in the record DB's journal.
fn counts(db: &Path) -> anyhow::Result<(u64, u64, u64)> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1], timeout=30)\n\
             print(*c.execute(\"SELECT count(*), coalesce(sum(kind = 'statement'), 0), \
             coalesce(sum(kind = 'statement_intent'), 0) FROM audit_log\").fetchone())",
        )
        .arg(db)
        .output()
        .context("python3 (its sqlite3 module reads the record DB)")?;
    if !out.status.success() {
        bail!("reading {}: {}", db.display(), output_text(&out));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let n: Vec<u64> = text
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    match n[..] {
        [a, b, c] => Ok((a, b, c)),
        _ => bail!("reading {}: python3 printed {text:?}", db.display()),
    }
}

/// The record DB's size in bytes once its WAL is folded into it (and truncated).
fn checkpointed_size(db: &Path) -> anyhow::Result<u64> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import os, sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1], timeout=30)\n\
             busy = c.execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchone()[0]\n\
             c.close()\n\
             print(busy, os.path.getsize(sys.argv[1]))",
        )
        .arg(db)
        .output()
        .context("python3 (its sqlite3 module checkpoints the record DB)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().collect::<Vec<_>>()[..] {
        ["0", size] if out.status.success() => Ok(size.parse()?),
        _ => bail!("checkpointing {}: {}", db.display(), output_text(&out)),
    }
}

fn print(workloads: &[Workload], results: &[[Vec<Run>; 2]], secs: u64, reps: usize, fs_type: &str) {
    md!(
        "\n### recording: the audit writer in the loop vs recording off ({reps} repetitions of {secs} s)\n"
    );
    md!(
        "pgbench (see software above), scale 1, {CLIENTS} clients (`-c {CLIENTS} -j 2 -M simple -T {secs}`), from the \
         agent cgroup through agentgate (JWT as the password), server and gateway on loopback. \
         PostgreSQL made durable for this section (fsync, synchronous_commit, full_page_writes \
         on). Every run starts a fresh gateway with an empty record DB (SQLite, WAL, on \
         {fs_type}: a commit an intent waits on synced, synchronous=FULL; records nobody waits on \
         gathered for up to 4 ms and committed with synchronous=NORMAL), contenders alternating: recording on = the default \
         (every statement a record; a privileged statement, anything but a read, forwarded only \
         once its intent is committed), `--record-off` = the recorder discards everything. \
         Workloads: `pgbench -S` (one SELECT per transaction); INSERT script (one \
         `INSERT INTO record_bench …` per transaction: every statement privileged, no lock \
         contention); TPC-B-like (BEGIN, 3 UPDATEs, SELECT, INSERT, END: 4 privileged of 7, \
         one branch row all clients update). records/s = audit_log rows committed while \
         pgbench ran ÷ its wall time; records per statement and DB size (its WAL checkpointed) \
         count the whole run after the gateway stopped (session records included); gateway CPU = the \
         gateway process's user + system time while pgbench ran ÷ transactions (all its threads, \
         the recorder's included). Medians over repetitions."
    );
    md!();
    md!("| workload | recording | TPS (median) | TPS min–max | latency avg ms (median) | TPS ratio on/off | statements/s (median) | records/s written (median) | records/s min–max | records per statement | record DB bytes per 1000 statements | gateway CPU µs/txn (median) |");
    md!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut sent = 0u64;
    let mut on_record = 0u64;
    for (k, w) in workloads.iter().enumerate() {
        let off_tps = median(
            results[k][Recording::Off as usize]
                .iter()
                .map(|r| r.tps)
                .collect(),
        );
        for rec in [Recording::On, Recording::Off] {
            let runs = &results[k][rec as usize];
            let col = |f: &dyn Fn(&Run) -> f64| -> Vec<f64> { runs.iter().map(f).collect() };
            let tps = col(&|r| r.tps);
            let (lo, hi) = min_max(&tps);
            let tps = median(tps);
            let lat = median(col(&|r| r.latency_ms));
            let stmts = median(col(&|r| {
                r.transactions as f64 * w.statements as f64 / r.secs
            }));
            let rps = col(&|r| r.records as f64 / r.secs);
            let (rlo, rhi) = min_max(&rps);
            let rps = median(rps);
            let cpu_us = median(col(&|r| r.cpu_secs * 1e6 / r.transactions.max(1) as f64));
            let (ratio, per_stmt, per_1000) = if rec == Recording::On {
                sent += runs
                    .iter()
                    .map(|r| r.transactions * w.statements)
                    .sum::<u64>();
                on_record += runs.iter().map(|r| r.statements_on_record).sum::<u64>();
                (
                    format!("{:.2}", tps / off_tps),
                    format!(
                        "{:.2}",
                        median(col(
                            &|r| r.total_records as f64 / r.statements_on_record.max(1) as f64
                        ))
                    ),
                    format!(
                        "{:.0}",
                        median(col(
                            &|r| r.db_bytes as f64 * 1000.0 / r.statements_on_record.max(1) as f64
                        ))
                    ),
                )
            } else {
                ("—".into(), "—".into(), "—".into())
            };
            md!(
                "| {} | {} | {tps:.0} | {lo:.0}–{hi:.0} | {lat:.3} | {ratio} | {stmts:.0} | {rps:.0} | {rlo:.0}–{rhi:.0} | {per_stmt} | {per_1000} | {cpu_us:.0} |",
                w.label,
                rec.label()
            );
        }
    }
    let off_records: u64 = results
        .iter()
        .flat_map(|r| r[Recording::Off as usize].iter())
        .map(|r| r.total_records)
        .sum();
    let intents: u64 = results
        .iter()
        .flat_map(|r| r[Recording::On as usize].iter())
        .map(|r| r.intents)
        .sum();
    md!(
        "\nRecording on, all runs: the transactions pgbench completed hold {sent} statements; \
         {on_record} statements are on record{} ({intents} intents of privileged statements \
         besides). Recording off: {off_records} records in its record DBs.",
        if on_record >= sent {
            " (none missing; a transaction cut off by the end of a run can add some)"
        } else {
            " — FEWER THAN SENT"
        }
    );
    // What the writer adds to each transaction's wait: privileged statements wait for their
    // intent's group commit (SQLite, synchronous=FULL for it) before they are forwarded; reads wait
    // for no commit.
    let added: Vec<String> = workloads
        .iter()
        .enumerate()
        .map(|(k, w)| {
            let lat = |rec: Recording| {
                median(
                    results[k][rec as usize]
                        .iter()
                        .map(|r| r.latency_ms)
                        .collect(),
                )
            };
            format!(
                "{}: {:+.3} ms ({:.3} vs {:.3})",
                w.label,
                lat(Recording::On) - lat(Recording::Off),
                lat(Recording::On),
                lat(Recording::Off)
            )
        })
        .collect();
    md!(
        "\nAdded average latency per transaction, recording on − off (a privileged statement \
         is forwarded once its intent's group commit is on disk; reads wait for no commit): {}.",
        added.join("; ")
    );
}

/// The INSERT script, removed on drop.
struct ScriptFile(PathBuf);

impl ScriptFile {
    fn write(path: &Path, text: &str) -> anyhow::Result<Self> {
        fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
        Ok(Self(path.to_path_buf()))
    }
}

impl Drop for ScriptFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}
