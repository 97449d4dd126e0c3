//! `agentgate revoke`.

use crate::{admin, audit};

pub fn revoke_command(
    socket: &std::path::Path,
    req: serde_json::Value,
    json: bool,
) -> anyhow::Result<()> {
    let answer = admin::request(socket, &req)?;
    if let Some(e) = answer["error"].as_str() {
        anyhow::bail!("{e}");
    }
    if json {
        println!("{answer}");
        return Ok(());
    }
    if let Some(list) = answer["revocations"].as_array() {
        if list.is_empty() {
            println!("nothing is revoked");
        }
        for r in list {
            println!(
                "{}  identity {} (issuer {}) workload {}: {} (by {})",
                audit::print::time(r["at_ms"].as_i64()),
                audit::print::cell(&r["subject"]),
                audit::print::cell(&r["issuer"]),
                audit::print::cell(&r["workload"]),
                audit::print::cell(&r["reason"]),
                audit::print::cell(&r["by"])
            );
        }
    } else if let Some(n) = answer["lifted"].as_u64() {
        println!("{n} revocation(s) lifted");
    } else {
        println!(
            "revoked: {} live session(s) ended; new connections are refused",
            answer["ended_sessions"]
        );
    }
    Ok(())
}
