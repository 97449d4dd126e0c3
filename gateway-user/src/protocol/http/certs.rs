//! The certificates the agents see: a leaf per target (and per address the agent dialled),
//! signed by the certificate authority the target's `http.tls` names, kept until it nears its
//! end or the CA files change. The agent's client checks the leaf against the CA it already
//! trusts (a Kubernetes cluster's own CA, or an agentgate CA added to its kubeconfig), so
//! nothing about the client changes.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use rcgen::{CertificateParams, DistinguishedName, DnType, Issuer, KeyPair, SanType};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::policy::{HttpServerTls, Target};

/// A leaf lives a day; it is re-issued when less than an hour is left, so a session never sees
/// one expire under it.
const LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const RENEW_BEFORE: Duration = Duration::from_secs(3600);
/// Clocks of agents and the node disagree a little.
const BACKDATE: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("the CA certificate {path}: {error}")]
    CaCert { path: String, error: rcgen::Error },
    #[error("the CA key {path}: {error}")]
    CaKey { path: String, error: rcgen::Error },
    #[error("issuing the leaf certificate: {0}")]
    Issue(rcgen::Error),
    #[error("the TLS configuration: {0}")]
    Tls(rustls::Error),
}

/// A CA file's identity, to notice a rotation without a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<SystemTime>, u64);

fn stamp(path: &Path) -> Stamp {
    match std::fs::metadata(path) {
        Ok(m) => Stamp(m.modified().ok(), m.len()),
        Err(_) => Stamp(None, 0),
    }
}

struct Leaf {
    config: Arc<ServerConfig>,
    renew_at: SystemTime,
    stamps: (Stamp, Stamp),
    names: Vec<String>,
}

/// Issued leaves, by target and dialled address.
#[derive(Default)]
pub struct Leaves {
    issued: Mutex<HashMap<(String, IpAddr), Leaf>>,
}

impl Leaves {
    /// The server configuration for an agent of `target` that dialled `dialled`: a cached
    /// leaf, or a new one.
    pub fn config(
        &self,
        target: &Target,
        tls: &HttpServerTls,
        dialled: IpAddr,
    ) -> Result<Arc<ServerConfig>, CertError> {
        let key = (target.name.clone(), dialled);
        let stamps = (stamp(&tls.ca_cert), stamp(&tls.ca_key));
        let now = SystemTime::now();
        if let Ok(issued) = self.issued.lock() {
            if let Some(leaf) = issued.get(&key) {
                if leaf.renew_at > now && leaf.stamps == stamps && leaf.names == tls.names {
                    return Ok(leaf.config.clone());
                }
            }
        }
        // Issued off the lock: signing takes a moment, and two agents issuing at once only
        // costs a second signature.
        let config = issue(target, tls, dialled, now)?;
        if let Ok(mut issued) = self.issued.lock() {
            issued.insert(
                key,
                Leaf {
                    config: config.clone(),
                    renew_at: now + LEAF_LIFETIME - RENEW_BEFORE,
                    stamps,
                    names: tls.names.clone(),
                },
            );
        }
        Ok(config)
    }
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|error| CertError::Read {
        path: path.display().to_string(),
        error,
    })
}

/// The names a leaf carries: the configured names, the target's single addresses and the
/// address the agent dialled (an agent may reach the target by an address of a range).
fn subject_alt_names(target: &Target, tls: &HttpServerTls, dialled: IpAddr) -> Vec<SanType> {
    let mut ips: Vec<IpAddr> = vec![dialled];
    for net in &target.addresses {
        if net.prefix_len() == net.max_prefix_len() && !ips.contains(&net.addr()) {
            ips.push(net.addr());
        }
    }
    let mut sans = Vec::new();
    for name in &tls.names {
        match name.parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) => {
                if let Ok(dns) = name.clone().try_into() {
                    sans.push(SanType::DnsName(dns));
                }
            }
        }
    }
    sans.extend(ips.into_iter().map(SanType::IpAddress));
    sans
}

/// The CA's key, in whichever PEM form a cluster keeps it: PKCS#8, or kubeadm's PKCS#1 RSA
/// (`BEGIN RSA PRIVATE KEY`) or an SEC1 EC key (`BEGIN EC PRIVATE KEY`, k3s), which are wrapped
/// into PKCS#8 (the form the signing library reads).
fn ca_key_pair(pem: &str) -> Result<KeyPair, rcgen::Error> {
    use rustls_pki_types::pem::PemObject;
    let parsed = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| rcgen::Error::CouldNotParseKeyPair)?;
    let pkcs8 = match parsed {
        PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        PrivateKeyDer::Pkcs1(k) => pkcs8_wrap(RSA_ALGORITHM, k.secret_pkcs1_der()),
        PrivateKeyDer::Sec1(k) => {
            let der = k.secret_sec1_der();
            let alg = EC_CURVES
                .iter()
                .find(|(oid, _)| der.windows(oid.len()).any(|w| w == *oid))
                .map(|(_, alg)| *alg)
                .ok_or(rcgen::Error::CouldNotParseKeyPair)?;
            pkcs8_wrap(alg, der)
        }
        _ => return Err(rcgen::Error::CouldNotParseKeyPair),
    };
    KeyPair::try_from(pkcs8.as_slice())
}

/// AlgorithmIdentifier of rsaEncryption (1.2.840.113549.1.1.1) with NULL parameters, DER.
const RSA_ALGORITHM: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];
/// The curves' OIDs as they appear in an SEC1 key, and the AlgorithmIdentifier of
/// id-ecPublicKey (1.2.840.10045.2.1) on that curve, DER.
const EC_CURVES: &[(&[u8], &[u8])] = &[
    (
        &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
        &[
            0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
            0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
        ],
    ),
    (
        &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
        &[
            0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
            0x81, 0x04, 0x00, 0x22,
        ],
    ),
];

/// PrivateKeyInfo { version 0, algorithm, privateKey OCTET STRING } (RFC 5208), DER.
fn pkcs8_wrap(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = content.len();
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes: Vec<u8> = n
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(content);
        out
    }
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend_from_slice(algorithm);
    body.extend(tlv(0x04, key));
    tlv(0x30, &body)
}

fn issue(
    target: &Target,
    tls: &HttpServerTls,
    dialled: IpAddr,
    now: SystemTime,
) -> Result<Arc<ServerConfig>, CertError> {
    let (leaf, key) = issue_leaf(target, tls, dialled, now)?;
    server_config(leaf, &key)
}

/// A leaf certificate (DER) and its key.
fn issue_leaf(
    target: &Target,
    tls: &HttpServerTls,
    dialled: IpAddr,
    now: SystemTime,
) -> Result<(CertificateDer<'static>, KeyPair), CertError> {
    let ca_cert = read(&tls.ca_cert)?;
    let ca_key = read(&tls.ca_key)?;
    let signing = ca_key_pair(&ca_key).map_err(|error| CertError::CaKey {
        path: tls.ca_key.display().to_string(),
        error,
    })?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca_cert, signing).map_err(|error| CertError::CaCert {
            path: tls.ca_cert.display().to_string(),
            error,
        })?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = subject_alt_names(target, tls, dialled);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("agentgate {}", target.name));
    params.distinguished_name = dn;
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + LEAF_LIFETIME).into();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().map_err(CertError::Issue)?;
    let leaf = params
        .signed_by(&leaf_key, &issuer)
        .map_err(CertError::Issue)?;
    Ok((leaf.der().clone(), leaf_key))
}

fn server_config(
    leaf: CertificateDer<'static>,
    leaf_key: &KeyPair,
) -> Result<Arc<ServerConfig>, CertError> {
    let chain: Vec<CertificateDer<'static>> = vec![leaf];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(CertError::Tls)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(CertError::Tls)?;
    // HTTP/1.1 only: every request is judged one at a time on its connection, and Kubernetes'
    // exec upgrade needs HTTP/1.1 anyway. Clients that prefer h2 (client-go) fall back.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn openssl(args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn target() -> Target {
        let dir = tempfile::tempdir().expect("dir");
        let yaml = "version: 2\ntargets:\n  - name: api\n    protocol: tcp\n    addresses: [\"127.0.0.2\"]\n    ports: [6443]\n";
        std::fs::write(dir.path().join("p.yaml"), yaml).expect("policy");
        let policy = crate::policy::load_dir(dir.path()).expect("loads");
        policy.targets[0].clone()
    }

    /// A cluster CA as kubeadm makes it (RSA; its key PKCS#1 or PKCS#8) and an EC CA both sign
    /// leaves; the leaf names the configured names and the dialled address.
    #[test]
    fn leaves_are_issued_by_rsa_and_ec_cas() {
        let dir = tempfile::tempdir().expect("dir");
        let d = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
        openssl(&["genrsa", "-traditional", "-out", &d("rsa1.key"), "2048"]);
        openssl(&["genpkey", "-algorithm", "RSA", "-out", &d("rsa8.key")]);
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &d("ec.key"),
        ]);
        openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &d("sec1.key"),
        ]);
        openssl(&[
            "ecparam",
            "-name",
            "secp384r1",
            "-genkey",
            "-noout",
            "-out",
            &d("sec1-384.key"),
        ]);
        for key in ["rsa1.key", "rsa8.key", "ec.key", "sec1.key", "sec1-384.key"] {
            let cert = d(&format!("{key}.crt"));
            let cert_path = cert.clone();
            openssl(&[
                "req",
                "-x509",
                "-new",
                "-key",
                &d(key),
                "-days",
                "1",
                "-subj",
                "/CN=kubernetes",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-out",
                &cert,
            ]);
            let tls = HttpServerTls {
                ca_cert: cert.into(),
                ca_key: d(key).into(),
                names: vec!["kubernetes.default.svc".into()],
            };
            let leaves = Leaves::default();
            let dialled: IpAddr = "127.0.0.2".parse().expect("ip");
            let issued = leaves.config(&target(), &tls, dialled);
            assert!(issued.is_ok(), "{key}: {:?}", issued.err());
            // Cached: the same configuration the second time.
            let again = leaves.config(&target(), &tls, dialled).expect("cached");
            assert!(Arc::ptr_eq(&issued.expect("issued"), &again), "{key}");
            // The leaf verifies against the CA for its names (OpenSSL's own check).
            let (leaf, _) = issue_leaf(&target(), &tls, dialled, SystemTime::now()).expect("leaf");
            let pem = d(&format!("{key}.leaf.pem"));
            let b64 = {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(leaf.as_ref())
            };
            let lines: Vec<&str> = b64
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap_or_default())
                .collect();
            let text = format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                lines.join("\n")
            );
            std::fs::write(&pem, text).expect("write leaf");
            for name in [
                vec!["-verify_hostname", "kubernetes.default.svc"],
                vec!["-verify_ip", "127.0.0.2"],
            ] {
                let mut args = vec!["verify", "-CAfile", &cert_path];
                args.extend(name.iter().copied());
                args.push(&pem);
                openssl(&args);
            }
        }
    }
}
