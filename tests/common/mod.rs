//! Test harness: in-process backends, the real server on real sockets
//! (ports from 0), a small HTTP client, and helpers to run the binary.
#![allow(dead_code)]

pub mod etcd;
pub mod wire;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

pub type Body = BoxBody<Bytes, hyper::Error>;

pub fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

type Handler = Arc<dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync>;

/// A request as a backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub version: http::Version,
    pub headers: HeaderMap,
}

/// An in-process backend on 127.0.0.1, port from 0.
pub struct Backend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// A backend whose handler is `f`.
    pub async fn start<F, Fut>(f: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
        Self::serve(listener, Arc::new(move |req| Box::pin(f(req)))).await
    }

    async fn serve(listener: tokio::net::TcpListener, handler: Handler) -> Backend {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hits = Arc::new(AtomicUsize::new(0));
        let (seen2, hits2) = (seen.clone(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let handler = handler.clone();
                let seen = seen2.clone();
                let hits = hits2.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        seen.lock().unwrap().push(Seen {
                            method: req.method().clone(),
                            uri: req.uri().to_string(),
                            version: req.version(),
                            headers: req.headers().clone(),
                        });
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Backend { addr, seen, hits, task }
    }

    /// A backend answering 200 with its `name` as the first line of the body.
    pub async fn named(name: &'static str) -> Backend {
        Backend::start(move |_req| async move { text(StatusCode::OK, &format!("{name}\n")) }).await
    }

    /// A backend answering `status` to everything.
    pub async fn status(name: &'static str, status: u16) -> Backend {
        Backend::start(move |_req| async move { text(StatusCode::from_u16(status).unwrap(), &format!("{name}\n")) })
            .await
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn last_seen(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().expect("the backend saw a request")
    }

    /// Stops accepting; open connections are dropped with the task.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = status;
    r
}

/// A listening address nothing answers on (bound, then closed).
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Got {
    pub fn first_line(&self) -> &str {
        self.body.lines().next().unwrap_or("")
    }

    /// The value of the `name` cookie set by this response, if any.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers.get_all(http::header::SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|v| {
            v.strip_prefix(&format!("{name}=")).map(|rest| rest.split(';').next().unwrap_or("").to_string())
        })
    }
}

/// A keep-alive HTTP/1.1 client connection.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Body>,
    pub addr: SocketAddr,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the proxy");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Client { sender, addr }
    }

    pub async fn send(&mut self, req: Request<Body>) -> Got {
        self.sender.ready().await.expect("connection ready");
        let resp = self.sender.send_request(req).await.expect("response");
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        Got { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&bytes).into_owned() }
    }

    /// GET `path` with extra headers (name, value).
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Got {
        let mut b = Request::get(path).header("host", "example.com");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(empty()).unwrap()).await
    }
}

/// One GET on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Got {
    Client::connect(addr).await.get(path, headers).await
}

/// A running proxy started in-process from a config file in a temp dir.
pub struct Proxy {
    pub running: cutover::server::Running,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl Proxy {
    /// Starts cutover with `config` (TOML). `{dir}` in the text is replaced
    /// by the temp dir; the admin socket lives there.
    pub fn start(config: &str) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, config)
    }

    pub fn start_in(dir: tempfile::TempDir, config: &str) -> Proxy {
        let config_path = dir.path().join("cutover.toml");
        std::fs::write(&config_path, config.replace("{dir}", &dir.path().display().to_string())).unwrap();
        let running = cutover::server::start(
            cutover::server::Source::File(config_path.clone()),
            cutover::server::Inherited::default(),
            None,
        )
        .unwrap_or_else(|e| panic!("cutover failed to start: {e}"));
        Proxy { running, dir, config_path }
    }

    pub fn addr(&self) -> SocketAddr {
        self.running.proxy_addrs[0]
    }

    pub fn admin(&self) -> cutover::ctl::Target {
        let listen = match self.running.admin.as_ref().expect("admin configured") {
            cutover::server::AdminAddress::Unix(p) => cutover::config::AdminListen::Unix(p.clone()),
            cutover::server::AdminAddress::Tcp(a) => cutover::config::AdminListen::Tcp(*a),
        };
        let token = std::fs::read_to_string(self.dir.path().join("admin.token")).ok().map(|t| t.trim().to_string());
        cutover::ctl::Target { listen, token }
    }

    /// Calls the admin API; returns (status, JSON).
    pub async fn admin_call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, serde_json::Value) {
        cutover::ctl::call(&self.admin(), method, path, body).await.expect("admin reachable")
    }

    pub async fn set_weight(&self, route: &str, weight: f64) {
        let (status, body) = self
            .admin_call(
                Method::PUT,
                &format!("/v1/routes/{route}/weight"),
                Some(serde_json::json!({ "weight": weight })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    pub fn metrics(&self) -> String {
        self.running.shared.metrics.render()
    }
}

/// The value of one series in Prometheus text output (0 when absent).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

/// A config with one route `web` over pools `stable` and `canary`, an admin
/// socket in `{dir}`, and extra TOML appended.
pub fn two_pool_config(stable: SocketAddr, canary: SocketAddr, weight: f64, extra: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
workers = 1
drain_timeout = "5s"

[admin]
listen = "unix:{{dir}}/admin.sock"

[state]
path = "{{dir}}/state.json"

[log]
access = "off"

{extra}

[[routes]]
name = "web"
stable = "stable"
canary = "canary"
weight = {weight}

[pools.stable]
backends = ["{stable}"]

[pools.canary]
backends = ["{canary}"]
"#
    )
}

/// A config with one route `web`: stable pool `stable`, optional canary pool
/// `canary`, each with extra pool keys; `extra` is appended at the top level.
pub fn pool_config(
    stable: &[SocketAddr],
    stable_keys: &str,
    canary: Option<(SocketAddr, &str)>,
    extra: &str,
) -> String {
    let list = |addrs: &[SocketAddr]| addrs.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    let (route_canary, canary_pool) = match canary {
        Some((addr, keys)) => (
            "canary = \"canary\"\nweight = 50".to_string(),
            format!("[pools.canary]\nbackends = [\"{addr}\"]\n{keys}\n"),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
workers = 1
drain_timeout = "2s"

[admin]
listen = "unix:{{dir}}/admin.sock"

[state]
path = "{{dir}}/state.json"

[log]
access = "off"

{extra}

[[routes]]
name = "web"
stable = "stable"
{route_canary}

[pools.stable]
backends = [{stable}]
{stable_keys}

{canary_pool}
"#,
        stable = list(stable)
    )
}

/// Polls an async check every 20 ms until it holds or `limit` passes.
pub async fn until<F, Fut>(limit: Duration, check: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `check` holds, polling every 10 ms, for at most `limit`.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The cutover binary, started with `args`, logging to a file whose lines
/// tests read (listening addresses, readiness).
pub struct Binary {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl Binary {
    pub fn start(args: &[&str], dir: &Path) -> Binary {
        let log = dir.join(format!(
            "cutover-{}.log",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        ));
        let file = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args(args)
            .env("CUTOVER_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(file)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start the cutover binary");
        Binary { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the "ready" line (bounded) and returns the listening addresses by listener name.
    pub fn wait_ready(&mut self, limit: Duration) -> Vec<(String, String)> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let text = self.log_text();
            if text.contains(" ready") {
                return listening(&text);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("cutover exited ({status}) before it was ready:\n{text}");
            }
            assert!(std::time::Instant::now() < deadline, "cutover not ready in time:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (listener, addr) pairs from the binary's "listening" log lines.
pub fn listening(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter(|l| l.contains("listening"))
        .filter_map(|l| {
            let field = |name: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{name}=")).map(|v| v.trim_matches('"').to_string()))
            };
            Some((field("listener")?, field("addr")?))
        })
        .collect()
}
