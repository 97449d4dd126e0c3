//! The recorder: every session and statement goes through [`Recorder`] to a [`Store`] written
//! off the data path. The queue is bounded and the data path waits when it is full, so nothing is
//! dropped silently; the store batches whatever has queued into one transaction.

use std::{path::Path, sync::Arc, thread};

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
    Close(SessionClose),
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
    /// Answered once everything queued before it is written.
    Flush(oneshot::Sender<()>),
}

/// The data path's handle. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Msg>,
}

const QUEUE: usize = 16_384;
const GATHER: std::time::Duration = std::time::Duration::from_millis(5);
const BATCH: usize = 1_024;

impl Recorder {
    /// Starts the writer thread for `store`.
    pub fn start(mut store: impl Store) -> Recorder {
        let (tx, mut rx) = mpsc::channel::<Msg>(QUEUE);
        let spawned = thread::Builder::new()
            .name("recorder".into())
            .spawn(move || {
                let mut batch = Vec::with_capacity(BATCH);
                let mut waiters = Vec::new();
                while let Some(first) = rx.blocking_recv() {
                    // Let a busy data path fill the batch: one wake-up and one transaction per
                    // few milliseconds instead of one per statement.
                    if matches!(first, Msg::Record(_)) {
                        thread::sleep(GATHER);
                    }
                    let mut next = Some(first);
                    while let Some(m) = next.take() {
                        match m {
                            Msg::Record(r) => batch.push(*r),
                            Msg::Flush(w) => waiters.push(w),
                        }
                        if batch.len() < BATCH {
                            next = rx.try_recv().ok();
                        }
                    }
                    if let Err(e) = store.write(&batch) {
                        // Nothing more can be done for this batch but say so loudly; the
                        // audit store (issue 7) adds retry and spill.
                        tracing::error!(records = batch.len(), "recording failed: {e}");
                    }
                    batch.clear();
                    for w in waiters.drain(..) {
                        let _ = w.send(());
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("recorder thread: {e}");
        }
        Recorder { tx }
    }

    /// Queues a record, waiting while the queue is full.
    pub async fn record(&self, r: Record) {
        if self.tx.send(Msg::Record(Box::new(r))).await.is_err() {
            tracing::error!("recorder is gone; record lost");
        }
    }

    /// Waits until everything queued so far is written.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// A recorder over a SQLite file.
    pub fn sqlite(path: &Path) -> Result<Arc<Recorder>, StoreError> {
        Ok(Arc::new(Recorder::start(super::sqlite::SqliteStore::open(
            path,
        )?)))
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
