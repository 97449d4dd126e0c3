//! The host-key check and the user certificate against a real sshd (Debian's openssh-server),
//! started by the test on 127.0.0.1:20400 with a host certificate from [`host_certificate`] and
//! a `TrustedUserCAKeys` file, through a russh client.

use std::process::{Command, Stdio};

use super::tests::{keygen, names, pub_line, public, run, tmp};
use super::*;

/// sshd started on loopback by a test, ended (by its pid) when dropped.
struct Sshd {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SSHD: &str = "/usr/sbin/sshd";

/// Starts `sshd -D` on 127.0.0.1:`port` with an Ed25519 host key and `setup`'s extra config
/// lines (written in its own directory), and waits until it accepts connections.
fn sshd(port: u16, dir: tempfile::TempDir, host_key: &Path, extra: &str) -> Sshd {
    std::fs::create_dir_all("/run/sshd").unwrap();
    let config = dir.path().join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "ListenAddress 127.0.0.1:{port}\nHostKey {}\nPidFile none\nUsePAM no\n\
             StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nAuthorizedKeysFile none\nLogLevel VERBOSE\n{extra}",
            host_key.display()
        ),
    )
    .unwrap();
    run(Command::new(SSHD).arg("-t").arg("-f").arg(&config));
    let log = std::fs::File::create(dir.path().join("sshd.log")).unwrap();
    let child = Command::new(SSHD)
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let sshd = Sshd { child, _dir: dir };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return sshd;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("sshd did not listen on {port}");
}

/// A russh client whose host-key check is a [`HostKeyCheck`], keeping its verdict.
struct Client {
    check: HostKeyCheck,
    names: Vec<String>,
    verdict: std::sync::Arc<std::sync::Mutex<Option<Result<(), String>>>>,
}

impl russh::client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let r = self.check.check(&self.names, key);
        let ok = r.is_ok();
        *self.verdict.lock().unwrap() = Some(r.map_err(|e| e.to_string()));
        Ok(ok)
    }
}

type Verdict = Option<Result<(), String>>;

/// Connects to sshd with the check; returns the check's verdict and the connection (when the
/// check passed).
async fn connect(
    port: u16,
    check: HostKeyCheck,
    names: Vec<String>,
    certificates: bool,
) -> (Verdict, Option<russh::client::Handle<Client>>) {
    let verdict = std::sync::Arc::new(std::sync::Mutex::new(None));
    let mut config = russh::client::Config::default();
    if certificates {
        config.preferred.host_key_certificates =
            std::borrow::Cow::Owned(HostKeyCheck::certificate_algorithms());
    }
    let client = Client {
        check,
        names,
        verdict: verdict.clone(),
    };
    let handle = tokio::time::timeout(
        Duration::from_secs(10),
        russh::client::connect(std::sync::Arc::new(config), ("127.0.0.1", port), client),
    )
    .await
    .expect("ssh handshake timed out")
    .ok();
    let v = verdict.lock().unwrap().take();
    (v, handle)
}

/// sshd is a test dependency (`cargo xtask setup` installs openssh-server): missing, the test
/// fails rather than pass without checking anything.
fn require_sshd() {
    assert!(
        Path::new(SSHD).exists(),
        "{SSHD} missing: `cargo xtask setup` (or apt-get install openssh-server)"
    );
}

#[tokio::test]
async fn real_sshd_host_certificate_and_user_certificate() {
    require_sshd();
    const PORT: u16 = 20400;
    let dir = tmp();
    let host = keygen(dir.path(), "ssh_host_ed25519_key", "ed25519");
    let host_ca = keygen(dir.path(), "host_ca", "ed25519");
    let user_ca = keygen(dir.path(), "user_ca", "ed25519");
    let host_ca_key = load_private_key(&host_ca).unwrap();
    let user_ca_key = load_private_key(&user_ca).unwrap();
    // sshd presents our host certificate for its own key.
    let cert = host_certificate(
        &host_ca_key,
        &public(&host),
        &names(&["build-host-7", "127.0.0.1"]),
        SystemTime::now(),
        Duration::from_secs(600),
    )
    .unwrap();
    let cert_path = dir.path().join("ssh_host_ed25519_key-cert.pub");
    std::fs::write(&cert_path, cert.to_openssh().unwrap()).unwrap();
    let trusted = dir.path().join("trusted_user_ca");
    std::fs::write(&trusted, format!("{}\n", pub_line(&user_ca))).unwrap();
    let extra = format!(
        "HostCertificate {}\nTrustedUserCAKeys {}\n",
        cert_path.display(),
        trusted.display()
    );
    let known = dir.path().join("known_hosts");
    let other_ca = keygen(dir.path(), "other_ca", "ed25519");
    let host_path = host.clone();
    let sshd = sshd(PORT, dir, &host_path, &extra);
    let d = sshd._dir.path();
    let target = HostKeyCheck::names(
        "build-host-7",
        &[],
        format!("127.0.0.1:{PORT}").parse().unwrap(),
    );

    // The CA line: the certificate sshd presents is checked and accepted.
    std::fs::write(
        &known,
        format!("@cert-authority build-host-7 {}\n", pub_line(&host_ca)),
    )
    .unwrap();
    let check = HostKeyCheck::load(&known).unwrap();
    assert!(check.has_cert_authorities());
    let (verdict, handle) = connect(PORT, check, target.clone(), true).await;
    assert_eq!(verdict, Some(Ok(())));
    let mut handle = handle.expect("connected after the check passed");

    // Upstream login with a per-session user certificate that sshd's TrustedUserCAKeys accepts.
    let session = session_key();
    let user_cert = user_certificate(
        &user_ca_key,
        session.public_key(),
        "root",
        "agentgate test#keys session 1",
        SystemTime::now(),
        Duration::from_secs(120),
        &UserExtensions::default(),
    )
    .unwrap();
    let auth = handle
        .authenticate_openssh_cert("root", std::sync::Arc::new(session.clone()), user_cert)
        .await
        .unwrap();
    assert!(auth.success(), "sshd refused the user certificate");
    let log = std::fs::read_to_string(d.join("sshd.log")).unwrap();
    assert!(
        log.contains("agentgate test#keys session 1"),
        "the key id is not in sshd's log:\n{log}"
    );
    // A certificate for another login: sshd refuses it.
    let (_, handle) = connect(
        PORT,
        HostKeyCheck::load(&known).unwrap(),
        target.clone(),
        true,
    )
    .await;
    let mut handle = handle.unwrap();
    let wrong = user_certificate(
        &user_ca_key,
        session.public_key(),
        "deploy",
        "wrong login",
        SystemTime::now(),
        Duration::from_secs(120),
        &UserExtensions::default(),
    )
    .unwrap();
    let auth = handle
        .authenticate_openssh_cert("root", std::sync::Arc::new(session), wrong)
        .await
        .unwrap();
    assert!(!auth.success(), "sshd took a certificate for another login");

    // Another CA: refused, and the handshake fails.
    std::fs::write(
        &known,
        format!("@cert-authority build-host-7 {}\n", pub_line(&other_ca)),
    )
    .unwrap();
    let (verdict, handle) = connect(
        PORT,
        HostKeyCheck::load(&known).unwrap(),
        target.clone(),
        true,
    )
    .await;
    assert!(
        matches!(&verdict, Some(Err(e)) if e.contains("no @cert-authority line")),
        "{verdict:?}"
    );
    assert!(handle.is_none());

    // ssh-keyscan -H writes the plain key, hashed: a client offering no certificate
    // algorithms gets the plain key, which that file pins.
    let scan = run(Command::new("ssh-keyscan").args([
        "-H",
        "-t",
        "ed25519",
        "-p",
        &PORT.to_string(),
        "127.0.0.1",
    ]));
    assert!(scan.starts_with("|1|"), "{scan}");
    std::fs::write(&known, &scan).unwrap();
    let (verdict, handle) = connect(
        PORT,
        HostKeyCheck::load(&known).unwrap(),
        names(&["build-host-7", &format!("[127.0.0.1]:{PORT}")]),
        false,
    )
    .await;
    assert_eq!(verdict, Some(Ok(())));
    assert!(handle.is_some());
    // The same file for a name it does not list: refused.
    let (verdict, handle) = connect(
        PORT,
        HostKeyCheck::load(&known).unwrap(),
        names(&["build-host-7", "127.0.0.1"]),
        false,
    )
    .await;
    assert!(
        matches!(&verdict, Some(Err(e)) if e.contains("is not in")),
        "{verdict:?}"
    );
    assert!(handle.is_none());
    drop(sshd);
}
