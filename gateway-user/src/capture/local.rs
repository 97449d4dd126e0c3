//! Targets on local addresses. A server bound to `[::]` or `0.0.0.0` answers on every address
//! its namespace delivers locally, so a target that lists one local address (127.0.0.1, say) is
//! also reachable through 127.0.0.3, `::1`, `::ffff:127.0.0.3`, `0.0.0.0`, `::` and the node's
//! own addresses. Capture must not depend on the policy listing every alias: on the port of a
//! local target, every local destination is captured (the kernel side checks locality against
//! `AG_LOCAL_NETS`) and resolved here to that target.
//!
//! What is local is read from the kernel's routing tables (`RTN_LOCAL` routes) over rtnetlink,
//! for the node (the gateway's namespace) and for every pod namespace the gateway serves, and
//! followed through netlink change events: an address added to an interface is captured as soon
//! as the kernel announces it, not at the next rescan. A full re-read every `BACKSTOP` covers a
//! lost event (netlink drops events when its queue overflows, and says so with ENOBUFS, on
//! which we re-read too).

use std::{
    collections::HashSet,
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, RwLock},
    time::Duration,
};

use gateway_common::{dst_flags, OrigDst, TargetValue, NODE_NETNS};
use ipnet::IpNet;
use tokio::{sync::watch, task::JoinHandle};

use super::netlink::{self, RouteSockets};
use crate::{
    ebpf::{target_value_flags, KernelMaps},
    policy::{Policy, Target},
};

const BACKSTOP: Duration = Duration::from_secs(30);

/// The node's local prefixes as last read (the gateway's own namespace). Process-wide: there is
/// one node, and both the reconciler (which ports are local targets) and the proxy (which target
/// an alias resolves to) need it.
static NODE_NETS: RwLock<Vec<IpNet>> = RwLock::new(Vec::new());

fn node_nets() -> Vec<IpNet> {
    NODE_NETS.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Networks that contain a loopback or an unspecified address: local in every namespace.
fn always_local(net: &IpNet) -> bool {
    let lo4: IpNet = IpNet::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8).expect("valid prefix");
    match net {
        IpNet::V4(n) => n.contains(&Ipv4Addr::UNSPECIFIED) || overlaps(&lo4, net),
        IpNet::V6(n) => n.contains(&Ipv6Addr::UNSPECIFIED) || n.contains(&Ipv6Addr::LOCALHOST),
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Whether a target address is local to the node: loopback, unspecified, or overlapping one of
/// the node's local prefixes.
fn is_local(net: &IpNet, node: &[IpNet]) -> bool {
    always_local(net) || node.iter().any(|n| overlaps(n, net))
}

/// `(port, target index)` of every target that lists a local address, for `AG_LOCAL_PORTS`.
/// Two local targets on one port both appear; the kernel then captures the port's local
/// destinations and `resolve_target` refuses the ones neither lists (ambiguous).
pub fn local_ports(policy: &Policy) -> Vec<(u16, TargetValue)> {
    let node = node_nets();
    let mut out: Vec<(u16, TargetValue)> = Vec::new();
    for (id, t) in policy.targets.iter().enumerate() {
        if t.addresses.iter().any(|a| is_local(a, &node)) {
            let flags = target_value_flags(t);
            for p in &t.ports {
                match out.iter_mut().find(|(q, _)| q == p) {
                    // Two local targets on one port: UDP is refused if either says so.
                    Some((_, v)) => v.id |= flags,
                    None => out.push((*p, TargetValue::new(id as u32, flags))),
                }
            }
        }
    }
    out
}

/// Where a captured destination is local, as the proxy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DstScope {
    /// Not local anywhere: only a target that lists it can own it.
    Remote,
    /// Local to the node, dialled from the node (a host listener accepted it): its loopback or
    /// one of its addresses.
    Node,
    /// A pod's own loopback or one of the pod's addresses (a pod listener accepted it).
    Pod,
    /// One of the node's addresses, dialled from a pod: the node's socket, not the pod's.
    PodToNode,
}

impl DstScope {
    /// From the kernel's `OrigDst::flags` and whether a pod listener accepted the connection.
    pub fn of(flags: u32, pod_listener: bool) -> Self {
        let here = flags & (dst_flags::LOOPBACK | dst_flags::OWN) != 0;
        match (here, flags & dst_flags::NODE != 0, pod_listener) {
            (true, _, true) => Self::Pod,
            (false, true, true) => Self::PodToNode,
            (true, _, false) | (false, true, false) => Self::Node,
            (false, false, _) => Self::Remote,
        }
    }
}

/// The target a captured destination belongs to, and the address to dial for it.
///
/// A destination a target lists is dialled as it is. A local destination no target lists is an
/// alias: it belongs to the single target of its port that is local in the same sense (for a
/// pod's own loopback or addresses, one that lists a loopback address; for a node address
/// dialled from a pod, one that lists a node address — a loopback target allowed to pods must
/// not expose the node's service of its port; from the node itself, one that lists either), and
/// is dialled at that target's listed address, never at
/// the alias itself: an alias may reach another socket than the target's (a server bound to
/// 127.0.0.3 only, perhaps one the agent started to collect the credential the gateway logs in
/// with). `None` (refused) when no target, or several, fit, or the target lists no single
/// address to dial.
pub fn resolve_target(
    policy: &Policy,
    dst: SocketAddr,
    scope: DstScope,
) -> Option<(&Target, SocketAddr)> {
    if let Some((_, t)) = policy.target_for(dst) {
        return Some((t, dst));
    }
    let node = node_nets();
    let fits = |a: &IpNet| match scope {
        DstScope::Remote => false,
        DstScope::Pod => always_local(a),
        DstScope::PodToNode => !always_local(a) && is_local(a, &node),
        DstScope::Node => is_local(a, &node),
    };
    let mut found = policy
        .targets
        .iter()
        .filter(|t| t.ports.contains(&dst.port()) && t.addresses.iter().any(fits));
    let target = match (found.next(), found.next()) {
        (Some(one), None) => one,
        _ => return None,
    };
    let hosts: Vec<IpAddr> = target
        .addresses
        .iter()
        .filter(|a| fits(a) && a.prefix_len() == a.max_prefix_len())
        .map(|a| match a.addr() {
            // The kernel turns an unspecified destination into loopback; so do we.
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            other => other,
        })
        .collect();
    let ip = hosts
        .iter()
        .find(|ip| ip.is_ipv4() == dst.is_ipv4())
        .or(hosts.first())?;
    Some((target, SocketAddr::new(*ip, dst.port())))
}

/// The namespace a connection's upstream socket must be opened in: the pod's (`listener`, the
/// namespace of the pod listener that accepted it) for a destination on the pod's loopback or one
/// of its own addresses; otherwise the gateway's own (`None`). A host listener has no namespace
/// of its own, so its connections always dial from the gateway's.
pub fn upstream_netns(orig: Option<&OrigDst>, listener: Option<Arc<File>>) -> Option<Arc<File>> {
    let pod_local = dst_flags::LOOPBACK | dst_flags::OWN;
    listener.filter(|_| orig.is_some_and(|o| o.flags & pod_local != 0))
}

/// Follows the local prefixes of one namespace into `AG_LOCAL_NETS` under `key` (`NODE_NETNS`
/// for the node, else the pod's netns cookie). The first read is done before this returns, so
/// the kernel knows the namespace's addresses before any listener there is announced. For the
/// node, each change is also published on `node_changed`.
pub fn follow(
    sockets: RouteSockets,
    key: u64,
    maps: Arc<KernelMaps>,
    node_changed: Option<watch::Sender<()>>,
) -> std::io::Result<JoinHandle<()>> {
    let apply = move |nets: Vec<IpNet>| {
        if let Err(e) = maps.sync_local_nets(key, &nets) {
            tracing::error!(netns = key, "recording local addresses: {e}");
        }
        if key == NODE_NETNS {
            *NODE_NETS.write().unwrap_or_else(|p| p.into_inner()) = nets;
            if let Some(tx) = &node_changed {
                tx.send_replace(());
            }
        }
    };
    apply(sockets.local_nets()?);
    let (dump, events) = sockets.watch()?;
    Ok(tokio::spawn(async move {
        let mut backstop = tokio::time::interval(BACKSTOP);
        backstop.tick().await;
        loop {
            tokio::select! {
                r = netlink::changed(&events) => if let Err(e) = r {
                    tracing::warn!(netns = key, "netlink events: {e}; re-reading every {BACKSTOP:?}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                },
                _ = backstop.tick() => {}
            }
            match netlink::dump_local(&dump) {
                Ok(nets) => apply(nets),
                Err(e) => tracing::warn!(netns = key, "reading local addresses: {e}"),
            }
        }
    }))
}

/// Drops the kernel's record of namespaces no longer followed.
pub fn retain(maps: &KernelMaps, pods: impl IntoIterator<Item = u64>) {
    let mut keep: HashSet<u64> = pods.into_iter().collect();
    keep.insert(NODE_NETNS);
    maps.retain_local_nets(&keep);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_unspecified_and_node_addresses_are_local() {
        let node = [net("198.51.100.7/32"), net("fd00::7/128")];
        for local in [
            "127.0.0.2/32",
            "127.0.8.0/24",
            "0.0.0.0/32",
            "::1/128",
            "::/128",
        ] {
            assert!(is_local(&net(local), &node), "{local}");
        }
        for local in ["198.51.100.7/32", "198.51.100.0/24", "fd00::/64"] {
            assert!(is_local(&net(local), &node), "{local}");
        }
        for remote in ["198.51.100.8/32", "203.0.113.0/24", "fd00:1::/64"] {
            assert!(!is_local(&net(remote), &node), "{remote}");
        }
    }

    #[test]
    fn scopes() {
        use dst_flags::*;
        assert_eq!(DstScope::of(0, true), DstScope::Remote);
        assert_eq!(DstScope::of(LOOPBACK, false), DstScope::Node);
        assert_eq!(DstScope::of(LOOPBACK | ALIAS, true), DstScope::Pod);
        assert_eq!(DstScope::of(OWN, true), DstScope::Pod);
        assert_eq!(DstScope::of(NODE, true), DstScope::PodToNode);
        assert_eq!(DstScope::of(NODE, false), DstScope::Node);
    }
}
