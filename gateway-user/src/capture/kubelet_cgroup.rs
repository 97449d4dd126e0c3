//! What a cgroup path below the kubelet's root cgroup says about a pod: its UID, its QoS class
//! and the container, for both kubelet cgroup drivers.
//!
//! systemd (`--cgroup-driver=systemd`), root `kubepods.slice` (or `<x>-kubepods.slice` under a
//! `--cgroup-root`, as kind nodes have):
//! ```text
//! kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, - as _>.slice/cri-containerd-<id>.scope
//! kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/crio-<id>.scope
//! kubepods.slice/kubepods-pod<uid>.slice/docker-<id>.scope            (Guaranteed)
//! ```
//! cgroupfs (`--cgroup-driver=cgroupfs`), root `kubepods`:
//! ```text
//! kubepods/burstable/pod<uid>/<id>      kubepods/besteffort/pod<uid>/<id>      kubepods/pod<uid>/<id>
//! ```
//! A path is parsed from the root down, every level checked against exactly what the kubelet
//! and the runtimes write; anything else is an error, never a guess (the caller refuses such a
//! cgroup). Levels below a container are the container's own (a container may make
//! sub-cgroups): they belong to it, whatever they are called, so a process cannot pass for
//! another pod by naming a sub-cgroup after it.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    fn level_name(self) -> Option<&'static str> {
        match self {
            Qos::Guaranteed => None,
            Qos::Burstable => Some("burstable"),
            Qos::BestEffort => Some("besteffort"),
        }
    }
}

/// The runtime that named a container's cgroup, where the name says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Containerd,
    CriO,
    /// CRI-O's container monitor, in the pod's cgroup beside the container.
    CriOConmon,
    Docker,
    /// cgroupfs driver with containerd or Docker: the directory is the bare id.
    Unnamed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub runtime: Runtime,
    /// 64 lowercase hexadecimal digits.
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    pub driver: Driver,
    pub qos: Qos,
    /// The pod's UID as the API server writes it (`8-4-4-4-12` lowercase hexadecimal).
    pub uid: String,
    /// `None` for the pod's own cgroup.
    pub container: Option<Container>,
    /// Levels below the container's cgroup (the container's own sub-cgroups).
    pub below_container: usize,
}

/// Which kubelet level a cgroup is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Level {
    /// The kubelet's root (`kubepods.slice`, `kubepods`).
    Root,
    /// A QoS class's cgroup (`kubepods-burstable.slice`, `burstable`).
    Qos(Qos),
    Pod(PodCgroup),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeletPathError {
    #[error("`{0}` is not a kubelet root cgroup name (`kubepods.slice`, `<prefix>-kubepods.slice` or a cgroupfs directory)")]
    Root(String),
    #[error("`{0}` is neither a QoS class nor a pod cgroup of the kubelet")]
    Unrecognized(String),
    #[error("`{0}` is not a pod cgroup of QoS class {1}")]
    NotPodOf(String, Qos),
    #[error("`{0}` holds no valid pod UID")]
    Uid(String),
    #[error("`{0}` is not a container cgroup (containerd, CRI-O or Docker)")]
    Container(String),
    #[error("empty path segment")]
    Empty,
}

impl fmt::Display for Qos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Qos::Guaranteed => "guaranteed",
            Qos::Burstable => "burstable",
            Qos::BestEffort => "besteffort",
        })
    }
}

/// Parses the segments below the kubelet's root `root` (the root directory's own name).
pub fn parse(root: &str, below: &[&str]) -> Result<Level, KubeletPathError> {
    if below.iter().any(|s| s.is_empty()) {
        return Err(KubeletPathError::Empty);
    }
    let driver = driver_of(root)?;
    let Some((first, rest)) = below.split_first() else {
        return Ok(Level::Root);
    };
    let (qos, pod_segment, rest) = match driver {
        Driver::Systemd => {
            let prefix = root.strip_suffix(".slice").unwrap_or(root);
            let qos_of = |q: Qos| format!("{prefix}-{}.slice", q.level_name().unwrap_or(""));
            if *first == qos_of(Qos::Burstable) {
                (Qos::Burstable, rest.first(), rest.get(1..))
            } else if *first == qos_of(Qos::BestEffort) {
                (Qos::BestEffort, rest.first(), rest.get(1..))
            } else {
                (Qos::Guaranteed, Some(first), Some(rest))
            }
        }
        Driver::Cgroupfs => match *first {
            "burstable" => (Qos::Burstable, rest.first(), rest.get(1..)),
            "besteffort" => (Qos::BestEffort, rest.first(), rest.get(1..)),
            _ => (Qos::Guaranteed, Some(first), Some(rest)),
        },
    };
    let Some(pod_segment) = pod_segment else {
        return Ok(Level::Qos(qos));
    };
    let rest = rest.unwrap_or(&[]);
    let uid = match driver {
        Driver::Systemd => {
            let prefix = root.strip_suffix(".slice").unwrap_or(root);
            let expected = match qos.level_name() {
                Some(q) => format!("{prefix}-{q}-pod"),
                None => format!("{prefix}-pod"),
            };
            let Some(escaped) = pod_segment
                .strip_prefix(expected.as_str())
                .and_then(|s| s.strip_suffix(".slice"))
            else {
                return Err(not_pod(pod_segment, qos));
            };
            // systemd's unit names use `-` for hierarchy, so the kubelet writes the UID's
            // dashes as underscores; a dash here is not the kubelet's.
            if escaped.contains('-') {
                return Err(KubeletPathError::Uid(pod_segment.to_string()));
            }
            escaped.replace('_', "-")
        }
        Driver::Cgroupfs => {
            let Some(uid) = pod_segment.strip_prefix("pod") else {
                return Err(not_pod(pod_segment, qos));
            };
            uid.to_string()
        }
    };
    if !is_uid(&uid) {
        return Err(KubeletPathError::Uid(pod_segment.to_string()));
    }
    let container = match rest.first() {
        None => None,
        Some(c) => Some(container(driver, c)?),
    };
    Ok(Level::Pod(PodCgroup {
        driver,
        qos,
        uid,
        container,
        below_container: rest.len().saturating_sub(1),
    }))
}

fn not_pod(segment: &str, qos: Qos) -> KubeletPathError {
    if qos == Qos::Guaranteed {
        // Not under a QoS level: it was neither a QoS class nor a Guaranteed pod.
        KubeletPathError::Unrecognized(segment.to_string())
    } else {
        KubeletPathError::NotPodOf(segment.to_string(), qos)
    }
}

fn driver_of(root: &str) -> Result<Driver, KubeletPathError> {
    if root.is_empty() || root.contains('/') {
        return Err(KubeletPathError::Root(root.to_string()));
    }
    match root.strip_suffix(".slice") {
        Some(prefix) if prefix == "kubepods" || prefix.ends_with("-kubepods") => {
            Ok(Driver::Systemd)
        }
        Some(_) => Err(KubeletPathError::Root(root.to_string())),
        None => Ok(Driver::Cgroupfs),
    }
}

fn container(driver: Driver, segment: &str) -> Result<Container, KubeletPathError> {
    let bad = || KubeletPathError::Container(segment.to_string());
    let (runtime, id) = match driver {
        Driver::Systemd => {
            let name = segment.strip_suffix(".scope").ok_or_else(bad)?;
            // `crio-conmon-` before `crio-`: the longer prefix first.
            [
                ("cri-containerd-", Runtime::Containerd),
                ("crio-conmon-", Runtime::CriOConmon),
                ("crio-", Runtime::CriO),
                ("docker-", Runtime::Docker),
            ]
            .into_iter()
            .find_map(|(p, r)| name.strip_prefix(p).map(|id| (r, id)))
            .ok_or_else(bad)?
        }
        Driver::Cgroupfs => match segment.strip_prefix("crio-conmon-") {
            Some(id) => (Runtime::CriOConmon, id),
            None => match segment.strip_prefix("crio-") {
                Some(id) => (Runtime::CriO, id),
                None => (Runtime::Unnamed, segment),
            },
        },
    };
    if id.len() != 64 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(bad());
    }
    Ok(Container {
        runtime,
        id: id.to_string(),
    })
}

/// The kubelet level of `path` below the kubelet root cgroup `root` (both relative to the
/// cgroup v2 mount; `root` is `path` or an ancestor of it).
pub fn level_below(root: &str, path: &str) -> Result<Level, KubeletPathError> {
    let root_name = root.rsplit('/').next().unwrap_or_default();
    let below = path
        .get(root.len()..)
        .unwrap_or_default()
        .trim_start_matches('/');
    let segments: Vec<&str> = if below.is_empty() {
        Vec::new()
    } else {
        below.split('/').collect()
    };
    parse(root_name, &segments)
}

/// The kubelet root cgroup of a node, found from the root down: the path's first level
/// (`/kubepods.slice`, `/kubepods`) or, under a `--cgroup-root` slice, its second
/// (`/kubelet.slice/kubelet-kubepods.slice`, as kind nodes have). Nowhere deeper: a process
/// that may make cgroups (a delegated CI job) could otherwise build a kubelet-looking tree with
/// a `pod<someone else's uid>` in it and pass for that pod.
pub fn node_root_of(path: &str) -> Option<&str> {
    let mut levels = path.match_indices('/').map(|(i, _)| i).skip(1);
    let first_end = levels.next().unwrap_or(path.len());
    let first = path.get(1..first_end)?;
    if first == "kubepods" || first == "kubepods.slice" {
        return Some(&path[..first_end]);
    }
    let prefix = first.strip_suffix(".slice").filter(|p| !p.is_empty())?;
    let second_end = levels.next().unwrap_or(path.len());
    let second = path.get(first_end + 1..second_end)?;
    (second == format!("{prefix}-kubepods.slice")).then(|| &path[..second_end])
}

/// A Kubernetes UID as the API server generates it: lowercase hexadecimal in 8-4-4-4-12 groups.
/// (Static pods' UIDs are 32-digit hashes: their cgroups are refused.)
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

#[cfg(test)]
#[path = "kubelet_cgroup_tests.rs"]
mod tests;
