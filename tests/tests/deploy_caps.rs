//! The DaemonSet's capability list, proven. deploy/daemonset.yaml runs the gateway unprivileged
//! with `capabilities: {drop: [ALL], add: [...]}`; these tests read that list from the manifest
//! and run the real gateway under `setpriv` with exactly it (the bounding set: a root process
//! then holds those capabilities and no others, as in the container):
//!
//! - with the list: host-mode TCP, pod-mode TCP (a listener in the pod's network namespace, the
//!   token read from the pod's root as the pod's uid) and a PostgreSQL session all work, the
//!   health endpoints the probes use answer, and a token the agent itself cannot read is still
//!   refused;
//! - without each entry: the gateway fails, with an error that names what it could not do.
//!
//! Ports 20950–20955 (this helper's range is 20950–20959; deploy_image.rs uses 20956–20959).

use std::{
    io::{Read, Write},
    net::SocketAddr,
    os::unix::fs::{chown, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agentgate_tests::{pg::*, *};

const FULL_LISTEN: u16 = 20950;
const FULL_TARGET: u16 = 20951;
const FULL_PG: u16 = 20952;
const FULL_METRICS: u16 = 20953;
const DROP_LISTEN: u16 = 20954;
const DROP_TARGET: u16 = 20955;
/// The agents' user: `nobody`, neither root nor the gateway's uid.
const AGENT_UID: u32 = 65534;

/// `capabilities.add` of the gateway container in deploy/daemonset.yaml, in order.
fn manifest_caps() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml");
    let text = std::fs::read_to_string(&path).expect("read deploy/daemonset.yaml");
    let mut lines = text.lines().skip_while(|l| l.trim() != "capabilities:");
    lines.next().expect("a capabilities: block");
    let mut lines = lines.skip_while(|l| l.trim() != "add:");
    lines.next().expect("capabilities.add");
    let caps: Vec<String> = lines
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .map_while(|l| l.strip_prefix("- "))
        .map(|c| c.trim().to_string())
        .collect();
    assert!(
        !caps.is_empty(),
        "no capabilities.add in {}",
        path.display()
    );
    caps
}

/// The bit of a capability in /proc/<pid>/status (include/uapi/linux/capability.h).
fn cap_bit(name: &str) -> u32 {
    const BITS: &[(&str, u32)] = &[
        ("CHOWN", 0),
        ("DAC_OVERRIDE", 1),
        ("DAC_READ_SEARCH", 2),
        ("FOWNER", 3),
        ("KILL", 5),
        ("SETGID", 6),
        ("SETUID", 7),
        ("NET_BIND_SERVICE", 10),
        ("NET_ADMIN", 12),
        ("NET_RAW", 13),
        ("SYS_CHROOT", 18),
        ("SYS_PTRACE", 19),
        ("SYS_ADMIN", 21),
        ("SYS_RESOURCE", 24),
        ("PERFMON", 38),
        ("BPF", 39),
    ];
    BITS.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, b)| *b)
        .unwrap_or_else(|| panic!("capability {name}: add its bit to cap_bit"))
}

/// `setpriv` leaving exactly `caps` in the bounding set (and none inheritable or ambient), then
/// the agentgate binary: a root process exec'd so holds exactly these.
fn with_caps(caps: &[String]) -> Vec<String> {
    let mut set = String::from("-all");
    for c in caps {
        set.push_str(",+");
        set.push_str(&c.to_lowercase());
    }
    vec![
        "setpriv".into(),
        "--inh-caps=-all".into(),
        "--ambient-caps=-all".into(),
        "--bounding-set".into(),
        set,
        "--".into(),
        agentgate_bin().display().to_string(),
    ]
}

/// The effective capability mask of `pid`.
fn cap_eff(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("CapEff")
}

/// A token file for the agents' user: theirs, mode 0600 (root without CAP_DAC_OVERRIDE, as the
/// gateway is, cannot read it as itself).
fn agent_token(tag: &str) -> TokenFile {
    let t = TokenFile::valid(tag);
    chown(&t.path, Some(AGENT_UID), Some(AGENT_UID)).expect("chown token");
    std::fs::set_permissions(&t.path, std::fs::Permissions::from_mode(0o600)).unwrap();
    t
}

/// A valid token the agents' user may not read: root's, mode 0640 (group root). Read as root,
/// or with root's group, it would let the agent in.
fn locked_token(tag: &str) -> TokenFile {
    let t = TokenFile::valid(tag);
    std::fs::set_permissions(&t.path, std::fs::Permissions::from_mode(0o640)).unwrap();
    t
}

/// The cgroups, tokens, pod and targets of one run: host-mode agents (`job-*`), host-mode agents
/// whose token they cannot read (`locked-*`), a pod (`pod-*`, its own network namespace and
/// target), and optionally PostgreSQL agents (`sql-*`, the JWT as password). Fields drop in
/// declaration order after the gateway (declared last by the callers).
struct Scene {
    name: String,
    job: Cgroup,
    locked: Cgroup,
    pod: Cgroup,
    sql: Cgroup,
    holder: Option<Holder>,
    target: TargetServer,
    pod_target: TargetServer,
    ns: Netns,
    host_token: TokenFile,
    locked_token: TokenFile,
    pod_token: TokenFile,
    _anchor: Cgroup,
}

impl Scene {
    fn new(tag: &str, target_port: u16) -> Self {
        require_root();
        let name = unique(tag);
        // The anchor exists before the gateway starts, as kubepods.slice does on a node: the
        // cgroup v2 root here is mode 0555, and creating a directory in it would take
        // CAP_DAC_OVERRIDE, which the DaemonSet does not grant.
        let anchor = Cgroup::create(&format!("/{name}"));
        let ns = Netns::create(&name);
        let target: SocketAddr = format!("127.0.0.2:{target_port}").parse().unwrap();
        Scene {
            job: Cgroup::create(&format!("/{name}/job-1")),
            locked: Cgroup::create(&format!("/{name}/locked-1")),
            pod: Cgroup::create(&format!("/{name}/pod-1")),
            sql: Cgroup::create(&format!("/{name}/sql-1")),
            holder: None,
            target: TargetServer::start(target),
            pod_target: target_in(&ns, target),
            ns,
            host_token: agent_token(&format!("{tag}-host")),
            locked_token: locked_token(&format!("{tag}-locked")),
            pod_token: agent_token(&format!("{tag}-pod")),
            _anchor: anchor,
            name,
        }
    }

    /// The policy: target `svc` for every workload; with `pg` (port, secret file) also target
    /// `pg` for `sql-agents`, DDL denied.
    fn policy(&self, listen: u16, pg: Option<(u16, &Path)>) -> String {
        let port = self.target.addr.port();
        let mut workloads = format!(
            "  - name: host-agents\n    cgroup: \"/{n}/job-*\"\n    mode: host\n    token: {{from: file, path: {h}}}\n\
             \x20 - name: locked-agents\n    cgroup: \"/{n}/locked-*\"\n    mode: host\n    token: {{from: file, path: {l}}}\n\
             \x20 - name: pod-agents\n    cgroup: \"/{n}/pod-*\"\n    mode: pod\n    token: {{from: file, path: {p}}}\n",
            n = self.name,
            h = self.host_token.path.display(),
            l = self.locked_token.path.display(),
            p = self.pod_token.path.display(),
        );
        let mut targets = format!(
            "  - name: svc\n    protocol: tcp\n    addresses: [\"127.0.0.2\"]\n    ports: [{port}]\n"
        );
        let mut rules =
            "  - name: agents-to-svc\n    when: {groups: [agents]}\n    targets: [svc]\n"
                .to_string();
        if let Some((pg_port, secret)) = pg {
            workloads.push_str(&format!(
                "  - name: sql-agents\n    cgroup: \"/{}/sql-*\"\n    mode: host\n    token: {{from: credential}}\n",
                self.name
            ));
            targets.push_str(&format!(
                "  - name: pg\n    protocol: postgres\n    addresses: [\"127.0.0.1\"]\n    ports: [{pg_port}]\n\
                 \x20   credential: {{from: file, path: {}}}\n    postgres:\n      user: {ROLE_SCRAM}\n      upstream_tls: {{mode: disable}}\n",
                secret.display()
            ));
            rules.push_str(
                "  - name: agents-to-pg\n    when: {groups: [agents]}\n    targets: [pg]\n",
            );
            rules.push_str(NO_DDL_RULE);
        }
        format!(
            "version: 2\ngateway:\n  listen_port: {listen}\n\
             identity_providers:\n  - name: test-idp\n    issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n\
             \x20   jwks: {{from: file, path: {jwks}}}\n    algorithms: [RS256]\n\
             workloads:\n{workloads}targets:\n{targets}rules:\n{rules}",
            jwks = fixtures().join("test-jwks.json").display(),
        )
    }

    /// Puts a process in the pod (its network namespace and cgroup), as a pod's first container
    /// process appears.
    fn start_pod(&mut self) {
        self.holder = Some(Holder::start(&self.pod, Some(&self.ns)));
    }
}

/// A target server inside `ns` (a pod's own service on its loopback).
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

/// The agent reached the target through the gateway.
fn assert_relayed(gw: &Gateway, r: &ProbeResult, workload: &str) {
    assert!(
        r.errno.is_none() && r.greeting.starts_with("peer="),
        "{workload}: the agent did not get through: {r:?}\n{}",
        gw.log_tail()
    );
    assert!(
        !r.went_direct(),
        "{workload}: went around the gateway: {r:?}"
    );
    let ev = gw.connection_of(r.pid);
    assert_eq!(s(&ev, "workload"), workload, "{ev}");
}

/// The agent got nothing: no greeting, and not a direct connection either.
fn assert_refused(r: &ProbeResult, what: &str) {
    assert!(
        !r.greeting.starts_with("peer="),
        "{what}: the agent got through: {r:?}"
    );
    assert!(!r.went_direct(), "{what}: went around the gateway: {r:?}");
}

/// The `refused` event of the connection of `pid`.
fn refusal_of(gw: &Gateway, pid: u32) -> serde_json::Value {
    gw.wait_for(
        Duration::from_secs(10),
        |e| e["event"] == "refused" && e["pid"] == pid,
        0,
    )
}

/// `GET path` on 127.0.0.1:`port`: (status code, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect metrics");
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = conn.read_to_string(&mut text);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (code, body.to_string())
}

/// The probes of deploy/daemonset.yaml: `path` and `port` of each httpGet.
fn manifest_probe_paths() -> Vec<(String, u16)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml");
    let text = std::fs::read_to_string(path).expect("read deploy/daemonset.yaml");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("httpGet: {"))
        .map(|l| {
            let field = |k: &str| {
                l.split(',')
                    .find_map(|p| p.trim().trim_end_matches('}').strip_prefix(k))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_else(|| panic!("httpGet without {k}: {l}"))
            };
            (
                field("path:"),
                field("port:").parse().expect("probe port number"),
            )
        })
        .collect()
}

#[test]
fn the_manifest_list_serves_tcp_pods_and_postgres() {
    let caps = manifest_caps();
    let mut scene = Scene::new("caps-full", FULL_TARGET);
    let pg = PgServer::start("caps-full", FULL_PG, PgOptions::default());
    pg.create_db("agentdb");
    pg.sql_in(
        "agentdb",
        "CREATE TABLE items (id int PRIMARY KEY, name text);",
    );
    pg.sql_in(
        "agentdb",
        "INSERT INTO items VALUES (1, 'one'), (2, 'two');",
    );
    let secret = std::env::temp_dir().join(format!("{}-pg-secret", scene.name));
    std::fs::write(&secret, format!("{ROLE_PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let metrics = format!("127.0.0.1:{FULL_METRICS}");
    let gw = Gateway::start_as(
        "caps-full",
        &scene.policy(FULL_LISTEN, Some((FULL_PG, &secret))),
        None,
        &with_caps(&caps),
        &["--metrics", &metrics],
    );

    // The gateway holds exactly the listed capabilities: not more (the test would prove
    // nothing), not fewer.
    let want = caps.iter().fold(0u64, |m, c| m | 1 << cap_bit(c));
    assert_eq!(
        cap_eff(gw.pid()),
        want,
        "the gateway's effective capabilities are not exactly {caps:?}"
    );

    // The probes of the manifest answer (on the test's metrics port: the default 9464 is the
    // manifest's, which tests/tests/deploy_manifests.rs checks against the binary's default).
    let paths = manifest_probe_paths();
    assert!(
        paths.iter().any(|(p, _)| p == "/readyz") && paths.iter().any(|(p, _)| p == "/healthz"),
        "{paths:?}"
    );
    for (path, _) in &paths {
        let mut last = (0, String::new());
        let ok = wait_ok(Duration::from_secs(10), || {
            last = http_get(FULL_METRICS, path);
            last.0 == 200
        });
        assert!(ok, "{path} with the manifest's capabilities: {last:?}");
    }

    // Host mode: capture, the token read as the agent (uid 65534), the relay.
    gw.wait_classified(&scene.job.rel);
    let r = probe_as(Some(AGENT_UID), Some(&scene.job), None, scene.target.addr);
    assert_relayed(&gw, &r, "host-agents");
    assert_eq!(scene.target.count(), 1);

    // A token file the agent may not read stays unread: the gateway reads as the agent.
    gw.wait_classified(&scene.locked.rel);
    let r = probe_as(
        Some(AGENT_UID),
        Some(&scene.locked),
        None,
        scene.target.addr,
    );
    assert_refused(&r, "a token the agent cannot read");
    let ev = refusal_of(&gw, r.pid);
    assert!(
        s(&ev, "reason").contains("not readable by the workload"),
        "{ev}"
    );
    assert_eq!(scene.target.count(), 1);

    // Pod mode: the listener opened in the pod's namespace (setns), the token read through
    // /proc/<pid>/root of a process of another uid, the target dialled in the pod.
    scene.start_pod();
    gw.wait_for(
        Duration::from_secs(15),
        |e| e["event"] == "pod_listener" && e["cgroup"] == scene.pod.rel.as_str(),
        0,
    );
    let r = probe_as(
        Some(AGENT_UID),
        Some(&scene.pod),
        Some(&scene.ns),
        scene.pod_target.addr,
    );
    assert_relayed(&gw, &r, "pod-agents");
    assert!(
        s(&gw.connection_of(r.pid), "listener").starts_with("pod:"),
        "accepted by the pod's listener"
    );
    assert_eq!(scene.pod_target.count(), 1);

    // A PostgreSQL session: JWT login, the gateway's own SCRAM login upstream, statements
    // classified and judged.
    gw.wait_classified(&scene.sql.rel);
    let conninfo = conninfo(
        "127.0.0.1",
        FULL_PG,
        "agent",
        &agent_jwt("caps-sql"),
        "agentdb",
        "disable",
    );
    let mut cmd = psql_command(&conninfo);
    cmd.args([
        "-v",
        "VERBOSITY=verbose",
        "-tAc",
        "SELECT string_agg(name, ',' ORDER BY id) FROM items",
    ]);
    place(&mut cmd, Some(&scene.sql), None);
    let out = cmd.output().expect("psql");
    assert!(out.status.success(), "psql SELECT: {}", output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "one,two");
    let mut cmd = psql_command(&conninfo);
    cmd.args(["-v", "VERBOSITY=verbose", "-tAc", "DROP TABLE items"]);
    place(&mut cmd, Some(&scene.sql), None);
    let out = cmd.output().expect("psql");
    assert!(
        !out.status.success() && output_text(&out).contains("42501"),
        "DDL must be denied by the rule: {}",
        output_text(&out)
    );
    assert_eq!(
        pg.sql_in("agentdb", "SELECT count(*) FROM items;").trim(),
        "2"
    );
    let _ = std::fs::remove_file(&secret);
    drop(gw);
}

/// Polls `f` every 100 ms until it holds or `timeout` passes.
fn wait_ok(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `agentgate run` with `caps` until it exits (at most 60 s): its status and log.
fn run_to_exit(caps: &[String], dir: &Path, policy: &str) -> (Option<i32>, String) {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(dir.join("policies/policy.yaml"), policy).unwrap();
    let pin_dir = PathBuf::from("/sys/fs/bpf").join(dir.file_name().unwrap());
    let cmd_line = with_caps(caps);
    let mut child = Command::new(&cmd_line[0])
        .args(&cmd_line[1..])
        .arg("run")
        .arg("--policies")
        .arg(dir.join("policies"))
        .arg("--pin-dir")
        .arg(&pin_dir)
        .arg("--events")
        .arg(dir.join("events.jsonl"))
        .arg("--admin-socket")
        .arg(dir.join("admin.sock"))
        .arg("--record-db")
        .arg(dir.join("record.db"))
        .args(["--metrics", "off"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("gateway.log")).unwrap())
        .spawn()
        .expect("spawn agentgate");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = Command::new(agentgate_bin())
        .arg("uninstall")
        .arg("--pin-dir")
        .arg(&pin_dir)
        .output();
    let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default();
    (status, log)
}

#[test]
fn each_listed_capability_is_needed() {
    let caps = manifest_caps();
    let without = |cap: &str| -> Vec<String> {
        assert!(
            caps.iter().any(|c| c == cap),
            "{cap} is no longer in the manifest's list {caps:?}: update this test"
        );
        caps.iter().filter(|c| *c != cap).cloned().collect()
    };
    // Every listed capability has its case below: a new one needs its own proof.
    for cap in &caps {
        assert!(
            ["SYS_ADMIN", "SYS_PTRACE", "SETUID", "SETGID"].contains(&cap.as_str()),
            "{cap} is listed but this test does not show what fails without it"
        );
    }

    // CAP_SYS_ADMIN: no bpf() at all (nor setns). The gateway exits and says which call.
    {
        let scene = Scene::new("caps-nosysadmin", DROP_TARGET);
        let dir = std::env::temp_dir().join(unique("caps-nosysadmin"));
        let (status, log) = run_to_exit(
            &without("SYS_ADMIN"),
            &dir,
            &scene.policy(DROP_LISTEN, None),
        );
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            matches!(status, Some(c) if c != 0),
            "without CAP_SYS_ADMIN the gateway must exit with an error, got {status:?}:\n{log}"
        );
        // With no capability that passes bpf()'s checks, the first call (a map's creation) is
        // refused; with CAP_BPF alone the next one (BPF_PROG_LOAD) would be.
        assert!(
            log.contains("loading the eBPF object failed")
                && log.contains("failed to create map")
                && log.contains("Operation not permitted"),
            "the error names the bpf() call refused:\n{log}"
        );
    }

    // CAP_SETUID, CAP_SETGID: the gateway cannot take the agent's ids to read its token. The
    // token here is root's (mode 0640): read with root's uid (no CAP_SETUID) or root's group
    // (no CAP_SETGID) it would let the agent in, though the agent cannot read it itself.
    for cap in ["SETUID", "SETGID"] {
        let tag = format!("caps-no{}", cap.to_lowercase());
        let scene = Scene::new(&tag, DROP_TARGET);
        let gw = Gateway::start_as(
            &tag,
            &scene.policy(DROP_LISTEN, None),
            None,
            &with_caps(&without(cap)),
            &[],
        );
        gw.wait_classified(&scene.locked.rel);
        let r = probe_as(
            Some(AGENT_UID),
            Some(&scene.locked),
            None,
            scene.target.addr,
        );
        assert_refused(
            &r,
            &format!("a token the agent cannot read, without CAP_{cap}"),
        );
        let ev = refusal_of(&gw, r.pid);
        assert!(
            s(&ev, "reason").contains("lacks CAP_SETUID or CAP_SETGID"),
            "without CAP_{cap} the refusal says why: {ev}"
        );
        assert_eq!(scene.target.count(), 0);
        drop(gw);
    }

    // CAP_SYS_PTRACE: /proc/<pid>/ns/net and /proc/<pid>/root of the agents' processes (another
    // uid, more capabilities) cannot be opened: no pod listener, no token read. Refused, never
    // direct.
    {
        let mut scene = Scene::new("caps-noptrace", DROP_TARGET);
        let gw = Gateway::start_as(
            "caps-noptrace",
            &scene.policy(DROP_LISTEN, None),
            None,
            &with_caps(&without("SYS_PTRACE")),
            &[],
        );
        gw.wait_classified(&scene.job.rel);
        let r = probe_as(Some(AGENT_UID), Some(&scene.job), None, scene.target.addr);
        assert_refused(&r, "host agent without CAP_SYS_PTRACE");
        let ev = refusal_of(&gw, r.pid);
        assert_eq!(s(&ev, "code"), "no_token", "{ev}");
        assert!(
            s(&ev, "reason").contains("needs CAP_SYS_PTRACE"),
            "the refusal says why: {ev}"
        );
        scene.start_pod();
        let warned = format!(
            "pod listener: /proc/{}/ns/net: Permission denied",
            scene.holder.as_ref().map(Holder::pid).unwrap_or(0)
        );
        let logged = wait_ok(Duration::from_secs(15), || gw.log_tail().contains(&warned));
        assert!(
            logged,
            "the pod's missing listener is logged with its cause ({warned}):\n{}",
            gw.log_tail()
        );
        let r = probe_as(
            Some(AGENT_UID),
            Some(&scene.pod),
            Some(&scene.ns),
            scene.pod_target.addr,
        );
        assert_refused(&r, "pod agent without CAP_SYS_PTRACE");
        assert_eq!(
            (scene.target.count(), scene.pod_target.count()),
            (0, 0),
            "nothing reached a target"
        );
        drop(gw);
    }
}
