//! Keeps the kernel's view of cgroups in line with the cgroup tree: classifies every cgroup under
//! the anchors, writes the classification map, and opens a listener inside the network namespace
//! of each populated pod-mode workload. Runs on every change the cgroup tree reports (inotify via
//! `notify`) and, as a backstop for missed events, on a short interval.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use gateway_common::{cgroup_state, CgroupValue, NODE_NETNS};
use notify::Watcher;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    cgroupfs::{anchor_of, expand_braces, CgroupFs},
    listener::{BoundSocket, Listener, ListenerKind},
    local,
    netlink::RouteSockets,
    netns,
    workloads::{classify, CgroupInfo, Class, WorkloadTable},
    CaptureError,
};
use crate::{
    ebpf::{target_entries, Kernel, KernelMaps},
    policy::{Mode, Policy},
    record::EventSink,
};

/// Starts serving a listener; returns the task so the listener can be closed with it.
pub type SpawnListener = Arc<dyn Fn(Listener) -> JoinHandle<()> + Send + Sync>;

const RESCAN_INTERVAL: Duration = Duration::from_secs(2);

struct PodNetns {
    tasks: Vec<JoinHandle<()>>,
    /// The namespace's cookie, under which its local addresses are kept in the kernel.
    cookie: u64,
}

pub struct Reconciler {
    policy: Arc<Policy>,
    kernel: Kernel,
    fs: CgroupFs,
    maps: Arc<KernelMaps>,
    table: Arc<WorkloadTable>,
    events: Arc<EventSink>,
    spawn: SpawnListener,
    anchors: Vec<PathBuf>,
    host_netns: u64,
    /// The gateway's own namespace's cookie: marked followed (its addresses are the node's),
    /// for pod-mode cgroups that share it.
    host_cookie: u64,
    pods: HashMap<u64, PodNetns>,
    /// Follows the node's local addresses; announces each change.
    node_follower: JoinHandle<()>,
    node_changed: tokio::sync::watch::Receiver<()>,
    /// Rewrite every classification on the next pass (the policy changed).
    rewrite_all: bool,
    /// Cgroups left unclassified on purpose (`Class::Refused`), with why: said once each.
    refused: HashMap<u64, String>,
    /// Why the policy in force is not fully applied to the kernel, for `agentgate status`.
    apply_error: Arc<std::sync::Mutex<Option<String>>>,
}

impl Reconciler {
    pub fn new(
        policy: Arc<Policy>,
        kernel: Kernel,
        fs: CgroupFs,
        table: Arc<WorkloadTable>,
        events: Arc<EventSink>,
        spawn: SpawnListener,
    ) -> Result<Self, CaptureError> {
        let maps = kernel.maps();
        let (tx, node_changed) = tokio::sync::watch::channel(());
        let host_cookie = own_netns_cookie().map_err(|source| CaptureError::Io {
            path: "SO_NETNS_COOKIE".into(),
            source,
        })?;
        maps.sync_local_nets(host_cookie, &[])?;
        let node_follower = RouteSockets::open()
            .and_then(|s| local::follow(s, NODE_NETNS, maps.clone(), Some(tx)))
            .map_err(|source| CaptureError::Io {
                path: "rtnetlink (the node's local addresses)".into(),
                source,
            })?;
        Ok(Self {
            host_cookie,
            node_follower,
            node_changed,
            maps,
            kernel,
            policy,
            fs,
            table,
            events,
            spawn,
            anchors: Vec::new(),
            host_netns: netns::open_netns(std::process::id())?.1,
            pods: HashMap::new(),
            rewrite_all: true,
            refused: HashMap::new(),
            apply_error: Arc::new(std::sync::Mutex::new(None)),
        })
    }

    /// Set while the policy in force could not be fully applied to the kernel.
    pub fn apply_error(&self) -> Arc<std::sync::Mutex<Option<String>>> {
        self.apply_error.clone()
    }

    /// The anchor cgroup directories the programs are attached to.
    pub fn anchors(&self) -> &[PathBuf] {
        &self.anchors
    }

    /// Brings the kernel in line with `policy`: targets first (a destination that stays a target
    /// is never missing), then every cgroup's classification, then the anchors: new ones are
    /// attached before links of anchors that are gone (or of an earlier run) are detached.
    /// Returns how many old links were detached.
    pub fn apply(&mut self, policy: Arc<Policy>) -> Result<usize, CaptureError> {
        self.maps.sync_targets(&target_entries(&policy))?;
        self.maps.sync_local_ports(&local::local_ports(&policy))?;
        self.anchors = anchor_dirs(&policy, &self.fs)?;
        self.policy = policy;
        self.rewrite_all = true;
        self.reconcile()?;
        let mut ids = Vec::new();
        for anchor in &self.anchors {
            let id = CgroupFs::id(anchor).map_err(|source| CaptureError::Io {
                path: anchor.clone(),
                source,
            })?;
            self.kernel.attach(id, anchor).map_err(Box::new)?;
            ids.push(id);
        }
        Ok(self.kernel.detach_except(&ids).map_err(Box::new)?)
    }

    pub fn reconcile(&mut self) -> Result<(), CaptureError> {
        let mut next = HashMap::new();
        let mut refused = HashMap::new();
        let mut newly_refused = Vec::new();
        for anchor in &self.anchors {
            for dir in self.fs.walk(anchor) {
                let (Ok(id), Some(path)) = (CgroupFs::id(&dir), self.fs.rel(&dir)) else {
                    continue;
                };
                let workload = match classify(&self.policy, self.table.pods(), &path) {
                    Class::Managed(i) => Some(i),
                    Class::Unmanaged => None,
                    Class::Refused(why) => {
                        if self.refused.get(&id) != Some(&why) {
                            newly_refused.push((id, path, why.clone()));
                        }
                        refused.insert(id, why);
                        continue;
                    }
                };
                next.insert(id, CgroupInfo { id, path, workload });
            }
        }
        self.refused = refused;
        let prev = self.table.snapshot();
        let rewrite_all = std::mem::take(&mut self.rewrite_all);
        // Removals first, so that entries of deleted cgroups (also those an earlier run left in
        // the pinned map) free room for new ones. One failing entry does not stop the pass: the
        // cgroup it concerns stays refused (unclassified), the others proceed.
        let mut failed = 0;
        for id in self.maps.cgroup_ids() {
            if next.contains_key(&id) {
                continue;
            }
            if let Err(e) = self.maps.remove_cgroup(id) {
                tracing::error!(cgroup_id = id, "removing classification: {e}");
                failed += 1;
            } else if let Some(info) = prev.get(&id) {
                self.events
                    .emit("cgroup_gone", json!({"cgroup": info.path, "cgroup_id": id}));
            }
        }
        // Said once the kernel has no entry for them any more (removed just above): from then
        // on their connections to targets are refused.
        for (id, path, why) in newly_refused {
            tracing::info!(cgroup = %path, "refused: {why}");
            self.events.emit(
                "cgroup_refused",
                json!({"cgroup": path, "cgroup_id": id, "reason": why}),
            );
        }
        let mut known = HashMap::with_capacity(next.len());
        for (id, info) in next {
            if !rewrite_all && prev.get(&id) == Some(&info) {
                known.insert(id, info);
                continue;
            }
            if let Err(e) = self.maps.set_cgroup(id, self.kernel_value(&info)) {
                tracing::error!(cgroup = %info.path, "classifying: {e}; the cgroup stays refused");
                failed += 1;
                continue;
            }
            let w = info.workload.map(|i| &self.policy.workloads[i]);
            self.events.emit(
                "cgroup",
                json!({
                    "cgroup": info.path,
                    "cgroup_id": id,
                    "workload": w.map(|w| w.name.as_str()),
                    "mode": w.map(|w| w.mode),
                }),
            );
            known.insert(id, info);
        }
        if failed > 0 {
            // Retry these on the next pass.
            self.rewrite_all = true;
        }
        self.sync_pod_listeners(&known);
        self.table.replace(known);
        Ok(())
    }

    fn kernel_value(&self, info: &CgroupInfo) -> CgroupValue {
        let state = match info.workload.map(|i| self.policy.workloads[i].mode) {
            None => cgroup_state::UNMANAGED,
            Some(Mode::Host) => cgroup_state::HOST,
            Some(Mode::Pod) => cgroup_state::POD,
        };
        CgroupValue {
            state,
            _pad: 0,
            listen_port: self.policy.gateway.listen_port,
        }
    }

    /// One listener per network namespace that holds a populated pod-mode cgroup; closed when no
    /// such cgroup is left in it.
    fn sync_pod_listeners(&mut self, cgroups: &HashMap<u64, CgroupInfo>) {
        let mut live = HashSet::new();
        for info in cgroups.values() {
            let Some(w) = info.workload.map(|i| &self.policy.workloads[i]) else {
                continue;
            };
            if w.mode != Mode::Pod {
                continue;
            }
            let Some(pid) = CgroupFs::first_pid(&self.fs.abs(&info.path)) else {
                continue;
            };
            let (ns, ino) = match netns::open_netns(pid) {
                Ok(opened) => opened,
                Err(e) => {
                    // Denied (no CAP_SYS_PTRACE for a process of another uid or with more
                    // capabilities): the pod gets no listener and its connections are refused,
                    // so say why. Otherwise the process ended in between: the next pass looks
                    // again.
                    if let CaptureError::Io { source, .. } = &e {
                        if matches!(source.raw_os_error(), Some(libc::EACCES | libc::EPERM)) {
                            tracing::warn!(cgroup = %info.path, "pod listener: {e}");
                        }
                    }
                    continue;
                }
            };
            if ino == self.host_netns {
                // Its connections land on the host listener, which serves them the same way.
                continue;
            }
            live.insert(ino);
            if self.pods.contains_key(&ino) {
                continue;
            }
            match self.open_pod_listeners(ns, pid, ino) {
                Ok((tasks, cookie)) => {
                    self.events.emit(
                        "pod_listener",
                        json!({"cgroup": info.path, "pid": pid, "netns_inode": ino,
                               "port": self.policy.gateway.listen_port}),
                    );
                    self.pods.insert(ino, PodNetns { tasks, cookie });
                }
                // Retried on the next pass; until then the pod's connections are refused.
                Err(e) => tracing::warn!(cgroup = %info.path, "pod listener: {e}"),
            }
        }
        self.pods.retain(|ino, pod| {
            let keep = live.contains(ino);
            if !keep {
                pod.tasks.iter().for_each(JoinHandle::abort);
                self.events
                    .emit("pod_listener_closed", json!({"netns_inode": ino}));
            }
            keep
        });
        let followed = self.pods.values().map(|p| p.cookie);
        local::retain(&self.maps, followed.chain([self.host_cookie]));
    }

    /// Opens the pod's listeners and starts following its local addresses (read once before
    /// this returns). Returns the tasks and the namespace's cookie.
    fn open_pod_listeners(
        &self,
        ns: std::fs::File,
        pid: u32,
        ino: u64,
    ) -> Result<(Vec<JoinHandle<()>>, u64), CaptureError> {
        let io = |source| CaptureError::Io {
            path: format!("/proc/{pid}/ns/net").into(),
            source,
        };
        let held = Arc::new(ns.try_clone().map_err(io)?);
        let port = self.policy.gateway.listen_port;
        let inherited = crate::handover::take_pod_listeners(ino, port)
            .into_iter()
            .map(|(socket, local, netns_cookie)| BoundSocket {
                socket,
                local,
                netns_cookie,
            })
            .collect();
        let (bound, routes) = netns::bind_in_netns(ns, pid, port, inherited)?;
        let cookie = bound.first().map(|b| b.netns_cookie).unwrap_or_default();
        let mut tasks = vec![local::follow(routes, cookie, self.maps.clone(), None).map_err(io)?];
        for b in bound {
            let local = b.local;
            let mut l = b
                .into_listener(ListenerKind::Pod { netns_inode: ino })
                .map_err(|source| CaptureError::Bind {
                    addr: local,
                    source,
                })?;
            l.netns = Some(held.clone());
            tasks.push((self.spawn)(l));
        }
        Ok((tasks, cookie))
    }

    /// Reconciles on every cgroup tree change, every few seconds, and applies each new policy,
    /// until `shutdown`.
    pub async fn run(
        mut self,
        mut policies: tokio::sync::watch::Receiver<Arc<Policy>>,
        shutdown: CancellationToken,
    ) {
        let (mut watcher, mut rx) = match crate::fswatch::change_signal() {
            Ok((mut w, rx)) => {
                for a in &self.anchors {
                    if let Err(e) = w.watch(a, notify::RecursiveMode::Recursive) {
                        tracing::warn!("watching {}: {e}; relying on rescans", a.display());
                    }
                }
                (Some(w), Some(rx))
            }
            Err(e) => {
                tracing::warn!("cgroup watcher unavailable: {e}; relying on rescans");
                (None, None)
            }
        };
        let mut tick = tokio::time::interval(RESCAN_INTERVAL);
        let mut pods_changed = self.table.pods().subscribe();
        let mut watched: Vec<PathBuf> = self.anchors.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = crate::fswatch::next_change(&mut rx) => {}
                _ = tick.tick() => {}
                // What the API server says about a pod changed: its class may have.
                Ok(()) = pods_changed.changed() => {}
                _ = self.node_changed.changed() => {
                    // A node address came or went: a target on it may have become local.
                    if let Err(e) = self.maps.sync_local_ports(&local::local_ports(&self.policy)) {
                        tracing::error!("updating local target ports: {e}");
                    }
                    continue;
                }
                changed = policies.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let policy = policies.borrow_and_update().clone();
                    let result = self.apply(policy);
                    let mut slot = self.apply_error.lock().unwrap_or_else(|p| p.into_inner());
                    match result {
                        Ok(_) => {
                            tracing::info!(anchors = ?self.anchors, "capture follows the new policy");
                            *slot = None;
                        }
                        Err(e) => {
                            tracing::error!("applying the new policy to capture: {e}");
                            self.events.emit("capture_error", json!({"error": e.to_string()}));
                            *slot = Some(e.to_string());
                        }
                    }
                    drop(slot);
                    if let Some(w) = watcher.as_mut() {
                        for a in self.anchors.iter().filter(|a| !watched.contains(a)) {
                            if let Err(e) = w.watch(a, notify::RecursiveMode::Recursive) {
                                tracing::warn!("watching {}: {e}; relying on rescans", a.display());
                            }
                        }
                    }
                    watched = self.anchors.clone();
                    continue;
                }
            }
            if let Err(e) = self.reconcile() {
                tracing::error!("cgroup reconcile: {e}");
            }
        }
        for pod in self.pods.values() {
            pod.tasks.iter().for_each(JoinHandle::abort);
        }
        self.node_follower.abort();
    }
}

/// The cookie of the gateway's own network namespace.
fn own_netns_cookie() -> std::io::Result<u64> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    crate::sockopt::get_u64(&socket, libc::SO_NETNS_COOKIE)
}

/// Anchor directories for the policy's workloads, created if missing (so that capture covers
/// cgroups made later, even while the gateway is down), without nested duplicates.
fn anchor_dirs(policy: &Policy, fs: &CgroupFs) -> Result<Vec<PathBuf>, CaptureError> {
    let mut rels: Vec<String> = policy
        .workloads
        .iter()
        .flat_map(|w| match w.pods {
            // `/{kubepods.slice,kubepods}`: each driver's root, not the whole tree.
            Some(_) => expand_braces(&w.cgroup)
                .iter()
                .map(|g| anchor_of(g))
                .collect(),
            None => vec![anchor_of(&w.cgroup)],
        })
        .collect();
    rels.sort();
    rels.dedup();
    let mut out: Vec<PathBuf> = Vec::new();
    for rel in rels {
        let abs = fs.abs(&rel);
        if out.iter().any(|a| abs.starts_with(a)) {
            continue;
        }
        std::fs::create_dir_all(&abs).map_err(|source| CaptureError::Io {
            path: abs.clone(),
            source,
        })?;
        out.push(abs);
    }
    Ok(out)
}
