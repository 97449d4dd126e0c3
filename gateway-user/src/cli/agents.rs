//! `agentgate agents`: this node's record database, or with `--central` every node's from the
//! central audit store.

use super::CentralArgs;
use crate::{audit, record};

pub fn agents_command(
    db: &std::path::Path,
    central: &CentralArgs,
    node: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    use audit::print::{cell, table, time};
    let now = record::now_ms();
    let list = match &central.central {
        Some(conninfo) => {
            audit::central::Central::connect(conninfo, central.central_password_file.clone())?
                .agents(now, node)?
        }
        None => audit::agents::list(&audit::open(db)?, now)?,
    };
    if json {
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    let with_node = central.central.is_some();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            let mut row = vec![
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
            ];
            if with_node {
                row.insert(0, cell(&a["node"]));
            }
            row
        })
        .collect();
    let mut headers = vec![
        "STATUS",
        "WORKLOAD",
        "IDENTITY",
        "FIRST SEEN (UTC)",
        "LAST SEEN",
        "TOKEN UNTIL",
        "LIVE/ALL",
        "TARGETS",
        "PRIVILEGED",
    ];
    if with_node {
        headers.insert(0, "NODE");
    }
    table(&headers, &rows);
    Ok(())
}
