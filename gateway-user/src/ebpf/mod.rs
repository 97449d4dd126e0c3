//! Loading the kernel programs, pinning them so they outlive the process, and the typed maps
//! through which userspace steers them.

mod layout;
mod loader;
mod maps;
mod occupancy;

pub use layout::check as check_layout;
pub use loader::{uninstall, Kernel, KernelError};
pub use maps::{peer_key, target_entries, target_value_flags, KernelMaps};
pub use occupancy::Occupancy;
