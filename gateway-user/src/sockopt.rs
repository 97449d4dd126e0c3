//! Reading the 64-bit socket options the gateway relies on (`SO_COOKIE`, `SO_NETNS_COOKIE`),
//! which the socket crates do not expose.

use std::os::fd::AsRawFd;

pub fn get_u64(socket: &impl AsRawFd, option: libc::c_int) -> std::io::Result<u64> {
    let mut value: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, and a u64-sized out buffer with its length.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut u64).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(std::io::Error::last_os_error())
    }
}
