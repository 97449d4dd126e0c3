//! The gateway's own login to the target: TLS (verify-full by default), a startup message with
//! the target's upstream role, and SCRAM-SHA-256 (with channel binding over TLS), md5 or
//! cleartext with the target's credential. The agent never sees any of it.

use std::{net::SocketAddr, path::Path};

use bytes::BytesMut;
use postgres_protocol::{authentication::md5_hash, message::frontend};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use super::{
    codec::{self, CodecError, Fields, Frame, Notice},
    frontend::BoxIo,
    scram::{self, Binding},
    tls,
};
use crate::{
    net::Connect,
    policy::{PostgresTarget, UpstreamTls},
};

/// Startup parameters an agent may pass through. Anything else is dropped: `options` could carry
/// `-c role=…` or `-c session_authorization=…` and step around statement rules, and
/// `replication` would open a replication session.
const PASSED_PARAMS: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "timezone",
    "extra_float_digits",
    "intervalstyle",
    "search_path",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "default_transaction_isolation",
    "default_transaction_read_only",
];

/// A login answers with a few dozen ParameterStatus messages; a server that sends without end
/// is not one to relay for.
const MAX_GREETING: usize = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("{0}")]
    Codec(#[from] CodecError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the target does not accept TLS")]
    NoTls,
    #[error("the target refused the login: {code} {message}")]
    Rejected { code: String, message: String },
    #[error("the target refused a query of the gateway's: {code} {message}")]
    Query { code: String, message: String },
    #[error("the target asked for an authentication method the gateway does not use ({0})")]
    Unsupported(i32),
    #[error("SCRAM: {0}")]
    Scram(#[from] scram::ScramError),
    #[error("SCRAM: the salted password's thread failed: {0}")]
    ScramTask(String),
    #[error("the target's session has {name} = {value}, under which the gateway cannot read SQL as the server does")]
    UnsafeSetting { name: String, value: String },
    #[error("unexpected `{0}` message during login")]
    Unexpected(char),
}

impl From<std::io::Error> for BackendError {
    fn from(e: std::io::Error) -> Self {
        BackendError::Codec(CodecError::Io(e))
    }
}

pub struct Upstream {
    pub stream: BoxIo,
    /// ParameterStatus and NoticeResponse frames of the login, to replay to the agent.
    pub greeting: Vec<Frame>,
    /// The real BackendKeyData, which only the gateway knows.
    pub pid: i32,
    pub key: i32,
}

/// Logs in to `dst` as the target's role.
pub async fn connect<C: Connect>(
    connector: &C,
    dst: SocketAddr,
    cfg: &PostgresTarget,
    password: &str,
    client_params: &[(String, String)],
) -> Result<Upstream, BackendError> {
    let tcp = connector
        .connect(dst)
        .await
        .map_err(BackendError::Connect)?;
    let (mut stream, cert_hash): (BoxIo, Option<Vec<u8>>) = match &cfg.upstream_tls {
        UpstreamTls::Disable => (Box::new(tcp), None),
        UpstreamTls::VerifyFull {
            ca_file,
            server_name,
        } => start_tls(tcp, dst, ca_file.as_deref(), server_name.as_deref()).await?,
    };
    let mut params: Vec<(&str, &str)> = vec![("user", cfg.user.as_str())];
    let database = cfg.database.as_deref().or_else(|| {
        let get = |k: &str| {
            client_params
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        // PostgreSQL's own default: the database named like the user who asked.
        get("database").or_else(|| get("user"))
    });
    if let Some(db) = database {
        params.push(("database", db));
    }
    for (k, v) in client_params {
        if PASSED_PARAMS.contains(&k.to_ascii_lowercase().as_str()) {
            params.push((k, v));
        }
    }
    let mut buf = BytesMut::new();
    frontend::startup_message(params.iter().copied(), &mut buf)?;
    stream.write_all(&buf).await?;
    stream.flush().await?;
    authenticate(
        &mut stream,
        &cfg.user,
        password,
        cert_hash,
        cfg.max_message_bytes,
    )
    .await?;
    let mut greeting = Vec::new();
    let (mut pid, mut key) = (0, 0);
    loop {
        if greeting.len() > MAX_GREETING {
            return Err(BackendError::Unexpected('S'));
        }
        let frame = next(&mut stream, cfg.max_message_bytes).await?;
        match frame.tag() {
            b'S' => {
                let (name, value) = codec::parameter_status(&frame)?;
                if !codec::lexer_safe(&name, &value) {
                    return Err(BackendError::UnsafeSetting { name, value });
                }
                greeting.push(frame)
            }
            b'N' => greeting.push(frame),
            b'K' => {
                let mut f = Fields::new(&frame);
                pid = f.i32()?;
                key = f.i32()?;
            }
            b'Z' => break,
            b'E' => return Err(rejected(&frame)),
            t => return Err(BackendError::Unexpected(t as char)),
        }
    }
    Ok(Upstream {
        stream,
        greeting,
        pid,
        key,
    })
}

/// Runs `sql` (simple protocol) on a logged-in connection of the gateway's own and returns the
/// rows of every result, values as text.
pub async fn simple_query(
    stream: &mut BoxIo,
    sql: &str,
    max: usize,
) -> Result<Vec<Vec<Option<String>>>, BackendError> {
    stream.write_all(&codec::out::query(sql).bytes).await?;
    stream.flush().await?;
    let mut rows = Vec::new();
    let mut error = None;
    loop {
        let frame = next(stream, max).await?;
        match frame.tag() {
            b'D' => {
                let mut f = Fields::new(&frame);
                let n = f.count()?;
                let mut row = Vec::with_capacity(n);
                for _ in 0..n {
                    let len = f.i32()?;
                    row.push(if len < 0 {
                        None
                    } else {
                        Some(String::from_utf8_lossy(f.take(len as usize)?).into_owned())
                    });
                }
                rows.push(row);
            }
            b'E' => {
                let n = Notice::parse(&frame)?;
                error = Some(BackendError::Query {
                    code: n.sqlstate().to_string(),
                    message: n.message().to_string(),
                });
            }
            b'Z' => break,
            _ => {}
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(rows),
    }
}

async fn next(stream: &mut BoxIo, max: usize) -> Result<Frame, BackendError> {
    codec::read_frame(stream, max).await?.ok_or_else(|| {
        BackendError::Codec(CodecError::Io(std::io::ErrorKind::UnexpectedEof.into()))
    })
}

fn rejected(frame: &Frame) -> BackendError {
    match Notice::parse(frame) {
        Ok(n) => BackendError::Rejected {
            code: n.sqlstate().to_string(),
            message: n.message().to_string(),
        },
        Err(e) => e.into(),
    }
}

async fn authenticate(
    stream: &mut BoxIo,
    user: &str,
    password: &str,
    cert_hash: Option<Vec<u8>>,
    max: usize,
) -> Result<(), BackendError> {
    let mut scram: Option<scram::Client> = None;
    loop {
        let frame = next(stream, max).await?;
        match frame.tag() {
            b'R' => {}
            b'E' => return Err(rejected(&frame)),
            t => return Err(BackendError::Unexpected(t as char)),
        }
        let mut f = Fields::new(&frame);
        let mut buf = BytesMut::new();
        match f.i32()? {
            0 => return Ok(()),
            3 => frontend::password_message(password.as_bytes(), &mut buf)?,
            5 => {
                let salt = f.take(4)?;
                let hash = md5_hash(
                    user.as_bytes(),
                    password.as_bytes(),
                    [salt[0], salt[1], salt[2], salt[3]],
                );
                frontend::password_message(hash.as_bytes(), &mut buf)?;
            }
            10 => {
                let mut mechanisms = Vec::new();
                loop {
                    let m = f.cstr()?;
                    if m.is_empty() {
                        break;
                    }
                    mechanisms.push(m);
                }
                let plus = mechanisms.contains(&"SCRAM-SHA-256-PLUS");
                let (mechanism, binding) = match &cert_hash {
                    Some(h) if plus => {
                        ("SCRAM-SHA-256-PLUS", Binding::TlsServerEndPoint(h.clone()))
                    }
                    Some(_) => ("SCRAM-SHA-256", Binding::Unrequested),
                    None => ("SCRAM-SHA-256", Binding::Unsupported),
                };
                if !mechanisms.contains(&"SCRAM-SHA-256") && !plus {
                    return Err(BackendError::Unsupported(10));
                }
                let s = scram::Client::new(password, binding);
                frontend::sasl_initial_response(mechanism, s.message(), &mut buf)?;
                scram = Some(s);
            }
            11 => {
                let mut s = scram.take().ok_or(BackendError::Unexpected('R'))?;
                let server_first = rest(&frame).to_vec();
                let s = if s.salted_kept(&server_first) {
                    // Kept from an earlier login of this role: microseconds.
                    s.update(&server_first)?;
                    s
                } else {
                    // The salted password (PBKDF2, 4096 rounds by default) is milliseconds of
                    // CPU: off the runtime's workers, or a reconnect storm stalls every other
                    // session.
                    tokio::task::spawn_blocking(move || s.update(&server_first).map(|()| s))
                        .await
                        .map_err(|e| BackendError::ScramTask(e.to_string()))??
                };
                frontend::sasl_response(s.message(), &mut buf)?;
                scram = Some(s);
            }
            12 => {
                // Verifies the server's signature: a server that does not know the password
                // cannot finish the exchange.
                let s = scram.as_mut().ok_or(BackendError::Unexpected('R'))?;
                s.finish(rest(&frame))?;
                continue;
            }
            other => return Err(BackendError::Unsupported(other)),
        }
        stream.write_all(&buf).await?;
        stream.flush().await?;
    }
}

/// The SASL data after the authentication code.
fn rest(frame: &Frame) -> &[u8] {
    &frame.body()[4..]
}

async fn start_tls(
    mut tcp: tokio::net::TcpStream,
    dst: SocketAddr,
    ca_file: Option<&Path>,
    server_name: Option<&str>,
) -> Result<(BoxIo, Option<Vec<u8>>), BackendError> {
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    tcp.write_all(&buf).await?;
    if tcp.read_u8().await? != b'S' {
        return Err(BackendError::NoTls);
    }
    let config = tls::client_config(ca_file).map_err(BackendError::Tls)?;
    let name = match server_name {
        Some(n) => ServerName::try_from(n.to_string())
            .map_err(|e| BackendError::Tls(format!("server_name `{n}`: {e}")))?,
        None => ServerName::IpAddress(dst.ip().into()),
    };
    let stream = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| BackendError::Tls(e.to_string()))?;
    // tls-server-end-point (RFC 5929) hashes the certificate with the hash of its signature
    // (SHA-256 for MD5 and SHA-1), as PostgreSQL derives it. A signature without one hash
    // (Ed25519) has no end point; SCRAM then goes without channel binding.
    let cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| BackendError::Tls("no server certificate".into()))?;
    let hash = tls::tls_server_end_point(cert.as_ref());
    Ok((Box::new(stream), hash))
}

/// Sends a CancelRequest for the real backend key to the target.
pub async fn cancel<C: Connect>(
    connector: &C,
    dst: SocketAddr,
    pid: i32,
    key: i32,
) -> std::io::Result<()> {
    let mut tcp = connector.connect(dst).await?;
    let mut buf = BytesMut::new();
    frontend::cancel_request(pid, key, &mut buf);
    tcp.write_all(&buf).await?;
    tcp.flush().await?;
    // The server closes without answering; wait for it so the request is not cut short.
    let mut sink = [0u8; 1];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut sink)).await;
    Ok(())
}
