//! Fleet mode (DESIGN §7) with real processes: three `cutover run`
//! binaries share a real etcd, and the rollout driver dies by SIGKILL in the
//! middle of a step, as a crashed host would.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::{Backend, Binary, get, two_pool_config, until};
use http::{Method, StatusCode};
use serde_json::{Value, json};

/// Generous: two loaded cores.
const WAIT: Duration = Duration::from_secs(15);
const LEASE: Duration = Duration::from_secs(1);
/// Long enough that a failover within the lease plus a second lands inside
/// the step it started in.
const INTERVAL: &str = "4s";

/// One `cutover run` process with its own config, state file and admin socket.
struct Replica {
    name: String,
    binary: Binary,
    addr: SocketAddr,
    admin: cutover::ctl::Target,
    _dir: tempfile::TempDir,
}

impl Replica {
    async fn start(config: String, name: &str) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let path: PathBuf = dir.path().join("cutover.toml");
        std::fs::write(&path, config.replace("{dir}", &dir.path().display().to_string())).unwrap();
        let binary = Binary::start(&["run", "-c", path.to_str().unwrap()], dir.path());
        let (listening, binary) = tokio::task::spawn_blocking(move || {
            let mut binary = binary;
            (binary.wait_ready(WAIT), binary)
        })
        .await
        .unwrap();
        let (_, addr) = listening.iter().find(|(l, _)| l == "http").expect("an http listener");
        let admin = cutover::ctl::Target {
            listen: cutover::config::AdminListen::Unix(dir.path().join("admin.sock")),
            token: None,
        };
        Replica { name: name.to_string(), binary, addr: addr.parse().unwrap(), admin, _dir: dir }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let answer = cutover::ctl::call(&self.admin, method, path, body).await;
        answer.unwrap_or_else(|e| panic!("{}: admin API unreachable: {e}", self.name))
    }

    async fn get_ok(&self, path: &str) -> Value {
        let (status, body) = self.call(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "{}: GET {path}: {body}", self.name);
        body
    }

    async fn route(&self) -> Value {
        self.get_ok("/v1/routes/web").await
    }

    /// Who drives the `web` rollout, by this replica's `/v1/fleet`.
    async fn driver(&self) -> Option<String> {
        self.get_ok("/v1/fleet").await["drivers"]["web"].as_str().map(str::to_string)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollout_driver_killed_with_sigkill_mid_step_the_survivors_continue_the_same_step_and_finish() {
    let etcd = Etcd::start();
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let prefix = format!("/cutover/processes-{}", std::process::id());
    let mut replicas = Vec::new();
    for i in 0..3 {
        let name = format!("proxy-{i}");
        let fleet = etcd.fleet_section(&prefix, &name, &format!("{}s", LEASE.as_secs()));
        replicas.push(Replica::start(two_pool_config(stable.addr, canary.addr, 0.0, &fleet), &name).await);
    }
    for r in &replicas {
        let joined = until(WAIT, || async {
            let s = r.get_ok("/v1/fleet").await;
            s["connected"] == json!(true) && s["replicas"].as_array().map_or(0, Vec::len) == 3
        })
        .await;
        assert!(joined, "{} did not see the fleet: {}", r.name, r.get_ok("/v1/fleet").await);
    }

    // min_requests 0: the steps advance on time, without load.
    let plan = json!({ "steps": [10, 50, 100], "interval": INTERVAL, "max_error_rate": 0.01, "min_requests": 0 });
    let (status, body) = replicas[0].call(Method::POST, "/v1/routes/web/rollout", Some(plan)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let found = until(WAIT, || async { replicas[1].driver().await.is_some() }).await;
    assert!(found, "no driver: {}", replicas[1].get_ok("/v1/fleet").await);
    let first = replicas[1].driver().await.unwrap();
    let index = replicas.iter().position(|r| r.name == first).expect("the driver is one of ours");

    // Kill it just after step 2 (of 3) begins: a restart would show step 1.
    let in_step_2 = until(WAIT, || async { replicas[index].route().await["rollout"]["step"] == json!(2) }).await;
    assert!(in_step_2, "the rollout did not reach step 2: {}", replicas[index].route().await);
    let mut dead = replicas.remove(index);
    dead.binary.signal("KILL");
    let killed_at = Instant::now();
    let status = tokio::task::spawn_blocking(move || dead.binary.child.wait().unwrap()).await.unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "{status}");

    // A survivor takes the driver key once the dead one's lease expires.
    let took_over = until(WAIT, || async {
        replicas[0].driver().await.is_some_and(|d| d != first && replicas.iter().any(|r| r.name == d))
    })
    .await;
    let failover = killed_at.elapsed();
    assert!(took_over, "no new driver: {}", replicas[0].get_ok("/v1/fleet").await);
    let second = replicas[0].driver().await.unwrap();
    let driver = replicas.iter().find(|r| r.name == second).unwrap();
    let route = driver.route().await;
    eprintln!("driver failover {first} -> {second}: {failover:?} (lease {LEASE:?}); route after: {route}");
    // Within the lease plus a second, and 200 ms for polling two processes.
    assert!(failover < LEASE + Duration::from_millis(1200), "failover took {failover:?}");
    // The same step, on the same clock: not a restart of the step or the rollout.
    assert_eq!(route["rollout"]["step"], json!(2), "{route}");
    assert_eq!(route["weight"], json!(50.0), "{route}");
    let left = route["rollout"]["time_left_secs"].as_f64().unwrap();
    assert!(left < 4.0 - LEASE.as_secs_f64() + 0.1, "the step restarted its interval: {left}s left: {route}");

    // The rollout finishes at 100 on every survivor.
    for r in &replicas {
        let done = until(Duration::from_secs(20), || async {
            let route = r.route().await;
            route["weight"] == json!(100.0)
                && route["rollout"].is_null()
                && route["last_outcome"].as_str().is_some_and(|o| o.starts_with("completed"))
        })
        .await;
        assert!(done, "{}: the rollout did not finish: {}", r.name, r.route().await);
        assert_eq!(get(r.addr, "/", &[]).await.first_line(), "canary", "{}", r.name);
    }
}
