//! The socket factory for every upstream connection the gateway opens. Each socket's cookie is
//! registered in the kernel's bypass map for the length of its connect(), so the gateway never
//! captures its own traffic, even when it runs inside a managed cgroup, while no workload can
//! claim the exemption (a cookie is assigned by the kernel; a socket mark could be set by any
//! process with CAP_NET_RAW).

use std::{future::Future, io, net::SocketAddr, os::fd::AsRawFd, sync::Arc, time::Duration};

use tokio::net::{TcpSocket, TcpStream};

use crate::ebpf::KernelMaps;

pub trait Connect: Send + Sync + 'static {
    fn connect(&self, dst: SocketAddr) -> impl Future<Output = io::Result<TcpStream>> + Send;
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
        let cookie = socket_cookie(&socket)?;
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

fn socket_cookie(socket: &impl AsRawFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd and a u64-sized out buffer with its length.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(io::Error::last_os_error())
    }
}
