//! One session channel: what the agent asks of it (a pty and environment first, then one exec,
//! shell or subsystem), judged by the gate; if it may run, a channel to the target asked the
//! same, and bytes relayed both ways until either side closes. The command's record carries
//! its exit status, duration and the first bytes of its output.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use bytes::Bytes;
use russh::{client, server, Channel, ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Pty};

use super::{
    cast::{Cast, Tty},
    gate::{self, Gated},
    sftp,
    upstream::TargetSide,
    Ctx,
};
use crate::record::{CommandOutput, Record};

/// What the agent asked a session channel to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Exec(String),
    Shell,
    Subsystem(String),
    /// One write-type request inside an sftp channel, judged by its paths (`sftp.rs`).
    Sftp(sftp::Op),
}

impl Request {
    /// The record's `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Exec(_) => "exec",
            Request::Shell => "shell",
            Request::Subsystem(_) => "subsystem",
            Request::Sftp(_) => "sftp",
        }
    }

    /// What approvers and the record see.
    pub fn text(&self) -> String {
        match self {
            Request::Exec(c) => c.clone(),
            Request::Shell => "(interactive shell)".into(),
            Request::Subsystem(s) => format!("(subsystem {s})"),
            Request::Sftp(op) => op.text.clone(),
        }
    }
}

struct PtyRequest {
    term: String,
    cols: u32,
    rows: u32,
    pix_width: u32,
    pix_height: u32,
    modes: Vec<(Pty, u32)>,
}

/// Requests a channel may carry before its exec/shell/subsystem; more is a misbehaving client.
const MAX_SETUP_REQUESTS: usize = 256;
/// Exit status of a command the gateway refused, as shells report "cannot execute".
pub const REFUSED_EXIT: u32 = 126;

/// Serves one session channel to its end.
pub async fn serve(
    ctx: &Ctx<'_>,
    mut agent: Channel<server::Msg>,
    target: &client::Handle<TargetSide>,
) {
    let mut pty = None;
    let mut env = Vec::new();
    let mut request = None;
    for _ in 0..MAX_SETUP_REQUESTS {
        match agent.wait().await {
            Some(ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                terminal_modes,
                ..
            }) => {
                pty = Some(PtyRequest {
                    term,
                    cols: col_width,
                    rows: row_height,
                    pix_width,
                    pix_height,
                    modes: terminal_modes,
                })
            }
            Some(ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            }) if passes_env(&variable_name) => env.push((variable_name, variable_value)),
            // Anything else could change what the judged command does (LD_PRELOAD, BASH_ENV,
            // PATH): dropped, as sshd's own default AcceptEnv would.
            Some(ChannelMsg::SetEnv { .. }) => {}
            Some(ChannelMsg::Exec { command, .. }) => {
                request = Some(match String::from_utf8(command) {
                    Ok(c) => Request::Exec(c),
                    // Not text: no rule could be shown not to match it.
                    Err(e) => Request::Exec(String::from_utf8_lossy(e.as_bytes()).into_owned()),
                });
                break;
            }
            Some(ChannelMsg::RequestShell { .. }) => {
                request = Some(Request::Shell);
                break;
            }
            Some(ChannelMsg::RequestSubsystem { name, .. }) => {
                request = Some(Request::Subsystem(name));
                break;
            }
            Some(ChannelMsg::Eof | ChannelMsg::Close) | None => return,
            // Refused by the handler (agent forwarding, X11) or meaningless before a command.
            Some(_) => {}
        }
    }
    let Some(request) = request else {
        let _ = agent.close().await;
        return;
    };
    let started = Instant::now();
    let started_ms = crate::record::now_ms();
    let mut rec = ctx.statement(&request, started_ms);
    let gated = gate::pass(ctx, &request, &mut rec, &agent).await;
    let label = match gated {
        Gated::Refused { message } => {
            ctx.denied.fetch_add(1, Ordering::Relaxed);
            refuse(&agent, &message).await;
            rec.error = Some(message);
            rec.exit_status = Some(REFUSED_EXIT);
            rec.duration_us = Some(started.elapsed().as_micros() as u64);
            ctx.recorder.record(Record::Statement(rec)).await;
            return;
        }
        Gated::Forward { approval, busy } => (approval, busy),
    };
    let (label, busy) = label;
    let tty = pty.as_ref().map(|p| Tty {
        term: p.term.clone(),
        cols: p.cols,
        rows: p.rows,
    });
    let upstream = open_upstream(target, &request, pty, env).await;
    // The target has the request (or refused it): the forward is no longer in progress.
    drop(busy);
    let upstream = match upstream {
        Ok(c) => c,
        Err(e) => {
            let message = format!("agentgate: the target refused the channel: {e}");
            refuse(&agent, &message).await;
            rec.error = Some(message);
            rec.duration_us = Some(started.elapsed().as_micros() as u64);
            ctx.recorder.record(Record::Statement(rec)).await;
            return;
        }
    };
    if let Some(id) = &label {
        ctx.approvals.forwarded(id, &ctx.session);
    }
    let mask = super::mask::OutputMask::for_channel(ctx, &request);
    let cast = Cast::start(ctx, &request, rec.seq, tty);
    let (exit, output) = relay(ctx, &request, agent, upstream, mask, cast.as_ref()).await;
    if let Some(cast) = cast {
        cast.finish().await;
    }
    if exit.is_none() && ctx.ended.is_cancelled() {
        rec.error = Some("agentgate: ended with the session while it ran".into());
    }
    rec.exit_status = exit;
    rec.output = Some(output);
    rec.duration_us = Some(started.elapsed().as_micros() as u64);
    ctx.recorder.record(Record::Statement(rec)).await;
}

/// Environment variables passed on to the target: the locale only (Debian's sshd default
/// `AcceptEnv LANG LC_*`).
fn passes_env(name: &str) -> bool {
    name == "LANG"
        || (name.starts_with("LC_")
            && name[3..]
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'_'))
}

/// Tells the agent why its request does not run: a line on stderr and exit status 126, as a
/// shell says "cannot execute".
async fn refuse(agent: &Channel<server::Msg>, message: &str) {
    let line = format!("{message}\r\n");
    let _ = agent
        .extended_data_bytes(1, Bytes::from(line.into_bytes()))
        .await;
    let _ = agent.exit_status(REFUSED_EXIT).await;
    let _ = agent.eof().await;
    let _ = agent.close().await;
}

async fn open_upstream(
    target: &client::Handle<TargetSide>,
    request: &Request,
    pty: Option<PtyRequest>,
    env: Vec<(String, String)>,
) -> Result<Channel<client::Msg>, russh::Error> {
    let ch = target.channel_open_session().await?;
    if let Some(p) = pty {
        ch.request_pty(
            false,
            &p.term,
            p.cols,
            p.rows,
            p.pix_width,
            p.pix_height,
            &p.modes,
        )
        .await?;
    }
    for (name, value) in env {
        ch.set_env(false, name, value).await?;
    }
    match request {
        Request::Exec(c) => ch.exec(true, c.as_bytes().to_vec()).await?,
        Request::Shell => ch.request_shell(true).await?,
        Request::Subsystem(s) => ch.request_subsystem(true, s.as_str()).await?,
        // Not a channel request: judged inside an sftp channel.
        Request::Sftp(_) => return Err(russh::Error::Inconsistent),
    }
    Ok(ch)
}

/// How much of a command's output the record keeps at most, whatever the policy says.
const MAX_KEPT: usize = 64 * 1024;
/// After the target closed, how long the agent gets to close its end.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Relays until the target's channel closes (or the agent's, which closes the target's).
async fn relay(
    ctx: &Ctx<'_>,
    request: &Request,
    agent: Channel<server::Msg>,
    upstream: Channel<client::Msg>,
    mask: Option<super::mask::OutputMask>,
    cast: Option<&Cast<'_>>,
) -> (Option<u32>, CommandOutput) {
    // The sftp server's stream is read request by request (`sftp.rs`).
    let sftp = sftp::wanted(request).then(sftp::Relay::default);
    let sftp = sftp.as_ref();
    let (agent_rx, agent_tx) = agent.split();
    let (up_rx, up_tx) = upstream.split();
    let keep = ctx.record_bytes.min(MAX_KEPT);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let up = async {
        tokio::select! {
            () = agent_to_target(ctx, agent_rx, &up_tx, &agent_tx, sftp, cast) => {}
            _ = async {
                let _ = done_rx.await;
                tokio::time::sleep(CLOSE_GRACE).await;
            } => {}
        }
    };
    let down = async {
        let r = target_to_agent(ctx, up_rx, &agent_tx, keep, mask, sftp, cast).await;
        let _ = done_tx.send(());
        r
    };
    let ((), result) = tokio::join!(up, down);
    if let Some(s) = sftp {
        s.finish(ctx).await;
    }
    result
}

/// The next message of a channel, or `None` once the session ended (revoked, expired,
/// withdrawn by a reload, or the agent left): a running command is cut off then, both channels
/// are closed and its record is written with what was seen, rather than the relay waiting for
/// a target that may never close (a `sleep 30`) until the session drops it unrecorded.
pub(super) async fn next(ctx: &Ctx<'_>, from: &mut ChannelReadHalf) -> Option<ChannelMsg> {
    tokio::select! {
        biased;
        () = ctx.ended.cancelled() => None,
        msg = from.wait() => msg,
    }
}

async fn agent_to_target(
    ctx: &Ctx<'_>,
    mut from: ChannelReadHalf,
    to: &ChannelWriteHalf<client::Msg>,
    agent: &ChannelWriteHalf<server::Msg>,
    sftp: Option<&sftp::Relay>,
    cast: Option<&Cast<'_>>,
) {
    loop {
        let msg = match sftp {
            // The sftp relay's own packets for the target (the rest of a masked read's window)
            // go from here too, between the agent's.
            Some(s) => tokio::select! {
                msg = next(ctx, &mut from) => msg,
                Some(packet) = s.for_target() => {
                    if to.data_bytes(packet).await.is_err() {
                        break;
                    }
                    continue;
                }
            },
            None => next(ctx, &mut from).await,
        };
        let Some(msg) = msg else { break };
        let sent = match msg {
            ChannelMsg::Data { data } => {
                ctx.bytes_up.fetch_add(data.len() as u64, Ordering::Relaxed);
                if let Some(c) = cast {
                    c.input(&data).await;
                }
                match sftp {
                    Some(s) => s.agent_data(ctx, &data, to, agent).await,
                    None => to.data_bytes(data).await,
                }
            }
            ChannelMsg::ExtendedData { data, ext } => {
                ctx.bytes_up.fetch_add(data.len() as u64, Ordering::Relaxed);
                to.extended_data_bytes(ext, data).await
            }
            ChannelMsg::Eof => to.eof().await,
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                pix_width,
                pix_height,
            } => {
                if let Some(c) = cast {
                    c.resize(col_width, row_height).await;
                }
                to.window_change(col_width, row_height, pix_width, pix_height)
                    .await
            }
            ChannelMsg::Signal { signal } => to.signal(signal).await,
            ChannelMsg::Close => break,
            // A second exec/shell on the same channel is not SSH; pty/env after the command
            // change nothing the gate judged, but are not passed on either.
            _ => Ok(()),
        };
        if sent.is_err() {
            break;
        }
    }
    let _ = to.close().await;
}

async fn target_to_agent(
    ctx: &Ctx<'_>,
    mut from: ChannelReadHalf,
    to: &ChannelWriteHalf<server::Msg>,
    keep: usize,
    mut mask: Option<super::mask::OutputMask>,
    sftp: Option<&sftp::Relay>,
    cast: Option<&Cast<'_>>,
) -> (Option<u32>, CommandOutput) {
    let mut exit = None;
    let mut out = CommandOutput::default();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut eof_held = false;
    // Output masked (the agent and the record see the same) unless the channel is sftp.
    while let Some(msg) = super::mask::next(ctx, &mut from, &mut mask).await {
        let sent = match msg {
            ChannelMsg::Data { data } => {
                ctx.bytes_down
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                // An sftp stream is binary packets recorded operation by operation (`sftp.rs`);
                // its raw bytes (file contents among them) are not kept as output.
                if sftp.is_none() {
                    keep_some(&mut stdout, &data, keep, &mut out);
                } else {
                    out.bytes += data.len() as u64;
                }
                if let Some(c) = cast {
                    c.output(&data).await;
                }
                match sftp {
                    Some(s) => s.target_data(ctx, &data, to).await,
                    None => to.data_bytes(data).await,
                }
            }
            ChannelMsg::ExtendedData { data, ext } => {
                ctx.bytes_down
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                if ext == 1 {
                    keep_some(&mut stderr, &data, keep, &mut out);
                    if let Some(c) = cast {
                        c.output(&data).await;
                    }
                }
                to.extended_data_bytes(ext, data).await
            }
            ChannelMsg::ExitStatus { exit_status } => {
                exit = Some(exit_status);
                let sent = to.exit_status(exit_status).await;
                if eof_held {
                    eof_held = false;
                    let _ = to.eof().await;
                }
                sent
            }
            // sshd may send EOF before the exit status. Passed on at once, the agent's client
            // (a ControlMaster at least) answers EOF with CLOSE, russh then forgets the channel
            // and the exit status that follows is dropped: the agent sees status 255. So EOF
            // waits for the exit status, or for the target's close.
            ChannelMsg::Eof => {
                eof_held = true;
                Ok(())
            }
            ChannelMsg::Close => break,
            _ => Ok(()),
        };
        if sent.is_err() {
            break;
        }
    }
    if eof_held {
        let _ = to.eof().await;
    }
    let _ = to.close().await;
    out.stdout = String::from_utf8_lossy(&stdout).into_owned();
    out.stderr = String::from_utf8_lossy(&stderr).into_owned();
    (exit, out)
}

/// Keeps the first `keep` bytes of a stream for the record.
fn keep_some(kept: &mut Vec<u8>, data: &[u8], keep: usize, out: &mut CommandOutput) {
    out.bytes += data.len() as u64;
    let room = keep.saturating_sub(kept.len());
    if data.len() > room {
        out.cut = true;
    }
    kept.extend_from_slice(&data[..data.len().min(room)]);
}
