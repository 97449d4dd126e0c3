//! The approval service over a real SQLite file: who may decide, quorum, modes, expiry and
//! what a restart leaves.

use std::{path::Path, sync::Arc, time::Duration};

use tokio::sync::watch;

use super::*;
use crate::{policy::Policy, record::EventSink};

fn open(db: &Path) -> Arc<Approvals> {
    let (_tx, policy) = watch::channel(Arc::new(Policy::default()));
    let events = Arc::new(EventSink::disabled());
    Approvals::open(
        crate::record::Db::open(db).unwrap(),
        Notifier::new(
            policy,
            crate::net::http::HttpClient::uncaptured(),
            events.clone(),
        ),
        events,
    )
    .unwrap()
}

fn new(mode: Mode, quorum: u32, timeout: Duration, key: &str) -> NewRequest {
    NewRequest {
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
        spec: ApprovalSpec {
            approvers: vec!["dba".into()],
            quorum,
            timeout,
            mode,
            retry_window: Duration::from_secs(60),
            max_rows: None,
        },
        retry_key: key.into(),
        trial_rows: None,
    }
}

fn person(sub: &str, groups: &[&str]) -> Approver {
    Approver::Oidc {
        issuer: "https://idp".into(),
        subject: sub.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

fn held(gate: Gate) -> super::service::Held {
    match gate {
        Gate::Held(h) => h,
        _ => panic!("expected a held statement"),
    }
}

#[tokio::test]
async fn quorum_counts_each_eligible_approver_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("r.db"));
    let mut h = held(
        a.submit(new(Mode::Hold, 2, Duration::from_secs(60), "k"))
            .unwrap(),
    );
    let id = h.request().id;
    assert!(id.starts_with("ar-") && id.len() == 15, "{id}");
    let err = |r: Result<Request, ApprovalError>| r.unwrap_err().code();
    // The requester, someone outside the groups: refused, nothing counted.
    assert_eq!(
        err(a.decide(&id, &person("agent-7", &["dba"]), Verdict::Approve, None)),
        "self_approval"
    );
    assert_eq!(
        err(a.decide(&id, &person("eve", &["dev"]), Verdict::Approve, None)),
        "unknown_request"
    );
    let r = a
        .decide(&id, &person("alice", &["dba"]), Verdict::Approve, None)
        .unwrap();
    assert_eq!((r.state, r.approvals()), (State::Pending, 1));
    assert_eq!(
        err(a.decide(&id, &person("alice", &["dba"]), Verdict::Approve, None)),
        "already_counted"
    );
    // The same subject from another issuer is another person.
    let other_idp = Approver::Oidc {
        issuer: "https://other".into(),
        subject: "alice".into(),
        groups: vec!["dba".into()],
    };
    let r = a
        .decide(&id, &other_idp, Verdict::Approve, Some("ok".into()))
        .unwrap();
    assert_eq!(r.state, State::Approved);
    assert_eq!(h.decided().await.state, State::Approved);
    assert_eq!(
        err(a.decide(
            &id,
            &person("bob", &["dba"]),
            Verdict::Deny,
            Some("late".into())
        )),
        "not_pending"
    );
    // Stored with every vote.
    let stored = a.get(&id).unwrap();
    assert_eq!(stored.votes.len(), 2);
    assert_eq!(stored.action.params, vec![Some("1".to_string()), None]);
}

#[tokio::test]
async fn one_denial_denies_and_needs_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("r.db"));
    let mut h = held(
        a.submit(new(Mode::Hold, 2, Duration::from_secs(60), "k"))
            .unwrap(),
    );
    let id = h.request().id;
    let local = Approver::Local {
        user: "root".into(),
    };
    assert_eq!(
        a.decide(&id, &local, Verdict::Deny, Some("  ".into()))
            .unwrap_err()
            .code(),
        "bad_request"
    );
    a.decide(&id, &local, Verdict::Approve, None).unwrap();
    let r = a
        .decide(
            &id,
            &person("bob", &["dba"]),
            Verdict::Deny,
            Some("not today".into()),
        )
        .unwrap();
    assert_eq!(r.state, State::Denied);
    let d = h.decided().await;
    assert_eq!(
        (d.state, d.reason.as_deref()),
        (State::Denied, Some("not today"))
    );
}

#[tokio::test]
async fn timeout_expires_and_dropping_the_hold_cancels() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("r.db"));
    let mut h = held(
        a.submit(new(Mode::Hold, 1, Duration::from_millis(200), "k"))
            .unwrap(),
    );
    let d = h.decided().await;
    assert_eq!(d.state, State::Expired);
    assert!(d.reason.unwrap().contains("no decision"));
    let h = held(
        a.submit(new(Mode::Hold, 1, Duration::from_secs(60), "k"))
            .unwrap(),
    );
    let id = h.request().id;
    drop(h);
    let r = a.get(&id).unwrap();
    assert_eq!(r.state, State::Cancelled);
    assert_eq!(
        a.decide(
            &id,
            &Approver::Local {
                user: "root".into()
            },
            Verdict::Approve,
            None
        )
        .unwrap_err()
        .code(),
        "not_pending"
    );
}

#[tokio::test]
async fn deny_and_retry_lets_the_identical_statement_through_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("r.db"));
    // What a deny_and_retry submission of statement `key` gets: "pass" or "refused", and the
    // request it names.
    let retry = |key: &str| match a
        .submit(new(Mode::DenyAndRetry, 1, Duration::from_secs(60), key))
        .unwrap()
    {
        Gate::Pass(r) => ("pass", r.id),
        Gate::Refused(r) => ("refused", r.id),
        Gate::Held(_) => panic!("deny_and_retry never holds"),
    };
    let (gate, first) = retry("same");
    assert_eq!(gate, "refused", "refused at once");
    // Retried before a decision: the same request, no second one.
    assert_eq!(retry("same"), ("refused", first.clone()));
    // Another statement is another request.
    let (gate, other) = retry("other");
    assert_eq!(gate, "refused");
    assert_ne!(other, first);
    a.decide(&first, &person("alice", &["dba"]), Verdict::Approve, None)
        .unwrap();
    assert_eq!(
        retry("same"),
        ("pass", first.clone()),
        "approved retry passes"
    );
    // Once only: a second use is a new request.
    let (gate, again) = retry("same");
    assert_eq!(gate, "refused");
    assert_ne!(again, first);
    assert!(a.get(&first).unwrap().retry_used_ms.is_some());
}

#[test]
fn a_restart_cancels_held_requests_and_keeps_retry_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    // The first life runs on a runtime of its own, dropped with its timers as a dying process
    // loses them: only the second life's resume() can expire the retry request.
    let first = runtime();
    let (hold_id, retry_id) = first.block_on(async {
        let a = open(&db);
        let h = held(
            a.submit(new(Mode::Hold, 1, Duration::from_secs(60), "h"))
                .unwrap(),
        );
        let r = match a
            .submit(new(Mode::DenyAndRetry, 1, Duration::from_secs(1), "r"))
            .unwrap()
        {
            Gate::Refused(r) => r,
            _ => panic!(),
        };
        let id = h.request().id;
        // The process dies with the statement held: no cancellation is written.
        std::mem::forget(h);
        (id, r.id)
    });
    drop(first);
    runtime().block_on(async {
        let a = open(&db);
        a.resume().unwrap();
        let h = a.get(&hold_id).unwrap();
        assert_eq!(h.state, State::Cancelled);
        assert!(h.reason.unwrap().contains("restarted"));
        assert_eq!(a.get(&retry_id).unwrap().state, State::Pending);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(a.get(&retry_id).unwrap().state, State::Expired);
    });
}

/// After a handover two processes share the record: the successor decides a request the old
/// process holds a statement for, and the old one's statement learns it from the store.
#[tokio::test]
async fn a_decision_stored_by_another_process_reaches_the_held_statement() {
    let dir = tempfile::tempdir().unwrap();
    let old = open(&dir.path().join("r.db"));
    let successor = open(&dir.path().join("r.db"));
    let mut h = held(
        old.submit(new(Mode::Hold, 1, Duration::from_secs(60), "k"))
            .unwrap(),
    );
    let id = h.request().id;
    assert_eq!(old.take_decisions_from_store(), 0, "still pending");
    successor
        .decide(&id, &person("dba-1", &["dba"]), Verdict::Approve, None)
        .unwrap();
    // Not until the old process reads the store (its own watch knows nothing yet).
    assert!(
        tokio::time::timeout(Duration::from_millis(100), h.decided())
            .await
            .is_err(),
        "the old process cannot have heard of it yet"
    );
    assert_eq!(old.take_decisions_from_store(), 1);
    let r = tokio::time::timeout(Duration::from_secs(1), h.decided())
        .await
        .expect("delivered");
    assert_eq!(r.state, State::Approved);
    assert_eq!(old.take_decisions_from_store(), 0, "delivered once");
}
