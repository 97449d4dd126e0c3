//! `agentgate audit verify|export`.

use super::AuditCommand;
use crate::{audit, record};

pub fn audit_command(db: &std::path::Path, command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify { json } => {
            let report = audit::verify(db)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                for p in &report.problems {
                    println!("TAMPERED  {}", p.what);
                }
                println!(
                    "{}: {} records checked (from record {} to {}): {}",
                    db.display(),
                    report.records,
                    report.from + 1,
                    report
                        .tip
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "-".into()),
                    if report.problems.is_empty() {
                        "the chain is intact".to_string()
                    } else {
                        format!("{} problems", report.problems.len())
                    }
                );
            }
            if !report.problems.is_empty() {
                anyhow::bail!(
                    "the audit record of {} has been tampered with",
                    db.display()
                );
            }
            Ok(())
        }
        AuditCommand::Export { since } => {
            let since = match since {
                Some(s) => audit::parse_since(&s, record::now_ms())?,
                None => i64::MIN,
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            audit::export(db, since, &mut out)?;
            std::io::Write::flush(&mut out)?;
            Ok(())
        }
    }
}
