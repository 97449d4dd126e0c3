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

fn issue(
    target: &Target,
    tls: &HttpServerTls,
    dialled: IpAddr,
    now: SystemTime,
) -> Result<Arc<ServerConfig>, CertError> {
    let ca_cert = read(&tls.ca_cert)?;
    let ca_key = read(&tls.ca_key)?;
    let signing = KeyPair::from_pem(&ca_key).map_err(|error| CertError::CaKey {
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
    let chain: Vec<CertificateDer<'static>> = vec![leaf.der().clone()];
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
