//! One direction of the opaque relay with splice(2): the kernel moves the bytes from one socket
//! into a pipe and from the pipe into the other socket, so they never cross into the gateway's
//! memory (two copies and two system calls' worth of buffers saved per chunk). The relay's
//! rules are those of the copying pump: a chunk goes only if the gate still allows the session,
//! half-close is passed on, and a direction reads again only once its last chunk is written
//! (the pipe is drained before the next splice in).

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::atomic::AtomicU64,
};

use tokio::{
    io::{AsyncWriteExt, Interest},
    net::tcp::{OwnedReadHalf, OwnedWriteHalf},
};

use super::relay::{admit_chunk, chunk_written, Activity, PumpError};
use crate::proxy::Gate;

/// Bytes asked for per splice: the pipe is made this large where the kernel lets it.
const CHUNK: usize = 1 << 20;

/// A non-blocking pipe, the kernel-side buffer between the two sockets.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, both descriptors are new and owned here alone.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A larger pipe moves more per system call; the default (64 KiB) still works, so a
        // refusal (the per-user pipe limit) is not an error.
        // SAFETY: F_SETPIPE_SZ on a pipe this function owns.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
        Ok(Pipe { read, write })
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the call (owned by the caller's sockets and pipe);
    // null offsets: pipes and sockets have none.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Relays `from` to `to` through `pipe` until `from` ends.
pub(super) async fn pump(
    from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    pipe: Pipe,
    activity: &Activity,
    moved: &AtomicU64,
    gate: &Gate,
) -> Result<(), PumpError> {
    let from_fd = from.as_ref().as_raw_fd();
    let to_fd = to.as_ref().as_raw_fd();
    loop {
        from.readable().await.map_err(PumpError::Io)?;
        let n = match from.as_ref().try_io(Interest::READABLE, || {
            splice(from_fd, pipe.write.as_raw_fd(), CHUNK)
        }) {
            Ok(0) => {
                // Pass the half-close on; the other direction keeps flowing until it ends too.
                let _ = to.shutdown().await;
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(PumpError::Io(e)),
        };
        admit_chunk(gate)?;
        let mut left = n;
        while left > 0 {
            to.writable().await.map_err(PumpError::Io)?;
            match to.as_ref().try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_raw_fd(), to_fd, left)
            }) {
                Ok(0) => return Err(PumpError::Io(io::ErrorKind::WriteZero.into())),
                Ok(k) => left -= k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(PumpError::Io(e)),
            }
        }
        chunk_written(gate, activity, moved, n);
    }
}
