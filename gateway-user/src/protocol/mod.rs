//! Protocol handlers, one folder per target protocol.
//!
//! The proxy core (`crate::proxy`) does what every protocol shares: it finds out where an
//! accepted connection was going and which workload sent it, takes the workload's session slot
//! and resolves the target ([`Connection`]). A handler does the rest, in its protocol's terms:
//! it obtains the agent's token (from the workload's file, or from the protocol's own login),
//! has the core admit it ([`crate::proxy::Proxy::admit`]: identity, rules, revocations, the
//! session registry), logs in upstream, relays, and returns how it ended ([`Outcome`]). The
//! core turns that outcome into the record's close, the `connection_close` event and, through
//! them, the metrics, the same way for every protocol.
//!
//! Adding a protocol: a folder here with a type implementing [`ProtocolHandler`], its settings
//! as a variant of [`crate::policy::TargetSettings`], and one line in [`handlers`].

pub mod action_gate;
pub mod http;
pub mod postgres;
pub mod ssh;
pub mod tcp;
#[cfg(test)]
pub(crate) mod toy;

use std::{future::Future, net::SocketAddr, pin::Pin, time::Instant};

use tokio::net::TcpStream;

use crate::{
    net::Connect,
    policy::Protocol,
    proxy::{
        facts::{ConnFacts, StatementCounts},
        Placed, Proxy,
    },
};

/// A boxed future borrowing from the handler and the core for one connection.
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// An accepted, placed connection, handed to its target's protocol handler.
pub struct Connection<'a> {
    /// The gateway's number for the connection (in events and the session id).
    pub id: u64,
    pub client: TcpStream,
    /// Where the target is dialled: the original destination, or for an alias of a local target
    /// the address the target lists.
    pub dst: SocketAddr,
    /// The connecting process, as the kernel saw it at connect().
    pub pid: u32,
    pub placed: Placed<'a>,
    /// What every event about the connection carries; the handler adds what it learns (the
    /// principal through `admit`, the client's login, the session id).
    pub facts: ConnFacts,
}

/// How a connection a handler served ended.
pub enum Outcome {
    /// Never became a session: refused (the handler said why through
    /// [`Proxy::refuse`]), the upstream login failed, the agent left during the login, or the
    /// connection only carried a protocol-level request (a PostgreSQL cancel).
    NoSession,
    /// A session ran (its open is on record) and ended.
    Closed(Box<SessionEnd>),
}

/// The end of a session, as the record, the `connection_close` event and the metrics see it.
pub struct SessionEnd {
    /// The connection's facts, its session id on record included.
    pub facts: ConnFacts,
    pub started: Instant,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Who or what ended it when it was not a normal close by either side.
    pub ended_by: Option<String>,
    pub error: Option<String>,
    /// For protocols of statements (commands, requests): how many, and how many refused.
    pub statements: Option<StatementCounts>,
}

/// One target protocol's session handling. Handlers are shared by every connection: state they
/// keep across sessions (a statement classifier's cache, cancel keys) lives in the handler.
pub trait ProtocolHandler<C: Connect>: Send + Sync {
    /// The targets this handler serves.
    fn protocol(&self) -> Protocol;

    /// Serves one connection to its end.
    fn serve<'a>(&'a self, core: &'a Proxy<C>, conn: Connection<'a>) -> HandlerFuture<'a>;
}

/// Every protocol the gateway speaks: one line per protocol.
pub fn handlers<C: Connect>() -> Vec<Box<dyn ProtocolHandler<C>>> {
    vec![
        Box::new(tcp::TcpHandler),
        Box::new(postgres::PostgresHandler::default()),
        Box::new(ssh::SshHandler::default()),
        Box::new(http::HttpHandler::default()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake;

    impl Connect for Fake {
        async fn connect(&self, dst: SocketAddr) -> std::io::Result<TcpStream> {
            TcpStream::connect(dst).await
        }
    }

    /// Every protocol a policy can name, listed through an exhaustive match: a new `Protocol`
    /// variant does not compile here until it is added, and then needs its handler.
    fn every_protocol() -> Vec<Protocol> {
        let all = [
            Protocol::Tcp,
            Protocol::Postgres,
            Protocol::Ssh,
            Protocol::Http,
        ];
        for p in all {
            match p {
                Protocol::Tcp | Protocol::Postgres | Protocol::Ssh | Protocol::Http => {}
            }
        }
        all.to_vec()
    }

    /// Every protocol a policy can name has exactly one handler.
    #[test]
    fn one_handler_per_protocol() {
        let all = handlers::<Fake>();
        let protocols = every_protocol();
        for p in &protocols {
            let n = all.iter().filter(|h| h.protocol() == *p).count();
            assert_eq!(n, 1, "{p:?}");
        }
        assert_eq!(all.len(), protocols.len());
    }
}
