//! What the admin API is asked and what it answers, typed. The CLI sends an [`AdminRequest`]
//! over the Unix socket (one JSON object per line, `{"cmd": …, …}`); the approvers' HTTP routes
//! map onto the same enum; one handler ([`super::Admin::handle`]) answers both.
//!
//! Answers are [`AdminResponse`] (untagged: each kind is the JSON object it always was) or a
//! [`Failure`] (`{"error": text, "reason": code}`). A request that is not one of these is an
//! error, never some default action.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    approval::{Request, State, Verdict},
    proxy::revocations::Revocation,
};

/// One request to the running gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", deny_unknown_fields)]
pub enum AdminRequest {
    /// Policy in force, last reload error, live sessions (root on the node only).
    // `{}` rather than a unit variant: serde lets a unit variant ignore unknown fields.
    #[serde(rename = "status")]
    Status {},
    #[serde(rename = "approvals.list")]
    ApprovalsList { state: StateFilter },
    #[serde(rename = "approvals.show")]
    ApprovalsShow { id: String },
    #[serde(rename = "approvals.decide")]
    ApprovalsDecide {
        id: String,
        verdict: Verdict,
        reason: Option<String>,
    },
    /// Cut off an identity and/or a workload (root on the node only).
    #[serde(rename = "revoke")]
    Revoke {
        subject: Option<String>,
        issuer: Option<String>,
        workload: Option<String>,
        reason: Option<String>,
    },
    /// Lift the revocation of exactly this identity/workload (root on the node only).
    #[serde(rename = "revoke.lift")]
    LiftRevocation {
        subject: Option<String>,
        issuer: Option<String>,
        workload: Option<String>,
        reason: Option<String>,
    },
    /// The revocations in force (root on the node only).
    #[serde(rename = "revocations")]
    Revocations {},
}

impl AdminRequest {
    /// `revoke` or, with `lift`, `revoke.lift` of exactly this identity/workload.
    pub fn revocation(
        lift: bool,
        subject: Option<String>,
        issuer: Option<String>,
        workload: Option<String>,
        reason: Option<String>,
    ) -> AdminRequest {
        if lift {
            AdminRequest::LiftRevocation {
                subject,
                issuer,
                workload,
                reason,
            }
        } else {
            AdminRequest::Revoke {
                subject,
                issuer,
                workload,
                reason,
            }
        }
    }

    /// The request's name on the wire (`cmd`), for messages.
    pub fn name(&self) -> &'static str {
        match self {
            AdminRequest::Status {} => "status",
            AdminRequest::ApprovalsList { .. } => "approvals.list",
            AdminRequest::ApprovalsShow { .. } => "approvals.show",
            AdminRequest::ApprovalsDecide { .. } => "approvals.decide",
            AdminRequest::Revoke { .. } => "revoke",
            AdminRequest::LiftRevocation { .. } => "revoke.lift",
            AdminRequest::Revocations {} => "revocations",
        }
    }
}

/// Which approval requests to list: `all`, or those in one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum StateFilter {
    All,
    Only(State),
}

impl StateFilter {
    pub fn parse(s: &str) -> Result<StateFilter, String> {
        match s {
            "all" => Ok(StateFilter::All),
            s => State::parse(s)
                .map(StateFilter::Only)
                .ok_or_else(|| format!("unknown state `{s}`")),
        }
    }

    /// The state to list, `None` for all of them.
    pub fn state(self) -> Option<State> {
        match self {
            StateFilter::All => None,
            StateFilter::Only(s) => Some(s),
        }
    }
}

impl TryFrom<String> for StateFilter {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        StateFilter::parse(&s)
    }
}

impl From<StateFilter> for String {
    fn from(f: StateFilter) -> String {
        match f {
            StateFilter::All => "all".into(),
            StateFilter::Only(s) => s.as_str().into(),
        }
    }
}

/// A successful answer; which one follows from the request (see [`AdminResponse::decode`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum AdminResponse {
    Status(Status),
    Requests(RequestList),
    Request(Box<Request>),
    Revocations(RevocationList),
    Revoked(Revoked),
    Lifted(Lifted),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub policy: PolicyState,
    /// Live sessions.
    pub sessions: usize,
    /// Why capture is not fully applied, if it is not.
    pub capture_error: Option<String>,
}

/// The policy in force and the last reload's refusal (the admin API's view of the reloader's
/// status, kept here so that the wire format is defined in one place).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyState {
    pub dir: PathBuf,
    pub version: String,
    pub generation: u64,
    pub loaded_at_ms: u64,
    pub last_error: Option<ReloadRefused>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadRefused {
    pub at_ms: u64,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestList {
    pub requests: Vec<Request>,
    /// The list was cut at [`crate::approval::LIST_LIMIT`] (the newest only).
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationList {
    pub revocations: Vec<Revocation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    pub ended_sessions: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifted {
    pub lifted: usize,
}

/// A refused or failed request: the message and a stable code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub error: String,
    #[serde(default)]
    pub reason: String,
}

impl AdminResponse {
    /// Reads a successful answer to `req`: the kind of answer is the one `req` gets, so an
    /// answer of another shape is an error rather than a guess.
    pub fn decode(req: &AdminRequest, answer: Value) -> Result<AdminResponse, serde_json::Error> {
        use serde_json::from_value;
        Ok(match req {
            AdminRequest::Status {} => AdminResponse::Status(from_value(answer)?),
            AdminRequest::ApprovalsList { .. } => AdminResponse::Requests(from_value(answer)?),
            AdminRequest::ApprovalsShow { .. } | AdminRequest::ApprovalsDecide { .. } => {
                AdminResponse::Request(Box::new(from_value(answer)?))
            }
            AdminRequest::Revoke { .. } => AdminResponse::Revoked(from_value(answer)?),
            AdminRequest::LiftRevocation { .. } => AdminResponse::Lifted(from_value(answer)?),
            AdminRequest::Revocations {} => AdminResponse::Revocations(from_value(answer)?),
        })
    }

    /// Reads an answer line: a [`Failure`] if it carries `error`, else the answer to `req`.
    pub fn decode_answer(
        req: &AdminRequest,
        answer: Value,
    ) -> Result<Result<AdminResponse, Failure>, serde_json::Error> {
        if answer.get("error").is_some() {
            return serde_json::from_value(answer).map(Err);
        }
        AdminResponse::decode(req, answer).map(Ok)
    }
}

#[cfg(test)]
#[path = "api_tests.rs"]
mod tests;
