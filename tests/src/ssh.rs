//! Real, throwaway OpenSSH servers for the end-to-end tests, and the clients that talk to them
//! (the real `ssh`, `scp` and `sftp`, and Python agents on paramiko and asyncssh).
//!
//! A server is Debian's `/usr/sbin/sshd -D -e` on loopback with everything in a fresh directory
//! `/tmp/agtest-sshd-<port>-<pid>`: its own ed25519 host key (optionally with a host
//! certificate), a user CA made by `ssh-keygen` that it trusts (`TrustedUserCAKeys`, for the
//! per-session user certificates the gateway signs), a plain key pair in its `AuthorizedKeysFile`
//! (the static-key mode), its pid file and its log (`LogLevel VERBOSE`, so each login names the
//! key or the certificate's key id). The server runs in a cgroup of its own, and on drop the
//! whole cgroup is killed (the listener and every session it forked, also when the test fails)
//! and the directory removed. A server left behind by a killed test run on the same port is
//! removed by the next [`Sshd::start`] on that port.
//!
//! Logins go to system accounts the tests create ([`ensure_user`]): CI runs these tests as root
//! on a throwaway machine, where adding `agdeploy` and `agreader` is harmless; they are kept
//! between runs (creating them is idempotent).
//!
//! Clients run with no configuration but the test's (`-F /dev/null`), strict host key checking
//! against the known_hosts file the test writes, batch mode and only the identity they are given.

use std::{
    fs,
    io::Read,
    net::{SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{cgroup2_root, place, unique, Cgroup};

/// Debian's OpenSSH server (package openssh-server).
pub const SSHD: &str = "/usr/sbin/sshd";
/// The Python that runs the SSH fixtures: Debian's, with python3-paramiko and python3-asyncssh,
/// and runnable by any uid.
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";
/// The login most tests use.
pub const DEPLOY_USER: &str = "agdeploy";
/// A second login, for tests of rules that restrict logins.
pub const READER_USER: &str = "agreader";
/// Host certificate principals when [`SshdOptions::host_cert_principals`] is empty: the names
/// `ssh` checks the certificate against when a test connects to loopback by address or name.
pub const DEFAULT_HOST_PRINCIPALS: &[&str] = &["127.0.0.1", "::1", "localhost"];

const START_TIMEOUT: Duration = Duration::from_secs(15);

/// How a test server is set up; the default is a plain host key, a fresh user CA, 127.0.0.1 only.
#[derive(Debug, Clone, Default)]
pub struct SshdOptions {
    /// Listen on ::1 as well as 127.0.0.1.
    pub ipv6: bool,
    /// Present a host certificate for the host key, signed by this host CA (private key path,
    /// public half at `<path>.pub`, as [`keygen`] writes it).
    pub host_ca: Option<PathBuf>,
    /// The host certificate's principals; empty: [`DEFAULT_HOST_PRINCIPALS`].
    pub host_cert_principals: Vec<String>,
    /// Use this ed25519 host private key (copied; public half at `<path>.pub`) instead of a fresh
    /// one: a restarted server that keeps its identity, or one importing a known key.
    pub host_key: Option<PathBuf>,
    /// Trust this user CA (private key path, public half at `<path>.pub`) instead of a fresh one
    /// of its own: several servers trusting one CA, like a fleet.
    pub user_ca: Option<PathBuf>,
    /// More `authorized_keys` lines, besides the server's own static key.
    pub authorized_keys: Vec<String>,
    /// `AllowUsers`; empty: any account may log in.
    pub allow_users: Vec<String>,
    /// Raw `sshd_config` lines, appended last (sshd takes the first value of most keywords, so
    /// these cannot override the ones above; use them for keywords not set here).
    pub extra_config: Vec<String>,
}

/// A key pair written by `ssh-keygen`: the private key and its `.pub` beside it.
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub private: PathBuf,
    pub public: PathBuf,
}

impl KeyPair {
    /// The public key as one line: `ssh-ed25519 AAAA… comment`.
    pub fn public_line(&self) -> String {
        read_line(&self.public)
    }
}

/// A running sshd; its cgroup is killed and its directory removed on drop.
pub struct Sshd {
    pub port: u16,
    /// `/tmp/agtest-sshd-<port>-<pid>`: config, keys, CA, authorized_keys, pid file, log.
    pub dir: PathBuf,
    host_key: KeyPair,
    host_cert: Option<PathBuf>,
    user_ca: KeyPair,
    static_key: KeyPair,
    child: Option<Child>,
    cgroup: Option<Cgroup>,
}

impl Sshd {
    /// Starts sshd on 127.0.0.1:`port` (and [::1]:`port` with `opts.ipv6`) and waits until it
    /// answers with its SSH banner. Panics with the server's log if it does not come up.
    pub fn start(port: u16, opts: SshdOptions) -> Self {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} not found: run `cargo xtask setup` (package openssh-server)"
        );
        remove_leftovers(port);
        let dir = std::env::temp_dir().join(format!("agtest-sshd-{port}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        // sshd reads AuthorizedKeysFile as the logging-in user: they must be able to enter.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod sshd dir");
        // The privilege separation directory sshd chroots its pre-auth child into; it must be
        // owned by root and not writable by others.
        fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
        fs::set_permissions("/run/sshd", fs::Permissions::from_mode(0o755)).expect("chmod");

        let host_key = match &opts.host_key {
            Some(src) => {
                let kp = KeyPair {
                    private: dir.join("host_ed25519"),
                    public: dir.join("host_ed25519.pub"),
                };
                fs::copy(src, &kp.private).expect("copy host key");
                fs::copy(pub_path(src), &kp.public).expect("copy host public key");
                fs::set_permissions(&kp.private, fs::Permissions::from_mode(0o600))
                    .expect("chmod host key");
                kp
            }
            None => keygen(&dir.join("host_ed25519"), &format!("sshd-{port}-host")),
        };
        let host_cert = opts.host_ca.as_ref().map(|ca| {
            let principals: Vec<&str> = if opts.host_cert_principals.is_empty() {
                DEFAULT_HOST_PRINCIPALS.to_vec()
            } else {
                opts.host_cert_principals
                    .iter()
                    .map(String::as_str)
                    .collect()
            };
            sign_host_cert(
                ca,
                &host_key.public,
                &format!("sshd-{port}-host-cert"),
                &principals,
                "-5m:+1h",
            )
        });
        let user_ca = match &opts.user_ca {
            Some(ca) => KeyPair {
                private: ca.clone(),
                public: pub_path(ca),
            },
            None => keygen(&dir.join("user_ca"), &format!("sshd-{port}-user-ca")),
        };
        let static_key = keygen(&dir.join("static_key"), &format!("sshd-{port}-static"));

        let mut authorized = vec![static_key.public_line()];
        authorized.extend(opts.authorized_keys.iter().cloned());
        let authorized_keys = dir.join("authorized_keys");
        fs::write(&authorized_keys, authorized.join("\n") + "\n").expect("write authorized_keys");
        fs::set_permissions(&authorized_keys, fs::Permissions::from_mode(0o644))
            .expect("chmod authorized_keys");

        let mut config = vec![
            format!("Port {port}"),
            "ListenAddress 127.0.0.1".to_string(),
        ];
        if opts.ipv6 {
            config.push("ListenAddress ::1".to_string());
        }
        config.push(format!("HostKey {}", host_key.private.display()));
        if let Some(cert) = &host_cert {
            config.push(format!("HostCertificate {}", cert.display()));
        }
        config.extend([
            format!("TrustedUserCAKeys {}", user_ca.public.display()),
            format!("AuthorizedKeysFile {}", authorized_keys.display()),
            format!("PidFile {}", dir.join("sshd.pid").display()),
            "UsePAM no".to_string(),
            // The keys live in /tmp, owned by root: sshd would refuse them for the user.
            "StrictModes no".to_string(),
            "LogLevel VERBOSE".to_string(),
            "PubkeyAuthentication yes".to_string(),
            "PasswordAuthentication no".to_string(),
            "KbdInteractiveAuthentication no".to_string(),
            "PermitRootLogin no".to_string(),
            "Subsystem sftp internal-sftp".to_string(),
            "AllowTcpForwarding yes".to_string(),
            "X11Forwarding no".to_string(),
            "PermitUserEnvironment no".to_string(),
            "AcceptEnv LANG LC_* AGENT_*".to_string(),
            "PrintMotd no".to_string(),
            // Tests open many connections at once (20 CI agents through the gateway): the
            // default 10:30:100 would drop some of them at random before authentication.
            "MaxStartups 200".to_string(),
            // ControlMaster tests open several sessions on one connection.
            "MaxSessions 50".to_string(),
        ]);
        if !opts.allow_users.is_empty() {
            config.push(format!("AllowUsers {}", opts.allow_users.join(" ")));
        }
        config.extend(opts.extra_config.iter().cloned());
        let config_path = dir.join("sshd_config");
        fs::write(&config_path, config.join("\n") + "\n").expect("write sshd_config");

        let log = dir.join("sshd.log");
        let stderr = fs::File::create(dir.join("sshd.stderr")).expect("create sshd.stderr");
        let cgroup = Cgroup::create(&unique(&format!("sshd-{port}")));
        let mut cmd = Command::new(SSHD);
        cmd.args(["-D", "-e", "-f"])
            .arg(&config_path)
            .arg("-E")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        place(&mut cmd, Some(&cgroup), None);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {SSHD}: {e}"));
        let mut sshd = Self {
            port,
            dir,
            host_key,
            host_cert,
            user_ca,
            static_key,
            child: Some(child),
            cgroup: Some(cgroup),
        };
        sshd.wait_ready(opts.ipv6);
        sshd
    }

    fn wait_ready(&mut self, ipv6: bool) {
        let mut addrs = vec![self.addr()];
        if ipv6 {
            addrs.push(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, self.port)));
        }
        let deadline = Instant::now() + START_TIMEOUT;
        for addr in addrs {
            loop {
                if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                    panic!(
                        "sshd on port {} exited at start ({status}):\n{}",
                        self.port,
                        self.auth_log()
                    );
                }
                if banner(addr).is_some_and(|b| b.starts_with("SSH-2.0-")) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "sshd on {addr} not answering after {START_TIMEOUT:?}:\n{}",
                    self.auth_log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The host's public key as one line (`ssh-ed25519 AAAA… comment`).
    pub fn host_public_line(&self) -> String {
        self.host_key.public_line()
    }

    /// The host's private key (to import it into a gateway, or restart with the same identity
    /// through [`SshdOptions::host_key`]; its `.pub` is beside it).
    pub fn host_key_path(&self) -> &Path {
        &self.host_key.private
    }

    /// The host certificate (`…-cert.pub`) when started with [`SshdOptions::host_ca`].
    pub fn host_cert_path(&self) -> Option<&Path> {
        self.host_cert.as_deref()
    }

    /// A known_hosts line pinning this server's plain host key: `[127.0.0.1]:port ssh-ed25519 …`.
    pub fn known_hosts_line(&self) -> String {
        known_hosts_plain("127.0.0.1", self.port, &self.host_public_line())
    }

    /// The user CA this server trusts (`TrustedUserCAKeys`): its private key, to sign user
    /// certificates with ([`sign_user_cert`]).
    pub fn user_ca_key(&self) -> &Path {
        &self.user_ca.private
    }

    /// The user CA's public key line.
    pub fn user_ca_public_line(&self) -> String {
        self.user_ca.public_line()
    }

    /// The plain private key in the server's `AuthorizedKeysFile` (any account may log in with
    /// it); its `.pub` is beside it.
    pub fn static_key(&self) -> &Path {
        &self.static_key.private
    }

    /// The static key's public line.
    pub fn static_public_line(&self) -> String {
        self.static_key.public_line()
    }

    /// The server's log so far (`LogLevel VERBOSE`: one `Accepted publickey for USER from ADDR
    /// port N ssh2: …` line per login, naming the key's fingerprint, or for a certificate
    /// `ED25519-CERT SHA256:… ID <key id> (serial N) CA ED25519 SHA256:…`), followed by anything
    /// sshd wrote to stderr before its log was open (config errors).
    pub fn auth_log(&self) -> String {
        let mut text = fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default();
        text.push_str(&fs::read_to_string(self.dir.join("sshd.stderr")).unwrap_or_default());
        text
    }

    /// Waits (at most `timeout`) until the log has a line containing `needle`; returns the line.
    /// Panics with the whole log if none comes.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.auth_log();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no line with {needle:?} in sshd {} log after {timeout:?}:\n{log}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Kills the sessions the listener forked (they outlive it) and removes the cgroup.
        drop(self.cgroup.take());
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The server's identification line, if something on `addr` sends one within two seconds.
fn banner(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut buf = [0u8; 256];
    let mut got = Vec::new();
    while !got.contains(&b'\n') {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    Some(String::from_utf8_lossy(&got).trim().to_string())
}

/// Removes what a killed test run left on `port`: its directory (named after a process that is
/// gone), the sshd its pid file names, and its cgroup.
fn remove_leftovers(port: u16) {
    let alive = |pid: &str| Path::new("/proc").join(pid).exists();
    let prefix = format!("agtest-sshd-{port}-");
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(owner) = name.strip_prefix(&prefix) else {
                continue;
            };
            if alive(owner) {
                continue;
            }
            if let Some(pid) = fs::read_to_string(e.path().join("sshd.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                // SAFETY: trivial libc call; the pid is the leftover sshd's.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = fs::remove_dir_all(e.path());
        }
    }
    let suffix = format!("-sshd-{port}");
    if let Ok(entries) = fs::read_dir(cgroup2_root()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let owner = name
                .strip_prefix("agtest-")
                .and_then(|r| r.strip_suffix(&suffix));
            if owner.is_some_and(|o| !alive(o)) {
                drop(Cgroup::adopt(&name));
            }
        }
    }
}

fn pub_path(private: &Path) -> PathBuf {
    let mut s = private.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

fn read_line(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .to_string()
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A fresh ed25519 key pair without passphrase at `path` and `path.pub` (replacing any there).
pub fn keygen(path: &Path, comment: &str) -> KeyPair {
    let public = pub_path(path);
    let _ = fs::remove_file(path);
    let _ = fs::remove_file(&public);
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(path),
    );
    KeyPair {
        private: path.to_path_buf(),
        public,
    }
}

/// Signs the public key at `public_key` (`…/key.pub`) with the CA's private key `ca` into a user
/// certificate `…/key-cert.pub` (returned; `ssh -i …/key` picks it up by itself): key id `key_id`,
/// `principals` the logins it is valid for, `validity` as ssh-keygen's `-V` (`+5m`).
pub fn sign_user_cert(
    ca: &Path,
    public_key: &Path,
    key_id: &str,
    principals: &[&str],
    validity: &str,
) -> PathBuf {
    sign_cert(ca, public_key, key_id, principals, validity, false)
}

/// Like [`sign_user_cert`], a host certificate (`ssh-keygen -h`); `principals` are the host
/// names it is valid for.
pub fn sign_host_cert(
    ca: &Path,
    public_key: &Path,
    key_id: &str,
    principals: &[&str],
    validity: &str,
) -> PathBuf {
    sign_cert(ca, public_key, key_id, principals, validity, true)
}

fn sign_cert(
    ca: &Path,
    public_key: &Path,
    key_id: &str,
    principals: &[&str],
    validity: &str,
    host: bool,
) -> PathBuf {
    let mut cmd = Command::new("ssh-keygen");
    cmd.arg("-q").arg("-s").arg(ca).args(["-I", key_id]);
    if host {
        cmd.arg("-h");
    }
    cmd.args(["-n", &principals.join(","), "-V", validity])
        .arg(public_key);
    run_ok(&mut cmd);
    let name = public_key
        .to_string_lossy()
        .strip_suffix(".pub")
        .map(|stem| format!("{stem}-cert.pub"))
        .unwrap_or_else(|| panic!("{} does not end in .pub", public_key.display()));
    PathBuf::from(name)
}

/// The name known_hosts uses for `host` on `port`: the bare host on 22, else `[host]:port`.
pub fn known_hosts_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// A known_hosts line pinning `public_line` (`ssh-ed25519 AAAA… [comment]`) for `host`:`port`.
pub fn known_hosts_plain(host: &str, port: u16, public_line: &str) -> String {
    format!("{} {}", known_hosts_name(host, port), public_line.trim())
}

/// A known_hosts line trusting the CA `ca_public_line` for host certificates of hosts matching
/// `patterns` (`*`, `*.example`, `[127.0.0.1]:2222`, comma-separated).
pub fn known_hosts_ca(patterns: &str, ca_public_line: &str) -> String {
    format!("@cert-authority {patterns} {}", ca_public_line.trim())
}

/// Like [`known_hosts_plain`] with the host name hashed (`|1|salt|hmac`, as `HashKnownHosts`
/// writes it), made by `ssh-keygen -H`.
pub fn known_hosts_hashed(host: &str, port: u16, public_line: &str) -> String {
    let path = std::env::temp_dir().join(unique(&format!("known-hosts-hash-{}", fnv_of(host))));
    fs::write(&path, known_hosts_plain(host, port, public_line) + "\n").expect("write");
    run_ok(Command::new("ssh-keygen").arg("-H").arg("-f").arg(&path));
    let line = read_line(&path);
    let _ = fs::remove_file(&path);
    let _ = fs::remove_file(format!("{}.old", path.display()));
    assert!(line.starts_with("|1|"), "ssh-keygen -H wrote {line:?}");
    line
}

/// A per-call tag so concurrent [`known_hosts_hashed`] calls use distinct files.
fn fnv_of(host: &str) -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    crate::fnv1a(format!("{host}-{n}").as_bytes())
}

/// Writes `lines` as a known_hosts file at `path` (readable by anyone: agents may run as other
/// uids).
pub fn write_known_hosts(path: &Path, lines: &[String]) {
    fs::write(path, lines.join("\n") + "\n")
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).expect("chmod known_hosts");
}

/// Creates the login `name` (a system account with a home directory and /bin/bash) unless it
/// exists, and returns its uid. The tests run as root on a throwaway CI machine; the accounts are
/// kept between runs. The account's password field is `*` (no password login, not "locked":
/// sshd without PAM refuses even key logins to an account whose password starts with `!`, which
/// is what useradd leaves).
pub fn ensure_user(name: &str) -> u32 {
    // Tests of one binary run in parallel: one useradd at a time.
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if uid_of(name).is_none() {
        run_ok(Command::new("useradd").args([
            "--system",
            "--create-home",
            "--shell",
            "/bin/bash",
            "--user-group",
            name,
        ]));
    }
    let shadow = fs::read_to_string("/etc/shadow").unwrap_or_default();
    let locked = shadow.lines().any(|l| {
        let mut f = l.split(':');
        f.next() == Some(name) && f.next().is_some_and(|p| p.starts_with('!'))
    });
    if locked {
        run_ok(Command::new("usermod").args(["-p", "*", name]));
    }
    uid_of(name).unwrap_or_else(|| panic!("user {name} missing after useradd"))
}

fn uid_of(name: &str) -> Option<u32> {
    let out = Command::new("id").args(["-u", name]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The home directory of `name` (from /etc/passwd).
pub fn home_of(name: &str) -> PathBuf {
    let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name) && f.len() > 5).then(|| PathBuf::from(f[5]))
        })
        .unwrap_or_else(|| panic!("no user {name} in /etc/passwd"))
}

/// Copies the private key `private` (and its `.pub` and `-cert.pub` when present) into `dir` as
/// `name`, owned by `uid` and its primary group, the private key with mode 0600, and returns the
/// copy's path: `ssh` refuses a private key its user does not own or others may read, so an agent
/// running as another uid needs its own copy.
pub fn key_for_uid(private: &Path, dir: &Path, name: &str, uid: u32) -> PathBuf {
    let gid = primary_gid(uid);
    let dst = dir.join(name);
    let mut copies = vec![(private.to_path_buf(), dst.clone(), 0o600)];
    let mut src_cert = private.as_os_str().to_owned();
    src_cert.push("-cert.pub");
    let mut dst_cert = dst.as_os_str().to_owned();
    dst_cert.push("-cert.pub");
    for (src, to) in [
        (pub_path(private), pub_path(&dst)),
        (PathBuf::from(src_cert), PathBuf::from(dst_cert)),
    ] {
        if src.exists() {
            copies.push((src, to, 0o644));
        }
    }
    for (src, to, mode) in copies {
        fs::copy(&src, &to).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
        std::os::unix::fs::chown(&to, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", to.display()));
        fs::set_permissions(&to, fs::Permissions::from_mode(mode)).expect("chmod key copy");
    }
    dst
}

/// The primary gid of `uid` (from /etc/passwd); the uid itself if it has no entry.
fn primary_gid(uid: u32) -> u32 {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.get(2)?.parse::<u32>().ok()? == uid).then(|| f.get(3)?.parse().ok())?
        })
        .unwrap_or(uid)
}

/// The options every client gets: nothing from ~/.ssh/config or the system's files, strict host
/// key checking against `known_hosts` only, no prompts, only the identities given.
fn client_options(cmd: &mut Command, known_hosts: &Path) {
    cmd.args(["-F", "/dev/null", "-o", "StrictHostKeyChecking=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args([
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=15",
        ])
        .stdin(Stdio::null());
}

/// `ssh -F /dev/null -o StrictHostKeyChecking=yes -o UserKnownHostsFile=<known_hosts> … -p port
/// <extra…> -l user 127.0.0.1`: append the remote command with `.arg()`. `extra` carries the
/// identity (`-i key`; a `key-cert.pub` beside it is offered too) and any other options.
pub fn ssh_command(known_hosts: &Path, port: u16, user: &str, extra: &[&str]) -> Command {
    ssh_command_to("127.0.0.1", known_hosts, port, user, extra)
}

/// [`ssh_command`] to `host` (`::1`, a name) instead of 127.0.0.1.
pub fn ssh_command_to(
    host: &str,
    known_hosts: &Path,
    port: u16,
    user: &str,
    extra: &[&str],
) -> Command {
    let mut cmd = Command::new("ssh");
    client_options(&mut cmd, known_hosts);
    cmd.args(["-p", &port.to_string()])
        .args(extra)
        .args(["-l", user, host]);
    cmd
}

/// `scp` with the same options (`-P port`) and `extra` (`-i key`, `-O` for the legacy scp
/// protocol instead of SFTP): append sources and destination, remote ones as [`scp_remote`].
pub fn scp_command(known_hosts: &Path, port: u16, extra: &[&str]) -> Command {
    let mut cmd = Command::new("scp");
    client_options(&mut cmd, known_hosts);
    cmd.args(["-q", "-P", &port.to_string()]).args(extra);
    cmd
}

/// `user@127.0.0.1:path` for scp.
pub fn scp_remote(user: &str, path: &str) -> String {
    format!("{user}@127.0.0.1:{path}")
}

/// `sftp -b <batch>` with the same options to `user@127.0.0.1`: runs the commands in the batch
/// file (one per line; any failure ends it with a non-zero status).
pub fn sftp_command(
    known_hosts: &Path,
    port: u16,
    user: &str,
    batch: &Path,
    extra: &[&str],
) -> Command {
    let mut cmd = Command::new("sftp");
    client_options(&mut cmd, known_hosts);
    cmd.arg("-b")
        .arg(batch)
        .args(["-P", &port.to_string()])
        .args(extra)
        .arg(format!("{user}@127.0.0.1"));
    cmd
}

/// The Python SSH clients under `tests/fixtures/ssh/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PyClient {
    /// `paramiko_exec.py`: paramiko, which reads only plain known_hosts lines.
    Paramiko,
    /// `asyncssh_exec.py`: asyncssh, which also honours `@cert-authority` lines.
    AsyncSsh,
}

impl PyClient {
    pub fn script(self) -> PathBuf {
        crate::fixtures().join("ssh").join(match self {
            PyClient::Paramiko => "paramiko_exec.py",
            PyClient::AsyncSsh => "asyncssh_exec.py",
        })
    }
}

/// `/usr/bin/python3 <client script> host port user key known_hosts command`; the script prints
/// one JSON object (see [`py_exec`]).
pub fn py_exec_command(
    client: PyClient,
    host: &str,
    port: u16,
    user: &str,
    key: &Path,
    known_hosts: &Path,
    command: &str,
) -> Command {
    let mut cmd = Command::new(SYSTEM_PYTHON);
    cmd.arg(client.script())
        .args([host, &port.to_string(), user])
        .arg(key)
        .arg(known_hosts)
        .arg(command)
        .stdin(Stdio::null());
    cmd
}

/// Runs [`py_exec_command`] and returns its JSON: `{"ok": true, "exit", "stdout", "stderr"}` or
/// `{"ok": false, "error_type", "error"}`.
pub fn py_exec(
    client: PyClient,
    host: &str,
    port: u16,
    user: &str,
    key: &Path,
    known_hosts: &Path,
    command: &str,
) -> Value {
    let out = py_exec_command(client, host, port, user, key, known_hosts, command)
        .output()
        .expect("run python SSH client");
    assert!(out.status.success(), "{client:?} client: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{client:?} client printed {:?} ({e}); stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A fresh directory for a test's client-side files (keys, certificates, known_hosts, payloads),
/// `/tmp/agtest-<pid>-<tag>`, mode 0755; removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(unique(tag));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
