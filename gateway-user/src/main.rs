//! agentgate: the binary edge. Everything below `run` is library-style code with typed errors.

mod capture;
mod cli;
mod ebpf;
#[allow(dead_code)] // wired into the proxy and the policy loader next
mod identity;
mod policy;
mod protocol;
mod proxy;
mod record;
mod run;
mod upstream;

use clap::Parser;

use cli::{Cli, Command, PolicyCommand};

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AGENTGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Policy {
            command: PolicyCommand::Check { dir },
        } => policy_check(&dir),
        Command::Uninstall { pin_dir } => uninstall(&pin_dir),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentgate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn policy_check(dir: &std::path::Path) -> anyhow::Result<()> {
    let p = policy::load_dir(dir)?;
    println!(
        "{}: ok ({} workloads, {} targets)",
        dir.display(),
        p.workloads.len(),
        p.targets.len()
    );
    Ok(())
}

fn uninstall(pin_dir: &std::path::Path) -> anyhow::Result<()> {
    let removed = ebpf::uninstall(pin_dir)?;
    for p in &removed {
        println!("removed {}", p.display());
    }
    println!(
        "agentgate uninstalled from {} ({} pinned objects removed); workloads now connect directly",
        pin_dir.display(),
        removed.len()
    );
    Ok(())
}
