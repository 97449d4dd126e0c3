//! Side doors around TCP capture (issue 16, item 5): Multipath TCP sockets and UDP to a
//! target's address and port, from a managed cgroup.
//!
//! Real eBPF programs in real cgroups, the real `agentgate` binary, an agent (python3, as
//! nobody) that makes the socket calls any client would. Ports 20100-20149, loopback only.

use std::{
    net::UdpSocket,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use agentgate_tests::*;
use serde_json::Value;

const AGENT_UID: u32 = 65534;
const EPERM: i64 = 1;

/// Runs `script` (python3) with `args` in `cgroup` as nobody; returns the JSON it prints.
fn agent_python(cgroup: &Cgroup, script: &str, args: &[String]) -> Value {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).args(args);
    place_as(&mut cmd, Some(cgroup), None, Some(AGENT_UID));
    let out = cmd.output().expect("run python3");
    assert!(out.status.success(), "agent script: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "agent output {:?}: {e}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Creates an MPTCP socket, connects it to ADDR PORT, reports getpeername and the greeting.
const MPTCP_AGENT: &str = r#"
import json, socket, sys
out = {}
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
except OSError as e:
    print(json.dumps({"socket_errno": e.errno})); sys.exit(0)
try:
    s.settimeout(5)
    s.connect((sys.argv[1], int(sys.argv[2])))
    out["peer"] = "%s:%d" % s.getpeername()
    out["greeting"] = s.makefile().readline().strip()
except OSError as e:
    out["connect_errno"] = e.errno
print(json.dumps(out))
"#;

#[test]
fn mptcp_sockets_are_refused_to_managed_cgroups_only() {
    let HostSetup {
        token: _token,
        anchor: _anchor,
        name,
        target,
        agent,
        gw,
    } = host_setup("mptcp", 20101, 20102, &["127.0.0.2"]);
    let sibling = Cgroup::create(&format!("/{name}/other"));
    gw.wait_classified(&sibling.rel);
    let args = ["127.0.0.2".to_string(), "20102".to_string()];

    // Before: the MPTCP socket was created and captured, and its getpeername() showed the
    // gateway's listener, not the target. Now it is refused at socket().
    let r = agent_python(&agent, MPTCP_AGENT, &args);
    assert_eq!(
        r["socket_errno"], EPERM,
        "a managed cgroup must not get an MPTCP socket: {r}"
    );
    assert_eq!(target.count(), 0, "nothing may reach the target directly");

    // An unmanaged sibling under the same anchor keeps MPTCP, and goes direct.
    let r = agent_python(&sibling, MPTCP_AGENT, &args);
    assert!(r.get("socket_errno").is_none(), "unmanaged cgroup: {r}");
    assert_eq!(r["peer"], "127.0.0.2:20102", "{r}");
    assert!(
        r["greeting"]
            .as_str()
            .is_some_and(|g| g.starts_with("peer=")),
        "{r}"
    );
    assert_eq!(target.count(), 1);

    // Plain TCP from the managed cgroup is still captured (the refusal is MPTCP only).
    let p = probe(Some(&agent), None, target.addr);
    assert!(p.errno.is_none() && !p.went_direct(), "{p:?}");
    assert_eq!(p.peer, Some(target.addr));
    assert_eq!(target.count(), 2);
}

/// A UDP server counting the datagrams it receives (IPv4 and IPv6 on one dual-stack socket).
struct UdpCounter {
    received: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl UdpCounter {
    fn start(port: u16) -> Self {
        // Rust's std leaves IPV6_V6ONLY at the system default (off): one socket, both families.
        let sock = UdpSocket::bind(format!("[::]:{port}")).expect("bind udp");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let received = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s.load(Ordering::Relaxed) {
                if sock.recv_from(&mut buf).is_ok() {
                    r.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Self { received, stop }
    }

    fn count(&self) -> usize {
        // Datagrams on loopback arrive at once; a short pause lets the reader thread count them.
        std::thread::sleep(Duration::from_millis(200));
        self.received.load(Ordering::SeqCst)
    }
}

impl Drop for UdpCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sends one datagram per case: `sendto` on IPv4 and IPv6 sockets, and connect()+send. Each case
/// reports "sent" or the errno.
const UDP_AGENT: &str = r#"
import json, socket, sys
port, other = int(sys.argv[1]), int(sys.argv[2])
def sendto(family, host, p):
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.sendto(b"x", (host, p)); return "sent"
    except OSError as e:
        return e.errno
def connected(family, host, p):
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.connect((host, p)); s.send(b"x"); return "sent"
    except OSError as e:
        return e.errno
print(json.dumps({
    "listed": sendto(socket.AF_INET, "127.0.0.2", port),
    "alias": sendto(socket.AF_INET, "127.0.0.9", port),
    "unspecified": sendto(socket.AF_INET, "0.0.0.0", port),
    "v6_loopback": sendto(socket.AF_INET6, "::1", port),
    "v4_mapped": sendto(socket.AF_INET6, "::ffff:127.0.0.2", port),
    "connected": connected(socket.AF_INET, "127.0.0.2", port),
    "connected_v6": connected(socket.AF_INET6, "::1", port),
    "other_target": sendto(socket.AF_INET, "127.0.0.2", other),
}))
"#;

const UDP_CASES: [&str; 7] = [
    "listed",
    "alias",
    "unspecified",
    "v6_loopback",
    "v4_mapped",
    "connected",
    "connected_v6",
];

#[test]
fn udp_to_a_target_marked_refuse_is_refused_from_managed_cgroups() {
    let (port, other) = (20112u16, 20113u16);
    let refused_udp = UdpCounter::start(port);
    let open_udp = UdpCounter::start(other);
    let HostSetup {
        token: _token,
        anchor: _anchor,
        name,
        target: _target,
        agent,
        gw,
    } = host_setup("udp", 20111, port, &["127.0.0.2"]);
    let sibling = Cgroup::create(&format!("/{name}/other"));
    gw.wait_classified(&sibling.rel);
    let base = std::fs::read_to_string(gw.policy_dir().join("policy.yaml")).expect("policy");
    let with_udp = |refuse: bool| {
        let flag = if refuse { "    udp: refuse\n" } else { "" };
        base.replace(
            &format!("    ports: [{port}]\n"),
            &format!("    ports: [{port}]\n{flag}"),
        )
        .replace(
            "rules:\n",
            &format!(
                "  - name: open\n    protocol: tcp\n    addresses: [127.0.0.2]\n    ports: [{other}]\nrules:\n"
            ),
        )
    };
    let apply = |policy: String| {
        let before = gw.count("policy_applied");
        std::fs::write(gw.policy_dir().join("policy.yaml"), policy).expect("write policy");
        gw.wait_for(
            Duration::from_secs(10),
            |e| e["event"] == "policy_applied",
            before,
        );
    };
    let args = [port.to_string(), other.to_string()];

    // Default: UDP is not touched (documented: the gateway proxies TCP).
    apply(with_udp(false));
    let r = agent_python(&agent, UDP_AGENT, &args);
    for case in UDP_CASES {
        assert_eq!(r[case], "sent", "{case} without `udp: refuse`: {r}");
    }
    assert_eq!(refused_udp.count(), UDP_CASES.len());

    // `udp: refuse`: every way to the target's port from the managed cgroup is refused, the
    // listed address, a local alias, the unspecified address, IPv6 and v4-mapped, connected.
    apply(with_udp(true));
    let before = refused_udp.count();
    let r = agent_python(&agent, UDP_AGENT, &args);
    for case in UDP_CASES {
        assert_eq!(r[case], EPERM, "{case} must be refused: {r}");
    }
    assert_eq!(refused_udp.count(), before, "a datagram got through: {r}");
    // Another target, without the option, is not affected.
    assert_eq!(r["other_target"], "sent", "{r}");
    let open_before = open_udp.count();
    assert!(open_before >= 2, "the other target's datagrams arrive");

    // Unmanaged cgroups under the same anchor are not affected either.
    let r = agent_python(&sibling, UDP_AGENT, &args);
    for case in UDP_CASES {
        assert_eq!(r[case], "sent", "unmanaged {case}: {r}");
    }
    assert_eq!(refused_udp.count(), before + UDP_CASES.len());

    // Lifting the option is a live reload like any other.
    apply(with_udp(false));
    let r = agent_python(&agent, UDP_AGENT, &args);
    assert_eq!(r["listed"], "sent", "{r}");
}
