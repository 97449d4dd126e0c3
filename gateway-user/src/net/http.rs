//! The gateway's HTTP(S) client, for JWKS and discovery documents and approval webhooks:
//! hyper over sockets from the [`SocketFactory`], rustls (ring), connect and read timeouts, a
//! body size cap, no redirects, plain http:// only to loopback.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Either, Empty, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::socket::{ConnectError, Netns, SocketFactory};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_BODY: usize = 1024 * 1024;

/// A checked http(s) URL.
#[derive(Debug, Clone)]
pub struct HttpUrl {
    pub tls: bool,
    /// Host without IPv6 brackets.
    pub host: String,
    pub port: u16,
    pub authority: String,
    pub path_and_query: String,
}

impl HttpUrl {
    pub fn parse(url: &str) -> Result<Self, HttpError> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| HttpError::InvalidUrl(e.to_string()))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(HttpError::InvalidUrl("scheme must be https".into())),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| HttpError::InvalidUrl("no host".into()))?;
        if authority.as_str().contains('@') {
            return Err(HttpError::InvalidUrl("credentials in URL".into()));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(HttpError::InvalidUrl("empty host".into()));
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        if !tls && !is_loopback_host(&host) {
            return Err(HttpError::InsecureUrl);
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

/// The gateway's one HTTP client (JWKS and discovery documents, approval webhooks): every
/// connection from [`SocketFactory`] in the gateway's own namespace, so it is never captured and
/// never made unregistered. No connection reuse: each request is one connection.
#[derive(Clone)]
pub struct HttpClient {
    sockets: Arc<SocketFactory>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub max_body: usize,
}

impl HttpClient {
    pub fn new(sockets: Arc<SocketFactory>) -> Self {
        HttpClient {
            sockets,
            connect_timeout: CONNECT_TIMEOUT,
            read_timeout: READ_TIMEOUT,
            max_body: MAX_BODY,
        }
    }

    /// A client for unit tests, where no capture runs.
    #[cfg(test)]
    pub(crate) fn uncaptured() -> Self {
        Self::new(Arc::new(SocketFactory::new(Arc::new(
            super::socket::Uncaptured,
        ))))
    }

    /// GET `url`, returning the body of a 200 response.
    pub async fn get(
        &self,
        url: &HttpUrl,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<Bytes, HttpError> {
        let (status, body) = self.send(url, tls, None).await?;
        if status != hyper::StatusCode::OK {
            return Err(HttpError::Status(status.as_u16()));
        }
        Ok(body)
    }

    /// POST a JSON body to `url`, returning the response status (approval webhooks).
    pub async fn post_json(
        &self,
        url: &HttpUrl,
        tls: Option<&Arc<rustls::ClientConfig>>,
        body: String,
    ) -> Result<u16, HttpError> {
        let (status, _) = self.send(url, tls, Some(Body::json(body))).await?;
        Ok(status.as_u16())
    }

    /// POST a form (`application/x-www-form-urlencoded`) to `url`, with an `Authorization`
    /// header if given (an OpenID token endpoint): the status and, for a 200, the body.
    pub async fn post_form(
        &self,
        url: &HttpUrl,
        tls: Option<&Arc<rustls::ClientConfig>>,
        form: String,
        authorization: Option<String>,
    ) -> Result<(u16, Bytes), HttpError> {
        let body = Body {
            content_type: "application/x-www-form-urlencoded",
            bytes: form,
            authorization,
        };
        let (status, bytes) = self.send(url, tls, Some(body)).await?;
        Ok((status.as_u16(), bytes))
    }

    /// One request: a GET, or a POST of `body`.
    async fn send(
        &self,
        url: &HttpUrl,
        tls: Option<&Arc<rustls::ClientConfig>>,
        body: Option<Body>,
    ) -> Result<(hyper::StatusCode, Bytes), HttpError> {
        let addrs: Vec<SocketAddr> = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::lookup_host((url.host.as_str(), url.port)),
        )
        .await
        .map_err(|_| HttpError::ConnectTimeout(url.authority.clone()))?
        .map_err(|source| HttpError::Resolve {
            host: url.host.clone(),
            source,
        })?
        .collect();
        if !url.tls {
            if let Some(addr) = addrs.iter().find(|a| !a.ip().is_loopback()) {
                return Err(HttpError::NonLoopback {
                    host: url.host.clone(),
                    addr: *addr,
                });
            }
        }
        let tcp = tokio::time::timeout(self.connect_timeout, self.connect_any(&addrs))
            .await
            .map_err(|_| HttpError::ConnectTimeout(url.authority.clone()))??;
        tokio::time::timeout(
            self.read_timeout,
            exchange(tcp, url, tls, self.max_body, body),
        )
        .await
        .map_err(|_| HttpError::Timeout(self.read_timeout))?
    }

    /// The first of `addrs` that answers. A socket that cannot be registered as the gateway's
    /// own ends the attempt: the next address would fail the same way.
    async fn connect_any(&self, addrs: &[SocketAddr]) -> Result<TcpStream, HttpError> {
        let mut last = None;
        for addr in addrs {
            match self
                .sockets
                .connect(*addr, Netns::Gateway, self.connect_timeout)
                .await
            {
                Ok(s) => return Ok(s),
                Err(e @ ConnectError::NotExempt { .. }) => return Err(e.into()),
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .map(HttpError::from)
            .unwrap_or_else(|| HttpError::Http("host resolved to no addresses".into())))
    }
}

/// What a POST sends.
struct Body {
    content_type: &'static str,
    bytes: String,
    authorization: Option<String>,
}

impl Body {
    fn json(bytes: String) -> Self {
        Body {
            content_type: "application/json",
            bytes,
            authorization: None,
        }
    }
}

async fn exchange(
    tcp: TcpStream,
    url: &HttpUrl,
    tls: Option<&Arc<rustls::ClientConfig>>,
    max_body: usize,
    body: Option<Body>,
) -> Result<(hyper::StatusCode, Bytes), HttpError> {
    if !url.tls {
        return request(tcp, url, max_body, body).await;
    }
    let tls = tls.ok_or_else(|| HttpError::Http("no TLS configuration".into()))?;
    let name = ServerName::try_from(url.host.clone())
        .map_err(|e| HttpError::InvalidUrl(format!("host {:?}: {e}", url.host)))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
        .connect(name, tcp)
        .await
        .map_err(|source| HttpError::Tls {
            host: url.host.clone(),
            source,
        })?;
    request(stream, url, max_body, body).await
}

async fn request<S>(
    io: S,
    url: &HttpUrl,
    max_body: usize,
    body: Option<Body>,
) -> Result<(hyper::StatusCode, Bytes), HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| HttpError::Http(e.to_string()))?;
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
            Some(b) => {
                let builder = match b.authorization {
                    Some(a) => builder.header(hyper::header::AUTHORIZATION, a),
                    None => builder,
                };
                builder
                    .method(hyper::Method::POST)
                    .header(hyper::header::CONTENT_TYPE, b.content_type)
                    .body(Either::Right(Full::new(Bytes::from(b.bytes))))
            }
        }
        .map_err(|e| HttpError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| HttpError::Http(e.to_string()))?;
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
            return Err(HttpError::TooLarge(max_body));
        }
        let body = Limited::new(resp.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    HttpError::TooLarge(max_body)
                } else {
                    HttpError::Http(e.to_string())
                }
            })?;
        Ok((status, body.to_bytes()))
    }
    .await;
    driver.abort();
    result
}

/// The rustls client configuration for one provider: webpki roots plus an optional extra CA file.
pub fn tls_config(
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
pub enum TlsSetupError {
    CaFile(String),
    Rustls(rustls::Error),
}

/// Failure of an HTTP(S) request.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    #[error("plain http:// is only allowed to loopback addresses")]
    InsecureUrl,
    #[error("resolving {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{host} resolved to non-loopback address {addr}, refused for plain http://")]
    NonLoopback {
        host: String,
        addr: std::net::SocketAddr,
    },
    /// Boxed: the other variants are small, and identity errors carry this one.
    #[error(transparent)]
    Connect(Box<ConnectError>),
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    #[error("TLS handshake with {host}: {source}")]
    Tls {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(String),
    #[error("request timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("response body over the {0}-byte limit")]
    TooLarge(usize),
}

impl From<ConnectError> for HttpError {
    fn from(e: ConnectError) -> Self {
        HttpError::Connect(Box::new(e))
    }
}
