//! Project tasks: `cargo xtask setup | test | demo | bench | image`.

mod baselines;
mod bench;
mod bench_flood;
mod bench_http;
mod bench_mask;
mod bench_pg;
mod bench_profile;
mod bench_record;
mod bench_record_scale;
mod bench_rev;
mod bench_ssh;
mod demo;
mod image;
mod report;
mod setup;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a new machine lacks (apt packages, bpf-linker, nightly rust-src). Idempotent.
    Setup,
    /// Build agentgate and run every test (unit and end-to-end; needs root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Show an agent in a fresh cgroup going through the gateway (needs root).
    Demo {
        /// Another story instead: `autogen`, twelve CI jobs' AutoGen teams behind the gateway
        /// (docs/autogen.md).
        #[arg(long)]
        story: Option<demo::Story>,
    },
    /// Side-by-side measurements written into docs/benchmarks.md: connect() latency, relay
    /// throughput, pgbench direct vs HAProxy vs PgBouncer vs agentgate, result streaming with
    /// and without masking, the audit writer vs recording off, the gateway's memory after a
    /// connection flood by allocator, ssh round trips and transfers (needs root).
    Bench(bench::Options),
    /// Build the OCI image of deploy/Containerfile with podman (or buildah), FROM scratch: the
    /// gateway and the shared libraries it links, nothing else (docs/kubernetes-deploy.md).
    Image(image::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Test { args } => test(&args),
        Task::Demo { story: None } => demo::run(),
        Task::Demo {
            story: Some(demo::Story::Autogen),
        } => demo::autogen::run(),
        Task::Bench(options) => bench::run(&options),
        Task::Image(options) => image::run_image(&options),
    }
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    use std::io::BufRead;

    let bins = util::build(false)?;
    let mut cmd = std::process::Command::new("cargo");
    cmd.current_dir(util::root())
        .args(["test", "--workspace", "--exclude", "gateway-ebpf"])
        // `cargo xtask test --test postgres` runs that one test binary, not every target.
        .args(
            (!extra.iter().any(|a| {
                matches!(
                    a.as_str(),
                    "--test" | "--bin" | "--lib" | "--bins" | "--tests"
                )
            }))
            .then_some("--all-targets"),
        )
        .args(extra)
        .env("AGENTGATE_BIN", &bins.agentgate)
        .env("AGENT_PROBE_BIN", &bins.probe)
        .env("PG_AGENT_BIN", &bins.pg_agent)
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    // Echo cargo's output and add up its per-binary results into one closing line.
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split([';', '.']) {
                let mut words = part.split_whitespace();
                match (
                    words.next().and_then(|n| n.parse::<u64>().ok()),
                    words.next(),
                ) {
                    (Some(n), Some("passed")) => passed += n,
                    (Some(n), Some("failed")) => failed += n,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        anyhow::bail!("cargo test failed: {status}");
    }
    Ok(())
}
