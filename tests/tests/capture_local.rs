//! Capture of targets that are local to the node or to a pod (issue 16, items 2 and 3): every
//! address that reaches the target's local socket is captured, not only the listed one, and a
//! pod's loopback target is dialled inside the pod.
//!
//! Real eBPF programs, real cgroups and network namespaces, the real `agentgate` binary, a
//! non-root agent process. Ports 19800-19849. Destinations are loopback, the unspecified
//! addresses, or addresses the test puts on a dummy interface inside a namespace it created.

use std::{
    io::Write,
    net::{SocketAddr, TcpListener},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use agentgate_tests::*;

/// The agent runs as nobody: no capability lets it touch the maps or the namespaces.
const AGENT_UID: u32 = 65534;

/// `probe_as` with another user copies the probe to a path that is the same for every thread of
/// this process: one copy at a time, or a parallel test's copy is "text file busy".
fn as_agent(cgroup: &Cgroup, netns: Option<&Netns>, dst: SocketAddr) -> ProbeResult {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    probe_as(Some(AGENT_UID), Some(cgroup), netns, dst)
}

/// The tests of this file run one at a time: `node_addresses_...` points `AGENTGATE_BIN` at a
/// wrapper while it starts its gateway.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A service that greets each client with `<name> peer=<client address>` and closes, so a test
/// sees which of several same-port services it reached and from where. Bound inside `netns` when
/// given (the listening socket stays in the namespace it was created in).
struct NamedServer {
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl NamedServer {
    fn start(name: &str, addr: SocketAddr, netns: Option<&Netns>) -> Self {
        let ns_path = netns.map(|n| n.path());
        let listener = std::thread::spawn(move || {
            if let Some(p) = ns_path {
                let f = std::fs::File::open(&p).expect("open netns");
                // SAFETY: setns on this short-lived thread only.
                let rc =
                    unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            }
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"))
        })
        .join()
        .expect("bind thread");
        listener.set_nonblocking(true).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s, name) = (accepted.clone(), stop.clone(), name.to_string());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        a.fetch_add(1, Ordering::SeqCst);
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.write_all(format!("{name} peer={peer}\n").as_bytes());
                        let _ = conn.shutdown(std::net::Shutdown::Both);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { accepted, stop }
    }

    fn count(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for NamedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Which server answered and the client address it saw.
fn answered(r: &ProbeResult) -> (String, Option<SocketAddr>) {
    let mut parts = r.greeting.splitn(2, ' ');
    let name = parts.next().unwrap_or("").to_string();
    let peer = parts
        .next()
        .and_then(|p| p.strip_prefix("peer="))
        .and_then(|p| p.parse().ok());
    (name, peer)
}

fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    let canon = |x: SocketAddr| match x {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), x.port()),
            None => x,
        },
        v4 => v4,
    };
    canon(a) == canon(b)
}

/// The agent's connection to `dst` reached server `name` through the gateway (the server's
/// client was not the agent's own socket), and the gateway relayed it as target `svc` with the
/// original destination `recorded`.
fn assert_through_gateway(
    gw: &Gateway,
    r: &ProbeResult,
    name: &str,
    dst: SocketAddr,
    recorded: &str,
) {
    assert!(r.errno.is_none(), "{dst}: agent could not connect: {r:?}");
    let (who, seen) = answered(r);
    let seen = seen.unwrap_or_else(|| panic!("{dst}: no greeting: {r:?}"));
    assert!(
        !same_socket(seen, r.local.expect("local address")),
        "{dst}: the agent reached the service directly, around the gateway: {r:?}"
    );
    assert_eq!(who, name, "{dst}: reached the wrong service: {r:?}");
    let ev = gw.connection_of(r.pid);
    assert_eq!(s(&ev, "original_dst"), recorded, "{dst}: {ev}");
    assert_eq!(s(&ev, "target"), "svc", "{dst}: {ev}");
}

fn ip(netns: &Netns, args: &[&str]) {
    let out = std::process::Command::new("ip")
        .arg("-n")
        .arg(&netns.name)
        .args(args)
        .output()
        .expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

/// Host mode: the target lists 127.0.0.2 only, the service listens on every address (`[::]`).
/// Every loopback alias and the unspecified addresses reach the same socket: each must go
/// through the gateway, as the target.
#[test]
fn host_loopback_aliases_of_a_local_target_are_captured() {
    let _serial = serial();
    require_root();
    let name = unique("lochost");
    let _anchor = Cgroup::create(&format!("/{name}"));
    let agent = Cgroup::create(&format!("/{name}/job-1"));
    let server = NamedServer::start("host", sa("[::]:19811"), None);
    let token = TokenFile::valid("lochost");
    let gw = Gateway::start(
        "lochost",
        &policy(
            19810,
            &format!("/{name}/job-*"),
            "host",
            &["127.0.0.2"],
            19811,
            &token.path,
        ),
    );
    gw.wait_classified(&agent.rel);

    for (dst, recorded) in [
        ("127.0.0.2:19811", "127.0.0.2:19811"),
        ("127.0.0.1:19811", "127.0.0.1:19811"),
        ("127.0.0.3:19811", "127.0.0.3:19811"),
        ("127.255.0.9:19811", "127.255.0.9:19811"),
        ("0.0.0.0:19811", "127.0.0.1:19811"),
        ("[::1]:19811", "[::1]:19811"),
        ("[::ffff:127.0.0.3]:19811", "127.0.0.3:19811"),
        ("[::]:19811", "[::1]:19811"),
    ] {
        let r = as_agent(&agent, None, sa(dst));
        assert_through_gateway(&gw, &r, "host", sa(dst), recorded);
    }
    assert_eq!(server.count(), 8);

    // Not local: another port on loopback stays direct (the widening is per target port).
    let other = NamedServer::start("other", sa("127.0.0.1:19812"), None);
    let r = as_agent(&agent, None, sa("127.0.0.1:19812"));
    let (who, seen) = answered(&r);
    assert_eq!(who, "other", "{r:?}");
    assert!(same_socket(seen.unwrap(), r.local.unwrap()), "{r:?}");
    assert_eq!(other.count(), 1);
}

/// Pod mode, target 127.0.0.2: inside the pod every loopback alias, the unspecified addresses,
/// the pod's own addresses (on a veth interface of the pod's namespace) and an address added to
/// the pod while the gateway runs reach the pod's service on `[::]`, and must all go through the
/// gateway — which dials them inside the pod, so they reach the pod's service and not the
/// host's service on the same port.
#[test]
fn pod_local_aliases_and_own_addresses_are_captured() {
    let _serial = serial();
    require_root();
    let name = unique("locpod");
    let _anchor = Cgroup::create(&format!("/{name}"));
    let pod = Cgroup::create(&format!("/{name}/pod-a"));
    let ns = Netns::create(&name);
    // A veth pair with both ends inside the pod (this kernel has no dummy driver).
    ip(
        &ns,
        &[
            "link", "add", "agv0", "type", "veth", "peer", "name", "agv1",
        ],
    );
    ip(&ns, &["link", "set", "agv1", "up"]);
    ip(&ns, &["link", "set", "agv0", "up"]);
    ip(&ns, &["addr", "add", "198.51.100.7/32", "dev", "agv0"]);
    ip(
        &ns,
        &["addr", "add", "fd00:a9:16::7/128", "dev", "agv0", "nodad"],
    );
    let host_server = NamedServer::start("host", sa("[::]:19821"), None);
    let pod_server = NamedServer::start("pod", sa("[::]:19821"), Some(&ns));
    let token = TokenFile::valid("locpod");
    let gw = Gateway::start(
        "locpod",
        &policy(
            19820,
            &format!("/{name}/pod-*"),
            "pod",
            &["127.0.0.2"],
            19821,
            &token.path,
        ),
    );
    let _holder = Holder::start(&pod, Some(&ns));
    gw.wait_for(
        Duration::from_secs(10),
        |e| e["event"] == "pod_listener" && e["cgroup"] == pod.rel.as_str(),
        0,
    );

    let mut n = 0;
    for (dst, recorded) in [
        ("127.0.0.2:19821", "127.0.0.2:19821"),
        ("127.0.0.1:19821", "127.0.0.1:19821"),
        ("127.0.0.3:19821", "127.0.0.3:19821"),
        ("0.0.0.0:19821", "127.0.0.1:19821"),
        ("[::1]:19821", "[::1]:19821"),
        ("[::ffff:127.0.0.3]:19821", "127.0.0.3:19821"),
        ("[::]:19821", "[::1]:19821"),
        ("198.51.100.7:19821", "198.51.100.7:19821"),
        ("[::ffff:198.51.100.7]:19821", "198.51.100.7:19821"),
        ("[fd00:a9:16::7]:19821", "[fd00:a9:16::7]:19821"),
    ] {
        let r = as_agent(&pod, Some(&ns), sa(dst));
        assert_through_gateway(&gw, &r, "pod", sa(dst), recorded);
        n += 1;
    }

    // An address added to the pod's interface while the gateway runs: captured as soon as the
    // kernel reports it (netlink), not after some rescan.
    ip(&ns, &["addr", "add", "198.51.100.8/32", "dev", "agv0"]);
    std::thread::sleep(Duration::from_millis(300));
    let dst = sa("198.51.100.8:19821");
    let r = as_agent(&pod, Some(&ns), dst);
    assert_through_gateway(&gw, &r, "pod", dst, "198.51.100.8:19821");
    n += 1;

    assert_eq!(
        pod_server.count(),
        n,
        "every connection reached the pod's service"
    );
    assert_eq!(host_server.count(), 0, "none reached the host's service");
}

/// Pod mode, target 127.0.0.1 with a service of that port both in the pod's namespace and on the
/// host: the pod's agent must reach the pod's own service through the gateway. (The upstream
/// socket used to be opened in the gateway's namespace and reached the host's service.)
#[test]
fn pod_loopback_target_is_dialled_inside_the_pod() {
    let _serial = serial();
    require_root();
    let name = unique("podlo");
    let _anchor = Cgroup::create(&format!("/{name}"));
    let pod = Cgroup::create(&format!("/{name}/pod-a"));
    let ns = Netns::create(&name);
    let host_v4 = NamedServer::start("host", sa("127.0.0.1:19831"), None);
    let host_v6 = NamedServer::start("host", sa("[::1]:19831"), None);
    let pod_v4 = NamedServer::start("pod", sa("127.0.0.1:19831"), Some(&ns));
    let pod_v6 = NamedServer::start("pod", sa("[::1]:19831"), Some(&ns));
    let token = TokenFile::valid("podlo");
    let gw = Gateway::start(
        "podlo",
        &policy(
            19830,
            &format!("/{name}/pod-*"),
            "pod",
            &["127.0.0.1", "::1"],
            19831,
            &token.path,
        ),
    );
    let _holder = Holder::start(&pod, Some(&ns));
    gw.wait_for(
        Duration::from_secs(10),
        |e| e["event"] == "pod_listener" && e["cgroup"] == pod.rel.as_str(),
        0,
    );

    for dst in ["127.0.0.1:19831", "[::1]:19831"] {
        let r = as_agent(&pod, Some(&ns), sa(dst));
        assert_through_gateway(&gw, &r, "pod", sa(dst), dst);
    }
    assert_eq!((pod_v4.count(), pod_v6.count()), (1, 1));
    assert_eq!((host_v4.count(), host_v6.count()), (0, 0));

    // A host-mode process (the test itself, unmanaged) still reaches the host's service: the
    // gateway's choice of namespace is per connection, not a global switch.
    let r = probe(None, None, sa("127.0.0.1:19831"));
    assert_eq!(answered(&r).0, "host", "{r:?}");
}

/// Starts `agentgate` inside the network namespace `ns` (through `nsenter`, which keeps the
/// mount namespace: bpffs and the cgroup tree stay the real ones): for the gateway, that
/// namespace is the node. Restores `AGENTGATE_BIN` when dropped.
struct GatewayInNetns {
    saved: Option<std::ffi::OsString>,
    wrapper: std::path::PathBuf,
}

impl GatewayInNetns {
    fn enter(ns: &Netns) -> Self {
        let real = std::env::var_os("AGENTGATE_BIN").expect("run through cargo xtask test");
        let wrapper = std::env::temp_dir().join(unique("agentgate-in-netns"));
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec nsenter --net={} -- {} \"$@\"\n",
                ns.path().display(),
                std::path::Path::new(&real).display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::env::set_var("AGENTGATE_BIN", &wrapper);
        Self {
            saved: Some(real),
            wrapper,
        }
    }
}

impl Drop for GatewayInNetns {
    fn drop(&mut self) {
        if let Some(real) = self.saved.take() {
            std::env::set_var("AGENTGATE_BIN", real);
        }
        let _ = std::fs::remove_file(&self.wrapper);
    }
}

/// Host mode, with the gateway and the agent in a namespace the test made (the "node"), whose
/// interface carries 198.51.100.9 and fd00:a9:17::9. The target lists only the node address
/// 198.51.100.9: a node address is local, so loopback, the unspecified addresses, the node's
/// other addresses and one added while the gateway runs all reach the service on `[::]` and
/// must all be captured as the target.
#[test]
fn node_addresses_of_a_local_target_are_captured() {
    let _serial = serial();
    require_root();
    let name = unique("locnode");
    let _anchor = Cgroup::create(&format!("/{name}"));
    let agent = Cgroup::create(&format!("/{name}/job-1"));
    let ns = Netns::create(&name);
    ip(
        &ns,
        &[
            "link", "add", "agv0", "type", "veth", "peer", "name", "agv1",
        ],
    );
    ip(&ns, &["link", "set", "agv1", "up"]);
    ip(&ns, &["link", "set", "agv0", "up"]);
    ip(&ns, &["addr", "add", "198.51.100.9/32", "dev", "agv0"]);
    ip(
        &ns,
        &["addr", "add", "fd00:a9:17::9/128", "dev", "agv0", "nodad"],
    );
    let server = NamedServer::start("node", sa("[::]:19841"), Some(&ns));
    let token = TokenFile::valid("locnode");
    let policy = policy(
        19840,
        &format!("/{name}/job-*"),
        "host",
        &["198.51.100.9"],
        19841,
        &token.path,
    );
    let gw = {
        let _wrapped = GatewayInNetns::enter(&ns);
        Gateway::start("locnode", &policy)
    };
    gw.wait_classified(&agent.rel);

    let mut n = 0;
    for (dst, recorded) in [
        ("198.51.100.9:19841", "198.51.100.9:19841"),
        ("[::ffff:198.51.100.9]:19841", "198.51.100.9:19841"),
        ("[fd00:a9:17::9]:19841", "[fd00:a9:17::9]:19841"),
        ("127.0.0.1:19841", "127.0.0.1:19841"),
        ("127.0.0.5:19841", "127.0.0.5:19841"),
        ("0.0.0.0:19841", "127.0.0.1:19841"),
        ("[::1]:19841", "[::1]:19841"),
        ("[::]:19841", "[::1]:19841"),
    ] {
        let r = as_agent(&agent, Some(&ns), sa(dst));
        assert_through_gateway(&gw, &r, "node", sa(dst), recorded);
        n += 1;
    }

    ip(&ns, &["addr", "add", "198.51.100.10/32", "dev", "agv0"]);
    std::thread::sleep(Duration::from_millis(300));
    let dst = sa("198.51.100.10:19841");
    let r = as_agent(&agent, Some(&ns), dst);
    assert_through_gateway(&gw, &r, "node", dst, "198.51.100.10:19841");
    n += 1;
    assert_eq!(server.count(), n);
}

/// An alias is dialled at the address the target lists, not at the alias: here 127.0.0.3 has a
/// server of its own (as one an agent could start, to collect whatever the gateway sends a
/// target — a PostgreSQL target's password). The agent's connection to it is captured and
/// reaches the real target on 127.0.0.2; nothing reaches the other server.
#[test]
fn an_alias_is_dialled_at_the_listed_address() {
    let _serial = serial();
    require_root();
    let name = unique("localias");
    let _anchor = Cgroup::create(&format!("/{name}"));
    let agent = Cgroup::create(&format!("/{name}/job-1"));
    let real = NamedServer::start("real", sa("127.0.0.2:19816"), None);
    let other = NamedServer::start("other", sa("127.0.0.3:19816"), None);
    let token = TokenFile::valid("localias");
    let gw = Gateway::start(
        "localias",
        &policy(
            19815,
            &format!("/{name}/job-*"),
            "host",
            &["127.0.0.2"],
            19816,
            &token.path,
        ),
    );
    gw.wait_classified(&agent.rel);

    for (dst, recorded) in [
        ("127.0.0.3:19816", "127.0.0.3:19816"),
        ("[::1]:19816", "[::1]:19816"),
    ] {
        let r = as_agent(&agent, None, sa(dst));
        assert_through_gateway(&gw, &r, "real", sa(dst), recorded);
        let ev = gw.connection_of(r.pid);
        assert_eq!(s(&ev, "dialled"), "127.0.0.2:19816", "{ev}");
    }
    assert_eq!((real.count(), other.count()), (2, 0));
}

/// A pod whose own addresses the gateway does not follow yet (here: its listener cannot open,
/// because something holds the listener port inside the pod) cannot use them to go around a
/// local target: on a local target's port, a destination the kernel cannot classify is refused.
/// Other ports are not affected.
#[test]
fn an_unfollowed_pod_cannot_use_its_own_addresses() {
    let _serial = serial();
    require_root();
    let name = unique("locunf");
    let _anchor = Cgroup::create(&format!("/{name}"));
    let pod = Cgroup::create(&format!("/{name}/pod-a"));
    let ns = Netns::create(&name);
    ip(
        &ns,
        &[
            "link", "add", "agv0", "type", "veth", "peer", "name", "agv1",
        ],
    );
    ip(&ns, &["link", "set", "agv1", "up"]);
    ip(&ns, &["link", "set", "agv0", "up"]);
    ip(&ns, &["addr", "add", "198.51.100.7/32", "dev", "agv0"]);
    let _squatter = NamedServer::start("squatter", sa("127.0.0.1:19845"), Some(&ns));
    let served = NamedServer::start("pod", sa("[::]:19846"), Some(&ns));
    let other_port = NamedServer::start("other", sa("[::]:19847"), Some(&ns));
    let token = TokenFile::valid("locunf");
    let gw = Gateway::start(
        "locunf",
        &policy(
            19845,
            &format!("/{name}/pod-*"),
            "pod",
            &["127.0.0.2"],
            19846,
            &token.path,
        ),
    );
    let _holder = Holder::start(&pod, Some(&ns));
    gw.wait_classified(&pod.rel);
    // At least one reconcile pass with the holder in place (the rescan runs every 2 s).
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        gw.count("pod_listener"),
        0,
        "the pod listener must not open"
    );

    let r = as_agent(&pod, Some(&ns), sa("198.51.100.7:19846"));
    assert_eq!(r.errno, Some(libc::EPERM), "{r:?}");
    assert_eq!(
        served.count(),
        0,
        "nothing reached the service around the gateway"
    );

    let r = as_agent(&pod, Some(&ns), sa("198.51.100.7:19847"));
    assert_eq!(answered(&r).0, "other", "another port goes direct: {r:?}");
    assert_eq!(other_port.count(), 1);
}
