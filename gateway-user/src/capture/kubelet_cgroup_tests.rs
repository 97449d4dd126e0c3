use super::*;

const UID: &str = "5f2b7c1e-9a4d-4e2b-8c3f-1a2b3c4d5e6f";
const UID_: &str = "5f2b7c1e_9a4d_4e2b_8c3f_1a2b3c4d5e6f";
const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn p(root: &str, below: &str) -> Result<Level, KubeletPathError> {
    let segs: Vec<&str> = if below.is_empty() {
        Vec::new()
    } else {
        below.split('/').collect()
    };
    parse(root, &segs)
}

fn pod(level: Result<Level, KubeletPathError>) -> PodCgroup {
    match level {
        Ok(Level::Pod(p)) => p,
        other => panic!("not a pod: {other:?}"),
    }
}

#[test]
fn systemd_driver_all_qos_classes_and_runtimes() {
    for (qos_dir, pod_prefix, qos) in [
        (
            "kubepods-burstable.slice/",
            "kubepods-burstable-pod",
            Qos::Burstable,
        ),
        (
            "kubepods-besteffort.slice/",
            "kubepods-besteffort-pod",
            Qos::BestEffort,
        ),
        ("", "kubepods-pod", Qos::Guaranteed),
    ] {
        for (scope, runtime) in [
            (format!("cri-containerd-{CID}.scope"), Runtime::Containerd),
            (format!("crio-{CID}.scope"), Runtime::CriO),
            (format!("crio-conmon-{CID}.scope"), Runtime::CriOConmon),
            (format!("docker-{CID}.scope"), Runtime::Docker),
        ] {
            let path = format!("{qos_dir}{pod_prefix}{UID_}.slice/{scope}");
            let got = pod(p("kubepods.slice", &path));
            assert_eq!(got.driver, Driver::Systemd, "{path}");
            assert_eq!(got.qos, qos, "{path}");
            assert_eq!(got.uid, UID, "{path}");
            assert_eq!(
                got.container,
                Some(Container {
                    runtime,
                    id: CID.into()
                }),
                "{path}"
            );
            assert_eq!(got.below_container, 0);
        }
        // The pod's own cgroup.
        let got = pod(p(
            "kubepods.slice",
            &format!("{qos_dir}{pod_prefix}{UID_}.slice"),
        ));
        assert_eq!((got.qos, got.container), (qos, None));
    }
    assert_eq!(p("kubepods.slice", ""), Ok(Level::Root));
    assert_eq!(
        p("kubepods.slice", "kubepods-burstable.slice"),
        Ok(Level::Qos(Qos::Burstable))
    );
    assert_eq!(
        p("kubepods.slice", "kubepods-besteffort.slice"),
        Ok(Level::Qos(Qos::BestEffort))
    );
}

#[test]
fn systemd_driver_under_a_cgroup_root_prefix() {
    // kind nodes: --cgroup-root=/kubelet, so every slice carries the `kubelet-` prefix.
    let path = format!(
        "kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope"
    );
    let got = pod(p("kubelet-kubepods.slice", &path));
    assert_eq!((got.qos, got.uid.as_str()), (Qos::BestEffort, UID));
    // The prefix must be the root's own: another prefix is not this kubelet's.
    let path = format!("kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice");
    assert!(p("kubelet-kubepods.slice", &path).is_err());
}

#[test]
fn cgroupfs_driver_all_qos_classes() {
    for (qos_dir, qos) in [
        ("burstable/", Qos::Burstable),
        ("besteffort/", Qos::BestEffort),
        ("", Qos::Guaranteed),
    ] {
        for (name, runtime) in [
            (CID.to_string(), Runtime::Unnamed),
            (format!("crio-{CID}"), Runtime::CriO),
        ] {
            let path = format!("{qos_dir}pod{UID}/{name}");
            let got = pod(p("kubepods", &path));
            assert_eq!(got.driver, Driver::Cgroupfs);
            assert_eq!((got.qos, got.uid.as_str()), (qos, UID), "{path}");
            assert_eq!(got.container.map(|c| c.runtime), Some(runtime));
        }
    }
    assert_eq!(p("kubepods", "burstable"), Ok(Level::Qos(Qos::Burstable)));
    assert_eq!(p("kubepods", ""), Ok(Level::Root));
}

#[test]
fn sub_cgroups_of_a_container_are_the_container() {
    // Named after another pod on purpose: below the container, names do not count.
    let other = "00000000-0000-4000-8000-000000000000";
    let path = format!("burstable/pod{UID}/{CID}/kubepods/burstable/pod{other}/{CID}");
    let got = pod(p("kubepods", &path));
    assert_eq!(got.uid, UID);
    assert_eq!(got.below_container, 4);
}

#[test]
fn malformed_and_hostile_paths_are_refused() {
    let bad: Vec<(&str, String)> = vec![
        // Not a kubelet root.
        ("system.slice", String::new()),
        ("kubepodsx.slice", String::new()),
        ("", String::new()),
        // Unknown levels.
        ("kubepods.slice", "kubepods-guaranteed.slice".into()),
        ("kubepods.slice", "user.slice".into()),
        ("kubepods", "system".into()),
        ("kubepods", "Burstable".into()),
        // QoS of the pod slice disagrees with its parent.
        (
            "kubepods.slice",
            format!("kubepods-burstable.slice/kubepods-besteffort-pod{UID_}.slice"),
        ),
        (
            "kubepods.slice",
            format!("kubepods-burstable.slice/kubepods-pod{UID_}.slice"),
        ),
        // Dashes in a systemd pod slice (the kubelet escapes them).
        ("kubepods.slice", format!("kubepods-pod{UID}.slice")),
        // Underscores in a cgroupfs pod directory.
        ("kubepods", format!("pod{UID_}")),
        // UIDs: too short, uppercase, not hex, a static pod's hash, an extra group, empty.
        ("kubepods", "pod5f2b7c1e-9a4d-4e2b-8c3f-1a2b3c4d5e6".into()),
        ("kubepods", "pod5F2B7C1E-9A4D-4E2B-8C3F-1A2B3C4D5E6F".into()),
        ("kubepods", "podzf2b7c1e-9a4d-4e2b-8c3f-1a2b3c4d5e6f".into()),
        ("kubepods", "pod6b8a7c5d4e3f2a1b0c9d8e7f6a5b4c3d".into()),
        ("kubepods", format!("pod{UID}-0000")),
        ("kubepods", "pod".into()),
        ("kubepods.slice", "kubepods-pod.slice".into()),
        // Pod slice without .slice, with a trailing extra.
        ("kubepods.slice", format!("kubepods-pod{UID_}")),
        ("kubepods.slice", format!("kubepods-pod{UID_}.slice.x")),
        // Containers: wrong runtime prefix, short or uppercase ids, not a scope.
        (
            "kubepods.slice",
            format!("kubepods-pod{UID_}.slice/containerd-{CID}.scope"),
        ),
        (
            "kubepods.slice",
            format!("kubepods-pod{UID_}.slice/cri-containerd-{CID}"),
        ),
        (
            "kubepods.slice",
            format!("kubepods-pod{UID_}.slice/cri-containerd-0123.scope"),
        ),
        (
            "kubepods.slice",
            format!(
                "kubepods-pod{UID_}.slice/cri-containerd-{}.scope",
                CID.to_uppercase()
            ),
        ),
        ("kubepods", format!("pod{UID}/not-a-container")),
        ("kubepods", format!("pod{UID}/{CID}0")),
        // Empty segments (`//`), dot segments, non-ASCII.
        ("kubepods", format!("pod{UID}//{CID}")),
        ("kubepods", format!("../pod{UID}")),
        ("kubepods", format!("burstable/../pod{UID}")),
        (
            "kubepods",
            "pod5f2b7c1e-9a4d-4e2b-8c3f-1a2b3c4d5e6ｆ".into(),
        ),
    ];
    for (root, below) in bad {
        let got = p(root, &below);
        assert!(got.is_err(), "{root}/{below} must be refused: {got:?}");
    }
}
