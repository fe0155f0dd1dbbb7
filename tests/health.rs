//! Upstream health and resilience, black-box: active checks, passive
//! ejection, fallback to the other version, retries and their budget,
//! upstream and client timeouts. Real sockets on 127.0.0.1, ports from 0,
//! every wait bounded.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The longest any single wait in these tests may take.
const LIMIT: Duration = Duration::from_secs(10);

/// A backend that answers its name (and `/healthz` with 200 or 503), and
/// can be killed, listener and open connections, then started again on the
/// same port.
struct Killable {
    addr: SocketAddr,
    /// Requests other than health checks.
    hits: Arc<AtomicUsize>,
    /// Health checks seen.
    checks: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    /// Cancelled by `kill`; a new one per start.
    alive: Mutex<CancellationToken>,
    name: &'static str,
}

impl Killable {
    async fn start(name: &'static str) -> Killable {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let k = Killable {
            addr: listener.local_addr().unwrap(),
            hits: Arc::default(),
            checks: Arc::default(),
            healthy: Arc::new(AtomicBool::new(true)),
            alive: Mutex::new(CancellationToken::new()),
            name,
        };
        k.serve(listener);
        k
    }

    /// Starts serving again on the same address (bounded retries while the
    /// old socket goes away).
    async fn restart(&self) {
        let deadline = Instant::now() + LIMIT;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot bind {} again: {e}", self.addr);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        let alive = CancellationToken::new();
        *self.alive.lock().unwrap() = alive.clone();
        let (hits, checks, healthy, name) = (self.hits.clone(), self.checks.clone(), self.healthy.clone(), self.name);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = alive.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((stream, _)) = accepted else { continue };
                let (hits, checks, healthy, alive) = (hits.clone(), checks.clone(), healthy.clone(), alive.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let resp = if req.uri().path() == "/healthz" {
                            checks.fetch_add(1, Ordering::SeqCst);
                            if healthy.load(Ordering::SeqCst) {
                                text(StatusCode::OK, "ok\n")
                            } else {
                                text(StatusCode::SERVICE_UNAVAILABLE, "sick\n")
                            }
                        } else {
                            hits.fetch_add(1, Ordering::SeqCst);
                            text(StatusCode::OK, &format!("{name}\n"))
                        };
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let conn =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = alive.cancelled() => {}
                        _ = conn => {}
                    }
                });
            }
        });
    }

    /// Stops listening and drops every open connection.
    fn kill(&self) {
        self.alive.lock().unwrap().cancel();
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A raw backend: accepts connections, reads the request head, then does
/// what `answer` says. Counts connections (attempts).
struct Raw {
    addr: SocketAddr,
    attempts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone, Copy)]
enum Answer {
    /// Keep the connection open and never answer.
    Never,
    /// Close the connection without answering.
    HangUp,
}

impl Raw {
    async fn start(answer: Answer) -> Raw {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let attempts = Arc::new(AtomicUsize::new(0));
        let counter = attempts.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                match answer {
                    Answer::Never => held.push(stream),
                    Answer::HangUp => {
                        tokio::spawn(async move {
                            let _ = read_head(&mut stream).await;
                        });
                    }
                }
            }
        });
        Raw { addr, attempts, task }
    }

    fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads until the end of a request or response head; returns it.
async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(LIMIT, stream.read(&mut chunk)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf)
}

/// Reads one complete response with a Content-Length body from a raw connection.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()))
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return String::from_utf8_lossy(&buf[..end + 4 + len]).into_owned();
            }
        }
        let n = tokio::time::timeout(LIMIT, stream.read(&mut chunk)).await.expect("response in time").expect("read");
        assert!(n > 0, "connection closed before a full response: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Waits (bounded) until the proxy closes the connection; returns how long it took.
async fn closed_after(stream: &mut TcpStream) -> Duration {
    let start = Instant::now();
    let mut chunk = [0u8; 256];
    loop {
        match tokio::time::timeout(LIMIT, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the proxy did not close the connection within {LIMIT:?}"),
        }
    }
}

const FAST_CHECKS: &str =
    r#"health = { path = "/healthz", interval = "100ms", timeout = "100ms", unhealthy_after = 1, healthy_after = 1 }"#;

/// (healthy, reason) of one backend as `GET /v1/routes` shows it.
async fn backend_status(proxy: &Proxy, addr: SocketAddr) -> Option<(bool, String)> {
    let (status, body) = proxy.admin_call(Method::GET, "/v1/routes", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let address = addr.to_string();
    body["routes"].as_array()?.iter().flat_map(|r| r["pools"].as_array().cloned().unwrap_or_default()).find_map(|p| {
        p["backends"]
            .as_array()?
            .iter()
            .find(|b| b["address"] == address.as_str())
            .map(|b| (b["healthy"].as_bool().unwrap_or(false), b["reason"].as_str().unwrap_or_default().to_string()))
    })
}

/// Waits (bounded) until the backend's health is `healthy`; returns the reason shown.
async fn wait_health(proxy: &Proxy, addr: SocketAddr, healthy: bool) -> String {
    let deadline = Instant::now() + LIMIT;
    loop {
        let status = backend_status(proxy, addr).await;
        if let Some((h, reason)) = &status
            && *h == healthy
        {
            return reason.clone();
        }
        assert!(Instant::now() < deadline, "{addr} not healthy={healthy} in time: {status:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn events(proxy: &Proxy, kind: &str) -> Vec<String> {
    let (status, body) = proxy.admin_call(Method::GET, "/v1/events", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| e["detail"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Sends `n` sequential GETs on one keep-alive connection, killing `victim`
/// after the first third; returns the statuses and the bodies' first lines.
async fn gets_while_killing(proxy: &Proxy, victim: &Killable, n: usize) -> Vec<(StatusCode, String)> {
    let mut client = Client::connect(proxy.addr()).await;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if i == n / 3 {
            victim.kill();
        }
        let got = client.get("/", &[("cookie", "cutover_id=0123456789abcdef")]).await;
        out.push((got.status, got.first_line().to_string()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_stable_backends_loses_no_request_with_passive_ejection_only() {
    let (a, b) = (Killable::start("a").await, Killable::start("b").await);
    let proxy = Proxy::start(&pool_config(&[a.addr, b.addr], "eject = { base = \"30s\", max = \"60s\" }", None, ""));
    let results = gets_while_killing(&proxy, &b, 90).await;
    let errors: Vec<_> = results.iter().filter(|(s, _)| *s != StatusCode::OK).collect();
    assert!(errors.is_empty(), "client errors: {errors:?}");
    assert!(results[..30].iter().any(|(_, n)| n == "b"), "both backends served before the kill");
    assert!(results[60..].iter().all(|(_, n)| n == "a"), "after the ejection only a serves");
    let ejected = events(&proxy, "backend_ejected").await;
    assert_eq!(ejected.len(), 1, "{ejected:?}");
    assert!(ejected[0].contains(&b.addr.to_string()), "{ejected:?}");
    let reason = wait_health(&proxy, b.addr, false).await;
    assert!(reason.starts_with("ejected for 30s: "), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_stable_backends_loses_no_request_with_active_checks() {
    let (a, b) = (Killable::start("a").await, Killable::start("b").await);
    let keys = r#"health = { path = "/healthz", interval = "100ms", timeout = "100ms", unhealthy_after = 2, healthy_after = 1 }"#;
    let proxy = Proxy::start(&pool_config(&[a.addr, b.addr], keys, None, ""));
    let results = gets_while_killing(&proxy, &b, 90).await;
    let errors: Vec<_> = results.iter().filter(|(s, _)| *s != StatusCode::OK).collect();
    assert!(errors.is_empty(), "client errors: {errors:?}");
    let reason = wait_health(&proxy, b.addr, false).await;
    assert!(reason.contains("check failed") || reason.contains("ejected"), "{reason}");
    b.restart().await;
    wait_health(&proxy, b.addr, true).await;
    let mut client = Client::connect(proxy.addr()).await;
    let mut served = std::collections::HashSet::new();
    for _ in 0..10 {
        let got = client.get("/", &[]).await;
        assert_eq!(got.status, StatusCode::OK);
        served.insert(got.first_line().to_string());
    }
    assert_eq!(served.len(), 2, "b takes traffic again after it recovers: {served:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_pool_down_serves_its_users_from_stable_with_the_cookie_unchanged_then_back_on_canary() {
    let (stable, canary) = (Killable::start("stable").await, Killable::start("canary").await);
    let proxy = Proxy::start(&pool_config(&[stable.addr], "", Some((canary.addr, FAST_CHECKS)), ""));
    let users: Vec<String> = (0u64..)
        .map(|i| format!("{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        .filter(|k| cutover::routing::hash::bucket("web", k.as_bytes()) < 5000)
        .take(20)
        .collect();
    let serve_all = |expect: &'static str| {
        let users = users.clone();
        let addr = proxy.addr();
        async move {
            let mut client = Client::connect(addr).await;
            for key in &users {
                let got = client.get("/", &[("cookie", &format!("cutover_id={key}"))]).await;
                assert_eq!(got.status, StatusCode::OK);
                assert_eq!(got.first_line(), expect, "user {key}");
                assert!(got.set_cookie("cutover_id").is_none(), "the user's cookie is never rewritten");
            }
        }
    };
    serve_all("canary").await;
    canary.kill();
    wait_health(&proxy, canary.addr, false).await;
    serve_all("stable").await;
    let fallback = r#"cutover_assignments_total{reason="fallback",route="web",version="stable"}"#;
    assert_eq!(metric(&proxy.metrics(), fallback), 20.0);
    canary.restart().await;
    wait_health(&proxy, canary.addr, true).await;
    serve_all("canary").await;
    assert_eq!(metric(&proxy.metrics(), fallback), 20.0, "no fallback once the canary is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_that_never_answers_gets_504_within_the_response_timeout() {
    let silent = Raw::start(Answer::Never).await;
    let proxy = Proxy::start(&pool_config(&[silent.addr], "", None, "[timeouts]\nresponse = \"500ms\""));
    let start = Instant::now();
    let got = get(proxy.addr(), "/", &[]).await;
    let elapsed = start.elapsed();
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT, "{}", got.body);
    assert!(elapsed >= Duration::from_millis(450), "answered after {elapsed:?}, before the timeout");
    assert!(elapsed < Duration::from_millis(2000), "answered after {elapsed:?}");
    assert_eq!(silent.attempts(), 1, "a timed-out request is not retried");
    let timeouts = r#"cutover_upstream_errors_total{kind="timeout",route="web",version="stable"}"#;
    assert_eq!(metric(&proxy.metrics(), timeouts), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_idle_keep_alive_after_1s_causes_no_errors() {
    // hyper's header read timeout starts while a connection waits for the
    // next request: exactly an application server's keep-alive timeout.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service =
                    service_fn(|_req: Request<Incoming>| async { Ok::<_, Infallible>(text(StatusCode::OK, "app\n")) });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(1))
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let proxy = Proxy::start(&pool_config(&[addr], "", None, ""));
    let mut client = Client::connect(proxy.addr()).await;
    for gap_ms in [0, 900, 950, 980, 1000, 1000, 1020, 1050, 1100] {
        tokio::time::sleep(Duration::from_millis(gap_ms)).await;
        let got = client.get("/", &[]).await;
        assert_eq!(got.status, StatusCode::OK, "after a {gap_ms} ms pause: {}", got.body);
        assert_eq!(got.first_line(), "app");
    }
    assert!(connections.load(Ordering::SeqCst) >= 2, "the upstream did close idle connections");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_stops_a_retry_storm() {
    let (x, y) = (Raw::start(Answer::HangUp).await, Raw::start(Answer::HangUp).await);
    let extra = "[retries]\nbudget_ratio = 0.1\nbudget_min_per_sec = 0";
    let proxy = Proxy::start(&pool_config(&[x.addr, y.addr], "eject = { after = 1000000 }", None, extra));
    let n = 100;
    let mut client = Client::connect(proxy.addr()).await;
    for _ in 0..n {
        assert_eq!(client.get("/", &[]).await.status, StatusCode::BAD_GATEWAY);
    }
    let retries = x.attempts() + y.attempts() - n;
    assert!(retries >= 1, "the budget allows some retries");
    assert!(retries <= n / 10 + 1, "{retries} retries for {n} requests: at most 10% + 1");
    let text = proxy.metrics();
    assert_eq!(metric(&text, r#"cutover_retries_total{result="attempted"}"#), retries as f64);
    assert_eq!(metric(&text, r#"cutover_retries_total{result="budget_exhausted"}"#), (n - retries) as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_never_retried() {
    let (x, y) = (Raw::start(Answer::HangUp).await, Raw::start(Answer::HangUp).await);
    let proxy = Proxy::start(&pool_config(&[x.addr, y.addr], "", None, ""));
    // Fresh client connections: the proxy may close one whose request body it did not read.
    let post = Request::post("/orders").header("host", "example.com").body(full("{\"item\": 1}")).unwrap();
    assert_eq!(Client::connect(proxy.addr()).await.send(post).await.status, StatusCode::BAD_GATEWAY);
    assert_eq!(x.attempts() + y.attempts(), 1, "the backend saw exactly one attempt");
    let empty_post = Request::post("/orders").header("host", "example.com").body(empty()).unwrap();
    assert_eq!(Client::connect(proxy.addr()).await.send(empty_post).await.status, StatusCode::BAD_GATEWAY);
    assert_eq!(x.attempts() + y.attempts(), 2, "a bodiless POST is not retried either");
    // A GET in the same situation is tried once more, on the other backend.
    let before = (x.attempts(), y.attempts());
    assert_eq!(get(proxy.addr(), "/", &[]).await.status, StatusCode::BAD_GATEWAY);
    assert_eq!((x.attempts(), y.attempts()), (before.0 + 1, before.1 + 1), "before: {before:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_mark_down_after_unhealthy_after_failures_and_up_after_healthy_after_passes() {
    let (a, b) = (Killable::start("a").await, Killable::start("b").await);
    let keys = r#"health = { path = "/healthz", interval = "100ms", timeout = "100ms", unhealthy_after = 3, healthy_after = 2 }"#;
    let proxy = Proxy::start(&pool_config(&[a.addr, b.addr], keys, None, ""));
    let reason = wait_health(&proxy, b.addr, true).await;
    assert!(reason == "not checked" || reason.starts_with("check passed: 200"), "{reason}");

    let before = b.checks.load(Ordering::SeqCst);
    b.healthy.store(false, Ordering::SeqCst);
    let reason = wait_health(&proxy, b.addr, false).await;
    let failed = b.checks.load(Ordering::SeqCst) - before;
    assert!(failed >= 3, "down after {failed} failed checks");
    assert!(reason.starts_with("check failed (") && reason.ends_with("in a row): answered 503"), "{reason}");
    assert_eq!(
        events(&proxy, "backend_down").await,
        vec![format!("{} in pool stable: check failed (3 in a row): answered 503", b.addr)]
    );
    let mut client = Client::connect(proxy.addr()).await;
    for _ in 0..10 {
        assert_eq!(client.get("/", &[]).await.first_line(), "a", "a backend down takes no traffic");
    }

    let before = b.checks.load(Ordering::SeqCst);
    b.healthy.store(true, Ordering::SeqCst);
    let reason = wait_health(&proxy, b.addr, true).await;
    let passed = b.checks.load(Ordering::SeqCst) - before;
    assert!(passed >= 2, "up after {passed} passed checks");
    assert!(reason.starts_with("check passed: 200 in "), "{reason}");
    assert_eq!(events(&proxy, "backend_up").await.len(), 1);
    let served: std::collections::HashSet<String> = {
        let mut s = std::collections::HashSet::new();
        for _ in 0..4 {
            s.insert(client.get("/", &[]).await.first_line().to_string());
        }
        s
    };
    assert_eq!(served.len(), 2, "b takes traffic again: {served:?}");
    let gauge = format!("cutover_backend_healthy{{backend=\"{}\",pool=\"stable\"}}", b.addr);
    assert_eq!(metric(&proxy.metrics(), &gauge), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_removing_a_backend_stops_its_health_checks() {
    let (a, b) = (Killable::start("a").await, Killable::start("b").await);
    let keys = r#"health = { path = "/healthz", interval = "50ms", timeout = "50ms" }"#;
    let proxy = Proxy::start(&pool_config(&[a.addr, b.addr], keys, None, ""));
    assert!(eventually(LIMIT, || b.checks.load(Ordering::SeqCst) >= 2).await, "b is checked");
    let text = pool_config(&[a.addr], keys, None, "").replace("{dir}", &proxy.dir.path().display().to_string());
    std::fs::write(&proxy.config_path, text).unwrap();
    let (status, body) = proxy.admin_call(Method::POST, "/v1/reload", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (b_after, a_after) = (b.checks.load(Ordering::SeqCst), a.checks.load(Ordering::SeqCst));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(b.checks.load(Ordering::SeqCst) <= b_after + 1, "b is no longer checked");
    assert!(a.checks.load(Ordering::SeqCst) >= a_after + 3, "a still is");
    assert!(backend_status(&proxy, b.addr).await.is_none(), "b is gone from the status");
    assert!(!proxy.metrics().contains(&b.addr.to_string()), "b's series are removed");
}

const CLIENT_TIMEOUTS: &str = "[timeouts]\nclient_header = \"400ms\"\nclient_idle = \"1500ms\"";
const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_connection_outlives_client_header_and_closes_after_client_idle() {
    let app = Backend::named("app").await;
    let proxy = Proxy::start(&pool_config(&[app.addr], "", None, CLIENT_TIMEOUTS));
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    // A fresh connection gets client_idle too, not client_header, before its first byte.
    tokio::time::sleep(Duration::from_millis(700)).await;
    stream.write_all(GET).await.unwrap();
    assert!(read_response(&mut stream).await.ends_with("app\n"));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stream.write_all(GET).await.unwrap();
    assert!(read_response(&mut stream).await.ends_with("app\n"), "still open after 1 s idle (client_header 400 ms)");
    let closed = closed_after(&mut stream).await;
    assert!(closed >= Duration::from_millis(1300), "closed after {closed:?} idle, before client_idle");
    assert!(closed <= Duration::from_millis(3500), "closed after {closed:?} idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_head_is_cut_off_after_client_header() {
    let app = Backend::named("app").await;
    let proxy = Proxy::start(&pool_config(&[app.addr], "", None, CLIENT_TIMEOUTS));
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream.write_all(GET).await.unwrap();
    read_response(&mut stream).await;
    // Idle for longer than client_header, then a head that trickles in.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        let _ = writer.write_all(b"GET / HTTP/1.1\r\nHost: example.com\r\n").await;
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if writer.write_all(format!("X-Slow-{i}: 1\r\n").as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let mut chunk = [0u8; 256];
    let closed = loop {
        match tokio::time::timeout(LIMIT, reader.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("a slow head was not cut off"),
        }
    };
    trickle.abort();
    assert!(closed >= Duration::from_millis(350), "cut off after {closed:?}, before client_header");
    assert!(closed <= Duration::from_millis(1500), "cut off after {closed:?}");
    assert_eq!(app.hits(), 1, "the partial request never reached the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connection_idle_past_client_header_stays_open_until_client_idle() {
    let app = Backend::named("app").await;
    let proxy = Proxy::start(&pool_config(&[app.addr], "", None, CLIENT_TIMEOUTS));
    let stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("h2c handshake");
    let conn = tokio::spawn(conn);
    for pause in [0, 1000] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let req = Request::get("http://example.com/").body(empty()).unwrap();
        let resp = sender.send_request(req).await.expect("still open after the pause");
        assert_eq!(resp.status(), StatusCode::OK);
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
        assert_eq!(&body[..], b"app\n");
    }
    let start = Instant::now();
    let _ = tokio::time::timeout(LIMIT, conn).await.expect("the proxy closes an idle HTTP/2 connection");
    let closed = start.elapsed();
    assert!(closed >= Duration::from_millis(1300), "closed after {closed:?} idle, before client_idle");
    assert!(closed <= Duration::from_millis(3500), "closed after {closed:?} idle");
}
