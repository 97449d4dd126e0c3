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
    thread,
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
    fn write(&mut self, _: &[Record]) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Where records end up. Called on the writer thread only.
pub trait Store: Send + 'static {
    fn write(&mut self, batch: &[Record]) -> Result<(), StoreError>;
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
    /// Answered (whether it was written) once its transaction has committed or failed.
    Durable(Box<Record>, oneshot::Sender<bool>),
    /// Answered once everything queued before it is written.
    Flush(oneshot::Sender<()>),
}

/// The data path's handle. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Msg>,
    /// Set while the writer cannot commit (cleared by the next commit that succeeds).
    failing: Arc<AtomicBool>,
    metrics: Option<Arc<crate::telemetry::Metrics>>,
}

const QUEUE: usize = 16_384;
const BATCH: usize = 1_024;

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
                let mut batch = Vec::with_capacity(BATCH);
                let mut waiters = Vec::new();
                let mut durable = Vec::new();
                while let Some(first) = rx.blocking_recv() {
                    // Whatever queued while the last transaction committed goes into this one.
                    let mut next = Some(first);
                    while let Some(m) = next.take() {
                        match m {
                            Msg::Record(r) => batch.push(*r),
                            Msg::Durable(r, w) => {
                                batch.push(*r);
                                durable.push(w);
                            }
                            Msg::Flush(w) => waiters.push(w),
                        }
                        if batch.len() < BATCH {
                            next = rx.try_recv().ok();
                        }
                    }
                    // A batch that cannot be committed (the file locked, the disk full) is kept
                    // and retried; meanwhile the queue fills and the data path waits. The
                    // statements waiting on a durable record are refused at the first failure:
                    // they must not run unrecorded.
                    let mut backoff = std::time::Duration::from_millis(50);
                    loop {
                        let started = std::time::Instant::now();
                        let written = store.write(&batch);
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
        if let Err(e) = spawned {
            tracing::error!("recorder thread: {e}");
            failing.store(true, Ordering::Relaxed);
        }
        Recorder {
            tx,
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
        rx.await.unwrap_or(false)
    }

    /// Waits until everything queued so far is written.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
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
