//! A toy line protocol, for tests only: the proof that a new protocol is a [`ProtocolHandler`]
//! and nothing of PostgreSQL's (`proxy/toy_tests.rs` runs it as the only handler of a real core).
//!
//! The agent's first line is its login, `TOKEN <jwt>`: admitted, it is told `OK`; refused, it is
//! told `REFUSED <code>` and the connection ends. After that every line is an action, taken
//! through the same order as any protocol's (ARCHITECTURE.md, *Every action through one gate*):
//! the policy in force (the session's gate), the toy's own deny rule (a line starting with
//! `deny` is refused, `DENIED`), the intent on record before anything is forwarded, the line
//! forwarded to the target, the target's one-line answer back to the agent, the outcome on
//! record.
//!
//! It lives here, outside `proxy/`, so that the compiler checks it needs nothing of the core
//! that a real protocol could not use. It serves `Protocol::Tcp` targets: a policy can only name
//! the protocols `policy/` knows, and the test gives the core no other handler.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::tcp::{OwnedReadHalf, OwnedWriteHalf},
};

use super::{Connection, HandlerFuture, Outcome, ProtocolHandler, SessionEnd};
use crate::{
    net::Connect,
    policy::Protocol,
    proxy::{
        facts::{Nothing, StatementCounts, UpstreamFailed},
        session_id, Admitted, Proxy, Refusal,
    },
    record::{now_ms, Record, Statement},
    statement::Class,
};

/// The longest line the toy reads (its `\n` included); a longer one ends the connection.
const MAX_LINE: usize = 16 * 1024;

/// The toy's own deny rule, as the record names it.
pub const DENY_RULE: &str = "toy: lines starting with `deny`";

/// What the toy's sessions went through, for the tests: a refused agent must never reach the
/// action loop.
#[derive(Debug, Default)]
pub struct ToyStats {
    /// Sessions that reached the action loop (admitted, open on record).
    pub sessions: AtomicU64,
    /// Actions read in the loop, forwarded or denied.
    pub actions: AtomicU64,
}

pub struct ToyHandler {
    pub stats: Arc<ToyStats>,
}

impl<C: Connect> ProtocolHandler<C> for ToyHandler {
    fn protocol(&self) -> Protocol {
        Protocol::Tcp
    }

    fn serve<'a>(&'a self, core: &'a Proxy<C>, conn: Connection<'a>) -> HandlerFuture<'a> {
        Box::pin(serve(&self.stats, core, conn))
    }
}

#[derive(Debug, thiserror::Error)]
enum LineError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("a line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("the stream ended inside a line")]
    Cut,
    #[error("a line that is not UTF-8")]
    NotUtf8,
}

/// One line without its `\n`, and how many bytes it took; `None` at the end of the stream.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Option<(String, u64)>, LineError> {
    let mut buf = Vec::new();
    let n = (&mut *r)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.pop() != Some(b'\n') {
        return Err(if n > MAX_LINE {
            LineError::TooLong
        } else {
            LineError::Cut
        });
    }
    let line = String::from_utf8(buf).map_err(|_| LineError::NotUtf8)?;
    Ok(Some((line, n as u64)))
}

/// How a session ended, in `SessionEnd`'s terms.
enum End {
    /// Someone ended it (`ended_by`): the agent, the target, the token's expiry, a revocation,
    /// a policy withdrawing it.
    By(String),
    /// It failed (`error`).
    Error(String),
}

async fn serve<C: Connect>(stats: &ToyStats, core: &Proxy<C>, conn: Connection<'_>) -> Outcome {
    let Connection {
        id,
        client,
        dst,
        pid,
        placed,
        mut facts,
    } = conn;
    let (agent_r, mut agent_w) = client.into_split();
    let mut agent = BufReader::new(agent_r);
    let token = match read_line(&mut agent).await {
        Ok(Some((line, _))) => line
            .strip_prefix("TOKEN ")
            .map(str::to_string)
            .ok_or_else(|| Refusal::new("no_token", "the first line is not `TOKEN <jwt>`")),
        // The agent left during the login.
        Ok(None) => return Outcome::NoSession,
        Err(e) => Err(Refusal::new("no_token", format!("login line: {e}"))),
    };
    let admitted = match token {
        Ok(token) => core.admit(id, dst, placed, &token, None, &mut facts).await,
        Err(r) => Err(r),
    };
    let admitted = match admitted {
        Ok(a) => a,
        Err(r) => {
            // The agent learns the code; the reasons are for the operator.
            let told = format!("REFUSED {}\n", r.code);
            let _ = agent_w.write_all(told.as_bytes()).await;
            core.refuse(&facts, r).await;
            return Outcome::NoSession;
        }
    };
    core.emit_allowed(&facts, &admitted);
    let upstream = match core.connector.connect(dst).await {
        Ok(s) => s,
        Err(e) => {
            let event = facts.event(&UpstreamFailed {
                error: &e.to_string(),
            });
            core.events.emit("upstream_failed", event);
            return Outcome::NoSession;
        }
    };
    let (target_r, target_w) = upstream.into_split();
    let session = session_id(id);
    core.recorder
        .record(Record::Open(
            admitted.session_open(&session, "toy", pid, None, None),
        ))
        .await;
    facts.session = Some(session.clone());
    core.events
        .emit("connection_open", facts.event(&Nothing {}));
    stats.sessions.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let mut s = Session {
        core,
        stats,
        admitted: &admitted,
        session,
        agent,
        agent_w,
        target: BufReader::new(target_r),
        target_w,
        counts: StatementCounts {
            statements: 0,
            denied_statements: 0,
        },
        bytes_up: 0,
        bytes_down: 0,
    };
    let (error, ended_by) = match s.run().await {
        Ok(()) => (None, None),
        Err(End::By(why)) => (None, Some(why)),
        Err(End::Error(e)) => (Some(e), None),
    };
    Outcome::Closed(Box::new(SessionEnd {
        facts,
        started,
        bytes_up: s.bytes_up,
        bytes_down: s.bytes_down,
        ended_by,
        error,
        statements: Some(s.counts),
    }))
}

/// An admitted session, between its open and its close on record.
struct Session<'s, C> {
    core: &'s Proxy<C>,
    stats: &'s ToyStats,
    admitted: &'s Admitted<'s>,
    session: String,
    agent: BufReader<OwnedReadHalf>,
    agent_w: OwnedWriteHalf,
    target: BufReader<OwnedReadHalf>,
    target_w: OwnedWriteHalf,
    counts: StatementCounts,
    /// Bytes read from the agent after its login, and written to it after its admission.
    bytes_up: u64,
    bytes_down: u64,
}

impl<C: Connect> Session<'_, C> {
    /// Actions until the agent leaves (`Ok`) or something ends the session.
    async fn run(&mut self) -> Result<(), End> {
        self.tell("OK").await?;
        let expires = self.admitted.expires();
        let admitted = self.admitted;
        let guard = &admitted.guard;
        loop {
            let next = tokio::select! {
                r = read_line(&mut self.agent) => r,
                _ = tokio::time::sleep_until(expires) => return Err(End::By("token expired".into())),
                _ = guard.stop.cancelled() => {
                    let why = guard.reason().unwrap_or_else(|| "gateway: ended".into());
                    return Err(End::By(why));
                }
            };
            let (line, n) = match next {
                Ok(Some(l)) => l,
                Ok(None) => return Ok(()),
                Err(e) => return Err(End::Error(format!("agent connection failed: {e}"))),
            };
            self.bytes_up += n;
            self.stats.actions.fetch_add(1, Ordering::Relaxed);
            self.counts.statements += 1;
            // Busy from the policy check until the answer is written: a reload waits for it
            // before it says a withdrawing policy is in force (as the TCP relay's chunks do).
            guard.gate.begin();
            let done = self.action(line).await;
            guard.gate.end();
            done?;
        }
    }

    /// One action: the policy in force, the toy's deny rule, the intent on record, forward,
    /// the answer, the outcome on record.
    async fn action(&mut self, line: String) -> Result<(), End> {
        self.admitted.guard.gate.check().map_err(End::By)?;
        let t0 = Instant::now();
        let mut stmt = Statement {
            session: self.session.clone(),
            seq: self.counts.statements,
            started_ms: now_ms(),
            kind: "line",
            text: line,
            params: Vec::new(),
            // The toy does not classify what it forwards.
            class: Class::Opaque.as_str().to_string(),
            privileged: true,
            tables: Vec::new(),
            functions: Vec::new(),
            decision: "allowed",
            rule: Some(self.admitted.rule.clone()),
            duration_us: None,
            rows: None,
            error_code: None,
            error: None,
            results: None,
            results_cut: false,
            exit_status: None,
            output: None,
        };
        if stmt.text.starts_with("deny") {
            self.counts.denied_statements += 1;
            stmt.decision = "denied";
            stmt.rule = Some(DENY_RULE.to_string());
            self.core.recorder.record(Record::Statement(stmt)).await;
            return self.tell("DENIED").await;
        }
        // Never forwarded unless it is on record first.
        if !self
            .core
            .recorder
            .record_durable(Record::Intent(stmt.clone()))
            .await
        {
            return Err(End::Error("the action could not be put on record".into()));
        }
        let sent = format!("{}\n", stmt.text);
        self.target_w
            .write_all(sent.as_bytes())
            .await
            .map_err(|e| End::Error(format!("target connection failed: {e}")))?;
        let answer = match read_line(&mut self.target).await {
            Ok(Some((answer, _))) => answer,
            Ok(None) => return Err(End::By("target closed".into())),
            Err(e) => return Err(End::Error(format!("target connection failed: {e}"))),
        };
        self.tell(&answer).await?;
        stmt.duration_us = Some(t0.elapsed().as_micros() as u64);
        stmt.rows = Some(1);
        self.core.recorder.record(Record::Statement(stmt)).await;
        Ok(())
    }

    async fn tell(&mut self, line: &str) -> Result<(), End> {
        let out = format!("{line}\n");
        self.agent_w
            .write_all(out.as_bytes())
            .await
            .map_err(|e| End::Error(format!("agent connection failed: {e}")))?;
        self.bytes_down += out.len() as u64;
        Ok(())
    }
}
