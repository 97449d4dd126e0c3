//! The gate every SSH request passes (an exec, a shell, a subsystem, an sftp operation): the
//! one gate of every protocol (`protocol::action_gate`: deny rules → approval by people →
//! the policy in force judged again → durable intent → forward), with SSH's rules as the judge
//! and the channel's stderr as the place the agent reads notices.

use russh::{server, Channel, ChannelWriteHalf};

use super::{channel::Request, rules, Ctx};
pub use crate::protocol::action_gate::{Gated, Notice};
use crate::{
    protocol::action_gate::{self, Described, GateCtx},
    record::Statement,
};

impl Notice for Channel<server::Msg> {
    async fn notice(&self, text: String) {
        let _ = self
            .extended_data_bytes(1, bytes::Bytes::from(text.into_bytes()))
            .await;
    }
}

impl Notice for ChannelWriteHalf<server::Msg> {
    async fn notice(&self, text: String) {
        let _ = self
            .extended_data_bytes(1, bytes::Bytes::from(text.into_bytes()))
            .await;
    }
}

/// Judges `request`; fills in the record's decision and rule.
pub async fn pass(
    ctx: &Ctx<'_>,
    request: &Request,
    rec: &mut Statement,
    agent: &impl Notice,
) -> Gated {
    let gate = GateCtx {
        recorder: ctx.recorder,
        approvals: ctx.approvals,
        policy: ctx.policy.clone(),
        gate: ctx.gate.clone(),
        ended: ctx.ended.clone(),
        session: ctx.session.clone(),
        issuer: ctx.issuer.clone(),
        subject: ctx.subject.clone(),
        workload: ctx.workload.clone(),
        target: ctx.target.clone(),
    };
    let described = Described {
        protocol: "ssh",
        noun: "command",
        namespace: ctx.login.clone(),
        text: request.text(),
        class: request.kind().into(),
        // What a command does cannot be known from its text: every one is on record first.
        privileged: true,
    };
    let who = ctx.who();
    action_gate::pass(
        &gate,
        |p| rules::judge(p, &who, &ctx.target, request),
        &described,
        rec,
        agent,
    )
    .await
}
