//! The web console signed in, in a real browser (issue 22): headless Chromium (tests/src/browser.rs)
//! signs in at the strict test OpenID provider (HTTPS with its own CA, trusted by Chromium for
//! this provider's key only: `--ignore-certificate-errors-spki-list=<Idp::spki_sha256>`), the
//! real gateway serves the console on `--admin-http` (plain HTTP on loopback), and an agent's
//! real PostgreSQL session (psycopg, in the agent's cgroup) has its `DROP TABLE` held until a
//! person decides in the page. Root required.
//!
//! Ports 21050–21059: set A 21050–21054, set B 21055–21059 (gateway listener, admin HTTP,
//! provider, PostgreSQL, chromedriver). The two tests on set A take turns.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use agentgate_tests::{
    bg::Bg,
    browser::{text_content, Browser, Screen},
    oidc::{Browser as CookieClient, Idp, IdpOptions},
    pg::*,
    *,
};
use serde_json::{json, Value};

const CLIENT_ID: &str = "agentgate-console";
const WAIT: Duration = Duration::from_secs(30);
const SECOND: Duration = Duration::from_secs(1);

/// Set A's ports are used by one test at a time.
static SET_A: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Ports {
    listen: u16,
    admin: SocketAddr,
    idp: SocketAddr,
    pg: u16,
    driver: u16,
}

fn ports(set: u16) -> Ports {
    assert!(set < 2);
    let base = 21050 + 5 * set;
    Ports {
        listen: base,
        admin: format!("127.0.0.1:{}", base + 1).parse().unwrap(),
        idp: format!("127.0.0.1:{}", base + 2).parse().unwrap(),
        pg: base + 3,
        driver: base + 4,
    }
}

fn redirect_url(admin: SocketAddr) -> String {
    format!("http://{admin}/console/callback")
}

/// A signed-in gateway world: the provider, the gateway with its console, table `t` for the
/// agent to drop (which needs a `dba`'s approval).
struct World {
    idp: Idp,
    pg: PgGateway,
    base: String,
}

fn world(tag: &str, p: &Ports) -> World {
    let users = [("alice", vec!["dba"]), ("nina", vec!["web"])];
    let idp = Idp::start(IdpOptions {
        listen: p.idp,
        client_id: CLIENT_ID.into(),
        client_secret: None,
        redirect_uri: redirect_url(p.admin),
        users: users
            .iter()
            .map(|(u, g)| (u.to_string(), g.iter().map(|g| g.to_string()).collect()))
            .collect(),
    });
    let admin = p.admin.to_string();
    let pg = PgGateway::start_with_args(
        tag,
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
    reload(
        &pg.gw,
        "zz-console.yaml",
        &format!(
            "version: 2\nidentity_providers:\n{}console:\n  identity_provider: corp\n  client_id: {CLIENT_ID}\n  redirect_url: {}\n  scopes: [openid, profile, groups]\n  auditors: [security]\n  admins: [sec-admins]\n",
            idp.provider_yaml("corp", "agentgate-agents"),
            redirect_url(p.admin)
        ),
    );
    pg.pg.sql_in(
        "agentdb",
        &format!("CREATE TABLE t (x int); ALTER TABLE t OWNER TO {ROLE_SCRAM};"),
    );
    let base = format!("http://{}", p.admin);
    World { idp, pg, base }
}

/// Writes a policy file and waits until the policy is in force.
fn reload(gw: &Gateway, file: &str, text: &str) {
    gw.reload_policy_file(file, text);
}

/// Chromium trusting the provider's key (and nothing else it could not verify).
async fn browser(p: &Ports, idp: &Idp) -> Browser {
    Browser::start_with_args(
        p.driver,
        Screen::Desktop,
        &[format!(
            "--ignore-certificate-errors-spki-list={}",
            idp.spki_sha256
        )],
    )
    .await
}

/// Opens `path` signed out: the browser must land on the provider's form, where it signs in
/// as `user`; then back on the console, signed in.
async fn sign_in(b: &Browser, w: &World, path: &str, user: &str) {
    b.driver
        .goto(&format!("{}{path}", w.base))
        .await
        .expect("open the console");
    let field = b.wait_for("#username", 10 * SECOND).await;
    let at = b.driver.current_url().await.expect("url").to_string();
    assert!(
        at.starts_with(&format!("{}/authorize?", w.idp.issuer)),
        "not sent to the provider: {at}"
    );
    field.send_keys(user).await.expect("type the user");
    b.find("#sign-in").await.click().await.expect("sign in");
    b.wait_text("#who .name", 10 * SECOND, |t| t.starts_with(user))
        .await;
    let at = b.driver.current_url().await.expect("url").to_string();
    assert!(at.starts_with(&format!("{}/console/", w.base)), "{at}");
}

/// The agent's session, connected (in the agent's cgroup).
fn agent(w: &World, name: &str) -> Bg {
    let mut a = Bg::spawn(
        "pg_session.py",
        pg_session_command(&w.pg.agent_conninfo(&agent_jwt(name), "disable")),
        &w.pg.agent,
    );
    a.wait_line(WAIT, |err, l| !err && l.contains("\"connected\""));
    a
}

/// Runs `fetch(path, init)` in the page (with its cookie): `[status, body JSON or null]`.
async fn page_fetch(b: &Browser, path: &str, init: Value) -> (u16, Value) {
    let v = b
        .driver
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(arguments[0], arguments[1])
               .then(async (r) => done([r.status, await r.json().catch(() => null)]))
               .catch((e) => done([0, String(e)]));",
            vec![json!(path), init],
        )
        .await
        .expect("fetch in the page");
    (v[0].as_u64().unwrap_or(0) as u16, v[1].clone())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Polls the DOM for the pending request's card: its id, and when it was seen (ms).
async fn wait_card(b: &Browser) -> (String, u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        for card in b.find_all("article.card[data-id]").await {
            if let Ok(Some(id)) = card.attr("data-id").await {
                return (id, now_ms());
            }
        }
        assert!(
            Instant::now() < deadline,
            "no request in the inbox: {}",
            b.body_text().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The request is in the DOM within a second of being held (its `created_ms`).
async fn held_and_shown(b: &Browser) -> String {
    let (id, seen) = wait_card(b).await;
    let (status, r) = page_fetch(b, &format!("/v1/approvals/{id}"), json!({})).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["state"], "pending", "{r}");
    let created = r["created_ms"].as_u64().expect("created_ms");
    assert!(
        seen.saturating_sub(created) < 1000,
        "shown {} ms after it was held",
        seen - created
    );
    id
}

fn card_css(id: &str) -> String {
    format!("article.card[data-id='{id}']")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_signs_in_and_approves_a_held_drop_in_the_browser() {
    require_root();
    let _turn = SET_A.lock().await;
    let p = ports(0);
    let w = world("cons-browse-approve", &p);
    let b = browser(&p, &w.idp).await;
    sign_in(&b, &w, "/console/", "alice").await;
    b.wait_text("#view", 10 * SECOND, |t| {
        t.contains("Nothing waits for you.")
    })
    .await;

    let mut agent = agent(&w, "agent-approve");
    agent.send_line(&json!("DROP TABLE t").to_string());
    let id = held_and_shown(&b).await;
    let card = card_css(&id);
    let text = text_content(&b.find(&card).await).await;
    assert!(text.contains("DROP TABLE t"), "{text}");
    b.screenshot("inbox-signed-in").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        agent
            .unread()
            .iter()
            .all(|(_, _, l)| !l.starts_with("{\"ok\"")),
        "released before anyone decided"
    );

    b.find(&format!("{card} button.approve"))
        .await
        .click()
        .await
        .expect("click approve");
    agent.wait_line(WAIT, |err, l| !err && l.starts_with("{\"ok\""));
    b.wait_text(&format!("{card} .result"), 5 * SECOND, |t| {
        t == "Approved: the request is approved."
    })
    .await;
    // The DROP ran: the table is gone.
    agent.send_line(&json!("SELECT count(*) FROM pg_tables WHERE tablename = 't'").to_string());
    agent.wait_line(WAIT, |err, l| !err && l == "{\"ok\": [[\"0\"]]}");
    let (_, r) = page_fetch(&b, &format!("/v1/approvals/{id}"), json!({})).await;
    assert_eq!(r["state"], "approved", "{r}");
    assert_eq!(r["votes"][0]["approver"], "alice", "{r}");
    b.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_with_a_reason_typed_in_the_page_is_the_agents_error() {
    require_root();
    let _turn = SET_A.lock().await;
    let p = ports(0);
    let w = world("cons-browse-deny", &p);
    let b = browser(&p, &w.idp).await;
    sign_in(&b, &w, "/console/", "alice").await;

    let mut agent = agent(&w, "agent-deny");
    agent.send_line(&json!("DROP TABLE t").to_string());
    let id = held_and_shown(&b).await;
    let card = card_css(&id);
    let deny = b.find(&format!("{card} button.deny")).await;
    assert!(!deny.is_enabled().await.unwrap(), "deny without a reason");
    let why = "not during the freeze, ask in #dba";
    b.find(&format!("{card} input.reason"))
        .await
        .send_keys(why)
        .await
        .expect("type the reason");
    deny.click().await.expect("click deny");
    let line = agent.wait_line(WAIT, |err, l| !err && l.starts_with("{\"error\""));
    let v: Value = serde_json::from_str(&line).expect("json");
    let message = v["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains(why), "the agent's error: {line}");
    b.wait_text(&format!("{card} .result"), 5 * SECOND, |t| {
        t == "Denied: the request is denied."
    })
    .await;
    // Nothing was dropped.
    agent.send_line(&json!("SELECT count(*) FROM pg_tables WHERE tablename = 't'").to_string());
    agent.wait_line(WAIT, |err, l| !err && l == "{\"ok\": [[\"1\"]]}");
    b.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_out_is_sent_to_sign_in_and_a_non_approver_cannot_decide() {
    require_root();
    let p = ports(1);
    let w = world("cons-browse-nobody", &p);
    let b = browser(&p, &w.idp).await;

    // Signed out: /console/#/agents goes to the provider's form, with no console data on the way.
    b.driver
        .goto(&format!("{}/console/#/agents", w.base))
        .await
        .expect("open the console");
    b.wait_for("#username", 10 * SECOND).await;
    let at = b.driver.current_url().await.unwrap().to_string();
    assert!(
        at.starts_with(&format!("{}/authorize?", w.idp.issuer)),
        "{at}"
    );
    for css in ["#view", "#nav", "table.agents", "article.card"] {
        assert!(
            b.find_all(css).await.is_empty(),
            "{css} on the sign-in page"
        );
    }
    // What a signed-out page would get from the API: nothing.
    b.driver
        .goto(&format!("{}/v1/agents", w.base))
        .await
        .unwrap();
    let body = b.body_text().await;
    assert!(
        body.contains("no_session") || body.contains("no_token"),
        "{body}"
    );
    assert!(!body.contains("\"agents\""), "{body}");

    // nina (group web, not dba) signs in; the agent's DROP is held for dba.
    sign_in(&b, &w, "/console/#/inbox", "nina").await;
    let mut agent = agent(&w, "agent-nobody");
    agent.send_line(&json!("DROP TABLE t").to_string());
    let mut dba = CookieClient::new(&w.idp.ca_path);
    let bearer = format!("Bearer {}", mint("dba-bot", &["dba"], now(), now() + 300));
    let deadline = Instant::now() + WAIT;
    let id = loop {
        let a = dba.request(
            "GET",
            &format!("{}/v1/approvals", w.base),
            &[("Authorization", &bearer)],
            None,
        );
        assert_eq!(a.status, 200, "{a:?}");
        if let Some(id) = a.json()["requests"][0]["id"].as_str() {
            break id.to_string();
        }
        assert!(Instant::now() < deadline, "no held request: {a:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Longer than the live stream needs (a second): still nothing for nina, nothing to click.
    tokio::time::sleep(2 * SECOND).await;
    b.wait_text("#view", 5 * SECOND, |t| {
        t.contains("Nothing waits for you.")
    })
    .await;
    for css in ["article.card", "button.approve", "button.deny"] {
        assert!(b.find_all(css).await.is_empty(), "{css} shown to nina");
    }
    assert_eq!(
        b.find_all("#nav a").await.len(),
        1,
        "an approver's nav only"
    );
    // Not even by its address, and the API refuses her decision (with her CSRF token).
    let (status, _) = page_fetch(&b, &format!("/v1/approvals/{id}"), json!({})).await;
    assert_eq!(status, 404);
    let (_, me) = page_fetch(&b, "/v1/me", json!({})).await;
    assert_eq!(me["role"], "approver", "{me}");
    let csrf = me["csrf_token"].as_str().expect("csrf token").to_string();
    let (status, r) = page_fetch(
        &b,
        &format!("/v1/approvals/{id}/approve"),
        json!({"method": "POST", "headers": {"X-CSRF-Token": csrf, "Content-Type": "application/json"}, "body": "{}"}),
    )
    .await;
    // Another group's request does not exist for her, to decide no more than to read.
    assert_eq!(
        (status, r["reason"].as_str()),
        (404, Some("unknown_request")),
        "{r}"
    );
    let a = dba.request(
        "GET",
        &format!("{}/v1/approvals/{id}", w.base),
        &[("Authorization", &bearer)],
        None,
    );
    assert_eq!(a.json()["state"], "pending", "{a:?}");
    assert_eq!(a.json()["votes"], json!([]), "{a:?}");
    assert!(
        agent
            .unread()
            .iter()
            .all(|(_, _, l)| !l.starts_with("{\"ok\"")),
        "released by nina"
    );
    b.quit().await;
}
