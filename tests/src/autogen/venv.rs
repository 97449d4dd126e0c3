//! The example's Python packages: a venv of its own under target/, made from the pinned
//! examples/autogen/requirements.txt and reused while that file (and the Python) are unchanged.

use std::{path::PathBuf, process::Command};

use crate::fnv1a;

pub fn requirements() -> PathBuf {
    super::example_dir().join("requirements.txt")
}

/// The venv's python, made first if needed: `target/autogen-venv-<hash>` where the hash covers
/// the requirements file and `python3 --version`. Built in a temporary directory and renamed,
/// so an interrupted install is never taken for a finished one.
pub fn python() -> PathBuf {
    let reqs = std::fs::read(requirements()).expect("read examples/autogen/requirements.txt");
    let version = Command::new("python3")
        .arg("--version")
        .output()
        .expect("python3 (run `cargo xtask setup`)");
    let mut key = reqs.clone();
    key.extend_from_slice(&version.stdout);
    let root = super::workspace_root().join("target");
    let dir = root.join(format!("autogen-venv-{:016x}", fnv1a(&key)));
    let python = dir.join("bin").join("python");
    if python.exists() {
        return python;
    }
    let tmp = root.join(format!("autogen-venv-tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    run(Command::new("python3").args(["-m", "venv"]).arg(&tmp));
    run(Command::new(tmp.join("bin").join("python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(requirements()));
    // Another run may have finished the same venv meanwhile: keep theirs.
    if std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    assert!(python.exists(), "no python in {}", dir.display());
    python
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (run `cargo xtask setup`)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
