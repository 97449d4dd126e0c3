//! One request through the gateway: the session's login on the first request (`login.rs`) or
//! its identity check on later ones, what the request is (Kubernetes' RequestInfo, or method
//! and path), the one gate (deny → approval → durable intent), the forward with the gateway's
//! credential, and the answer, masked and on record.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Instant,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    body::Incoming,
    header::{self, HeaderMap, HeaderValue},
    Request, Response, StatusCode,
};

use super::{
    kube, portforward, rbac_diff, recent, request_info,
    respond::{self, closing, refusal, AgentBody},
    rules::{self, HttpAction},
    tee::Tee,
    upstream, Conn, Live,
};
use crate::{
    mask::plan::Plan,
    net::Connect,
    policy::{UpstreamIdentity, Who},
    protocol::action_gate::{self, Described, Gated, Judgement, Silent},
    record::{now_ms, CommandOutput, Record, Statement},
};

/// Headers that belong to one hop (RFC 9110 §7.6.1) and never go further.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A response of the `secrets` resource is read whole (to mask it) up to this; a larger one is
/// not passed on.
const MAX_MASKED_BODY: usize = 64 << 20;

/// The bearer token of the `Authorization` header; `Err` (why) when there is a header that is
/// not one, or more than one header.
pub(super) fn bearer(headers: &HeaderMap) -> Result<Option<String>, &'static str> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let Some(v) = all.next() else {
        return Ok(None);
    };
    // Two credentials on one request: the gateway would verify one, and a server that reads
    // another (the last, say) would act on a token nobody verified, where it is passed on.
    if all.next().is_some() {
        return Err("the request has more than one Authorization header");
    }
    let not_bearer = "the Authorization header is not a bearer token";
    let v = v.to_str().map_err(|_| not_bearer)?;
    let (scheme, token) = v.split_once(' ').ok_or(not_bearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(not_bearer);
    }
    Ok(Some(token.trim().to_string()))
}

/// What a request is, for the rules, the record and approvers.
struct Classified {
    info: Option<request_info::RequestInfo>,
    exec: Option<Vec<String>>,
    method: String,
    path: String,
    query: String,
    /// The verb (Kubernetes) or the method in lower case.
    class: String,
    /// `resource[.group][/subresource]`, or the path of a non-resource request.
    resource: String,
    namespace: String,
}

impl Classified {
    /// Anything but a read: a Kubernetes verb other than get/list/watch (exec and attach
    /// streams included, which are GETs), any method but GET/HEAD/OPTIONS.
    fn privileged(&self) -> bool {
        if self.exec.is_some() || self.info.as_ref().is_some_and(portforward::is_port_forward) {
            return true;
        }
        match &self.info {
            Some(info) if info.is_resource_request => {
                !matches!(info.verb.as_str(), "get" | "list" | "watch")
            }
            _ => !matches!(self.method.as_str(), "GET" | "HEAD" | "OPTIONS"),
        }
    }
}

impl<'a, C: Connect> Conn<'a, C> {
    pub(super) async fn exchange(&self, mut req: Request<Incoming>) -> Response<AgentBody> {
        let kube = self.kubernetes();
        let live = match self.live.get() {
            Some(live) => live,
            None => match self.login(&req).await {
                Ok(()) => match self.live.get() {
                    Some(live) => live,
                    None => {
                        return closing(refusal(kube, StatusCode::FORBIDDEN, "agentgate: refused"))
                    }
                },
                Err(response) => return response,
            },
        };
        let started = Instant::now();
        let mut rec = self.statement(live, &req);
        // A connection is one identity: another token on it is refused, and ends it.
        match bearer(req.headers()) {
            Ok(b) if b == live.bearer => {}
            _ => {
                let why = "agentgate: a different credential on an admitted connection";
                self.end.cancel();
                return closing(
                    self.refused(rec, "(identity)", StatusCode::UNAUTHORIZED, why)
                        .await,
                );
            }
        }
        let upgrade = req
            .headers()
            .get(header::UPGRADE)
            .map(|v| v.to_str().unwrap_or("?").to_ascii_lowercase());
        let agent_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        if kube && kube::impersonates(req.headers()) {
            let why = "agentgate: impersonation headers are the gateway's to set";
            return self
                .refused(rec, "(impersonation)", StatusCode::FORBIDDEN, why)
                .await;
        }
        let (mut parts, body) = req.into_parts();
        let body = match Limited::new(body, self.http.max_body_bytes).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                let why = format!(
                    "agentgate: the request body could not be read whole (at most {} bytes): {e}",
                    self.http.max_body_bytes
                );
                return self
                    .refused(rec, "(body)", StatusCode::PAYLOAD_TOO_LARGE, &why)
                    .await;
            }
        };
        self.bytes_up
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        let classified = match self.classify(&parts) {
            Ok(c) => c,
            Err(why) => {
                return self
                    .refused(rec, "(unreadable)", StatusCode::BAD_REQUEST, &why)
                    .await
            }
        };
        let secrets = classified
            .info
            .as_ref()
            .is_some_and(|i| i.is_resource_request && i.resource == "secrets");
        let shown_body = match self.readable_body(&parts.headers, &body, secrets) {
            Ok(b) => b,
            Err(why) => {
                return self
                    .refused(
                        rec,
                        "(unreadable)",
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        &why,
                    )
                    .await
            }
        };
        // A port-forward: its transport and the ports its query names (portforward.rs).
        let asked = match portforward::Asked::of(
            classified.info.as_ref(),
            &classified.query,
            upgrade.as_deref(),
            &parts.headers,
        ) {
            Ok(a) => a,
            Err(why) => {
                return self
                    .refused(rec, "(unreadable)", StatusCode::BAD_REQUEST, &why)
                    .await
            }
        };
        if let Some(kind) = &upgrade {
            // Only exec, attach and port-forward streams are relayed, and only as WebSocket or
            // SPDY; an upgrade of anything else is refused (and on record).
            let exec_like = classified.exec.is_some() || asked.is_some();
            if !exec_like || !(kind == "websocket" || kind.starts_with("spdy/")) {
                let why = format!(
                    "agentgate: a `{kind}` upgrade of {} {} is refused (only pods/exec, pods/attach and pods/portforward streams are relayed)",
                    classified.method, classified.path
                );
                return self
                    .refused(rec, "(upgrade)", StatusCode::FORBIDDEN, &why)
                    .await;
            }
        }
        // An exec's output is masked where detector rules apply; only a stream the gateway
        // can read is let through then. (A port-forward carries any protocol: not masked.)
        let exec_plan = (upgrade.is_some() && classified.exec.is_some())
            .then(|| self.mask_plan(live))
            .flatten();
        if let (Some(kind), Some(_)) = (&upgrade, &exec_plan) {
            if let Err(why) = super::exec_mask::restrict_offer(kind, &mut parts.headers) {
                return self
                    .refused(rec, "(masked output)", StatusCode::FORBIDDEN, &why)
                    .await;
            }
        }
        rec.class = classified.class.clone();
        rec.privileged = classified.privileged();
        rec.tables = vec![classified.resource.clone()];
        if let Some(b) = &shown_body {
            rec.text = format!("{}\n{b}", rec.text);
        }
        let mut described = Described {
            protocol: if kube { "kubernetes" } else { "http" },
            noun: "request",
            namespace: classified.namespace.clone(),
            text: rec.text.clone(),
            class: classified.class.clone(),
            privileged: classified.privileged(),
        };
        let g = &live.admitted.grant;
        let who = who(live);
        let action = match &classified.info {
            Some(info) => HttpAction::Kubernetes {
                info,
                exec: classified.exec.as_deref(),
            },
            None => HttpAction::Plain {
                method: &classified.method,
                path: &classified.path,
            },
        };
        let target = self.target.name.as_str();
        // An exec or port-forward refused just now (kubectl's SPDY retry of a refused WebSocket
        // one) is refused again with the same answer, not put to people twice.
        let forward_ports: Option<Vec<String>> = asked
            .as_ref()
            .map(|a| a.ports.iter().map(u16::to_string).collect());
        let keyed = classified.exec.as_ref().or(forward_ports.as_ref());
        let exec_key = keyed.map(|command| {
            let info = classified.info.as_ref();
            let pod = info.map(|i| i.name.as_str()).unwrap_or("");
            let sub = info.map(|i| i.subresource.as_str()).unwrap_or("");
            let container = request_info::exec_options(&classified.query).container;
            let mut parts = vec![
                g.issuer.as_str(),
                g.subject.as_str(),
                g.workload.as_str(),
                target,
                classified.namespace.as_str(),
                pod,
                sub,
                container.as_str(),
            ];
            parts.extend(command.iter().map(String::as_str));
            recent::key(&parts)
        });
        // An RBAC change that will wait for people: they see what it would change.
        if let Some(info) = classified
            .info
            .as_ref()
            .filter(|i| rbac_diff::is_rbac_change(i))
        {
            let now = self.core.policy.borrow().clone();
            if let Judgement::Approval { .. } = rules::judge(&now, &who, target, &action) {
                let sent: Option<serde_json::Value> = shown_body
                    .as_deref()
                    .and_then(|b| serde_json::from_str(b).ok());
                let current = match rbac_diff::object_path(info, sent.as_ref()) {
                    Some(path) => self.fetch_current(live, &path).await,
                    None => Err("the request names no object".into()),
                };
                let diff = rbac_diff::describe(&info.verb, current, sent.as_ref());
                described.text = format!("{}\n{diff}", described.text);
            }
        }
        if let Some(message) = exec_key.as_ref().and_then(|k| self.handler.recent.get(k)) {
            let rule = "(refused just now)";
            return self
                .refused(rec, rule, StatusCode::FORBIDDEN, &message)
                .await;
        }
        let gated = action_gate::pass(
            &live.gate,
            |p| portforward::judge(p, &who, target, &action, asked.as_ref()),
            &described,
            &mut rec,
            &Silent,
        )
        .await;
        let busy = match gated {
            Gated::Refused { message } => {
                if let Some(k) = exec_key {
                    self.handler.recent.remember(k, &message);
                }
                self.denied.fetch_add(1, Ordering::Relaxed);
                self.core.recorder.record(Record::Statement(rec)).await;
                return refusal(kube, StatusCode::FORBIDDEN, &message);
            }
            Gated::Forward { busy, approval } => (busy, approval),
        };
        let (busy, approval) = busy;
        let upstream_req = match self.upstream_request(live, parts, body, upgrade.as_deref()) {
            Ok(r) => r,
            Err(why) => {
                drop(busy);
                return self.failed(rec, &why).await;
            }
        };
        let sent = {
            let mut up = live.upstream.lock().await;
            match up.ready().await {
                Ok(()) => Ok(up.send_request(upstream_req)),
                Err(e) => Err(e),
            }
        };
        drop(busy);
        if let Some(id) = &approval {
            self.core.approvals.forwarded(id, &live.gate.session);
        }
        let response = match sent {
            Ok(fut) => fut.await,
            Err(e) => Err(e),
        };
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                self.end.cancel();
                return closing(
                    self.failed(rec, &format!("agentgate: the target failed: {e}"))
                        .await,
                );
            }
        };
        match (agent_upgrade, upgrade, asked) {
            (Some(agent_upgrade), Some(_), Some(asked))
                if response.status() == StatusCode::SWITCHING_PROTOCOLS =>
            {
                let chosen = response
                    .headers()
                    .get(header::SEC_WEBSOCKET_PROTOCOL)
                    .and_then(|v| v.to_str().ok());
                let g = &live.admitted.grant;
                let stream = portforward::Stream {
                    recorder: &self.core.recorder,
                    rec,
                    inspect: portforward::Inspect::new(&asked, chosen),
                    asked_ports: asked.ports.clone(),
                    judge: portforward::PortJudge {
                        policy: self.core.policy.clone(),
                        issuer: g.issuer.clone(),
                        subject: g.subject.clone(),
                        groups: g.groups.clone(),
                        workload: g.workload.clone(),
                        target: self.target.name.clone(),
                        info: classified.info.clone().unwrap_or_default(),
                    },
                    ended: live.gate.ended.clone(),
                    started,
                };
                self.switch(response, agent_upgrade, |a, t| {
                    portforward::relay(stream, a, t)
                })
            }
            (Some(agent_upgrade), Some(kind), None)
                if response.status() == StatusCode::SWITCHING_PROTOCOLS =>
            {
                let stream = super::exec::Stream {
                    recorder: &self.core.recorder,
                    rec,
                    websocket: kind == "websocket",
                    title: exec_title(live, &self.target.name, &classified),
                    ended: live.gate.ended.clone(),
                    started,
                    mask: exec_plan.map(|p| (p, response.headers().clone())),
                };
                self.switch(response, agent_upgrade, |a, t| {
                    super::exec::relay(stream, a, t)
                })
            }
            _ => self.answer(live, rec, &classified, response, started).await,
        }
    }

    /// The target agreed to an exec/attach/port-forward upgrade: the agent gets the same 101,
    /// and the stream's relay (`relay` of the two upgrades) joins the connection's.
    fn switch(
        &self,
        mut response: Response<Incoming>,
        agent_upgrade: hyper::upgrade::OnUpgrade,
        relay: impl FnOnce(
            hyper::upgrade::OnUpgrade,
            hyper::upgrade::OnUpgrade,
        ) -> super::exec::Relay<'a>,
    ) -> Response<AgentBody> {
        let target_upgrade = hyper::upgrade::on(&mut response);
        let mut to_agent = Response::new(respond::full(Bytes::new()));
        *to_agent.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *to_agent.headers_mut() = response.headers().clone();
        let relay = relay(agent_upgrade, target_upgrade);
        if let Ok(mut relays) = self.relays.lock() {
            relays.push(relay);
        }
        self.relay_added.notify_one();
        to_agent
    }

    /// The record of a request, before anything is decided.
    fn statement(&self, live: &Live<'a>, req: &Request<Incoming>) -> Statement {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let target = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        Statement {
            session: live.gate.session.clone(),
            seq,
            started_ms: now_ms(),
            kind: "request",
            text: format!("{} {target}", req.method()),
            params: Vec::new(),
            class: req.method().as_str().to_ascii_lowercase(),
            // Until the request is classified: as its method says.
            privileged: !matches!(req.method().as_str(), "GET" | "HEAD" | "OPTIONS"),
            tables: Vec::new(),
            functions: Vec::new(),
            decision: "allowed",
            rule: Some(live.admitted.rule.clone()),
            duration_us: None,
            rows: None,
            error_code: None,
            error: None,
            results: None,
            results_cut: false,
            exit_status: None,
            output: None,
        }
    }

    /// A request refused before the gate (unreadable, not allowed on this connection): on
    /// record as denied, and answered.
    async fn refused(
        &self,
        mut rec: Statement,
        rule: &str,
        code: StatusCode,
        why: &str,
    ) -> Response<AgentBody> {
        self.denied.fetch_add(1, Ordering::Relaxed);
        rec.decision = "denied";
        rec.rule = Some(rule.to_string());
        rec.error = Some(why.to_string());
        self.core.recorder.record(Record::Statement(rec)).await;
        refusal(self.kubernetes(), code, why)
    }

    /// A request that passed the gate but could not be forwarded.
    async fn failed(&self, mut rec: Statement, why: &str) -> Response<AgentBody> {
        rec.error = Some(why.to_string());
        self.core.recorder.record(Record::Statement(rec)).await;
        refusal(self.kubernetes(), StatusCode::BAD_GATEWAY, why)
    }

    fn classify(&self, parts: &hyper::http::request::Parts) -> Result<Classified, String> {
        let method = parts.method.as_str().to_string();
        let path = parts.uri.path().to_string();
        if !self.kubernetes() {
            return Ok(Classified {
                info: None,
                exec: None,
                query: parts.uri.query().unwrap_or("").to_string(),
                class: method.to_ascii_lowercase(),
                resource: path.clone(),
                namespace: String::new(),
                method,
                path,
            });
        }
        let query = parts.uri.query();
        let info = request_info::resolve(&method, &path, query)
            .map_err(|e| format!("agentgate: the request cannot be classified: {e}"))?;
        let exec = (info.resource == "pods"
            && matches!(info.subresource.as_str(), "exec" | "attach"))
        .then(|| request_info::exec_command(query.unwrap_or("")));
        let resource = if !info.is_resource_request {
            info.path.clone()
        } else {
            let mut r = info.resource.clone();
            if !info.api_group.is_empty() {
                r = format!("{r}.{}", info.api_group);
            }
            if !info.subresource.is_empty() {
                r = format!("{r}/{}", info.subresource);
            }
            r
        };
        Ok(Classified {
            query: query.unwrap_or("").to_string(),
            class: info.verb.clone(),
            namespace: info.namespace.clone(),
            resource,
            exec,
            info: Some(info),
            method,
            path,
        })
    }

    /// The request body as approvers and the record see it; `Err` when it cannot be read (a
    /// body the gateway cannot show is not forwarded). `secrets`: the request is to the
    /// `secrets` resource, whose values are never shown.
    fn readable_body(
        &self,
        headers: &HeaderMap,
        body: &Bytes,
        secrets: bool,
    ) -> Result<Option<String>, String> {
        if body.is_empty() {
            return Ok(None);
        }
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if self.kubernetes() && content_type.starts_with("application/vnd.kubernetes.protobuf") {
            // kubectl sends built-in types as protobuf: decoded to the JSON the API server
            // would show, so approvers, rules and the record see what it says. A body that does
            // not decode is not forwarded.
            let mut v = super::kube_pb::decode(body).map_err(|e| {
                format!("agentgate: a protobuf request body the gateway cannot read: {e}")
            })?;
            kube::mask_secrets(&mut v, secrets);
            return Ok(Some(v.to_string()));
        }
        match std::str::from_utf8(body) {
            // To a Secret: shown masked, or not at all (and then not forwarded).
            Ok(text) if secrets && self.kubernetes() => kube::masked_secret_body(text)
                .map(|v| Some(v.to_string()))
                .ok_or_else(|| {
                    "agentgate: a request body to a Secret that the gateway cannot read to mask"
                        .to_string()
                }),
            Ok(text) => {
                let mut text = text.to_string();
                // A Secret's values are not shown to approvers nor kept on record.
                if self.kubernetes() {
                    if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&text) {
                        if kube::mask_secrets(&mut v, false) > 0 {
                            text = v.to_string();
                        }
                    }
                }
                Ok(Some(text))
            }
            // Its digest, not just its length: the text is what "the identical request" of a
            // deny-and-retry approval is, and another body of the same length is not it.
            Err(_) if !self.kubernetes() => {
                use sha2::{Digest, Sha256};
                let digest: String = Sha256::digest(body)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                Ok(Some(format!(
                    "({} bytes, not text, sha256 {digest})",
                    body.len()
                )))
            }
            Err(_) => Err("agentgate: a request body that is neither JSON nor text".into()),
        }
    }

    /// The request as the target gets it: hop-by-hop headers dropped, the agent's credential
    /// replaced by the gateway's, impersonation and JSON for Kubernetes.
    /// The detector rules (`mask:` with detectors or regexes) that apply to this agent on
    /// this target, as the policy in force says now.
    fn mask_plan(&self, live: &Live<'a>) -> Option<Arc<Plan>> {
        let policy = self.core.policy.borrow().clone();
        Plan::build(&policy, &who(live), &self.target.name).filter(|p| p.has_detectors())
    }

    fn upstream_request(
        &self,
        live: &Live<'a>,
        parts: hyper::http::request::Parts,
        body: Bytes,
        upgrade: Option<&str>,
    ) -> Result<Request<upstream::UpstreamBody>, String> {
        let mut headers = parts.headers;
        let upgrade_value = headers.get(header::UPGRADE).cloned();
        for h in HOP_BY_HOP {
            headers.remove(h);
        }
        // Answers come back uncompressed, so that the gateway can mask and record them.
        headers.remove(header::ACCEPT_ENCODING);
        // The target is the one the policy names, whatever Host the agent wrote: on a server of
        // several virtual hosts another Host would take the gateway's credential elsewhere.
        let host = HeaderValue::from_str(&self.upstream_host())
            .map_err(|_| "agentgate: the target's name is not a Host value".to_string())?;
        headers.insert(header::HOST, host);
        // An upgrade the gate let through goes on as one (the only hop-by-hop headers kept).
        if let (Some(_), Some(v)) = (upgrade, upgrade_value) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            headers.insert(header::UPGRADE, v);
        }
        match self.http.upstream_identity {
            UpstreamIdentity::PassThrough => {}
            UpstreamIdentity::Credential | UpstreamIdentity::Impersonate => {
                headers.remove(header::AUTHORIZATION);
                if let Some(secret) = &self.target.credential {
                    let token = secret
                        .resolve()
                        .map_err(|e| format!("agentgate: the gateway's credential: {e}"))?;
                    let v = HeaderValue::from_str(&format!("Bearer {token}"))
                        .map_err(|_| "agentgate: the gateway's credential is not a header value")?;
                    headers.insert(header::AUTHORIZATION, v);
                }
            }
        }
        if self.kubernetes() {
            // The OpenAPI documents come in their own protobuf types, carry no Secret and
            // are not masked: their Accept is left alone.
            if !parts.uri.path().starts_with("/openapi/") {
                kube::ask_for_json(&mut headers);
            }
            if self.http.upstream_identity == UpstreamIdentity::Impersonate {
                let g = &live.admitted.grant;
                let who = kube::Impersonated {
                    user: format!("{}#{}", g.issuer, g.subject),
                    groups: &live.groups,
                    extra: vec![
                        ("agentgate.io/session", live.gate.session.clone()),
                        ("agentgate.io/workload", g.workload.clone()),
                    ],
                };
                kube::impersonate(&mut headers, &who).map_err(|e| format!("agentgate: {e}"))?;
            }
        }
        let uri = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let mut req = Request::builder()
            .method(parts.method)
            .uri(uri)
            .body(Full::new(body))
            .map_err(|e| format!("agentgate: {e}"))?;
        *req.headers_mut() = headers;
        Ok(req)
    }

    /// The target's answer to the agent: Secrets masked (read whole, or event by event for a
    /// watch), everything else streamed; on record once it has been passed on.
    async fn answer(
        &self,
        live: &Live<'a>,
        mut rec: Statement,
        classified: &Classified,
        response: Response<Incoming>,
        started: Instant,
    ) -> Response<AgentBody> {
        let (mut parts, body) = response.into_parts();
        for h in HOP_BY_HOP {
            parts.headers.remove(h);
        }
        rec.exit_status = Some(u32::from(parts.status.as_u16()));
        let cap = live.admitted.policy.gateway.record_result_bytes;
        let secrets = classified
            .info
            .as_ref()
            .is_some_and(|i| i.is_resource_request && i.resource == "secrets");
        let watch = classified.class == "watch";
        // The detector rules (`mask:` with detectors or regexes) that apply to this agent on
        // this target, as the policy in force says now.
        let plan = self.mask_plan(live);
        // The gateway asked for no compression; an answer compressed anyway cannot be masked
        // and is not passed on when it would have to be.
        let encoded = parts
            .headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        if encoded && (secrets || plan.is_some()) {
            let why = "agentgate: the target compressed an answer the gateway must mask";
            return self.failed(rec, why).await;
        }
        // A part of a body (`Range`) is masked as if it were all of it: a value cut at the
        // part's edge is no hit for the detectors, and the agent puts the parts together.
        let partial = parts.status == StatusCode::PARTIAL_CONTENT
            || parts.headers.contains_key(header::CONTENT_RANGE);
        if partial && (secrets || plan.is_some()) {
            let why =
                "agentgate: a part of an answer (a byte range) cannot be masked; ask for all of it";
            return self.failed(rec, why).await;
        }
        if secrets && !watch {
            let whole = match Limited::new(body, MAX_MASKED_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    let why =
                        format!("agentgate: the target's answer could not be read to mask it: {e}");
                    return self.failed(rec, &why).await;
                }
            };
            let mut masked = match mask_whole(&parts.headers, &whole) {
                Ok(m) => m,
                Err(why) => return self.failed(rec, &why).await,
            };
            if let Some(plan) = &plan {
                if let std::borrow::Cow::Owned(m) = plan.mask_bytes(&masked) {
                    masked = Bytes::from(m);
                }
            }
            parts.headers.remove(header::CONTENT_LENGTH);
            self.bytes_down_shared
                .fetch_add(masked.len() as u64, Ordering::Relaxed);
            rec.duration_us = Some(started.elapsed().as_micros() as u64);
            rec.output = Some(output(
                &masked[..masked.len().min(cap)],
                masked.len() > cap,
                masked.len() as u64,
            ));
            self.core.recorder.record(Record::Statement(rec)).await;
            return Response::from_parts(parts, respond::full(masked));
        }
        if secrets || plan.is_some() {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        let (tee, seen) = Tee::new(body, cap, watch, secrets, plan);
        let recorder = self.core.recorder.clone();
        let ended = live.gate.ended.clone();
        let bytes_down = self.bytes_down_handle();
        tokio::spawn(async move {
            let seen = tokio::select! {
                s = seen => s.unwrap_or_default(),
                () = ended.cancelled() => Default::default(),
            };
            bytes_down(seen.bytes);
            rec.duration_us = Some(started.elapsed().as_micros() as u64);
            rec.error = seen.error.clone();
            rec.output = Some(output(&seen.kept, seen.cut, seen.bytes));
            recorder.record(Record::Statement(rec)).await;
        });
        Response::from_parts(parts, BodyExt::boxed(tee))
    }

    /// The Host the target is asked by: the name upstream TLS checks (`server_name`), or the
    /// address dialled, with the port unless it is the scheme's default.
    fn upstream_host(&self) -> String {
        let (name, default_port) = match &self.http.upstream_tls {
            crate::policy::UpstreamTls::VerifyFull {
                server_name: Some(n),
                ..
            } => (n.clone(), 443),
            crate::policy::UpstreamTls::VerifyFull { .. } => (self.dst.ip().to_string(), 443),
            crate::policy::UpstreamTls::Disable => (self.dst.ip().to_string(), 80),
        };
        let name = if name.contains(':') && !name.starts_with('[') {
            format!("[{name}]")
        } else {
            name
        };
        if self.dst.port() == default_port {
            name
        } else {
            format!("{name}:{}", self.dst.port())
        }
    }

    /// The object at `path` as the API server has it now, read with the gateway's own
    /// credential (no impersonation: approvers see it whatever the agent may read); `Ok(None)`
    /// when it does not exist.
    async fn fetch_current(
        &self,
        live: &Live<'a>,
        path: &str,
    ) -> Result<Option<serde_json::Value>, String> {
        let mut req = Request::builder()
            .method("GET")
            .uri(path)
            .header(header::HOST, self.upstream_host())
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        if let Some(secret) = &self.target.credential {
            let token = secret.resolve()?;
            let v = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| "the gateway's credential is not a header value".to_string())?;
            req.headers_mut().insert(header::AUTHORIZATION, v);
        }
        let response = {
            let mut up = live.upstream.lock().await;
            up.ready().await.map_err(|e| e.to_string())?;
            up.send_request(req)
        }
        .await
        .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = Limited::new(response.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        match status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| format!("not JSON: {e}")),
            s => Err(s.to_string()),
        }
    }

    /// Counts bytes to the agent from a task that outlives the borrow of the connection.
    fn bytes_down_handle(&self) -> impl FnOnce(u64) + Send + 'static {
        let counter = self.bytes_down_shared.clone();
        move |n| {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// The recording's title: who, where, and the exec as kubectl would have been asked for it.
fn exec_title(live: &Live<'_>, target: &str, c: &Classified) -> String {
    let (ns, pod, sub) = c
        .info
        .as_ref()
        .map(|i| {
            (
                i.namespace.as_str(),
                i.name.as_str(),
                i.subresource.as_str(),
            )
        })
        .unwrap_or_default();
    let o = request_info::exec_options(&c.query);
    let container = if o.container.is_empty() {
        String::new()
    } else {
        format!(" -c {}", o.container)
    };
    let flags = match (o.stdin, o.tty) {
        (true, true) => " -it",
        (true, false) => " -i",
        (false, true) => " -t",
        (false, false) => "",
    };
    let command = c.exec.as_deref().unwrap_or_default().join(" ");
    format!(
        "{} on {target}: kubectl {sub} -n {ns} {pod}{container}{flags} -- {command}",
        live.admitted.grant.subject
    )
}

/// A whole answer of the `secrets` resource, masked; `Err` when it cannot be read to mask.
fn mask_whole(headers: &HeaderMap, body: &Bytes) -> Result<Bytes, String> {
    if body.is_empty() {
        return Ok(body.clone());
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/json") {
        return Err(format!(
            "agentgate: the target answered `{content_type}`, which the gateway cannot mask"
        ));
    }
    let mut v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        format!("agentgate: the target's answer is not JSON the gateway can mask: {e}")
    })?;
    kube::mask_secrets(&mut v, true);
    serde_json::to_vec(&v)
        .map(Bytes::from)
        .map_err(|e| format!("agentgate: {e}"))
}

fn output(kept: &[u8], cut: bool, bytes: u64) -> CommandOutput {
    CommandOutput {
        stdout: String::from_utf8_lossy(kept).into_owned(),
        stderr: String::new(),
        cut,
        bytes,
    }
}

/// The agent of an admitted connection, as rules and mask rules see it.
fn who<'l>(live: &'l Live<'_>) -> Who<'l> {
    let g = &live.admitted.grant;
    Who {
        issuer: &g.issuer,
        subject: &g.subject,
        groups: &g.groups,
        workload: &g.workload,
        login: None,
    }
}
