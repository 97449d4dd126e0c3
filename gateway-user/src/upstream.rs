//! The socket factory for every connection the gateway itself opens. Each socket carries the
//! bypass `SO_MARK`, which the eBPF programs honour, so the gateway never captures its own
//! traffic even when it runs inside a managed cgroup.

use std::{future::Future, io, net::SocketAddr, time::Duration};

use nix::sys::socket::{setsockopt, sockopt};
use tokio::net::{TcpSocket, TcpStream};

pub trait Connect: Send + Sync + 'static {
    fn connect(&self, dst: SocketAddr) -> impl Future<Output = io::Result<TcpStream>> + Send;
}

#[derive(Debug, Clone)]
pub struct MarkedConnector {
    pub mark: u32,
    pub timeout: Duration,
}

impl Connect for MarkedConnector {
    async fn connect(&self, dst: SocketAddr) -> io::Result<TcpStream> {
        let socket = if dst.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        setsockopt(&socket, sockopt::Mark, &self.mark).map_err(io::Error::from)?;
        let stream = tokio::time::timeout(self.timeout, socket.connect(dst))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer from {dst} within {:?}", self.timeout),
                )
            })??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}
