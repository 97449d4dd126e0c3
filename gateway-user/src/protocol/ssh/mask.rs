//! Masking what a channel's target prints (stdout and stderr) before the agent reads it and the
//! record keeps it: the detector rules (`mask:` with `detectors`/`regexes`) that apply to the
//! session's principal and target, over each stream through a [`StreamScanner`] (values cut
//! across chunks still found, memory bounded).
//!
//! An interactive program waits for its output to be read (a prompt), so output is not held
//! back for long: when the target has sent nothing for [`QUIET`], what is held goes out except a
//! trailing partial word (which may be the start of a value: `AKIA` of an AWS key); that word
//! goes out after [`MAX_HOLD`] without output. The scanner keeps its context across these
//! flushes, but what went out cannot be taken back: a value whose first part was passed on
//! before the rest came (a pause inside a PEM block or after a space) is masked only from where
//! the scanner saw it as one (docs/ssh.md, Masking).
//!
//! The sftp subsystem is a binary protocol with lengths in it: detectors over its stream would
//! corrupt it, so it is not masked here; the file contents it reads are, keeping their length,
//! by the sftp relay (`sftp/masked.rs`). Everything else is: an exec that runs the sftp server
//! by its path is masked as a stream too, since an exec's words cannot be trusted to be what
//! runs.

use std::{collections::VecDeque, sync::Arc};

use bytes::Bytes;
use russh::{ChannelMsg, ChannelReadHalf};
use tokio::time::{Duration, Instant};

use super::{channel::Request, Ctx};
use crate::mask::{
    plan::Plan,
    stream::{StreamScanner, DEFAULT_MAX_VALUE},
};

/// No output from the target for this long: an interactive program may be waiting for input.
pub const QUIET: Duration = Duration::from_millis(50);
/// The longest a held partial word waits for what may complete it, without output meanwhile.
pub const MAX_HOLD: Duration = Duration::from_millis(500);

/// A channel's output masking: its plan (none when no detector rule applies) and a scanner per
/// stream.
pub struct OutputMask {
    /// The policy version the plan was built for: a reload changes the plan of running
    /// channels too.
    version: String,
    plan: Option<Arc<Plan>>,
    stdout: Option<StreamScanner>,
    stderr: Option<StreamScanner>,
    /// Messages ready for the agent, in order (flushed output before the EOF that follows it).
    ready: VecDeque<ChannelMsg>,
    /// When the target last sent data.
    last_data: Instant,
    /// Since when bytes have been held without any output; `None` when none are held.
    held_since: Option<Instant>,
    /// Whether the quiet flush ran since the last data.
    quiet_done: bool,
}

impl OutputMask {
    /// The masking of a channel of `request`: `None` for the sftp subsystem, which is never
    /// masked.
    pub fn for_channel(ctx: &Ctx<'_>, request: &Request) -> Option<OutputMask> {
        if matches!(request, Request::Subsystem(s) if s == "sftp") {
            return None;
        }
        let mut m = OutputMask {
            version: String::new(),
            plan: None,
            stdout: None,
            stderr: None,
            ready: VecDeque::new(),
            last_data: Instant::now(),
            held_since: None,
            quiet_done: true,
        };
        m.follow_policy(ctx);
        Some(m)
    }

    /// Rebuilds the plan when the policy changed; output held under the old one goes out first
    /// (masked by it).
    fn follow_policy(&mut self, ctx: &Ctx<'_>) {
        let policy = ctx.policy.borrow().clone();
        if policy.version == self.version {
            return;
        }
        self.end_streams();
        self.version = policy.version.clone();
        self.plan = Plan::build(&policy, &ctx.who(), &ctx.target).filter(|p| p.has_detectors());
    }

    fn holding(&self) -> bool {
        self.stdout.as_ref().is_some_and(|s| s.held() > 0)
            || self.stderr.as_ref().is_some_and(|s| s.held() > 0)
    }

    /// Takes a chunk of stdout (`ext` `None`) or of an extended stream; what may go out now is
    /// queued.
    fn push(&mut self, ext: Option<u32>, data: Bytes) {
        let Some(plan) = &self.plan else {
            // Nothing to mask: the bytes go as they came.
            self.ready.push_back(match ext {
                None => ChannelMsg::Data { data },
                Some(ext) => ChannelMsg::ExtendedData { data, ext },
            });
            return;
        };
        let scanner = match ext {
            None => &mut self.stdout,
            Some(1) => &mut self.stderr,
            // No other extended stream is defined; each chunk is masked on its own.
            Some(_) => {
                let masked = plan.mask_bytes(&data).into_owned();
                self.queue(ext, masked);
                return;
            }
        };
        let scanner =
            scanner.get_or_insert_with(|| StreamScanner::new(plan.clone(), DEFAULT_MAX_VALUE));
        let mut out = Vec::new();
        scanner.push(&data, &mut out);
        let now = Instant::now();
        self.last_data = now;
        self.quiet_done = false;
        self.queue(ext, out);
        self.note_held(now);
    }

    /// After output went out, held bytes are counted from now; without, from when they came.
    fn note_held(&mut self, now: Instant) {
        if !self.holding() {
            self.held_since = None;
        } else if self.held_since.is_none() {
            self.held_since = Some(now);
        }
    }

    fn queue(&mut self, ext: Option<u32>, out: Vec<u8>) {
        if out.is_empty() {
            return;
        }
        if ext.is_none() || ext == Some(1) {
            // Output went out: what is still held waits from now.
            self.held_since = None;
        }
        let data = Bytes::from(out);
        self.ready.push_back(match ext {
            None => ChannelMsg::Data { data },
            Some(ext) => ChannelMsg::ExtendedData { data, ext },
        });
    }

    /// The stream paused: passes on what is held (but a trailing partial word, if `keep_word`).
    fn flush(&mut self, keep_word: bool) {
        for ext in [None, Some(1)] {
            let scanner = match ext {
                None => &mut self.stdout,
                _ => &mut self.stderr,
            };
            let mut out = Vec::new();
            if let Some(s) = scanner {
                s.flush(&mut out, keep_word);
            }
            self.queue(ext, out);
        }
        self.note_held(Instant::now());
    }

    /// The streams end (EOF, exit status, close, a new plan): everything held goes out.
    fn end_streams(&mut self) {
        for ext in [None, Some(1)] {
            let scanner = match ext {
                None => self.stdout.take(),
                _ => self.stderr.take(),
            };
            let mut out = Vec::new();
            if let Some(s) = scanner {
                s.finish(&mut out);
            }
            self.queue(ext, out);
        }
        self.held_since = None;
    }

    /// When held bytes are due out, and whether a partial word stays held then.
    fn due(&self) -> Option<(Instant, bool)> {
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

    /// The next message of the target's channel for the agent, its output masked; `None` once
    /// the channel or the session ended.
    pub async fn next(&mut self, ctx: &Ctx<'_>, from: &mut ChannelReadHalf) -> Option<ChannelMsg> {
        loop {
            if let Some(msg) = self.ready.pop_front() {
                return Some(msg);
            }
            let msg = match self.due() {
                Some((at, keep_word)) => {
                    tokio::select! {
                        biased;
                        msg = super::channel::next(ctx, from) => msg,
                        () = tokio::time::sleep_until(at) => {
                            if keep_word {
                                self.quiet_done = true;
                            }
                            self.flush(keep_word);
                            continue;
                        }
                    }
                }
                None => super::channel::next(ctx, from).await,
            };
            let msg = msg?;
            self.follow_policy(ctx);
            match msg {
                ChannelMsg::Data { data } => self.push(None, data),
                ChannelMsg::ExtendedData { data, ext } => self.push(Some(ext), data),
                ChannelMsg::Eof | ChannelMsg::ExitStatus { .. } | ChannelMsg::Close => {
                    self.end_streams();
                    self.ready.push_back(msg);
                }
                other => self.ready.push_back(other),
            }
        }
    }
}

/// The next message for the agent: through `mask` where the channel has one.
pub async fn next(
    ctx: &Ctx<'_>,
    from: &mut ChannelReadHalf,
    mask: &mut Option<OutputMask>,
) -> Option<ChannelMsg> {
    match mask {
        Some(m) => m.next(ctx, from).await,
        None => super::channel::next(ctx, from).await,
    }
}
