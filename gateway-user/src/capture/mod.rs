//! Capture: which cgroups are agent workloads, the listeners their redirected connections land
//! on (host loopback, or inside each pod's network namespace), and the original destination of
//! each accepted connection.

mod cgroupfs;
mod cgroupns;
mod kubelet_cgroup;
mod listener;
mod local;
mod netlink;
mod netns;
mod pod_watch;
mod pods;
mod reconcile;
pub mod workload_files;
mod workloads;

pub use cgroupfs::CgroupFs;
pub use cgroupns::enter_host_cgroupns;
pub use kubelet_cgroup::{level_below, node_root_of, Level as KubeletLevel};
pub use listener::{bind_loopback, Listener, ListenerKind};
pub use local::{resolve_target, upstream_netns, DstScope};
pub use pod_watch::{KubeApi, PodWatch};
pub use pods::PodCache;
pub use reconcile::{Reconciler, SpawnListener};
/// For tests that fill the workload table without a reconciler (`proxy/toy_tests.rs`).
#[cfg(test)]
pub use workloads::CgroupInfo;
pub use workloads::{workload_of, WorkloadTable};

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("no cgroup v2 mount found in /proc/self/mountinfo (is cgroup v2 enabled?)")]
    NoCgroup2,
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("entering the network namespace of pid {pid}: {source}")]
    Netns { pid: u32, source: nix::Error },
    #[error("binding the listener {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("updating the kernel maps: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error(transparent)]
    Kernel(#[from] Box<crate::ebpf::KernelError>),
}
