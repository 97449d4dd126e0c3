//! Which cgroups are workloads, shared between the reconciler (writer) and the proxy (reader).

use std::{collections::HashMap, sync::RwLock};

use crate::policy::Policy;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupInfo {
    pub id: u64,
    /// Path relative to the cgroup v2 mount.
    pub path: String,
    /// Index into `Policy::workloads`, `None` for a cgroup that is watched but not managed.
    pub workload: Option<usize>,
}

/// A cgroup is managed by the first workload whose selector matches it or, failing that, its
/// nearest matching ancestor: a process cannot leave capture by creating a child cgroup.
pub fn classify(policy: &Policy, path: &str) -> Option<usize> {
    let mut p = path;
    loop {
        if let Some((i, _)) = policy.workload_for(p) {
            return Some(i);
        }
        match p.rfind('/') {
            Some(0) if p.len() > 1 => p = "/",
            Some(i) if i > 0 => p = &p[..i],
            _ => return None,
        }
    }
}

#[derive(Debug, Default)]
pub struct WorkloadTable {
    by_id: RwLock<HashMap<u64, CgroupInfo>>,
}

impl WorkloadTable {
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
        assert_eq!(classify(&policy, "/agents/job-1"), Some(0));
        assert_eq!(classify(&policy, "/agents/job-1/child/grandchild"), Some(0));
        assert_eq!(classify(&policy, "/agents/other"), None);
        assert_eq!(classify(&policy, "/agents"), None);
        assert_eq!(classify(&policy, "/"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
