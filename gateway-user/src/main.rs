//! agentgate: the binary edge. Everything below `run` is library-style code with typed errors.

mod admin;
mod capture;
mod cli;
mod ebpf;
mod fswatch;
mod identity;
mod mask;
mod policy;
mod protocol;
mod proxy;
mod record;
mod run;
mod sockopt;
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
        Command::Status { admin_socket, json } => status(&admin_socket, json),
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
    // Problems go out one per line, each starting with file:line:column, for editors and CI.
    let p = policy::load_dir(dir).map_err(|e| {
        eprintln!("{e}");
        anyhow::anyhow!("policy {} is invalid", dir.display())
    })?;
    // The same checks `run` and a reload make before putting a policy in force.
    proxy::check_providers(&p).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    println!(
        "{}: ok, version {} ({} identity providers, {} workloads, {} targets, {} rules)",
        dir.display(),
        p.version,
        p.identity_providers.len(),
        p.workloads.len(),
        p.targets.len(),
        p.rules.len()
    );
    // The gateway, not this shell, must have them; a missing one is worth a look, not an error.
    for t in &p.targets {
        if let Some(Err(e)) = t.credential.as_ref().map(|c| c.resolve()) {
            println!("warning: target `{}`: upstream credential: {e}", t.name);
        }
    }
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

fn status(socket: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let answer = admin::request(socket, &serde_json::json!({"cmd": "status"}))?;
    if json {
        println!("{answer}");
        return Ok(());
    }
    let p = &answer["policy"];
    println!("agentgate pid {}", answer["pid"]);
    println!(
        "policy     {} (generation {}, from {})",
        p["version"].as_str().unwrap_or("?"),
        p["generation"],
        p["dir"].as_str().unwrap_or("?")
    );
    match p["last_error"].as_object() {
        Some(e) => println!(
            "last reload REFUSED (the policy above stays in force):\n  {}",
            e.get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("?")
                .replace('\n', "\n  ")
        ),
        None => println!("last reload ok"),
    }
    if let Some(e) = answer["capture_error"].as_str() {
        println!("CAPTURE NOT FULLY APPLIED: {e}");
    }
    println!("sessions   {} live", answer["sessions"]);
    Ok(())
}
