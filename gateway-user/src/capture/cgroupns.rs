//! The node's cgroup namespace. On cgroup v2, containerd and CRI-O give every container its own
//! cgroup namespace (Kubernetes has no `hostCgroupNS`), the gateway's too: `/proc/<pid>/cgroup`
//! of another pod's process then reads relative to the gateway's own cgroup (`/../../kubepods…`),
//! which matches no path in the tree, and every token file read is refused as "left cgroup".
//! So the gateway enters the node's cgroup namespace (pid 1's; the DaemonSet has `hostPID`) at
//! start. A cgroup namespace is per thread: this runs before any thread exists, and every thread
//! started later inherits it.

use std::{
    fs::File,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use nix::sched::{setns, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum CgroupNsError {
    #[error("{path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("entering the node's cgroup namespace ({path}): {source} (needs CAP_SYS_ADMIN, and hostPID for /proc/1)")]
    Setns { path: PathBuf, source: nix::Error },
}

const OWN: &str = "/proc/thread-self/ns/cgroup";
/// The initial cgroup namespace's inode (`PROC_CGROUP_INIT_INO` in the kernel's proc_ns.h).
const INITIAL: u64 = 0xEFFF_FFFB;

/// Enters the cgroup namespace at `node` (`/proc/1/ns/cgroup`: the node's init, with hostPID)
/// unless the calling thread is in the initial cgroup namespace or already in that one. Returns
/// whether it entered. Call it while the process has one thread.
pub fn enter_host_cgroupns(node: &Path) -> Result<bool, CgroupNsError> {
    let open = |path: &Path| {
        File::open(path).map_err(|source| CgroupNsError::Open {
            path: path.to_path_buf(),
            source,
        })
    };
    let id = |f: &File, path: &Path| {
        f.metadata()
            .map(|m| (m.dev(), m.ino()))
            .map_err(|source| CgroupNsError::Open {
                path: path.to_path_buf(),
                source,
            })
    };
    let own_path = Path::new(OWN);
    let own_file = open(own_path)?;
    let own = id(&own_file, own_path)?;
    if own.1 == INITIAL {
        // The host's own: every path reads in full. (No need to open pid 1's, which a
        // sandbox may forbid even to root.)
        return Ok(false);
    }
    let node_file = open(node)?;
    if id(&node_file, node)? == own {
        return Ok(false);
    }
    setns(&node_file, CloneFlags::CLONE_NEWCGROUP).map_err(|source| CgroupNsError::Setns {
        path: node.to_path_buf(),
        source,
    })?;
    Ok(true)
}
