//! Project tasks: `cargo xtask setup | test | demo | bench`.

mod bench;
mod demo;
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
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Show an agent in a fresh cgroup going through the gateway (needs root).
    Demo,
    /// Side-by-side measurements: connect() latency, relay throughput (needs root).
    Bench {
        /// Repetitions of each measurement (contenders alternate within each repetition).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Bytes per throughput run.
        #[arg(long, default_value_t = 1 << 30)]
        bytes: u64,
        /// connect() calls per latency run.
        #[arg(long, default_value_t = 2000)]
        connects: usize,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Test { args } => test(&args),
        Task::Demo => demo::run(),
        Task::Bench {
            reps,
            bytes,
            connects,
        } => bench::run(reps, bytes, connects),
    }
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    let bins = util::build(false)?;
    let mut cmd = std::process::Command::new("cargo");
    cmd.current_dir(util::root())
        .args(["test", "--workspace", "--exclude", "gateway-ebpf"])
        .args(extra)
        .env("AGENTGATE_BIN", &bins.agentgate)
        .env("AGENT_PROBE_BIN", &bins.probe);
    util::run(&mut cmd)
}
