//! Who is calling the HTTP admin API, how they proved it, and what they may do there.

use crate::{approval::Approver, policy::ConsoleRole};

/// A person on the HTTP API: signed in to the console (session cookie) or presenting an OIDC
/// token (`Authorization: Bearer`, for scripts).
// `role` and `via` are read by the console's routes and CSRF check (issue 22, landing next).
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub struct Caller {
    /// Always `Approver::Oidc`: approvals are decided in this person's name and groups.
    pub approver: Approver,
    /// From the policy's `console:` roles for the person's groups (`Approver` without one).
    pub role: ConsoleRole,
    pub via: Via,
}

#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    Bearer,
    /// A console session; state-changing requests must carry its CSRF token.
    Session {
        csrf_token: String,
    },
}

#[allow(dead_code)]
impl Caller {
    /// `role` or more (admins are auditors, auditors are approvers).
    pub fn at_least(&self, role: ConsoleRole) -> bool {
        self.role >= role
    }
}
