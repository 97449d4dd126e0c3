//! A response body relayed as it streams (a watch, a large list, a download), with what the
//! record needs taken on the way: the first bytes up to the record's cap, the byte count and
//! how it ended. A watch on Secrets is masked event by event: each newline-terminated JSON
//! event is parsed and its Secret values replaced before any of it reaches the agent; an event
//! that does not parse is not passed on (the stream ends with an error instead).

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use tokio::sync::oneshot;

use super::{kube, respond::BodyError};
use crate::mask::{
    plan::Plan,
    stream::{StreamScanner, DEFAULT_MAX_VALUE},
};

/// The longest watch event held while its end is awaited; a longer one ends the stream.
const MAX_EVENT_BYTES: usize = 16 << 20;

/// What the record learns of a relayed body once it ends.
#[derive(Debug, Default)]
pub struct Seen {
    pub kept: Vec<u8>,
    pub cut: bool,
    pub bytes: u64,
    pub error: Option<String>,
}

pub struct Tee {
    inner: Incoming,
    seen: Seen,
    cap: usize,
    /// Mask event by event (a watch): each newline-terminated JSON event whole.
    mask_events: bool,
    /// The events are of the `secrets` resource (kind-less objects in them are Secrets).
    secrets: bool,
    pending: Vec<u8>,
    /// The detector rules' masking of the whole stream (values cut across frames found).
    plan: Option<Arc<Plan>>,
    scanner: Option<StreamScanner>,
    done: Option<oneshot::Sender<Seen>>,
}

impl Tee {
    pub fn new(
        inner: Incoming,
        cap: usize,
        watch: bool,
        secrets: bool,
        plan: Option<Arc<Plan>>,
    ) -> (Self, oneshot::Receiver<Seen>) {
        // A watch is masked event by event (an event is never held back for the next one);
        // any other body with detectors as a stream.
        let mask_events = watch && (secrets || plan.is_some());
        let (tx, rx) = oneshot::channel();
        let scanner = match (&plan, mask_events) {
            (Some(p), false) => Some(StreamScanner::new(p.clone(), DEFAULT_MAX_VALUE)),
            _ => None,
        };
        let tee = Tee {
            inner,
            seen: Seen::default(),
            cap,
            mask_events,
            secrets,
            pending: Vec::new(),
            plan,
            scanner,
            done: Some(tx),
        };
        (tee, rx)
    }

    fn keep(&mut self, data: &[u8]) {
        self.seen.bytes += data.len() as u64;
        let room = self.cap.saturating_sub(self.seen.kept.len());
        if data.len() > room {
            self.seen.cut = true;
        }
        self.seen
            .kept
            .extend_from_slice(&data[..data.len().min(room)]);
    }

    fn finish(&mut self, error: Option<String>) {
        if let Some(tx) = self.done.take() {
            let mut seen = std::mem::take(&mut self.seen);
            seen.error = error;
            let _ = tx.send(seen);
        }
    }

    /// The complete events in `pending`, masked; the incomplete tail stays.
    fn masked_events(&mut self, last: bool) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let split = if last {
            self.pending.len()
        } else {
            match self.pending.iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None => {
                    if self.pending.len() > MAX_EVENT_BYTES {
                        return Err(format!("a watch event longer than {MAX_EVENT_BYTES} bytes"));
                    }
                    return Ok(out);
                }
            }
        };
        let rest = self.pending.split_off(split);
        let complete = std::mem::replace(&mut self.pending, rest);
        for line in complete.split(|&b| b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let mut event: serde_json::Value = serde_json::from_slice(line)
                .map_err(|e| format!("a watch event the gateway cannot read to mask: {e}"))?;
            kube::mask_secrets(&mut event, self.secrets);
            let text = serde_json::to_vec(&event).map_err(|e| e.to_string())?;
            match &self.plan {
                Some(plan) => out.extend_from_slice(&plan.mask_bytes(&text)),
                None => out.extend_from_slice(&text),
            }
            out.push(b'\n');
        }
        Ok(out)
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(f) => f,
            };
            match frame {
                None => {
                    if this.mask_events && !this.pending.is_empty() {
                        match this.masked_events(true) {
                            Ok(out) if !out.is_empty() => {
                                this.keep(&out);
                                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                            }
                            Ok(_) => {}
                            Err(e) => {
                                this.finish(Some(e.clone()));
                                return Poll::Ready(Some(Err(e.into())));
                            }
                        }
                    }
                    if let Some(scanner) = this.scanner.take() {
                        let mut out = Vec::new();
                        scanner.finish(&mut out);
                        if !out.is_empty() {
                            this.keep(&out);
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                    }
                    this.finish(None);
                    return Poll::Ready(None);
                }
                Some(Err(e)) => {
                    this.finish(Some(e.to_string()));
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                Some(Ok(frame)) => {
                    let data = match frame.into_data() {
                        Ok(d) => d,
                        // Trailers carry nothing the record needs.
                        Err(frame) => return Poll::Ready(Some(Ok(frame))),
                    };
                    if let Some(scanner) = this.scanner.as_mut() {
                        let mut out = Vec::new();
                        scanner.push(&data, &mut out);
                        if out.is_empty() {
                            continue;
                        }
                        this.keep(&out);
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                    if !this.mask_events {
                        this.keep(&data);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    this.pending.extend_from_slice(&data);
                    match this.masked_events(false) {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => {
                            this.keep(&out);
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                        Err(e) => {
                            this.finish(Some(e.clone()));
                            return Poll::Ready(Some(Err(e.into())));
                        }
                    }
                }
            }
        }
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // The agent went away (or the session ended) before the end of the body.
        self.finish(Some("the response was not read to its end".into()));
    }
}
