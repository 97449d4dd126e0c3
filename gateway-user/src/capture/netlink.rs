//! The addresses a network namespace delivers locally, read from its routing tables over
//! rtnetlink (the kernel's own answer: `RTN_LOCAL` routes cover interface addresses, loopback
//! ranges and AnyIP routes alike), and a subscription that reports every change.
//!
//! A netlink socket belongs to the namespace it was created in, so a pod's pair is created on a
//! short-lived thread that entered the pod (`netns::bind_in_netns` does the same for listeners)
//! and is then read from anywhere.

use std::{
    io,
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use ipnet::IpNet;
use tokio::io::{unix::AsyncFd, Interest};

const NLMSG_HDR: usize = 16;
const RTMSG: usize = 12;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTN_LOCAL: u8 = 2;
const RTA_DST: u16 = 1;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
/// Route and address changes of both families.
const GROUPS: u32 = 0x10 /* IPV4_IFADDR */ | 0x40 /* IPV4_ROUTE */ | 0x100 /* IPV6_IFADDR */
    | 0x400 /* IPV6_ROUTE */;

/// A namespace's pair of route sockets: one to ask (dump), one that hears about changes.
pub struct RouteSockets {
    dump: OwnedFd,
    events: OwnedFd,
}

impl RouteSockets {
    /// Opens both sockets in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        Ok(Self {
            dump: socket(0, false)?,
            events: socket(GROUPS, true)?,
        })
    }

    /// Every prefix the namespace delivers locally.
    pub fn local_nets(&self) -> io::Result<Vec<IpNet>> {
        dump_local(&self.dump)
    }

    /// The event socket, for `changed`.
    pub fn watch(self) -> io::Result<(OwnedFd, AsyncFd<OwnedFd>)> {
        // SAFETY: the AsyncFd owns the descriptor, so it stays open (and is the same socket)
        // for as long as it is registered.
        let events = unsafe { AsyncFd::register_with_interest(self.events, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok((self.dump, events))
    }
}

/// Waits until the kernel reports a change (or the socket overflowed, which means changes were
/// lost: the caller re-reads either way), then drains what is queued.
pub async fn changed(events: &AsyncFd<OwnedFd>) -> io::Result<()> {
    let mut guard = events.readable().await?;
    let mut buf = [0u8; 8192];
    loop {
        // SAFETY: reading into a stack buffer of the given length.
        let n = unsafe {
            libc::recv(
                events.get_ref().as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => {
                    guard.clear_ready();
                    return Ok(());
                }
                // Overflow: something changed that we did not see; a re-read covers it.
                Some(libc::ENOBUFS) => continue,
                _ => return Err(e),
            }
        }
    }
}

fn socket(groups: u32, nonblocking: bool) -> io::Result<OwnedFd> {
    let flags =
        libc::SOCK_RAW | libc::SOCK_CLOEXEC | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, flags, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_nl is valid; fields set below.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    sa.nl_groups = groups;
    // SAFETY: sa is a valid sockaddr_nl of the given size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if !nonblocking {
        // A dump answers at once; never hang a reconcile on a kernel that does not.
        let tv = libc::timeval {
            tv_sec: Duration::from_secs(2).as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: valid timeval for SO_RCVTIMEO.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
    }
    Ok(fd)
}

/// Dumps the routing tables of both families and keeps the `RTN_LOCAL` destinations.
pub fn dump_local(fd: &OwnedFd) -> io::Result<Vec<IpNet>> {
    let mut req = [0u8; NLMSG_HDR + RTMSG];
    req[0..4].copy_from_slice(&((NLMSG_HDR + RTMSG) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETROUTE.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    let seq: u32 = std::process::id() ^ 0x6167;
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    // rtmsg family AF_UNSPEC (0): every family.
    // SAFETY: sending a buffer of the given length.
    let n = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: reading into a buffer of the given length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut msgs = &buf[..n as usize];
        while msgs.len() >= NLMSG_HDR {
            let len = u32::from_ne_bytes([msgs[0], msgs[1], msgs[2], msgs[3]]) as usize;
            let kind = u16::from_ne_bytes([msgs[4], msgs[5]]);
            let mseq = u32::from_ne_bytes([msgs[8], msgs[9], msgs[10], msgs[11]]);
            if len < NLMSG_HDR || len > msgs.len() {
                return Err(io::Error::other("truncated netlink message"));
            }
            let body = &msgs[NLMSG_HDR..len];
            if mseq == seq {
                match kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let errno = body
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(-libc::EIO);
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                    RTM_NEWROUTE => out.extend(local_route(body)),
                    _ => {}
                }
            }
            msgs = &msgs[align(len).min(msgs.len())..];
        }
    }
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// The destination prefix of an `RTN_LOCAL` route, from an rtmsg and its attributes.
fn local_route(body: &[u8]) -> Option<IpNet> {
    if body.len() < RTMSG || body[7] != RTN_LOCAL {
        return None;
    }
    let (family, dst_len) = (body[0] as i32, body[1]);
    let mut attrs = &body[RTMSG..];
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            return None;
        }
        let data = &attrs[4..len];
        if kind == RTA_DST {
            let ip = match (family, data.len()) {
                (libc::AF_INET, 4) => IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3])),
                (libc::AF_INET6, 16) => {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(data);
                    IpAddr::V6(Ipv6Addr::from(a))
                }
                _ => return None,
            };
            return IpNet::new(ip, dst_len).ok().map(|n| n.trunc());
        }
        attrs = &attrs[align(len).min(attrs.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_namespace_has_local_loopback_routes() {
        let s = RouteSockets::open().expect("route sockets");
        let nets = s.local_nets().expect("dump");
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(nets.iter().any(|n| n.contains(&lo)), "{nets:?}");
    }
}
