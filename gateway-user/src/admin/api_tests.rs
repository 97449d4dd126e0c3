//! Every request and answer through serde and back, in the wire format the CLI and the HTTP
//! API have always used; anything else is an error.

use serde_json::json;

use super::*;
use crate::approval::Mode;

fn every_request() -> Vec<AdminRequest> {
    let target = |reason: Option<&str>| {
        (
            Some("agent-7".to_string()),
            Some("https://idp".to_string()),
            None,
            reason.map(str::to_string),
        )
    };
    let (subject, issuer, workload, reason) = target(Some("leaked"));
    let (s2, i2, w2, r2) = target(None);
    vec![
        AdminRequest::Status {},
        AdminRequest::ApprovalsList {
            state: StateFilter::All,
        },
        AdminRequest::ApprovalsList {
            state: StateFilter::Only(State::Expired),
        },
        AdminRequest::ApprovalsShow {
            id: "ar-0123456789ab".into(),
        },
        AdminRequest::ApprovalsDecide {
            id: "ar-0123456789ab".into(),
            verdict: Verdict::Approve,
            reason: None,
        },
        AdminRequest::ApprovalsDecide {
            id: "ar-0123456789ab".into(),
            verdict: Verdict::Deny,
            reason: Some("not today".into()),
        },
        AdminRequest::Revoke {
            subject,
            issuer,
            workload,
            reason,
        },
        AdminRequest::LiftRevocation {
            subject: s2,
            issuer: i2,
            workload: w2,
            reason: r2,
        },
        AdminRequest::Revocations {},
    ]
}

#[test]
fn every_request_round_trips() {
    let all = every_request();
    // A new variant must be added to `every_request` (and so to this test).
    let names: std::collections::BTreeSet<_> = all.iter().map(AdminRequest::name).collect();
    assert_eq!(names.len(), 7, "{names:?}");
    for req in all {
        let line = serde_json::to_string(&req).unwrap();
        let back: AdminRequest = serde_json::from_str(&line).unwrap();
        assert_eq!(back, req, "{line}");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["cmd"], req.name(), "{line}");
    }
}

#[test]
fn requests_keep_the_wire_format() {
    let cases = [
        (json!({"cmd": "status"}), AdminRequest::Status {}),
        (
            json!({"cmd": "approvals.list", "state": "pending"}),
            AdminRequest::ApprovalsList {
                state: StateFilter::Only(State::Pending),
            },
        ),
        (
            json!({"cmd": "approvals.list", "state": "all"}),
            AdminRequest::ApprovalsList {
                state: StateFilter::All,
            },
        ),
        (
            json!({"cmd": "approvals.show", "id": "ar-1"}),
            AdminRequest::ApprovalsShow { id: "ar-1".into() },
        ),
        (
            json!({"cmd": "approvals.decide", "id": "ar-1", "verdict": "deny", "reason": "no"}),
            AdminRequest::ApprovalsDecide {
                id: "ar-1".into(),
                verdict: Verdict::Deny,
                reason: Some("no".into()),
            },
        ),
        (
            json!({"cmd": "approvals.decide", "id": "ar-1", "verdict": "approve", "reason": null}),
            AdminRequest::ApprovalsDecide {
                id: "ar-1".into(),
                verdict: Verdict::Approve,
                reason: None,
            },
        ),
        (
            json!({"cmd": "revoke", "subject": null, "issuer": null, "workload": "w",
                   "reason": null}),
            AdminRequest::Revoke {
                subject: None,
                issuer: None,
                workload: Some("w".into()),
                reason: None,
            },
        ),
        (
            json!({"cmd": "revoke.lift", "subject": "a", "workload": null}),
            AdminRequest::LiftRevocation {
                subject: Some("a".into()),
                issuer: None,
                workload: None,
                reason: None,
            },
        ),
        (json!({"cmd": "revocations"}), AdminRequest::Revocations {}),
    ];
    for (wire, req) in cases {
        assert_eq!(
            serde_json::from_value::<AdminRequest>(wire.clone()).unwrap(),
            req,
            "{wire}"
        );
    }
}

#[test]
fn an_unknown_request_is_an_error_never_a_default() {
    let refused = |wire: Value| {
        serde_json::from_value::<AdminRequest>(wire.clone())
            .map(|r| panic!("{wire} was taken as {r:?}"))
            .unwrap_err()
            .to_string()
    };
    let e = refused(json!({"cmd": "reboot"}));
    assert!(e.contains("unknown variant `reboot`"), "{e}");
    assert!(e.contains("`approvals.list`"), "names what is known: {e}");
    assert!(refused(json!({"id": "ar-1"})).contains("missing field `cmd`"));
    assert!(refused(json!({"cmd": null})).contains("invalid type"));
    assert!(refused(json!("status")).contains("invalid type"));
    // Known, but not as asked: a missing or mistyped field, an unknown verdict or state, a
    // field the request does not have (a typo must not be dropped quietly).
    assert!(refused(json!({"cmd": "approvals.show"})).contains("missing field `id`"));
    assert!(refused(json!({"cmd": "approvals.list"})).contains("missing field `state`"));
    let e = refused(json!({"cmd": "approvals.decide", "id": "ar-1", "verdict": "maybe"}));
    assert!(e.contains("unknown variant `maybe`"), "{e}");
    let e = refused(json!({"cmd": "approvals.list", "state": "lost"}));
    assert!(e.contains("unknown state `lost`"), "{e}");
    let e = refused(json!({"cmd": "revoke", "subjet": "agent-7"}));
    assert!(e.contains("unknown field `subjet`"), "{e}");
    let e = refused(json!({"cmd": "status", "verbose": true}));
    assert!(e.contains("unknown field `verbose`"), "{e}");
    let e = refused(json!({"cmd": "revocations", "subject": "a"}));
    assert!(e.contains("unknown field `subject`"), "{e}");
}

fn request() -> Request {
    Request {
        id: "ar-0123456789ab".into(),
        state: State::Approved,
        created_ms: 1_000,
        expires_ms: 61_000,
        decided_ms: Some(2_000),
        session: "s1".into(),
        issuer: "https://idp".into(),
        subject: "agent-7".into(),
        workload: "w".into(),
        target: "pg".into(),
        action: crate::approval::Action {
            protocol: "postgres".into(),
            namespace: "db".into(),
            text: "DROP TABLE t".into(),
            params: vec![Some("1".into()), None],
            class: "ddl".into(),
        },
        rule: "drops".into(),
        approvers: vec!["dba".into()],
        quorum: 1,
        mode: Mode::Hold,
        retry_window_ms: 0,
        retry_used_ms: None,
        // Never on the wire (see `Request`), so empty after a round trip.
        retry_key: String::new(),
        reason: None,
        votes: serde_json::from_value(json!([{"approver": "root", "issuer": "local",
            "via": "local", "verdict": "approve", "at_ms": 2_000, "reason": "planned"}]))
        .unwrap(),
        trial_rows: Some(3),
    }
}

fn revocation() -> Revocation {
    Revocation {
        subject: Some("agent-7".into()),
        issuer: None,
        workload: Some("w".into()),
        reason: "leaked".into(),
        at_ms: 5,
        by: "root".into(),
    }
}

#[test]
fn every_answer_round_trips() {
    let status = Status {
        pid: 42,
        policy: PolicyState {
            dir: "/etc/agentgate".into(),
            version: "v7".into(),
            generation: 3,
            loaded_at_ms: 9,
            last_error: Some(ReloadRefused {
                at_ms: 10,
                message: "a.yaml:1:2: bad".into(),
            }),
        },
        sessions: 2,
        capture_error: None,
    };
    let cases = [
        (AdminRequest::Status {}, AdminResponse::Status(status)),
        (
            AdminRequest::ApprovalsList {
                state: StateFilter::All,
            },
            AdminResponse::Requests(RequestList {
                requests: vec![request()],
                truncated: false,
            }),
        ),
        (
            AdminRequest::ApprovalsShow { id: "x".into() },
            AdminResponse::Request(Box::new(request())),
        ),
        (
            AdminRequest::ApprovalsDecide {
                id: "x".into(),
                verdict: Verdict::Approve,
                reason: None,
            },
            AdminResponse::Request(Box::new(request())),
        ),
        (
            AdminRequest::Revocations {},
            AdminResponse::Revocations(RevocationList {
                revocations: vec![revocation()],
            }),
        ),
        (
            AdminRequest::Revoke {
                subject: Some("a".into()),
                issuer: None,
                workload: None,
                reason: None,
            },
            AdminResponse::Revoked(Revoked { ended_sessions: 2 }),
        ),
        (
            AdminRequest::LiftRevocation {
                subject: Some("a".into()),
                issuer: None,
                workload: None,
                reason: None,
            },
            AdminResponse::Lifted(Lifted { lifted: 1 }),
        ),
    ];
    for (req, answer) in cases {
        let line = serde_json::to_string(&answer).unwrap();
        let back = AdminResponse::decode_answer(&req, serde_json::from_str(&line).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(back, answer, "{line}");
    }
}

#[test]
fn answers_keep_the_wire_format() {
    // What `--json` prints and what the tests and the HTTP API's callers read.
    let v = serde_json::to_value(AdminResponse::Revoked(Revoked { ended_sessions: 2 })).unwrap();
    assert_eq!(v, json!({"ended_sessions": 2}));
    let v = serde_json::to_value(AdminResponse::Lifted(Lifted { lifted: 1 })).unwrap();
    assert_eq!(v, json!({"lifted": 1}));
    let v = serde_json::to_value(AdminResponse::Requests(RequestList {
        requests: vec![],
        truncated: true,
    }))
    .unwrap();
    assert_eq!(v, json!({"requests": [], "truncated": true}));
    let v = serde_json::to_value(AdminResponse::Request(Box::new(request()))).unwrap();
    assert_eq!(v, serde_json::to_value(request()).unwrap());
    assert_eq!(v["id"], "ar-0123456789ab");
    assert!(v.get("retry_key").is_none(), "{v}");
}

#[test]
fn a_failure_is_read_as_one_and_a_wrong_answer_is_an_error() {
    let req = AdminRequest::ApprovalsShow { id: "x".into() };
    let failed = AdminResponse::decode_answer(
        &req,
        json!({"error": "no approval request `x`", "reason": "unknown_request"}),
    )
    .unwrap()
    .unwrap_err();
    assert_eq!(failed.reason, "unknown_request");
    assert_eq!(failed.error, "no approval request `x`");
    // A revocation answer to a status request is not taken for a status.
    assert!(AdminResponse::decode_answer(&AdminRequest::Status {}, json!({"lifted": 1})).is_err());
    assert!(AdminResponse::decode_answer(&req, json!({"ended_sessions": 1})).is_err());
}

#[test]
fn status_is_the_reloaders_status_as_it_was_sent() {
    // The socket used to send the reloader's `PolicyStatus` itself: the admin API's copy must
    // stay field for field the same (tests and scripts read `policy.version`,
    // `policy.last_error.message`, `sessions`).
    let reloader = crate::policy::PolicyStatus {
        dir: "/etc/agentgate".into(),
        version: "v7".into(),
        generation: 3,
        loaded_at_ms: 9,
        last_error: None,
    };
    let ours = PolicyState {
        dir: "/etc/agentgate".into(),
        version: "v7".into(),
        generation: 3,
        loaded_at_ms: 9,
        last_error: Some(ReloadRefused {
            at_ms: 10,
            message: "a.yaml:1:2: bad".into(),
        }),
    };
    let mut expected = serde_json::to_value(&reloader).unwrap();
    expected["last_error"] = json!({"at_ms": 10, "message": "a.yaml:1:2: bad"});
    assert_eq!(serde_json::to_value(&ours).unwrap(), expected);
    let status = Status {
        pid: 42,
        policy: ours,
        sessions: 2,
        capture_error: Some("cgroup gone".into()),
    };
    assert_eq!(
        serde_json::to_value(AdminResponse::Status(status)).unwrap(),
        json!({"pid": 42, "policy": expected, "sessions": 2, "capture_error": "cgroup gone"})
    );
}
