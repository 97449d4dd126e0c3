//! The HTTP admin API for approvers: every request carries an OIDC JWT (`Authorization:
//! Bearer`), verified like an agent's, and the approver's groups decide which requests they may
//! see and decide. Plain HTTP only on loopback; TLS (rustls) with a certificate otherwise.
//!
//! - `GET /v1/approvals[?state=all|pending|approved|denied|expired|cancelled]`
//! - `GET /v1/approvals/{id}`
//! - `POST /v1/approvals/{id}/approve` (body: optional `{"reason": …}`)
//! - `POST /v1/approvals/{id}/deny` (body: `{"reason": …}`, required)
//!
//! - `GET /v1/me`: who the caller is (and, signed in to the console, the CSRF token)
//! - `/console/...`: the web console and its sign-in (`crate::console`)
//!
//! A console session cookie is the other way in: every request other than GET/HEAD made with
//! it must carry the session's `X-CSRF-Token` (and, if it says, come from the console's origin).
//!
//! Errors are `{"error": text, "reason": code}` with 400, 401, 403, 404 or 409.
//!
//! Each route is an [`AdminRequest`], answered by the same handler as the Unix socket's, as the
//! token's holder (who sees and decides only the requests of their groups).

use std::{convert::Infallible, future::Future, net::SocketAddr, pin::Pin, sync::Arc};

use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{
    caller::Caller,
    routes::{route, whole, Body},
    views::ConsoleApi,
    Admin, Refusal,
};
use crate::{
    approval::{ApprovalError, Approver},
    console::{ConsoleAuth, Lookup, SignedIn},
};

/// Why a caller is not let in: the verifier's stable code and its message.
pub struct Unauthorized {
    pub code: &'static str,
    pub message: String,
}

/// Verifies a bearer token and says who it belongs to and what they may do.
pub type Authenticate = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = Result<Caller, Unauthorized>> + Send>>
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
    /// The same handler as the Unix socket's; the routes below map onto its requests.
    pub admin: Arc<Admin>,
    /// What the console's routes read besides approvals (record, policy, live changes).
    pub api: Arc<ConsoleApi>,
    pub authenticate: Authenticate,
    /// The console's sign-in and sessions (`None`: bearer tokens only).
    pub console: Option<Arc<ConsoleAuth>>,
}

/// Binds the listener now (so a bad address fails the start), or serves `taken` (the socket
/// a gateway handed over in an upgrade, already bound to `addr`).
pub async fn bind(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    taken: Option<std::net::TcpListener>,
) -> Result<(TcpListener, Option<tokio_rustls::TlsAcceptor>), HttpAdminError> {
    if tls.is_none() && !addr.ip().is_loopback() {
        return Err(HttpAdminError::PlainOffLoopback(addr));
    }
    let listener = match taken {
        Some(l) => l
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(l)),
        None => TcpListener::bind(addr).await,
    }
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

pub(crate) fn reply(status: StatusCode, body: Value) -> Response<Body> {
    let mut r = Response::new(whole(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn refuse(
    status: StatusCode,
    code: &str,
    message: impl std::fmt::Display,
) -> Response<Body> {
    reply(
        status,
        json!({"error": message.to_string(), "reason": code}),
    )
}

fn is_event_stream(r: &Response<Body>) -> bool {
    r.headers()
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

pub(super) fn refusal(e: &Refusal) -> Response<Body> {
    let status = match e {
        Refusal::Approval(e) => match e {
            ApprovalError::UnknownRequest(_) => StatusCode::NOT_FOUND,
            ApprovalError::NotPending(..) | ApprovalError::AlreadyCounted(..) => {
                StatusCode::CONFLICT
            }
            ApprovalError::SelfApproval(..) => StatusCode::FORBIDDEN,
            ApprovalError::ReasonRequired => StatusCode::BAD_REQUEST,
            ApprovalError::TooManyPending(_) => StatusCode::TOO_MANY_REQUESTS,
            ApprovalError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        },
        Refusal::BadRequest(_) | Refusal::NoRevocationTarget => StatusCode::BAD_REQUEST,
        Refusal::LocalOnly(_) | Refusal::Forbidden(..) => StatusCode::FORBIDDEN,
        Refusal::RevocationNotStored(_) | Refusal::LiftNotStored(_) | Refusal::Unencodable(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    refuse(status, e.code(), e)
}

impl HttpAdmin {
    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Body> {
        let path = req.uri().path();
        if path == "/console" || path.starts_with("/console/") {
            let mut r = match &self.console {
                Some(c) => crate::console::web::handle(c, req).await,
                None => refuse(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "the console is off (give --admin-http and a policy `console:`)",
                ),
            };
            super::assets::harden(r.headers_mut());
            return r;
        }
        let (caller, session, bearer) = match self.authenticate(req.headers()).await {
            Ok(c) => c,
            Err(refused) => return refused,
        };
        // A browser sends the cookie with any request, whoever's page made it: a state change
        // made with it must prove it comes from the console (CSRF token, Origin).
        if let (Some(signed), Some(console)) = (&session, &self.console) {
            if !matches!(*req.method(), Method::GET | Method::HEAD) {
                if let Err(why) = console.check_csrf(signed, req.headers()) {
                    return refuse(StatusCode::FORBIDDEN, "csrf", format!("refused: {why}"));
                }
            }
        }
        if req.method() == Method::GET && req.uri().path() == "/v1/me" {
            return crate::console::web::me(&caller, session.as_ref(), bearer.as_deref());
        }
        let answer = route(req, &caller, &self.admin, &self.api).await;
        match (session, &self.console) {
            // An event stream opened with a session ends with it (sign-out, expiry, reload).
            (Some(signed), Some(console)) if is_event_stream(&answer) => {
                let console = console.clone();
                answer.map(|body| {
                    super::session_bound::while_alive(body, move || {
                        matches!(
                            console.lookup_id(signed.id.clone()),
                            crate::console::Lookup::Valid(_)
                        )
                    })
                })
            }
            _ => answer,
        }
    }

    /// Who is calling: a bearer token (scripts) or else a console session cookie. Returns the
    /// caller, their session if that is how, and the token if that is how.
    async fn authenticate(
        &self,
        headers: &hyper::HeaderMap,
    ) -> Result<(Caller, Option<SignedIn>, Option<String>), Response<Body>> {
        let token = headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            return match self.console.as_ref().map(|c| c.lookup(headers)) {
                Some(Lookup::Valid(signed)) => Ok((signed.caller(), Some(signed), None)),
                Some(Lookup::Invalid) => Err(refuse(
                    StatusCode::UNAUTHORIZED,
                    "no_session",
                    "the console session is unknown or over; sign in again",
                )),
                None | Some(Lookup::None) => Err(refuse(
                    StatusCode::UNAUTHORIZED,
                    "no_token",
                    "an approver's OIDC token (Authorization: Bearer …) or a console session is required",
                )),
            };
        };
        let caller = (self.authenticate)(token.clone())
            .await
            .map_err(|u| refuse(StatusCode::UNAUTHORIZED, u.code, u.message))?;
        let Approver::Oidc { .. } = &caller.approver else {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "no_token",
                "not an OIDC principal",
            ));
        };
        Ok((caller, None, Some(token)))
    }
}

#[cfg(test)]
mod tests {
    //! The API over real TLS (rcgen certificate, rustls on both sides) on loopback.

    use std::time::Duration;

    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use tokio::sync::watch;

    use super::*;
    use crate::approval::{ApprovalSpec, Approvals, Gate, Mode, NewRequest, Notifier};

    fn approvals(dir: &std::path::Path) -> Arc<Approvals> {
        let (_tx, policy) = watch::channel(Arc::new(crate::policy::Policy::default()));
        let events = Arc::new(crate::record::EventSink::disabled());
        Approvals::open(
            crate::record::Db::open(&dir.join("r.db")).unwrap(),
            Notifier::new(
                policy,
                crate::net::http::HttpClient::uncaptured(),
                events.clone(),
            ),
            events,
        )
        .unwrap()
    }

    /// Tokens are the approver's name here; the real verifier is tested with the identity module.
    fn authenticate() -> Authenticate {
        Arc::new(|token: String| {
            Box::pin(async move {
                match token.as_str() {
                    "alice" | "bob" => Ok(Caller {
                        approver: Approver::Oidc {
                            issuer: "https://idp".into(),
                            subject: token,
                            groups: vec!["dba".into()],
                        },
                        role: crate::policy::ConsoleRole::Approver,
                        via: super::super::caller::Via::Bearer,
                    }),
                    _ => Err(Unauthorized {
                        code: "bad_signature",
                        message: "token refused".into(),
                    }),
                }
            })
        })
    }

    async fn call(
        addr: SocketAddr,
        tls: &Arc<rustls::ClientConfig>,
        method: &str,
        path: &str,
        token: &str,
        body: &str,
    ) -> (u16, Value) {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "127.0.0.1")
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn approves_over_tls_and_refuses_plain_http_off_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let a = approvals(dir.path());
        let held = match a
            .submit(NewRequest {
                session: "s".into(),
                issuer: "https://idp".into(),
                subject: "agent".into(),
                workload: "w".into(),
                target: "pg".into(),
                action: crate::approval::Action {
                    protocol: "postgres".into(),
                    namespace: "db".into(),
                    text: "DROP TABLE t".into(),
                    params: vec![],
                    class: "ddl".into(),
                },
                rule: "r".into(),
                spec: ApprovalSpec {
                    approvers: vec!["dba".into()],
                    quorum: 2,
                    timeout: Duration::from_secs(60),
                    mode: Mode::Hold,
                    retry_window: Duration::ZERO,
                    max_rows: None,
                },
                retry_key: "k".into(),
                trial_rows: None,
            })
            .unwrap()
        {
            Gate::Held(h) => h,
            _ => panic!("held"),
        };
        let id = held.request().id;

        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ck.cert.pem()).unwrap();
        let client = Arc::new(crate::net::http::tls_config(Some(&ca)).unwrap());

        // Plain HTTP is for loopback only; the check comes before any bind.
        assert!(matches!(
            bind("0.0.0.0:0".parse().unwrap(), None, None).await,
            Err(HttpAdminError::PlainOffLoopback(_))
        ));
        let (listener, acceptor) =
            bind("127.0.0.1:0".parse().unwrap(), Some(Arc::new(server)), None)
                .await
                .unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let admin = Arc::new(HttpAdmin {
            admin: Arc::new(Admin {
                approvals: a.clone(),
                node: Arc::new(crate::admin::handler::tests::NoGateway::default()),
            }),
            api: Arc::new(ConsoleApi::new(
                None,
                watch::channel(Arc::new(crate::policy::Policy::default())).1,
                Arc::new(std::sync::Mutex::new(crate::policy::PolicyStatus {
                    dir: dir.path().into(),
                    version: String::new(),
                    generation: 1,
                    loaded_at_ms: 0,
                    last_error: None,
                })),
                None,
                tokio::sync::broadcast::channel(1).0,
            )),
            authenticate: authenticate(),
            console: None,
        });
        tokio::spawn(serve(admin, listener, acceptor, stop.clone()));

        let path = format!("/v1/approvals/{id}/approve");
        let (status, body) = call(addr, &client, "POST", &path, "mallory", "").await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (401, Some("bad_signature"))
        );
        let (status, body) = call(addr, &client, "GET", "/v1/approvals", "alice", "").await;
        assert_eq!(status, 200);
        assert_eq!(body["requests"][0]["id"], id.as_str());
        let (status, body) = call(
            addr,
            &client,
            "POST",
            &path,
            "alice",
            "{\"reason\": \"ok\"}",
        )
        .await;
        assert_eq!((status, body["state"].as_str()), (200, Some("pending")));
        let (status, body) = call(addr, &client, "POST", &path, "alice", "").await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (409, Some("already_counted"))
        );
        let deny = format!("/v1/approvals/{id}/deny");
        let (status, body) = call(addr, &client, "POST", &deny, "bob", "not json").await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (400, Some("bad_request"))
        );
        let (status, body) = call(addr, &client, "POST", &path, "bob", "").await;
        assert_eq!((status, body["state"].as_str()), (200, Some("approved")));
        assert_eq!(a.get(&id).unwrap().approvals(), 2);
        stop.cancel();
    }
}
