//! agentgate: the binary edge. Everything below `run` is library-style code with typed errors.

mod admin;
mod approval;
mod audit;
mod capture;
mod cli;
mod console;
mod ebpf;
mod fswatch;
mod handover;
mod identity;
mod mask;
mod net;
mod policy;
mod protocol;
mod proxy;
mod record;
mod run;
mod sockopt;
mod statement;
mod telemetry;
mod tls;

use clap::Parser;

use cli::{Cli, Command, PolicyCommand};

// Only for measuring (`cargo xtask bench --only flood`): the default build keeps glibc's malloc.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    telemetry::logging::init(match &cli.command {
        Command::Run(args) => args.log_format,
        _ => telemetry::LogFormat::Text,
    });
    let result = match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Policy {
            command: PolicyCommand::Check { dir },
        } => cli::policy::policy_check(&dir),
        Command::Uninstall { pin_dir } => cli::uninstall::uninstall(&pin_dir),
        Command::Status { admin_socket, json } => cli::status::status(&admin_socket, json),
        Command::Approvals {
            admin_socket,
            command,
        } => cli::approvals::approvals(&admin_socket, command),
        Command::Audit { record_db, command } => cli::audit::audit_command(&record_db, command),
        Command::Sessions {
            record_db,
            central,
            command,
        } => cli::sessions::sessions_command(&record_db, &central, command),
        Command::Agents {
            record_db,
            central,
            node,
            json,
        } => cli::agents::agents_command(&record_db, &central, node.as_deref(), json),
        Command::Revoke {
            admin_socket,
            identity,
            issuer,
            workload,
            reason,
            lift,
            list,
            json,
        } => cli::revoke::revoke_command(
            &admin_socket,
            cli::revoke::Target {
                identity,
                issuer,
                workload,
                reason,
            },
            lift,
            list,
            json,
        ),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentgate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
