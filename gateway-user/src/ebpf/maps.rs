//! Typed access to the pinned maps shared with `gateway-ebpf`.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
};

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    HashMap, MapData, MapError,
};
use gateway_common::{
    target_flags, v4_mapped, CgroupValue, LocalKey, OrigDst, PeerKey, TargetKey, TargetValue,
    FOLLOWED_MARKER, LOCAL_NETNS_BITS, TARGET_PORT_BITS,
};

use crate::policy::Policy;

pub struct KernelMaps {
    pub(super) targets: Mutex<LpmTrie<MapData, TargetKey, TargetValue>>,
    pub(super) cgroups: Mutex<HashMap<MapData, u64, CgroupValue>>,
    pub(super) by_peer: Mutex<HashMap<MapData, PeerKey, OrigDst>>,
    pub(super) bypass: Mutex<HashMap<MapData, u64, u8>>,
    pub(super) local_nets: Mutex<LpmTrie<MapData, LocalKey, u8>>,
    pub(super) local_ports: Mutex<HashMap<MapData, u16, TargetValue>>,
}

/// A poisoned lock only means another thread panicked mid-update of a kernel map; the map itself
/// is still consistent (every update is one syscall), so keep going.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The key under which sock_ops left the original destination of a connection whose client end
/// the listener sees as `peer`.
pub fn peer_key(netns_cookie: u64, peer: SocketAddr) -> PeerKey {
    PeerKey {
        netns_cookie,
        addr: addr_bytes(peer.ip()),
        port: peer.port(),
        _pad: [0; 6],
    }
}

/// Every (port, prefix) the programs must recognise, with the index of its target.
pub fn target_entries(policy: &Policy) -> Vec<(Key<TargetKey>, TargetValue)> {
    let mut out = Vec::new();
    for (id, t) in policy.targets.iter().enumerate() {
        for net in &t.addresses {
            let (addr, prefix) = match net {
                ipnet::IpNet::V4(n) => (v4_mapped(n.addr().octets()), 96 + n.prefix_len() as u32),
                ipnet::IpNet::V6(n) => (n.addr().octets(), n.prefix_len() as u32),
            };
            for port in &t.ports {
                out.push((
                    Key::new(
                        TARGET_PORT_BITS + prefix,
                        TargetKey {
                            port: port.to_be_bytes(),
                            addr,
                        },
                    ),
                    TargetValue::new(id as u32, target_value_flags(t)),
                ));
            }
        }
    }
    out
}

/// The `target_flags` of a policy target.
pub fn target_value_flags(t: &crate::policy::Target) -> u32 {
    if t.udp == crate::policy::UdpPolicy::Refuse {
        target_flags::UDP_REFUSED
    } else {
        0
    }
}

fn local_key(netns: u64, net: &ipnet::IpNet) -> Key<LocalKey> {
    let (addr, prefix) = match net {
        ipnet::IpNet::V4(n) => (v4_mapped(n.network().octets()), 96 + n.prefix_len() as u32),
        ipnet::IpNet::V6(n) => (n.network().octets(), n.prefix_len() as u32),
    };
    Key::new(
        LOCAL_NETNS_BITS + prefix,
        LocalKey {
            netns: netns.to_ne_bytes(),
            addr,
        },
    )
}

fn local_key_id(k: &Key<LocalKey>) -> (u32, [u8; 8], [u8; 16]) {
    (k.prefix_len(), k.data().netns, k.data().addr)
}

fn key_id(k: &Key<TargetKey>) -> (u32, [u8; 2], [u8; 16]) {
    (k.prefix_len(), k.data().port, k.data().addr)
}

impl KernelMaps {
    /// Exempts the socket with this cookie from capture (every socket the gateway opens, through
    /// `net::SocketFactory`).
    pub fn bypass(&self, cookie: u64) -> Result<(), MapError> {
        lock(&self.bypass).insert(cookie, 1, 0)
    }

    pub fn end_bypass(&self, cookie: u64) {
        let _ = lock(&self.bypass).remove(&cookie);
    }

    /// Drops hand-over records left by an earlier run: their connections died with its
    /// listeners, and a stale record must never vouch for a new connection.
    pub fn clear_handovers(&self) -> usize {
        let mut map = lock(&self.by_peer);
        let keys: Vec<PeerKey> = map.keys().filter_map(Result::ok).collect();
        keys.iter().filter(|k| map.remove(k).is_ok()).count()
    }

    /// Makes the target trie hold exactly `entries`: new ones first, stale ones after, so a
    /// destination that stays a target is never briefly missing.
    pub fn sync_targets(&self, entries: &[(Key<TargetKey>, TargetValue)]) -> Result<(), MapError> {
        let mut map = lock(&self.targets);
        for (k, v) in entries {
            map.insert(k, v, 0)?;
        }
        let wanted: HashSet<_> = entries.iter().map(|(k, _)| key_id(k)).collect();
        let stale: Vec<Key<TargetKey>> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(&key_id(k)))
            .collect();
        for k in stale {
            map.remove(&k)?;
        }
        Ok(())
    }

    /// Makes the local prefixes recorded for namespace `netns` exactly `nets` (new ones first,
    /// so an address that stays local is never briefly missing), plus the marker that says the
    /// namespace is followed.
    pub fn sync_local_nets(&self, netns: u64, nets: &[ipnet::IpNet]) -> Result<(), MapError> {
        let mut map = lock(&self.local_nets);
        let mut wanted: Vec<Key<LocalKey>> = nets.iter().map(|n| local_key(netns, n)).collect();
        wanted.push(Key::new(
            LOCAL_NETNS_BITS + 128,
            LocalKey {
                netns: netns.to_ne_bytes(),
                addr: FOLLOWED_MARKER,
            },
        ));
        for k in &wanted {
            map.insert(k, 1, 0)?;
        }
        let wanted: HashSet<_> = wanted.iter().map(local_key_id).collect();
        let stale: Vec<Key<LocalKey>> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.data().netns == netns.to_ne_bytes() && !wanted.contains(&local_key_id(k)))
            .collect();
        for k in stale {
            map.remove(&k)?;
        }
        Ok(())
    }

    /// Drops the local prefixes of every namespace not in `keep` (pods that are gone, or
    /// namespaces an earlier run tracked).
    pub fn retain_local_nets(&self, keep: &HashSet<u64>) {
        let mut map = lock(&self.local_nets);
        let stale: Vec<Key<LocalKey>> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !keep.contains(&u64::from_ne_bytes(k.data().netns)))
            .collect();
        for k in stale {
            let _ = map.remove(&k);
        }
    }

    /// Makes the ports of local targets exactly `ports` (port → target index and flags).
    pub fn sync_local_ports(&self, ports: &[(u16, TargetValue)]) -> Result<(), MapError> {
        let mut map = lock(&self.local_ports);
        for (port, value) in ports {
            map.insert(port, value, 0)?;
        }
        let stale: Vec<u16> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|p| !ports.iter().any(|(q, _)| q == p))
            .collect();
        for p in stale {
            map.remove(&p)?;
        }
        Ok(())
    }

    pub fn set_cgroup(&self, id: u64, value: CgroupValue) -> Result<(), MapError> {
        lock(&self.cgroups).insert(id, value, 0)
    }

    pub fn remove_cgroup(&self, id: u64) -> Result<(), MapError> {
        match lock(&self.cgroups).remove(&id) {
            Err(MapError::KeyNotFound) => Ok(()),
            r => r,
        }
    }

    pub fn cgroup_ids(&self) -> Vec<u64> {
        lock(&self.cgroups).keys().filter_map(Result::ok).collect()
    }

    /// Reads and deletes the hand-over record: each one is used by exactly one accept.
    pub fn take_orig_dst(&self, key: &PeerKey) -> Option<OrigDst> {
        let mut map = lock(&self.by_peer);
        let v = map.get(key, 0).ok()?;
        let _ = map.remove(key);
        Some(v)
    }
}
