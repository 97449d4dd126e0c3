//! Live sessions, so that a policy change can end the ones it no longer allows.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio_util::sync::CancellationToken;

use crate::policy::{Policy, Who};

/// Who a session runs as, kept to re-evaluate it against a new policy.
#[derive(Debug, Clone)]
pub struct Grant {
    pub issuer: String,
    pub subject: String,
    pub groups: Vec<String>,
    pub workload: String,
    pub target: String,
}

struct Entry {
    grant: Grant,
    stop: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<u64, Entry>>,
}

/// Handed to the session: `stopped()` fires when the registry ends it, `reason()` says why.
pub struct SessionGuard<'a> {
    sessions: &'a Sessions,
    id: u64,
    pub stop: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

impl SessionGuard<'_> {
    pub fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        self.sessions.lock().remove(&self.id);
    }
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn open(&self, id: u64, grant: Grant) -> SessionGuard<'_> {
        let stop = CancellationToken::new();
        let reason = Arc::new(Mutex::new(None));
        self.lock().insert(
            id,
            Entry {
                grant,
                stop: stop.clone(),
                reason: reason.clone(),
            },
        );
        SessionGuard {
            sessions: self,
            id,
            stop,
            reason,
        }
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Ends every session `policy` no longer allows; returns how many.
    pub fn revalidate(&self, policy: &Policy) -> usize {
        let mut ended = 0;
        for entry in self.lock().values() {
            let g = &entry.grant;
            let decision = if !policy.workloads.iter().any(|w| w.name == g.workload) {
                crate::policy::Decision::Deny {
                    rule: None,
                    reason: format!("workload `{}` is no longer defined", g.workload),
                }
            } else if !policy.targets.iter().any(|t| t.name == g.target) {
                crate::policy::Decision::Deny {
                    rule: None,
                    reason: format!("target `{}` is no longer defined", g.target),
                }
            } else {
                policy.decide(
                    &Who {
                        issuer: &g.issuer,
                        subject: &g.subject,
                        groups: &g.groups,
                        workload: &g.workload,
                    },
                    &g.target,
                )
            };
            if let crate::policy::Decision::Deny { reason, .. } = decision {
                *entry.reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
                    "policy {} no longer allows this session: {reason}",
                    policy.version
                ));
                entry.stop.cancel();
                ended += 1;
            }
        }
        ended
    }
}
