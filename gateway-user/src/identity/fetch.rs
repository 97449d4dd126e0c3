//! Minimal HTTP(S) GET for JWKS and discovery documents: rustls (ring), connect and read
//! timeouts, a body size cap, no redirects, plain http:// only to loopback, and SO_MARK on every
//! socket it opens.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Either, Empty, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};

use super::error::FetchError;

pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const MAX_BODY: usize = 1024 * 1024;

/// A checked http(s) URL.
#[derive(Debug, Clone)]
pub(crate) struct HttpUrl {
    pub tls: bool,
    /// Host without IPv6 brackets.
    pub host: String,
    pub port: u16,
    pub authority: String,
    pub path_and_query: String,
}

impl HttpUrl {
    pub(crate) fn parse(url: &str) -> Result<Self, FetchError> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| FetchError::InvalidUrl(e.to_string()))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(FetchError::InvalidUrl("scheme must be https".into())),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| FetchError::InvalidUrl("no host".into()))?;
        if authority.as_str().contains('@') {
            return Err(FetchError::InvalidUrl("credentials in URL".into()));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(FetchError::InvalidUrl("empty host".into()));
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        if !tls && !is_loopback_host(&host) {
            return Err(FetchError::InsecureUrl);
        }
        let path_and_query = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".to_string());
        Ok(HttpUrl {
            tls,
            host,
            port,
            authority: authority.as_str().to_string(),
            path_and_query,
        })
    }
}

fn is_loopback_host(host: &str) -> bool {
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// Lets the gateway know which sockets are its own: called with a socket's kernel cookie before
/// its connect() and after, so that capture never redirects the gateway's JWKS fetches.
pub trait OwnSockets: Send + Sync {
    fn begin(&self, cookie: u64);
    fn end(&self, cookie: u64);
}

/// Network settings shared by all fetches of one verifier.
#[derive(Clone)]
pub(crate) struct NetOptions {
    pub own: Option<Arc<dyn OwnSockets>>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub max_body: usize,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            own: None,
            connect_timeout: CONNECT_TIMEOUT,
            read_timeout: READ_TIMEOUT,
            max_body: MAX_BODY,
        }
    }
}

/// Creates the TCP socket for `addr`, registers it as the gateway's own when asked, and connects
/// it. Every socket the identity module opens goes through here.
pub(crate) async fn connect_socket(
    addr: SocketAddr,
    own: Option<&Arc<dyn OwnSockets>>,
) -> Result<TcpStream, FetchError> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|source| FetchError::Connect {
        addr: addr.to_string(),
        source,
    })?;
    let cookie = match own {
        Some(_) => Some(
            crate::sockopt::get_u64(&sock, libc::SO_COOKIE).map_err(|source| {
                FetchError::Connect {
                    addr: addr.to_string(),
                    source,
                }
            })?,
        ),
        None => None,
    };
    sock.set_nodelay(true)
        .map_err(|source| FetchError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    if let (Some(own), Some(c)) = (own, cookie) {
        own.begin(c);
    }
    let result = sock.connect(addr).await;
    if let (Some(own), Some(c)) = (own, cookie) {
        own.end(c);
    }
    result.map_err(|source| FetchError::Connect {
        addr: addr.to_string(),
        source,
    })
}

/// GET `url`, returning the body of a 200 response.
pub(crate) async fn get(
    url: &HttpUrl,
    tls: Option<&Arc<rustls::ClientConfig>>,
    net: &NetOptions,
) -> Result<Bytes, FetchError> {
    let (status, body) = send(url, tls, net, None).await?;
    if status != hyper::StatusCode::OK {
        return Err(FetchError::Status(status.as_u16()));
    }
    Ok(body)
}

/// POST a JSON body to `url`, returning the response status (approval webhooks).
pub(crate) async fn post_json(
    url: &HttpUrl,
    tls: Option<&Arc<rustls::ClientConfig>>,
    net: &NetOptions,
    body: String,
) -> Result<u16, FetchError> {
    let (status, _) = send(url, tls, net, Some(body)).await?;
    Ok(status.as_u16())
}

/// One request: a GET, or a POST of `body` as JSON.
async fn send(
    url: &HttpUrl,
    tls: Option<&Arc<rustls::ClientConfig>>,
    net: &NetOptions,
    body: Option<String>,
) -> Result<(hyper::StatusCode, Bytes), FetchError> {
    let addrs: Vec<SocketAddr> = tokio::time::timeout(
        net.connect_timeout,
        tokio::net::lookup_host((url.host.as_str(), url.port)),
    )
    .await
    .map_err(|_| FetchError::ConnectTimeout(url.authority.clone()))?
    .map_err(|source| FetchError::Resolve {
        host: url.host.clone(),
        source,
    })?
    .collect();
    if !url.tls {
        if let Some(addr) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            return Err(FetchError::NonLoopback {
                host: url.host.clone(),
                addr: *addr,
            });
        }
    }
    let tcp = tokio::time::timeout(net.connect_timeout, connect_any(&addrs, net.own.as_ref()))
        .await
        .map_err(|_| FetchError::ConnectTimeout(url.authority.clone()))??;
    tokio::time::timeout(
        net.read_timeout,
        exchange(tcp, url, tls, net.max_body, body),
    )
    .await
    .map_err(|_| FetchError::Timeout(net.read_timeout))?
}

async fn connect_any(
    addrs: &[SocketAddr],
    own: Option<&Arc<dyn OwnSockets>>,
) -> Result<TcpStream, FetchError> {
    let mut last = None;
    for addr in addrs {
        match connect_socket(*addr, own).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| FetchError::Http("host resolved to no addresses".into())))
}

async fn exchange(
    tcp: TcpStream,
    url: &HttpUrl,
    tls: Option<&Arc<rustls::ClientConfig>>,
    max_body: usize,
    body: Option<String>,
) -> Result<(hyper::StatusCode, Bytes), FetchError> {
    if !url.tls {
        return request(tcp, url, max_body, body).await;
    }
    let tls = tls.ok_or_else(|| FetchError::Http("no TLS configuration".into()))?;
    let name = ServerName::try_from(url.host.clone())
        .map_err(|e| FetchError::InvalidUrl(format!("host {:?}: {e}", url.host)))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
        .connect(name, tcp)
        .await
        .map_err(|source| FetchError::Tls {
            host: url.host.clone(),
            source,
        })?;
    request(stream, url, max_body, body).await
}

async fn request<S>(
    io: S,
    url: &HttpUrl,
    max_body: usize,
    body: Option<String>,
) -> Result<(hyper::StatusCode, Bytes), FetchError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| FetchError::Http(e.to_string()))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        let builder = hyper::Request::builder()
            .uri(url.path_and_query.as_str())
            .header(hyper::header::HOST, url.authority.as_str())
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, "agentgate");
        let req = match body {
            None => builder
                .method(hyper::Method::GET)
                .body(Either::Left(Empty::<Bytes>::new())),
            Some(b) => builder
                .method(hyper::Method::POST)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Either::Right(Full::new(Bytes::from(b)))),
        }
        .map_err(|e| FetchError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let status = resp.status();
        if status != hyper::StatusCode::OK {
            // Only the status matters; the body of a refusal is not read.
            return Ok((status, Bytes::new()));
        }
        let declared = resp
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_body as u64) {
            return Err(FetchError::TooLarge(max_body));
        }
        let body = Limited::new(resp.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    FetchError::TooLarge(max_body)
                } else {
                    FetchError::Http(e.to_string())
                }
            })?;
        Ok((status, body.to_bytes()))
    }
    .await;
    driver.abort();
    result
}

/// The rustls client configuration for one provider: webpki roots plus an optional extra CA file.
pub(crate) fn tls_config(
    ca_file: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, TlsSetupError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| TlsSetupError::CaFile(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsSetupError::CaFile(e.to_string()))?;
        if certs.is_empty() {
            return Err(TlsSetupError::CaFile("no certificates in file".into()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| TlsSetupError::CaFile(e.to_string()))?;
        }
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(TlsSetupError::Rustls)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

#[derive(Debug)]
pub(crate) enum TlsSetupError {
    CaFile(String),
    Rustls(rustls::Error),
}
