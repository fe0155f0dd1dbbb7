//! A tiny WebDriver client (W3C WebDriver over HTTP + JSON) for Debian's
//! `chromium` driven headless by `chromedriver`: just what the dashboard's
//! browser tests use. No client crate: each command is one HTTP/1.1 request
//! over hyper's client connection.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// `name` from the environment variable `var`, else the Debian path; a
/// clear failure (never a silent skip) when neither exists.
fn program(var: &str, debian: &str, package: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(debian));
    assert!(
        path.exists(),
        "{} not found: the dashboard's browser tests need Debian's `{package}` \
         (apt-get install chromium chromium-driver; .ci/run installs them) or {var}=/path",
        path.display()
    );
    path
}

/// A headless chromium session; the driver and browser are killed on drop.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Browser {
        let chromium = program("CHROMIUM", "/usr/bin/chromium", "chromium");
        let chromedriver = program("CHROMEDRIVER", "/usr/bin/chromedriver", "chromium-driver");
        let profile = tempfile::tempdir().unwrap();
        // A free port: bound, read, released (chromedriver cannot take an fd).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = {
            use std::os::unix::process::CommandExt;
            Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own process group, so that drop can end the browser too.
                .process_group(0)
                .spawn()
                .expect("start chromedriver")
        };
        let mut browser = Browser { driver, port, session: String::new(), _profile: profile };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(v) = browser.request(Method::GET, "/status", None).await
                && v["value"]["ready"] == json!(true)
            {
                break;
            }
            if let Ok(Some(status)) = browser.driver.try_wait() {
                panic!("chromedriver exited ({status}) before it was ready");
            }
            assert!(tokio::time::Instant::now() < deadline, "chromedriver not ready in 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", browser._profile.path().display())])
        .collect::<Vec<_>>();
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            // Prompts stay open until a test accepts or dismisses them.
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": { "binary": chromium, "args": args },
        }}});
        let v = browser.request(Method::POST, "/session", Some(caps)).await.expect("a chromium session");
        browser.session = v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {v}")).to_string();
        browser
    }

    async fn request(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("127.0.0.1:{}", self.port))
            .header("content-type", "application/json; charset=utf-8")
            .body(Full::new(bytes))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
            .await
            .map_err(|_| format!("WebDriver {path}: no answer in 30 s"))?
            .map_err(|e| e.to_string())?;
        let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| format!("WebDriver {path}: {e}"))
    }

    /// A session command; Err with WebDriver's error and message.
    pub async fn try_command(&self, method: Method, path: &str, body: Value) -> Result<Value, String> {
        let body = if method == Method::GET || method == Method::DELETE { None } else { Some(body) };
        let v = self.request(method, &format!("/session/{}{path}", self.session), body).await?;
        match v["value"].get("error") {
            Some(error) => Err(format!("{error}: {}", v["value"]["message"])),
            None => Ok(v["value"].clone()),
        }
    }

    pub async fn command(&self, method: Method, path: &str, body: Value) -> Value {
        self.try_command(method, path, body).await.unwrap_or_else(|e| panic!("WebDriver {path}: {e}"))
    }

    pub async fn goto(&self, url: &str) {
        self.command(Method::POST, "/url", json!({ "url": url })).await;
    }

    /// Runs `script` (a function body; `return` gives the value).
    pub async fn run(&self, script: &str) -> Value {
        self.command(Method::POST, "/execute/sync", json!({ "script": script, "args": [] })).await
    }

    /// Polls `script` every 50 ms until it returns something other than
    /// null or false; panics with `what` after `limit`.
    pub async fn wait_for(&self, what: &str, limit: Duration, script: &str) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let v = self.run(script).await;
            if !v.is_null() && v != json!(false) {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "the page did not show {what} within {limit:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A real click (WebDriver's, so a `confirm()` it opens stays open).
    pub async fn click(&self, css: &str) {
        let found = self.command(Method::POST, "/element", json!({ "using": "css selector", "value": css })).await;
        let id = found[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {found}")).to_string();
        self.command(Method::POST, &format!("/element/{id}/click"), json!({})).await;
    }

    /// The text of the open prompt, waiting for it (bounded).
    pub async fn alert_text(&self) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(v) = self.try_command(Method::GET, "/alert/text", json!({})).await {
                return v.as_str().unwrap_or("").to_string();
            }
            assert!(tokio::time::Instant::now() < deadline, "no confirmation prompt opened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn accept_alert(&self) {
        self.command(Method::POST, "/alert/accept", json!({})).await;
    }

    pub async fn dismiss_alert(&self) {
        self.command(Method::POST, "/alert/dismiss", json!({})).await;
    }

    /// Ends the session (chromedriver closes the browser and waits for
    /// it), then asks the driver to exit, so that no browser process is
    /// left to be reaped by someone else.
    pub async fn quit(mut self) {
        let _ = self.request(Method::DELETE, &format!("/session/{}", self.session), None).await;
        let _ = Command::new("kill").args(["-TERM", &self.driver.id().to_string()]).status();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while let Ok(None) = self.driver.try_wait() {
            if tokio::time::Instant::now() >= deadline {
                self.kill();
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last resort (a failed test): the driver's whole process group.
    fn kill(&mut self) {
        let _ = Command::new("kill").args(["-KILL", &format!("-{}", self.driver.id())]).status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(None) = self.driver.try_wait() {
            self.kill();
        }
    }
}
