//! SSH: terminated with russh toward the agent and the target (see keys for the keys it holds).

pub mod keys;
