//! Value detectors: find sensitive values inside any text (a result value, an error or notice
//! text, a recorded statement), whatever column or expression it came from.
//!
//! Detectors read bytes: text that is not UTF-8 is scanned the same way and never makes one fail.
//! A hit covers exactly the value, never the punctuation around it. Numbers must stand alone: a
//! letter or digit right before or after one (`x4111…`, `…67890`) means it is part of something
//! else, and it is not reported.
//!
//! - `email`: `local@domain.tld`. The local part is letters, digits and `. _ % + -` (no leading,
//!   trailing or doubled dot); the domain is two or more labels of letters, digits and inner
//!   hyphens; the last label (the TLD) is two or more letters or an `xn--` label. Non-ASCII
//!   letters count as letters (`José@empresa.es`). Not caught: domains without a dot
//!   (`user@localhost`, `foo@bar`), IP literals (`user@[10.0.0.1]`, left to `ip`), numeric TLDs
//!   (`lodash@4.17.21`), image scale names (`icon@2x.png`), encoded forms (`alice%40example.com`).
//! - `payment_card`: 13 to 19 digits, written together or in groups separated by single spaces
//!   or dashes (4-4-4-4, 4-4-4-4-3, 4-6-5 as on American Express, 4-6-4), that pass the Luhn check
//!   and start like a card of Visa, Mastercard, American Express, Discover, Diners Club, JCB,
//!   UnionPay, Maestro, Mir or RuPay with a length that brand issues. Not caught: other groupings
//!   (`41 11 11 …`), mixed separators, numbers that fail Luhn, decimals (`0.4111…`).
//! - `us_ssn`: `AAA-GG-SSSS` or `AAA GG SSSS`, and nine digits written together only right after
//!   an `ssn` label (`SSN: 123456789`, `"ssn":"123456789"`). Area 000, 666 and 900–999, group 00
//!   and serial 0000 are never issued and are not reported. Not caught: other bare nine-digit
//!   numbers (they cannot be told apart from any other identifier), mixed separators.
//! - `phone`: international numbers starting with `+` or `00` (8 to 15 digits after it, in groups
//!   separated by single spaces, dashes or dots, parentheses allowed: `+44 20 7946 0958`,
//!   `+14155552671`, `+1 (415) 555-2671`; with `00` at least one separator is required); North
//!   American numbers `(415) 555-2671`, `415-555-2671`, `415.555.2671`, `415 555 2671` (area code
//!   not starting with 0 or 1), optionally after `1-`; national numbers starting with a trunk `0`,
//!   10 or 11 digits in groups of 2 to 8 with one kind of separator (`020 7946 0958`,
//!   `06 12 34 56 78`, `(020) 7946 0958`). An extension after `x` (`415-555-2671x12`) is left as
//!   it is. Not caught: digits without separators unless after `+` (`4155552671` is any
//!   integer), dates, version numbers, times, card numbers, SSNs and IPv4 addresses (none has a
//!   phone shape).
//! - `iban`: an uppercase country code of the IBAN registry, two check digits, then the country's
//!   BBAN length of uppercase letters and digits, written together or in groups of four separated
//!   by single spaces; the mod-97 checksum must hold. Not caught: lowercase, other groupings.
//! - `ip`: IPv4 dotted quads with each part 0–255 (`192.168.1.1`, also inside `10.0.0.1:5432`),
//!   not part of a longer dotted run (`1.2.3.4.5`, `v1.2.3.4`); IPv6 in full, compressed or
//!   IPv4-mapped form that `std::net::Ipv6Addr` accepts and that contains a decimal digit
//!   (`::1`, `fe80::1`, `2001:db8::8a2e:370:7334`, `::ffff:192.0.2.1`), standing apart from letters
//!   (so `std::vector`, `1::int` and times like `12:30:45` are not addresses). Not caught: IPv4 in
//!   other notations (hex, single integer), IPv6 made only of letters (`dead::beef`), zone ids
//!   (`fe80::1%eth0` masks the address, not the zone). A version number with four parts that are
//!   each 0–255 is indistinguishable from an address and is masked.
//! - `secret`: JSON Web Tokens (an `eyJ…` header of 10 or more base64url characters, a payload
//!   and a signature, empty on an unsigned token; or the five segments of an encrypted token);
//!   PEM private keys (`-----BEGIN … PRIVATE KEY-----` through the matching `-----END …-----`
//!   line, or to the end of the text when that line is missing); AWS access key ids (`AKIA`/`ASIA`
//!   and 16 uppercase letters or digits); GitHub tokens (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_` and
//!   30 or more letters or digits; `github_pat_` and 22 or more); Slack tokens (`xoxa-`, `xoxb-`,
//!   `xoxp-`, `xoxr-`, `xoxs-` and 10 or more); Stripe live keys (`sk_live_`, `rk_live_` and 16 or
//!   more); Google API keys (`AIza` and exactly 35); `sk-` keys (OpenAI, Anthropic) of 32 or more
//!   characters with a digit and an uppercase letter. A token must not follow a letter, digit,
//!   `_` or `-`. Not caught: secrets without a known prefix (AWS secret access keys, passwords,
//!   random tokens), certificates and public keys, Stripe test keys.
//! - a policy regex: every non-empty, non-overlapping match, as the `regex` crate finds them.
//!
//! Where hits of different detectors overlap, the one that starts first wins, then the longest,
//! then the detector listed first; the others are dropped.

use std::{cmp::Reverse, net::Ipv6Addr, ops::Range, sync::LazyLock};

/// The built-in detectors, as named in a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Builtin {
    Email,
    PaymentCard,
    UsSsn,
    Phone,
    Iban,
    Ip,
    Secret,
}

pub enum Kind {
    Builtin(Builtin),
    Regex(regex::bytes::Regex),
}

/// A match: the bytes to mask and the tag of the detector that found them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub range: Range<usize>,
    pub tag: usize,
}

/// Detectors in priority order, each tagged by the caller (with the mask rule it belongs to).
#[derive(Default)]
pub struct Detectors {
    entries: Vec<(Kind, usize)>,
    /// For each built-in, the first entry that lists it. A built-in listed again finds the same
    /// hits, which lose to the first listing's, so it is scanned once.
    first: [Option<usize>; 7],
}

/// Finds the value whose first digit run starts at the given position and has the given length.
/// Each starts with checks that reject most numbers in a few instructions.
type NumberAt = fn(&[u8], usize, usize) -> Option<Range<usize>>;

/// The built-ins that look for numbers.
const NUMERIC: [(Builtin, NumberAt); 5] = [
    (Builtin::PaymentCard, card_at),
    (Builtin::UsSsn, ssn_at),
    (Builtin::Phone, phone_at),
    (Builtin::Iban, iban_at),
    (Builtin::Ip, ipv4_at),
];

impl Detectors {
    pub fn push(&mut self, kind: Kind, tag: usize) {
        if let Kind::Builtin(b) = kind {
            self.first[b as usize].get_or_insert(self.entries.len());
        }
        self.entries.push((kind, tag));
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends the hits in `text` to `out`, sorted by start and not overlapping.
    pub fn scan(&self, text: &[u8], out: &mut Vec<Hit>) {
        let base = out.len();
        // Candidates are collected in `out` itself, tagged with their detector's index (the
        // priority), so that a text without hits costs no allocation.
        let first = |b: Builtin| self.first[b as usize];
        for (index, (kind, _)) in self.entries.iter().enumerate() {
            let mut sink = Sink { out, index };
            match kind {
                Kind::Regex(re) => re
                    .find_iter(text)
                    .filter(|m| !m.is_empty())
                    .for_each(|m| sink.push(m.range())),
                Kind::Builtin(b) if first(*b) != Some(index) => {}
                Kind::Builtin(Builtin::Email) => {
                    if text.contains(&b'@') {
                        emails(text, &mut sink);
                    }
                }
                Kind::Builtin(Builtin::Secret) => {
                    if text.len() >= 15 {
                        secrets(text, &mut sink);
                    }
                }
                Kind::Builtin(Builtin::Ip) => {
                    if text.contains(&b':') {
                        ipv6s(text, &mut sink);
                    }
                }
                Kind::Builtin(_) => {}
            }
        }
        // The numeric detectors share one walk over the digit runs of the text.
        let numeric = NUMERIC.map(|(b, _)| first(b));
        if numeric.iter().any(Option::is_some) {
            numbers(text, out, numeric);
        }
        if out.len() - base > 1 {
            out[base..].sort_unstable_by_key(|h| (h.range.start, Reverse(h.range.end), h.tag));
            let mut kept = base;
            for i in base..out.len() {
                if kept == base || out[i].range.start >= out[kept - 1].range.end {
                    out.swap(kept, i);
                    kept += 1;
                }
            }
            out.truncate(kept);
        }
        for hit in &mut out[base..] {
            hit.tag = self.entries[hit.tag].1;
        }
    }
}

struct Sink<'a> {
    out: &'a mut Vec<Hit>,
    index: usize,
}

impl Sink<'_> {
    fn push(&mut self, range: Range<usize>) {
        self.out.push(Hit {
            range,
            tag: self.index,
        });
    }
}

/// Runs the numeric detectors (`NUMERIC`, with the entry index to report each under, `None`
/// when off) at the start of each digit run: every numeric value has one at or right after its
/// start.
fn numbers(t: &[u8], out: &mut Vec<Hit>, detectors: [Option<usize>; 5]) {
    // Where each detector may report next: after its last hit.
    let mut next = [0; 5];
    let mut i = 0;
    loop {
        // Most bytes of most texts are not digits: skip them a vector at a time.
        while let Some(chunk) = t.get(i..).and_then(<[u8]>::first_chunk::<16>) {
            if chunk.iter().fold(false, |any, b| any | b.is_ascii_digit()) {
                break;
            }
            i += 16;
        }
        while i < t.len() && !t[i].is_ascii_digit() {
            i += 1;
        }
        if i == t.len() {
            return;
        }
        let start = i;
        let run = run_len(t, start);
        i += run;
        for (k, index) in detectors.iter().enumerate() {
            let Some(index) = *index else { continue };
            if start < next[k] {
                continue;
            }
            if let Some(range) = NUMERIC[k].1(t, start, run) {
                next[k] = range.end;
                out.push(Hit { range, tag: index });
            }
        }
    }
}

/// The byte at `i`, or 0 (which no detector accepts) past the end.
fn byte(t: &[u8], i: usize) -> u8 {
    t.get(i).copied().unwrap_or(0)
}

/// The byte before `i`, or 0 at the start.
fn before(t: &[u8], i: usize) -> u8 {
    if i == 0 {
        0
    } else {
        t[i - 1]
    }
}

/// How many digits follow from `i`.
fn run_len(t: &[u8], i: usize) -> usize {
    t.get(i..)
        .map_or(0, |r| r.iter().take_while(|b| b.is_ascii_digit()).count())
}

fn number(digits: &[u8]) -> u32 {
    digits
        .iter()
        .fold(0, |n, &d| n * 10 + u32::from(d.wrapping_sub(b'0')))
}

/// Whether `t[start..end]` stands alone as a number: no letter or digit next to it, and no
/// `joiners` byte next to it that continues it with another digit (`5-123-45-6789`).
fn isolated(t: &[u8], start: usize, end: usize, joiners: &[u8]) -> bool {
    alone_before(t, start, joiners) && alone_after(t, end, joiners)
}

fn alone_before(t: &[u8], start: usize, joiners: &[u8]) -> bool {
    let prev = before(t, start);
    let joined = joiners.contains(&prev) && start >= 2 && t[start - 2].is_ascii_digit();
    !prev.is_ascii_alphanumeric() && !joined
}

fn alone_after(t: &[u8], end: usize, joiners: &[u8]) -> bool {
    let next = byte(t, end);
    let joined = joiners.contains(&next) && byte(t, end + 1).is_ascii_digit();
    !next.is_ascii_alphanumeric() && !joined
}

// ---- email ----

fn emails(t: &[u8], sink: &mut Sink) {
    // Bytes before `from` belong to an address already reported.
    let mut from = 0;
    let mut i = 0;
    while let Some(k) = t[i..].iter().position(|&b| b == b'@') {
        let at = i + k;
        i = at + 1;
        let Some(start) = local_start(t, from, at) else {
            continue;
        };
        let Some(end) = domain_end(t, at + 1) else {
            continue;
        };
        sink.push(start..end);
        from = end;
        i = end;
    }
}

/// Bytes that may be in a local part, and in a domain label (non-ASCII letters aside).
static LOCAL: [bool; 256] = ascii_class(b"._%+-");
static LABEL: [bool; 256] = ascii_class(b"-");

/// ASCII letters, digits and `extra`.
const fn ascii_class(extra: &[u8]) -> [bool; 256] {
    let mut class = [false; 256];
    let mut b = 0;
    while b < 128 {
        class[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        class[extra[i] as usize] = true;
        i += 1;
    }
    class
}

/// Where the local part ending at `at` (the `@`) starts.
fn local_start(t: &[u8], from: usize, at: usize) -> Option<usize> {
    let mut s = at;
    while s > from {
        let b = t[s - 1];
        let len = match b {
            _ if LOCAL[usize::from(b)] => 1,
            0..0x80 => 0,
            _ => char_before(t, s)
                .filter(|(c, _)| c.is_alphanumeric())
                .map_or(0, |(_, n)| n),
        };
        // A doubled dot cannot be inside a local part: the address starts after it.
        if len == 0 || (b == b'.' && t[s] == b'.') {
            break;
        }
        s -= len;
    }
    while s < at && t[s] == b'.' {
        s += 1;
    }
    (s < at && t[at - 1] != b'.').then_some(s)
}

/// Where the domain starting at `start` ends, if it is a dotted domain with a TLD.
fn domain_end(t: &[u8], start: usize) -> Option<usize> {
    if byte(t, start) == b'-' {
        return None;
    }
    let mut end = start;
    let mut label_stop = label_end(t, start);
    loop {
        let label = end;
        end = label_stop;
        // A hyphen after a label is punctuation after the domain, not part of it.
        while end > label && t[end - 1] == b'-' {
            end -= 1;
        }
        if end == label {
            return None;
        }
        let next = end + 1;
        if byte(t, end) != b'.' || byte(t, next) == b'-' {
            break;
        }
        label_stop = label_end(t, next);
        if label_stop == next {
            break;
        }
        end = next;
    }
    let domain = &t[start..end];
    let first_dot = domain.iter().position(|&b| b == b'.')?;
    let last_dot = domain.iter().rposition(|&b| b == b'.')?;
    let tld = &domain[last_dot + 1..];
    let tld_ok = tld.starts_with(b"xn--")
        || if tld.is_ascii() {
            tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic)
        } else {
            std::str::from_utf8(tld)
                .is_ok_and(|s| s.chars().nth(1).is_some() && s.chars().all(char::is_alphabetic))
        };
    // `icon@2x.png` names an image at twice the resolution, not an address.
    let first = &domain[..first_dot];
    let scale = first_dot == last_dot
        && first.len() >= 2
        && first.ends_with(b"x")
        && first[..first.len() - 1].iter().all(u8::is_ascii_digit);
    (tld_ok && !scale).then_some(end)
}

/// Where the domain label (or part of one) starting at `i` ends.
fn label_end(t: &[u8], mut i: usize) -> usize {
    loop {
        match t.get(i) {
            Some(&b) if LABEL[usize::from(b)] => i += 1,
            Some(0x80..) => match char_at(t, i) {
                Some((c, n)) if c.is_alphanumeric() => i += n,
                _ => return i,
            },
            _ => return i,
        }
    }
}

/// The UTF-8 character that ends at `i`, with its length.
fn char_before(t: &[u8], i: usize) -> Option<(char, usize)> {
    let start = (i.saturating_sub(4)..i)
        .rev()
        .find(|&s| t[s] & 0xC0 != 0x80)?;
    let c = std::str::from_utf8(&t[start..i]).ok()?.chars().next()?;
    Some((c, i - start))
}

/// The UTF-8 character that starts at `i`, with its length.
fn char_at(t: &[u8], i: usize) -> Option<(char, usize)> {
    let chunk = t.get(i..t.len().min(i + 4))?;
    let valid = match std::str::from_utf8(chunk) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&chunk[..e.valid_up_to()]).ok()?,
    };
    let c = valid.chars().next()?;
    Some((c, c.len_utf8()))
}

// ---- payment_card ----

fn card_at(t: &[u8], start: usize, run: usize) -> Option<Range<usize>> {
    // Every grouping starts with four digits or is a single run.
    if run != 4 && !(13..=19).contains(&run) {
        return None;
    }
    let mut groups = [0usize; 5];
    let mut ends = [0usize; 5];
    let mut digits = [0u8; 19];
    let (mut n, mut count, mut p, mut sep) = (0, 0, start, None);
    loop {
        let len = run_len(t, p);
        if count + len > 19 {
            break;
        }
        digits[count..count + len].copy_from_slice(&t[p..p + len]);
        count += len;
        p += len;
        groups[n] = len;
        ends[n] = p;
        n += 1;
        let s = byte(t, p);
        if n == groups.len()
            || !(s == b' ' || s == b'-')
            || sep.is_some_and(|x| x != s)
            || !byte(t, p + 1).is_ascii_digit()
        {
            break;
        }
        sep = Some(s);
        p += 1;
    }
    // The longest grouping that reads as a card wins: `4111 1111 1111 1111 12/26` is a card
    // followed by an expiry month, not a 18-digit number.
    (1..=n).rev().find_map(|k| {
        let total: usize = groups[..k].iter().sum();
        let end = ends[k - 1];
        (card_grouping(&groups[..k])
            && isolated(t, start, end, b".")
            && card_number(&digits[..total]))
        .then_some(start..end)
    })
}

fn card_grouping(groups: &[usize]) -> bool {
    let total: usize = groups.iter().sum();
    (13..=19).contains(&total)
        && match groups {
            [_] | [4, 6, 4 | 5] => true,
            [4, middle @ .., last] => middle.iter().all(|&g| g == 4) && (1..=4).contains(last),
            _ => false,
        }
}

/// Issuer prefixes: (prefix digits, lowest, highest, shortest card, longest card).
const ISSUERS: &[(usize, u32, u32, usize, usize)] = &[
    (1, 4, 4, 13, 19),       // Visa
    (2, 51, 55, 16, 16),     // Mastercard
    (4, 2221, 2720, 16, 16), // Mastercard
    (2, 34, 34, 15, 15),     // American Express
    (2, 37, 37, 15, 15),     // American Express
    (4, 6011, 6011, 16, 19), // Discover
    (3, 644, 649, 16, 19),   // Discover
    (2, 65, 65, 16, 19),     // Discover, RuPay
    (3, 300, 305, 14, 19),   // Diners Club
    (4, 3095, 3095, 14, 19), // Diners Club
    (2, 36, 36, 14, 19),     // Diners Club
    (2, 38, 39, 16, 19),     // Diners Club
    (4, 3528, 3589, 16, 19), // JCB
    (2, 62, 62, 16, 19),     // UnionPay
    (2, 81, 81, 16, 19),     // UnionPay
    (4, 2200, 2204, 16, 19), // Mir
    (2, 60, 60, 16, 16),     // RuPay
    (3, 508, 508, 16, 16),   // RuPay
    (4, 5018, 5018, 13, 19), // Maestro
    (4, 5020, 5020, 13, 19), // Maestro
    (4, 5038, 5038, 13, 19), // Maestro
    (4, 5893, 5893, 13, 19), // Maestro
    (4, 6304, 6304, 13, 19), // Maestro
    (4, 6759, 6759, 13, 19), // Maestro
    (4, 6761, 6763, 13, 19), // Maestro
];

/// Whether ASCII `digits` (13 to 19 of them) are a card number: a known issuer and Luhn.
fn card_number(digits: &[u8]) -> bool {
    let issuer = ISSUERS.iter().any(|&(n, lo, hi, min, max)| {
        (lo..=hi).contains(&number(&digits[..n])) && (min..=max).contains(&digits.len())
    });
    let luhn: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d - b'0');
            match (i % 2, d * 2) {
                (0, _) => d,
                (_, x) if x > 9 => x - 9,
                (_, x) => x,
            }
        })
        .sum();
    issuer && luhn.is_multiple_of(10)
}

// ---- us_ssn ----

fn ssn_at(t: &[u8], i: usize, run: usize) -> Option<Range<usize>> {
    let sep = byte(t, i + 3);
    let (area, group, serial, end) = if run == 3
        && (sep == b'-' || sep == b' ')
        && run_len(t, i + 4) == 2
        && byte(t, i + 6) == sep
        && run_len(t, i + 7) == 4
        && isolated(t, i, i + 11, &[sep, b'-', b'.'])
    {
        (&t[i..i + 3], &t[i + 4..i + 6], &t[i + 7..i + 11], i + 11)
    } else if run == 9 && ssn_label_before(t, i) && isolated(t, i, i + 9, b"-.") {
        (&t[i..i + 3], &t[i + 3..i + 5], &t[i + 5..i + 9], i + 9)
    } else {
        return None;
    };
    let area = number(area);
    (area != 0 && area != 666 && area < 900 && number(group) != 0 && number(serial) != 0)
        .then_some(i..end)
}

/// Whether the value at `i` is labelled `ssn`: `SSN 1…`, `ssn: 1…`, `"ssn":"1…`, `SSN#1…`.
fn ssn_label_before(t: &[u8], i: usize) -> bool {
    let mut s = i;
    while s > 0 && i - s < 4 && b" \t:=#\"'".contains(&t[s - 1]) {
        s -= 1;
    }
    s >= 3 && t[s - 3..s].eq_ignore_ascii_case(b"ssn") && !before(t, s - 3).is_ascii_alphanumeric()
}

// ---- phone ----

/// The phone number whose first digit run starts at `s` (after a `+` or `(` if it has one).
fn phone_at(t: &[u8], s: usize, run: usize) -> Option<Range<usize>> {
    let prefixed = match before(t, s) {
        b'+' => international(t, s - 1, s, false),
        b'(' => north_american(t, s - 1).or_else(|| national(t, s - 1)),
        _ => None,
    };
    if let Some(end) = prefixed {
        return Some(s - 1..end);
    }
    // Without a prefix a number starts with a trunk or international `0`, with a North
    // American `1-`, or with a North American area code.
    let end = match (t[s], run) {
        (b'0', 3..) if t[s + 1] == b'0' => {
            international(t, s, s + 2, true).or_else(|| national(t, s))
        }
        (b'0', _) => national(t, s),
        (b'1', 1) | (_, 3) => north_american(t, s),
        _ => None,
    }?;
    Some(s..end)
}

/// `isolated` for a phone number, which an extension may follow: `415-555-2671x12`.
fn phone_isolated(t: &[u8], start: usize, end: usize, joiners: &[u8]) -> bool {
    let extension = byte(t, end) == b'x' && byte(t, end + 1).is_ascii_digit();
    alone_before(t, start, joiners) && (extension || alone_after(t, end, joiners))
}

/// A group of a phone number at `i`: digits, or digits in parentheses. Its end and digit count.
fn phone_group(t: &[u8], i: usize) -> Option<(usize, usize)> {
    let paren = byte(t, i) == b'(';
    let digits = i + usize::from(paren);
    let len = run_len(t, digits);
    let end = digits + len;
    match (len, paren) {
        (0, _) => None,
        (_, false) => Some((end, len)),
        (_, true) => (byte(t, end) == b')').then_some((end + 1, len)),
    }
}

/// `+` (or `00`) at `start`, the country code at `cc`, then digit groups.
fn international(t: &[u8], start: usize, cc: usize, need_sep: bool) -> Option<usize> {
    if !matches!(byte(t, cc), b'1'..=b'9') {
        return None;
    }
    let (mut end, mut count) = phone_group(t, cc)?;
    let mut separated = false;
    loop {
        let s = byte(t, end);
        let next = if b" -.".contains(&s) {
            phone_group(t, end + 1)
        } else if s == b'(' || (t[end - 1] == b')' && s.is_ascii_digit()) {
            phone_group(t, end)
        } else {
            None
        };
        let Some((next_end, len)) = next else { break };
        separated = true;
        count += len;
        end = next_end;
        if count > 15 {
            return None;
        }
    }
    ((8..=15).contains(&count) && (separated || !need_sep) && phone_isolated(t, start, end, b"-."))
        .then_some(end)
}

/// `(415) 555-2671`, `415-555-2671`, `415.555.2671`, `415 555 2671`, `1-415-555-2671`.
fn north_american(t: &[u8], start: usize) -> Option<usize> {
    let mut p = start;
    if t[p] == b'1' && b" -.".contains(&byte(t, p + 1)) && run_len(t, p + 1) == 0 {
        p += 2;
    }
    let paren = byte(t, p) == b'(';
    let area = p + usize::from(paren);
    if run_len(t, area) != 3 || (paren && byte(t, area + 3) != b')') {
        return None;
    }
    let mut exchange = area + 3 + usize::from(paren);
    let sep = byte(t, exchange);
    if b" -.".contains(&sep) {
        exchange += 1;
    } else if !paren {
        return None;
    }
    let sep2 = byte(t, exchange + 3);
    let end = exchange + 8;
    // Area codes never start with 0 or 1. Neither do exchanges, but made-up numbers such as
    // `555-123-4567` are common in test data and no less worth masking.
    let ok = matches!(t[area], b'2'..=b'9')
        && run_len(t, exchange) == 3
        && b" -.".contains(&sep2)
        && (paren || sep2 == sep)
        && run_len(t, exchange + 4) == 4
        && phone_isolated(t, start, end, &[sep2, b'-', b'.']);
    ok.then_some(end)
}

/// A national number with a trunk `0`: `020 7946 0958`, `06 12 34 56 78`, `(020) 7946 0958`.
fn national(t: &[u8], start: usize) -> Option<usize> {
    let paren = t[start] == b'(';
    let first = start + usize::from(paren);
    let (mut end, mut count) = phone_group(t, start)?;
    if t[first] != b'0' || !(2..=5).contains(&count) {
        return None;
    }
    let mut sep = None;
    let mut groups = 1;
    loop {
        let s = byte(t, end);
        let gap = if b" -.".contains(&s) && sep.is_none_or(|x| x == s) {
            1
        } else if paren && groups == 1 && s.is_ascii_digit() {
            0
        } else {
            break;
        };
        let len = run_len(t, end + gap);
        if len == 0 {
            break;
        }
        if !(2..=8).contains(&len) {
            return None;
        }
        // The space after `(020)` says nothing about the separator inside the number.
        if !(paren && groups == 1) {
            sep = Some(s);
        }
        groups += 1;
        count += len;
        end += gap + len;
        if count > 11 {
            return None;
        }
    }
    let joiners = [sep.unwrap_or(b'-'), b'-', b'.'];
    (groups >= 2 && count >= 10 && phone_isolated(t, start, end, &joiners)).then_some(end)
}

// ---- iban ----

/// IBAN length by country, from the SWIFT IBAN registry.
#[rustfmt::skip]
const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24), (b"AE", 23), (b"AL", 28), (b"AT", 20), (b"AZ", 28), (b"BA", 20), (b"BE", 16),
    (b"BG", 22), (b"BH", 22), (b"BI", 27), (b"BR", 29), (b"BY", 28), (b"CH", 21), (b"CR", 22),
    (b"CY", 28), (b"CZ", 24), (b"DE", 22), (b"DJ", 27), (b"DK", 18), (b"DO", 28), (b"EE", 20),
    (b"EG", 29), (b"ES", 24), (b"FI", 18), (b"FK", 18), (b"FO", 18), (b"FR", 27), (b"GB", 22),
    (b"GE", 22), (b"GI", 23), (b"GL", 18), (b"GR", 27), (b"GT", 28), (b"HN", 28), (b"HR", 21),
    (b"HU", 28), (b"IE", 22), (b"IL", 23), (b"IQ", 23), (b"IS", 26), (b"IT", 27), (b"JO", 30),
    (b"KW", 30), (b"KZ", 20), (b"LB", 28), (b"LC", 32), (b"LI", 21), (b"LT", 20), (b"LU", 20),
    (b"LV", 21), (b"LY", 25), (b"MC", 27), (b"MD", 24), (b"ME", 22), (b"MK", 19), (b"MN", 20),
    (b"MR", 27), (b"MT", 31), (b"MU", 30), (b"NI", 28), (b"NL", 18), (b"NO", 15), (b"OM", 23),
    (b"PK", 24), (b"PL", 28), (b"PS", 29), (b"PT", 25), (b"QA", 29), (b"RO", 24), (b"RS", 22),
    (b"RU", 33), (b"SA", 24), (b"SC", 31), (b"SD", 18), (b"SE", 24), (b"SI", 19), (b"SK", 24),
    (b"SM", 27), (b"SO", 23), (b"ST", 25), (b"SV", 28), (b"TL", 23), (b"TN", 24), (b"TR", 26),
    (b"UA", 29), (b"VA", 22), (b"VG", 24), (b"XK", 20), (b"YE", 30),
];

/// The IBAN whose check digits start at `s`, after the country code.
fn iban_at(t: &[u8], s: usize, _run: usize) -> Option<Range<usize>> {
    let i = s.checked_sub(2)?;
    if before(t, i).is_ascii_alphanumeric()
        || !t[i].is_ascii_uppercase()
        || !t[i + 1].is_ascii_uppercase()
        || !byte(t, i + 3).is_ascii_digit()
    {
        return None;
    }
    let len = IBAN_LENGTHS.iter().find(|(cc, _)| cc[..] == t[i..i + 2])?.1;
    let grouped = byte(t, i + 4) == b' ';
    let mut iban = [0u8; 34];
    iban[..4].copy_from_slice(&t[i..i + 4]);
    let mut p = i + 4;
    for (n, slot) in iban.iter_mut().enumerate().take(len).skip(4) {
        if grouped && n % 4 == 0 {
            if byte(t, p) != b' ' {
                return None;
            }
            p += 1;
        }
        let b = byte(t, p);
        if !(b.is_ascii_uppercase() || b.is_ascii_digit()) {
            return None;
        }
        *slot = b;
        p += 1;
    }
    // The check digits make the number, read with its first four characters moved to the end
    // and letters as 10 to 35, equal to 1 modulo 97.
    let rest = iban[4..len]
        .iter()
        .chain(&iban[..4])
        .fold(0u32, |r, &b| match b {
            b'0'..=b'9' => (r * 10 + u32::from(b - b'0')) % 97,
            _ => (r * 100 + u32::from(b - b'A') + 10) % 97,
        });
    (rest == 1 && !byte(t, p).is_ascii_alphanumeric()).then_some(i..p)
}

// ---- ip ----

fn ipv4_at(t: &[u8], i: usize, run: usize) -> Option<Range<usize>> {
    if run > 3 || byte(t, i + run) != b'.' {
        return None;
    }
    let mut p = i;
    for part in 0..4 {
        let len = run_len(t, p);
        if !(1..=3).contains(&len) || number(&t[p..p + len]) > 255 {
            return None;
        }
        p += len;
        if part < 3 {
            if byte(t, p) != b'.' {
                return None;
            }
            p += 1;
        }
    }
    let prev = before(t, i);
    let dotted_left = prev == b'.' && i >= 2 && t[i - 2].is_ascii_alphanumeric();
    let next = byte(t, p);
    let dotted_right = next == b'.' && byte(t, p + 1).is_ascii_alphanumeric();
    (!prev.is_ascii_alphanumeric()
        && !dotted_left
        && !next.is_ascii_alphanumeric()
        && !dotted_right)
        .then_some(i..p)
}

fn ipv6s(t: &[u8], sink: &mut Sink) {
    let v6 = |b: u8| b.is_ascii_hexdigit() || b == b':' || b == b'.';
    let mut i = 0;
    while let Some(k) = t[i..].iter().position(|&b| b == b':') {
        let colon = i + k;
        let mut start = colon;
        while start > i && v6(t[start - 1]) {
            start -= 1;
        }
        let mut end = colon;
        while end < t.len() && v6(t[end]) {
            end += 1;
        }
        if let Some(range) = ipv6_in(t, start, end) {
            sink.push(range);
        }
        i = end;
    }
}

/// The IPv6 address in the run of hex digits, colons and dots `t[start..end]`, if it is one.
fn ipv6_in(t: &[u8], mut start: usize, mut end: usize) -> Option<Range<usize>> {
    // Trim punctuation of the surrounding text: `at fe80::1.`, `addr:fe80::1`, `fe80::1: x`.
    while end > start && t[end - 1] == b'.' {
        end -= 1;
    }
    if t[start..end].starts_with(b":") && !t[start..end].starts_with(b"::") {
        start += 1;
    }
    if t[start..end].ends_with(b":") && !t[start..end].ends_with(b"::") {
        end -= 1;
    }
    let run = &t[start..end];
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let plausible = run.len() <= 45
        && run.iter().filter(|&&b| b == b':').count() >= 2
        && run.iter().any(u8::is_ascii_digit)
        && !word(before(t, start))
        && !word(byte(t, end));
    // Every byte of the run is ASCII, so it is valid UTF-8.
    let parsed = plausible && std::str::from_utf8(run).is_ok_and(|s| s.parse::<Ipv6Addr>().is_ok());
    parsed.then_some(start..end)
}

// ---- secret ----

/// Where a secret may start. A literal set, so the regex engine finds it with a vectorised
/// multi-literal search instead of a byte loop: most texts hold none of these.
static SECRET_PREFIXES: LazyLock<regex::bytes::Regex> = LazyLock::new(|| {
    regex::bytes::Regex::new(
        "eyJ|AKIA|ASIA|AIza|gh[pousr]_|github_pat_|xox[abprs]-|[sr]k_live_|sk-|-----BEGIN ",
    )
    .expect("the secret prefixes are a valid regex")
});

fn secrets(t: &[u8], sink: &mut Sink) {
    // A regex search has a fixed cost of a few hundred instructions; on a short text, looking
    // for the first two bytes of a prefix is cheaper and usually rules secrets out.
    let pair = |w: &[u8]| {
        matches!(
            w,
            b"ey" | b"AK" | b"AS" | b"AI" | b"gh" | b"gi" | b"xo" | b"sk" | b"rk" | b"--"
        )
    };
    if t.len() < 64 && !t.windows(2).any(pair) {
        return;
    }
    let mut from = 0;
    while let Some(m) = SECRET_PREFIXES.find_at(t, from) {
        from = m.end();
        if let Some(end) = secret_at(t, m.start()) {
            sink.push(m.start()..end);
            from = end;
        }
    }
}

fn secret_at(t: &[u8], i: usize) -> Option<usize> {
    let rest = &t[i..];
    // A PEM block is unmistakable wherever it starts (even after an escaped `\n`).
    if rest.starts_with(b"-----BEGIN ") {
        return pem(t, i);
    }
    let b64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    if b64url(before(t, i)) {
        return None;
    }
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    let len = if rest.starts_with(b"eyJ") {
        jwt(rest)?
    } else if rest.starts_with(b"AKIA") || rest.starts_with(b"ASIA") {
        token(
            rest,
            4,
            |b| b.is_ascii_uppercase() || b.is_ascii_digit(),
            16,
            16,
        )?
    } else if rest.starts_with(b"AIza") {
        token(rest, 4, b64url, 35, 35)?
    } else if rest.starts_with(b"gh") && b"pousr".contains(&byte(rest, 2)) && byte(rest, 3) == b'_'
    {
        token(rest, 4, alnum, 30, usize::MAX)?
    } else if rest.starts_with(b"github_pat_") {
        token(rest, 11, |b| alnum(b) || b == b'_', 22, usize::MAX)?
    } else if rest.starts_with(b"xox") && b"abprs".contains(&byte(rest, 3)) && byte(rest, 4) == b'-'
    {
        token(rest, 5, |b| alnum(b) || b == b'-', 10, usize::MAX)?
    } else if rest.starts_with(b"sk_live_") || rest.starts_with(b"rk_live_") {
        token(rest, 8, alnum, 16, usize::MAX)?
    } else if rest.starts_with(b"sk-") {
        let len = token(rest, 3, b64url, 32, usize::MAX)?;
        // A long kebab-case word after `sk-` is not a key; random key text has both.
        let key = &rest[3..len];
        (key.iter().any(u8::is_ascii_digit) && key.iter().any(u8::is_ascii_uppercase))
            .then_some(len)?
    } else {
        return None;
    };
    Some(i + len)
}

/// The length of `prefix` bytes followed by `min..=max` bytes that `allowed` accepts, standing
/// apart from a following letter, digit or underscore.
fn token(
    rest: &[u8],
    prefix: usize,
    allowed: impl Fn(u8) -> bool,
    min: usize,
    max: usize,
) -> Option<usize> {
    let n = rest[prefix..].iter().take_while(|&&b| allowed(b)).count();
    let next = byte(rest, prefix + n);
    ((min..=max).contains(&n) && !next.is_ascii_alphanumeric() && next != b'_')
        .then_some(prefix + n)
}

/// The length of the JWT at the start of `rest`: a header of at least 10 base64url characters,
/// a payload and a signature (empty when unsigned: `header.payload.`), or the five segments of
/// an encrypted token. Each segment is read once, so failing candidates cost little.
fn jwt(rest: &[u8]) -> Option<usize> {
    let segment = |from: usize| {
        from + rest[from..]
            .iter()
            .take_while(|&&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            .count()
    };
    let header = segment(0);
    if header < 10 || byte(rest, header) != b'.' {
        return None;
    }
    let payload = segment(header + 1);
    if byte(rest, payload) != b'.' {
        return None;
    }
    let mut end = segment(payload + 1);
    // A dot not followed by a segment is the text's, not the token's.
    for _ in 0..2 {
        if byte(rest, end) != b'.' || segment(end + 1) == end + 1 {
            break;
        }
        end = segment(end + 1);
    }
    Some(end)
}

/// The end of the PEM private key whose `-----BEGIN ` is at `i`.
fn pem(t: &[u8], i: usize) -> Option<usize> {
    let head = i + b"-----BEGIN ".len();
    let label_len = t[head..].iter().take(64).position(|&b| b == b'-')?;
    let label = &t[head..head + label_len];
    let private = label.windows(11).any(|w| w == b"PRIVATE KEY")
        && label
            .iter()
            .all(|&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ');
    if !private || !t[head + label_len..].starts_with(b"-----") {
        return None;
    }
    let mut p = head + label_len + 5;
    while let Some(k) = t[p..].windows(9).position(|w| w == b"-----END ") {
        let q = p + k + 9;
        if t[q..].starts_with(label) && t[q + label.len()..].starts_with(b"-----") {
            return Some(q + label.len() + 5);
        }
        p = q;
    }
    // A key cut off before its END line is still a key.
    Some(t.len())
}

#[cfg(test)]
#[path = "detect_tests.rs"]
mod tests;
