//! Hot reload: by in-place write, by rename, by a Kubernetes-style symlink
//! swap, by the endpoint and by SIGHUP; invalid configs are kept out while
//! serving continues; no request fails across many reloads and admin changes;
//! the watcher applies only whole files and tries an invalid one once.

mod common;

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use http::{Method, StatusCode};

/// Waits (bounded) until the admin API reports `weight` for route web.
async fn wait_weight(proxy: &Proxy, weight: f64) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = proxy.admin_call(Method::GET, "/v1/routes/web", None).await;
        if body["weight"].as_f64() == Some(weight) {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn render(proxy: &Proxy, config: &str) -> String {
    config.replace("{dir}", &proxy.dir.path().display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_on_in_place_write() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let config = two_pool_config(stable.addr, canary.addr, 5.0, "");
    let proxy = Proxy::start(&config);
    std::fs::write(&proxy.config_path, render(&proxy, &config).replace("weight = 5", "weight = 35")).unwrap();
    assert!(wait_weight(&proxy, 35.0).await, "the watcher reloaded the file");
    let (_, events) = proxy.admin_call(Method::GET, "/v1/events", None).await;
    assert_eq!(events["events"][0]["actor"], serde_json::json!("watch"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_on_rename_over_the_file() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let config = two_pool_config(stable.addr, canary.addr, 5.0, "");
    let proxy = Proxy::start(&config);
    let tmp = proxy.dir.path().join(".cutover.toml.swp");
    std::fs::write(&tmp, render(&proxy, &config).replace("weight = 5", "weight = 45")).unwrap();
    std::fs::rename(&tmp, &proxy.config_path).unwrap();
    assert!(wait_weight(&proxy, 45.0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_on_kubernetes_style_symlink_swap() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let config = two_pool_config(stable.addr, canary.addr, 5.0, "");
    // Layout of a mounted ConfigMap: cutover.toml -> ..data/cutover.toml, ..data -> ..v1
    let dir = tempfile::tempdir().unwrap();
    let text = config.replace("{dir}", &dir.path().display().to_string());
    let v1 = dir.path().join("..v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("cutover.toml"), &text).unwrap();
    std::os::unix::fs::symlink("..v1", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/cutover.toml", dir.path().join("cutover.toml")).unwrap();
    let config_path = dir.path().join("cutover.toml");
    let running =
        cutover::server::start(cutover::server::Source::File(config_path.clone()), Default::default(), None).unwrap();
    let proxy = Proxy { running, dir, config_path };
    // The swap: write ..v2, point a new link at it, rename it over ..data.
    let v2 = proxy.dir.path().join("..v2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v2.join("cutover.toml"), text.replace("weight = 5", "weight = 55")).unwrap();
    std::os::unix::fs::symlink("..v2", proxy.dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(proxy.dir.path().join("..data_tmp"), proxy.dir.path().join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();
    assert!(wait_weight(&proxy, 55.0).await, "the symlink swap was seen");
}

/// The live weight of route web.
async fn weight(proxy: &Proxy) -> Option<f64> {
    proxy.admin_call(Method::GET, "/v1/routes/web", None).await.1["weight"].as_f64()
}

/// How many audit events of `kind` the log holds.
async fn count_events(proxy: &Proxy, kind: &str) -> usize {
    let (_, body) = proxy.admin_call(Method::GET, "/v1/events", None).await;
    body["events"].as_array().unwrap().iter().filter(|e| e["kind"] == kind).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_written_in_two_halves_with_a_pause_is_applied_only_whole() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let config = two_pool_config(stable.addr, canary.addr, 5.0, "");
    let proxy = Proxy::start(&config);
    // The first half is a valid config on its own (weight 35, no api route).
    let first_half = render(&proxy, &config).replace("weight = 5", "weight = 35");
    let second_half = "\n[[routes]]\nname = \"api\"\npath_prefix = \"/api/\"\nstable = \"canary\"\n";
    let mut file = std::fs::OpenOptions::new().write(true).truncate(true).open(&proxy.config_path).unwrap();
    file.write_all(first_half.as_bytes()).unwrap();
    file.flush().unwrap();
    // The writer pauses mid-file for several debounce and settle times.
    let pause_end = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < pause_end {
        assert_eq!(weight(&proxy).await, Some(5.0), "the half-written file was applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    file.write_all(second_half.as_bytes()).unwrap();
    drop(file);
    assert!(wait_weight(&proxy, 35.0).await, "the whole file was applied");
    assert_eq!(get(proxy.addr(), "/api/x", &[]).await.first_line(), "canary", "with its second half");
    assert_eq!((count_events(&proxy, "reload").await, count_events(&proxy, "reload_failed").await), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_in_place_costs_exactly_one_failed_reload() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let config = two_pool_config(stable.addr, canary.addr, 5.0, "");
    let proxy = Proxy::start(&config);
    let invalid = render(&proxy, &config).replace("canary = \"canary\"", "canary = \"canry\"");
    let failures = r#"cutover_config_reloads_total{result="failure"}"#;
    std::fs::write(&proxy.config_path, &invalid).unwrap();
    assert!(eventually(Duration::from_secs(10), || metric(&proxy.metrics(), failures) >= 1.0).await);
    // The reload's own reads of the file, and the state file written beside
    // it, would each start another one: none may follow within the window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(metric(&proxy.metrics(), failures), 1.0);
    assert_eq!(count_events(&proxy, "reload_failed").await, 1);
    // The same text written again is not tried again.
    std::fs::write(&proxy.config_path, &invalid).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(metric(&proxy.metrics(), failures), 1.0);
    assert_eq!(weight(&proxy).await, Some(5.0), "the running config stays");
    // A fixed file is applied.
    std::fs::write(&proxy.config_path, render(&proxy, &config).replace("weight = 5", "weight = 35")).unwrap();
    assert!(wait_weight(&proxy, 35.0).await);
    assert_eq!((metric(&proxy.metrics(), failures), count_events(&proxy, "reload_failed").await), (1.0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_by_endpoint_and_invalid_config_is_kept_out_while_serving_continues() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let config = two_pool_config(stable.addr, canary.addr, 0.0, "");
    let proxy = Proxy::start(&config);
    // Invalid: unknown pool. The watcher sees it too; both must reject it.
    std::fs::write(&proxy.config_path, render(&proxy, &config).replace("canary = \"canary\"", "canary = \"canry\""))
        .unwrap();
    let (status, body) = proxy.admin_call(Method::POST, "/v1/reload", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("cutover.toml:")
            && error.contains("routes[0].canary")
            && error.contains("no pool named \"canry\""),
        "{error}"
    );
    // Still serving with the old config.
    for _ in 0..20 {
        assert_eq!(get(proxy.addr(), "/", &[]).await.first_line(), "stable");
    }
    let (_, status) = proxy.admin_call(Method::GET, "/v1/routes", None).await;
    assert_eq!(status["reload"]["ok"], serde_json::json!(false));
    assert!(status["reload"]["error"].as_str().unwrap().contains("canry"));
    assert!(metric(&proxy.metrics(), r#"cutover_config_reloads_total{result="failure"}"#) >= 1.0);
    // A good file again: reload by endpoint applies it.
    std::fs::write(&proxy.config_path, render(&proxy, &config).replace("weight = 0", "weight = 100")).unwrap();
    let (status, body) = proxy.admin_call(Method::POST, "/v1/reload", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(wait_weight(&proxy, 100.0).await);
    assert_eq!(get(proxy.addr(), "/", &[]).await.first_line(), "canary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_route_stops_getting_requests_and_added_route_starts() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let extra_route = "\n[[routes]]\nname = \"api\"\npath_prefix = \"/api/\"\nstable = \"canary\"\n";
    let config = two_pool_config(stable.addr, canary.addr, 0.0, "");
    let proxy = Proxy::start(&config);
    assert_eq!(get(proxy.addr(), "/api/x", &[]).await.first_line(), "stable");
    std::fs::write(&proxy.config_path, format!("{}{extra_route}", render(&proxy, &config))).unwrap();
    let (s, _) = proxy.admin_call(Method::POST, "/v1/reload", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(get(proxy.addr(), "/api/x", &[]).await.first_line(), "canary", "the new route serves");
    std::fs::write(&proxy.config_path, render(&proxy, &config)).unwrap();
    let (s, _) = proxy.admin_call(Method::POST, "/v1/reload", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(get(proxy.addr(), "/api/x", &[]).await.first_line(), "stable", "the removed route no longer serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_across_50_reloads_and_50_admin_changes_under_load() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let config = two_pool_config(stable.addr, canary.addr, 10.0, "");
    let proxy = Arc::new(Proxy::start(&config));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (proxy, stop, ok, failed) = (proxy.clone(), stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let mut client = Client::connect(proxy.addr()).await;
            // Bounded: at most 20k requests per client.
            for i in 0..20_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let got = client.get("/", &[("cookie", &format!("cutover_id=user-{c}-{}", i % 500))]).await;
                if got.status == StatusCode::OK && (got.first_line() == "stable" || got.first_line() == "canary") {
                    ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    let text = render(&proxy, &config);
    for i in 0..50 {
        // Alternate the configured weight so each reload really changes the config.
        let weight = if i % 2 == 0 { 20 } else { 10 };
        std::fs::write(&proxy.config_path, text.replace("weight = 10", &format!("weight = {weight}"))).unwrap();
        let (status, body) = proxy.admin_call(Method::POST, "/v1/reload", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, _) = proxy
            .admin_call(Method::PUT, "/v1/routes/web/weight", Some(serde_json::json!({ "weight": (i % 10) * 10 })))
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::SeqCst), 0);
    assert!(ok.load(Ordering::SeqCst) > 100, "load ran alongside: {}", ok.load(Ordering::SeqCst));
    assert!(metric(&proxy.metrics(), r#"cutover_config_reloads_total{result="success"}"#) >= 51.0);
}

#[test]
fn sighup_reloads_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (stable, canary) = runtime.block_on(async { (Backend::named("stable").await, Backend::named("canary").await) });
    let config = two_pool_config(stable.addr, canary.addr, 0.0, "").replace("{dir}", &dir.path().display().to_string());
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, &config).unwrap();
    let mut binary = Binary::start(&["run", "-c", path.to_str().unwrap()], dir.path());
    let listening = binary.wait_ready(Duration::from_secs(20));
    let addr: std::net::SocketAddr = listening.iter().find(|(l, _)| l == "http").unwrap().1.parse().unwrap();
    runtime.block_on(async {
        assert_eq!(get(addr, "/", &[]).await.first_line(), "stable");
    });
    // Write the new config where the watcher might also see it; SIGHUP forces the reload now.
    std::fs::write(&path, config.replace("weight = 0", "weight = 100")).unwrap();
    binary.signal("HUP");
    let served_canary = runtime.block_on(eventually_async(addr));
    assert!(served_canary, "after SIGHUP the new weight serves:\n{}", binary.log_text());
    let target =
        cutover::ctl::Target { listen: cutover::config::AdminListen::Unix(dir.path().join("admin.sock")), token: None };
    let (_, events) = runtime.block_on(cutover::ctl::call(&target, Method::GET, "/v1/events", None)).unwrap();
    let by_signal =
        events["events"].as_array().unwrap().iter().any(|e| e["actor"] == "signal" && e["kind"] == "reload");
    assert!(by_signal, "SIGHUP reloaded the config: {events}");
    binary.signal("TERM");
    assert_eq!(binary.wait_exit(Duration::from_secs(20)), Some(0));
}

async fn eventually_async(addr: std::net::SocketAddr) -> bool {
    for _ in 0..500 {
        if get(addr, "/", &[]).await.first_line() == "canary" {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
