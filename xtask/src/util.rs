use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("{cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub struct Bins {
    pub agentgate: PathBuf,
    pub probe: PathBuf,
    pub pg_agent: PathBuf,
}

/// Builds the gateway (which builds the eBPF programs) and the probe agent.
pub fn build(release: bool) -> anyhow::Result<Bins> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root()).args([
        "build",
        "-p",
        "gateway-user",
        "-p",
        "agentgate-tests",
        "--bins",
    ]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
        .join(if release { "release" } else { "debug" });
    Ok(Bins {
        agentgate: dir.join("agentgate"),
        probe: dir.join("agent-probe"),
        pg_agent: dir.join("pg-agent"),
    })
}

pub fn require_root(what: &str) -> anyhow::Result<()> {
    let out = Command::new("id").arg("-u").output()?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        bail!("{what} loads eBPF programs and creates cgroups: run it as root (sudo -E cargo xtask ...)");
    }
    Ok(())
}
