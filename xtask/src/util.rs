use std::{
    fs,
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
    let dir = target_dir().join(if release { "release" } else { "debug" });
    Ok(Bins {
        agentgate: dir.join("agentgate"),
        probe: dir.join("agent-probe"),
        pg_agent: dir.join("pg-agent"),
    })
}

/// The workspace's target directory: `$CARGO_TARGET_DIR` or `target/`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

pub fn require_root(what: &str) -> anyhow::Result<()> {
    let out = Command::new("id").arg("-u").output()?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        bail!("{what} loads eBPF programs and creates cgroups: run it as root (sudo -E cargo xtask ...)");
    }
    Ok(())
}

/// A process's memory (KiB) and CPU time, from /proc.
pub struct ProcStats {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// User and system CPU seconds.
    pub user_secs: f64,
    pub system_secs: f64,
}

impl ProcStats {
    pub fn cpu_secs(&self) -> f64 {
        self.user_secs + self.system_secs
    }
}

pub fn proc_stats(pid: u32) -> anyhow::Result<ProcStats> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status (did it exit?)"))?;
    let kib = |key: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no {key} in /proc/{pid}/status"))
    };
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15 (in USER_HZ = 100/s).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        fields
            .get(i - 3)
            .and_then(|n| n.parse::<f64>().ok())
            .with_context(|| format!("no field {i} in /proc/{pid}/stat"))
    };
    Ok(ProcStats {
        rss_kib: kib("VmRSS:")?,
        hwm_kib: kib("VmHWM:")?,
        user_secs: ticks(14)? / 100.0,
        system_secs: ticks(15)? / 100.0,
    })
}
