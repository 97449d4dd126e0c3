//! TLS helpers for PostgreSQL connections: the gateway's own TLS server side for agents that
//! insist on TLS (`sslmode=require`), and the client side shared by the gateway's login to a
//! target (`backend`) and the audit sink (`record::sink`).

use std::{path::Path, sync::Arc};

use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

use crate::policy::ClientTls;
pub use crate::tls::{client_config, tls_server_end_point};

pub fn server_config(tls: &ClientTls) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", show(&tls.cert_file)))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|e| format!("{}: {e}", show(&tls.key_file)))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

fn show(p: &Path) -> String {
    p.display().to_string()
}
