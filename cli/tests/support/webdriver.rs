//! A small WebDriver client (the W3C protocol over HTTP, no crate) for the
//! browser tests: Debian's `chromedriver` driving headless `chromium`.
//! Both come from `apt-get install chromium chromium-driver`, which
//! `scripts/test.sh` does; a missing one fails the test with that advice.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one browser session on it.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn chromium_binary() -> String {
    for b in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if std::path::Path::new(b).exists() {
            return b.into();
        }
    }
    panic!(
        "chromium is not installed: `apt-get install chromium chromium-driver` (scripts/test.sh does it)"
    )
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless session.
    pub async fn start() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = shortlink_testkit::free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("chromedriver is not installed ({e}): `apt-get install chromium chromium-driver` (scripts/test.sh does it)")
            });
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium_binary(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900", "--hide-scrollbars", "--force-color-profile=srgb"]
            }
        }}});
        let v: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session JSON");
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_owned();
        Browser {
            driver,
            base,
            session,
            http,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut r = self.http.request(method, url);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let v: Value = r
            .send()
            .await
            .expect("webdriver call")
            .json()
            .await
            .expect("webdriver JSON");
        v["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn goto(&self, url: &str) {
        let v = self.post("/url", json!({"url": url})).await;
        assert!(v.is_null(), "navigating to {url}: {v}");
    }

    /// The element for `css`, if there is one now.
    pub async fn try_find(&self, css: &str) -> Option<String> {
        let v = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await;
        v[ELEMENT].as_str().map(str::to_owned)
    }

    /// Waits (up to `limit`) for an element.
    pub async fn find(&self, css: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(e) = self.try_find(css).await {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no element {css} in {limit:?}: page text:\n{}",
                self.body_text().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn text(&self, el: &str) -> String {
        self.get(&format!("/element/{el}/text"))
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The text of the first element for `css` (empty if none).
    pub async fn text_of(&self, css: &str) -> String {
        match self.try_find(css).await {
            Some(e) => self.text(&e).await,
            None => String::new(),
        }
    }

    pub async fn body_text(&self) -> String {
        self.text_of("body").await
    }

    pub async fn click(&self, el: &str) {
        let v = self.post(&format!("/element/{el}/click"), json!({})).await;
        assert!(v.is_null(), "click: {v}");
    }

    pub async fn click_css(&self, css: &str) {
        let e = self.find(css, Duration::from_secs(5)).await;
        self.click(&e).await;
    }

    /// Clears a field and types into it.
    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.find(css, Duration::from_secs(5)).await;
        self.post(&format!("/element/{e}/clear"), json!({})).await;
        let v = self
            .post(&format!("/element/{e}/value"), json!({"text": text}))
            .await;
        assert!(v.is_null(), "typing into {css}: {v}");
    }

    pub async fn execute(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": []}))
            .await
    }

    /// Accepts a confirm() dialog.
    pub async fn accept_alert(&self) {
        self.post("/alert/accept", json!({})).await;
    }

    /// Waits until `css`'s text satisfies `f`; returns the text and the time it took.
    pub async fn wait_text(
        &self,
        css: &str,
        limit: Duration,
        f: impl Fn(&str) -> bool,
    ) -> (String, Duration) {
        let start = Instant::now();
        loop {
            let t = self.text_of(css).await;
            if f(&t) {
                return (t, start.elapsed());
            }
            assert!(
                start.elapsed() < limit,
                "{css} never matched in {limit:?}; last text: {t:?}\npage:\n{}",
                self.body_text().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self, path: &std::path::Path) {
        let v = self.get("/screenshot").await;
        let png = base64_decode(v.as_str().expect("screenshot base64"));
        std::fs::write(path, png).expect("write screenshot");
    }

    pub async fn quit(self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
    }
}

/// Standard base64 (the screenshot), without a crate.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => 0,
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let pad = chunk.iter().filter(|&&b| b == b'=').count();
        let n = chunk.iter().fold(0u32, |acc, &b| {
            (acc << 6) | if b == b'=' { 0 } else { val(b) }
        }) << (6 * (4 - chunk.len() as u32));
        let b = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&b[..3 - pad.min(2)]);
    }
    out
}
