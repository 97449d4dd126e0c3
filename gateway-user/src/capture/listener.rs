//! Loopback listeners that redirected connections land on. A listener knows the network
//! namespace it lives in (its netns cookie), which is half of the key under which the kernel left
//! each connection's original destination.

use std::{
    fs::File,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use super::CaptureError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerKind {
    /// On the host loopback, for host-mode workloads.
    Host,
    /// Inside a workload's own network namespace (identified by its inode).
    Pod { netns_inode: u64 },
}

pub struct Listener {
    pub inner: tokio::net::TcpListener,
    pub local: SocketAddr,
    pub netns_cookie: u64,
    pub kind: ListenerKind,
    /// The namespace of a pod listener, held open: upstream connections to the pod's own
    /// (loopback or local) destinations are opened in it.
    pub netns: Option<Arc<File>>,
}

/// Bound but not yet registered with tokio, so it can be created on a thread that has entered
/// another network namespace.
pub struct BoundSocket {
    pub socket: std::net::TcpListener,
    pub local: SocketAddr,
    pub netns_cookie: u64,
}

impl BoundSocket {
    pub fn into_listener(self, kind: ListenerKind) -> std::io::Result<Listener> {
        Ok(Listener {
            inner: tokio::net::TcpListener::from_std(self.socket)?,
            local: self.local,
            netns_cookie: self.netns_cookie,
            kind,
            netns: None,
        })
    }
}

/// Binds `127.0.0.1:port` and, where the namespace has IPv6, `[::1]:port` in the calling
/// thread's network namespace.
pub fn bind_loopback(port: u16) -> Result<Vec<BoundSocket>, CaptureError> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let mut out = vec![bind(v4)?];
    match bind(v6) {
        Ok(s) => out.push(s),
        // A namespace without IPv6 simply has no IPv6 targets to capture.
        Err(CaptureError::Bind { source, .. })
            if source.raw_os_error() == Some(libc::EADDRNOTAVAIL)
                || source.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
        {
            tracing::warn!("no IPv6 loopback here; listening on {v4} only");
        }
        Err(e) => return Err(e),
    }
    Ok(out)
}

fn bind(addr: SocketAddr) -> Result<BoundSocket, CaptureError> {
    let err = |source| CaptureError::Bind { addr, source };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    // Agents open many connections at once; a short backlog would turn a burst into SYN retries.
    socket.listen(4096).map_err(err)?;
    let netns_cookie = crate::sockopt::get_u64(&socket, libc::SO_NETNS_COOKIE).map_err(err)?;
    Ok(BoundSocket {
        socket: socket.into(),
        local: addr,
        netns_cookie,
    })
}
