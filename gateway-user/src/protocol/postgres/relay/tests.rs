//! Unit tests of the relay: arbitrary client messages, row counts, parameters, markers.

use super::{
    downward::{command_rows, denial_of},
    *,
};
use crate::protocol::postgres::classify::classify;

use crate::record::NullStore;

/// An approval service over a throwaway store (the test policy has no approval rules).
fn test_approvals() -> Arc<Approvals> {
    let dir = tempfile::tempdir().unwrap();
    let (_tx, policy) = watch::channel(denying_policy());
    let events = Arc::new(crate::record::EventSink::disabled());
    let a = Approvals::open(
        crate::record::Db::open(&dir.path().join("a.db")).unwrap(),
        crate::approval::Notifier::new(
            policy,
            crate::net::http::HttpClient::uncaptured(),
            events.clone(),
        ),
        events,
    )
    .unwrap();
    // The store stays open on the unlinked file.
    drop(dir);
    a
}

/// A policy whose statement rule denies DDL (and so every opaque statement) on target `t`.
fn denying_policy() -> Arc<Policy> {
    static POLICY: std::sync::OnceLock<Arc<Policy>> = std::sync::OnceLock::new();
    POLICY
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(
                dir.path().join("p.yaml"),
                "version: 2\nidentity_providers:\n  - name: i\n    issuer: i\n    audiences: [a]\n    jwks: {from: file, path: /nonexistent}\n    algorithms: [RS256]\n\
                 targets:\n  - name: t\n    protocol: postgres\n    addresses: [127.0.0.3]\n    ports: [5432]\n    credential: {from: env, name: X}\n    postgres: {user: u, upstream_tls: {mode: disable}}\n\
                 rules:\n  - name: no-ddl\n    effect: deny\n    targets: [t]\n    statements: {classes: [ddl]}\n",
            )
            .unwrap();
            Arc::new(crate::policy::load_dir(dir.path()).unwrap())
        })
        .clone()
}

proptest::proptest! {
    /// Whatever an agent sends, each message is forwarded, replaced or refused with an
    /// error; the relay's decoding never panics, and a Query or Parse the classifier cannot
    /// read is never forwarded as it was (the statement rule denies opaque statements).
    #[test]
    fn arbitrary_client_messages_never_panic(
        msgs in proptest::collection::vec(
            (
                proptest::sample::select(b"QPBECFSDHXdcfpy".to_vec()),
                // Mostly well-formed fields (SQL-ish strings, each NUL-terminated), then
                // arbitrary bytes: enough structure to reach the decisions, not only the
                // decoding errors.
                "[a-zA-Z0-9 ;$'()*_.-]{0,40}",
                "[a-zA-Z0-9 ;$'()*_.-]{0,40}",
                proptest::collection::vec(proptest::num::u8::ANY, 0..24),
            ),
            1..12,
        )
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (_tx, policy) = watch::channel(denying_policy());
        let classifier = Classifier::new(16);
        let recorder = rt.block_on(async { Recorder::start(NullStore) });
        let ctx = SessionContext {
            session: "s".into(),
            issuer: "i".into(),
            subject: "a".into(),
            groups: vec![],
            workload: "w".into(),
            target: "t".into(),
            policy,
            classifier: &classifier,
            recorder: &recorder,
            gate: crate::proxy::Gate::open_ended(),
            max_message: 1 << 20,
            catalog: Arc::new(Catalog::new(
                Arc::new(|| Box::pin(async { Err("no catalog in this test".to_string()) })),
                Default::default(),
            )),
            approvals: test_approvals(),
            database: "db".into(),
            cancels: watch::channel(0).1,
            results_cap: ResultsCap { rows: 0, bytes: 0 },
        };
        let counters = Counters::default();
        let shared = Shared::new("agentgate_denied_0_".into());
        let mut up = Upward { ctx: &ctx, shared: &shared, counters: &counters, statements: HashMap::new(), portals: HashMap::new(), plan: PlanCache::default(), prefix: None, batch: 0, batch_open: false, copy_possible: false, parses: HashMap::new(), open_binds: HashMap::new(), next_bind: 1, next_parse: 1, approved: None, queued: VecDeque::new(), queued_bytes: 0, next_refusal_code: None, trial: None, triable: false, trial_rows: None };
        let mut agent = BufReader::new(tokio::io::empty());
        let mut target = tokio::io::sink();
        let opaque_sent = rt.block_on(async {
            let mut opaque_sent = Vec::new();
            for (tag, first, second, tail) in msgs {
                let frame = Frame::build(tag, |b| {
                    put_cstr(b, &first);
                    put_cstr(b, &second);
                    b.extend_from_slice(&tail);
                });
                let text = match tag {
                    b'Q' => Fields::new(&frame).cstr().ok().map(str::to_string),
                    b'P' => {
                        let mut f = Fields::new(&frame);
                        f.cstr().ok().and_then(|_| f.cstr().ok()).map(str::to_string)
                    }
                    _ => None,
                };
                let original = frame.bytes.clone();
                if let Ok(forwarded) = up.inspect(frame, &mut agent, &mut target).await {
                    let opaque = text.is_some_and(|t| classify(&t).class == Class::Opaque);
                    if opaque && forwarded.bytes == original {
                        opaque_sent.push(original);
                    }
                }
            }
            opaque_sent
        });
        proptest::prop_assert!(opaque_sent.is_empty(), "forwarded unread: {:?}", opaque_sent);
    }
}

#[test]
fn row_counts_from_command_tags() {
    let cc = |t: &str| Frame::build(b'C', |b| put_cstr(b, t));
    assert_eq!(command_rows(&cc("SELECT 3")), Some(3));
    assert_eq!(command_rows(&cc("INSERT 0 5")), Some(5));
    assert_eq!(command_rows(&cc("CREATE TABLE")), None);
    assert_eq!(command_rows(&cc("BEGIN")), None);
}

#[test]
fn bind_params_text_binary_null_and_truncated() {
    let big = vec![b'a'; PARAM_CAP + 10];
    let bind = Frame::build(b'B', |b| {
        put_cstr(b, "");
        put_cstr(b, "s");
        b.put_i16(3);
        b.put_i16(0);
        b.put_i16(1);
        b.put_i16(0);
        b.put_i16(3);
        b.put_i32(2);
        b.put_slice(b"42");
        b.put_i32(2);
        b.put_slice(&[0xde, 0xad]);
        b.put_i32(big.len() as i32);
        b.put_slice(&big);
        b.put_i16(0);
    });
    let mut f = Fields::new(&bind);
    f.cstr().unwrap();
    f.cstr().unwrap();
    let p = bind_params(&mut f, None).unwrap();
    assert_eq!(p.shown[0].as_deref(), Some("42"));
    assert_eq!(p.shown[1].as_deref(), Some("\\xdead"));
    assert_eq!(
        p.shown[2].as_ref().unwrap().len(),
        PARAM_CAP + '…'.len_utf8()
    );
    assert!(p.cut, "a value longer than shown is flagged");
    // What a retry must repeat: every byte and the format, not what is shown.
    let digest = |format: i16, value: &[u8]| {
        let frame = Frame::build(b'B', |b| {
            b.put_i16(1);
            b.put_i16(format);
            b.put_i16(1);
            b.put_i32(value.len() as i32);
            b.put_slice(value);
        });
        bind_params(&mut Fields::new(&frame), None).unwrap()
    };
    let (a, b) = (digest(0, b"\\xdead"), digest(1, &[0xde, 0xad]));
    assert_eq!(
        a.shown, b.shown,
        "text `\\xdead` and binary 0xdead look alike"
    );
    assert_ne!(a.digest, b.digest, "but are different parameters");
    let mut long = big.clone();
    let (c, d) = (digest(0, &long), {
        long.push(b'!');
        digest(0, &long)
    });
    assert_eq!(c.shown, d.shown);
    assert_ne!(c.digest, d.digest, "bytes past the cut count");
    assert!(!a.cut);
    // A length past the end of the message is an error, not a panic.
    let short = Frame::build(b'B', |b| {
        b.put_i16(0);
        b.put_i16(1);
        b.put_i32(100);
    });
    assert!(bind_params(&mut Fields::new(&short), None).is_err());
}

#[test]
fn only_this_sessions_marker_is_a_denial() {
    let shared = Shared::new("agentgate_denied_00ff_".into());
    shared.denials().insert(
        0xabc,
        Denial {
            code: "42501",
            rule: "no-ddl".into(),
            classified: Arc::new(Classified::opaque("x")),
            message: None,
        },
    );
    let err = |m: &str| Notice {
        fields: vec![(b'C', "42601".into()), (b'M', m.into())],
    };
    assert!(denial_of(
        &shared,
        &err("syntax error at or near \"agentgate_denied_11ff_0000000000000abc\"")
    )
    .is_none());
    let d = denial_of(
        &shared,
        &err("syntax error at or near \"agentgate_denied_00ff_0000000000000abc\""),
    )
    .unwrap();
    assert_eq!(d.rule, "no-ddl");
    // Used once.
    assert!(denial_of(&shared, &err("agentgate_denied_00ff_0000000000000abc")).is_none());
    // A guessed or cut-short key is nothing.
    assert!(denial_of(&shared, &err("agentgate_denied_00ff_0000000000000abd")).is_none());
    assert!(denial_of(&shared, &err("agentgate_denied_00ff_abc")).is_none());
}
