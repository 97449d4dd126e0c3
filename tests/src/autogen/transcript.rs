//! The story's transcript: each job's AutoGen conversation, command outputs, the record.

use serde_json::Value;

use super::jobs::Running;

/// Indents every line of `text` by three spaces.
pub fn print_list(text: &str) {
    for line in text.lines() {
        println!("   {line}");
    }
}

/// At most `max` lines of `text`, each at most 160 characters.
fn clip(text: &str, max: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = lines
        .iter()
        .take(max)
        .map(|l| {
            if l.chars().count() > 160 {
                format!("{}…", l.chars().take(160).collect::<String>())
            } else {
                l.to_string()
            }
        })
        .collect();
    if lines.len() > max {
        out.push(format!("… ({} more lines)", lines.len() - max));
    }
    out.join("\n")
}

/// One job's conversation: who called which tool with what, what came back, what they said.
pub fn print_job(job: &Running) {
    println!(
        "\n-- PR {} ({}, group {}, cgroup {}):",
        job.spec.pr, job.subject, job.spec.group, job.cgroup.rel
    );
    for m in job.messages() {
        let who = m["source"].as_str().unwrap_or("?");
        match m["type"].as_str().unwrap_or("") {
            "ToolCallRequestEvent" => {
                for c in m["content"].as_array().into_iter().flatten() {
                    println!(
                        "   [{who}] calls {}({})",
                        c["name"].as_str().unwrap_or("?"),
                        c["arguments"].as_str().unwrap_or("")
                    );
                }
            }
            "ToolCallExecutionEvent" => {
                for c in m["content"].as_array().into_iter().flatten() {
                    let text = clip(c["content"].as_str().unwrap_or(""), 8);
                    for (i, line) in text.lines().enumerate() {
                        println!("   {}{line}", if i == 0 { "  => " } else { "     " });
                    }
                }
            }
            "TextMessage" if who != "user" => {
                println!("   [{who}] says: {}", m["content"].as_str().unwrap_or(""));
            }
            _ => {}
        }
    }
}

/// Every action on record, by agent: what it ran, where, and what the gateway decided; runs of
/// the same action (a polling loop) shown once with their count.
pub fn print_actions(rows: &[Vec<Value>]) {
    println!("   the record: every statement, command and request, by agent (subject, target, destination, decision, rule, text):");
    let cell = |r: &[Value], i: usize| match &r[i] {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let mut i = 0;
    while i < rows.len() {
        let r = &rows[i];
        let same = rows[i..]
            .iter()
            .take_while(|o| (0..9).all(|k| cell(o, k) == cell(r, k)))
            .count();
        let text: String = cell(r, 4).replace('\n', " ").chars().take(90).collect();
        println!(
            "   {:<15} {:<11} {:<15} {:<9} {:<27} {}{}",
            cell(r, 0),
            cell(r, 2),
            cell(r, 3),
            cell(r, 6),
            cell(r, 7),
            text,
            if same > 1 {
                format!("  (x{same})")
            } else {
                String::new()
            }
        );
        i += same;
    }
}
