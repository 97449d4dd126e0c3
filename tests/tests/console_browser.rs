//! The web console in a real browser (issue 22): Debian's headless Chromium driven through
//! WebDriver (tests/src/browser.rs).
//!
//! Ports 21040–21059. Here now: the console's own modules (the terminal player, the approval
//! card with hostile record text, the agents chart) on fixture data under the console's CSP,
//! at desktop and phone size. The tests against a signed-in gateway (inbox, approve/deny
//! reaching psql, replay, revoke, sign-in redirects) follow when the sign-in lands.

use std::time::Duration;

use agentgate_tests::browser::{text_content, Browser, Locator, Screen, StaticSite};
use serde_json::{json, Value};

const SECOND: Duration = Duration::from_secs(1);

async fn open_parts(site_port: u16, driver_port: u16, screen: Screen) -> (StaticSite, Browser) {
    let site = StaticSite::start(site_port).await;
    let b = Browser::start(driver_port, screen).await;
    b.driver
        .goto(&site.url("/fixture/parts.html"))
        .await
        .expect("open the fixture page");
    b.wait_for("body[data-ready]", 10 * SECOND).await;
    (site, b)
}

/// Moves the player's seek bar as a person would (the bar is in tenths of a second).
async fn seek(b: &Browser, seconds: f64) {
    let bar = b.find("#terminal .seek").await;
    b.script(
        "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'));",
        vec![json!(bar), json!((seconds * 10.0).round() as i64)],
    )
    .await;
}

async fn screen_text(b: &Browser) -> String {
    text_content(&b.find("#terminal pre.term").await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_terminal_player_plays_seeks_and_draws_only_text() {
    let (_site, b) = open_parts(21040, 21041, Screen::Desktop).await;
    // CR, LF, backspace, colours (dropped), then a clear, cursor positioning, erase to the
    // start of a line and a scroll: the screen as a terminal would show it.
    seek(&b, 0.9).await;
    assert_eq!(screen_text(&b).await, "$ ls\nfile-a  file-b\n$\n\n\n");
    seek(&b, 1.3).await;
    assert_eq!(
        screen_text(&b).await,
        "$ ls\nfile-a  file-b\nprogress 100%\n\n\n",
        "a carriage return overwrites the line"
    );
    let end = "  p\n    mid\n\n\nbottom\nend";
    // Back to the start and played at 8×: the whole 2.1 s recording in well under 2 s.
    seek(&b, 0.0).await;
    assert_eq!(screen_text(&b).await.trim(), "");
    b.find("#terminal select.speed")
        .await
        .select_by_value("8")
        .await
        .unwrap();
    let play = b.find("#terminal button.play").await;
    play.click().await.unwrap();
    assert_eq!(text_content(&play).await, "Pause");
    b.wait_text("#terminal pre.term", 3 * SECOND, |t| t == end)
        .await;
    b.wait_text("#terminal button.play", 2 * SECOND, |t| t == "Play")
        .await;
    let player = b.find("#terminal").await;
    b.screenshot_of(&player, "player").await;
    // Seeking back replays from the start: the earlier screen, not the last one.
    seek(&b, 0.9).await;
    assert_eq!(screen_text(&b).await, "$ ls\nfile-a  file-b\n$\n\n\n");
    // The recording's OSC title and its input events never reach the page.
    assert_eq!(b.driver.title().await.unwrap(), "console parts");
    assert!(!b.body_text().await.contains("secret typed"));
    assert!(!b.body_text().await.contains("evil title"));
    b.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_record_text_in_an_approval_is_shown_inert() {
    let (_site, b) = open_parts(21042, 21043, Screen::Desktop).await;
    let card = b.wait_for("#approval article.card", 5 * SECOND).await;
    // The statement, literally: markup as text, ESC as ␛, BEL as ␇, the right-to-left
    // override named instead of applied.
    let statement = text_content(&card.find(Locator::Css("pre.statement")).await.unwrap()).await;
    assert_eq!(
        statement,
        "DROP TABLE t; SELECT '<script>alert(1)</script>';\u{241b}[2J\u{241b}]0;x\u{2407} -- <U+202E>evil"
    );
    // Each control character's symbol is marked for the eye (␛, ␛, ␇), the text unchanged.
    let marked = card
        .find_all(Locator::Css("pre.statement span.ctl"))
        .await
        .unwrap();
    assert_eq!(marked.len(), 3);
    assert_eq!(text_content(&marked[0]).await, "\u{241b}");
    for css in ["script", "img", "b"] {
        assert!(
            card.find_all(Locator::Css(css)).await.unwrap().is_empty(),
            "a <{css}> element was made from record text"
        );
    }
    assert!(
        b.find_all("body script").await.is_empty(),
        "no script element was added to the page"
    );
    let params = card.find_all(Locator::Css(".params li")).await.unwrap();
    assert_eq!(params.len(), 2);
    assert_eq!(
        text_content(&params[0]).await,
        "<img src=x onerror=alert(2)>"
    );
    assert_eq!(text_content(&params[1]).await, "NULL");
    let facts = text_content(&card.find(Locator::Css("dl.facts")).await.unwrap()).await;
    for want in [
        "https://idp.example#agent-<b>7</b>",
        "orders-db (orders)",
        "ddl-needs-approval",
        "1 of 2 from dba",
        "3 rows (rolled back)",
    ] {
        assert!(facts.contains(want), "{want:?} not in {facts:?}");
    }
    // Time left counts down (the fixture's request expires far in the future).
    let left = b
        .wait_text("#approval .card-head .left", 3 * SECOND, |t| {
            t.ends_with(" left")
        })
        .await;
    assert!(left.contains('h'), "{left}");
    // Deny needs a reason: its button is off until one is typed.
    let deny = b.find("#approval button.deny").await;
    assert!(!deny.is_enabled().await.unwrap());
    b.find("#approval input.reason")
        .await
        .send_keys("not on a Friday")
        .await
        .unwrap();
    assert!(deny.is_enabled().await.unwrap());
    b.screenshot_of(&card, "approval-card").await;
    // No alert opened at any point (the page's scripts and the record's text alike).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.alert().await, None, "an alert dialog opened");
    b.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_chart_is_drawn_from_the_series() {
    let (_site, b) = open_parts(21044, 21045, Screen::Desktop).await;
    let series: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/console/series.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut bars = 0;
    for p in &series {
        for s in ["active", "idle", "expired", "revoked"] {
            let n = p[s].as_i64().unwrap();
            if n > 0 {
                bars += 1;
            }
        }
    }
    let rects = b.find_all("#chart svg rect.bar").await;
    assert_eq!(rects.len(), bars);
    let revoked = b.find_all("#chart svg rect.bar-revoked").await;
    assert_eq!(
        revoked.len(),
        series.iter().filter(|p| p["revoked"] != 0).count()
    );
    // The tallest stack reaches the top label, which is the largest total.
    let max = series
        .iter()
        .map(|p| {
            ["active", "idle", "expired", "revoked"]
                .iter()
                .map(|s| p[*s].as_i64().unwrap())
                .sum::<i64>()
        })
        .max()
        .unwrap();
    let ticks = b.find_all("#chart svg text.tick").await;
    assert_eq!(text_content(&ticks[0]).await, max.to_string());
    let legend = text_content(&b.find("#chart .legend").await).await;
    assert_eq!(legend, "activeidleexpiredrevoked");
    let chart = b.find("#chart figure").await;
    b.screenshot_of(&chart, "chart").await;
    b.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parts_fit_a_phone_screen() {
    let (_site, b) = open_parts(21046, 21047, Screen::Phone).await;
    let width = b.script("return window.innerWidth;", vec![]).await;
    assert_eq!(width, 375, "the browser's viewport is a phone's");
    // Nothing is wider than the screen: no sideways scrolling of the page (the terminal
    // scrolls inside its own box).
    let scroll = b
        .script("return document.documentElement.scrollWidth;", vec![])
        .await
        .as_i64()
        .unwrap();
    assert!(
        scroll <= 375,
        "the page is {scroll} px wide on a 375 px screen"
    );
    for css in [
        "#approval button.approve",
        "#approval input.reason",
        "#terminal button.play",
    ] {
        let (x, _, w, _) = b.find(css).await.rectangle().await.unwrap();
        assert!(
            x >= 0.0 && x + w <= 375.0,
            "{css} is off screen: x {x}, width {w}"
        );
    }
    b.screenshot("phone-approval").await;
    b.quit().await;
}

/// Every page of the console app (the shell, its routes, each view) on API answers shaped as
/// the gateway gives them (tests/fixtures/console/api/), before the sign-in lands: the views
/// draw what they are given, and none of them fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_draws_the_api_answers() {
    let site = StaticSite::start(21048).await;
    let b = Browser::start(21049, Screen::Desktop).await;
    b.driver.goto(&site.url("/console/#/inbox")).await.unwrap();
    b.wait_for("article.card[data-id='apr-0001']", 10 * SECOND)
        .await;
    let cards = b.find_all("article.card").await;
    assert_eq!(
        cards[0].attr("data-id").await.unwrap().as_deref(),
        Some("apr-7f3c"),
        "the pending request comes first"
    );
    assert_eq!(
        b.find_all("#nav a").await.len(),
        4,
        "an admin sees every page"
    );
    assert_eq!(
        text_content(&b.find("#who").await).await,
        "Alice Admin admin"
    );
    no_error(&b, "inbox").await;

    b.driver
        .goto(&site.url("/console/#/approvals/apr-7f3c"))
        .await
        .unwrap();
    b.wait_text("main", 5 * SECOND, |t| {
        t.contains("ddl-needs-approval") && !t.contains("apr-0001")
    })
    .await;
    no_error(&b, "approval").await;

    b.driver
        .goto(&site.url("/console/#/sessions"))
        .await
        .unwrap();
    b.wait_for("table.sessions tbody tr", 5 * SECOND).await;
    assert_eq!(b.find_all("table.sessions tbody tr").await.len(), 2);
    no_error(&b, "sessions").await;
    b.find("table.sessions tbody tr a")
        .await
        .click()
        .await
        .unwrap();
    b.wait_for("ol.timeline", 5 * SECOND).await;
    assert_eq!(b.find_all("ol.timeline > li").await.len(), 4);
    let timeline = text_content(&b.find("ol.timeline").await).await;
    assert!(timeline.contains("a***@example.com"), "{timeline}");
    assert!(
        timeline.contains("DROP TABLE customers\u{241b}[2J"),
        "{timeline}"
    );
    assert!(
        timeline.contains("error 42501 statement refused by policy"),
        "{timeline}"
    );
    no_error(&b, "sql replay").await;

    b.driver
        .goto(&site.url("/console/#/sessions/s-ssh"))
        .await
        .unwrap();
    b.wait_for("section.recording pre.term", 5 * SECOND).await;
    assert!(text_content(&b.find("ol.timeline").await)
        .await
        .contains("uptime"));
    no_error(&b, "ssh replay").await;

    b.driver.goto(&site.url("/console/#/agents")).await.unwrap();
    b.wait_for("table.agents tbody tr", 5 * SECOND).await;
    assert_eq!(b.find_all("table.agents tbody tr").await.len(), 3);
    assert_eq!(b.find_all("button.revoke").await.len(), 2);
    assert_eq!(b.find_all("button.lift").await.len(), 1);
    assert!(!b.find_all("#view svg rect.bar").await.is_empty());
    b.find("tr[data-subject='agent-7'] button.revoke")
        .await
        .click()
        .await
        .unwrap();
    let dialog = b.wait_for("dialog[open]", 2 * SECOND).await;
    assert!(text_content(&dialog)
        .await
        .contains("https://idp.example#agent-7"));
    b.find("dialog[open] button.cancel")
        .await
        .click()
        .await
        .unwrap();
    no_error(&b, "agents").await;

    b.driver.goto(&site.url("/console/#/audit")).await.unwrap();
    b.wait_for("table.rules tbody tr", 5 * SECOND).await;
    assert_eq!(b.find_all("table.rules tbody tr").await.len(), 2);
    assert!(text_content(&b.find("main").await)
        .await
        .contains("verified"));
    no_error(&b, "audit").await;
    b.quit().await;
}

/// No view or decision on the page says it failed.
async fn no_error(b: &Browser, page: &str) {
    let mut texts = vec![];
    for e in b.find_all(".msg.error, .result.error").await {
        texts.push(text_content(&e).await);
    }
    assert!(texts.is_empty(), "{page}: {texts:?}");
}
