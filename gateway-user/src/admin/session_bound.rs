//! A long answer (the event stream) ends when the console session it was opened under does:
//! sign-out, expiry, a policy without `console:` or with another provider.

use std::time::Duration;

use futures_util::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};

use super::routes::Body;

/// How often a streaming answer checks its session.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// `body`, ended with a last `event: signed_out` once `alive()` says the session is over.
pub fn while_alive(body: Body, alive: impl Fn() -> bool + Send + 'static) -> Body {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let frames = stream::unfold(Some((body, tick, alive)), |state| async move {
        let (mut body, mut tick, alive) = state?;
        loop {
            tokio::select! {
                frame = body.frame() => {
                    return frame.map(|f| (f, Some((body, tick, alive))));
                }
                _ = tick.tick() => {
                    if !alive() {
                        let last = Frame::data(Bytes::from_static(
                            b"event: signed_out\ndata: {}\n\n",
                        ));
                        return Some((Ok(last), None));
                    }
                }
            }
        }
    });
    StreamBody::new(frames).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_stream_ends_once_the_session_is_over() {
        // A body that never ends by itself.
        let endless = StreamBody::new(stream::pending::<
            Result<Frame<Bytes>, std::convert::Infallible>,
        >())
        .boxed_unsync();
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        let mut body = while_alive(endless, move || flag.load(Ordering::Relaxed));
        assert!(
            tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .is_err(),
            "nothing while the session lives"
        );
        alive.store(false, Ordering::Relaxed);
        let last = tokio::time::timeout(Duration::from_secs(2), body.frame())
            .await
            .expect("ended within a check")
            .expect("a last frame")
            .expect("infallible");
        assert_eq!(
            last.into_data().expect("data"),
            Bytes::from_static(b"event: signed_out\ndata: {}\n\n")
        );
        assert!(body.frame().await.is_none(), "then the end");
    }
}
