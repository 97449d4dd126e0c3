//! A client process in a cgroup, running in the background: its stdout and stderr lines are
//! collected as they come, each with the instant it arrived; its stdin stays open. Killed on drop;
//! on a panic, everything it said is printed.

use std::{
    io::{BufRead, BufReader, Read, Write},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::{place, Cgroup};

/// One line a background process printed: (arrival, from stderr, text).
pub type Line = (Instant, bool, String);

/// A client process (in a cgroup) running in the background: its stdout and stderr lines are
/// collected as they come, each with the instant it arrived; its stdin stays open. Killed on drop.
pub struct Bg {
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    rx: mpsc::Receiver<Line>,
    /// Every line so far: (arrival, from stderr, text).
    seen: Vec<Line>,
    /// Lines before this index were handed out by `next_line`.
    pos: usize,
    exited: Option<(Instant, ExitStatus)>,
}

impl Bg {
    /// Spawns `cmd` in `cg` with piped stdin, stdout and stderr; `what` names it in messages.
    pub fn spawn(what: &str, mut cmd: Command, cg: &Cgroup) -> Self {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        place(&mut cmd, Some(cg), None);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let (tx, rx) = mpsc::channel();
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("stdout"));
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("stderr"));
        for (is_err, r) in [(false, out), (true, err)] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    if tx.send((Instant::now(), is_err, line)).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            what: what.to_string(),
            stdin: child.stdin.take(),
            child,
            rx,
            seen: Vec::new(),
            pos: 0,
            exited: None,
        }
    }

    /// Takes in whatever lines have arrived, without waiting.
    pub fn pump(&mut self) {
        while let Ok(l) = self.rx.try_recv() {
            self.seen.push(l);
        }
    }

    /// The lines that have arrived and were not handed out yet (takes in what has arrived, does
    /// not wait, hands nothing out).
    pub fn unread(&mut self) -> &[Line] {
        self.pump();
        &self.seen[self.pos..]
    }

    /// The next line not handed out yet (arrival, stderr?, text), waiting up to `timeout`.
    pub fn next_line(&mut self, timeout: Duration) -> Option<Line> {
        let deadline = Instant::now() + timeout;
        loop {
            self.pump();
            if self.pos < self.seen.len() {
                self.pos += 1;
                return Some(self.seen[self.pos - 1].clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(l) => self.seen.push(l),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // Both streams ended: nothing more will come.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if self.pos >= self.seen.len() {
                        return None;
                    }
                }
            }
        }
    }

    /// Waits for the next line satisfying `pred` (stderr?, text); returns (arrival, text). Panics
    /// with everything the client said if none comes within `timeout`.
    pub fn wait_line_at(
        &mut self,
        timeout: Duration,
        pred: impl Fn(bool, &str) -> bool,
    ) -> (Instant, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left) {
                Some((at, e, l)) if pred(e, &l) => return (at, l),
                Some(_) => {}
                None => {
                    let text = self.text();
                    panic!(
                        "{}: the line waited for did not come within {timeout:?} (exited: {:?}); it said:\n{text}",
                        self.what,
                        self.child.try_wait().ok().flatten(),
                    )
                }
            }
        }
    }

    /// Like [`Bg::wait_line_at`]; returns the text only.
    pub fn wait_line(&mut self, timeout: Duration, pred: impl Fn(bool, &str) -> bool) -> String {
        self.wait_line_at(timeout, pred).1
    }

    /// Writes `line` and a newline to the process's stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").unwrap_or_else(|e| panic!("{}: write stdin: {e}", self.what));
        stdin.flush().expect("flush stdin");
    }

    /// Polls (every 5 ms) for the process to exit, stdin left as it is; returns when it did (then
    /// takes in the rest of its output).
    pub fn wait_exit_at(&mut self, timeout: Duration) -> (Instant, ExitStatus) {
        if let Some(e) = self.exited {
            return e;
        }
        let deadline = Instant::now() + timeout;
        let exited = loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                break (Instant::now(), s);
            }
            if Instant::now() > deadline {
                let text = self.text();
                panic!(
                    "{} still runs after {timeout:?}; it said:\n{text}",
                    self.what
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        self.exited = Some(exited);
        // The reader threads end at EOF.
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => self.seen.push(l),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        exited
    }

    /// Closes stdin and waits for the process to exit (then for the rest of its output).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.stdin = None;
        self.wait_exit_at(timeout).1
    }

    /// When and how the process exited, if [`Bg::wait_exit_at`] or [`Bg::wait_exit`] saw it.
    pub fn exited(&self) -> Option<(Instant, ExitStatus)> {
        self.exited
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        self.exited.is_none() && matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The stdout lines so far.
    pub fn stdout(&mut self) -> String {
        self.pump();
        self.lines(false)
    }

    /// The stderr lines so far.
    pub fn stderr(&mut self) -> String {
        self.pump();
        self.lines(true)
    }

    fn lines(&self, err: bool) -> String {
        self.seen
            .iter()
            .filter(|(_, e, _)| *e == err)
            .map(|(_, _, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Everything said so far, stderr lines marked.
    pub fn text(&mut self) -> String {
        self.pump();
        self.seen
            .iter()
            .map(|(_, e, l)| {
                if *e {
                    format!("[stderr] {l}")
                } else {
                    l.clone()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = self.text();
            eprintln!("--- {} said ---\n{text}", self.what);
        }
        self.kill();
    }
}
