//! Fleet propagation: how long from a change acknowledged by one replica
//! to the change in force on all three (DESIGN §7; target p99 < 1 s,
//! goal 250 ms on loopback).
//!
//! Starts a local etcd (the `etcd` binary must be installed) and three
//! in-process replicas, then sets the weight 100 times on replica A through
//! its admin API. For each change: the time from A's 200 answer to the
//! moment the new weight is in the routing snapshot of every replica
//! (polled every 100 µs; 0 when it was already in force everywhere as the
//! answer arrived), and from the request sent to the same moment. Prints
//! p50, p99 and max.
//!
//!     cargo bench --bench fleet

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cutover::config::AdminListen;
use cutover::server::{self, AdminAddress, Inherited, Running, Source};
use http::{Method, StatusCode};

const CHANGES: usize = 100;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let mut answer = String::new();
    s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_ok()
        && s.read_to_string(&mut answer).is_ok()
        && answer.contains("\"health\":\"true\"")
}

fn config(dir: &Path, name: &str, etcd: &str, backend: std::net::SocketAddr) -> String {
    let dir = dir.display();
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
workers = 1
[admin]
listen = "unix:{dir}/{name}.sock"
[state]
path = "{dir}/{name}.json"
[log]
access = "off"
[fleet]
etcd = ["{etcd}"]
prefix = "/cutover/bench"
name = "{name}"
lease = "2s"
[[routes]]
name = "web"
stable = "a"
canary = "b"
[pools.a]
backends = ["{backend}"]
[pools.b]
backends = ["{backend}"]
"#
    )
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "fleet propagation, {} changes, {what}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        samples.len(),
        ms(at(0.5)),
        ms(at(0.99)),
        ms(samples[samples.len() - 1])
    );
}

fn weight_bp(r: &Running) -> u16 {
    r.shared.snapshot.load().rules.routes[0].weight.basis_points()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut etcd = Command::new("etcd")
        .args(["--name", "bench", "--listen-client-urls", &url, "--advertise-client-urls", &url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("bench={peer_url}")])
        .arg("--data-dir")
        .arg(dir.path().join("etcd"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the fleet bench needs the etcd binary (apt-get install etcd-server)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !healthy(client) {
        assert!(Instant::now() < deadline, "etcd not healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let replicas: Vec<Running> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            let path = dir.path().join(format!("{name}.toml"));
            std::fs::write(&path, config(dir.path(), name, &url, backend.local_addr().unwrap())).unwrap();
            server::start(Source::File(path), Inherited::default(), None).expect("replica starts")
        })
        .collect();
    let Some(AdminAddress::Unix(socket)) = replicas[0].admin.clone() else { panic!("unix admin") };
    let target = cutover::ctl::Target { listen: AdminListen::Unix(socket), token: None };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // Wait until every replica is connected (a first change goes through).
    let connected = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = runtime
            .block_on(cutover::ctl::call(
                &target,
                Method::PUT,
                "/v1/routes/web/weight",
                Some(serde_json::json!({"weight": 1})),
            ))
            .unwrap();
        if status == StatusCode::OK && replicas.iter().all(|r| weight_bp(r) == 100) {
            break;
        }
        assert!(Instant::now() < connected, "the fleet did not connect");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut samples = Vec::with_capacity(CHANGES);
    let mut round_trips = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let percent = 10 + (i % 80) as u32;
        let body = serde_json::json!({ "weight": percent });
        let sent = Instant::now();
        let (status, answer) =
            runtime.block_on(cutover::ctl::call(&target, Method::PUT, "/v1/routes/web/weight", Some(body))).unwrap();
        assert_eq!(status, StatusCode::OK, "{answer}");
        let acked = Instant::now();
        let want = (percent * 100) as u16;
        while !replicas.iter().all(|r| weight_bp(r) == want) {
            assert!(acked.elapsed() < Duration::from_secs(10), "change {i} never reached every replica");
            std::thread::sleep(Duration::from_micros(100));
        }
        samples.push(acked.elapsed());
        round_trips.push(sent.elapsed());
    }
    report("acknowledged on one replica -> in force on all three", samples);
    report("request sent to one replica -> in force on all three", round_trips);
    for r in replicas {
        r.shutdown();
    }
    let _ = etcd.kill();
    let _ = etcd.wait();
}
