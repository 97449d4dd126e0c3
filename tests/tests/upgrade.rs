//! Upgrades without a gap (issue 21): a new gateway process takes the listening sockets of the
//! one serving (handover/), which stops accepting and drains, while an agent in a managed cgroup
//! connects as fast as it can. Counted: connections refused, and connections that went direct
//! (the target saw the agent's own socket as its peer, not the gateway's). Also: a new process
//! killed half-way leaves the old one serving, and pins of another map layout are refused.
//!
//! Ports 20980–20989 and 20995–20997.
//!
//! Also: the HTTP admin API (`--admin-http`) is handed over, so approvers reach the node on the
//! same address throughout (the new process could not bind it while the old one held it).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use agentgate_tests::*;
use serde_json::Value;

/// The successors this test started, killed and reaped on drop (before the gateway's own guard
/// uninstalls the pins: declare it after the `Gateway`).
#[derive(Default)]
struct Successors(Vec<Child>);

impl Drop for Successors {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts another `agentgate run` with the gateway's own arguments (policy, pins, event log,
/// admin socket, record): it finds the serving one on the handover socket beside the admin
/// socket and takes over.
fn successor(gw: &Gateway, n: usize) -> Child {
    let mut cmd = Command::new(agentgate_bin());
    cmd.arg("run")
        .arg("--policies")
        .arg(gw.policy_dir())
        .arg("--pin-dir")
        .arg(&gw.pin_dir)
        .arg("--events")
        .arg(&gw.events_path)
        .arg("--admin-socket")
        .arg(gw.admin_socket())
        .arg("--record-db")
        .arg(gw.record_db())
        .args(["--metrics", "off"])
        .args(&gw.extra_args)
        .env("AGENTGATE_LOG", "info,agentgate=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(gw.dir.join(format!("successor-{n}.log")))
                .expect("successor log"),
        );
    cmd.spawn().expect("spawn the successor gateway")
}

fn agent_script() -> PathBuf {
    fixtures().join("upgrade_agent.py")
}

/// The connect loop, as an agent in `cgroup`; stops when `stop` exists.
fn connect_loop(cgroup: &Cgroup, target: SocketAddr, stop: &Path) -> Child {
    connect_loop_in(cgroup, None, target, stop)
}

fn connect_loop_in(
    cgroup: &Cgroup,
    netns: Option<&Netns>,
    target: SocketAddr,
    stop: &Path,
) -> Child {
    let mut cmd = Command::new("python3");
    cmd.arg(agent_script())
        .args(["loop", &target.ip().to_string(), &target.port().to_string()])
        .arg(stop)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    place(&mut cmd, Some(cgroup), netns);
    cmd.spawn().expect("start the connect loop")
}

/// One long session of `secs`, an echo round trip every 100 ms.
fn long_session(cgroup: &Cgroup, target: SocketAddr, secs: u64) -> Child {
    let mut cmd = Command::new("python3");
    cmd.arg(agent_script())
        .args(["long", &target.ip().to_string(), &target.port().to_string()])
        .arg(secs.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    place(&mut cmd, Some(cgroup), None);
    cmd.spawn().expect("start a long session")
}

fn report(child: Child) -> Value {
    let out = child.wait_with_output().expect("agent output");
    assert!(out.status.success(), "agent: {out:?}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("agent said {:?}: {e}", String::from_utf8_lossy(&out.stdout)))
}

/// Whether process `pid` has ended (gone or a zombie).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X"),
    }
}

/// Like `Gateway::wait_for`, but indifferent to the harness's own process having exited: here
/// the first gateway hands over and exits by design, and its successors write the same log.
fn wait_event(
    gw: &Gateway,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
    skip: usize,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(hit) = gw.events().into_iter().filter(|e| pred(e)).nth(skip) {
            return hit;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for an event; log tail:\n{}",
            gw.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn setup(tag: &str, listen: u16, port: u16) -> HostSetup {
    setup_with(tag, listen, port, &[])
}

fn setup_with(tag: &str, listen: u16, port: u16, args: &[&str]) -> HostSetup {
    require_root();
    let name = unique(tag);
    let anchor = Cgroup::create(&format!("/{name}"));
    let agent = Cgroup::create(&format!("/{name}/job-1"));
    let target = TargetServer::start(format!("127.0.0.2:{port}").parse().unwrap());
    let token = TokenFile::valid(tag);
    let gw = Gateway::start_with_args(
        tag,
        &policy(
            listen,
            &format!("/{name}/job-*"),
            "host",
            &["127.0.0.2"],
            port,
            &token.path,
        ),
        None,
        &[&["--drain-secs", "30"], args].concat(),
    );
    gw.wait_classified(&agent.rel);
    HostSetup {
        gw,
        agent,
        target,
        name,
        anchor,
        token,
    }
}

#[test]
fn twenty_upgrades_under_a_connect_loop_refuse_nothing_and_nothing_goes_direct() {
    let HostSetup {
        token: _token,
        anchor: _anchor,
        name: _name,
        target,
        agent,
        gw,
    } = setup("upgrade20", 20980, 20981);
    let mut successors = Successors::default();
    let stop = gw.dir.join("stop-loop");
    let looping = connect_loop(&agent, target.addr, &stop);
    // Sessions open on the first process: they must finish there, after it has handed over.
    let long: Vec<Child> = (0..3)
        .map(|_| long_session(&agent, target.addr, 8))
        .collect();
    wait_until(
        "the long sessions are relayed",
        Duration::from_secs(10),
        || gw.count("connection_open") >= 3,
    );
    std::thread::sleep(Duration::from_millis(300));
    let first = gw.pid();
    let handover_started = Instant::now();

    let mut previous: Option<u32> = None;
    let mut took = Vec::new();
    for i in 0..20 {
        let started = Instant::now();
        let child = successor(&gw, i);
        let pid = child.id();
        successors.0.push(child);
        // Its "ready" comes after it accepts and the old one has let go.
        let ev = wait_event(
            &gw,
            Duration::from_secs(60),
            |e| e["event"] == "taken_over",
            i,
        );
        let from = ev["from_pid"].as_u64().unwrap_or(0) as u32;
        assert_eq!(
            from,
            previous.unwrap_or(first),
            "took over from the serving one: {ev}"
        );
        wait_event(
            &gw,
            Duration::from_secs(30),
            |e| e["event"] == "ready",
            i + 1,
        );
        took.push(started.elapsed());
        previous = Some(pid);
    }
    let upgrades_took = handover_started.elapsed();

    // Every old process exits by itself once drained (`--after-handover exit`); the first one
    // only after the long sessions ended.
    let stopped: Vec<Value> = wait_stopped(&gw, 20);
    for s in &stopped {
        assert_eq!(s["handed_over"], true, "{s}");
        assert_eq!(s["drained"], true, "{s}");
    }
    for c in &mut successors.0[..19] {
        let status = c.wait().expect("reap an old gateway");
        assert!(status.success(), "an old gateway failed: {status}");
    }
    wait_until("the first gateway exited", Duration::from_secs(30), || {
        ended(first)
    });

    std::fs::write(&stop, "").unwrap();
    let counts = report(looping);
    let long: Vec<Value> = long.into_iter().map(report).collect();
    eprintln!(
        "20 upgrades in {upgrades_took:?} (each: {took:?}); connect loop: {counts}; long \
         sessions: {long:?}"
    );
    for l in &long {
        assert!(l["error"].is_null(), "a long session broke: {l}");
        assert_eq!(l["kind"], "ok", "relayed, not direct: {l}");
        assert!(l["rounds"].as_u64().unwrap_or(0) >= 40, "{l}");
        assert!(
            l["ended"].as_f64().unwrap_or(0.0) - l["started"].as_f64().unwrap_or(0.0) >= 7.9,
            "{l}"
        );
    }
    let troubles: Vec<Value> = gw
        .events()
        .into_iter()
        .filter(|e| {
            e["event"] == "refused"
                || (e["event"] == "connection_close" && !e["error"].is_null())
                || e["event"] == "capture_error"
        })
        .collect();
    assert_eq!(counts["refused"], 0, "{counts}");
    assert_eq!(counts["direct"], 0, "{counts}");
    assert_eq!(
        counts["reset"], 0,
        "{counts}; the gateways said: {troubles:?}"
    );
    assert_eq!(
        counts["other"], 0,
        "{counts}; the gateways said: {troubles:?}"
    );
    assert!(troubles.is_empty(), "{troubles:?}");
    assert!(
        counts["ok"].as_u64().unwrap_or(0) >= 200,
        "the loop really ran through the upgrades: {counts}"
    );
    assert_eq!(
        target.count() as u64,
        counts["ok"].as_u64().unwrap_or(0) + 3,
        "every relayed connection reached the target once"
    );
    // The record kept one chain across the processes writing it in turn.
    let out = Command::new(agentgate_bin())
        .args(["audit", "verify", "--record-db"])
        .arg(gw.record_db())
        .output()
        .expect("agentgate audit verify");
    assert!(
        out.status.success(),
        "audit verify: {}",
        pg::output_text(&out)
    );
}

/// The `stopped` events of `n` processes.
fn wait_stopped(gw: &Gateway, n: usize) -> Vec<Value> {
    wait_event(
        gw,
        Duration::from_secs(60),
        |e| e["event"] == "stopped",
        n - 1,
    );
    gw.events()
        .into_iter()
        .filter(|e| e["event"] == "stopped")
        .collect()
}

/// Pod mode: the listener inside the pod's network namespace is handed over too (a new process
/// cannot bind it while the old one holds it, so without the handover the pod would be refused
/// until the old one closed it and the next rescan bound it again).
#[test]
fn pod_listeners_are_handed_over_too() {
    require_root();
    let name = unique("upgradepod");
    let _anchor = Cgroup::create(&format!("/{name}"));
    let pod = Cgroup::create(&format!("/{name}/pod-a"));
    let ns = Netns::create(&name);
    let target = target_in(&ns, "127.0.0.2:20987".parse().unwrap());
    let token = TokenFile::valid("upgradepod");
    let gw = Gateway::start_with_args(
        "upgradepod",
        &policy(
            20986,
            &format!("/{name}/pod-*"),
            "pod",
            &["127.0.0.2"],
            20987,
            &token.path,
        ),
        None,
        &["--drain-secs", "30"],
    );
    let mut successors = Successors::default();
    let _holder = Holder::start(&pod, Some(&ns));
    gw.wait_for(
        Duration::from_secs(10),
        |e| e["event"] == "pod_listener" && e["cgroup"] == pod.rel.as_str(),
        0,
    );
    let stop = gw.dir.join("stop-loop");
    let looping = connect_loop_in(&pod, Some(&ns), target.addr, &stop);
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..5 {
        successors.0.push(successor(&gw, i));
        wait_event(
            &gw,
            Duration::from_secs(60),
            |e| e["event"] == "taken_over",
            i,
        );
        wait_event(
            &gw,
            Duration::from_secs(30),
            |e| e["event"] == "ready",
            i + 1,
        );
        // The new process serves the pod from the socket it took.
        wait_event(
            &gw,
            Duration::from_secs(10),
            |e| e["event"] == "pod_listener" && e["cgroup"] == pod.rel.as_str(),
            i + 1,
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    std::fs::write(&stop, "").unwrap();
    let counts = report(looping);
    eprintln!("5 upgrades, pod mode: {counts}");
    let pod_listener_errors = gw
        .events()
        .iter()
        .filter(|e| e["event"] == "refused")
        .count();
    assert_eq!(pod_listener_errors, 0, "nothing refused by the gateways");
    assert_eq!(counts["refused"], 0, "{counts}");
    assert_eq!(counts["direct"], 0, "{counts}");
    assert_eq!(counts["reset"], 0, "{counts}");
    assert_eq!(counts["other"], 0, "{counts}");
    assert!(counts["ok"].as_u64().unwrap_or(0) > 50, "{counts}");
    let pod_connections = gw
        .events()
        .iter()
        .filter(|e| e["event"] == "connection_open" && s(e, "listener").starts_with("pod:"))
        .count() as u64;
    assert_eq!(
        pod_connections,
        counts["ok"].as_u64().unwrap_or(0),
        "all through the pod's listener"
    );
}

/// A target server inside `ns` (as in capture.rs).
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
fn a_new_gateway_killed_mid_handover_leaves_the_old_one_serving() {
    let HostSetup {
        token: _token,
        anchor: _anchor,
        name: _name,
        target,
        agent,
        gw,
    } = setup("upgradekill", 20982, 20983);
    let mut successors = Successors::default();
    let stop = gw.dir.join("stop-loop");
    let looping = connect_loop(&agent, target.addr, &stop);
    std::thread::sleep(Duration::from_millis(500));

    for i in 0..3 {
        let mut child = successor(&gw, i);
        // It has the sockets (and, soon, loads the programs): killed before it tells the old one
        // to stop accepting.
        gw.wait_for(
            Duration::from_secs(30),
            |e| e["event"] == "taking_over" && e["pid"] == child.id(),
            0,
        );
        let _ = child.kill();
        let _ = child.wait();
        std::thread::sleep(Duration::from_millis(500));
        assert!(!ended(gw.pid()), "the old gateway still runs");
    }
    assert_eq!(gw.count("handed_over"), 0, "no kill came after the go");

    // The old one still serves: and the next taker gets its sockets.
    let after_kills = gw.count("connection_open");
    std::thread::sleep(Duration::from_millis(500));
    assert!(gw.count("connection_open") > after_kills, "still accepting");
    successors.0.push(successor(&gw, 9));
    wait_event(
        &gw,
        Duration::from_secs(60),
        |e| e["event"] == "taken_over",
        0,
    );
    wait_event(&gw, Duration::from_secs(30), |e| e["event"] == "ready", 1);
    std::thread::sleep(Duration::from_millis(500));

    std::fs::write(&stop, "").unwrap();
    let counts = report(looping);
    eprintln!("three successors killed mid-handover, then one upgrade: {counts}");
    assert_eq!(counts["refused"], 0, "{counts}");
    assert_eq!(counts["direct"], 0, "{counts}");
    assert_eq!(counts["reset"], 0, "{counts}");
    assert_eq!(counts["other"], 0, "{counts}");
    assert!(counts["ok"].as_u64().unwrap_or(0) > 50, "{counts}");
}

#[test]
fn pins_of_another_map_layout_are_refused_with_the_uninstall_hint() {
    let HostSetup {
        token: _token,
        anchor: _anchor,
        name: _name,
        target,
        agent,
        mut gw,
    } = setup("upgradelayout", 20984, 20985);
    let r = probe(Some(&agent), None, target.addr);
    assert!(r.errno.is_none() && !r.went_direct(), "{r:?}");
    gw.kill9();
    let meta = gw.pin_dir.join("AG_META");
    assert_eq!(bpf::read_u32(&meta), 1, "this build's layout version");
    bpf::write_u32(&meta, 7);

    let out = Command::new(agentgate_bin())
        .arg("run")
        .arg("--policies")
        .arg(gw.policy_dir())
        .arg("--pin-dir")
        .arg(&gw.pin_dir)
        .arg("--admin-socket")
        .arg(gw.admin_socket())
        .arg("--record-db")
        .arg(gw.record_db())
        .args(["--metrics", "off"])
        .output()
        .expect("run agentgate");
    let text = pg::output_text(&out);
    assert!(!out.status.success(), "started on pins of layout 7: {text}");
    assert!(
        text.contains("map layout version 7") && text.contains("agentgate uninstall --pin-dir"),
        "{text}"
    );
    // Refused as a whole: the pins are as they were, and the agent stays contained.
    assert_eq!(bpf::read_u32(&meta), 7);
    let r = probe(Some(&agent), None, target.addr);
    assert_eq!(r.errno, Some(libc::ECONNREFUSED), "fail closed: {r:?}");
    assert_eq!(target.count(), 1, "nothing went direct");

    let out = gw.uninstall();
    assert!(out.status.success(), "{out:?}");
    gw.start_again();
    assert_eq!(bpf::read_u32(&meta), 1, "fresh pins of this layout");
    gw.wait_classified(&agent.rel);
    let r = probe(Some(&agent), None, target.addr);
    assert!(r.errno.is_none() && !r.went_direct(), "{r:?}");
}

/// Just enough of bpf(2) to read and write a pinned one-entry array of u32.
mod bpf {
    use std::{ffi::CString, os::unix::ffi::OsStrExt, path::Path};

    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_OBJ_GET: libc::c_long = 7;

    fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> libc::c_long {
        // SAFETY: `attr` is a zeroed bpf_attr-sized buffer filled for `cmd`.
        unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr.as_mut_ptr(),
                std::mem::size_of_val(attr),
            )
        }
    }

    fn open(path: &Path) -> i32 {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        let mut attr = [0u64; 16];
        attr[0] = c.as_ptr() as u64;
        let fd = bpf(BPF_OBJ_GET, &mut attr);
        assert!(
            fd >= 0,
            "BPF_OBJ_GET {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        fd as i32
    }

    fn elem(cmd: libc::c_long, path: &Path, value: &mut u32) {
        let fd = open(path);
        let key = 0u32;
        let mut attr = [0u64; 16];
        attr[0] = fd as u64;
        attr[1] = &key as *const u32 as u64;
        attr[2] = value as *mut u32 as u64;
        let rc = bpf(cmd, &mut attr);
        let err = std::io::Error::last_os_error();
        // SAFETY: our own fd.
        unsafe { libc::close(fd) };
        assert_eq!(rc, 0, "bpf({cmd}) on {}: {err}", path.display());
    }

    pub fn read_u32(path: &Path) -> u32 {
        let mut v = 0;
        elem(BPF_MAP_LOOKUP_ELEM, path, &mut v);
        v
    }

    pub fn write_u32(path: &Path, mut v: u32) {
        elem(BPF_MAP_UPDATE_ELEM, path, &mut v);
    }
}

/// One request to the HTTP admin API: the status line's code, or why there was none.
fn admin_http_status(addr: SocketAddr) -> Result<u16, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(b"GET /v1/approvals HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {answer:?}"))
}

/// The admin HTTP listener is handed over like the others: three upgrades while a client asks
/// the API without pause; every request is answered (401: no token), the successors run on.
/// Before, the successor failed to bind the port the old process held — after it had told the
/// old one to stop accepting — and exited: no gateway served at all.
#[test]
fn the_admin_http_api_is_handed_over_too() {
    let admin_addr: SocketAddr = "127.0.0.1:20988".parse().unwrap();
    let HostSetup {
        token: _token,
        anchor: _anchor,
        name: _name,
        target: _target,
        agent: _agent,
        gw,
    } = setup_with(
        "upgradeadmin",
        20989,
        20995,
        &["--admin-http", "127.0.0.1:20988"],
    );
    let mut successors = Successors::default();
    assert_eq!(admin_http_status(admin_addr), Ok(401));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Four clients without pause: a moment with no listener on the port would be seen.
    let asking: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut answered, mut failed) = (0u32, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match admin_http_status(admin_addr) {
                        Ok(401) => answered += 1,
                        other => failed.push(format!("{other:?}")),
                    }
                }
                (answered, failed)
            })
        })
        .collect();
    for i in 0..3 {
        let child = successor(&gw, i);
        let pid = child.id();
        successors.0.push(child);
        wait_event(
            &gw,
            Duration::from_secs(60),
            |e| e["event"] == "taken_over",
            i,
        );
        wait_event(
            &gw,
            Duration::from_secs(30),
            |e| e["event"] == "ready",
            i + 1,
        );
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !ended(pid),
            "successor {i} exited after taking over; its log:\n{}",
            std::fs::read_to_string(gw.dir.join(format!("successor-{i}.log"))).unwrap_or_default()
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut answered, mut failed) = (0, Vec::new());
    for t in asking {
        let (a, f) = t.join().expect("an asking thread");
        answered += a;
        failed.extend(f);
    }
    eprintln!("admin HTTP through 3 upgrades: {answered} answered, failed: {failed:?}");
    assert!(failed.is_empty(), "unanswered admin requests: {failed:?}");
    assert!(
        answered >= 20,
        "the client really asked throughout: {answered}"
    );
}

/// While the old process drains, the admin socket is the successor's: a revocation given there
/// reaches the old process's sessions through the record database and ends them (before, they
/// ran on until they ended by themselves or by `--drain-secs`).
#[test]
fn a_revocation_given_to_the_successor_ends_the_draining_sessions() {
    let HostSetup {
        token: _token,
        anchor: _anchor,
        name: _name,
        target,
        agent,
        gw,
    } = setup("upgraderev", 20996, 20997);
    let mut successors = Successors::default();
    let long: Vec<Child> = (0..2)
        .map(|_| long_session(&agent, target.addr, 25))
        .collect();
    wait_until(
        "the long sessions are relayed",
        Duration::from_secs(10),
        || gw.count("connection_open") >= 2,
    );
    successors.0.push(successor(&gw, 0));
    wait_event(
        &gw,
        Duration::from_secs(60),
        |e| e["event"] == "handed_over",
        0,
    );
    wait_event(&gw, Duration::from_secs(30), |e| e["event"] == "ready", 1);
    let revoked_at = Instant::now();
    let out = Command::new(agentgate_bin())
        .args([
            "revoke",
            "--identity",
            "agent-upgraderev",
            "--reason",
            "contractor left",
        ])
        .arg("--admin-socket")
        .arg(gw.admin_socket())
        .output()
        .expect("agentgate revoke");
    assert!(out.status.success(), "revoke: {}", pg::output_text(&out));
    let long: Vec<Value> = long.into_iter().map(report).collect();
    eprintln!(
        "revoked after the handover; long sessions: {long:?} ({:?} after the revoke)",
        revoked_at.elapsed()
    );
    for l in &long {
        assert_eq!(l["kind"], "ok", "relayed: {l}");
        assert!(
            !l["error"].is_null(),
            "the draining session was not ended: {l}"
        );
        assert!(
            l["ended"].as_f64().unwrap_or(0.0) - l["started"].as_f64().unwrap_or(0.0) < 20.0,
            "ended by the revocation, not by its own end: {l}"
        );
    }
    let closes: Vec<Value> = gw
        .events()
        .into_iter()
        .filter(|e| e["event"] == "connection_close")
        .collect();
    assert!(
        closes
            .iter()
            .filter(|e| e.to_string().contains("contractor left"))
            .count()
            >= 2,
        "the old process said why it ended them: {closes:?}"
    );
}
