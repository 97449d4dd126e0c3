//! Opaque TCP relay: bytes both ways, half-close passed on, backpressure from the slower side
//! (a direction only reads again once its last chunk is written), and an idle timeout that
//! counts activity in either direction. Each chunk, either way, goes only if the session's
//! policy still allows it (see [`Gate`]).
//!
//! The bytes move with splice(2) ([`super::splice`]) and never enter the gateway's memory;
//! where a pipe cannot be made, or `AGENTGATE_TCP_RELAY=copy` is set (a kernel or seccomp
//! profile that refuses splice), they are read into a buffer and written out.

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

use super::splice::Pipe;
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
pub(super) enum PumpError {
    Io(io::Error),
    Withdrawn(String),
}

/// Time of the last byte moved, as milliseconds since `base`.
pub(super) struct Activity {
    base: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub(super) fn touch(&self) {
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
    let splice = std::env::var_os("AGENTGATE_TCP_RELAY").is_none_or(|v| v != "copy");
    let pipes = if splice {
        match (Pipe::new(), Pipe::new()) {
            (Ok(a), Ok(b)) => Some((a, b)),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!("no pipe for splice, copying instead: {e}");
                None
            }
        }
    } else {
        None
    };
    relay_with(client, upstream, idle, counters, gate, pipes).await
}

/// The relay through these pipes (splice), or through buffers without.
async fn relay_with(
    client: TcpStream,
    upstream: TcpStream,
    idle: Duration,
    counters: &Counters,
    gate: &Gate,
    pipes: Option<(Pipe, Pipe)>,
) -> Result<(), RelayError> {
    let activity = Activity {
        base: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let (pipe_up, pipe_down) = pipes.map_or((None, None), |(a, b)| (Some(a), Some(b)));
    let up = async {
        pump(
            cr,
            uw,
            pipe_up,
            &activity,
            &counters.client_to_upstream,
            gate,
        )
        .await
        .map_err(|e| match e {
            PumpError::Io(e) => RelayError::Upstream(e),
            PumpError::Withdrawn(why) => RelayError::Withdrawn(why),
        })
    };
    let down = async {
        pump(
            ur,
            cw,
            pipe_down,
            &activity,
            &counters.upstream_to_client,
            gate,
        )
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
    from: OwnedReadHalf,
    to: OwnedWriteHalf,
    pipe: Option<Pipe>,
    activity: &Activity,
    moved: &AtomicU64,
    gate: &Gate,
) -> Result<(), PumpError> {
    match pipe {
        Some(pipe) => super::splice::pump(from, to, pipe, activity, moved, gate).await,
        None => copy(from, to, activity, moved, gate).await,
    }
}

/// One direction through a buffer of the gateway's.
async fn copy(
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
        admit_chunk(gate)?;
        to.write_all(&buf[..n]).await.map_err(PumpError::Io)?;
        chunk_written(gate, activity, moved, n);
    }
}

/// Before a chunk is forwarded: marked busy, then the policy checked. Busy is ended once the
/// chunk is written ([`chunk_written`]): a reload waits for that before it says a withdrawing
/// policy is in force. A write that fails leaves it busy; the session is ending, and the
/// reload waits for it to be gone.
pub(super) fn admit_chunk(gate: &Gate) -> Result<(), PumpError> {
    gate.begin();
    gate.check().map_err(|why| {
        gate.end();
        PumpError::Withdrawn(why)
    })
}

/// A chunk of `n` bytes is out: not busy any more, counted, and activity noted.
pub(super) fn chunk_written(gate: &Gate, activity: &Activity, moved: &AtomicU64, n: usize) {
    gate.end();
    moved.fetch_add(n as u64, Ordering::Relaxed);
    activity.touch();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    type Spawned = (
        tokio::task::JoinHandle<Result<(), RelayError>>,
        std::sync::Arc<Counters>,
    );

    /// The relay between the two sockets on its own task, and its counters.
    fn spawn_relay(
        client_side: TcpStream,
        upstream_side: TcpStream,
        pipes: Option<(Pipe, Pipe)>,
    ) -> Spawned {
        let counters = std::sync::Arc::new(Counters::default());
        let theirs = counters.clone();
        let relay = tokio::spawn(async move {
            let gate = Gate::open_ended();
            relay_with(
                client_side,
                upstream_side,
                Duration::from_secs(10),
                &theirs,
                &gate,
                pipes,
            )
            .await
        });
        (relay, counters)
    }

    /// Pipes for the splice path; a failure here fails the test rather than test the copy.
    fn pipes() -> Option<(Pipe, Pipe)> {
        Some((Pipe::new().unwrap(), Pipe::new().unwrap()))
    }

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
        let (relay, counters) = spawn_relay(client_side, upstream_side, pipes());
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

    /// Megabytes both ways at once, in odd-sized writes: every byte arrives, in order, and the
    /// counters say so — through splice and through buffers.
    #[tokio::test]
    async fn bulk_both_ways_arrives_whole_spliced() {
        bulk_both_ways(pipes()).await;
    }

    #[tokio::test]
    async fn bulk_both_ways_arrives_whole_copied() {
        bulk_both_ways(None).await;
    }

    async fn bulk_both_ways(pipes: Option<(Pipe, Pipe)>) {
        let (client, client_side) = pair().await;
        let (upstream_side, server) = pair().await;
        let (relay, counters) = spawn_relay(client_side, upstream_side, pipes);
        let data = |seed: u64| -> Vec<u8> {
            let mut x = seed;
            (0..8_000_003)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (x >> 33) as u8
                })
                .collect()
        };
        let (up, down) = (data(1), data(2));
        let send = |mut s: tokio::net::tcp::OwnedWriteHalf, d: Vec<u8>| async move {
            for chunk in d.chunks(77_777) {
                s.write_all(chunk).await.unwrap();
            }
            s.shutdown().await.unwrap();
        };
        let recv = |mut r: tokio::net::tcp::OwnedReadHalf| async move {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            got
        };
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        let (_, _, at_server, at_client) = tokio::join!(
            send(cw, up.clone()),
            send(sw, down.clone()),
            recv(sr),
            recv(cr)
        );
        assert!(at_server == up, "client to server bytes differ");
        assert!(at_client == down, "server to client bytes differ");
        relay.await.unwrap().unwrap();
        assert_eq!(counters.get(), (up.len() as u64, down.len() as u64));
    }
}
