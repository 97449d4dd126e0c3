//! A real browser for the web console's tests: Debian's headless Chromium driven through its
//! `chromedriver` over WebDriver (the `fantoccini` client), on a loopback port of the test's
//! choosing, with a fresh profile per browser (no cookie or cache carried between tests).
//!
//! Tests run as root, so Chromium runs with `--no-sandbox` (it refuses root otherwise). The
//! driver runs in its own process group, and the guard kills the whole group (driver and
//! browser) and removes the profile also when a test fails.
//!
//! [`StaticSite`] serves the console's own files (from the source tree, as the binary embeds
//! them) and a test's fixture pages with the console's security headers, for the tests that
//! exercise the pages' code without a gateway.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub use fantoccini::{elements::Element, Client, Locator};
use http_body_util::Full;
use hyper::{body::Bytes, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The console's content security policy (gateway-user/src/admin/assets.rs): fixture pages
/// run under it too, so a page that only works with inline script fails here as well.
pub const CSP: &str =
    "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The window sizes the console is checked at.
#[derive(Debug, Clone, Copy)]
pub enum Screen {
    Desktop,
    /// An iPhone-sized screen, 375 CSS pixels wide.
    Phone,
}

impl Screen {
    pub fn size(self) -> (u32, u32) {
        match self {
            Screen::Desktop => (1280, 900),
            Screen::Phone => (375, 812),
        }
    }
}

/// A headless Chromium under a chromedriver of its own; `driver` is the WebDriver session.
pub struct Browser {
    pub driver: Client,
    /// Dropped after `driver`: stops the driver and its browser, removes the profile.
    _guard: Guard,
}

impl Browser {
    /// Starts chromedriver on `port` (one of the test's own) and a browser at `screen`'s size.
    pub async fn start(port: u16, screen: Screen) -> Browser {
        Browser::start_with_args(port, screen, &[]).await
    }

    /// As [`Browser::start`], with extra Chromium flags (e.g. trusting one test provider's key
    /// with `--ignore-certificate-errors-spki-list=...`).
    pub async fn start_with_args(port: u16, screen: Screen, extra: &[String]) -> Browser {
        for bin in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: install Debian's chromium and chromium-driver (`cargo xtask setup` does)"
            );
        }
        // Per port: the tests of one binary share a pid, and two browsers on one profile collide.
        let profile = std::env::temp_dir().join(crate::unique(&format!("chromium-{port}")));
        std::fs::create_dir_all(&profile).expect("profile dir");
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let chromedriver = cmd.spawn().expect("start chromedriver");
        let guard = Guard {
            child: Some(chromedriver),
            profile: profile.clone(),
        };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let (w, h) = screen.size();
        let mut args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--hide-scrollbars".into(),
            "--force-device-scale-factor=1".into(),
            format!("--window-size={w},{h}"),
            format!("--user-data-dir={}", profile.display()),
        ];
        args.extend(extra.iter().cloned());
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let driver = fantoccini::ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("a WebDriver session with headless Chromium");
        // --window-size is the outer window; make the page itself the size asked for.
        resize(&driver, w, h).await;
        Browser {
            driver,
            _guard: guard,
        }
    }

    /// Saves a screenshot of the window as `docs/console/NAME.png` (the docs show them).
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let path = docs_png(name);
        let png = self.driver.screenshot().await.expect("screenshot");
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }

    /// Saves a screenshot of one element (scrolled into view first: a screenshot holds only
    /// what is on screen) as `docs/console/NAME.png`.
    pub async fn screenshot_of(&self, e: &Element, name: &str) -> PathBuf {
        let path = docs_png(name);
        self.script("arguments[0].scrollIntoView();", vec![json!(e)])
            .await;
        let png = e.screenshot().await.expect("element screenshot");
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }

    /// Runs `script` in the page (its `return` value is the answer).
    pub async fn script(&self, script: &str, args: Vec<Value>) -> Value {
        self.driver
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script {script:?}: {e}"))
    }

    pub async fn find(&self, css: &str) -> Element {
        self.driver
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        self.driver
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"))
    }

    /// Waits for an element matching `css`, up to `within`.
    pub async fn wait_for(&self, css: &str, within: Duration) -> Element {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(e) = self.driver.find(Locator::Css(css)).await {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no element {css} within {within:?}; page text: {}",
                self.body_text().await
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until `css`'s exact text content (not its rendering) satisfies `ok`.
    pub async fn wait_text(
        &self,
        css: &str,
        within: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        loop {
            if let Ok(e) = self.driver.find(Locator::Css(css)).await {
                last = text_content(&e).await;
                if ok(&last) {
                    return last;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{css}'s text did not become as expected within {within:?}; last: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn body_text(&self) -> String {
        match self.driver.find(Locator::Css("body")).await {
            Ok(b) => text_content(&b).await,
            Err(e) => format!("(no body: {e})"),
        }
    }

    /// The text of an open alert/confirm dialog, if one is open.
    pub async fn alert(&self) -> Option<String> {
        self.driver.get_alert_text().await.ok()
    }

    /// Ends the WebDriver session (the guard then stops the driver and its browser).
    pub async fn quit(self) {
        let Browser { driver, _guard } = self;
        let _ = driver.close().await;
    }
}

fn docs_png(name: &str) -> PathBuf {
    let dir = crate::workspace_root().join("docs").join("console");
    std::fs::create_dir_all(&dir).expect("docs/console");
    dir.join(format!("{name}.png"))
}

/// The exact `textContent` of an element (WebDriver's `text()` is the rendering, which
/// collapses white space and hides what CSS hides).
pub async fn text_content(e: &Element) -> String {
    e.prop("textContent")
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

async fn resize(driver: &Client, w: u32, h: u32) {
    let inner = driver
        .execute("return [window.innerWidth, window.innerHeight];", vec![])
        .await
        .ok()
        .and_then(|v| serde_json::from_value::<(u64, u64)>(v).ok());
    let outer = driver.get_window_size().await.ok();
    if let (Some((iw, ih)), Some((ow, oh))) = (inner, outer) {
        let (dw, dh) = (ow.saturating_sub(iw), oh.saturating_sub(ih));
        let _ = driver.set_window_size(w + dw as u32, h + dh as u32).await;
    }
}

struct Guard {
    child: Option<Child>,
    profile: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The driver leads its own process group, which its Chromium processes are in.
            // SAFETY: kill(2) on a process group this guard started.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Serves, on a loopback port, the console's files at `/console/` and `/console/assets/NAME`
/// (read from `gateway-user/console/`, the files the binary embeds), a test's fixture files at
/// `/fixture/NAME` (from `tests/fixtures/console/`), and fixed API answers at `/v1/A/B`
/// (`tests/fixtures/console/api/A_B.json` or `.cast`), with the console's security headers.
/// For the pages' code before a gateway serves them; it checks nothing a gateway checks.
pub struct StaticSite {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl StaticSite {
    pub async fn start(port: u16) -> StaticSite {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the static site");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|req: Request<_>| async move {
                        Ok::<_, Infallible>(static_file(req.uri().path()))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        StaticSite { addr, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for StaticSite {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn static_file(path: &str) -> Response<Full<Bytes>> {
    let root = crate::workspace_root();
    let api_name;
    let (dir, name) = if path == "/console/" || path == "/console" {
        (root.join("gateway-user/console"), "index.html")
    } else if let Some(n) = path.strip_prefix("/console/assets/") {
        (root.join("gateway-user/console"), n)
    } else if let Some(n) = path.strip_prefix("/fixture/") {
        (root.join("tests/fixtures/console"), n)
    } else if let Some(n) = path.strip_prefix("/v1/") {
        let dir = root.join("tests/fixtures/console/api");
        let base = n.replace('/', "_");
        api_name = ["json", "cast"]
            .iter()
            .map(|ext| format!("{base}.{ext}"))
            .find(|f| dir.join(f).is_file())
            .unwrap_or_default();
        (dir, api_name.as_str())
    } else {
        ("".into(), "")
    };
    let safe = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && !name.starts_with('.');
    let body = if safe {
        std::fs::read(dir.join(name)).ok()
    } else {
        None
    };
    let mut r = match body {
        Some(b) => Response::new(Full::new(Bytes::from(b))),
        None => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"not found")));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    };
    let kind = match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("cast") => "application/x-asciicast",
        Some("json") => "application/json",
        _ => "text/plain; charset=utf-8",
    };
    let h = r.headers_mut();
    h.insert(hyper::header::CONTENT_TYPE, kind.parse().unwrap());
    h.insert(hyper::header::CONTENT_SECURITY_POLICY, CSP.parse().unwrap());
    h.insert(
        hyper::header::X_CONTENT_TYPE_OPTIONS,
        "nosniff".parse().unwrap(),
    );
    h.insert(hyper::header::CACHE_CONTROL, "no-store".parse().unwrap());
    r
}
