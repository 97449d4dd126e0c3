//! Shells and execs with a pty recorded as asciicast v2 events (output "o", input "i", resize
//! "r"), in the hash-chained journal: chunks of events are entries of kind `ssh_cast`, keyed by
//! the session and the channel's request number (the `seq` of its `statement` record), written
//! through the recorder like every other record. `agentgate sessions replay|export --cast`
//! put the chunks back together (audit/cast.rs).
//!
//! The relay hands over bytes at the point they are sent on (output as the agent was sent it,
//! so after masking; input as the target was sent it), and the cast batches them: an entry per
//! [`BATCH_BYTES`], or when an event comes a second or more after the first of its batch, and
//! one when the channel ends. A channel's cast keeps at most [`MAX_CAST_BYTES`]; past that, a
//! marker event says so and only the count of what followed is kept, so a shell printing
//! without end costs the gateway a batch of memory, not the output.

use std::{
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use super::{channel::Request, Ctx};
use crate::record::{now_ms, Record, Recorder};

/// The journal kind of a cast chunk.
pub const KIND: &str = "ssh_cast";
/// Raw bytes (input and output) one channel's cast keeps at most.
pub const MAX_CAST_BYTES: u64 = 16 * 1024 * 1024;
/// A chunk is written once its events carry this many bytes.
const BATCH_BYTES: usize = 64 * 1024;
/// ... or once an event comes this long after the first of its chunk.
const BATCH_AGE: Duration = Duration::from_secs(1);
/// A terminal size for a shell without a pty (the cast's header needs one).
const NO_PTY_SIZE: (u32, u32) = (80, 24);

/// The pty a channel asked for: terminal type and size.
pub struct Tty {
    pub term: String,
    pub cols: u32,
    pub rows: u32,
}

/// One channel's cast, fed by both directions of the relay.
pub struct Cast<'a> {
    recorder: &'a Recorder,
    /// The journal kind of its chunks ([`KIND`] for SSH).
    kind: &'static str,
    session: String,
    channel: u64,
    started: Instant,
    state: Mutex<State>,
}

struct State {
    part: u64,
    header: Option<Value>,
    events: Vec<Value>,
    batch_bytes: usize,
    batch_started: Option<Instant>,
    /// Bytes kept in events so far.
    kept: u64,
    /// Bytes seen past the cap (not kept).
    dropped: u64,
    output: Utf8Carry,
    input: Utf8Carry,
}

impl<'a> Cast<'a> {
    /// A cast for a shell (with or without a pty) or an exec with a pty; `None` for anything
    /// else (an exec without a pty keeps the first bytes of its output in its record).
    pub fn start(
        ctx: &'a Ctx<'_>,
        request: &Request,
        channel: u64,
        tty: Option<Tty>,
    ) -> Option<Cast<'a>> {
        match (request, &tty) {
            (Request::Shell, _) | (Request::Exec(_), Some(_)) => {}
            _ => return None,
        }
        let (width, height, term) = match tty {
            Some(t) => (t.cols, t.rows, Some(t.term)),
            None => (NO_PTY_SIZE.0, NO_PTY_SIZE.1, None),
        };
        let header = json!({
            "version": 2,
            // A client may send 0 for "unknown"; players need a size.
            "width": if width == 0 { NO_PTY_SIZE.0 } else { width },
            "height": if height == 0 { NO_PTY_SIZE.1 } else { height },
            "timestamp": now_ms() / 1000,
            "env": {"TERM": term},
            "title": format!("{} {}: {}", ctx.login, ctx.target, request.text()),
        });
        Some(Cast::new(
            ctx.recorder,
            KIND,
            ctx.session.clone(),
            channel,
            header,
        ))
    }

    /// A cast of any protocol's terminal stream (Kubernetes exec): chunks of journal kind
    /// `kind`, keyed by `session` and `channel`, starting with the asciicast `header`.
    pub fn new(
        recorder: &'a Recorder,
        kind: &'static str,
        session: String,
        channel: u64,
        header: Value,
    ) -> Cast<'a> {
        Cast {
            recorder,
            kind,
            session,
            channel,
            started: Instant::now(),
            state: Mutex::new(State {
                part: 0,
                header: Some(header),
                events: Vec::new(),
                batch_bytes: 0,
                batch_started: None,
                kept: 0,
                dropped: 0,
                output: Utf8Carry::default(),
                input: Utf8Carry::default(),
            }),
        }
    }

    /// Bytes the agent was sent (stdout and stderr: a terminal shows both).
    pub async fn output(&self, data: &[u8]) {
        self.push("o", data).await
    }

    /// Bytes the agent typed (in a pty, what a terminal does not echo too: passwords).
    pub async fn input(&self, data: &[u8]) {
        self.push("i", data).await
    }

    /// The agent's terminal changed size.
    pub async fn resize(&self, cols: u32, rows: u32) {
        let chunk = {
            let mut s = self.lock();
            let t = self.now();
            if s.dropped > 0 {
                None
            } else {
                s.event(json!([t, "r", format!("{cols}x{rows}")]), 0);
                self.ripe(&mut s)
            }
        };
        self.write(chunk).await
    }

    /// The channel ended: the last chunk, with the totals.
    pub async fn finish(self) {
        let chunk = {
            let mut s = self.lock();
            let t = self.now();
            // A character cut off by the end of its stream.
            let (output, input) = (s.output.finish(), s.input.finish());
            for (code, rest) in [("o", output), ("i", input)] {
                if !rest.is_empty() && s.dropped == 0 {
                    s.event(json!([t, code, rest]), 1);
                }
            }
            let mut c = self.take(&mut s);
            c["end"] = json!(true);
            c["duration"] = json!(t);
            c["bytes_kept"] = json!(s.kept);
            c["bytes_not_kept"] = json!(s.dropped);
            c
        };
        self.write(Some(chunk)).await
    }

    async fn push(&self, code: &'static str, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let chunk = {
            let mut s = self.lock();
            let t = self.now();
            let room = MAX_CAST_BYTES.saturating_sub(s.kept) as usize;
            let (kept, past) = data.split_at(data.len().min(room));
            if !kept.is_empty() {
                let text = match code {
                    "o" => s.output.decode(kept),
                    _ => s.input.decode(kept),
                };
                s.kept += kept.len() as u64;
                if !text.is_empty() {
                    s.event(json!([t, code, text]), kept.len());
                }
            }
            if !past.is_empty() {
                if s.dropped == 0 {
                    s.event(
                        json!([
                            t,
                            "m",
                            format!(
                                "agentgate: the recording stops here (cap of {} MiB a channel)",
                                MAX_CAST_BYTES / (1024 * 1024)
                            )
                        ]),
                        0,
                    );
                }
                s.dropped += past.len() as u64;
            }
            self.ripe(&mut s)
        };
        self.write(chunk).await
    }

    /// The chunk to write now, if the current one is full or old enough.
    fn ripe(&self, s: &mut State) -> Option<Value> {
        let old = s.batch_started.is_some_and(|b| b.elapsed() >= BATCH_AGE);
        (s.batch_bytes >= BATCH_BYTES || (old && !s.events.is_empty())).then(|| self.take(s))
    }

    fn take(&self, s: &mut State) -> Value {
        let mut chunk = json!({
            "session": self.session,
            "channel": self.channel,
            "part": s.part,
            "events": std::mem::take(&mut s.events),
        });
        if let Some(h) = s.header.take() {
            chunk["header"] = h;
        }
        s.part += 1;
        s.batch_bytes = 0;
        s.batch_started = None;
        chunk
    }

    async fn write(&self, chunk: Option<Value>) {
        let Some(body) = chunk else { return };
        self.recorder
            .record(Record::Event {
                kind: self.kind,
                at_ms: now_ms(),
                session: Some(self.session.clone()),
                body,
            })
            .await
    }

    /// Seconds since the cast started, to the microsecond (asciicast's event time).
    fn now(&self) -> f64 {
        (self.started.elapsed().as_micros() as f64) / 1e6
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn event(&mut self, e: Value, bytes: usize) {
        if self.events.is_empty() {
            self.batch_started = Some(Instant::now());
        }
        self.events.push(e);
        // An event costs its bytes (more once escaped as JSON) and some framing.
        self.batch_bytes += bytes + 16;
    }
}

/// Turns a byte stream into text for asciicast (whose data are UTF-8 strings): a character cut
/// between two chunks is held until its end comes; bytes that are not UTF-8 become U+FFFD.
#[derive(Default)]
struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    fn decode(&mut self, data: &[u8]) -> String {
        let joined;
        let mut rest: &[u8] = if self.pending.is_empty() {
            data
        } else {
            let mut p = std::mem::take(&mut self.pending);
            p.extend_from_slice(data);
            joined = p;
            &joined
        };
        let mut out = String::with_capacity(rest.len());
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    return out;
                }
                Err(e) => {
                    let (valid, bad) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &bad[n..];
                        }
                        // An incomplete character at the end: its rest may come next.
                        None => {
                            self.pending = bad.to_vec();
                            return out;
                        }
                    }
                }
            }
        }
    }

    fn finish(&mut self) -> String {
        if self.pending.is_empty() {
            String::new()
        } else {
            self.pending.clear();
            char::REPLACEMENT_CHARACTER.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_cut_between_chunks_are_joined() {
        let text = "é€😀 plain";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let mut c = Utf8Carry::default();
            let mut out = c.decode(&bytes[..cut]);
            out.push_str(&c.decode(&bytes[cut..]));
            out.push_str(&c.finish());
            assert_eq!(out, text, "cut at {cut}");
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_become_replacement_characters() {
        let mut c = Utf8Carry::default();
        assert_eq!(c.decode(b"a\xffb\xe2\x82"), "a\u{fffd}b");
        assert_eq!(c.finish(), "\u{fffd}");
        assert_eq!(c.decode(b"ok"), "ok");
    }
}
