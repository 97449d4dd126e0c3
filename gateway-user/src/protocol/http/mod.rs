//! HTTP(S) targets, with the `kubernetes` profile for Kubernetes API servers (docs/http.md,
//! docs/kubernetes.md): the gateway terminates the agent's TLS with a leaf certificate for the
//! target's names, takes the agent's bearer token (or the workload's token file) as its
//! identity, judges every request through the one gate, forwards it with a credential of its
//! own (and, for Kubernetes, impersonation headers naming the agent), masks and records what
//! comes back.

pub mod request_info;
mod rule_section;
pub mod rules;

use super::{Connection, HandlerFuture, Outcome, ProtocolHandler};
use crate::{net::Connect, policy::Protocol, proxy::Proxy};

#[derive(Default)]
pub struct HttpHandler;

impl<C: Connect> ProtocolHandler<C> for HttpHandler {
    fn protocol(&self) -> Protocol {
        Protocol::Http
    }

    fn serve<'a>(&'a self, _core: &'a Proxy<C>, _conn: Connection<'a>) -> HandlerFuture<'a> {
        Box::pin(async { Outcome::NoSession })
    }
}
