//! `agentgate sessions replay` of an SSH session's recordings (played in the terminal, real
//! timing or fast) and `agentgate sessions export --cast` (an asciicast v2 file).

use std::{
    io::Write,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context;
use rusqlite::Connection;

use crate::audit::{
    self,
    cast::{Cast, TerminalFilter},
    AuditError,
};

/// How to play.
pub struct Play {
    pub channel: Option<u64>,
    /// Times faster than real time; `None` plays without pauses.
    pub speed: Option<f64>,
    /// The operator asked for a recording (--channel, --speed, --fast): none is an error, not
    /// the timeline.
    pub required: bool,
}

/// Plays the session's recordings; `false` when it has none and none was asked for (the
/// caller prints the timeline then).
pub fn replay(conn: &Connection, id: &str, play: &Play) -> anyhow::Result<bool> {
    let casts = match audit::cast::casts(conn, id, play.channel) {
        Ok(c) => c,
        Err(AuditError::Usage(_)) if !play.required => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for cast in &casts {
        eprintln!(
            "agentgate: channel {} of session {}: {} ({}x{})",
            cast.channel,
            audit::print::safe(id),
            audit::print::cell(&cast.header["title"]),
            cast.header["width"],
            cast.header["height"],
        );
        play_one(cast, play.speed, &mut out)?;
        out.flush()?;
        notes(cast);
    }
    Ok(true)
}

fn play_one(cast: &Cast, speed: Option<f64>, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut filter = TerminalFilter::default();
    let started = Instant::now();
    for e in &cast.events {
        // Input is not shown: a terminal's echo of it is part of the output. Resizes cannot be
        // applied to the operator's terminal.
        if e[1] != "o" {
            continue;
        }
        let (Some(t), Some(data)) = (e[0].as_f64(), e[2].as_str()) else {
            continue;
        };
        if let Some(speed) = speed {
            let due = Duration::from_secs_f64((t / speed).clamp(0.0, 1e9));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                out.flush()?;
                std::thread::sleep(wait);
            }
        }
        out.write_all(filter.filter(data).as_bytes())?;
    }
    Ok(())
}

/// What the operator should know about a recording beyond what it shows.
fn notes(cast: &Cast) {
    if cast.bytes_not_kept > 0 {
        eprintln!(
            "\nagentgate: the recording was cut at its cap; {} more bytes went by unrecorded",
            cast.bytes_not_kept
        );
    }
    if cast.gaps > 0 {
        eprintln!(
            "\nagentgate: {} chunks of this recording are not on record",
            cast.gaps
        );
    }
    if !cast.ended {
        eprintln!("\nagentgate: the channel's end is not on record (still running, or cut off)");
    }
}

/// Writes one channel's recording to `path` as asciicast v2.
pub fn export(
    conn: &Connection,
    id: &str,
    path: &Path,
    channel: Option<u64>,
) -> anyhow::Result<()> {
    let mut casts = audit::cast::casts(conn, id, channel)?;
    if casts.len() > 1 {
        let list: Vec<String> = casts.iter().map(|c| c.channel.to_string()).collect();
        anyhow::bail!(
            "session `{}` recorded {} channels ({}): choose one with --channel",
            audit::print::safe(id),
            casts.len(),
            list.join(", ")
        );
    }
    let Some(cast) = casts.pop() else {
        anyhow::bail!("session `{}` has no recording", audit::print::safe(id));
    };
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("writing {}", path.display()))?
    };
    let mut w = std::io::BufWriter::new(file);
    audit::cast::write_asciicast(&cast, &mut w)
        .and_then(|()| w.flush())
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "agentgate: channel {} of session {}: {} events written to {}",
        cast.channel,
        audit::print::safe(id),
        cast.events.len(),
        path.display()
    );
    notes(&cast);
    Ok(())
}
