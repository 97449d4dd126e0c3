//! The HTTP admin API for approvers: every request carries an OIDC JWT (`Authorization:
//! Bearer`), verified like an agent's, and the approver's groups decide which requests they may
//! see and decide. Plain HTTP only on loopback; TLS (rustls) with a certificate otherwise.
//!
//! - `GET /v1/approvals[?state=all|pending|approved|denied|expired|cancelled]`
//! - `GET /v1/approvals/{id}`
//! - `POST /v1/approvals/{id}/approve` (body: optional `{"reason": …}`)
//! - `POST /v1/approvals/{id}/deny` (body: `{"reason": …}`, required)
//!
//! Errors are `{"error": text, "reason": code}` with 400, 401, 403, 404 or 409.

use std::{convert::Infallible, future::Future, net::SocketAddr, pin::Pin, sync::Arc};

use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Bytes, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::approval::{ApprovalError, Approvals, Approver, State, Verdict};

/// Request bodies are a reason at most.
const MAX_BODY: usize = 64 * 1024;

/// Why a caller is not let in: the verifier's stable code and its message.
pub struct Unauthorized {
    pub code: &'static str,
    pub message: String,
}

/// Verifies a bearer token and says who it belongs to.
pub type Authenticate = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = Result<Approver, Unauthorized>> + Send>>
        + Send
        + Sync,
>;

#[derive(Debug, thiserror::Error)]
pub enum HttpAdminError {
    #[error("admin HTTP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin HTTP {0}: plain HTTP is only allowed on loopback; give a certificate and key")]
    PlainOffLoopback(SocketAddr),
}

pub struct HttpAdmin {
    pub approvals: Arc<Approvals>,
    pub authenticate: Authenticate,
}

/// Binds the listener now (so a bad address fails the start) and returns the serving task.
pub async fn bind(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<(TcpListener, Option<tokio_rustls::TlsAcceptor>), HttpAdminError> {
    if tls.is_none() && !addr.ip().is_loopback() {
        return Err(HttpAdminError::PlainOffLoopback(addr));
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| HttpAdminError::Bind { addr, source })?;
    Ok((listener, tls.map(tokio_rustls::TlsAcceptor::from)))
}

pub async fn serve(
    admin: Arc<HttpAdmin>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("admin HTTP accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admin = admin.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(req).await) }
            });
            let http = hyper::server::conn::http1::Builder::new();
            let served = match tls {
                None => http.serve_connection(TokioIo::new(stream), service).await,
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(s) => http.serve_connection(TokioIo::new(s), service).await,
                    Err(e) => {
                        tracing::debug!(%peer, "admin HTTP TLS handshake: {e}");
                        return;
                    }
                },
            };
            if let Err(e) = served {
                tracing::debug!(%peer, "admin HTTP connection: {e}");
            }
        });
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn refuse(
    status: StatusCode,
    code: &str,
    message: impl std::fmt::Display,
) -> Response<Full<Bytes>> {
    reply(
        status,
        json!({"error": message.to_string(), "reason": code}),
    )
}

fn approval_error(e: &ApprovalError) -> Response<Full<Bytes>> {
    let status = match e {
        ApprovalError::UnknownRequest(_) => StatusCode::NOT_FOUND,
        ApprovalError::NotPending(..) | ApprovalError::AlreadyCounted(..) => StatusCode::CONFLICT,
        ApprovalError::NotApprover(..) | ApprovalError::SelfApproval(..) => StatusCode::FORBIDDEN,
        ApprovalError::ReasonRequired => StatusCode::BAD_REQUEST,
        ApprovalError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    refuse(status, e.code(), e)
}

impl HttpAdmin {
    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let token = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(|t| t.trim().to_string());
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "no_token",
                "an approver's OIDC token is required (Authorization: Bearer …)",
            );
        };
        let approver = match (self.authenticate)(token).await {
            Ok(a) => a,
            Err(u) => return refuse(StatusCode::UNAUTHORIZED, u.code, u.message),
        };
        let Approver::Oidc { groups, .. } = &approver else {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "no_token",
                "not an OIDC principal",
            );
        };
        let path = req.uri().path().trim_end_matches('/').to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        match (req.method().clone(), parts.as_slice()) {
            (Method::GET, ["v1", "approvals"]) => {
                let state = match query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("state="))
                    .unwrap_or("pending")
                {
                    "all" => None,
                    s => match State::parse(s) {
                        Some(st) => Some(st),
                        None => {
                            return refuse(
                                StatusCode::BAD_REQUEST,
                                "bad_request",
                                format!("unknown state `{s}`"),
                            )
                        }
                    },
                };
                match self.approvals.list(state) {
                    Ok(list) => {
                        let mine: Vec<_> = list
                            .into_iter()
                            .filter(|r| r.decidable_by(groups))
                            .collect();
                        reply(StatusCode::OK, json!({"requests": mine}))
                    }
                    Err(e) => approval_error(&e),
                }
            }
            (Method::GET, ["v1", "approvals", id]) => match self.approvals.get(id) {
                // Requests outside the caller's groups do not exist for them.
                Ok(r) if r.decidable_by(groups) => reply(StatusCode::OK, json!(r)),
                Ok(_) => approval_error(&ApprovalError::UnknownRequest(id.to_string())),
                Err(e) => approval_error(&e),
            },
            (Method::POST, ["v1", "approvals", id, action]) => {
                let verdict = match *action {
                    "approve" => Verdict::Approve,
                    "deny" => Verdict::Deny,
                    _ => return refuse(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
                };
                let id = id.to_string();
                let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return refuse(StatusCode::BAD_REQUEST, "bad_request", e),
                };
                let reason = if body.iter().all(u8::is_ascii_whitespace) {
                    None
                } else {
                    match serde_json::from_slice::<Value>(&body) {
                        Ok(v) => v["reason"].as_str().map(str::to_string),
                        Err(e) => {
                            return refuse(
                                StatusCode::BAD_REQUEST,
                                "bad_request",
                                format!("body is not JSON: {e}"),
                            )
                        }
                    }
                };
                match self.approvals.decide(&id, &approver, verdict, reason) {
                    Ok(r) => reply(StatusCode::OK, json!(r)),
                    Err(e) => approval_error(&e),
                }
            }
            _ => refuse(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
        }
    }
}
