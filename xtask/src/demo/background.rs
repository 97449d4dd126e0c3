//! The agent's client (psql, ssh) as a background process, its output in a file read as it grows.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use super::DEMO_DIR;

/// An agent's psql running in the background, stdout and stderr into one file (read as it
/// grows). Killed, if still running, and its file removed when dropped.
pub(super) struct Background {
    child: Child,
    path: PathBuf,
}

impl Background {
    pub(super) fn spawn(mut cmd: Command, input: &str, name: &str) -> anyhow::Result<Self> {
        let path = Path::new(DEMO_DIR).join(name);
        let out = fs::File::create(&path)?;
        cmd.stdin(Stdio::piped())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd.spawn().context("run the agent's client")?;
        drop(cmd);
        let mut bg = Self { child, path };
        let mut stdin = bg.child.stdin.take().context("psql stdin")?;
        stdin.write_all(input.as_bytes())?;
        drop(stdin);
        Ok(bg)
    }

    pub(super) fn output(&self) -> String {
        fs::read_to_string(&self.path).unwrap_or_default()
    }

    pub(super) fn running(&mut self) -> anyhow::Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    /// Its output once `ready` says so (while it still runs), within `timeout`.
    pub(super) fn wait_output(
        &mut self,
        ready: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.output();
            if ready(&out) {
                return Ok(out);
            }
            if !self.running()? {
                bail!("the agent's process ended early:\n{out}");
            }
            if Instant::now() > deadline {
                bail!("the agent's process did not print what was expected:\n{out}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its whole output once it has exited (within `timeout`).
    pub(super) fn finish(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        while self.running()? {
            if Instant::now() > deadline {
                bail!(
                    "the agent's process still runs after {timeout:?}:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(self.output())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = fs::remove_file(&self.path);
    }
}

/// Runs `cmd` with `input` on stdin, stdout and stderr into one file (so an error shows where it
/// happened); returns its pid and that output once it has exited.
pub(super) fn run_merged(cmd: Command, input: &str) -> anyhow::Result<(u32, String)> {
    let mut bg = Background::spawn(cmd, input, "psql.out")?;
    let pid = bg.child.id();
    Ok((pid, bg.finish(Duration::from_secs(60))?))
}
