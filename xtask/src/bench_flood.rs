//! The flood section of `cargo xtask bench` (`--only flood`): what the gateway's memory does
//! during and after a connection flood, with glibc's malloc as it is, with two of its tunables
//! set in the environment, and with mimalloc as the global allocator (gateway-user's
//! `mimalloc` feature). For each allocator a fresh gateway: its memory at idle, at the peak of
//! a flood (many PostgreSQL sessions logged in, one query run and held open, plus connections
//! stalled in their startup message), 10 s and 30 s after every connection has closed, after a
//! second identical flood, and after `malloc_trim(0)` called into it with gdb (which tells what
//! glibc held free from what was still in use). Then a short `pgbench -S` through each, for what
//! the allocator costs in throughput.
//!
//! Memory: VmRSS from /proc/PID/status, and Anonymous from /proc/PID/smaps_rollup (the heap
//! and thread stacks, without the binary's mapped pages).

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use agentgate_tests::{
    mint, now,
    pg::{agent_jwt, pgbench_command, PgGateway, PgOptions, PgTargetOptions, ROLE_SCRAM},
    place,
};
use anyhow::{bail, Context};
use serde_json::Value;

use crate::{
    bench::{median, min_max},
    bench_pg::{fresh_gateway, pgbench_init, pgbench_report},
    report::md,
    util,
};

/// Gateway listener and PostgreSQL ports of this section (bench only).
const LISTEN_PORT: u16 = 20050;
const PG_PORT: u16 = 20051;
/// Sessions logging in at the same time during a flood (the rest wait their turn; those done
/// stay open), so the gateway's listen backlog is not what is measured.
const LOGINS_AT_ONCE: usize = 100;
/// What each flood session runs once it is in.
const FLOOD_QUERY: &str = "SELECT id, name, price FROM items WHERE id = 1";
/// The database of the throughput runs (`pgbench -i -s 1`).
const PGBENCH_DB: &str = "bench";
/// When the memory is read after the flood's connections have all closed.
const AFTER: [u64; 2] = [10, 30];

/// One allocator set-up of the gateway.
struct Variant {
    label: &'static str,
    /// Environment of the gateway process.
    env: &'static [(&'static str, &'static str)],
    /// Built with gateway-user's `mimalloc` feature.
    mimalloc: bool,
}

const VARIANTS: [Variant; 4] = [
    Variant {
        label: "glibc malloc, defaults",
        env: &[],
        mimalloc: false,
    },
    Variant {
        label: "glibc, `MALLOC_ARENA_MAX=2`",
        env: &[("MALLOC_ARENA_MAX", "2")],
        mimalloc: false,
    },
    Variant {
        label: "glibc, `MALLOC_TRIM_THRESHOLD_=131072`",
        env: &[("MALLOC_TRIM_THRESHOLD_", "131072")],
        mimalloc: false,
    },
    Variant {
        label: "mimalloc (`--features mimalloc`)",
        env: &[],
        mimalloc: true,
    },
];

/// The gateway's memory at one moment (KiB).
#[derive(Clone, Copy, Debug)]
struct Mem {
    rss: u64,
    anon: u64,
}

/// What one variant's gateway went through.
struct FloodRun {
    idle: Mem,
    peak: Mem,
    /// VmHWM at the end of the first flood.
    hwm: u64,
    /// Seconds until every session of the first flood was in and had run its query.
    ramp_secs: f64,
    after: Vec<Mem>,
    /// After the second flood, AFTER[0] s after its connections closed.
    second: Mem,
    /// After `malloc_trim(0)`; None if gdb could not call it.
    trimmed: Option<Mem>,
    /// Threads of the gateway at the end.
    threads: u64,
}

pub fn flood(sessions: usize, stalled: usize, secs: u64, reps: usize) -> anyhow::Result<()> {
    let client = build_client()?;
    let mimalloc_bin = build_mimalloc()?;
    let limit = sessions + stalled + 100;
    let opts = PgTargetOptions {
        gateway_extra: format!(
            "  max_connections: {limit}\n  max_connections_per_workload: {limit}\n"
        ),
        ..PgTargetOptions::default()
    };
    let mut p = PgGateway::start(
        "bench-flood",
        LISTEN_PORT,
        PG_PORT,
        PgOptions::default(),
        &opts,
    );
    // Every flood session is one upstream session: room for all of them.
    p.pg.sql(&format!("ALTER SYSTEM SET max_connections = {limit};"));
    // The stop is `-m immediate` and commits are asynchronous: without a checkpoint the tables
    // just made may not survive it.
    p.pg.sql("CHECKPOINT;");
    p.pg.stop();
    p.pg.start_again();
    p.pg.sql_in(
        "agentdb",
        "INSERT INTO items (id, name, price) VALUES (1, 'widget', 9.5);",
    );
    p.pg.sql_in(
        "agentdb",
        &format!("GRANT SELECT ON items TO {ROLE_SCRAM};"),
    );
    pgbench_init(&p.pg, PGBENCH_DB)?;
    p.pg.sql_in(
        PGBENCH_DB,
        &format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {ROLE_SCRAM};"),
    );

    let started = Instant::now();
    let mut runs = Vec::new();
    for v in &VARIANTS {
        let run = with_variant(&mut p, v, &mimalloc_bin, |p| {
            flood_variant(p, &client, sessions, stalled)
        })?;
        eprintln!(
            "bench: flood: {}: idle {:.1}, peak {:.1}, +30 s {:.1} MiB ({:.0} s)",
            v.label,
            mib(run.idle.rss),
            mib(run.peak.rss),
            mib(run.after[AFTER.len() - 1].rss),
            started.elapsed().as_secs_f64()
        );
        runs.push(run);
    }

    // Throughput: pgbench -S through each variant, variants rotating within each repetition.
    let mut tps: Vec<Vec<(f64, f64)>> = vec![Vec::new(); VARIANTS.len()];
    for rep in 0..reps {
        for k in 0..VARIANTS.len() {
            let i = (k + rep) % VARIANTS.len();
            let run = with_variant(&mut p, &VARIANTS[i], &mimalloc_bin, |p| pgbench(p, secs))?;
            tps[i].push(run);
        }
        eprintln!("bench: flood: pgbench repetition {}/{reps} done", rep + 1);
    }
    print(&runs, &tps, sessions, stalled, secs, reps);
    Ok(())
}

/// Runs `f` on a fresh gateway (an empty record) started as `v` says. The variant's environment
/// is the gateway's only: it is put back once the gateway runs, before the clients start.
fn with_variant<T>(
    p: &mut PgGateway,
    v: &Variant,
    mimalloc_bin: &Path,
    f: impl FnOnce(&mut PgGateway) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut env: Vec<(&str, String)> = v.env.iter().map(|(k, v)| (*k, v.to_string())).collect();
    if v.mimalloc {
        env.push(("AGENTGATE_BIN", mimalloc_bin.display().to_string()));
    }
    let env = EnvGuard::set(&env);
    fresh_gateway(p, true)?;
    drop(env);
    f(p)
}

/// Environment variables set for the children started meanwhile; the old values back on drop.
struct EnvGuard(Vec<(String, Option<std::ffi::OsString>)>);

impl EnvGuard {
    fn set(vars: &[(&str, String)]) -> Self {
        let old = vars
            .iter()
            .map(|(k, v)| {
                let old = std::env::var_os(k);
                std::env::set_var(k, v);
                (k.to_string(), old)
            })
            .collect();
        Self(old)
    }
}

impl Drop for EnvGuard {
    fn drop(&mut self) {
        for (k, old) in &self.0 {
            match old {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
    }
}

fn flood_variant(
    p: &mut PgGateway,
    client: &Path,
    sessions: usize,
    stalled: usize,
) -> anyhow::Result<FloodRun> {
    let pid = p.gw.pid();
    std::thread::sleep(Duration::from_secs(2));
    let idle = mem(pid)?;
    let first = run_flood(p, client, sessions, stalled)?;
    let hwm = status_field(pid, "VmHWM")?;
    let mut after = Vec::new();
    for s in AFTER {
        sleep_until(first.closed + Duration::from_secs(s));
        after.push(mem(pid)?);
    }
    let second = run_flood(p, client, sessions, stalled)?;
    sleep_until(second.closed + Duration::from_secs(AFTER[0]));
    let second_mem = mem(pid)?;
    let trimmed = if malloc_trim(pid) {
        std::thread::sleep(Duration::from_secs(1));
        Some(mem(pid)?)
    } else {
        None
    };
    Ok(FloodRun {
        idle,
        peak: first.peak,
        hwm,
        ramp_secs: first.ramp_secs,
        after,
        second: second_mem,
        trimmed,
        threads: status_field(pid, "Threads")?,
    })
}

/// One flood's peak and when it was over.
struct Flood {
    peak: Mem,
    ramp_secs: f64,
    /// When the client had closed everything and no upstream session was left.
    closed: Instant,
}

/// Runs the flood client from the agent cgroup: reads the gateway's memory once every session
/// is in, then has the client close everything and waits until the upstream sessions are gone.
fn run_flood(
    p: &PgGateway,
    client: &Path,
    sessions: usize,
    stalled: usize,
) -> anyhow::Result<Flood> {
    let pid = p.gw.pid();
    let mut cmd = Command::new(client);
    cmd.args([
        p.agent_conninfo(&agent_jwt("bench-flood"), "disable"),
        sessions.to_string(),
        stalled.to_string(),
        LOGINS_AT_ONCE.to_string(),
        FLOOD_QUERY.to_string(),
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped());
    place(&mut cmd, Some(&p.agent), None);
    let mut child = ChildGuard(cmd.spawn().context("start bench-flood")?);
    let mut out = BufReader::new(child.0.stdout.take().context("bench-flood stdout")?);
    let ready = read_json(&mut out, "its sessions")?;
    let open = ready["open"].as_u64().unwrap_or(0) as usize;
    if open != sessions {
        bail!(
            "bench-flood: {open} of {sessions} sessions opened ({} failed): {}\n{}",
            ready["failed"],
            ready["errors"],
            p.gw.log_tail()
        );
    }
    let peak = mem(pid)?;
    let ramp_secs = ready["secs"].as_f64().unwrap_or(f64::NAN);
    child
        .0
        .stdin
        .take()
        .context("bench-flood stdin")?
        .write_all(b"close\n")?;
    read_json(&mut out, "its closing")?;
    let status = child.0.wait()?;
    if !status.success() {
        bail!("bench-flood exited with {status}");
    }
    if !p.wait_no_upstream(Duration::from_secs(30)) {
        bail!(
            "{} upstream sessions still open 30 s after the flood closed",
            p.upstream_backends()
        );
    }
    Ok(Flood {
        peak,
        ramp_secs,
        closed: Instant::now(),
    })
}

/// The flood client's next JSON line; an error if it reported one or said nothing.
fn read_json(out: &mut BufReader<ChildStdout>, what: &str) -> anyhow::Result<Value> {
    let mut line = String::new();
    out.read_line(&mut line)?;
    let v: Value = serde_json::from_str(&line)
        .with_context(|| format!("bench-flood printed {line:?} instead of {what}"))?;
    if let Some(e) = v.get("error") {
        bail!("bench-flood: {e}");
    }
    Ok(v)
}

/// Kills the flood client if the section gives up while it runs.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn sleep_until(t: Instant) {
    std::thread::sleep(t.saturating_duration_since(Instant::now()));
}

/// One `pgbench -S` run through the gateway: TPS and the gateway's CPU µs per transaction.
fn pgbench(p: &mut PgGateway, secs: u64) -> anyhow::Result<(f64, f64)> {
    if !p.wait_no_upstream(Duration::from_secs(15)) {
        bail!("upstream sessions still open 15 s after the previous run");
    }
    let mut cmd = pgbench_command("127.0.0.1", PG_PORT, "agent", PGBENCH_DB);
    cmd.args(["-S", "-n", "-M", "simple", "-c", "8", "-j", "2", "-T"])
        .arg(secs.to_string())
        .env(
            "PGPASSWORD",
            mint("bench-agent", &["agents"], now(), now() + 600),
        );
    place(&mut cmd, Some(&p.agent), None);
    let pid = p.gw.pid();
    let before = util::proc_stats(pid)?;
    let out = cmd.output().context("run pgbench")?;
    let after = util::proc_stats(pid)?;
    let run = pgbench_report(&out, "pgbench -S through the gateway", false)?;
    let cpu_us = (after.cpu_secs() - before.cpu_secs()) * 1e6 / run.transactions as f64;
    Ok((run.tps, cpu_us))
}

/// Calls `malloc_trim(0)` in the process with gdb: glibc gives back every free page of every
/// arena, so what stays is what the process still uses (or what fragmentation pins). False if
/// gdb is missing or the call did not happen.
fn malloc_trim(pid: u32) -> bool {
    let out = Command::new("gdb")
        .args(["-nx", "-batch", "-p", &pid.to_string()])
        .args(["-ex", "call (int) malloc_trim(0)"])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) => {
            let said = String::from_utf8_lossy(&o.stdout);
            let called = said.lines().any(|l| l.starts_with("$1 = "));
            if !called {
                eprintln!(
                    "bench: flood: gdb did not call malloc_trim: {said}{}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            called
        }
        Err(e) => {
            eprintln!("bench: flood: gdb: {e}");
            false
        }
    }
}

fn mem(pid: u32) -> anyhow::Result<Mem> {
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("read /proc/{pid}/smaps_rollup"))?;
    Ok(Mem {
        rss: status_field(pid, "VmRSS")?,
        anon: kib_field(&rollup, "Anonymous")
            .with_context(|| format!("no Anonymous in /proc/{pid}/smaps_rollup"))?,
    })
}

/// A number of /proc/PID/status (KiB for the Vm* lines).
fn status_field(pid: u32, key: &str) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status (did it exit?)"))?;
    kib_field(&status, key).with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// The number of the `key:` line in /proc's `Key:   1234 kB` format (status, smaps_rollup,
/// meminfo); the key must match whole (`Rss` is not `RssAnon`).
fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Builds the flood client (release, so the client is not the bottleneck).
fn build_client() -> anyhow::Result<PathBuf> {
    util::run(Command::new("cargo").current_dir(util::root()).args([
        "build",
        "--release",
        "-p",
        "xtask",
        "--bin",
        "bench-flood",
    ]))?;
    Ok(release_dir().join("bench-flood"))
}

/// Builds the gateway with mimalloc as its global allocator, keeps that binary as
/// `agentgate-mimalloc`, and builds the default one again (cargo keeps both builds, so that is
/// a copy, not a compile) so `$AGENTGATE_BIN` is what it was.
fn build_mimalloc() -> anyhow::Result<PathBuf> {
    util::run(Command::new("cargo").current_dir(util::root()).args([
        "build",
        "--release",
        "-p",
        "gateway-user",
        "--bin",
        "agentgate",
        "--features",
        "mimalloc",
    ]))?;
    let kept = release_dir().join("agentgate-mimalloc");
    fs::copy(release_dir().join("agentgate"), &kept)
        .with_context(|| format!("copy the mimalloc build to {}", kept.display()))?;
    let bins = util::build(true)?;
    // What is measured is what the labels say: mimalloc in the one, not in the other.
    for (bin, with) in [(&kept, true), (&bins.agentgate, false)] {
        let bytes = fs::read(bin).with_context(|| format!("read {}", bin.display()))?;
        if bytes.windows(9).any(|w| w == b"mi_malloc") != with {
            bail!(
                "{} is {} mimalloc",
                bin.display(),
                if with { "without" } else { "with" }
            );
        }
    }
    Ok(kept)
}

fn release_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| util::root().join("target"))
        .join("release")
}

fn print(
    runs: &[FloodRun],
    tps: &[Vec<(f64, f64)>],
    sessions: usize,
    stalled: usize,
    secs: u64,
    reps: usize,
) {
    md!("\n### the gateway's memory through a connection flood, by allocator\n");
    md!(
        "Each allocator: a fresh gateway (empty record), then a flood from the agent cgroup \
         (bench-flood, tokio-postgres): {stalled} connections that send 13 bytes of a startup \
         message and stall, then {sessions} sessions, {LOGINS_AT_ONCE} logging in at a time, \
         each logging in with a JWT, running `{FLOOD_QUERY}` and staying open until all are in \
         (the peak); then everything closes. A second identical flood follows the +{} s \
         reading. Memory: VmRSS (/proc/PID/status) / Anonymous (/proc/PID/smaps_rollup: heap, \
         arenas and thread stacks, not the mapped binary), MiB. Peak = when every session was \
         in; HWM = VmHWM. `malloc_trim(0)`: called into the gateway with gdb after the second \
         flood: glibc hands back the free pages of all its arenas, so what remains is in use or \
         pinned by fragmentation. mimalloc serves Rust's allocations only; libpg_query and \
         SQLite (C) still use glibc's malloc in that build.\n",
        AFTER[AFTER.len() - 1]
    );
    md!(
        "| gateway | idle | peak (all in) | HWM | +{} s after close | +{} s after close | second flood, +{} s | after `malloc_trim(0)` | sessions in after (s) | threads |",
        AFTER[0],
        AFTER[1],
        AFTER[0]
    );
    md!("|---|---|---|---|---|---|---|---|---|---|");
    let m = |x: &Mem| format!("{:.1} / {:.1}", mib(x.rss), mib(x.anon));
    for (v, r) in VARIANTS.iter().zip(runs) {
        md!(
            "| {} | {} | {} | {:.1} | {} | {} | {} | {} | {:.1} | {} |",
            v.label,
            m(&r.idle),
            m(&r.peak),
            mib(r.hwm),
            m(&r.after[0]),
            m(&r.after[1]),
            m(&r.second),
            r.trimmed.as_ref().map_or("—".into(), m),
            r.ramp_secs,
            r.threads
        );
    }
    md!("\n| gateway | kept 30 s after close (VmRSS − idle) | of the peak's growth | freed by `malloc_trim(0)` (VmRSS) |");
    md!("|---|---|---|---|");
    for (v, r) in VARIANTS.iter().zip(runs) {
        let kept = r.after[1].rss as f64 - r.idle.rss as f64;
        let grew = r.peak.rss as f64 - r.idle.rss as f64;
        md!(
            "| {} | {:.1} MiB | {:.0} % | {} |",
            v.label,
            kept / 1024.0,
            kept / grew * 100.0,
            r.trimmed.as_ref().map_or("—".into(), |t| format!(
                "{:.1} MiB",
                (r.second.rss as f64 - t.rss as f64) / 1024.0
            ))
        );
    }
    md!(
        "\n#### `pgbench -S -M simple -c 8 -j 2 -T {secs}` through each ({reps} repetitions, \
         variants rotating)\n"
    );
    md!("| gateway | TPS (median) | min–max | gateway CPU µs/transaction (median) | TPS ratio to glibc defaults |");
    md!("|---|---|---|---|---|");
    let base = median(tps[0].iter().map(|t| t.0).collect());
    for (v, t) in VARIANTS.iter().zip(tps) {
        let rates: Vec<f64> = t.iter().map(|t| t.0).collect();
        let (lo, hi) = min_max(&rates);
        let r = median(rates);
        md!(
            "| {} | {r:.0} | {lo:.0}–{hi:.0} | {:.1} | {:.2} |",
            v.label,
            median(t.iter().map(|t| t.1).collect()),
            r / base
        );
    }
    let tps_ratio: Vec<f64> = tps
        .iter()
        .map(|t| median(t.iter().map(|t| t.0).collect()) / base)
        .collect();
    reading(runs, &tps_ratio);
}

/// What glibc's malloc keeps and why (how it works, not a figure of this run).
const GLIBC: &str = "What glibc's malloc keeps: freed memory goes back on its free lists for \
the next allocation, not to the kernel. It returns memory only (a) from the top of a heap, when \
the free chunk at the top outgrows `M_TRIM_THRESHOLD` (128 KiB, but raised automatically up to \
64 MiB each time a large block that had its own mapping is freed, unless a `MALLOC_*` threshold \
is set), and (b) for blocks above the mmap threshold, which are unmapped on free. A free chunk \
below one still in use stays resident: a session's buffers freed while a later session's \
allocation sits above them are kept (fragmentation). And each thread gets an arena of its own at \
its first allocation, until there are 8 per core (16 here): tokio's worker threads, its blocking-pool \
threads and the record writer each fill their own heaps, and each heap is trimmed only from its \
own top. `malloc_trim(0)` hands back the free pages inside every arena: the gateway calls it \
itself when its live sessions have fallen well below their recent peak (proxy/memory.rs), which \
is why the +10 s and +30 s readings are low. `MALLOC_ARENA_MAX=2` caps the arenas; `MALLOC_TRIM_THRESHOLD_` fixes the threshold \
(and turns the automatic raising off).";

/// The figures above in words, and whether an allocator setting is worth it: computed from this
/// run, so a new run says what its own figures show.
fn reading(runs: &[FloodRun], tps_ratio: &[f64]) {
    md!("\n#### reading\n");
    md!("{GLIBC}\n");
    let kept = |r: &FloodRun| mib(r.after[AFTER.len() - 1].rss) - mib(r.idle.rss);
    let grew = |r: &FloodRun| mib(r.peak.rss) - mib(r.idle.rss);
    let d = &runs[0];
    let again = mib(d.second.rss) - mib(d.after[0].rss);
    md!(
        "With glibc's defaults the gateway grew by {:.1} MiB at the peak and still held {:.1} \
         MiB of it ({:.0} %) {} s after the last connection closed. A second flood left it {} \
         ({:+.1} MiB against the first flood's +{} s reading): {}.{}",
        grew(d),
        kept(d),
        kept(d) / grew(d) * 100.0,
        AFTER[AFTER.len() - 1],
        format_args!("{:.1} MiB", mib(d.second.rss)),
        again,
        AFTER[0],
        if again.abs() <= 0.1 * grew(d) {
            "the memory kept is reused by the next flood, not leaked"
        } else if again > 0.0 {
            "it grew again. The free memory is reused, but carved at other offsets it touches \
             pages the first flood had left untouched, so RSS ratchets up towards all the address \
             space the largest flood allocated (the relay gives each session four 64 KiB \
             buffers, of which a session of short messages touches little)"
        } else {
            "less than after the first"
        },
        d.trimmed.as_ref().map_or(String::new(), |t| format!(
            " `malloc_trim(0)` then gave back {:.1} MiB: that much was free memory glibc \
             held; the {:.1} MiB above idle that stayed is in use (caches, the record) or \
             pinned pages.",
            mib(d.second.rss) - mib(t.rss),
            mib(t.rss) - mib(d.idle.rss)
        ))
    );
    for (i, (v, r)) in VARIANTS.iter().zip(runs).enumerate().skip(1) {
        md!(
            "- {}: {:.1} MiB kept {} s after close ({:.0} % of the defaults' {:.1} MiB), peak \
             {:.1} MiB, idle {:.1} MiB; pgbench TPS {:.2}× the defaults'.",
            v.label,
            kept(r),
            AFTER[AFTER.len() - 1],
            kept(r) / kept(d) * 100.0,
            kept(d),
            mib(r.peak.rss),
            mib(r.idle.rss),
            tps_ratio[i]
        );
    }
    let figures = |i: usize| {
        let r = &runs[i];
        Figures {
            idle: mib(r.idle.rss),
            peak: mib(r.peak.rss),
            kept: kept(r),
            tps: tps_ratio[i],
        }
    };
    let base = figures(0);
    let worth: Vec<usize> = (1..runs.len())
        .filter(|&i| worth_it(&base, &figures(i)))
        .collect();
    let trim_gave = d
        .trimmed
        .as_ref()
        .map(|t| mib(d.second.rss) - mib(t.rss))
        .unwrap_or(0.0);
    md!(
        "\nRecommendation (computed: a variant is worth it when it keeps at most half of what the \
         defaults keep, with idle and peak no more than 10 % higher and at least 0.95× the TPS): {}{}",
        match worth.iter().find(|&&i| !VARIANTS[i].env.is_empty()) {
            Some(&i) => format!(
                "set {} in the gateway container's `env` in deploy/daemonset.yaml.",
                VARIANTS[i]
                    .env
                    .iter()
                    .map(|(k, v)| format!("`{k}={v}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None if worth.is_empty() => "no variant is: neither environment setting belongs in \
                deploy/daemonset.yaml, and mimalloc is not worth a default feature."
                .to_string(),
            None => "only the mimalloc build is; no environment setting belongs in \
                deploy/daemonset.yaml."
                .to_string(),
        },
        if trim_gave >= 0.5 * (mib(d.second.rss) - mib(d.idle.rss)) {
            format!(
                " What the defaults keep is memory glibc holds free: `malloc_trim(0)` gave back \
                 {trim_gave:.1} MiB. Calling it in the gateway once sessions have closed (when \
                 the live sessions fall, at most every few seconds) would return it; that is a \
                 code change, not made by this benchmark."
            )
        } else {
            String::new()
        }
    );
}

/// One variant's figures in MiB, and its pgbench TPS as a ratio to the defaults'.
struct Figures {
    idle: f64,
    peak: f64,
    /// VmRSS above idle 30 s after the flood closed.
    kept: f64,
    tps: f64,
}

/// Whether a variant is worth having instead of glibc's defaults: it keeps at most half as
/// much after the flood, its idle and peak are at most 10 % higher, and it costs at most 5 % of
/// the throughput.
fn worth_it(defaults: &Figures, v: &Figures) -> bool {
    v.kept <= defaults.kept * 0.5
        && v.idle <= defaults.idle * 1.1
        && v.peak <= defaults.peak * 1.1
        && v.tps >= 0.95
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tagentgate\nVmPeak:\t 1234567 kB\nVmHWM:\t   91648 kB\n\
                          VmRSS:\t   63488 kB\nRssAnon:\t   40000 kB\nThreads:\t7\n";
    const ROLLUP: &str = "55d1c0a00000-7ffd5b3fe000 ---p 00000000 00:00 0  [rollup]\n\
                          Rss:               63488 kB\nAnonymous:         40100 kB\n\
                          AnonHugePages:         0 kB\n";

    #[test]
    fn kib_field_reads_status_and_smaps_rollup() {
        assert_eq!(kib_field(STATUS, "VmRSS"), Some(63488));
        assert_eq!(kib_field(STATUS, "VmHWM"), Some(91648));
        assert_eq!(kib_field(STATUS, "Threads"), Some(7));
        assert_eq!(kib_field(ROLLUP, "Anonymous"), Some(40100));
        assert_eq!(kib_field(ROLLUP, "Rss"), Some(63488));
    }

    #[test]
    fn worth_it_needs_half_the_kept_memory_at_no_cost() {
        let d = Figures {
            idle: 60.0,
            peak: 90.0,
            kept: 28.0,
            tps: 1.0,
        };
        let v = |idle, peak, kept, tps| Figures {
            idle,
            peak,
            kept,
            tps,
        };
        assert!(worth_it(&d, &v(60.0, 92.0, 10.0, 0.98)));
        assert!(!worth_it(&d, &v(60.0, 90.0, 20.0, 1.0)), "keeps too much");
        assert!(!worth_it(&d, &v(80.0, 90.0, 5.0, 1.0)), "idle too high");
        assert!(!worth_it(&d, &v(60.0, 120.0, 5.0, 1.0)), "peak too high");
        assert!(!worth_it(&d, &v(60.0, 90.0, 5.0, 0.9)), "too slow");
    }

    #[test]
    fn kib_field_matches_the_whole_key_only() {
        // `Rss` must not be read from `RssAnon:`, nor `Anon` from `Anonymous:`.
        assert_eq!(kib_field(STATUS, "Rss"), None);
        assert_eq!(kib_field(ROLLUP, "Anon"), None);
        assert_eq!(kib_field(STATUS, "VmSwap"), None);
        assert_eq!(kib_field("VmRSS:\tmany kB\n", "VmRSS"), None);
    }
}
