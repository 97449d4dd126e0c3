//! Opening listeners inside another process's network namespace, the way Istio ztunnel's in-pod
//! mode does: a short-lived thread enters the namespace, binds, and exits. The sockets stay in
//! that namespace; no other thread of the gateway ever changes namespace.

use std::{fs::File, os::unix::fs::MetadataExt};

use nix::sched::{setns, CloneFlags};

use super::{listener::BoundSocket, CaptureError};

/// Inode of the network namespace of `pid`, which identifies the namespace.
pub fn netns_inode(pid: u32) -> Result<u64, CaptureError> {
    let path = format!("/proc/{pid}/ns/net");
    std::fs::metadata(&path)
        .map(|m| m.ino())
        .map_err(|source| CaptureError::Io {
            path: path.into(),
            source,
        })
}

/// Binds the loopback listeners on `port` inside the network namespace of `pid`.
pub fn bind_in_netns_of(pid: u32, port: u16) -> Result<Vec<BoundSocket>, CaptureError> {
    let path = format!("/proc/{pid}/ns/net");
    let ns = File::open(&path).map_err(|source| CaptureError::Io {
        path: path.clone().into(),
        source,
    })?;
    std::thread::Builder::new()
        .name("netns-enter".into())
        .spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|source| CaptureError::Netns { pid, source })?;
            super::bind_loopback(port)
        })
        .map_err(|source| CaptureError::Io {
            path: path.clone().into(),
            source,
        })?
        .join()
        .unwrap_or_else(|_| {
            Err(CaptureError::Io {
                path: path.into(),
                source: std::io::Error::other("namespace thread panicked"),
            })
        })
}
