//! `agentgate policy check`.

use crate::{policy, proxy};

pub fn policy_check(dir: &std::path::Path) -> anyhow::Result<()> {
    // Problems go out one per line, each starting with file:line:column, for editors and CI.
    let p = policy::load_dir(dir).map_err(|e| {
        eprintln!("{e}");
        anyhow::anyhow!("policy {} is invalid", dir.display())
    })?;
    // The same checks `run` and a reload make before putting a policy in force.
    proxy::check_providers(&p).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    println!(
        "{}: ok, version {} ({} identity providers, {} workloads, {} targets, {} rules)",
        dir.display(),
        p.version,
        p.identity_providers.len(),
        p.workloads.len(),
        p.targets.len(),
        p.rules.len()
    );
    // The gateway, not this shell, must have them; a missing one is worth a look, not an error.
    for t in &p.targets {
        if let Some(Err(e)) = t.credential.as_ref().map(|c| c.resolve()) {
            println!("warning: target `{}`: upstream credential: {e}", t.name);
        }
    }
    Ok(())
}
