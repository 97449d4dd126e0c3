//! Masking an interactive program's two output streams (stdout and stderr of an SSH channel or
//! of a Kubernetes exec) without holding its prompt back: a [`StreamScanner`] per stream, and
//! the timing that decides when held bytes must go out anyway.
//!
//! An interactive program waits for its output to be read (a prompt), so output is not held
//! back for long: when the target has sent nothing for [`QUIET`], what is held goes out except a
//! trailing partial word (which may be the start of a value: `AKIA` of an AWS key); that word
//! goes out after [`MAX_HOLD`] without output. The scanners keep their context across these
//! flushes, but what went out cannot be taken back: a value whose first part was passed on
//! before the rest came (a pause inside a PEM block or after a space) is masked only from where
//! the scanner saw it as one.
//!
//! The caller owns the wire format: it hands each stream's bytes in with [`QuietStreams::push`],
//! sleeps until [`QuietStreams::due`] alongside its read, calls [`QuietStreams::fired`] when
//! that time comes, and frames whatever each call returns.

use std::sync::Arc;

use tokio::time::{Duration, Instant};

use super::{
    plan::Plan,
    stream::{StreamScanner, DEFAULT_MAX_VALUE},
};

/// No output from the target for this long: an interactive program may be waiting for input.
pub const QUIET: Duration = Duration::from_millis(50);
/// The longest a held partial word waits for what may complete it, without output meanwhile.
pub const MAX_HOLD: Duration = Duration::from_millis(500);

/// stdout and stderr, the two streams masked with context kept.
pub const STREAMS: usize = 2;

/// Masked bytes ready for each stream (index 0 stdout, 1 stderr); either may be empty.
pub type Ready = [Vec<u8>; STREAMS];

pub struct QuietStreams {
    plan: Arc<Plan>,
    scanners: [Option<StreamScanner>; STREAMS],
    /// When the target last sent data.
    last_data: Instant,
    /// Since when bytes have been held without any output; `None` when none are held.
    held_since: Option<Instant>,
    /// Whether the quiet flush ran since the last data.
    quiet_done: bool,
}

impl QuietStreams {
    pub fn new(plan: Arc<Plan>) -> QuietStreams {
        QuietStreams {
            plan,
            scanners: [None, None],
            last_data: Instant::now(),
            held_since: None,
            quiet_done: true,
        }
    }

    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    fn holding(&self) -> bool {
        self.scanners
            .iter()
            .any(|s| s.as_ref().is_some_and(|s| s.held() > 0))
    }

    /// After output went out, held bytes are counted from now; without, from when they came.
    fn note_held(&mut self, now: Instant, output: bool) {
        if output || !self.holding() {
            self.held_since = None;
        }
        if self.holding() && self.held_since.is_none() {
            self.held_since = Some(now);
        }
    }

    /// Takes a chunk of `stream` (0 stdout, 1 stderr); returns what may go out now, masked.
    pub fn push(&mut self, stream: usize, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let Some(slot) = self.scanners.get_mut(stream) else {
            // Not one of the two streams: masked on its own, nothing held.
            return self.plan.mask_bytes(data).into_owned();
        };
        let plan = &self.plan;
        slot.get_or_insert_with(|| StreamScanner::new(plan.clone(), DEFAULT_MAX_VALUE))
            .push(data, &mut out);
        let now = Instant::now();
        self.last_data = now;
        self.quiet_done = false;
        self.note_held(now, !out.is_empty());
        out
    }

    /// When held bytes are due out, and whether a partial word stays held then.
    pub fn due(&self) -> Option<(Instant, bool)> {
        if !self.holding() {
            return None;
        }
        let stale = self.held_since.map(|t| (t + MAX_HOLD, false));
        let quiet = (!self.quiet_done).then_some((self.last_data + QUIET, true));
        match (quiet, stale) {
            (Some(q), Some(s)) if s.0 <= q.0 => Some(s),
            (Some(q), _) => Some(q),
            (None, s) => s,
        }
    }

    /// The time [`due`](Self::due) named came: passes on what is held (but a trailing partial
    /// word, if `keep_word`).
    pub fn fired(&mut self, keep_word: bool) -> Ready {
        if keep_word {
            self.quiet_done = true;
        }
        let mut ready: Ready = Default::default();
        for (scanner, out) in self.scanners.iter_mut().zip(ready.iter_mut()) {
            if let Some(s) = scanner {
                s.flush(out, keep_word);
            }
        }
        let output = ready.iter().any(|r| !r.is_empty());
        self.note_held(Instant::now(), output);
        ready
    }

    /// `stream` ended (its close, the program's exit): everything it held goes out.
    pub fn finish(&mut self, stream: usize) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(s) = self.scanners.get_mut(stream).and_then(Option::take) {
            s.finish(&mut out);
        }
        self.note_held(Instant::now(), !out.is_empty());
        out
    }

    /// Both streams end: everything held goes out.
    pub fn finish_all(&mut self) -> Ready {
        [self.finish(0), self.finish(1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Arc<Plan> {
        Plan::for_tests("  - name: secret\n    targets: [t]\n    mask: {detectors: [secret]}\n")
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_cut_across_chunks_is_masked_and_a_prompt_goes_out_when_quiet() {
        let mut q = QuietStreams::new(plan());
        let mut seen = q.push(0, b"key AKIAIOSF");
        assert!(q.due().is_some(), "bytes are held");
        seen.extend(q.push(0, b"ODNN7EXAMPLE done\n$ "));
        let (at, keep_word) = q.due().expect("the prompt is held");
        assert!(keep_word);
        tokio::time::sleep_until(at).await;
        let [out, err] = q.fired(keep_word);
        seen.extend(out);
        assert!(err.is_empty());
        let text = String::from_utf8_lossy(&seen).into_owned();
        assert!(!text.contains("AKIAIOSFODNN7EXAMPLE"), "{text}");
        assert!(text.ends_with("done\n$ "), "the prompt went out: {text:?}");
        assert!(q.due().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_word_waits_at_most_max_hold() {
        let mut q = QuietStreams::new(plan());
        let mut seen = q.push(1, b"error: AKIA");
        let (at, keep_word) = q.due().expect("held");
        tokio::time::sleep_until(at).await;
        seen.extend(q.fired(keep_word)[1].clone());
        assert!(!seen.ends_with(b"AKIA"), "the partial word is kept once");
        let (at, keep_word) = q.due().expect("the word is still held");
        assert!(!keep_word, "the second time it goes out");
        tokio::time::sleep_until(at).await;
        seen.extend(q.fired(keep_word)[1].clone());
        assert_eq!(seen, b"error: AKIA");
        assert!(q.due().is_none());
    }

    #[test]
    fn finishing_passes_everything_on_masked() {
        let mut q = QuietStreams::new(plan());
        let mut seen = q.push(0, b"AKIAIOSFODNN7EXAMPLE");
        let [out, err] = q.finish_all();
        seen.extend(out);
        assert!(err.is_empty());
        assert!(!seen.is_empty());
        assert!(!String::from_utf8_lossy(&seen).contains("AKIAIOSFODNN7EXAMPLE"));
    }
}
