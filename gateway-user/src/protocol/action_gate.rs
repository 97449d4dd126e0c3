//! The one gate every protocol's actions pass (ARCHITECTURE.md, *Every action through one
//! gate*): the protocol's rules (deny) → approval by people (hold, or deny-and-retry) → the
//! policy in force judged again → durable intent (on record before the target sees anything)
//! → forward. A protocol supplies how its rules judge an action ([`Judgement`]), what the action
//! is in approvers' terms ([`Described`]) and where its agent reads a notice ([`Notice`]); the
//! order and its failure modes are this module's, so no protocol can get it subtly different.

use std::{future::Future, sync::Arc};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    approval::{Action, ApprovalError, ApprovalSpec, Approvals, Gate, Mode, NewRequest, State},
    policy::{Policy, Rule},
    record::{Record, Recorder, Statement},
};

/// What a protocol's rules say about one action.
#[derive(Debug)]
pub enum Judgement<'p> {
    Allowed,
    Denied {
        rule: String,
        why: String,
    },
    /// A rule set off that people may approve (or that denies, without an `approval:` part).
    Approval {
        rule: &'p Rule,
        why: String,
    },
}

/// The session an action belongs to, as the gate needs it.
pub struct GateCtx<'a> {
    pub recorder: &'a Recorder,
    pub approvals: &'a Arc<Approvals>,
    pub policy: watch::Receiver<Arc<Policy>>,
    /// The session's gate: forwards in progress, re-authorization under a new policy.
    pub gate: Arc<crate::proxy::Gate>,
    /// Cancelled when the session ends (the agent left, expiry, revocation, reload).
    pub ended: CancellationToken,
    pub session: String,
    pub issuer: String,
    pub subject: String,
    pub workload: String,
    pub target: String,
}

/// An action as approvers see it and as "the identical action" is recognised.
pub struct Described {
    /// `ssh`, `http`, … (the approval's protocol).
    pub protocol: &'static str,
    /// The agent's word for it in messages: "command", "request".
    pub noun: &'static str,
    /// Where inside the target it runs: a host account, a Kubernetes namespace.
    pub namespace: String,
    /// The action in full, as recorded.
    pub text: String,
    /// The protocol's class of it (`exec`, `delete`, …).
    pub class: String,
    /// It changes something (anything but a read): its intent is on record, committed, before
    /// it is forwarded, as for PostgreSQL's privileged statements. A read is on record with its
    /// outcome only.
    pub privileged: bool,
}

/// Where the agent reads the gateway's notices while its action is held (stderr of an SSH
/// channel; nowhere for a protocol without a side channel).
pub trait Notice {
    fn notice(&self, text: String) -> impl Future<Output = ()> + Send;
}

/// A protocol with nowhere to tell the agent anything before the answer (HTTP).
pub struct Silent;

impl Notice for Silent {
    async fn notice(&self, _text: String) {}
}

pub enum Gated {
    /// Not forwarded; `message` is what the agent is told.
    Refused { message: String },
    /// Forward it; under an approval, the request's id. `busy` lasts until it is forwarded.
    Forward {
        approval: Option<String>,
        busy: Busy,
    },
}

pub fn denial(rule: &str, why: &str) -> String {
    format!("agentgate: refused by rule \"{rule}\": {why}")
}

/// Judges the action with `judge` (the protocol's rules over a policy); fills in the record's
/// decision and rule.
pub async fn pass<J>(
    ctx: &GateCtx<'_>,
    judge: J,
    action: &Described,
    rec: &mut Statement,
    agent: &impl Notice,
) -> Gated
where
    J: for<'p> Fn(&'p Policy) -> Judgement<'p>,
{
    let policy = ctx.policy.borrow().clone();
    let mut approval = None;
    let mut approved_rule = None;
    match judge(&policy) {
        Judgement::Allowed => {}
        Judgement::Denied { rule, why } => {
            rec.decision = "denied";
            rec.rule = Some(rule.clone());
            return Gated::Refused {
                message: denial(&rule, &why),
            };
        }
        Judgement::Approval { rule, why } => {
            let Some(spec) = rule.approval.as_deref() else {
                // A rule set off without an approval section denies (fail closed).
                rec.decision = "denied";
                rec.rule = Some(rule.name.clone());
                return Gated::Refused {
                    message: denial(&rule.name, &why),
                };
            };
            match held(ctx, action, &rule.name, spec, agent).await {
                Ok(id) => {
                    rec.decision = "approved";
                    rec.rule = Some(format!("{} ({id})", rule.name));
                    approval = Some(id);
                    approved_rule = Some(rule.name.clone());
                }
                Err(message) => {
                    rec.decision = "denied";
                    rec.rule = Some(rule.name.clone());
                    return Gated::Refused { message };
                }
            }
        }
    }
    // From here to the target, a forward in progress: a reload waits for it before it says its
    // policy is in force, and this judges again under the policy in force now (it may have
    // changed while people decided, or just now).
    let busy = Busy::begin(&ctx.gate);
    if let Err(why) = ctx.gate.check() {
        rec.decision = "denied";
        return Gated::Refused {
            message: format!("agentgate: not run: {why}"),
        };
    }
    let now = ctx.policy.borrow().clone();
    match judge(&now) {
        Judgement::Allowed => {}
        Judgement::Denied { rule, why } => {
            rec.decision = "denied";
            rec.rule = Some(rule.clone());
            return Gated::Refused {
                message: denial(&rule, &why),
            };
        }
        // Approved under the rule that still applies: it runs.
        Judgement::Approval { rule, .. }
            if approved_rule.as_deref() == Some(rule.name.as_str()) => {}
        Judgement::Approval { rule, .. } => {
            rec.decision = "denied";
            rec.rule = Some(rule.name.clone());
            return Gated::Refused {
                message: format!(
                    "agentgate: not run: the policy changed (rule \"{}\" now applies); run it again",
                    rule.name
                ),
            };
        }
    }
    // Durable intent: on record before the target sees it; if the record cannot take it, it
    // does not run. A read's outcome is recorded after it, as long as the record can take it.
    let on_record = if action.privileged {
        ctx.recorder
            .record_durable(Record::Intent(rec.clone()))
            .await
    } else {
        ctx.recorder.writable().is_ok()
    };
    if !on_record {
        rec.decision = "denied";
        return Gated::Refused {
            message: "agentgate: not run: the gateway cannot put it on record".into(),
        };
    }
    if ctx.ended.is_cancelled() {
        return Gated::Refused {
            message: "agentgate: not run: the session is ending".into(),
        };
    }
    Gated::Forward { approval, busy }
}

/// A forward in progress on the session's gate (`proxy::Gate`), ended when dropped: once the
/// target has the action, or it was refused.
pub struct Busy(Arc<crate::proxy::Gate>);

impl Busy {
    fn begin(gate: &Arc<crate::proxy::Gate>) -> Self {
        gate.begin();
        Busy(gate.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Puts the action to approvers. `Ok(id)`: approved; `Err`: what the agent is told.
async fn held(
    ctx: &GateCtx<'_>,
    action: &Described,
    rule: &str,
    spec: &ApprovalSpec,
    agent: &impl Notice,
) -> Result<String, String> {
    let noun = action.noun;
    let new = NewRequest {
        session: ctx.session.clone(),
        issuer: ctx.issuer.clone(),
        subject: ctx.subject.clone(),
        workload: ctx.workload.clone(),
        target: ctx.target.clone(),
        action: Action {
            protocol: action.protocol.into(),
            namespace: action.namespace.clone(),
            text: action.text.clone(),
            params: Vec::new(),
            class: action.class.clone(),
        },
        rule: rule.to_string(),
        spec: spec.clone(),
        retry_key: match spec.mode {
            Mode::DenyAndRetry => retry_key(ctx, action),
            Mode::Hold => String::new(),
        },
        trial_rows: None,
    };
    let mut held = match ctx.approvals.submit(new) {
        Ok(Gate::Held(h)) => h,
        Ok(Gate::Pass(r)) => return Ok(r.id),
        Ok(Gate::Refused(r)) => {
            return Err(format!(
                "agentgate: approval required: request {} (rule \"{}\") waits for {}; once it is approved, run the identical {noun} again within {} s",
                r.id,
                r.rule,
                r.waits_for(),
                r.retry_window_ms / 1000
            ))
        }
        Err(e @ ApprovalError::TooManyPending(_)) => {
            return Err(format!(
                "agentgate: this {noun} needs approval (rule \"{rule}\"), but {e}"
            ))
        }
        Err(e) => {
            tracing::error!(rule, "approval request not stored: {e}");
            return Err(format!(
                "agentgate: this {noun} needs approval (rule \"{rule}\") but the request could not be stored"
            ));
        }
    };
    let r = held.request();
    let notice = format!(
        "agentgate: approval required: request {} (rule \"{}\") waits for {}; held for up to {} s\r\n",
        r.id,
        r.rule,
        r.waits_for(),
        (r.expires_ms - r.created_ms) / 1000
    );
    agent.notice(notice).await;
    let decided = tokio::select! {
        r = held.decided() => r,
        () = ctx.ended.cancelled() => {
            held.cancel(&format!("the agent's session ended while its {noun} was held"));
            return Err(format!("agentgate: the session ended while the {noun} was held"));
        }
    };
    match decided.state {
        State::Approved => Ok(decided.id),
        State::Denied => {
            let by = decided
                .votes
                .iter()
                .rev()
                .find(|v| v.verdict == crate::approval::Verdict::Deny)
                .map(|v| v.approver.clone())
                .unwrap_or_else(|| "an approver".into());
            Err(format!(
                "agentgate: request {} denied by {by}: {}",
                decided.id,
                decided.reason.as_deref().unwrap_or("no reason given")
            ))
        }
        other => Err(format!(
            "agentgate: request {} {}: {}",
            decided.id,
            other.as_str(),
            decided.reason.as_deref().unwrap_or("no decision in time")
        )),
    }
}

/// "The identical action from the same identity": principal, workload, target, namespace, the
/// action's class and its exact text.
fn retry_key(ctx: &GateCtx<'_>, action: &Described) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [
        ctx.issuer.as_str(),
        ctx.subject.as_str(),
        ctx.workload.as_str(),
        ctx.target.as_str(),
        action.namespace.as_str(),
        action.class.as_str(),
        action.text.as_str(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
