//! The cgroup v2 hierarchy as the gateway sees it: paths are written relative to the mount
//! (`/agents/job-1`), and a cgroup's id is its directory's inode number, which is what
//! `bpf_get_current_cgroup_id()` returns.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::CaptureError;

#[derive(Debug, Clone)]
pub struct CgroupFs {
    root: PathBuf,
}

impl CgroupFs {
    /// Uses `root` if given, else the first cgroup2 mount of this process.
    pub fn discover(root: Option<PathBuf>) -> Result<Self, CaptureError> {
        if let Some(root) = root {
            return Ok(Self { root });
        }
        let info =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| CaptureError::Io {
                path: "/proc/self/mountinfo".into(),
                source,
            })?;
        // Fields: id parent major:minor root mount-point options ... - fstype source super-options
        info.lines()
            .find_map(|line| {
                let (left, right) = line.split_once(" - ")?;
                (right.split_whitespace().next()? == "cgroup2")
                    .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
            })
            .map(|root| Self { root })
            .ok_or(CaptureError::NoCgroup2)
    }

    pub fn abs(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    pub fn rel(&self, abs: &Path) -> Option<String> {
        let stripped = abs.strip_prefix(&self.root).ok()?;
        Some(format!("/{}", stripped.to_str()?))
    }

    pub fn id(path: &Path) -> std::io::Result<u64> {
        std::fs::metadata(path).map(|m| m.ino())
    }

    /// `dir` and every cgroup below it. Directories that vanish during the walk are skipped.
    pub fn walk(&self, dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            out.push(d);
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(e.path());
                }
            }
        }
        out
    }

    /// Some process currently in the cgroup, if any.
    pub fn first_pid(dir: &Path) -> Option<u32> {
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .ok()?
            .lines()
            .find_map(|l| l.trim().parse().ok())
    }
}

/// The deepest directory of a cgroup glob that has no glob characters: attaching the programs
/// there covers every cgroup the glob can ever match, including ones not created yet.
pub fn anchor_of(glob: &str) -> String {
    let mut parts = Vec::new();
    for c in glob.split('/').filter(|c| !c.is_empty()) {
        if c.contains(['*', '?', '[', '{']) {
            break;
        }
        parts.push(c);
    }
    format!("/{}", parts.join("/"))
}

/// Every alternative of a glob's `{a,b}` groups (not nested), so that a glob naming a few
/// separate trees (`/{kubepods.slice,kubepods}`) gets an anchor in each rather than their common
/// parent. A nested or unclosed brace is left as it is (its anchor stops before it).
pub fn expand_braces(glob: &str) -> Vec<String> {
    let Some(open) = glob.find('{') else {
        return vec![glob.to_string()];
    };
    let Some(len) = glob[open + 1..].find(['{', '}']) else {
        return vec![glob.to_string()];
    };
    let close = open + 1 + len;
    if glob.as_bytes()[close] == b'{' {
        return vec![glob.to_string()];
    }
    let (head, tail) = (&glob[..open], &glob[close + 1..]);
    glob[open + 1..close]
        .split(',')
        .flat_map(|alt| expand_braces(&format!("{head}{alt}{tail}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors() {
        assert_eq!(anchor_of("/agents/*"), "/agents");
        assert_eq!(anchor_of("/a/b/job-*/x"), "/a/b");
        assert_eq!(anchor_of("/a/b"), "/a/b");
        assert_eq!(anchor_of("/*"), "/");
        assert_eq!(anchor_of("/ci/{a,b}"), "/ci");
    }

    #[test]
    fn braces_expand_into_separate_anchors() {
        assert_eq!(
            expand_braces("/{kubepods.slice,kubepods}"),
            ["/kubepods.slice", "/kubepods"]
        );
        assert_eq!(
            expand_braces("/t/{a,b}/x-{1,2}"),
            ["/t/a/x-1", "/t/a/x-2", "/t/b/x-1", "/t/b/x-2"]
        );
        assert_eq!(expand_braces("/a/{b"), ["/a/{b"]);
        assert_eq!(expand_braces("/a/{b,{c,d}}"), ["/a/{b,{c,d}}"]);
        assert_eq!(expand_braces("/plain"), ["/plain"]);
    }

    #[test]
    fn rel_and_abs_round_trip() {
        let fs = CgroupFs::discover(Some("/sys/fs/cgroup/unified".into())).unwrap();
        let abs = fs.abs("/agents/job-1");
        assert_eq!(abs, Path::new("/sys/fs/cgroup/unified/agents/job-1"));
        assert_eq!(fs.rel(&abs).as_deref(), Some("/agents/job-1"));
        assert_eq!(fs.rel(Path::new("/elsewhere")), None);
    }
}
