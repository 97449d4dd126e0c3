//! Kernel side of agentgate's transparent capture.
//!
//! All programs are attached to *anchor* cgroups (the literal prefix of a workload selector), so
//! they also run for cgroups created while the gateway is down. Userspace classifies each cgroup
//! under an anchor in `AG_CGROUPS`; a cgroup it has not classified yet is refused access to
//! targets rather than let through (fail closed).
//!
//! Hand-over of the original destination: connect4/6 stores it by socket cookie; sock_ops re-keys
//! it at ACTIVE_ESTABLISHED by (netns cookie, client address, client port), which is exactly what
//! the proxy sees as the peer of the accepted socket. This works the same for host and pod
//! listeners and, unlike an emulated SO_ORIGINAL_DST via cgroup/getsockopt, needs no hook in the
//! gateway's own cgroup.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_netns_cookie,
        bpf_get_socket_cookie,
    },
    macros::{cgroup_sock, cgroup_sock_addr, map, sock_ops},
    maps::{lpm_trie::Key, HashMap, LpmTrie, LruHashMap},
    programs::{SockAddrContext, SockContext, SockOpsContext},
    EbpfContext,
};
use aya_log_ebpf::{debug, warn};
use gateway_common::{
    cgroup_state, dst_flags, target_flags, v4_mapped, CgroupValue, LocalKey, OrigDst, PeerKey,
    TargetKey, TargetValue, CGROUP_MAP_CAPACITY, CONN_MAP_CAPACITY, FOLLOWED_MARKER,
    LOCAL_NETNS_BITS, LOCAL_NETS_CAPACITY, NODE_NETNS, TARGET_MAP_CAPACITY, TARGET_PORT_BITS,
};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
/// Multipath TCP (`socket(AF_INET, SOCK_STREAM, IPPROTO_MPTCP)`).
const IPPROTO_MPTCP: u32 = 262;
/// SCTP, on kernels that have it: its SOCK_SEQPACKET sockets are neither TCP nor UDP, so
/// nothing else here would judge them.
const IPPROTO_SCTP: u32 = 132;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[map(name = "AG_TARGETS")]
static TARGETS: LpmTrie<TargetKey, TargetValue> = LpmTrie::pinned(TARGET_MAP_CAPACITY, 0);

/// Addresses each namespace delivers locally (its local routes), kept by userspace from netlink:
/// the node's under `NODE_NETNS`, each pod's under its netns cookie.
#[map(name = "AG_LOCAL_NETS")]
static LOCAL_NETS: LpmTrie<LocalKey, u8> = LpmTrie::pinned(LOCAL_NETS_CAPACITY, 0);

/// Ports (host order) of targets that list a local address: on such a port every local
/// destination reaches the same local socket (a server bound to `[::]` or `0.0.0.0` answers on
/// all of them), so every local destination is captured, not only the listed one.
#[map(name = "AG_LOCAL_PORTS")]
static LOCAL_PORTS: HashMap<u16, TargetValue> = HashMap::pinned(TARGET_MAP_CAPACITY, 0);

#[map(name = "AG_CGROUPS")]
static CGROUPS: HashMap<u64, CgroupValue> = HashMap::pinned(CGROUP_MAP_CAPACITY, 0);

#[map(name = "AG_BY_COOKIE")]
static BY_COOKIE: LruHashMap<u64, OrigDst> = LruHashMap::pinned(CONN_MAP_CAPACITY, 0);

#[map(name = "AG_BY_PEER")]
static BY_PEER: LruHashMap<PeerKey, OrigDst> = LruHashMap::pinned(CONN_MAP_CAPACITY, 0);

/// Socket cookies of the gateway's own upstream sockets, registered by the gateway for the
/// duration of their connect(). A cookie is assigned by the kernel, so unlike a socket mark a
/// workload cannot forge one to slip past capture.
#[map(name = "AG_BYPASS")]
static BYPASS: LruHashMap<u64, u8> = LruHashMap::pinned(CONN_MAP_CAPACITY, 0);

enum Verdict {
    Pass,
    Refuse,
    Redirect { listen_port: u16, orig: OrigDst },
}

/// Decides what happens to a connect() (or a UDP sendmsg()) to `addr`:`port` (network bytes /
/// network-order port). A TCP socket that connects again (after a failed attempt) must not keep
/// an earlier record, so every verdict but Redirect forgets it.
#[inline(always)]
fn decide(ctx: &SockAddrContext, addr: [u8; 16], port_be: u16, family: u16) -> Verdict {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands us a valid bpf_sock_addr for the program's lifetime.
    match unsafe { (*sa).type_ } {
        SOCK_STREAM => {
            // SAFETY: sock_addr contexts accept the socket cookie helper.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            let verdict = decide_stream(ctx, addr, port_be, family, cookie);
            if !matches!(verdict, Verdict::Redirect { .. })
                && !just_redirected(cookie, addr, port_be)
            {
                let _ = BY_COOKIE.remove(cookie);
            }
            verdict
        }
        SOCK_DGRAM => decide_datagram(ctx, addr, port_be),
        _ => Verdict::Pass,
    }
}

/// While a new generation of these programs is attached beside the old one (a restart or an
/// upgrade attaches before it detaches), both run on every connect(): the second sees the address
/// the first rewrote to, the gateway's listener on loopback, and must leave the first one's
/// record alone, or the gateway accepts a connection it cannot place (`not_redirected`).
#[inline(always)]
fn just_redirected(cookie: u64, addr: [u8; 16], port_be: u16) -> bool {
    // SAFETY: the value is plain data copied out at once.
    let listen_port = match unsafe { BY_COOKIE.get(cookie) } {
        Some(orig) => orig.listen_port,
        None => return false,
    };
    listen_port == u16::from_be(port_be) && is_loopback(&addr)
}

/// UDP is not proxied. To a target marked `UDP_REFUSED` (or a local alias of its port) it is
/// refused from managed and from not yet classified cgroups, by the same matching as TCP.
#[inline(always)]
fn decide_datagram(ctx: &SockAddrContext, addr: [u8; 16], port_be: u16) -> Verdict {
    let addr = loopback_if_unspecified(addr);
    let (id, alias) = match_target(addr, port_be);
    if id == NO_TARGET || !(TargetValue { id }).has(target_flags::UDP_REFUSED) {
        return Verdict::Pass;
    }
    if alias != 0 && locality(ctx, addr) == 0 && !unfollowed_pod(ctx) {
        return Verdict::Pass;
    }
    // SAFETY: helper without arguments, valid in every cgroup program.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the value is plain data copied out at once.
    match unsafe { CGROUPS.get(cgroup_id) } {
        Some(c) if c.state == cgroup_state::UNMANAGED => Verdict::Pass,
        _ => Verdict::Refuse,
    }
}

/// `match_target` found no target.
const NO_TARGET: u32 = u32::MAX;

/// The target entry `addr`:`port` falls under, as (`TargetValue::id`, alias flag): one that lists
/// it (alias flag 0), or the local target of its port (`dst_flags::ALIAS`; whether the
/// destination is local is for the caller); `NO_TARGET` when neither. Plain integers rather than
/// an `Option` of the value: LLVM turns the latter into arithmetic on map-value pointers, which
/// the verifier rejects.
#[inline(always)]
fn match_target(addr: [u8; 16], port_be: u16) -> (u32, u32) {
    let key = Key::new(
        TARGET_PORT_BITS + 128,
        TargetKey {
            port: port_be.to_ne_bytes(),
            addr,
        },
    );
    match TARGETS.get(&key) {
        Some(t) => (t.id, 0),
        // SAFETY: copied out at once.
        None => match unsafe { LOCAL_PORTS.get(u16::from_be(port_be)) } {
            Some(t) => (t.id, dst_flags::ALIAS),
            None => (NO_TARGET, 0),
        },
    }
}

#[inline(always)]
fn decide_stream(
    ctx: &SockAddrContext,
    addr: [u8; 16],
    port_be: u16,
    family: u16,
    cookie: u64,
) -> Verdict {
    // SAFETY: copied out at once.
    if unsafe { BYPASS.get(cookie) }.is_some() {
        return Verdict::Pass;
    }
    // The kernel turns an unspecified destination into loopback only after this hook, so
    // 0.0.0.0 and :: are matched (and recorded) as the loopback address they will become.
    let addr = loopback_if_unspecified(addr);
    let port = u16::from_be(port_be);
    let (id, alias) = match_target(addr, port_be);
    if id == NO_TARGET {
        return Verdict::Pass;
    }
    let target_id = (TargetValue { id }).index();
    let flags = locality(ctx, addr) | alias;
    if alias != 0 && flags == alias {
        // Not local: an ordinary destination that merely shares a local target's port — unless
        // it comes from a pod whose own addresses are not known yet (its listener, which starts
        // following them, is not open yet): then it may be one of them, and is refused.
        if unfollowed_pod(ctx) {
            warn!(
                ctx,
                "pod namespace not followed yet; refused a local target's port"
            );
            return Verdict::Refuse;
        }
        return Verdict::Pass;
    }
    // SAFETY: helper without arguments, valid in every cgroup program.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the value is plain data copied out at once.
    let Some(cgroup) = (unsafe { CGROUPS.get(cgroup_id) }).copied() else {
        warn!(ctx, "unclassified cgroup {} refused to a target", cgroup_id);
        return Verdict::Refuse;
    };
    if cgroup.state != cgroup_state::HOST && cgroup.state != cgroup_state::POD {
        return Verdict::Pass;
    }
    let orig = OrigDst {
        addr,
        port,
        family,
        target_id,
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        flags,
        cgroup_id,
        // SAFETY: both helpers accept a sock_addr context.
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        socket_cookie: cookie,
        listen_port: cgroup.listen_port,
        _pad: [0; 6],
    };
    Verdict::Redirect {
        listen_port: cgroup.listen_port,
        orig,
    }
}

/// Where `addr` (already mapped from unspecified to loopback) is delivered locally, as
/// `dst_flags`: the connecting namespace's loopback, one of its own tracked addresses, or one of
/// the node's addresses; 0 when it is not local. Not inlined: inlined, LLVM folds "is it 0" into
/// an OR of the two lookups' map-value pointers, which the verifier rejects.
#[inline(never)]
fn locality(ctx: &SockAddrContext, addr: [u8; 16]) -> u32 {
    if is_loopback(&addr) {
        return dst_flags::LOOPBACK;
    }
    // SAFETY: sock_addr contexts accept the netns cookie helper.
    let own = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let key = |netns: u64| {
        Key::new(
            LOCAL_NETNS_BITS + 128,
            LocalKey {
                netns: netns.to_ne_bytes(),
                addr,
            },
        )
    };
    if LOCAL_NETS.get(key(own)).is_some() {
        dst_flags::OWN
    } else if LOCAL_NETS.get(key(NODE_NETNS)).is_some() {
        dst_flags::NODE
    } else {
        0
    }
}

/// A managed pod-mode cgroup whose network namespace has no `FOLLOWED_MARKER` yet.
#[inline(always)]
fn unfollowed_pod(ctx: &SockAddrContext) -> bool {
    // SAFETY: helper without arguments, valid in every cgroup program.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the value is plain data copied out at once.
    let pod = (unsafe { CGROUPS.get(cgroup_id) }).is_some_and(|c| c.state == cgroup_state::POD);
    if !pod {
        return false;
    }
    // SAFETY: sock_addr contexts accept the netns cookie helper.
    let own = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let key = Key::new(
        LOCAL_NETNS_BITS + 128,
        LocalKey {
            netns: own.to_ne_bytes(),
            addr: FOLLOWED_MARKER,
        },
    );
    LOCAL_NETS.get(&key).is_none()
}

/// 127.0.0.0/8 (as `::ffff:127.x.y.z`) or ::1: local in every namespace, whatever userspace has
/// or has not reported yet.
#[inline(always)]
fn is_loopback(a: &[u8; 16]) -> bool {
    let mut lo6 = [0u8; 16];
    lo6[15] = 1;
    (is_v4_mapped(a) && a[12] == 127) || *a == lo6
}

#[inline(always)]
fn loopback_if_unspecified(addr: [u8; 16]) -> [u8; 16] {
    if addr == [0u8; 16] {
        let mut lo = [0u8; 16];
        lo[15] = 1;
        lo
    } else if addr == v4_mapped([0, 0, 0, 0]) {
        v4_mapped([127, 0, 0, 1])
    } else {
        addr
    }
}

#[inline(always)]
fn remember(ctx: &SockAddrContext, orig: &OrigDst) -> bool {
    if BY_COOKIE.insert(orig.socket_cookie, orig, 0).is_err() {
        warn!(ctx, "could not record original destination; refusing");
        return false;
    }
    debug!(
        ctx,
        "redirect pid {} cgroup {} port {}", orig.pid, orig.cgroup_id, orig.port
    );
    true
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: 4-byte reads of the connect context.
    let (ip, port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    match decide(&ctx, v4_mapped(ip.to_ne_bytes()), port as u16, AF_INET) {
        Verdict::Pass => ALLOW,
        Verdict::Refuse => REFUSE,
        Verdict::Redirect { listen_port, orig } => {
            if !remember(&ctx, &orig) {
                return REFUSE;
            }
            // SAFETY: 4-byte writes are what the verifier allows for these fields.
            unsafe {
                (*sa).user_ip4 = u32::from_ne_bytes([127, 0, 0, 1]);
                (*sa).user_port = listen_port.to_be() as u32;
            }
            ALLOW
        }
    }
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: 4-byte reads of the connect context.
    let (words, port) = unsafe { ((*sa).user_ip6, (*sa).user_port) };
    let addr = words_to_bytes(words);
    match decide(&ctx, addr, port as u16, AF_INET6) {
        Verdict::Pass => ALLOW,
        Verdict::Refuse => REFUSE,
        Verdict::Redirect { listen_port, orig } => {
            if !remember(&ctx, &orig) {
                return REFUSE;
            }
            // A v4-mapped destination travels over IPv4, so it must land on the IPv4 listener.
            let listener = if is_v4_mapped(&addr) {
                v4_mapped([127, 0, 0, 1])
            } else {
                let mut a = [0u8; 16];
                a[15] = 1;
                a
            };
            let w = bytes_to_words(listener);
            // SAFETY: 4-byte writes are what the verifier allows for these fields.
            unsafe {
                (*sa).user_ip6[0] = w[0];
                (*sa).user_ip6[1] = w[1];
                (*sa).user_ip6[2] = w[2];
                (*sa).user_ip6[3] = w[3];
                (*sa).user_port = listen_port.to_be() as u32;
            }
            ALLOW
        }
    }
}

/// Unconnected UDP (`sendto`): refused to targets marked `udp: refuse`, passed otherwise. A
/// connected UDP socket was judged at its connect(), so its sends do not come here.
#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: 4-byte reads of the sendmsg context.
    let (ip, port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    match decide(&ctx, v4_mapped(ip.to_ne_bytes()), port as u16, AF_INET) {
        Verdict::Refuse => REFUSE,
        _ => ALLOW,
    }
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: 4-byte reads of the sendmsg context.
    let (words, port) = unsafe { ((*sa).user_ip6, (*sa).user_port) };
    match decide(&ctx, words_to_bytes(words), port as u16, AF_INET6) {
        Verdict::Refuse => REFUSE,
        _ => ALLOW,
    }
}

/// Multipath TCP and SCTP are refused to managed (and not yet classified) cgroups at socket().
/// MPTCP's connect() is judged on a subflow socket, whose cookie the MPTCP socket does not
/// share, so `getpeername()` could not show the original destination and the record would be
/// keyed by the subflow; clients that try MPTCP first (Go's dialer, say) fall back to TCP on
/// the error. SCTP is not proxied at all.
#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    // SAFETY: a 4-byte read of the socket the hook was given.
    let protocol = unsafe { (*ctx.sock).protocol };
    if protocol != IPPROTO_MPTCP && protocol != IPPROTO_SCTP {
        return ALLOW;
    }
    // SAFETY: helper without arguments, valid in every cgroup program.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the value is plain data copied out at once.
    match unsafe { CGROUPS.get(cgroup_id) } {
        Some(c) if c.state == cgroup_state::UNMANAGED => ALLOW,
        _ => {
            warn!(
                &ctx,
                "socket of protocol {} refused in cgroup {}", protocol, cgroup_id
            );
            REFUSE
        }
    }
}

/// Re-keys the original destination by the client end of the connection once the kernel has
/// chosen the ephemeral port.
#[sock_ops]
pub fn handover(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        return 1;
    }
    // SAFETY: sock_ops contexts accept the socket cookie helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied out at once.
    let Some(orig) = (unsafe { BY_COOKIE.get(cookie) }).copied() else {
        return 1;
    };
    // Only the connection the record was made for: the one to the gateway listener.
    // (sock_ops keeps remote_port as a 32-bit big-endian number, unlike bpf_sock_addr.)
    if u32::from_be(ctx.remote_port()) != orig.listen_port as u32 {
        return 1;
    }
    let addr = if ctx.family() == AF_INET as u32 {
        v4_mapped(ctx.local_ip4().to_ne_bytes())
    } else {
        words_to_bytes(local_ip6(&ctx))
    };
    let key = PeerKey {
        netns_cookie: orig.netns_cookie,
        addr,
        port: ctx.local_port() as u16,
        _pad: [0; 6],
    };
    if BY_PEER.insert(key, orig, 0).is_err() {
        warn!(&ctx, "could not hand over original destination");
    }
    1
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    // SAFETY: sock_addr contexts accept the socket cookie helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied out at once.
    if let Some(orig) = (unsafe { BY_COOKIE.get(cookie) }).copied() {
        let sa = ctx.sock_addr;
        // SAFETY: 4-byte writes of the getpeername context.
        unsafe {
            (*sa).user_ip4 =
                u32::from_ne_bytes([orig.addr[12], orig.addr[13], orig.addr[14], orig.addr[15]]);
            (*sa).user_port = orig.port.to_be() as u32;
        }
    }
    1
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    // SAFETY: sock_addr contexts accept the socket cookie helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied out at once.
    if let Some(orig) = (unsafe { BY_COOKIE.get(cookie) }).copied() {
        let w = bytes_to_words(orig.addr);
        let sa = ctx.sock_addr;
        // SAFETY: 4-byte writes of the getpeername context.
        unsafe {
            (*sa).user_ip6[0] = w[0];
            (*sa).user_ip6[1] = w[1];
            (*sa).user_ip6[2] = w[2];
            (*sa).user_ip6[3] = w[3];
            (*sa).user_port = orig.port.to_be() as u32;
        }
    }
    1
}

/// Drops the per-socket record when the client socket goes away; LRU eviction is the backstop.
#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    // SAFETY: cgroup/sock contexts accept the socket cookie helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = BY_COOKIE.remove(cookie);
    1
}

/// Reads `local_ip6` one word at a time at constant offsets from the context pointer: the
/// verifier rejects the pointer arithmetic an array copy compiles to.
#[inline(always)]
fn local_ip6(ctx: &SockOpsContext) -> [u32; 4] {
    let ops = ctx.ops;
    // SAFETY: 4-byte reads of a valid sock_ops context.
    unsafe {
        [
            core::ptr::read_volatile(core::ptr::addr_of!((*ops).local_ip6[0])),
            core::ptr::read_volatile(core::ptr::addr_of!((*ops).local_ip6[1])),
            core::ptr::read_volatile(core::ptr::addr_of!((*ops).local_ip6[2])),
            core::ptr::read_volatile(core::ptr::addr_of!((*ops).local_ip6[3])),
        ]
    }
}

#[inline(always)]
fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff
}

#[inline(always)]
fn words_to_bytes(w: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = w[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

#[inline(always)]
fn bytes_to_words(b: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
