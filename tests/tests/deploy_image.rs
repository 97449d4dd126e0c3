//! The image `cargo xtask image` builds (deploy/Containerfile), built and run with podman as the
//! DaemonSet runs it: host network, PID and cgroup namespaces, the node's cgroup tree and bpffs
//! mounted; once privileged, once with only the manifest's capabilities and podman's default
//! seccomp profile. An agent in a managed cgroup on the host reaches a TCP target through the
//! gateway in the container (the TCP demo's path).
//!
//! How podman runs here (docs/kubernetes-deploy.md, Troubleshooting): runc, not crun (crun refuses
//! this machine's hybrid cgroup layout), and rlimits no higher than the caller's (the machine's
//! bounding set lacks CAP_SYS_RESOURCE, so podman's defaults cannot be set).
//!
//! Ports 20956–20959 (this helper's range is 20950–20959; deploy_caps.rs uses 20950–20955).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use agentgate_tests::*;

const LISTEN: u16 = 20956;
const TARGET: u16 = 20957;
const CAPS_LISTEN: u16 = 20958;
const CAPS_TARGET: u16 = 20959;

/// Builds the image with `cargo xtask image` (the xtask binary `cargo xtask test` built) from the
/// agentgate binary under test; removed on drop.
struct Image {
    tag: String,
}

impl Image {
    fn build(tag_suffix: &str) -> Self {
        require_root();
        let tag = format!("agentgate-test:{}-{tag_suffix}", std::process::id());
        let exe = std::env::current_exe().expect("current exe");
        let xtask = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .join("xtask");
        assert!(
            xtask.exists(),
            "{} missing: run the tests with `cargo xtask test`",
            xtask.display()
        );
        let context = std::env::temp_dir().join(unique(&format!("image-{tag_suffix}")));
        let out = Command::new(&xtask)
            .arg("image")
            .arg("--binary")
            .arg(agentgate_bin())
            .args(["--tag", &tag])
            .arg("--context")
            .arg(&context)
            .output()
            .expect("run xtask image");
        let _ = std::fs::remove_dir_all(&context);
        assert!(
            out.status.success(),
            "cargo xtask image: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Image { tag }
    }

    fn name(&self) -> String {
        format!("localhost/{}", self.tag)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rmi", "--force", &self.name()])
            .output();
    }
}

/// A container by name, removed (stopped first) on drop: killing `podman run` leaves the
/// container running under conmon.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time", "0", &self.0])
            .output();
    }
}

fn rlimit_hard(resource: libc::__rlimit_resource_t) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we pass.
    unsafe { libc::getrlimit(resource, &mut r) };
    r.rlim_max
}

/// `podman run` as the DaemonSet runs the gateway, up to the image name (`agentgate`'s arguments
/// follow). `security`: `--privileged`, or the capability and seccomp options.
fn podman_run(container: &str, image: &Image, security: &[String]) -> Vec<String> {
    // podman's default rlimits (nofile 1048576, nproc 4194304) cannot be set without
    // CAP_SYS_RESOURCE, which this machine's bounding set lacks; conmon keeps nproc at most
    // pid_max. The container gets what the caller has.
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    let nofile = rlimit_hard(libc::RLIMIT_NOFILE);
    let nproc = rlimit_hard(libc::RLIMIT_NPROC).min(pid_max);
    let fixtures = fixtures().display().to_string();
    let mut cmd: Vec<String> = [
        "podman",
        "run",
        "--rm",
        "--name",
        container,
        // crun refuses a hybrid cgroup layout whose v2 mount still has a controller.
        "--runtime",
        "runc",
        "--network=host",
        "--pid=host",
        "--cgroupns=host",
        "--pull=never",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    cmd.extend(security.iter().cloned());
    cmd.extend([
        "--ulimit".into(),
        format!("nofile={nofile}:{nofile}"),
        "--ulimit".into(),
        format!("nproc={nproc}:{nproc}"),
        // The node's cgroup tree and bpffs, as the DaemonSet's hostPath volumes.
        "-v".into(),
        "/sys/fs/cgroup:/sys/fs/cgroup".into(),
        "-v".into(),
        "/sys/fs/bpf:/sys/fs/bpf".into(),
        // The harness's policy, event log, record and token files, and the test JWKS.
        "-v".into(),
        format!("{0}:{0}", std::env::temp_dir().display()),
        "-v".into(),
        format!("{fixtures}:{fixtures}:ro"),
        image.name(),
    ]);
    cmd
}

/// `capabilities.add` of deploy/daemonset.yaml.
fn manifest_caps() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml");
    let text = std::fs::read_to_string(path).expect("read deploy/daemonset.yaml");
    let mut lines = text.lines().skip_while(|l| l.trim() != "add:");
    lines.next().expect("capabilities.add");
    lines
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .map_while(|l| l.strip_prefix("- "))
        .map(|c| c.trim().to_string())
        .collect()
}

/// Every path in the image's filesystem (`podman export` of a container that never runs).
fn image_files(image: &Image) -> Vec<String> {
    let created = Command::new("podman")
        .args(["create", "--pull=never", &image.name()])
        .output()
        .expect("podman create");
    assert!(created.status.success(), "podman create: {created:?}");
    let id = String::from_utf8_lossy(&created.stdout).trim().to_string();
    let tar = std::env::temp_dir().join(unique("image-export.tar"));
    let exported = Command::new("podman")
        .args(["export", "--output"])
        .arg(&tar)
        .arg(&id)
        .output()
        .expect("podman export");
    let _ = Command::new("podman").args(["rm", &id]).output();
    assert!(exported.status.success(), "podman export: {exported:?}");
    let listing = Command::new("tar")
        .arg("-tvf")
        .arg(&tar)
        .output()
        .expect("tar -t");
    let _ = std::fs::remove_file(&tar);
    String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn image_holds_the_gateway_and_its_libraries_only() {
    let image = Image::build("contents");
    let inspect = Command::new("podman")
        .args([
            "image",
            "inspect",
            "--format",
            "{{json .Config.Entrypoint}} {{.Size}}",
            &image.name(),
        ])
        .output()
        .expect("podman image inspect");
    let text = String::from_utf8_lossy(&inspect.stdout);
    let (entrypoint, size) = text.trim().rsplit_once(' ').expect("entrypoint and size");
    assert_eq!(entrypoint, r#"["/usr/local/bin/agentgate"]"#);
    let size: u64 = size.parse().expect("size");

    // Regular files: the binary, and only what the loader maps for it.
    let ldd = Command::new("ldd")
        .arg(agentgate_bin())
        .output()
        .expect("ldd");
    let libs: Vec<String> = String::from_utf8_lossy(&ldd.stdout)
        .lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, r)) => r.split_whitespace().next(),
                None => l.split_whitespace().next(),
            }?;
            path.starts_with('/')
                .then(|| path.trim_start_matches('/').to_string())
        })
        .collect();
    assert!(!libs.is_empty(), "ldd named no library: {ldd:?}");
    let files = image_files(&image);
    let regular: Vec<&str> = files
        .iter()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    let mut expected: Vec<String> = libs.clone();
    expected.push("usr/local/bin/agentgate".into());
    expected.sort();
    let mut got: Vec<String> = regular.iter().map(|s| s.to_string()).collect();
    got.sort();
    assert_eq!(got, expected, "the image's files:\n{}", files.join("\n"));
    assert!(
        !files.iter().any(|l| l.starts_with('l')),
        "no symlinks (no shell, no busybox): {files:?}"
    );
    // Debug info stripped: the binary under test is several times larger with it.
    let binary = std::fs::metadata(agentgate_bin()).expect("binary").len();
    assert!(
        size < binary,
        "image {size} bytes, binary with debug info {binary}: not stripped?"
    );
}

/// Starts the gateway in the image with `security`, for a host-mode agent cgroup, and checks
/// that the agent reaches the target through it and that nothing went direct.
fn demo_through(image: &Image, tag: &str, (listen, port): (u16, u16), security: &[String]) {
    require_root();
    let name = unique(tag);
    let anchor = Cgroup::create(&format!("/{name}"));
    let agent = Cgroup::create(&format!("/{name}/job-1"));
    let target = TargetServer::start(format!("127.0.0.2:{port}").parse().unwrap());
    let token = TokenFile::valid(tag);
    let container = name.clone();
    let gw = Gateway::start_as(
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
        &podman_run(&container, image, security),
        &[],
    );
    // Declared after the gateway: dropped first, so the container is gone before the gateway
    // guard uninstalls the pins.
    let _container = Container(container.clone());

    // The gateway that answers is the one in the container: its process is in the container's
    // root (the image), not the host's.
    let inspect = Command::new("podman")
        .args(["inspect", "--format", "{{.State.Pid}}", &container])
        .output()
        .expect("podman inspect");
    let pid = String::from_utf8_lossy(&inspect.stdout).trim().to_string();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    assert_eq!(
        exe,
        PathBuf::from("/usr/local/bin/agentgate"),
        "the container's process {pid} runs the image's binary"
    );

    gw.wait_classified(&agent.rel);
    for n in 1..=3 {
        let r = probe(Some(&agent), None, target.addr);
        assert!(
            r.errno.is_none() && r.greeting.starts_with("peer="),
            "the agent did not get through the containerized gateway: {r:?}\n{}",
            gw.log_tail()
        );
        assert!(!r.went_direct(), "went around the gateway: {r:?}");
        assert_eq!(r.peer, Some(target.addr), "getpeername shows the target");
        let ev = gw.connection_of(r.pid);
        assert_eq!(s(&ev, "workload"), "agents", "{ev}");
        assert_eq!(target.count(), n);
    }
    // An unmanaged process goes direct: only the managed cgroup is captured.
    let r = probe(None, None, target.addr);
    assert!(r.went_direct(), "{r:?}");
    drop(_container);
    drop(gw);
    drop(anchor);
}

#[test]
fn the_image_runs_the_tcp_demo_privileged_and_with_the_manifest_caps() {
    let image = Image::build("run");
    demo_through(
        &image,
        "image-priv",
        (LISTEN, TARGET),
        &["--privileged".to_string()],
    );

    // The manifest's capabilities only, podman's default seccomp profile (as RuntimeDefault),
    // no AppArmor (the manifest's Unconfined; this machine has none), a read-only root.
    let mut security = vec!["--cap-drop=all".to_string()];
    for cap in manifest_caps() {
        security.push(format!("--cap-add={cap}"));
    }
    security.push("--security-opt=no-new-privileges".to_string());
    // readOnlyRootFilesystem: the image's own tree stays read-only, with no tmpfs added.
    security.push("--read-only".to_string());
    security.push("--read-only-tmpfs=false".to_string());
    demo_through(&image, "image-caps", (CAPS_LISTEN, CAPS_TARGET), &security);
}
