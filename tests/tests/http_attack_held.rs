//! Attacks on the HTTP / Kubernetes handler, continued (the first part is http_attack.rs): held
//! requests abandoned, revoked or reloaded; a slow client; plain HTTP pass-through, opaque bodies
//! and byte ranges against a real nginx.
//!
//! Ports: 20900–20919 (shared with http_attack.rs: each test has its own).

mod http_attack_common;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use agentgate_tests::{
    agentgate_bin, cgroup2_root, fixtures,
    http::{header_values, Ca, Upstream},
    require_root, unique, wait_until, Cgroup, Gateway, AUDIENCE, ISSUER,
};
use serde_json::{json, Value};

use http_attack_common::*;

const RBAC_APPROVAL: &str = "  - name: rbac-needs-approval
    targets: [cluster-api]
    requests: {verbs: [create], resources: [\"rolebindings.rbac.authorization.k8s.io\"]}
    approval: {approvers: [oncall], timeout_secs: 60}
";

fn rolebinding(name: &str) -> String {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
        "subjects": [{"kind": "User", "name": "agent", "apiGroup": "rbac.authorization.k8s.io"}]})
    .to_string()
}

/// A held request whose agent hung up, one whose agent was revoked while it was held, and one
/// under a reload that turned its approval rule into a deny: none reaches the API server,
/// however approvers decide afterwards.
#[test]
fn an_abandoned_revoked_or_reloaded_held_request_is_never_forwarded() {
    let k = kube("att-held", 20916, 20917, "", RBAC_APPROVAL);
    for (who, how) in [
        ("agent-att-9", "hang up"),
        ("agent-att-9r", "revoke"),
        ("agent-att-9p", "reload"),
    ] {
        let t = token(who);
        let body = rolebinding(who);
        let head = k.head(
            "POST /apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
            &t,
            &format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ),
        );
        let go = k.dir.join(format!("{who}.go"));
        let spec = Raw {
            segments: vec![Segment {
                data: format!("{head}{body}").into_bytes(),
                wait_file: Some(go.clone()),
                ..Default::default()
            }],
            quiet: 10.0,
            no_read: how == "hang up",
            host: None,
        };
        std::thread::scope(|scope| {
            let client = scope.spawn(|| k.raw(spec));
            let held = |p: &Value| p["statement"].as_str().is_some_and(|s| s.contains(who));
            wait_until("the request held", Duration::from_secs(20), || {
                k.pending().iter().any(held)
            });
            let id = k
                .pending()
                .into_iter()
                .find(|p| held(p))
                .and_then(|p| p["id"].as_str().map(str::to_string))
                .expect("pending id");
            match how {
                "revoke" => {
                    let out = Command::new(agentgate_bin())
                        .args(["revoke", "--identity", who, "--reason", "attack test"])
                        .arg("--admin-socket")
                        .arg(k.gw.admin_socket())
                        .output()
                        .expect("revoke");
                    assert!(out.status.success(), "{}", text(&out));
                    std::thread::sleep(Duration::from_millis(500));
                }
                "reload" => {
                    // The same request is now denied outright; people approve the old ask.
                    k.reload(&k.policy.replace(
                        RBAC_APPROVAL,
                        &RBAC_APPROVAL.replace(
                            "    approval: {approvers: [oncall], timeout_secs: 60}\n",
                            "    effect: deny\n",
                        ),
                    ));
                    let approved = k.approvals(&["approve", &id]);
                    eprintln!("{who}: approved after the reload: {}", text(&approved));
                }
                _ => {}
            }
            std::fs::write(&go, "").expect("go");
            let got = client.join().expect("client");
            // Revoked: the session ends, the connection with it (no answer, or a refusal).
            // Reloaded: refused by the rule now in force.
            match how {
                "revoke" => assert!(
                    got.closed && !got.statuses().iter().any(|c| *c < 400),
                    "{who}: {}",
                    got.data
                ),
                "reload" => {
                    assert_eq!(got.statuses(), vec![403], "{who}: {}", got.data);
                    assert!(got.data.contains("rbac-needs-approval"), "{}", got.data);
                }
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(1000));
            if how != "reload" {
                // Withdrawn when its agent went: approving it is refused.
                let approved = k.approvals(&["approve", &id]);
                assert!(!approved.status.success(), "{who}: {}", text(&approved));
                assert!(
                    String::from_utf8_lossy(&approved.stderr).contains("cancelled"),
                    "{who}: {}",
                    text(&approved)
                );
                std::thread::sleep(Duration::from_millis(1500));
            }
            let entries = k.standin.log.entries();
            // (The gateway's own GET of the object, for the approvers' diff, is not it.)
            let sent = entries
                .iter()
                .any(|e| e.method != "GET" && e.path.contains("rolebindings"));
            assert!(
                !sent,
                "{who} ({how}): the held request reached the API server: {entries:?}"
            );
            assert!(k
                .standin
                .get("rbac.authorization.k8s.io", "rolebindings", "default", who)
                .is_none());
        });
    }

    // The approvers' diff reads the object as it is now with the gateway's own credential (no
    // impersonation), at a path made from the name in the agent's body. A name that is not one
    // path segment to the API server (an encoded `/` or `.`, a `?`) must not point that read
    // anywhere else: a Secret read with the gateway's credential and put before approvers, say.
    k.reload(&k.policy);
    let t = token("agent-att-9n");
    let before = k.standin.log.len();
    for name in [
        "x%2F..%2F..%2F..%2F..%2F..%2F..%2Fapi%2Fv1%2Fnamespaces%2Fdefault%2Fsecrets%2Fdb-credentials",
        "%2e%2e",
        "y?watch=1",
        "z#frag",
        "ok-9n",
    ] {
        let mut body: Value = serde_json::from_str(&rolebinding("n")).expect("json");
        body["metadata"]["name"] = Value::String(name.into());
        let body = body.to_string();
        let head = k.head(
            "POST /apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
            &t,
            &format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()),
        );
        // Held; the agent leaves after a moment (the read is made before the hold).
        let _ = k.raw(Raw {
            segments: vec![Segment {
                data: format!("{head}{body}").into_bytes(),
                sleep: 2.0,
                ..Default::default()
            }],
            quiet: 0.1,
            no_read: true,
            host: None,
        });
    }
    let reads: Vec<_> = k.standin.log.entries().into_iter().skip(before).collect();
    // (The plain name shows the diff's read is made: it is the only one.)
    assert!(!reads.is_empty(), "the approvers' diff read nothing");
    for e in &reads {
        assert!(
            e.path == "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings/ok-9n"
                && e.query.is_empty(),
            "the gateway's own read went to a path the name made: {} {}?{}",
            e.method,
            e.path,
            e.query
        );
    }
}

/// A plain HTTP target. `upstream_identity: pass-through`: the agent's verified token goes
/// on, and nothing else: a second `Authorization` header (which a server may read instead of
/// the first) is refused, never forwarded. And an approval given (deny-and-retry) for a request
/// with a body that is not text covers that body only: another body of the same length is not
/// "the identical request".
#[test]
fn plain_http_pass_through_and_opaque_bodies() {
    require_root();
    let _ = cgroup2_root();
    let (listen, port) = (20918, 20919);
    let tag = "att-passthrough";
    let dir = std::env::temp_dir().join(unique(&format!("{tag}-pki")));
    std::fs::create_dir_all(&dir).expect("dir");
    let agent_ca = Ca::new(&dir.join("agent"), "agentgate");
    let service_ca = Ca::new(&dir.join("service"), "service");
    let (cert, key) = service_ca.leaf("service", &["service.test"], &["127.0.0.2"]);
    let upstream = Upstream::start(
        format!("127.0.0.2:{port}").parse().expect("address"),
        Some((&cert, &key)),
    );
    let name = unique(tag);
    let _anchor = Cgroup::create(&format!("/{name}"));
    let agent = Cgroup::create(&format!("/{name}/job-1"));
    let policy = format!(
        "version: 2\ngateway:\n  listen_port: {listen}\n\
         identity_providers:\n  - name: test-idp\n    issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n\
         \x20   jwks: {{from: file, path: {jwks}}}\n    algorithms: [RS256]\n\
         workloads:\n  - name: agents\n    cgroup: \"/{name}/job-*\"\n    mode: host\n\
         \x20   token: {{from: credential}}\n\
         targets:\n  - name: service\n    protocol: http\n    addresses: [\"127.0.0.2\"]\n    ports: [{port}]\n\
         \x20   http:\n      upstream_identity: pass-through\n\
         \x20     tls: {{ca_cert: {ca_cert}, ca_key: {ca_key}, names: [service.test]}}\n\
         \x20     upstream_tls: {{mode: verify-full, ca_file: {service_ca}, server_name: service.test}}\n\
         \x20 - name: static\n    protocol: http\n    addresses: [\"127.0.0.3\"]\n    ports: [{port}]\n\
         \x20   http: {{upstream_tls: {{mode: disable}}}}\n\
         rules:\n  - name: agents-to-service\n    when: {{workloads: [agents], groups: [agents]}}\n    targets: [service, static]\n\
         \x20 - name: uploads-need-approval\n    targets: [service]\n    requests: {{methods: [POST], paths: [\"/upload*\"]}}\n\
         \x20   approval: {{approvers: [oncall], timeout_secs: 60, mode: deny_and_retry}}\n\
         \x20 - name: mask-pii\n    targets: [static]\n    mask: {{detectors: [email]}}\n",
        jwks = fixtures().join("test-jwks.json").display(),
        ca_cert = agent_ca.cert.display(),
        ca_key = agent_ca.key.display(),
        service_ca = service_ca.cert.display(),
    );
    let nginx = Nginx::start(&dir, &format!("127.0.0.3:{port}"));
    let gw = Gateway::start(tag, &policy);
    gw.wait_classified(&agent.rel);
    let t = token("agent-att-11");
    let forged = "forged-token-never-verified";
    let req = |extra: &str| {
        format!(
            "GET /hello HTTP/1.1\r\nHost: service.test\r\nAuthorization: Bearer {t}\r\n{extra}\r\n"
        )
    };
    let send = |data: String| {
        raw(
            &agent,
            &dir,
            port,
            Some(&agent_ca.cert),
            "service.test",
            Raw::send(data),
        )
    };
    // The plain case goes through with the agent's own token.
    let got = send(req(""));
    assert_eq!(got.statuses(), vec![200], "{}", got.data);
    // A second Authorization header, on the first request and on a later one.
    let got = send(req(&format!("Authorization: Bearer {forged}\r\n")));
    assert!(got.statuses().iter().all(|c| *c >= 400), "{}", got.data);
    let got = send(format!(
        "{}{}",
        req(""),
        req(&format!("authorization: Bearer {forged}\r\n"))
    ));
    assert_eq!(got.statuses().first(), Some(&200), "{}", got.data);
    assert!(
        got.statuses().iter().skip(1).all(|c| *c >= 400),
        "{}",
        got.data
    );

    // Deny-and-retry with a body that is not text: approved for body A, retried with body B.
    let upload = |body: &[u8]| {
        let mut r = format!(
            "POST /upload HTTP/1.1\r\nHost: service.test\r\nAuthorization: Bearer {t}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        raw(
            &agent,
            &dir,
            port,
            Some(&agent_ca.cert),
            "service.test",
            Raw::send(r),
        )
    };
    let (body_a, body_b) = (b"\xff\xfeBODY-A-0123456789", b"\xff\xfeBODY-B-0123456789");
    let got = upload(body_a);
    assert_eq!(got.statuses(), vec![403], "{}", got.data);
    let id = got
        .data
        .split("request ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .filter(|id| id.starts_with("ar-"))
        .unwrap_or_else(|| panic!("no request id: {}", got.data))
        .to_string();
    let approved = Command::new(agentgate_bin())
        .args(["approvals", "approve", &id])
        .arg("--admin-socket")
        .arg(gw.admin_socket())
        .output()
        .expect("approve");
    assert!(approved.status.success(), "{}", text(&approved));
    let got = upload(body_b);
    assert_eq!(
        got.statuses(),
        vec![403],
        "another body passed as the approved one: {}",
        got.data
    );
    let got = upload(body_a);
    assert_eq!(got.statuses(), vec![200], "the approved body: {}", got.data);

    let seen = upstream.requests();
    assert!(
        !seen
            .iter()
            .any(|r| r["body"].as_str().is_some_and(|b| b.contains("BODY-B"))),
        "a body nobody approved reached the service: {seen:?}"
    );
    assert!(!seen.is_empty());
    for r in &seen {
        assert_eq!(
            header_values(r, "authorization"),
            vec![format!("Bearer {t}")],
            "the service got an Authorization the gateway never verified: {r}"
        );
    }

    // Detector masking against byte ranges: nginx serves a file with an e-mail address in it;
    // whole, the address is masked. Asked for in pieces (`Range`), no piece holds a whole
    // address for the detector to find, and the agent puts them together.
    let whole = |extra: &str| {
        raw(
            &agent,
            &dir,
            port,
            None,
            "",
            Raw {
                host: Some("127.0.0.3"),
                ..Raw::send(format!(
                    "GET /contacts.txt HTTP/1.1\r\nHost: static\r\nAuthorization: Bearer {t}\r\n{extra}\r\n"
                ))
            },
        )
    };
    let got = whole("");
    assert_eq!(got.statuses(), vec![200], "{}", got.data);
    assert!(!got.data.contains(nginx.email), "{}", got.data);
    let mut pieces = String::new();
    // The address is bytes 21–44, its `@` byte 33: "alice.attack@exam" and "ple.com".
    for range in ["bytes=0-37", "bytes=38-99"] {
        let got = whole(&format!("Range: {range}\r\n"));
        if let Some((_, body)) = got.data.split_once("\r\n\r\n") {
            if got.statuses() == vec![206] {
                pieces.push_str(&dechunk(body));
            }
        }
    }
    assert!(
        !pieces.contains(nginx.email),
        "the address put together from byte ranges: {pieces:?}"
    );
    drop(gw);
}

/// A chunked body's data (the whole body when it is not chunked).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_string();
        };
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            return body.to_string();
        };
        if n == 0 || after.len() < n {
            return out;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
}

/// nginx serving a directory with one file that holds an e-mail address; stopped on drop.
struct Nginx {
    child: std::process::Child,
    email: &'static str,
}

impl Nginx {
    fn start(dir: &Path, listen: &str) -> Self {
        let email = "alice.attack@example.com";
        let www = dir.join("www");
        std::fs::create_dir_all(&www).expect("www");
        std::fs::write(
            www.join("contacts.txt"),
            format!("name: alice\ncontact: {email}\nend\n"),
        )
        .expect("file");
        let conf = dir.join("nginx.conf");
        let d = dir.display();
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nuser root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
                 events {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/cb;\n  proxy_temp_path {d}/pt;\n\
                 fastcgi_temp_path {d}/ft;\n  uwsgi_temp_path {d}/ut;\n  scgi_temp_path {d}/st;\n\
                 server {{\n    listen {listen};\n    root {www};\n  }}\n}}\n",
                www = www.display()
            ),
        )
        .expect("nginx.conf");
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nginx");
        wait_until("nginx listening", Duration::from_secs(10), || {
            std::net::TcpStream::connect(listen).is_ok()
        });
        Nginx { child, email }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
