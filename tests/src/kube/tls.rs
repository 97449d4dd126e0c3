//! The stand-in's own CA (rcgen): the server's leaf certificate and client certificates for the
//! tests, and the rustls server configuration (ALPN `http/1.1` only: kubectl and client-go then
//! speak HTTP/1.1, which is what the gateway in front of the real API server has to handle too).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Who a client certificate authenticates, as the real API server reads it (CN = user, O =
/// groups). The stand-in does not parse X.509: it remembers the certificates it issued.
#[derive(Clone, Debug)]
pub struct CertIdentity {
    pub user: String,
    pub groups: Vec<String>,
}

/// A client certificate and its key, PEM.
#[derive(Clone, Debug)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

pub struct StandinCa {
    issuer: Issuer<'static, KeyPair>,
    pub ca_pem: String,
    ca_der: CertificateDer<'static>,
    /// sha256(DER) of each client certificate issued -> its identity.
    issued: Mutex<HashMap<[u8; 32], CertIdentity>>,
}

impl StandinCa {
    pub fn new() -> Result<Self, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "agentgate-tests kube-standin CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            ca_pem: cert.pem(),
            ca_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            issued: Mutex::new(HashMap::new()),
        })
    }

    /// The server's leaf certificate chain and key for these DNS names and addresses.
    fn server_leaf(
        &self,
        names: &[String],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        for name in names {
            params.subject_alt_names.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.clone().try_into()?),
            });
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone(), self.ca_der.clone()], key))
    }

    /// A client certificate the stand-in accepts as `user` in `groups`.
    pub fn issue_client_cert(&self, user: &str, groups: &[&str]) -> Result<ClientCert, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        for g in groups {
            params.distinguished_name.push(DnType::OrganizationName, *g);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let digest: [u8; 32] = Sha256::digest(cert.der()).into();
        self.issued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                digest,
                CertIdentity {
                    user: user.to_string(),
                    groups: groups.iter().map(|g| g.to_string()).collect(),
                },
            );
        Ok(ClientCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The identity of a verified client certificate, if this CA issued it through
    /// [`Self::issue_client_cert`].
    pub fn identity_of(&self, der: &[u8]) -> Option<CertIdentity> {
        let digest: [u8; 32] = Sha256::digest(der).into();
        self.issued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
            .cloned()
    }

    /// The server configuration: our leaf, client certificates optional (bearer tokens are the
    /// other way in), ALPN `http/1.1` only.
    pub fn server_config(&self, names: &[String]) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()?;
        let (chain, key) = self.server_leaf(names)?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}
