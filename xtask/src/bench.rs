//! `cargo xtask bench`: capture overhead, side by side in one run, contenders alternating.
//!
//! - connect() latency to 127.0.0.2 from (a) a process with no hook, (b) a managed cgroup to a
//!   destination that is not a target (hook runs, passes), (c) a managed cgroup to a target
//!   (hook runs, redirects to the gateway listener);
//! - bulk upload throughput to a sink: direct vs through the gateway's TCP relay.

use std::{net::SocketAddr, process::Command};

use agentgate_tests::{place, policy, Cgroup, Gateway, TargetServer, TokenFile};
use anyhow::{bail, Context};
use serde_json::Value;

use crate::util;

pub fn run(reps: usize, bytes: u64, connects: usize) -> anyhow::Result<()> {
    util::require_root("the benchmark")?;
    let bins = util::build(true)?;
    std::env::set_var("AGENTGATE_BIN", &bins.agentgate);
    std::env::set_var("AGENT_PROBE_BIN", &bins.probe);

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

    let kernel = String::from_utf8_lossy(&Command::new("uname").arg("-r").output()?.stdout)
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!("\n## agentgate capture benchmark\n");
    println!("machine: {cores} cores, kernel {kernel}; {reps} repetitions, contenders alternating");
    println!("command: cargo xtask bench --reps {reps} --bytes {bytes} --connects {connects}\n");
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        })
}
