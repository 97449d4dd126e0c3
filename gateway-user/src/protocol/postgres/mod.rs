//! PostgreSQL targets, fully L7: the agent's unchanged client talks to the gateway, which
//! authenticates it (`frontend`), logs in upstream with the target's own credential (`backend`),
//! and relays every message (`relay`, framed by `codec`), classifying each statement
//! (`classify`) against the statement rules and recording it.

pub mod backend;
pub mod cancel;
pub mod classify;
pub mod codec;
pub mod frontend;
pub mod mask;
pub mod predicate;
pub mod relay;
pub mod rules;
pub mod scram;
pub mod session;
pub mod settings;
pub mod tls;

pub use session::PostgresHandler;
#[cfg(test)]
mod rule_tests;
