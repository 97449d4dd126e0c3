//! The session relay after login. Client messages are forwarded as read, except that every
//! statement (Query, Parse, Bind of a prepared statement, FunctionCall) is classified and checked
//! against the statement rules of the policy in force.
//!
//! A denied statement is not answered by the gateway. Its message is replaced by one that fails
//! on the server (a syntax error, or a Bind to a statement that does not exist) and carries a
//! per-session marker; the server's error is then rewritten into the gateway's 42501 on the way
//! back. The server itself therefore applies PostgreSQL's own error semantics: the transaction
//! block is aborted, the rest of an extended-protocol batch is skipped until Sync, and the
//! responses of pipelined statements stay in order.
//!
//! Both directions share the queue of what was sent and not yet answered (`Pending`); every
//! answer must fit its front, or the session ends. `upward` judges the agent's messages,
//! `approve` holds a statement for people, `trial` runs a write under `max_rows` first,
//! `downward` pairs the server's answers with the queue, masks and records them; this file
//! holds the session's state and the loop around them.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use bytes::BufMut;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter},
    sync::watch,
};

use super::{
    classify::{canonical_statements, Class, Classified, Classifier},
    codec::{self, out, put_cstr, CodecError, Fields, Frame, Notice},
    frontend::BoxIo,
    mask::{
        catalog::{Catalog, CatalogError, TableName},
        copy::{copy_out, CopyMask, CopyOut},
        hide::{Raiser, TextGuard},
        notice::{hide_notice, mask_notice},
        row::{self, ResultMask},
        taint::Taint,
    },
};
use crate::{
    approval::{Action, Approvals, Gate, Mode, NewRequest, State},
    mask::{detect::Hit, plan::Plan},
    policy::{Policy, Who},
    protocol::postgres::rules::{Statement as RuleStatement, StatementRules},
    record::{now_ms, Record, Recorder, Statement},
};

mod approve;
mod downward;
mod gate;
mod params;
#[cfg(test)]
mod tests;
mod trial;
mod upward;

use downward::downward;
use params::{bind_params, Params};

const BUFFER: usize = 64 * 1024;
/// Recorded parameter values are cut at this many bytes.
const PARAM_CAP: usize = 4096;
/// Prepared statements and portals a session may hold; PostgreSQL has no limit, but the gateway
/// keeps a small record of each.
const MAX_NAMED: usize = 100_000;
/// Bytes of messages the agent may send behind a statement held for approval; more end the
/// session (the gateway must keep reading to see the agent leave).
const MAX_QUEUED_WHILE_HELD: usize = 1 << 20;
/// A message begun behind a held statement must be complete within this: the decision is not
/// acted on while one is half read, and an approval must not run when the agent chooses.
const PARTIAL_WHILE_HELD: std::time::Duration = std::time::Duration::from_secs(5);
/// Statements sent but not yet answered. After an error the server skips messages until Sync
/// without answering, so an agent could otherwise grow this without bound.
const MAX_IN_FLIGHT: usize = 65_536;

/// Who is on the session and under which policy its statements are judged.
pub struct SessionContext<'a> {
    pub session: String,
    pub issuer: String,
    pub subject: String,
    pub groups: Vec<String>,
    pub workload: String,
    pub target: String,
    pub policy: watch::Receiver<Arc<Policy>>,
    pub classifier: &'a Classifier,
    pub recorder: &'a Recorder,
    pub max_message: usize,
    /// Column origins of the session's database, for masking.
    pub catalog: Arc<Catalog>,
    /// Where statements that approval rules hold wait for people.
    pub approvals: Arc<Approvals>,
    /// The database the session is in (shown to approvers, part of a retry's identity).
    pub database: String,
    /// How much of each statement's result (as sent to the agent) the record keeps.
    pub results_cap: ResultsCap,
    /// CancelRequests that reached this session (see [`super::cancel::CancelSignal`]).
    pub cancels: watch::Receiver<u64>,
    /// Whether the policy in force still allows the session, checked before each forward.
    pub gate: Arc<crate::proxy::Gate>,
}

/// Rows and bytes of a statement's result kept on record; zero rows keeps none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultsCap {
    pub rows: usize,
    pub bytes: usize,
}

/// The first rows of the result being received, as the agent got them (masked).
#[derive(Default)]
struct Kept {
    rows: Vec<Vec<Option<String>>>,
    bytes: usize,
    cut: bool,
}

impl Kept {
    fn row(&mut self, cap: ResultsCap, frame: &Frame) {
        if cap.rows == 0 || self.cut {
            return;
        }
        if self.rows.len() >= cap.rows || self.bytes + frame.bytes.len() > cap.bytes {
            self.cut = true;
            return;
        }
        let mut f = Fields::new(frame);
        let Ok(n) = f.count() else {
            return;
        };
        let mut row = Vec::with_capacity(n);
        for _ in 0..n {
            match f.i32() {
                Ok(len) if len < 0 => row.push(None),
                Ok(len) => match f.take(len as usize) {
                    Ok(v) => row.push(Some(shown(v))),
                    Err(_) => return,
                },
                Err(_) => return,
            }
        }
        self.bytes += frame.bytes.len();
        self.rows.push(row);
    }

    /// Hands what was kept to the statement now completing.
    fn hand_to(&mut self, rec: &mut Statement) {
        if !self.rows.is_empty() || self.cut {
            rec.results = Some(std::mem::take(&mut self.rows));
            rec.results_cut = self.cut;
        }
        *self = Kept::default();
    }
}

/// A value as text: UTF-8 as it is, anything else (binary format) as `\x` hex.
fn shown(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) if !s.contains(|c: char| c.is_control() && c != '\n' && c != '\t') => s.to_string(),
        _ => bytea_hex(v),
    }
}

/// Bytes as PostgreSQL writes a bytea: `\\x` and two hex digits each.
fn bytea_hex(v: &[u8]) -> String {
    use std::fmt::Write;
    let mut h = String::with_capacity(2 + v.len() * 2);
    h.push_str("\\x");
    for b in v {
        let _ = write!(h, "{b:02x}");
    }
    h
}

impl SessionContext<'_> {
    fn who(&self) -> Who<'_> {
        Who {
            issuer: &self.issuer,
            subject: &self.subject,
            groups: &self.groups,
            workload: &self.workload,
            login: None,
        }
    }
}

/// The mask plan of the policy in force, rebuilt only when the policy changes.
#[derive(Default)]
struct PlanCache(Mutex<Option<(String, Option<Arc<Plan>>)>>);

impl PlanCache {
    fn get(&self, ctx: &SessionContext<'_>) -> Option<Arc<Plan>> {
        let policy = ctx.policy.borrow().clone();
        let mut cached = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &*cached {
            Some((version, plan)) if *version == policy.version => plan.clone(),
            _ => {
                let plan = Plan::build(&policy, &ctx.who(), &ctx.target);
                *cached = Some((policy.version.clone(), plan.clone()));
                plan
            }
        }
    }
}

/// Why a statement is not forwarded as it is.
struct Denied {
    rule: String,
    /// Instead of the standard text.
    message: Option<String>,
}

#[derive(Default)]
pub struct Counters {
    pub up: AtomicU64,
    pub down: AtomicU64,
    pub statements: AtomicU64,
    pub denied: AtomicU64,
    /// A statement is held for approval: waiting for people is not idleness.
    pub held: std::sync::atomic::AtomicBool,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("from the agent: {0}")]
    Client(CodecError),
    #[error("from the target: {0}")]
    Upstream(CodecError),
    #[error("the agent sent an unknown message type `{0}`")]
    UnknownMessage(char),
    #[error("the agent holds more than {MAX_NAMED} prepared statements or portals")]
    TooManyNamed,
    #[error("the session's {0} changed to {1}, under which the gateway cannot read SQL as the server does")]
    UnsafeSetting(String, String),
    #[error("more than {MAX_IN_FLIGHT} statements are waiting for the target's answer")]
    TooMuchInFlight,
    /// Values the gateway must mask but cannot: the session ends before any reach the agent.
    #[error("{0}")]
    Unmaskable(String),
    /// The agent closed its connection while a statement of its was held for approval.
    #[error("the agent left while its statement was held for approval")]
    LeftWhileHeld,
    #[error("more than {MAX_QUEUED_WHILE_HELD} bytes of messages sent behind a statement held for approval")]
    HeldBacklog,
    /// An answer of the target that does not fit what the gateway sent: the gateway could no
    /// longer tell which statement rows, errors and masking belong to.
    #[error("the target's answer ({0}) does not fit the messages sent; the gateway cannot tell which statement it belongs to")]
    OutOfStep(&'static str),
    /// A `max_rows` trial could not be carried out as planned: the session cannot go on in a
    /// state the gateway does not know.
    #[error("trial of a write under max_rows: {0}")]
    Trial(String),
    #[error("a message sent behind a statement held for approval did not arrive whole within {PARTIAL_WHILE_HELD:?}")]
    StalledWhileHeld,
}

impl RelayError {
    /// The error to send the agent before closing, when it was the agent's fault.
    pub fn for_client(&self) -> Option<Frame> {
        let (code, msg) = match self {
            RelayError::Client(CodecError::Io(_))
            | RelayError::Upstream(_)
            | RelayError::LeftWhileHeld => return None,
            RelayError::Client(e) => ("08P01", format!("agentgate: {e}")),
            RelayError::UnknownMessage(_) | RelayError::StalledWhileHeld => {
                ("08P01", format!("agentgate: {self}"))
            }
            RelayError::TooManyNamed | RelayError::TooMuchInFlight | RelayError::HeldBacklog => {
                ("54000", format!("agentgate: {self}"))
            }
            RelayError::UnsafeSetting(..) => ("0A000", format!("agentgate: {self}")),
            RelayError::Trial(_) | RelayError::OutOfStep(_) => {
                ("XX000", format!("agentgate: {self}"))
            }
            RelayError::Unmaskable(_) => ("42501", format!("agentgate: {self}")),
        };
        Some(out::error("FATAL", code, &msg, None))
    }

    /// Who or what ended a session the relay ended with this error (the record's `ended_by`;
    /// the error text itself goes beside it).
    pub fn ended_by(&self) -> &'static str {
        match self {
            RelayError::Client(CodecError::Io(_)) => "agent connection failed",
            RelayError::Upstream(_) => "target connection failed",
            RelayError::LeftWhileHeld => "agent closed while a statement was held",
            RelayError::Unmaskable(_) => "gateway: a result it could not mask",
            RelayError::UnsafeSetting(..) => "gateway: a setting it cannot follow",
            RelayError::Trial(_) => "gateway: a trial it could not carry out",
            RelayError::OutOfStep(_) => "gateway: out of step with the target",
            RelayError::Client(_)
            | RelayError::UnknownMessage(_)
            | RelayError::TooManyNamed
            | RelayError::TooMuchInFlight
            | RelayError::HeldBacklog
            | RelayError::StalledWhileHeld => "gateway: the agent broke the protocol or a limit",
        }
    }
}

/// How the relay ended without error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The agent sent Terminate.
    Client,
    /// The agent closed without Terminate (perhaps with a statement still running).
    ClientGone,
    /// The target closed (e.g. the backend was terminated).
    Upstream,
    /// The gateway ended it: token expiry, a policy change, idleness.
    Stopped(String),
}

struct Denial {
    /// The SQLSTATE the agent gets (42501, or 57014 for a held statement it cancelled).
    code: &'static str,
    rule: String,
    classified: Arc<Classified>,
    /// Instead of the standard text (a statement whose output cannot be masked).
    message: Option<String>,
}

/// A statement sent upstream whose outcome is still to come.
struct Open {
    rec: Statement,
    started: Instant,
    /// How its COPY output is masked, if it is a COPY to the agent under a mask plan.
    copy: Option<Arc<CopyMask>>,
    /// What its result columns may be computed from, for masking.
    classified: Option<Arc<Classified>>,
}

enum Pending {
    /// A Query: complete at ReadyForQuery (several CommandCompletes add up).
    Simple(Open),
    /// An Execute: complete at its CommandComplete, EmptyQueryResponse, PortalSuspended or
    /// error.
    Execute(Open),
    /// A FunctionCall: complete at ReadyForQuery.
    Call(Open),
    /// `during_copy`: sent after a statement that may start COPY FROM STDIN and before the
    /// agent's CopyDone or CopyFail. The server ignores a Sync in copy-in mode, so if the
    /// statement did start one (CopyInResponse) this Sync gets no answer.
    Sync { during_copy: bool },
    /// A Close: answered by CloseComplete or an error, or skipped after an earlier error.
    Close,
    /// A Parse: answered by ParseComplete or an error, or skipped after an earlier error.
    Parse(u64),
    /// A Bind (its id): answered by BindComplete or an error, or skipped after an earlier
    /// error.
    Bind(u64),
    /// The agent's own Describe: its RowDescription or NoData is the agent's.
    ClientDescribe,
    /// The gateway's Describe of a portal before an Execute, for masking: its RowDescription
    /// or NoData is the gateway's and not forwarded.
    Describe,
    /// A Query run as a trial (`max_rows`): its answer is held back until the gateway decides;
    /// `in_block`: inside the agent's transaction block, under a savepoint.
    Trial { open: Open, in_block: bool },
    /// A Query of the gateway's own around a trial: its answer is the gateway's.
    Own(trial::Finish),
}

struct Shared {
    pending: Mutex<VecDeque<Pending>>,
    /// The server's answers to Parse messages (parse id, accepted), for the agent side to
    /// learn which text a statement name really holds.
    parsed: Mutex<Vec<(u64, bool)>>,
    /// The server's answers to Bind messages (bind id, accepted): a refused Bind leaves the
    /// portal the name held before.
    bound: Mutex<Vec<(u64, bool)>>,
    denials: Mutex<HashMap<u64, Denial>>,
    /// `agentgate_denied_<random>_`: only this session's substitutes carry it, and no agent
    /// can predict it to make its own error look like a denial.
    marker: String,
    /// Messages of the gateway's own for the agent (an approval notice), sent by the downward
    /// side between the target's messages.
    notices: Mutex<Vec<Frame>>,
    notice_ready: tokio::sync::Notify,
    /// The server is skipping to Sync after a failed extended-protocol message.
    skipping: std::sync::atomic::AtomicBool,
    /// The transaction status of the last ReadyForQuery (`I`, `T` or `E`).
    status: std::sync::atomic::AtomicU8,
    /// Where a trial in progress hears of its answers (see [`trial`]).
    trial_events: Mutex<Option<tokio::sync::mpsc::UnboundedSender<trial::Event>>>,
}

impl Shared {
    fn new(marker: String) -> Shared {
        Shared {
            pending: Mutex::new(VecDeque::new()),
            parsed: Mutex::new(Vec::new()),
            bound: Mutex::new(Vec::new()),
            denials: Mutex::new(HashMap::new()),
            marker,
            notices: Mutex::new(Vec::new()),
            notice_ready: tokio::sync::Notify::new(),
            // The gateway's own login ends with ReadyForQuery `I`.
            status: std::sync::atomic::AtomicU8::new(b'I'),
            skipping: std::sync::atomic::AtomicBool::new(false),
            trial_events: Mutex::new(None),
        }
    }
    fn status(&self) -> u8 {
        self.status.load(Ordering::Relaxed)
    }
    fn trial_events(
        &self,
    ) -> std::sync::MutexGuard<'_, Option<tokio::sync::mpsc::UnboundedSender<trial::Event>>> {
        self.trial_events.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn trial_event(&self, e: trial::Event) {
        if let Some(tx) = self.trial_events().as_ref() {
            let _ = tx.send(e);
        }
    }
    fn pending(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn parsed(&self) -> std::sync::MutexGuard<'_, Vec<(u64, bool)>> {
        self.parsed.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn bound(&self) -> std::sync::MutexGuard<'_, Vec<(u64, bool)>> {
        self.bound.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn denials(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Denial>> {
        self.denials.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn tell_agent(&self, frame: Frame) {
        self.notices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(frame);
        self.notice_ready.notify_one();
    }
    fn take_notices(&self) -> Vec<Frame> {
        std::mem::take(&mut *self.notices.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The agent's side once the relay has ended: for a last FATAL.
pub type ClientOut = BufWriter<tokio::io::WriteHalf<BoxIo>>;

struct Prepared {
    text: Arc<str>,
    classified: Arc<Classified>,
    /// Which Parse made it (0: none), for the server's answer to it.
    parse: u64,
    /// The batch (Syncs sent before it) of that Parse.
    batch: u64,
}

impl Prepared {
    /// A statement whose text the gateway does not know: judged as opaque.
    fn unknown(why: &'static str) -> Arc<Prepared> {
        Arc::new(Prepared {
            text: "".into(),
            classified: Arc::new(Classified::opaque(why)),
            parse: 0,
            batch: 0,
        })
    }
}

/// Texts one statement name may stand for on the server, oldest first.
type Candidates = Vec<Arc<Prepared>>;
/// More texts than this under one name (re-Parsed without Close, refused by the server each
/// time) and the name is treated as opaque.
const MAX_CANDIDATES: usize = 8;

struct Portal {
    statement: Option<Arc<Prepared>>,
    params: Params,
    /// The rule that refused its Bind.
    denied: Option<String>,
    /// The Bind that made it, and that Bind's batch.
    bind: u64,
    batch: u64,
}

/// A Bind not yet answered: the portal its name held before (which stays if the server refuses
/// the Bind: `cursor already exists`, an unknown statement, an aborted transaction).
struct OpenBind {
    portal: String,
    previous: Option<Portal>,
    /// The batch (Syncs sent before it) it was sent in.
    batch: u64,
}

/// Relays until either side ends. Errors that are the agent's fault come back with a FATAL to
/// send it (see [`RelayError::for_client`]); the caller owns both streams' teardown.
pub async fn relay(
    client: BoxIo,
    upstream: BoxIo,
    ctx: &SessionContext<'_>,
    counters: &Counters,
    stop: impl std::future::Future<Output = String>,
) -> (Result<Ended, RelayError>, ClientOut) {
    let (cr, cw) = tokio::io::split(client);
    let (ur, uw) = tokio::io::split(upstream);
    let mut client_out = BufWriter::with_capacity(BUFFER, cw);
    let mut upstream_out = BufWriter::with_capacity(BUFFER, uw);
    let shared = Shared::new(format!("agentgate_denied_{:016x}_", rand::random::<u64>()));
    let result = {
        let up = Upward {
            ctx,
            shared: &shared,
            counters,
            statements: HashMap::new(),
            portals: HashMap::new(),
            plan: PlanCache::default(),
            prefix: None,
            batch: 0,
            batch_open: false,
            copy_possible: false,
            parses: HashMap::new(),
            open_binds: HashMap::new(),
            next_bind: 1,
            next_parse: 1,
            approved: None,
            queued: VecDeque::new(),
            queued_bytes: 0,
            next_refusal_code: None,
            trial: None,
            triable: false,
            trial_rows: None,
        }
        .run(BufReader::with_capacity(BUFFER, cr), &mut upstream_out);
        let down = downward(
            ctx,
            &shared,
            counters,
            BufReader::with_capacity(BUFFER, ur),
            &mut client_out,
        );
        tokio::select! {
            r = up => r,
            r = down => r,
            why = stop => Ok(Ended::Stopped(why)),
        }
    };
    let _ = upstream_out.shutdown().await;
    // Statements sent but never answered (the agent left, or the session was ended) may still
    // have run: they are recorded too, with an unknown outcome.
    let unanswered: Vec<Pending> = shared.pending().drain(..).collect();
    for p in unanswered {
        if let Pending::Simple(mut o)
        | Pending::Execute(mut o)
        | Pending::Call(mut o)
        | Pending::Trial { open: mut o, .. } = p
        {
            o.rec.error = Some("the session ended before the target answered".into());
            o.rec.duration_us = Some(o.started.elapsed().as_micros() as u64);
            ctx.recorder.record(Record::Statement(o.rec)).await;
        }
    }
    // Hand the agent's side back (with anything still buffered) so the caller can tell the
    // agent why it ends.
    (result, client_out)
}

/// Agent → target.
struct Upward<'a, 'c> {
    ctx: &'a SessionContext<'c>,
    shared: &'a Shared,
    counters: &'a Counters,
    statements: HashMap<String, Candidates>,
    portals: HashMap<String, Portal>,
    plan: PlanCache,
    /// A message of the gateway's own to send before the one being forwarded.
    prefix: Option<Frame>,
    /// Syncs sent so far: extended-protocol batches.
    batch: u64,
    /// An extended-protocol message was sent since the last Sync (the server may be skipping to
    /// Sync, or between transactions without having said so): no trial then.
    batch_open: bool,
    /// A Query or Execute that may be a COPY FROM STDIN went to the target and the agent has
    /// not sent CopyDone or CopyFail since (see [`Pending::Sync`]).
    copy_possible: bool,
    /// Parses sent and not yet answered, by id: the statement name they were for.
    parses: HashMap<u64, String>,
    /// Binds sent and not yet answered, by id.
    open_binds: HashMap<u64, OpenBind>,
    next_bind: u64,
    next_parse: u64,
    /// The approval the statement being recorded runs under: its record names it, and the
    /// request's trail says `forwarded` once the statement is on its way (see
    /// [`Upward::settle_approval`]).
    approved: Option<Approved>,
    /// Messages the agent sent while a statement was held, read off its socket (so that its
    /// leaving stays visible) and handled in order after the decision.
    queued: VecDeque<Frame>,
    queued_bytes: usize,
    /// The SQLSTATE of the next refusal when it is not 42501: a held statement the agent
    /// cancelled is refused as PostgreSQL refuses a cancelled one (57014).
    next_refusal_code: Option<&'static str>,
    /// Set by [`Upward::approval`]: the Query is run as a trial under this many rows.
    trial: Option<u64>,
    /// Whether the statement being judged is a Query not tried yet, set by the Query branch for
    /// [`Upward::approval`], which also checks that it can be tried (`trial::triable`: one
    /// INSERT/UPDATE/DELETE/MERGE) when a `max_rows` rule asks.
    triable: bool,
    /// Rows the statement touched in its trial, for the request put to approvers.
    trial_rows: Option<u64>,
}

impl Upward<'_, '_> {
    async fn run<R, W>(mut self, mut from: BufReader<R>, to: &mut W) -> Result<Ended, RelayError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let gate = self.ctx.gate.clone();
        // Between a forward's policy check and the flush that sends it (pipelined messages
        // share one flush); see `Gate`.
        let mut busy = false;
        loop {
            let frame = match self.queued.pop_front() {
                Some(f) => {
                    self.queued_bytes -= f.bytes.len();
                    f
                }
                None => {
                    let Some(frame) = codec::read_frame(&mut from, self.ctx.max_message)
                        .await
                        .map_err(RelayError::Client)?
                    else {
                        return Ok(Ended::ClientGone);
                    };
                    self.counters
                        .up
                        .fetch_add(frame.bytes.len() as u64, Ordering::Relaxed);
                    frame
                }
            };
            let tag = frame.tag();
            let io = |e| RelayError::Upstream(CodecError::Io(e));
            // Checked before it is decided (a statement never sent is not recorded as sent)
            // and again before it is written (a policy put in force while it was decided, or
            // held).
            if !busy {
                gate.begin();
                busy = true;
            }
            if let Err(why) = gate.check() {
                // What was checked before the policy changed goes; this does not.
                to.flush().await.map_err(io)?;
                gate.end();
                return Ok(Ended::Stopped(why));
            }
            let frame = match self.inspect(frame, &mut from, to).await {
                Err(RelayError::LeftWhileHeld) => return Ok(Ended::ClientGone),
                r => r?,
            };
            if let Err(why) = gate.check() {
                to.flush().await.map_err(io)?;
                gate.end();
                return Ok(Ended::Stopped(why));
            }
            if let Some(prefix) = self.prefix.take() {
                to.write_all(&prefix.bytes).await.map_err(io)?;
            }
            to.write_all(&frame.bytes).await.map_err(io)?;
            if tag == b'X' {
                to.flush().await.map_err(io)?;
                gate.end();
                return Ok(Ended::Client);
            }
            // Pipelined messages travel together; flush once nothing more is waiting.
            if from.buffer().is_empty() && self.queued.is_empty() {
                to.flush().await.map_err(io)?;
                gate.end();
                busy = false;
            }
        }
    }

    /// The rule that denies `classified` under the policy in force now, if any: a statement
    /// rule, or under column rules a read of the planner's statistics.
    fn decide(&self, stmt: &RuleStatement<'_>) -> Option<Denied> {
        let policy = self.ctx.policy.borrow().clone();
        if let Some(r) = policy.statement_denied(&self.ctx.who(), &self.ctx.target, stmt) {
            return Some(Denied {
                rule: r.name.clone(),
                message: None,
            });
        }
        let plan = self.plan.get(self.ctx)?;
        if plan.reads_statistics(stmt.classified) {
            return Some(Denied {
                rule: plan.rule_name(0).to_string(),
                message: Some(format!(
                    "agentgate: the planner's statistics hold sample values of masked columns (mask rule \"{}\")",
                    plan.rule_name(0)
                )),
            });
        }
        None
    }

    /// Registers a denial and returns the marker text that makes the server fail in its place.
    /// Each marker ends in a fresh random key, so one seen in `pg_stat_activity` or a server
    /// log says nothing about the next.
    fn deny(
        &mut self,
        rule: String,
        classified: Arc<Classified>,
        message: Option<String>,
    ) -> Result<String, RelayError> {
        self.counters.denied.fetch_add(1, Ordering::Relaxed);
        tracing::info!(rule, class = classified.class.as_str(), "statement denied");
        let mut denials = self.shared.denials();
        if denials.len() >= MAX_IN_FLIGHT {
            return Err(RelayError::TooMuchInFlight);
        }
        let key = loop {
            let k = rand::random::<u64>();
            if !denials.contains_key(&k) {
                break k;
            }
        };
        denials.insert(
            key,
            Denial {
                rule,
                classified,
                message,
                code: self.next_refusal_code.take().unwrap_or("42501"),
            },
        );
        Ok(format!("{}{key:016x}", self.shared.marker))
    }

    fn statement(
        &mut self,
        kind: &'static str,
        text: &str,
        c: &Classified,
        params: Vec<Option<String>>,
        rule: Option<&str>,
    ) -> Statement {
        let (text, params) = self.for_record(text, params);
        let (decision, rule) = match (rule, &self.approved) {
            (Some(r), _) => ("denied", Some(r.to_string())),
            (None, Some(approval)) => ("approved", Some(approval.label.clone())),
            (None, None) => ("allowed", None),
        };
        Statement {
            session: self.ctx.session.clone(),
            // The session's statement count is also each record's sequence number.
            seq: self.counters.statements.fetch_add(1, Ordering::Relaxed) + 1,
            started_ms: now_ms(),
            kind,
            text,
            params,
            class: c.class.as_str().to_string(),
            privileged: c.class != crate::statement::Class::Read,
            tables: c.tables.iter().map(|t| t.to_string()).collect(),
            functions: c.functions.clone(),
            decision,
            rule,
            duration_us: None,
            rows: None,
            error_code: None,
            error: None,
            results: None,
            results_cut: false,
            exit_status: None,
            output: None,
        }
    }

    /// What the record (and an approval request) may hold of a statement and its parameters:
    /// what the detectors leave of them.
    fn for_record(&self, text: &str, params: Vec<Option<String>>) -> (String, Vec<Option<String>>) {
        match self.plan.get(self.ctx) {
            Some(plan) => (
                plan.mask_str(text).into_owned(),
                params
                    .into_iter()
                    .map(|p| p.map(|v| plan.mask_str(&v).into_owned()))
                    .collect(),
            ),
            None => (text.to_string(), params),
        }
    }

    /// A privileged statement (anything but a read) is on record, committed, before it is
    /// forwarded, so that whatever the target executed is in the record even if the gateway
    /// dies right after. `false`: it could not be recorded and must not be forwarded.
    async fn on_record_first(&self, rec: &Statement, c: &Classified) -> bool {
        if c.class == Class::Read && c.functions.iter().all(|f| read_only_function(f)) {
            return true;
        }
        self.ctx
            .recorder
            .record_durable(Record::Intent(rec.clone()))
            .await
    }

    /// Ends the approval the statement ran under, if any: its trail says `forwarded` only when
    /// the statement was `sent` (it may still be refused for want of a record).
    fn settle_approval(&mut self, sent: bool) {
        if let Some(a) = self.approved.take() {
            if sent {
                self.ctx.approvals.forwarded(&a.id, &self.ctx.session);
            }
        }
    }

    /// A prepared statement refused at Parse or Bind never runs: its record is final now.
    async fn record_denial(&mut self, p: &Prepared, params: Vec<Option<String>>, rule: &str) {
        let mut rec = self.statement("extended", &p.text, &p.classified, params, Some(rule));
        rec.error_code = Some("42501".into());
        rec.error = Some(denial_message(rule));
        self.ctx.recorder.record(Record::Statement(rec)).await;
    }

    fn push(&self, p: Pending) -> Result<(), RelayError> {
        let mut q = self.shared.pending();
        if q.len() >= MAX_IN_FLIGHT {
            return Err(RelayError::TooMuchInFlight);
        }
        // Under the queue's lock, so that the downward side cannot find the session idle
        // between this and the statement's going out.
        if let Pending::Simple(o) | Pending::Execute(o) | Pending::Call(o) = &p {
            if matches!(o.rec.class.as_str(), "ddl" | "opaque") {
                self.ctx.catalog.ddl_in_flight();
            }
        }
        q.push_back(p);
        Ok(())
    }
}

/// An approval a statement runs under.
struct Approved {
    id: String,
    /// What the statement's record names as its rule: "rule (request id)".
    label: String,
}

impl Approved {
    fn of(r: &crate::approval::Request) -> Approved {
        Approved {
            id: r.id.clone(),
            label: format!("{} ({})", r.rule, r.id),
        }
    }
}

fn open(rec: Statement) -> Open {
    Open {
        rec,
        started: Instant::now(),
        copy: None,
        classified: None,
    }
}

/// Functions known not to write, so that a read calling only these need not wait for its
/// record. Any other function (a user-defined one can write, `nextval` does) makes the read
/// privileged: the classifier cannot see what a function does.
fn read_only_function(f: &str) -> bool {
    const PURE: &[&str] = &[
        "abs",
        "array_agg",
        "array_length",
        "avg",
        "bool_and",
        "bool_or",
        "btrim",
        "ceil",
        "char_length",
        "coalesce",
        "concat",
        "concat_ws",
        "count",
        "date_part",
        "date_trunc",
        "every",
        "extract",
        "floor",
        "format",
        "generate_series",
        "greatest",
        "initcap",
        "json_agg",
        "json_build_array",
        "json_build_object",
        "jsonb_agg",
        "jsonb_build_array",
        "jsonb_build_object",
        "least",
        "left",
        "length",
        "lower",
        "lpad",
        "ltrim",
        "max",
        "md5",
        "min",
        "mod",
        "now",
        "nullif",
        "position",
        "random",
        "regexp_match",
        "regexp_replace",
        "repeat",
        "replace",
        "reverse",
        "right",
        "round",
        "row_number",
        "row_to_json",
        "rpad",
        "rtrim",
        "split_part",
        "sqrt",
        "statement_timestamp",
        "string_agg",
        "strpos",
        "substr",
        "substring",
        "sum",
        "to_char",
        "to_date",
        "to_json",
        "to_jsonb",
        "to_number",
        "to_timestamp",
        "transaction_timestamp",
        "trim",
        "trunc",
        "upper",
        "version",
    ];
    let name = f.strip_prefix("pg_catalog.").unwrap_or(f);
    !name.contains('.') && PURE.contains(&name)
}

/// The rule name and message of a statement refused because it could not be put on record, with
/// its record changed to say so.
fn unrecorded(rec: &mut Statement) -> (Option<String>, Option<String>) {
    const RULE: &str = "record-before-forwarding";
    rec.decision = "denied";
    rec.rule = Some(RULE.into());
    (
        Some(RULE.into()),
        Some("agentgate: the statement could not be put on record, so it was not sent".into()),
    )
}

fn denial_message(rule: &str) -> String {
    format!("agentgate: statement denied by policy rule \"{rule}\"")
}

/// Whether `text` may be a COPY (a cheap superset: the word anywhere).
fn may_copy(text: &str) -> bool {
    contains_word(text, b"copy")
}

/// Whether `word` (lower-case ASCII) occurs in `text` in any case, without allocating.
fn contains_word(text: &str, word: &[u8]) -> bool {
    text.as_bytes()
        .windows(word.len())
        .any(|w| w.eq_ignore_ascii_case(word))
}

/// The tables a statement names, as the catalog looks them up.
fn table_names(c: &Classified) -> Vec<TableName> {
    c.tables
        .iter()
        .map(|t| (t.schema.clone(), t.name.clone()))
        .collect()
}

/// The relations a statement reads, as the catalog knows them: every relation each of its
/// names may refer to (an unqualified name: that name in any schema, see `Catalog::resolve`).
async fn resolve_tables(
    ctx: &SessionContext<'_>,
    c: &Classified,
) -> Result<Vec<Option<Arc<super::mask::catalog::Relation>>>, RelayError> {
    ctx.catalog.resolve(&table_names(c)).await.map_err(|e| {
        RelayError::Unmaskable(format!(
            "cannot resolve the tables of a statement for masking: {e}"
        ))
    })
}
