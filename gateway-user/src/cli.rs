//! Command-line interface.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/agentgate";

#[derive(Debug, Parser)]
#[command(
    name = "agentgate",
    version,
    about = "A node-local gateway that AI agents cannot go around"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the eBPF programs, capture the policy's workloads and relay their connections.
    Run(RunArgs),
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The running gateway: policy version in force, last reload error, live sessions.
    Status {
        #[arg(long, default_value = crate::admin::DEFAULT_SOCKET)]
        admin_socket: PathBuf,
        /// Print the raw JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Detach the programs and remove every pinned object: workloads then connect directly.
    Uninstall {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy directory; prints each problem as file:line:column and exits 1 if any.
    Check { dir: PathBuf },
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Directory of policy YAML files.
    #[arg(long)]
    pub policies: PathBuf,
    /// bpffs directory for the pinned maps and links (kept across restarts: fail closed).
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// cgroup v2 mount point (default: found in /proc/self/mountinfo).
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// Append connection and capture events as JSON lines to this file.
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// Unix socket of the local admin API (root only).
    #[arg(long, default_value = crate::admin::DEFAULT_SOCKET)]
    pub admin_socket: PathBuf,
    /// SQLite file that records every session and statement.
    #[arg(long, default_value = crate::record::DEFAULT_RECORD_DB)]
    pub record_db: PathBuf,
    /// On SIGTERM/SIGINT, wait this long for open connections before exiting.
    #[arg(long, default_value_t = 10)]
    pub drain_secs: u64,
}
