//! Unit tests of `stream`.

use super::*;
use proptest::prelude::*;

/// A plan with every built-in detector (each under its own rule and a strategy of its own, so
/// a value masked by the wrong rule shows) and a policy regex.
fn plan() -> Arc<Plan> {
    Plan::for_tests(
        "  - name: email\n    targets: [t]\n    mask: {detectors: [email], strategy: hash}\n\
         \x20 - name: card\n    targets: [t]\n    mask: {detectors: [payment_card], strategy: partial, keep_last: 4}\n\
         \x20 - name: ssn\n    targets: [t]\n    mask: {detectors: [us_ssn]}\n\
         \x20 - name: phone\n    targets: [t]\n    mask: {detectors: [phone], strategy: null}\n\
         \x20 - name: iban\n    targets: [t]\n    mask: {detectors: [iban], strategy: hash}\n\
         \x20 - name: ip\n    targets: [t]\n    mask: {detectors: [ip], strategy: partial, keep_last: 2}\n\
         \x20 - name: secret\n    targets: [t]\n    mask: {detectors: [secret], strategy: hash}\n\
         \x20 - name: order\n    targets: [t]\n    mask: {regexes: ['ORD-[0-9]{6}']}\n",
    )
}

const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

const PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIIBVgIBADANBgkqhkiG9w0BAQEFAASCAUAwggE8AgEAAkEAq7BFUpkGp3+LQmlQ\nYx2eqzDV+xeG8kx/sQFV18S5JhzGeIRvgm1+1y7XWrSmiKMuXlzc8g==\n-----END PRIVATE KEY-----";

/// One value of every built-in detector (and the regex), each a value alone.
fn samples() -> Vec<&'static str> {
    vec![
        "alice.smith@example.com",
        "José.García@empresa.es",
        "4111 1111 1111 1111",
        "5555555555554444",
        "123-45-6789",
        "+44 20 7946 0958",
        "(415) 555-2671",
        "GB82 WEST 1234 5698 7654 32",
        "DE89370400440532013000",
        "192.168.10.20",
        "2001:db8::8a2e:370:7334",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        JWT,
        PEM,
        "ORD-123456",
    ]
}

/// `chunks` through a scanner, in order; the output.
fn stream(plan: &Arc<Plan>, max_value: usize, chunks: &[&[u8]]) -> Vec<u8> {
    let mut s = StreamScanner::new(plan.clone(), max_value);
    let mut out = Vec::new();
    for c in chunks {
        s.push(c, &mut out);
        assert!(s.held() <= s.bound(), "held {} > {}", s.held(), s.bound());
        assert!(s.buffered() <= s.bound() + CONTEXT);
    }
    s.finish(&mut out);
    out
}

/// Filler that no detector matches, `n` bytes.
fn filler(n: usize) -> String {
    "the quick brown fox jumps over the lazy dog. "
        .chars()
        .cycle()
        .take(n)
        .collect()
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn every_sample_is_a_value() {
    // Otherwise the tests below would pass on a scanner that masks nothing.
    let plan = plan();
    for v in samples() {
        let text = format!("see {v} here");
        let masked = plan.mask_bytes(text.as_bytes());
        assert!(
            !show(&masked).contains(v),
            "{v:?} is not masked: {}",
            show(&masked)
        );
    }
}

#[test]
fn values_split_at_every_offset_across_two_chunks() {
    let plan = plan();
    let max_value = 256;
    let bound = 2 * (max_value + MARGIN);
    for v in samples() {
        // The first chunk forces a scan while the value is incomplete, with the cut before the
        // value, at it, or inside it, by the length of what comes before.
        for before in [
            0,
            7,
            bound - 20,
            bound + 3,
            bound + max_value,
            3 * bound + 11,
        ] {
            let text = format!("{} {v}, {}", filler(before), filler(100));
            let whole = plan.mask_bytes(text.as_bytes()).into_owned();
            let start = before + 1;
            for k in 0..=v.len() {
                let (a, b) = text.as_bytes().split_at(start + k);
                let out = stream(&plan, max_value, &[a, b]);
                assert_eq!(
                    show(&out),
                    show(&whole),
                    "{v:?} split after {k} bytes, {before} bytes before it"
                );
            }
        }
    }
}

#[test]
fn long_values_split_across_three_chunks() {
    let plan = plan();
    let max_value = 256;
    for v in [JWT, PEM] {
        let before = 2 * (max_value + MARGIN) + 5;
        let text = format!("{}\"{v}\"\n{}", filler(before), filler(50));
        let whole = plan.mask_bytes(text.as_bytes()).into_owned();
        assert!(!show(&whole).contains(v));
        let start = before + 1;
        for i in 1..v.len() {
            for j in i + 1..v.len() {
                let t = text.as_bytes();
                let out = stream(
                    &plan,
                    max_value,
                    &[&t[..start + i], &t[start + i..start + j], &t[start + j..]],
                );
                assert!(out == whole, "{v:?} cut after {i} and {j} bytes");
            }
        }
    }
}

#[test]
fn a_stream_in_small_chunks_is_masked_as_a_whole() {
    let plan = plan();
    let mut text = String::new();
    for (i, v) in samples().iter().cycle().take(60).enumerate() {
        text.push_str(&filler(i * 37 % 300));
        text.push_str(["\n", " ", "; ", "\t(", "=\""][i % 5]);
        text.push_str(v);
        text.push_str([")\n", "\" ", ", ", " ", "."][i % 5]);
    }
    let whole = plan.mask_bytes(text.as_bytes()).into_owned();
    for max_value in [200, 256, 1000] {
        for size in [1, 2, 3, 7, 64, 255, 256, 257, 1000, 4096] {
            let chunks: Vec<&[u8]> = text.as_bytes().chunks(size).collect();
            let out = stream(&plan, max_value, &chunks);
            assert!(
                out == whole,
                "chunks of {size}, max_value {max_value}:\n{}\n---\n{}",
                show(&out),
                show(&whole)
            );
        }
    }
}

#[test]
fn bytes_that_are_not_utf8_pass_unchanged() {
    let plan = plan();
    // The value comes after more than the bound, so that cuts inside it force a scan.
    let mut text = b"\xff\xfe binary \x80\x00 ".to_vec();
    text.extend_from_slice(&[0xc3; 700]);
    text.extend_from_slice(" then José.García@empresa.es und é".as_bytes());
    text.extend_from_slice(b" end \xe2\x82");
    let whole = plan.mask_bytes(&text).into_owned();
    assert_ne!(whole, text);
    // Every cut, including inside the two-byte `é`s.
    for cut in 0..text.len() {
        let (a, b) = text.split_at(cut);
        assert_eq!(stream(&plan, 64, &[a, b]), whole, "cut at {cut}");
    }
    // Without values, the bytes come out as they went in.
    let raw: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let clean: Vec<u8> = raw
        .iter()
        .map(|b| if b.is_ascii() { b'x' } else { *b })
        .collect();
    assert_eq!(
        stream(&plan, 64, &clean.chunks(333).collect::<Vec<_>>()),
        clean
    );
}

#[test]
fn values_longer_than_the_bound_are_masked_with_what_may_continue_them() {
    let plan = plan();
    let max_value = 64;
    // A GitHub token of any length, and a PEM key of many lines, both longer than the bound.
    let token = format!("ghp_{}", "Ab1".repeat(300));
    let key_lines: Vec<String> = (0..40)
        .map(|i| format!("MIIE{i:02}{}", "q".repeat(58)))
        .collect();
    let pem = format!(
        "-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----",
        key_lines.join("\n")
    );
    for v in [&token, &pem] {
        let text = format!("{} {v}\nafter the value: kept\n", filler(500));
        for size in [1, 50, 100, 333, 1000] {
            let chunks: Vec<&[u8]> = text.as_bytes().chunks(size).collect();
            let out = show(&stream(&plan, max_value, &chunks));
            assert!(out.starts_with(&filler(500)), "chunks of {size}: {out}");
            assert!(
                out.ends_with("\nafter the value: kept\n"),
                "chunks of {size}: {out}"
            );
            // No 8 bytes of the value's body reach the output.
            let body = &v.as_bytes()[11..];
            for w in body.windows(8) {
                let w = show(w);
                if !w.contains('\n') && !w.contains('-') {
                    assert!(!out.contains(&w), "chunks of {size}: {w:?} leaked in {out}");
                }
            }
        }
    }
}

#[test]
fn a_hundred_megabytes_without_values_are_held_within_the_bound() {
    let plan = plan();
    let mut s = StreamScanner::new(plan, DEFAULT_MAX_VALUE);
    let pattern = filler(45 * 2000).into_bytes();
    let period = 45;
    let chunk = &pattern[..64 * 1024 - 64 * 1024 % period + 17];
    let (mut given, mut passed) = (0usize, 0usize);
    let mut out = Vec::new();
    let mut most = 0;
    while given < 100 << 20 {
        // The chunk starts where the pattern is, so that output can be checked by position.
        let from = given % period;
        let piece = &pattern[from..from + chunk.len()];
        s.push(piece, &mut out);
        given += piece.len();
        assert!(s.held() <= s.bound());
        assert!(s.buffered() <= s.bound() + CONTEXT);
        most = most.max(s.held());
        let at = passed % period;
        assert!(out == pattern[at..at + out.len()], "output changed bytes");
        passed += out.len();
        out.clear();
    }
    s.finish(&mut out);
    passed += out.len();
    assert_eq!(passed, given);
    assert!(
        most > DEFAULT_MAX_VALUE,
        "the scanner never held anything back"
    );
}

/// `steps` through one scanner: `Ok(chunk)` pushed, `Err(keep_word)` a quiet flush; the
/// output after each flush.
fn with_pauses(plan: &Arc<Plan>, steps: &[Result<&str, bool>]) -> Vec<String> {
    let mut s = StreamScanner::new(plan.clone(), DEFAULT_MAX_VALUE);
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for step in steps {
        match step {
            Ok(chunk) => s.push(chunk.as_bytes(), &mut out),
            Err(keep_word) => {
                s.flush(&mut out, *keep_word);
                seen.push(show(&std::mem::take(&mut out)));
            }
        }
    }
    s.finish(&mut out);
    seen.push(show(&out));
    seen
}

#[test]
fn a_quiet_flush_passes_a_prompt_and_holds_a_partial_word() {
    let plan = plan();
    // A prompt ending in a space goes out whole; a word at the end is held.
    let seen = with_pauses(
        &plan,
        &[
            Ok("deploy@build:~$ "),
            Err(true),
            Ok("key AKIA"),
            Err(true),
            Ok("IOSFODNN7EXAMPLE\n"),
            Err(true),
        ],
    );
    assert_eq!(seen[0], "deploy@build:~$ ");
    assert_eq!(seen[1], "key ");
    assert!(!seen[2].contains("IOSFODNN7EXAMPLE"), "{seen:?}");
    assert!(seen[2].ends_with('\n'), "{seen:?}");
    // Held past the pause, the word goes out on a flush that does not keep it.
    let seen = with_pauses(&plan, &[Ok("Password:"), Err(true), Err(false)]);
    assert_eq!(seen, ["", "Password:", ""]);
}

#[test]
fn a_quiet_flush_keeps_the_context() {
    let plan = plan();
    // The label before nine digits is what makes them an SSN: it went out before the pause.
    let seen = with_pauses(
        &plan,
        &[Ok("SSN: "), Err(true), Ok("123456789\n"), Err(true)],
    );
    assert_eq!(seen[0], "SSN: ");
    assert!(!seen[1].contains("123456789"), "{seen:?}");
}

#[test]
fn a_value_cut_by_a_flush_drops_what_continues_it() {
    let plan = plan();
    // A PEM key whose first lines went out masked before a pause: the rest of it is dropped
    // through its END line, and what follows passes.
    let seen = with_pauses(
        &plan,
        &[
            Ok(&PEM[..100]),
            Err(false),
            Ok(&PEM[100..]),
            Ok("\nafter\n"),
            Err(true),
        ],
    );
    let all = seen.concat();
    for line in PEM.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!all.contains(line), "{line} leaked: {seen:?}");
    }
    assert!(all.ends_with("\nafter\n"), "{seen:?}");
    // A token at the very end, flushed whole, then more of it.
    let seen = with_pauses(
        &plan,
        &[
            Ok("t AKIAIOSFODNN7EXAMPLE"),
            Err(false),
            Ok("MORE next"),
            Err(true),
        ],
    );
    assert!(!seen.concat().contains("MORE"), "{seen:?}");
    assert!(seen.concat().contains(" next"), "{seen:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random texts of values and filler, cut at random places: the same as one-shot masking.
    #[test]
    fn random_cuts_mask_as_one_shot(
        parts in prop::collection::vec((0usize..16, 0usize..120, 0usize..6), 1..30),
        cuts in prop::collection::vec(1usize..400, 1..40),
        max_value in 200usize..600,
    ) {
        let plan = plan();
        let samples = samples();
        let mut text = String::new();
        for (v, n, sep) in parts {
            text.push_str(&filler(n));
            text.push_str([" ", "\n", "(", "\"", ": ", "="][sep]);
            text.push_str(samples[v]);
            text.push_str([" ", "\n", ")", "\"", ", ", ";"][sep]);
        }
        let t = text.as_bytes();
        let mut chunks = Vec::new();
        let mut at = 0;
        for c in cuts.iter().cycle() {
            if at >= t.len() {
                break;
            }
            let end = (at + c).min(t.len());
            chunks.push(&t[at..end]);
            at = end;
        }
        let whole = plan.mask_bytes(t).into_owned();
        prop_assert_eq!(show(&stream(&plan, max_value, &chunks)), show(&whole));
    }
}
