//! SSH channels recorded as asciicast v2, put back together from their `ssh_cast` journal
//! entries (protocol/ssh/cast.rs writes them): one header and the events in order, per channel.

use std::collections::BTreeMap;

use rusqlite::Connection;
use serde_json::{json, Value};

use super::AuditError;

/// One channel's recording.
#[derive(Debug)]
pub struct Cast {
    /// The channel's request number (`seq` of its `statement` record).
    pub channel: u64,
    /// The asciicast v2 header.
    pub header: Value,
    /// `[time, code, data]`, in order.
    pub events: Vec<Value>,
    /// The channel's end is on record (a gateway killed mid-channel leaves it out).
    pub ended: bool,
    /// Bytes past the per-channel cap that were not kept.
    pub bytes_not_kept: u64,
    /// Chunks missing between those on record (pruned by retention, or never committed).
    pub gaps: u64,
}

/// Read through `audit_log_session`; only that session's entries are read.
/// SSH channels (`ssh_cast`) and Kubernetes exec/attach streams (`kube_cast`).
const CASTS: &str = "SELECT body FROM audit_log WHERE session = ?1 AND kind IN ('ssh_cast', 'kube_cast') ORDER BY seq";
const ANY: &str = "SELECT count(*) FROM audit_log WHERE session = ?1";

/// The session's recordings, by channel; only `channel`'s if given.
pub fn casts(
    conn: &Connection,
    session: &str,
    channel: Option<u64>,
) -> Result<Vec<Cast>, AuditError> {
    let mut stmt = conn.prepare(CASTS)?;
    let rows = stmt.query_map([session], |r| r.get::<_, String>(0))?;
    let mut parts: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    for row in rows {
        let body: Value = match serde_json::from_str(&row?) {
            Ok(v) => v,
            // Not ours to interpret; `audit verify` says whether it was tampered with.
            Err(_) => continue,
        };
        let Some(ch) = body["channel"].as_u64() else {
            continue;
        };
        if channel.is_none_or(|c| c == ch) {
            parts.entry(ch).or_default().push(body);
        }
    }
    if parts.is_empty() {
        let any: i64 = conn.query_row(ANY, [session], |r| r.get(0))?;
        return Err(AuditError::Usage(match (any, channel) {
            (0, _) => format!("no session `{session}` on record"),
            (_, Some(c)) => format!("channel {c} of session `{session}` has no recording"),
            (_, None) => format!(
                "session `{session}` has no recording (only SSH shells and execs with a pty \
                 are recorded as asciicast)"
            ),
        }));
    }
    Ok(parts
        .into_iter()
        .map(|(ch, mut chunks)| {
            chunks.sort_by_key(|c| c["part"].as_u64().unwrap_or(u64::MAX));
            assemble(ch, chunks)
        })
        .collect())
}

fn assemble(channel: u64, chunks: Vec<Value>) -> Cast {
    let mut cast = Cast {
        channel,
        header: Value::Null,
        events: Vec::new(),
        ended: false,
        bytes_not_kept: 0,
        gaps: 0,
    };
    let mut next = 0;
    for mut c in chunks {
        let part = c["part"].as_u64().unwrap_or(next);
        cast.gaps += part.saturating_sub(next);
        next = part + 1;
        if c["header"].is_object() {
            cast.header = c["header"].take();
        }
        if let Value::Array(events) = c["events"].take() {
            cast.events.extend(events);
        }
        if c["end"] == true {
            cast.ended = true;
            cast.bytes_not_kept = c["bytes_not_kept"].as_u64().unwrap_or(0);
        }
    }
    if !cast.header.is_object() {
        // The first chunk is gone: a player still needs a header.
        cast.header = json!({"version": 2, "width": 80, "height": 24});
    }
    cast
}

/// The recording as an asciicast v2 file: the header line, then one line per event.
pub fn write_asciicast(cast: &Cast, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    writeln!(out, "{}", cast.header)?;
    for e in &cast.events {
        writeln!(out, "{e}")?;
    }
    Ok(())
}

/// Output for the operator's terminal: the agent's output may carry terminal strings (OSC,
/// DCS, APC, PM, SOS: window titles, clipboard writes, hyperlinks, terminal queries) that act on
/// the terminal replaying it rather than show anything; they are dropped. Colours and cursor
/// movement (CSI) pass, so the replay looks like the session.
#[derive(Default)]
pub struct TerminalFilter {
    state: FilterState,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum FilterState {
    #[default]
    Text,
    Escape,
    /// Inside a terminal string, until ST (`ESC \` or U+009C) or BEL.
    Str,
    StrEscape,
}

impl TerminalFilter {
    pub fn filter(&mut self, data: &str) -> String {
        use FilterState::*;
        let mut out = String::with_capacity(data.len());
        for c in data.chars() {
            self.state = match (self.state, c) {
                (Text, '\x1b') => Escape,
                (Text, '\u{90}' | '\u{98}' | '\u{9d}' | '\u{9e}' | '\u{9f}') => Str,
                (Text, c) => {
                    out.push(c);
                    Text
                }
                (Escape, ']' | 'P' | '_' | '^' | 'X') => Str,
                (Escape, '\x1b') => {
                    out.push('\x1b');
                    Escape
                }
                (Escape, c) => {
                    out.push('\x1b');
                    out.push(c);
                    Text
                }
                (Str, '\x07' | '\u{9c}') => Text,
                (Str, '\x1b') => StrEscape,
                (Str, _) => Str,
                (StrEscape, '\\') => Text,
                // ESC inside a string ends it and starts another escape sequence.
                (StrEscape, ']' | 'P' | '_' | '^' | 'X') => Str,
                (StrEscape, '\x1b') => Escape,
                (StrEscape, c) => {
                    out.push('\x1b');
                    out.push(c);
                    Text
                }
            };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_strings_are_dropped_and_colours_kept() {
        let mut f = TerminalFilter::default();
        let shown = f.filter("a\x1b]0;title\x07b\x1b[31mred\x1b[0m\x1b]52;c;ZXZpbA==\x1b\\c");
        assert_eq!(shown, "ab\x1b[31mred\x1b[0mc");
        // Cut across two events.
        assert_eq!(f.filter("x\x1bP+q544e"), "x");
        assert_eq!(f.filter("\x1b\\y"), "y");
    }

    #[test]
    fn chunks_are_put_back_in_order_and_gaps_counted() {
        let chunks = vec![
            json!({"channel": 3, "part": 0, "header": {"version": 2, "width": 100, "height": 30},
                   "events": [[0.1, "o", "a"]]}),
            json!({"channel": 3, "part": 2, "events": [[0.3, "o", "c"]], "end": true,
                   "bytes_not_kept": 7}),
        ];
        let c = assemble(3, chunks);
        assert_eq!(c.header["width"], 100);
        assert_eq!(c.events.len(), 2);
        assert_eq!(c.gaps, 1);
        assert!(c.ended);
        assert_eq!(c.bytes_not_kept, 7);
    }
}
