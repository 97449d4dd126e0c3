//! The sftp subsystem, request by request: the agent's byte stream is cut into SFTP v3 packets
//! ([`wire`]); each write-type request (an open for writing, remove, rename, setstat, mkdir,
//! rmdir, symlink, and OpenSSH's posix-rename, hardlink and lsetstat) is judged by its paths
//! ([`paths`], a rule's `commands: {sftp: …}` section) through the same gate as every SSH
//! request (deny → approval → durable intent → forward) and is on record with its outcome;
//! reads pass (under a mask rule, a file READ is answered from a window the gateway reads
//! around it, masked keeping its length: [`masked`]). A refused request is not forwarded: the agent is answered `SSH_FX_PERMISSION_DENIED`
//! for that request id, with the reason. Every file handle is summed up at its close (path,
//! bytes read and written) as an `sftp_transfer` record.
//!
//! The target's replies are cut into packets too, so that the gateway's own answers go in
//! between whole packets, and so that handles (for `fsetstat` and the transfer sums) and read
//! sizes are learnt. A packet over 256 KiB either way, or one that cannot be read, ends the
//! channel (fail closed): sftp-server and the sftp client end the session over it themselves.

mod masked;
mod paths;
mod request;
mod wire;

use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc, Mutex},
    time::Instant,
};

use bytes::Bytes;
use russh::{client, server, ChannelWriteHalf};
use serde_json::json;
use tokio::sync::mpsc;

pub use paths::{SftpPath, SftpRule};
pub use request::Op;

use self::{
    masked::{Step, Window},
    request::{Asked, Track},
    wire::{Framer, Reader, WireError},
};
use super::{
    aliases,
    channel::Request,
    gate::{self, Gated},
    Ctx,
};
use crate::{
    mask::plan::Plan,
    record::{now_ms, Record, Statement},
};

/// Requests awaiting their reply, and handles open, at most: OpenSSH's client keeps 64
/// requests in flight and sftp-server 512 handles open; more is a misbehaving agent.
const MAX_PENDING: usize = 4096;
const MAX_HANDLES: usize = 4096;

/// Whether `request` runs the sftp server, whose stream is read here.
pub fn wanted(request: &Request) -> bool {
    match request {
        Request::Subsystem(name) => name == "sftp",
        Request::Exec(cmd) => aliases::runs_sftp_server(cmd),
        _ => false,
    }
}

#[derive(Debug, thiserror::Error)]
enum SftpError {
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("the target speaks sftp version {0}; the gateway reads version 3 only")]
    Version(u32),
    #[error("more than {0} sftp requests or handles open at once")]
    TooMany(usize),
    #[error("sftp request id {0} reused while the gateway was reading a masked window for it")]
    Reused(u32),
    #[error("{0}")]
    Ssh(#[from] russh::Error),
}

impl From<SftpError> for russh::Error {
    fn from(e: SftpError) -> russh::Error {
        match e {
            SftpError::Ssh(e) => e,
            other => russh::Error::IO(std::io::Error::other(other.to_string())),
        }
    }
}

/// One sftp channel's relay state, shared by its two directions.
pub struct Relay {
    up: Mutex<Framer>,
    down: Mutex<Framer>,
    state: Mutex<State>,
    /// Held while one whole packet is written to the agent, so that the gateway's own answers
    /// never land inside a packet of the target's.
    to_agent: tokio::sync::Mutex<()>,
    /// The gateway's own READs for the target (the rest of a masked window), learnt from the
    /// target's replies: sent by the task that writes the agent's packets to the target
    /// ([`Relay::for_target`]), so that they go between whole packets without a lock that
    /// would tie the two directions' flow control together.
    more_tx: mpsc::UnboundedSender<Bytes>,
    more_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Bytes>>,
    /// The mask plan with detectors that applies, for the policy version it was found for.
    masked: Mutex<Option<(String, Option<Arc<Plan>>)>>,
}

impl Default for Relay {
    fn default() -> Relay {
        let (more_tx, more_rx) = mpsc::unbounded_channel();
        Relay {
            up: Mutex::default(),
            down: Mutex::default(),
            state: Mutex::default(),
            to_agent: tokio::sync::Mutex::default(),
            more_tx,
            more_rx: tokio::sync::Mutex::new(more_rx),
            masked: Mutex::default(),
        }
    }
}

#[derive(Default)]
struct State {
    pending: HashMap<u32, Pending>,
    handles: HashMap<Bytes, Handle>,
}

enum Pending {
    /// A judged operation: its record is written with the target's answer.
    Judged {
        rec: Box<Statement>,
        started: Instant,
        track: Track,
    },
    Tracked(Track),
    /// A READ under a mask rule, answered from a window the gateway reads (`masked`).
    Window(Box<Window>),
}

struct Handle {
    path: SftpPath,
    dir: bool,
    read: bool,
    write: bool,
    bytes_read: u64,
    bytes_written: u64,
    opened_ms: i64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Relay {
    /// Data from the agent: whole packets are judged, forwarded to the target or answered.
    pub async fn agent_data(
        &self,
        ctx: &Ctx<'_>,
        data: &[u8],
        target: &ChannelWriteHalf<client::Msg>,
        agent: &ChannelWriteHalf<server::Msg>,
    ) -> Result<(), russh::Error> {
        lock(&self.up).push(data);
        loop {
            let next = lock(&self.up).next_packet();
            let packet = match next {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.fail(ctx, "from the agent", e.into()).await),
            };
            if let Err(e) = self.request(ctx, packet, target, agent).await {
                return Err(self.fail(ctx, "from the agent", e).await);
            }
        }
    }

    /// Data from the target: whole packets relayed to the agent, what they answer noted.
    pub async fn target_data(
        &self,
        ctx: &Ctx<'_>,
        data: &[u8],
        agent: &ChannelWriteHalf<server::Msg>,
    ) -> Result<(), russh::Error> {
        lock(&self.down).push(data);
        loop {
            let next = lock(&self.down).next_packet();
            let packet = match next {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.fail(ctx, "from the target", e.into()).await),
            };
            let (done, action) = match self.reply(&packet, &ctx.session) {
                Ok(d) => d,
                Err(e) => return Err(self.fail(ctx, "from the target", e).await),
            };
            for record in done {
                ctx.recorder.record(record).await;
            }
            match action {
                Action::Forward => self.send(agent, packet).await?,
                Action::Agent(answer) => self.send(agent, answer).await?,
                // At most one per READ in flight (MAX_PENDING): the queue is bounded by them.
                Action::Target(read) => {
                    let _ = self.more_tx.send(read);
                }
            }
        }
    }

    /// The channel ended: what never got an answer, and handles never closed, on record.
    pub async fn finish(&self, ctx: &Ctx<'_>) {
        let (pending, handles) = {
            let mut s = lock(&self.state);
            (
                std::mem::take(&mut s.pending),
                std::mem::take(&mut s.handles),
            )
        };
        for (_, p) in pending {
            if let Pending::Judged {
                mut rec, started, ..
            } = p
            {
                rec.error = Some("agentgate: the channel ended before the target answered".into());
                rec.duration_us = Some(started.elapsed().as_micros() as u64);
                ctx.recorder.record(Record::Statement(*rec)).await;
            }
        }
        for (_, h) in handles {
            if let Some(r) = transfer_record(&h, false, &ctx.session) {
                ctx.recorder.record(r).await;
            }
        }
    }

    async fn send(
        &self,
        agent: &ChannelWriteHalf<server::Msg>,
        packet: Bytes,
    ) -> Result<(), russh::Error> {
        let _whole = self.to_agent.lock().await;
        agent.data_bytes(packet).await
    }

    /// The next packet of the gateway's own for the target: the writer of the agent's packets
    /// sends it between them. Cancel safe.
    pub async fn for_target(&self) -> Option<Bytes> {
        self.more_rx.lock().await.recv().await
    }

    /// Every packet for the target goes from the one task that relays the agent's data, so
    /// packets are whole.
    async fn send_target(
        &self,
        target: &ChannelWriteHalf<client::Msg>,
        packet: Bytes,
    ) -> Result<(), russh::Error> {
        target.data_bytes(packet).await
    }

    /// A stream that cannot be read any further ends the channel; why is on record.
    async fn fail(&self, ctx: &Ctx<'_>, side: &str, e: SftpError) -> russh::Error {
        if !matches!(e, SftpError::Ssh(_)) {
            tracing::warn!("sftp stream {side}: {e}; channel ended");
            ctx.recorder
                .record(Record::Event {
                    kind: "sftp_refused",
                    at_ms: now_ms(),
                    session: Some(ctx.session.clone()),
                    body: json!({ "what": format!("sftp stream {side}: {e}; channel ended") }),
                })
                .await;
        }
        e.into()
    }

    async fn request(
        &self,
        ctx: &Ctx<'_>,
        packet: Bytes,
        target: &ChannelWriteHalf<client::Msg>,
        agent: &ChannelWriteHalf<server::Msg>,
    ) -> Result<(), SftpError> {
        let asked = request::read(&packet, |h| self.path_of(h))?;
        match asked {
            Asked::Init => self.send_target(target, wire::init_v3(&packet)?).await?,
            Asked::Pass { id, mut track } => {
                let plan = match track {
                    Track::Read { .. } | Track::Limits { .. } => self.mask_plan(ctx),
                    _ => None,
                };
                match (plan, &mut track) {
                    // Under a mask rule a READ is answered from a window around it, masked
                    // keeping its length (`masked`).
                    (
                        Some(plan),
                        Track::Read {
                            handle,
                            offset,
                            len,
                        },
                    ) => {
                        let mut window = Window::new(plan, handle.clone(), *offset, *len);
                        let read = window.request(id);
                        self.expect(ctx, id, Pending::Window(Box::new(window)))
                            .await?;
                        self.send_target(target, read).await?;
                    }
                    (plan, _) => {
                        if let Track::Limits { masked } = &mut track {
                            *masked = plan.is_some();
                        }
                        self.expect(ctx, id, Pending::Tracked(track)).await?;
                        self.send_target(target, packet).await?;
                    }
                }
            }
            Asked::Refuse { id, why } => {
                let mut rec = ctx.statement(&Request::Sftp(unjudged(&why)), now_ms());
                rec.decision = "denied";
                rec.error = Some(why.clone());
                ctx.denied.fetch_add(1, Ordering::Relaxed);
                ctx.recorder.record(Record::Statement(rec)).await;
                self.send(agent, wire::status(id, wire::FX_PERMISSION_DENIED, &why))
                    .await?;
            }
            Asked::Judge { id, op, track } => {
                let request = Request::Sftp(op);
                let started = Instant::now();
                let mut rec = ctx.statement(&request, now_ms());
                // `class` stays `sftp` (the request kind metrics count); the operation is the
                // first word of the text, its paths the params.
                if let Request::Sftp(op) = &request {
                    rec.params = op.paths.iter().map(|p| Some(p.shown.clone())).collect();
                }
                match gate::pass(ctx, &request, &mut rec, agent).await {
                    Gated::Refused { message } => {
                        ctx.denied.fetch_add(1, Ordering::Relaxed);
                        rec.error = Some(message.clone());
                        rec.duration_us = Some(started.elapsed().as_micros() as u64);
                        ctx.recorder.record(Record::Statement(rec)).await;
                        self.send(
                            agent,
                            wire::status(id, wire::FX_PERMISSION_DENIED, &message),
                        )
                        .await?;
                    }
                    Gated::Forward { approval, busy } => {
                        if let Some(a) = &approval {
                            ctx.approvals.forwarded(a, &ctx.session);
                        }
                        self.expect(
                            ctx,
                            id,
                            Pending::Judged {
                                rec: Box::new(rec),
                                started,
                                track,
                            },
                        )
                        .await?;
                        let sent = self.send_target(target, packet).await;
                        // The target has it: no longer a forward in progress (a reload waits
                        // for it before its policy is in force).
                        drop(busy);
                        sent?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The mask plan with detectors that applies to the session (per policy version): file
    /// contents read under it are masked (`masked`).
    fn mask_plan(&self, ctx: &Ctx<'_>) -> Option<Arc<Plan>> {
        let policy = ctx.policy.borrow().clone();
        let mut cached = lock(&self.masked);
        if let Some((version, plan)) = cached.as_ref() {
            if *version == policy.version {
                return plan.clone();
            }
        }
        let plan = Plan::build(&policy, &ctx.who(), &ctx.target).filter(|p| p.has_detectors());
        *cached = Some((policy.version.clone(), plan.clone()));
        plan
    }

    async fn expect(&self, ctx: &Ctx<'_>, id: u32, pending: Pending) -> Result<(), SftpError> {
        let displaced = {
            let mut s = lock(&self.state);
            if s.pending.len() >= MAX_PENDING {
                return Err(SftpError::TooMany(MAX_PENDING));
            }
            s.pending.insert(id, pending)
        };
        // A reused id: the earlier request's reply will be taken for this one's. Its record
        // is written now, without an outcome, rather than lost. A masked window's READs would
        // be answered as the new request: the channel ends instead.
        if let Some(Pending::Window(_)) = displaced {
            return Err(SftpError::Reused(id));
        }
        if let Some(Pending::Judged {
            mut rec, started, ..
        }) = displaced
        {
            rec.error =
                Some("agentgate: its request id was reused before the target answered".into());
            rec.duration_us = Some(started.elapsed().as_micros() as u64);
            ctx.recorder.record(Record::Statement(*rec)).await;
        }
        Ok(())
    }

    fn path_of(&self, handle: &[u8]) -> SftpPath {
        match lock(&self.state).handles.get(handle) {
            Some(h) => h.path.clone(),
            None => SftpPath::unknown(
                format!("(handle {})", hex(handle)),
                "a handle the gateway did not see opened".into(),
            ),
        }
    }

    /// Notes what a reply from the target answers; returns the records it completes and what
    /// to do with it.
    fn reply(&self, packet: &Bytes, session: &str) -> Result<(Vec<Record>, Action), SftpError> {
        let mut r = Reader::new(packet)?;
        if r.typ() == wire::FXP_VERSION {
            let v = r.u32()?;
            if v != 3 {
                return Err(SftpError::Version(v));
            }
            return Ok((Vec::new(), Action::Forward));
        }
        let id = r.u32()?;
        let mut s = lock(&self.state);
        let Some(pending) = s.pending.remove(&id) else {
            return Ok((Vec::new(), Action::Forward));
        };
        let (judged, track) = match pending {
            Pending::Judged {
                rec,
                started,
                track,
            } => (Some((rec, started)), track),
            Pending::Tracked(t) => (None, t),
            Pending::Window(w) => {
                drop(s);
                return Ok((Vec::new(), self.window_reply(*w, id, r)?));
            }
        };
        let mut action = Action::Forward;
        let mut done = Vec::new();
        let mut error = None;
        match r.typ() {
            wire::FXP_STATUS => {
                let code = r.u32()?;
                if code != wire::FX_OK {
                    let msg = r.string().unwrap_or_default();
                    error = Some((code, String::from_utf8_lossy(&msg).into_owned()));
                }
                match track {
                    Track::Close { handle } => {
                        if let Some(h) = s.handles.remove(&handle) {
                            done.extend(transfer_record(&h, true, session));
                        }
                    }
                    Track::Write { handle, len } if code == wire::FX_OK => {
                        if let Some(h) = s.handles.get_mut(&handle) {
                            h.bytes_written += len;
                        }
                    }
                    _ => {}
                }
            }
            wire::FXP_HANDLE => {
                let handle = r.string()?;
                let opened = match track {
                    Track::Open { path, read, write } => Some((path, false, read, write)),
                    Track::OpenDir { path } => Some((path, true, true, false)),
                    _ => None,
                };
                if let Some((path, dir, read, write)) = opened {
                    if s.handles.len() >= MAX_HANDLES {
                        return Err(SftpError::TooMany(MAX_HANDLES));
                    }
                    s.handles.insert(
                        handle,
                        Handle {
                            path,
                            dir,
                            read,
                            write,
                            bytes_read: 0,
                            bytes_written: 0,
                            opened_ms: now_ms(),
                        },
                    );
                }
            }
            wire::FXP_EXTENDED_REPLY => {
                if let Track::Limits { masked: true } = track {
                    action = Action::Agent(limit_reads(packet, &mut r)?);
                }
            }
            wire::FXP_DATA => {
                if let Track::Read { handle, .. } = track {
                    let len = r.string_len()? as u64;
                    if let Some(h) = s.handles.get_mut(&handle) {
                        h.bytes_read += len;
                    }
                }
            }
            _ => {}
        }
        if let Some((mut rec, started)) = judged {
            rec.duration_us = Some(started.elapsed().as_micros() as u64);
            if let Some((code, msg)) = error {
                rec.error_code = Some(status_name(code).into());
                rec.error = Some(msg);
            }
            done.push(Record::Statement(*rec));
        }
        Ok((done, action))
    }

    /// A reply to one of a masked window's READs (`r` after its id): more to read, or the
    /// agent's answer, masked.
    fn window_reply(&self, mut w: Window, id: u32, mut r: Reader) -> Result<Action, SftpError> {
        let step = match r.typ() {
            wire::FXP_DATA => {
                let data = r.string()?;
                w.data(id, &data)
            }
            wire::FXP_STATUS if r.u32()? == wire::FX_EOF => w.eof(id),
            // An error (a bad handle, an I/O error): the agent gets it as the target sent it.
            _ => return Ok(Action::Forward),
        };
        let mut s = lock(&self.state);
        match step {
            Step::More(read) => {
                if s.pending.contains_key(&id) {
                    return Err(SftpError::Reused(id));
                }
                s.pending.insert(id, Pending::Window(Box::new(w)));
                Ok(Action::Target(read))
            }
            Step::Answer { packet, bytes } => {
                if let Some(h) = s.handles.get_mut(&w.handle) {
                    h.bytes_read += bytes;
                }
                Ok(Action::Agent(packet))
            }
        }
    }
}

/// What the relay does with a packet from the target.
enum Action {
    /// Pass it to the agent.
    Forward,
    /// Answer the agent with this instead.
    Agent(Bytes),
    /// Send this to the target (the rest of a masked window); nothing to the agent yet.
    Target(Bytes),
}

/// The reply to `limits@openssh.com` (`r` after its id) with its read length lowered to what a
/// masked READ is answered with, so that clients ask for no more (they would get short reads).
fn limit_reads(packet: &Bytes, r: &mut Reader) -> Result<Bytes, SftpError> {
    let _max_packet = r.u64()?;
    let read = r.u64()?;
    // length, type, id, max-packet-length, then max-read-length.
    let at = 4 + 1 + 4 + 8;
    let mut b = bytes::BytesMut::from(&packet[..]);
    let lowered = if read == 0 {
        masked::MAX_SLICE
    } else {
        read.min(masked::MAX_SLICE)
    };
    b[at..at + 8].copy_from_slice(&lowered.to_be_bytes());
    Ok(b.freeze())
}

/// The record of a request refused before it could be judged (an unknown type or extension).
fn unjudged(why: &str) -> Op {
    Op {
        name: "unknown",
        paths: Vec::new(),
        text: why.trim_start_matches("agentgate: ").to_string(),
    }
}

/// A file handle summed up at its close: path, how it was opened, bytes read and written.
fn transfer_record(h: &Handle, closed: bool, session: &str) -> Option<Record> {
    if h.dir {
        return None;
    }
    let mode = match (h.read, h.write) {
        (true, true) => "read+write",
        (false, true) => "write",
        _ => "read",
    };
    Some(Record::Event {
        kind: "sftp_transfer",
        at_ms: now_ms(),
        session: Some(session.to_string()),
        body: json!({
            "path": h.path.shown,
            "mode": mode,
            "bytes_read": h.bytes_read,
            "bytes_written": h.bytes_written,
            "opened_ms": h.opened_ms,
            "closed": closed,
        }),
    })
}

fn status_name(code: u32) -> &'static str {
    match code {
        1 => "SSH_FX_EOF",
        2 => "SSH_FX_NO_SUCH_FILE",
        3 => "SSH_FX_PERMISSION_DENIED",
        4 => "SSH_FX_FAILURE",
        5 => "SSH_FX_BAD_MESSAGE",
        8 => "SSH_FX_OP_UNSUPPORTED",
        _ => "SSH_FX_OTHER",
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
