//! Live reload: the policy directory is watched (`notify`) and re-read on SIGHUP. A valid new
//! policy replaces the one in force in a single step (a `watch` channel swap: readers see either
//! the old or the new policy, never a mix); an invalid one is refused whole and the last good
//! policy stays, with the error kept for `agentgate status`.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use notify::Watcher;
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{load_dir, Policy};
use crate::record::EventSink;

/// Extra checks a policy must pass before it is put in force (e.g. that its identity providers
/// can be built). Returns a message naming what is wrong.
pub type Validate = Box<dyn Fn(&Policy) -> Result<(), String> + Send + Sync>;

#[derive(Debug, Clone, Serialize)]
pub struct PolicyStatus {
    pub dir: PathBuf,
    pub version: String,
    /// 1 for the policy read at start, +1 for each policy put in force since.
    pub generation: u64,
    pub loaded_at_ms: u64,
    pub last_error: Option<ReloadError>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReloadError {
    pub at_ms: u64,
    pub message: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Unchanged,
    Refused,
}

pub struct Reloader {
    dir: PathBuf,
    tx: watch::Sender<Arc<Policy>>,
    status: Arc<Mutex<PolicyStatus>>,
    events: Arc<EventSink>,
    validate: Validate,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl Reloader {
    pub fn new(
        dir: PathBuf,
        initial: Arc<Policy>,
        events: Arc<EventSink>,
        validate: Validate,
    ) -> (Self, watch::Receiver<Arc<Policy>>) {
        let status = PolicyStatus {
            dir: dir.clone(),
            version: initial.version.clone(),
            generation: 1,
            loaded_at_ms: now_ms(),
            last_error: None,
        };
        let (tx, rx) = watch::channel(initial);
        (
            Self {
                dir,
                tx,
                status: Arc::new(Mutex::new(status)),
                events,
                validate,
            },
            rx,
        )
    }

    pub fn status(&self) -> Arc<Mutex<PolicyStatus>> {
        self.status.clone()
    }

    /// Reads the directory and, if it holds a valid policy different from the one in force,
    /// puts it in force.
    pub fn reload(&self) -> Outcome {
        let current = self.tx.borrow().clone();
        let result = self.load_stable().and_then(|p| {
                if p.gateway != current.gateway {
                    return Err(format!(
                        "{}: `gateway` settings changed; they take effect only at restart (policy not applied)",
                        self.dir.display()
                    ));
                }
                // The mask key is a `gateway` setting too, though it lives beside them (it is
                // read from a file or the environment, which can change without the policy
                // files): a new key would change every hash mid-flight, unrecorded.
                if p.mask_key != current.mask_key {
                    return Err(format!(
                        "{}: gateway.mask_key changed (its file or variable has a new value); a new key takes effect only at restart (policy not applied)",
                        self.dir.display()
                    ));
                }
                (self.validate)(&p).map(|()| p)
            });
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(p) if p.version == current.version => {
                status.last_error = None;
                Outcome::Unchanged
            }
            Ok(p) => {
                let version = p.version.clone();
                // Sessions react to the new policy at once, on other threads, before this
                // event is written: the event says when it was put in force.
                let applied_ms = now_ms();
                self.tx.send_replace(Arc::new(p));
                status.version = version.clone();
                status.generation += 1;
                status.loaded_at_ms = now_ms();
                status.last_error = None;
                tracing::info!(%version, generation = status.generation, "policy applied");
                self.events.emit(
                    "policy_applied",
                    json!({"version": version, "generation": status.generation, "applied_ms": applied_ms}),
                );
                Outcome::Applied
            }
            Err(message) => {
                for line in message.lines() {
                    tracing::error!(keeping = %current.version, "policy refused: {line}");
                }
                self.events.emit(
                    "policy_refused",
                    json!({"error": message, "version_in_force": current.version}),
                );
                status.last_error = Some(ReloadError {
                    at_ms: now_ms(),
                    message,
                });
                Outcome::Refused
            }
        }
    }

    /// Reads the directory until two reads in a row agree: a ConfigMap update swaps files while
    /// we read, and a mix of old and new files must never be put in force.
    fn load_stable(&self) -> Result<Policy, String> {
        let read = || load_dir(&self.dir).map_err(|e| e.to_string());
        let mut last = read()?;
        for _ in 0..3 {
            let again = read()?;
            if again.version == last.version {
                return Ok(again);
            }
            last = again;
        }
        Err(format!(
            "{}: the files kept changing while being read; not applied",
            self.dir.display()
        ))
    }

    /// Reloads on every change in the directory (debounced) and on SIGHUP, until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let watcher = crate::fswatch::change_signal().and_then(|(mut w, rx)| {
            w.watch(&self.dir, notify::RecursiveMode::NonRecursive)
                .map(|()| (w, rx))
        });
        let (_watcher, mut rx) = match watcher {
            Ok((w, rx)) => (Some(w), Some(rx)),
            Err(e) => {
                tracing::warn!(
                    "not watching {}: {e}; reload with SIGHUP",
                    self.dir.display()
                );
                (None, None)
            }
        };
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("no SIGHUP handler: {e}");
                None
            }
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = crate::fswatch::next_change(&mut rx) => {
                    // Editors write in several steps; read once they are done.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if let Some(r) = rx.as_mut() {
                        while r.try_recv().is_ok() {}
                    }
                }
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading policy");
                }
            }
            self.reload();
        }
    }
}
