//! The one handler of admin requests, whichever way they come: the Unix socket (root on the
//! node, an [`Approver::Local`]) or the HTTP API (a person with a verified token, an
//! [`Approver::Oidc`], who sees and decides only the requests of their groups).

use std::sync::Arc;

use super::api::{
    AdminRequest, AdminResponse, Lifted, RequestList, RevocationList, Revoked, Status,
};
use crate::{
    approval::{ApprovalError, Approvals, Approver},
    policy::ConsoleRole,
    proxy::revocations::Revocation,
};

/// What of the running gateway the admin API reads or changes besides approvals.
pub trait Node: Send + Sync {
    fn status(&self) -> Status;
    /// Stores the revocation and ends the live sessions it covers; how many ended.
    fn revoke(&self, r: Revocation) -> Result<usize, String>;
    /// Lifts the revocations of exactly `r`'s identity/workload; how many.
    fn lift(&self, r: &Revocation) -> Result<usize, String>;
    fn revocations(&self) -> Vec<Revocation>;
}

pub struct Admin {
    pub approvals: Arc<Approvals>,
    pub node: Arc<dyn Node>,
}

#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Approval(#[from] ApprovalError),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("name an identity (subject) or a workload")]
    NoRevocationTarget,
    #[error("`{0}` is only for root on the node's admin socket")]
    LocalOnly(&'static str),
    #[error("`{0}` needs the console role {1:?} or higher")]
    Forbidden(&'static str, ConsoleRole),
    #[error("revocation not stored: {0}")]
    RevocationNotStored(String),
    #[error("not stored: {0}")]
    LiftNotStored(String),
    #[error("answer not encoded: {0}")]
    Unencodable(String),
}

impl Refusal {
    /// A stable machine code, as the approval errors have.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Approval(e) => e.code(),
            Refusal::BadRequest(_) | Refusal::NoRevocationTarget => "bad_request",
            Refusal::LocalOnly(_) | Refusal::Forbidden(..) => "forbidden",
            Refusal::RevocationNotStored(_) | Refusal::LiftNotStored(_) => "store_error",
            Refusal::Unencodable(_) => "internal_error",
        }
    }
}

impl Admin {
    /// Answers `req` for `caller` without a console role (root on the node's socket; a person
    /// with no role beyond approving).
    pub fn handle(&self, req: AdminRequest, caller: &Approver) -> Result<AdminResponse, Refusal> {
        self.handle_as(req, caller, ConsoleRole::Approver)
    }

    /// Answers `req` for `caller`, a person with console role `role` (ignored for root on the
    /// node, who may do everything): revocations are read by auditors and made or lifted by
    /// admins; the node's status stays root's.
    pub fn handle_as(
        &self,
        req: AdminRequest,
        caller: &Approver,
        role: ConsoleRole,
    ) -> Result<AdminResponse, Refusal> {
        // Root on the node sees every request; a person only those of their groups.
        let groups = match caller {
            Approver::Local { .. } => None,
            Approver::Oidc { groups, .. } => Some(groups.as_slice()),
        };
        if groups.is_some() {
            let needs = match req {
                AdminRequest::Status {} => return Err(Refusal::LocalOnly(req.name())),
                AdminRequest::Revoke { .. } | AdminRequest::LiftRevocation { .. } => {
                    Some(ConsoleRole::Admin)
                }
                AdminRequest::Revocations {} => Some(ConsoleRole::Auditor),
                _ => None,
            };
            if let Some(needs) = needs.filter(|n| role < *n) {
                return Err(Refusal::Forbidden(req.name(), needs));
            }
        }
        match req {
            AdminRequest::Status {} => Ok(AdminResponse::Status(self.node.status())),
            AdminRequest::ApprovalsList { state } => {
                let requests = self.approvals.list(state.state(), groups)?;
                let truncated = requests.len() >= crate::approval::LIST_LIMIT;
                Ok(AdminResponse::Requests(RequestList {
                    requests,
                    truncated,
                }))
            }
            AdminRequest::ApprovalsShow { id } => {
                let r = self.approvals.get(&id)?;
                // Requests outside the caller's groups do not exist for them.
                if groups.is_some_and(|g| !r.decidable_by(g)) {
                    return Err(ApprovalError::UnknownRequest(id).into());
                }
                Ok(AdminResponse::Request(Box::new(r)))
            }
            AdminRequest::ApprovalsDecide {
                id,
                verdict,
                reason,
            } => {
                let r = self.approvals.decide(&id, caller, verdict, reason)?;
                Ok(AdminResponse::Request(Box::new(r)))
            }
            AdminRequest::Revoke {
                subject,
                issuer,
                workload,
                reason,
            } => {
                let r = revocation(subject, issuer, workload, reason, caller)?;
                let ended_sessions = self.node.revoke(r).map_err(Refusal::RevocationNotStored)?;
                Ok(AdminResponse::Revoked(Revoked { ended_sessions }))
            }
            AdminRequest::LiftRevocation {
                subject,
                issuer,
                workload,
                reason,
            } => {
                let r = revocation(subject, issuer, workload, reason, caller)?;
                let lifted = self.node.lift(&r).map_err(Refusal::LiftNotStored)?;
                Ok(AdminResponse::Lifted(Lifted { lifted }))
            }
            AdminRequest::Revocations {} => Ok(AdminResponse::Revocations(RevocationList {
                revocations: self.node.revocations(),
            })),
        }
    }
}

/// The revocation a request names; empty names are no names, and one of an identity or a
/// workload is required (a revocation of everyone is not something to do by omission).
fn revocation(
    subject: Option<String>,
    issuer: Option<String>,
    workload: Option<String>,
    reason: Option<String>,
    caller: &Approver,
) -> Result<Revocation, Refusal> {
    let text = |s: Option<String>| s.filter(|s| !s.is_empty());
    let r = Revocation {
        subject: text(subject),
        issuer: text(issuer),
        workload: text(workload),
        reason: text(reason).unwrap_or_else(|| "no reason given".into()),
        at_ms: crate::record::now_ms(),
        // A person is named with their issuer: the same subject at two providers is two people.
        by: match caller {
            Approver::Local { user } => user.clone(),
            Approver::Oidc {
                issuer, subject, ..
            } => format!("{issuer}#{subject}"),
        },
    };
    if r.subject.is_none() && r.workload.is_none() {
        return Err(Refusal::NoRevocationTarget);
    }
    Ok(r)
}

#[cfg(test)]
#[path = "handler_tests.rs"]
pub(crate) mod tests;
