//! What the console API reads besides approvals: the record database (through read-only
//! connections of its own), the policy in force and the reloader's status, the central sink's
//! progress, and the approvals' and revocations' live changes. Also the answers that are not
//! one of the record's rows: the chain's state (verified in the background, at most once a
//! minute: a walk of the whole journal is not made per request) and the policy's rules (never
//! a secret).

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicI64, Ordering},
        Arc, Mutex,
    },
};

use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

use super::data;
use crate::{
    audit::{self, AuditError},
    policy::{Policy, PolicyStatus, Rule},
    proxy::revocations::RevocationChange,
    record::now_ms,
};

/// How old a chain verification may be before a request starts another (in the background).
const VERIFY_EVERY_MS: i64 = 60_000;

pub struct ConsoleApi {
    /// `None` with `--record-off`: nothing to read.
    pub record_db: Option<PathBuf>,
    pub policy: watch::Receiver<Arc<Policy>>,
    pub policy_status: Arc<Mutex<PolicyStatus>>,
    /// The last record shipped to the central audit store; `None` without one.
    pub sink_shipped: Option<Arc<AtomicI64>>,
    pub revocations: broadcast::Sender<RevocationChange>,
    chain: Mutex<Option<Value>>,
    verifying: AtomicBool,
}

impl ConsoleApi {
    pub fn new(
        record_db: Option<PathBuf>,
        policy: watch::Receiver<Arc<Policy>>,
        policy_status: Arc<Mutex<PolicyStatus>>,
        sink_shipped: Option<Arc<AtomicI64>>,
        revocations: broadcast::Sender<RevocationChange>,
    ) -> ConsoleApi {
        ConsoleApi {
            record_db,
            policy,
            policy_status,
            sink_shipped,
            revocations,
            chain: Mutex::new(None),
            verifying: AtomicBool::new(false),
        }
    }

    /// Runs `f` on a read-only connection to the record, off the async threads.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T, AuditError> + Send + 'static,
    ) -> Result<T, AuditError> {
        let Some(path) = self.record_db.clone() else {
            return Err(AuditError::Usage(
                "the gateway runs with --record-off: nothing is on record".into(),
            ));
        };
        tokio::task::spawn_blocking(move || f(&audit::open(&path)?))
            .await
            .map_err(|e| AuditError::Usage(format!("record read failed: {e}")))?
    }

    /// `GET /v1/audit`: the chain's last verification (made now if there is none yet, else
    /// renewed in the background once a minute), the pruning anchor, the journal's tip, the
    /// central sink's progress.
    pub async fn audit(self: &Arc<Self>) -> Result<Value, AuditError> {
        let last = self.chain.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let chain = match last {
            None => self.verify().await?,
            Some(c) => {
                let stale = c["checked_at_ms"].as_i64().unwrap_or(0) + VERIFY_EVERY_MS < now_ms();
                if stale && !self.verifying.swap(true, Ordering::AcqRel) {
                    let this = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = this.verify().await {
                            tracing::warn!("console: chain verification: {e}");
                        }
                    });
                }
                c
            }
        };
        let (anchor, tip) = self.read(|c| Ok((data::anchor(c)?, data::tip(c)?))).await?;
        let sink = self.sink_shipped.as_ref().map(|s| {
            let shipped = s.load(Ordering::Relaxed);
            let behind = tip["seq"].as_i64().map(|t| (t - shipped).max(0));
            json!({"shipped_seq": shipped, "behind": behind})
        });
        Ok(json!({"chain": chain, "anchor": anchor, "tip": tip, "sink": sink}))
    }

    async fn verify(&self) -> Result<Value, AuditError> {
        let result = self.read(|c| Ok(crate::record::journal::verify(c)?)).await;
        self.verifying.store(false, Ordering::Release);
        let report = result?;
        let v = json!({
            "ok": report.problems.is_empty(),
            "records": report.records,
            "error": report.problems.first().map(|p| p.what.clone()),
            "problems": report.problems.len(),
            "checked_at_ms": now_ms(),
        });
        *self.chain.lock().unwrap_or_else(|p| p.into_inner()) = Some(v.clone());
        Ok(v)
    }

    /// `GET /v1/policy`: the policy in force, its rules as people wrote them (who, where, what
    /// they do), and the last reload's refusal. Credentials, keys and the console's client
    /// secret are never in it.
    pub fn policy(&self) -> Value {
        let p = self.policy.borrow().clone();
        let status = self
            .policy_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        json!({
            "version": p.version,
            "generation": status.generation,
            "loaded_at_ms": status.loaded_at_ms,
            "rules": p.rules.iter().map(rule).collect::<Vec<_>>(),
            "last_reload_error": status.last_error.as_ref().map(|e| e.message.clone()),
            "last_reload_error_at_ms": status.last_error.as_ref().map(|e| e.at_ms),
        })
    }
}

fn rule(r: &Rule) -> Value {
    let kind = if r.mask.is_some() {
        "mask"
    } else if r.approval.is_some() {
        "approval"
    } else if r.action.is_some() {
        "action"
    } else {
        "connection"
    };
    let mut v = json!({
        "name": r.name,
        "effect": r.effect,
        "kind": kind,
        "workloads": r.workloads,
        "issuers": r.issuers,
        "subjects": r.subjects.iter().map(|g| g.glob().glob()).collect::<Vec<_>>(),
        "groups": r.groups,
        "logins": r.logins.iter().map(|g| g.glob().glob()).collect::<Vec<_>>(),
        "targets": r.targets,
        "file": r.source.file_name().map(|f| f.to_string_lossy().into_owned()),
    });
    if let Some(a) = &r.action {
        v["section"] = json!(a.key);
        v["protocol"] = json!(a.protocol);
    }
    if let Some(a) = &r.approval {
        v["approval"] = json!({
            "approvers": a.approvers, "quorum": a.quorum,
            "timeout_secs": a.timeout.as_secs(), "mode": a.mode,
            "retry_window_secs": a.retry_window.as_secs(), "max_rows": a.max_rows,
        });
    }
    v
}
