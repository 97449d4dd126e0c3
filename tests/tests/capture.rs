//! End-to-end capture tests: real eBPF programs attached to real cgroups, real network
//! namespaces, the real `agentgate` binary, target services on loopback. Root required.
//!
//! Each test uses its own ports, cgroups, netns and pin directory, so they can run in parallel.

use std::{net::SocketAddr, time::Duration};

use agentgate_tests::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Checks a connection the agent made through the gateway: the bytes came from the real target,
/// the agent's getpeername() shows the target, and the gateway recorded the right original
/// destination and workload.
fn assert_captured(gw: &Gateway, r: &ProbeResult, target: SocketAddr, cgroup: &Cgroup) {
    assert!(r.errno.is_none(), "agent could not connect: {r:?}");
    assert!(
        r.greeting.starts_with("peer="),
        "no greeting from the target: {r:?}"
    );
    assert!(!r.went_direct(), "connection bypassed the gateway: {r:?}");
    assert_eq!(
        r.peer,
        Some(target),
        "getpeername() must show the original target"
    );
    let ev = gw.connection_of(r.pid);
    assert_eq!(s(&ev, "original_dst"), target.to_string(), "{ev}");
    assert_eq!(s(&ev, "cgroup"), cgroup.rel, "{ev}");
    assert_eq!(ev["cgroup_id"], cgroup.id(), "{ev}");
    assert_eq!(s(&ev, "workload"), "agents", "{ev}");
    assert_eq!(s(&ev, "target"), "svc", "{ev}");
}

#[test]
fn host_mode_ipv4_ipv6_and_mapped() {
    let v6 = TargetServer::start(sa("[::1]:17101"));
    let HostSetup {
        token: _token,
        anchor: _anchor,
        name: _name,
        target: v4,
        agent,
        gw,
    } = host_setup("host", 16101, 17101, &["127.0.0.2", "::1"]);

    let r = probe(Some(&agent), None, v4.addr);
    assert_captured(&gw, &r, v4.addr, &agent);
    assert_eq!(v4.count(), 1);

    let r = probe(Some(&agent), None, v6.addr);
    assert_captured(&gw, &r, v6.addr, &agent);
    assert_eq!(v6.count(), 1);

    // An IPv6 socket dialling an IPv4-mapped address is the IPv4 target.
    let mapped = sa("[::ffff:127.0.0.2]:17101");
    let r = probe(Some(&agent), None, mapped);
    assert!(!r.went_direct(), "{r:?}");
    assert_eq!(
        r.peer,
        Some(mapped),
        "getpeername keeps the address family the agent used"
    );
    assert_eq!(
        s(&gw.connection_of(r.pid), "original_dst"),
        "127.0.0.2:17101"
    );
    assert_eq!(v4.count(), 2);

    // `::` becomes ::1 in the kernel after the hook; it must be captured as ::1, not slip by.
    let r = probe(Some(&agent), None, sa("[::]:17101"));
    assert!(r.errno.is_none() && !r.went_direct(), "{r:?}");
    assert_eq!(s(&gw.connection_of(r.pid), "original_dst"), "[::1]:17101");
    assert_eq!(v6.count(), 2);

    // Dialling the listener directly (no redirect, so no kernel record) gets nothing.
    let r = probe(None, None, sa("127.0.0.1:16101"));
    assert!(!r.greeting.starts_with("peer="), "{r:?}");
    let ev = gw.wait_for(
        Duration::from_secs(5),
        |e| e["event"] == "refused" && e["code"] == "not_redirected",
        0,
    );
    assert_eq!(s(&ev, "peer"), r.local.unwrap().to_string());
    assert_eq!((v4.count(), v6.count()), (2, 2));
}

#[test]
fn pod_mode_ipv4_and_ipv6() {
    require_root();
    let name = unique("pod");
    let _anchor = Cgroup::create(&format!("/{name}"));
    let pod = Cgroup::create(&format!("/{name}/pod-a"));
    let ns = Netns::create(&name);
    // Loopback targets of a pod are the pod's own services: they live in its namespace, and the
    // gateway dials them there (capture_local.rs checks it is not the host's of the same port).
    let v4 = target_in(&ns, sa("127.0.0.2:17201"));
    let v6 = target_in(&ns, sa("[::1]:17201"));
    // The pod shares the host's mount namespace here, so the host path is the pod's path too.
    let token = TokenFile::valid("pod");
    let gw = Gateway::start(
        "pod",
        &policy(
            16201,
            &format!("/{name}/pod-*"),
            "pod",
            &["127.0.0.2", "::1"],
            17201,
            &token.path,
        ),
    );
    let holder = Holder::start(&pod, Some(&ns));
    let opened = gw.wait_for(
        Duration::from_secs(10),
        |e| e["event"] == "pod_listener" && e["cgroup"] == pod.rel.as_str(),
        0,
    );
    assert_eq!(opened["pid"], holder.pid());

    for target in [v4.addr, v6.addr] {
        let r = probe(Some(&pod), Some(&ns), target);
        assert_captured(&gw, &r, target, &pod);
        let ev = gw.connection_of(r.pid);
        assert!(
            s(&ev, "listener").starts_with("pod:"),
            "accepted by the pod's listener: {ev}"
        );
    }
    assert_eq!((v4.count(), v6.count()), (1, 1));

    // The same pod without capture: a process in the namespace but outside the managed cgroup
    // goes direct.
    let r = probe(None, Some(&ns), v4.addr);
    assert!(r.went_direct(), "{r:?}");
    assert_eq!(v4.count(), 2);
}

/// A target server inside `ns`: bound by a thread that entered the namespace (the listening
/// socket keeps it).
fn target_in(ns: &Netns, addr: SocketAddr) -> TargetServer {
    let path = ns.path();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("open netns");
        // SAFETY: setns on this short-lived thread only.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        TargetServer::start(addr)
    })
    .join()
    .expect("bind thread")
}

#[test]
fn non_targets_and_unmanaged_processes_go_direct() {
    let other_port = TargetServer::start(sa("127.0.0.2:17302"));
    let HostSetup {
        token: _token,
        anchor: _anchor,
        name,
        target,
        agent,
        gw,
    } = host_setup("direct", 16301, 17301, &["127.0.0.2"]);
    let sibling = Cgroup::create(&format!("/{name}/other"));
    gw.wait_classified(&sibling.rel);
    gw.new_events();

    // Managed workload, a destination that is not a target. (Another local address on the
    // target's port is not one: it is an alias of the local target, captured — capture_local.rs.)
    let addr = other_port.addr;
    let r = probe(Some(&agent), None, addr);
    assert!(
        r.went_direct(),
        "non-target {addr} must not be captured: {r:?}"
    );
    assert_eq!(r.peer, Some(addr));
    // The target, from outside managed cgroups: the test's own cgroup and an unmanaged sibling
    // under the same anchor.
    let r = probe(None, None, target.addr);
    assert!(
        r.went_direct(),
        "unmanaged process must not be captured: {r:?}"
    );
    let r = probe(Some(&sibling), None, target.addr);
    assert!(
        r.went_direct(),
        "unmanaged sibling cgroup must not be captured: {r:?}"
    );

    let seen: Vec<_> = gw
        .new_events()
        .into_iter()
        .filter(|e| e["event"] != "cgroup")
        .collect();
    assert!(
        seen.is_empty(),
        "the gateway saw connections it must not: {seen:?}"
    );

    // And the managed workload's connection to the target is captured (the test is not vacuous).
    let r = probe(Some(&agent), None, target.addr);
    assert_captured(&gw, &r, target.addr, &agent);
}

#[test]
fn cgroups_created_after_start_are_captured() {
    let HostSetup {
        token: _token,
        anchor: _anchor,
        name,
        target,
        agent: _first,
        gw,
    } = host_setup("late", 16401, 17401, &["127.0.0.2"]);
    let late = Cgroup::create(&format!("/{name}/job-late"));
    let ev = gw.wait_classified(&late.rel);
    assert_eq!(s(&ev, "workload"), "agents");
    let r = probe(Some(&late), None, target.addr);
    assert_captured(&gw, &r, target.addr, &late);

    // A child cgroup made inside a managed one stays managed: no escape by mkdir.
    let child = Cgroup::create(&format!("/{name}/job-late/escape"));
    gw.wait_classified(&child.rel);
    let r = probe(Some(&child), None, target.addr);
    assert_captured(&gw, &r, target.addr, &child);
}

#[test]
fn gateway_inside_a_managed_cgroup_does_not_capture_itself() {
    require_root();
    let name = unique("loop");
    let _anchor = Cgroup::create(&format!("/{name}"));
    let gw_cgroup = Cgroup::create(&format!("/{name}/job-gateway"));
    let agent = Cgroup::create(&format!("/{name}/job-agent"));
    let target = TargetServer::start(sa("127.0.0.2:17501"));
    let token = TokenFile::valid("loop");
    // The gateway itself matches the workload glob: only the bypass registration of its
    // upstream socket's cookie keeps that connection from being redirected into its own listener.
    let gw = Gateway::start_in(
        "loop",
        &policy(
            16501,
            &format!("/{name}/job-*"),
            "host",
            &["127.0.0.2"],
            17501,
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
    let r = probe(Some(&agent), None, target.addr);
    assert_captured(&gw, &r, target.addr, &agent);
    assert_eq!(target.count(), 1, "exactly one upstream connection");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        gw.count("connection_open"),
        1,
        "no second, looped connection"
    );
    assert_eq!(gw.count("refused"), 0);
}

#[test]
fn five_hundred_concurrent_connections_relay_intact() {
    let HostSetup {
        token: _token,
        anchor: _anchor,
        name: _name,
        target,
        agent,
        gw,
    } = host_setup("flood", 16601, 17601, &["127.0.0.2"]);
    let (ok, failed, errors) = flood(&agent, target.addr, 500, 64 * 1024);
    assert_eq!((ok, failed), (500, 0), "errors: {errors:?}");
    assert_eq!(target.count(), 500);
    let closed = gw.wait_for(
        Duration::from_secs(30),
        |e| e["event"] == "connection_close",
        499,
    );
    assert!(closed["error"].is_null(), "{closed}");
    let events = gw.events();
    let closes: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "connection_close")
        .collect();
    assert_eq!(closes.len(), 500);
    for c in closes {
        assert_eq!(c["bytes_up"], 64 * 1024, "{c}");
        // The greeting line plus the echoed payload.
        assert!(c["bytes_down"].as_u64().unwrap() > 64 * 1024, "{c}");
    }
}

#[test]
fn fail_closed_while_the_gateway_is_down_and_recover() {
    let HostSetup {
        token: _token,
        anchor: _anchor,
        name,
        target,
        agent,
        mut gw,
    } = host_setup("failclosed", 16701, 17701, &["127.0.0.2", "::1"]);
    let r = probe(Some(&agent), None, target.addr);
    assert_captured(&gw, &r, target.addr, &agent);
    assert_eq!(target.count(), 1);
    // One anchor: one link per program.
    let links_of_one_generation = std::fs::read_dir(gw.pin_dir.join("links")).unwrap().count();
    assert_eq!(links_of_one_generation, 9);

    gw.kill9();
    // A known workload: redirected to a listener that is gone.
    let r = probe(Some(&agent), None, target.addr);
    assert_eq!(
        r.errno,
        Some(libc::ECONNREFUSED),
        "must be refused, not connected: {r:?}"
    );
    // A workload cgroup created while the gateway is down: not classified yet, refused too.
    let newcomer = Cgroup::create(&format!("/{name}/job-2"));
    let r = probe(Some(&newcomer), None, target.addr);
    assert_eq!(
        r.errno,
        Some(libc::EPERM),
        "unclassified cgroup must be refused: {r:?}"
    );
    assert_eq!(target.count(), 1, "nothing reached the target directly");

    gw.restart();
    gw.wait_classified(&newcomer.rel);
    let r = probe(Some(&agent), None, target.addr);
    assert_captured(&gw, &r, target.addr, &agent);
    let r = probe(Some(&newcomer), None, target.addr);
    assert_captured(&gw, &r, target.addr, &newcomer);
    let links = std::fs::read_dir(gw.pin_dir.join("links")).unwrap().count();
    assert_eq!(
        links, links_of_one_generation,
        "the restart replaced the old generation of links"
    );

    // Uninstall is the explicit way out: afterwards the workload connects directly.
    gw.kill9();
    let out = gw.uninstall();
    assert!(out.status.success(), "{out:?}");
    assert!(!gw.pin_dir.exists());
    let r = probe(Some(&agent), None, target.addr);
    assert!(
        r.went_direct(),
        "after uninstall the workload goes direct: {r:?}"
    );
}

#[test]
fn bad_policies_are_rejected_with_locations() {
    let dir = std::env::temp_dir().join(unique("badpolicy"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let check = |dir: &std::path::Path| {
        std::process::Command::new(agentgate_bin())
            .args(["policy", "check"])
            .arg(dir)
            .output()
            .unwrap()
    };
    std::fs::write(
        dir.join("ok.yaml"),
        policy(
            16801,
            "/x/*",
            "host",
            &["127.0.0.2"],
            17801,
            std::path::Path::new("/run/token"),
        ),
    )
    .unwrap();
    let out = check(&dir);
    assert!(out.status.success(), "{out:?}");

    // A YAML syntax error: file:line:column.
    std::fs::write(
        dir.join("broken.yaml"),
        "version: 2\ntargets:\n  - name: db\n    ports: [5432\n",
    )
    .unwrap();
    let out = check(&dir);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let at = format!("{}:", dir.join("broken.yaml").display());
    let loc = err
        .split(&at)
        .nth(1)
        .unwrap_or_else(|| panic!("file not named: {err}"));
    let mut parts = loc.split(':');
    let line: u32 = parts
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("no line: {err}"));
    let col: u32 = parts
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("no column: {err}"));
    assert!(line >= 4 && col >= 1, "{err}");
    std::fs::remove_file(dir.join("broken.yaml")).unwrap();

    // A target with a bad address: named, with its line.
    std::fs::write(
        dir.join("targets.yaml"),
        "version: 2\ntargets:\n  - name: analytics-db\n    protocol: tcp\n    addresses: [\"127.0.0.300\"]\n    ports: [5432]\n",
    )
    .unwrap();
    let out = check(&dir);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("analytics-db") && err.contains("127.0.0.300"),
        "{err}"
    );
    assert!(err.contains("targets.yaml:5:"), "{err}");

    // `run` refuses the same policy before touching the kernel.
    let out = std::process::Command::new(agentgate_bin())
        .args([
            "run",
            "--pin-dir",
            "/sys/fs/bpf/agentgate-never-created",
            "--policies",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("analytics-db"));
    assert!(!std::path::Path::new("/sys/fs/bpf/agentgate-never-created").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
