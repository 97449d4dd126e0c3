//! What an agent reads when the gateway refuses its token, end to end: real clients (psql and
//! tokio-postgres) in a managed cgroup log in through the real gateway with one bad token per
//! cause, and each must read its own exact message (not one generic "the token is not valid"),
//! with SQLSTATE 28P01; the operator's `refused` event names the cause too. A token over the
//! size limit, even 1.4 MB of it, is refused by its size. Root required.
//!
//! Ports: PostgreSQL 19401 behind listener 19400; the TCP target 127.0.0.2:19411 behind 19410.

use std::{
    os::unix::fs::PermissionsExt,
    process::Command,
    time::{Duration, Instant},
};

use agentgate_tests::{pg::*, *};
use serde_json::{json, Value};

fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn header() -> Value {
    json!({"alg": "RS256", "kid": "test-key-1", "typ": "JWT"})
}

/// Claims the test policy accepts: issuer, audience, group `agents`, ten minutes.
fn claims() -> Value {
    let t = now();
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "agent-msgs", "groups": ["agents"], "iat": t, "exp": t + 600})
}

fn with(mut v: Value, key: &str, val: Value) -> Value {
    v[key] = val;
    v
}

fn without(mut v: Value, key: &str) -> Value {
    v.as_object_mut().unwrap().remove(key);
    v
}

/// `header.claims`, signed RS256 with `key_pem` (an RSA private key).
fn signed_with(key_pem: &[u8], header: &Value, claims: &Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(key_pem).expect("RSA PEM");
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::RS256)
        .expect("sign");
    format!("{input}.{sig}")
}

/// Signed with the test identity provider's key.
fn signed(header: &Value, claims: &Value) -> String {
    let key = std::fs::read(fixtures().join("test-signing-key.pem")).expect("test signing key");
    signed_with(&key, header, claims)
}

fn unsigned(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// A valid token padded (in a claim the gateway ignores) to exactly `len` bytes.
fn padded(len: usize) -> String {
    let base = signed(&header(), &with(claims(), "pad", json!(""))).len();
    // Three payload bytes are four base64url characters; the signature's length is fixed.
    let mut pad = (len - base) / 4 * 3;
    loop {
        let t = signed(&header(), &with(claims(), "pad", json!("x".repeat(pad))));
        match t.len().cmp(&len) {
            std::cmp::Ordering::Equal => return t,
            std::cmp::Ordering::Less => pad += 1,
            // Not every length is reachable with padding alone.
            std::cmp::Ordering::Greater => return unsigned_of(len),
        }
    }
}

/// An `alg: none` token of exactly `len` bytes (its "signature" is padding).
fn unsigned_of(len: usize) -> String {
    let t = unsigned(&with(header(), "alg", json!("none")), &claims());
    format!("{t}{}", "A".repeat(len - t.len()))
}

/// The message after `FATAL:  ` in what psql printed.
fn fatal(text: &str) -> String {
    text.lines()
        .find_map(|l| l.split_once("FATAL:  ").map(|(_, m)| m.trim().to_string()))
        .unwrap_or_else(|| panic!("no FATAL in psql's output: {text}"))
}

/// Logs in with psql (`-w`: the password comes from a passfile, whatever its size; never a
/// prompt) from the agent cgroup; returns what psql printed.
fn psql_login(p: &PgGateway, cg: &Cgroup, password: Option<&str>) -> String {
    let mut cmd = psql_command(&conninfo(
        "127.0.0.1",
        p.pg.port,
        "agent",
        "",
        "agentdb",
        "disable",
    ));
    cmd.args([
        "-w",
        "-A",
        "-t",
        "-c",
        "SELECT 'logged in as ' || current_user",
    ]);
    let passfile = std::env::temp_dir().join(format!("{}-pgpass", p.name));
    if let Some(password) = password {
        std::fs::write(&passfile, format!("*:*:*:*:{password}\n")).expect("write passfile");
        std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600))
            .expect("chmod passfile");
        cmd.env("PGPASSFILE", &passfile);
    }
    place(&mut cmd, Some(cg), None);
    let out = cmd.output().expect("run psql");
    let _ = std::fs::remove_file(&passfile);
    output_text(&out)
}

/// Logs in with tokio-postgres (`pg-agent ping`); returns (SQLSTATE, message) of the refusal.
fn driver_login(p: &PgGateway, token: &str) -> (String, String) {
    let mut cmd = Command::new(pg_agent_bin());
    cmd.args(["ping", &p.agent_conninfo(token, "disable")]);
    place(&mut cmd, Some(&p.agent), None);
    let out = cmd.output().expect("run pg-agent");
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("pg-agent printed {}: {e}", output_text(&out)));
    let e = &v["connect_error"];
    assert!(e.is_object(), "the driver got in: {v}");
    (s(e, "sqlstate").to_string(), s(e, "message").to_string())
}

/// The next `refused` event after the first `skip`.
fn refusal(gw: &Gateway, skip: usize) -> Value {
    gw.wait_for(Duration::from_secs(10), |e| e["event"] == "refused", skip)
}

#[test]
fn each_bad_token_reads_its_own_cause() {
    let p = PgGateway::start(
        "idmsg",
        19400,
        19401,
        PgOptions { tls: false },
        &PgTargetOptions::default(),
    );
    let t = now();
    // The tokens are made right: the same construction, unaltered, logs in.
    let good = signed(&header(), &claims());
    let out = psql_login(&p, &p.agent, Some(&good));
    assert!(
        out.contains(&format!("logged in as {ROLE_SCRAM}")),
        "a valid token was refused: {out}"
    );

    let mut tampered = good.clone().into_bytes();
    let mid = tampered.len() - 20;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(),
        &jsonwebtoken::EncodingKey::from_secret(b"the public key, as a secret"),
    )
    .unwrap();
    let over = padded(17_000);
    assert_eq!(over.len(), 17_000);
    let cases: Vec<(&str, String, &str, String)> = vec![
        (
            "not a JWT",
            "not-a-jwt".into(),
            "malformed",
            "the token is not a JWT (three base64url parts separated by dots)".into(),
        ),
        (
            "unknown issuer",
            signed(
                &header(),
                &with(claims(), "iss", json!("https://evil.example")),
            ),
            "unknown_issuer",
            "the token's issuer is not trusted".into(),
        ),
        (
            "unknown kid",
            signed(&with(header(), "kid", json!("rotated-away")), &claims()),
            "unknown_kid",
            "the token's signing key (kid) is unknown".into(),
        ),
        (
            "bad signature",
            tampered,
            "bad_signature",
            "the token's signature does not verify".into(),
        ),
        (
            "alg none",
            unsigned(&with(header(), "alg", json!("none")), &claims()),
            "alg_not_allowed",
            "the token's algorithm 'none' is not accepted (allowed: RS256)".into(),
        ),
        (
            "HS256",
            hs256,
            "alg_not_allowed",
            "the token's algorithm 'HS256' is not accepted (allowed: RS256)".into(),
        ),
        (
            "crit header",
            signed(&with(header(), "crit", json!(["exp"])), &claims()),
            "unsupported_header",
            "the token has a critical header (crit) the gateway does not understand".into(),
        ),
        (
            "no exp",
            signed(&header(), &without(claims(), "exp")),
            "missing_claim",
            "the token has no exp claim".into(),
        ),
        (
            "string exp",
            signed(&header(), &with(claims(), "exp", json!("in ten minutes"))),
            "invalid_claim",
            "the token's exp claim is not a number".into(),
        ),
        (
            "expired",
            signed(
                &header(),
                &with(
                    with(claims(), "iat", json!(t - 1200)),
                    "exp",
                    json!(t - 600),
                ),
            ),
            "expired",
            "the token has expired".into(),
        ),
        (
            "not yet valid",
            signed(&header(), &with(claims(), "nbf", json!(t + 300))),
            "not_yet_valid",
            "the token is not valid yet (nbf)".into(),
        ),
        (
            "wrong audience",
            signed(&header(), &with(claims(), "aud", json!("billing"))),
            "wrong_audience",
            "the token is not meant for this gateway (aud)".into(),
        ),
        (
            "lifetime",
            signed(
                &header(),
                &with(with(claims(), "iat", json!(t)), "exp", json!(t + 3600)),
            ),
            "lifetime_too_long",
            "the token's lifetime (exp - iat) of 3600 s is longer than the allowed 900 s".into(),
        ),
        (
            "17000 bytes",
            over,
            "too_large",
            "the token is 17000 bytes, over the gateway's limit of 16384 bytes".into(),
        ),
    ];
    let mut failures = Vec::new();
    for (what, token, code, message) in &cases {
        let expected = format!("agentgate: {message}");
        // psql: the text as the agent's user reads it.
        let before = p.gw.count("refused");
        let out = psql_login(&p, &p.agent, Some(token));
        let got = fatal(&out);
        if got != expected {
            failures.push(format!("{what} (psql): {got:?}, expected {expected:?}"));
        }
        // A driver: the SQLSTATE too.
        let (sqlstate, got) = driver_login(&p, token);
        if (sqlstate.as_str(), got.as_str()) != ("28P01", expected.as_str()) {
            failures.push(format!(
                "{what} (tokio-postgres): {sqlstate} {got:?}, expected 28P01 {expected:?}"
            ));
        }
        // The operator's events, one per login (written after the agent's answer): the
        // cause's code and the details.
        for skip in [before, before + 1] {
            let ev = refusal(&p.gw, skip);
            if s(&ev, "code") != *code || !s(&ev, "reason").starts_with("token refused: ") {
                failures.push(format!("{what}: event {ev}, expected code {code}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_token_over_the_limit_is_refused_by_its_size() {
    let p = PgGateway::start(
        "idmsg-big",
        19402,
        19403,
        PgOptions { tls: false },
        &PgTargetOptions::default(),
    );
    // 1.4 MB as the password: the gateway reads it through (psql is still sending when the
    // gateway decides) and says how long it is, and the limit.
    let huge = padded(1_400_000);
    let before = p.gw.count("refused");
    let started = Instant::now();
    let out = psql_login(&p, &p.agent, Some(&huge));
    assert_eq!(
        fatal(&out),
        "agentgate: the token is 1400000 bytes, over the gateway's limit of 16384 bytes",
        "{out}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "{out}");
    let ev = refusal(&p.gw, before);
    assert_eq!(s(&ev, "code"), "too_large", "{ev}");
    // Exactly at the limit is not too large: it is read and verified (and refused for its
    // algorithm).
    let at = unsigned_of(16_384);
    let out = psql_login(&p, &p.agent, Some(&at));
    assert_eq!(
        fatal(&out),
        "agentgate: the token's algorithm 'none' is not accepted (allowed: RS256)",
        "{out}"
    );
    // The gateway lost nothing: the next agent logs in.
    let out = psql_login(&p, &p.agent, Some(&agent_jwt("agent-after")));
    assert!(out.contains("logged in as"), "{out}");

    // A workload whose token is a file gets the same messages (no password asked).
    let cases = [
        (
            signed(
                &header(),
                &with(
                    with(claims(), "iat", json!(now() - 1200)),
                    "exp",
                    json!(now() - 600),
                ),
            ),
            "agentgate: the token has expired".to_string(),
        ),
        (
            padded(20_000),
            "agentgate: the token is 20000 bytes, over the gateway's limit of 16384 bytes".into(),
        ),
        (String::new(), "agentgate: the token is empty".into()),
    ];
    for (token, expected) in &cases {
        p.token.write(token);
        let out = psql_login(&p, &p.file_agent, None);
        assert_eq!(fatal(&out), *expected, "{out}");
    }
}

#[test]
fn tcp_refusals_name_the_cause_for_the_operator() {
    let HostSetup {
        token,
        anchor: _anchor,
        name: _name,
        target,
        agent,
        gw,
    } = host_setup("idmsg-tcp", 19410, 19411, &["127.0.0.2"]);
    let good = signed(&header(), &claims());
    let mut tampered = good.clone().into_bytes();
    let mid = tampered.len() - 20;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let cases = [
        (
            String::from_utf8(tampered).unwrap(),
            "bad_signature",
            "signature verification failed",
        ),
        (
            signed(&with(header(), "crit", json!(["exp"])), &claims()),
            "unsupported_header",
            "unsupported parameter \"crit: [\\\"exp\\\"]\"",
        ),
        (
            signed(&header(), &with(claims(), "exp", json!("soon"))),
            "invalid_claim",
            "claim \"exp\" is invalid: not a NumericDate",
        ),
        (
            "a.b".into(),
            "malformed",
            "malformed token: expected three dot-separated parts",
        ),
        (
            padded(20_000),
            "too_large",
            "token is 20000 bytes, over the 16384-byte limit",
        ),
    ];
    for (content, code, words) in &cases {
        token.write(content);
        let r = probe(Some(&agent), None, target.addr);
        assert!(
            !r.greeting.starts_with("peer="),
            "{code}: got through: {r:?}"
        );
        let ev = gw.wait_for(
            Duration::from_secs(10),
            |e| e["event"] == "refused" && e["pid"] == r.pid,
            0,
        );
        assert_eq!(s(&ev, "code"), *code, "{ev}");
        assert!(s(&ev, "reason").contains(words), "{words}: {ev}");
    }
    assert_eq!(target.count(), 0, "a refused connection reached the target");
}
