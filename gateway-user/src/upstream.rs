//! The socket factory for every upstream connection the gateway opens. Each socket's cookie is
//! registered in the kernel's bypass map for the length of its connect(), so the gateway never
//! captures its own traffic, even when it runs inside a managed cgroup, while no workload can
//! claim the exemption (a cookie is assigned by the kernel; a socket mark could be set by any
//! process with CAP_NET_RAW).

use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::{TcpSocket, TcpStream};

use crate::ebpf::KernelMaps;

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
        let socket = if dst.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
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
