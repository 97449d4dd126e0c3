//! `agentgate status`.

use crate::admin::{self, AdminRequest, AdminResponse};

pub fn status(socket: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let AdminResponse::Status(answer) = admin::request(socket, &AdminRequest::Status {})? else {
        anyhow::bail!("admin socket {}: not a status answer", socket.display());
    };
    if json {
        println!("{}", serde_json::to_value(&answer)?);
        return Ok(());
    }
    let p = &answer.policy;
    println!("agentgate pid {}", answer.pid);
    println!(
        "policy     {} (generation {}, from {})",
        p.version,
        p.generation,
        p.dir.display()
    );
    match &p.last_error {
        Some(e) => println!(
            "last reload REFUSED (the policy above stays in force):\n  {}",
            e.message.replace('\n', "\n  ")
        ),
        None => println!("last reload ok"),
    }
    if let Some(e) = &answer.capture_error {
        println!("CAPTURE NOT FULLY APPLIED: {e}");
    }
    println!("sessions   {} live", answer.sessions);
    Ok(())
}
