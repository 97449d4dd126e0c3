//! Kubernetes pods as workloads, end to end: simulated kubelet cgroup layouts (both cgroup
//! drivers, the three QoS classes, containerd and CRI-O scope names) made in the real cgroup
//! tree under a unique test root, pods in their own network namespaces, the API server stand-in
//! serving the pods' metadata, the real gateway with real eBPF capture. Root required.
//!
//! Ports: gateways 20970–20974, targets (inside the pods' namespaces) 20975. The stand-ins
//! listen on any free loopback port.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use agentgate_tests::{kube::KubeStandin, *};
use serde_json::{json, Value};

const TARGET: &str = "127.0.0.2:20975";
const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn target() -> SocketAddr {
    TARGET.parse().unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Driver {
    Systemd,
    Cgroupfs,
}

#[derive(Clone, Copy, Debug)]
enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// The container cgroup the kubelet (and runtime) would make for pod `uid`, relative to the
/// test root; `crio` picks CRI-O's scope name over containerd's.
fn container_path(driver: Driver, qos: Qos, uid: &str, crio: bool) -> String {
    let q = match qos {
        Qos::Guaranteed => None,
        Qos::Burstable => Some("burstable"),
        Qos::BestEffort => Some("besteffort"),
    };
    match driver {
        Driver::Systemd => {
            let escaped = uid.replace('-', "_");
            let scope = if crio {
                format!("crio-{CID}.scope")
            } else {
                format!("cri-containerd-{CID}.scope")
            };
            match q {
                Some(q) => format!(
                    "kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{escaped}.slice/{scope}"
                ),
                None => format!("kubepods.slice/kubepods-pod{escaped}.slice/{scope}"),
            }
        }
        Driver::Cgroupfs => {
            let c = if crio {
                format!("crio-{CID}")
            } else {
                CID.to_string()
            };
            match q {
                Some(q) => format!("kubepods/{q}/pod{uid}/{c}"),
                None => format!("kubepods/pod{uid}/{c}"),
            }
        }
    }
}

/// A stand-in, the gateway's token file for it, and the node's name.
struct Api {
    k: KubeStandin,
    token: PathBuf,
    node: String,
}

impl Api {
    fn start(tag: &str) -> Self {
        let k = KubeStandin::start(Default::default()).expect("stand-in");
        let token = k.dir.join("gateway-token");
        std::fs::write(&token, &k.gateway_token).unwrap();
        Self {
            k,
            token,
            node: unique(tag),
        }
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--kube-api".into(),
            self.k.url.clone(),
            "--kube-token-file".into(),
            self.token.display().to_string(),
            "--kube-ca-file".into(),
            self.k.ca_path.display().to_string(),
            "--node-name".into(),
            self.node.clone(),
        ]
    }

    /// Creates a pod on this node; returns its UID (the stand-in assigns it, as the API
    /// server does).
    fn pod(&self, ns: &str, name: &str, sa: &str, labels: Value) -> String {
        let obj = json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": self.node, "serviceAccountName": sa,
                     "containers": [{"name": "main", "image": "agent:1"}]}
        });
        let created = self.k.create("", "pods", ns, obj).expect("create pod");
        created["metadata"]["uid"].as_str().unwrap().to_string()
    }

    fn relabel(&self, ns: &str, name: &str, labels: Value) {
        let mut obj = self.k.get("", "pods", ns, name).expect("pod");
        obj["metadata"]["labels"] = labels;
        obj["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("resourceVersion");
        self.k
            .update("", "pods", ns, name, obj)
            .expect("update pod");
    }
}

/// A policy whose one workload selects the pods of namespace `team-a` labelled `app=agent`,
/// below the test's kubelet roots.
fn pods_policy(listen_port: u16, root: &str, token: &TokenFile) -> String {
    format!(
        "version: 2\ngateway:\n  listen_port: {listen_port}\n\
         identity_providers:\n  - name: test-idp\n    issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n\
         \x20   jwks: {{from: file, path: {jwks}}}\n    algorithms: [RS256]\n\
         workloads:\n  - name: agents\n    pods: {{namespaces: [team-a], labels: {{app: agent}}}}\n\
         \x20   cgroup: \"/{root}/{{kubepods.slice,kubepods}}\"\n\
         \x20   token: {{from: file, path: {token}}}\n\
         targets:\n  - name: svc\n    protocol: tcp\n    addresses: [\"127.0.0.2\"]\n    ports: [20975]\n\
         rules:\n  - name: agents-to-svc\n    when: {{workloads: [agents], groups: [agents]}}\n    targets: [svc]\n",
        jwks = fixtures().join("test-jwks.json").display(),
        token = token.path.display(),
    )
}

/// A pod: its container cgroup, its own network namespace with the target service in it, and a
/// process holding both.
struct Pod {
    cgroup: Cgroup,
    ns: Netns,
    server: TargetServer,
    _holder: Holder,
}

impl Pod {
    fn start(root: &str, path: &str, tag: &str) -> Self {
        let cgroup = Cgroup::create(&format!("/{root}/{path}"));
        let ns = Netns::create(&unique(tag));
        let server = target_in(&ns, target());
        let holder = Holder::start(&cgroup, Some(&ns));
        Self {
            cgroup,
            ns,
            server,
            _holder: holder,
        }
    }

    fn probe(&self) -> ProbeResult {
        probe(Some(&self.cgroup), Some(&self.ns), target())
    }
}

/// A target server inside `ns`, bound by a thread that entered the namespace.
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

fn assert_through_gateway(gw: &Gateway, pod: &Pod, r: &ProbeResult) {
    assert!(r.errno.is_none(), "agent could not connect: {r:?}");
    assert!(r.greeting.starts_with("peer="), "no greeting: {r:?}");
    assert!(!r.went_direct(), "went around the gateway: {r:?}");
    let ev = gw.connection_of(r.pid);
    assert_eq!(s(&ev, "workload"), "agents", "{ev}");
    assert_eq!(s(&ev, "cgroup"), pod.cgroup.rel, "{ev}");
    assert!(s(&ev, "listener").starts_with("pod:"), "{ev}");
    gw.wait_for(
        Duration::from_secs(10),
        |e| e["event"] == "allowed" && e["pid"] == r.pid,
        0,
    );
}

fn wait_listener(gw: &Gateway, pod: &Pod) {
    gw.wait_for(
        Duration::from_secs(10),
        |e| e["event"] == "pod_listener" && e["cgroup"] == pod.cgroup.rel.as_str(),
        0,
    );
}

fn start_gateway(tag: &str, port: u16, root: &str, token: &TokenFile, api: &Api) -> Gateway {
    let args = api.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = Gateway::start_with_args(tag, &pods_policy(port, root, token), None, &args);
    gw.wait_for(Duration::from_secs(10), |e| e["event"] == "pods_listed", 0);
    gw
}

#[test]
fn pods_selected_by_label_are_captured_others_go_direct_unknown_refused() {
    require_root();
    let root = unique("pods");
    let _root = Cgroup::create(&format!("/{root}"));
    let api = Api::start("node-a");
    let token = TokenFile::valid("pods");
    let gw = start_gateway("pods", 20970, &root, &token, &api);
    let layouts = [
        (Driver::Systemd, Qos::Burstable, false),
        (Driver::Systemd, Qos::BestEffort, true),
        (Driver::Systemd, Qos::Guaranteed, false),
        (Driver::Systemd, Qos::Guaranteed, true),
        (Driver::Cgroupfs, Qos::Burstable, true),
        (Driver::Cgroupfs, Qos::BestEffort, false),
        (Driver::Cgroupfs, Qos::Guaranteed, false),
    ];
    for (i, (driver, qos, crio)) in layouts.into_iter().enumerate() {
        let uid = api.pod(
            "team-a",
            &format!("agent-{i}"),
            "runner",
            json!({"app": "agent"}),
        );
        let pod = Pod::start(
            &root,
            &container_path(driver, qos, &uid, crio),
            &format!("p{i}"),
        );
        wait_listener(&gw, &pod);
        let r = pod.probe();
        assert_through_gateway(&gw, &pod, &r);
        assert_eq!(pod.server.count(), 1, "{driver:?} {qos:?} crio={crio}");
    }

    // Same namespace, another label; and the right label in another namespace: not selected,
    // so not workloads: they go direct.
    for (i, (ns, labels)) in [
        ("team-a", json!({"app": "web"})),
        ("default", json!({"app": "agent"})),
    ]
    .into_iter()
    .enumerate()
    {
        let uid = api.pod(ns, &format!("other-{i}"), "default", labels);
        let pod = Pod::start(
            &root,
            &container_path(Driver::Systemd, Qos::Burstable, &uid, false),
            &format!("o{i}"),
        );
        gw.wait_for(
            Duration::from_secs(10),
            |e| e["event"] == "cgroup" && e["cgroup"] == pod.cgroup.rel.as_str(),
            0,
        );
        let r = pod.probe();
        assert!(r.went_direct(), "an unselected pod goes direct: {r:?}");
        assert_eq!(pod.server.count(), 1);
    }

    // A pod the API server does not know (no such UID): refused by the kernel, never direct.
    let stranger = "0badc0de-0000-4000-8000-000000000001";
    let pod = Pod::start(
        &root,
        &container_path(Driver::Cgroupfs, Qos::Burstable, stranger, false),
        "unknown",
    );
    let ev = gw.wait_for(
        Duration::from_secs(10),
        |e| e["event"] == "cgroup_refused" && e["cgroup"] == pod.cgroup.rel.as_str(),
        0,
    );
    assert!(
        s(&ev, "reason").contains("unknown to the API server"),
        "{ev}"
    );
    let r = pod.probe();
    assert!(r.errno.is_some(), "an unknown pod must be refused: {r:?}");
    assert_eq!(pod.server.count(), 0);

    // A path below the root that is not the kubelet's: refused, not guessed about.
    let odd = Pod::start(
        &root,
        "kubepods.slice/kubepods-besteffort.slice/not-a-pod",
        "odd",
    );
    gw.wait_for(
        Duration::from_secs(10),
        |e| e["event"] == "cgroup_refused" && e["cgroup"] == odd.cgroup.rel.as_str(),
        0,
    );
    let r = odd.probe();
    assert!(r.errno.is_some(), "{r:?}");
    assert_eq!(odd.server.count(), 0);

    // The gateway asked for this node's pods only (a list, then a watch), with its own
    // credential.
    let deadline = Instant::now() + Duration::from_secs(10);
    let asked = loop {
        let asked: Vec<_> = api
            .k
            .log
            .entries()
            .into_iter()
            .filter(|e| e.path == "/api/v1/pods")
            .collect();
        if asked.iter().any(|e| e.query.contains("watch=1")) || Instant::now() > deadline {
            break asked;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        asked.iter().any(|e| e.query.contains("watch=1")),
        "no watch: {asked:?}"
    );
    for e in &asked {
        assert!(
            e.query
                .contains(&format!("fieldSelector=spec.nodeName%3D{}", api.node)),
            "{e:?}"
        );
        assert_eq!(
            e.token_fingerprint.as_deref(),
            Some(kube::token_fingerprint(&api.k.gateway_token).as_str())
        );
    }
}

#[test]
fn a_label_change_applied_live_changes_capture() {
    require_root();
    let root = unique("relabel");
    let _root = Cgroup::create(&format!("/{root}"));
    let api = Api::start("node-b");
    let token = TokenFile::valid("relabel");
    let gw = start_gateway("relabel", 20971, &root, &token, &api);
    let uid = api.pod("team-a", "agent-0", "runner", json!({"app": "agent"}));
    let pod = Pod::start(
        &root,
        &container_path(Driver::Systemd, Qos::Burstable, &uid, false),
        "rl",
    );
    wait_listener(&gw, &pod);
    let r = pod.probe();
    assert_through_gateway(&gw, &pod, &r);

    // Unselected by a label change: the watch brings it, the cgroup is unmanaged, the pod's
    // listener closes, and its connections go direct.
    let managed_events = |workload: Value| {
        let rel = pod.cgroup.rel.clone();
        move |e: &Value| {
            e["event"] == "cgroup" && e["cgroup"] == rel.as_str() && e["workload"] == workload
        }
    };
    // A session open through the gateway when that happens is ended: its pod is no longer the
    // workload it was granted as.
    let mut held = Command::new(probe_bin());
    held.args(["hold", TARGET, "30"]).stdout(Stdio::piped());
    place(&mut held, Some(&pod.cgroup), Some(&pod.ns));
    let held = held.spawn().expect("agent-probe hold");
    let held_pid = held.id();
    gw.wait_for(
        Duration::from_secs(10),
        |e| e["event"] == "allowed" && e["pid"] == held_pid,
        0,
    );
    let relabelled = Instant::now();
    api.relabel("team-a", "agent-0", json!({"app": "web"}));
    let closed = gw.wait_for(
        Duration::from_secs(10),
        |e| e["event"] == "connection_close" && e["pid"] == held_pid,
        0,
    );
    assert!(
        s(&closed, "ended_by").contains("no longer workload `agents`"),
        "{closed}"
    );
    held.wait_with_output().expect("hold ends");
    assert!(relabelled.elapsed() < Duration::from_secs(10));
    gw.wait_for(Duration::from_secs(10), managed_events(Value::Null), 0);
    gw.wait_for(
        Duration::from_secs(10),
        |e| e["event"] == "pod_listener_closed",
        0,
    );
    let r = pod.probe();
    assert!(r.went_direct(), "{r:?}");

    // Selected again.
    api.relabel("team-a", "agent-0", json!({"app": "agent", "tier": "x"}));
    gw.wait_for(Duration::from_secs(10), managed_events(json!("agents")), 1);
    wait_listener_nth(&gw, &pod, 1);
    let r = pod.probe();
    assert_through_gateway(&gw, &pod, &r);
    assert_eq!(pod.server.count(), 4);

    // Deleted from the API server while its cgroup is still there: unknown, so refused. (It may
    // have been refused once already, at the start, had its cgroup come before the watch
    // brought the pod.)
    let refused =
        |e: &Value| e["event"] == "cgroup_refused" && e["cgroup"] == pod.cgroup.rel.as_str();
    let before = gw.events().iter().filter(|e| refused(e)).count();
    api.k.delete("", "pods", "team-a", "agent-0").unwrap();
    gw.wait_for(Duration::from_secs(10), refused, before);
    let r = pod.probe();
    assert!(r.errno.is_some(), "{r:?}");
    assert_eq!(pod.server.count(), 4);
}

fn wait_listener_nth(gw: &Gateway, pod: &Pod, nth: usize) {
    gw.wait_for(
        Duration::from_secs(10),
        |e| e["event"] == "pod_listener" && e["cgroup"] == pod.cgroup.rel.as_str(),
        nth,
    );
}

#[test]
fn pods_are_refused_while_the_api_server_cannot_be_reached() {
    require_root();
    let root = unique("noapi");
    let _root = Cgroup::create(&format!("/{root}"));
    let token = TokenFile::valid("noapi");
    // A stand-in that is stopped at once: its address answers nothing.
    let api = Api::start("node-c");
    let mut args = api.args();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    args[1] = format!("https://{dead}");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = Gateway::start_with_args("noapi", &pods_policy(20972, &root, &token), None, &args);
    gw.wait_for(
        Duration::from_secs(10),
        |e| e["event"] == "pod_watch_error",
        0,
    );
    let uid = api.pod("team-a", "agent-0", "runner", json!({"app": "agent"}));
    let pod = Pod::start(
        &root,
        &container_path(Driver::Cgroupfs, Qos::BestEffort, &uid, false),
        "na",
    );
    let ev = gw.wait_for(
        Duration::from_secs(10),
        |e| e["event"] == "cgroup_refused" && e["cgroup"] == pod.cgroup.rel.as_str(),
        0,
    );
    assert!(s(&ev, "reason").contains("not been read"), "{ev}");
    let r = pod.probe();
    assert!(r.errno.is_some(), "refused, never let through: {r:?}");
    assert_eq!(pod.server.count(), 0);
}

/// A pod as the cycle test makes them: a holder that made its own network namespace (as a
/// pod's sandbox does) and brought its loopback up.
fn pod_process(cgroup: &Cgroup) -> Child {
    let mut cmd = Command::new("unshare");
    cmd.args(["-n", "sh", "-c", "ip link set lo up && exec sleep 600"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    place(&mut cmd, Some(cgroup), None);
    cmd.spawn().expect("spawn pod process")
}

fn fds(pid: u32) -> (usize, usize, usize) {
    let (mut all, mut sockets, mut netns) = (0, 0, 0);
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        all += 1;
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        let link = link.to_string_lossy().to_string();
        sockets += usize::from(link.starts_with("socket:"));
        netns += usize::from(link.starts_with("net:"));
    }
    (all, sockets, netns)
}

#[test]
fn a_thousand_pod_cycles_leave_nothing_behind() {
    require_root();
    let root = unique("cycles");
    let _root = Cgroup::create(&format!("/{root}"));
    let api = Api::start("node-d");
    let token = TokenFile::valid("cycles");
    let gw = start_gateway("cycles", 20973, &root, &token, &api);
    const BATCH: usize = 10;
    let mut made = 0;
    let mut baseline = None;
    let started = Instant::now();
    // The first batch warms up (threads, buffers); the baseline is taken after it.
    for batch in 0..(1000 / BATCH + 1) {
        let mut pods = Vec::new();
        for _ in 0..BATCH {
            let name = format!("c-{made}");
            let uid = api.pod("team-a", &name, "runner", json!({"app": "agent"}));
            let driver = if made % 2 == 0 {
                Driver::Systemd
            } else {
                Driver::Cgroupfs
            };
            let qos = [Qos::Burstable, Qos::BestEffort, Qos::Guaranteed][made % 3];
            let path = container_path(driver, qos, &uid, made % 4 == 1);
            // The pod's own cgroup is the guard: dropping it removes the container's too, as
            // the kubelet does when a pod goes.
            let (pod_dir, _) = path.rsplit_once('/').unwrap();
            let pod_cg = Cgroup::create(&format!("/{root}/{pod_dir}"));
            let cg = Cgroup::adopt(&format!("/{root}/{path}"));
            std::fs::create_dir_all(&cg.abs).unwrap();
            let child = pod_process(&cg);
            pods.push((name, cg, pod_cg, child));
            made += 1;
        }
        for (_, cg, _, _) in &pods {
            gw.wait_for(
                Duration::from_secs(20),
                |e| e["event"] == "pod_listener" && e["cgroup"] == cg.rel.as_str(),
                0,
            );
        }
        // The count sees what live pods hold: one reference to each pod's namespace.
        assert_eq!(fds(gw.pid()).2, BATCH, "one netns reference per live pod");
        for (name, cg, pod_cg, mut child) in pods {
            let _ = child.kill();
            let _ = child.wait();
            drop(cg);
            drop(pod_cg);
            api.k.delete("", "pods", "team-a", &name).unwrap();
        }
        let opened = gw.count("pod_listener");
        wait_until(Duration::from_secs(20), || {
            gw.count("pod_listener_closed") == opened
        });
        if batch == 0 {
            // Settled: no pod left, every listener closed.
            std::thread::sleep(Duration::from_millis(500));
            baseline = Some(fds(gw.pid()));
        }
    }
    assert_eq!(made, 1000 + BATCH);
    assert_eq!(gw.count("pod_listener"), made, "one listener per pod");
    assert_eq!(gw.count("pod_listener_closed"), made, "every one closed");
    std::thread::sleep(Duration::from_millis(500));
    let (all0, sockets0, netns0) = baseline.unwrap();
    let (all, sockets, netns) = fds(gw.pid());
    eprintln!(
        "{made} pods in {:?}; fds {all0} -> {all}, sockets {sockets0} -> {sockets}, netns {netns0} -> {netns}",
        started.elapsed()
    );
    assert_eq!(netns, netns0, "network namespace references left behind");
    // The watch's connection to the API server may be between two watches: one either way.
    assert!(
        sockets <= sockets0 + 1,
        "sockets left behind: {sockets0} -> {sockets}"
    );
    assert!(all <= all0 + 1, "descriptors left behind: {all0} -> {all}");
}

fn wait_until(timeout: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// containerd gives every container its own cgroup namespace, the gateway's too: run it under
/// `unshare -C` from a cgroup of its own, so `/proc/<pid>/cgroup` of a pod's process reads
/// `/../…` to it. Left there (its "node namespace" being its own), the token file read is
/// refused: the read checks the process is still in the workload's cgroup, and the path does not
/// match. Entering the node's namespace at start, it serves the pod.
#[test]
fn a_gateway_in_its_own_cgroup_namespace_still_serves_pods() {
    require_root();
    let root = unique("cgns");
    let _root = Cgroup::create(&format!("/{root}"));
    let home = Cgroup::create(&format!("/{}-gw", unique("cgns")));
    let api = Api::start("node-e");
    let token = TokenFile::valid("cgns");
    let uid = api.pod("team-a", "agent-0", "runner", json!({"app": "agent"}));
    let pod = Pod::start(
        &root,
        &container_path(Driver::Systemd, Qos::Guaranteed, &uid, true),
        "cg",
    );
    let command = vec![
        "unshare".to_string(),
        "-C".to_string(),
        "--".to_string(),
        agentgate_bin().display().to_string(),
    ];
    // The node's namespace is pid 1's on a node (hostPID); here pid 1 is a sandbox's init that
    // root may not open, and the test process is in the node's namespace.
    let node_ns = format!("/proc/{}/ns/cgroup", std::process::id());
    for (tag, node_ns) in [
        ("cgns-own", "/proc/thread-self/ns/cgroup"),
        ("cgns", node_ns.as_str()),
    ] {
        let mut args = api.args();
        args.extend(["--node-cgroupns".to_string(), node_ns.to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let gw = Gateway::start_as(
            tag,
            &pods_policy(20974, &root, &token),
            Some(&home),
            &command,
            &args,
        );
        gw.wait_for(Duration::from_secs(10), |e| e["event"] == "pods_listed", 0);
        wait_listener(&gw, &pod);
        let own = std::fs::read_link(format!("/proc/{}/ns/cgroup", gw.pid())).unwrap();
        let node = std::fs::read_link("/proc/self/ns/cgroup").unwrap();
        let r = pod.probe();
        if tag == "cgns-own" {
            assert_ne!(
                own, node,
                "unshare -C gave the gateway its own cgroup namespace"
            );
            let ev = gw.wait_for(
                Duration::from_secs(10),
                |e| e["event"] == "refused" && e["pid"] == r.pid,
                0,
            );
            assert!(s(&ev, "reason").contains("left cgroup"), "{ev}");
            assert_eq!(pod.server.count(), 0);
        } else {
            assert_eq!(own, node, "the gateway entered the node's cgroup namespace");
            assert_through_gateway(&gw, &pod, &r);
            assert_eq!(pod.server.count(), 1);
        }
    }
}
