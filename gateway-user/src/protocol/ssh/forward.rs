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

use super::{rules::CommandRule, upstream::TargetSide, Ctx};
use crate::{
    policy::{Policy, Protocol, Who},
    record::{CommandOutput, Record},
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

/// The rule that lets `who` forward to `host:port` on `target`, if any.
pub fn allowed_by(
    policy: &Policy,
    who: &Who<'_>,
    target: &str,
    host: &str,
    port: u32,
) -> Option<String> {
    let port = u16::try_from(port).ok()?;
    let wanted = destination(&format!("{host}:{port}"))?;
    policy
        .action_rules(who, target, Protocol::Ssh)
        .into_iter()
        .find(|r| {
            r.action
                .as_ref()
                .and_then(|a| a.matcher::<CommandRule>())
                .is_some_and(|c| c.forward.contains(&wanted))
        })
        .map(|r| r.name.clone())
}

/// The rule that lets `who` have the target listen on `address:port` (`ssh -R`), if any.
pub fn remote_allowed_by(
    policy: &Policy,
    who: &Who<'_>,
    target: &str,
    address: &str,
    port: u32,
) -> Option<String> {
    let port = u16::try_from(port).ok()?;
    let wanted = destination(&format!("{address}:{port}"))?;
    policy
        .action_rules(who, target, Protocol::Ssh)
        .into_iter()
        .find(|r| {
            r.action
                .as_ref()
                .and_then(|a| a.matcher::<CommandRule>())
                .is_some_and(|c| c.remote_forward.contains(&wanted))
        })
        .map(|r| r.name.clone())
}

/// Whether any rule in scope lets `who` forward at all: the upstream certificate then permits
/// port forwarding (the target would refuse the channel otherwise).
pub fn any_allowed(policy: &Policy, who: &Who<'_>, target: &str) -> bool {
    policy
        .action_rules(who, target, Protocol::Ssh)
        .into_iter()
        .any(|r| {
            r.action
                .as_ref()
                .and_then(|a| a.matcher::<CommandRule>())
                .is_some_and(|c| !c.forward.is_empty() || !c.remote_forward.is_empty())
        })
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
    let request = super::channel::Request::Exec(String::new());
    let mut rec = ctx.statement(&request, crate::record::now_ms());
    rec.kind = "forward";
    rec.class = "forward".into();
    rec.text = format!("direct-tcpip {host}:{port}");
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
    let request = super::channel::Request::Exec(String::new());
    let mut rec = ctx.statement(&request, crate::record::now_ms());
    rec.kind = "forward";
    rec.class = "forward".into();
    rec.text = what;
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
