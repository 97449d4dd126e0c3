//! The PostgreSQL section of `cargo xtask bench` (`--only postgres`): pgbench against one
//! throwaway PostgreSQL 15 (127.0.0.1:18011), side by side through five paths:
//! - direct (an unmanaged process, SCRAM as the upstream role);
//! - HAProxy in TCP mode (127.0.0.1:18012) and PgBouncer in session mode (127.0.0.1:18013);
//! - agentgate (the agent cgroup's connect() redirected by the eBPF hook to the gateway on
//!   18010; the JWT as the password, checked; the gateway logs in upstream with the credential
//!   it holds and records every statement);
//! - agentgate with a mask rule on the one column `pgbench -S` reads;
//! - with `--baseline-rev REV`: agentgate as built at git revision REV (no masking), through the
//!   same gateway directory, policy and port as the current one, to read a change's cost
//!   against the numbers before it (a table of new/old per workload).
//!
//! Workloads: `pgbench -S` (select-only, scale 1) in the simple, extended and prepared
//! protocols at 1, 8 and 32 clients, and `-C` (a new connection per transaction). Every run
//! starts on an idle server; PgBouncer and the gateway start afresh for each of their runs (an
//! empty pool, an empty record DB). Besides pgbench's TPS and latency, the proxy's own CPU
//! time per transaction (user and system, from /proc), and one `perf` profile of the gateway.

use std::{
    fs,
    path::PathBuf,
    process::{Command, Output},
    time::{Duration, Instant},
};

use agentgate_tests::{
    mint, now,
    pg::{
        conninfo, output_text, pgbench_command, psql, PgGateway, PgOptions, PgTargetOptions,
        ROLE_PASSWORD, ROLE_SCRAM, SUPERUSER_PASSWORD,
    },
    place,
};
use anyhow::{bail, Context};
use serde_json::Value;

use crate::{
    baselines::Baseline,
    bench::{median, min_max},
    bench_rev::OldBuild,
    report::md,
    util,
};

/// Ports of this section (bench only).
const LISTEN_PORT: u16 = 18010;
const PG_PORT: u16 = 18011;
const HAPROXY_PORT: u16 = 18012;
const PGBOUNCER_PORT: u16 = 18013;
/// The database pgbench runs in (`pgbench -i -s 1`: 100 000 accounts).
const DB: &str = "bench";
const CLIENTS: [usize; 3] = [1, 8, 32];
/// pgbench's `-M` modes; the last group is `-C` (simple protocol, a new connection per
/// transaction).
const GROUPS: [&str; 4] = ["simple", "extended", "prepared", "connect"];

/// The mask rule of the masking contender: the one column `pgbench -S` reads, for tokens with
/// the `masked` group only, so both agentgate contenders share one policy.
const MASK_RULE: &str = concat!(
    "  - name: mask-balance\n",
    "    when: {groups: [masked]}\n",
    "    targets: [pg]\n",
    "    mask: {columns: [pgbench_accounts.abalance], strategy: redact}\n",
);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Contender {
    Direct,
    HaProxy,
    PgBouncer,
    Agentgate,
    AgentgateMasked,
    /// `--baseline-rev`: the agentgate binary of an older revision, as `Agentgate` otherwise.
    AgentgateOld,
}

const CONTENDERS: [Contender; 6] = [
    Contender::Direct,
    Contender::HaProxy,
    Contender::PgBouncer,
    Contender::Agentgate,
    Contender::AgentgateMasked,
    Contender::AgentgateOld,
];

impl Contender {
    /// The label in the tables; `old_rev` names `AgentgateOld`'s revision.
    fn label(self, old_rev: Option<&str>) -> String {
        match self {
            Contender::Direct => "direct".into(),
            Contender::HaProxy => "HAProxy (tcp)".into(),
            Contender::PgBouncer => "PgBouncer (session)".into(),
            Contender::Agentgate => "agentgate".into(),
            Contender::AgentgateMasked => "agentgate + masking".into(),
            Contender::AgentgateOld => format!("agentgate @{}", old_rev.unwrap_or("?")),
        }
    }

    fn is_agentgate(self) -> bool {
        matches!(
            self,
            Contender::Agentgate | Contender::AgentgateMasked | Contender::AgentgateOld
        )
    }
}

/// The contenders of this run: `AgentgateOld` only with `--baseline-rev`.
fn contenders(with_old: bool) -> Vec<Contender> {
    CONTENDERS
        .into_iter()
        .filter(|&c| with_old || c != Contender::AgentgateOld)
        .collect()
}

/// What one pgbench run reported, and what the proxy spent on it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PgRun {
    pub tps: f64,
    pub latency_ms: f64,
    /// `-C` only: "average connection time".
    pub connect_ms: Option<f64>,
    pub transactions: u64,
    /// The proxy's (user, system) CPU seconds during the run; none for direct.
    pub proxy_cpu: Option<(f64, f64)>,
}

/// Everything the section starts; stopped and removed on drop, also on an early return.
struct Bench {
    p: PgGateway,
    haproxy: Baseline,
    /// The current agentgate binary (`$AGENTGATE_BIN` as the section starts).
    current_bin: PathBuf,
    old: Option<OldBuild>,
}

pub fn postgres(secs: u64, reps: usize, old: Option<&OldBuild>) -> anyhow::Result<()> {
    let cases: Vec<(usize, usize)> = (0..GROUPS.len())
        .flat_map(|g| CLIENTS.iter().map(move |&c| (g, c)))
        .collect();
    let who_runs = contenders(old.is_some());
    let runs = cases.len() * who_runs.len() * reps;
    eprintln!(
        "bench: PostgreSQL section: {runs} pgbench runs of {secs} s (about {} min)",
        (runs as u64 * (secs + 2)).div_ceil(60)
    );
    let mut b = start(old)?;
    // Warm-up, not counted: the tables in the server's cache, the first connections made.
    let warm_up = pgbench_args("simple", 8, secs.min(5));
    run_once(&mut b, Contender::Direct, &warm_up)?;
    run_once(&mut b, Contender::Agentgate, &warm_up)?;

    // results[case][contender as usize] (empty for a contender not in this run)
    let mut results: Vec<Vec<Vec<PgRun>>> = vec![vec![Vec::new(); CONTENDERS.len()]; cases.len()];
    let started = Instant::now();
    for rep in 0..reps {
        for (k, &(g, clients)) in cases.iter().enumerate() {
            for i in 0..who_runs.len() {
                // Rotate the order by repetition and case, so no contender always goes first.
                let who = who_runs[(i + rep + k) % who_runs.len()];
                let args = pgbench_args(GROUPS[g], clients, secs);
                let run = run_once(&mut b, who, &args)?;
                results[k][who as usize].push(run);
            }
        }
        eprintln!(
            "bench: PostgreSQL repetition {}/{reps} done ({:.0} s)",
            rep + 1,
            started.elapsed().as_secs_f64()
        );
    }
    let old_rev = old.map(|o| o.rev.as_str());
    print(&results, &cases, &who_runs, old_rev, secs, reps);
    if let Some(old) = old {
        print_against_old(&results, &cases, old);
    }
    // The profile is the current binary's.
    use_binary(&mut b, Contender::Agentgate)?;
    profile(&mut b, secs)?;
    Ok(())
}

/// PostgreSQL with pgbench's tables, the gateway (its policy with the mask rule), HAProxy;
/// checks that each agentgate contender gets what it claims (masked or not) before measuring.
fn start(old: Option<&OldBuild>) -> anyhow::Result<Bench> {
    let opts = PgTargetOptions {
        extra_rules: MASK_RULE.into(),
        ..PgTargetOptions::default()
    };
    let p = PgGateway::start(
        "bench-pg",
        LISTEN_PORT,
        PG_PORT,
        PgOptions::default(),
        &opts,
    );
    pgbench_init(&p.pg, DB)?;
    p.pg.sql_in(
        DB,
        &format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {ROLE_SCRAM};"),
    );
    let haproxy = Baseline::haproxy(HAPROXY_PORT, PG_PORT)?;
    let current_bin = agentgate_tests::agentgate_bin();
    let mut b = Bench {
        p,
        haproxy,
        current_bin,
        old: old.cloned(),
    };
    let old_rev = old.map(|o| o.rev.as_str());
    // What each agentgate contender is sent in each protocol measured, read back from the
    // gateway's record of the rows it sent (after masking).
    for mode in ["simple", "extended", "prepared"] {
        for who in contenders(old.is_some())
            .into_iter()
            .filter(|w| w.is_agentgate())
        {
            let args = ["-S", "-n", "-M", mode, "-c", "1", "-t", "3"].map(String::from);
            run_once(&mut b, who, &args)?;
            let sent = balances_sent(&b.p, 3)?;
            let masked = sent.iter().all(|v| v == "****");
            let plain = sent.iter().all(|v| v.parse::<i64>().is_ok());
            let ok = match who {
                Contender::AgentgateMasked => masked,
                _ => plain,
            };
            // One row per select: fewer would let an empty record pass.
            if !ok || sent.len() < 3 {
                bail!(
                    "{} with -M {mode}: pgbench was sent abalance values {sent:?}",
                    who.label(old_rev)
                );
            }
        }
    }
    let direct = psql(
        &conninfo(
            "127.0.0.1",
            HAPROXY_PORT,
            ROLE_SCRAM,
            ROLE_PASSWORD,
            DB,
            "disable",
        ),
        &["-tAc", "SELECT 1"],
    );
    if String::from_utf8_lossy(&direct.stdout).trim() != "1" {
        bail!("psql through HAProxy: {}", output_text(&direct));
    }
    Ok(b)
}

/// The `abalance` values the gateway sent agents, from the `results` of its records of
/// pgbench's select (waits up to 10 s for `statements` of them: the record is written behind
/// the data path).
fn balances_sent(p: &PgGateway, statements: usize) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new(agentgate_tests::agentgate_bin())
            .arg("audit")
            .arg("--record-db")
            .arg(p.gw.record_db())
            .arg("export")
            .output()
            .context("agentgate audit export")?;
        if !out.status.success() {
            bail!("agentgate audit export: {}", output_text(&out));
        }
        let bodies: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| r["kind"] == "statement")
            .map(|r| r["record"].clone())
            // pgbench's own select, not its start-up look at the table's partitions.
            .filter(|b| {
                b["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("abalance FROM pgbench_accounts"))
            })
            .collect();
        if bodies.len() >= statements {
            return Ok(bodies
                .iter()
                .flat_map(|b| b["results"].as_array().cloned().unwrap_or_default())
                .flat_map(|row| row.as_array().cloned().unwrap_or_default())
                .map(|v| v.as_str().unwrap_or("NULL").to_string())
                .collect());
        }
        if Instant::now() > deadline {
            bail!(
                "{} of pgbench's selects on record after 10 s, expected {statements}",
                bodies.len()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The agent's password for an agentgate contender: a fresh JWT, with the `masked` group for
/// the masking one.
fn token(who: Contender) -> String {
    let groups: &[&str] = match who {
        Contender::AgentgateMasked => &["agents", "masked"],
        _ => &["agents"],
    };
    mint("bench-agent", groups, now(), now() + 600)
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

/// Points the harness at `who`'s agentgate binary (`$AGENTGATE_BIN`, read by the gateway's
/// every start and by `agentgate audit`). On a change of binary the stopped gateway's pinned
/// eBPF maps and links are removed first: a gateway reuses the pins it finds in its pin
/// directory, and another build's maps need not have the same layout.
fn use_binary(b: &mut Bench, who: Contender) -> anyhow::Result<()> {
    let bin = match (who, &b.old) {
        (Contender::AgentgateOld, Some(old)) => old.bin.clone(),
        (Contender::AgentgateOld, None) => bail!("no old agentgate built (--baseline-rev)"),
        _ => b.current_bin.clone(),
    };
    if agentgate_tests::agentgate_bin() == bin {
        return Ok(());
    }
    b.p.gw.kill9();
    let out = b.p.gw.uninstall();
    if !out.status.success() {
        bail!(
            "agentgate uninstall before switching to {}: {}",
            bin.display(),
            output_text(&out)
        );
    }
    std::env::set_var("AGENTGATE_BIN", &bin);
    Ok(())
}

/// One pgbench run through `who`, on an idle server and a fresh proxy where it has state.
fn run_once(b: &mut Bench, who: Contender, args: &[String]) -> anyhow::Result<PgRun> {
    if who.is_agentgate() {
        use_binary(b, who)?;
        fresh_gateway(&mut b.p, true)?;
    }
    // Started only for its run: an empty pool, and nothing left open upstream afterwards.
    let pgbouncer = match who {
        Contender::PgBouncer => Some(Baseline::pgbouncer(
            PGBOUNCER_PORT,
            PG_PORT,
            DB,
            ROLE_SCRAM,
            ROLE_PASSWORD,
        )?),
        _ => None,
    };
    if !b.p.wait_no_upstream(Duration::from_secs(15)) {
        bail!(
            "{} upstream sessions still open 15 s after the previous pgbench run",
            b.p.upstream_backends()
        );
    }
    let (user, password, port) = match who {
        Contender::Direct => (ROLE_SCRAM, ROLE_PASSWORD.to_string(), PG_PORT),
        Contender::HaProxy => (ROLE_SCRAM, ROLE_PASSWORD.to_string(), HAPROXY_PORT),
        Contender::PgBouncer => (ROLE_SCRAM, ROLE_PASSWORD.to_string(), PGBOUNCER_PORT),
        // The server's own address: the hook sends it to the gateway.
        Contender::Agentgate | Contender::AgentgateMasked | Contender::AgentgateOld => {
            ("agent", token(who), PG_PORT)
        }
    };
    let proxy_pid = match who {
        Contender::Direct => None,
        Contender::HaProxy => Some(b.haproxy.pid()),
        Contender::PgBouncer => pgbouncer.as_ref().map(Baseline::pid),
        Contender::Agentgate | Contender::AgentgateMasked | Contender::AgentgateOld => {
            Some(b.p.gw.pid())
        }
    };
    let mut cmd = pgbench_command("127.0.0.1", port, user, DB);
    cmd.args(args).env("PGPASSWORD", &password);
    if who.is_agentgate() {
        place(&mut cmd, Some(&b.p.agent), None);
    }
    let what = format!(
        "pgbench {} ({})",
        args.join(" "),
        who.label(b.old.as_ref().map(|o| o.rev.as_str()))
    );
    let before = proxy_pid.map(util::proc_stats).transpose()?;
    let out = cmd.output().with_context(|| format!("run {what}"))?;
    let after = proxy_pid.map(util::proc_stats).transpose()?;
    let mut run = pgbench_report(&out, &what, args.iter().any(|a| a == "-C"))?;
    run.proxy_cpu = before
        .zip(after)
        .map(|(a, z)| (z.user_secs - a.user_secs, z.system_secs - a.system_secs));
    drop(pgbouncer);
    Ok(run)
}

/// Stops the gateway and starts it again, a fresh process (with an empty record DB when
/// `empty_db`); waits until it has placed the agent cgroup under its hook.
pub(crate) fn fresh_gateway(p: &mut PgGateway, empty_db: bool) -> anyhow::Result<()> {
    p.gw.kill9();
    if empty_db {
        let db = p.gw.record_db();
        for suffix in ["", "-wal", "-shm"] {
            let _ = fs::remove_file(format!("{}{suffix}", db.display()));
        }
    }
    let rel = p.agent.rel.clone();
    let is_agent = |e: &Value| e["event"] == "cgroup" && e["cgroup"] == rel.as_str();
    let before = p.gw.events().iter().filter(|e| is_agent(e)).count();
    p.gw.start_again();
    p.gw.wait_for(Duration::from_secs(15), is_agent, before);
    Ok(())
}

/// What pgbench printed: TPS, average latency, connection time (with `-C`) and the
/// transactions processed; an error if it failed or any transaction did.
pub(crate) fn pgbench_report(out: &Output, what: &str, connect: bool) -> anyhow::Result<PgRun> {
    let text = output_text(out);
    if !out.status.success() {
        bail!("{what} failed ({}):\n{text}", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    // "tps = 1234.5 (without initial connection time)", with -C "(including reconnection times)".
    let tps = stat(&stdout, "tps = ").with_context(|| format!("{what} printed no tps:\n{text}"))?;
    let latency_ms = stat(&stdout, "latency average = ")
        .with_context(|| format!("{what} printed no average latency:\n{text}"))?;
    let connect_ms = stat(&stdout, "average connection time = ");
    let transactions = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|r| r.split('/').next())
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if transactions == 0 || tps.is_nan() || tps <= 0.0 {
        bail!("{what} processed no transactions:\n{text}");
    }
    let failed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    if failed > 0 {
        bail!("{what}: {failed} transactions failed:\n{text}");
    }
    if connect && connect_ms.is_none() {
        bail!("{what} printed no average connection time:\n{text}");
    }
    Ok(PgRun {
        tps,
        latency_ms,
        connect_ms,
        transactions,
        proxy_cpu: None,
    })
}

/// The number after `prefix` at the start of a line of pgbench's report.
fn stat(report: &str, prefix: &str) -> Option<f64> {
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

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

/// Medians of one case's runs through one contender.
struct Summary {
    tps: f64,
    tps_lo: f64,
    tps_hi: f64,
    latency_ms: f64,
    connect_ms: f64,
    /// Proxy CPU µs per transaction (user, system); NaN for direct.
    cpu_us: (f64, f64),
}

fn summarize(runs: &[PgRun]) -> Summary {
    let col = |f: &dyn Fn(&PgRun) -> f64| -> Vec<f64> { runs.iter().map(f).collect() };
    let tps = col(&|r| r.tps);
    let (tps_lo, tps_hi) = min_max(&tps);
    let per_txn = |f: fn((f64, f64)) -> f64| {
        median(col(&|r| {
            r.proxy_cpu
                .map_or(f64::NAN, |c| f(c) * 1e6 / r.transactions as f64)
        }))
    };
    Summary {
        tps: median(tps),
        tps_lo,
        tps_hi,
        latency_ms: median(col(&|r| r.latency_ms)),
        connect_ms: median(col(&|r| r.connect_ms.unwrap_or(f64::NAN))),
        cpu_us: (per_txn(|c| c.0), per_txn(|c| c.1)),
    }
}

fn print(
    results: &[Vec<Vec<PgRun>>],
    cases: &[(usize, usize)],
    who_runs: &[Contender],
    old_rev: Option<&str>,
    secs: u64,
    reps: usize,
) {
    let paths = if old_rev.is_some() { "six" } else { "five" };
    md!("\n### pgbench -S through {paths} paths ({reps} repetitions of {secs} s)\n");
    md!(
        "pgbench (see software above), scale 1 (100 000 accounts, all in shared buffers), server and proxies on \
         loopback. direct: `{ROLE_SCRAM}` (SCRAM) from an unmanaged process. HAProxy: `mode \
         tcp`, `nbthread 2`; the client's SCRAM goes through to the server. PgBouncer: \
         `pool_mode = session`, SCRAM from the client to PgBouncer and from PgBouncer to the \
         server, started afresh (an empty pool) for each of its runs. agentgate: pgbench in the \
         agent cgroup connects to the server's own address, the eBPF hook sends it to the \
         gateway; the password is a JWT (RS256) the gateway verifies; the gateway logs in \
         upstream as `{ROLE_SCRAM}` (SCRAM) with the credential it holds, and records every \
         session and statement in its SQLite journal (started afresh with an empty record DB \
         for each of its runs, log level info). agentgate + masking: the same, with a token \
         whose group a mask rule on `pgbench_accounts.abalance` (`strategy: redact`) applies to: \
         every row pgbench reads is rewritten (checked before measuring: `****` instead of \
         `0`). N clients, `-j min(N,2)`. Medians over repetitions; ratio = TPS / direct TPS; \
         added latency = median latency − median direct latency; proxy CPU = the proxy \
         process's user + system time during the run ÷ transactions (PostgreSQL and pgbench \
         not included). With `-C`, TPS = connections/s and pgbench's latency includes \
         connecting."
    );
    if let Some(rev) = old_rev {
        md!(
            "\nagentgate @{rev}: the same as agentgate (no masking), with the gateway binary built \
             at git revision `{rev}` (`--baseline-rev`)."
        );
    }
    let mut by_case = Vec::new();
    for (g, mode) in GROUPS.iter().enumerate() {
        let connect = *mode == "connect";
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
        md!("\n#### `pgbench {example}`\n");
        md!("| clients | path | TPS (median) | TPS min–max | ratio to direct | latency avg ms | added latency µs | {}proxy CPU µs/txn (user+sys) |", if connect { "connect ms | added connect µs | " } else { "" });
        md!(
            "|---|---|---|---|---|---|---|{}---|",
            if connect { "---|---|" } else { "" }
        );
        for (k, &(_, clients)) in cases.iter().enumerate().filter(|(_, c)| c.0 == g) {
            let s: Vec<Summary> = results[k].iter().map(|r| summarize(r)).collect();
            let base = &s[Contender::Direct as usize];
            for &who in who_runs {
                let x = &s[who as usize];
                let (added, added_conn) = if who == Contender::Direct {
                    ("—".to_string(), "—".to_string())
                } else {
                    (
                        format!("{:+.0}", (x.latency_ms - base.latency_ms) * 1000.0),
                        format!("{:+.0}", (x.connect_ms - base.connect_ms) * 1000.0),
                    )
                };
                let conn = if connect {
                    format!(" {:.3} | {added_conn} |", x.connect_ms)
                } else {
                    String::new()
                };
                let cpu = if who == Contender::Direct {
                    "—".to_string()
                } else {
                    format!(
                        "{:.1} ({:.1}+{:.1})",
                        x.cpu_us.0 + x.cpu_us.1,
                        x.cpu_us.0,
                        x.cpu_us.1
                    )
                };
                md!(
                    "| {clients} | {} | {:.0} | {:.0}–{:.0} | {:.2} | {:.3} | {added} |{conn} {cpu} |",
                    who.label(old_rev),
                    x.tps,
                    x.tps_lo,
                    x.tps_hi,
                    x.tps / base.tps,
                    x.latency_ms
                );
            }
            by_case.push((*mode, clients, s));
        }
    }

    md!("\n#### TPS ratios to direct\n");
    md!("| pgbench -S | clients | HAProxy | PgBouncer | agentgate | agentgate + masking |");
    md!("|---|---|---|---|---|---|");
    for (mode, clients, s) in &by_case {
        let base = s[Contender::Direct as usize].tps;
        let r = |who: Contender| s[who as usize].tps / base;
        md!(
            "| {} | {clients} | {:.2} | {:.2} | {:.2} | {:.2} |",
            mode_label(mode),
            r(Contender::HaProxy),
            r(Contender::PgBouncer),
            r(Contender::Agentgate),
            r(Contender::AgentgateMasked)
        );
    }

    md!("\n#### against the goals (issue 20)\n");
    md!(
        "agentgate with full control, recording and one masked column (the \"+ masking\" \
         contender) against HAProxy in TCP mode, in the same run."
    );
    md!("\n| goal | workload | figure | goal met | gap |");
    md!("|---|---|---|---|---|");
    for (mode, clients, s) in &by_case {
        let ha = &s[Contender::HaProxy as usize];
        let full = &s[Contender::AgentgateMasked as usize];
        if *mode == "connect" {
            // -C: one connection per transaction, so TPS is connections per second.
            let ratio = s[Contender::Agentgate as usize].tps / ha.tps;
            md!(
                "| connections/s ≥ HAProxy's | -C, {clients} clients | {ratio:.2} × ({:.0} vs {:.0}) | {} | {} |",
                s[Contender::Agentgate as usize].tps,
                ha.tps,
                yes_no(ratio >= 1.0),
                gap(ratio, 1.0)
            );
        } else if *clients == 1 {
            let direct = s[Contender::Direct as usize].latency_ms;
            let (ours, theirs) = (
                (full.latency_ms - direct) * 1000.0,
                (ha.latency_ms - direct) * 1000.0,
            );
            md!(
                "| added latency ≤ HAProxy's | {}, 1 client | {ours:+.0} µs vs {theirs:+.0} µs | {} | {} |",
                mode_label(mode),
                yes_no(ours <= theirs),
                if ours <= theirs {
                    "—".to_string()
                } else {
                    format!("{:.0} µs over", ours - theirs)
                }
            );
        } else {
            let ratio = full.tps / ha.tps;
            md!(
                "| TPS ≥ 1.0 × HAProxy | {}, {clients} clients | {ratio:.2} × ({:.0} vs {:.0}) | {} | {} |",
                mode_label(mode),
                full.tps,
                ha.tps,
                yes_no(ratio >= 1.0),
                gap(ratio, 1.0)
            );
        }
    }
}

/// The current agentgate against the one built at `--baseline-rev`, workload by workload.
fn print_against_old(results: &[Vec<Vec<PgRun>>], cases: &[(usize, usize)], old: &OldBuild) {
    let rev = &old.rev;
    let commit = &old.commit[..old.commit.len().min(12)];
    md!("\n#### agentgate against agentgate @{rev} ({commit})\n");
    md!(
        "The current build and the one of `{rev}` (the same release profile), in the same run: \
         they alternate with the other paths within every repetition, each started afresh for \
         each of its runs with the same policy, port and record settings. new/old = median TPS \
         of the current ÷ median TPS of `{rev}` (below 1: the current is slower); per \
         repetition = the same ratio of the two runs of each repetition; added latency = median \
         latency of the current − that of `{rev}`; gateway CPU = the gateway process's user + \
         system time ÷ transactions."
    );
    md!("\n| pgbench -S | clients | TPS new (min–max) | TPS @{rev} (min–max) | new/old | per repetition | latency ms new / @{rev} | added latency µs | gateway CPU µs/txn new / @{rev} |");
    md!("|---|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for (k, &(g, clients)) in cases.iter().enumerate() {
        let new_runs = &results[k][Contender::Agentgate as usize];
        let old_runs = &results[k][Contender::AgentgateOld as usize];
        let (n, o) = (summarize(new_runs), summarize(old_runs));
        let ratio = n.tps / o.tps;
        ratios.push(ratio);
        let per_rep = new_runs
            .iter()
            .zip(old_runs)
            .map(|(a, z)| format!("{:.2}", a.tps / z.tps))
            .collect::<Vec<_>>()
            .join(", ");
        let cpu = |s: &Summary| s.cpu_us.0 + s.cpu_us.1;
        md!(
            "| {} | {clients} | {:.0} ({:.0}–{:.0}) | {:.0} ({:.0}–{:.0}) | {ratio:.3} | {per_rep} | {:.3} / {:.3} | {:+.0} | {:.1} / {:.1} |",
            mode_label(GROUPS[g]),
            n.tps,
            n.tps_lo,
            n.tps_hi,
            o.tps,
            o.tps_lo,
            o.tps_hi,
            n.latency_ms,
            o.latency_ms,
            (n.latency_ms - o.latency_ms) * 1000.0,
            cpu(&n),
            cpu(&o)
        );
    }
    let (lo, hi) = min_max(&ratios);
    md!(
        "\nnew/old over the {} workloads: geometric mean {:.3}, lowest {lo:.3}, highest {hi:.3}.",
        ratios.len(),
        geometric_mean(&ratios)
    );
}

fn geometric_mean(v: &[f64]) -> f64 {
    (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp()
}

fn mode_label(mode: &str) -> String {
    if mode == "connect" {
        "-C (simple)".into()
    } else {
        format!("-M {mode}")
    }
}

fn yes_no(met: bool) -> &'static str {
    if met {
        "yes"
    } else {
        "no"
    }
}

/// How far a ratio is below its goal, in percent of the goal.
fn gap(ratio: f64, goal: f64) -> String {
    if ratio >= goal {
        "—".into()
    } else {
        format!("{:.0} % short", (goal - ratio) / goal * 100.0)
    }
}

/// Where the gateway's time goes: one more run (8 clients, simple protocol) under `perf
/// record` with call graphs; its time by thread, by part and by function. Skipped, and said
/// so, without `perf`.
fn profile(b: &mut Bench, secs: u64) -> anyhow::Result<()> {
    md!("\n### where the gateway's time goes\n");
    if Command::new("perf").arg("--version").output().is_err() {
        md!("`perf` is not installed (`cargo xtask setup` installs linux-perf): no profile.");
        return Ok(());
    }
    fresh_gateway(&mut b.p, true)?;
    let data = std::env::temp_dir().join(format!("agbench-perf-{}.data", std::process::id()));
    let _remove = RemoveOnDrop(data.clone());
    let args = pgbench_args("simple", 8, secs);
    let record = ["record", "-F", "499", "--call-graph", "dwarf,16384", "-q"];
    let mut perf = Command::new("perf")
        .args(record)
        .arg("-o")
        .arg(&data)
        .args(["-p", &b.p.gw.pid().to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("start perf record")?;
    std::thread::sleep(Duration::from_millis(500));
    let mut cmd = pgbench_command("127.0.0.1", PG_PORT, "agent", DB);
    cmd.args(&args)
        .env("PGPASSWORD", token(Contender::Agentgate));
    place(&mut cmd, Some(&b.p.agent), None);
    let out = cmd.output().context("run pgbench under perf")?;
    // SIGINT: perf writes its data and exits.
    util::run(Command::new("kill").args(["-INT", &perf.id().to_string()]))?;
    perf.wait()?;
    let run = pgbench_report(&out, "pgbench under perf", false)?;
    let report = |children: bool, sort: &str, limit: &str| -> anyhow::Result<Vec<String>> {
        let out = Command::new("perf")
            .args([
                "report",
                "--stdio",
                "-g",
                "none",
                "-q",
                "--percent-limit",
                limit,
            ])
            .arg(if children {
                "--children"
            } else {
                "--no-children"
            })
            .args(["--sort", sort, "-i"])
            .arg(&data)
            .output()
            .context("perf report")?;
        if !out.status.success() {
            bail!("perf report: {}", output_text(&out));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.trim_end().to_string())
            .collect())
    };
    let by_thread = report(false, "comm", "0.5")?;
    let by_sym = report(false, "dso,sym", "0.7")?;
    let every_function = report(false, "dso,sym", "0")?;
    md!(
        "`perf {} -p <gateway>` during `pgbench {}` through agentgate ({:.0} TPS under the \
         profiler), all the gateway's threads. Time by thread:\n",
        record.join(" "),
        args.join(" "),
        run.tps
    );
    md!("```\n{}\n```\n", by_thread.join("\n"));
    let (parts, covered) =
        crate::bench_profile::breakdown(&crate::bench_profile::parse_report(&every_function));
    md!(
        "By part: every function's self time, each in one part (rules in \
         xtask/src/bench_profile.rs), so the parts add up ({covered:.1} % of the samples \
         listed):\n"
    );
    md!("| part | share of the gateway's CPU |");
    md!("|---|---|");
    for (label, share) in crate::bench_profile::PARTS.iter().zip(parts) {
        md!("| {label} | {share:.1} % |");
    }
    md!("\nSelf time by function (`[k]` kernel, `[.]` user space), the top:\n");
    md!("```\n{}\n```", by_sym.join("\n"));
    Ok(())
}

/// Removes a file on drop (the profile's data, also when the profile fails).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}
