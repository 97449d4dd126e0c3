//! `agentgate status`.

use crate::admin;

pub fn status(socket: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let answer = admin::request(socket, &serde_json::json!({"cmd": "status"}))?;
    if json {
        println!("{answer}");
        return Ok(());
    }
    let p = &answer["policy"];
    println!("agentgate pid {}", answer["pid"]);
    println!(
        "policy     {} (generation {}, from {})",
        p["version"].as_str().unwrap_or("?"),
        p["generation"],
        p["dir"].as_str().unwrap_or("?")
    );
    match p["last_error"].as_object() {
        Some(e) => println!(
            "last reload REFUSED (the policy above stays in force):\n  {}",
            e.get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("?")
                .replace('\n', "\n  ")
        ),
        None => println!("last reload ok"),
    }
    if let Some(e) = answer["capture_error"].as_str() {
        println!("CAPTURE NOT FULLY APPLIED: {e}");
    }
    println!("sessions   {} live", answer["sessions"]);
    Ok(())
}
