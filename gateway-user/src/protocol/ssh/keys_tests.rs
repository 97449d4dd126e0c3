//! Checked against the real OpenSSH tools (Debian's openssh-client: ssh-keygen, ssh-keyscan;
//! openssh-server's sshd for the end-to-end check): what they print and accept is the contract.

use std::{os::unix::fs::PermissionsExt, process::Command};

use super::*;

pub(super) fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub(super) fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `ssh-keygen -t TYPE` into `dir/name` (and `name.pub`), unencrypted, mode 0600.
pub(super) fn keygen(dir: &Path, name: &str, kind: &str) -> PathBuf {
    let path = dir.join(name);
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", "", "-C", name, "-f"])
        .arg(&path));
    path
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub(super) fn pub_line(path: &Path) -> String {
    let text = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    let mut f = text.split_whitespace();
    format!("{} {}", f.next().unwrap(), f.next().unwrap())
}

pub(super) fn public(path: &Path) -> PublicKey {
    PublicKey::read_openssh_file(path.with_extension("pub")).unwrap()
}

pub(super) fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// `ssh-keygen -L -f` on the certificate, with times in UTC.
fn keygen_list(dir: &Path, cert: &Certificate) -> String {
    let path = dir.join("list-cert.pub");
    std::fs::write(&path, cert.to_openssh().unwrap()).unwrap();
    run(Command::new("ssh-keygen")
        .env("TZ", "UTC")
        .arg("-L")
        .arg("-f")
        .arg(&path))
}

fn utc(secs: u64) -> String {
    run(Command::new("date").args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%S"]))
        .trim()
        .to_string()
}

/// The lines of `ssh-keygen -L` after `header` that are indented deeper than it.
fn listed(out: &str, header: &str) -> Vec<String> {
    let mut lines = out.lines();
    let Some(h) = lines.by_ref().find(|l| l.trim_start().starts_with(header)) else {
        panic!("no {header} in\n{out}");
    };
    let rest = h.trim_start().trim_start_matches(header).trim();
    if !rest.is_empty() {
        return vec![rest.to_string()];
    }
    let indent = h.len() - h.trim_start().len();
    lines
        .take_while(|l| l.len() - l.trim_start().len() > indent)
        .map(|l| l.trim().to_string())
        .collect()
}

fn field<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.trim_start().strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in\n{out}"))
        .trim()
}

// ---- files ----

#[test]
fn private_key_loads_and_matches_its_public_half() {
    let dir = tmp();
    for kind in ["ed25519", "ecdsa", "rsa"] {
        let path = keygen(dir.path(), kind, kind);
        let key = load_private_key(&path).unwrap();
        assert_eq!(
            key.public_key().key_data(),
            public(&path).key_data(),
            "{kind}"
        );
    }
}

#[test]
fn private_key_readable_by_group_or_others_is_refused() {
    let dir = tmp();
    let path = keygen(dir.path(), "k", "ed25519");
    for mode in [0o640, 0o604, 0o644, 0o660] {
        chmod(&path, mode);
        let err = load_private_key(&path).unwrap_err();
        assert!(
            matches!(err, KeyError::Permissions { .. }),
            "{mode:o}: {err}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("group or others"), "{msg}");
    }
    chmod(&path, 0o400);
    load_private_key(&path).unwrap();
}

#[test]
fn encrypted_or_garbage_private_key_is_refused() {
    let dir = tmp();
    let path = dir.path().join("enc");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "a passphrase", "-f"])
        .arg(&path));
    let err = load_private_key(&path).unwrap_err();
    assert!(matches!(err, KeyError::Encrypted { .. }), "{err}");

    let junk = dir.path().join("junk");
    std::fs::write(&junk, "not a key\n").unwrap();
    chmod(&junk, 0o600);
    let err = load_private_key(&junk).unwrap_err();
    assert!(matches!(err, KeyError::PrivateKey { .. }), "{err}");
    assert!(err.to_string().contains("junk"), "{err}");

    let missing = dir.path().join("missing");
    assert!(matches!(
        load_private_key(&missing).unwrap_err(),
        KeyError::Io { .. }
    ));
    assert!(matches!(
        load_private_key(dir.path()).unwrap_err(),
        KeyError::NotAFile { .. } | KeyError::Permissions { .. }
    ));
}

#[test]
fn secret_needs_32_bytes_and_owner_only_mode() {
    let dir = tmp();
    let path = dir.path().join("secret");
    std::fs::write(&path, [7u8; 31]).unwrap();
    chmod(&path, 0o600);
    assert!(matches!(
        load_secret(&path).unwrap_err(),
        KeyError::ShortSecret { len: 31, .. }
    ));
    std::fs::write(&path, [7u8; 32]).unwrap();
    assert_eq!(load_secret(&path).unwrap(), vec![7u8; 32]);
    chmod(&path, 0o644);
    assert!(matches!(
        load_secret(&path).unwrap_err(),
        KeyError::Permissions { mode: 0o644, .. }
    ));
}

// ---- derived host keys ----

#[test]
fn derived_host_key_is_stable_and_differs_per_target_and_secret() {
    let secret = [1u8; 32];
    let a = derive_host_key(&secret, "build-host");
    let again = derive_host_key(&secret, "build-host");
    assert_eq!(a.public_key().key_data(), again.public_key().key_data());
    assert_eq!(a.algorithm(), ssh_key::Algorithm::Ed25519);
    let other_target = derive_host_key(&secret, "build-host2");
    assert_ne!(
        a.public_key().key_data(),
        other_target.public_key().key_data()
    );
    let other_secret = derive_host_key(&[2u8; 32], "build-host");
    assert_ne!(
        a.public_key().key_data(),
        other_secret.public_key().key_data()
    );
    // A known answer, so a change of the derivation (which would change every deployed host
    // key, and every client's pinned one) cannot pass unnoticed.
    assert_eq!(
        a.public_key().key_data(),
        PublicKey::from_openssh(KNOWN_PUBLIC).unwrap().key_data()
    );

    // OpenSSH reads the derived key and computes the same public key from it.
    let dir = tmp();
    let path = dir.path().join("derived");
    std::fs::write(&path, a.to_openssh(ssh_key::LineEnding::LF).unwrap()).unwrap();
    chmod(&path, 0o600);
    let public = run(Command::new("ssh-keygen").arg("-y").arg("-f").arg(&path));
    assert_eq!(
        PublicKey::from_openssh(public.trim()).unwrap().key_data(),
        a.public_key().key_data()
    );
}

/// The public half of `derive_host_key(&[1; 32], "build-host")`, computed apart from this code
/// with Python's `cryptography` (HKDF(SHA256, salt None, info b"agentgate ssh host key v1\0"
/// b"build-host") over 32 bytes of 0x01, then Ed25519PrivateKey.from_private_bytes).
const KNOWN_PUBLIC: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGCSDVP+uKZ2s33Usoj7SQnXDQk0dhW+1pT56Ts2Hem6";

#[test]
fn session_keys_are_fresh() {
    let a = session_key();
    let b = session_key();
    assert_eq!(a.algorithm(), ssh_key::Algorithm::Ed25519);
    assert_ne!(a.public_key().key_data(), b.public_key().key_data());
}

// ---- certificates, as ssh-keygen -L reads them ----

#[test]
fn host_certificate_as_ssh_keygen_lists_it() {
    let dir = tmp();
    let ca = load_private_key(&keygen(dir.path(), "ca", "ed25519")).unwrap();
    let host = derive_host_key(&[3u8; 32], "build-host");
    let now = SystemTime::now();
    let secs = unix_secs(now).unwrap();
    let principals = names(&["build-host-7", "127.0.0.1", "[127.0.0.1]:22022"]);
    let cert = host_certificate(
        &ca,
        host.public_key(),
        &principals,
        now,
        Duration::from_secs(3600),
    )
    .unwrap();
    let out = keygen_list(dir.path(), &cert);
    assert_eq!(
        field(&out, "Type:"),
        "ssh-ed25519-cert-v01@openssh.com host certificate",
        "{out}"
    );
    assert_eq!(field(&out, "Key ID:"), "\"agentgate host build-host-7\"");
    assert_eq!(
        field(&out, "Valid:"),
        format!("from {} to {}", utc(secs - 300), utc(secs + 3600))
    );
    assert_eq!(listed(&out, "Principals:"), principals);
    assert_eq!(listed(&out, "Critical Options:"), ["(none)"]);
    assert_eq!(listed(&out, "Extensions:"), ["(none)"]);
    assert!(
        field(&out, "Signing CA:")
            .contains(&ca.public_key().fingerprint(HashAlg::Sha256).to_string()),
        "{out}"
    );
    assert!(
        field(&out, "Public key:")
            .contains(&host.public_key().fingerprint(HashAlg::Sha256).to_string()),
        "{out}"
    );

    // Random serials: two certificates for the same key differ.
    let again = host_certificate(
        &ca,
        host.public_key(),
        &principals,
        now,
        Duration::from_secs(3600),
    )
    .unwrap();
    assert_ne!(cert.serial(), again.serial());
    assert_eq!(field(&out, "Serial:"), cert.serial().to_string());

    // No principal would be a certificate for every host.
    assert!(matches!(
        host_certificate(&ca, host.public_key(), &[], now, Duration::from_secs(60)),
        Err(KeyError::Certificate(_))
    ));
}

#[test]
fn host_certificate_by_an_rsa_ca() {
    let dir = tmp();
    let ca = load_private_key(&keygen(dir.path(), "ca", "rsa")).unwrap();
    let host = derive_host_key(&[3u8; 32], "build-host");
    let cert = host_certificate(
        &ca,
        host.public_key(),
        &names(&["h"]),
        SystemTime::now(),
        Duration::from_secs(60),
    )
    .unwrap();
    let out = keygen_list(dir.path(), &cert);
    assert!(field(&out, "Signing CA:").starts_with("RSA "), "{out}");
}

#[test]
fn user_certificate_as_ssh_keygen_lists_it() {
    let dir = tmp();
    let ca = load_private_key(&keygen(dir.path(), "ca", "ed25519")).unwrap();
    let user = session_key();
    let now = SystemTime::now();
    let secs = unix_secs(now).unwrap();
    let key_id = "agentgate https://issuer.example#ci-agent-17 session 42";
    let cert = user_certificate(
        &ca,
        user.public_key(),
        "deploy",
        key_id,
        now,
        Duration::from_secs(300),
        &UserExtensions::default(),
    )
    .unwrap();
    let out = keygen_list(dir.path(), &cert);
    assert_eq!(
        field(&out, "Type:"),
        "ssh-ed25519-cert-v01@openssh.com user certificate",
        "{out}"
    );
    assert_eq!(field(&out, "Key ID:"), format!("\"{key_id}\""));
    assert_eq!(
        field(&out, "Valid:"),
        format!("from {} to {}", utc(secs - 300), utc(secs + 300))
    );
    assert_eq!(listed(&out, "Principals:"), ["deploy"]);
    assert_eq!(listed(&out, "Critical Options:"), ["(none)"]);
    assert_eq!(listed(&out, "Extensions:"), ["permit-pty"]);

    let all = UserExtensions {
        port_forwarding: true,
        agent_forwarding: true,
        x11_forwarding: true,
    };
    let cert = user_certificate(
        &ca,
        user.public_key(),
        "deploy",
        key_id,
        now,
        Duration::from_secs(300),
        &all,
    )
    .unwrap();
    let mut ext = listed(&keygen_list(dir.path(), &cert), "Extensions:");
    ext.sort();
    assert_eq!(
        ext,
        [
            "permit-X11-forwarding",
            "permit-agent-forwarding",
            "permit-port-forwarding",
            "permit-pty"
        ]
    );
    let only_agent = UserExtensions {
        agent_forwarding: true,
        ..Default::default()
    };
    let cert = user_certificate(
        &ca,
        user.public_key(),
        "deploy",
        key_id,
        now,
        Duration::from_secs(300),
        &only_agent,
    )
    .unwrap();
    let mut ext = listed(&keygen_list(dir.path(), &cert), "Extensions:");
    ext.sort();
    assert_eq!(ext, ["permit-agent-forwarding", "permit-pty"]);

    assert!(matches!(
        user_certificate(
            &ca,
            user.public_key(),
            "",
            key_id,
            now,
            Duration::from_secs(300),
            &all
        ),
        Err(KeyError::Certificate(_))
    ));
}

// ---- known_hosts ----

fn check_file(dir: &Path, text: &str) -> HostKeyCheck {
    let path = dir.join("known_hosts");
    std::fs::write(&path, text).unwrap();
    HostKeyCheck::load(&path).unwrap()
}

fn plain(key: &Path) -> PublicKeyOrCertificate {
    public(key).into()
}

/// `ssh-keygen -s CA -I id ARGS KEY.pub`, read back as a certificate.
fn keygen_sign(ca: &Path, key: &Path, args: &[&str]) -> PublicKeyOrCertificate {
    run(Command::new("ssh-keygen")
        .arg("-q")
        .arg("-s")
        .arg(ca)
        .args(["-I", "test-cert"])
        .args(args)
        .arg(key.with_extension("pub")));
    let cert_path = PathBuf::from(format!("{}-cert.pub", key.display()));
    let text = std::fs::read_to_string(&cert_path).unwrap();
    std::fs::remove_file(&cert_path).unwrap();
    Certificate::from_openssh(text.trim()).unwrap().into()
}

#[test]
fn plain_lines_match_names_and_ports() {
    let dir = tmp();
    let host = keygen(dir.path(), "host", "ed25519");
    let other = keygen(dir.path(), "other", "ed25519");
    let check = check_file(
        dir.path(),
        &format!(
            "# comment\n\nBuild-Host-7,10.0.0.9 {} a comment\n[127.0.0.1]:22022 {}\n",
            pub_line(&host),
            pub_line(&host)
        ),
    );
    check
        .check(&names(&["build-host-7"]), &plain(&host))
        .unwrap();
    check.check(&names(&["10.0.0.9"]), &plain(&host)).unwrap();
    check
        .check(&names(&["x", "[127.0.0.1]:22022"]), &plain(&host))
        .unwrap();
    // The port is part of the name: 127.0.0.1 (port 22) is not listed.
    let err = check
        .check(&names(&["127.0.0.1"]), &plain(&host))
        .unwrap_err();
    assert!(
        matches!(&err, HostKeyError::Unknown { other_lines, .. } if other_lines.is_empty()),
        "{err}"
    );
    // Another key for a listed name: refused, naming the line that holds the listed key.
    let err = check
        .check(&names(&["build-host-7"]), &plain(&other))
        .unwrap_err();
    assert!(
        matches!(&err, HostKeyError::Unknown { other_lines, .. } if other_lines == &[3]),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("build-host-7") && msg.contains("SHA256:"),
        "{msg}"
    );
}

#[test]
fn wildcards_and_negations() {
    let dir = tmp();
    let host = keygen(dir.path(), "host", "ed25519");
    let check = check_file(
        dir.path(),
        &format!(
            "*.example.net,!bad.example.net,10.1.?.1 {}\n",
            pub_line(&host)
        ),
    );
    check
        .check(&names(&["a.example.net"]), &plain(&host))
        .unwrap();
    check.check(&names(&["10.1.7.1"]), &plain(&host)).unwrap();
    for refused in [
        "bad.example.net",
        "example.net",
        "10.1.17.1",
        "a.example.net.evil",
    ] {
        assert!(
            check.check(&names(&[refused]), &plain(&host)).is_err(),
            "{refused}"
        );
    }
}

#[test]
fn hashed_lines_as_ssh_keygen_writes_them() {
    let dir = tmp();
    let host = keygen(dir.path(), "host", "ed25519");
    let path = dir.path().join("known_hosts");
    std::fs::write(
        &path,
        format!(
            "build-host-7 {k}\n[127.0.0.1]:22022 {k}\n",
            k = pub_line(&host)
        ),
    )
    .unwrap();
    run(Command::new("ssh-keygen").arg("-H").arg("-f").arg(&path));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.lines().all(|l| l.starts_with("|1|")),
        "ssh-keygen -H did not hash:\n{text}"
    );
    let check = HostKeyCheck::load(&path).unwrap();
    check
        .check(&names(&["build-host-7"]), &plain(&host))
        .unwrap();
    check
        .check(&names(&["[127.0.0.1]:22022"]), &plain(&host))
        .unwrap();
    check
        .check(&names(&["BUILD-HOST-7"]), &plain(&host))
        .unwrap();
    assert!(check
        .check(&names(&["127.0.0.1", "build-host-8"]), &plain(&host))
        .is_err());
    let other = keygen(dir.path(), "other", "ed25519");
    assert!(matches!(
        check.check(&names(&["build-host-7"]), &plain(&other)),
        Err(HostKeyError::Unknown { .. })
    ));
}

#[test]
fn unparsable_lines_fail_the_load() {
    let dir = tmp();
    let host = keygen(dir.path(), "host", "ed25519");
    let k = pub_line(&host);
    let ca = keygen(dir.path(), "ca", "ed25519");
    let cert = keygen_sign(&ca, &host, &["-h", "-n", "h"]);
    let PublicKeyOrCertificate::Certificate(cert) = cert else {
        unreachable!()
    };
    for (text, says) in [
        (
            format!("h {k}\n@trusted h {k}\n"),
            "known_hosts:2: unknown marker",
        ),
        (
            format!("h {k}\n\nh ssh-ed25519 AAAA!!notbase64\n"),
            "known_hosts:3:",
        ),
        ("h\n".to_string(), "no key"),
        ("@cert-authority\n".to_string(), "nothing after"),
        (format!("|1|notbase64|x {k}\n"), "host names"),
        (format!("h {}\n", cert.to_openssh().unwrap()), "certificate"),
    ] {
        let path = dir.path().join("known_hosts");
        std::fs::write(&path, &text).unwrap();
        let err = HostKeyCheck::load(&path).unwrap_err().to_string();
        assert!(err.contains(says), "{text:?}: {err}");
        assert!(err.contains("known_hosts:"), "{err}");
    }
}

#[test]
fn revoked_keys_are_refused_even_when_listed() {
    let dir = tmp();
    let host = keygen(dir.path(), "host", "ed25519");
    let check = check_file(
        dir.path(),
        &format!("h {k}\n@revoked other-host {k}\n", k = pub_line(&host)),
    );
    let err = check.check(&names(&["h"]), &plain(&host)).unwrap_err();
    assert!(
        matches!(err, HostKeyError::Revoked { line: 2, .. }),
        "{err}"
    );
}

#[test]
fn cert_authority_lines() {
    let dir = tmp();
    let ca = keygen(dir.path(), "ca", "ed25519");
    let other_ca = keygen(dir.path(), "other_ca", "ed25519");
    let host = keygen(dir.path(), "host", "ed25519");
    let check = check_file(
        dir.path(),
        &format!(
            "@cert-authority build-host-7,[127.0.0.1]:22022 {}\n",
            pub_line(&ca)
        ),
    );
    assert!(check.has_cert_authorities());
    let ok = |c: &PublicKeyOrCertificate, n: &[&str]| check.check(&names(n), c);

    // Signed by ssh-keygen for the name: accepted, for any of the names the line lists.
    let good = keygen_sign(
        &ca,
        &host,
        &["-h", "-n", "build-host-7,127.0.0.1", "-V", "-5m:+1h"],
    );
    ok(&good, &["build-host-7"]).unwrap();
    ok(&good, &["[127.0.0.1]:22022", "127.0.0.1"]).unwrap();
    // The CA line does not cover this name.
    assert!(matches!(
        ok(&good, &["127.0.0.1"]),
        Err(HostKeyError::UnknownCa { .. })
    ));
    // The plain key inside the certificate is not trusted on its own.
    assert!(ok(&plain(&host), &["build-host-7"]).is_err());

    let refused = |c: PublicKeyOrCertificate, says: &str| {
        let err = ok(&c, &["build-host-7"]).unwrap_err();
        assert!(err.to_string().contains(says), "want {says:?}: {err}");
        err
    };
    let err = refused(
        keygen_sign(&other_ca, &host, &["-h", "-n", "build-host-7"]),
        "no @cert-authority line",
    );
    assert!(matches!(err, HostKeyError::UnknownCa { .. }));
    refused(
        keygen_sign(
            &ca,
            &host,
            &["-h", "-n", "build-host-7", "-V", "20200101:20200102"],
        ),
        "expired",
    );
    refused(
        keygen_sign(&ca, &host, &["-h", "-n", "build-host-7", "-V", "+1d:+2d"]),
        "not valid yet",
    );
    refused(
        keygen_sign(&ca, &host, &["-h", "-n", "build-host-8"]),
        "principals",
    );
    // ssh-keygen without -n: valid for every host, which the gateway does not take.
    refused(keygen_sign(&ca, &host, &["-h"]), "principals");
    // A user certificate (no -h) for the same name.
    refused(
        keygen_sign(&ca, &host, &["-n", "build-host-7"]),
        "not a host certificate",
    );

    // Our own host certificate with a critical option: OpenSSH defines none for hosts.
    let ca_key = load_private_key(&ca).unwrap();
    let now = unix_secs(SystemTime::now()).unwrap();
    let mut b = Builder::new(
        vec![0u8; 16],
        public(&host).key_data().clone(),
        now - 60,
        now + 60,
    )
    .unwrap();
    b.cert_type(CertType::Host).unwrap();
    b.valid_principal("build-host-7").unwrap();
    b.critical_option("force-command", "true").unwrap();
    refused(b.sign(&ca_key).unwrap().into(), "critical options");
}

#[test]
fn certificate_with_a_broken_signature_is_refused() {
    // Build a valid certificate, then change one signed field (the serial) in its encoding: the
    // CA's signature no longer covers it.
    let dir = tmp();
    let ca = keygen(dir.path(), "ca", "ed25519");
    let check = check_file(
        dir.path(),
        &format!("@cert-authority h {}\n", pub_line(&ca)),
    );
    let ca_key = load_private_key(&ca).unwrap();
    let host = session_key();
    let cert = host_certificate(
        &ca_key,
        host.public_key(),
        &names(&["h"]),
        SystemTime::now(),
        Duration::from_secs(60),
    )
    .unwrap();
    check.check(&names(&["h"]), &cert.clone().into()).unwrap();
    let mut bytes = cert.to_bytes().unwrap();
    let serial = cert.serial().to_be_bytes();
    let at = bytes
        .windows(8)
        .position(|w| w == serial)
        .expect("serial in the encoding");
    bytes[at + 7] ^= 1;
    let tampered = Certificate::from_bytes(&bytes).unwrap();
    let err = check.check(&names(&["h"]), &tampered.into()).unwrap_err();
    assert!(err.to_string().contains("signature"), "{err}");
}

#[test]
fn revoked_certificate_key_or_ca_is_refused() {
    let dir = tmp();
    let ca = keygen(dir.path(), "ca", "ed25519");
    let host = keygen(dir.path(), "host", "ed25519");
    let cert = keygen_sign(&ca, &host, &["-h", "-n", "h"]);
    for revoked in [&host, &ca] {
        let check = check_file(
            dir.path(),
            &format!(
                "@cert-authority h {}\n@revoked * {}\n",
                pub_line(&ca),
                pub_line(revoked)
            ),
        );
        assert!(
            matches!(
                check.check(&names(&["h"]), &cert),
                Err(HostKeyError::Revoked { line: 2, .. })
            ),
            "{}",
            revoked.display()
        );
    }
}

#[test]
fn certificate_from_an_unlisted_ca_falls_back_to_a_pinned_plain_key() {
    // As OpenSSH: the key inside a certificate that no listed CA signed is checked as a plain key.
    let dir = tmp();
    let ca = keygen(dir.path(), "ca", "ed25519");
    let host = keygen(dir.path(), "host", "ed25519");
    let cert = keygen_sign(&ca, &host, &["-h", "-n", "h"]);
    let check = check_file(dir.path(), &format!("h {}\n", pub_line(&host)));
    check.check(&names(&["h"]), &cert).unwrap();
    let check = check_file(dir.path(), "");
    assert!(matches!(
        check.check(&names(&["h"]), &cert),
        Err(HostKeyError::UnknownCa { .. })
    ));
    assert!(!check.has_cert_authorities());
}

#[test]
fn names_as_ssh_looks_them_up() {
    let hn = names(&["build-host-7"]);
    assert_eq!(
        HostKeyCheck::names("build", &hn, "127.0.0.1:22022".parse().unwrap()),
        ["build", "build-host-7", "[127.0.0.1]:22022"]
    );
    assert_eq!(
        HostKeyCheck::names("build", &[], "10.0.0.9:22".parse().unwrap()),
        ["build", "10.0.0.9"]
    );
    assert_eq!(
        HostKeyCheck::names("build", &[], "[::1]:22".parse().unwrap()),
        ["build", "::1"]
    );
    assert_eq!(
        HostKeyCheck::names("build", &[], "[::1]:2222".parse().unwrap()),
        ["build", "[::1]:2222"]
    );
    // An IPv4 peer seen through an IPv6 socket is looked up as IPv4.
    assert_eq!(
        HostKeyCheck::names("build", &[], "[::ffff:127.0.0.1]:2222".parse().unwrap()),
        ["build", "[127.0.0.1]:2222"]
    );
}

#[test]
fn glob_matches_like_openssh() {
    for (p, t, want) in [
        ("*", "", true),
        ("*", "abc", true),
        ("a*c", "abbbc", true),
        ("a*c", "abbbd", false),
        ("a?c", "abc", true),
        ("a?c", "ac", false),
        ("*.x", "a.b.x", true),
        ("**", "a", true),
        ("", "", true),
        ("", "a", false),
        ("a", "", false),
        ("*a*b", "xaxxb", true),
        ("*a*b", "xaxxbx", false),
    ] {
        assert_eq!(glob(p.as_bytes(), t.as_bytes()), want, "{p:?} {t:?}");
    }
}
