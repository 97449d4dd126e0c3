//! HTTP(S) targets, with the `kubernetes` profile for Kubernetes API servers (docs/http.md,
//! docs/kubernetes.md): the gateway terminates the agent's TLS with a leaf certificate for the
//! target's names, takes the agent's bearer token (or the workload's token file) as its
//! identity, judges every request through the one gate (`action_gate`), forwards it with a
//! credential of its own (and, for Kubernetes, impersonation headers naming the agent), masks
//! and records what comes back.
//!
//! One agent connection is one session: the first request's token admits it, and every later
//! request on the connection must carry the same token (a different one is refused: a
//! connection is never shared by two identities). HTTP/1.1 only (see `certs`).

pub mod certs;
mod exchange;
mod exec;
mod exec_mask;
mod kube;
pub mod kube_pb;
mod login;
mod portforward;
mod rbac_diff;
mod recent;
pub mod request_info;
mod respond;
mod rule_section;
pub mod rules;
mod spdy;
mod tee;
mod upstream;
mod ws;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::Instant,
};

use futures_util::stream::{FuturesUnordered, StreamExt};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::Notify,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::{
    action_gate::GateCtx, Connection, HandlerFuture, Outcome, ProtocolHandler, SessionEnd,
};
use crate::{
    net::Connect,
    policy::{HttpProfile, HttpTarget, Protocol, Target},
    proxy::{
        facts::{ConnFacts, Nothing, StatementCounts},
        Admitted, Placed, Proxy,
    },
};

#[derive(Default)]
pub struct HttpHandler {
    leaves: certs::Leaves,
    /// Exec refusals, shared by every connection (kubectl's SPDY retry comes on a new one).
    recent: recent::RecentRefusals,
}

impl<C: Connect> ProtocolHandler<C> for HttpHandler {
    fn protocol(&self) -> Protocol {
        Protocol::Http
    }

    fn serve<'a>(&'a self, core: &'a Proxy<C>, conn: Connection<'a>) -> HandlerFuture<'a> {
        Box::pin(serve(self, core, conn))
    }
}

/// The agent's side of the connection, TLS or not.
trait AgentIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AgentIo for T {}

/// An admitted session, from its first request to the connection's end.
struct Live<'a> {
    admitted: Admitted<'a>,
    /// The bearer token it was admitted with; `None`: the workload's token file.
    bearer: Option<String>,
    gate: GateCtx<'a>,
    groups: Vec<String>,
    upstream: tokio::sync::Mutex<upstream::Upstream>,
    started: Instant,
    /// The connection's facts, its session id included.
    facts: ConnFacts,
}

/// One agent connection.
struct Conn<'a, C> {
    core: &'a Proxy<C>,
    handler: &'a HttpHandler,
    http: HttpTarget,
    target: Target,
    id: u64,
    dst: SocketAddr,
    pid: u32,
    /// Taken by the first request, which admits the session.
    login: Mutex<Option<(Placed<'a>, ConnFacts)>>,
    live: OnceLock<Live<'a>>,
    admitted: Notify,
    /// Set when the connection must end (a refused login, a failed target).
    end: CancellationToken,
    seq: AtomicU64,
    denied: AtomicU64,
    bytes_up: AtomicU64,
    /// Shared with the tasks that put streamed answers on record.
    bytes_down_shared: Arc<AtomicU64>,
    /// Exec/attach streams upgraded on this connection, for `serve` to run.
    relays: Mutex<Vec<exec::Relay<'a>>>,
    relay_added: Notify,
}

async fn serve<C: Connect>(
    handler: &HttpHandler,
    core: &Proxy<C>,
    conn: Connection<'_>,
) -> Outcome {
    let Connection {
        id,
        client,
        dst,
        pid,
        placed,
        facts,
    } = conn;
    let Some(http) = placed.target.http().cloned() else {
        return Outcome::NoSession;
    };
    let target = placed.target.clone();
    let _ = client.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + http.login_timeout;
    let agent: Box<dyn AgentIo> = match &http.tls {
        None => Box::new(client),
        Some(tls) => {
            let config = match handler.leaves.config(&target, tls, dst.ip()) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(target = target.name, "agent-side TLS: {e}");
                    let r = crate::proxy::Refusal::new(
                        "tls_unavailable",
                        format!("the gateway has no certificate for the target: {e}"),
                    );
                    core.refuse(&facts, r).await;
                    return Outcome::NoSession;
                }
            };
            // Off the accept loop (this runs in the connection's own task), with a deadline:
            // a client that never finishes its handshake holds nothing for long.
            match tokio::time::timeout_at(deadline, TlsAcceptor::from(config).accept(client)).await
            {
                Ok(Ok(s)) => Box::new(s),
                Ok(Err(e)) => {
                    tracing::debug!("agent TLS handshake: {e}");
                    return Outcome::NoSession;
                }
                Err(_) => return Outcome::NoSession,
            }
        }
    };
    let conn = Conn {
        core,
        handler,
        http,
        target,
        id,
        dst,
        pid,
        login: Mutex::new(Some((placed, facts))),
        live: OnceLock::new(),
        admitted: Notify::new(),
        end: CancellationToken::new(),
        seq: AtomicU64::new(0),
        denied: AtomicU64::new(0),
        bytes_up: AtomicU64::new(0),
        bytes_down_shared: Arc::new(AtomicU64::new(0)),
        relays: Mutex::new(Vec::new()),
        relay_added: Notify::new(),
    };
    let (ended_by, error) = {
        let service = service_fn(|req: Request<Incoming>| {
            let conn = &conn;
            async move { Ok::<_, std::convert::Infallible>(conn.exchange(req).await) }
        });
        let served = http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(agent), service)
            .with_upgrades();
        tokio::pin!(served);
        // The connection's requests, and the exec streams it upgraded to: the session lasts
        // until both are over (an upgrade ends the HTTP part), or something ends it.
        let mut relays = FuturesUnordered::new();
        let mut served_error = None;
        let mut served_done = false;
        loop {
            tokio::select! {
                r = &mut served, if !served_done => {
                    served_done = true;
                    served_error = r.err().map(|e| e.to_string());
                }
                Some(()) = relays.next(), if !relays.is_empty() => {}
                () = conn.relay_added.notified() => {}
                why = conn.ended(deadline) => {
                    // Streams end with the session, but each puts itself on record first
                    // (they end at once on `ended`; the wait is bounded all the same).
                    if let Some(live) = conn.live.get() {
                        live.gate.ended.cancel();
                    }
                    relays.extend(conn.take_relays());
                    let drained = async { while relays.next().await.is_some() {} };
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drained).await;
                    break (Some(why), None);
                }
            }
            relays.extend(conn.take_relays());
            if served_done && relays.is_empty() {
                break (None, served_error);
            }
        }
    };
    conn.finish(ended_by, error).await
}

impl<'a, C: Connect> Conn<'a, C> {
    /// Resolves when something other than the agent ends the connection: no first request in
    /// time, a refused login, the token's expiry, a revocation or reload, a failed target.
    async fn ended(&self, login_deadline: tokio::time::Instant) -> String {
        loop {
            if let Some(live) = self.live.get() {
                let guard = &live.admitted.guard;
                return tokio::select! {
                    () = tokio::time::sleep_until(live.admitted.expires()) => "token expired".to_string(),
                    () = guard.stop.cancelled() => guard.reason().unwrap_or_else(|| "gateway: ended".into()),
                    () = self.end.cancelled() => "gateway: the target connection failed".into(),
                };
            }
            tokio::select! {
                () = self.admitted.notified() => {}
                () = self.end.cancelled() => return "gateway: refused".into(),
                () = tokio::time::sleep_until(login_deadline) => return "gateway: no request in time".into(),
            }
        }
    }

    /// The session's end, for the core to put on record.
    async fn finish(self, ended_by: Option<String>, error: Option<String>) -> Outcome {
        let Some(live) = self.live.into_inner() else {
            // Never admitted: the refusal (if any) is on record already; the placed
            // connection's slot is released with it.
            return Outcome::NoSession;
        };
        live.gate.ended.cancel();
        let facts = live.facts;
        let ended_by = ended_by.filter(|w| w != "gateway: refused");
        Outcome::Closed(Box::new(SessionEnd {
            facts,
            started: live.started,
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down_shared.load(Ordering::Relaxed),
            ended_by,
            error,
            statements: Some(StatementCounts {
                statements: self.seq.load(Ordering::Relaxed),
                denied_statements: self.denied.load(Ordering::Relaxed),
            }),
        }))
    }

    fn take_relays(&self) -> Vec<exec::Relay<'a>> {
        self.relays
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }

    fn kubernetes(&self) -> bool {
        self.http.profile == HttpProfile::Kubernetes
    }

    /// Marks the session open (on record, in events) once admitted and connected upstream.
    async fn open(&self, mut live: Live<'a>) {
        let session = live.gate.session.clone();
        let protocol = if self.kubernetes() {
            "kubernetes"
        } else {
            "http"
        };
        self.core
            .recorder
            .record(crate::record::Record::Open(
                live.admitted
                    .session_open(&session, protocol, self.pid, None, None),
            ))
            .await;
        live.facts.session = Some(session);
        self.core
            .events
            .emit("connection_open", live.facts.event(&Nothing {}));
        let _ = self.live.set(live);
        self.admitted.notify_one();
    }
}
