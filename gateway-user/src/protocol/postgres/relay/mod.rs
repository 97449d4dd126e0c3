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
    classify::{Class, Classified, Classifier},
    codec::{self, out, put_cstr, CodecError, Fields, Frame, Notice},
    frontend::BoxIo,
};
use crate::{
    approval::{Approvals, Gate, Mode, NewRequest, State},
    mask::{
        catalog::{Catalog, CatalogError, TableName},
        copy::{copy_out, CopyMask, CopyOut},
        detect::Hit,
        hide::{Raiser, TextGuard},
        notice::{hide_notice, mask_notice},
        plan::Plan,
        row::{self, ResultMask},
    },
    policy::{Policy, Statement as RuleStatement, Who},
    record::{now_ms, Record, Recorder, Statement},
};

mod trial;

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
    /// Whether the statement being judged can be tried (a Query of one INSERT/UPDATE/DELETE/
    /// MERGE); set by the Query branch for [`Upward::approval`].
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

    /// Decides one message; returns what to forward. `from` and `to` are the agent's side and
    /// the target's: a statement held for approval flushes what was forwarded before it and
    /// watches for the agent leaving.
    async fn inspect<R, W>(
        &mut self,
        frame: Frame,
        from: &mut BufReader<R>,
        to: &mut W,
    ) -> Result<Frame, RelayError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let bad = RelayError::Client;
        self.learn_parses();
        self.learn_binds();
        // A Query or FunctionCall may come inside an extended-protocol batch (asyncpg sends
        // Parse/Describe/Flush and then a Query): the server runs it, or skips it like the rest
        // of the batch after an error there; the downward side tells which (see `downward`).
        match frame.tag() {
            b'S' => {
                self.batch += 1;
                self.batch_open = false;
            }
            // Only an Execute can end a transaction block without a ReadyForQuery (asyncpg's
            // Parse/Describe/Flush before a Query leaves nothing open).
            b'E' => self.batch_open = true,
            b'c' | b'f' => self.copy_possible = false,
            _ => {}
        }
        match frame.tag() {
            b'Q' => {
                let text = Fields::new(&frame).cstr().map_err(bad)?.to_string();
                let classified = self.ctx.classifier.classify(&text);
                let stmt = RuleStatement::new(&classified, &text);
                let denied = match self.decide(&stmt) {
                    Some(d) => Some(d),
                    None => self.mask_denial(&classified).await?,
                };
                let mut copy = None;
                let (mut rule, mut message) = match denied {
                    Some(d) => (Some(d.rule), d.message),
                    None => (None, None),
                };
                if rule.is_none() {
                    match self.copy_mask(&text, &classified).await {
                        Ok(c) => copy = c,
                        Err((r, m)) => (rule, message) = (Some(r), Some(m)),
                    }
                }
                // Once a `max_rows` trial touched too many rows (or could not be run), the
                // statement goes to people like any other: asked once more, never tried again.
                let mut tried = false;
                loop {
                    // Last: people are asked only about a statement nothing else refuses.
                    if rule.is_none() {
                        self.triable = !tried && trial::triable(&text);
                        let asked = self.approval(&stmt, &Params::default(), from, to).await;
                        self.triable = false;
                        if let Some(d) = asked? {
                            (rule, message) = (Some(d.rule), d.message);
                        }
                    }
                    let mut rec =
                        self.statement("simple", &text, &classified, Vec::new(), rule.as_deref());
                    if rule.is_none() && !self.on_record_first(&rec, &classified).await {
                        (rule, message) = unrecorded(&mut rec);
                    }
                    self.settle_approval(rule.is_none());
                    let limit = self.trial.take().filter(|_| rule.is_none());
                    let forward = match rule.take() {
                        Some(rule) => {
                            out::query(&self.deny(rule, classified.clone(), message.take())?)
                        }
                        None => frame.clone(),
                    };
                    let mut o = open(rec);
                    o.copy = copy.clone();
                    o.classified = Some(classified.clone());
                    let Some(limit) = limit else {
                        self.copy_possible |= may_copy(&text);
                        self.forget_if_renamed(&text);
                        self.push(Pending::Simple(o))?;
                        return Ok(forward);
                    };
                    match self.trial(forward, o, limit, to).await? {
                        // The agent has its answer from the trial itself.
                        trial::Tried::Ran => return Ok(Frame::nothing()),
                        trial::Tried::Over(rows) => self.trial_rows = rows,
                        trial::Tried::Untried(mut o) => {
                            o.rec.error = Some(
                                "not run: it could not be tried under max_rows; put to approvers"
                                    .into(),
                            );
                            self.ctx.recorder.record(Record::Statement(o.rec)).await;
                        }
                    }
                    tried = true;
                }
            }
            b'P' => {
                let mut f = Fields::new(&frame);
                let name = f.cstr().map_err(bad)?.to_string();
                let text = f.cstr().map_err(bad)?;
                let classified = self.ctx.classifier.classify(text);
                let denied = self.decide(&RuleStatement::new(&classified, text));
                let id = self.next_parse;
                self.next_parse += 1;
                let prepared = Arc::new(Prepared {
                    text: text.into(),
                    classified: classified.clone(),
                    parse: id,
                    batch: self.batch,
                });
                self.push(Pending::Parse(id))?;
                self.parses.insert(id, name.clone());
                if !self.statements.contains_key(&name) && self.statements.len() >= MAX_NAMED {
                    return Err(RelayError::TooManyNamed);
                }
                let candidates = self.statements.entry(name.clone()).or_default();
                // Until the server answers, a Parse may fail or be skipped and leave the older
                // text in place (a named statement that exists is not replaced either: 42P05).
                if candidates.len() >= MAX_CANDIDATES {
                    candidates.clear();
                    candidates.push(Prepared::unknown("re-prepared too often"));
                }
                candidates.push(prepared.clone());
                match denied {
                    Some(d) => {
                        self.record_denial(&prepared, Vec::new(), &d.rule).await;
                        let marker = self.deny(d.rule, classified, d.message)?;
                        Ok(Frame::build(b'P', |b| {
                            put_cstr(b, &name);
                            put_cstr(b, &marker);
                            b.put_i16(0);
                        }))
                    }
                    None => Ok(frame),
                }
            }
            b'B' => {
                let forward = self.bind(frame).await?;
                self.push(Pending::Bind(self.next_bind - 1))?;
                Ok(forward)
            }
            b'E' => {
                let portal = Fields::new(&frame).cstr().map_err(bad)?.to_string();
                // A named portal from an earlier batch may have been replaced behind the
                // gateway's back: SQL CLOSE and DECLARE, or a function opening a refcursor of
                // that name. Its rows are masked as those of an unknown statement.
                let replaceable = !portal.is_empty()
                    && self
                        .portals
                        .get(&portal)
                        .is_some_and(|p| p.batch < self.batch);
                let (statement, params) = match self.portals.get(&portal) {
                    // Refused at Bind (on record). In the Bind's batch the server skips this
                    // Execute, but after a Sync the name may still hold an older portal of the
                    // server's (a refused Bind leaves it, and ROLLBACK TO SAVEPOINT can undo the
                    // error): it is refused here too, never forwarded as sent.
                    Some(Portal {
                        denied: Some(rule),
                        statement,
                        params,
                        ..
                    }) => {
                        let (rule, params) = (rule.clone(), params.shown.clone());
                        let statement = statement
                            .clone()
                            .unwrap_or_else(|| Prepared::unknown("a portal refused at Bind"));
                        let rec = self.statement(
                            "extended",
                            &statement.text,
                            &statement.classified,
                            params,
                            Some(&rule),
                        );
                        let marker = self.deny(rule, statement.classified.clone(), None)?;
                        self.push(Pending::Execute(open(rec)))?;
                        return Ok(Frame::build(b'E', |b| {
                            put_cstr(b, &marker);
                            b.put_i32(0);
                        }));
                    }
                    // Bound in an earlier batch and not yet answered: if the server refuses that
                    // Bind, the name keeps its older portal, which this Execute would run. (A
                    // Bind in this batch is safe: if it fails, the server skips the Execute.)
                    Some(p)
                        if self
                            .open_binds
                            .get(&p.bind)
                            .is_some_and(|b| b.batch < self.batch) =>
                    {
                        (
                            Some(Prepared::unknown(
                                "a portal whose Bind the server has not answered yet",
                            )),
                            Params::default(),
                        )
                    }
                    Some(p) => (p.statement.clone(), p.params.clone()),
                    // A portal the gateway did not see bound (a SQL cursor was judged at its
                    // DECLARE, but the policy may have changed since): opaque.
                    None => (None, Params::default()),
                };
                let statement = statement
                    .unwrap_or_else(|| Prepared::unknown("a portal the gateway did not see bound"));
                // Judged once more: a portal bound before a reload runs under the new policy.
                let stmt = RuleStatement::new(&statement.classified, &statement.text);
                let mut denial = match self.decide(&stmt) {
                    Some(d) => Some(d),
                    None => self.mask_denial(&statement.classified).await?,
                }
                .map(|d| (d.rule, d.message));
                let mut copy = None;
                if denial.is_none() {
                    match self.copy_mask(&statement.text, &statement.classified).await {
                        Ok(c) => copy = c,
                        Err((r, m)) => denial = Some((r, Some(m))),
                    }
                }
                // Last: people are asked only about a statement nothing else refuses.
                if denial.is_none() {
                    denial = self
                        .approval(&stmt, &params, from, to)
                        .await?
                        .map(|d| (d.rule, d.message));
                }
                if let Some((rule, message)) = denial {
                    self.record_denial(&statement, params.shown, &rule).await;
                    let marker = self.deny(rule, statement.classified.clone(), message)?;
                    return Ok(Frame::build(b'E', |b| {
                        put_cstr(b, &marker);
                        b.put_i32(0);
                    }));
                }
                let rec = self.statement(
                    "extended",
                    &statement.text,
                    &statement.classified,
                    params.shown,
                    None,
                );
                let recorded = self.on_record_first(&rec, &statement.classified).await;
                self.settle_approval(recorded);
                if !recorded {
                    let mut rec = rec;
                    let (rule, message) = unrecorded(&mut rec);
                    rec.error_code = Some("42501".into());
                    rec.error = message.clone();
                    self.ctx.recorder.record(Record::Statement(rec)).await;
                    let marker = self.deny(
                        rule.unwrap_or_default(),
                        statement.classified.clone(),
                        message,
                    )?;
                    return Ok(Frame::build(b'E', |b| {
                        put_cstr(b, &marker);
                        b.put_i32(0);
                    }));
                }
                if self.plan.get(self.ctx).is_some() {
                    // The rows of an Execute come without a description; a Describe of the
                    // portal right before it tells the gateway their columns and formats.
                    self.push(Pending::Describe)?;
                    self.prefix = Some(Frame::build(b'D', |b| {
                        b.put_u8(b'P');
                        put_cstr(b, &portal);
                    }));
                }
                let mut o = open(rec);
                o.copy = copy;
                o.classified = Some(if replaceable {
                    Arc::new(Classified::opaque(
                        "a named portal bound in an earlier batch (SQL or a function may have replaced it)",
                    ))
                } else {
                    statement.classified.clone()
                });
                self.forget_if_renamed(&statement.text);
                self.copy_possible |= may_copy(&statement.text);
                self.push(Pending::Execute(o))?;
                Ok(frame)
            }
            b'S' => {
                self.push(Pending::Sync {
                    during_copy: self.copy_possible,
                })?;
                Ok(frame)
            }
            b'C' => {
                let mut f = Fields::new(&frame);
                let kind = f.u8().map_err(bad)?;
                let name = f.cstr().map_err(bad)?;
                // Forgetting is safe even if the server skips the Close: a name the gateway does
                // not know is judged as opaque at Bind.
                match kind {
                    b'S' => self.statements.remove(name).map(|_| ()),
                    b'P' => self.portals.remove(name).map(|_| ()),
                    // The server refuses it and skips to Sync; the gateway would have to guess.
                    _ => {
                        return Err(RelayError::Client(CodecError::Malformed {
                            tag: 'C',
                            what: "Close of something other than a statement (S) or portal (P)",
                        }))
                    }
                };
                self.push(Pending::Close)?;
                Ok(frame)
            }
            b'F' => {
                // The function is named by OID and runs with arbitrary arguments: opaque. Its
                // OID and arguments are what people approve (and what a retry must repeat).
                let classified = Arc::new(Classified::opaque("FunctionCall message"));
                let mut f = Fields::new(&frame);
                let oid = f.i32().map_err(bad)? as u32;
                let plan = self.plan.get(self.ctx);
                let args = bind_params(&mut f, plan.as_deref()).map_err(bad)?;
                let text = format!("<FunctionCall of function oid {oid}>");
                let stmt = RuleStatement::new(&classified, &text);
                let denied = match self.decide(&stmt) {
                    Some(d) => Some(d),
                    None => match self.mask_denial(&classified).await? {
                        Some(d) => Some(d),
                        None => self.approval(&stmt, &args, from, to).await?,
                    },
                };
                let (mut rule, mut message) = match denied {
                    Some(d) => (Some(d.rule), d.message),
                    None => (None, None),
                };
                let mut rec = self.statement(
                    "function_call",
                    &text,
                    &classified,
                    args.shown,
                    rule.as_deref(),
                );
                if rule.is_none() && !self.on_record_first(&rec, &classified).await {
                    (rule, message) = unrecorded(&mut rec);
                }
                self.settle_approval(rule.is_none());
                let forward = match rule {
                    Some(rule) => out::query(&self.deny(rule, classified, message)?),
                    None => frame,
                };
                self.push(Pending::Call(open(rec)))?;
                Ok(forward)
            }
            b'D' => {
                self.push(Pending::ClientDescribe)?;
                Ok(frame)
            }
            b'H' | b'X' | b'd' | b'c' | b'f' => Ok(frame),
            other => Err(RelayError::UnknownMessage(other as char)),
        }
    }

    /// Judges the statement a Bind refers to, again, under the policy in force now (a reload
    /// applies to the next execution). The gateway cannot always know which text the server
    /// holds under a name (a Parse the server refused or skipped leaves the older one in
    /// place), so every text the name may stand for must pass; a name the gateway never saw
    /// (SQL `PREPARE`, or forgotten after a Close) is opaque.
    async fn bind(&mut self, frame: Frame) -> Result<Frame, RelayError> {
        let bad = RelayError::Client;
        let mut f = Fields::new(&frame);
        let portal = f.cstr().map_err(bad)?.to_string();
        let statement = f.cstr().map_err(bad)?.to_string();
        let plan = self.plan.get(self.ctx);
        let params = bind_params(&mut f, plan.as_deref()).map_err(bad)?;
        let candidates = match self.statements.get(&statement) {
            // A Bind in the batch of its statement's latest Parse runs only if that Parse
            // succeeds (after an error the server skips to Sync): that text alone counts.
            Some(c)
                if c.last()
                    .is_some_and(|p| p.parse != 0 && p.batch == self.batch) =>
            {
                c[c.len() - 1..].to_vec()
            }
            Some(c) if !c.is_empty() => c.clone(),
            _ => vec![Prepared::unknown(
                "a prepared statement the gateway did not see being prepared",
            )],
        };
        let denial = candidates.iter().find_map(|p| {
            self.decide(&RuleStatement::new(&p.classified, &p.text))
                .map(|rule| (p.clone(), rule))
        });
        // The statement whose rows and COPY output are masked: when the server may hold any of
        // several texts, none can be trusted.
        let shown = match candidates.as_slice() {
            [one] => Some(one.clone()),
            _ => Some(Prepared::unknown(
                "the server may hold any of several texts under this name",
            )),
        };
        let mut forward = frame;
        if let Some((p, d)) = &denial {
            self.record_denial(p, params.shown.clone(), &d.rule).await;
            let marker = self.deny(d.rule.clone(), p.classified.clone(), d.message.clone())?;
            forward = Frame::build(b'B', |b| {
                put_cstr(b, &portal);
                put_cstr(b, &marker);
                b.put_i16(0);
                b.put_i16(0);
                b.put_i16(0);
            });
        }
        if !self.portals.contains_key(&portal) && self.portals.len() >= MAX_NAMED {
            return Err(RelayError::TooManyNamed);
        }
        let id = self.next_bind;
        self.next_bind += 1;
        let previous = self.portals.insert(
            portal.clone(),
            Portal {
                statement: shown,
                params,
                denied: denial.as_ref().map(|(_, d)| d.rule.clone()),
                bind: id,
                batch: self.batch,
            },
        );
        if self.open_binds.len() >= MAX_NAMED {
            return Err(RelayError::TooManyNamed);
        }
        self.open_binds.insert(
            id,
            OpenBind {
                portal,
                previous,
                batch: self.batch,
            },
        );
        Ok(forward)
    }

    /// SQL `PREPARE`, `DEALLOCATE` and `DISCARD` change what a statement name means on the
    /// server without a Parse the gateway sees: after a statement that may run one, every named
    /// statement the gateway knows is unknown (opaque at Bind) until it is parsed again.
    fn forget_if_renamed(&mut self, text: &str) {
        if [&b"prepare"[..], b"deallocate", b"discard"]
            .iter()
            .any(|w| contains_word(text, w))
        {
            for (name, candidates) in self.statements.iter_mut() {
                if !name.is_empty() {
                    candidates.clear();
                    candidates.push(Prepared::unknown(
                        "a statement name SQL PREPARE, DEALLOCATE or DISCARD may have changed",
                    ));
                }
            }
        }
    }

    /// Applies the server's answers to earlier Binds: a refused or skipped one leaves the portal
    /// its name held before (unless a later Bind of that name replaced it since; that one then
    /// falls back to the same earlier portal).
    fn learn_binds(&mut self) {
        if self.open_binds.is_empty() {
            return;
        }
        let answers: Vec<(u64, bool)> = std::mem::take(&mut *self.shared.bound());
        for (id, accepted) in answers {
            let Some(b) = self.open_binds.remove(&id) else {
                continue;
            };
            if accepted {
                continue;
            }
            if self.portals.get(&b.portal).is_some_and(|p| p.bind == id) {
                match b.previous {
                    Some(p) => self.portals.insert(b.portal, p),
                    None => self.portals.remove(&b.portal),
                };
            } else if let Some(later) = self
                .open_binds
                .values_mut()
                .find(|o| o.portal == b.portal && o.previous.as_ref().is_some_and(|p| p.bind == id))
            {
                later.previous = b.previous;
            }
        }
    }

    /// Applies the server's answers to earlier Parses: an accepted one is the text its name
    /// now holds (older candidates are gone), a refused or skipped one is no candidate.
    fn learn_parses(&mut self) {
        // Most messages come with no Parse waiting for its answer: skip the lock.
        if self.parses.is_empty() {
            return;
        }
        let answers: Vec<(u64, bool)> = std::mem::take(&mut *self.shared.parsed());
        for (id, accepted) in answers {
            let Some(name) = self.parses.remove(&id) else {
                continue;
            };
            if let Some(c) = self.statements.get_mut(&name) {
                if accepted {
                    c.retain(|p| p.parse >= id);
                } else {
                    c.retain(|p| p.parse != id);
                }
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

    /// Under an approval rule, asks people: `hold` waits here for their decision (the agent is
    /// told at once what it waits for), `deny_and_retry` refuses now unless this identical
    /// statement was approved. `Ok(None)`: it runs. Anything but an approval is a denial.
    async fn approval<R, W>(
        &mut self,
        stmt: &RuleStatement<'_>,
        params: &Params,
        from: &mut BufReader<R>,
        to: &mut W,
    ) -> Result<Option<Denied>, RelayError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let (classified, text) = (stmt.classified, stmt.text);
        let policy = self.ctx.policy.borrow().clone();
        let Some(rule) = policy.approval_required(&self.ctx.who(), &self.ctx.target, stmt) else {
            return Ok(None);
        };
        let Some(spec) = rule.approval.as_deref() else {
            return Ok(None);
        };
        let refuse = |message: String| {
            Ok(Some(Denied {
                rule: rule.name.clone(),
                message: Some(message),
            }))
        };
        // People approve what they are shown: a statement whose text or values the gateway
        // cannot show in full is refused, never put to them (nor keyed for a retry).
        if let Some(why) = unshowable(classified, text, params) {
            return refuse(format!(
                "agentgate: this statement needs approval (rule \"{}\"), but {why}; send its text with Parse/Query",
                rule.name
            ));
        }
        let (statement, recorded) = self.for_record(text, params.shown.clone());
        let new = NewRequest {
            session: self.ctx.session.clone(),
            issuer: self.ctx.issuer.clone(),
            subject: self.ctx.subject.clone(),
            workload: self.ctx.workload.clone(),
            target: self.ctx.target.clone(),
            protocol: "postgres".into(),
            statement,
            params: recorded,
            class: classified.class.as_str().to_string(),
            rule: rule.name.clone(),
            spec: spec.clone(),
            // Only a deny_and_retry request is ever looked up by its key.
            retry_key: match spec.mode {
                Mode::DenyAndRetry => retry_key(self.ctx, text, &params.digest),
                Mode::Hold => String::new(),
            },
            database: self.ctx.database.clone(),
            trial_rows: self.trial_rows.take(),
        };
        // Under `max_rows`, a write is tried first (see `trial`), unless it was tried already
        // (`new.trial_rows`: over the limit) or an approved retry of it waits.
        if let Some(limit) = spec.max_rows {
            if self.triable
                && new.trial_rows.is_none()
                && !self.ctx.approvals.approved_retry_waiting(&new)
            {
                self.trial = Some(limit);
                return Ok(None);
            }
        }
        let mut held = match self.ctx.approvals.submit(new) {
            Ok(Gate::Held(held)) => held,
            Ok(Gate::Pass(r)) => {
                self.approved = Some(Approved::of(&r));
                return Ok(None);
            }
            Ok(Gate::Refused(r)) => {
                return refuse(format!(
                    "agentgate: approval required: request {} (rule \"{}\") waits for {}; once it is approved, retry the identical statement within {} s",
                    r.id,
                    r.rule,
                    r.waits_for(),
                    r.retry_window_ms / 1000
                ))
            }
            Err(e @ crate::approval::ApprovalError::TooManyPending(_)) => {
                tracing::debug!(rule = rule.name, "approval refused: {e}");
                return refuse(format!(
                    "agentgate: this statement needs approval (rule \"{}\"), but {e}; wait for decisions first",
                    rule.name
                ));
            }
            Err(e) => {
                tracing::error!(rule = rule.name, "approval request not stored: {e}");
                return refuse(format!(
                    "agentgate: this statement needs approval (rule \"{}\") but the request could not be stored",
                    rule.name
                ));
            }
        };
        let r = held.request();
        self.shared.tell_agent(out::notice_with_hint(
            "NOTICE",
            "00000",
            &format!(
                "agentgate: approval required: request {} (rule \"{}\") waits for {}; held for up to {} s",
                r.id,
                r.rule,
                r.waits_for(),
                (r.expires_ms - r.created_ms) / 1000
            ),
            &format!(
                "Approvers decide with `agentgate approvals approve|deny {}` on the gateway's node, or through its HTTP admin API.",
                r.id
            ),
        ));
        // What the agent sent before this statement runs now, not after the decision.
        to.flush()
            .await
            .map_err(|e| RelayError::Upstream(CodecError::Io(e)))?;
        struct Holding<'c>(&'c Counters);
        impl Drop for Holding<'_> {
            fn drop(&mut self) {
                self.0.held.store(false, Ordering::Relaxed);
            }
        }
        self.counters.held.store(true, Ordering::Relaxed);
        let _holding = Holding(self.counters);
        enum Woke {
            Decided(Box<crate::approval::Request>),
            AgentLeft(Option<CodecError>),
            AgentSent,
            Cancelled,
        }
        let mut cancels = self.ctx.cancels.clone();
        let cancels_before = *cancels.borrow_and_update();
        let cancelled = |id: &str| {
            format!("agentgate: request {id} withdrawn: canceling statement due to user request")
        };
        let decided = loop {
            let woke = tokio::select! {
                r = held.decided() => Woke::Decided(Box::new(r)),
                () = cancel_after(&mut cancels, cancels_before) => Woke::Cancelled,
                read = from.fill_buf() => match read {
                    Ok([]) => Woke::AgentLeft(None),
                    Ok(_) => Woke::AgentSent,
                    Err(e) => Woke::AgentLeft(Some(CodecError::Io(e))),
                },
            };
            match woke {
                Woke::Decided(r) => break r,
                // A CancelRequest withdraws the request: recorded as cancelled, the agent gets
                // 57014, and the statement never runs, whatever approvers do later.
                Woke::Cancelled => {
                    let id = held.request().id.clone();
                    held.cancel("the agent cancelled the statement (CancelRequest)");
                    self.next_refusal_code = Some(SQLSTATE_CANCELED);
                    return refuse(cancelled(&id));
                }
                // Pipelined messages (a Sync behind the Execute, say) are read off the socket
                // and wait their turn, so that the agent leaving stays visible behind them.
                Woke::AgentSent if self.queued_bytes >= MAX_QUEUED_WHILE_HELD => {
                    held.cancel("the agent sent too much behind its held statement");
                    return Err(RelayError::HeldBacklog);
                }
                Woke::AgentSent => match tokio::time::timeout(
                    PARTIAL_WHILE_HELD,
                    codec::read_frame(from, self.ctx.max_message),
                )
                .await
                {
                    Err(_) => {
                        held.cancel("the agent stalled in the middle of a message while its statement was held");
                        return Err(RelayError::StalledWhileHeld);
                    }
                    Ok(Ok(Some(f))) => {
                        self.counters
                            .up
                            .fetch_add(f.bytes.len() as u64, Ordering::Relaxed);
                        self.queued_bytes += f.bytes.len();
                        self.queued.push_back(f);
                    }
                    Ok(Ok(None)) => {
                        held.cancel("the agent disconnected while its statement was held");
                        return Err(RelayError::LeftWhileHeld);
                    }
                    Ok(Err(e)) => {
                        held.cancel("the agent's connection failed while its statement was held");
                        return Err(RelayError::Client(e));
                    }
                },
                Woke::AgentLeft(e) => {
                    held.cancel("the agent disconnected while its statement was held");
                    return Err(match e {
                        None => RelayError::LeftWhileHeld,
                        Some(e) => RelayError::Client(e),
                    });
                }
            }
        };
        // A cancel that came with the decision still counts: the agent stopped waiting.
        if *self.ctx.cancels.borrow() > cancels_before {
            self.next_refusal_code = Some(SQLSTATE_CANCELED);
            return refuse(cancelled(&decided.id));
        }
        match decided.state {
            State::Approved => {
                // The policy may have changed while it waited: it runs only if the approval
                // still covers the rule in force (Request::covered_by), or none applies now.
                if let Some(d) = self.decide(stmt) {
                    return Ok(Some(d));
                }
                if let Some(d) = self.mask_denial(classified).await? {
                    return Ok(Some(d));
                }
                let policy = self.ctx.policy.borrow().clone();
                if let Some(now) = policy.approval_required(&self.ctx.who(), &self.ctx.target, stmt)
                {
                    if !now
                        .approval
                        .as_deref()
                        .is_some_and(|spec| decided.covered_by(&now.name, spec))
                    {
                        return refuse(format!(
                            "agentgate: request {} was approved, but the policy changed while it waited (rule \"{}\" now applies); send the statement again",
                            decided.id, now.name
                        ));
                    }
                }
                self.approved = Some(Approved::of(&decided));
                Ok(None)
            }
            State::Denied => {
                let by = decided
                    .votes
                    .iter()
                    .rev()
                    .find(|v| v.verdict == crate::approval::Verdict::Deny)
                    .map(|v| v.approver.clone())
                    .unwrap_or_else(|| "an approver".into());
                refuse(format!(
                    "agentgate: request {} denied by {by}: {}",
                    decided.id,
                    decided.reason.as_deref().unwrap_or("no reason given")
                ))
            }
            State::Expired => refuse(format!(
                "agentgate: request {} expired: {}",
                decided.id,
                decided.reason.as_deref().unwrap_or("no decision in time")
            )),
            State::Cancelled | State::Pending => refuse(format!(
                "agentgate: request {} {}: {}",
                decided.id,
                decided.state.as_str(),
                decided.reason.as_deref().unwrap_or("")
            )),
        }
    }

    /// Under column rules, a write or DDL statement that would copy masked values into a
    /// table (where no mask rule names them), or a statement the gateway cannot read (which
    /// may hand them back any way it likes), is denied. Judged where a statement runs (Query,
    /// Execute); the tables it reads are resolved through the catalog, views and partitions
    /// included.
    async fn mask_denial(&self, classified: &Classified) -> Result<Option<Denied>, RelayError> {
        let Some(plan) = self.plan.get(self.ctx).filter(|p| p.has_columns()) else {
            return Ok(None);
        };
        if classified.class == Class::Read {
            return Ok(None);
        }
        if classified.class == Class::Ddl {
            self.ctx.catalog.ddl_in_flight();
        }
        let rels = if classified.class == Class::Opaque
            || (classified.source_columns.is_empty() && classified.set_columns.is_empty())
        {
            Vec::new()
        } else if self.ctx.catalog.uncommitted_ddl() {
            // DDL of this session's open transaction (or of this very message) is invisible
            // to the gateway's catalog connection: the names cannot be resolved.
            vec![None]
        } else {
            resolve_tables(self.ctx, classified).await?
        };
        let Some(rule) = plan.copy_taint(classified, &rels) else {
            return Ok(None);
        };
        let what = if classified.class == Class::Opaque {
            // Say what made it unreadable: a plain SELECT calling set_config is not a DO block.
            let why = classified.note.as_deref().unwrap_or("unclassified");
            format!("the gateway cannot read this statement ({why}), so it may return masked values unmasked")
        } else {
            "this statement would copy masked values where no mask rule covers them".to_owned()
        };
        Ok(Some(Denied {
            rule: plan.rule_name(rule).to_string(),
            message: Some(format!(
                "agentgate: {what} (mask rule \"{}\")",
                plan.rule_name(rule)
            )),
        }))
    }

    /// Under a mask plan, how the COPY output of a statement is masked: `Ok(None)` when it is
    /// no COPY to the agent, `Err((rule, message))` when its output cannot be masked.
    async fn copy_mask(
        &mut self,
        text: &str,
        c: &Classified,
    ) -> Result<Option<Arc<CopyMask>>, (String, String)> {
        let Some(plan) = self.plan.get(self.ctx) else {
            return Ok(None);
        };
        if !text
            .as_bytes()
            .windows(4)
            .any(|w| w.eq_ignore_ascii_case(b"copy"))
        {
            return Ok(None);
        }
        let refuse =
            |rule: usize, why: &str| Err((plan.rule_name(rule).to_string(), why.to_string()));
        let lookup_failed = |e: &CatalogError| {
            tracing::warn!("COPY columns for masking: {e}");
            refuse(
                0,
                "the gateway cannot look up the tables of this COPY to mask its output",
            )
        };
        match copy_out(text) {
            CopyOut::No => Ok(None),
            CopyOut::Binary => refuse(0, "binary COPY output cannot be masked; use text format"),
            // Whether the lines may hold masked values is decided as for computed columns:
            // by the relations the statement reads, views and partitions included.
            CopyOut::Lines => match self.ctx.catalog.resolve(&table_names(c)).await {
                Ok(rels) => match plan.covering_rule(&rels) {
                    Some(r) => refuse(
                        r,
                        "the columns of COPY (query) or CSV output cannot be matched to mask rules; use SELECT, or text-format COPY of a table",
                    ),
                    None => Ok(Some(Arc::new(CopyMask::lines(plan.clone())))),
                },
                Err(e) => lookup_failed(&e),
            },
            CopyOut::Table {
                schema,
                table,
                columns,
                delimiter,
            } => match self.ctx.catalog.resolve(&[(schema, table)]).await.as_deref() {
                Ok([Some(rel)]) => {
                    let cols = columns.unwrap_or_else(|| rel.column_names());
                    Ok(Some(Arc::new(CopyMask::table(
                        plan.clone(),
                        rel,
                        &cols,
                        delimiter,
                    ))))
                }
                // Not found, or an unqualified name that several schemas have (the session's
                // search_path picks one): its columns are unknown unless none of them is masked.
                Ok(rels) => match plan.covering_rule(rels) {
                    Some(r) => refuse(r, "the gateway cannot tell which table this COPY reads (not found, or its name is in several schemas) to mask its output; qualify it with its schema"),
                    None => Ok(Some(Arc::new(CopyMask::lines(plan.clone())))),
                },
                Err(e) => lookup_failed(e),
            },
        }
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

/// "The identical statement from the same identity": the principal, the target, the statement
/// as pg_query prints it back (case and spacing do not matter, constants do) and the parameters.
fn retry_key(ctx: &SessionContext<'_>, text: &str, params: &[u8; 32]) -> String {
    use sha2::{Digest, Sha256};
    let canonical = pg_query::parse(text, pg_query::ParserOptions::DEFAULT)
        .and_then(|tree| tree.deparse(Default::default()))
        .unwrap_or_else(|_| text.split_whitespace().collect::<Vec<_>>().join(" "));
    let mut h = Sha256::new();
    for part in [
        &ctx.issuer,
        &ctx.subject,
        &ctx.workload,
        &ctx.target,
        &ctx.database,
        &canonical,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.update(params);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a statement cannot be put to approvers as it will run, if it cannot.
fn unshowable(c: &Classified, text: &str, params: &Params) -> Option<&'static str> {
    if text.trim().is_empty() {
        return Some("the gateway does not know its text (a statement prepared with SQL PREPARE or not seen prepared, a portal not seen bound, or a name that may stand for several texts)");
    }
    if c.note
        .as_deref()
        .is_some_and(|n| n.starts_with("EXECUTE of a prepared statement"))
    {
        return Some("SQL EXECUTE runs a prepared statement whose text is not in the query");
    }
    if params.cut {
        return Some("a parameter is too long to show in full");
    }
    None
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

/// The parameter values of a Bind, as text for the record: text-format values as they are,
/// binary ones as `\x` hex, each cut at [`PARAM_CAP`] bytes. Under a mask plan, binary values
/// are scanned by the detectors before they are hex-encoded (the record must not hold in hex
/// what it may not hold as text).
fn bind_params(f: &mut Fields<'_>, plan: Option<&Plan>) -> Result<Params, CodecError> {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    let mut cut_any = false;
    let nformats = f.count()?;
    let mut formats = Vec::with_capacity(nformats.min(64));
    for _ in 0..nformats {
        formats.push(f.i16()?);
    }
    let n = f.count()?;
    let mut params = Vec::with_capacity(n.min(1024));
    for i in 0..n {
        let len = f.i32()?;
        if len < 0 {
            digest.update([i as u8, 2]);
            params.push(None);
            continue;
        }
        let value = f.take(len as usize)?;
        let binary = match formats.len() {
            0 => false,
            1 => formats[0] == 1,
            _ => formats.get(i).copied().unwrap_or(0) == 1,
        };
        // The whole value and its format: what "the same parameters" means for a retry.
        digest.update([i as u8, binary as u8]);
        digest.update((value.len() as u64).to_be_bytes());
        digest.update(value);
        let masked = match (binary, plan) {
            (true, Some(plan)) => {
                let mut hits = Vec::new();
                plan.detect_in_line(value, &mut hits, |r| r)
            }
            _ => None,
        };
        let value = masked.as_deref().unwrap_or(value);
        let cut = &value[..value.len().min(PARAM_CAP)];
        let mut s = if binary {
            bytea_hex(cut)
        } else {
            String::from_utf8_lossy(cut).into_owned()
        };
        if value.len() > PARAM_CAP {
            s.push('…');
            cut_any = true;
        }
        params.push(Some(s));
    }
    Ok(Params {
        shown: params,
        digest: digest.finalize().into(),
        cut: cut_any,
    })
}

/// The parameter values of a Bind or FunctionCall: as shown (and recorded), and as they are.
#[derive(Clone, Default)]
struct Params {
    /// Each cut at [`PARAM_CAP`] bytes, binary ones as `\x` hex.
    shown: Vec<Option<String>>,
    /// SHA-256 of every value in full with its format.
    digest: [u8; 32],
    /// Some value is longer than what is shown.
    cut: bool,
}

/// Target → agent: forwards everything, rewrites the server's errors for denied statements and
/// completes the statement records.
async fn downward<R, W>(
    ctx: &SessionContext<'_>,
    shared: &Shared,
    counters: &Counters,
    mut from: BufReader<R>,
    to: &mut W,
) -> Result<Ended, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let io = |e| RelayError::Client(CodecError::Io(e));
    let mut masking = Masking::default();
    let mut kept = Kept::default();
    // An extended-protocol message failed: the server skips every message up to the next Sync,
    // a Query or FunctionCall sent inside the batch too.
    let mut skipping_to_sync = false;
    let mut held = trial::Held::default();
    // The statement at the front started COPY FROM STDIN (CopyInResponse): Syncs the agent sent
    // during it were ignored by the server (see `Pending::Sync`).
    let mut copy_in = false;
    loop {
        // Between the target's messages, the gateway's own for the agent (an approval notice
        // while a statement is held) go out at once.
        if from.buffer().is_empty() {
            let notice = tokio::select! {
                biased;
                _ = shared.notice_ready.notified() => true,
                r = from.fill_buf() => {
                    r.map_err(|e| RelayError::Upstream(CodecError::Io(e)))?;
                    false
                }
            };
            if notice {
                for n in shared.take_notices() {
                    to.write_all(&n.bytes).await.map_err(io)?;
                }
                to.flush().await.map_err(io)?;
                continue;
            }
        }
        let Some(mut frame) = codec::read_frame(&mut from, ctx.max_message)
            .await
            .map_err(RelayError::Upstream)?
        else {
            to.flush().await.map_err(io)?;
            return Ok(Ended::Upstream);
        };
        counters
            .down
            .fetch_add(frame.bytes.len() as u64, Ordering::Relaxed);
        let mut done = Vec::new();
        let mut forward = true;
        // Frames for the agent before this one (a trial's answer released by its decision).
        let mut before: Vec<Frame> = Vec::new();
        let holding = {
            let q = shared.pending();
            // Fail closed: an answer that fits nothing sent means the pairing of answers and
            // statements (masking, denials, the record) is lost.
            if let Some(what) = out_of_step(&frame, &q) {
                return Err(RelayError::OutOfStep(what));
            }
            match q.front() {
                Some(Pending::Trial { .. }) => Holding::Trial,
                Some(Pending::Own(_)) => Holding::Own,
                _ => Holding::Nothing,
            }
        };
        match frame.tag() {
            // The gateway's own rows (a trial's count) are neither masked nor the agent's.
            b'D' if matches!(holding, Holding::Own) => {}
            b'D' => {
                if let Some(new) = masking.row(ctx, &frame).map_err(RelayError::Upstream)? {
                    frame = new;
                }
                kept.row(ctx.results_cap, &frame);
            }
            b'd' => {
                if let Some(new) = masking.copy_data(&frame) {
                    frame = new;
                }
            }
            b'T' | b'n' => {
                let (front, classified) = {
                    let mut q = shared.pending();
                    let front = match q.front() {
                        Some(Pending::Describe) => {
                            q.pop_front();
                            Describer::Gateway
                        }
                        Some(Pending::ClientDescribe) => {
                            q.pop_front();
                            Describer::Agent
                        }
                        Some(Pending::Simple(_))
                        | Some(Pending::Call(_))
                        | Some(Pending::Trial { .. }) => Describer::Query,
                        _ => Describer::Agent,
                    };
                    // The statement the rows belong to (after the gateway's Describe: the
                    // Execute it was sent for).
                    let classified = match q.front() {
                        Some(Pending::Simple(o))
                        | Some(Pending::Execute(o))
                        | Some(Pending::Trial { open: o, .. }) => o.classified.clone(),
                        _ => None,
                    };
                    (front, classified)
                };
                // The agent's own Describe of a statement says nothing of the formats its
                // rows will have; only a query's description and the gateway's own count.
                if front != Describer::Agent {
                    masking.describe(ctx, &frame, classified.as_deref()).await?;
                }
                forward = front != Describer::Gateway;
            }
            b'H' => {
                let planned = match shared.pending().front() {
                    Some(Pending::Simple(o)) | Some(Pending::Execute(o)) => Some(o.copy.clone()),
                    _ => None,
                };
                masking.copy_out(ctx, planned.flatten())?;
            }
            b'c' => masking.copy = None,
            b'G' => copy_in = true,
            b'3' => {
                let mut q = shared.pending();
                if let Some(Pending::Close) = q.front() {
                    q.pop_front();
                }
            }
            b'1' => {
                let mut q = shared.pending();
                if let Some(Pending::Parse(id)) = q.front() {
                    shared.parsed().push((*id, true));
                    q.pop_front();
                }
            }
            b'2' => {
                let mut q = shared.pending();
                if let Some(Pending::Bind(id)) = q.front() {
                    shared.bound().push((*id, true));
                    q.pop_front();
                }
            }
            b'C' => {
                masking.end_of_result();
                let rows = command_rows(&frame);
                let mut q = shared.pending();
                let ddl = match q.front() {
                    Some(Pending::Execute(o)) | Some(Pending::Simple(o)) => o.rec.class == "ddl",
                    _ => false,
                };
                if ddl {
                    // A rename or a redefined view changes what column origins mean.
                    ctx.catalog.invalidate();
                    masking.ddl_in_transaction = true;
                }
                match q.front_mut() {
                    Some(Pending::Execute(_)) => {
                        if let Some(Pending::Execute(mut o)) = q.pop_front() {
                            o.rec.rows = rows;
                            done.push(o);
                        }
                        drop_ignored_syncs(&mut q, &mut copy_in, false)?;
                    }
                    Some(Pending::Simple(o))
                    | Some(Pending::Call(o))
                    | Some(Pending::Trial { open: o, .. }) => {
                        if let Some(r) = rows {
                            o.rec.rows = Some(o.rec.rows.unwrap_or(0).saturating_add(r));
                        }
                    }
                    _ => {}
                }
            }
            b'I' | b's' => {
                masking.end_of_result();
                let mut q = shared.pending();
                if let Some(Pending::Execute(_)) = q.front() {
                    if let Some(Pending::Execute(mut o)) = q.pop_front() {
                        o.rec.rows = Some(0).filter(|_| frame.tag() == b'I').or(o.rec.rows);
                        done.push(o);
                    }
                }
            }
            b'N' => {
                let notice = Notice::parse(&frame).map_err(RelayError::Upstream)?;
                let raised_by = |judged| raiser(&shared.pending(), judged);
                if let Some((new, _)) = masking.notice(ctx, b'N', &notice, raised_by).await {
                    frame = new;
                }
            }
            b'E' => {
                masking.end_of_result();
                let notice = Notice::parse(&frame).map_err(RelayError::Upstream)?;
                let raised_by = |judged| raiser(&shared.pending(), judged);
                let (code, message) = match denial_of(shared, &notice) {
                    Some(d) => {
                        let message = d.message.unwrap_or_else(|| denial_message(&d.rule));
                        let message = if message.starts_with("agentgate:") {
                            message
                        } else {
                            format!("agentgate: {message} (rule \"{}\")", d.rule)
                        };
                        let detail = describe(&d.classified);
                        frame = out::error("ERROR", d.code, &message, Some(&detail));
                        (d.code.to_string(), message)
                    }
                    None => match masking.notice(ctx, b'E', &notice, raised_by).await {
                        Some((new, masked)) => {
                            frame = new;
                            (masked.sqlstate().to_string(), masked.message().to_string())
                        }
                        None => (notice.sqlstate().to_string(), notice.message().to_string()),
                    },
                };
                let mut q = shared.pending();
                // The error of a Parse, Bind or Describe (the gateway's or the agent's) ends the
                // batch; the statement it was for is recorded with it.
                let mut extended = false;
                while let Some(
                    Pending::Parse(_)
                    | Pending::Bind(_)
                    | Pending::Close
                    | Pending::Describe
                    | Pending::ClientDescribe,
                ) = q.front()
                {
                    extended = true;
                    match q.pop_front() {
                        Some(Pending::Parse(id)) => shared.parsed().push((id, false)),
                        Some(Pending::Bind(id)) => shared.bound().push((id, false)),
                        _ => {}
                    }
                }
                match q.front_mut() {
                    Some(Pending::Execute(_)) => {
                        extended = true;
                        if let Some(Pending::Execute(mut o)) = q.pop_front() {
                            o.rec.error_code = Some(code);
                            o.rec.error = Some(message);
                            done.push(o);
                        }
                        drop_ignored_syncs(&mut q, &mut copy_in, true)?;
                    }
                    // The first error of a Query is its outcome; a Query behind a failed
                    // message of its batch is skipped, not failed.
                    Some(Pending::Simple(o))
                    | Some(Pending::Call(o))
                    | Some(Pending::Trial { open: o, .. })
                        if !extended && o.rec.error.is_none() =>
                    {
                        o.rec.error_code = Some(code);
                        o.rec.error = Some(message);
                    }
                    // The COMMIT that ends a trial failed (a deferred constraint): the
                    // statement's outcome is that error.
                    Some(Pending::Own(trial::Finish::Deliver)) => {
                        if let Some(o) = held.open.as_mut().filter(|o| o.rec.error.is_none()) {
                            o.rec.error_code = Some(code);
                            o.rec.error = Some(message);
                        }
                    }
                    _ => {}
                }
                if extended {
                    skipping_to_sync = true;
                    shared.skipping.store(true, Ordering::Relaxed);
                }
            }
            b'S' => {
                // However a setting changed (SET, set_config in a function, ALTER ROLE … SET
                // in force at login), the session cannot go on once SQL text would be read
                // differently by the server than by the gateway.
                let (name, value) =
                    codec::parameter_status(&frame).map_err(RelayError::Upstream)?;
                if !codec::lexer_safe(&name, &value) {
                    return Err(RelayError::UnsafeSetting(name, value));
                }
                // A reported setting can carry a value (application_name set from a column).
                if let Some(plan) = masking.plan.get(ctx) {
                    let masked = plan.mask_str(&value);
                    if masked != value {
                        frame = Frame::build(b'S', |b| {
                            put_cstr(b, &name);
                            put_cstr(b, &masked);
                        });
                    }
                }
            }
            b'V' => {
                // A FunctionCall's result (allowed only when no column rule applies): a value
                // the detectors flag is not sent at all.
                if let Some(plan) = masking.plan.get(ctx) {
                    let mut f = Fields::new(&frame);
                    let len = f.i32().map_err(RelayError::Upstream)?;
                    if len > 0 {
                        let value = f.take(len as usize).map_err(RelayError::Upstream)?;
                        if plan.detect(value, &mut masking.hits).is_some() {
                            frame = Frame::build(b'V', |b| b.put_i32(-1));
                        }
                    }
                }
            }
            b'A' => {
                // A notification's payload is any text another session (or this one) chose.
                if let Some(plan) = masking.plan.get(ctx) {
                    let mut f = Fields::new(&frame);
                    let pid = f.i32().map_err(RelayError::Upstream)?;
                    let channel = f.cstr().map_err(RelayError::Upstream)?;
                    let payload = f.cstr().map_err(RelayError::Upstream)?;
                    let (c, p) = (plan.mask_str(channel), plan.mask_str(payload));
                    if c != channel || p != payload {
                        frame = Frame::build(b'A', |b| {
                            b.put_i32(pid);
                            put_cstr(b, &c);
                            put_cstr(b, &p);
                        });
                    }
                }
            }
            b'Z' => {
                masking.end_of_result();
                if frame.body().first() == Some(&b'I') {
                    masking.ddl_in_transaction = false;
                }
                shared.status.store(
                    frame.body().first().copied().unwrap_or(b'E'),
                    Ordering::Relaxed,
                );
                let mut q = shared.pending();
                // While skipping, this ReadyForQuery answers the Sync: everything before it was
                // skipped, Queries included. Otherwise it ends a Query, or a batch's Sync.
                let skipped = std::mem::take(&mut skipping_to_sync);
                shared.skipping.store(false, Ordering::Relaxed);
                if matches!(q.front(), Some(Pending::Trial { .. } | Pending::Own(_))) {
                    // A trial's answer, or the gateway's own statement around it (`trial`).
                    if let Some(p) = q.pop_front() {
                        forward = held.answered(p, shared, &mut before, &mut done);
                    }
                } else {
                    while let Some(p) = q.pop_front() {
                        match p {
                            Pending::Describe | Pending::ClientDescribe | Pending::Close => {}
                            Pending::Bind(id) => shared.bound().push((id, false)),
                            // Skipped after an error in its batch.
                            Pending::Parse(id) => shared.parsed().push((id, false)),
                            Pending::Execute(mut o) => {
                                // Skipped by the server after an earlier error in the batch.
                                o.rec.error = Some(NOT_EXECUTED.into());
                                done.push(o);
                            }
                            Pending::Simple(mut o) | Pending::Call(mut o) if skipped => {
                                o.rec.error = Some(NOT_EXECUTED.into());
                                done.push(o);
                            }
                            Pending::Simple(o) | Pending::Call(o) => {
                                let failed = o.rec.error.is_some();
                                done.push(o);
                                drop_ignored_syncs(&mut q, &mut copy_in, failed)?;
                                break;
                            }
                            Pending::Sync { .. } => break,
                            // Not reached (a trial starts only with nothing pending): left for
                            // the ReadyForQuery that is its own.
                            p @ (Pending::Trial { .. } | Pending::Own(_)) => {
                                q.push_front(p);
                                break;
                            }
                        }
                    }
                }
                if frame.body().first() == Some(&b'I') && q.is_empty() {
                    ctx.catalog.idle();
                }
            }
            _ => {}
        }
        // A trial's answer waits for the gateway's decision; the answers to the gateway's own
        // statements are its own (settings and notifications still reach the agent).
        if frame.tag() != b'Z' && forward {
            match holding {
                Holding::Trial => {
                    held.frames.push(frame.clone());
                    forward = false;
                }
                Holding::Own if !matches!(frame.tag(), b'S' | b'A') => {
                    match frame.tag() {
                        b'E' => held.errors.push(frame.clone()),
                        b'D' => held.count = trial::changed_of(&frame),
                        _ => {}
                    }
                    forward = false;
                }
                _ => {}
            }
        }
        for f in before {
            to.write_all(&f.bytes).await.map_err(io)?;
        }
        if forward {
            to.write_all(&frame.bytes).await.map_err(io)?;
        }
        for mut o in done {
            // Rows arrive before the completion of the statement they belong to.
            kept.hand_to(&mut o.rec);
            o.rec.duration_us = Some(o.started.elapsed().as_micros() as u64);
            ctx.recorder.record(Record::Statement(o.rec)).await;
        }
        if from.buffer().is_empty() {
            to.flush().await.map_err(io)?;
        }
    }
}

/// Whose answer the target is sending (see [`trial`]).
enum Holding {
    Nothing,
    Trial,
    Own,
}

/// PostgreSQL's `query_canceled`.
const SQLSTATE_CANCELED: &str = "57014";

/// Resolves once a CancelRequest beyond the first `before` reached the session; never, once
/// the session's cancel key is gone.
async fn cancel_after(cancels: &mut watch::Receiver<u64>, before: u64) {
    if cancels.wait_for(|n| *n > before).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// After a statement that ran COPY FROM STDIN ended: the Syncs the agent sent during the copy
/// got no answer (the server ignores them in copy-in mode) and leave the queue. If the COPY
/// failed, the server may have left copy-in mode before reading them (an error before the
/// first row, or at a bad row) and answered them: which ones it answered cannot be known, so
/// the session ends rather than guess (fail closed).
fn drop_ignored_syncs(
    q: &mut VecDeque<Pending>,
    copy_in: &mut bool,
    failed: bool,
) -> Result<(), RelayError> {
    if std::mem::take(copy_in) {
        if failed && matches!(q.front(), Some(Pending::Sync { during_copy: true })) {
            return Err(RelayError::OutOfStep(
                "a Sync sent during a COPY FROM STDIN that failed",
            ));
        }
        while let Some(Pending::Sync { during_copy: true }) = q.front() {
            q.pop_front();
        }
    }
    Ok(())
}

/// `Some(what)` when `frame` answers nothing at the front of `q` (see [`RelayError::OutOfStep`]).
fn out_of_step(frame: &Frame, q: &VecDeque<Pending>) -> Option<&'static str> {
    use Pending as P;
    let front = q.front();
    let statement = matches!(
        front,
        Some(P::Simple(_) | P::Execute(_) | P::Trial { .. } | P::Own(_))
    );
    let fits = match frame.tag() {
        b'1' => matches!(front, Some(P::Parse(_))),
        b'2' => matches!(front, Some(P::Bind(_))),
        b'3' => matches!(front, Some(P::Close)),
        b'D' | b'C' | b'd' | b'c' | b'H' | b'G' | b'W' | b'I' => statement,
        b's' => matches!(front, Some(P::Execute(_))),
        b'T' => {
            statement && !matches!(front, Some(P::Execute(_)))
                || matches!(front, Some(P::Describe | P::ClientDescribe | P::Call(_)))
        }
        b'n' => matches!(front, Some(P::Describe | P::ClientDescribe)),
        b't' => matches!(front, Some(P::ClientDescribe)),
        b'V' => matches!(front, Some(P::Call(_))),
        b'Z' => q.iter().any(|p| {
            matches!(
                p,
                P::Simple(_) | P::Call(_) | P::Sync { .. } | P::Trial { .. } | P::Own(_)
            )
        }),
        // An error with nothing sent is only the server ending the session.
        b'E' => {
            front.is_some() || {
                let f = frame.body();
                f.windows(7).any(|w| w == b"SFATAL\0") || f.windows(7).any(|w| w == b"SPANIC\0")
            }
        }
        _ => true,
    };
    (!fits).then(|| match frame.tag() {
        b'1' => "ParseComplete",
        b'2' => "BindComplete",
        b'3' => "CloseComplete",
        b'D' => "DataRow",
        b'C' => "CommandComplete",
        b'T' => "RowDescription",
        b'n' => "NoData",
        b't' => "ParameterDescription",
        b'V' => "FunctionCallResponse",
        b'Z' => "ReadyForQuery",
        b'E' => "ErrorResponse",
        b's' => "PortalSuspended",
        _ => "a COPY or empty-query answer",
    })
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

/// The outcome of a statement the server skipped after an earlier message of its batch failed.
const NOT_EXECUTED: &str = "not executed: an earlier message of the batch failed";

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
) -> Result<Vec<Option<Arc<crate::mask::catalog::Relation>>>, RelayError> {
    ctx.catalog.resolve(&table_names(c)).await.map_err(|e| {
        RelayError::Unmaskable(format!(
            "cannot resolve the tables of a statement for masking: {e}"
        ))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Describer {
    /// The gateway's Describe before an Execute.
    Gateway,
    /// The agent's Describe.
    Agent,
    /// A simple Query (or FunctionCall) describing its own result.
    Query,
}

/// What the rows now arriving are, for masking.
#[derive(Default)]
enum Rows {
    /// No description seen for them.
    #[default]
    Undescribed,
    /// Described, and nothing in them is masked.
    Plain,
    Masked(ResultMask),
}

/// The downward side's masking state.
#[derive(Default)]
struct Masking {
    /// The session ran DDL in the open transaction: the gateway's own catalog connection
    /// cannot see it, so column origins are not known until the transaction ends.
    ddl_in_transaction: bool,
    plan: PlanCache,
    rows: Rows,
    copy: Option<Arc<CopyMask>>,
    hits: Vec<Hit>,
    texts: TextGuard,
}

impl Masking {
    fn end_of_result(&mut self) {
        self.rows = Rows::Undescribed;
        self.copy = None;
    }

    /// A RowDescription (or NoData) for the rows that follow.
    async fn describe(
        &mut self,
        ctx: &SessionContext<'_>,
        frame: &Frame,
        statement: Option<&Classified>,
    ) -> Result<(), RelayError> {
        self.rows = Rows::Plain;
        let Some(plan) = self.plan.get(ctx) else {
            return Ok(());
        };
        if frame.tag() != b'T' {
            return Ok(());
        }
        if self.ddl_in_transaction && plan.has_columns() {
            self.rows = Rows::Masked(ResultMask::unknown(plan));
            return Ok(());
        }
        let fields = row::fields(frame).map_err(RelayError::Upstream)?;
        let needed = row::origins_needed(&fields);
        let relations = if plan.has_columns() && !needed.is_empty() {
            ctx.catalog.relations(&needed).await.map_err(|e| {
                RelayError::Unmaskable(format!("cannot resolve column origins for masking: {e}"))
            })?
        } else {
            HashMap::new()
        };
        // Rows of a statement the gateway did not see are judged as if it could output anything.
        let unknown = Classified::opaque("rows of an unknown statement");
        let statement = statement.unwrap_or(&unknown);
        let expressions = fields.iter().any(|f| f.table == 0 || f.attnum <= 0);
        let taint = if !plan.has_columns() || !expressions {
            None
        } else {
            let rels = if statement.output_columns.is_empty() {
                Vec::new()
            } else {
                resolve_tables(ctx, statement).await?
            };
            plan.output_taint(statement, &rels)
        };
        let mask = ResultMask::new(plan, &fields, &relations, taint)
            .map_err(|e| RelayError::Unmaskable(e.to_string()))?;
        if !mask.is_noop() {
            self.rows = Rows::Masked(mask);
        }
        Ok(())
    }

    fn row(
        &mut self,
        ctx: &SessionContext<'_>,
        frame: &Frame,
    ) -> Result<Option<Frame>, CodecError> {
        match &self.rows {
            Rows::Plain => Ok(None),
            // Masked under the plan of its description, even if a reload came in between.
            Rows::Masked(m) => m.apply(frame, &mut self.hits),
            // Rows of an Execute sent while no mask rule applied; a reload applies from the
            // next result on, unless it came between the statement and its first row (then
            // nothing is known of the columns: every value is nulled).
            Rows::Undescribed => match self.plan.get(ctx) {
                Some(plan) => {
                    let mask = ResultMask::unknown(plan);
                    let masked = mask.apply(frame, &mut self.hits);
                    self.rows = Rows::Masked(mask);
                    masked
                }
                None => {
                    self.rows = Rows::Plain;
                    Ok(None)
                }
            },
        }
    }

    fn copy_out(
        &mut self,
        ctx: &SessionContext<'_>,
        planned: Option<Arc<CopyMask>>,
    ) -> Result<(), RelayError> {
        self.copy = planned;
        if self.copy.is_none() && self.plan.get(ctx).is_some() {
            return Err(RelayError::Unmaskable(
                "COPY output that was not planned for masking (the policy changed while it ran)"
                    .into(),
            ));
        }
        Ok(())
    }

    fn copy_data(&mut self, frame: &Frame) -> Option<Frame> {
        let copy = self.copy.clone()?;
        let line = copy.apply(frame.body(), &mut self.hits)?;
        Some(Frame::build(b'd', |b| b.put_slice(&line)))
    }

    /// An error or notice: hidden whole when it may come from a masked column (see
    /// [`crate::mask::hide`]), else with the values it quotes masked. `raiser` says what it
    /// comes from (given the statement run already judged), looked up only under column rules.
    async fn notice(
        &mut self,
        ctx: &SessionContext<'_>,
        tag: u8,
        notice: &Notice,
        raiser: impl FnOnce(Option<u64>) -> Raiser,
    ) -> Option<(Frame, Notice)> {
        let plan = self.plan.get(ctx)?;
        if plan.has_columns() {
            let raiser = raiser(self.texts.judged(&plan));
            let ddl = self.ddl_in_transaction;
            if self.texts.hides(&plan, &ctx.catalog, &raiser, ddl).await {
                return Some(hide_notice(tag, notice));
            }
        }
        mask_notice(&plan, tag, notice)
    }
}

/// What an error or notice arriving now comes from: the message at the front of the queue,
/// which the server is answering. A Bind's is judged by the Execute behind it in its batch
/// (binding plans the statement); a Sync first is the end of a batch, where the server commits.
/// The text of the `judged` statement run is not copied again.
fn raiser(q: &VecDeque<Pending>, judged: Option<u64>) -> Raiser {
    let statement = |o: &Open| match &o.classified {
        Some(c) => Raiser::Statement {
            seq: o.rec.seq,
            classified: c.clone(),
            text: (judged != Some(o.rec.seq)).then(|| o.rec.text.clone()),
        },
        None => Raiser::Unknown,
    };
    match q.front() {
        None => Raiser::Idle,
        Some(Pending::Parse(_) | Pending::Describe | Pending::ClientDescribe) => Raiser::Preparing,
        Some(
            Pending::Simple(o)
            | Pending::Execute(o)
            | Pending::Call(o)
            | Pending::Trial { open: o, .. },
        ) => statement(o),
        Some(Pending::Own(_)) => Raiser::Unknown,
        Some(Pending::Sync { .. } | Pending::Close) => Raiser::Unknown,
        Some(Pending::Bind(_)) => q
            .iter()
            .skip(1)
            .find(|p| !matches!(p, Pending::Describe | Pending::ClientDescribe))
            .and_then(|p| match p {
                Pending::Execute(o) => Some(statement(o)),
                _ => None,
            })
            .unwrap_or(Raiser::Unknown),
    }
}

/// The denial an error stands for, if it is the failure of one of this session's substitutes.
fn denial_of(shared: &Shared, notice: &Notice) -> Option<Denial> {
    let message = notice.message();
    let at = message.find(&shared.marker)? + shared.marker.len();
    let hex = message.get(at..at + 16)?;
    let key = u64::from_str_radix(hex, 16).ok()?;
    shared.denials().remove(&key)
}

fn describe(c: &Classified) -> String {
    let mut s = format!("statement class: {}", c.class.as_str());
    if !c.tables.is_empty() {
        let t: Vec<String> = c.tables.iter().map(|t| t.to_string()).collect();
        s.push_str(&format!("; tables: {}", t.join(", ")));
    }
    if c.class == Class::Opaque {
        if let Some(n) = &c.note {
            s.push_str(&format!("; {n}"));
        }
    }
    s
}

/// The row count at the end of a CommandComplete tag (`SELECT 3`, `INSERT 0 5`, `COPY 10`).
fn command_rows(frame: &Frame) -> Option<u64> {
    let tag = Fields::new(frame).cstr().ok()?;
    let last = tag.rsplit(' ').next()?;
    if tag.contains(' ') {
        last.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::postgres::classify::classify;

    use crate::record::NullStore;

    /// An approval service over a throwaway store (the test policy has no approval rules).
    fn test_approvals() -> Arc<Approvals> {
        let dir = tempfile::tempdir().unwrap();
        let (_tx, policy) = watch::channel(denying_policy());
        let events = Arc::new(crate::record::EventSink::disabled());
        let a = Approvals::open(
            crate::record::Db::open(&dir.path().join("a.db")).unwrap(),
            crate::approval::Notifier::new(policy, None, events.clone()),
            events,
        )
        .unwrap();
        // The store stays open on the unlinked file.
        drop(dir);
        a
    }

    /// A policy whose statement rule denies DDL (and so every opaque statement) on target `t`.
    fn denying_policy() -> Arc<Policy> {
        static POLICY: std::sync::OnceLock<Arc<Policy>> = std::sync::OnceLock::new();
        POLICY
            .get_or_init(|| {
                let dir = tempfile::tempdir().unwrap();
                std::fs::write(
                    dir.path().join("p.yaml"),
                    "version: 2\nidentity_providers:\n  - name: i\n    issuer: i\n    audiences: [a]\n    jwks: {from: file, path: /nonexistent}\n    algorithms: [RS256]\n\
                     targets:\n  - name: t\n    protocol: postgres\n    addresses: [127.0.0.3]\n    ports: [5432]\n    credential: {from: env, name: X}\n    postgres: {user: u, upstream_tls: {mode: disable}}\n\
                     rules:\n  - name: no-ddl\n    effect: deny\n    targets: [t]\n    statements: {classes: [ddl]}\n",
                )
                .unwrap();
                Arc::new(crate::policy::load_dir(dir.path()).unwrap())
            })
            .clone()
    }

    proptest::proptest! {
        /// Whatever an agent sends, each message is forwarded, replaced or refused with an
        /// error; the relay's decoding never panics, and a Query or Parse the classifier cannot
        /// read is never forwarded as it was (the statement rule denies opaque statements).
        #[test]
        fn arbitrary_client_messages_never_panic(
            msgs in proptest::collection::vec(
                (
                    proptest::sample::select(b"QPBECFSDHXdcfpy".to_vec()),
                    // Mostly well-formed fields (SQL-ish strings, each NUL-terminated), then
                    // arbitrary bytes: enough structure to reach the decisions, not only the
                    // decoding errors.
                    "[a-zA-Z0-9 ;$'()*_.-]{0,40}",
                    "[a-zA-Z0-9 ;$'()*_.-]{0,40}",
                    proptest::collection::vec(proptest::num::u8::ANY, 0..24),
                ),
                1..12,
            )
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (_tx, policy) = watch::channel(denying_policy());
            let classifier = Classifier::new(16);
            let recorder = rt.block_on(async { Recorder::start(NullStore) });
            let ctx = SessionContext {
                session: "s".into(),
                issuer: "i".into(),
                subject: "a".into(),
                groups: vec![],
                workload: "w".into(),
                target: "t".into(),
                policy,
                classifier: &classifier,
                recorder: &recorder,
                gate: crate::proxy::Gate::open_ended(),
                max_message: 1 << 20,
                catalog: Arc::new(Catalog::new(
                    Arc::new(|| Box::pin(async { Err("no catalog in this test".to_string()) })),
                    Default::default(),
                )),
                approvals: test_approvals(),
                database: "db".into(),
                cancels: watch::channel(0).1,
                results_cap: ResultsCap { rows: 0, bytes: 0 },
            };
            let counters = Counters::default();
            let shared = Shared::new("agentgate_denied_0_".into());
            let mut up = Upward { ctx: &ctx, shared: &shared, counters: &counters, statements: HashMap::new(), portals: HashMap::new(), plan: PlanCache::default(), prefix: None, batch: 0, batch_open: false, copy_possible: false, parses: HashMap::new(), open_binds: HashMap::new(), next_bind: 1, next_parse: 1, approved: None, queued: VecDeque::new(), queued_bytes: 0, next_refusal_code: None, trial: None, triable: false, trial_rows: None };
            let mut agent = BufReader::new(tokio::io::empty());
            let mut target = tokio::io::sink();
            let opaque_sent = rt.block_on(async {
                let mut opaque_sent = Vec::new();
                for (tag, first, second, tail) in msgs {
                    let frame = Frame::build(tag, |b| {
                        put_cstr(b, &first);
                        put_cstr(b, &second);
                        b.extend_from_slice(&tail);
                    });
                    let text = match tag {
                        b'Q' => Fields::new(&frame).cstr().ok().map(str::to_string),
                        b'P' => {
                            let mut f = Fields::new(&frame);
                            f.cstr().ok().and_then(|_| f.cstr().ok()).map(str::to_string)
                        }
                        _ => None,
                    };
                    let original = frame.bytes.clone();
                    if let Ok(forwarded) = up.inspect(frame, &mut agent, &mut target).await {
                        let opaque = text.is_some_and(|t| classify(&t).class == Class::Opaque);
                        if opaque && forwarded.bytes == original {
                            opaque_sent.push(original);
                        }
                    }
                }
                opaque_sent
            });
            proptest::prop_assert!(opaque_sent.is_empty(), "forwarded unread: {:?}", opaque_sent);
        }
    }

    #[test]
    fn row_counts_from_command_tags() {
        let cc = |t: &str| Frame::build(b'C', |b| put_cstr(b, t));
        assert_eq!(command_rows(&cc("SELECT 3")), Some(3));
        assert_eq!(command_rows(&cc("INSERT 0 5")), Some(5));
        assert_eq!(command_rows(&cc("CREATE TABLE")), None);
        assert_eq!(command_rows(&cc("BEGIN")), None);
    }

    #[test]
    fn bind_params_text_binary_null_and_truncated() {
        let big = vec![b'a'; PARAM_CAP + 10];
        let bind = Frame::build(b'B', |b| {
            put_cstr(b, "");
            put_cstr(b, "s");
            b.put_i16(3);
            b.put_i16(0);
            b.put_i16(1);
            b.put_i16(0);
            b.put_i16(3);
            b.put_i32(2);
            b.put_slice(b"42");
            b.put_i32(2);
            b.put_slice(&[0xde, 0xad]);
            b.put_i32(big.len() as i32);
            b.put_slice(&big);
            b.put_i16(0);
        });
        let mut f = Fields::new(&bind);
        f.cstr().unwrap();
        f.cstr().unwrap();
        let p = bind_params(&mut f, None).unwrap();
        assert_eq!(p.shown[0].as_deref(), Some("42"));
        assert_eq!(p.shown[1].as_deref(), Some("\\xdead"));
        assert_eq!(
            p.shown[2].as_ref().unwrap().len(),
            PARAM_CAP + '…'.len_utf8()
        );
        assert!(p.cut, "a value longer than shown is flagged");
        // What a retry must repeat: every byte and the format, not what is shown.
        let digest = |format: i16, value: &[u8]| {
            let frame = Frame::build(b'B', |b| {
                b.put_i16(1);
                b.put_i16(format);
                b.put_i16(1);
                b.put_i32(value.len() as i32);
                b.put_slice(value);
            });
            bind_params(&mut Fields::new(&frame), None).unwrap()
        };
        let (a, b) = (digest(0, b"\\xdead"), digest(1, &[0xde, 0xad]));
        assert_eq!(
            a.shown, b.shown,
            "text `\\xdead` and binary 0xdead look alike"
        );
        assert_ne!(a.digest, b.digest, "but are different parameters");
        let mut long = big.clone();
        let (c, d) = (digest(0, &long), {
            long.push(b'!');
            digest(0, &long)
        });
        assert_eq!(c.shown, d.shown);
        assert_ne!(c.digest, d.digest, "bytes past the cut count");
        assert!(!a.cut);
        // A length past the end of the message is an error, not a panic.
        let short = Frame::build(b'B', |b| {
            b.put_i16(0);
            b.put_i16(1);
            b.put_i32(100);
        });
        assert!(bind_params(&mut Fields::new(&short), None).is_err());
    }

    #[test]
    fn only_this_sessions_marker_is_a_denial() {
        let shared = Shared::new("agentgate_denied_00ff_".into());
        shared.denials().insert(
            0xabc,
            Denial {
                code: "42501",
                rule: "no-ddl".into(),
                classified: Arc::new(Classified::opaque("x")),
                message: None,
            },
        );
        let err = |m: &str| Notice {
            fields: vec![(b'C', "42601".into()), (b'M', m.into())],
        };
        assert!(denial_of(
            &shared,
            &err("syntax error at or near \"agentgate_denied_11ff_0000000000000abc\"")
        )
        .is_none());
        let d = denial_of(
            &shared,
            &err("syntax error at or near \"agentgate_denied_00ff_0000000000000abc\""),
        )
        .unwrap();
        assert_eq!(d.rule, "no-ddl");
        // Used once.
        assert!(denial_of(&shared, &err("agentgate_denied_00ff_0000000000000abc")).is_none());
        // A guessed or cut-short key is nothing.
        assert!(denial_of(&shared, &err("agentgate_denied_00ff_0000000000000abd")).is_none());
        assert!(denial_of(&shared, &err("agentgate_denied_00ff_abc")).is_none());
    }
}
