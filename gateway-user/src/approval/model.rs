//! What an approval request is, who may decide it and how.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How an agent waits for a decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The statement is held on the open connection until it is decided or times out.
    #[default]
    Hold,
    /// Refused at once; once approved, the identical statement from the same identity is let
    /// through once within the retry window (for clients whose calls time out while held).
    DenyAndRetry,
}

/// The approval part of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalSpec {
    /// Groups from the approver token's groups claim, any of which may decide.
    pub approvers: Vec<String>,
    pub quorum: u32,
    pub timeout: Duration,
    pub mode: Mode,
    /// `deny_and_retry`: how long an approval stays usable for the retry.
    pub retry_window: Duration,
    /// Writes are first tried: one that touches at most this many rows runs without asking
    /// anyone; one that touches more is rolled back and put to approvers with its real count.
    pub max_rows: Option<u64>,
}

/// Where approval events are announced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// `{"event": …, "request": {…}}`.
    #[default]
    Json,
    /// A Slack incoming-webhook message (`text` and `blocks`).
    Slack,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub url: String,
    pub format: WebhookFormat,
}

impl Webhook {
    /// Checks the URL as the JWKS fetches do: https, or http to loopback only, no credentials.
    pub fn new(url: String, format: WebhookFormat) -> Result<Webhook, String> {
        crate::net::http::HttpUrl::parse(&url).map_err(|e| format!("webhook `{url}`: {e}"))?;
        Ok(Webhook { url, format })
    }
}

/// What is to be done, in the terms of the protocol that carries it: a SQL statement, an SSH
/// command, a Kubernetes request. What approvers see, and what the record keeps. The field
/// names on the wire and in the store are the ones the first protocol gave them (`statement`,
/// `database`), kept for the API's clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    pub protocol: String,
    /// Where inside the target it runs: the database, a namespace, a host account.
    #[serde(rename = "database", default)]
    pub namespace: String,
    /// As recorded: what masking leaves of it.
    #[serde(rename = "statement")]
    pub text: String,
    pub params: Vec<Option<String>>,
    /// The protocol's class of the action (`read`, `write`, `ddl`, …, `opaque`).
    pub class: String,
}

/// What a protocol handler submits for a held action.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub session: String,
    pub issuer: String,
    pub subject: String,
    pub workload: String,
    pub target: String,
    pub action: Action,
    pub rule: String,
    pub spec: ApprovalSpec,
    /// Identifies "the identical action from the same identity" for `deny_and_retry`.
    pub retry_key: String,
    /// Rows the statement touched in the gateway's trial run (rolled back), under `max_rows`.
    pub trial_rows: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Approved,
    Denied,
    Expired,
    Cancelled,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        [
            State::Pending,
            State::Approved,
            State::Denied,
            State::Expired,
            State::Cancelled,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Approve,
    Deny,
}

/// Who decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approver {
    /// Root on the node, through the admin socket: trusted like the policy files it could edit,
    /// so no group check; one identity toward a quorum.
    Local { user: String },
    /// A person with a verified OIDC token, through the HTTP admin API.
    Oidc {
        issuer: String,
        subject: String,
        groups: Vec<String>,
    },
}

impl Approver {
    pub fn name(&self) -> &str {
        match self {
            Approver::Local { user } => user,
            Approver::Oidc { subject, .. } => subject,
        }
    }
    pub fn issuer(&self) -> &str {
        match self {
            Approver::Local { .. } => "local",
            Approver::Oidc { issuer, .. } => issuer,
        }
    }
    pub fn via(&self) -> &'static str {
        match self {
            Approver::Local { .. } => "local",
            Approver::Oidc { .. } => "http",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    pub approver: String,
    pub issuer: String,
    pub via: String,
    pub verdict: Verdict,
    pub at_ms: i64,
    pub reason: Option<String>,
}

/// A request as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: String,
    pub state: State,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub decided_ms: Option<i64>,
    pub session: String,
    pub issuer: String,
    pub subject: String,
    pub workload: String,
    pub target: String,
    #[serde(flatten)]
    pub action: Action,
    pub rule: String,
    pub approvers: Vec<String>,
    pub quorum: u32,
    pub mode: Mode,
    pub retry_window_ms: i64,
    /// `deny_and_retry`: when the approved retry was let through (once).
    pub retry_used_ms: Option<i64>,
    #[serde(skip_serializing)]
    #[serde(default)]
    pub retry_key: String,
    /// Why it ended: the denier's reason, expiry, cancellation.
    pub reason: Option<String>,
    pub votes: Vec<Vote>,
    /// Rows the statement touched in the gateway's trial run, which was rolled back
    /// (`max_rows` rules): what approvers approve.
    #[serde(default)]
    pub trial_rows: Option<u64>,
}

impl Request {
    /// Whether this request's approval counts under `rule` as the policy states it now: the
    /// same rule and approvers, and at least today's quorum. A policy that asks more of it,
    /// or other people, needs a new request.
    pub fn covered_by(&self, rule: &str, spec: &ApprovalSpec) -> bool {
        self.rule == rule && self.approvers == spec.approvers && self.quorum >= spec.quorum
    }

    /// Distinct approvers who approved.
    pub fn approvals(&self) -> usize {
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for v in self.votes.iter().filter(|v| v.verdict == Verdict::Approve) {
            let who = (v.issuer.as_str(), v.approver.as_str());
            if !seen.contains(&who) {
                seen.push(who);
            }
        }
        seen.len()
    }

    /// Whether `groups` include one of the request's approver groups.
    pub fn decidable_by(&self, groups: &[String]) -> bool {
        self.approvers.iter().any(|g| groups.contains(g))
    }

    /// One line for people: what waits for what.
    pub fn waits_for(&self) -> String {
        format!(
            "{} approval{} from group{} {}",
            self.quorum,
            if self.quorum == 1 { "" } else { "s" },
            if self.approvers.len() == 1 { "" } else { "s" },
            self.approvers.join(", ")
        )
    }
}
