//! A pod's service-account token is good only from that pod. A projected token names its pod
//! (`kubernetes.io.pod.uid`); the connection's cgroup names the pod it came from (the kubelet
//! puts every container under its pod's cgroup, with either cgroup driver). A token replayed
//! from another pod, or from outside any pod, is refused: that is a stolen token.

use crate::{
    capture::{level_below, node_root_of, KubeletLevel},
    policy::Workload,
};

/// The pod UID of the connection's cgroup, parsed strictly from the kubelet's root down (both
/// cgroup drivers). The root is where the workload says it is: for a `pods:` workload the
/// ancestor its glob matched (as classification found it), otherwise the node's own kubelet
/// root at the top of the tree. `None` outside a pod. Levels below a container are the
/// container's own whatever they are named, so a sub-cgroup called `pod<another uid>` is not
/// that pod.
pub fn pod_uid_of_cgroup(workload: &Workload, path: &str) -> Option<String> {
    let root = if workload.pods.is_some() {
        ancestors(path).find(|p| workload.matcher.is_match(p))?
    } else {
        node_root_of(path)?
    };
    match level_below(root, path) {
        Ok(KubeletLevel::Pod(pod)) => Some(pod.uid),
        _ => None,
    }
}

/// `path` and its ancestors, deepest first (`/a/b`, `/a`, `/`).
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(path), |p| match p.rfind('/') {
        Some(0) if p.len() > 1 => Some("/"),
        Some(i) if i > 0 => Some(&p[..i]),
        _ => None,
    })
}

/// `Err(why)` when a token bound to `token_pod` is used from `cgroup` (of `workload`).
pub fn check(token_pod: Option<&str>, workload: &Workload, cgroup: &str) -> Result<(), String> {
    let Some(token_pod) = token_pod else {
        return Ok(());
    };
    match pod_uid_of_cgroup(workload, cgroup) {
        Some(from) if from.eq_ignore_ascii_case(token_pod) => Ok(()),
        Some(from) => Err(format!(
            "the service-account token of pod {token_pod} was presented from pod {from}"
        )),
        None => Err(format!(
            "the service-account token of pod {token_pod} was presented from outside any pod (cgroup {cgroup})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Mode, TokenSource};

    const UID: &str = "5f2b7c1e-9a4d-4e2b-8c3f-1a2b3c4d5e6f";
    const VICTIM: &str = "00000000-0000-4000-8000-000000000000";
    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// A cgroup-glob workload (`pods: None`) or a `pods:` workload rooted at `glob`.
    fn workload(glob: &str, pods: bool) -> Workload {
        Workload {
            name: "w".into(),
            cgroup: glob.into(),
            matcher: crate::policy::glob_ci(glob).expect("glob"),
            mode: Mode::Pod,
            token: TokenSource::Credential,
            pods: pods.then(Default::default),
        }
    }

    fn node(path: &str) -> Option<String> {
        pod_uid_of_cgroup(&workload("/**", false), path)
    }

    #[test]
    fn both_cgroup_drivers_name_the_pod() {
        let systemd = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod5f2b7c1e_9a4d_4e2b_8c3f_1a2b3c4d5e6f.slice/cri-containerd-{ID}.scope");
        assert_eq!(node(&systemd).as_deref(), Some(UID));
        let guaranteed = format!(
            "/kubepods.slice/kubepods-pod5f2b7c1e_9a4d_4e2b_8c3f_1a2b3c4d5e6f.slice/crio-{ID}.scope"
        );
        assert_eq!(node(&guaranteed).as_deref(), Some(UID));
        let kind = format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod5f2b7c1e_9a4d_4e2b_8c3f_1a2b3c4d5e6f.slice/cri-containerd-{ID}.scope");
        assert_eq!(node(&kind).as_deref(), Some(UID));
        let cgroupfs = format!("/kubepods/besteffort/pod{UID}/{ID}");
        assert_eq!(node(&cgroupfs).as_deref(), Some(UID));
        for outside in [
            "/system.slice/sshd.service",
            "/user.slice",
            "/podman/pod-x",
            "/kubepods/burstable/podnotauid/x",
            "/",
        ] {
            assert_eq!(node(outside), None, "{outside}");
        }
    }

    /// A `pods:` workload's kubelet root is where its glob says (a test tree, a custom root).
    #[test]
    fn a_pods_workload_roots_the_parse_at_its_glob() {
        let w = workload("/t1/{kubepods.slice,kubepods}", true);
        let path = format!("/t1/kubepods/burstable/pod{UID}/{ID}");
        assert_eq!(pod_uid_of_cgroup(&w, &path).as_deref(), Some(UID));
        // Without the workload's root, that path is no pod of the node.
        assert_eq!(node(&path), None);
    }

    /// The attack the old deepest-segment scan allowed: a process that can make cgroups names
    /// one after the pod whose token it stole.
    #[test]
    fn a_sub_cgroup_named_after_another_pod_is_not_that_pod() {
        let pods = workload("/{kubepods.slice,kubepods}", true);
        // Inside a container of pod UID: its own sub-cgroups stay pod UID's.
        for nested in [
            format!("/kubepods/burstable/pod{UID}/{ID}/pod{VICTIM}"),
            format!("/kubepods/burstable/pod{UID}/{ID}/kubepods/pod{VICTIM}/{ID}"),
            format!("/kubepods.slice/kubepods-pod5f2b7c1e_9a4d_4e2b_8c3f_1a2b3c4d5e6f.slice/cri-containerd-{ID}.scope/kubepods-pod00000000_0000_4000_8000_000000000000.slice"),
        ] {
            assert_eq!(node(&nested).as_deref(), Some(UID), "{nested}");
            assert_eq!(pod_uid_of_cgroup(&pods, &nested).as_deref(), Some(UID), "{nested}");
            let refused = check(Some(VICTIM), &pods, &nested).unwrap_err();
            assert!(refused.contains(&format!("from pod {UID}")), "{refused}");
        }
        // A delegated non-pod cgroup (a CI job) building a kubelet-looking tree is in no pod.
        let ci = workload("/ci/**", false);
        for forged in [
            format!("/ci/job-1/pod{VICTIM}"),
            format!("/ci/job-1/kubepods/pod{VICTIM}/{ID}"),
            format!("/ci.slice/job.slice/kubepods/besteffort/pod{VICTIM}/{ID}"),
            "/user.slice/kubepods-pod00000000_0000_4000_8000_000000000000.slice".to_string(),
        ] {
            assert_eq!(pod_uid_of_cgroup(&ci, &forged), None, "{forged}");
            let refused = check(Some(VICTIM), &ci, &forged).unwrap_err();
            assert!(refused.contains("outside any pod"), "{refused}");
        }
    }

    #[test]
    fn a_token_is_good_only_from_its_pod() {
        let w = workload("/**", false);
        let from_it = format!("/kubepods/burstable/pod{UID}/{ID}");
        let other = format!("/kubepods/burstable/pod{VICTIM}/{ID}");
        assert_eq!(check(Some(UID), &w, &from_it), Ok(()));
        assert!(check(Some(UID), &w, &other)
            .unwrap_err()
            .contains("from pod 00000000"));
        assert!(check(Some(UID), &w, "/ci/job-1")
            .unwrap_err()
            .contains("outside any pod"));
        // Tokens that name no pod are not bound.
        assert_eq!(check(None, &w, &other), Ok(()));
    }
}
