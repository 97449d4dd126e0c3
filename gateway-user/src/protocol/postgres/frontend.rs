//! The agent's side of a PostgreSQL connection up to authentication: TLS negotiation (declined
//! unless the target has a certificate for it), GSS encryption (always declined), cancel
//! requests, the startup message and, for workloads whose token is their password, the
//! password exchange.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;

use super::codec::{self, out, CodecError, Fields, Frame};

/// Any byte stream the relay can use: plain TCP or TLS, on either side.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type BoxIo = Box<dyn Io>;

#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error("{0}")]
    Codec(#[from] CodecError),
    #[error("client TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("unsupported protocol version {major}.{minor}")]
    Version { major: u32, minor: u32 },
    #[error("{0}")]
    Protocol(&'static str),
}

impl From<std::io::Error> for FrontendError {
    fn from(e: std::io::Error) -> Self {
        FrontendError::Codec(CodecError::Io(e))
    }
}

/// What the agent opened the connection for.
pub enum Hello {
    Startup(Startup),
    /// A CancelRequest: the key the gateway handed out in its BackendKeyData.
    Cancel {
        pid: i32,
        key: i32,
    },
}

pub struct Startup {
    pub stream: BoxIo,
    pub params: Vec<(String, String)>,
    pub tls: bool,
}

impl Startup {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Runs the startup phase up to the StartupMessage or CancelRequest.
pub async fn accept(
    stream: BoxIo,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<Hello, FrontendError> {
    let mut stream = stream;
    let mut encrypted = false;
    // At most one SSLRequest and one GSSENCRequest precede the real packet.
    for _ in 0..3 {
        let packet = codec::read_startup(&mut stream).await?;
        let mut f = Fields::over(&packet, '0');
        let code = f.i32()? as u32;
        match code {
            codec::SSL_REQUEST if !encrypted => match &tls {
                Some(config) => {
                    stream.write_all(b"S").await?;
                    stream.flush().await?;
                    let tls_stream = TlsAcceptor::from(config.clone())
                        .accept(stream)
                        .await
                        .map_err(FrontendError::Tls)?;
                    stream = Box::new(tls_stream);
                    encrypted = true;
                }
                None => {
                    stream.write_all(b"N").await?;
                    stream.flush().await?;
                }
            },
            codec::GSSENC_REQUEST if !encrypted => {
                stream.write_all(b"N").await?;
                stream.flush().await?;
            }
            codec::CANCEL_REQUEST => {
                let pid = f.i32()?;
                let key = f.i32()?;
                return Ok(Hello::Cancel { pid, key });
            }
            v if v >> 16 == 3 => {
                let mut params = Vec::new();
                loop {
                    let k = f.cstr()?;
                    if k.is_empty() {
                        break;
                    }
                    params.push((k.to_string(), f.cstr()?.to_string()));
                }
                // A newer minor version or protocol options: answer that we speak 3.0 without
                // them, as PostgreSQL does.
                let minor = v & 0xffff;
                let options: Vec<String> = params
                    .iter()
                    .filter(|(k, _)| k.starts_with("_pq_."))
                    .map(|(k, _)| k.clone())
                    .collect();
                if minor > 0 || !options.is_empty() {
                    stream.write_all(&out::negotiate(0, &options).bytes).await?;
                }
                params.retain(|(k, _)| !k.starts_with("_pq_."));
                return Ok(Hello::Startup(Startup {
                    stream,
                    params,
                    tls: encrypted,
                }));
            }
            v if v == codec::SSL_REQUEST || v == codec::GSSENC_REQUEST => {
                return Err(FrontendError::Protocol(
                    "encryption requested twice or inside TLS",
                ))
            }
            v => {
                return Err(FrontendError::Version {
                    major: v >> 16,
                    minor: v & 0xffff,
                })
            }
        }
    }
    Err(FrontendError::Protocol("too many negotiation requests"))
}

/// Asks for the password (cleartext: the hop stays on the node and the password is a JWT whose
/// signature, not its secrecy against this hop, is what counts) and returns it.
pub async fn ask_password(stream: &mut BoxIo, max: usize) -> Result<String, FrontendError> {
    stream.write_all(&out::auth(3).bytes).await?;
    stream.flush().await?;
    let frame = codec::read_frame(stream, max)
        .await?
        .ok_or(FrontendError::Protocol(
            "connection closed before the password",
        ))?;
    if frame.tag() != b'p' {
        return Err(FrontendError::Protocol("expected a password message"));
    }
    Ok(Fields::new(&frame).cstr()?.to_string())
}

/// Sends a FATAL error and closes: used for every refusal before the session starts.
pub async fn refuse<W: AsyncWrite + Unpin + ?Sized>(stream: &mut W, code: &str, message: &str) {
    let frame = out::error("FATAL", code, message, None);
    let _ = send(stream, &[frame]).await;
    let _ = stream.shutdown().await;
}

pub async fn send<W: AsyncWrite + Unpin + ?Sized>(
    stream: &mut W,
    frames: &[Frame],
) -> std::io::Result<()> {
    for f in frames {
        stream.write_all(&f.bytes).await?;
    }
    stream.flush().await
}

/// The SQLSTATE and agent-facing message for a refused connection. Says what is wrong with the
/// agent's own token or that no rule allows it, never which rule or file.
pub fn refusal_message(code: &str) -> (&'static str, String) {
    match code {
        "expired" => ("28P01", "agentgate: the token has expired".into()),
        "not_yet_valid" | "iat_in_future" => {
            ("28P01", "agentgate: the token is not valid yet".into())
        }
        "lifetime_too_long" => (
            "28P01",
            "agentgate: the token's lifetime is longer than allowed".into(),
        ),
        "wrong_audience" => (
            "28P01",
            "agentgate: the token is not meant for this gateway".into(),
        ),
        "bad_signature" | "unknown_kid" | "unknown_issuer" | "alg_not_allowed" | "malformed"
        | "too_large" | "missing_kid" | "key_alg_mismatch" | "unsupported_header"
        | "missing_claim" | "invalid_claim" => {
            ("28P01", "agentgate: the token is not valid".into())
        }
        "no_token" => ("28P01", "agentgate: no token was presented".into()),
        "jwks_unavailable" | "identity_unavailable" => (
            "28000",
            "agentgate: the token cannot be checked right now".into(),
        ),
        "limit" => ("53300", "agentgate: too many sessions".into()),
        _ => (
            "28000",
            "agentgate: no policy allows this connection".into(),
        ),
    }
}
