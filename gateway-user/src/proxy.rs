//! Accepts redirected connections, finds out where they were going and who sent them, and hands
//! them to the target's protocol handler. One tracing span per connection.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use gateway_common::OrigDst;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{
    capture::{Listener, ListenerKind, WorkloadTable},
    ebpf::{peer_key, KernelMaps},
    policy::{Policy, Protocol},
    protocol::tcp,
    record::EventSink,
    upstream::Connect,
};

pub struct Proxy<C> {
    pub policy: Arc<Policy>,
    pub maps: Arc<KernelMaps>,
    pub table: Arc<WorkloadTable>,
    pub events: Arc<EventSink>,
    pub connector: C,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    next_id: AtomicU64,
}

impl<C: Connect> Proxy<C> {
    pub fn new(
        policy: Arc<Policy>,
        maps: Arc<KernelMaps>,
        table: Arc<WorkloadTable>,
        events: Arc<EventSink>,
        connector: C,
    ) -> Self {
        Self {
            policy,
            maps,
            table,
            events,
            connector,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
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
                       "reason": "no original destination: connection was not redirected"}),
            );
            return;
        };
        let dst = original_destination(&orig);
        // The workload is the kernel's classification at connect() time; the path is for people
        // (the cgroup may already be gone when the connection is accepted).
        let workload = self
            .policy
            .workloads
            .get(orig.workload_id as usize)
            .map(|w| w.name.clone());
        let cgroup_path = self
            .table
            .get(orig.cgroup_id)
            .map(|c| c.path)
            .or_else(|| cgroup_path_of_pid(orig.pid));
        let span = tracing::info_span!("conn", id, %dst, pid = orig.pid,
            cgroup = cgroup_path.as_deref().unwrap_or("?"), workload = workload.as_deref().unwrap_or("?"));
        let base = json!({
            "conn": id,
            "listener": listener,
            "peer": peer.to_string(),
            "original_dst": dst.to_string(),
            "pid": orig.pid,
            "cgroup_id": orig.cgroup_id,
            "cgroup": cgroup_path,
            "workload": workload,
            "netns_cookie": orig.netns_cookie,
        });
        async move {
            let refuse = |reason: &str| {
                tracing::info!(reason, "refused");
                self.events
                    .emit("refused", with(&base, json!({"reason": reason})));
            };
            if workload.is_none() {
                return refuse("connection does not come from a managed workload");
            }
            let Some((_, target)) = self.policy.target_for(dst) else {
                return refuse("original destination is not a target");
            };
            let target_name = target.name.clone();
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
                        with(
                            &base,
                            json!({"target": target_name, "error": e.to_string()}),
                        ),
                    );
                    return;
                }
            };
            tracing::info!(target = %target_name, "relaying");
            self.events.emit(
                "connection_open",
                with(&base, json!({"target": target_name})),
            );
            let idle = Duration::from_millis(self.policy.gateway.idle_timeout_ms);
            let result = tcp::relay(client, upstream, idle).await;
            let (stats, error) = match result {
                Ok(s) => (s, None),
                Err(e) => (tcp::RelayStats::default(), Some(e.to_string())),
            };
            tracing::info!(
                up = stats.client_to_upstream,
                down = stats.upstream_to_client,
                error = error.as_deref().unwrap_or(""),
                "closed"
            );
            self.events.emit(
                "connection_close",
                with(
                    &base,
                    json!({
                        "target": target_name,
                        "bytes_up": stats.client_to_upstream,
                        "bytes_down": stats.upstream_to_client,
                        "duration_ms": started.elapsed().as_millis() as u64,
                        "error": error,
                    }),
                ),
            );
        }
        .instrument(span)
        .await
    }
}

fn with(base: &serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
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

/// The path of a cgroup the table no longer holds (removed since the agent connected), from the
/// pid, if it still exists.
fn cgroup_path_of_pid(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}
