//! Reading the WebSocket frames of a Kubernetes exec/attach stream as they pass (RFC 6455), to
//! record them: the relay forwards the bytes untouched and hands a copy here. Kubernetes'
//! `channel.k8s.io` subprotocols put the stream in the payload's first byte: 0 stdin, 1 stdout,
//! 2 stderr, 3 the final status, 4 a terminal resize (v4 and v5; v5 adds 255, a stream's
//! close). Control frames and text frames carry nothing to record.

/// A payload larger than this is not kept for the record (it is still relayed).
const MAX_PAYLOAD: u64 = 16 << 20;

/// One data frame's channel and payload (unmasked).
#[derive(Debug, PartialEq, Eq)]
pub struct Message {
    pub channel: u8,
    pub data: Vec<u8>,
}

/// What one frame (or the last frame of a fragmented message) gives.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    Message(Message),
    /// A close, ping or pong, with its payload (unmasked).
    Control {
        opcode: u8,
        payload: Vec<u8>,
    },
}

/// Frames of one direction, reassembled from the bytes seen.
#[derive(Default)]
pub struct Frames {
    buf: Vec<u8>,
    /// A frame too large to keep: bytes still to skip.
    skipping: u64,
    /// Frames were skipped: the record is incomplete.
    pub skipped: u64,
    /// The stream cannot be read as WebSocket (the record says so; the relay goes on).
    pub broken: bool,
    /// A fragmented message being put together (its first byte is the channel).
    partial: Option<Vec<u8>>,
    /// A text data frame was seen (the `base64.channel.k8s.io` protocols send their streams
    /// base64-encoded in text frames).
    pub text: bool,
}

impl Frames {
    /// The complete messages in what was seen so far.
    pub fn feed(&mut self, data: &[u8]) -> Vec<Message> {
        self.feed_pieces(data)
            .into_iter()
            .filter_map(|p| match p {
                Piece::Message(m) => Some(m),
                Piece::Control { .. } => None,
            })
            .collect()
    }

    /// The complete messages and control frames in what was seen so far, in order.
    pub fn feed_pieces(&mut self, data: &[u8]) -> Vec<Piece> {
        let mut out = Vec::new();
        if self.broken {
            return out;
        }
        let mut data = data;
        if self.skipping > 0 {
            let n = (self.skipping as usize).min(data.len());
            self.skipping -= n as u64;
            data = &data[n..];
        }
        self.buf.extend_from_slice(data);
        loop {
            match self.next_frame() {
                Ok(Some(m)) => out.extend(m),
                Ok(None) => return out,
                Err(()) => {
                    self.broken = true;
                    self.buf = Vec::new();
                    return out;
                }
            }
        }
    }

    /// One frame off the buffer: `Ok(None)` when it is not all here yet.
    fn next_frame(&mut self) -> Result<Option<Option<Piece>>, ()> {
        let b = &self.buf;
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        let opcode = b[0] & 0x0f;
        let masked = b[1] & 0x80 != 0;
        let (len, mut at) = match b[1] & 0x7f {
            126 => {
                if b.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([b[2], b[3]])), 4)
            }
            127 => {
                if b.len() < 10 {
                    return Ok(None);
                }
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(n), 10)
            }
            n => (u64::from(n), 2),
        };
        let key = if masked {
            if b.len() < at + 4 {
                return Ok(None);
            }
            let k = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            at += 4;
            Some(k)
        } else {
            None
        };
        if len > MAX_PAYLOAD {
            // Not kept: skip it as it passes.
            let here = (self.buf.len() - at) as u64;
            let skip_now = here.min(len);
            self.skipping = len - skip_now;
            self.skipped += 1;
            self.partial = None;
            self.buf.drain(..at + skip_now as usize);
            return Ok(Some(None));
        }
        let len = len as usize;
        if self.buf.len() < at + len {
            return Ok(None);
        }
        let mut payload: Vec<u8> = self.buf[at..at + len].to_vec();
        self.buf.drain(..at + len);
        if let Some(k) = key {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= k[i % 4];
            }
        }
        let message = match opcode {
            // A continuation of a fragmented message.
            0x0 => {
                let Some(mut p) = self.partial.take() else {
                    return Err(());
                };
                p.extend_from_slice(&payload);
                if fin {
                    Some(p)
                } else {
                    self.partial = Some(p);
                    None
                }
            }
            // Binary (and text, which v5 clients do not send for data).
            0x1 | 0x2 => {
                self.text |= opcode == 0x1;
                if fin {
                    Some(payload)
                } else {
                    self.partial = Some(payload);
                    None
                }
            }
            // Close, ping, pong.
            0x8..=0xa => return Ok(Some(Some(Piece::Control { opcode, payload }))),
            _ => return Err(()),
        };
        Ok(Some(message.and_then(|p| {
            let (&channel, data) = p.split_first()?;
            Some(Piece::Message(Message {
                channel,
                data: data.to_vec(),
            }))
        })))
    }
}

/// One unfragmented, unmasked frame (as a server sends it).
pub fn encode(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// A binary frame carrying `data` on `channel`.
pub fn encode_message(channel: u8, data: &[u8], out: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(data.len() + 1);
    payload.push(channel);
    payload.extend_from_slice(data);
    encode(0x2, &payload, out);
}

/// The exit code in a channel-3 status (`metav1.Status`): 0 for success, the `ExitCode` cause
/// for a non-zero exit, `None` when it says neither.
pub fn exit_code(status: &[u8]) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_slice(status).ok()?;
    if v["status"] == "Success" {
        return Some(0);
    }
    v["details"]["causes"]
        .as_array()?
        .iter()
        .find(|c| c["reason"] == "ExitCode")
        .and_then(|c| c["message"].as_str())
        .and_then(|m| m.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, fin: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n < 65536 => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(k) => {
                f.extend_from_slice(&k);
                f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            }
            None => f.extend_from_slice(payload),
        }
        f
    }

    #[test]
    fn frames_split_anywhere_are_put_back_together() {
        let mut stream = frame(2, true, b"\x01hello", None);
        stream.extend(frame(2, true, b"\x02oops", Some([1, 2, 3, 4])));
        stream.extend(frame(9, true, b"ping", None));
        stream.extend(frame(2, false, b"\x01par", None));
        stream.extend(frame(0, true, b"t", None));
        let big = vec![b'x'; 70_000];
        let mut with_channel = vec![1u8];
        with_channel.extend_from_slice(&big);
        stream.extend(frame(2, true, &with_channel, None));
        for step in [1, 3, 7, 4096, stream.len()] {
            let mut f = Frames::default();
            let mut got = Vec::new();
            for chunk in stream.chunks(step) {
                got.extend(f.feed(chunk));
            }
            assert_eq!(got.len(), 4, "step {step}");
            assert_eq!(
                got[0],
                Message {
                    channel: 1,
                    data: b"hello".to_vec()
                }
            );
            assert_eq!(
                got[1],
                Message {
                    channel: 2,
                    data: b"oops".to_vec()
                }
            );
            assert_eq!(
                got[2],
                Message {
                    channel: 1,
                    data: b"part".to_vec()
                }
            );
            assert_eq!(got[3].data.len(), 70_000);
            assert!(!f.broken);
        }
    }

    #[test]
    fn encoded_frames_read_back_and_match_a_reference_encoder() {
        for len in [0usize, 1, 124, 125, 126, 65_535, 65_536, 70_000] {
            let data = vec![b'z'; len];
            let mut out = Vec::new();
            encode_message(2, &data, &mut out);
            let mut payload = vec![2u8];
            payload.extend_from_slice(&data);
            assert_eq!(out, frame(2, true, &payload, None), "len {len}");
            let got = Frames::default().feed(&out);
            assert_eq!(got, vec![Message { channel: 2, data }]);
        }
        let mut out = Vec::new();
        encode(0x9, b"hi", &mut out);
        assert_eq!(
            Frames::default().feed_pieces(&out),
            vec![Piece::Control {
                opcode: 0x9,
                payload: b"hi".to_vec()
            }]
        );
    }

    #[test]
    fn garbage_marks_the_stream_broken_without_panicking() {
        let mut f = Frames::default();
        let _ = f.feed(&[0x83, 0x00, 0xff, 0xff]);
        assert!(f.broken);
        let mut f = Frames::default();
        let _ = f.feed(&frame(0, true, b"\x01x", None));
        assert!(f.broken, "a continuation without a start");
    }

    #[test]
    fn exit_codes_come_from_the_status() {
        assert_eq!(exit_code(br#"{"metadata":{},"status":"Success"}"#), Some(0));
        let failed = br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: exit status 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        assert_eq!(exit_code(failed), Some(3));
        assert_eq!(exit_code(b"not json"), None);
    }
}
