//! File reads over sftp under a mask rule: masked, keeping the length.
//!
//! An SFTP READ is answered with exactly the bytes at an offset, and the client's next READ asks
//! for the offset after them: masking that changes lengths would corrupt the file. So here every
//! masked byte is replaced by [`MASK_BYTE`] (whatever the rule's strategy: `partial`, `hash` and
//! `null` would change lengths), and each READ of `[off, off + len)` is answered from a *window*
//! the gateway reads from the target itself: `[off - LOOKBEHIND, off + len + LOOKAHEAD)`. The
//! detectors run over the whole window and the agent gets the masked bytes of `[off, off + len)`.
//!
//! What it guarantees (the bound is the streaming scanner's, `mask::stream`):
//! - A value of at most [`DEFAULT_MAX_VALUE`] bytes lies whole in the window of any READ that
//!   touches one of its bytes, with the [`CONTEXT`] bytes before it and the [`MARGIN`] after it
//!   that detectors look at; so each of its bytes is masked, whatever offsets and lengths the
//!   agent reads with, in any order: the same bytes as masking the whole file at once.
//! - Longer values are masked where the window shows where they start (a PEM key's BEGIN line,
//!   a token's prefix: a PEM key without its END line in the window is masked to the window's
//!   end). Where a window starts or ends inside a run that may be the middle of a longer value
//!   (a token: bytes with no whitespace, control byte or quote; or lines of base64 as in a PEM
//!   body), that run's bytes in the answer are masked too: it is at least
//!   [`LOOKBEHIND`]/[`LOOKAHEAD`] long, no value could be shown not to run through it. This masks
//!   more than the value rather than less (a long base64 blob is masked past its first 4 KiB).
//! - Where the target answers with fewer bytes than asked (its own read cap, a short read), the
//!   gateway asks for the rest, up to [`MAX_ROUNDS`] times, before it answers; the file is taken
//!   to end only where the target says `SSH_FX_EOF`. Past the rounds, the READ fails
//!   (`SSH_FX_FAILURE`), never answered with bytes the detectors did not see in context.
//!
//! Memory: one window (at most [`MAX_WINDOW`] bytes) per READ being answered.

use std::{ops::Range, sync::Arc};

use bytes::{BufMut, Bytes, BytesMut};

use super::wire;
use crate::mask::{
    detect::Hit,
    plan::Plan,
    stream::{CONTEXT, DEFAULT_MAX_VALUE, MARGIN},
};

/// What a masked byte becomes.
pub const MASK_BYTE: u8 = b'*';
/// Bytes read before the asked offset: a whole value and what detectors read before one.
pub const LOOKBEHIND: u64 = (DEFAULT_MAX_VALUE + CONTEXT) as u64;
/// Bytes read after the asked range: a whole value and what detectors read after one.
pub const LOOKAHEAD: u64 = (DEFAULT_MAX_VALUE + MARGIN) as u64;
/// The longest read OpenSSH's sftp-server answers in one DATA packet (`SFTP_MAX_READ_LENGTH`).
pub const MAX_WINDOW: u64 = 256 * 1024 - 1024;
/// The most one READ is answered with: its window must fit in [`MAX_WINDOW`]. Longer READs get
/// fewer bytes (a short read, which SFTP clients ask again for the rest of).
pub const MAX_SLICE: u64 = MAX_WINDOW - LOOKBEHIND - LOOKAHEAD;
/// READs the gateway sends for one window before it gives up.
pub const MAX_ROUNDS: u32 = 16;

/// One agent READ being answered from a window.
pub struct Window {
    pub plan: Arc<Plan>,
    pub handle: Bytes,
    /// What the agent asked for (its length capped at [`MAX_SLICE`]).
    off: u64,
    len: u64,
    /// The window: file bytes `[start, start + want)`; `buf` holds those read so far.
    start: u64,
    want: u64,
    buf: BytesMut,
    rounds: u32,
}

/// What the relay does with a reply to a window's READ.
pub enum Step {
    /// Send this READ to the target (the rest of the window); nothing to the agent yet.
    More(Bytes),
    /// Answer the agent with this packet; `bytes` of file contents in it.
    Answer { packet: Bytes, bytes: u64 },
}

impl Window {
    pub fn new(plan: Arc<Plan>, handle: Bytes, off: u64, len: u32) -> Window {
        let len = u64::from(len).min(MAX_SLICE);
        let start = off.saturating_sub(LOOKBEHIND);
        let end = off.saturating_add(len).saturating_add(LOOKAHEAD);
        Window {
            plan,
            handle,
            off,
            len,
            start,
            want: end - start,
            buf: BytesMut::new(),
            rounds: 0,
        }
    }

    /// The READ (request `id`) for the rest of the window.
    pub fn request(&mut self, id: u32) -> Bytes {
        self.rounds += 1;
        let have = self.buf.len() as u64;
        let body = 1 + 4 + 4 + self.handle.len() + 8 + 4;
        let mut b = BytesMut::with_capacity(4 + body);
        b.put_u32(body as u32);
        b.put_u8(wire::FXP_READ);
        b.put_u32(id);
        b.put_u32(self.handle.len() as u32);
        b.put_slice(&self.handle);
        b.put_u64(self.start + have);
        // At most MAX_WINDOW: fits a u32.
        b.put_u32((self.want - have) as u32);
        b.freeze()
    }

    /// The target answered with `data`, the file's bytes from where the last READ asked.
    pub fn data(&mut self, id: u32, data: &[u8]) -> Step {
        let rest = (self.want - self.buf.len() as u64) as usize;
        // More than asked is not what sftp-server sends: only what was asked is used.
        self.buf.extend_from_slice(&data[..data.len().min(rest)]);
        if self.buf.len() as u64 >= self.want {
            return self.answer(id, false);
        }
        if self.rounds >= MAX_ROUNDS {
            return Step::Answer {
                packet: wire::status(
                    id,
                    wire::FX_FAILURE,
                    "agentgate: the target answered this read in too many pieces to mask it",
                ),
                bytes: 0,
            };
        }
        Step::More(self.request(id))
    }

    /// The target said the file ends where the last READ asked (`SSH_FX_EOF`).
    pub fn eof(&self, id: u32) -> Step {
        self.answer(id, true)
    }

    fn answer(&self, id: u32, eof: bool) -> Step {
        let have = self.buf.len() as u64;
        let from = self.off - self.start;
        if from >= have {
            return Step::Answer {
                packet: wire::status(id, wire::FX_EOF, "End of file"),
                bytes: 0,
            };
        }
        let to = (from + self.len).min(have);
        let slice = from as usize..to as usize;
        let masked = mask_slice(&self.plan, &self.buf, self.start == 0, eof, slice);
        let bytes = masked.len() as u64;
        Step::Answer {
            packet: wire::data(id, &masked),
            bytes,
        }
    }
}

/// `window[slice]`, masked keeping its length: `window` is the file's bytes from the start of
/// the file if `file_start`, through its end if `eof`.
pub fn mask_slice(
    plan: &Plan,
    window: &[u8],
    file_start: bool,
    eof: bool,
    slice: Range<usize>,
) -> Vec<u8> {
    let mut out = window[slice.clone()].to_vec();
    let mut hide = |range: Range<usize>| {
        let from = range.start.max(slice.start);
        let to = range.end.min(slice.end);
        if from < to {
            out[from - slice.start..to - slice.start].fill(MASK_BYTE);
        }
    };
    let mut hits: Vec<Hit> = Vec::new();
    plan.scan(window, &mut hits);
    for h in &hits {
        hide(h.range.clone());
    }
    // A window edge that is not the file's may cut a longer value: the run at that edge.
    if !file_start {
        hide(0..edge_run(window.iter().copied()));
    }
    if !eof {
        let n = edge_run(window.iter().rev().copied());
        hide(window.len() - n..window.len());
    }
    out
}

/// Whether `b` ends a token (and so a value that is one), as in `mask::stream`.
fn ends_token(b: u8) -> bool {
    b.is_ascii_whitespace() || b.is_ascii_control() || b == b'"' || b == b'\''
}

fn base64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_')
}

/// Shortest whole line that counts as a line of a PEM body (they are 64 or 70 characters).
const PEM_LINE: usize = 32;

/// How many bytes from an edge (given from that edge inwards) may continue a value from beyond
/// it: the longer of the token there and the run of base64 lines there (the line cut by the
/// edge, then whole lines of at least [`PEM_LINE`] base64 characters).
fn edge_run(bytes: impl Iterator<Item = u8> + Clone) -> usize {
    let token = bytes.clone().take_while(|&b| !ends_token(b)).count();
    // Bytes counted so far, and the end of the last line that belongs to the run.
    let mut at = 0;
    let mut lines = 0;
    let mut line = 0;
    let mut first = true;
    let mut ran_out = true;
    for b in bytes {
        if b == b'\n' || b == b'\r' {
            if !(first || line >= PEM_LINE || line == 0) {
                ran_out = false;
                break;
            }
            at += 1;
            lines = at;
            first = false;
            line = 0;
        } else if base64(b) {
            at += 1;
            line += 1;
            if first {
                lines = at;
            }
        } else {
            ran_out = false;
            break;
        }
    }
    // A line cut by the other edge of the window counts when it is long enough to be a body
    // line.
    if ran_out && !first && line >= PEM_LINE {
        lines = at;
    }
    token.max(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Arc<Plan> {
        Plan::for_tests(
            "  - name: m\n    targets: [t]\n    mask: {detectors: [secret, payment_card, email]}\n",
        )
    }

    const CARD: &[u8] = b"4111 1111 1111 1111";
    const EMAIL: &[u8] = b"alice@example.com";

    fn text(len: usize) -> Vec<u8> {
        let words = b"lorem ipsum dolor sit amet consectetur\n";
        words.iter().copied().cycle().take(len).collect()
    }

    /// Reads `file[range]` (to its end at most) as a client would with READs of `chunk` bytes,
    /// each answered from its window; returns what the agent gets, zeros before `range`.
    fn read_all(plan: &Arc<Plan>, file: &[u8], chunk: u32, range: Range<u64>) -> Vec<u8> {
        let mut got = vec![0u8; range.start as usize];
        let mut off = range.start;
        while off < range.end {
            let mut w = Window::new(plan.clone(), Bytes::from_static(b"h"), off, chunk);
            let _ = w.request(1);
            // The target: reads capped at 40,000 bytes, to exercise the rounds.
            let step = loop {
                let at = (w.start + w.buf.len() as u64) as usize;
                if at >= file.len() {
                    break w.eof(1);
                }
                let end = file.len().min(at + 40_000);
                match w.data(1, &file[at..end]) {
                    Step::More(_) => continue,
                    s => break s,
                }
            };
            let Step::Answer { packet, bytes } = step else {
                unreachable!()
            };
            if packet[4] == wire::FXP_STATUS {
                break;
            }
            assert_eq!(packet[4], wire::FXP_DATA);
            let data = &packet[13..];
            assert_eq!(data.len() as u64, bytes);
            got.extend_from_slice(data);
            off += bytes;
        }
        got.truncate(range.end.min(got.len() as u64) as usize);
        got
    }

    #[test]
    fn values_cut_by_reads_are_masked_keeping_the_length() {
        let plan = plan();
        let mut file = text(200_000);
        let key = b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n-----END OPENSSH PRIVATE KEY-----\n";
        let mut placed = Vec::new();
        for (at, v) in [
            (32 * 1024 - 7, CARD),
            (64 * 1024 - 20, &key[..]),
            (96 * 1024 - 5, EMAIL),
            (150_000, b"AKIAZ7QX4PLMNB2RTUVW"),
        ] {
            file[at - 1] = b' ';
            file[at..at + v.len()].copy_from_slice(v);
            file[at + v.len()] = b'\n';
            placed.push(at..at + v.len());
        }
        let all = 0..u64::MAX;
        let card = 32 * 1024 - 40..32 * 1024 + 40;
        for (chunk, range) in [
            (32 * 1024, all.clone()),
            (1, card.clone()),
            (261_120, all.clone()),
            (7_000, 5..u64::MAX),
            (3, card),
        ] {
            let got = read_all(&plan, &file, chunk, range.clone());
            let end = (range.end as usize).min(file.len());
            assert_eq!(got.len(), end, "chunk {chunk}");
            for i in range.start as usize..end {
                let (a, b) = (file[i], got[i]);
                if placed.iter().any(|r| r.contains(&i)) {
                    if !a.is_ascii_whitespace() {
                        assert_eq!(b, MASK_BYTE, "byte {i} of a value, chunk {chunk}");
                    }
                } else {
                    assert_eq!(a, b, "byte {i}, chunk {chunk}");
                }
            }
        }
    }

    #[test]
    fn a_window_edge_inside_a_long_run_masks_the_run() {
        let plan = plan();
        // A PEM key far longer than a window: its body is masked wherever it is read from.
        let mut file = b"head\n-----BEGIN RSA PRIVATE KEY-----\n".to_vec();
        let line = b"MIIJKAIBAAKCAgEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n";
        while file.len() < 60_000 {
            file.extend_from_slice(line);
        }
        file.extend_from_slice(b"-----END RSA PRIVATE KEY-----\ntail text\n");
        for (chunk, range) in [
            (1u32, 20_000..20_300),
            (100, 20_000..30_000),
            (32 * 1024, 20_000..u64::MAX),
        ] {
            let got = read_all(&plan, &file, chunk, range);
            assert!(
                !got[20_000..]
                    .windows(20)
                    .any(|w| line.windows(20).any(|l| l == w)),
                "chunk {chunk}: a body line in clear"
            );
            if chunk > 100 {
                assert!(got.ends_with(b"-----END RSA PRIVATE KEY-----\ntail text\n"));
            }
        }
        // A token longer than the window.
        let mut file = b"token ".to_vec();
        file.extend(std::iter::repeat_n(b'x', 30_000));
        file.extend_from_slice(b" end\n");
        let got = read_all(&plan, &file, 1000, 10_000..u64::MAX);
        assert!(got[10_000..30_006].iter().all(|&b| b == MASK_BYTE));
        assert!(got.ends_with(b" end\n"));
    }

    #[test]
    fn plain_text_and_word_lists_pass_unchanged() {
        let plan = plan();
        let mut words = Vec::new();
        for i in 0..20_000 {
            words.extend_from_slice(format!("word{i}\n").as_bytes());
        }
        assert_eq!(read_all(&plan, &words, 32 * 1024, 0..u64::MAX), words);
        let file = text(300_000);
        assert_eq!(read_all(&plan, &file, 4096, 0..u64::MAX), file);
    }

    #[test]
    fn edge_runs() {
        assert_eq!(edge_run(b"abc def".iter().copied()), 3);
        assert_eq!(edge_run(b" abc".iter().copied()), 0);
        let body = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9w\n";
        let mut t = b"xyz\n".to_vec();
        t.extend_from_slice(body);
        t.extend_from_slice(body);
        t.extend_from_slice(b"-----END X-----\n");
        assert_eq!(edge_run(t.iter().copied()), 4 + 2 * body.len());
        assert_eq!(edge_run(b"short\nlines\n".iter().copied()), 6);
    }
}
