//! Local port forwarding (`ssh -L`, `ssh -W`: direct-tcpip channels), to named destinations
//! only. A destination passes when a command rule in scope lists it in `forward:` (exactly
//! `host:port`; no globs, no "any"): the agent then reaches that one service from the target's
//! side, and nothing else. The gateway opens the same channel on its own connection to the
//! target (whose user certificate then permits port forwarding) and relays bytes; each forward
//! is on record (durable intent first) with its byte counts. Remote forwarding (`ssh -R`),
//! agent forwarding and X11 stay refused.

use std::{sync::atomic::Ordering, time::Instant};

use russh::{client, server, Channel};
use tokio::io::AsyncWriteExt;

use super::{
    rules::{command_rules, CommandRule},
    upstream::TargetSide,
    Ctx,
};
use crate::{
    policy::{Policy, Who},
    record::{now_ms, CommandOutput, Record, Statement},
};

/// `host:port` as rules list it: the host lower-case, the port a number.
pub fn destination(text: &str) -> Option<String> {
    let (host, port) = text.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().ok()?;
    let ok = !host.is_empty()
        && port != 0
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'));
    ok.then(|| format!("{}:{port}", host.to_ascii_lowercase()))
}

/// The first rule in scope whose `list` names `host:port`.
fn listed_by(
    policy: &Policy,
    who: &Who<'_>,
    target: &str,
    (host, port): (&str, u32),
    list: fn(&CommandRule) -> &[String],
) -> Option<String> {
    let port = u16::try_from(port).ok()?;
    let wanted = destination(&format!("{host}:{port}"))?;
    command_rules(policy, who, target)
        .into_iter()
        .find(|(_, c)| list(c).contains(&wanted))
        .map(|(r, _)| r.name.clone())
}

/// The rule that lets `who` forward to `host:port` on `target`, if any.
pub fn allowed_by(
    policy: &Policy,
    who: &Who<'_>,
    target: &str,
    host: &str,
    port: u32,
) -> Option<String> {
    listed_by(policy, who, target, (host, port), |c| &c.forward)
}

/// Whether any rule in scope lets `who` forward at all: the upstream certificate then permits
/// port forwarding (the target would refuse the channel otherwise).
pub fn any_allowed(policy: &Policy, who: &Who<'_>, target: &str) -> bool {
    command_rules(policy, who, target)
        .iter()
        .any(|(_, c)| !c.forward.is_empty() || !c.remote_forward.is_empty())
}

/// A forward's record (kind and class `forward`), before it runs.
fn record(ctx: &Ctx<'_>, text: String) -> Statement {
    let mut rec = ctx.statement(&super::channel::Request::Exec(String::new()), now_ms());
    rec.kind = "forward";
    rec.class = "forward".into();
    rec.text = text;
    rec
}

/// `ssh -R address:port`: if a rule names the address, the target is asked to listen there
/// (on record first); the port it listens on, or `None` (refused, on record).
pub async fn remote(
    ctx: &Ctx<'_>,
    target: &client::Handle<TargetSide>,
    address: &str,
    port: u32,
) -> Option<u32> {
    let policy = ctx.policy.borrow().clone();
    let listed = listed_by(&policy, &ctx.who(), &ctx.target, (address, port), |c| {
        &c.remote_forward
    });
    let Some(rule) = listed else {
        super::record_refused(ctx, format!("remote port forwarding from {address}:{port}")).await;
        return None;
    };
    let mut rec = record(ctx, format!("tcpip-forward {address}:{port}"));
    rec.rule = Some(rule);
    if !ctx
        .recorder
        .record_durable(Record::Intent(rec.clone()))
        .await
    {
        return None;
    }
    let bound = target.tcpip_forward(address.to_string(), port).await;
    match &bound {
        Ok(p) => rec.rows = Some(u64::from(*p)),
        Err(e) => rec.error = Some(format!("the target refused to listen: {e}")),
    }
    ctx.recorder.record(Record::Statement(rec)).await;
    bound.ok()
}

/// Serves one allowed direct-tcpip channel to its end: on record first, then the target's
/// channel to the same destination, then bytes both ways.
pub async fn serve(
    ctx: &Ctx<'_>,
    agent: Channel<server::Msg>,
    reply: server::ChannelOpenHandle,
    target: &client::Handle<TargetSide>,
    (host, port, rule): (String, u32, String),
) {
    let started = Instant::now();
    let mut rec = record(ctx, format!("direct-tcpip {host}:{port}"));
    rec.rule = Some(rule);
    if !ctx
        .recorder
        .record_durable(Record::Intent(rec.clone()))
        .await
    {
        reply
            .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        return;
    }
    let upstream = match target
        .channel_open_direct_tcpip(host.clone(), port, "127.0.0.1", 0)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
            rec.error = Some(format!("the target refused the forward: {e}"));
            ctx.recorder.record(Record::Statement(rec)).await;
            return;
        }
    };
    reply.accept().await;
    let (up, down) = relay(ctx, agent, upstream).await;
    rec.duration_us = Some(started.elapsed().as_micros() as u64);
    rec.output = Some(CommandOutput {
        bytes: down,
        ..Default::default()
    });
    rec.rows = Some(up);
    ctx.recorder.record(Record::Statement(rec)).await;
}

/// A connection to a listener the agent asked the target for (`ssh -R`), relayed to a
/// forwarded-tcpip channel the gateway opened to the agent; on record with its bytes.
pub async fn serve_remote(
    ctx: &Ctx<'_>,
    from_target: Channel<client::Msg>,
    to_agent: Result<Channel<server::Msg>, russh::Error>,
    what: String,
) {
    let started = Instant::now();
    let mut rec = record(ctx, what);
    let agent = match to_agent {
        Ok(c) => c,
        Err(e) => {
            rec.error = Some(format!("the agent refused the channel: {e}"));
            let _ = from_target.close().await;
            ctx.recorder.record(Record::Statement(rec)).await;
            return;
        }
    };
    let (down, up) = relay(ctx, agent, from_target).await;
    rec.duration_us = Some(started.elapsed().as_micros() as u64);
    rec.output = Some(CommandOutput {
        bytes: down,
        ..Default::default()
    });
    rec.rows = Some(up);
    ctx.recorder.record(Record::Statement(rec)).await;
}

/// Bytes both ways until either side ends (or the session does); (up, down) byte counts.
async fn relay(
    ctx: &Ctx<'_>,
    agent: Channel<server::Msg>,
    upstream: Channel<client::Msg>,
) -> (u64, u64) {
    let mut a = agent.into_stream();
    let mut u = upstream.into_stream();
    let (up, down) = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut a, &mut u) => r.unwrap_or((0, 0)),
        () = ctx.ended.cancelled() => (0, 0),
    };
    ctx.bytes_up.fetch_add(up, Ordering::Relaxed);
    ctx.bytes_down.fetch_add(down, Ordering::Relaxed);
    let _ = a.shutdown().await;
    let _ = u.shutdown().await;
    (up, down)
}
