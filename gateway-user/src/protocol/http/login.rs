//! A connection's login, on its first request: the bearer token it carries (or the workload's
//! token file) admits the session, the gateway connects upstream, and the connection becomes
//! one identity ([`Live`]) for every later request.

use std::time::Instant;

use hyper::{body::Incoming, Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;

use super::{
    exchange::bearer,
    respond::{closing, refusal, AgentBody},
    upstream, Conn, Live,
};
use crate::{
    net::Connect,
    protocol::action_gate::GateCtx,
    proxy::{authorize, facts::UpstreamFailed, session_id, Refusal},
};

impl<'a, C: Connect> Conn<'a, C> {
    /// Admits the session with the first request's token (or the workload's token file) and
    /// connects upstream; `Err` is the answer that ends the connection.
    pub(super) async fn login(&self, req: &Request<Incoming>) -> Result<(), Response<AgentBody>> {
        let kube = self.kubernetes();
        let taken = self.login.lock().ok().and_then(|mut l| l.take());
        let Some((placed, mut facts)) = taken else {
            return Err(closing(refusal(
                kube,
                StatusCode::SERVICE_UNAVAILABLE,
                "agentgate: the connection is ending",
            )));
        };
        let token = match bearer(req.headers()) {
            Ok(Some(t)) => Ok((Some(t.clone()), t)),
            Ok(None) => authorize::workload_token(
                &placed.workload,
                &placed.target,
                self.pid,
                &placed.cgroup,
            )
            .await
            .map(|t| (None, t)),
            Err(why) => Err(Refusal::new("no_token", why)),
        };
        let admitted = match token {
            Ok((bearer, token)) => self
                .core
                .admit(self.id, self.dst, placed, &token, None, &mut facts)
                .await
                .map(|a| (bearer, a)),
            Err(r) => Err(r),
        };
        let (bearer, admitted) = match admitted {
            Ok(a) => a,
            Err(r) => {
                let code = match r.code {
                    "denied" => StatusCode::FORBIDDEN,
                    _ => StatusCode::UNAUTHORIZED,
                };
                let told = format!("agentgate: {}", r.message);
                self.core.refuse(&facts, r).await;
                self.end.cancel();
                return Err(closing(refusal(kube, code, &told)));
            }
        };
        self.core.emit_allowed(&facts, &admitted);
        let up = match upstream::connect(&self.core.connector, self.dst, &self.http).await {
            Ok(u) => u,
            Err(e) => {
                let e = e.to_string();
                tracing::warn!(target = self.target.name, "upstream: {e}");
                self.core.events.emit(
                    "upstream_failed",
                    facts.event(&UpstreamFailed { error: &e }),
                );
                self.end.cancel();
                let told = format!("agentgate: the gateway could not reach the target: {e}");
                return Err(closing(refusal(kube, StatusCode::BAD_GATEWAY, &told)));
            }
        };
        let g = &admitted.grant;
        let gate = GateCtx {
            recorder: &self.core.recorder,
            approvals: &self.core.approvals,
            policy: self.core.policy.clone(),
            gate: admitted.guard.gate.clone(),
            ended: CancellationToken::new(),
            session: session_id(self.id),
            issuer: g.issuer.clone(),
            subject: g.subject.clone(),
            workload: g.workload.clone(),
            target: self.target.name.clone(),
        };
        let groups = g.groups.clone();
        let live = Live {
            admitted,
            bearer,
            gate,
            groups,
            upstream: tokio::sync::Mutex::new(up),
            started: Instant::now(),
            facts,
        };
        self.open(live).await;
        Ok(())
    }
}
