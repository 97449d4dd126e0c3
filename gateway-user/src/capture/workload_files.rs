//! Reading a file inside a workload's own filesystem (a projected service-account token, say):
//! through `/proc/<pid>/root`, with symlinks resolved inside that root (`openat2` with
//! `RESOLVE_IN_ROOT`, so a workload cannot point the gateway at a host file), and only while
//! `pid` still belongs to the workload's cgroup (checked before and after the read, so a reused
//! pid cannot hand over another process's file).

use std::{
    ffi::CString,
    fs::File,
    io::Read,
    os::fd::{FromRawFd, OwnedFd},
    path::Path,
};

/// Larger files are refused unread: a token is a few KiB.
pub const MAX_FILE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WorkloadFileError {
    #[error("process {pid} is gone")]
    ProcessGone { pid: u32 },
    #[error("process {pid} left cgroup {expected} (now in {now})")]
    CgroupChanged {
        pid: u32,
        expected: String,
        now: String,
    },
    #[error("{path} does not exist in the workload's filesystem")]
    Missing { path: String },
    #[error("{path} in the workload's filesystem is larger than {MAX_FILE} bytes")]
    TooLarge { path: String },
    #[error("reading {path} in the workload's filesystem: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// The cgroup v2 path of `pid`, as in `/proc/<pid>/cgroup`.
pub fn cgroup_of(pid: u32) -> Option<String> {
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

pub fn read(pid: u32, cgroup: &str, path: &Path) -> Result<Vec<u8>, WorkloadFileError> {
    let shown = path.display().to_string();
    check_cgroup(pid, cgroup)?;
    let root = File::open(format!("/proc/{pid}/root"))
        .map_err(|_| WorkloadFileError::ProcessGone { pid })?;
    let file = open_in_root(&root, path).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => WorkloadFileError::Missing {
            path: shown.clone(),
        },
        _ => WorkloadFileError::Io {
            path: shown.clone(),
            source: e,
        },
    })?;
    let mut data = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut data)
        .map_err(|source| WorkloadFileError::Io {
            path: shown.clone(),
            source,
        })?;
    if data.len() as u64 > MAX_FILE {
        return Err(WorkloadFileError::TooLarge { path: shown });
    }
    check_cgroup(pid, cgroup)?;
    Ok(data)
}

fn open_in_root(root: &File, path: &Path) -> std::io::Result<File> {
    use std::os::fd::AsRawFd;
    let rel = path.strip_prefix("/").unwrap_or(path);
    let c = CString::new(rel.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is plain data; zero is valid for every field.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY) as u64;
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
    fn reads_inside_the_root_and_refuses_escapes() {
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
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
