//! The node's cgroup namespace. On cgroup v2, containerd and CRI-O give every container its own
//! cgroup namespace (Kubernetes has no `hostCgroupNS`), the gateway's too: `/proc/<pid>/cgroup`
//! of another pod's process then reads relative to the gateway's own cgroup (`/../../kubepods…`),
//! which matches no path in the tree, and every token file read is refused as "left cgroup".
//! So the gateway enters the node's cgroup namespace (pid 1's; the DaemonSet has `hostPID`) at
//! start. A cgroup namespace is per thread: this runs before any thread exists, and every thread
//! started later inherits it.

use std::{fs::File, os::unix::fs::MetadataExt};

use nix::sched::{setns, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum CgroupNsError {
    #[error("{path}: {source}")]
    Open {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("entering the node's cgroup namespace (/proc/1/ns/cgroup): {0} (needs CAP_SYS_ADMIN and hostPID)")]
    Setns(nix::Error),
}

const OWN: &str = "/proc/thread-self/ns/cgroup";
const NODE: &str = "/proc/1/ns/cgroup";

/// Enters pid 1's cgroup namespace if the calling thread is in another one. Returns whether it
/// did. Call it while the process has one thread.
pub fn enter_host_cgroupns() -> Result<bool, CgroupNsError> {
    let open = |path: &'static str| {
        File::open(path).map_err(|source| CgroupNsError::Open { path, source })
    };
    let own = open(OWN)?;
    let node = open(NODE)?;
    let ino = |f: &File, path: &'static str| {
        f.metadata()
            .map(|m| (m.dev(), m.ino()))
            .map_err(|source| CgroupNsError::Open { path, source })
    };
    if ino(&own, OWN)? == ino(&node, NODE)? {
        return Ok(false);
    }
    setns(&node, CloneFlags::CLONE_NEWCGROUP).map_err(CgroupNsError::Setns)?;
    Ok(true)
}
