//! Which cgroups are workloads, shared between the reconciler (writer) and the proxy (reader).

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use super::{
    kubelet_cgroup::{self, Level},
    pods::{Lookup, PodCache, PodMeta},
};
use crate::policy::Policy;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupInfo {
    pub id: u64,
    /// Path relative to the cgroup v2 mount.
    pub path: String,
    /// Index into `Policy::workloads`, `None` for a cgroup that is watched but not managed.
    pub workload: Option<usize>,
}

/// What a cgroup is to the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// The workload at this index in `Policy::workloads`.
    Managed(usize),
    /// No workload: its connections go direct.
    Unmanaged,
    /// Below a `pods:` workload's kubelet root, but not a pod the gateway can vouch for (its
    /// path is not the kubelet's, or the API server has not told the gateway about the pod):
    /// left unclassified, so the kernel refuses its connections to targets.
    Refused(String),
}

/// A cgroup is managed by the first workload whose selector matches it or, failing that, its
/// nearest matching ancestor: a process cannot leave capture by creating a child cgroup. A
/// `pods:` workload's glob matches the kubelet's root; a cgroup below it is that workload's
/// when its pod (by the UID in the path) is one the selector picks.
pub fn classify(policy: &Policy, pods: &PodCache, path: &str) -> Class {
    let mut p = path;
    loop {
        for (i, w) in policy.workloads.iter().enumerate() {
            if !w.matcher.is_match(p) {
                continue;
            }
            let Some(selector) = &w.pods else {
                return Class::Managed(i);
            };
            match pod_of(pods, p, path) {
                Ok(pod) => {
                    if selector.matches(&pod.namespace, &pod.service_account, &pod.labels) {
                        return Class::Managed(i);
                    }
                    // Another workload may select it.
                }
                Err(why) => return Class::Refused(why),
            }
        }
        match p.rfind('/') {
            Some(0) if p.len() > 1 => p = "/",
            Some(i) if i > 0 => p = &p[..i],
            _ => return Class::Unmanaged,
        }
    }
}

/// The workload of `path`, if it is managed.
pub fn workload_of(policy: &Policy, pods: &PodCache, path: &str) -> Option<usize> {
    match classify(policy, pods, path) {
        Class::Managed(i) => Some(i),
        Class::Unmanaged | Class::Refused(_) => None,
    }
}

/// The pod `path` belongs to, below the kubelet root `root` (an ancestor of `path`, or itself).
fn pod_of(pods: &PodCache, root: &str, path: &str) -> Result<Arc<PodMeta>, String> {
    let uid = match kubelet_cgroup::level_below(root, path) {
        Ok(Level::Pod(pod)) => pod.uid,
        Ok(level) => return Err(format!("not a pod's cgroup ({level:?} of the kubelet)")),
        Err(e) => return Err(format!("not a kubelet pod cgroup: {e}")),
    };
    match pods.lookup(&uid) {
        Lookup::Known(pod) => Ok(pod),
        Lookup::Unknown => Err(format!("pod {uid} is unknown to the API server")),
        Lookup::Unsynced => Err(format!(
            "pod {uid}: the pods of this node have not been read from the API server yet"
        )),
    }
}

#[derive(Default)]
pub struct WorkloadTable {
    by_id: RwLock<HashMap<u64, CgroupInfo>>,
    /// This node's pods, for `pods:` workloads.
    pods: Arc<PodCache>,
}

impl WorkloadTable {
    pub fn with_pods(pods: Arc<PodCache>) -> Self {
        Self {
            by_id: RwLock::default(),
            pods,
        }
    }

    pub fn pods(&self) -> &Arc<PodCache> {
        &self.pods
    }

    /// The workload a connection from `path` belongs to under `policy`, if any.
    pub fn classify(&self, policy: &Policy, path: &str) -> Option<usize> {
        workload_of(policy, &self.pods, path)
    }

    pub fn get(&self, id: u64) -> Option<CgroupInfo> {
        self.by_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    pub fn snapshot(&self) -> HashMap<u64, CgroupInfo> {
        self.by_id.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn replace(&self, next: HashMap<u64, CgroupInfo>) {
        *self.by_id.write().unwrap_or_else(|p| p.into_inner()) = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_inherit_and_strangers_do_not() {
        let dir = std::env::temp_dir().join(format!("agentgate-classify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("w.yaml"),
            "version: 2\nworkloads:\n  - name: jobs\n    cgroup: /agents/job-*\n    mode: host\n    token: {from: credential}\n",
        )
        .unwrap();
        let policy = crate::policy::load_dir(&dir).unwrap();
        let t = WorkloadTable::default();
        assert_eq!(t.classify(&policy, "/agents/job-1"), Some(0));
        assert_eq!(
            t.classify(&policy, "/agents/job-1/child/grandchild"),
            Some(0)
        );
        assert_eq!(t.classify(&policy, "/agents/other"), None);
        assert_eq!(t.classify(&policy, "/agents"), None);
        assert_eq!(t.classify(&policy, "/"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pods_by_selector_and_unknown_pods_refused() {
        let dir =
            std::env::temp_dir().join(format!("agentgate-classify-pods-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("w.yaml"),
            "version: 2\nworkloads:\n  - name: agents\n    pods: {namespaces: [ai], labels: {app: agent}}\n    cgroup: /k/{kubepods.slice,kubepods}\n    token: {from: credential}\n",
        )
        .unwrap();
        let policy = crate::policy::load_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let uid = "5f2b7c1e-9a4d-4e2b-8c3f-1a2b3c4d5e6f";
        let cid = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let systemd = format!(
            "/k/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{cid}.scope",
            uid.replace('-', "_")
        );
        let cgroupfs = format!("/k/kubepods/pod{uid}/{cid}");
        let pods = PodCache::default();
        // Before the API server answered: refused, whatever the pod.
        assert!(matches!(
            classify(&policy, &pods, &systemd),
            Class::Refused(_)
        ));
        pods.replace_all(vec![]);
        assert!(matches!(
            classify(&policy, &pods, &cgroupfs),
            Class::Refused(_)
        ));
        let meta = |ns: &str, app: &str| PodMeta {
            uid: uid.into(),
            namespace: ns.into(),
            name: "a-0".into(),
            service_account: "default".into(),
            labels: [("app".to_string(), app.to_string())].into(),
        };
        pods.upsert(meta("ai", "agent"));
        assert_eq!(classify(&policy, &pods, &systemd), Class::Managed(0));
        assert_eq!(classify(&policy, &pods, &cgroupfs), Class::Managed(0));
        assert_eq!(
            classify(&policy, &pods, &format!("{cgroupfs}/sub")),
            Class::Managed(0)
        );
        pods.upsert(meta("ai", "web"));
        assert_eq!(classify(&policy, &pods, &systemd), Class::Unmanaged);
        pods.upsert(meta("other", "agent"));
        assert_eq!(classify(&policy, &pods, &cgroupfs), Class::Unmanaged);
        // Not the kubelet's layout below its root: refused, not guessed.
        for bad in [
            "/k/kubepods/x",
            "/k/kubepods.slice/pod1",
            "/k/kubepods",
            "/k/kubepods/burstable",
        ] {
            assert!(
                matches!(classify(&policy, &pods, bad), Class::Refused(_)),
                "{bad}"
            );
        }
        // Outside the roots: nothing to do with pods.
        assert_eq!(classify(&policy, &pods, "/k/other/pod1"), Class::Unmanaged);
    }
}
