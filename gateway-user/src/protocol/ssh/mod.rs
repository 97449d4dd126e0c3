//! SSH (issue 18). The lead owns this file; on the `sshcmd` branch it only declares the command
//! module.

// Nothing calls the module on this branch yet: the SSH handler will.
#[allow(dead_code, unused_imports)]
pub mod command;
