//! `cargo xtask bench`: side by side in one run, contenders alternating run by run; each
//! section prints its tables and writes them into its part of docs/benchmarks.md (report.rs).
//!
//! Capture overhead (this file):
//! - connect() latency to 127.0.0.2 from (a) a process with no hook, (b) a managed cgroup to a
//!   destination that is not a target (hook runs, passes), (c) a managed cgroup to a target
//!   (hook runs, redirects to the gateway listener);
//! - bulk upload throughput to a sink: direct vs HAProxy (TCP, as shipped and with splice) vs the
//!   gateway's TCP relay, with each relay's CPU seconds per GiB.
//!
//! PostgreSQL (bench_pg.rs): `pgbench -S` in three protocols at 1, 8 and 32 clients, and `-C`,
//! direct vs HAProxy vs PgBouncer vs agentgate vs agentgate with masking; a profile. With
//! `--baseline-rev REV`, also the agentgate binary of git revision REV (bench_rev.rs builds it),
//! against which the current one is compared.
//!
//! Masking (bench_mask.rs): a wide PII table streamed direct vs through the gateway without
//! and with mask rules: rows/s, MB/s, the gateway's CPU and peak RSS.
//!
//! Recording (bench_record.rs): pgbench reads and writes through the gateway with its audit
//! writer in the loop vs with `--record-off`.
//!
//! Record scale (bench_record_scale.rs): start-up and the audit commands on a record database
//! of a million sessions.
//!
//! Flood (bench_flood.rs): the gateway's memory through and after a connection flood, with
//! glibc's malloc, two of its tunables and mimalloc; pgbench through each.
//!
//! SSH (bench_ssh.rs): `ssh host true` round trips and a transfer piped through `ssh`, direct vs
//! HAProxy TCP vs agentgate; the gateway's memory during the transfers.
//!
//! HTTP (bench_http.rs): `kubectl get pods` round trips and a 10 000-pod list direct to the
//! Kubernetes API-server stand-in vs through the gateway; keep-alive requests/s with `wrk`
//! against nginx direct vs HAProxy TCP vs agentgate; the gateway's memory on a long watch.

use std::{net::SocketAddr, process::Command};

use agentgate_tests::{place, policy, Cgroup, Gateway, TargetServer, TokenFile};
use anyhow::{bail, Context};
use serde_json::Value;

use crate::{baselines::Baseline, report, report::md, util};

/// Which sections `cargo xtask bench` runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Only {
    /// connect() latency and TCP relay throughput.
    Capture,
    /// pgbench direct vs HAProxy vs PgBouncer vs agentgate (and with masking); a profile.
    Postgres,
    /// A wide PII table streamed direct vs through the gateway without and with mask rules.
    Masking,
    /// pgbench reads and writes through the gateway with its audit writer vs `--record-off`.
    Record,
    /// Start-up and the audit commands on a record database of many sessions.
    RecordScale,
    /// The gateway's memory through and after a connection flood, by allocator.
    Flood,
    /// `ssh host true` round trips and a transfer through `ssh`: direct vs HAProxy vs agentgate.
    Ssh,
    /// kubectl and a 10k-pod list direct vs agentgate; wrk direct vs HAProxy vs agentgate; a
    /// long watch's memory.
    Http,
}

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Repetitions of each capture and ssh measurement (contenders alternate within each
    /// repetition).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Bytes per throughput run (capture and ssh).
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
    /// Sessions in the record-scale section's record database (ten records each).
    #[arg(long, default_value_t = 1_000_000)]
    pub scale_sessions: u64,
    /// Sessions held open at once in the flood section.
    #[arg(long, default_value_t = 2000)]
    pub flood_sessions: usize,
    /// Connections stalled in their startup message during the flood section's floods.
    #[arg(long, default_value_t = 200)]
    pub flood_stalled: usize,
    /// Seconds per wrk run of the http section.
    #[arg(long, default_value_t = 5)]
    pub wrk_secs: u64,
    /// Connections of the http section's wrk runs (kept alive).
    #[arg(long, default_value_t = 16)]
    pub wrk_conns: usize,
    /// Print only: leave docs/benchmarks.md as it is (for trial runs).
    #[arg(long)]
    pub no_doc: bool,
    /// Also measure the agentgate binary of this git revision in the PostgreSQL section, side
    /// by side with the current one (built in a temporary worktree; e.g. `main`, `6903b09`).
    #[arg(long, value_name = "REV", value_parser = crate::bench_rev::parse_rev)]
    pub baseline_rev: Option<String>,
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    util::require_root("the benchmark")?;
    if o.pg_secs == 0 || o.pg_reps == 0 || o.reps == 0 || o.wrk_secs == 0 || o.wrk_conns == 0 {
        bail!("--reps, --pg-reps, --pg-secs, --wrk-secs and --wrk-conns must be at least 1");
    }
    // The old revision first: its build is the long one, and it should fail before anything
    // else has been measured. Only the PostgreSQL section uses it.
    let old = match &o.baseline_rev {
        Some(rev) if runs_postgres(o) => Some(crate::bench_rev::build(rev)?),
        Some(_) => {
            bail!("--baseline-rev is measured in the postgres section, which this run skips")
        }
        None => None,
    };
    let bins = util::build(true)?;
    std::env::set_var("AGENTGATE_BIN", &bins.agentgate);
    std::env::set_var("AGENT_PROBE_BIN", &bins.probe);
    std::env::set_var("PG_AGENT_BIN", &bins.pg_agent);
    // The gateways measured log as deployed (info), not as the tests run them (debug).
    std::env::set_var("AGENTGATE_TEST_GATEWAY_LOG", "info");

    let runs = |section: Only| o.only.is_none_or(|only| only == section);
    let baseline_arg = o
        .baseline_rev
        .as_ref()
        .map(|rev| format!(" --baseline-rev {rev}"))
        .unwrap_or_default();
    // Each section with the command that reproduces it alone.
    let sections: [(Only, &str, String); 8] = [
        (
            Only::Capture,
            "capture",
            format!(
                "--reps {} --bytes {} --connects {}",
                o.reps, o.bytes, o.connects
            ),
        ),
        (
            Only::Postgres,
            "postgres",
            format!(
                "--pg-secs {} --pg-reps {}{baseline_arg}",
                o.pg_secs, o.pg_reps
            ),
        ),
        (
            Only::Masking,
            "masking",
            format!("--pg-reps {} --mask-rows {}", o.pg_reps, o.mask_rows),
        ),
        (
            Only::Record,
            "record",
            format!("--pg-secs {} --pg-reps {}", o.pg_secs, o.pg_reps),
        ),
        (
            Only::RecordScale,
            "record-scale",
            format!(
                "--scale-sessions {} --pg-reps {}",
                o.scale_sessions, o.pg_reps
            ),
        ),
        (
            Only::Flood,
            "flood",
            format!(
                "--flood-sessions {} --flood-stalled {} --pg-secs {} --pg-reps {}",
                o.flood_sessions, o.flood_stalled, o.pg_secs, o.pg_reps
            ),
        ),
        (
            Only::Ssh,
            "ssh",
            format!("--reps {} --bytes {}", o.reps, o.bytes),
        ),
        (
            Only::Http,
            "http",
            format!(
                "--reps {} --wrk-secs {} --wrk-conns {}",
                o.reps, o.wrk_secs, o.wrk_conns
            ),
        ),
    ];
    for (section, key, args) in sections {
        if !runs(section) {
            continue;
        }
        report::begin(key, &format!("cargo xtask bench --only {key} {args}"))?;
        match section {
            Only::Capture => capture(o.reps, o.bytes, o.connects)?,
            Only::Postgres => crate::bench_pg::postgres(o.pg_secs, o.pg_reps, old.as_ref())?,
            Only::Masking => crate::bench_mask::masking(o.mask_rows, o.pg_reps)?,
            Only::Record => crate::bench_record::recording(o.pg_secs, o.pg_reps)?,
            Only::RecordScale => {
                crate::bench_record_scale::record_scale(o.scale_sessions, o.pg_reps)?
            }
            Only::Flood => {
                crate::bench_flood::flood(o.flood_sessions, o.flood_stalled, o.pg_secs, o.pg_reps)?
            }
            Only::Ssh => crate::bench_ssh::ssh(o.reps, o.bytes)?,
            Only::Http => crate::bench_http::http(o.reps, o.wrk_secs, o.wrk_conns)?,
        }
        if !o.no_doc {
            report::publish(key)?;
        }
    }
    Ok(())
}

fn runs_postgres(o: &Options) -> bool {
    o.only.is_none_or(|only| only == Only::Postgres)
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
    // HAProxy in TCP mode in front of the same sink, as it ships and with splice(2).
    let haproxy = Baseline::haproxy_to(18002, target, false)?;
    let haproxy_splice = Baseline::haproxy_to(18003, target, true)?;
    let uploads = [
        Upload {
            label: "direct",
            cgroup: None,
            to: target,
            pid: None,
        },
        Upload {
            label: "HAProxy (tcp)",
            cgroup: None,
            to: "127.0.0.1:18002".parse()?,
            pid: Some(haproxy.pid()),
        },
        Upload {
            label: "HAProxy (tcp, splice-auto)",
            cgroup: None,
            to: "127.0.0.1:18003".parse()?,
            pid: Some(haproxy_splice.pid()),
        },
        Upload {
            label: "through agentgate (tcp relay)",
            cgroup: Some(&agent),
            to: target,
            pid: Some(gw.pid()),
        },
    ];
    let mut thr: Vec<Vec<f64>> = vec![Vec::new(); uploads.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); uploads.len()];
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
        // Rotate which path goes first, so none always runs on a warmer machine.
        for k in 0..uploads.len() {
            let i = (k + rep) % uploads.len();
            let up = &uploads[i];
            let before = up.pid.map(util::proc_stats).transpose()?;
            let v = probe_json(
                up.cgroup,
                &["throughput", &up.to.to_string(), &bytes.to_string()],
            )?;
            let after = up.pid.map(util::proc_stats).transpose()?;
            thr[i].push(num(&v, "mb_per_s")?);
            if let (Some(b), Some(a)) = (before, after) {
                // CPU seconds per GiB moved: what the relay costs, which noise moves less
                // than the throughput.
                cpu[i].push((a.cpu_secs() - b.cpu_secs()) / (bytes as f64 / f64::from(1u32 << 30)));
            }
        }
        eprintln!("bench: repetition {}/{reps} done", rep + 1);
    }

    md!("\n### capture ({reps} repetitions)\n");
    md!("| connect() | p50 µs (median) | p50 min–max | mean µs (median) | p99 µs (median) | p50 ratio to no hook |");
    md!("|---|---|---|---|---|---|");
    let base = median(lat[0].iter().map(|x| x.1).collect());
    for (i, (label, _, _)) in contenders_connect.iter().enumerate() {
        let col = |f: fn(&(f64, f64, f64)) -> f64| lat[i].iter().map(f).collect::<Vec<f64>>();
        let p50s = col(|x| x.1);
        let (lo, hi) = min_max(&p50s);
        let m = median(p50s);
        md!(
            "| {label} | {m:.1} | {lo:.1}–{hi:.1} | {:.1} | {:.1} | {:.2} |",
            median(col(|x| x.0)),
            median(col(|x| x.2)),
            m / base
        );
    }
    md!(
        "\n| upload {} MiB to a sink | MB/s (median) | min–max | ratio to direct | ratio to HAProxy | proxy CPU s per GiB |",
        bytes >> 20
    );
    md!("|---|---|---|---|---|---|");
    let direct = median(thr[0].clone());
    let haproxy_mbs = median(thr[1].clone());
    for (i, up) in uploads.iter().enumerate() {
        let (lo, hi) = min_max(&thr[i]);
        let m = median(thr[i].clone());
        let cpu = if cpu[i].is_empty() {
            "–".to_string()
        } else {
            format!("{:.2}", median(cpu[i].clone()))
        };
        md!(
            "| {} | {m:.0} | {lo:.0}–{hi:.0} | {:.2} | {:.2} | {cpu} |",
            up.label,
            m / direct,
            m / haproxy_mbs
        );
    }
    Ok(())
}

/// One path of the upload: from which cgroup, to which address, and the relaying process.
struct Upload<'a> {
    label: &'static str,
    cgroup: Option<&'a Cgroup>,
    to: SocketAddr,
    pid: Option<u32>,
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Options;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        o: Options,
    }

    #[test]
    fn baseline_rev_is_optional_and_taken_as_given() {
        let o = Cli::try_parse_from(["bench"]).unwrap().o;
        assert_eq!(o.baseline_rev, None);
        let o = Cli::try_parse_from(["bench", "--only", "postgres", "--baseline-rev", "6903b09"])
            .unwrap()
            .o;
        assert_eq!(o.baseline_rev.as_deref(), Some("6903b09"));
        assert!(Cli::try_parse_from(["bench", "--baseline-rev", "--no-doc"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--baseline-rev=-x"]).is_err());
    }
}
