//! Unit tests of `detect`.

use super::*;
use proptest::prelude::*;

fn detectors(kinds: impl IntoIterator<Item = Kind>) -> Detectors {
    let mut d = Detectors::default();
    for (tag, kind) in kinds.into_iter().enumerate() {
        d.push(kind, tag * 10);
    }
    d
}

/// The texts `builtin` finds in `text`.
fn found(builtin: Builtin, text: &str) -> Vec<&str> {
    let mut hits = Vec::new();
    detectors([Kind::Builtin(builtin)]).scan(text.as_bytes(), &mut hits);
    hits.iter().map(|h| &text[h.range.clone()]).collect()
}

/// Asserts `builtin` finds exactly the whole of each of `values`, alone and inside a sentence.
fn catches(builtin: Builtin, values: &[&str]) {
    for v in values {
        assert_eq!(found(builtin, v), [*v], "{builtin:?} alone: {v:?}");
        let text = format!("see ({v}), then");
        assert_eq!(found(builtin, &text), [*v], "{builtin:?} in text: {text:?}");
    }
}

fn misses(builtin: Builtin, texts: &[&str]) {
    for t in texts {
        assert_eq!(
            found(builtin, t),
            Vec::<&str>::new(),
            "{builtin:?} must not match {t:?}"
        );
    }
}

const ALL: [Builtin; 7] = [
    Builtin::Email,
    Builtin::PaymentCard,
    Builtin::UsSsn,
    Builtin::Phone,
    Builtin::Iban,
    Builtin::Ip,
    Builtin::Secret,
];

#[test]
fn email() {
    catches(
        Builtin::Email,
        &[
            "alice@example.com",
            "bob.smith+tag@mail.example.co.uk",
            "x_y-z%1@sub-domain.example.org",
            "José.García@empresa.es",
            "user@exämple.de",
            "a@b.co",
            "info@xn--bcher-kva.xn--p1ai",
        ],
    );
    assert_eq!(
        found(Builtin::Email, "write to alice@example.com today"),
        ["alice@example.com"]
    );
    assert_eq!(
        found(Builtin::Email, "mail alice@example.com."),
        ["alice@example.com"]
    );
    assert_eq!(
        found(Builtin::Email, "<alice@example.com>,'b@c.io'"),
        ["alice@example.com", "b@c.io"]
    );
    assert_eq!(
        found(Builtin::Email, "mailto:alice@example.com"),
        ["alice@example.com"]
    );
    assert_eq!(
        found(Builtin::Email, "“alice@example.com”"),
        ["alice@example.com"]
    );
    assert_eq!(found(Builtin::Email, "a..b@example.com"), ["b@example.com"]);
    assert_eq!(found(Builtin::Email, "x@y.com@z.org"), ["x@y.com"]);
    misses(
        Builtin::Email,
        &[
            "foo@bar",
            "user@localhost",
            "lodash@4.17.21",
            "@types/node@18.0.0",
            "icon@2x.png",
            "@alice",
            "a@b.c",
            "foo.@bar.com",
            "a@-b.com",
            "a@.com",
            "alice@192.168.1.1",
            "alice at example.com",
            "alice%40example.com",
        ],
    );
}

#[test]
fn payment_card() {
    catches(
        Builtin::PaymentCard,
        &[
            "4111111111111111",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "5500 0000 0000 0004",
            "2223003122003222",
            "378282246310005",
            "3782 822463 10005",
            "6011111111111117",
            "3530111333300000",
            "30569309025904",
            "4222222222222",
            "6200 0000 0000 0005",
            "4111 1111 1111 1111 003",
        ],
    );
    assert_eq!(
        found(Builtin::PaymentCard, "card 4111 1111 1111 1111 12/26"),
        ["4111 1111 1111 1111"]
    );
    assert_eq!(
        found(Builtin::PaymentCard, "1,4111111111111111,x"),
        ["4111111111111111"]
    );
    misses(
        Builtin::PaymentCard,
        &[
            "4111111111111112",
            "4111 1111 1111 1112",
            "1234567812345670",
            "41111111111111111111",
            "94111111111111111",
            "x4111111111111111",
            "4111111111111111y",
            "0.4111111111111111",
            "4111111111111111.5",
            "41 11 11 11 11 11 11 11",
            "4111 1111-1111 1111",
            "41111 11111 11111 1",
            "3782822463100050",
            "123-45-6789",
            "2024-01-15",
        ],
    );
}

#[test]
fn us_ssn() {
    catches(
        Builtin::UsSsn,
        &["123-45-6789", "123 45 6789", "078-05-1120", "899-99-9999"],
    );
    assert_eq!(found(Builtin::UsSsn, "SSN: 123456789"), ["123456789"]);
    assert_eq!(
        found(Builtin::UsSsn, r#"{"ssn":"123456789"}"#),
        ["123456789"]
    );
    assert_eq!(found(Builtin::UsSsn, "ssn#123456789"), ["123456789"]);
    misses(
        Builtin::UsSsn,
        &[
            "123456789",
            "id 123456789",
            "ssnx 123456789",
            "SSN: 1234567890",
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "999-12-3456",
            "123-00-4567",
            "123-45-0000",
            "1123-45-6789",
            "123-45-67890",
            "123-45-6789-1",
            "9-123-45-6789",
            "123 45-6789",
            "a123-45-6789",
            "123-45-6789b",
            "SSN: 000123456",
        ],
    );
}

#[test]
fn phone() {
    catches(
        Builtin::Phone,
        &[
            "(415) 555-2671",
            "(415)555-2671",
            "415-555-2671",
            "415.555.2671",
            "415 555 2671",
            "1-415-555-2671",
            "+14155552671",
            "+1 415 555 2671",
            "+1 (415) 555-2671",
            "+44 20 7946 0958",
            "+44 (0)20 7946 0958",
            "+33 6 12 34 56 78",
            "0044 20 7946 0958",
            "020 7946 0958",
            "(020) 7946 0958",
            "06 12 34 56 78",
            "06.12.34.56.78",
            "030-12345678",
            "(555) 123-4567",
        ],
    );
    assert_eq!(found(Builtin::Phone, "415-555-2671x12"), ["415-555-2671"]);
    assert_eq!(
        found(Builtin::Phone, "+44 20 7946 0958x3"),
        ["+44 20 7946 0958"]
    );
    misses(
        Builtin::Phone,
        &[
            "2024-01-15",
            "2024-01-15 12:30:45",
            "15.01.2024",
            "01-02-2024",
            "1.2.3",
            "version 10.15.7",
            "v2.34.567",
            "4155552671",
            "12345678901",
            "004420794609",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "123-45-6789",
            "192.168.1.1",
            "12:30:45",
            "115-555-2671",
            "123-456-7890",
            "415-555-26710",
            "415-555-2671-9",
            "415-555.2671",
            "+1234567",
            "+1234567890123456",
            "a+14155552671",
            "020 7946 09581",
        ],
    );
}

#[test]
fn iban() {
    catches(
        Builtin::Iban,
        &[
            "DE89370400440532013000",
            "DE89 3704 0044 0532 0130 00",
            "GB82WEST12345698765432",
            "GB82 WEST 1234 5698 7654 32",
            "FR1420041010050500013M02606",
            "NL91ABNA0417164300",
            "BE68539007547034",
            "NO9386011117947",
            "CH9300762011623852957",
        ],
    );
    assert_eq!(
        found(Builtin::Iban, "BE68 5390 0754 7034 EUR"),
        ["BE68 5390 0754 7034"]
    );
    misses(
        Builtin::Iban,
        &[
            "DE88370400440532013000",
            "DE89370400440532013001",
            "de89370400440532013000",
            "XX89370400440532013000",
            "DE8937040044053201300",
            "DE893704004405320130001",
            "DE89 3704 0044 0532 0130 00X",
            "DE89 37040044 0532013000",
            "xDE89370400440532013000",
        ],
    );
}

#[test]
fn ip() {
    catches(
        Builtin::Ip,
        &[
            "192.168.1.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "2001:db8::8a2e:370:7334",
            "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
            "::ffff:192.0.2.1",
        ],
    );
    assert_eq!(found(Builtin::Ip, "10.0.0.1:5432"), ["10.0.0.1"]);
    assert_eq!(found(Builtin::Ip, "[::1]:5432"), ["::1"]);
    assert_eq!(found(Builtin::Ip, "at fe80::1."), ["fe80::1"]);
    assert_eq!(found(Builtin::Ip, "host:fe80::1%eth0"), ["fe80::1"]);
    assert_eq!(
        found(Builtin::Ip, "from 10.1.2.3 to 10.1.2.4."),
        ["10.1.2.3", "10.1.2.4"]
    );
    misses(
        Builtin::Ip,
        &[
            "256.1.1.1",
            "1.2.3.256",
            "1.2.3.4.5",
            "1.2.3",
            "v1.2.3.4",
            "1.2.3.4x",
            "1234.1.1.1",
            "12:30:45",
            "2024-01-15T12:30:45.123Z",
            "std::vector",
            "select 1::int",
            "x::text",
            "dead::beef",
            "00:1a:2b:3c:4d:5e",
            "::",
            "1:2:3",
        ],
    );
}

#[test]
fn secret() {
    let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n-----END RSA PRIVATE KEY-----";
    let google = format!(
        "AIza{}",
        "SyA-9x_Bc".repeat(4).chars().take(35).collect::<String>()
    );
    let github = format!("ghp_{}", "aB3".repeat(12));
    let github_pat = format!("github_pat_11ABCDEFG0{}", "aB3_".repeat(15));
    let stripe = format!("sk_live_{}", "4eC39HqLyjWDarjtT1zdp7dc");
    let openai = format!("sk-proj-{}", "Ab3dEf6hIj".repeat(5));
    catches(
        Builtin::Secret,
        &[
            jwt,
            "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.",
            pem,
            "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBg\\n-----END PRIVATE KEY-----",
            "AKIAIOSFODNN7EXAMPLE",
            "ASIAIOSFODNN7EXAMPLE",
            &google,
            &github,
            &github_pat,
            "xoxb-123456789012-1234567890123-AbCdEfGhIjKl",
            &stripe,
            "rk_live_4eC39HqLyjWDarjtT1zdp7dc",
            &openai,
        ],
    );
    assert_eq!(found(Builtin::Secret, &format!("Bearer {jwt}.")), [jwt]);
    assert_eq!(
        found(Builtin::Secret, &format!("key: \"{pem}\" end")),
        [pem]
    );
    let cut = "x -----BEGIN EC PRIVATE KEY-----\nMHcCAQEEI";
    assert_eq!(found(Builtin::Secret, cut), [&cut[2..]]);
    misses(
        Builtin::Secret,
        &[
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
            "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----",
            "AKIAIOSFODNN7EXAMPL",
            "AKIAIOSFODNN7EXAMPLEX",
            "AKIAIOSFODNN7EXAMPLe",
            "xAKIAIOSFODNN7EXAMPLE",
            "ghp_short",
            "xoxb-1234",
            "xoxz-123456789012-1234567890123",
            "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
            "scikit uses sk-learn as its import name",
            "task-1234567890-ABCDEFGHIJ-1234567890",
            "sk-this-is-a-long-kebab-case-name-for-a-thing-2",
            "eyJhbGciOiJIUzI1NiJ9",
            "eyJhbGciOiJIUzI1NiJ9.x",
            "xeyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIx.abc",
            &format!("AIza{}", "a".repeat(34)),
            &format!("AIza{}", "a".repeat(36)),
        ],
    );
}

fn hit(range: Range<usize>, tag: usize) -> Hit {
    Hit { range, tag }
}

fn re(pattern: &str) -> Kind {
    Kind::Regex(regex::bytes::Regex::new(pattern).unwrap())
}

#[test]
fn regex_matches_and_skips_empty() {
    let mut hits = Vec::new();
    detectors([re("EMP-[0-9]{6}"), re("x*")]).scan(b"EMP-123456 and EMP-654321, EMP-12", &mut hits);
    assert_eq!(hits, [hit(0..10, 0), hit(15..25, 0)]);
}

#[test]
fn overlaps_resolve_by_start_then_length_then_order() {
    let email = || Kind::Builtin(Builtin::Email);
    let scan = |d: Detectors, text: &str| {
        let mut hits = Vec::new();
        d.scan(text.as_bytes(), &mut hits);
        hits
    };
    // Same start: the longest wins, whatever the order.
    assert_eq!(
        scan(detectors([re("alice"), email()]), "alice@example.com"),
        [hit(0..17, 10)]
    );
    // Same range: the first pushed wins.
    let same = "[a-z]+@[a-z]+\\.com";
    assert_eq!(
        scan(detectors([re(same), email()]), "alice@example.com"),
        [hit(0..17, 0)]
    );
    assert_eq!(
        scan(detectors([email(), re(same)]), "alice@example.com"),
        [hit(0..17, 0)]
    );
    // Earlier start wins even when shorter; what it drops does not hide a later hit.
    assert_eq!(
        scan(detectors([re("cdef"), re("ab"), re("bcdefgh")]), "abcdefgh"),
        [hit(0..2, 10), hit(2..6, 0)]
    );
    // Hits already in `out` are left alone; new ones are appended.
    let mut hits = vec![hit(100..101, 7)];
    detectors([re("b"), re("a")]).scan(b"ab", &mut hits);
    assert_eq!(hits, [hit(100..101, 7), hit(0..1, 10), hit(1..2, 0)]);
}

#[test]
fn a_builtin_listed_twice_reports_under_its_first_listing() {
    let mut hits = Vec::new();
    let card = || Kind::Builtin(Builtin::PaymentCard);
    detectors([card(), re("x"), card()]).scan(b"4111111111111111", &mut hits);
    assert_eq!(hits, [hit(0..16, 0)]);
}

#[test]
fn jwt_shapes() {
    let h = "eyJhbGciOiJIUzI1NiJ9";
    let jwe = format!("{h}.ZW5jcnlwdGVk.aXY.Y2lwaGVy.dGFn");
    assert_eq!(found(Builtin::Secret, &jwe), [jwe.as_str()]);
    let direct = format!("{h}..aXY.Y2lwaGVy.dGFn");
    assert_eq!(found(Builtin::Secret, &direct), [direct.as_str()]);
    let signed = format!("{h}.eyJzdWIiOiIxIn0.c2ln");
    assert_eq!(
        found(Builtin::Secret, &format!("token {signed}. Next")),
        [signed.as_str()]
    );
    assert_eq!(
        found(Builtin::Secret, &format!("{signed}.x.y.z")),
        [format!("{signed}.x.y")]
    );
}

#[test]
fn pathological_texts_take_linear_time() {
    let d = detectors(ALL.map(Kind::Builtin));
    let texts = [
        "eyJ.".repeat(50_000),
        "eyJhbGciOiJIUzI1NiJ9.".repeat(20_000),
        "-----BEGIN PRIVATE KEY----- -----END RSA PRIVATE KEY----- ".repeat(5_000),
        "a@".repeat(100_000),
        "a.".repeat(100_000) + "@" + &"b.".repeat(100_000),
        "1 ".repeat(100_000),
        "+1 ".repeat(50_000),
        "1:".repeat(100_000),
        "1.".repeat(100_000),
        "sk-".repeat(50_000),
        "DE89 ".repeat(50_000),
    ];
    let mut hits = Vec::new();
    for t in &texts {
        hits.clear();
        d.scan(t.as_bytes(), &mut hits);
    }
}

#[test]
fn all_detectors_together() {
    let d = detectors(ALL.map(Kind::Builtin));
    let text = "alice@example.com paid with 4111 1111 1111 1111 from ::ffff:192.0.2.1, \
                SSN 123-45-6789, call +1 (415) 555-2671, IBAN DE89370400440532013000, \
                key AKIAIOSFODNN7EXAMPLE on 2024-01-15 v1.2.3";
    let mut hits = Vec::new();
    d.scan(text.as_bytes(), &mut hits);
    let got: Vec<(&str, usize)> = hits
        .iter()
        .map(|h| (&text[h.range.clone()], h.tag))
        .collect();
    assert_eq!(
        got,
        [
            ("alice@example.com", 0),
            ("4111 1111 1111 1111", 10),
            ("::ffff:192.0.2.1", 50),
            ("123-45-6789", 20),
            ("+1 (415) 555-2671", 30),
            ("DE89370400440532013000", 40),
            ("AKIAIOSFODNN7EXAMPLE", 60),
        ]
    );
}

#[test]
fn detectors_do_not_cross_fire() {
    let cases: &[(&str, &[Builtin])] = &[
        ("4111 1111 1111 1111", &[Builtin::PaymentCard]),
        ("4111-1111-1111-1111", &[Builtin::PaymentCard]),
        ("123-45-6789", &[Builtin::UsSsn]),
        ("415-555-2671", &[Builtin::Phone]),
        ("192.168.1.1", &[Builtin::Ip]),
        ("2024-01-15", &[]),
        ("12:30:45", &[]),
        ("3.14159265358979", &[]),
        ("1234567890123", &[]),
    ];
    for (text, expected) in cases {
        for b in ALL {
            let hit = !found(b, text).is_empty();
            assert_eq!(hit, expected.contains(&b), "{b:?} on {text:?}");
        }
    }
}

fn check_invariants(text: &[u8]) -> Result<(), TestCaseError> {
    let mut d = detectors(ALL.map(Kind::Builtin));
    d.push(re("[0-9]{3}|a+"), 70);
    let mut hits = Vec::new();
    d.scan(text, &mut hits);
    let mut end = 0;
    for h in &hits {
        prop_assert!(h.range.start >= end, "overlap or unsorted: {hits:?}");
        prop_assert!(h.range.start < h.range.end && h.range.end <= text.len());
        prop_assert!(h.tag % 10 == 0 && h.tag <= 70);
        end = h.range.end;
    }
    // Together, detectors only choose among the hits each finds alone.
    for h in hits.iter().filter(|h| h.tag < 70) {
        let mut alone = Vec::new();
        detectors([Kind::Builtin(ALL[h.tag / 10])]).scan(text, &mut alone);
        prop_assert!(
            alone.iter().any(|a| a.range == h.range),
            "{h:?} not in {alone:?}"
        );
    }
    Ok(())
}

proptest! {
    #[test]
    fn scan_never_panics_on_bytes(text in proptest::collection::vec(any::<u8>(), 0..400)) {
        check_invariants(&text)?;
    }

    #[test]
    fn scan_never_panics_on_near_values(
        text in "([0-9a-fA-F]{1,5}|[ .:@+()_x-]|eyJ|AKIA|sk-|ghp_|xoxb-|-----BEGIN |PRIVATE KEY-----|é|DE89){0,60}"
    ) {
        check_invariants(text.as_bytes())?;
    }
}

/// Time per value of all built-in detectors together, printed; run with
/// `cargo test -p gateway-user --release -- --ignored detect --nocapture`.
#[test]
#[ignore]
fn detect_speed() {
    let d = detectors(ALL.map(Kind::Builtin));
    let prose = "The customer called on 2024-01-15 about order 18234 and asked us to update \
                 the shipping address to 221B Baker Street, London; they also said the \
                 invoice total of 149.99 was wrong and want a refund.";
    let sets: &[(&str, &[&str])] = &[
        (
            "short names",
            &["Alice Smith", "Bob", "Zoë Müller", "ACME Corp", "pending"],
        ),
        (
            "emails",
            &["alice@example.com", "bob.smith+tag@mail.example.co.uk"],
        ),
        (
            "numbers",
            &[
                "42",
                "1234567",
                "3.14159",
                "2024-01-15 12:30:45+00",
                "18234.99",
            ],
        ),
        (
            "card/phone/ip",
            &["4111 1111 1111 1111", "+1 (415) 555-2671", "192.168.1.1"],
        ),
        ("200-byte text", &[prose]),
        (
            "a 6-column row",
            &[
                "18234",
                "Alice Smith",
                "alice@example.com",
                "2024-01-15 12:30:45+00",
                "active",
                prose,
            ],
        ),
    ];
    let mut hits = Vec::new();
    for (name, values) in sets {
        // The fastest of several rounds: other processes only ever add time.
        let per_round = 100_000 / values.len();
        let best = (0..7)
            .map(|_| {
                let start = std::time::Instant::now();
                for _ in 0..per_round {
                    for v in *values {
                        hits.clear();
                        d.scan(std::hint::black_box(v.as_bytes()), &mut hits);
                        std::hint::black_box(&hits);
                    }
                }
                start.elapsed()
            })
            .min()
            .unwrap_or_default();
        let ns = best.as_nanos() as f64 / (per_round * values.len()) as f64;
        println!("detect {name}: {ns:.0} ns/value");
    }
}
