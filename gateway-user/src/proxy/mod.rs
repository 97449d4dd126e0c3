//! Accepts redirected connections, finds out where they were going and who sent them, decides
//! whether they may proceed under the policy in force, and hands them to the target's protocol
//! handler. One tracing span per connection.

mod authorize;
mod limits;
mod sessions;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use gateway_common::OrigDst;
use serde_json::{json, Value};
use tokio::{net::TcpStream, sync::watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

pub use authorize::provider_configs;
use authorize::{Refusal, Verifiers};
use sessions::Grant;
pub use sessions::Sessions;

use crate::{
    capture::{Listener, ListenerKind, WorkloadTable},
    ebpf::{peer_key, KernelMaps},
    policy::{Policy, Protocol},
    protocol::tcp,
    record::EventSink,
    upstream::Connect,
};

pub struct Proxy<C> {
    pub policy: watch::Receiver<Arc<Policy>>,
    pub maps: Arc<KernelMaps>,
    pub table: Arc<WorkloadTable>,
    pub events: Arc<EventSink>,
    pub connector: C,
    pub sessions: Arc<Sessions>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    verifiers: Verifiers,
    limits: limits::Limits,
    next_id: AtomicU64,
}

impl<C: Connect> Proxy<C> {
    pub fn new(
        policy: watch::Receiver<Arc<Policy>>,
        maps: Arc<KernelMaps>,
        table: Arc<WorkloadTable>,
        events: Arc<EventSink>,
        connector: C,
    ) -> Self {
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
            connector,
            sessions: Arc::new(Sessions::default()),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            verifiers,
            limits,
            next_id: AtomicU64::new(1),
        }
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
                    let this = self.clone();
                    let key = peer_key(listener.netns_cookie, peer);
                    let kind = listener.kind.clone();
                    self.tracker.spawn(async move {
                        let orig = this.maps.take_orig_dst(&key);
                        this.handle(stream, peer, orig, kind).await
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

    /// Ends the sessions each new policy no longer allows, as soon as it is in force.
    pub async fn revalidate_on_change(self: Arc<Self>) {
        let mut rx = self.policy.clone();
        while rx.changed().await.is_ok() {
            let policy = rx.borrow_and_update().clone();
            self.verifiers.renew(&policy);
            let ended = self.sessions.revalidate(&policy);
            if ended > 0 {
                tracing::info!(version = %policy.version, ended, "sessions ended by the new policy");
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
            self.events.emit(
                "refused",
                json!({"conn": id, "peer": peer.to_string(), "listener": listener,
                       "code": "not_redirected",
                       "reason": "no original destination: connection was not redirected"}),
            );
            return;
        };
        let dst = original_destination(&orig);
        // Only the reconciler's view: the kernel refuses connections from cgroups it has not
        // classified, so an unknown id means the cgroup is gone, and a pid's current cgroup
        // could belong to another process by now.
        let cgroup = self.table.get(orig.cgroup_id).map(|c| c.path);
        let span = tracing::info_span!("conn", id, %dst, pid = orig.pid,
            cgroup = cgroup.as_deref().unwrap_or("?"));
        let base = json!({
            "conn": id,
            "listener": listener,
            "peer": peer.to_string(),
            "original_dst": dst.to_string(),
            "pid": orig.pid,
            "cgroup_id": orig.cgroup_id,
            "cgroup": cgroup,
            "netns_cookie": orig.netns_cookie,
        });
        self.session(id, client, dst, orig.pid, cgroup, base)
            .instrument(span)
            .await
    }

    async fn session(
        &self,
        id: u64,
        client: TcpStream,
        dst: SocketAddr,
        pid: u32,
        cgroup: Option<String>,
        mut base: Value,
    ) {
        let refuse = |base: &Value, r: Refusal| {
            tracing::info!(code = r.code, "refused: {}", r.message);
            let who = r
                .principal
                .as_ref()
                .map(|p| json!({"subject": p.subject, "issuer": p.issuer, "groups": p.groups}));
            let mut v = with(
                base,
                json!({"code": r.code, "reason": r.message, "rule": r.rule}),
            );
            if let Some(who) = who {
                v = with(&v, who);
            }
            self.events.emit("refused", v);
        };
        // Decided against one snapshot of the policy; re-checked below if it changes meanwhile.
        let mut policy = self.policy.borrow().clone();
        let Some(cgroup) = cgroup else {
            return refuse(
                &base,
                refusal(
                    "unknown_workload",
                    "the connecting process and its cgroup are gone",
                ),
            );
        };
        let Some(workload) =
            crate::capture::classify(&policy, &cgroup).map(|i| policy.workloads[i].clone())
        else {
            return refuse(
                &base,
                refusal(
                    "unmanaged",
                    "connection does not come from a managed workload",
                ),
            );
        };
        set(&mut base, "workload", json!(workload.name));
        let _slot = match self.limits.admit(&workload.name) {
            Ok(slot) => slot,
            Err(why) => return refuse(&base, refusal("limit", why)),
        };
        let Some((_, target)) = policy.target_for(dst) else {
            return refuse(
                &base,
                refusal("not_a_target", "original destination is not a target"),
            );
        };
        let target = target.clone();
        set(&mut base, "target", json!(target.name));
        let token = match authorize::workload_token(&workload, &target, pid, &cgroup).await {
            Ok(t) => t,
            Err(r) => return refuse(&base, r),
        };
        let allowed = match authorize::authorize(
            &policy,
            &self.verifiers,
            &workload,
            &target,
            &token,
        )
        .await
        {
            Ok(a) => a,
            Err(r) => return refuse(&base, r),
        };
        let p = &allowed.principal;
        set(&mut base, "subject", json!(p.subject));
        set(&mut base, "issuer", json!(p.issuer));
        set(&mut base, "groups", json!(p.groups));
        let Some(provider) = policy
            .identity_providers
            .iter()
            .find(|ip| ip.issuer == p.issuer)
            .cloned()
        else {
            return refuse(
                &base,
                refusal("unknown_issuer", "no provider for the token's issuer"),
            );
        };
        let grant = Grant {
            issuer: p.issuer.clone(),
            subject: p.subject.clone(),
            groups: p.groups.clone(),
            workload: workload.name.clone(),
            cgroup: cgroup.clone(),
            token_source: workload.token.clone(),
            target: target.name.clone(),
            dst,
            provider,
        };
        let guard = self.sessions.open(id, grant.clone());
        // A policy put in force while we decided: the registry's sweep may have run before this
        // session was registered, so check again against the policy in force now.
        loop {
            let now = self.policy.borrow().clone();
            if Arc::ptr_eq(&now, &policy) {
                break;
            }
            policy = now;
            if let Err(reason) = sessions::still_allowed(&policy, &grant) {
                return refuse(
                    &base,
                    Refusal {
                        code: "denied",
                        message: reason,
                        rule: None,
                        principal: Some(Box::new(p.clone())),
                    },
                );
            }
        }
        if p.expires_at <= SystemTime::now() {
            // Inside the clock-skew allowance: admitted by the verifier, but the session would
            // end at once.
            return refuse(&base, refusal("expired", "the token expires now"));
        }
        self.events.emit(
            "allowed",
            with(
                &base,
                json!({"rule": allowed.rule, "policy_version": policy.version}),
            ),
        );
        match target.protocol {
            Protocol::Tcp => {}
        }
        let started = Instant::now();
        let upstream = match self.connector.connect(dst).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("upstream: {e}");
                self.events.emit(
                    "upstream_failed",
                    with(&base, json!({"error": e.to_string()})),
                );
                return;
            }
        };
        tracing::info!(target = %target.name, subject = %p.subject, "relaying");
        self.events.emit("connection_open", base.clone());
        let idle = Duration::from_millis(policy.gateway.idle_timeout_ms);
        let expires = tokio::time::Instant::now()
            + p.expires_at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
        // Ends at the token's exp, not at some later poll.
        let (stats, error, ended_by) = tokio::select! {
            r = tcp::relay(client, upstream, idle) => match r {
                Ok(s) => (s, None, None),
                Err(e) => (tcp::RelayStats::default(), Some(e.to_string()), None),
            },
            _ = tokio::time::sleep_until(expires) => (
                tcp::RelayStats::default(),
                None,
                Some("token expired".to_string()),
            ),
            _ = guard.stop.cancelled() => (tcp::RelayStats::default(), None, guard.reason()),
        };
        tracing::info!(
            up = stats.client_to_upstream,
            down = stats.upstream_to_client,
            error = error.as_deref().unwrap_or(""),
            ended_by = ended_by.as_deref().unwrap_or(""),
            "closed"
        );
        self.events.emit(
            "connection_close",
            with(
                &base,
                json!({
                    "bytes_up": stats.client_to_upstream,
                    "bytes_down": stats.upstream_to_client,
                    "duration_ms": started.elapsed().as_millis() as u64,
                    "error": error,
                    "ended_by": ended_by,
                }),
            ),
        );
    }
}

fn refusal(code: &'static str, message: &str) -> Refusal {
    Refusal::new(code, message)
}

fn set(v: &mut Value, k: &str, x: Value) {
    if let Some(o) = v.as_object_mut() {
        o.insert(k.to_string(), x);
    }
}

fn with(base: &Value, extra: Value) -> Value {
    let mut v = base.clone();
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    v
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
