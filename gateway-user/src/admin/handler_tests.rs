//! The one handler with a real approval store: what root on the node may do and what a person
//! with a token may not, over the Unix socket as the CLI uses it.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::watch;

use super::*;
use crate::{
    admin::api::{PolicyState, StateFilter},
    approval::{ApprovalSpec, Gate, Mode, NewRequest, Notifier, Verdict},
};

/// A gateway with no sessions that keeps what it is told to revoke.
#[derive(Default)]
pub(crate) struct NoGateway {
    revoked: Mutex<Vec<Revocation>>,
}

impl Node for NoGateway {
    fn status(&self) -> Status {
        Status {
            pid: 1,
            policy: PolicyState {
                dir: "/p".into(),
                version: "v1".into(),
                generation: 1,
                loaded_at_ms: 0,
                last_error: None,
            },
            sessions: 0,
            capture_error: None,
        }
    }
    fn revoke(&self, r: Revocation) -> Result<usize, String> {
        self.revoked.lock().unwrap().push(r);
        Ok(0)
    }
    fn lift(&self, r: &Revocation) -> Result<usize, String> {
        let mut list = self.revoked.lock().unwrap();
        let before = list.len();
        list.retain(|x| (&x.subject, &x.workload) != (&r.subject, &r.workload));
        Ok(before - list.len())
    }
    fn revocations(&self) -> Vec<Revocation> {
        self.revoked.lock().unwrap().clone()
    }
}

fn admin(dir: &std::path::Path) -> Admin {
    let (_tx, policy) = watch::channel(Arc::new(crate::policy::Policy::default()));
    let events = Arc::new(crate::record::EventSink::disabled());
    let approvals = Approvals::open(
        crate::record::Db::open(&dir.join("r.db")).unwrap(),
        Notifier::new(
            policy,
            crate::net::http::HttpClient::uncaptured(),
            events.clone(),
        ),
        events,
    )
    .unwrap();
    Admin {
        approvals,
        node: Arc::new(NoGateway::default()),
    }
}

/// A pending request for the approver group `group`; its id.
fn pending(admin: &Admin, group: &str) -> String {
    let gate = admin
        .approvals
        .submit(NewRequest {
            session: "s".into(),
            issuer: "https://idp".into(),
            subject: "agent".into(),
            workload: "w".into(),
            target: "pg".into(),
            action: crate::approval::Action {
                protocol: "postgres".into(),
                namespace: "db".into(),
                text: "DROP TABLE t".into(),
                params: vec![],
                class: "ddl".into(),
            },
            rule: "r".into(),
            spec: ApprovalSpec {
                approvers: vec![group.into()],
                quorum: 1,
                timeout: Duration::from_secs(60),
                mode: Mode::DenyAndRetry,
                retry_window: Duration::from_secs(60),
                max_rows: None,
            },
            retry_key: format!("k-{group}"),
            trial_rows: None,
        })
        .unwrap();
    match gate {
        Gate::Refused(r) => r.id,
        _ => panic!("expected the request to wait"),
    }
}

fn root() -> Approver {
    Approver::Local {
        user: "root".into(),
    }
}

fn person(groups: &[&str]) -> Approver {
    Approver::Oidc {
        issuer: "https://idp".into(),
        subject: "alice".into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

#[test]
fn a_person_sees_only_their_groups_and_cannot_use_the_nodes_commands() {
    let dir = tempfile::tempdir().unwrap();
    let a = admin(dir.path());
    let dba = pending(&a, "dba");
    let ops = pending(&a, "ops");
    let all = AdminRequest::ApprovalsList {
        state: StateFilter::All,
    };
    let ids = |answer: AdminResponse| match answer {
        AdminResponse::Requests(l) => l.requests.into_iter().map(|r| r.id).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    let mut seen = ids(a.handle(all.clone(), &root()).unwrap());
    seen.sort();
    let mut both = vec![dba.clone(), ops.clone()];
    both.sort();
    assert_eq!(seen, both);
    assert_eq!(
        ids(a.handle(all, &person(&["dba"])).unwrap()),
        vec![dba.clone()]
    );
    let show = |id: &str| AdminRequest::ApprovalsShow { id: id.into() };
    assert!(a.handle(show(&ops), &root()).is_ok());
    assert!(matches!(
        a.handle(show(&ops), &person(&["dba"])),
        Err(Refusal::Approval(ApprovalError::UnknownRequest(_)))
    ));
    let revoke = AdminRequest::Revoke {
        subject: Some("agent".into()),
        issuer: None,
        workload: None,
        reason: None,
    };
    for req in [
        AdminRequest::Status {},
        revoke.clone(),
        AdminRequest::Revocations {},
    ] {
        let e = a.handle(req, &person(&["dba"])).unwrap_err();
        assert_eq!(e.code(), "forbidden", "{e}");
    }
    assert!(a.handle(AdminRequest::Status {}, &root()).is_ok());
    assert!(matches!(
        a.handle(revoke, &root()),
        Ok(AdminResponse::Revoked(_))
    ));
}

#[test]
fn a_decision_is_the_callers_and_a_revocation_needs_a_target() {
    let dir = tempfile::tempdir().unwrap();
    let a = admin(dir.path());
    let id = pending(&a, "dba");
    let decide = AdminRequest::ApprovalsDecide {
        id: id.clone(),
        verdict: Verdict::Approve,
        reason: Some("ok".into()),
    };
    match a.handle(decide, &root()).unwrap() {
        AdminResponse::Request(r) => {
            assert_eq!(r.votes[0].approver, "root");
            assert_eq!(r.votes[0].via, "local");
        }
        other => panic!("{other:?}"),
    }
    // Nobody named: refused, not taken as "everyone"; empty names are no names.
    let e = a
        .handle(
            AdminRequest::Revoke {
                subject: Some(String::new()),
                issuer: Some("https://idp".into()),
                workload: None,
                reason: None,
            },
            &root(),
        )
        .unwrap_err();
    assert!(matches!(e, Refusal::NoRevocationTarget), "{e}");
    let ok = a.handle(
        AdminRequest::Revoke {
            subject: None,
            issuer: None,
            workload: Some("w".into()),
            reason: Some(String::new()),
        },
        &root(),
    );
    assert!(ok.is_ok());
    match a.handle(AdminRequest::Revocations {}, &root()).unwrap() {
        AdminResponse::Revocations(l) => {
            assert_eq!(l.revocations.len(), 1);
            assert_eq!(l.revocations[0].by, "root");
            assert_eq!(l.revocations[0].reason, "no reason given");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_socket_answers_typed_requests_and_refuses_unknown_ones() {
    let dir = tempfile::tempdir().unwrap();
    let a = Arc::new(admin(dir.path()));
    let id = pending(&a, "dba");
    let path = dir.path().join("admin.sock");
    let listener = crate::admin::bind(&path).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(crate::admin::serve(listener, a, stop.clone()));

    let p = path.clone();
    let (shown, status, refused, raw) = tokio::task::spawn_blocking(move || {
        let shown = crate::admin::request(&p, &AdminRequest::ApprovalsShow { id });
        let status = crate::admin::request(&p, &AdminRequest::Status {});
        let refused = crate::admin::request(
            &p,
            &AdminRequest::ApprovalsShow {
                id: "ar-nothere".into(),
            },
        );
        // What an unknown command gets, on the wire.
        use std::io::{BufRead, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&p).unwrap();
        s.write_all(b"{\"cmd\": \"reboot\"}\n").unwrap();
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line).unwrap();
        (shown, status, refused, line)
    })
    .await
    .unwrap();
    assert!(matches!(shown, Ok(AdminResponse::Request(_))), "{shown:?}");
    assert!(matches!(status, Ok(AdminResponse::Status(_))), "{status:?}");
    match refused {
        Err(crate::admin::AdminError::Refused(f)) => {
            assert_eq!(f.reason, "unknown_request");
            assert_eq!(f.error, "no approval request `ar-nothere`");
        }
        other => panic!("{other:?}"),
    }
    let raw: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(raw["reason"], "bad_request", "{raw}");
    let e = raw["error"].as_str().unwrap();
    assert!(
        e.starts_with("bad request: unknown variant `reboot`"),
        "{e}"
    );
    stop.cancel();
}

/// Console roles: auditors read revocations, admins make and lift them (on record as the
/// admin's `issuer#subject`); the node's status stays root's whatever the role.
#[test]
fn console_admins_revoke_auditors_read_nobody_else() {
    use crate::policy::ConsoleRole::{Admin as AdminRole, Approver as ApproverRole, Auditor};
    let dir = tempfile::tempdir().unwrap();
    let a = admin(dir.path());
    let who = person(&["admins"]);
    let revoke = AdminRequest::Revoke {
        subject: Some("agent".into()),
        issuer: None,
        workload: None,
        reason: Some("leaked".into()),
    };
    let lift = AdminRequest::LiftRevocation {
        subject: Some("agent".into()),
        issuer: None,
        workload: None,
        reason: None,
    };
    for role in [ApproverRole, Auditor] {
        for req in [revoke.clone(), lift.clone()] {
            let e = a.handle_as(req, &who, role).unwrap_err();
            assert!(matches!(e, Refusal::Forbidden(_, AdminRole)), "{e}");
        }
    }
    assert!(a
        .handle_as(AdminRequest::Revocations {}, &who, ApproverRole)
        .is_err());
    assert!(matches!(
        a.handle_as(revoke, &who, AdminRole),
        Ok(AdminResponse::Revoked(_))
    ));
    let Ok(AdminResponse::Revocations(list)) =
        a.handle_as(AdminRequest::Revocations {}, &who, Auditor)
    else {
        panic!("an auditor reads the revocations")
    };
    assert_eq!(
        list.revocations[0].by,
        format!("{}#{}", who.issuer(), who.name())
    );
    assert!(matches!(
        a.handle_as(lift, &who, AdminRole),
        Ok(AdminResponse::Lifted(_))
    ));
    for role in [ApproverRole, Auditor, AdminRole] {
        assert!(matches!(
            a.handle_as(AdminRequest::Status {}, &who, role),
            Err(Refusal::LocalOnly(_))
        ));
    }
}
