//! The agent's side of a PostgreSQL connection up to authentication: TLS negotiation (declined
//! unless the target has a certificate for it), GSS encryption (always declined), cancel
//! requests, the startup message and, for workloads whose token is their password, the
//! password exchange.

use std::{sync::Arc, time::Duration};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;

use super::codec::{self, out, CodecError, Fields, Frame};
use crate::identity::{TokenError, MAX_TOKEN_BYTES};

/// The longest PasswordMessage read: a token of the gateway's limit, its NUL terminator and the
/// length word. A longer one is refused as a token over the limit, by its announced length.
const MAX_PASSWORD_MESSAGE: usize = MAX_TOKEN_BYTES + 5;
/// An over-long password is read and dropped up to this many bytes (PostgreSQL discards such a
/// message too): the agent is still sending it, and closing on unread data would reset the
/// connection before the agent reads why. A longer one is not read; the connection just closes.
const MAX_DISCARD: usize = 16 * 1024 * 1024;
/// Discarding an over-long password gives up after this long.
const DISCARD_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// The password the agent presented cannot be a token the gateway accepts.
    #[error("{0}")]
    Token(TokenError),
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
/// signature, not its secrecy against this hop, is what counts) and returns it. A password
/// over the token size limit is [`FrontendError::Token`] with [`TokenError::TooLarge`].
pub async fn ask_password(stream: &mut BoxIo) -> Result<String, FrontendError> {
    stream.write_all(&out::auth(3).bytes).await?;
    stream.flush().await?;
    let frame = match codec::read_frame(stream, MAX_PASSWORD_MESSAGE).await {
        Err(CodecError::TooLarge { tag: 'p', len, .. }) => {
            // `len` counts the length word and the body, the token and its NUL.
            if let Some(rest) = len.checked_sub(4).filter(|r| *r <= MAX_DISCARD) {
                let _ = tokio::time::timeout(DISCARD_TIMEOUT, discard(stream, rest)).await;
            }
            return Err(FrontendError::Token(TokenError::TooLarge {
                len: len.saturating_sub(5),
                max: MAX_TOKEN_BYTES,
            }));
        }
        other => other?,
    }
    .ok_or(FrontendError::Protocol(
        "connection closed before the password",
    ))?;
    if frame.tag() != b'p' {
        return Err(FrontendError::Protocol("expected a password message"));
    }
    Ok(Fields::new(&frame).cstr()?.to_string())
}

/// Reads and drops `n` bytes (fewer if the agent closes first).
async fn discard<R: AsyncRead + Unpin + ?Sized>(r: &mut R, mut n: usize) -> std::io::Result<()> {
    let mut buf = [0u8; 8192];
    while n > 0 {
        let got = r.read(&mut buf[..n.min(8192)]).await?;
        if got == 0 {
            break;
        }
        n -= got;
    }
    Ok(())
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

/// The SQLSTATE and agent-facing message for a refused connection. A refused token says what
/// is wrong with the agent's own token ([`token_refusal`]); otherwise the code says why, never
/// which rule or file decided.
pub fn refusal_message(code: &str, token: Option<&TokenError>) -> (&'static str, String) {
    if let Some(e) = token {
        return token_refusal(e);
    }
    match code {
        // Refusals about the token made outside the verifier.
        "expired" => ("28P01", "agentgate: the token has expired".into()),
        "unknown_issuer" => (
            "28P01",
            "agentgate: the token's issuer is not trusted".into(),
        ),
        "no_token" => ("28P01", "agentgate: no token was presented".into()),
        "identity_unavailable" => (
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

/// The SQLSTATE and message for a refused token: `28P01` (invalid_password, what PostgreSQL
/// says for a wrong password) with the cause, or `28000` when the token could not be checked at
/// all (the issuer's keys are unavailable): not the agent's fault.
pub fn token_refusal(e: &TokenError) -> (&'static str, String) {
    let code = match e {
        TokenError::JwksUnavailable { .. } => "28000",
        _ => "28P01",
    };
    (code, format!("agentgate: {}", e.agent_message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn password_message(token_len: usize) -> Vec<u8> {
        let mut m = vec![b'p'];
        m.extend_from_slice(&(token_len as u32 + 5).to_be_bytes());
        m.extend(std::iter::repeat_n(b'a', token_len));
        m.push(0);
        m
    }

    /// Runs `ask_password` against an agent that sends `wire` and then waits for the answer;
    /// returns the outcome and every byte the gateway sent.
    async fn ask(wire: Vec<u8>) -> (Result<String, FrontendError>, Vec<u8>) {
        let (gateway, mut agent) = tokio::io::duplex(64 * 1024);
        let mut gateway: BoxIo = Box::new(gateway);
        let agent_task = tokio::spawn(async move {
            // Like a client, send the whole message (blocking while the gateway does not
            // read), then read whatever comes back until the gateway closes.
            agent.write_all(&wire).await.unwrap();
            let mut got = Vec::new();
            agent.read_to_end(&mut got).await.unwrap();
            got
        });
        let r = ask_password(&mut gateway).await;
        if let Err(FrontendError::Token(e)) = &r {
            let (code, message) = token_refusal(e);
            refuse(&mut gateway, code, &message).await;
        }
        drop(gateway);
        (r, agent_task.await.unwrap())
    }

    #[tokio::test]
    async fn a_token_at_the_limit_is_read() {
        let (r, _) = ask(password_message(MAX_TOKEN_BYTES)).await;
        assert_eq!(r.unwrap().len(), MAX_TOKEN_BYTES);
    }

    #[tokio::test]
    async fn an_over_long_password_is_refused_by_size_after_it_is_read() {
        for len in [MAX_TOKEN_BYTES + 1, 20 * 1024, 1_400_000] {
            let (r, answer) = ask(password_message(len)).await;
            match r {
                Err(FrontendError::Token(TokenError::TooLarge { len: l, max })) => {
                    assert_eq!((l, max), (len, MAX_TOKEN_BYTES));
                }
                other => panic!("{len}: {other:?}"),
            }
            // The agent finished sending (the message was drained) and read the refusal: the
            // AuthenticationCleartextPassword request, then the ErrorResponse.
            let text = String::from_utf8_lossy(&answer);
            assert!(
                text.contains(&format!(
                    "agentgate: the token is {len} bytes, over the gateway's limit of 16384 bytes"
                )) && text.contains("28P01"),
                "{len}: {text:?}"
            );
        }
    }

    /// Over the discard limit, or an agent that stalls mid-message: refused by the announced
    /// size all the same, without reading gigabytes or waiting for the agent.
    #[tokio::test(start_paused = true)]
    async fn a_huge_or_stalled_password_is_refused_without_waiting() {
        for (announced, sent) in [(1_000_000_000usize, 100usize), (2_000_000, 1_000)] {
            let (gateway, mut agent) = tokio::io::duplex(64 * 1024);
            let mut gateway: BoxIo = Box::new(gateway);
            let mut wire = vec![b'p'];
            wire.extend_from_slice(&(announced as u32).to_be_bytes());
            wire.extend(std::iter::repeat_n(b'a', sent));
            agent.write_all(&wire).await.unwrap();
            let started = tokio::time::Instant::now();
            let r = ask_password(&mut gateway).await;
            assert!(
                matches!(r, Err(FrontendError::Token(TokenError::TooLarge { len, .. })) if len == announced - 5),
                "{r:?}"
            );
            assert!(started.elapsed() <= DISCARD_TIMEOUT, "{announced}");
        }
    }

    #[test]
    fn token_refusals_are_28p01_but_unavailable_keys() {
        let (code, m) = token_refusal(&TokenError::BadSignature);
        assert_eq!(
            (code, m.as_str()),
            ("28P01", "agentgate: the token's signature does not verify")
        );
        let (code, _) = token_refusal(&TokenError::JwksUnavailable {
            provider: "corp".into(),
            detail: "HTTP status 503".into(),
        });
        assert_eq!(code, "28000");
        // The typed cause wins over the code; without one, the code decides.
        let e = TokenError::Expired {
            exp: 1,
            now: 2,
            skew: 0,
        };
        assert_eq!(
            refusal_message("anything", Some(&e)),
            ("28P01", "agentgate: the token has expired".to_string())
        );
        assert_eq!(
            refusal_message("no_token", None),
            ("28P01", "agentgate: no token was presented".to_string())
        );
        assert_eq!(refusal_message("denied", None).0, "28000");
    }
}
