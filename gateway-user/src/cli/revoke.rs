//! `agentgate revoke`.

use crate::{
    admin::{self, AdminRequest, AdminResponse},
    audit::print::{safe, time},
};

/// What the command line names: an identity (and its issuer) and/or a workload.
pub struct Target {
    pub identity: Option<String>,
    pub issuer: Option<String>,
    pub workload: Option<String>,
    pub reason: Option<String>,
}

pub fn revoke_command(
    socket: &std::path::Path,
    target: Target,
    lift: bool,
    list: bool,
    json: bool,
) -> anyhow::Result<()> {
    let Target {
        identity: subject,
        issuer,
        workload,
        reason,
    } = target;
    let req = if list {
        AdminRequest::Revocations {}
    } else {
        AdminRequest::revocation(lift, subject, issuer, workload, reason)
    };
    let answer = admin::request(socket, &req)?;
    if json {
        println!("{}", serde_json::to_value(&answer)?);
        return Ok(());
    }
    let or_any = |s: &Option<String>| s.as_deref().map(safe).unwrap_or_else(|| "-".into());
    match answer {
        AdminResponse::Revocations(l) => {
            if l.revocations.is_empty() {
                println!("nothing is revoked");
            }
            for r in &l.revocations {
                println!(
                    "{}  identity {} (issuer {}) workload {}: {} (by {})",
                    time(Some(r.at_ms)),
                    or_any(&r.subject),
                    or_any(&r.issuer),
                    or_any(&r.workload),
                    safe(&r.reason),
                    safe(&r.by)
                );
            }
        }
        AdminResponse::Lifted(l) => println!("{} revocation(s) lifted", l.lifted),
        AdminResponse::Revoked(r) => println!(
            "revoked: {} live session(s) ended; new connections are refused",
            r.ended_sessions
        ),
        _ => anyhow::bail!("admin socket {}: not a revocation answer", socket.display()),
    }
    Ok(())
}
