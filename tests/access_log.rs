//! The access log, black-box: a line reaches the file within the flush
//! interval when traffic stops, sampling keeps every error, SIGUSR1 reopens
//! the file after rotation, and SIGTERM writes the buffered lines before
//! the process exits.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use http::{Request, StatusCode};

fn log_config(stable: SocketAddr, canary: SocketAddr, log: &str) -> String {
    two_pool_config(stable, canary, 0.0, "").replace("[log]\naccess = \"off\"\n", log)
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_reaches_the_file_within_the_flush_interval_when_traffic_stops() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let log = "[log]\naccess = \"json\"\naccess_path = \"{dir}/access.log\"\nflush = \"300ms\"\n";
    let proxy = Proxy::start(&log_config(stable.addr, canary.addr, log));
    let path = proxy.dir.path().join("access.log");
    let got = get(proxy.addr(), "/quiet", &[]).await;
    assert_eq!(got.status, StatusCode::OK);
    // One request, then nothing: far below the 64 KiB that would fill the buffer.
    let answered = Instant::now();
    assert!(eventually(Duration::from_secs(10), || !lines(&path).is_empty()).await, "no line written");
    let waited = answered.elapsed();
    let written = lines(&path);
    assert_eq!(written.len(), 1);
    assert_eq!(written[0]["path"], "/quiet");
    // Within the interval, with room for a loaded machine's scheduling.
    assert!(waited < Duration::from_millis(300 + 1200), "written {waited:?} after the response");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_logs_every_error_and_its_share_of_the_other_requests() {
    let (stable, failing) = (Backend::named("stable").await, Backend::status("canary", 503).await);
    let log = "[log]\naccess = \"json\"\naccess_path = \"{dir}/access.log\"\nflush = \"100ms\"\nsample = 0.1\n";
    let proxy = Proxy::start(&log_config(stable.addr, failing.addr, log));
    let path = proxy.dir.path().join("access.log");
    let mut client = Client::connect(proxy.addr()).await;
    for i in 0..1000 {
        let req = Request::get(format!("/ok/{i}")).header("host", "example.com").body(empty()).unwrap();
        assert_eq!(client.send(req).await.status, StatusCode::OK);
        if i % 10 == 0 {
            // The canary (beta testers) answers 503.
            let req = Request::get(format!("/error/{i}"))
                .header("host", "example.com")
                .header("cookie", "cutover_beta=always")
                .body(empty())
                .unwrap();
            assert_eq!(client.send(req).await.status, StatusCode::SERVICE_UNAVAILABLE);
        }
    }
    let errors = |lines: &[serde_json::Value]| lines.iter().filter(|l| l["status"] == 503).count();
    assert!(eventually(Duration::from_secs(10), || errors(&lines(&path)) == 100).await, "{:?}", lines(&path));
    let written = lines(&path);
    let kept = written.len() - errors(&written);
    // 1000 requests at 10%: 100 expected, sd 9.5; 5 sd either side.
    assert!((52..=148).contains(&kept), "{kept} of 1000 successful requests logged");
    assert!(written.iter().all(|l| l["status"] == 503 || l["status"] == 200));
    assert_eq!(metric(&proxy.metrics(), "cutover_access_log_dropped_total"), 0.0);
}

/// The binary with an access log to `access.log` in `dir`, waited until ready; its proxy address.
async fn start_binary(dir: &Path, stable: SocketAddr, flush: &str) -> (Binary, SocketAddr) {
    let log = format!("[log]\naccess = \"json\"\naccess_path = \"{{dir}}/access.log\"\nflush = \"{flush}\"\n");
    let config = log_config(stable, stable, &log).replace("{dir}", &dir.display().to_string());
    let config_path = dir.join("cutover.toml");
    std::fs::write(&config_path, config).unwrap();
    let args = ["run", "-c", config_path.to_str().unwrap()].map(String::from);
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut binary = Binary::start(&args.each_ref().map(String::as_str), &dir);
        let listening = binary.wait_ready(Duration::from_secs(20));
        let (_, addr) = listening.iter().find(|(l, _)| l == "http").expect("an http listener");
        let addr = addr.parse().unwrap();
        (binary, addr)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_access_log_after_rotation() {
    let stable = Backend::named("stable").await;
    let dir = tempfile::tempdir().unwrap();
    let (binary, addr) = start_binary(dir.path(), stable.addr, "100ms").await;
    let (path, rotated) = (dir.path().join("access.log"), dir.path().join("access.log.1"));
    assert_eq!(get(addr, "/before", &[]).await.status, StatusCode::OK);
    assert!(eventually(Duration::from_secs(10), || lines(&path).len() == 1).await);
    std::fs::rename(&path, &rotated).unwrap();
    binary.signal("USR1");
    assert!(eventually(Duration::from_secs(10), || path.exists()).await, "the file was not reopened");
    assert_eq!(get(addr, "/after", &[]).await.status, StatusCode::OK);
    assert!(eventually(Duration::from_secs(10), || lines(&path).len() == 1).await);
    assert_eq!(lines(&path)[0]["path"], "/after");
    let old = lines(&rotated);
    assert_eq!(old.len(), 1);
    assert_eq!(old[0]["path"], "/before");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_writes_the_buffered_lines_before_exiting() {
    let stable = Backend::named("stable").await;
    let dir = tempfile::tempdir().unwrap();
    // An hour's flush interval: only the shutdown can write the lines.
    let (binary, addr) = start_binary(dir.path(), stable.addr, "1h").await;
    let mut client = Client::connect(addr).await;
    for i in 0..3 {
        assert_eq!(client.get(&format!("/{i}"), &[]).await.status, StatusCode::OK);
    }
    drop(client);
    let path = dir.path().join("access.log");
    assert!(lines(&path).is_empty(), "written before the flush interval");
    binary.signal("TERM");
    let code = tokio::task::spawn_blocking(move || {
        let mut binary = binary;
        binary.wait_exit(Duration::from_secs(20))
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0));
    let paths: Vec<_> = lines(&path).iter().map(|l| l["path"].as_str().unwrap().to_string()).collect();
    assert_eq!(paths, ["/0", "/1", "/2"]);
}
