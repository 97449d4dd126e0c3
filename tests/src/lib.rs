//! Test harness: real cgroups, network namespaces, target services and the real `agentgate`
//! binary. Every object a test creates is removed by a guard's `Drop`, also when the test fails.
//!
//! These tests need root (eBPF, cgroups, netns). Without it they fail with a clear message; they
//! never skip.

use std::{
    io::Write,
    net::{SocketAddr, TcpListener},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use serde_json::Value;

/// Deterministic pseudo-random bytes (xorshift64*), distinct per seed.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// FNV-1a 64: enough to tell payloads apart, no dependency.
pub fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

pub fn require_root() {
    // SAFETY: trivial libc call.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests load eBPF programs and create cgroups and network namespaces: run them as root \
         (`sudo -E cargo xtask test`); they do not skip"
    );
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `agentgate` binary under test: `$AGENTGATE_BIN` (set by `cargo xtask test`) or the
/// workspace's debug build.
pub fn agentgate_bin() -> PathBuf {
    let path = agentgate_path();
    assert!(
        path.exists(),
        "agentgate binary not found at {}: run the tests with `cargo xtask test`, which builds it",
        path.display()
    );
    path
}

fn agentgate_path() -> PathBuf {
    std::env::var_os("AGENTGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_root().join("target"));
            target.join("debug").join("agentgate")
        })
}

/// The probe binary: `$AGENT_PROBE_BIN` (set by xtask), else the one built with this crate.
pub fn probe_bin() -> PathBuf {
    crate_bin("AGENT_PROBE_BIN", "agent-probe")
}

/// A binary of this crate: `$<env>`, else the one built with it (test executables live in
/// `target/<profile>/deps/`, the crate's binaries one level up).
pub fn crate_bin(env: &str, name: &str) -> PathBuf {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("current exe");
        exe.parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .join(name)
    });
    assert!(path.exists(), "{name} not built at {}", path.display());
    path
}

/// A unique name for this test's kernel objects.
pub fn unique(tag: &str) -> String {
    format!("agtest-{}-{tag}", std::process::id())
}

/// Where the cgroup v2 hierarchy is mounted.
pub fn cgroup2_root() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .expect("no cgroup v2 mount")
}

/// A cgroup (v2) directory, removed with everything in it on drop.
pub struct Cgroup {
    pub rel: String,
    pub abs: PathBuf,
}

impl Cgroup {
    pub fn create(rel: &str) -> Self {
        let abs = cgroup2_root().join(rel.trim_start_matches('/'));
        std::fs::create_dir_all(&abs).unwrap_or_else(|e| panic!("mkdir {}: {e}", abs.display()));
        Self {
            rel: rel.to_string(),
            abs,
        }
    }

    /// Refers to a cgroup someone else (the gateway) created; still removed on drop.
    pub fn adopt(rel: &str) -> Self {
        let abs = cgroup2_root().join(rel.trim_start_matches('/'));
        Self {
            rel: rel.to_string(),
            abs,
        }
    }

    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.abs).expect("cgroup exists").ino()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.abs);
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    // cgroup.kill ends every process inside; rmdir then succeeds once they are reaped.
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A network namespace made with `ip netns add`, loopback up; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> Self {
        // A leftover from an aborted run would make `add` fail.
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        run_ok(Command::new("ip").args(["netns", "add", name]));
        run_ok(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]));
        Self {
            name: name.to_string(),
        }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes `cmd` start inside `cgroup` and, if given, the network namespace at `netns`.
pub fn place(cmd: &mut Command, cgroup: Option<&Cgroup>, netns: Option<&Netns>) {
    place_as(cmd, cgroup, netns, None)
}

/// Like `place`, and then drops to `uid` (and the same gid): the cgroup move and the namespace
/// switch need root, so this happens in the same pre-exec step, after them.
pub fn place_as(
    cmd: &mut Command,
    cgroup: Option<&Cgroup>,
    netns: Option<&Netns>,
    uid: Option<u32>,
) {
    let procs = cgroup
        .map(|c| std::ffi::CString::new(c.abs.join("cgroup.procs").to_str().unwrap()).unwrap());
    let ns = netns.map(|n| std::ffi::CString::new(n.path().to_str().unwrap()).unwrap());
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(path) = &ns {
                let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
            }
            if let Some(path) = &procs {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
            }
            if let Some(uid) = uid {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(uid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// What an agent saw on one connection.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub pid: u32,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    /// The target server's first line: `peer=<address the server saw>`.
    pub greeting: String,
    pub errno: Option<i32>,
}

impl ProbeResult {
    /// The address the target server saw as its client.
    pub fn seen_by_server(&self) -> Option<SocketAddr> {
        self.greeting.strip_prefix("peer=")?.parse().ok()
    }

    /// True when the server's client was this very socket, i.e. no proxy in between.
    pub fn went_direct(&self) -> bool {
        match (self.seen_by_server(), self.local) {
            (Some(s), Some(l)) => canonical(s) == canonical(l),
            _ => false,
        }
    }
}

fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), a.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// Runs the probe as an agent in `cgroup` / `netns` and returns what it reported.
pub fn probe(cgroup: Option<&Cgroup>, netns: Option<&Netns>, addr: SocketAddr) -> ProbeResult {
    probe_as(None, cgroup, netns, addr)
}

/// Like `probe`, with the agent running as `uid` (and the same gid) instead of root.
pub fn probe_as(
    uid: Option<u32>,
    cgroup: Option<&Cgroup>,
    netns: Option<&Netns>,
    addr: SocketAddr,
) -> ProbeResult {
    // The checkout may sit below a directory other users cannot enter (/root, say): another
    // user runs a copy in the temp directory, removed right after.
    let copy = uid.map(|_| std::env::temp_dir().join(unique("agent-probe")));
    if let Some(c) = &copy {
        std::fs::copy(probe_bin(), c).expect("copy agent-probe for another user");
    }
    let mut cmd = Command::new(copy.clone().unwrap_or_else(probe_bin));
    cmd.args(["connect", &addr.to_string()]);
    place_as(&mut cmd, cgroup, netns, uid);
    // A fresh copy can be briefly "busy": another test thread's fork may still hold the write
    // descriptor until its exec. Retry that case only.
    let mut out = cmd.output();
    for _ in 0..50 {
        match &out {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(20));
                out = cmd.output();
            }
            _ => break,
        }
    }
    if let Some(c) = &copy {
        let _ = std::fs::remove_file(c);
    }
    let out = out.expect("run agent-probe");
    assert!(out.status.success(), "agent-probe: {out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "agent-probe output {:?}: {e}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let sock = |k: &str| v[k].as_str().and_then(|s| s.parse().ok());
    ProbeResult {
        pid: v["pid"].as_u64().unwrap_or(0) as u32,
        local: sock("local"),
        peer: sock("peer"),
        greeting: v["greeting"].as_str().unwrap_or("").to_string(),
        errno: v["errno"].as_i64().map(|e| e as i32),
    }
}

/// Runs `agent-probe hold` in `cgroup` in the background: connects, waits for the connection to
/// end (at most `secs`). Join the handle for the probe's JSON report.
pub fn hold(cgroup: &Cgroup, addr: SocketAddr, secs: u64) -> std::thread::JoinHandle<Value> {
    let mut cmd = Command::new(probe_bin());
    cmd.args(["hold", &addr.to_string(), &secs.to_string()]);
    place(&mut cmd, Some(cgroup), None);
    std::thread::spawn(move || {
        let out = cmd.output().expect("run agent-probe hold");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "agent-probe hold said {:?}: {e}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    })
}

/// The version `agentgate policy check` reports for the policy in `dir`.
pub fn policy_version(dir: &Path) -> String {
    let out = Command::new(agentgate_bin())
        .args(["policy", "check"])
        .arg(dir)
        .output()
        .expect("run agentgate policy check");
    assert!(
        out.status.success(),
        "policy check {}: {out:?}",
        dir.display()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("version ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no version in {text}"))
        .to_string()
}

/// Runs `agent-probe flood` in `cgroup`; returns (ok, failed, errors).
pub fn flood(cgroup: &Cgroup, addr: SocketAddr, n: usize, bytes: usize) -> (u64, u64, Vec<String>) {
    let mut cmd = Command::new(probe_bin());
    cmd.args([
        "flood",
        &addr.to_string(),
        &n.to_string(),
        &bytes.to_string(),
    ]);
    place(&mut cmd, Some(cgroup), None);
    let out = cmd.output().expect("run agent-probe flood");
    assert!(out.status.success(), "agent-probe flood: {out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("flood output is JSON");
    let errors = v["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    (
        v["ok"].as_u64().unwrap_or(0),
        v["failed"].as_u64().unwrap_or(0),
        errors,
    )
}

/// A target service on loopback: greets each client with `peer=<its address>\n`, then echoes
/// until the client half-closes. Counts connections.
pub struct TargetServer {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

/// What a target server does with a client after greeting it.
#[derive(Clone, Copy)]
enum Serve {
    /// Echo every byte back until the client half-closes.
    Echo,
    /// Read until the client half-closes, then answer with the byte count (u64, LE).
    Sink,
}

impl TargetServer {
    pub fn start(addr: SocketAddr) -> Self {
        Self::start_with(addr, Serve::Echo)
    }

    /// For throughput measurements: counts and discards.
    pub fn start_sink(addr: SocketAddr) -> Self {
        Self::start_with(addr, Serve::Sink)
    }

    fn start_with(addr: SocketAddr, serve: Serve) -> Self {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        // A deep backlog: benchmarks open connections faster than one thread accepts them, and a
        // full queue turns into 1 s SYN retransmits that would be measured as latency.
        // SAFETY: valid listening socket fd.
        unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 4096) };
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let Ok(peer) = conn.peer_addr() else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    if conn.write_all(format!("peer={peer}\n").as_bytes()).is_ok() {
                        let mut r = conn.try_clone().expect("clone");
                        match serve {
                            Serve::Echo => {
                                let _ = std::io::copy(&mut r, &mut conn);
                            }
                            Serve::Sink => {
                                let n = std::io::copy(&mut r, &mut std::io::sink()).unwrap_or(0);
                                let _ = conn.write_all(&n.to_le_bytes());
                            }
                        }
                    }
                    let _ = conn.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Self {
            addr,
            accepted,
            stop,
        }
    }

    pub fn count(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for TargetServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept so the thread sees the flag and closes the listener.
        let _ = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Whether `agentgate run` (of [`agentgate_bin`]) takes `--metrics`: binaries from before it
/// (the benchmarks' side-by-side runs of an older build) do not.
fn has_metrics_flag() -> bool {
    static SEEN: Mutex<Vec<(PathBuf, bool)>> = Mutex::new(Vec::new());
    let bin = agentgate_bin();
    let mut seen = SEEN.lock().unwrap();
    if let Some((_, has)) = seen.iter().find(|(b, _)| *b == bin) {
        return *has;
    }
    let help = Command::new(&bin)
        .args(["run", "--help"])
        .output()
        .expect("run agentgate run --help");
    let has = String::from_utf8_lossy(&help.stdout).contains("--metrics");
    seen.push((bin, has));
    has
}

/// A running `agentgate run`, with its own policy directory, pin directory and event log.
pub struct Gateway {
    pub dir: PathBuf,
    pub pin_dir: PathBuf,
    pub events_path: PathBuf,
    pub cgroup: Option<PathBuf>,
    /// Arguments appended to `agentgate run` (e.g. `--admin-http 127.0.0.7:17984`).
    pub extra_args: Vec<String>,
    /// The command that stands for `agentgate` (its arguments follow): empty for
    /// [`agentgate_bin`] itself; a wrapper around it (`setpriv … -- <bin>`) or a container
    /// (`podman run … <image>`) in the deploy tests.
    pub command: Vec<String>,
    child: Option<Child>,
    read_pos: Mutex<usize>,
    log: Mutex<EventLog>,
}

/// The event log as read so far. Each line is parsed once: the log of a long test grows by
/// thousands of events, and parsing it whole on every look (`wait_for` looks every 20 ms) cost
/// the test more CPU with every event, CPU the gateway under test was waiting for on a small
/// machine (reconnects after a policy restore got slower flip by flip, issue 16).
#[derive(Default)]
struct EventLog {
    /// Bytes of the file consumed (up to the end of the last whole line).
    pos: u64,
    events: Vec<Value>,
    /// Lines read and parsed, over the life of the gateway (see [`Gateway::lines_parsed`]).
    parsed: usize,
}

impl EventLog {
    /// Parses the whole lines written since the last read; a line still being written is left
    /// for the next read.
    fn read_new(&mut self, path: &Path) {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(path) else {
            return;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.pos {
            // Replaced by a shorter file: start again.
            *self = EventLog {
                parsed: self.parsed,
                ..Default::default()
            };
        }
        let mut new = Vec::new();
        if f.seek(SeekFrom::Start(self.pos)).is_err() || f.read_to_end(&mut new).is_err() {
            return;
        }
        let Some(end) = new.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        self.pos += end as u64 + 1;
        for line in new[..end].split(|&b| b == b'\n') {
            self.parsed += 1;
            if let Ok(v) = serde_json::from_slice(line) {
                self.events.push(v);
            }
        }
    }
}

impl Gateway {
    /// Writes `policy` (YAML) into a fresh directory and starts the gateway; waits for `ready`.
    pub fn start(name: &str, policy: &str) -> Self {
        Self::start_in(name, policy, None)
    }

    /// Like `start`, with the gateway process itself placed in `cgroup`.
    pub fn start_in(name: &str, policy: &str, cgroup: Option<&Cgroup>) -> Self {
        Self::start_with_args(name, policy, cgroup, &[])
    }

    /// Like `start_in`, with `extra_args` appended to `agentgate run` (kept for `restart` and
    /// `start_again`).
    pub fn start_with_args(
        name: &str,
        policy: &str,
        cgroup: Option<&Cgroup>,
        extra_args: &[&str],
    ) -> Self {
        Self::start_as(name, policy, cgroup, &[], extra_args)
    }

    /// Like `start_with_args`, with `command` standing for `agentgate` (see [`Gateway::command`]).
    pub fn start_as(
        name: &str,
        policy: &str,
        cgroup: Option<&Cgroup>,
        command: &[String],
        extra_args: &[&str],
    ) -> Self {
        require_root();
        let dir = std::env::temp_dir().join(unique(name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("policies")).unwrap();
        std::fs::write(dir.join("policies/policy.yaml"), policy).unwrap();
        let mut gw = Self {
            pin_dir: PathBuf::from("/sys/fs/bpf").join(unique(name)),
            events_path: dir.join("events.jsonl"),
            dir,
            cgroup: cgroup.map(|c| c.abs.clone()),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            command: command.to_vec(),
            child: None,
            read_pos: Mutex::new(0),
            log: Mutex::default(),
        };
        gw.spawn();
        gw
    }

    fn spawn(&mut self) {
        let mut cmd = match self.command.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
            None => Command::new(agentgate_bin()),
        };
        cmd.arg("run")
            .arg("--policies")
            .arg(self.dir.join("policies"))
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--events")
            .arg(&self.events_path)
            .arg("--admin-socket")
            .arg(self.dir.join("admin.sock"))
            .arg("--record-db")
            .arg(self.record_db())
            // The metrics endpoint listens on a fixed port by default, which gateways running
            // side by side would fight over; tests that want it pass `--metrics ADDR`.
            .args(
                (!self.extra_args.iter().any(|a| a.starts_with("--metrics")) && has_metrics_flag())
                    .then_some(["--metrics", "off"])
                    .into_iter()
                    .flatten(),
            )
            .args(&self.extra_args)
            // Tests read the gateway's debug lines when they fail; benchmarks ask for less.
            .env(
                "AGENTGATE_LOG",
                std::env::var("AGENTGATE_TEST_GATEWAY_LOG")
                    .unwrap_or_else(|_| "info,agentgate=debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join("gateway.log"))
                    .unwrap(),
            );
        if let Some(cg) = &self.cgroup {
            let procs = std::ffi::CString::new(cg.join("cgroup.procs").to_str().unwrap()).unwrap();
            // SAFETY: async-signal-safe calls only.
            unsafe {
                cmd.pre_exec(move || {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(fd);
                    Ok(())
                });
            }
        }
        let ready_before = self.count("ready");
        self.child = Some(cmd.spawn().expect("spawn agentgate"));
        self.wait_for(
            Duration::from_secs(30),
            |e| e["event"] == "ready",
            ready_before,
        );
    }

    /// The SQLite file the gateway records sessions and statements in.
    pub fn record_db(&self) -> PathBuf {
        self.dir.join("record.db")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// `f` of every event so far (the new lines of the log parsed first). Runs under the log's
    /// lock: `f` (a `wait_for` predicate) must not call back into this gateway.
    fn with_events<T>(&self, f: impl FnOnce(&[Value]) -> T) -> T {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.read_new(&self.events_path);
        f(&log.events)
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Value> {
        self.with_events(|e| e.to_vec())
    }

    /// Lines of the event log parsed so far, each counted once however often it was looked at.
    pub fn lines_parsed(&self) -> usize {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).parsed
    }

    pub fn count(&self, event: &str) -> usize {
        self.with_events(|e| e.iter().filter(|e| e["event"] == event).count())
    }

    /// Waits until an event after the first `skip` events satisfies `pred`; returns it.
    pub fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
        skip_matching: usize,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let hit =
                self.with_events(|e| e.iter().filter(|e| pred(e)).nth(skip_matching).cloned());
            if let Some(hit) = hit {
                return hit;
            }
            if let Some(status) = self.exited() {
                panic!(
                    "agentgate exited ({status}) while waiting\n{}",
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for an event; events so far:\n{}\nlog:\n{}",
                    self.events()
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("\n"),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Events added since the last call to `new_events`.
    pub fn new_events(&self) -> Vec<Value> {
        let all = self.events();
        let mut pos = self.read_pos.lock().unwrap();
        let out = all[(*pos).min(all.len())..].to_vec();
        *pos = all.len();
        out
    }

    /// The `connection_open` event whose client pid is `pid`.
    pub fn connection_of(&self, pid: u32) -> Value {
        self.wait_for(
            Duration::from_secs(10),
            |e| e["event"] == "connection_open" && e["pid"] == pid,
            0,
        )
    }

    /// Waits until the gateway has classified the cgroup at `rel`.
    pub fn wait_classified(&self, rel: &str) -> Value {
        self.wait_for(
            Duration::from_secs(10),
            |e| e["event"] == "cgroup" && e["cgroup"] == rel,
            0,
        )
    }

    fn exited(&self) -> Option<String> {
        // Polling through /proc keeps `&self`; the child is reaped in `kill`/`drop`.
        let pid = self.pid();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let state = stat
            .rsplit(')')
            .next()?
            .split_whitespace()
            .next()?
            .to_string();
        (state == "Z").then(|| "exited".to_string())
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// SIGKILL: no chance to clean up, like a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the gateway again with the same policy and pin directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGTERM, as a service manager stops it, and waits for the process to exit (SIGKILL after
    /// `timeout`). Returns the exit status, `None` if it had to be killed or was not running.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the gateway again (same policy, pin directory, record DB, event log and extra
    /// arguments) after `terminate` or `kill9`; waits for `ready`.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "start_again: the gateway still runs");
        self.spawn();
    }

    /// The Unix socket of this gateway's local admin API.
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    /// `agentgate status --json` of this gateway.
    pub fn status(&self) -> Value {
        let out = Command::new(agentgate_bin())
            .args(["status", "--json", "--admin-socket"])
            .arg(self.dir.join("admin.sock"))
            .output()
            .expect("run agentgate status");
        assert!(out.status.success(), "agentgate status: {out:?}");
        serde_json::from_slice(&out.stdout).expect("status is JSON")
    }

    /// Where the running gateway reads its policy files.
    /// Writes policy file `file` of this gateway and waits (up to 30 s) until the policy it
    /// makes is in force. The directory watch starts a moment after `ready`: a change made
    /// before it is seen when the file is written again, so it is rewritten until seen.
    pub fn reload_policy_file(&self, file: &str, text: &str) {
        let path = self.policy_dir().join(file);
        let scratch = std::env::temp_dir().join(unique(&format!("policy-{file}")));
        std::fs::create_dir_all(&scratch).expect("scratch dir");
        for f in std::fs::read_dir(self.policy_dir())
            .expect("policy dir")
            .flatten()
        {
            std::fs::copy(f.path(), scratch.join(f.file_name())).expect("copy policy");
        }
        std::fs::write(scratch.join(file), text).expect("write policy");
        let version = policy_version(&scratch);
        let _ = std::fs::remove_dir_all(&scratch);
        let applied = || {
            self.events()
                .iter()
                .filter(|e| e["event"] == "policy_applied" && e["version"] == version.as_str())
                .count()
        };
        let before = applied();
        std::fs::write(&path, text).expect("write policy");
        let deadline = Instant::now() + Duration::from_secs(30);
        while applied() <= before {
            assert!(
                Instant::now() < deadline,
                "policy {version} not applied:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(500));
            std::fs::write(&path, text).expect("write policy");
        }
    }

    pub fn policy_dir(&self) -> PathBuf {
        self.dir.join("policies")
    }

    pub fn uninstall(&self) -> std::process::Output {
        Command::new(agentgate_bin())
            .arg("uninstall")
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .output()
            .expect("run agentgate uninstall")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- gateway log ({}) ---\n{}",
                self.dir.display(),
                self.log_tail()
            );
        }
        self.kill9();
        // Not `uninstall()`: a panic in drop (binary missing) would abort the whole test run.
        let _ = Command::new(agentgate_path())
            .arg("uninstall")
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Long-running holder process inside a cgroup / netns (the "pod"), killed on drop.
pub struct Holder(Child);

impl Holder {
    pub fn start(cgroup: &Cgroup, netns: Option<&Netns>) -> Self {
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        place(&mut cmd, Some(cgroup), netns);
        Self(cmd.spawn().expect("spawn holder"))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The issuer of the test identity provider (its keys: `tests/fixtures/test-jwks.json`).
pub const ISSUER: &str = "https://idp.agentgate.test";
pub const AUDIENCE: &str = "agentgate";

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A policy with one workload glob (token from `token_file`), one tcp target, the test identity
/// provider, and a rule that lets group `agents` through that workload to the target.
pub fn policy(
    listen_port: u16,
    workload_glob: &str,
    mode: &str,
    addresses: &[&str],
    port: u16,
    token_file: &Path,
) -> String {
    let addrs: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "version: 2\ngateway:\n  listen_port: {listen_port}\n\
         identity_providers:\n  - name: test-idp\n    issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n\
         \x20   jwks: {{from: file, path: {jwks}}}\n    algorithms: [RS256]\n\
         workloads:\n  - name: agents\n    cgroup: \"{workload_glob}\"\n    mode: {mode}\n\
         \x20   token: {{from: file, path: {token}}}\n\
         targets:\n  - name: svc\n    protocol: tcp\n    addresses: [{}]\n    ports: [{port}]\n\
         rules:\n  - name: agents-to-svc\n    when: {{workloads: [agents], groups: [agents]}}\n    targets: [svc]\n",
        addrs.join(", "),
        jwks = fixtures().join("test-jwks.json").display(),
        token = token_file.display(),
    )
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    groups: &'a [&'a str],
    iat: u64,
    exp: u64,
}

/// A token signed by the test identity provider's key.
pub fn mint(sub: &str, groups: &[&str], iat: u64, exp: u64) -> String {
    let key = std::fs::read(fixtures().join("test-signing-key.pem")).expect("test signing key");
    mint_with_key(&key, sub, groups, iat, exp)
}

/// Like `mint`, signed (RS256, kid `test-key-1`, issuer and audience of the test identity
/// provider) with the RSA private key `key_pem` instead: with any other key than the test
/// provider's, a forged token.
pub fn mint_with_key(key_pem: &[u8], sub: &str, groups: &[&str], iat: u64, exp: u64) -> String {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(key_pem).expect("RSA PEM");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-key-1".into());
    let claims = Claims {
        iss: ISSUER,
        aud: AUDIENCE,
        sub,
        groups,
        iat,
        exp,
    };
    jsonwebtoken::encode(&header, &claims, &key).expect("sign test token")
}

/// Like `mint`, with `extra` claims merged in (a service-account token's `kubernetes.io`).
pub fn mint_with_claims(sub: &str, groups: &[&str], iat: u64, exp: u64, extra: &Value) -> String {
    let key = std::fs::read(fixtures().join("test-signing-key.pem")).expect("test signing key");
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&key).expect("RSA PEM");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-key-1".into());
    let mut claims = serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "groups": groups, "iat": iat, "exp": exp,
    });
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    jsonwebtoken::encode(&header, &claims, &key).expect("sign test token")
}

/// A token file for a workload (host path, which is also the path inside host-mode and
/// netns-only workloads). Removed on drop.
pub struct TokenFile {
    pub path: PathBuf,
}

impl TokenFile {
    /// A valid token for subject `agent-<tag>` in group `agents`, good for ten minutes.
    pub fn valid(tag: &str) -> Self {
        let t = Self {
            path: std::env::temp_dir().join(format!("{}-token", unique(tag))),
        };
        t.write(&mint(
            &format!("agent-{tag}"),
            &["agents"],
            now(),
            now() + 600,
        ));
        t
    }

    pub fn write(&self, token: &str) {
        std::fs::write(&self.path, token).expect("write token file");
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Field of an event as a string.
pub fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

/// The common host-mode setup: an anchor cgroup, an agent cgroup `job-1` under it, a target
/// server on 127.0.0.2:`port`, a valid token file, and a gateway managing `job-*`. Destructure
/// every field (so all of it lives to the end of the test) with `gw` last: locals drop in
/// reverse order, so the gateway is stopped and uninstalled before its cgroups are removed.
pub struct HostSetup {
    pub gw: Gateway,
    pub agent: Cgroup,
    pub target: TargetServer,
    pub name: String,
    pub anchor: Cgroup,
    pub token: TokenFile,
}

pub fn host_setup(tag: &str, listen: u16, port: u16, addresses: &[&str]) -> HostSetup {
    require_root();
    let name = unique(tag);
    let anchor = Cgroup::create(&format!("/{name}"));
    let agent = Cgroup::create(&format!("/{name}/job-1"));
    let target = TargetServer::start(
        format!("127.0.0.2:{port}")
            .parse()
            .expect("loopback address"),
    );
    let token = TokenFile::valid(tag);
    let gw = Gateway::start(
        tag,
        &policy(
            listen,
            &format!("/{name}/job-*"),
            "host",
            addresses,
            port,
            &token.path,
        ),
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
pub mod autogen;
pub mod bg;
pub mod browser;
pub mod http;
pub mod kube;
pub mod oidc;
pub mod pg;
pub mod ssh;
pub mod wire;

/// Polls `f` every 50 ms until it holds, panicking with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            panic!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `sql` on the record DB at `db` read-only (python's sqlite3); each row a JSON array.
pub fn record_query(db: &Path, sql: &str) -> Vec<Vec<Value>> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys, json\n\
             c = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True, timeout=30)\n\
             print(json.dumps([list(r) for r in c.execute(sys.argv[2]).fetchall()]))",
        )
        .arg(db)
        .arg(sql)
        .output()
        .expect("run python3 sqlite3");
    assert!(
        out.status.success(),
        "record db query {sql}: {}",
        pg::output_text(&out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("record db: {e}: {}", pg::output_text(&out)))
}

/// The single integer `sql` returns from the record DB at `db`.
pub fn record_count(db: &Path, sql: &str) -> i64 {
    let rows = record_query(db, sql);
    rows.first()
        .and_then(|r| r.first())
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("{sql}: {rows:?}"))
}
