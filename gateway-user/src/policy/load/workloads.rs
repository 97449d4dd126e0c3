//! A `workloads:` entry: a cgroup glob, or Kubernetes pods selected by namespace, service
//! account and labels (`pods:`).

use std::path::Path;

use super::super::{
    doc::{PodsDoc, TokenDoc, WorkloadDoc},
    model::{Mode, PodSelector, TokenSource, Workload},
};
use super::{glob, Merger};

/// The kubelet's root cgroups of both cgroup drivers (systemd, cgroupfs), relative to the
/// cgroup v2 mount: where pods are looked for when a `pods:` workload names no `cgroup`.
pub const KUBELET_ROOTS: &str = "/{kubepods.slice,kubepods}";

impl Merger {
    pub(super) fn workload(&mut self, file: &Path, w: WorkloadDoc) {
        self.name("workload", &w.name, file);
        let name = w.name;
        let pods = match w.pods {
            Some(doc) => match selector(&name, doc) {
                Ok(s) => Some(s),
                Err(p) => return self.problem(file, p),
            },
            None => None,
        };
        let (cgroup, mode) = match (&pods, w.cgroup, w.mode) {
            (Some(_), cgroup, None | Some(Mode::Pod)) => {
                (cgroup.unwrap_or_else(|| KUBELET_ROOTS.into()), Mode::Pod)
            }
            (Some(_), _, Some(Mode::Host)) => {
                return self.problem(
                    file,
                    format!("workload `{name}`: `pods:` workloads are `mode: pod` (each pod has its own network namespace; a hostNetwork pod's is the node's, which works too)"),
                )
            }
            (None, Some(cgroup), Some(mode)) => (cgroup, mode),
            (None, None, _) => {
                return self.problem(
                    file,
                    format!("workload `{name}` needs `cgroup` (a glob) or `pods` (a pod selector)"),
                )
            }
            (None, Some(_), None) => {
                return self.problem(
                    file,
                    format!("workload `{name}` needs `mode` (`host` or `pod`)"),
                )
            }
        };
        if !cgroup.starts_with('/') {
            return self.problem(
                file,
                format!(
                    "workload `{name}`: cgroup `{cgroup}` must be an absolute path below the cgroup v2 mount (start with `/`)"
                ),
            );
        }
        let token = match w.token {
            TokenDoc::Credential => TokenSource::Credential,
            TokenDoc::File { path } if path.starts_with('/') => TokenSource::File(path.into()),
            TokenDoc::File { path } => {
                return self.problem(
                    file,
                    format!(
                        "workload `{name}`: token path `{path}` must be absolute (inside the workload's filesystem)"
                    ),
                );
            }
        };
        match glob(&cgroup) {
            Ok(matcher) => self.policy.workloads.push(Workload {
                name,
                matcher,
                cgroup,
                mode,
                token,
                pods,
            }),
            Err(e) => self.problem(file, format!("workload `{name}`: bad cgroup glob: {e}")),
        }
    }
}

fn selector(workload: &str, doc: PodsDoc) -> Result<PodSelector, String> {
    let empty = |what: &str| format!("workload `{workload}`: pods: an empty {what}");
    if doc.namespaces.iter().any(String::is_empty) {
        return Err(empty("namespace"));
    }
    if doc.service_accounts.iter().any(String::is_empty) {
        return Err(empty("service account"));
    }
    if doc.labels.keys().any(String::is_empty) {
        return Err(empty("label key"));
    }
    if let Some(sa) = doc.service_accounts.iter().find(|s| s.contains(':')) {
        return Err(format!(
            "workload `{workload}`: pods: service account `{sa}`: give its name (`runner`), not `system:serviceaccount:…`; `namespaces` restricts the namespace"
        ));
    }
    Ok(PodSelector {
        namespaces: doc.namespaces,
        service_accounts: doc.service_accounts,
        labels: doc.labels,
    })
}

#[cfg(test)]
mod tests {
    use crate::policy::{load_dir, Mode};

    fn load(tag: &str, workloads: &str) -> Result<crate::policy::Policy, String> {
        let dir = std::env::temp_dir().join(format!("agentgate-wl-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("w.yaml"),
            format!("version: 2\nworkloads:\n{workloads}"),
        )
        .unwrap();
        let r = load_dir(&dir).map_err(|e| format!("{e}"));
        std::fs::remove_dir_all(&dir).unwrap();
        r
    }

    #[test]
    fn pod_selectors_load_with_defaults_and_mistakes_are_refused() {
        let p = load(
            "ok",
            "  - name: a\n    pods: {namespaces: [ai], service_accounts: [runner], labels: {app: x}}\n    token: {from: credential}\n",
        )
        .unwrap();
        let w = &p.workloads[0];
        assert_eq!(
            (w.mode, w.cgroup.as_str()),
            (Mode::Pod, super::KUBELET_ROOTS)
        );
        let s = w.pods.as_ref().unwrap();
        assert_eq!(s.namespaces, ["ai"]);
        assert!(s.matches("ai", "runner", &[("app".into(), "x".into())].into()));
        assert!(!s.matches("ai", "other", &[("app".into(), "x".into())].into()));
        assert!(!s.matches("ai", "runner", &Default::default()));
        // `pods: {}` selects every pod.
        let p = load(
            "all",
            "  - name: a\n    pods: {}\n    token: {from: credential}\n",
        )
        .unwrap();
        assert!(p.workloads[0]
            .pods
            .as_ref()
            .unwrap()
            .matches("x", "y", &Default::default()));
        for (tag, doc, says) in [
            ("host", "  - name: a\n    pods: {}\n    mode: host\n    token: {from: credential}\n", "mode: pod"),
            ("none", "  - name: a\n    mode: pod\n    token: {from: credential}\n", "needs `cgroup`"),
            ("nomode", "  - name: a\n    cgroup: /x\n    token: {from: credential}\n", "needs `mode`"),
            ("sa", "  - name: a\n    pods: {service_accounts: ['system:serviceaccount:ai:r']}\n    token: {from: credential}\n", "give its name"),
            ("key", "  - name: a\n    pods: {nodes: [n]}\n    token: {from: credential}\n", "nodes"),
            ("empty", "  - name: a\n    pods: {namespaces: ['']}\n    token: {from: credential}\n", "empty namespace"),
        ] {
            let e = load(tag, doc).unwrap_err();
            assert!(e.contains(says), "{tag}: {e}");
        }
    }
}
