//! The Kubernetes manifests in deploy/, checked offline: `kubectl kustomize deploy/` renders
//! them, `kubernetes-validate` (PyPI, installed by `cargo xtask setup`) validates them strictly
//! against the schemas of Kubernetes 1.37 (and rejects a broken copy, so the check can fail),
//! and the parts that must agree with the gateway are compared with the real binary: probe
//! port and paths, the policies mount, the record's directory, the environment variables it
//! reads, the RBAC it needs and nothing more, and the ConfigMap's policy.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use agentgate_tests::*;
use serde_json::{json, Value};

/// The Kubernetes version validated against: the newest whose schemas kubernetes-validate
/// 1.37.0 ships.
const KUBERNETES: &str = "1.37.0";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// `kubectl kustomize deploy/`: every manifest, as `kubectl apply -k deploy/` would send them.
fn rendered() -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy_dir())
        .output()
        .expect("run kubectl kustomize (kubectl is on these machines, see xtask setup)");
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 manifests")
}

/// Runs kubernetes-validate (strict) on `yaml`: (success, its report).
fn validate(yaml: &str) -> (bool, String) {
    let file = std::env::temp_dir().join(format!("{}.yaml", unique("manifests")));
    std::fs::write(&file, yaml).expect("write manifests");
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "-k", KUBERNETES])
        .arg(&file)
        .output()
        .expect("run python3 -m kubernetes_validate (cargo xtask setup installs it)");
    let _ = std::fs::remove_file(&file);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The rendered manifests as JSON objects (PyYAML, which kubernetes-validate brings).
fn objects() -> Vec<Value> {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import sys, yaml, json; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(rendered().as_bytes())
        .expect("write YAML");
    let out = child.wait_with_output().expect("python3 yaml");
    assert!(out.status.success(), "YAML to JSON: {out:?}");
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in deploy/"))
}

/// `agentgate run --help`.
fn run_help() -> String {
    let out = Command::new(agentgate_bin())
        .args(["run", "--help"])
        .output()
        .expect("agentgate run --help");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `[default: …]` of `flag` in `agentgate run --help`.
fn default_of(help: &str, flag: &str) -> String {
    let at = help
        .find(&format!("{flag} "))
        .unwrap_or_else(|| panic!("{flag} not in agentgate run --help"));
    let rest = &help[at..];
    let next_flag = rest[2..].find("\n  -").map(|i| i + 2).unwrap_or(rest.len());
    let section = &rest[..next_flag];
    section
        .split("[default: ")
        .nth(1)
        .and_then(|d| d.split(']').next())
        .unwrap_or_else(|| panic!("{flag} has no default: {section}"))
        .to_string()
}

#[test]
fn manifests_validate_strictly_against_current_kubernetes() {
    let yaml = rendered();
    let (ok, report) = validate(&yaml);
    assert!(ok, "deploy/ does not validate:\n{report}");
    for resource in [
        "namespace/agentgate-system",
        "serviceaccount/agentgate",
        "clusterrole/agentgate-pod-reader",
        "clusterrole/agentgate-impersonator",
        "clusterrolebinding/agentgate-pod-reader",
        "clusterrolebinding/agentgate-impersonator",
        "configmap/agentgate-policies",
        "daemonset/agentgate",
    ] {
        assert!(
            report.contains(&format!(
                "passed for resource {resource} against version 1.37"
            )),
            "{resource} was not validated:\n{report}"
        );
    }
}

#[test]
fn the_validator_rejects_broken_manifests() {
    let yaml = rendered();
    // An unknown field (strict validation) and a wrong type, each in the DaemonSet.
    for (from, to, expect) in [
        ("hostPID: true", "hostPid: true", "'hostPid' was unexpected"),
        (
            "terminationGracePeriodSeconds: 30",
            "terminationGracePeriodSeconds: thirty",
            "is not of type 'integer'",
        ),
    ] {
        assert!(yaml.contains(from), "the rendered manifests lack {from:?}");
        let (ok, report) = validate(&yaml.replacen(from, to, 1));
        assert!(!ok, "{to:?} passed validation:\n{report}");
        assert!(
            report.contains("daemonset/agentgate") && report.contains(expect),
            "the report names the resource and the problem ({expect}):\n{report}"
        );
    }
}

#[test]
fn rbac_grants_pod_reads_and_impersonation_only() {
    let objs = objects();
    let mut rules = Vec::new();
    for o in &objs {
        match o["kind"].as_str().unwrap_or("") {
            "ClusterRole" | "Role" => {
                for r in o["rules"].as_array().expect("rules") {
                    rules.push(r.clone());
                }
            }
            "ClusterRoleBinding" | "RoleBinding" => {
                assert_eq!(
                    o["subjects"],
                    json!([{"kind": "ServiceAccount", "name": "agentgate", "namespace": "agentgate-system"}]),
                    "{o}"
                );
            }
            _ => {}
        }
    }
    rules.sort_by_key(|r| r.to_string());
    let mut want = vec![
        json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}),
        json!({"apiGroups": [""], "resources": ["users", "groups"], "verbs": ["impersonate"]}),
        json!({"apiGroups": ["authentication.k8s.io"],
               "resources": ["userextras/agentgate.io/session", "userextras/agentgate.io/workload"],
               "verbs": ["impersonate"]}),
    ];
    want.sort_by_key(|r| r.to_string());
    assert_eq!(rules, want, "RBAC grants exactly this");
    let ds = find(&objs, "DaemonSet", "agentgate");
    assert_eq!(
        ds["spec"]["template"]["spec"]["serviceAccountName"],
        "agentgate"
    );
}

#[test]
fn the_daemonset_agrees_with_the_gateway() {
    let objs = objects();
    let ds = find(&objs, "DaemonSet", "agentgate");
    let pod = &ds["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let help = run_help();

    // Not privileged; only added capabilities (deploy_caps.rs proves the list).
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert!(sc["capabilities"]["add"]
        .as_array()
        .is_some_and(|a| !a.is_empty()));

    // Probes on the gateway's default metrics address: /healthz, /readyz.
    let metrics = default_of(&help, "--metrics");
    let (host, port) = metrics.rsplit_once(':').expect("host:port");
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["host"], host, "{probe}");
        assert_eq!(get["port"].to_string(), port, "{probe}");
        assert_eq!(get["path"], path, "{probe}");
    }
    assert_eq!(
        pod["hostNetwork"], true,
        "the probes reach the node's loopback"
    );
    assert_eq!(pod["hostPID"], true);

    // The policies: `--policies` is where the ConfigMap is mounted.
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args.first(), Some(&"run"));
    let policies = args
        .iter()
        .position(|a| *a == "--policies")
        .and_then(|i| args.get(i + 1))
        .expect("--policies");
    let mount = |name: &str| -> &Value {
        c["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("no mount {name}"))
    };
    let volume = |name: &str| -> &Value {
        pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    assert_eq!(mount("policies")["mountPath"], *policies);
    assert_eq!(
        volume("policies")["configMap"]["name"],
        "agentgate-policies"
    );
    find(&objs, "ConfigMap", "agentgate-policies");

    // The record on the node: the default --record-db lies in the hostPath mount, as does the
    // default admin socket.
    for (flag, vol) in [("--record-db", "state"), ("--admin-socket", "run")] {
        let default = default_of(&help, flag);
        let dir = Path::new(&default).parent().expect("a directory");
        assert_eq!(
            mount(vol)["mountPath"].as_str().map(Path::new),
            Some(dir),
            "{flag} {default}"
        );
        assert_eq!(
            volume(vol)["hostPath"]["path"].as_str().map(Path::new),
            Some(dir)
        );
    }

    // Every node, first in line.
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(
        pod["tolerations"],
        json!([{"operator": "Exists"}]),
        "no key and no effect: every taint"
    );
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());

    // The central audit sink: optional ConfigMap (environment) and Secret (password, CA).
    assert_eq!(
        c["envFrom"],
        json!([{"configMapRef": {"name": "agentgate-audit-sink", "optional": true}}])
    );
    assert_eq!(volume("audit-sink")["secret"]["optional"], true);
    // Every variable the DaemonSet sets, and the two the sink ConfigMap sets, are read by the
    // gateway.
    let mut names: Vec<String> = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| e["name"].as_str().map(String::from))
        .collect();
    names.extend([
        "AGENTGATE_AUDIT_SINK".into(),
        "AGENTGATE_AUDIT_SINK_PASSWORD_FILE".into(),
    ]);
    for name in &names {
        assert!(
            help.contains(&format!("[env: {name}=")),
            "agentgate run does not read {name}:\n{help}"
        );
    }
}

#[test]
fn the_sink_settings_come_from_the_environment() {
    // A password file without a sink is refused at once, from the environment as from flags:
    // the variable is read and checked like the flag.
    let out = Command::new(agentgate_bin())
        .args(["run", "--policies", "/nonexistent-agentgate-policies"])
        .env(
            "AGENTGATE_AUDIT_SINK_PASSWORD_FILE",
            "/nonexistent-password",
        )
        .env_remove("AGENTGATE_AUDIT_SINK")
        .output()
        .expect("agentgate run");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("--audit-sink <AUDIT_SINK>") && text.contains("required"),
        "clap names the missing --audit-sink: {text}"
    );
}

#[test]
fn the_configmap_policy_passes_policy_check() {
    let objs = objects();
    let cm = find(&objs, "ConfigMap", "agentgate-policies");
    let data = cm["data"].as_object().expect("data");
    assert!(!data.is_empty());
    let dir = std::env::temp_dir().join(unique("configmap-policy"));
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    // The identity provider's CA is the pod's service-account ca.crt: a throwaway CA stands in.
    let ca = dir.join("ca.crt");
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-keyout",
            "/dev/null",
            "-subj",
            "/CN=stand-in",
            "-days",
            "1",
            "-out",
        ])
        .arg(&ca)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "openssl: {made:?}");
    for (file, text) in data {
        let text = text.as_str().expect("text").replace(
            "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
            &ca.display().to_string(),
        );
        std::fs::write(policies.join(file), text).unwrap();
    }
    let out = Command::new(agentgate_bin())
        .args(["policy", "check"])
        .arg(&policies)
        .output()
        .expect("agentgate policy check");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "the ConfigMap's policy: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
