//! The running gateway as the admin API sees it: its proxy (sessions, revocations), the
//! reloader's status and capture's last error.

use std::sync::{Arc, Mutex};

use super::{
    api::{PolicyState, ReloadRefused, Status},
    handler::Node,
};
use crate::{
    net::Connect,
    policy::PolicyStatus,
    proxy::{revocations::Revocation, Proxy},
};

pub struct Gateway<C> {
    pub proxy: Arc<Proxy<C>>,
    pub policy: Arc<Mutex<PolicyStatus>>,
    pub capture_error: Arc<Mutex<Option<String>>>,
}

impl<C: Connect + 'static> Node for Gateway<C> {
    fn status(&self) -> Status {
        let p = self.policy.lock().unwrap_or_else(|p| p.into_inner());
        Status {
            pid: std::process::id(),
            policy: PolicyState {
                dir: p.dir.clone(),
                version: p.version.clone(),
                generation: p.generation,
                loaded_at_ms: p.loaded_at_ms,
                last_error: p.last_error.as_ref().map(|e| ReloadRefused {
                    at_ms: e.at_ms,
                    message: e.message.clone(),
                }),
            },
            sessions: self.proxy.sessions.count(),
            capture_error: self
                .capture_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    fn revoke(&self, r: Revocation) -> Result<usize, String> {
        self.proxy.revoke(r)
    }

    fn lift(&self, r: &Revocation) -> Result<usize, String> {
        self.proxy.revocations.lift(r).map_err(|e| e.to_string())
    }

    fn revocations(&self) -> Vec<Revocation> {
        self.proxy.revocations.list()
    }
}
