//! Live sessions, so that a policy change can end the ones it no longer allows.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio_util::sync::CancellationToken;

use crate::policy::{
    Decision, IdentityProvider, Policy, PostgresTarget, Protocol, TokenSource, Who,
};

/// Everything a session was allowed on, kept to re-evaluate it against a new policy: not only
/// the names but what they stood for (the cgroup, the destination, the provider's settings).
#[derive(Debug, Clone)]
pub struct Grant {
    pub issuer: String,
    pub subject: String,
    pub groups: Vec<String>,
    pub workload: String,
    pub cgroup: String,
    pub token_source: TokenSource,
    pub target: String,
    pub dst: std::net::SocketAddr,
    /// What the target was when granted: a changed protocol or upstream login ends the session.
    pub protocol: Protocol,
    pub postgres: Option<PostgresTarget>,
    pub provider: IdentityProvider,
}

/// Whether `policy` still allows what `g` was granted; the reason if not.
pub fn still_allowed(policy: &Policy, g: &Grant) -> Result<(), String> {
    let workload = crate::capture::classify(policy, &g.cgroup).map(|i| &policy.workloads[i]);
    match workload {
        Some(w) if w.name == g.workload && w.token == g.token_source => {}
        _ => {
            return Err(format!(
                "cgroup {} is no longer workload `{}` with the same token source",
                g.cgroup, g.workload
            ))
        }
    }
    match policy.target_for(g.dst) {
        Some((_, t))
            if t.name == g.target && t.protocol == g.protocol && t.postgres == g.postgres => {}
        _ => {
            return Err(format!(
                "{} is no longer target `{}` as it was defined",
                g.dst, g.target
            ))
        }
    }
    if policy
        .identity_providers
        .iter()
        .find(|p| p.issuer == g.issuer)
        != Some(&g.provider)
    {
        return Err(format!(
            "the identity provider of {} was changed or removed",
            g.issuer
        ));
    }
    match policy.decide(
        &Who {
            issuer: &g.issuer,
            subject: &g.subject,
            groups: &g.groups,
            workload: &g.workload,
        },
        &g.target,
    ) {
        Decision::Allow { .. } => Ok(()),
        Decision::Deny { reason, .. } => Err(reason),
    }
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

    /// Ends every session `which` picks, saying `reason`; returns how many.
    pub fn end_where(&self, which: impl Fn(&Grant) -> bool, reason: &str) -> usize {
        let mut ended = 0;
        for entry in self.lock().values() {
            if which(&entry.grant) {
                *entry.reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
                entry.stop.cancel();
                ended += 1;
            }
        }
        ended
    }

    /// Ends every session `policy` no longer allows; returns how many.
    pub fn revalidate(&self, policy: &Policy) -> usize {
        let mut ended = 0;
        for entry in self.lock().values() {
            if let Err(reason) = still_allowed(policy, &entry.grant) {
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
