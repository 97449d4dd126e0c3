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
    // tests/tests/drivers.rs: asyncpg for /usr/bin/python3 too (root's `python3` gets it from
    // pip, see PIP_PACKAGES), and pgJDBC as /usr/share/java/postgresql.jar, compiled against
    // with the machine's javac (a JDK is installed only where javac is missing, see run()).
    "python3-asyncpg",
    "libpostgresql-jdbc-java",
    // tests/tests/telemetry.rs parses the gateway's /metrics with the official Prometheus
    // client's parser (tests/fixtures/prom_parse.py; about 200 kB, against about 100 MB for the
    // `prometheus` package's promtool).
    "python3-prometheus-client",
    // `cargo xtask bench`: the proxies agentgate is measured against, and `perf` for its
    // profile of the gateway.
    "haproxy",
    "pgbouncer",
    "linux-perf",
    // The SSH end-to-end tests (tests/src/ssh.rs, tests/tests/ssh_harness.rs) start their own
    // throwaway OpenSSH servers (/usr/sbin/sshd, ssh-keygen for host keys, CAs and
    // certificates) on loopback ports; the system sshd this package may start is stopped and
    // disabled right after installing it, see stop_system_sshd().
    "openssh-server",
    // The real `ssh`, `scp` and `sftp` clients those tests drive.
    "openssh-client",
    // tests/fixtures/ssh/paramiko_exec.py: paramiko, the SSH library of many Python agent tools,
    // for /usr/bin/python3 (root's `python3` gets it from pip, see PIP_PACKAGES).
    "python3-paramiko",
    // tests/fixtures/ssh/asyncssh_exec.py: asyncssh, the asyncio SSH client, likewise.
    "python3-asyncssh",
    // tests/tests/ssh_cast.rs: `asciinema cat` reads the .cast files `sessions export --cast`
    // writes (asciinema 2.2, Python, about 240 kB installed).
    "asciinema",
    // tests/fixtures/kube/py_client.py: the Python `kubernetes` client, run with /usr/bin/python3
    // by tests/tests/kube_standin.rs (the gateway's Kubernetes tests use it as a second client).
    "python3-kubernetes",
    // examples/autogen (tests/tests/autogen_story.rs, `cargo xtask demo --story autogen`): its
    // pinned AutoGen packages go into a venv of their own, which Debian's python3 makes only
    // with this package.
    "python3-venv",
    // tests/src/http.rs: the agents' `curl` in the HTTP tests (openssl, listed above, makes
    // their certificate authorities).
    "curl",
    // `cargo xtask bench --only http`: nginx serves the generic HTTPS target (a fast server, so
    // the proxy is what is measured) and wrk drives it with kept-alive connections. The system
    // nginx the package may start on port 80 is stopped and disabled, see stop_system_nginx().
    "nginx",
    "wrk",
    // `cargo xtask image` and tests/tests/deploy_image.rs: podman builds the image FROM scratch
    // (strip, from binutils, thins the binary) and runs it. runc as its runtime: crun, podman's
    // default, refuses a hybrid cgroup layout whose v2 mount still holds a controller, as these
    // machines have (docs/kubernetes-deploy.md, Troubleshooting).
    "podman",
    "runc",
    "binutils",
    // tests/tests/console_browser.rs: the web console in a real browser, headless Chromium
    // driven through WebDriver (tests/src/browser.rs).
    "chromium",
    "chromium-driver",
    // A font with the Control Pictures block (the console shows ESC in a statement as U+241B),
    // so the tests' screenshots show the symbols rather than empty boxes.
    "fonts-freefont-ttf",
];
/// pip packages for the `python3` on PATH, each with the module that shows it is present.
const PIP_PACKAGES: &[(&str, &str)] = &[
    // tests/fixtures/pg_client.py, the PostgreSQL client the end-to-end tests drive.
    ("psycopg", "psycopg[binary]>=3.1"),
    // tests/fixtures/drivers/asyncpg_client.py.
    ("asyncpg", "asyncpg>=0.29"),
    // tests/fixtures/ssh/paramiko_exec.py and asyncssh_exec.py (the tests run them with
    // /usr/bin/python3, which has Debian's packages; these serve root's `python3` if it differs).
    ("paramiko", "paramiko>=2.12"),
    ("asyncssh", "asyncssh>=2.10"),
    // tests/tests/deploy_manifests.rs validates deploy/*.yaml offline against the Kubernetes
    // schemas this release ships (strict: unknown fields fail too).
    ("kubernetes_validate", "kubernetes-validate==1.37.0"),
];
/// node-postgres (and pg-copy-streams) for tests/fixtures/drivers/node/client.js, installed by
/// `npm ci` from the committed package-lock.json into this directory (relative to the root).
const NODE_FIXTURE_DIR: &str = "tests/fixtures/drivers/node";
/// Written into node_modules after a successful `npm ci`: the package-lock.json it installed.
const NODE_STAMP: &str = "node_modules/.agentgate-installed-lock.json";
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> anyhow::Result<()> {
    let mut wanted = APT_PACKAGES.to_vec();
    // The drivers' test compiles its pgJDBC client with javac and runs node-postgres: a machine
    // that has them (any version that can run them) keeps its own.
    if !on_path("javac") {
        wanted.push("default-jdk-headless");
    }
    if !on_path("node") || !on_path("npm") {
        wanted.extend(["nodejs", "npm"]);
    }
    let missing: Vec<&str> = wanted.into_iter().filter(|p| !dpkg_installed(p)).collect();
    if missing.is_empty() {
        println!("setup: apt packages present");
    } else {
        println!("setup: installing {}", missing.join(" "));
        sh(Command::new("apt-get").arg("update").arg("-qq"))?;
        sh(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        if missing.contains(&"openssh-server") {
            stop_system_sshd();
        }
        if missing.contains(&"nginx") {
            stop_system_nginx();
        }
    }

    // The Kubernetes tests drive the real kubectl 1.32 (WebSocket exec, protobuf bodies). Debian
    // has no kubectl that recent (bookworm's `kubernetes-client` is 1.20); these machines
    // carry one in their image. Without it the tests could only fail, so say so here.
    if !on_path("kubectl") {
        anyhow::bail!(
            "setup: kubectl (1.30 or later) is not on PATH; the Kubernetes tests need it (this machine kind ships /usr/bin/kubectl)"
        );
    }

    for (module, spec) in PIP_PACKAGES {
        if python_has(module) {
            println!("setup: python module {module} present");
        } else {
            println!("setup: pip installing {spec}");
            sh(Command::new("python3").args(["-m", "pip", "install", "--quiet", spec]))?;
        }
    }

    node_fixture()?;

    // The AutoGen example's pinned packages (examples/autogen/requirements.txt) in their venv,
    // target/autogen-venv-<hash>: made now, so the story's test does not wait on PyPI.
    let python = agentgate_tests::autogen::venv::python();
    println!("setup: AutoGen example venv at {}", python.display());

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

/// `npm ci` in [`NODE_FIXTURE_DIR`] unless node_modules holds exactly what package-lock.json
/// names already (the stamp written after the last successful install matches).
fn node_fixture() -> anyhow::Result<()> {
    let dir = crate::util::root().join(NODE_FIXTURE_DIR);
    let lock = std::fs::read(dir.join("package-lock.json"))
        .with_context(|| format!("{NODE_FIXTURE_DIR}/package-lock.json"))?;
    let stamp = dir.join(NODE_STAMP);
    if std::fs::read(&stamp).ok().as_deref() == Some(&lock[..]) {
        println!("setup: node modules of {NODE_FIXTURE_DIR} present");
        return Ok(());
    }
    println!("setup: npm ci in {NODE_FIXTURE_DIR}");
    sh(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir))?;
    std::fs::write(&stamp, &lock).with_context(|| format!("write {}", stamp.display()))?;
    Ok(())
}

/// Installing openssh-server starts and enables the system's sshd on port 22 where the init
/// system lets it (not in containers whose policy-rc.d forbids it). The tests start only their
/// own servers, on their own ports and configs; a machine that did not run an sshd before setup
/// should not run one after it. Called only when setup itself installed the package, so an
/// sshd the machine already had (someone's way in) is left alone. Best effort: each step may
/// find nothing to do.
fn stop_system_sshd() {
    let quiet = |cmd: &mut Command| {
        let _ = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    };
    if std::path::Path::new("/run/systemd/system").exists() {
        // Debian names the unit ssh.service, with ssh.socket for socket activation.
        quiet(Command::new("systemctl").args(["disable", "--now", "ssh.service", "ssh.socket"]));
    } else {
        quiet(Command::new("service").args(["ssh", "stop"]));
        quiet(Command::new("update-rc.d").args(["ssh", "disable"]));
    }
    println!("setup: system sshd (port 22) stopped and disabled; the tests start their own");
}

/// Like [`stop_system_sshd`] for nginx: installing it starts a server on port 80 where the init
/// system lets it; the bench starts its own, on its own port and config. Best effort, and only
/// when setup itself installed the package.
fn stop_system_nginx() {
    let quiet = |cmd: &mut Command| {
        let _ = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    };
    if std::path::Path::new("/run/systemd/system").exists() {
        quiet(Command::new("systemctl").args(["disable", "--now", "nginx.service"]));
    } else {
        quiet(Command::new("service").args(["nginx", "stop"]));
        quiet(Command::new("update-rc.d").args(["nginx", "disable"]));
    }
    println!("setup: system nginx (port 80) stopped and disabled; the bench starts its own");
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
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
