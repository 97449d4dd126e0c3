//! Masking what a Kubernetes exec or attach prints (stdout and stderr) before the agent reads
//! it and the record keeps it: the target's WebSocket frames are read whole, channels 1 and 2
//! go through the detector rules ([`QuietStreams`]: values cut across frames still found, a
//! prompt not held back), and the agent gets new frames with the masked bytes. Control frames
//! and the other channels (the exit status, a stream's close) pass unchanged, in order, after
//! what the streams held.
//!
//! Fails closed: a stream that cannot be read as binary `channel.k8s.io` frames (garbage, a
//! frame too large to hold, base64 text frames) is cut, never passed on unread; SPDY streams,
//! which the gateway does not parse, are refused up front on a target with detector rules, and
//! the agent's WebSocket offer is narrowed to the binary protocols.

use std::sync::Arc;

use hyper::header::{HeaderMap, HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use tokio::time::Instant;

use super::ws::{self, Frames, Message, Piece};
use crate::mask::{plan::Plan, quiet::QuietStreams};

/// Why a stream's output could not be masked (it is cut).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Unmaskable {
    #[error("the stream is not WebSocket frames the gateway can read")]
    Broken,
    #[error("the stream sends text frames (base64 channels), which are not masked")]
    Text,
    #[error("a frame is larger than the gateway holds to mask it")]
    TooLarge,
    #[error("the target chose the WebSocket protocol {0:?}, which is not masked")]
    Protocol(String),
}

/// Binary channel protocols (the first payload byte is the stream): `channel.k8s.io` and its
/// versions v2–v5. The `base64.` ones are not.
fn is_binary_channel(protocol: &str) -> bool {
    let p = protocol.trim();
    p == "channel.k8s.io"
        || p.strip_suffix(".channel.k8s.io").is_some_and(|v| {
            v.strip_prefix('v')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// An exec/attach upgrade on a target whose output is masked: SPDY is refused, and the agent's
/// WebSocket offer keeps only the binary channel protocols (none left: refused).
pub fn restrict_offer(kind: &str, headers: &mut HeaderMap) -> Result<(), String> {
    if kind != "websocket" {
        return Err(format!(
            "agentgate: exec output on this target is masked, and a `{kind}` stream cannot be; \
             use a client that speaks WebSocket (kubectl 1.30 or later)"
        ));
    }
    let offered: Vec<String> = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| is_binary_channel(p))
        .collect();
    if offered.is_empty() {
        return Err(
            "agentgate: exec output on this target is masked, and only the binary \
             `v5.channel.k8s.io` family can be (the request offered none)"
                .into(),
        );
    }
    let value = HeaderValue::from_str(&offered.join(", "))
        .map_err(|_| "agentgate: an unreadable WebSocket protocol offer".to_string())?;
    headers.remove(SEC_WEBSOCKET_PROTOCOL);
    headers.insert(SEC_WEBSOCKET_PROTOCOL, value);
    Ok(())
}

/// The protocol the target chose in its 101, checked before any byte is relayed.
pub fn check_chosen(headers: &HeaderMap) -> Result<(), Unmaskable> {
    let chosen = headers
        .get(SEC_WEBSOCKET_PROTOCOL)
        .map(|v| v.to_str().unwrap_or("?").to_string())
        .unwrap_or_default();
    if is_binary_channel(&chosen) {
        Ok(())
    } else {
        Err(Unmaskable::Protocol(chosen))
    }
}

/// What goes to the agent: the frames' bytes, and the messages they carry (masked) for the
/// record.
#[derive(Default)]
pub struct Emitted {
    pub wire: Vec<u8>,
    pub messages: Vec<Message>,
}

impl Emitted {
    /// Masked output of `channel`; nothing when empty.
    fn output(&mut self, channel: u8, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        ws::encode_message(channel, &data, &mut self.wire);
        self.messages.push(Message { channel, data });
    }

    fn message(&mut self, m: Message) {
        ws::encode_message(m.channel, &m.data, &mut self.wire);
        self.messages.push(m);
    }

    fn both(&mut self, [stdout, stderr]: crate::mask::quiet::Ready) {
        self.output(1, stdout);
        self.output(2, stderr);
    }
}

/// The target-to-agent direction of one exec stream, masked.
pub struct ExecMask {
    frames: Frames,
    streams: QuietStreams,
}

impl ExecMask {
    pub fn new(plan: Arc<Plan>) -> ExecMask {
        ExecMask {
            frames: Frames::default(),
            streams: QuietStreams::new(plan),
        }
    }

    /// Takes bytes from the target; returns what may go to the agent now.
    pub fn feed(&mut self, raw: &[u8]) -> Result<Emitted, Unmaskable> {
        let pieces = self.frames.feed_pieces(raw);
        if self.frames.broken {
            return Err(Unmaskable::Broken);
        }
        if self.frames.text {
            return Err(Unmaskable::Text);
        }
        if self.frames.skipped > 0 {
            return Err(Unmaskable::TooLarge);
        }
        let mut e = Emitted::default();
        for piece in pieces {
            match piece {
                Piece::Control { opcode, payload } => {
                    if opcode == 0x8 {
                        // Close: nothing follows it.
                        e.both(self.streams.finish_all());
                    }
                    ws::encode(opcode, &payload, &mut e.wire);
                }
                Piece::Message(m) => match m.channel {
                    1 | 2 => {
                        let out = self.streams.push(usize::from(m.channel - 1), &m.data);
                        e.output(m.channel, out);
                    }
                    // The final status: the program ended, its output goes out before it.
                    3 => {
                        e.both(self.streams.finish_all());
                        e.message(m);
                    }
                    // v5: a stream's close, naming the stream.
                    255 => {
                        if let Some(&c @ (1 | 2)) = m.data.first() {
                            let out = self.streams.finish(usize::from(c - 1));
                            e.output(c, out);
                        }
                        e.message(m);
                    }
                    _ => e.message(m),
                },
            }
        }
        Ok(e)
    }

    /// When held output is due out (see [`QuietStreams::due`]).
    pub fn due(&self) -> Option<(Instant, bool)> {
        self.streams.due()
    }

    /// The time [`due`](Self::due) named came.
    pub fn fired(&mut self, keep_word: bool) -> Emitted {
        let mut e = Emitted::default();
        e.both(self.streams.fired(keep_word));
        e
    }

    /// The target's side ended: everything held goes out.
    pub fn finish(&mut self) -> Emitted {
        let mut e = Emitted::default();
        e.both(self.streams.finish_all());
        e
    }
}

/// What the agent reads when its stream is cut: the reason on stderr, then a close frame
/// (1008, policy violation).
pub fn cut_notice(why: &Unmaskable) -> Vec<u8> {
    let mut wire = Vec::new();
    let line = format!("agentgate: the stream was cut: {why}\n");
    ws::encode_message(2, line.as_bytes(), &mut wire);
    let mut close = 1008u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"agentgate: unmaskable");
    ws::encode(0x8, &close, &mut wire);
    wire
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AKIAIOSFODNN7EXAMPLE";

    fn plan() -> Arc<Plan> {
        Plan::for_tests("  - name: secret\n    targets: [t]\n    mask: {detectors: [secret]}\n")
    }

    fn frame(channel: u8, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        ws::encode_message(channel, data, &mut out);
        out
    }

    /// Everything the agent would read, fed in `step`-byte reads, as messages.
    fn through(stream: &[u8], step: usize) -> Vec<Message> {
        let mut m = ExecMask::new(plan());
        let mut wire = Vec::new();
        for chunk in stream.chunks(step) {
            wire.extend(m.feed(chunk).expect("readable").wire);
        }
        wire.extend(m.finish().wire);
        let mut read = Frames::default();
        let got = read.feed(&wire);
        assert!(!read.broken);
        got
    }

    fn text_of(got: &[Message], channel: u8) -> String {
        got.iter()
            .filter(|m| m.channel == channel)
            .map(|m| String::from_utf8_lossy(&m.data).into_owned())
            .collect()
    }

    #[test]
    fn a_key_split_across_frames_and_reads_is_masked_on_both_channels() {
        let mut stream = frame(1, b"id: AKIAIOSF");
        stream.extend(frame(1, b"ODNN7EXAMPLE ok\n"));
        stream.extend(frame(2, format!("warn {KEY}\n").as_bytes()));
        stream.extend(frame(3, br#"{"metadata":{},"status":"Success"}"#));
        for step in [1, 5, 17, stream.len()] {
            let got = through(&stream, step);
            let (out, err) = (text_of(&got, 1), text_of(&got, 2));
            assert!(!out.contains(KEY) && !err.contains(KEY), "{out:?} {err:?}");
            assert!(out.starts_with("id: ") && out.ends_with(" ok\n"), "{out:?}");
            assert!(err.starts_with("warn "), "{err:?}");
            // The status comes last, after the output held before it.
            let last = got.last().expect("messages");
            assert_eq!(last.channel, 3, "step {step}");
        }
    }

    #[test]
    fn output_without_secrets_and_control_frames_pass_unchanged() {
        // A control frame goes out at once; output may be held until its stream closes.
        let mut stream = Vec::new();
        ws::encode(0x9, b"ping", &mut stream);
        stream.extend(frame(1, b"hello\n"));
        stream.extend(frame(255, &[1]));
        let mut m = ExecMask::new(plan());
        let mut wire = m.feed(&stream).expect("readable").wire;
        wire.extend(m.finish().wire);
        assert_eq!(wire, stream);
    }

    #[test]
    fn what_cannot_be_read_is_refused_not_passed() {
        let mut text = Vec::new();
        ws::encode(0x1, b"1aGVsbG8=", &mut text);
        assert_eq!(
            ExecMask::new(plan()).feed(&text).err(),
            Some(Unmaskable::Text)
        );
        assert_eq!(
            ExecMask::new(plan()).feed(&[0x83, 0, 1]).err(),
            Some(Unmaskable::Broken)
        );
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&(64u64 << 20).to_be_bytes());
        huge.extend_from_slice(&[1; 100]);
        assert_eq!(
            ExecMask::new(plan()).feed(&huge).err(),
            Some(Unmaskable::TooLarge)
        );
    }

    #[test]
    fn offers_are_narrowed_to_binary_channels_and_spdy_is_refused() {
        let mut h = HeaderMap::new();
        h.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("v5.channel.k8s.io, v4.base64.channel.k8s.io, base64.channel.k8s.io, v4.channel.k8s.io"),
        );
        restrict_offer("websocket", &mut h).expect("binary offered");
        assert_eq!(
            h.get(SEC_WEBSOCKET_PROTOCOL).unwrap(),
            "v5.channel.k8s.io, v4.channel.k8s.io"
        );
        let mut h = HeaderMap::new();
        h.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("base64.channel.k8s.io"),
        );
        assert!(restrict_offer("websocket", &mut h).is_err());
        assert!(restrict_offer("spdy/3.1", &mut HeaderMap::new()).is_err());
        assert!(is_binary_channel("channel.k8s.io"));
        assert!(!is_binary_channel("vx.channel.k8s.io"));
        assert!(!is_binary_channel("v.channel.k8s.io"));
        let mut chosen = HeaderMap::new();
        assert!(check_chosen(&chosen).is_err(), "none chosen");
        chosen.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("v5.channel.k8s.io"),
        );
        assert!(check_chosen(&chosen).is_ok());
    }
}
