//! Opaque TCP relay: bytes both ways, half-close passed on, backpressure from the slower side
//! (a direction only reads again once its last chunk is written), and an idle timeout that
//! counts activity in either direction. Each chunk, either way, goes only if the session's
//! policy still allows it (see [`Gate`]).

use std::{
    io,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream,
    },
    time::Instant,
};

use crate::proxy::Gate;

const CHUNK: usize = 64 * 1024;

/// Bytes moved so far in each direction. Kept outside the relay so that a session ended from
/// outside (token expiry, policy) still reports what went through.
#[derive(Debug, Default)]
pub struct Counters {
    client_to_upstream: AtomicU64,
    upstream_to_client: AtomicU64,
}

impl Counters {
    /// (client → upstream, upstream → client)
    pub fn get(&self) -> (u64, u64) {
        (
            self.client_to_upstream.load(Ordering::Relaxed),
            self.upstream_to_client.load(Ordering::Relaxed),
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("no bytes in either direction for {0:?}")]
    Idle(Duration),
    #[error("client to upstream: {0}")]
    Upstream(io::Error),
    #[error("upstream to client: {0}")]
    Downstream(io::Error),
    /// The policy in force no longer allows the session: nothing more was forwarded.
    #[error("{0}")]
    Withdrawn(String),
}

/// Why a pump stopped early.
enum PumpError {
    Io(io::Error),
    Withdrawn(String),
}

/// Time of the last byte moved, as milliseconds since `base`.
struct Activity {
    base: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    async fn idle_for(&self, idle: Duration) {
        loop {
            let deadline =
                self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

pub async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    idle: Duration,
    counters: &Counters,
    gate: &Gate,
) -> Result<(), RelayError> {
    let activity = Activity {
        base: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let up = async {
        pump(cr, uw, &activity, &counters.client_to_upstream, gate)
            .await
            .map_err(|e| match e {
                PumpError::Io(e) => RelayError::Upstream(e),
                PumpError::Withdrawn(why) => RelayError::Withdrawn(why),
            })
    };
    let down = async {
        pump(ur, cw, &activity, &counters.upstream_to_client, gate)
            .await
            .map_err(|e| match e {
                PumpError::Io(e) => RelayError::Downstream(e),
                PumpError::Withdrawn(why) => RelayError::Withdrawn(why),
            })
    };
    tokio::select! {
        r = async { tokio::try_join!(up, down) } => r.map(|_| ()),
        _ = activity.idle_for(idle) => Err(RelayError::Idle(idle)),
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    activity: &Activity,
    moved: &AtomicU64,
    gate: &Gate,
) -> Result<(), PumpError> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = from.read(&mut buf).await.map_err(PumpError::Io)?;
        if n == 0 {
            // Pass the half-close on; the other direction keeps flowing until it ends too.
            let _ = to.shutdown().await;
            return Ok(());
        }
        // Marked busy before the policy check, ended once the chunk is written: a reload waits
        // for that before it says a withdrawing policy is in force. A write that fails leaves
        // it busy; the session is ending, and the reload waits for it to be gone.
        gate.begin();
        if let Err(why) = gate.check() {
            gate.end();
            return Err(PumpError::Withdrawn(why));
        }
        to.write_all(&buf[..n]).await.map_err(PumpError::Io)?;
        gate.end();
        moved.fetch_add(n as u64, Ordering::Relaxed);
        activity.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn relays_both_ways_with_half_close() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut server) = pair().await;
        let counters = std::sync::Arc::new(Counters::default());
        let relay = {
            let counters = counters.clone();
            tokio::spawn(async move {
                relay(
                    client_side,
                    upstream_side,
                    Duration::from_secs(10),
                    &counters,
                    &Gate::open_ended(),
                )
                .await
            })
        };
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        // The server still answers after the client half-closed.
        server.write_all(b"response").await.unwrap();
        server.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"response");
        relay.await.unwrap().unwrap();
        assert_eq!(counters.get(), (7, 8));
    }

    #[tokio::test]
    async fn idle_connection_is_closed() {
        let (_client, client_side) = pair().await;
        let (upstream_side, _server) = pair().await;
        let r = relay(
            client_side,
            upstream_side,
            Duration::from_millis(200),
            &Counters::default(),
            &Gate::open_ended(),
        )
        .await;
        assert!(matches!(r, Err(RelayError::Idle(_))), "{r:?}");
    }
}
