//! `GET /v1/events`: server-sent events of the approvals a caller may see (each new request
//! and each change: vote, decision, expiry, cancellation) and, for auditors, revocations.
//!
//! The stream reads the approval service's and the revocations' broadcast channels directly
//! when the connection asks for more: nothing waits on a client. One that does not read
//! falls behind in the (bounded) channel, never holds up a decision; when it is polled again
//! it gets a final `event: lagged` (reconnect and re-read `GET /v1/approvals`) and the stream
//! ends.

use std::{convert::Infallible, time::Duration};

use futures_util::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::{body::Bytes, body::Frame, Response};
use serde_json::json;
use tokio::sync::broadcast::{error::RecvError, Receiver};

use super::routes::Body;
use crate::{approval::Request, proxy::revocations::RevocationChange};

pub const KEEPALIVE: Duration = Duration::from_secs(15);

struct Feed {
    approvals: Receiver<Request>,
    /// Auditors only.
    revocations: Option<Receiver<RevocationChange>>,
    /// The caller's groups: approvals of other groups do not exist for them.
    groups: Vec<String>,
    keepalive: tokio::time::Interval,
    /// Sent first: says the stream is live (a client may wait for it before acting).
    hello: bool,
    done: bool,
}

fn event(name: &str, data: &serde_json::Value) -> Bytes {
    // serde_json escapes newlines in strings: one `data:` line whatever the statement holds.
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

impl Feed {
    async fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if self.hello {
            self.hello = false;
            return Some(Bytes::from_static(b"retry: 2000\n: connected\n\n"));
        }
        enum Got {
            Approval(Result<Box<Request>, RecvError>),
            Revocation(Result<RevocationChange, RecvError>),
            Keepalive,
        }
        loop {
            let Feed {
                approvals,
                revocations,
                keepalive,
                ..
            } = self;
            let revocation = async {
                match revocations {
                    Some(r) => r.recv().await,
                    None => std::future::pending().await,
                }
            };
            let got = tokio::select! {
                r = approvals.recv() => Got::Approval(r.map(Box::new)),
                r = revocation => Got::Revocation(r),
                _ = keepalive.tick() => Got::Keepalive,
            };
            match got {
                Got::Approval(Ok(r)) if r.decidable_by(&self.groups) => {
                    return Some(event("approval", &json!(r)));
                }
                Got::Approval(Ok(_)) => continue,
                Got::Revocation(Ok(c)) => return Some(event("revocation", &json!(c))),
                Got::Approval(Err(RecvError::Lagged(n)))
                | Got::Revocation(Err(RecvError::Lagged(n))) => return Some(self.lagged(n)),
                Got::Approval(Err(RecvError::Closed)) => return None,
                Got::Revocation(Err(RecvError::Closed)) => self.revocations = None,
                Got::Keepalive => return Some(Bytes::from_static(b": keepalive\n\n")),
            }
        }
    }

    fn lagged(&mut self, missed: u64) -> Bytes {
        self.done = true;
        event(
            "lagged",
            &json!({"missed": missed, "error": "this client fell behind; reconnect and re-read the lists"}),
        )
    }
}

/// The event stream's response for a caller of `groups` (with revocations if `revocations`).
pub fn stream(
    approvals: Receiver<Request>,
    revocations: Option<Receiver<RevocationChange>>,
    groups: Vec<String>,
) -> Response<Body> {
    let start = tokio::time::Instant::now() + KEEPALIVE;
    let feed = Feed {
        approvals,
        revocations,
        groups,
        keepalive: tokio::time::interval_at(start, KEEPALIVE),
        hello: true,
        done: false,
    };
    let frames = stream::unfold(feed, |mut feed| async move {
        feed.next()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), feed))
    });
    let mut r = Response::new(StreamBody::new(frames).boxed_unsync());
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: &str, approvers: &[&str]) -> Request {
        serde_json::from_value(json!({
            "id": id, "state": "pending", "created_ms": 0, "expires_ms": 1,
            "decided_ms": null, "session": "s", "issuer": "i", "subject": "a",
            "workload": "w", "target": "pg", "database": "db", "protocol": "postgres",
            "statement": "DROP TABLE t", "params": [], "class": "ddl", "rule": "r",
            "approvers": approvers, "quorum": 1, "mode": "hold", "retry_window_ms": 0,
            "retry_used_ms": null, "reason": null, "votes": [],
        }))
        .unwrap()
    }

    fn feed(rx: Receiver<Request>) -> Feed {
        Feed {
            approvals: rx,
            revocations: None,
            groups: vec!["dba".into()],
            keepalive: tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE),
            hello: true,
            done: false,
        }
    }

    fn text(b: Option<Bytes>) -> String {
        String::from_utf8(b.expect("a frame").to_vec()).unwrap()
    }

    #[tokio::test]
    async fn other_groups_are_left_out_and_a_lagging_client_is_told_and_ended() {
        let (tx, rx) = tokio::sync::broadcast::channel(4);
        let mut f = feed(rx);
        assert!(text(f.next().await).contains(": connected"));
        tx.send(request("ar-ops", &["ops"])).unwrap();
        tx.send(request("ar-dba", &["dba", "ops"])).unwrap();
        let e = text(f.next().await);
        assert!(e.starts_with("event: approval\ndata: {"), "{e}");
        assert!(e.contains("\"ar-dba\"") && !e.contains("ar-ops"), "{e}");
        // Never waited on: the sender goes on while this client reads nothing.
        for i in 0..10 {
            tx.send(request(&format!("ar-{i}"), &["dba"])).unwrap();
        }
        let e = text(f.next().await);
        assert!(e.starts_with("event: lagged\n"), "{e}");
        assert!(f.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_every_fifteen_seconds() {
        let (_tx, rx) = tokio::sync::broadcast::channel::<Request>(4);
        let mut f = feed(rx);
        f.next().await;
        let t = tokio::time::Instant::now();
        assert_eq!(text(f.next().await), ": keepalive\n\n");
        assert_eq!(t.elapsed(), KEEPALIVE);
    }
}
