//! Masking what a channel's target prints (stdout and stderr) before the agent reads it and the
//! record keeps it: the detector rules (`mask:` with `detectors`/`regexes`) that apply to the
//! session's principal and target, over each stream through a
//! [`StreamScanner`](crate::mask::stream::StreamScanner) (values cut across chunks still found,
//! memory bounded).
//!
//! An interactive program waits for its output to be read (a prompt): held bytes go out when
//! the target goes quiet ([`QuietStreams`], shared with Kubernetes exec streams), so a value
//! whose first part was passed on before the rest came (a pause inside a PEM block or after a
//! space) is masked only from where the scanner saw it as one (docs/ssh.md, Masking).
//!
//! The sftp subsystem is a binary protocol with lengths in it: detectors over its stream would
//! corrupt it, so it is not masked here; the file contents it reads are, keeping their length,
//! by the sftp relay (`sftp/masked.rs`). Everything else is: an exec that runs the sftp server
//! by its path is masked as a stream too, since an exec's words cannot be trusted to be what
//! runs.

use std::collections::VecDeque;

use bytes::Bytes;
use russh::{ChannelMsg, ChannelReadHalf};

use super::{channel::Request, Ctx};
use crate::mask::{plan::Plan, quiet::QuietStreams};

/// A channel's output masking: the detector rules' streams (none when no detector rule
/// applies).
pub struct OutputMask {
    /// The policy version the plan was built for: a reload changes the plan of running
    /// channels too.
    version: String,
    streams: Option<QuietStreams>,
    /// Messages ready for the agent, in order (flushed output before the EOF that follows it).
    ready: VecDeque<ChannelMsg>,
}

/// The SSH stream of each [`QuietStreams`] index: stdout, then extended stream 1 (stderr).
const EXT: [Option<u32>; 2] = [None, Some(1)];

impl OutputMask {
    /// The masking of a channel of `request`: `None` for the sftp subsystem, which is never
    /// masked.
    pub fn for_channel(ctx: &Ctx<'_>, request: &Request) -> Option<OutputMask> {
        if matches!(request, Request::Subsystem(s) if s == "sftp") {
            return None;
        }
        let mut m = OutputMask {
            version: String::new(),
            streams: None,
            ready: VecDeque::new(),
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
        self.streams = Plan::build(&policy, &ctx.who(), &ctx.target)
            .filter(|p| p.has_detectors())
            .map(QuietStreams::new);
    }

    /// Takes a chunk of stdout (`ext` `None`) or of an extended stream; what may go out now is
    /// queued.
    fn push(&mut self, ext: Option<u32>, data: Bytes) {
        let Some(streams) = &mut self.streams else {
            // Nothing to mask: the bytes go as they came.
            self.queue(ext, data.to_vec());
            return;
        };
        let out = match EXT.iter().position(|e| *e == ext) {
            Some(stream) => streams.push(stream, &data),
            // No other extended stream is defined; each chunk is masked on its own.
            None => streams.plan().mask_bytes(&data).into_owned(),
        };
        self.queue(ext, out);
    }

    fn queue(&mut self, ext: Option<u32>, out: Vec<u8>) {
        if out.is_empty() {
            return;
        }
        let data = Bytes::from(out);
        self.ready.push_back(match ext {
            None => ChannelMsg::Data { data },
            Some(ext) => ChannelMsg::ExtendedData { data, ext },
        });
    }

    fn queue_all(&mut self, ready: crate::mask::quiet::Ready) {
        for (ext, out) in EXT.into_iter().zip(ready) {
            self.queue(ext, out);
        }
    }

    /// The streams end (EOF, exit status, close, a new plan): everything held goes out.
    fn end_streams(&mut self) {
        if let Some(ready) = self.streams.as_mut().map(QuietStreams::finish_all) {
            self.queue_all(ready);
        }
    }

    /// The next message of the target's channel for the agent, its output masked; `None` once
    /// the channel or the session ended.
    pub async fn next(&mut self, ctx: &Ctx<'_>, from: &mut ChannelReadHalf) -> Option<ChannelMsg> {
        loop {
            if let Some(msg) = self.ready.pop_front() {
                return Some(msg);
            }
            let msg = match self.streams.as_ref().and_then(QuietStreams::due) {
                Some((at, keep_word)) => {
                    tokio::select! {
                        biased;
                        msg = super::channel::next(ctx, from) => msg,
                        () = tokio::time::sleep_until(at) => {
                            if let Some(ready) = self.streams.as_mut().map(|s| s.fired(keep_word)) {
                                self.queue_all(ready);
                            }
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
