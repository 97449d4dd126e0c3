//! The policy: which cgroups are agent workloads and which destinations are targets.
//!
//! Policies are YAML files in a directory, merged into one [`Policy`]. The format is versioned
//! (`version: 1`) and documented in `docs/policy.md`; later versions add identity, rules,
//! masking and approval without changing what version 1 files mean.

mod load;
mod model;

pub use load::load_dir;
pub use model::{Mode, Policy, Protocol};
