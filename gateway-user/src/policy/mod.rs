//! The policy: which cgroups are agent workloads, which destinations are targets, who may reach
//! them (identity providers and rules), and with which upstream credential.
//!
//! Policies are YAML files in a directory, merged into one [`Policy`]. The format is versioned
//! (`version: 2`) and documented in `docs/policy.md`.

mod doc;
mod load;
mod model;
mod reload;
mod rules;
pub mod section;
#[cfg(test)]
pub(crate) mod test_support;
mod yaml;

pub use doc::empty_list;
pub use load::glob_ci;
pub use load::load_dir;
pub use model::{
    canonical_ip, ClientTls, ConsoleRole, Effect, HttpProfile, HttpServerTls, HttpTarget,
    IdentityProvider, Jwks, Mode, Policy, PostgresTarget, Protocol, Rule, SshHostKey, SshTarget,
    SshUpstreamAuth, Target, TargetSettings, TokenSource, UdpPolicy, UpstreamIdentity, UpstreamTls,
    Workload,
};
pub use reload::{Enforce, Enforced, PolicyStatus, Reloader};
pub use rules::{Decision, Who};
