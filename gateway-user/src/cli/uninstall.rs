//! `agentgate uninstall`.

use crate::ebpf;

pub fn uninstall(pin_dir: &std::path::Path) -> anyhow::Result<()> {
    let removed = ebpf::uninstall(pin_dir)?;
    for p in &removed {
        println!("removed {}", p.display());
    }
    println!(
        "agentgate uninstalled from {} ({} pinned objects removed); workloads now connect directly",
        pin_dir.display(),
        removed.len()
    );
    Ok(())
}
