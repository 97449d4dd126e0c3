//! What the API server says about this node's pods (namespace, name, service account, labels),
//! keyed by pod UID; filled by the watch in `pod_watch.rs`, read when a cgroup below the
//! kubelet's root is classified. A pod not in the cache (not seen yet, or the API server never
//! answered) is not guessed about: its cgroups are refused.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
};

use crate::policy::Policy;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMeta {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
}

pub enum Lookup {
    /// The cache has never been filled: the API server has not answered yet.
    Unsynced,
    Unknown,
    Known(Arc<PodMeta>),
}

#[derive(Default)]
struct State {
    synced: bool,
    pods: HashMap<String, Arc<PodMeta>>,
}

pub struct PodCache {
    state: RwLock<State>,
    /// Bumped on every change, so the reconciler classifies again at once.
    changed: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for PodCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodCache")
            .field("pods", &self.len())
            .finish()
    }
}

impl Default for PodCache {
    fn default() -> Self {
        Self {
            state: RwLock::default(),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl PodCache {
    pub fn lookup(&self, uid: &str) -> Lookup {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        if !st.synced {
            return Lookup::Unsynced;
        }
        match st.pods.get(uid) {
            Some(p) => Lookup::Known(p.clone()),
            None => Lookup::Unknown,
        }
    }

    /// A full list: pods not in it are gone.
    pub fn replace_all(&self, pods: Vec<PodMeta>) {
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        st.pods = pods
            .into_iter()
            .map(|p| (p.uid.clone(), Arc::new(p)))
            .collect();
        st.synced = true;
        drop(st);
        self.bump();
    }

    pub fn upsert(&self, pod: PodMeta) {
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        if st.pods.get(&pod.uid).is_some_and(|p| **p == pod) {
            return;
        }
        st.pods.insert(pod.uid.clone(), Arc::new(pod));
        drop(st);
        self.bump();
    }

    pub fn remove(&self, uid: &str) {
        let removed = self
            .state
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .pods
            .remove(uid)
            .is_some();
        if removed {
            self.bump();
        }
    }

    pub fn len(&self) -> usize {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .pods
            .len()
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }
}

/// Whether the policy selects any workload by pod (then the pod watch is needed).
pub fn selects_pods(policy: &Policy) -> bool {
    policy.workloads.iter().any(|w| w.pods.is_some())
}
