//! The web console's sign-in (issue 22), end to end without a browser: the real gateway with
//! `--admin-http` on loopback, the strict test OpenID provider (`agentgate_tests::oidc`, HTTPS
//! with its own CA, discovery), and a cookie-keeping HTTP client that follows the redirects and
//! submits the provider's form by hand. The CSRF test holds a real `DROP TABLE` of an agent on a
//! real PostgreSQL. Root required.
//!
//! Ports (this binary's range 21000–21019): test n uses 21000 + 4n (gateway listener),
//! + 1 (admin HTTP on 127.0.0.1), + 2 (the provider on 127.0.0.1), + 3 (PostgreSQL).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use agentgate_tests::{
    bg::Bg,
    oidc::{enc, parse_form, Answered, Browser, Idp, IdpOptions, Misbehave},
    pg::*,
    *,
};
use serde_json::{json, Value};

const CLIENT_ID: &str = "agentgate-console";
const SESSION: &str = "agentgate_session";
const WAIT: Duration = Duration::from_secs(30);

struct Ports {
    listen: u16,
    admin: SocketAddr,
    idp: SocketAddr,
    pg: u16,
}

fn ports(n: u16) -> Ports {
    assert!(n < 5);
    let base = 21000 + 4 * n;
    Ports {
        listen: base,
        admin: format!("127.0.0.1:{}", base + 1).parse().unwrap(),
        idp: format!("127.0.0.1:{}", base + 2).parse().unwrap(),
        pg: base + 3,
    }
}

fn redirect_url(admin: SocketAddr) -> String {
    format!("http://{admin}/console/callback")
}

fn start_idp(p: &Ports) -> Idp {
    let users = [
        ("alice", vec!["dba"]),
        ("sam", vec!["dba", "security"]),
        ("ada", vec!["sec-admins"]),
    ];
    Idp::start(IdpOptions {
        listen: p.idp,
        client_id: CLIENT_ID.into(),
        client_secret: None,
        redirect_uri: redirect_url(p.admin),
        users: users
            .iter()
            .map(|(u, g)| (u.to_string(), g.iter().map(|g| g.to_string()).collect()))
            .collect(),
    })
}

/// The `console:` section (and nothing else) with these auditors and extra lines.
fn console_section(admin: SocketAddr, auditors: &str, extra: &str) -> String {
    format!(
        "console:\n  identity_provider: corp\n  client_id: {CLIENT_ID}\n  redirect_url: {}\n  scopes: [openid, profile, groups]\n  auditors: [{auditors}]\n  admins: [sec-admins]\n{extra}",
        redirect_url(admin)
    )
}

/// A whole policy for a gateway without PostgreSQL: the agents' test provider, the console's
/// provider `corp`, one tcp target nobody uses, and `console` (a section or nothing).
fn policy(p: &Ports, idp: &Idp, console: &str) -> String {
    format!(
        "version: 2\ngateway:\n  listen_port: {listen}\n\
         identity_providers:\n  - name: test-idp\n    issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n\
         \x20   jwks: {{from: file, path: {jwks}}}\n    algorithms: [RS256]\n{corp}\
         workloads:\n  - name: agents\n    cgroup: \"/consauth-nobody-*\"\n    mode: host\n\
         \x20   token: {{from: file, path: /nonexistent/token}}\n\
         targets:\n  - name: svc\n    protocol: tcp\n    addresses: [\"127.0.0.1\"]\n    ports: [21019]\n\
         rules:\n  - name: agents-to-svc\n    when: {{workloads: [agents], groups: [agents]}}\n    targets: [svc]\n{console}",
        listen = p.listen,
        jwks = fixtures().join("test-jwks.json").display(),
        corp = idp.provider_yaml("corp", "agentgate-agents"),
    )
}

fn start_gateway(tag: &str, p: &Ports, idp: &Idp, console: &str) -> Gateway {
    let admin = p.admin.to_string();
    Gateway::start_with_args(
        tag,
        &policy(p, idp, console),
        None,
        &["--admin-http", &admin],
    )
}

/// Writes a policy file and waits until the policy is in force.
fn reload(gw: &Gateway, file: &str, text: &str) {
    gw.reload_policy_file(file, text);
}

/// `GET /console/login[?next=…]`: the gateway's redirect to the provider (its URL).
fn start_login(b: &mut Browser, base: &str, idp: &Idp, next: Option<&str>) -> String {
    let q = next
        .map(|n| format!("?next={}", enc(n)))
        .unwrap_or_default();
    let a = b.get(&format!("{base}/console/login{q}"));
    assert_eq!(a.status, 302, "login: {a:?}");
    let to = a.header("location").expect("location").to_string();
    assert!(
        to.starts_with(&format!("{}/authorize?", idp.issuer)),
        "login sends to {to}"
    );
    to
}

/// The provider's form, filled in as `user` and submitted: the callback URL it redirects to.
fn authorize(b: &mut Browser, authz: &str, user: &str, base: &str) -> String {
    let form = b.get(authz);
    assert_eq!(form.status, 200, "authorize: {form:?}");
    assert!(
        form.body.contains("id=\"username\"") && form.body.contains("id=\"sign-in\""),
        "{}",
        form.body
    );
    let posted = b.request(
        "POST",
        authz,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(&format!("username={user}")),
    );
    assert_eq!(posted.status, 302, "authorize POST: {posted:?}");
    let cb = posted.header("location").expect("location").to_string();
    assert!(cb.starts_with(&format!("{base}/console/callback?")), "{cb}");
    cb
}

/// The whole sign-in as `user`: the callback's answer.
fn sign_in(b: &mut Browser, base: &str, idp: &Idp, user: &str, next: Option<&str>) -> Answered {
    let authz = start_login(b, base, idp, next);
    let cb = authorize(b, &authz, user, base);
    b.get(&cb)
}

fn me(b: &mut Browser, base: &str) -> Answered {
    b.get(&format!("{base}/v1/me"))
}

fn reason(a: &Answered) -> String {
    a.json()["reason"].as_str().unwrap_or("").to_string()
}

/// The `data-reason` of a sign-in error page.
fn page_reason(a: &Answered) -> String {
    a.body
        .split("data-reason=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("")
        .to_string()
}

/// Where the callback's page sends the browser (its `<meta http-equiv="refresh">`).
fn refresh_target(a: &Answered) -> String {
    a.body
        .split("content=\"0;url=")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("")
        .to_string()
}

fn replace_param(url: &str, name: &str, value: &str) -> String {
    let (head, q) = url.split_once('?').expect("query");
    let q: Vec<String> = q
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k == name => format!("{k}={}", enc(value)),
            _ => kv.to_string(),
        })
        .collect();
    format!("{head}?{}", q.join("&"))
}

fn param(url: &str, name: &str) -> String {
    parse_form(url.split_once('?').map(|(_, q)| q).unwrap_or(""))
        .remove(name)
        .unwrap_or_default()
}

fn authority(p: &Ports) -> String {
    p.admin.to_string()
}

/// A sign-in that must fail: no session cookie set, and the error page's reason.
fn refused(a: &Answered, status: u16, why: &str) {
    assert_eq!((a.status, page_reason(a).as_str()), (status, why), "{a:?}");
    assert!(a.set_cookie(SESSION).is_none(), "a session was made: {a:?}");
}

// ---------------------------------------------------------------------------------------------
// 0. Sign-in, the cookie's flags, roles from the policy; nothing answers without a sign-in.
// ---------------------------------------------------------------------------------------------

#[test]
fn sign_in_gives_a_strict_cookie_and_the_policys_role() {
    require_root();
    let p = ports(0);
    let idp = start_idp(&p);
    let gw = start_gateway(
        "cons-signin",
        &p,
        &idp,
        &console_section(p.admin, "security", ""),
    );
    let base = format!("http://{}", p.admin);
    let mut b = Browser::new(&idp.ca_path);

    // Nothing without a sign-in: the page redirects to the login, every API call is 401.
    let a = b.get(&format!("{base}/console/"));
    assert_eq!(a.status, 302, "{a:?}");
    assert_eq!(
        a.header("location"),
        Some("/console/login?next=%2Fconsole%2F")
    );
    assert!(
        a.header("content-security-policy")
            .is_some_and(|c| c.contains("frame-ancestors 'none'")),
        "{a:?}"
    );
    for (method, path) in [
        ("GET", "/v1/me"),
        ("GET", "/v1/approvals"),
        ("GET", "/v1/approvals/ar-000000000000"),
        ("POST", "/v1/approvals/ar-000000000000/approve"),
        ("GET", "/v1/sessions"),
        ("GET", "/v1/audit"),
        ("POST", "/v1/revocations"),
    ] {
        let a = b.request(method, &format!("{base}{path}"), &[], None);
        assert_eq!(
            (a.status, reason(&a).as_str()),
            (401, "no_token"),
            "{method} {path}: {a:?}"
        );
    }

    // alice signs in: PKCE S256, state and nonce of 256 bits went to the provider.
    let authz = start_login(&mut b, &base, &idp, None);
    for (k, len) in [("state", 43), ("nonce", 43), ("code_challenge", 43)] {
        assert_eq!(param(&authz, k).len(), len, "{k} in {authz}");
    }
    assert_eq!(param(&authz, "code_challenge_method"), "S256");
    assert_eq!(param(&authz, "client_id"), CLIENT_ID);
    assert_eq!(param(&authz, "redirect_uri"), redirect_url(p.admin));
    assert_eq!(param(&authz, "scope"), "openid profile groups");
    let cb = authorize(&mut b, &authz, "alice", &base);
    let a = b.get(&cb);
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(refresh_target(&a), "/console/", "{}", a.body);
    let cookie = a.set_cookie(SESSION).expect("session cookie").to_string();
    let attrs: Vec<String> = cookie
        .split(';')
        .skip(1)
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    for want in ["httponly", "secure", "samesite=strict", "path=/"] {
        assert!(attrs.iter().any(|a| a == want), "{want} missing: {cookie}");
    }
    let id = b.cookie(&authority(&p), SESSION).expect("kept");
    assert_eq!(id.len(), 43, "256-bit session id: {id}");
    // The public client proved the code with its verifier at the token endpoint.
    let token_req = idp
        .log()
        .into_iter()
        .rfind(|r| r["path"] == "/token")
        .expect("token request");
    assert_eq!(token_req["status"], 200, "{token_req}");
    assert_eq!(token_req["form"]["client_id"], CLIENT_ID);
    assert_eq!(
        token_req["form"]["code_verifier"].as_str().map(str::len),
        Some(43)
    );

    let page = b.get(&format!("{base}/console/"));
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/html")));
    assert!(page.header("content-security-policy").is_some());
    let v = me(&mut b, &base).json();
    assert_eq!(v["issuer"], idp.issuer.as_str(), "{v}");
    assert_eq!(v["subject"], "alice", "{v}");
    assert_eq!(v["name"], "alice (test)", "{v}");
    assert_eq!(v["groups"], json!(["dba"]), "{v}");
    assert_eq!(v["role"], "approver", "{v}");
    assert_eq!(v["via"], "session", "{v}");
    assert_eq!(v["csrf_token"].as_str().map(str::len), Some(43), "{v}");
    let expires = v["expires_ms"].as_u64().unwrap_or(0);
    let in_an_hour = now() * 1000 + 3_600_000;
    assert!(expires.abs_diff(in_an_hour) < 60_000, "{v}");
    let a = b.get(&format!("{base}/v1/approvals"));
    assert_eq!(a.status, 200, "{a:?}");

    // Roles come from the policy's groups: auditor, admin.
    for (user, role) in [("sam", "auditor"), ("ada", "admin")] {
        let mut other = Browser::new(&idp.ca_path);
        assert_eq!(sign_in(&mut other, &base, &idp, user, None).status, 200);
        let v = me(&mut other, &base).json();
        assert_eq!(
            (v["subject"].as_str(), v["role"].as_str()),
            (Some(user), Some(role)),
            "{v}"
        );
    }

    // The bearer API is still there, without CSRF and without a cookie.
    let mut script = Browser::new(&idp.ca_path);
    let bearer = format!("Bearer {}", mint("bot", &["dba"], now(), now() + 300));
    let a = script.request(
        "GET",
        &format!("{base}/v1/me"),
        &[("Authorization", &bearer)],
        None,
    );
    assert_eq!(a.status, 200, "{a:?}");
    let v = a.json();
    assert_eq!(
        (v["via"].as_str(), v["role"].as_str()),
        (Some("bearer"), Some("approver")),
        "{v}"
    );
    assert!(v.get("csrf_token").is_none(), "{v}");
    drop(gw);
}

// ---------------------------------------------------------------------------------------------
// 1. Attacks on the sign-in.
// ---------------------------------------------------------------------------------------------

#[test]
fn forged_replayed_and_misissued_sign_ins_make_no_session() {
    require_root();
    let p = ports(1);
    let idp = start_idp(&p);
    let gw = start_gateway(
        "cons-attacks",
        &p,
        &idp,
        &console_section(p.admin, "security", ""),
    );
    let base = format!("http://{}", p.admin);
    let mut b = Browser::new(&idp.ca_path);

    // A callback with a state the gateway never made.
    let authz = start_login(&mut b, &base, &idp, None);
    let cb = authorize(&mut b, &authz, "alice", &base);
    let forged = replace_param(&cb, "state", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    refused(&b.get(&forged), 400, "bad_state");
    refused(&b.get(&replace_param(&cb, "state", "")), 400, "bad_state");
    // The same callback in another browser (not the one that started the login).
    let mut thief = Browser::new(&idp.ca_path);
    refused(&thief.get(&cb), 400, "bad_state");
    // The state was spent by that attempt: the real browser cannot use it either.
    refused(&b.get(&cb), 400, "bad_state");

    // A good sign-in; then its callback again (reused state).
    let authz = start_login(&mut b, &base, &idp, None);
    let cb = authorize(&mut b, &authz, "alice", &base);
    let ok = b.get(&cb);
    assert_eq!(ok.status, 200, "{ok:?}");
    b.forget(&authority(&p), SESSION);
    refused(&b.get(&cb), 400, "bad_state");

    // A replayed code: the used code with a fresh, valid state. The provider refuses it.
    let used = param(&cb, "code");
    let authz2 = start_login(&mut b, &base, &idp, None);
    let fresh_state = param(&authz2, "state");
    let replay = format!(
        "{base}/console/callback?code={}&state={}",
        enc(&used),
        enc(&fresh_state)
    );
    refused(&b.get(&replay), 502, "token_exchange");

    // A code exchanged with another login's verifier: login A's code with login B's state.
    let authz_a = start_login(&mut b, &base, &idp, None);
    let authz_b = start_login(&mut b, &base, &idp, None);
    let cb_a = authorize(&mut b, &authz_a, "alice", &base);
    let swapped = replace_param(&cb_a, "state", &param(&authz_b, "state"));
    let before = idp.log().len();
    refused(&b.get(&swapped), 502, "token_exchange");
    let tokens: Vec<Value> = idp.log()[before..]
        .iter()
        .filter(|r| r["path"] == "/token")
        .cloned()
        .collect();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(
        tokens[0]["status"], 400,
        "the provider took a wrong verifier: {tokens:?}"
    );
    assert_eq!(me(&mut b, &base).status, 401);

    // ID tokens the provider gets wrong on purpose.
    for (m, why) in [
        (Misbehave::WrongNonce, "nonce"),
        (Misbehave::WrongAudience, "id_token"),
        (Misbehave::WrongIssuer, "id_token"),
        (Misbehave::Expired, "id_token"),
        (Misbehave::ForeignKey, "id_token"),
    ] {
        idp.misbehave(m);
        let a = sign_in(&mut b, &base, &idp, "alice", None);
        assert_eq!(page_reason(&a), why, "{m:?}: {a:?}");
        refused(&a, 502, why);
        assert_eq!(me(&mut b, &base).status, 401, "{m:?}");
    }
    idp.misbehave(Misbehave::No);

    // Forged cookies.
    for forged in [
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "x",
        "../../etc",
    ] {
        b.set_cookie(&authority(&p), SESSION, forged);
        let a = me(&mut b, &base);
        assert_eq!(
            (a.status, reason(&a).as_str()),
            (401, "no_session"),
            "{a:?}"
        );
        assert_eq!(b.get(&format!("{base}/console/")).status, 302);
    }
    b.forget(&authority(&p), SESSION);

    // No open redirect: `next` is a console path or the console's home.
    for (next, to) in [
        ("https://evil.example/", "/console/"),
        ("//evil", "/console/"),
        ("/console//evil.example", "/console/"),
        ("/\\evil.example", "/console/"),
        (
            "/console/#/approvals/ar-0123456789ab",
            "/console/#/approvals/ar-0123456789ab",
        ),
    ] {
        let a = sign_in(&mut b, &base, &idp, "alice", Some(next));
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(refresh_target(&a), to, "next={next}");
    }

    // An expired session: a reload makes sign-ins last 2 s (the ones after it).
    reload(
        &gw,
        "policy.yaml",
        &policy(
            &p,
            &idp,
            &console_section(p.admin, "security", "  session_ttl_secs: 2\n"),
        ),
    );
    let mut short = Browser::new(&idp.ca_path);
    assert_eq!(sign_in(&mut short, &base, &idp, "alice", None).status, 200);
    assert_eq!(me(&mut short, &base).status, 200);
    std::thread::sleep(Duration::from_millis(2500));
    let a = me(&mut short, &base);
    assert_eq!(
        (a.status, reason(&a).as_str()),
        (401, "no_session"),
        "{a:?}"
    );
    // The one signed in before the reload keeps its hour.
    assert_eq!(
        me(&mut b, &base).status,
        200,
        "a reload ended an older sign-in"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. CSRF on a real approval, and sign-out.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_cookie_decides_only_with_the_csrf_token_from_the_console() {
    require_root();
    let p = ports(2);
    let idp = start_idp(&p);
    let admin = p.admin.to_string();
    let pg = PgGateway::start_with_args(
        "cons-csrf",
        p.listen,
        p.pg,
        PgOptions::default(),
        &PgTargetOptions {
            extra_rules: approval_rule(
                "drops-need-dba",
                r#"{patterns: ["(?i)^drop table"]}"#,
                "{approvers: [dba], timeout_secs: 120}",
            ),
            ..Default::default()
        },
        &["--admin-http", &admin],
    );
    // The console (and its provider) in a second policy file.
    reload(
        &pg.gw,
        "zz-console.yaml",
        &format!(
            "version: 2\nidentity_providers:\n{}{}",
            idp.provider_yaml("corp", "agentgate-agents"),
            console_section(p.admin, "security", "")
        ),
    );
    pg.pg.sql_in(
        "agentdb",
        &format!("CREATE TABLE t (x int); ALTER TABLE t OWNER TO {ROLE_SCRAM};"),
    );
    let base = format!("http://{}", p.admin);
    let mut b = Browser::new(&idp.ca_path);
    assert_eq!(sign_in(&mut b, &base, &idp, "alice", None).status, 200);
    let csrf = me(&mut b, &base).json()["csrf_token"]
        .as_str()
        .expect("csrf token")
        .to_string();

    // The agent's DROP is held; alice sees it in her inbox.
    let mut agent = Bg::spawn(
        "pg_session.py",
        pg_session_command(&pg.agent_conninfo(&agent_jwt("agent-csrf"), "disable")),
        &pg.agent,
    );
    agent.send_line(&json!("DROP TABLE t").to_string());
    let deadline = Instant::now() + WAIT;
    let id = loop {
        let a = b.get(&format!("{base}/v1/approvals"));
        assert_eq!(a.status, 200, "{a:?}");
        if let Some(id) = a.json()["requests"][0]["id"].as_str() {
            break id.to_string();
        }
        assert!(Instant::now() < deadline, "no held request: {a:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let approve = format!("{base}/v1/approvals/{id}/approve");
    let json_type = ("Content-Type", "application/json");
    let ours = format!("http://{}", p.admin);
    for (headers, what) in [
        (vec![json_type], "no CSRF token"),
        (
            vec![
                json_type,
                (
                    "X-CSRF-Token",
                    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                ),
            ],
            "a wrong CSRF token",
        ),
        (vec![json_type, ("X-CSRF-Token", "")], "an empty CSRF token"),
        (
            vec![
                json_type,
                ("X-CSRF-Token", &csrf),
                ("Origin", "http://evil.example"),
            ],
            "a foreign Origin",
        ),
        (
            vec![json_type, ("X-CSRF-Token", &csrf), ("Origin", "null")],
            "an opaque Origin",
        ),
        (
            vec![
                json_type,
                ("X-CSRF-Token", &csrf),
                ("Origin", "http://127.0.0.1:1"),
            ],
            "another port",
        ),
    ] {
        let a = b.request("POST", &approve, &headers, Some("{\"reason\": \"csrf\"}"));
        assert_eq!(
            (a.status, reason(&a).as_str()),
            (403, "csrf"),
            "{what}: {a:?}"
        );
    }
    let a = b.get(&format!("{base}/v1/approvals/{id}"));
    assert_eq!(a.json()["state"], "pending", "{a:?}");
    assert_eq!(a.json()["votes"], json!([]), "{a:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        agent
            .unread()
            .iter()
            .all(|(_, _, l)| !l.starts_with("{\"ok\"")),
        "released early"
    );

    // With the token (and the console's own Origin): decided, and the DROP runs.
    let a = b.request(
        "POST",
        &approve,
        &[json_type, ("X-CSRF-Token", &csrf), ("Origin", &ours)],
        Some("{\"reason\": \"from the console\"}"),
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json()["state"], "approved", "{a:?}");
    assert_eq!(a.json()["votes"][0]["approver"], "alice", "{a:?}");
    agent.wait_line(WAIT, |err, l| !err && l.starts_with("{\"ok\""));

    // Sign-out needs the token too; then the cookie is worth nothing.
    let old = b.cookie(&authority(&p), SESSION).expect("cookie");
    let out = format!("{base}/console/logout");
    let a = b.request("POST", &out, &[], None);
    assert_eq!((a.status, reason(&a).as_str()), (403, "csrf"), "{a:?}");
    assert_eq!(
        me(&mut b, &base).status,
        200,
        "a refused sign-out signed out"
    );
    let a = b.request("POST", &out, &[("X-CSRF-Token", &csrf)], None);
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        a.set_cookie(SESSION)
            .is_some_and(|c| c.contains("Max-Age=0")),
        "{a:?}"
    );
    b.set_cookie(&authority(&p), SESSION, &old);
    let a = me(&mut b, &base);
    assert_eq!(
        (a.status, reason(&a).as_str()),
        (401, "no_session"),
        "{a:?}"
    );
    assert_eq!(b.get(&format!("{base}/console/")).status, 302);
}

// ---------------------------------------------------------------------------------------------
// 3. Reloads: roles follow the policy in force; removing `console:` ends the sessions.
// ---------------------------------------------------------------------------------------------

#[test]
fn reloads_lower_roles_and_removing_the_console_ends_sessions() {
    require_root();
    let p = ports(3);
    let idp = start_idp(&p);
    let gw = start_gateway(
        "cons-reload",
        &p,
        &idp,
        &console_section(p.admin, "security", ""),
    );
    let base = format!("http://{}", p.admin);
    let mut b = Browser::new(&idp.ca_path);
    assert_eq!(sign_in(&mut b, &base, &idp, "sam", None).status, 200);
    assert_eq!(me(&mut b, &base).json()["role"], "auditor");

    // `security` is no longer an auditor group: sam is an approver at the next request.
    reload(
        &gw,
        "policy.yaml",
        &policy(&p, &idp, &console_section(p.admin, "", "")),
    );
    let v = me(&mut b, &base).json();
    assert_eq!(
        (v["role"].as_str(), v["via"].as_str()),
        (Some("approver"), Some("session")),
        "{v}"
    );

    // No `console:`: the session is over, the sign-in gone.
    reload(&gw, "policy.yaml", &policy(&p, &idp, ""));
    let a = me(&mut b, &base);
    assert_eq!(
        (a.status, reason(&a).as_str()),
        (401, "no_session"),
        "{a:?}"
    );
    assert_eq!(b.get(&format!("{base}/console/login")).status, 404);
    // Back again: the old cookie stays dead (the session ended, not just hidden).
    reload(
        &gw,
        "policy.yaml",
        &policy(&p, &idp, &console_section(p.admin, "security", "")),
    );
    let a = me(&mut b, &base);
    assert_eq!(
        (a.status, reason(&a).as_str()),
        (401, "no_session"),
        "{a:?}"
    );
    assert_eq!(sign_in(&mut b, &base, &idp, "sam", None).status, 200);
    assert_eq!(me(&mut b, &base).json()["role"], "auditor");
}

/// The live event stream is as good as the sign-in it was opened under: signing out ends it
/// (with a last `signed_out` event), whatever else is still open.
#[test]
fn signing_out_ends_the_event_stream() {
    require_root();
    let p = ports(4);
    let idp = start_idp(&p);
    let _gw = start_gateway(
        "cons-sse",
        &p,
        &idp,
        &console_section(p.admin, "security", ""),
    );
    let base = format!("http://{}", p.admin);
    let mut b = Browser::new(&idp.ca_path);
    assert_eq!(sign_in(&mut b, &base, &idp, "sam", None).status, 200);
    let csrf = me(&mut b, &base).json()["csrf_token"]
        .as_str()
        .expect("csrf token")
        .to_string();
    // The console's files are served by the gateway with validators: a current ETag gets 304.
    let js = format!("{base}/console/assets/app.js");
    let a = b.get(&js);
    assert_eq!(a.status, 200, "{a:?}");
    let etag = a.header("etag").expect("an ETag").to_string();
    let a = b.request("GET", &js, &[("If-None-Match", &etag)], None);
    assert_eq!(a.status, 304, "{a:?}");
    let cookie = b.cookie(&authority(&p), SESSION).expect("cookie");
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let (ca, authority, base) = (idp.ca_path.clone(), authority(&p), base.clone());
        std::thread::spawn(move || {
            let mut watcher = Browser::new(&ca);
            watcher.set_cookie(&authority, SESSION, &cookie);
            let _ = tx.send(watcher.get(&format!("{base}/v1/events")));
        });
    }
    assert!(
        rx.recv_timeout(Duration::from_secs(3)).is_err(),
        "the stream stays open while signed in"
    );
    let a = b.request(
        "POST",
        &format!("{base}/console/logout"),
        &[("X-CSRF-Token", &csrf)],
        None,
    );
    assert_eq!(a.status, 200, "{a:?}");
    let ended = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the stream ended after the sign-out");
    assert_eq!(ended.status, 200, "{ended:?}");
    assert!(ended.body.contains("event: signed_out"), "{ended:?}");
}
