//! The socket factory: every outbound TCP connection the gateway makes (a target upstream, a
//! masking catalog lookup, a PostgreSQL cancel request, a JWKS or discovery fetch, an approval
//! webhook, the central audit store) is opened by [`SocketFactory::connect`], and nowhere else.
//!
//! One rule for all of them: the socket's kernel cookie is registered in `AG_BYPASS` before its
//! connect() and removed after, so capture never redirects the gateway's own traffic, even when
//! the gateway runs inside a managed cgroup. A cookie is assigned by the kernel, so a workload
//! cannot claim the exemption (a socket mark could be set by any process with CAP_NET_RAW). If
//! the registration fails, the connect is not attempted: an unregistered socket to a captured
//! destination would be redirected into the gateway's own listener and judged as a workload's,
//! so the caller gets [`ConnectError::NotExempt`] instead (fail closed).
//!
//! Namespace: a target's upstream socket is opened in the network namespace its destination
//! belongs to. That is the gateway's own, except for a pod's connection to its own loopback or
//! local addresses: those are opened inside the pod, or they would reach the node's service of
//! that port instead of the pod's. The choice is carried as a task-local set around each
//! accepted connection ([`in_netns`]), so every [`Netns::Connection`] socket that connection's
//! handler opens (the session, a masking catalog lookup, a cancel request) follows it without
//! each protocol handler passing it along. A task spawned from the handler does not inherit it:
//! such a task must not open upstream sockets. The gateway's own services (identity providers,
//! webhooks, the central audit store) are always dialled from the gateway's namespace
//! ([`Netns::Gateway`]), whichever connection's handling needs them.

use std::{fs::File, future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use nix::sched::{setns, CloneFlags};
use tokio::net::{TcpSocket, TcpStream};

use crate::ebpf::KernelMaps;

tokio::task_local! {
    /// The namespace the current connection's upstream sockets are opened in, when it is not
    /// the gateway's own.
    static NETNS: Option<Arc<File>>;
}

/// Runs `f` (the handling of one accepted connection) with its [`Netns::Connection`] sockets
/// opened in `ns` (`None`: the gateway's own namespace).
pub async fn in_netns<F: Future>(ns: Option<Arc<File>>, f: F) -> F::Output {
    NETNS.scope(ns, f).await
}

fn current_netns() -> Option<Arc<File>> {
    NETNS.try_with(|n| n.clone()).ok().flatten()
}

/// Which network namespace a socket is opened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Netns {
    /// The destination's side of the connection being handled: the pod's namespace for a pod's
    /// local target (set by [`in_netns`]), else the gateway's.
    Connection,
    /// The gateway's own, always: its identity providers, webhooks and central audit store.
    Gateway,
}

/// Why a registration in the kernel's list of the gateway's own sockets failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ExemptionError(pub String);

/// The kernel's list of the gateway's own sockets (`AG_BYPASS`, [`KernelMaps`]), behind a trait
/// so that the factory's rule can be tested without root.
pub trait OwnSockets: Send + Sync + 'static {
    /// Exempts the socket with this cookie from capture.
    fn begin(&self, cookie: u64) -> Result<(), ExemptionError>;
    /// Ends the exemption (the connect is over: capture only looks at connect()).
    fn end(&self, cookie: u64);
}

impl OwnSockets for KernelMaps {
    fn begin(&self, cookie: u64) -> Result<(), ExemptionError> {
        self.bypass(cookie)
            .map_err(|e| ExemptionError(format!("AG_BYPASS: {e}")))
    }

    fn end(&self, cookie: u64) {
        self.end_bypass(cookie);
    }
}

/// Why [`SocketFactory::connect`] gave no connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("creating a socket for {dst}: {source}")]
    Socket {
        dst: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("reading the cookie of the socket for {dst}: {source}")]
    Cookie {
        dst: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The socket could not be registered as the gateway's own: not connected (fail closed).
    #[error(
        "not connecting to {dst}: the socket could not be registered as the gateway's own \
         ({source}), and capture would take it for a workload's"
    )]
    NotExempt {
        dst: SocketAddr,
        #[source]
        source: ExemptionError,
    },
    #[error("no answer from {dst} within {timeout:?}")]
    Timeout { dst: SocketAddr, timeout: Duration },
    #[error("connecting to {dst}: {source}")]
    Connect {
        dst: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// For the byte-stream callers ([`Connect`]): the OS error itself where there is one, as
/// before the factory existed (events and agents see the same texts), else the typed error.
impl From<ConnectError> for io::Error {
    fn from(e: ConnectError) -> io::Error {
        match e {
            ConnectError::Socket { source, .. }
            | ConnectError::Cookie { source, .. }
            | ConnectError::Connect { source, .. } => source,
            e @ ConnectError::Timeout { .. } => io::Error::new(io::ErrorKind::TimedOut, e),
            e @ ConnectError::NotExempt { .. } => {
                io::Error::new(io::ErrorKind::PermissionDenied, e)
            }
        }
    }
}

/// Opens every outbound TCP connection of the gateway (see the module documentation).
pub struct SocketFactory {
    own: Arc<dyn OwnSockets>,
}

/// Ends a registration when dropped, also when the connecting future is dropped mid-connect
/// (a caller's own timeout).
struct Registration<'a> {
    own: &'a dyn OwnSockets,
    cookie: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.own.end(self.cookie);
    }
}

impl SocketFactory {
    pub fn new(own: Arc<dyn OwnSockets>) -> Self {
        SocketFactory { own }
    }

    /// A TCP connection to `dst` from a socket opened in `netns`, registered as the gateway's
    /// own for the length of its connect(), with `timeout` on the connect and Nagle off.
    pub async fn connect(
        &self,
        dst: SocketAddr,
        netns: Netns,
        timeout: Duration,
    ) -> Result<TcpStream, ConnectError> {
        let ns = match netns {
            Netns::Connection => current_netns(),
            Netns::Gateway => None,
        };
        let socket = match ns {
            Some(ns) => socket_in(ns, dst.is_ipv4()).await,
            None if dst.is_ipv4() => TcpSocket::new_v4(),
            None => TcpSocket::new_v6(),
        }
        .map_err(|source| ConnectError::Socket { dst, source })?;
        let cookie = crate::sockopt::get_u64(&socket, libc::SO_COOKIE)
            .map_err(|source| ConnectError::Cookie { dst, source })?;
        // The rule: no registration, no connect (the socket is closed unconnected).
        self.own
            .begin(cookie)
            .map_err(|source| ConnectError::NotExempt { dst, source })?;
        let registered = Registration {
            own: &*self.own,
            cookie,
        };
        let result = tokio::time::timeout(timeout, socket.connect(dst)).await;
        drop(registered);
        let stream = result
            .map_err(|_| ConnectError::Timeout { dst, timeout })?
            .map_err(|source| ConnectError::Connect { dst, source })?;
        stream
            .set_nodelay(true)
            .map_err(|source| ConnectError::Connect { dst, source })?;
        Ok(stream)
    }
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

/// How protocol handlers and the audit sink get their byte streams (a test can stand in for
/// the factory).
pub trait Connect: Send + Sync + 'static {
    fn connect(&self, dst: SocketAddr) -> impl Future<Output = io::Result<TcpStream>> + Send;
}

impl<T: Connect> Connect for std::sync::Arc<T> {
    fn connect(&self, dst: SocketAddr) -> impl Future<Output = io::Result<TcpStream>> + Send {
        T::connect(self, dst)
    }
}

/// The factory as a [`Connect`]: one namespace choice and one connect timeout.
pub struct Dialer {
    pub sockets: Arc<SocketFactory>,
    pub netns: Netns,
    pub timeout: Duration,
}

impl Connect for Dialer {
    async fn connect(&self, dst: SocketAddr) -> io::Result<TcpStream> {
        Ok(self.sockets.connect(dst, self.netns, self.timeout).await?)
    }
}

/// The registry in unit tests, where no capture runs: every registration succeeds.
#[cfg(test)]
pub(crate) struct Uncaptured;

#[cfg(test)]
impl OwnSockets for Uncaptured {
    fn begin(&self, _cookie: u64) -> Result<(), ExemptionError> {
        Ok(())
    }
    fn end(&self, _cookie: u64) {}
}

#[cfg(test)]
#[path = "socket_tests.rs"]
mod tests;
