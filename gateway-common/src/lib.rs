//! Types shared by the eBPF programs and the userspace gateway.
//!
//! Every struct here is a map key or value: `#[repr(C)]`, no implicit padding (explicit `_pad`
//! fields), so both sides agree on the bytes and the verifier never sees uninitialised stack.
#![no_std]

/// Names of the maps, as pinned under the gateway's bpffs directory.
pub mod map_names {
    pub const TARGETS: &str = "AG_TARGETS";
    pub const CGROUPS: &str = "AG_CGROUPS";
    pub const BY_COOKIE: &str = "AG_BY_COOKIE";
    pub const BY_PEER: &str = "AG_BY_PEER";
    pub const BYPASS: &str = "AG_BYPASS";
    pub const LOCAL_NETS: &str = "AG_LOCAL_NETS";
    pub const LOCAL_PORTS: &str = "AG_LOCAL_PORTS";
    /// Userspace only (no program reads it): one `u32`, the `MAP_LAYOUT_VERSION` the pins were
    /// made with.
    pub const META: &str = "AG_META";
}

/// Version of what is pinned: every map's name, type, key, value and capacity, the meaning of
/// their entries, and the link names. A gateway reuses pins of its own version only (the programs
/// of an upgraded gateway then find the classifications of the old one); any other version is
/// refused with the `agentgate uninstall` hint, never reused half-understood. Bump it with any
/// such change. Pins made before the version existed (no `AG_META`) are version 1: this layout.
pub const MAP_LAYOUT_VERSION: u32 = 1;

/// Capacity of the connection-tracking LRU maps. LRU eviction bounds memory; the proxy also
/// deletes each entry as soon as it has read it.
pub const CONN_MAP_CAPACITY: u32 = 65_536;
/// How many cgroups under the watched anchors can be classified at once.
pub const CGROUP_MAP_CAPACITY: u32 = 65_536;
/// How many (port, prefix) target entries fit.
pub const TARGET_MAP_CAPACITY: u32 = 16_384;

/// How many local (netns, prefix) entries fit: the node's and every pod's local routes.
pub const LOCAL_NETS_CAPACITY: u32 = 16_384;

/// Bits of an LPM key that cover the port, which comes first so that it must match exactly.
pub const TARGET_PORT_BITS: u32 = 16;

/// LPM trie key data: destination port (network byte order, as in `bpf_sock_addr.user_port`'s low
/// 16 bits) followed by the IPv6 address (IPv4 as `::ffff:a.b.c.d`), both as raw network bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetKey {
    pub port: [u8; 2],
    pub addr: [u8; 16],
}

/// What the programs need to know about a target. The low bits of `id` index the userspace
/// target table of the policy generation that wrote it (userspace resolves by original address,
/// so a stale index is harmless); the high bits are `target_flags`. Flags ride in the same word,
/// not a new field, so the value keeps its size and maps pinned by an earlier version stay
/// loadable across an upgrade.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetValue {
    pub id: u32,
}

impl TargetValue {
    pub const fn new(index: u32, flags: u32) -> Self {
        Self {
            id: (index & target_flags::INDEX_MASK) | flags,
        }
    }

    pub const fn index(&self) -> u32 {
        self.id & target_flags::INDEX_MASK
    }

    pub const fn has(&self, flag: u32) -> bool {
        self.id & flag != 0
    }
}

/// Bits of `TargetValue::id` above the target index.
pub mod target_flags {
    /// UDP from managed cgroups to this target's addresses and ports (and, for a local target,
    /// to every local alias of its ports) is refused, so a UDP service sharing the target's
    /// address is no side door.
    pub const UDP_REFUSED: u32 = 1 << 31;
    /// The target index: far more than `TARGET_MAP_CAPACITY` entries.
    pub const INDEX_MASK: u32 = (1 << 24) - 1;
}

/// LPM trie key data of `AG_LOCAL_NETS`: a network namespace (its cookie, native byte order;
/// `0` stands for the node, i.e. the gateway's own namespace) followed by a prefix of addresses
/// the kernel delivers locally in it (IPv4 as `::ffff:a.b.c.d`). The cookie is always matched in
/// full: prefix lengths are `LOCAL_NETNS_BITS` plus the address prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalKey {
    pub netns: [u8; 8],
    pub addr: [u8; 16],
}

/// Bits of a `LocalKey` that cover the namespace cookie.
pub const LOCAL_NETNS_BITS: u32 = 64;

/// The `LocalKey::netns` under which the node's own local addresses are kept.
pub const NODE_NETNS: u64 = 0;

/// `LocalKey::addr` (with a full-length prefix) of the entry that says "this namespace's local
/// addresses are being followed". `ff..ff` is a multicast address, never a TCP destination. A
/// pod namespace without it is not known yet: its own addresses cannot be told apart from remote
/// ones, so the kernel refuses what it cannot classify (fail closed).
pub const FOLLOWED_MARKER: [u8; 16] = [0xff; 16];

/// Why a recorded destination was local to the connecting workload (bits of `OrigDst::flags`).
pub mod dst_flags {
    /// Loopback (127.0.0.0/8, ::1, their v4-mapped forms) or unspecified (0.0.0.0, ::): the
    /// connecting socket's own namespace.
    pub const LOOPBACK: u32 = 1;
    /// One of the local addresses of the connecting socket's namespace (as tracked for a pod).
    pub const OWN: u32 = 2;
    /// One of the node's local addresses.
    pub const NODE: u32 = 4;
    /// Captured because it is local and its port has a local target, not because a target lists
    /// this very address.
    pub const ALIAS: u32 = 8;
}

/// Classification of a cgroup under an attached anchor.
pub mod cgroup_state {
    /// Not matched by any workload selector: goes direct.
    pub const UNMANAGED: u8 = 1;
    /// Managed, host network namespace: redirect to the host loopback listener.
    pub const HOST: u8 = 2;
    /// Managed, own network namespace: redirect to the listener the gateway opened inside it.
    pub const POD: u8 = 3;
}

/// Value of the cgroup classification map, keyed by cgroup id (the cgroup directory's inode).
/// A cgroup under an anchor with no entry has not been classified yet: connections from it to a
/// target are refused (fail closed) until userspace has looked at it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupValue {
    pub state: u8,
    pub _pad: u8,
    /// Listener port, host byte order.
    pub listen_port: u16,
}

/// The original destination and who asked for it, recorded by connect4/6.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrigDst {
    /// Original destination address, IPv4 as `::ffff:a.b.c.d`, network bytes.
    pub addr: [u8; 16],
    /// Original destination port, host byte order.
    pub port: u16,
    /// `AF_INET` or `AF_INET6` of the connecting socket.
    pub family: u16,
    pub target_id: u32,
    pub pid: u32,
    /// `dst_flags` bits: where the destination is local, if anywhere.
    pub flags: u32,
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    pub socket_cookie: u64,
    /// The gateway listener port the connection was rewritten to, host byte order.
    pub listen_port: u16,
    pub _pad: [u8; 6],
}

/// Key under which the proxy finds an `OrigDst`: the client end of the redirected connection as
/// seen from the listener (the peer address of the accepted socket) plus the namespace it lives in.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerKey {
    pub netns_cookie: u64,
    /// Client address, IPv4 as `::ffff:a.b.c.d`, network bytes.
    pub addr: [u8; 16],
    /// Client port, host byte order.
    pub port: u16,
    pub _pad: [u8; 6],
}

/// Maps an IPv4 address (network bytes) into the `::ffff:a.b.c.d` form used by every key.
pub const fn v4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: all types are repr(C), Copy, and have no padding bytes (explicit `_pad` fields).
    unsafe impl aya::Pod for super::TargetKey {}
    unsafe impl aya::Pod for super::TargetValue {}
    unsafe impl aya::Pod for super::CgroupValue {}
    unsafe impl aya::Pod for super::OrigDst {}
    unsafe impl aya::Pod for super::PeerKey {}
    unsafe impl aya::Pod for super::LocalKey {}
}
