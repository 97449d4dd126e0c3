//! The gateway's own connections (issue 17, one socket factory): a connection the gateway makes
//! for itself (an identity provider's keys, an approval webhook) is never captured, even to an
//! address it captures for workloads and from a gateway that runs in a managed cgroup; and the gateway's own services are dialled from the
//! gateway's namespace, also while it handles a pod's connection whose upstream is dialled inside
//! the pod.
//!
//! Real eBPF programs, real cgroups and network namespaces, the real `agentgate` binary.
//! Ports 20250-20299, loopback only.
//!
//! The other half of the factory's rule, "a socket that cannot be registered as the gateway's
//! own is not connected", is not shown here: `AG_BYPASS` is an LRU map, whose writes do not fail
//! on a healthy kernel, so no test can make them fail from outside. The unit tests
//! `net::socket::tests` (a registry that fails: no connect, a typed error) and
//! `identity::tests::identity_fetches_fail_closed_when_their_sockets_cannot_be_registered` show
//! it.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use agentgate_tests::{pg::*, *};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// One connection an HTTP server accepted: the process that held the client's socket at that
/// moment (`None`: not found, e.g. a socket in another namespace).
#[derive(Debug, Clone)]
struct Visit {
    owner: Option<u32>,
}

/// A plain-HTTP server answering every request with `status` and `body`, bound in `netns` when
/// given. Records every connection it accepts.
struct HttpServer {
    visits: Arc<Mutex<Vec<Visit>>>,
    stop: Arc<AtomicBool>,
}

impl HttpServer {
    fn start(addr: SocketAddr, netns: Option<&Netns>, status: &str, body: Vec<u8>) -> Self {
        let listener = bind_in(addr, netns);
        listener.set_nonblocking(true).unwrap();
        let visits = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let in_host = netns.is_none();
        let (v, s, status) = (visits.clone(), stop.clone(), status.to_string());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let (mut conn, peer) = match listener.accept() {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                // Looked up while the client waits for the answer, so its socket still exists.
                let owner = if in_host { owner_of(peer, addr) } else { None };
                v.lock().unwrap().push(Visit { owner });
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                read_request(&mut conn);
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&body);
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
        });
        Self { visits, stop }
    }

    fn visits(&self) -> Vec<Visit> {
        self.visits.lock().unwrap().clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads an HTTP request head (the gateway's requests here are GETs without a body).
fn read_request(conn: &mut TcpStream) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A TCP service bound in `netns` that greets each client with `peer=<client address>` and
/// closes (the agent's target in a pod).
struct Greeter {
    stop: Arc<AtomicBool>,
}

impl Greeter {
    fn start(addr: SocketAddr, netns: Option<&Netns>) -> Self {
        let listener = bind_in(addr, netns);
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.write_all(format!("peer={peer}\n").as_bytes());
                        let _ = conn.shutdown(std::net::Shutdown::Both);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { stop }
    }
}

impl Drop for Greeter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A listener bound to `addr` inside `netns` (a short-lived thread enters it; the socket keeps
/// the namespace it was created in).
fn bind_in(addr: SocketAddr, netns: Option<&Netns>) -> TcpListener {
    let ns_path = netns.map(|n| n.path());
    std::thread::spawn(move || {
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
    .expect("bind thread")
}

/// The process holding the IPv4 TCP socket of this (host) namespace whose local end is `local`
/// and remote end is `remote`: its inode from /proc/net/tcp, then the process with a descriptor
/// for that inode.
fn owner_of(local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v4.ip().octets()),
            v4.port()
        )),
        SocketAddr::V6(_) => None,
    };
    let (l, r) = (hex(local)?, hex(remote)?);
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && f[1] == l && f[2] == r).then(|| f[9].to_string())
    })?;
    let wanted = format!("socket:[{inode}]");
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t.to_str() == Some(wanted.as_str())) {
                return Some(pid);
            }
        }
    }
    None
}

fn jwks() -> Vec<u8> {
    std::fs::read(fixtures().join("test-jwks.json")).expect("test JWKS")
}

/// A policy whose identity provider's keys are fetched from `jwks_url`, with the agents'
/// target `svc` at `svc_addrs`:`svc_port`, and, when given, a second target `idp` at the
/// identity provider's own address and port (so that capture would redirect the gateway's
/// fetch, if the gateway's socket were not exempt).
fn url_policy(
    listen: u16,
    glob: &str,
    mode: &str,
    svc: (&[&str], u16),
    idp: Option<SocketAddr>,
    jwks_url: &str,
    token: &std::path::Path,
) -> String {
    let addrs: Vec<String> = svc.0.iter().map(|a| format!("\"{a}\"")).collect();
    let idp_target = idp
        .map(|a| {
            format!(
                "  - name: idp\n    protocol: tcp\n    addresses: [\"{}\"]\n    ports: [{}]\n",
                a.ip(),
                a.port()
            )
        })
        .unwrap_or_default();
    format!(
        "version: 2\ngateway:\n  listen_port: {listen}\n\
         identity_providers:\n  - name: test-idp\n    issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n\
         \x20   jwks: {{from: url, url: \"{jwks_url}\"}}\n    algorithms: [RS256]\n\
         workloads:\n  - name: agents\n    cgroup: \"{glob}\"\n    mode: {mode}\n\
         \x20   token: {{from: file, path: {token}}}\n\
         targets:\n  - name: svc\n    protocol: tcp\n    addresses: [{}]\n    ports: [{}]\n{idp_target}\
         rules:\n  - name: agents-to-svc\n    when: {{workloads: [agents], groups: [agents]}}\n    targets: [svc]\n",
        addrs.join(", "),
        svc.1,
        token = token.display(),
    )
}

/// The gateway runs in a cgroup it manages, and its identity provider listens on an address and
/// port it captures: the key fetch must still reach the provider directly, from the gateway's
/// own socket, and never come back into the gateway as a workload's connection.
#[test]
fn a_key_fetch_to_a_captured_address_from_a_managed_gateway_goes_direct() {
    require_root();
    let name = unique("sockjwks");
    let _anchor = Cgroup::create(&format!("/{name}"));
    let gw_cgroup = Cgroup::create(&format!("/{name}/job-gateway"));
    let agent = Cgroup::create(&format!("/{name}/job-agent"));
    let target = TargetServer::start(sa("127.0.0.2:20251"));
    let idp_addr = sa("127.0.0.3:20252");
    let idp = HttpServer::start(idp_addr, None, "200 OK", jwks());
    let token = TokenFile::valid("sockjwks");
    let gw = Gateway::start_in(
        "sockjwks",
        &url_policy(
            20250,
            &format!("/{name}/job-*"),
            "host",
            (&["127.0.0.2"], 20251),
            Some(idp_addr),
            &format!("http://{idp_addr}/jwks"),
            &token.path,
        ),
        Some(&gw_cgroup),
    );
    let ev = gw.wait_classified(&gw_cgroup.rel);
    assert_eq!(
        s(&ev, "workload"),
        "agents",
        "the gateway's cgroup is managed: {ev}"
    );
    gw.wait_classified(&agent.rel);
    // The agent's token is verified: the gateway fetches the keys (the first verification).
    let r = probe(Some(&agent), None, target.addr);
    assert!(
        r.greeting.starts_with("peer=") && !r.went_direct(),
        "the agent was not let through: {r:?}\n{}",
        gw.log_tail()
    );
    let visits = idp.visits();
    assert!(
        !visits.is_empty(),
        "the key fetch never reached the provider"
    );
    for v in &visits {
        assert_eq!(
            v.owner,
            Some(gw.pid()),
            "the provider's client was not the gateway's own socket: {v:?}"
        );
    }
    // The capture of that address is real: an agent's connection to it is taken by the gateway
    // (and refused, no rule allows it), it does not reach the provider.
    let r = probe(Some(&agent), None, idp_addr);
    assert!(r.greeting.is_empty(), "{r:?}");
    let ev = gw.wait_for(
        Duration::from_secs(10),
        |e| e["event"] == "refused" && e["pid"] == r.pid,
        0,
    );
    assert_eq!(s(&ev, "code"), "denied", "{ev}");
    assert_eq!(idp.visits().len(), visits.len(), "{:?}", idp.visits());
    // Nothing of the gateway's came back to it as a workload's connection.
    std::thread::sleep(Duration::from_millis(300));
    let own: Vec<_> = gw
        .events()
        .into_iter()
        .filter(|e| {
            e["pid"] == gw.pid()
                && ["allowed", "refused", "connection_open"].contains(&s(e, "event"))
        })
        .collect();
    assert!(own.is_empty(), "the gateway captured itself: {own:?}");
    assert_eq!(gw.count("connection_open"), 1);
    assert_eq!(target.count(), 1);
}

/// A pod's own loopback target is dialled inside the pod, but the identity provider that same
/// connection's verification needs is the node's, at the same loopback address and port as a
/// decoy inside the pod: the fetch must leave from the gateway's namespace.
#[test]
fn a_key_fetch_during_a_pods_connection_leaves_from_the_gateways_namespace() {
    require_root();
    let name = unique("sockpod");
    let _anchor = Cgroup::create(&format!("/{name}"));
    let pod = Cgroup::create(&format!("/{name}/pod-a"));
    let ns = Netns::create(&name);
    let _pod_target = Greeter::start(sa("127.0.0.1:20261"), Some(&ns));
    let idp_addr = sa("127.0.0.1:20262");
    let idp = HttpServer::start(idp_addr, None, "200 OK", jwks());
    let decoy = HttpServer::start(idp_addr, Some(&ns), "404 Not Found", Vec::new());
    let token = TokenFile::valid("sockpod");
    let gw = Gateway::start(
        "sockpod",
        &url_policy(
            20260,
            &format!("/{name}/pod-*"),
            "pod",
            (&["127.0.0.1"], 20261),
            None,
            &format!("http://{idp_addr}/jwks"),
            &token.path,
        ),
    );
    let _holder = Holder::start(&pod, Some(&ns));
    gw.wait_for(
        Duration::from_secs(10),
        |e| e["event"] == "pod_listener" && e["cgroup"] == pod.rel.as_str(),
        0,
    );
    let r = probe(Some(&pod), Some(&ns), sa("127.0.0.1:20261"));
    assert!(
        r.greeting.starts_with("peer=") && !r.went_direct(),
        "the pod's agent was not let through: {r:?}\n{}",
        gw.log_tail()
    );
    assert_eq!(
        decoy.visits().len(),
        0,
        "the key fetch was made inside the pod"
    );
    let visits = idp.visits();
    assert!(
        !visits.is_empty(),
        "the key fetch never reached the provider"
    );
    assert!(
        visits.iter().all(|v| v.owner == Some(gw.pid())),
        "{visits:?}"
    );
}

/// An approval webhook whose receiver listens on a loopback alias of the PostgreSQL target's
/// port (captured like the target itself), POSTed by a gateway that runs in a managed cgroup:
/// the receiver gets it from the gateway's own socket, at the first attempt.
#[test]
fn a_webhook_to_a_captured_address_from_a_managed_gateway_goes_direct() {
    require_root();
    let pg_port = 20270;
    let hook_addr = SocketAddr::from(([127, 0, 0, 5], pg_port));
    let receiver = HttpServer::start(hook_addr, None, "200 OK", b"{}".to_vec());
    let opts = PgTargetOptions {
        extra_rules: approval_rule(
            "drops-need-approval",
            r#"{patterns: ["(?i)^drop table"]}"#,
            "{approvers: [dba], timeout_secs: 120}",
        ),
        gateway_extra: format!(
            "  approval_webhooks:\n    - url: http://{hook_addr}/hook\n      format: json\n"
        ),
        ..Default::default()
    };
    let (p, own) = PgGateway::start_prepared(
        "sockhook",
        20271,
        pg_port,
        PgOptions::default(),
        &opts,
        true,
        |_| Vec::new(),
    );
    let own = own.expect("the gateway's own cgroup");
    let ev = p.gw.wait_classified(&own.rel);
    assert_eq!(
        s(&ev, "workload"),
        "sql-agents",
        "the gateway's cgroup is managed: {ev}"
    );
    p.pg.sql_in(
        "agentdb",
        &format!("CREATE TABLE t (x int); ALTER TABLE t OWNER TO {ROLE_SCRAM};"),
    );
    // The capture of the receiver's address is real: an agent's connection to it is taken by
    // the gateway as the PostgreSQL target's, it does not reach the receiver.
    // (The probe speaks no PostgreSQL, so the gateway ends it as a protocol error.)
    let r = probe(Some(&p.agent), None, hook_addr);
    assert!(!r.went_direct() && r.errno.is_none(), "{r:?}");
    let ev = p.gw.wait_for(
        Duration::from_secs(30),
        |e| e["event"] == "refused" && e["pid"] == r.pid,
        0,
    );
    assert_eq!(s(&ev, "original_dst"), hook_addr.to_string(), "{ev}");
    assert_eq!(receiver.visits().len(), 0, "{:?}", receiver.visits());

    let conn = p.agent_conninfo(&agent_jwt("agent-sockhook"), "disable");
    let mut c = psql_bg(&conn, &p.agent, &["DROP TABLE t"]);
    c.wait_line(Duration::from_secs(30), |err, l| {
        err && l.starts_with("NOTICE:")
    });
    let delivered = p.gw.wait_for(
        Duration::from_secs(30),
        |e| e["event"] == "webhook_delivered" || e["event"] == "webhook_failed",
        0,
    );
    assert_eq!(s(&delivered, "event"), "webhook_delivered", "{delivered}");
    assert_eq!(delivered["attempt"], 1, "{delivered}");
    let visits = receiver.visits();
    assert_eq!(visits.len(), 1, "{visits:?}");
    assert_eq!(
        visits[0].owner,
        Some(p.gw.pid()),
        "the receiver's client was not the gateway's own socket: {visits:?}"
    );
    let looped: Vec<_> =
        p.gw.events()
            .into_iter()
            .filter(|e| {
                e["pid"] == p.gw.pid()
                    && ["allowed", "refused", "connection_open"].contains(&s(e, "event"))
            })
            .collect();
    assert!(looped.is_empty(), "the gateway captured itself: {looped:?}");
    drop(c);
}
