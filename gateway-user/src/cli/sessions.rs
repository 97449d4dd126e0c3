//! `agentgate sessions list|show|replay|export` (playing and exporting recordings: sessions_cast.rs).
//! With `--central`, list, show and the replay's timeline read every node's records from the
//! central audit store.

use super::{CentralArgs, SessionsCommand};
use crate::{
    audit::{self, central::Central},
    record,
};

pub fn sessions_command(
    db: &std::path::Path,
    central: &CentralArgs,
    command: SessionsCommand,
) -> anyhow::Result<()> {
    use audit::print::{cell, cut, duration, table, time};
    let now = record::now_ms();
    let connect = || -> anyhow::Result<Option<Central>> {
        Ok(match &central.central {
            Some(conninfo) => Some(Central::connect(
                conninfo,
                central.central_password_file.clone(),
            )?),
            None => None,
        })
    };
    let node_needs_central = |node: &Option<String>| {
        if node.is_some() && central.central.is_none() {
            anyhow::bail!("--node chooses among the nodes of the central store: give --central");
        }
        Ok(())
    };
    match command {
        SessionsCommand::List {
            identity,
            workload,
            target,
            protocol,
            since,
            until,
            status,
            statement,
            node,
            limit,
            json,
        } => {
            node_needs_central(&node)?;
            let filter = audit::sessions::Filter {
                identity,
                workload,
                target,
                protocol,
                since_ms: since.map(|s| audit::parse_since(&s, now)).transpose()?,
                until_ms: until.map(|s| audit::parse_since(&s, now)).transpose()?,
                status,
                statement,
                node,
                limit,
            };
            let list = match connect()? {
                Some(c) => c.sessions(&filter)?,
                None => audit::sessions::list(&audit::open(db)?, &filter)?,
            };
            if json {
                println!("{}", serde_json::Value::Array(list));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|s| {
                    let started = s["started_ms"].as_i64();
                    let ended = s["ended_ms"].as_i64();
                    let mut row = vec![
                        cell(&s["session"]),
                        time(started),
                        match (started, ended) {
                            (Some(a), Some(b)) => duration(b - a),
                            (Some(a), None) => format!("{} (live)", duration(now - a)),
                            _ => "-".into(),
                        },
                        cell(&s["workload"]),
                        cell(&s["subject"]),
                        format!("{}/{}", cell(&s["target"]), cell(&s["protocol"])),
                        format!(
                            "{} ({} denied, {} privileged)",
                            s["statements"], s["denied"], s["privileged"]
                        ),
                        cut(&cell(&s["ended_by"]), 50),
                    ];
                    if central.central.is_some() {
                        row.insert(0, cell(&s["node"]));
                    }
                    row
                })
                .collect();
            let mut headers = vec![
                "SESSION",
                "STARTED (UTC)",
                "DURATION",
                "WORKLOAD",
                "IDENTITY",
                "TARGET",
                "STATEMENTS",
                "ENDED BY",
            ];
            if central.central.is_some() {
                headers.insert(0, "NODE");
            }
            table(&headers, &rows);
        }
        SessionsCommand::Show { id, node, json } => {
            node_needs_central(&node)?;
            let s = match connect()? {
                Some(c) => c.show(&id, node.as_deref())?,
                None => audit::sessions::show(&audit::open(db)?, &id)?,
            };
            if json {
                println!("{s}");
                return Ok(());
            }
            for (k, v) in s.as_object().into_iter().flatten() {
                let v = match k.as_str() {
                    "started_ms" | "ended_ms" | "token_expires_ms" => time(v.as_i64()),
                    _ => cell(v),
                };
                println!("{k:<18} {v}");
            }
        }
        SessionsCommand::Export { id, cast, channel } => {
            if central.central.is_some() {
                anyhow::bail!(
                    "sessions export reads a node's record database; run it on the session's node (without --central)"
                );
            }
            super::sessions_cast::export(&audit::open(db)?, &id, &cast, channel)?;
        }
        SessionsCommand::Replay {
            id,
            node,
            json,
            timeline,
            channel,
            speed,
            fast,
        } => {
            node_needs_central(&node)?;
            if let Some(c) = connect()? {
                if channel.is_some() || speed.is_some() || fast {
                    anyhow::bail!(
                        "playing a recording reads a node's record database; with --central, the \
                         timeline only (--timeline or --json)"
                    );
                }
                let (node, events) = c.replay(&id, node.as_deref())?;
                if json {
                    println!("{}", serde_json::Value::Array(events));
                } else {
                    println!("node {}", audit::print::safe(&node));
                    print_timeline(&id, &events);
                }
                return Ok(());
            }
            let conn = audit::open(db)?;
            if !json && !timeline {
                let play = super::sessions_cast::Play {
                    channel,
                    speed: if fast {
                        None
                    } else {
                        Some(speed.unwrap_or(1.0))
                    },
                    required: channel.is_some() || speed.is_some() || fast,
                };
                if super::sessions_cast::replay(&conn, &id, &play)? {
                    return Ok(());
                }
            }
            let events = audit::sessions::replay(&conn, &id)?;
            if json {
                println!("{}", serde_json::Value::Array(events));
                return Ok(());
            }
            print_timeline(&id, &events);
        }
    }
    Ok(())
}

/// A session's timeline for people: one line per record (a statement with its parameters,
/// outcome and the masked rows kept).
fn print_timeline(id: &str, events: &[serde_json::Value]) {
    use audit::print::{cell, duration, safe, time};
    {
        {
            let start = events
                .first()
                .and_then(|e| e["at_ms"].as_i64())
                .unwrap_or(0);
            for e in events {
                let at = e["at_ms"].as_i64().unwrap_or(start);
                let b = &e["body"];
                let head = format!("+{:>9}  #{:<6}", duration(at - start), e["record"]);
                match e["kind"].as_str().unwrap_or("") {
                    "session_open" => println!(
                        "{head} open     {} ({}) from workload {} pid {} to {} {} as {}; token until {}",
                        cell(&b["subject"]),
                        cell(&b["issuer"]),
                        cell(&b["workload"]),
                        b["pid"],
                        cell(&b["target"]),
                        cell(&b["original_dst"]),
                        cell(&b["client_user"]),
                        time(b["token_expires_ms"].as_i64())
                    ),
                    "statement" | "statement_intent" => {
                        let outcome = if e["kind"] == "statement_intent" {
                            "SENT, OUTCOME NOT ON RECORD".to_string()
                        } else if b["error"].is_string() {
                            format!("error {} {}", cell(&b["error_code"]), cell(&b["error"]))
                        } else {
                            format!(
                                "rows: {}, in {}",
                                cell(&b["rows"]),
                                duration(b["duration_us"].as_i64().unwrap_or(0) / 1000)
                            )
                        };
                        println!(
                            "{head} {:<8} [{} {}{}] {}",
                            cell(&b["kind"]),
                            cell(&b["class"]),
                            cell(&b["decision"]),
                            b["rule"]
                                .as_str()
                                .map(|r| format!(" by {}", safe(r)))
                                .unwrap_or_default(),
                            safe(b["text"].as_str().unwrap_or(""))
                        );
                        if let Some(p) = b["params"].as_array().filter(|p| !p.is_empty()) {
                            println!("{:29}params {}", "", serde_json::Value::Array(p.clone()));
                        }
                        println!("{:29}-> {outcome}", "");
                        if let Some(rows) = b["results"].as_array() {
                            for r in rows {
                                println!("{:29}   | {}", "", cell(r));
                            }
                            if b["results_cut"] == true {
                                println!("{:29}   | … (more rows not kept)", "");
                            }
                        }
                    }
                    "approval" => println!(
                        "{head} approval {} {} by {}",
                        cell(&b["request"]),
                        cell(&b["event"]),
                        cell(&b["actor"])
                    ),
                    "session_close" => println!(
                        "{head} close    {} up, {} down{}{}",
                        cell(&b["bytes_up"]),
                        cell(&b["bytes_down"]),
                        b["ended_by"]
                            .as_str()
                            .map(|x| format!("; ended by {}", safe(x)))
                            .unwrap_or_default(),
                        b["error"]
                            .as_str()
                            .map(|x| format!("; error {}", safe(x)))
                            .unwrap_or_default()
                    ),
                    // The recording is played, not listed: one line where it starts.
                    "ssh_cast" | "kube_cast" => {
                        if b["part"] == 0 {
                            println!(
                                "{head} cast     channel {} recorded (agentgate sessions replay {} --channel {})",
                                cell(&b["channel"]),
                                safe(id),
                                cell(&b["channel"])
                            );
                        }
                    }
                    other => println!("{head} {other} {}", cell(b)),
                }
            }
        }
    }
}
