//! `cargo xtask demo`: an agent in a fresh cgroup reaches a TCP service only through the gateway;
//! then an agent's psql session to a throwaway PostgreSQL goes through the gateway, JWT as its
//! password, and its GRANT is denied; its DROP TABLE waits for a person, who denies one and
//! approves another through `agentgate approvals`; the agent reads a customers table with its
//! personal data masked, while the database holds the real values, and what the record DB keeps
//! of it all, read with `agentgate agents`, `sessions list|replay` and `audit verify`. Last, an
//! agent's unmodified `ssh` to a throwaway OpenSSH server goes through the gateway, which holds
//! the only credential the server accepts: its `systemctl` waits for a person's approval, its
//! `rm -rf` is refused, and `agentgate sessions` shows its commands.
//!
//! One scene per module (`tcp`, `postgres`, and within it `approvals`, `masking`, `record`;
//! `ssh`); `background` runs the agent's client, `output` prints tables and indented text.

use agentgate_tests::{fixtures, mint, now, Cgroup};

use crate::util;

mod approvals;
pub mod autogen;
mod background;
mod masking;
mod output;
mod postgres;
mod record;
mod ssh;
mod tcp;

const DEMO_DIR: &str = "/tmp/agentgate-demo";

/// The stories `cargo xtask demo --story` tells besides the default one.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Story {
    /// Twelve CI jobs' AutoGen teams behind the gateway (docs/autogen.md).
    Autogen,
}

pub fn run() -> anyhow::Result<()> {
    util::require_root("the demo")?;
    let bins = util::build(false)?;
    std::env::set_var("AGENTGATE_BIN", &bins.agentgate);
    std::env::set_var("AGENT_PROBE_BIN", &bins.probe);

    // Declared first so that it is removed last, after the gateways and the agents' cgroups.
    let _anchor = Cgroup::adopt("/agentgate-demo");
    let _files = DemoFiles::create()?;
    tcp::tcp_service()?;
    postgres::postgres()?;
    ssh::ssh()?;
    println!("\n== done: cleaning up (gateways, PostgreSQL and OpenSSH servers and their directories, cgroups, pinned programs, token, key and secret files)");
    Ok(())
}

/// The identity provider's keys and the agent's token, where policies/demo/demo.yaml expects them
/// (and, later, the PostgreSQL target's secret, where postgres.yaml expects it).
struct DemoFiles(std::path::PathBuf);

impl DemoFiles {
    fn create() -> anyhow::Result<Self> {
        let dir = std::path::PathBuf::from(DEMO_DIR);
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(fixtures().join("test-jwks.json"), dir.join("jwks.json"))?;
        std::fs::write(
            dir.join("agent-token"),
            mint("code-review-agent-1", &["demo-agents"], now(), now() + 600),
        )?;
        println!("== an OIDC token for subject code-review-agent-1 (group demo-agents, 10 min) is in /tmp/agentgate-demo/agent-token");
        Ok(Self(dir))
    }
}

impl Drop for DemoFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
