//! A Kubernetes exec or attach stream, once its request passed the gate (judged with its
//! command) and the API server agreed to the upgrade: the bytes relayed both ways untouched,
//! and, for WebSocket (`v4/v5.channel.k8s.io`, kubectl's default since 1.30), read as they pass
//! into an asciicast recording (stdout and stderr as output, stdin as input, resizes) and the
//! command's exit code. SPDY (older clients) is relayed as an opaque stream: judged and on
//! record as a request, its content not recorded (docs/kubernetes.md). Where detector rules
//! apply, the output is masked (`exec_mask`): the agent and the record get the masked frames.

use std::{future::Future, pin::Pin, sync::Arc, time::Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::{
    exec_mask::{self, ExecMask, Unmaskable},
    ws::{self, Frames, Message},
};
use crate::{
    mask::plan::Plan,
    protocol::ssh::cast::Cast,
    record::{now_ms, CommandOutput, Record, Recorder, Statement},
};

/// The journal kind of an exec stream's recording (played by `agentgate sessions replay`).
pub const CAST_KIND: &str = "kube_cast";
/// stdout/stderr bytes kept in the request's record (the cast has the rest).
const OUTPUT_KEPT: usize = 64 * 1024;

pub type Relay<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// What the relay needs besides the two upgrades.
pub struct Stream<'a> {
    pub recorder: &'a Recorder,
    pub rec: Statement,
    pub websocket: bool,
    pub title: String,
    /// Cancelled when the session ends (expiry, revocation, reload): the stream is cut.
    pub ended: CancellationToken,
    pub started: Instant,
    /// The detector rules over stdout and stderr (WebSocket only: the request was refused
    /// otherwise), and the target's 101 headers to check the protocol it chose.
    pub mask: Option<(Arc<Plan>, hyper::HeaderMap)>,
}

pub fn relay<'a>(s: Stream<'a>, agent: OnUpgrade, target: OnUpgrade) -> Relay<'a> {
    Box::pin(run(s, agent, target))
}

async fn run(s: Stream<'_>, agent: OnUpgrade, target: OnUpgrade) {
    let Stream {
        recorder,
        mut rec,
        websocket,
        title,
        ended,
        started,
        mask,
    } = s;
    let (agent, target) = match tokio::try_join!(agent, target) {
        Ok(pair) => pair,
        Err(e) => {
            rec.error = Some(format!("the upgrade failed: {e}"));
            recorder.record(Record::Statement(rec)).await;
            return;
        }
    };
    let cast = websocket.then(|| {
        let header = json!({
            "version": 2, "width": 80, "height": 24,
            "timestamp": now_ms() / 1000, "title": title,
        });
        Cast::new(recorder, CAST_KIND, rec.session.clone(), rec.seq, header)
    });
    let (mut agent_r, mut agent_w) = tokio::io::split(TokioIo::new(agent));
    let (mut target_r, mut target_w) = tokio::io::split(TokioIo::new(target));
    let mut seen = Seen::default();
    let up = async {
        let mut frames = Frames::default();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match agent_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(cast) = &cast {
                for m in frames.feed(&buf[..n]) {
                    match m.channel {
                        0 => cast.input(&m.data).await,
                        4 => {
                            if let Ok(size) = serde_json::from_slice::<serde_json::Value>(&m.data) {
                                let (w, h) = (size["Width"].as_u64(), size["Height"].as_u64());
                                if let (Some(w), Some(h)) = (w, h) {
                                    cast.resize(w as u32, h as u32).await;
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            if target_w.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = target_w.shutdown().await;
    };
    // A stream that cannot be masked is cut: the reason goes to the agent and the record.
    let unmaskable = CancellationToken::new();
    let down = async {
        let mut masking = match mask {
            Some((plan, chosen)) => match exec_mask::check_chosen(&chosen) {
                Ok(()) => Some(ExecMask::new(plan)),
                Err(why) => {
                    let _ = agent_w.write_all(&exec_mask::cut_notice(&why)).await;
                    seen.unmaskable = Some(why);
                    unmaskable.cancel();
                    return;
                }
            },
            None => None,
        };
        let mut frames = Frames::default();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let read = match masking.as_ref().and_then(ExecMask::due) {
                Some((at, keep_word)) => tokio::select! {
                    biased;
                    read = target_r.read(&mut buf) => read,
                    () = tokio::time::sleep_until(at) => {
                        let Some(m) = masking.as_mut() else { continue };
                        let e = m.fired(keep_word);
                        note(cast.as_ref(), &mut seen, e.messages).await;
                        if agent_w.write_all(&e.wire).await.is_err() {
                            break;
                        }
                        continue;
                    }
                },
                None => target_r.read(&mut buf).await,
            };
            let n = match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            seen.bytes += n as u64;
            let wrote = match masking.as_mut() {
                Some(m) => match m.feed(&buf[..n]) {
                    Ok(e) => {
                        note(cast.as_ref(), &mut seen, e.messages).await;
                        agent_w.write_all(&e.wire).await
                    }
                    Err(why) => {
                        let _ = agent_w.write_all(&exec_mask::cut_notice(&why)).await;
                        seen.unmaskable = Some(why);
                        unmaskable.cancel();
                        return;
                    }
                },
                None => {
                    if websocket {
                        let messages = frames.feed(&buf[..n]);
                        note(cast.as_ref(), &mut seen, messages).await;
                        seen.unreadable |= frames.broken;
                    }
                    agent_w.write_all(&buf[..n]).await
                }
            };
            if wrote.is_err() {
                break;
            }
        }
        if let Some(m) = masking.as_mut() {
            let e = m.finish();
            note(cast.as_ref(), &mut seen, e.messages).await;
            let _ = agent_w.write_all(&e.wire).await;
        }
        let _ = agent_w.shutdown().await;
    };
    let cut = tokio::select! {
        _ = futures_util::future::join(up, down) => false,
        () = ended.cancelled() => true,
        () = unmaskable.cancelled() => false,
    };
    rec.duration_us = Some(started.elapsed().as_micros() as u64);
    rec.exit_status = seen.exit;
    if cut {
        rec.error = Some("the session ended during the stream".into());
    } else if let Some(why) = &seen.unmaskable {
        rec.error = Some(format!("the stream was cut: {why}"));
    } else if seen.unreadable {
        rec.error = Some("the stream could not be read as WebSocket; relayed unrecorded".into());
    }
    rec.output = Some(CommandOutput {
        stdout: String::from_utf8_lossy(&seen.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&seen.stderr).into_owned(),
        cut: seen.cut,
        bytes: seen.bytes,
    });
    recorder.record(Record::Statement(rec)).await;
    if let Some(cast) = cast {
        cast.finish().await;
    }
}

#[derive(Default)]
struct Seen {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    cut: bool,
    bytes: u64,
    exit: Option<u32>,
    unreadable: bool,
    unmaskable: Option<Unmaskable>,
}

/// What the agent was sent, into the recording and the request's record.
async fn note(cast: Option<&Cast<'_>>, seen: &mut Seen, messages: Vec<Message>) {
    for m in messages {
        match m.channel {
            1 | 2 => {
                if let Some(cast) = cast {
                    cast.output(&m.data).await;
                }
                seen.keep(m.channel, &m.data);
            }
            3 => seen.exit = ws::exit_code(&m.data),
            _ => {}
        }
    }
}

impl Seen {
    fn keep(&mut self, channel: u8, data: &[u8]) {
        let into = if channel == 1 {
            &mut self.stdout
        } else {
            &mut self.stderr
        };
        let room = OUTPUT_KEPT.saturating_sub(into.len());
        if data.len() > room {
            self.cut = true;
        }
        into.extend_from_slice(&data[..data.len().min(room)]);
    }
}
