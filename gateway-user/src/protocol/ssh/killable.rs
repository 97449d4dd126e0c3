//! The agent's socket as russh's server task gets it, with a switch to cut it.
//!
//! russh runs each SSH connection in a task of its own that ends only when the connection
//! does; a disconnect request waits its turn behind whatever the task is blocked on (a client
//! that sent its version line and stalled mid key exchange keeps it waiting forever). The
//! session's task (`super::serve`) must be able to end it whatever state it is in: once the
//! switch is thrown, every read and write fails, so russh's task ends and drops the socket.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

pub struct Killable<S> {
    inner: S,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<S> Killable<S> {
    /// `inner`, cut when `switch` is cancelled.
    pub fn new(inner: S, switch: &CancellationToken) -> Self {
        Self {
            inner,
            killed: Box::pin(switch.clone().cancelled_owned()),
        }
    }

    /// Ready (with an error) once the switch is thrown; registers the waker otherwise, so a
    /// pending read or write is woken when it is.
    fn poll_killed(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        match self.killed.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the gateway ended the session",
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Killable<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Poll::Ready(e) = this.poll_killed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Killable<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Poll::Ready(e) = this.poll_killed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Poll::Ready(e) = this.poll_killed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A read blocked on a silent peer fails as soon as the switch is thrown.
    #[tokio::test]
    async fn a_pending_read_fails_when_the_switch_is_thrown() {
        let (a, mut b) = tokio::io::duplex(64);
        let switch = CancellationToken::new();
        let mut k = Killable::new(a, &switch);
        b.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        k.read_exact(&mut one).await.unwrap();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            k.read(&mut buf).await
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!reader.is_finished(), "nothing to read: still waiting");
        switch.cancel();
        let r = tokio::time::timeout(std::time::Duration::from_secs(1), reader)
            .await
            .expect("woken by the switch")
            .unwrap();
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
    }
}
