//! `cargo xtask bench --baseline-rev REV`: the agentgate binary of an older git revision, built
//! so that the PostgreSQL section can measure it side by side with the current one in the same
//! run (a refactor's cost read against the numbers before it, on the same machine, at the same
//! load, alternating run by run).
//!
//! The revision is checked out into a temporary `git worktree` under /tmp (removed afterwards,
//! also on an error) and built with the bench's profile (`--release`) into its own target
//! directory, `<target>/bench-baseline`, kept between runs so that the next build of an old
//! revision only recompiles the workspace's crates. Not the current target directory itself:
//! cargo hashes a workspace member by its path relative to the workspace root, so the old
//! checkout's crates would land on the current ones' artifacts and fingerprints, and the two
//! builds would overwrite each other (or, with older sources carrying newer mtimes, one could
//! pass for the other).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

use crate::util;

/// The agentgate binary of an older revision.
#[derive(Clone, Debug)]
pub struct OldBuild {
    /// The revision as given on the command line (`6903b09`, `main~3`): the contender's label.
    pub rev: String,
    /// The commit it names.
    pub commit: String,
    pub bin: PathBuf,
}

/// clap's value parser of `--baseline-rev`: a revision as git spells one. Refused: the empty
/// string, whitespace and control characters, and a leading `-` (git would read an option).
pub fn parse_rev(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("an empty revision".into());
    }
    if s.starts_with('-') {
        return Err(format!("`{s}` starts with `-`: a revision, not an option"));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{s}` contains whitespace or a control character"));
    }
    Ok(s.to_string())
}

/// Builds `agentgate` (release) at `rev` and returns where it is.
pub fn build(rev: &str) -> anyhow::Result<OldBuild> {
    let root = util::root();
    let commit = git_output(
        &root,
        &["rev-parse", "--verify", &format!("{rev}^{{commit}}")],
    )
    .with_context(|| format!("--baseline-rev {rev}: not a commit of this repository"))?;
    let short = &commit[..commit.len().min(12)];
    let dir = std::env::temp_dir().join(format!("agbench-rev-{short}-{}", std::process::id()));
    eprintln!(
        "bench: building agentgate at {rev} ({short}) in {}",
        dir.display()
    );
    let worktree = Worktree::add(&root, &dir, &commit)?;
    let target = util::target_dir().join("bench-baseline");
    util::run(
        Command::new("cargo")
            .current_dir(&worktree.dir)
            .args([
                "build",
                "--release",
                "-p",
                "gateway-user",
                "--bin",
                "agentgate",
            ])
            .env("CARGO_TARGET_DIR", &target),
    )
    .with_context(|| format!("build agentgate at {rev}"))?;
    drop(worktree);
    let bin = target.join("release").join("agentgate");
    if !bin.exists() {
        bail!("the build of {rev} left no {}", bin.display());
    }
    Ok(OldBuild {
        rev: rev.to_string(),
        commit,
        bin,
    })
}

/// A detached `git worktree` of one commit, removed on drop.
struct Worktree {
    root: PathBuf,
    dir: PathBuf,
}

impl Worktree {
    fn add(root: &Path, dir: &Path, commit: &str) -> anyhow::Result<Self> {
        // Left over from an earlier run of this pid that was killed: start clean.
        let _ = Command::new("git")
            .current_dir(root)
            .args(["worktree", "remove", "--force"])
            .arg(dir)
            .output();
        git_output(
            root,
            &[
                "worktree",
                "add",
                "--detach",
                &dir.to_string_lossy(),
                commit,
            ],
        )?;
        Ok(Self {
            root: root.to_path_buf(),
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Worktree {
    fn drop(&mut self) {
        let removed = Command::new("git")
            .current_dir(&self.root)
            .args(["worktree", "remove", "--force"])
            .arg(&self.dir)
            .output();
        if !removed.is_ok_and(|o| o.status.success()) {
            eprintln!(
                "bench: could not remove the worktree {} (git worktree remove --force it)",
                self.dir.display()
            );
        }
    }
}

/// `git ARGS` in `dir`; its stdout, trimmed; an error with git's stderr if it failed.
fn git_output(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .context("run git")?;
    if !out.status.success() {
        bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::parse_rev;

    #[test]
    fn revisions_git_spells_are_taken_as_given() {
        for rev in [
            "6903b09",
            "main",
            "main~3",
            "HEAD^2",
            "v0.1.0",
            "origin/main",
        ] {
            assert_eq!(parse_rev(rev).as_deref(), Ok(rev));
        }
    }

    #[test]
    fn options_blanks_and_empty_are_refused() {
        for rev in [
            "",
            "-h",
            "--output=/tmp/x",
            "main 2",
            "a\tb",
            "a\nb",
            "x\u{7}",
        ] {
            assert!(parse_rev(rev).is_err(), "{rev:?} was taken");
        }
    }
}
