//! The gateway's connection to the target: dialled through the core's connector, TLS verified
//! in full (the target's CA and name, fail closed), HTTP/1.1 with upgrades. One upstream
//! connection per agent connection, so requests keep their order and an upgrade (Kubernetes
//! exec) stays on the connection that asked for it.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::{
    net::Connect,
    policy::{HttpTarget, UpstreamTls},
};

/// Request bodies go upstream whole: they were read, judged and recorded before.
pub type UpstreamBody = Full<Bytes>;
pub type Upstream = SendRequest<UpstreamBody>;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("upstream TLS configuration: {0}")]
    Config(String),
    #[error("`{0}` is not a server name upstream TLS can check")]
    ServerName(String),
    #[error("TLS with the target: {0}")]
    Handshake(std::io::Error),
    #[error("HTTP with the target: {0}")]
    Http(#[from] hyper::Error),
}

/// Opens the connection and starts HTTP on it; its driver runs as its own task and ends when
/// the returned sender is dropped (or the target hangs up).
pub async fn connect<C: Connect>(
    connector: &C,
    dst: SocketAddr,
    http: &HttpTarget,
) -> Result<Upstream, UpstreamError> {
    let tcp = connector
        .connect(dst)
        .await
        .map_err(|e| UpstreamError::Connect(dst, e))?;
    let _ = tcp.set_nodelay(true);
    match &http.upstream_tls {
        UpstreamTls::Disable => handshake(tcp).await,
        UpstreamTls::VerifyFull {
            ca_file,
            server_name,
        } => {
            let cert = http
                .upstream_client_tls
                .as_ref()
                .map(|c| (c.cert_file.as_path(), c.key_file.as_path()));
            let config = crate::tls::client_config_with_cert(ca_file.as_deref(), cert)
                .map_err(UpstreamError::Config)?;
            let mut config = (*config).clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = match server_name {
                Some(n) => ServerName::try_from(n.clone())
                    .map_err(|_| UpstreamError::ServerName(n.clone()))?,
                None => ServerName::IpAddress(dst.ip().into()),
            };
            let tls = TlsConnector::from(std::sync::Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(UpstreamError::Handshake)?;
            handshake(tls).await
        }
    }
}

async fn handshake<S>(io: S) -> Result<Upstream, UpstreamError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("upstream http connection: {e}");
        }
    });
    Ok(send)
}
