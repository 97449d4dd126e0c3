//! Reading a file inside a workload's own filesystem (a projected service-account token, say).
//!
//! - Through `/proc/<pid>/root`, with symlinks resolved inside that root (`openat2` with
//!   `RESOLVE_IN_ROOT`).
//! - With the process's own filesystem uid and gid (`setfsuid`/`setfsgid` on a thread of its own):
//!   the gateway runs as root, and must not read for a workload a file the workload itself could
//!   not (a symlink to another agent's token, say).
//! - Regular files only, opened non-blocking, size-capped: a FIFO or a huge file cannot stall or
//!   flood the gateway.
//! - Only while `pid` still belongs to the workload's cgroup (checked before and after), so a
//!   reused pid cannot hand over another process's file.

use std::{
    ffi::CString,
    fs::File,
    io::Read,
    os::fd::{FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    time::Duration,
};

/// Larger files are refused: a token is a few KiB.
pub const MAX_FILE: u64 = 64 * 1024;
/// A read that takes longer than this (a stuck filesystem) is given up.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum WorkloadFileError {
    #[error("process {pid} is gone")]
    ProcessGone { pid: u32 },
    #[error(
        "cannot open /proc/{pid}/root: {source} (a process of another uid, or with capabilities \
         the gateway lacks, needs CAP_SYS_PTRACE)"
    )]
    ProcRoot { pid: u32, source: std::io::Error },
    #[error("process {pid} left cgroup {expected} (now in {now})")]
    CgroupChanged {
        pid: u32,
        expected: String,
        now: String,
    },
    #[error(
        "cannot take the workload's filesystem uid {uid} and gid {gid} to read {path} as it \
         would (the gateway lacks CAP_SETUID or CAP_SETGID)"
    )]
    Credentials { path: String, uid: u32, gid: u32 },
    #[error("{path} does not exist in the workload's filesystem")]
    Missing { path: String },
    #[error("{path} in the workload's filesystem is not readable by the workload itself")]
    NotReadable { path: String },
    #[error("{path} in the workload's filesystem is not a regular file")]
    NotRegular { path: String },
    #[error("{path} in the workload's filesystem is larger than {MAX_FILE} bytes")]
    TooLarge { path: String },
    #[error("reading {path} in the workload's filesystem timed out")]
    Timeout { path: String },
    #[error("reading {path} in the workload's filesystem: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// The cgroup v2 path of `pid`, as in `/proc/<pid>/cgroup`.
fn cgroup_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

fn check_cgroup(pid: u32, expected: &str) -> Result<(), WorkloadFileError> {
    match cgroup_of(pid) {
        None => Err(WorkloadFileError::ProcessGone { pid }),
        Some(now) if now == expected => Ok(()),
        Some(now) => Err(WorkloadFileError::CgroupChanged {
            pid,
            expected: expected.to_string(),
            now,
        }),
    }
}

/// The filesystem uid and gid of `pid` (the fourth field of `Uid:` / `Gid:` in its status).
fn fs_ids(pid: u32) -> Option<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .nth(3)?
            .parse()
            .ok()
    };
    Some((field("Uid:")?, field("Gid:")?))
}

/// Reads `path` in the filesystem of `pid` (in cgroup `cgroup`) as that process would.
/// Blocking: call it off the async runtime.
pub fn read(pid: u32, cgroup: &str, path: &Path) -> Result<Vec<u8>, WorkloadFileError> {
    let shown = path.display().to_string();
    check_cgroup(pid, cgroup)?;
    let (uid, gid) = fs_ids(pid).ok_or(WorkloadFileError::ProcessGone { pid })?;
    let root =
        File::open(format!("/proc/{pid}/root")).map_err(|source| match source.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EPERM) => WorkloadFileError::ProcRoot { pid, source },
            _ => WorkloadFileError::ProcessGone { pid },
        })?;
    let rel: PathBuf = path.strip_prefix("/").unwrap_or(path).to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    // setfsuid/setfsgid change only the calling thread: a thread of its own, never reused.
    std::thread::Builder::new()
        .name("workload-file".into())
        .spawn(move || {
            let _ = tx.send(read_as(uid, gid, &root, &rel));
        })
        .map_err(|source| WorkloadFileError::Io {
            path: shown.clone(),
            source,
        })?;
    let data = match rx.recv_timeout(READ_TIMEOUT) {
        Ok(Ok(data)) => data,
        Ok(Err(Fail::NotRegular)) => return Err(WorkloadFileError::NotRegular { path: shown }),
        Ok(Err(Fail::TooLarge)) => return Err(WorkloadFileError::TooLarge { path: shown }),
        Ok(Err(Fail::Credentials)) => {
            return Err(WorkloadFileError::Credentials {
                path: shown,
                uid,
                gid,
            })
        }
        Ok(Err(Fail::Io(e))) => {
            return Err(match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENOTDIR) => {
                    WorkloadFileError::Missing { path: shown }
                }
                Some(libc::EACCES) | Some(libc::EPERM) => {
                    WorkloadFileError::NotReadable { path: shown }
                }
                _ => WorkloadFileError::Io {
                    path: shown,
                    source: e,
                },
            })
        }
        Err(_) => return Err(WorkloadFileError::Timeout { path: shown }),
    };
    check_cgroup(pid, cgroup)?;
    Ok(data)
}

enum Fail {
    Io(std::io::Error),
    NotRegular,
    TooLarge,
    /// The thread's filesystem ids are not the workload's after setting them.
    Credentials,
}

fn read_as(uid: u32, gid: u32, root: &File, rel: &Path) -> Result<Vec<u8>, Fail> {
    // Neither call reports failure: without CAP_SETGID/CAP_SETUID (a container given too few
    // capabilities) they leave the ids as they were, and the read would happen as root. An
    // invalid id (-1) changes nothing and returns the id in force: ask back, refuse otherwise.
    // SAFETY: plain syscalls on this thread's own credentials. Group first: after the uid
    // changes away from 0 the thread may no longer change its gid.
    let taken = unsafe {
        libc::setfsgid(gid);
        libc::setfsuid(uid);
        libc::setfsgid(u32::MAX) as u32 == gid && libc::setfsuid(u32::MAX) as u32 == uid
    };
    if !taken {
        return Err(Fail::Credentials);
    }
    let file = open_in_root(root, rel).map_err(Fail::Io)?;
    let meta = file.metadata().map_err(Fail::Io)?;
    if !meta.is_file() {
        return Err(Fail::NotRegular);
    }
    if meta.len() > MAX_FILE {
        return Err(Fail::TooLarge);
    }
    let mut data = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut data)
        .map_err(Fail::Io)?;
    if data.len() as u64 > MAX_FILE {
        return Err(Fail::TooLarge);
    }
    Ok(data)
}

fn open_in_root(root: &File, rel: &Path) -> std::io::Result<File> {
    use std::os::fd::AsRawFd;
    let c = CString::new(rel.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is plain data; zero is valid for every field.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    // Non-blocking: opening a FIFO must not wait for a writer.
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid dirfd, NUL-terminated path, and an open_how of the size we pass.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_inside_the_root_and_refuses_what_it_must() {
        let pid = std::process::id();
        let cg = cgroup_of(pid).expect("own cgroup");
        let dir = std::env::temp_dir().join(format!("agentgate-wf-{pid}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), b"abc").unwrap();
        assert_eq!(read(pid, &cg, &dir.join("token")).unwrap(), b"abc");
        assert!(matches!(
            read(pid, &cg, &dir.join("nope")),
            Err(WorkloadFileError::Missing { .. })
        ));
        assert!(matches!(
            read(pid, "/elsewhere", &dir.join("token")),
            Err(WorkloadFileError::CgroupChanged { .. })
        ));
        // `..` cannot climb out of the root: /proc/self/root/../../x is /x inside it.
        let escape = Path::new("/../..")
            .join(dir.strip_prefix("/").unwrap())
            .join("token");
        assert_eq!(read(pid, &cg, &escape).unwrap(), b"abc");
        let big = dir.join("big");
        std::fs::write(&big, vec![b'a'; (MAX_FILE + 1) as usize]).unwrap();
        assert!(matches!(
            read(pid, &cg, &big),
            Err(WorkloadFileError::TooLarge { .. })
        ));
        // A FIFO with no writer would block a plain open forever.
        let fifo = dir.join("fifo");
        let c = CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        assert!(matches!(
            read(pid, &cg, &fifo),
            Err(WorkloadFileError::NotRegular { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
