//! Upgrades without a gap: a new gateway process on the same node takes the listening sockets of
//! the one serving, over a Unix socket (SCM_RIGHTS), and the old one stops accepting and drains.
//!
//! ```text
//! new process                                   old process (serving)
//!   connect(--handover-socket) ───────────────► accept (the peer must be root, or us)
//!   {"op":"take_over"}         ───────────────►
//!                              ◄─────────────── {"op":"socket", …} + the fd, one per socket
//!                              ◄─────────────── {"op":"end","count":n}
//!   loads the programs (pins), classifies,
//!   starts accepting on the same sockets
//!   (both processes accept for a moment)
//!   {"op":"go"}                ───────────────► stops accepting; its sessions finish (drain)
//!                              ◄─────────────── {"op":"released"}
//! ```
//!
//! The sockets are the same kernel objects in both processes, so their accept queues are never
//! closed: a connection that arrives at any instant is accepted by one process or the other
//! (SO_REUSEPORT would give each process its own queue, and connections queued on the old one
//! would be reset when it closes it). The eBPF programs stay attached throughout (pins), so
//! nothing goes direct. Should the new process die before "go", the old one has lost nothing and
//! keeps serving (and answers the next taker); after "go", the programs keep redirecting to
//! sockets nobody accepts on: refused, never open.

mod wire;

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::json;
use socket2::{Domain, SockAddr, Socket, Type};
use tokio_util::sync::CancellationToken;

/// `--handover-socket`, by default `handover.sock` beside the admin socket: gateways with
/// admin sockets of their own (tests, several installations) never take each other over.
pub fn socket_path(given: Option<&Path>, admin_socket: &Path) -> PathBuf {
    given.map(Path::to_path_buf).unwrap_or_else(|| {
        admin_socket
            .parent()
            .unwrap_or(Path::new("/"))
            .join("handover.sock")
    })
}

/// `--after-handover`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AfterHandover {
    #[default]
    Exit,
    Wait,
}

/// How long the old process waits for "go" after handing its sockets over: the new one loads
/// the programs and classifies every cgroup in between.
const GO_TIMEOUT: Duration = Duration::from_secs(120);
/// Each other step is one message.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("handover socket {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("handover with the gateway at {}: {reason}", path.display())]
    Protocol { path: PathBuf, reason: String },
}

/// What a handed socket is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Role {
    /// A listener on the node's loopback (host-mode workloads).
    Host,
    /// A listener inside a pod's network namespace.
    Pod { netns_inode: u64 },
    /// The metrics, /healthz and /readyz endpoint (probes must keep answering).
    Metrics,
    /// The HTTP admin API and console (`--admin-http`): approvers keep reaching the node, and
    /// the new process could not bind the port while the old one holds it.
    AdminHttp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketMeta {
    #[serde(flatten)]
    pub role: Role,
    pub local: SocketAddr,
    pub netns_cookie: u64,
}

/// The last id given, and each registered socket by id.
type Entries = (u64, HashMap<u64, (SocketMeta, OwnedFd)>);

/// The listening sockets this process serves, each held as a duplicate descriptor for as long as
/// it is served, so that a taker gets exactly the live ones.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Entries>,
}

/// Unregisters its socket when dropped (with the task that serves it).
pub struct Registered {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.lock().1.remove(&self.id);
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(
        self: &Arc<Self>,
        meta: SocketMeta,
        fd: BorrowedFd<'_>,
    ) -> io::Result<Registered> {
        let fd = fd.try_clone_to_owned()?;
        let mut inner = self.lock();
        inner.0 += 1;
        let id = inner.0;
        inner.1.insert(id, (meta, fd));
        Ok(Registered {
            registry: self.clone(),
            id,
        })
    }

    fn snapshot(&self) -> io::Result<Vec<(SocketMeta, OwnedFd)>> {
        let inner = self.lock();
        let mut out: Vec<_> = inner
            .1
            .iter()
            .map(|(id, (meta, fd))| Ok((*id, meta.clone(), fd.try_clone()?)))
            .collect::<io::Result<_>>()?;
        out.sort_by_key(|(id, _, _)| *id);
        Ok(out.into_iter().map(|(_, m, f)| (m, f)).collect())
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> HandoverError + '_ {
    move |source| HandoverError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn protocol(path: &Path, reason: impl Into<String>) -> HandoverError {
    HandoverError::Protocol {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Where this process answers takers.
pub struct Server {
    socket: Socket,
}

/// Binds the handover socket (root only), replacing a file left by an earlier process: the
/// caller has already asked whoever listened there (see [`take_over`]).
pub fn listen(path: &Path) -> Result<Server, HandoverError> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(path))?;
    }
    let _ = std::fs::remove_file(path);
    let socket =
        Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None).map_err(io_err(path))?;
    socket
        .bind(&SockAddr::unix(path).map_err(io_err(path))?)
        .map_err(io_err(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err(path))?;
    socket.listen(4).map_err(io_err(path))?;
    Ok(Server { socket })
}

impl Server {
    /// Answers takers on a thread of its own, one at a time, until one completes the handover
    /// (then `handed` is cancelled) or `stop` is. A taker that fails or vanishes half-way
    /// changes nothing here.
    pub fn spawn(
        self,
        pin_dir: PathBuf,
        registry: Arc<Registry>,
        handed: CancellationToken,
        stop: CancellationToken,
    ) -> io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("handover".into())
            .spawn(move || {
                while !stop.is_cancelled() {
                    let conn = match self.accept(&stop) {
                        Ok(Some(c)) => c,
                        Ok(None) => return,
                        Err(e) => {
                            tracing::warn!("handover accept: {e}");
                            std::thread::sleep(Duration::from_millis(200));
                            continue;
                        }
                    };
                    match serve_taker(&conn, &pin_dir, &registry) {
                        Ok(pid) => {
                            tracing::info!(taker_pid = pid, "sockets handed over");
                            handed.cancel();
                            return;
                        }
                        Err(e) => tracing::warn!("handover abandoned, still serving: {e}",),
                    }
                }
            })
    }

    /// Waits for a taker, looking at `stop` every 200 ms.
    fn accept(&self, stop: &CancellationToken) -> io::Result<Option<Socket>> {
        loop {
            if stop.is_cancelled() {
                return Ok(None);
            }
            let mut pfd = libc::pollfd {
                fd: self.socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, 200) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                continue;
            }
            let (conn, _) = self.socket.accept()?;
            let cred =
                nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials)
                    .map_err(io::Error::from)?;
            // SAFETY: trivial libc call.
            let me = unsafe { libc::geteuid() };
            if cred.uid() != 0 && cred.uid() != me {
                tracing::warn!(
                    uid = cred.uid(),
                    pid = cred.pid(),
                    "handover refused to a non-root peer"
                );
                continue;
            }
            return Ok(Some(conn));
        }
    }
}

/// One taker: its request, every live socket, then its "go". Returns the taker's pid.
fn serve_taker(conn: &Socket, pin_dir: &Path, registry: &Registry) -> io::Result<u64> {
    let bad = |what: &str| io::Error::other(what.to_string());
    let (req, _) = wire::recv(conn, STEP_TIMEOUT)?.ok_or_else(|| bad("taker left"))?;
    if req["op"] != "take_over" {
        wire::send(
            conn,
            &json!({"op": "refused", "reason": "expected take_over"}),
            None,
        )?;
        return Err(bad("not a take_over request"));
    }
    // Only a gateway of the same installation: same pins, same map layout.
    let refuse = |reason: String| {
        let _ = wire::send(conn, &json!({"op": "refused", "reason": reason}), None);
        Err(io::Error::other(reason))
    };
    if req["pin_dir"].as_str() != pin_dir.to_str() {
        return refuse(format!(
            "this gateway's pin directory is {}, not {}",
            pin_dir.display(),
            req["pin_dir"]
        ));
    }
    if req["layout"].as_u64() != Some(gateway_common::MAP_LAYOUT_VERSION as u64) {
        return refuse(format!(
            "this gateway's map layout is version {}, not {}",
            gateway_common::MAP_LAYOUT_VERSION,
            req["layout"]
        ));
    }
    let pid = req["pid"].as_u64().unwrap_or(0);
    let sockets = registry.snapshot()?;
    for (meta, fd) in &sockets {
        let mut msg = serde_json::to_value(meta).map_err(io::Error::other)?;
        msg["op"] = "socket".into();
        wire::send(conn, &msg, Some(fd.as_raw_fd()))?;
    }
    wire::send(conn, &json!({"op": "end", "count": sockets.len()}), None)?;
    let (go, _) = wire::recv(conn, GO_TIMEOUT)?.ok_or_else(|| bad("taker left before go"))?;
    if go["op"] != "go" {
        return Err(bad("expected go"));
    }
    // The new process accepts already; from here this one only drains. Telling it so is a
    // courtesy: it has the sockets either way.
    let _ = wire::send(
        conn,
        &json!({"op": "released", "pid": std::process::id()}),
        None,
    );
    Ok(pid)
}

/// The sockets taken from the gateway that was serving, until [`Inherited::go`].
pub struct Inherited {
    sockets: Vec<(SocketMeta, OwnedFd)>,
    conn: Socket,
    path: PathBuf,
}

/// Asks the gateway answering at `path` for its sockets. `Ok(None)`: nobody answers there
/// (no file, or a file a stopped gateway left): start afresh.
pub fn take_over(path: &Path, pin_dir: &Path) -> Result<Option<Inherited>, HandoverError> {
    let conn = Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None).map_err(io_err(path))?;
    match conn.connect(&SockAddr::unix(path).map_err(io_err(path))?) {
        Ok(()) => {}
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ECONNREFUSED)) => {
            return Ok(None)
        }
        Err(e) => return Err(io_err(path)(e)),
    }
    wire::send(
        &conn,
        &json!({"op": "take_over", "pid": std::process::id(),
                "layout": gateway_common::MAP_LAYOUT_VERSION, "pin_dir": pin_dir}),
        None,
    )
    .map_err(io_err(path))?;
    let mut sockets = Vec::new();
    loop {
        let (msg, fd) = wire::recv(&conn, STEP_TIMEOUT)
            .map_err(io_err(path))?
            .ok_or_else(|| protocol(path, "the serving gateway closed the connection"))?;
        match msg["op"].as_str() {
            Some("socket") => {
                let fd = fd.ok_or_else(|| protocol(path, "a socket message without its fd"))?;
                let meta: SocketMeta = serde_json::from_value(msg)
                    .map_err(|e| protocol(path, format!("socket description: {e}")))?;
                check_listening(&fd).map_err(|e| protocol(path, format!("{}: {e}", meta.local)))?;
                sockets.push((meta, fd));
            }
            Some("refused") => {
                return Err(protocol(
                    path,
                    format!("refused: {}", msg["reason"].as_str().unwrap_or("?")),
                ))
            }
            Some("end") => {
                if msg["count"].as_u64() != Some(sockets.len() as u64) {
                    return Err(protocol(path, "socket count mismatch"));
                }
                break;
            }
            _ => return Err(protocol(path, format!("unexpected message {msg}"))),
        }
    }
    Ok(Some(Inherited {
        sockets,
        conn,
        path: path.to_path_buf(),
    }))
}

/// A handed descriptor must be a listening TCP socket: anything else is refused, not served.
fn check_listening(fd: &OwnedFd) -> io::Result<()> {
    let s = socket2::SockRef::from(fd);
    if s.r#type()? != Type::STREAM || !s.is_listener()? {
        return Err(io::Error::other("not a listening stream socket"));
    }
    Ok(())
}

fn into_listener(fd: OwnedFd) -> io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::from(fd);
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Pod listeners taken over, until the reconciler adopts them (`take_pod_listeners`). A
/// process-wide pool: the reconciler opens pod listeners deep in capture, long after the
/// handover, and this is the one seam between the two.
static POD_POOL: Mutex<Vec<(SocketMeta, OwnedFd)>> = Mutex::new(Vec::new());

fn pod_pool() -> std::sync::MutexGuard<'static, Vec<(SocketMeta, OwnedFd)>> {
    POD_POOL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The taken-over listeners of the pod namespace `netns_inode` on `port` (empty: bind afresh).
pub fn take_pod_listeners(
    netns_inode: u64,
    port: u16,
) -> Vec<(std::net::TcpListener, SocketAddr, u64)> {
    let mut pool = pod_pool();
    let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut *pool)
        .into_iter()
        .partition(|(m, _)| m.role == Role::Pod { netns_inode } && m.local.port() == port);
    *pool = rest;
    mine.into_iter()
        .filter_map(|(m, fd)| match into_listener(fd) {
            Ok(l) => Some((l, m.local, m.netns_cookie)),
            Err(e) => {
                tracing::warn!(local = %m.local, "taken-over pod listener unusable: {e}");
                None
            }
        })
        .collect()
}

/// Closes this process's copies of pod listeners no pod claimed (the pod went meanwhile).
pub fn drop_unclaimed_pod_listeners() -> usize {
    std::mem::take(&mut *pod_pool()).len()
}

impl Inherited {
    pub fn count(&self) -> usize {
        self.sockets.len()
    }

    /// The host listeners (every port: connections classified under an earlier policy's port
    /// still arrive there until the classification is rewritten).
    pub fn take_host(&mut self) -> Vec<(SocketMeta, std::net::TcpListener)> {
        self.take_role(|r| *r == Role::Host)
    }

    pub fn take_metrics(&mut self) -> Option<std::net::TcpListener> {
        self.take_role(|r| *r == Role::Metrics)
            .into_iter()
            .next()
            .map(|(_, l)| l)
    }

    pub fn take_admin_http(&mut self) -> Option<std::net::TcpListener> {
        self.take_role(|r| *r == Role::AdminHttp)
            .into_iter()
            .next()
            .map(|(_, l)| l)
    }

    /// Moves the pod listeners to the pool the reconciler adopts them from.
    pub fn stage_pods(&mut self) -> usize {
        let (pods, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.sockets)
            .into_iter()
            .partition(|(m, _)| matches!(m.role, Role::Pod { .. }));
        self.sockets = rest;
        let n = pods.len();
        pod_pool().extend(pods);
        n
    }

    fn take_role(
        &mut self,
        want: impl Fn(&Role) -> bool,
    ) -> Vec<(SocketMeta, std::net::TcpListener)> {
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.sockets)
            .into_iter()
            .partition(|(m, _)| want(&m.role));
        self.sockets = rest;
        mine.into_iter()
            .filter_map(|(m, fd)| match into_listener(fd) {
                Ok(l) => Some((m, l)),
                Err(e) => {
                    tracing::warn!(local = %m.local, "taken-over listener unusable: {e}");
                    None
                }
            })
            .collect()
    }

    /// Tells the old process to stop accepting: this one accepts on the sockets now. Returns the
    /// old process's pid when it confirmed.
    pub fn go(self) -> Result<Option<u64>, HandoverError> {
        wire::send(&self.conn, &json!({"op": "go"}), None).map_err(io_err(&self.path))?;
        match wire::recv(&self.conn, STEP_TIMEOUT) {
            Ok(Some((msg, _))) if msg["op"] == "released" => Ok(msg["pid"].as_u64()),
            Ok(other) => Err(protocol(&self.path, format!("no release: {other:?}"))),
            Err(e) => Err(io_err(&self.path)(e)),
        }
    }
}

/// Registers a served listener under its role (for the next taker).
pub fn register_listener(
    registry: &Arc<Registry>,
    role: Role,
    local: SocketAddr,
    netns_cookie: u64,
    fd: impl AsFd,
) -> Option<Registered> {
    registry
        .register(
            SocketMeta {
                role,
                local,
                netns_cookie,
            },
            fd.as_fd(),
        )
        .map_err(|e| tracing::warn!(%local, "listener not registered for handover: {e}"))
        .ok()
}
