//! Idempotent machine setup. Versions are the ones verified in ../shared/docs/ebpf-toolchain.md:
//! the newest aya and bpf-linker releases do not build with the toolchains available here.

use std::process::Command;

use anyhow::Context;

use crate::util::run as sh;

const APT_PACKAGES: &[&str] = &[
    // bpf-linker links against LLVM 22, the LLVM of the nightly toolchain.
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // `ip netns` for the pod-mode tests.
    "iproute2",
    // pg_query's build script runs bindgen, which loads libclang.
    "libclang-22-dev",
    // The PostgreSQL end-to-end tests start a throwaway PostgreSQL 15 server (initdb, pg_ctl,
    // postgres under /usr/lib/postgresql/15/bin), talk to it with psql and pgbench, and make
    // throwaway TLS certificates with the openssl CLI.
    "postgresql-15",
    "postgresql-client-15",
    "openssl",
    // psycopg 3 for /usr/bin/python3, which any uid can run (tests/fixtures/pg_client.py as a
    // non-root agent); root's `python3` may be another interpreter, see PIP_PACKAGES.
    "python3-psycopg",
    // `cargo xtask bench`: the proxies agentgate is measured against, and `perf` for its
    // profile of the gateway.
    "haproxy",
    "pgbouncer",
    "linux-perf",
];
/// pip packages for the `python3` on PATH, each with the module that shows it is present.
const PIP_PACKAGES: &[(&str, &str)] = &[
    // tests/fixtures/pg_client.py, the PostgreSQL client the end-to-end tests drive.
    ("psycopg", "psycopg[binary]>=3.1"),
];
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        println!("setup: apt packages present");
    } else {
        println!("setup: installing {}", missing.join(" "));
        sh(Command::new("apt-get").arg("update").arg("-qq"))?;
        sh(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }

    for (module, spec) in PIP_PACKAGES {
        if python_has(module) {
            println!("setup: python module {module} present");
        } else {
            println!("setup: pip installing {spec}");
            sh(Command::new("python3").args(["-m", "pip", "install", "--quiet", spec]))?;
        }
    }

    let has_src = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("rustup")?;
    if String::from_utf8_lossy(&has_src.stdout).contains("rust-src") {
        println!("setup: nightly rust-src present");
    } else {
        sh(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    let linker = Command::new("bpf-linker").arg("--version").output();
    let have = linker
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false);
    if have {
        println!("setup: bpf-linker {BPF_LINKER_VERSION} present");
    } else {
        println!(
            "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"
        );
        let path = format!(
            "/usr/lib/llvm-22/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        sh(Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("PATH", path)
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"))?;
    }
    Ok(())
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
