//! The gate every SSH request passes (an exec, a shell, a subsystem), in the order every
//! protocol's actions pass it: deny rules → approval by people (hold or deny-and-retry) →
//! durable intent (on record before anything reaches the target) → forward.

use russh::{server, Channel};

use super::{
    channel::Request,
    rules::{self, Judgement},
    Ctx,
};
use crate::{
    approval::{Action, ApprovalError, Gate, Mode, NewRequest, State},
    record::{Record, Statement},
};

pub enum Gated {
    /// Not forwarded; `message` is what the agent reads on stderr.
    Refused { message: String },
    /// Forward it; under an approval, the request's id. `busy` lasts until it is forwarded.
    Forward {
        approval: Option<String>,
        busy: Busy,
    },
}

fn denial(rule: &str, why: &str) -> String {
    format!("agentgate: refused by rule \"{rule}\": {why}")
}

/// Judges `request`; fills in the record's decision and rule.
pub async fn pass(
    ctx: &Ctx<'_>,
    request: &Request,
    rec: &mut Statement,
    agent: &mut Channel<server::Msg>,
) -> Gated {
    let policy = ctx.policy.borrow().clone();
    let who = ctx.who();
    let mut approval = None;
    let mut approved_rule = None;
    match rules::judge(&policy, &who, &ctx.target, request) {
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
            match held(ctx, request, &rule.name, spec, agent).await {
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
    // From here to the target's channel, a forward in progress: a reload waits for it before it
    // says its policy is in force, and this judges again under the policy in force now (it may
    // have changed while people decided, or just now).
    let busy = Busy::begin(&ctx.gate);
    if let Err(why) = ctx.gate.check() {
        rec.decision = "denied";
        return Gated::Refused {
            message: format!("agentgate: not run: {why}"),
        };
    }
    let now = ctx.policy.borrow().clone();
    match rules::judge(&now, &ctx.who(), &ctx.target, request) {
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
    // does not run.
    if !ctx
        .recorder
        .record_durable(Record::Intent(rec.clone()))
        .await
    {
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
/// target has the request, or it was refused.
pub struct Busy(std::sync::Arc<crate::proxy::Gate>);

impl Busy {
    fn begin(gate: &std::sync::Arc<crate::proxy::Gate>) -> Self {
        gate.begin();
        Busy(gate.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Puts the request to approvers. `Ok(id)`: approved; `Err`: what the agent is told.
async fn held(
    ctx: &Ctx<'_>,
    request: &Request,
    rule: &str,
    spec: &crate::approval::ApprovalSpec,
    agent: &mut Channel<server::Msg>,
) -> Result<String, String> {
    let text = request.text();
    let new = NewRequest {
        session: ctx.session.clone(),
        issuer: ctx.issuer.clone(),
        subject: ctx.subject.clone(),
        workload: ctx.workload.clone(),
        target: ctx.target.clone(),
        action: Action {
            protocol: "ssh".into(),
            namespace: ctx.login.clone(),
            text: text.clone(),
            params: Vec::new(),
            class: request.kind().into(),
        },
        rule: rule.to_string(),
        spec: spec.clone(),
        retry_key: match spec.mode {
            Mode::DenyAndRetry => retry_key(ctx, request),
            Mode::Hold => String::new(),
        },
        trial_rows: None,
    };
    let mut held = match ctx.approvals.submit(new) {
        Ok(Gate::Held(h)) => h,
        Ok(Gate::Pass(r)) => return Ok(r.id),
        Ok(Gate::Refused(r)) => {
            return Err(format!(
                "agentgate: approval required: request {} (rule \"{}\") waits for {}; once it is approved, run the identical command again within {} s",
                r.id,
                r.rule,
                r.waits_for(),
                r.retry_window_ms / 1000
            ))
        }
        Err(e @ ApprovalError::TooManyPending(_)) => {
            return Err(format!(
                "agentgate: this command needs approval (rule \"{rule}\"), but {e}"
            ))
        }
        Err(e) => {
            tracing::error!(rule, "approval request not stored: {e}");
            return Err(format!(
                "agentgate: this command needs approval (rule \"{rule}\") but the request could not be stored"
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
    let _ = agent
        .extended_data_bytes(1, bytes::Bytes::from(notice.into_bytes()))
        .await;
    let decided = tokio::select! {
        r = held.decided() => r,
        () = ctx.ended.cancelled() => {
            held.cancel("the agent's session ended while its command was held");
            return Err("agentgate: the session ended while the command was held".into());
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

/// "The identical command from the same identity": principal, workload, target, login and the
/// exact command text.
fn retry_key(ctx: &Ctx<'_>, request: &Request) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let text = request.text();
    for part in [
        ctx.issuer.as_str(),
        ctx.subject.as_str(),
        ctx.workload.as_str(),
        ctx.target.as_str(),
        ctx.login.as_str(),
        request.kind(),
        text.as_str(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
