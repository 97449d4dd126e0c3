//! Live reload: the policy directory is watched (`notify`) and re-read on SIGHUP. A valid new
//! policy replaces the one in force in a single step (a `watch` channel swap: readers see either
//! the old or the new policy, never a mix); an invalid one is refused whole and the last good
//! policy stays, with the error kept for `agentgate status`.
//!
//! After the swap the reloader waits for the live sessions (see [`Enforce`]) before it says the
//! policy is applied: `policy_applied` and its `applied_ms` mean the policy is in force in every
//! session, not only for new connections.

use std::{
    future::Future,
    path::PathBuf,
    pin::Pin,
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

/// Puts a policy that was just swapped in in force in the live sessions; returns once it is
/// (sessions it withdraws ended, the number of those that did not settle in time).
pub type Enforce =
    Box<dyn Fn(Arc<Policy>) -> Pin<Box<dyn Future<Output = Enforced> + Send>> + Send + Sync>;

/// What [`Enforce`] did: sessions ended, and those of them still forwarding when it gave up
/// waiting.
#[derive(Debug, Default, Clone, Copy)]
pub struct Enforced {
    pub ended: usize,
    pub stragglers: usize,
}

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
    enforce: Option<Enforce>,
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
                enforce: None,
            },
            rx,
        )
    }

    /// How each new policy is put in force in the live sessions (the proxy's registry).
    pub fn enforce_with(&mut self, enforce: Enforce) {
        self.enforce = Some(enforce);
    }

    pub fn status(&self) -> Arc<Mutex<PolicyStatus>> {
        self.status.clone()
    }

    /// Reads the directory and, if it holds a valid policy different from the one in force,
    /// puts it in force.
    pub async fn reload(&self) -> Outcome {
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
        match result {
            Ok(p) if p.version == current.version => {
                self.status()
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .last_error = None;
                Outcome::Unchanged
            }
            Ok(p) => {
                let version = p.version.clone();
                let p = Arc::new(p);
                // New connections are decided under it from here on; live sessions check it
                // before their next forward, and `enforce` waits for those it withdraws to be
                // done with what they were forwarding under the old one. Only then is it in
                // force everywhere: that is the time the event gives.
                // Taken before the swap: every effect of the swap comes at or after it.
                let swapped_ms = now_ms();
                self.tx.send_replace(p.clone());
                let enforced = match &self.enforce {
                    Some(enforce) => enforce(p).await,
                    None => Enforced::default(),
                };
                let applied_ms = now_ms();
                if enforced.stragglers > 0 {
                    tracing::warn!(
                        stragglers = enforced.stragglers,
                        "withdrawn sessions still forwarding when the policy was declared in force"
                    );
                }
                let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
                status.version = version.clone();
                status.generation += 1;
                status.loaded_at_ms = applied_ms;
                status.last_error = None;
                tracing::info!(%version, generation = status.generation, "policy applied");
                self.events.emit(
                    "policy_applied",
                    json!({"version": version, "generation": status.generation,
                           "swapped_ms": swapped_ms, "applied_ms": applied_ms,
                           "sessions_ended": enforced.ended, "stragglers": enforced.stragglers}),
                );
                Outcome::Applied
            }
            Err(message) => {
                let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
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
            self.reload().await;
        }
    }
}
