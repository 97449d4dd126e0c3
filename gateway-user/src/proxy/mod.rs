//! Accepts redirected connections, finds out where they were going and who sent them, decides
//! whether they may proceed under the policy in force, and hands them to the target's protocol
//! handler. One tracing span per connection.

pub(crate) mod authorize;
pub mod facts;
mod limits;
pub mod memory;
mod pod_binding;
pub mod revocations;
mod sessions;
#[cfg(test)]
mod toy_tests;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use gateway_common::OrigDst;
use tokio::{net::TcpStream, sync::watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

pub use authorize::check_providers;
pub(crate) use authorize::Refusal;
use authorize::Verifiers;
pub use facts::ConnFacts;
use sessions::Grant;
pub use sessions::{Gate, Sessions};

/// Puts each new policy in force in `sessions` (see [`Sessions::put_in_force`]), for the
/// reloader.
pub fn enforcer(sessions: Arc<Sessions>) -> crate::policy::Enforce {
    Box::new(move |policy| {
        let sessions = sessions.clone();
        Box::pin(async move {
            let done = sessions.put_in_force(&policy).await;
            crate::policy::Enforced {
                ended: done.ended,
                stragglers: done.stragglers,
            }
        })
    })
}

use crate::{
    approval::Approvals,
    capture::{Listener, ListenerKind, WorkloadTable},
    ebpf::{peer_key, KernelMaps},
    net::Connect,
    policy::{Policy, Target, Workload},
    protocol::{Connection, Outcome, ProtocolHandler, SessionEnd},
    record::{EventSink, Record, Recorder, SessionClose, SessionOpen},
};

pub struct Proxy<C> {
    pub policy: watch::Receiver<Arc<Policy>>,
    pub maps: Arc<KernelMaps>,
    pub table: Arc<WorkloadTable>,
    pub events: Arc<EventSink>,
    pub connector: Arc<C>,
    pub sessions: Arc<Sessions>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    verifiers: Verifiers,
    limits: limits::Limits,
    next_id: AtomicU64,
    pub recorder: Arc<Recorder>,
    pub approvals: Arc<Approvals>,
    pub revocations: revocations::Revocations,
    /// One per protocol (`protocol::handlers`).
    handlers: Vec<Box<dyn ProtocolHandler<C>>>,
}

/// What watches over sessions besides the policy: the record, approvals, revocations.
pub struct Oversight {
    pub recorder: Arc<Recorder>,
    pub approvals: Arc<Approvals>,
    pub revocations: revocations::Revocations,
}

impl<C: Connect> Proxy<C> {
    /// The proxy with every protocol the gateway speaks (`protocol::handlers`).
    pub fn new(
        policy: watch::Receiver<Arc<Policy>>,
        maps: Arc<KernelMaps>,
        table: Arc<WorkloadTable>,
        events: Arc<EventSink>,
        connector: C,
        oversight: Oversight,
    ) -> Self {
        let handlers = crate::protocol::handlers();
        Self::with_handlers(policy, maps, table, events, connector, oversight, handlers)
    }

    /// The proxy with these protocol handlers only (a test's own handler, to prove the seam).
    pub fn with_handlers(
        policy: watch::Receiver<Arc<Policy>>,
        maps: Arc<KernelMaps>,
        table: Arc<WorkloadTable>,
        events: Arc<EventSink>,
        connector: C,
        oversight: Oversight,
        handlers: Vec<Box<dyn ProtocolHandler<C>>>,
    ) -> Self {
        let Oversight {
            recorder,
            approvals,
            revocations,
        } = oversight;
        let verifiers = Verifiers::new(&policy.borrow(), maps.clone());
        let gateway = policy.borrow().gateway.clone();
        let limits = limits::Limits::new(
            gateway.max_connections,
            gateway.max_connections_per_workload,
        );
        Self {
            policy,
            maps,
            table,
            events,
            connector: Arc::new(connector),
            sessions: Arc::new(Sessions::default()),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            verifiers,
            limits,
            next_id: AtomicU64::new(1),
            recorder,
            approvals,
            revocations,
            handlers,
        }
    }

    /// Revokes: new connections it covers are refused from now on, and the live sessions it
    /// covers end now. Returns how many ended.
    pub fn revoke(&self, r: revocations::Revocation) -> Result<usize, String> {
        self.revocations.add(r.clone()).map_err(|e| e.to_string())?;
        let reason = r.message();
        Ok(self
            .sessions
            .end_where(|g| r.covers(&g.issuer, &g.subject, &g.workload), &reason))
    }

    /// After a handover the successor answers the admin socket and API: the approvals and
    /// revocations given there reach this process's draining sessions through the record
    /// database, read every 200 ms until the process ends.
    pub async fn follow_the_successor(self: Arc<Self>) {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
        loop {
            tick.tick().await;
            self.approvals.take_decisions_from_store();
            match self.revocations.refresh() {
                Ok(new) => {
                    for r in new {
                        let reason = r.message();
                        let ended = self
                            .sessions
                            .end_where(|g| r.covers(&g.issuer, &g.subject, &g.workload), &reason);
                        tracing::info!(ended, "revoked by the successor: {reason}");
                    }
                }
                Err(e) => tracing::warn!("revocations unreadable while draining: {e}"),
            }
        }
    }

    /// Verifies a person's token (an approver's) with the identity providers of the policy in
    /// force, as an agent's would be: the verifier's reason code on refusal.
    pub async fn verify_person(
        &self,
        token: &str,
    ) -> Result<crate::identity::Principal, (&'static str, String)> {
        let verifier = self.verifiers.current().ok_or((
            "identity_unavailable",
            "the policy's identity providers are unusable".to_string(),
        ))?;
        verifier
            .verify(token)
            .await
            .map_err(|e| (e.reason(), format!("token refused: {e}")))
    }

    /// Accepts until shutdown. Each connection runs in its own task, tracked for draining.
    pub async fn serve(self: Arc<Self>, listener: Listener) {
        tracing::info!(addr = %listener.local, kind = ?listener.kind, "listening");
        loop {
            let accepted = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                r = listener.inner.accept() => r,
            };
            match accepted {
                Ok((stream, peer)) => {
                    // Request/response protocols (a login exchange, one query at a time) would
                    // otherwise wait out delayed ACKs on every small write.
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!("TCP_NODELAY on accepted socket: {e}");
                    }
                    let this = self.clone();
                    let key = peer_key(listener.netns_cookie, peer);
                    let kind = listener.kind.clone();
                    let netns = listener.netns.clone();
                    self.tracker.spawn(async move {
                        let orig = this.maps.take_orig_dst(&key);
                        let upstream = crate::capture::upstream_netns(orig.as_ref(), netns);
                        crate::net::in_netns(upstream, this.handle(stream, peer, orig, kind)).await
                    });
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!("accept on {}: {e}", listener.local);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Renews the identity verifiers for each new policy. Ending the sessions it withdraws is
    /// the reloader's ([`enforcer`]), before it says the policy is in force; this sweep is a
    /// second pass for a policy put in force without it.
    pub async fn revalidate_on_change(self: Arc<Self>) {
        let mut rx = self.policy.clone();
        // What the API server says about a pod can change its workload (`pods:` selectors).
        let mut pods = self.table.pods().subscribe();
        loop {
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let policy = rx.borrow_and_update().clone();
                    self.verifiers.renew(&policy);
                    let ended = self.sessions.revalidate(&policy);
                    if ended > 0 {
                        tracing::info!(version = %policy.version, ended, "sessions ended by the new policy");
                    }
                }
                Ok(()) = pods.changed() => {
                    let policy = rx.borrow().clone();
                    let ended = self.sessions.revalidate(&policy);
                    if ended > 0 {
                        tracing::info!(ended, "sessions ended: their pod is no longer the workload they were granted as");
                    }
                }
            }
        }
    }

    async fn handle(
        self: Arc<Self>,
        client: TcpStream,
        peer: SocketAddr,
        orig: Option<OrigDst>,
        kind: ListenerKind,
    ) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let listener = match kind {
            ListenerKind::Host => "host".to_string(),
            ListenerKind::Pod { netns_inode } => format!("pod:{netns_inode}"),
        };
        let Some(orig) = orig else {
            // Not redirected by our programs (someone dialled the listener directly): refuse.
            let event = facts::NotRedirected {
                conn: id,
                peer: peer.to_string(),
                listener,
                code: "not_redirected",
                reason: "no original destination: connection was not redirected",
            };
            self.events.emit("refused", facts::plain_event(&event));
            return;
        };
        let dst = original_destination(&orig);
        // Only the reconciler's view: the kernel refuses connections from cgroups it has not
        // classified, so an unknown id means the cgroup is gone, and a pid's current cgroup
        // could belong to another process by now.
        let cgroup = self.table.get(orig.cgroup_id).map(|c| c.path);
        let span = tracing::info_span!("conn", id, %dst, pid = orig.pid,
            cgroup = cgroup.as_deref().unwrap_or("?"));
        let base = ConnFacts {
            conn: id,
            listener,
            peer: peer.to_string(),
            original_dst: dst.to_string(),
            pid: orig.pid,
            cgroup_id: orig.cgroup_id,
            cgroup: cgroup.clone(),
            netns_cookie: orig.netns_cookie,
            workload: None,
            dialled: None,
            target: None,
            protocol: None,
            principal: None,
            login: None,
            session: None,
        };
        let scope =
            crate::capture::DstScope::of(orig.flags, matches!(kind, ListenerKind::Pod { .. }));
        self.session(id, client, (dst, scope), orig.pid, cgroup, base)
            .instrument(span)
            .await
    }

    /// `dst`: the original destination, and where it is local.
    async fn session(
        &self,
        id: u64,
        client: TcpStream,
        (dst, scope): (SocketAddr, crate::capture::DstScope),
        pid: u32,
        cgroup: Option<String>,
        mut base: ConnFacts,
    ) {
        let placed = match self.place(dst, scope, cgroup, &mut base) {
            Ok(p) => p,
            Err(r) => {
                drop(client);
                return self.refuse(&base, r).await;
            }
        };
        // From here on the session is about the address the target is dialled at (the original
        // destination, unless that is an alias of a local target); events keep `original_dst`.
        let dst = placed.upstream;
        let protocol = placed.target.protocol();
        let Some(handler) = self.handlers.iter().find(|h| h.protocol() == protocol) else {
            // Every protocol a policy can name has a handler (a unit test checks it); should
            // one be missing, the connection is refused, never relayed blind.
            drop(client);
            let why = format!("no handler for protocol {protocol:?}");
            return self.refuse(&base, Refusal::new("bad_target", why)).await;
        };
        let conn = Connection {
            id,
            client,
            dst,
            pid,
            placed,
            facts: base,
        };
        if let Outcome::Closed(end) = handler.serve(self, conn).await {
            self.closed(*end).await;
        }
    }

    /// A session's end, the same for every protocol: a log line, the record's close and the
    /// `connection_close` event.
    async fn closed(&self, end: SessionEnd) {
        let SessionEnd {
            facts,
            started,
            bytes_up,
            bytes_down,
            ended_by,
            error,
            statements,
        } = end;
        tracing::info!(
            up = bytes_up,
            down = bytes_down,
            statements = statements.map(|s| s.statements),
            denied = statements.map(|s| s.denied_statements),
            error = error.as_deref().unwrap_or(""),
            ended_by = ended_by.as_deref().unwrap_or(""),
            "closed"
        );
        self.recorder
            .record(Record::Close(SessionClose {
                session: facts.session.clone().unwrap_or_default(),
                ended_ms: crate::record::now_ms(),
                bytes_up,
                bytes_down,
                ended_by: ended_by.clone(),
                error: error.clone(),
            }))
            .await;
        let event = facts.event(&facts::Closed {
            bytes_up,
            bytes_down,
            duration_ms: started.elapsed().as_millis() as u64,
            error: error.as_deref(),
            ended_by: ended_by.as_deref(),
            statements,
        });
        self.events.emit("connection_close", event);
    }

    pub(crate) fn emit_allowed(&self, facts: &ConnFacts, admitted: &Admitted<'_>) {
        let event = facts.event(&facts::Allowed {
            rule: &admitted.rule,
            policy_version: &admitted.policy.version,
        });
        self.events.emit("allowed", event);
    }

    /// Which workload sent the connection and which target it was meant for; takes the
    /// workload's session slot. Fields learnt on the way go into `base`, so a refusal event
    /// carries them.
    fn place(
        &self,
        dst: SocketAddr,
        scope: crate::capture::DstScope,
        cgroup: Option<String>,
        base: &mut ConnFacts,
    ) -> Result<Placed<'_>, Refusal> {
        // Decided against one snapshot of the policy; `admit` re-checks if it changes meanwhile.
        let policy = self.policy.borrow().clone();
        let cgroup = cgroup.ok_or_else(|| {
            Refusal::new(
                "unknown_workload",
                "the connecting process and its cgroup are gone",
            )
        })?;
        let workload = self
            .table
            .classify(&policy, &cgroup)
            .map(|i| policy.workloads[i].clone())
            .ok_or_else(|| {
                Refusal::new(
                    "unmanaged",
                    "connection does not come from a managed workload",
                )
            })?;
        base.workload = Some(workload.name.clone());
        let slot = self
            .limits
            .admit(&workload.name)
            .map_err(|why| Refusal::new("limit", why))?;
        // A local destination no target lists is an alias of the port's local target.
        let (target, upstream) = crate::capture::resolve_target(&policy, dst, scope)
            .map(|(t, up)| (t.clone(), up))
            .ok_or_else(|| Refusal::new("not_a_target", "original destination is not a target"))?;
        if upstream != dst {
            base.dialled = Some(upstream.to_string());
        }
        base.target = Some(target.name.clone());
        base.protocol = Some(target.protocol());
        Ok(Placed {
            policy,
            workload,
            target,
            cgroup,
            upstream,
            slot,
        })
    }

    /// Verifies the token and decides under the rules; registers the session so that a new
    /// policy can end it.
    pub(crate) async fn admit<'a>(
        &'a self,
        id: u64,
        dst: SocketAddr,
        placed: Placed<'a>,
        token: &str,
        login: Option<&str>,
        base: &mut ConnFacts,
    ) -> Result<Admitted<'a>, Refusal> {
        let Placed {
            mut policy,
            workload,
            target,
            cgroup,
            upstream: _,
            slot,
        } = placed;
        let allowed =
            authorize::authorize(&policy, &self.verifiers, &workload, &target, token, login)
                .await?;
        let p = allowed.principal;
        if let Err(why) = pod_binding::check(p.pod_uid.as_deref(), &workload, &cgroup) {
            return Err(Refusal {
                code: "token_elsewhere",
                message: why,
                rule: None,
                principal: Some(Box::new(p)),
                token: None,
            });
        }
        if let Some(r) = self.revocations.find(&p.issuer, &p.subject, &workload.name) {
            return Err(Refusal {
                code: "revoked",
                message: r.message(),
                rule: None,
                principal: Some(Box::new(p)),
                token: None,
            });
        }
        base.principal = Some(facts::PrincipalFacts::from(&p));
        let provider = policy
            .identity_providers
            .iter()
            .find(|ip| ip.issuer == p.issuer)
            .cloned()
            .ok_or_else(|| Refusal::new("unknown_issuer", "no provider for the token's issuer"))?;
        let grant = Grant {
            issuer: p.issuer.clone(),
            subject: p.subject.clone(),
            groups: p.groups.clone(),
            workload: workload.name.clone(),
            cgroup,
            token_source: workload.token.clone(),
            target: target.name.clone(),
            dst,
            settings: target.settings.clone(),
            provider,
            login: login.map(str::to_string),
            pods: self.table.pods().clone(),
        };
        let guard = self.sessions.open(id, grant.clone(), self.policy.clone());
        // A policy put in force while we decided: the registry's sweep may have run before this
        // session was registered, so check again against the policy in force now.
        loop {
            let now = self.policy.borrow().clone();
            if Arc::ptr_eq(&now, &policy) {
                break;
            }
            policy = now;
            sessions::still_allowed(&policy, &grant)
                .map_err(|reason| Refusal::new("denied", reason))?;
        }
        // A revocation made while we decided: the sweep that ends live sessions may have run
        // before this one was registered.
        if let Some(r) = self
            .revocations
            .find(&grant.issuer, &grant.subject, &grant.workload)
        {
            return Err(Refusal::new("revoked", r.message()));
        }
        if p.expires_at <= SystemTime::now() {
            // Inside the clock-skew allowance: admitted by the verifier, but the session would
            // end at once.
            return Err(Refusal::new("expired", "the token expires now"));
        }
        Ok(Admitted {
            expires_at: p.expires_at,
            rule: allowed.rule,
            policy,
            grant,
            target,
            guard,
            _slot: slot,
        })
    }

    /// Says why a connection was refused: an event, and a record (through the recorder's
    /// bounded queue, like every other record: this waits while the queue is full).
    pub(crate) async fn refuse(&self, base: &ConnFacts, r: Refusal) {
        tracing::info!(code = r.code, "refused: {}", r.message);
        let detail = facts::Refused {
            code: r.code,
            reason: &r.message,
            rule: r.rule.as_deref(),
        };
        let event = match &r.principal {
            // A valid token that the rules refuse: say who it was.
            Some(p) => {
                let mut known = base.clone();
                known.principal = Some(facts::PrincipalFacts::from(p.as_ref()));
                known.event(&detail)
            }
            None => base.event(&detail),
        };
        self.events.emit("refused", event.clone());
        self.recorder
            .record(Record::Event {
                kind: "refused",
                at_ms: crate::record::now_ms(),
                session: None,
                body: event,
            })
            .await;
    }
}

/// A session's id on record: when it started (unix milliseconds, hex) and the connection's
/// number.
pub(crate) fn session_id(conn: u64) -> String {
    format!("{:x}-{conn}", crate::record::now_ms())
}

impl Admitted<'_> {
    /// The record that opens `session`, starting now: who, from where, to which target, under
    /// which policy, until when.
    pub(crate) fn session_open(
        &self,
        session: &str,
        protocol: &'static str,
        pid: u32,
        client_user: Option<String>,
        database: Option<String>,
    ) -> SessionOpen {
        let g = &self.grant;
        SessionOpen {
            session: session.to_string(),
            started_ms: crate::record::now_ms(),
            protocol,
            workload: g.workload.clone(),
            cgroup: g.cgroup.clone(),
            pid,
            issuer: g.issuer.clone(),
            subject: g.subject.clone(),
            groups: g.groups.clone(),
            target: g.target.clone(),
            original_dst: g.dst.to_string(),
            client_user,
            database,
            policy_version: self.policy.version.clone(),
            token_expires_ms: self.expires_ms(),
        }
    }

    /// The token's `exp` in unix milliseconds, for the record.
    pub(crate) fn expires_ms(&self) -> i64 {
        self.expires_at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }

    /// The token's `exp` on the runtime's clock: the session ends then, not at some later poll.
    pub(crate) fn expires(&self) -> tokio::time::Instant {
        tokio::time::Instant::now()
            + self
                .expires_at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
    }
}

/// Where a connection comes from and goes to, before anyone has looked at its token.
pub struct Placed<'a> {
    pub policy: Arc<Policy>,
    pub workload: Workload,
    pub target: Target,
    pub cgroup: String,
    /// Where the target is dialled (see `capture::resolve_target`).
    pub upstream: SocketAddr,
    slot: limits::Slot<'a>,
}

/// A connection the policy lets through, with what keeps it accountable while it lives.
pub struct Admitted<'a> {
    pub expires_at: SystemTime,
    pub rule: String,
    /// The policy it was finally decided under.
    pub policy: Arc<Policy>,
    pub grant: Grant,
    pub target: Target,
    pub guard: sessions::SessionGuard<'a>,
    _slot: limits::Slot<'a>,
}

pub fn original_destination(orig: &OrigDst) -> SocketAddr {
    let v6 = Ipv6Addr::from(orig.addr);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None if orig.addr == [0; 16] => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        None => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, orig.port)
}
