//! Masking a byte stream that arrives in chunks (a shell's output, an HTTP body): the same
//! detectors and strategies as for a whole text, with values cut across chunk boundaries still
//! found, in bounded memory.
//!
//! The scanner holds back the end of what it was given, because the next chunk may complete (or
//! extend, or disqualify) a value that ends there. It keeps at least `max_value + MARGIN` bytes
//! back and never more than [`StreamScanner::bound`] (twice that); when more than the bound is
//! held it scans what it holds, with [`CONTEXT`] bytes already passed on before it, and passes
//! on all but the last `max_value + MARGIN` bytes, masked.
//!
//! What it guarantees:
//! - No byte of a value is passed on unmasked while the next chunk could still make it a value:
//!   a hit that starts before the cut is masked whole, even when it runs past the cut.
//! - Where every value in the stream is at most `max_value` bytes long, the output is exactly
//!   what [`Plan::mask_bytes`] gives for the whole stream at once, wherever the chunks are cut.
//!   The built-in detectors look at most 2 bytes past a value and [`CONTEXT`] covers what they
//!   look at before one; a policy regex sees the same window, so one that anchors on the start
//!   or end of the text (`^`, `$`, `\A`, `\z`) sees the window's.
//! - A value longer than `max_value` that is still growing when the bound forces output (a
//!   long token, a JWT or PEM key larger than the bound) is masked as far as it was seen, and
//!   the bytes that follow are dropped while they may continue it: up to the next whitespace,
//!   control byte or quote, or for a PEM block through its `-----END …-----` marker. Its
//!   replacement is that of the part seen (a `hash` differs from the whole value's). This
//!   masks more than the value rather than less.
//! - Bytes are bytes: text need not be UTF-8, and bytes that are not part of a value pass
//!   through unchanged, in order. A UTF-8 character may be split across output chunks as it
//!   was across input chunks.
//!
//! [`StreamScanner::finish`] ends the stream: what is held is scanned as the end of the text
//! and passed on. A caller that needs output before the stream ends (an interactive session
//! gone quiet) calls [`StreamScanner::flush`]: what is held is scanned as if the text ended
//! there and passed on, except (if asked) a trailing partial word, which may be the start of a
//! value; the context is kept, and a value that ran to the end of what was flushed is taken to
//! go on (what follows it is dropped as for a value cut off at the bound). What was passed on
//! cannot be taken back: a value whose first part went out at a flush, before the rest came, is
//! masked only from where the scanner saw it as one.

use std::sync::Arc;

use super::{detect::Hit, plan::Plan};

/// The longest value masked exactly, unless a caller chooses otherwise: a PEM RSA-4096 private
/// key (about 3.3 KB) and most JWTs fit.
pub const DEFAULT_MAX_VALUE: usize = 4096;

/// Bytes held past the longest value, so that what a detector reads after a value (a digit
/// that makes a number part of a longer one, an extension after a phone number) is there.
pub const MARGIN: usize = 64;

/// Bytes already passed on that the next scan still reads before the held ones: what a detector
/// reads before a value (a letter glued to a number, the `ssn` label before nine digits).
pub const CONTEXT: usize = 64;

pub struct StreamScanner {
    plan: Arc<Plan>,
    max_value: usize,
    /// `buf[..passed]` has been passed on (kept as context), `buf[passed..]` is held back.
    buf: Vec<u8>,
    passed: usize,
    hits: Vec<Hit>,
    /// Dropping the bytes that may continue a value cut off at the bound.
    run_on: Option<RunOn>,
}

impl StreamScanner {
    /// A scanner masking with `plan`'s detectors and strategies, exact for values up to
    /// `max_value` bytes (at least 1).
    pub fn new(plan: Arc<Plan>, max_value: usize) -> StreamScanner {
        StreamScanner {
            plan,
            max_value: max_value.max(1),
            buf: Vec::new(),
            passed: 0,
            hits: Vec::new(),
            run_on: None,
        }
    }

    /// What is kept back after each scan.
    fn keep(&self) -> usize {
        self.max_value + MARGIN
    }

    /// The most bytes held back between calls.
    pub fn bound(&self) -> usize {
        2 * self.keep()
    }

    /// Bytes given and not yet passed on.
    pub fn held(&self) -> usize {
        self.buf.len() - self.passed
    }

    /// Bytes in memory: the held ones and the context before them (at most
    /// `bound() + CONTEXT`).
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "the tests check the memory bound with it")
    )]
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next chunk of the stream; appends to `out` what can be passed on, masked.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        // In pieces, so that a large chunk does not grow the buffer past the bound by much.
        for piece in chunk.chunks(self.keep()) {
            self.buf.extend_from_slice(piece);
            if self.held() > self.bound() {
                self.scan(out, Cut::Bound);
            }
        }
    }

    /// Ends the stream: appends the rest, masked, to `out`.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        self.scan(out, Cut::End);
    }

    /// The stream went quiet: appends what is held, masked as if the text ended here, to `out`;
    /// with `keep_word`, all but a trailing partial word (bytes after the last whitespace,
    /// control byte or quote), which the next bytes may make a value. The context is kept.
    pub fn flush(&mut self, out: &mut Vec<u8>, keep_word: bool) {
        self.scan(out, Cut::Quiet { keep_word });
    }

    /// Where the trailing partial word of the held bytes starts.
    fn word_start(&self) -> usize {
        let held = &self.buf[self.passed..];
        let word = held.iter().rev().take_while(|&&b| !ends_token(b)).count();
        self.buf.len() - word
    }

    /// Passes on the held bytes up to `keep()` before the end (all at the end of the stream, up
    /// to the trailing word on a quiet flush that keeps it).
    fn scan(&mut self, out: &mut Vec<u8>, cut: Cut) {
        self.drop_run_on();
        let len = self.buf.len();
        let target = match cut {
            Cut::Bound => len.saturating_sub(self.keep()),
            Cut::End | Cut::Quiet { keep_word: false } => len,
            Cut::Quiet { keep_word: true } => self.word_start(),
        };
        if target > self.passed {
            self.hits.clear();
            self.plan.scan(&self.buf, &mut self.hits);
            let mut at = self.passed;
            for h in &self.hits {
                let range = h.range.clone();
                // Passed on already (in the context).
                if range.end <= at {
                    continue;
                }
                // For a later scan, which will see more after it.
                if range.start >= target {
                    break;
                }
                // A hit that starts in the context was not a value when that context was
                // scanned: its bytes still here are masked all the same.
                out.extend_from_slice(&self.buf[at..range.start.max(at)]);
                self.plan.put_masked(h, &self.buf[range.clone()], out);
                at = range.end;
                // At the bound, only a value longer than `max_value` can run from before the cut
                // to this close to the end; on a quiet flush, one that reaches the cut was cut
                // by the pause. Either way the next chunk may continue it.
                let runs_on = match cut {
                    Cut::Bound => range.end + MARGIN > len,
                    Cut::Quiet { .. } => range.end >= target,
                    Cut::End => false,
                };
                if runs_on {
                    self.run_on = Some(RunOn::after(&self.buf[range]));
                    break;
                }
            }
            if at < target {
                out.extend_from_slice(&self.buf[at..target]);
                at = target;
            }
            self.passed = at;
            self.drop_run_on();
        }
        // Only the context is kept of what was passed on.
        let drop = self.passed.saturating_sub(CONTEXT);
        self.buf.drain(..drop);
        self.passed -= drop;
    }

    /// Drops the held bytes that may continue a value cut off at the bound.
    fn drop_run_on(&mut self) {
        if let Some(run_on) = &mut self.run_on {
            let (n, over) = run_on.eat(&self.buf[self.passed..]);
            self.passed += n;
            if over {
                self.run_on = None;
            }
        }
    }
}

/// How far a scan passes bytes on.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// All but the last `keep()` bytes: the stream goes on.
    Bound,
    /// All (but a trailing partial word): the stream paused.
    Quiet { keep_word: bool },
    /// All: the stream ended.
    End,
}

/// Whether `b` ends a token (and so a value that is one).
fn ends_token(b: u8) -> bool {
    b.is_ascii_whitespace() || b.is_ascii_control() || b == b'"' || b == b'\''
}

/// What may still continue a value cut off at the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunOn {
    /// A token: up to the next whitespace, control byte or quote.
    Token,
    /// A PEM block: through `-----END ` and the next `-----`. `matched` bytes of `-----END `
    /// have been seen; once all, `dashes` of the closing `-----`.
    Pem { matched: usize, dashes: usize },
}

const PEM_BEGIN: &[u8] = b"-----BEGIN ";
const PEM_END: &[u8] = b"-----END ";

impl RunOn {
    /// The run-on of a value cut off at the bound, `value` being its bytes as seen.
    fn after(value: &[u8]) -> RunOn {
        if !value.starts_with(PEM_BEGIN) {
            return RunOn::Token;
        }
        // The value may end in part of an END marker; a whole marker inside it did not end it
        // (another label), so the one to look for is the next.
        let mut rest = &value[PEM_BEGIN.len()..];
        loop {
            let mut run_on = RunOn::Pem {
                matched: 0,
                dashes: 0,
            };
            let (n, over) = run_on.eat(rest);
            if !over {
                return run_on;
            }
            rest = &rest[n..];
        }
    }

    /// How many bytes of `text` continue the value, and whether the value ends there.
    fn eat(&mut self, text: &[u8]) -> (usize, bool) {
        for (i, &b) in text.iter().enumerate() {
            match self {
                RunOn::Token => {
                    if ends_token(b) {
                        return (i, true);
                    }
                }
                RunOn::Pem { matched, dashes } if *matched < PEM_END.len() => {
                    *matched = if b == PEM_END[*matched] {
                        *matched + 1
                    } else if b == b'-' {
                        // A sixth dash keeps the last five; a dash after `-----E…` starts over.
                        if *matched == 5 {
                            5
                        } else {
                            1
                        }
                    } else {
                        0
                    };
                    *dashes = 0;
                }
                RunOn::Pem { matched, dashes } => {
                    if b == b'-' {
                        *dashes += 1;
                        if *dashes == 5 {
                            return (i + 1, true);
                        }
                    } else if b == b'\n' {
                        // Not an END line after all: look for the next.
                        *matched = 0;
                        *dashes = 0;
                    } else {
                        *dashes = 0;
                    }
                }
            }
        }
        (text.len(), false)
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
