//! The stand-in's request log: one entry per request that reached it, kept in memory for the
//! tests and appended to a JSON-lines file, so a test can assert what the API server received
//! (impersonation headers present, the agent's own token never seen, protobuf bodies, ...).
//! Tokens are never logged, only their fingerprint ([`token_fingerprint`]).

use std::{
    fs::File,
    io::Write,
    path::Path,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The first 16 hex digits of the token's SHA-256: enough to tell tokens apart in a log
/// without writing them down.
pub fn token_fingerprint(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One request as the stand-in saw it.
#[derive(Clone, Debug, Serialize)]
pub struct LogEntry {
    pub seq: u64,
    pub method: String,
    pub path: String,
    pub query: String,
    /// `bearer`, `cert` or `none`.
    pub auth: String,
    /// The fingerprint of the bearer token, when one was sent (even an unknown one).
    pub token_fingerprint: Option<String>,
    /// The authenticated user (before impersonation), if any.
    pub authenticated_user: Option<String>,
    /// The user the request acted as (after impersonation), if it was authenticated.
    pub effective_user: Option<String>,
    pub effective_groups: Vec<String>,
    /// `Impersonate-User`, `Impersonate-Group` (each), `Impersonate-Uid`, `Impersonate-Extra-*`,
    /// lower-cased names, in the order received.
    pub impersonation: Vec<(String, String)>,
    pub accept: Option<String>,
    pub content_type: Option<String>,
    pub user_agent: Option<String>,
    pub upgrade: Option<String>,
    pub websocket_protocols: Option<String>,
    pub body_bytes: usize,
    /// The request body (capped at 64 KiB), in memory only.
    #[serde(skip)]
    pub body: Vec<u8>,
    /// The status code the stand-in answered.
    pub status: u16,
    /// The content type the stand-in answered with.
    pub response_content_type: Option<String>,
}

impl LogEntry {
    /// All values of an impersonation header (lower-case name).
    pub fn impersonation_values(&self, name: &str) -> Vec<&str> {
        self.impersonation
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// One exec session as the stand-in ran it (recorded when it ends).
#[derive(Clone, Debug, Serialize)]
pub struct ExecRecord {
    pub namespace: String,
    pub pod: String,
    pub argv: Vec<String>,
    /// The process's exit code (`None`: killed by a signal, or it could not start).
    pub exit_code: Option<i32>,
    /// The client's side of the WebSocket ended (close frame or EOF) before the process did;
    /// the stand-in then kills the process.
    pub ended_by_client: bool,
    pub stdin_bytes: u64,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
}

/// One port-forward connection (a pair of SPDY streams) as the stand-in served it, recorded
/// when it ends.
#[derive(Clone, Debug, Serialize)]
pub struct ForwardRecord {
    pub namespace: String,
    pub pod: String,
    /// The pod's port the client asked for.
    pub port: u16,
    /// Where the stand-in forwarded it (`None`: no such port, answered on the error stream).
    pub to: Option<std::net::SocketAddr>,
    pub bytes_to_pod: u64,
    pub bytes_from_pod: u64,
}

/// The shared log. Cloning shares it.
#[derive(Clone, Default)]
pub struct RequestLog {
    inner: Arc<Mutex<LogInner>>,
    watches: Arc<AtomicUsize>,
    forward_sessions: Arc<AtomicUsize>,
}

#[derive(Default)]
struct LogInner {
    entries: Vec<LogEntry>,
    execs: Vec<ExecRecord>,
    forwards: Vec<ForwardRecord>,
    file: Option<File>,
}

/// Counts a watch as open while it lives.
pub struct WatchGuard(Arc<AtomicUsize>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl RequestLog {
    pub fn new(file: Option<&Path>) -> std::io::Result<Self> {
        let file = match file {
            Some(p) => Some(File::options().create(true).append(true).open(p)?),
            None => None,
        };
        Ok(Self {
            inner: Arc::new(Mutex::new(LogInner {
                entries: Vec::new(),
                execs: Vec::new(),
                forwards: Vec::new(),
                file,
            })),
            watches: Arc::new(AtomicUsize::new(0)),
            forward_sessions: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn push(&self, mut entry: LogEntry) {
        let mut inner = self.lock();
        entry.seq = inner.entries.len() as u64;
        if let Some(f) = inner.file.as_mut() {
            if let Ok(line) = serde_json::to_string(&entry) {
                // A log write failure must not change the answer the client gets.
                let _ = writeln!(f, "{line}");
            }
        }
        inner.entries.push(entry);
    }

    pub(crate) fn push_exec(&self, rec: ExecRecord) {
        self.lock().execs.push(rec);
    }

    /// The exec sessions that ended so far.
    pub fn execs(&self) -> Vec<ExecRecord> {
        self.lock().execs.clone()
    }

    pub(crate) fn push_forward(&self, rec: ForwardRecord) {
        self.lock().forwards.push(rec);
    }

    /// The port-forward connections that ended so far.
    pub fn forwards(&self) -> Vec<ForwardRecord> {
        self.lock().forwards.clone()
    }

    pub(crate) fn forward_session_opened(&self) -> WatchGuard {
        self.forward_sessions.fetch_add(1, Ordering::SeqCst);
        WatchGuard(self.forward_sessions.clone())
    }

    /// Port-forward sessions (upgraded connections) open right now.
    pub fn active_forward_sessions(&self) -> usize {
        self.forward_sessions.load(Ordering::SeqCst)
    }

    pub(crate) fn watch_opened(&self) -> WatchGuard {
        self.watches.fetch_add(1, Ordering::SeqCst);
        WatchGuard(self.watches.clone())
    }

    /// Watches being streamed right now (one ends when its client goes away or it times out).
    pub fn active_watches(&self) -> usize {
        self.watches.load(Ordering::SeqCst)
    }

    /// A copy of every entry so far.
    pub fn entries(&self) -> Vec<LogEntry> {
        self.lock().entries.clone()
    }

    /// Entries whose path starts with `prefix`.
    pub fn matching(&self, prefix: &str) -> Vec<LogEntry> {
        self.lock()
            .entries
            .iter()
            .filter(|e| e.path.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Whether any request carried this bearer token.
    pub fn saw_token(&self, token: &str) -> bool {
        let fp = token_fingerprint(token);
        self.lock()
            .entries
            .iter()
            .any(|e| e.token_fingerprint.as_deref() == Some(fp.as_str()))
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.entries.clear();
        inner.execs.clear();
        inner.forwards.clear();
    }
}
