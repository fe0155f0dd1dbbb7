//! Balancing within a pool, black-box: round robin's rotation with a failing
//! backend and retries, and passive ejection of a backend that hangs.
//! Real sockets on 127.0.0.1, ports from 0, every wait bounded.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use http::{Method, StatusCode};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// The longest any single wait in these tests may take.
const LIMIT: Duration = Duration::from_secs(10);

/// A backend that accepts connections and reads, but never answers: it either
/// hangs up once the request arrives or holds the connection forever.
struct Broken {
    addr: SocketAddr,
    /// Connections accepted: one per attempt, since none is ever reused.
    attempts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Broken {
    async fn start(hang_up: bool) -> Broken {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let attempts = Arc::new(AtomicUsize::new(0));
        let counter = attempts.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(n) if n > 0 && !hang_up => continue,
                            _ => break,
                        }
                    }
                });
            }
        });
        Broken { addr, attempts, task }
    }

    fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }
}

impl Drop for Broken {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One route over a single pool `stable` with `backends`; `pool_keys` and
/// `extra` are added to the pool and to the top of the file.
fn config(backends: &[SocketAddr], pool_keys: &str, extra: &str) -> String {
    common::pool_config(backends, pool_keys, None, extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_alternates_first_attempts_when_one_of_two_backends_fails() {
    let bad = Broken::start(true).await;
    let good = Backend::named("good").await;
    // Never ejected, every retry allowed: only the rotation decides.
    let proxy = Proxy::start(&config(
        &[bad.addr, good.addr],
        "eject = { after = 1000000 }",
        "[retries]\nbudget_min_per_sec = 1000",
    ));
    let n = 40;
    let mut client = Client::connect(proxy.addr()).await;
    for i in 0..n {
        let got = client.get("/", &[]).await;
        assert_eq!((got.status, got.first_line()), (StatusCode::OK, "good"), "request {i}");
    }
    assert_eq!(good.hits(), n, "every request was served by the good backend");
    assert_eq!(bad.attempts(), n / 2, "first attempts alternate: every other one tried the bad backend");
    let text = proxy.metrics();
    assert_eq!(metric(&text, r#"cutover_retries_total{result="attempted"}"#), (n / 2) as f64);
}

/// (healthy, reason) of one backend as `GET /v1/routes` shows it.
async fn backend_status(proxy: &Proxy, addr: SocketAddr) -> (bool, String) {
    let (status, body) = proxy.admin_call(Method::GET, "/v1/routes", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let pools = body["routes"][0]["pools"].as_array().cloned().unwrap_or_default();
    let backend = pools
        .iter()
        .flat_map(|p| p["backends"].as_array().cloned().unwrap_or_default())
        .find(|b| b["address"] == addr.to_string().as_str())
        .unwrap_or_else(|| panic!("{addr} not in {body}"));
    (backend["healthy"].as_bool().unwrap_or(false), backend["reason"].as_str().unwrap_or_default().to_string())
}

/// Sends sequential GETs on one connection; returns the statuses.
async fn statuses(proxy: &Proxy, n: usize) -> Vec<StatusCode> {
    let mut client = Client::connect(proxy.addr()).await;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(client.get("/", &[]).await.status);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_answers_is_ejected_by_its_timeouts_without_active_checks() {
    let hung = Broken::start(false).await;
    let good = Backend::named("good").await;
    let proxy = Proxy::start(&config(
        &[good.addr, hung.addr],
        "eject = { after = 2, base = \"30s\", max = \"60s\" }",
        "[timeouts]\nresponse = \"300ms\"",
    ));
    // good, hung (504), good, hung (504): the second timeout in a row ejects it.
    let first = statuses(&proxy, 4).await;
    use StatusCode as S;
    assert_eq!(first, [S::OK, S::GATEWAY_TIMEOUT, S::OK, S::GATEWAY_TIMEOUT]);
    let deadline = Instant::now() + LIMIT;
    let reason = loop {
        let (healthy, reason) = backend_status(&proxy, hung.addr).await;
        if !healthy {
            break reason;
        }
        assert!(Instant::now() < deadline, "the hung backend was never ejected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(reason, "ejected for 30s: 2 failed attempts in a row");
    assert_eq!(statuses(&proxy, 10).await, [S::OK; 10], "the hung backend left the rotation");
    assert_eq!(hung.attempts(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_eject_timeouts_off_a_backend_that_never_answers_stays_in_the_rotation() {
    let hung = Broken::start(false).await;
    let good = Backend::named("good").await;
    let proxy = Proxy::start(&config(
        &[good.addr, hung.addr],
        "eject = { after = 2, timeouts = false }",
        "[timeouts]\nresponse = \"300ms\"",
    ));
    use StatusCode as S;
    let got = statuses(&proxy, 6).await;
    assert_eq!(got, [S::OK, S::GATEWAY_TIMEOUT, S::OK, S::GATEWAY_TIMEOUT, S::OK, S::GATEWAY_TIMEOUT]);
    assert!(backend_status(&proxy, hung.addr).await.0, "not ejected");
    assert_eq!(hung.attempts(), 3);
}
