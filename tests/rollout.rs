//! Progressive rollouts end to end: real traffic, one-second steps.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use serde_json::json;
use tokio::io::AsyncReadExt;

/// Sends requests from many users until `stop` (bounded); gives the number
/// sent and how many were not answered 200.
fn load(proxy: &Arc<Proxy>, stop: &Arc<AtomicBool>) -> tokio::task::JoinHandle<(usize, usize)> {
    let (proxy, stop) = (proxy.clone(), stop.clone());
    tokio::spawn(async move {
        let mut client = Client::connect(proxy.addr()).await;
        let (mut sent, mut not_ok) = (0, 0);
        for i in 0..100_000u32 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let got = client.get("/", &[("cookie", &format!("cutover_id=user{}", i % 1000))]).await;
            sent += 1;
            not_ok += usize::from(got.status != StatusCode::OK);
        }
        (sent, not_ok)
    })
}

async fn wait_for(proxy: &Proxy, limit: Duration, check: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (_, body) = proxy.admin_call(Method::GET, "/v1/routes/web", None).await;
        if check(&body) || tokio::time::Instant::now() > deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the rollout 20, 50, 100 (one-second steps, 1% error limit) under
/// load from two clients until it ends; gives the route's final view and,
/// per client, the requests sent and those not answered 200.
async fn rollout_under_load(proxy: &Arc<Proxy>) -> (serde_json::Value, Vec<(usize, usize)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let loaders = [load(proxy, &stop), load(proxy, &stop)];
    let plan = json!({"steps": [20, 50, 100], "interval": "1s", "max_error_rate": 0.01, "min_requests": 20});
    let (status, body) = proxy.admin_call(Method::POST, "/v1/routes/web/rollout", Some(plan)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let done = wait_for(proxy, Duration::from_secs(30), |b| b["rollout"].is_null()).await;
    stop.store(true, Ordering::SeqCst);
    let mut counts = Vec::new();
    for l in loaders {
        counts.push(l.await.unwrap());
    }
    (done, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_canary_reaches_100() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let proxy = Arc::new(Proxy::start(&two_pool_config(stable.addr, canary.addr, 0.0, "")));
    let (done, _) = rollout_under_load(&proxy).await;
    assert_eq!(done["weight"].as_f64(), Some(100.0), "{done}");
    assert_eq!(done["halted"].as_bool(), Some(false));
    assert_eq!(done["last_outcome"].as_str(), Some("completed at 100%"));
    let (_, events) = proxy.admin_call(Method::GET, "/v1/events", None).await;
    let kinds: Vec<&str> = events["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["rollout_start", "rollout_step", "rollout_step", "rollout_complete"]);
    assert!(canary.hits() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_answering_500_is_rolled_back_automatically() {
    let (stable, canary) = (Backend::named("stable").await, Backend::status("canary", 500).await);
    let proxy = Arc::new(Proxy::start(&two_pool_config(stable.addr, canary.addr, 0.0, "")));
    let (done, _) = rollout_under_load(&proxy).await;
    assert_eq!((done["weight"].as_f64(), done["halted"].as_bool()), (Some(0.0), Some(true)), "{done}");
    assert!(done["last_outcome"].as_str().unwrap().contains("error rate 100.00%"), "{done}");
    let text = proxy.metrics();
    assert_eq!(metric(&text, r#"cutover_rollbacks_total{route="web",trigger="error_rate"}"#), 1.0);
    assert_eq!(metric(&text, r#"cutover_route_halted{route="web"}"#), 1.0);
    // After the rollback nobody reaches the canary, beta testers included.
    let hits = canary.hits();
    for i in 0..50 {
        let got = get(proxy.addr(), "/", &[("cookie", &format!("cutover_id=u{i}; cutover_beta=always"))]).await;
        assert_eq!(got.first_line(), "stable");
    }
    assert_eq!(canary.hits(), hits);
}

/// Failures that retries hide from clients still count in the canary's
/// error rate: with one of two canary backends dropping every request, all
/// clients get their 200 (each failed attempt is retried on the other
/// backend), and the rollout still rolls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_hidden_by_retries_still_roll_the_canary_back() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let dropper = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bad = dropper.local_addr().unwrap();
    tokio::spawn(async move {
        // Reads a request, then closes without an answer.
        while let Ok((mut socket, _)) = dropper.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await;
            });
        }
    });
    // Every failed attempt is retried, and the dropping backend is never ejected.
    let extra = "[retries]\nbudget_ratio = 1.0\nbudget_min_per_sec = 100000\n";
    let config = two_pool_config(stable.addr, canary.addr, 0.0, extra).replace(
        &format!("backends = [\"{}\"]", canary.addr),
        &format!(
            "backends = [\"{}\", \"{bad}\"]\neject = {{ after = 1000000, base = \"5s\", max = \"5s\" }}",
            canary.addr
        ),
    );
    let proxy = Arc::new(Proxy::start(&config));
    let (done, counts) = rollout_under_load(&proxy).await;
    for (sent, not_ok) in counts {
        assert!(sent > 0);
        assert_eq!(not_ok, 0, "every client got its 200");
    }
    assert_eq!((done["weight"].as_f64(), done["halted"].as_bool()), (Some(0.0), Some(true)), "{done}");
    assert!(done["last_outcome"].as_str().unwrap().contains("error rate"), "{done}");
    let text = proxy.metrics();
    assert_eq!(metric(&text, r#"cutover_rollbacks_total{route="web",trigger="error_rate"}"#), 1.0);
    assert!(metric(&text, r#"cutover_retries_total{result="attempted"}"#) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_rollout_resumes_at_its_step() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let config = two_pool_config(stable.addr, canary.addr, 0.0, "");
    let proxy = Proxy::start(&config);
    let plan = json!({"steps": [10, 30, 100], "interval": "1h", "min_requests": 1});
    let (status, _) = proxy.admin_call(Method::POST, "/v1/routes/web/rollout", Some(plan)).await;
    assert_eq!(status, StatusCode::OK);
    let Proxy { running, dir, .. } = proxy;
    running.shutdown();
    let proxy = Proxy::start_in(dir, &config);
    let (_, body) = proxy.admin_call(Method::GET, "/v1/routes/web", None).await;
    assert_eq!(body["weight"].as_f64(), Some(10.0));
    assert_eq!(body["rollout"]["step"], json!(1));
    assert_eq!(body["rollout"]["steps"], json!([10.0, 30.0, 100.0]));
    let left = body["rollout"]["time_left_secs"].as_f64().unwrap();
    assert!(left > 3500.0, "the step window restarts after a restart: {left}");
}
