//! `cargo xtask image`: the OCI image of deploy/Containerfile, built FROM scratch with podman
//! (or buildah) from a root filesystem assembled here: the gateway binary, debug info stripped,
//! and the shared libraries `ldd` names for it. No registry is involved at any step.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

use crate::util::{root, run, target_dir};

#[derive(clap::Args)]
pub struct Options {
    /// The image's name and tag (podman stores it as localhost/<tag>).
    #[arg(long, default_value = "agentgate:dev")]
    pub tag: String,
    /// Package this agentgate binary instead of building the release one (the tests package
    /// the debug binary they test).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Where to assemble the build context (default: target/image); emptied first.
    #[arg(long)]
    pub context: Option<PathBuf>,
    /// Also write the image as an OCI archive here (for `ctr -n k8s.io images import` or
    /// `podman load` on a node).
    #[arg(long)]
    pub archive: Option<PathBuf>,
}

pub fn run_image(opts: &Options) -> anyhow::Result<()> {
    let binary = match &opts.binary {
        Some(b) => b.clone(),
        None => {
            run(Command::new("cargo").current_dir(root()).args([
                "build",
                "--release",
                "-p",
                "gateway-user",
                "--bin",
                "agentgate",
            ]))?;
            target_dir().join("release").join("agentgate")
        }
    };
    let context = opts
        .context
        .clone()
        .unwrap_or_else(|| target_dir().join("image"));
    assemble(&binary, &context)?;
    let engine = Engine::find()?;
    engine.build(&context, &opts.tag)?;
    if let Some(archive) = &opts.archive {
        engine.save(&opts.tag, archive)?;
        println!("image: OCI archive {}", archive.display());
    }
    // The context holds a copy of the binary: not worth keeping once it is in the image.
    let _ = fs::remove_dir_all(&context);
    println!("image: {} built with {}", opts.tag, engine.name());
    Ok(())
}

/// Lays out `context/rootfs` (see deploy/Containerfile for what goes where).
pub fn assemble(binary: &Path, context: &Path) -> anyhow::Result<()> {
    if !binary.is_file() {
        bail!("{}: no such binary", binary.display());
    }
    let _ = fs::remove_dir_all(context);
    let rootfs = context.join("rootfs");
    let bin_dir = rootfs.join("usr/local/bin");
    fs::create_dir_all(&bin_dir).with_context(|| format!("mkdir {}", bin_dir.display()))?;
    let dest = bin_dir.join("agentgate");
    // Debug info is most of a Rust binary (a debug build: ~290 MB → ~70 MB); symbols stay, so a
    // panic's backtrace still names functions.
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&dest)
        .arg(binary))?;
    for lib in shared_libraries(binary)? {
        let inside = rootfs.join(lib.strip_prefix("/").unwrap_or(&lib));
        if let Some(dir) = inside.parent() {
            fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
        }
        // fs::copy follows symlinks: the file lands under the name the loader asks for.
        fs::copy(&lib, &inside)
            .with_context(|| format!("copy {} to {}", lib.display(), inside.display()))?;
    }
    for (dir, mode) in [
        ("tmp", 0o1777),
        ("var/tmp", 0o1777),
        ("var/lib/agentgate", 0o700),
        ("run/agentgate", 0o700),
        ("etc/agentgate/policies", 0o755),
    ] {
        let path = rootfs.join(dir);
        fs::create_dir_all(&path).with_context(|| format!("mkdir {}", path.display()))?;
        set_mode(&path, mode)?;
    }
    fs::copy(
        root().join("deploy/Containerfile"),
        context.join("Containerfile"),
    )
    .context("copy deploy/Containerfile")?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {:o} {}", mode, path.display()))
}

/// The files the dynamic loader maps for `binary` (the loader itself included), from `ldd`.
/// A statically linked binary needs none.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("run ldd (libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable") || text.contains("statically linked") {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {}: {}{}",
            binary.display(),
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_ldd(&text)
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` and `/lib64/ld-linux-x86-64.so.2
/// (0x…)` give a path; the vDSO has none. A library ldd cannot find fails the build: the image
/// would not start.
fn parse_ldd(text: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            bail!("ldd: {line}");
        }
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

enum Engine {
    Podman,
    Buildah,
}

impl Engine {
    fn find() -> anyhow::Result<Self> {
        let has = |p: &str| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if has("podman") {
            Ok(Engine::Podman)
        } else if has("buildah") {
            Ok(Engine::Buildah)
        } else {
            bail!("neither podman nor buildah is installed (`cargo xtask setup` installs podman)")
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Engine::Podman => "podman",
            Engine::Buildah => "buildah",
        }
    }

    fn build(&self, context: &Path, tag: &str) -> anyhow::Result<()> {
        let mut cmd = Command::new(self.name());
        match self {
            Engine::Podman => cmd.arg("build"),
            Engine::Buildah => cmd.arg("bud"),
        };
        // --timestamp 0: the same inputs give the same image id. --pull=never: FROM scratch needs
        // nothing from a registry, and none can be reached.
        run(cmd
            .args(["--pull=never", "--timestamp", "0", "--file"])
            .arg(context.join("Containerfile"))
            .args(["--tag", tag])
            .arg(context))
    }

    fn save(&self, tag: &str, archive: &Path) -> anyhow::Result<()> {
        let _ = fs::remove_file(archive);
        match self {
            Engine::Podman => run(Command::new("podman")
                .args(["save", "--format", "oci-archive", "--output"])
                .arg(archive)
                .arg(tag)),
            Engine::Buildah => run(Command::new("buildah")
                .arg("push")
                .arg(tag)
                .arg(format!("oci-archive:{}:{tag}", archive.display()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0b)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0b)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f0b)\n";
        let libs = parse_ldd(text).unwrap();
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }
}
