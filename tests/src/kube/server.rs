//! The listener: TLS (tokio-rustls), HTTP/1.1 with upgrades (hyper), authentication (bearer
//! token or client certificate), impersonation (only for the gateway's credential), the
//! request log, then the API handlers or the exec upgrade.

use std::{
    collections::HashMap,
    convert::Infallible,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    body::{Body, Frame, Incoming},
    header::HeaderMap,
    Request, Response,
};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::mpsc};
use tokio_rustls::TlsAcceptor;

use super::{
    api::{self, ApiRequest, Reply},
    codec::{self, Output},
    exec,
    log::{token_fingerprint, LogEntry, RequestLog},
    store::Store,
    tls::StandinCa,
};

/// Who may call the stand-in.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// The gateway's token: the only bearer credential whose impersonation headers are honoured.
    pub gateway_token: String,
    /// The user name the gateway's token authenticates as.
    pub gateway_user: String,
    /// Further accepted tokens (pass-through mode): token -> (user, groups). They may not
    /// impersonate.
    pub agent_tokens: HashMap<String, (String, Vec<String>)>,
    /// Client-certificate users (CN) that may impersonate, like the gateway's token.
    pub impersonating_cert_users: Vec<String>,
}

pub struct State {
    pub auth: AuthConfig,
    pub ca: Arc<StandinCa>,
    pub store: Arc<Mutex<Store>>,
    pub log: RequestLog,
    pub server_addr: String,
    pub aggregated_discovery: bool,
    /// Where exec'd commands run.
    pub exec_dir: PathBuf,
    /// `pods/portforward`: pod port -> loopback address (portforward.rs).
    pub forward_ports: Arc<Mutex<HashMap<u16, std::net::SocketAddr>>>,
}

/// The authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user: String,
    pub groups: Vec<String>,
    pub may_impersonate: bool,
}

/// A streamed body fed by a channel (watches).
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

pub enum StandinBody {
    Full(Full<Bytes>),
    Stream(ChannelBody),
}

impl Body for StandinBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            StandinBody::Full(f) => Pin::new(f).poll_frame(cx),
            StandinBody::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }
}

pub type StandinResponse = Response<StandinBody>;

pub fn full(status: u16, content_type: &str, body: impl Into<Bytes>) -> StandinResponse {
    let mut r = Response::new(StandinBody::Full(Full::new(body.into())));
    *r.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn status_response(code: u16, reason: &str, message: &str) -> StandinResponse {
    let body = serde_json::to_vec(&codec::status(code, reason, message, None)).unwrap_or_default();
    full(code, codec::JSON, body)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Accept connections until the task is dropped.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, state: Arc<State>) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            // The handshake off the accept loop, with a deadline.
            let Ok(Ok(stream)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let cert_caller = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| state.ca.identity_of(c.as_ref()));
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                let cert_caller = cert_caller.clone();
                async move { Ok::<_, Infallible>(handle(state, cert_caller, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

/// Authenticate: a bearer token wins over a client certificate, as in the API server's union
/// authenticator order (a presented but unknown token is 401, not a fall back to the cert).
fn authenticate(
    state: &State,
    headers: &HeaderMap,
    cert: &Option<Option<super::tls::CertIdentity>>,
    entry: &mut LogEntry,
) -> Option<Caller> {
    if let Some(auth) = header(headers, "authorization") {
        entry.auth = "bearer".into();
        let token = auth.strip_prefix("Bearer ").map(str::trim)?;
        entry.token_fingerprint = Some(token_fingerprint(token));
        if token == state.auth.gateway_token {
            return Some(Caller {
                user: state.auth.gateway_user.clone(),
                groups: vec!["system:authenticated".into()],
                may_impersonate: true,
            });
        }
        let (user, groups) = state.auth.agent_tokens.get(token)?;
        let mut groups = groups.clone();
        groups.push("system:authenticated".into());
        return Some(Caller {
            user: user.clone(),
            groups,
            may_impersonate: false,
        });
    }
    match cert {
        Some(Some(id)) => {
            entry.auth = "cert".into();
            let mut groups = id.groups.clone();
            groups.push("system:authenticated".into());
            Some(Caller {
                user: id.user.clone(),
                groups,
                may_impersonate: state.auth.impersonating_cert_users.contains(&id.user),
            })
        }
        Some(None) => {
            // Verified against our CA, but not a certificate we handed out.
            entry.auth = "cert".into();
            None
        }
        None => {
            entry.auth = "none".into();
            None
        }
    }
}

/// Impersonation, as the API server's impersonation filter applies it: only callers allowed to
/// impersonate, a user is required, groups and extras go with it.
fn impersonate(caller: &Caller, entry: &LogEntry) -> Result<Caller, (u16, String)> {
    if entry.impersonation.is_empty() {
        return Ok(caller.clone());
    }
    let user = entry.impersonation_values("impersonate-user");
    if !caller.may_impersonate {
        let (res, name) = match user.first() {
            Some(u) => ("users", *u),
            None => (
                "groups",
                entry.impersonation.first().map_or("", |(_, v)| v.as_str()),
            ),
        };
        return Err((
            403,
            format!(
                "{res} \"{name}\" is forbidden: User \"{}\" cannot impersonate resource \"{res}\" in API group \"\" at the cluster scope",
                caller.user
            ),
        ));
    }
    match user.as_slice() {
        [u] if !u.is_empty() => {
            let mut groups: Vec<String> = entry
                .impersonation_values("impersonate-group")
                .into_iter()
                .map(str::to_string)
                .collect();
            groups.push("system:authenticated".into());
            Ok(Caller {
                user: u.to_string(),
                groups,
                may_impersonate: false,
            })
        }
        [] => Err((
            403,
            "requested impersonation of groups or extras without impersonating a user".into(),
        )),
        _ => Err((400, "Impersonate-User given more than once".into())),
    }
}

const BODY_LIMIT: usize = 16 << 20;

async fn handle(
    state: Arc<State>,
    cert: Option<Option<super::tls::CertIdentity>>,
    req: Request<Incoming>,
) -> StandinResponse {
    let headers = req.headers().clone();
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let mut entry = LogEntry {
        seq: 0,
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        auth: String::new(),
        token_fingerprint: None,
        authenticated_user: None,
        effective_user: None,
        effective_groups: Vec::new(),
        impersonation: headers
            .iter()
            .filter(|(n, _)| n.as_str().starts_with("impersonate-"))
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        accept: header(&headers, "accept").map(str::to_string),
        content_type: header(&headers, "content-type").map(str::to_string),
        user_agent: header(&headers, "user-agent").map(str::to_string),
        upgrade: header(&headers, "upgrade").map(str::to_string),
        websocket_protocols: header(&headers, "sec-websocket-protocol").map(str::to_string),
        body_bytes: 0,
        body: Vec::new(),
        status: 0,
        response_content_type: None,
    };
    let caller = authenticate(&state, &headers, &cert, &mut entry);
    let resp = match caller {
        None => status_response(401, "Unauthorized", "Unauthorized"),
        Some(caller) => {
            entry.authenticated_user = Some(caller.user.clone());
            match impersonate(&caller, &entry) {
                Err((code, msg)) => status_response(
                    code,
                    if code == 403 {
                        "Forbidden"
                    } else {
                        "BadRequest"
                    },
                    &msg,
                ),
                Ok(effective) => {
                    entry.effective_user = Some(effective.user.clone());
                    entry.effective_groups = effective.groups.clone();
                    dispatch(&state, req, &headers, &method, &path, &query, &mut entry).await
                }
            }
        }
    };
    entry.status = resp.status().as_u16();
    entry.response_content_type = header(resp.headers(), "content-type").map(str::to_string);
    state.log.push(entry);
    resp
}

async fn dispatch(
    state: &Arc<State>,
    req: Request<Incoming>,
    headers: &HeaderMap,
    method: &str,
    path: &str,
    query: &str,
    entry: &mut LogEntry,
) -> StandinResponse {
    let params = api::parse_query(query);
    if headers.contains_key("upgrade") || headers.contains_key("sec-websocket-key") {
        if super::portforward::is_port_forward(path) {
            return super::portforward::upgrade(state, req, headers, path).await;
        }
        return exec::upgrade(state, req, headers, path, params).await;
    }
    let body = match Limited::new(req.into_body(), BODY_LIMIT).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return status_response(
                413,
                "RequestEntityTooLarge",
                &format!("the body could not be read: {e}"),
            )
        }
    };
    entry.body_bytes = body.len();
    entry.body = body[..body.len().min(64 << 10)].to_vec();
    let areq = ApiRequest {
        method,
        path,
        query: params,
        accept: header(headers, "accept"),
        content_type: header(headers, "content-type"),
        body,
        server_addr: &state.server_addr,
    };
    let reply = if let Some(r) = api::non_resource(&areq, state.aggregated_discovery) {
        r
    } else if path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews" {
        api::self_subject_access_review(&areq)
    } else if let Some(rp) = api::resolve(path) {
        if rp.subresource == Some("portforward") {
            Reply::status(
                Output::Json,
                400,
                "BadRequest",
                "Upgrade request required (pods/portforward: WebSocket SPDY/3.1+portforward.k8s.io or SPDY/3.1)",
            )
        } else if rp.subresource == Some("exec") {
            Reply::status(
                Output::Json,
                400,
                "BadRequest",
                "pods/exec needs an upgrade to WebSocket (v5.channel.k8s.io or v4.channel.k8s.io)",
            )
        } else {
            api::handle(&state.store, &state.log, &areq, &rp)
        }
    } else {
        Reply::status(
            Output::Json,
            404,
            "NotFound",
            &format!("the server could not find the requested resource ({method} {path}): the stand-in does not serve it"),
        )
    };
    match reply {
        Reply::Full {
            status,
            content_type,
            body,
        } => full(status, &content_type, body),
        Reply::Stream { content_type, rx } => {
            let mut r = Response::new(StandinBody::Stream(ChannelBody { rx }));
            if let Ok(v) = content_type.parse() {
                r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
            }
            r
        }
    }
}
