//! `agentgate sessions list|show|replay|export` (playing and exporting recordings: sessions_cast.rs).

use super::SessionsCommand;
use crate::{audit, record};

pub fn sessions_command(db: &std::path::Path, command: SessionsCommand) -> anyhow::Result<()> {
    use audit::print::{cell, cut, duration, safe, table, time};
    let conn = audit::open(db)?;
    let now = record::now_ms();
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
            limit,
            json,
        } => {
            let filter = audit::sessions::Filter {
                identity,
                workload,
                target,
                protocol,
                since_ms: since.map(|s| audit::parse_since(&s, now)).transpose()?,
                until_ms: until.map(|s| audit::parse_since(&s, now)).transpose()?,
                status,
                statement,
                limit,
            };
            let list = audit::sessions::list(&conn, &filter)?;
            if json {
                println!("{}", serde_json::Value::Array(list));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|s| {
                    let started = s["started_ms"].as_i64();
                    let ended = s["ended_ms"].as_i64();
                    vec![
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
                    ]
                })
                .collect();
            table(
                &[
                    "SESSION",
                    "STARTED (UTC)",
                    "DURATION",
                    "WORKLOAD",
                    "IDENTITY",
                    "TARGET",
                    "STATEMENTS",
                    "ENDED BY",
                ],
                &rows,
            );
        }
        SessionsCommand::Show { id, json } => {
            let s = audit::sessions::show(&conn, &id)?;
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
            super::sessions_cast::export(&conn, &id, &cast, channel)?;
        }
        SessionsCommand::Replay {
            id,
            json,
            timeline,
            channel,
            speed,
            fast,
        } => {
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
            let start = events
                .first()
                .and_then(|e| e["at_ms"].as_i64())
                .unwrap_or(0);
            for e in &events {
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
                                safe(&id),
                                cell(&b["channel"])
                            );
                        }
                    }
                    other => println!("{head} {other} {}", cell(b)),
                }
            }
        }
    }
    Ok(())
}
