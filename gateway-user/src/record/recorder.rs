//! The recorder: every session and statement goes through [`Recorder`] to a [`Store`] written
//! off the data path. The queue is bounded and the data path waits when it is full, so nothing is
//! dropped silently; the store batches whatever has queued into one transaction (a group commit:
//! what queues during one commit goes into the next). A durable record is acknowledged once its
//! transaction has committed, for statements that must be on record before they run.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, Thread},
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone, Serialize)]
pub struct SessionOpen {
    pub session: String,
    pub started_ms: i64,
    pub protocol: &'static str,
    pub workload: String,
    pub cgroup: String,
    pub pid: u32,
    pub issuer: String,
    pub subject: String,
    pub groups: Vec<String>,
    pub target: String,
    pub original_dst: String,
    pub client_user: Option<String>,
    pub database: Option<String>,
    pub policy_version: String,
    /// When the agent's token expires (the session ends then at the latest).
    pub token_expires_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Statement {
    pub session: String,
    pub seq: u64,
    pub started_ms: i64,
    /// `simple`, `extended` or `function_call`.
    pub kind: &'static str,
    pub text: String,
    pub params: Vec<Option<String>>,
    pub class: String,
    /// It changes something or reaches further than a read (the gate's own judgement: a write,
    /// DDL, an exec, an SSH command, a forward): what `agentgate agents` counts as privileged
    /// actions. Records from before this field count by `class <> 'read'`.
    pub privileged: bool,
    pub tables: Vec<String>,
    pub functions: Vec<String>,
    /// `allowed` or `denied`.
    pub decision: &'static str,
    pub rule: Option<String>,
    pub duration_us: Option<u64>,
    pub rows: Option<u64>,
    pub error_code: Option<String>,
    pub error: Option<String>,
    /// What the agent was sent (after masking): the first rows, up to the gateway's caps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<Vec<Option<String>>>>,
    /// More rows or bytes came than `results` holds (`rows` is the true count).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub results_cut: bool,
    /// A command's exit status (SSH exec and shells).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<u32>,
    /// What a command sent back (SSH), up to the gateway's caps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<CommandOutput>,
}

/// A command's output as the agent was sent it, the first bytes of each stream.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CommandOutput {
    pub stdout: String,
    pub stderr: String,
    /// More came than is kept (`bytes` counts it all).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cut: bool,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionClose {
    pub session: String,
    pub ended_ms: i64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub ended_by: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Record {
    Open(SessionOpen),
    Statement(Statement),
    /// A privileged statement about to be forwarded (its outcome follows as a `Statement`).
    Intent(Statement),
    Close(SessionClose),
    /// Anything else on record: a refused connection, a policy put in force, a revocation.
    Event {
        kind: &'static str,
        at_ms: i64,
        session: Option<String>,
        body: serde_json::Value,
    },
}

/// Discards every record (`--record-off`, for benchmarks).
pub struct NullStore;

impl Store for NullStore {
    fn write(&mut self, _: &[Record], _: Durability) -> Result<(), StoreError> {
        Ok(())
    }
}

/// How far a batch's commit must reach before it counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// On disk (fsync'd) when `write` returns: someone waits on it (an intent, a flush). It
    /// also makes every batch committed before it durable.
    Synced,
    /// Handed to the operating system when `write` returns: a crash of the gateway (kill -9)
    /// loses nothing, an operating-system crash or power loss could lose it until the next
    /// synced commit. For records nobody waits on.
    Written,
}

/// Where records end up. Called on the writer thread only.
pub trait Store: Send + 'static {
    fn write(&mut self, batch: &[Record], durability: Durability) -> Result<(), StoreError>;
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

enum Msg {
    /// Boxed: records are large and the queue holds many.
    Record(Box<Record>),
    /// Answered (whether it was written) once its transaction has committed, synced, or failed.
    Durable(Box<Record>, oneshot::Sender<bool>),
    /// Answered once everything queued before it is written and synced.
    Flush(oneshot::Sender<()>),
}

/// What the writer has taken from the queue for its next commit.
#[derive(Default)]
struct Pending {
    batch: Vec<Record>,
    durable: Vec<oneshot::Sender<bool>>,
    waiters: Vec<oneshot::Sender<()>>,
}

impl Pending {
    fn take(&mut self, m: Msg) {
        match m {
            Msg::Record(r) => self.batch.push(*r),
            Msg::Durable(r, w) => {
                self.batch.push(*r);
                self.durable.push(w);
            }
            Msg::Flush(w) => self.waiters.push(w),
        }
    }

    /// Someone waits on this commit: it is synced, and made at once.
    fn waited_on(&self) -> bool {
        !self.durable.is_empty() || !self.waiters.is_empty()
    }
}

/// The data path's handle. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Msg>,
    /// The writer thread, woken by whoever waits on a commit (records nobody waits on do not
    /// wake it: it takes them when its window ends).
    writer: Option<Thread>,
    /// Set while the writer cannot commit (cleared by the next commit that succeeds).
    failing: Arc<AtomicBool>,
    metrics: Option<Arc<crate::telemetry::Metrics>>,
}

const QUEUE: usize = 16_384;
const BATCH: usize = 1_024;
/// How long records nobody waits on gather before they are committed: one commit (and one
/// wake-up of the writer) for a window's worth of them rather than one for each. Someone
/// waiting (an intent, a flush) ends the window at once.
const WINDOW: Duration = Duration::from_millis(4);

impl Recorder {
    /// Starts the writer thread for `store`.
    #[cfg(test)]
    pub fn start(store: impl Store) -> Recorder {
        Self::start_with(store, None)
    }

    /// Like [`start`](Self::start), counting statements and timing commits in `metrics`.
    pub fn start_with(
        mut store: impl Store,
        metrics: Option<Arc<crate::telemetry::Metrics>>,
    ) -> Recorder {
        let (tx, mut rx) = mpsc::channel::<Msg>(QUEUE);
        let failing = Arc::new(AtomicBool::new(false));
        let (writer_failing, writer_metrics) = (failing.clone(), metrics.clone());
        let spawned = thread::Builder::new()
            .name("recorder".into())
            .spawn(move || {
                let mut p = Pending::default();
                while let Some(first) = rx.blocking_recv() {
                    p.take(first);
                    // Whatever queued while the last transaction committed goes into this one,
                    // and what queues during the window after the first record; a record
                    // someone waits on ends the window (its sender wakes this thread).
                    let deadline = Instant::now() + WINDOW;
                    loop {
                        while p.batch.len() < BATCH {
                            match rx.try_recv() {
                                Ok(m) => p.take(m),
                                Err(_) => break,
                            }
                        }
                        let now = Instant::now();
                        if p.waited_on()
                            || p.batch.len() >= BATCH
                            || now >= deadline
                            || rx.is_closed()
                        {
                            break;
                        }
                        thread::park_timeout(deadline - now);
                    }
                    let durability = if p.waited_on() {
                        Durability::Synced
                    } else {
                        Durability::Written
                    };
                    let Pending {
                        batch,
                        durable,
                        waiters,
                    } = &mut p;
                    // A batch that cannot be committed (the file locked, the disk full) is kept
                    // and retried; meanwhile the queue fills and the data path waits. The
                    // statements waiting on a durable record are refused at the first failure:
                    // they must not run unrecorded.
                    let mut backoff = std::time::Duration::from_millis(50);
                    loop {
                        let started = std::time::Instant::now();
                        let written = store.write(batch, durability);
                        if let Some(m) = &writer_metrics {
                            m.record_commit.observe(started.elapsed().as_secs_f64());
                            if written.is_err() {
                                m.record_commit_failures.inc();
                            }
                        }
                        writer_failing.store(written.is_err(), Ordering::Relaxed);
                        match written {
                            Ok(()) => break,
                            Err(e) => {
                                tracing::error!(
                                    records = batch.len(),
                                    "recording failed, retrying in {backoff:?}: {e}"
                                );
                                for w in durable.drain(..) {
                                    let _ = w.send(false);
                                }
                                thread::sleep(backoff);
                                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                            }
                        }
                    }
                    batch.clear();
                    for w in durable.drain(..) {
                        let _ = w.send(true);
                    }
                    for w in waiters.drain(..) {
                        let _ = w.send(());
                    }
                }
            });
        let writer = match spawned {
            Ok(handle) => Some(handle.thread().clone()),
            Err(e) => {
                tracing::error!("recorder thread: {e}");
                failing.store(true, Ordering::Relaxed);
                None
            }
        };
        Recorder {
            tx,
            writer,
            failing,
            metrics,
        }
    }

    /// Records queued and not yet taken by the writer.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Whether records can be written: the writer runs and its last commit succeeded.
    pub fn writable(&self) -> Result<(), String> {
        if self.tx.is_closed() {
            Err("the recorder has stopped".into())
        } else if self.failing.load(Ordering::Relaxed) {
            Err("the last commit failed (see the log); retrying".into())
        } else {
            Ok(())
        }
    }

    fn observe(&self, r: &Record) {
        if let (Some(m), Record::Statement(s)) = (&self.metrics, r) {
            m.statement(&s.class, s.decision);
        }
    }

    /// Queues a record, waiting while the queue is full.
    pub async fn record(&self, r: Record) {
        self.observe(&r);
        if self.tx.send(Msg::Record(Box::new(r))).await.is_err() {
            tracing::error!("recorder is gone; record lost");
        }
    }

    /// Queues a record and waits until its transaction has committed: `false` if it could not
    /// be written (the caller must not act as if it were on record).
    pub async fn record_durable(&self, r: Record) -> bool {
        self.observe(&r);
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Durable(Box::new(r), tx)).await.is_err() {
            tracing::error!("recorder is gone; durable record lost");
            return false;
        }
        self.wake_writer();
        rx.await.unwrap_or(false)
    }

    /// Waits until everything queued so far is written.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            self.wake_writer();
            let _ = rx.await;
        }
    }

    /// Ends the writer's window now: someone waits on the commit. (Sent before waking: a
    /// wake-up that comes before the writer parks makes its park return at once.)
    fn wake_writer(&self) {
        if let Some(t) = &self.writer {
            t.unpark();
        }
    }

    /// A recorder over the record database's journal (metrics: see
    /// [`start_with`](Self::start_with)).
    pub fn sqlite(
        db: super::db::SharedDb,
        metrics: Option<Arc<crate::telemetry::Metrics>>,
    ) -> Arc<Recorder> {
        Arc::new(Recorder::start_with(
            super::sqlite::SqliteStore::new(db),
            metrics,
        ))
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Keeps what each commit was asked for: how many records, how durable.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<(usize, Durability)>>>);

    impl Store for Seen {
        fn write(&mut self, batch: &[Record], d: Durability) -> Result<(), StoreError> {
            self.0.lock().unwrap().push((batch.len(), d));
            Ok(())
        }
    }

    fn event(n: i64) -> Record {
        Record::Event {
            kind: "test",
            at_ms: n,
            session: None,
            body: serde_json::json!({ "n": n }),
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Records nobody waits on are gathered over the window into one commit that is not
    /// synced; an intent is acknowledged only after a synced commit that holds it, made at once
    /// (not at the window's end), and a flush is synced too.
    #[test]
    fn only_what_someone_waits_on_is_synced_and_it_does_not_wait_for_the_window() {
        let seen = Seen::default();
        let rt = rt();
        let rec = rt.block_on(async { Recorder::start(seen.clone()) });
        rt.block_on(async {
            for n in 0..50 {
                rec.record(event(n)).await;
            }
        });
        std::thread::sleep(WINDOW * 5);
        let commits = seen.0.lock().unwrap().clone();
        assert_eq!(
            commits.iter().map(|c| c.0).sum::<usize>(),
            50,
            "{commits:?}"
        );
        assert!(
            commits.iter().all(|c| c.1 == Durability::Written),
            "{commits:?}"
        );
        // 50 records queued back to back: a few commits, not one each.
        assert!(commits.len() <= 3, "{commits:?}");

        seen.0.lock().unwrap().clear();
        let started = Instant::now();
        let ok = rt.block_on(async {
            rec.record(event(100)).await;
            rec.record_durable(event(101)).await
        });
        let waited = started.elapsed();
        assert!(ok);
        let commits = seen.0.lock().unwrap().clone();
        // The record before the intent is in the same synced commit or an earlier one; the
        // intent's commit is synced and was there when record_durable returned.
        assert_eq!(commits.last().map(|c| c.1), Some(Durability::Synced));
        assert_eq!(commits.iter().map(|c| c.0).sum::<usize>(), 2, "{commits:?}");
        assert!(
            waited < WINDOW * 10,
            "an intent waited {waited:?}: the window is for records nobody waits on"
        );

        seen.0.lock().unwrap().clear();
        rt.block_on(async {
            rec.record(event(200)).await;
            rec.flush().await;
        });
        let commits = seen.0.lock().unwrap().clone();
        assert_eq!(commits, [(1, Durability::Synced)]);
    }

    /// The crash half of the promise: records committed without a sync are in the file after
    /// the gateway's process is killed (SIGKILL, no chance to flush or close), and the chain
    /// verifies. The test runs itself as the process to kill.
    #[test]
    fn unsynced_commits_survive_a_kill_9() {
        const CHILD: &str = "AGENTGATE_RECORDER_CRASH_CHILD";
        if let Some(path) = std::env::var_os(CHILD) {
            let db = super::super::db::Db::open(std::path::Path::new(&path)).unwrap();
            let rt = rt();
            let rec = rt.block_on(async {
                let rec = Recorder::start(super::super::sqlite::SqliteStore::new(db.clone()));
                for n in 0..200 {
                    rec.record(event(n)).await;
                }
                rec
            });
            // Committed (unsynced) once the tip reaches them; then killed with no flush.
            while super::super::db::Db::lock(&db).tip_seq() < 200 {
                std::thread::sleep(Duration::from_millis(1));
            }
            let synchronous: i64 = super::super::db::Db::lock(&db)
                .conn
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap();
            // 1 = NORMAL: these commits were not synced.
            assert_eq!(synchronous, 1);
            drop(rec);
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            unreachable!();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.db");
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "record::recorder::tests::unsynced_commits_survive_a_kill_9",
                "--nocapture",
            ])
            .env(CHILD, &path)
            .status()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        let conn = rusqlite::Connection::open(&path).unwrap();
        let report = super::super::journal::verify(&conn).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.records, 200);
    }
}
