//! Command-line interface: the clap types in [`args`], one module per command's body (`run` is
//! in `crate::run`).

pub mod agents;
pub mod approvals;
mod args;
pub mod audit;
pub mod policy;
pub mod revoke;
pub mod sessions;
mod sessions_cast;
pub mod status;
pub mod uninstall;

pub use args::*;
