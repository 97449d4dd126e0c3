//! The socket factory for every upstream connection the gateway opens. Each socket's cookie is
//! registered in the kernel's bypass map for the length of its connect(), so the gateway never
//! captures its own traffic, even when it runs inside a managed cgroup, while no workload can
//! claim the exemption (a cookie is assigned by the kernel; a socket mark could be set by any
//! process with CAP_NET_RAW).

//!
//! Namespace: an upstream socket is opened in the network namespace its destination belongs to.
//! That is the gateway's own, except for a pod's connection to its own loopback or local
//! addresses: those are opened inside the pod (`in_netns`), or they would reach the node's
//! service of that port instead of the pod's. The choice is carried as a task-local set around
//! each accepted connection, so every upstream socket that connection's handler opens (the
//! session, a masking catalog lookup, a cancel request) follows it without each protocol
//! handler passing it along. A task spawned from the handler does not inherit it: such a task
//! must not open upstream sockets.

use std::{fs::File, future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use nix::sched::{setns, CloneFlags};
use tokio::net::{TcpSocket, TcpStream};

use crate::ebpf::KernelMaps;

tokio::task_local! {
    /// The namespace the current connection's upstream sockets are opened in, when it is not
    /// the gateway's own.
    static NETNS: Option<Arc<File>>;
}

/// Runs `f` (the handling of one accepted connection) with its upstream sockets opened in `ns`
/// (`None`: the gateway's own namespace).
pub async fn in_netns<F: Future>(ns: Option<Arc<File>>, f: F) -> F::Output {
    NETNS.scope(ns, f).await
}

fn current_netns() -> Option<Arc<File>> {
    NETNS.try_with(|n| n.clone()).ok().flatten()
}

/// A TCP socket created inside `ns`: a short-lived thread enters the namespace, creates the
/// socket and exits (a socket keeps the namespace it was created in), so no thread the runtime
/// reuses ever changes namespace.
async fn socket_in(ns: Arc<File>, v4: bool) -> io::Result<TcpSocket> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns-socket".into())
        .spawn(move || {
            let made = setns(&*ns, CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)
                .and_then(|()| {
                    let domain = if v4 {
                        socket2::Domain::IPV4
                    } else {
                        socket2::Domain::IPV6
                    };
                    socket2::Socket::new(
                        domain,
                        socket2::Type::STREAM,
                        Some(socket2::Protocol::TCP),
                    )
                })
                .and_then(|s| s.set_nonblocking(true).map(|()| s));
            let _ = tx.send(made);
        })?;
    let socket = rx
        .await
        .map_err(|_| io::Error::other("namespace socket thread ended without a socket"))??;
    Ok(TcpSocket::from_std_stream(std::net::TcpStream::from(
        std::os::fd::OwnedFd::from(socket),
    )))
}

pub trait Connect: Send + Sync + 'static {
    fn connect(&self, dst: SocketAddr) -> impl Future<Output = io::Result<TcpStream>> + Send;
}

impl<T: Connect> Connect for std::sync::Arc<T> {
    fn connect(&self, dst: SocketAddr) -> impl Future<Output = io::Result<TcpStream>> + Send {
        T::connect(self, dst)
    }
}

pub struct BypassConnector {
    pub maps: Arc<KernelMaps>,
    pub timeout: Duration,
}

impl Connect for BypassConnector {
    async fn connect(&self, dst: SocketAddr) -> io::Result<TcpStream> {
        let socket = match current_netns() {
            Some(ns) => socket_in(ns, dst.is_ipv4()).await?,
            None if dst.is_ipv4() => TcpSocket::new_v4()?,
            None => TcpSocket::new_v6()?,
        };
        let cookie = crate::sockopt::get_u64(&socket, libc::SO_COOKIE)?;
        self.maps.bypass(cookie).map_err(io::Error::other)?;
        let result = tokio::time::timeout(self.timeout, socket.connect(dst)).await;
        self.maps.end_bypass(cookie);
        let stream = result.map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer from {dst} within {:?}", self.timeout),
            )
        })??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}
