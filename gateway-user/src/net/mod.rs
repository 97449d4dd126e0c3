//! Every connection the gateway itself makes: [`socket`] opens each TCP socket (in the right
//! network namespace, exempt from capture, or not at all), and [`http`] is the one HTTP client
//! built on it (JWKS and discovery documents, approval webhooks). Target upstreams, masking
//! catalog lookups and PostgreSQL cancel requests reach the factory through [`Connect`]
//! ([`Dialer`], following the handled connection's namespace), and so does the central audit
//! sink (in the gateway's namespace).

pub mod http;
mod socket;

pub use socket::{in_netns, Connect, Dialer, ExemptionError, Netns, OwnSockets, SocketFactory};

#[cfg(test)]
pub(crate) use socket::Uncaptured;
