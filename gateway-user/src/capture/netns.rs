//! Opening listeners inside another process's network namespace, the way Istio ztunnel's in-pod
//! mode does: a short-lived thread enters the namespace, binds, and exits. The sockets stay in
//! that namespace; no other thread of the gateway ever changes namespace.

use std::{fs::File, os::unix::fs::MetadataExt};

use nix::sched::{setns, CloneFlags};

use super::{listener::BoundSocket, netlink::RouteSockets, CaptureError};

/// Opens the network namespace of `pid` and returns it with its inode, which identifies it.
/// Callers use this one file for both, so a pid reused in between cannot swap the namespace.
pub fn open_netns(pid: u32) -> Result<(File, u64), CaptureError> {
    let path = format!("/proc/{pid}/ns/net");
    let io = |source| CaptureError::Io {
        path: path.clone().into(),
        source,
    };
    let file = File::open(&path).map_err(io)?;
    let ino = file.metadata().map_err(io)?.ino();
    Ok((file, ino))
}

/// Binds the loopback listeners on `port` inside the network namespace `ns` (of `pid`), unless
/// `inherited` has them already (taken over from the previous gateway process, handover/), and
/// opens the route sockets that follow the namespace's local addresses there.
pub fn bind_in_netns(
    ns: File,
    pid: u32,
    port: u16,
    inherited: Vec<BoundSocket>,
) -> Result<(Vec<BoundSocket>, RouteSockets), CaptureError> {
    let failed = |reason: &str| CaptureError::Io {
        path: format!("/proc/{pid}/ns/net").into(),
        source: std::io::Error::other(reason.to_string()),
    };
    std::thread::Builder::new()
        .name("netns-enter".into())
        .spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|source| CaptureError::Netns { pid, source })?;
            let bound = if inherited.is_empty() {
                super::bind_loopback(port)?
            } else {
                inherited
            };
            let routes = RouteSockets::open().map_err(|source| CaptureError::Io {
                path: format!("/proc/{pid}/ns/net (rtnetlink)").into(),
                source,
            })?;
            Ok((bound, routes))
        })
        .map_err(|_| failed("cannot start the namespace thread"))?
        .join()
        .unwrap_or_else(|_| Err(failed("namespace thread panicked")))
}
