//! Opaque TCP targets: the workload's token from its file, the decision, then bytes both ways
//! (`relay`) until either side ends, the token expires or the policy withdraws the session.

mod relay;
mod splice;

use std::time::{Duration, Instant};

pub use relay::{relay, Counters, RelayError};

use super::{Connection, HandlerFuture, Outcome, ProtocolHandler, SessionEnd};
use crate::{
    net::Connect,
    policy::Protocol,
    proxy::{
        authorize,
        facts::{Nothing, UpstreamFailed},
        session_id, Proxy,
    },
    record::Record,
};

pub struct TcpHandler;

impl<C: Connect> ProtocolHandler<C> for TcpHandler {
    fn protocol(&self) -> Protocol {
        Protocol::Tcp
    }

    fn serve<'a>(&'a self, core: &'a Proxy<C>, conn: Connection<'a>) -> HandlerFuture<'a> {
        Box::pin(serve(core, conn))
    }
}

async fn serve<C: Connect>(core: &Proxy<C>, conn: Connection<'_>) -> Outcome {
    let Connection {
        id,
        client,
        dst,
        pid,
        placed,
        mut facts,
    } = conn;
    let token =
        authorize::workload_token(&placed.workload, &placed.target, pid, &placed.cgroup).await;
    let admitted = match token {
        Ok(token) => core.admit(id, dst, placed, &token, None, &mut facts).await,
        Err(r) => Err(r),
    };
    let admitted = match admitted {
        Ok(a) => a,
        Err(r) => {
            drop(client);
            core.refuse(&facts, r).await;
            return Outcome::NoSession;
        }
    };
    core.emit_allowed(&facts, &admitted);
    let upstream = match core.connector.connect(dst).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("upstream: {e}");
            let event = facts.event(&UpstreamFailed {
                error: &e.to_string(),
            });
            core.events.emit("upstream_failed", event);
            return Outcome::NoSession;
        }
    };
    tracing::info!("relaying");
    let session = session_id(id);
    core.recorder
        .record(Record::Open(
            admitted.session_open(&session, "tcp", pid, None, None),
        ))
        .await;
    facts.session = Some(session);
    core.events
        .emit("connection_open", facts.event(&Nothing {}));
    let started = Instant::now();
    let idle = Duration::from_millis(admitted.policy.gateway.idle_timeout_ms);
    let expires = admitted.expires();
    let counters = Counters::default();
    let (error, ended_by) = tokio::select! {
        r = relay(client, upstream, idle, &counters, &admitted.guard.gate) => match r {
            Ok(()) => (None, None),
            Err(RelayError::Withdrawn(why)) => (None, Some(why)),
            Err(e) => (Some(e.to_string()), None),
        },
        _ = tokio::time::sleep_until(expires) => (None, Some("token expired".to_string())),
        _ = admitted.guard.stop.cancelled() => (None, admitted.guard.reason()),
    };
    let (bytes_up, bytes_down) = counters.get();
    Outcome::Closed(Box::new(SessionEnd {
        facts,
        started,
        bytes_up,
        bytes_down,
        ended_by,
        error,
        statements: None,
    }))
}
