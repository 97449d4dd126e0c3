//! What one request packet from the agent asks: read-type requests pass, write-type ones are
//! judged against the rules by path ([`Op`]), the rest is refused.

use bytes::Bytes;

use super::{
    paths::SftpPath,
    wire::{self, Reader, WireError},
};

/// A write-type operation, judged by the paths it touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// `open`, `remove`, `rename`, `setstat`, `fsetstat`, `mkdir`, `rmdir`, `symlink`,
    /// `posix-rename`, `hardlink`, `lsetstat`.
    pub name: &'static str,
    /// Every path the operation changes (both of a rename, link and target of a symlink).
    pub paths: Vec<SftpPath>,
    /// What approvers and the record see: `remove /etc/x`, `open /srv/a (write,creat,trunc)`.
    pub text: String,
}

impl Op {
    fn new(name: &'static str, paths: Vec<SftpPath>, note: Option<String>) -> Op {
        let mut text = name.to_string();
        for p in &paths {
            text.push(' ');
            text.push_str(&p.shown);
        }
        if let Some(n) = note {
            text.push_str(&format!(" ({n})"));
        }
        Op { name, paths, text }
    }
}

/// What the reply to a request tells the relay.
#[derive(Debug)]
pub enum Track {
    Nothing,
    /// A file opened: its handle comes in the reply.
    Open {
        path: SftpPath,
        read: bool,
        write: bool,
    },
    OpenDir {
        path: SftpPath,
    },
    Close {
        handle: Bytes,
    },
    Read {
        handle: Bytes,
        offset: u64,
        len: u32,
    },
    /// OpenSSH's `limits@openssh.com`: the longest read it announces is lowered where reads
    /// are masked.
    Limits {
        masked: bool,
    },
    Write {
        handle: Bytes,
        len: u64,
    },
}

#[derive(Debug)]
pub enum Asked {
    /// `SSH_FXP_INIT`: forwarded with its version lowered to 3.
    Init,
    Pass {
        id: u32,
        track: Track,
    },
    Judge {
        id: u32,
        op: Op,
        track: Track,
    },
    /// Not forwarded: the agent is told why.
    Refuse {
        id: u32,
        why: String,
    },
}

/// Reads one request packet; `path_of` names a handle's file (or why it cannot).
pub fn read(packet: &Bytes, path_of: impl Fn(&[u8]) -> SftpPath) -> Result<Asked, WireError> {
    let mut r = Reader::new(packet)?;
    let typ = r.typ();
    if typ == wire::FXP_INIT {
        return Ok(Asked::Init);
    }
    let id = r.u32()?;
    let pass = |track| Ok(Asked::Pass { id, track });
    let judge = |op, track| Ok(Asked::Judge { id, op, track });
    let path = |r: &mut Reader| r.string().map(|p| SftpPath::from_wire(&p));
    match typ {
        wire::FXP_OPEN => {
            let p = path(&mut r)?;
            let pflags = r.u32()?;
            let write = pflags
                & (wire::FXF_WRITE | wire::FXF_APPEND | wire::FXF_CREAT | wire::FXF_TRUNC)
                != 0;
            let read = pflags & 0x01 != 0;
            let track = Track::Open {
                path: p.clone(),
                read,
                write,
            };
            if write {
                judge(Op::new("open", vec![p], Some(flag_names(pflags))), track)
            } else {
                pass(track)
            }
        }
        wire::FXP_OPENDIR => pass(Track::OpenDir {
            path: path(&mut r)?,
        }),
        wire::FXP_CLOSE => pass(Track::Close {
            handle: r.string()?,
        }),
        wire::FXP_READ => {
            let handle = r.string()?;
            let offset = r.u64()?;
            let len = r.u32()?;
            pass(Track::Read {
                handle,
                offset,
                len,
            })
        }
        wire::FXP_WRITE => {
            let handle = r.string()?;
            let _offset = r.u64()?;
            let len = r.string_len()? as u64;
            // Writes go to a handle whose open was judged as a write (a read-only handle is
            // refused by the target itself).
            pass(Track::Write { handle, len })
        }
        wire::FXP_LSTAT
        | wire::FXP_FSTAT
        | wire::FXP_READDIR
        | wire::FXP_REALPATH
        | wire::FXP_STAT
        | wire::FXP_READLINK => pass(Track::Nothing),
        wire::FXP_SETSTAT => judge(
            Op::new("setstat", vec![path(&mut r)?], None),
            Track::Nothing,
        ),
        wire::FXP_FSETSTAT => {
            let handle = r.string()?;
            judge(
                Op::new("fsetstat", vec![path_of(&handle)], None),
                Track::Nothing,
            )
        }
        wire::FXP_REMOVE => judge(Op::new("remove", vec![path(&mut r)?], None), Track::Nothing),
        wire::FXP_MKDIR => judge(Op::new("mkdir", vec![path(&mut r)?], None), Track::Nothing),
        wire::FXP_RMDIR => judge(Op::new("rmdir", vec![path(&mut r)?], None), Track::Nothing),
        wire::FXP_RENAME | wire::FXP_SYMLINK => {
            let a = path(&mut r)?;
            let b = path(&mut r)?;
            // A symlink's two paths are judged alike: OpenSSH sends them in the opposite order
            // to the draft, and a link pointing into a denied tree is a way to write there.
            let name = if typ == wire::FXP_RENAME {
                "rename"
            } else {
                "symlink"
            };
            judge(Op::new(name, vec![a, b], None), Track::Nothing)
        }
        wire::FXP_EXTENDED => {
            let name = r.string()?;
            extended(id, &name, &mut r)
        }
        // Every version 3 request is listed above; anything else cannot be judged, and
        // sftp-server would only refuse it: refused here rather than forwarded blind, so a
        // server speaking more than it announced cannot be reached through a gap.
        other => Ok(Asked::Refuse {
            id,
            why: format!("agentgate: unknown sftp request type {other} refused"),
        }),
    }
}

/// OpenSSH's extensions (PROTOCOL, section 4): the write-type ones judged like their plain
/// counterparts, read-type ones passed, unknown ones refused (they cannot be judged).
fn extended(id: u32, name: &[u8], r: &mut Reader) -> Result<Asked, WireError> {
    let path = |r: &mut Reader| r.string().map(|p| SftpPath::from_wire(&p));
    let pass = Ok(Asked::Pass {
        id,
        track: Track::Nothing,
    });
    match name {
        b"posix-rename@openssh.com" | b"hardlink@openssh.com" => {
            let a = path(r)?;
            let b = path(r)?;
            let op = if name.starts_with(b"posix") {
                "posix-rename"
            } else {
                "hardlink"
            };
            Ok(Asked::Judge {
                id,
                op: Op::new(op, vec![a, b], None),
                track: Track::Nothing,
            })
        }
        b"lsetstat@openssh.com" => Ok(Asked::Judge {
            id,
            op: Op::new("lsetstat", vec![path(r)?], None),
            track: Track::Nothing,
        }),
        // fsync flushes, and copy-data writes to, a handle opened for writing, which was judged
        // when it was opened.
        b"limits@openssh.com" => Ok(Asked::Pass {
            id,
            track: Track::Limits { masked: false },
        }),
        b"fsync@openssh.com"
        | b"statvfs@openssh.com"
        | b"fstatvfs@openssh.com"
        | b"expand-path@openssh.com"
        | b"home-directory"
        | b"users-groups-by-id@openssh.com"
        | b"copy-data" => pass,
        other => Ok(Asked::Refuse {
            id,
            why: format!(
                "agentgate: unknown sftp extension `{}` refused",
                String::from_utf8_lossy(other)
            ),
        }),
    }
}

fn flag_names(pflags: u32) -> String {
    let mut names = Vec::new();
    for (bit, name) in [
        (0x01, "read"),
        (wire::FXF_WRITE, "write"),
        (wire::FXF_APPEND, "append"),
        (wire::FXF_CREAT, "creat"),
        (wire::FXF_TRUNC, "trunc"),
        (wire::FXF_EXCL, "excl"),
    ] {
        if pflags & bit != 0 {
            names.push(name);
        }
    }
    names.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(typ: u8, id: u32, fields: &[&[u8]], tail: &[u8]) -> Bytes {
        let mut body = vec![typ];
        body.extend_from_slice(&id.to_be_bytes());
        for f in fields {
            body.extend_from_slice(&(f.len() as u32).to_be_bytes());
            body.extend_from_slice(f);
        }
        body.extend_from_slice(tail);
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend(body);
        Bytes::from(v)
    }

    fn unknown(h: &[u8]) -> SftpPath {
        SftpPath::unknown(String::from_utf8_lossy(h).into(), "unknown handle".into())
    }

    #[test]
    fn opens_for_write_are_judged_reads_pass() {
        let w = packet(
            wire::FXP_OPEN,
            1,
            &[b"/etc/x"],
            &[0, 0, 0, 0x1a, 0, 0, 0, 0],
        );
        match read(&w, unknown).unwrap() {
            Asked::Judge { id: 1, op, .. } => {
                assert_eq!(op.text, "open /etc/x (write,creat,trunc)");
                assert_eq!(op.paths[0].normalized.as_deref(), Ok("/etc/x"));
            }
            other => panic!("{other:?}"),
        }
        let r = packet(wire::FXP_OPEN, 2, &[b"/etc/x"], &[0, 0, 0, 1, 0, 0, 0, 0]);
        assert!(matches!(
            read(&r, unknown).unwrap(),
            Asked::Pass {
                id: 2,
                track: Track::Open { write: false, .. }
            }
        ));
    }

    #[test]
    fn write_types_and_unknowns() {
        let rn = packet(wire::FXP_RENAME, 3, &[b"/a", b"b"], &[]);
        match read(&rn, unknown).unwrap() {
            Asked::Judge { op, .. } => {
                assert_eq!(op.text, "rename /a b");
                assert!(op.paths[1].normalized.is_err());
            }
            other => panic!("{other:?}"),
        }
        let fs = packet(wire::FXP_FSETSTAT, 4, &[b"h1"], &[0, 0, 0, 0]);
        match read(&fs, unknown).unwrap() {
            Asked::Judge { op, .. } => assert!(op.paths[0].normalized.is_err()),
            other => panic!("{other:?}"),
        }
        let ext = packet(
            wire::FXP_EXTENDED,
            5,
            &[b"posix-rename@openssh.com", b"/a", b"/etc/b"],
            &[],
        );
        assert!(matches!(read(&ext, unknown).unwrap(), Asked::Judge { .. }));
        let odd = packet(wire::FXP_EXTENDED, 6, &[b"made-up@example.com"], &[]);
        assert!(matches!(
            read(&odd, unknown).unwrap(),
            Asked::Refuse { id: 6, .. }
        ));
        let t = packet(42, 7, &[], &[]);
        assert!(matches!(
            read(&t, unknown).unwrap(),
            Asked::Refuse { id: 7, .. }
        ));
        // Truncated: an error (the channel ends).
        let bad = packet(wire::FXP_REMOVE, 8, &[], &[0, 0, 0, 9]);
        assert!(read(&bad, unknown).is_err());
    }
}
