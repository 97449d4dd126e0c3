//! TLS pieces any client of the gateway's uses (a target's upstream login, the central audit
//! sink): a verifying rustls client configuration, and the RFC 5929 channel-binding end point.

use std::{path::Path, sync::Arc};

use rustls_pki_types::{pem::PemObject, CertificateDer};
use sha2::{Digest, Sha256, Sha384, Sha512};

/// A client configuration that verifies the server's certificate and name against the
/// certificates in `ca_file` (PEM) if given, else against the web PKI roots. Errors name the
/// file.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    client_config_with_cert(ca_file, None)
}

/// As [`client_config`], presenting a client certificate (`cert_file`, `key_file`, PEM) when
/// one is given: the gateway's own identity toward a target that takes certificates (a
/// Kubernetes API server).
pub fn client_config_with_cert(
    ca_file: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for c in read_certs(path)? {
                roots.add(c).map_err(|e| format!("{}: {e}", show(path)))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_certs(cert)?;
            let pem = std::fs::read(key).map_err(|e| format!("{}: {e}", show(key)))?;
            let key_der = rustls_pki_types::PrivateKeyDer::from_pem_slice(&pem)
                .map_err(|e| format!("{}: {e}", show(key)))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("{}: {e}", show(cert)))?
        }
    };
    Ok(Arc::new(config))
}

/// Every certificate in a PEM file; none is an error naming the file.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", show(path)))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", show(path)))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificates", show(path)));
    }
    Ok(certs)
}

/// RFC 5929 `tls-server-end-point`: the server certificate (DER) hashed with the hash of its
/// signature (SHA-256 for SHA-1 and MD5), as PostgreSQL derives it. `None` when the algorithm
/// is not one of these (Ed25519, say) or the certificate does not parse; SCRAM then goes
/// without channel binding.
pub fn tls_server_end_point(der: &[u8]) -> Option<Vec<u8>> {
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, b) = b.split_first()?;
        let (&first, b) = b.split_first()?;
        let (len, b) = if first < 0x80 {
            (first as usize, b)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || b.len() < n {
                return None;
            }
            let len = b[..n].iter().fold(0usize, |a, &x| (a << 8) | x as usize);
            (len, &b[n..])
        };
        (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
    }
    let (0x30, cert, _) = tlv(der)? else {
        return None;
    };
    let (0x30, _tbs, rest) = tlv(cert)? else {
        return None;
    };
    let (0x30, alg, _) = tlv(rest)? else {
        return None;
    };
    let (0x06, oid, _) = tlv(alg)? else {
        return None;
    };
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    let bits = match oid {
        [p @ .., 0x04 | 0x05 | 0x0b] if p == RSA => 256,
        [p @ .., 0x0c] if p == RSA => 384,
        [p @ .., 0x0d] if p == RSA => 512,
        o if o == ECDSA_SHA1 => 256,
        [p @ .., 0x02] if p == ECDSA_SHA2 => 256,
        [p @ .., 0x03] if p == ECDSA_SHA2 => 384,
        [p @ .., 0x04] if p == ECDSA_SHA2 => 512,
        _ => return None,
    };
    Some(match bits {
        256 => Sha256::digest(der).to_vec(),
        384 => Sha384::digest(der).to_vec(),
        _ => Sha512::digest(der).to_vec(),
    })
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        cert.der().as_ref().to_vec()
    }

    #[test]
    fn channel_binding_hash_follows_the_signature() {
        let p384 = der(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(
            tls_server_end_point(&p384),
            Some(Sha384::digest(&p384).to_vec())
        );
        let p256 = der(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            tls_server_end_point(&p256),
            Some(Sha256::digest(&p256).to_vec())
        );
        assert_eq!(tls_server_end_point(&der(&rcgen::PKCS_ED25519)), None);
        assert_eq!(tls_server_end_point(b"junk"), None);
    }

    #[test]
    fn client_config_names_the_bad_file() {
        let e = client_config(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = client_config(Some(&empty)).unwrap_err();
        assert!(e.contains("no certificates"), "{e}");
        assert!(client_config(None).is_ok());
    }
}
