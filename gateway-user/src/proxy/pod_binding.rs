//! A pod's service-account token is good only from that pod. A projected token names its pod
//! (`kubernetes.io.pod.uid`); the connection's cgroup names the pod it came from (the kubelet
//! puts every container under its pod's cgroup, with either cgroup driver). A token replayed
//! from another pod, or from outside any pod, is refused: that is a stolen token.

/// The pod UID in a cgroup path, for both kubelet cgroup drivers:
/// systemd `…/kubepods-burstable-pod<uid with _>.slice/cri-containerd-<id>.scope`, and
/// cgroupfs `/kubepods/burstable/pod<uid>/<container id>`. `None` outside a pod.
pub fn pod_uid_of_cgroup(path: &str) -> Option<String> {
    path.split('/').rev().find_map(|segment| {
        let uid = if let Some(slice) = segment.strip_suffix(".slice") {
            slice
                .rsplit_once("-pod")
                .map(|(_, uid)| uid.replace('_', "-"))?
        } else {
            segment.strip_prefix("pod")?.to_string()
        };
        is_uid(&uid).then_some(uid)
    })
}

/// A Kubernetes UID: 36 characters, hexadecimal digits in 8-4-4-4-12 groups.
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `Err(why)` when a token bound to `token_pod` is used from `cgroup`.
pub fn check(token_pod: Option<&str>, cgroup: &str) -> Result<(), String> {
    let Some(token_pod) = token_pod else {
        return Ok(());
    };
    match pod_uid_of_cgroup(cgroup) {
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

    const UID: &str = "5f2b7c1e-9a4d-4e2b-8c3f-1a2b3c4d5e6f";

    #[test]
    fn both_cgroup_drivers_name_the_pod() {
        let systemd = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod5f2b7c1e_9a4d_4e2b_8c3f_1a2b3c4d5e6f.slice/cri-containerd-0123abcd.scope";
        assert_eq!(pod_uid_of_cgroup(systemd).as_deref(), Some(UID));
        let guaranteed = "/kubepods.slice/kubepods-pod5f2b7c1e_9a4d_4e2b_8c3f_1a2b3c4d5e6f.slice/crio-0123.scope";
        assert_eq!(pod_uid_of_cgroup(guaranteed).as_deref(), Some(UID));
        let cgroupfs = "/kubepods/besteffort/pod5f2b7c1e-9a4d-4e2b-8c3f-1a2b3c4d5e6f/0123abcd";
        assert_eq!(pod_uid_of_cgroup(cgroupfs).as_deref(), Some(UID));
        for outside in [
            "/system.slice/sshd.service",
            "/user.slice",
            "/podman/pod-x",
            "/kubepods/burstable/podnotauid/x",
            "/",
        ] {
            assert_eq!(pod_uid_of_cgroup(outside), None, "{outside}");
        }
    }

    #[test]
    fn a_token_is_good_only_from_its_pod() {
        let from_it = format!("/kubepods/burstable/pod{UID}/c1");
        let other = "/kubepods/burstable/pod00000000-0000-4000-8000-000000000000/c1";
        assert_eq!(check(Some(UID), &from_it), Ok(()));
        assert!(check(Some(UID), other)
            .unwrap_err()
            .contains("from pod 00000000"));
        assert!(check(Some(UID), "/ci/job-1")
            .unwrap_err()
            .contains("outside any pod"));
        // Tokens that name no pod are not bound.
        assert_eq!(check(None, other), Ok(()));
    }
}
