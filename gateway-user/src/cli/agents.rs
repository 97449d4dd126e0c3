//! `agentgate agents`.

use crate::{audit, record};

pub fn agents_command(db: &std::path::Path, json: bool) -> anyhow::Result<()> {
    use audit::print::{cell, table, time};
    let conn = audit::open(db)?;
    let list = audit::agents::list(&conn, record::now_ms())?;
    if json {
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            vec![
                cell(&a["status"]),
                cell(&a["workload"]),
                cell(&a["subject"]),
                time(a["first_seen_ms"].as_i64()),
                time(a["last_seen_ms"].as_i64()),
                time(a["token_expires_ms"].as_i64()),
                format!("{}/{}", a["live_sessions"], a["sessions"]),
                a["targets"]
                    .as_array()
                    .map(|t| t.iter().map(cell).collect::<Vec<_>>().join(","))
                    .unwrap_or_default(),
                format!("{} ({} denied)", a["privileged_actions"], a["denied"]),
            ]
        })
        .collect();
    table(
        &[
            "STATUS",
            "WORKLOAD",
            "IDENTITY",
            "FIRST SEEN (UTC)",
            "LAST SEEN",
            "TOKEN UNTIL",
            "LIVE/ALL",
            "TARGETS",
            "PRIVILEGED",
        ],
        &rows,
    );
    Ok(())
}
