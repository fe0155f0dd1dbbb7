//! Fleet mode (DESIGN §7) against a real etcd: three in-process replicas,
//! each with its own state file and admin socket, share one live state.

mod common;

use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::{Backend, Proxy, get, metric, two_pool_config, until};
use http::{Method, StatusCode};
use serde_json::{Value, json};

/// Generous: two loaded cores.
const WAIT: Duration = Duration::from_secs(15);

struct Fleet {
    stable: Backend,
    canary: Backend,
    replicas: Vec<Option<Proxy>>,
    prefix: String,
}

fn prefix() -> String {
    format!("/cutover/test-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos())
}

impl Fleet {
    async fn start(etcd: &Etcd, count: usize, lease: &str) -> Fleet {
        let stable = Backend::named("stable").await;
        // The canary fails the requests that carry `x-fail` (errors seen
        // through one chosen replica only).
        let canary = Backend::start(|req| async move {
            match req.headers().contains_key("x-fail") {
                true => common::text(StatusCode::INTERNAL_SERVER_ERROR, "canary failing\n"),
                false => common::text(StatusCode::OK, "canary\n"),
            }
        })
        .await;
        let mut fleet = Fleet { stable, canary, replicas: Vec::new(), prefix: prefix() };
        for i in 0..count {
            fleet.add(etcd, &format!("proxy-{i}"), lease, None).await;
        }
        for i in 0..count {
            fleet.wait_connected(i, count).await;
        }
        fleet
    }

    /// Starts one more replica (in `dir` if given: a restart with its cache).
    async fn add(&mut self, etcd: &Etcd, name: &str, lease: &str, dir: Option<tempfile::TempDir>) -> usize {
        self.add_at(&etcd.urls(), name, lease, dir)
    }

    /// Starts one more replica that reaches etcd at `urls`.
    fn add_at(&mut self, urls: &[String], name: &str, lease: &str, dir: Option<tempfile::TempDir>) -> usize {
        let section = common::etcd::fleet_section(urls, &self.prefix, name, lease);
        let config = two_pool_config(self.stable.addr, self.canary.addr, 0.0, &section);
        let proxy = match dir {
            Some(dir) => Proxy::start_in(dir, &config),
            None => Proxy::start(&config),
        };
        self.replicas.push(Some(proxy));
        self.replicas.len() - 1
    }

    fn at(&self, i: usize) -> &Proxy {
        self.replicas[i].as_ref().expect("replica running")
    }

    fn running(&self) -> impl Iterator<Item = &Proxy> {
        self.replicas.iter().flatten()
    }

    async fn fleet_status(&self, i: usize) -> Value {
        let (status, body) = self.at(i).admin_call(Method::GET, "/v1/fleet", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Waits until replica `i` is connected and sees `count` replicas.
    async fn wait_connected(&self, i: usize, count: usize) {
        let ok = until(WAIT, || async {
            let s = self.fleet_status(i).await;
            s["connected"] == json!(true) && s["replicas"].as_array().map_or(0, Vec::len) == count
        })
        .await;
        assert!(ok, "replica {i} not connected with {count} replicas: {}", self.fleet_status(i).await);
    }

    async fn route(&self, i: usize) -> Value {
        self.route_named(i, "web").await
    }

    async fn route_named(&self, i: usize, name: &str) -> Value {
        let (status, body) = self.at(i).admin_call(Method::GET, &format!("/v1/routes/{name}"), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Takes replica `i` out as a crash would: its session's lease is left
    /// to expire in etcd. The returned proxy is dropped by the caller.
    fn crash(&mut self, i: usize) -> Proxy {
        let dead = self.replicas[i].take().expect("replica running");
        dead.running.fleet.as_ref().expect("fleet mode").kill();
        dead
    }

    /// Rewrites replica `i`'s config file with `edit` and reloads it.
    async fn reload_with(&self, i: usize, edit: impl FnOnce(String) -> String) {
        let p = self.at(i);
        std::fs::write(&p.config_path, edit(std::fs::read_to_string(&p.config_path).unwrap())).unwrap();
        let (status, body) = call(p, Method::POST, "/v1/reload", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// Waits until every running replica's route satisfies `check`.
    async fn wait_all(&self, what: &str, check: impl Fn(&Value) -> bool) {
        for (i, _) in self.replicas.iter().enumerate().filter(|(_, p)| p.is_some()) {
            let ok = until(WAIT, || async { check(&self.route(i).await) }).await;
            assert!(ok, "replica {i}: {what} not reached: {}", self.route(i).await);
        }
    }
}

async fn call(p: &Proxy, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    p.admin_call(method, path, body).await
}

async fn version_for(p: &Proxy, user: &str) -> String {
    get(p.addr(), "/", &[("cookie", &format!("cutover_id={user}"))]).await.first_line().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_set_on_one_replica_is_in_force_on_all_and_users_agree() {
    let etcd = Etcd::start();
    let fleet = Fleet::start(&etcd, 3, "2s").await;
    let (status, body) = call(fleet.at(1), Method::PUT, "/v1/routes/web/weight", Some(json!({"weight": 30}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    fleet.wait_all("weight 30", |r| r["weight"] == json!(30.0)).await;
    // The same users get the same version through every replica.
    let mut canary = 0;
    for u in 0..60 {
        let user = format!("user-{u}");
        let first = version_for(fleet.at(0), &user).await;
        for p in fleet.running().skip(1) {
            assert_eq!(version_for(p, &user).await, first, "{user}");
        }
        canary += usize::from(first == "canary");
    }
    assert!((5..=35).contains(&canary), "{canary} of 60 users on the canary at 30%");
    // The event on another replica names where the change came from.
    let (_, events) = call(fleet.at(2), Method::GET, "/v1/events", None).await;
    let from = events["events"].as_array().unwrap().iter().find(|e| e["kind"] == json!("weight"));
    assert_eq!(from.map(|e| e["actor"].clone()), Some(json!("unix@proxy-1")), "{events}");
    // Visible: every replica, the same config hash, metrics.
    // (The replicas' configs differ here by their temp dirs: each is flagged.)
    let status = fleet.fleet_status(0).await;
    let replicas = status["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 3, "{status}");
    for r in replicas {
        assert_eq!(r["config_differs"], json!(r["config_hash"] != status["config_hash"]), "{status}");
        assert_eq!(r["this"], json!(r["name"] == json!("proxy-0")), "{status}");
    }
    assert_eq!(status["config_hashes_agree"], json!(false), "{status}");
    // `ctl fleet` shows the same, the differing hashes flagged.
    let table = cutover::ctl::format_fleet(&status);
    assert!(table.contains("connected to etcd"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("proxy-0 *")), "{table}");
    assert_eq!(table.matches(" DIFFERS").count(), 2, "{table}");
    assert!(table.contains("warning: the replicas run different configs"), "{table}");
    let metrics = fleet.at(0).metrics();
    assert_eq!(metric(&metrics, "cutover_fleet_connected"), 1.0, "{metrics}");
    assert_eq!(metric(&metrics, "cutover_fleet_replicas"), 3.0, "{metrics}");
    assert!(metric(&metrics, "cutover_fleet_applied_revision") > 0.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_on_any_replica_halts_every_replica() {
    let etcd = Etcd::start();
    let fleet = Fleet::start(&etcd, 3, "2s").await;
    let (status, _) = call(fleet.at(0), Method::PUT, "/v1/routes/web/weight", Some(json!({"weight": 100}))).await;
    assert_eq!(status, StatusCode::OK);
    fleet.wait_all("weight 100", |r| r["weight"] == json!(100.0)).await;
    let (status, body) = call(fleet.at(2), Method::POST, "/v1/routes/web/rollback", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    fleet.wait_all("halted", |r| r["halted"] == json!(true) && r["weight"] == json!(0.0)).await;
    for p in fleet.running() {
        assert_eq!(get(p.addr(), "/", &[("cookie", "cutover_beta=always")]).await.first_line(), "stable");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_changes_on_two_replicas_one_wins_the_other_gets_409() {
    let etcd = Etcd::start();
    let fleet = Fleet::start(&etcd, 2, "2s").await;
    let mut conflicts = 0;
    for round in 0..30 {
        let (a, b) = (f64::from(round), f64::from(round) + 50.0);
        let path = "/v1/routes/web/weight";
        let ((sa, ba), (sb, bb)) = tokio::join!(
            call(fleet.at(0), Method::PUT, path, Some(json!({ "weight": a }))),
            call(fleet.at(1), Method::PUT, path, Some(json!({ "weight": b }))),
        );
        assert!(sa == StatusCode::OK || sb == StatusCode::OK, "round {round}: neither won: {ba} {bb}");
        for (s, body) in [(sa, &ba), (sb, &bb)] {
            assert!(s == StatusCode::OK || s == StatusCode::CONFLICT, "round {round}: {s} {body}");
            if s == StatusCode::CONFLICT {
                conflicts += 1;
                assert!(body["error"].as_str().unwrap().contains("changed on another replica"), "{body}");
            }
        }
        // Nothing half-applied: both replicas settle on the same weight, one of the two asked for.
        let winner = if sb == StatusCode::OK && sa != StatusCode::OK { b } else { a };
        let settled = until(WAIT, || async {
            let (wa, wb) = (fleet.route(0).await["weight"].clone(), fleet.route(1).await["weight"].clone());
            wa == wb && (wa == json!(a) || wa == json!(b))
        })
        .await;
        assert!(settled, "round {round}: replicas disagree ({} vs {})", fleet.route(0).await, fleet.route(1).await);
        if sa != sb {
            assert_eq!(fleet.route(0).await["weight"], json!(winner), "round {round}");
        }
        if conflicts >= 3 {
            break;
        }
    }
    assert!(conflicts > 0, "30 rounds of simultaneous changes and never a conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_reads_the_fleet_state() {
    let etcd = Etcd::start();
    let mut fleet = Fleet::start(&etcd, 2, "2s").await;
    let (status, _) = call(fleet.at(0), Method::PUT, "/v1/routes/web/weight", Some(json!({"weight": 20}))).await;
    assert_eq!(status, StatusCode::OK);
    fleet.wait_all("weight 20", |r| r["weight"] == json!(20.0)).await;
    // Replica 1 stops; its state file (the cache) says 20.
    let stopped = fleet.replicas[1].take().unwrap();
    let Proxy { running, dir, .. } = stopped;
    running.shutdown();
    // Meanwhile the fleet moves on.
    let (status, _) = call(fleet.at(0), Method::PUT, "/v1/routes/web/weight", Some(json!({"weight": 70}))).await;
    assert_eq!(status, StatusCode::OK);
    let i = fleet.add(&etcd, "proxy-1", "2s", Some(dir)).await;
    let ok = until(WAIT, || async { fleet.route(i).await["weight"] == json!(70.0) }).await;
    assert!(ok, "the restarted replica did not take the fleet's weight: {}", fleet.route(i).await);
}

/// Requests through replica `p` until `stop`: (answered 200, failed).
/// A load on every running replica, until checked.
struct Loads {
    stop: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<(u64, u64)>>,
}

impl Loads {
    /// Stops the load: every replica answered some requests, none failed.
    async fn none_failed(self, when: &str) {
        self.stop.cancel();
        for task in self.tasks {
            let (ok, failed) = task.await.unwrap();
            assert_eq!(failed, 0, "requests failed {when}");
            assert!(ok > 0);
        }
    }
}

/// Two replicas with the route at weight 100, each under load.
async fn two_replicas_at_100_under_load(etcd: &Etcd) -> (Fleet, Loads) {
    let fleet = Fleet::start(etcd, 2, "2s").await;
    let (status, _) = call(fleet.at(0), Method::PUT, "/v1/routes/web/weight", Some(json!({"weight": 100}))).await;
    assert_eq!(status, StatusCode::OK);
    fleet.wait_all("weight 100", |r| r["weight"] == json!(100.0)).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let tasks = fleet.running().map(|p| tokio::spawn(load(p.addr(), stop.clone()))).collect();
    (fleet, Loads { stop, tasks })
}

async fn load(addr: std::net::SocketAddr, stop: tokio_util::sync::CancellationToken) -> (u64, u64) {
    let (mut ok, mut failed) = (0, 0);
    let mut client = common::Client::connect(addr).await;
    while !stop.is_cancelled() {
        let got = client.get("/", &[]).await;
        if got.status == StatusCode::OK { ok += 1 } else { failed += 1 }
    }
    (ok, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_stopped_under_load_changes_answer_503_a_rollback_applies_and_all_converge() {
    let etcd = Etcd::start();
    let (fleet, loads) = two_replicas_at_100_under_load(&etcd).await;

    etcd.members[0].pause();
    let (status, body) = call(fleet.at(0), Method::PUT, "/v1/routes/web/weight", Some(json!({"weight": 50}))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].as_str().unwrap().starts_with("fleet store unreachable: "), "{body}");
    assert_eq!(fleet.route(0).await["weight"], json!(100.0), "a refused change is not applied");
    // A manual rollback is always safe: in force here at once.
    let (status, body) = call(fleet.at(0), Method::POST, "/v1/routes/web/rollback", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(get(fleet.at(0).addr(), "/", &[]).await.first_line(), "stable");
    let disconnected = until(WAIT, || async { fleet.fleet_status(0).await["connected"] == json!(false) }).await;
    assert!(disconnected);
    assert_eq!(metric(&fleet.at(0).metrics(), "cutover_fleet_connected"), 0.0);

    etcd.members[0].resume();
    // Back online: the rollback reaches the other replica; nothing acknowledged is lost.
    fleet.wait_all("halted everywhere", |r| r["halted"] == json!(true) && r["weight"] == json!(0.0)).await;
    for i in 0..2 {
        fleet.wait_connected(i, 2).await;
    }
    let (status, body) = call(fleet.at(1), Method::PUT, "/v1/routes/web/weight", Some(json!({"weight": 10}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    fleet.wait_all("weight 10", |r| r["weight"] == json!(10.0) && r["halted"] == json!(false)).await;
    loads.none_failed("while etcd was stopped").await;
}

fn rollout(steps: &[u32], interval: &str, max_error_rate: f64) -> Value {
    json!({ "steps": steps, "interval": interval, "max_error_rate": max_error_rate, "min_requests": 20 })
}

/// Which replica drives the route's rollout, by `/v1/fleet`.
async fn driver(fleet: &Fleet, i: usize) -> Option<String> {
    fleet.fleet_status(i).await["drivers"]["web"].as_str().map(str::to_string)
}

/// Starts a rollout of `web` on replica 0 and waits until replica `seen_by`
/// knows its driver: the driver's name and index.
async fn start_rollout(fleet: &Fleet, plan: Value, seen_by: usize) -> (String, usize) {
    let (status, body) = call(fleet.at(0), Method::POST, "/v1/routes/web/rollout", Some(plan)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let has_driver = until(WAIT, || async { driver(fleet, seen_by).await.is_some() }).await;
    assert!(has_driver, "no driver: {}", fleet.fleet_status(seen_by).await);
    let name = driver(fleet, seen_by).await.unwrap();
    let index = name.trim_start_matches("proxy-").parse().unwrap();
    (name, index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_drives_a_rollout_and_another_finishes_it_when_the_driver_dies() {
    let etcd = Etcd::start();
    let mut fleet = Fleet::start(&etcd, 3, "1s").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let loads: Vec<_> = fleet.running().map(|p| tokio::spawn(load(p.addr(), stop.clone()))).collect();
    let (first, index) = start_rollout(&fleet, rollout(&[10, 50, 100], "2s", 0.01), 1).await;
    // Exactly one replica says it drives.
    let driving: f64 = fleet.running().map(|p| metric(&p.metrics(), "cutover_rollout_driver{route=\"web\"}")).sum();
    assert_eq!(driving, 1.0);
    promtool_check(&fleet.at(index).metrics());
    // Kill the driver as a crash would (its lease is left to expire).
    let step_before = fleet.route(index).await["rollout"]["step"].as_u64().unwrap_or(0);
    let dead = fleet.crash(index);
    let killed_at = Instant::now();
    let other = (index + 1) % 3;
    let took_over = until(WAIT, || async { driver(&fleet, other).await.is_some_and(|d| d != first) }).await;
    assert!(took_over, "no new driver: {}", fleet.fleet_status(other).await);
    let failover = killed_at.elapsed();
    eprintln!("driver failover: {failover:?} (lease 1s)");
    // Within the lease plus a second (and the polling's 20 ms).
    assert!(failover < Duration::from_millis(1000 + 1000 + 100), "failover took {failover:?}");
    // The same step goes on: not a restart from the first.
    let step_after = fleet.route(other).await["rollout"]["step"].as_u64().unwrap_or(u64::MAX);
    assert!(step_after >= step_before, "step {step_before} before, {step_after} after the failover");
    // The rollout goes on to the end.
    let done = until(Duration::from_secs(30), || async {
        fleet.route(other).await["last_outcome"].as_str().is_some_and(|o| o.starts_with("completed"))
    })
    .await;
    assert!(done, "the rollout did not finish: {}", fleet.route(other).await);
    fleet.wait_all("weight 100", |r| r["weight"] == json!(100.0) && r["rollout"].is_null()).await;
    stop.cancel();
    for l in loads {
        let _ = l.await;
    }
    drop(dead);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_errors_seen_only_through_a_replica_that_does_not_drive_roll_the_rollout_back() {
    let etcd = Etcd::start();
    let fleet = Fleet::start(&etcd, 2, "2s").await;
    let (_, index) = start_rollout(&fleet, rollout(&[50, 100], "3s", 0.05), 0).await;
    let other = 1 - index;
    // Canary errors only through the replica that does not drive; the
    // driver sees a healthy canary.
    for _ in 0..30 {
        let _ = get(fleet.at(other).addr(), "/", &[("cookie", "cutover_beta=always"), ("x-fail", "1")]).await;
        let ok = get(fleet.at(1 - other).addr(), "/", &[("cookie", "cutover_beta=always")]).await;
        assert_eq!(ok.first_line(), "canary");
    }
    let rolled_back = until(Duration::from_secs(20), || async {
        fleet.route(1 - other).await["last_outcome"].as_str().is_some_and(|o| o.contains("rolled back automatically"))
    })
    .await;
    if !rolled_back {
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &etcd.urls()[0], "get", "--prefix", &fleet.prefix])
            .output()
            .unwrap();
        eprintln!("DEBUG {}", String::from_utf8_lossy(&out.stdout));
    }
    assert!(rolled_back, "{}", fleet.route(1 - other).await);
    fleet.wait_all("halted", |r| r["halted"] == json!(true) && r["weight"] == json!(0.0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_joins_mid_rollout_follows_it() {
    let etcd = Etcd::start();
    let mut fleet = Fleet::start(&etcd, 2, "2s").await;
    let (status, body) =
        call(fleet.at(1), Method::POST, "/v1/routes/web/rollout", Some(rollout(&[10, 20], "1h", 0.01))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let i = fleet.add(&etcd, "proxy-late", "2s", None).await;
    let follows = until(WAIT, || async {
        let r = fleet.route(i).await;
        r["weight"] == json!(10.0) && r["rollout"]["step"] == json!(1)
    })
    .await;
    assert!(follows, "{}", fleet.route(i).await);
    let (status, _) = call(fleet.at(0), Method::POST, "/v1/routes/web/rollout/pause", None).await;
    assert_eq!(status, StatusCode::OK);
    fleet.wait_all("paused", |r| r["rollout"]["paused"] == json!(true)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_member_etcd_cluster_with_one_member_killed_keeps_working() {
    let mut etcd = Etcd::cluster(3);
    let fleet = Fleet::start(&etcd, 2, "2s").await;
    let (status, _) = call(fleet.at(0), Method::PUT, "/v1/routes/web/weight", Some(json!({"weight": 25}))).await;
    assert_eq!(status, StatusCode::OK);
    fleet.wait_all("weight 25", |r| r["weight"] == json!(25.0)).await;
    etcd.members[0].kill();
    // The replicas move to another member; changes still go through.
    let changed = until(WAIT, || async {
        call(fleet.at(1), Method::PUT, "/v1/routes/web/weight", Some(json!({"weight": 60}))).await.0 == StatusCode::OK
    })
    .await;
    assert!(changed, "no change accepted after one member died");
    fleet.wait_all("weight 60", |r| r["weight"] == json!(60.0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_killed_under_load_then_restarted_the_fleet_converges_on_the_rollback() {
    let mut etcd = Etcd::start();
    let (fleet, loads) = two_replicas_at_100_under_load(&etcd).await;

    etcd.members[0].kill();
    let (status, body) = call(fleet.at(0), Method::POST, "/v1/routes/web/promote", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].as_str().unwrap().starts_with("fleet store unreachable: "), "{body}");
    let (status, body) = call(fleet.at(1), Method::POST, "/v1/routes/web/rollback", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(get(fleet.at(1).addr(), "/", &[]).await.first_line(), "stable");
    // The other replica does not know yet: etcd is down.
    assert_eq!(fleet.route(0).await["halted"], json!(false));

    etcd.members[0].restart();
    fleet.wait_all("halted everywhere", |r| r["halted"] == json!(true) && r["weight"] == json!(0.0)).await;
    loads.none_failed("while etcd was down").await;
}

/// The race behind the test above, made certain: etcd fails the rollback's
/// write before the replica's session has noticed anything (its lease and
/// watch still work), so the rollback is handed to the running session to
/// write; that write fails too, and the rollback must still reach the fleet
/// once etcd answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_whose_write_fails_before_the_session_notices_still_reaches_the_fleet() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let etcd = Etcd::start();
    let mut fleet = Fleet::start(&etcd, 1, "2s").await;
    // Replica 1 reaches etcd through a stand-in that, while `cut` is set,
    // drops every call naming the route's key (and only those).
    let route_key = cutover::fleet::base64::encode(format!("{}/routes/web", fleet.prefix).as_bytes());
    let (cut, dropped) = (std::sync::Arc::new(AtomicBool::new(false)), std::sync::Arc::new(AtomicUsize::new(0)));
    let (cutting, count) = (cut.clone(), dropped.clone());
    let stand_in = stand_in(etcd_addr(&etcd), move |call| {
        match cutting.load(Ordering::SeqCst) && common::wire::find(call, route_key.as_bytes()).is_some() {
            true => {
                count.fetch_add(1, Ordering::SeqCst);
                Cut::Drop
            }
            false => Cut::Pass,
        }
    })
    .await;
    fleet.add_at(&[format!("http://{stand_in}")], "proxy-1", "2s", None);
    for i in 0..2 {
        fleet.wait_connected(i, 2).await;
    }
    let (status, _) = call(fleet.at(0), Method::PUT, "/v1/routes/web/weight", Some(json!({"weight": 100}))).await;
    assert_eq!(status, StatusCode::OK);
    fleet.wait_all("weight 100", |r| r["weight"] == json!(100.0)).await;

    cut.store(true, Ordering::SeqCst);
    let (status, body) = call(fleet.at(1), Method::POST, "/v1/routes/web/rollback", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The compare-and-swap, then the session's write of the kept rollback.
    let both = until(WAIT, || async { dropped.load(Ordering::SeqCst) >= 2 }).await;
    assert!(both, "{} calls dropped", dropped.load(Ordering::SeqCst));
    assert_eq!(fleet.route(0).await["halted"], json!(false));

    cut.store(false, Ordering::SeqCst);
    fleet.wait_all("halted everywhere", |r| r["halted"] == json!(true) && r["weight"] == json!(0.0)).await;
    fleet.wait_connected(1, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_configured_weight_reaches_the_fleet() {
    let etcd = Etcd::start();
    let fleet = Fleet::start(&etcd, 2, "2s").await;
    // Config management pushes a new configured weight to one replica first.
    let p = fleet.at(0);
    let text = std::fs::read_to_string(&p.config_path).unwrap().replace("weight = 0\n", "weight = 40\n");
    std::fs::write(&p.config_path, text).unwrap();
    let (status, body) = call(p, Method::POST, "/v1/reload", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    fleet.wait_all("weight 40", |r| r["weight"] == json!(40.0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_in_etcd_are_ignored_not_a_crash() {
    let etcd = Etcd::start();
    let fleet = Fleet::start(&etcd, 1, "2s").await;
    let key = format!("{}/routes/web", fleet.prefix);
    let client = cutover::fleet::etcd::Client::new(&etcd.urls(), Duration::from_secs(2), None, None).unwrap();
    let put = |value: String| {
        let (client, key) = (&client, &key);
        async move { client.put(key, value.as_bytes(), 0).await.expect("etcd put") }
    };
    let record = |rollout: &str, top: &str| {
        format!(
            r#"{{"state":{{"weight_bp":2500,"halted":false,"config_weight_bp":0{rollout}}},"by":"x","actor":"unix","kind":"weight"{top}}}"#
        )
    };
    let state = |rollout: &str| record(rollout, "");
    put("not json".into()).await;
    put(state("").replace("2500", "10001")).await;
    put(state(r#","rollout":{"plan":{"steps_bp":[],"interval":1000,"max_error_rate":0.01,"min_requests":1},"step":0,"paused":false}"#)).await;
    // A step beyond the plan, due now, with a window: this replica drives it.
    let rollout = r#","rollout":{"plan":{"steps_bp":[100],"interval":1000,"max_error_rate":0.01,"min_requests":0},"step":7,"paused":false}"#;
    put(record(rollout, r#","window":"w","step_ends_at_ms":1"#)).await;
    let driving = until(WAIT, || async { driver(&fleet, 0).await.is_some() }).await;
    assert!(driving, "{}", fleet.fleet_status(0).await);
    for _ in 0..10 {
        let (status, body) = call(fleet.at(0), Method::GET, "/v1/routes/web", None).await;
        assert_eq!(status, StatusCode::OK, "the control plane survives: {body}");
    }
    // A heartbeat under another key that names this replica: it must not
    // pass for it (or for anyone) in the fleet's status.
    let mut forged = fleet.fleet_status(0).await["replicas"][0].clone();
    assert_eq!(forged["name"], json!("proxy-0"), "{forged}");
    forged["config_hash"] = json!("forged");
    client.put(&format!("{}/replicas/impostor", fleet.prefix), forged.to_string().as_bytes(), 0).await.unwrap();
    // Still serving and steering; then a good record applies (and with it
    // every record put before).
    put(state("")).await;
    fleet.wait_all("weight 25 from etcd", |r| r["weight"] == json!(25.0)).await;
    assert_eq!(get(fleet.at(0).addr(), "/", &[]).await.status, StatusCode::OK);
    let replicas = fleet.fleet_status(0).await["replicas"].clone();
    assert_eq!(replicas.as_array().map(Vec::len), Some(1), "{replicas}");
    assert_ne!(replicas[0]["config_hash"], json!("forged"), "{replicas}");
    // "not json" and the forged heartbeat were counted as records that do not parse.
    let text = fleet.at(0).metrics();
    assert!(metric(&text, r#"cutover_fleet_ignored_records_total{reason="unparsable"}"#) >= 2.0, "{text}");
}

/// The value of the sample `series` (name and labels as exposed) in `text`; 0 when absent.
/// Records for a route this replica's config does not have (a replica with
/// another config, a hand with etcdctl) create no state here: for a rollout
/// with a window, due now, on `ghost`, the replica takes no driver key;
/// another replica's driver key for `phantom` is not listed; the routes it
/// has go on applying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_for_a_route_this_replica_does_not_have_create_no_state() {
    let etcd = Etcd::start();
    let fleet = Fleet::start(&etcd, 1, "2s").await;
    let client = cutover::fleet::etcd::Client::new(&etcd.urls(), Duration::from_secs(2), None, None).unwrap();
    let put = |rest: &str, value: String| {
        let (client, key) = (&client, format!("{}/{rest}", fleet.prefix));
        async move { client.put(&key, value.as_bytes(), 0).await.expect("etcd put") }
    };
    let record = |weight_bp: u32, rollout: &str, top: &str| {
        format!(
            r#"{{"state":{{"weight_bp":{weight_bp},"halted":false,"config_weight_bp":0{rollout}}},"by":"proxy-9","actor":"unix","kind":"weight"{top}}}"#
        )
    };
    let rollout = r#","rollout":{"plan":{"steps_bp":[100],"interval":1000,"max_error_rate":0.01,"min_requests":0},"step":0,"paused":false}"#;
    let window = r#","window":"w","step_ends_at_ms":1"#;
    put("routes/ghost", record(100, rollout, window)).await;
    put("routes/web/ghost", record(100, rollout, window)).await;
    put("drivers/phantom", "proxy-9#1".into()).await;
    put("counters/ghost/proxy-9", "{}".into()).await;
    // Records for `web` after them: once the second is applied, every
    // record before it has been handled.
    put("routes/web", record(2500, "", "")).await;
    fleet.wait_all("weight 25 from etcd", |r| r["weight"] == json!(25.0)).await;
    put("routes/web", record(3000, "", "")).await;
    fleet.wait_all("weight 30 from etcd", |r| r["weight"] == json!(30.0)).await;
    let status = fleet.fleet_status(0).await;
    assert_eq!(status["drivers"], json!({}), "{status}");
    for route in ["ghost", "web/ghost"] {
        let (_, held) = client.range(&format!("{}/drivers/{route}", fleet.prefix), false).await.unwrap();
        assert!(held.is_empty(), "this replica took the driver key of {route}: {held:?}");
    }
    let text = fleet.at(0).metrics();
    assert!(!text.contains("ghost"), "{text}");
    // The four records were counted as ignored (a resync, after a lost
    // session, would read and count them again).
    let ignored = metric(&text, r#"cutover_fleet_ignored_records_total{reason="unknown_route"}"#);
    assert!(ignored >= 4.0, "{text}");
    let (status, _) = call(fleet.at(0), Method::GET, "/v1/routes/ghost", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A replica whose config gives a route no canary pool keeps its weight at
/// 0 when another replica, whose config has one, moves it: as its own
/// admin API would refuse (409), the record's share is not taken; the
/// records after it still are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_without_a_canary_pool_here_keeps_weight_0_whatever_the_fleet_says() {
    let etcd = Etcd::start();
    let fleet = Fleet::start(&etcd, 2, "2s").await;
    fleet.reload_with(0, |text| text + &without_canary(API_ROUTE)).await;
    fleet.reload_with(1, |text| text + API_ROUTE).await;
    let (status, body) = call(fleet.at(0), Method::PUT, "/v1/routes/api/weight", Some(json!({"weight": 30}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = call(fleet.at(1), Method::PUT, "/v1/routes/api/weight", Some(json!({"weight": 30}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Records reach a replica in order: once the later one is in force,
    // the one for `api` has been read.
    let (status, body) = call(fleet.at(1), Method::PUT, "/v1/routes/web/weight", Some(json!({"weight": 40}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    fleet.wait_all("web at 40", |r| r["weight"] == json!(40.0)).await;
    assert_eq!(fleet.route_named(0, "api").await["weight"], json!(0.0));
    assert_eq!(fleet.route_named(1, "api").await["weight"], json!(30.0));
    let text = fleet.at(0).metrics();
    assert!(metric(&text, r#"cutover_fleet_ignored_records_total{reason="no_canary_pool"}"#) >= 1.0, "{text}");
    // A reload that gives the route its canary pool here takes the fleet's
    // weight at once, as a reload that adds a route does.
    fleet.reload_with(0, |text| text.replace(&without_canary(API_ROUTE), API_ROUTE)).await;
    let taken = until(WAIT, || async { fleet.route_named(0, "api").await["weight"] == json!(30.0) }).await;
    assert!(taken, "{}", fleet.route_named(0, "api").await);
}

/// A replica whose config gives `web` no canary pool never drives its
/// rollout (it would hold the driver key and judge nothing): the replica
/// that has the pool drives it, and when that one dies the rollout waits
/// for a replica that can drive it rather than being taken by this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_the_canary_pool_never_drives_the_rollout() {
    let etcd = Etcd::start();
    let mut fleet = Fleet::start(&etcd, 2, "1s").await;
    fleet.reload_with(0, |text| without_canary(&text)).await;
    assert_eq!(fleet.route(0).await.get("canary"), Some(&Value::Null));
    let (status, body) =
        call(fleet.at(1), Method::POST, "/v1/routes/web/rollout", Some(rollout(&[10, 100], "1h", 0.05))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let driven = until(WAIT, || async { driver(&fleet, 0).await.is_some() }).await;
    assert!(driven, "no driver: {}", fleet.fleet_status(0).await);
    assert_eq!(driver(&fleet, 0).await.as_deref(), Some("proxy-1"));
    // The driver dies; its key goes with its lease (1 s). Within the time
    // a replica that can drive takes over (under 2.1 s: see the failover
    // test), this one takes nothing.
    let dead = fleet.crash(1);
    let gone = until(WAIT, || async { driver(&fleet, 0).await.is_none() }).await;
    assert!(gone, "{}", fleet.fleet_status(0).await);
    let took = until(Duration::from_millis(2_500), || async { driver(&fleet, 0).await.is_some() }).await;
    assert!(!took, "{}", fleet.fleet_status(0).await);
    assert_eq!(metric(&fleet.at(0).metrics(), "cutover_rollout_driver{route=\"web\"}"), 0.0);
    drop(dead);
}

/// A reload that takes the canary pool from the replica that drives the
/// rollout hands the rollout on: that replica lets the driver key go (at
/// its next lease renewal) and the other takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_takes_the_canary_pool_from_the_driver_hands_the_rollout_on() {
    let etcd = Etcd::start();
    let fleet = Fleet::start(&etcd, 2, "1s").await;
    let (first, index) = start_rollout(&fleet, rollout(&[10, 100], "1h", 0.05), 1).await;
    fleet.reload_with(index, |text| without_canary(&text)).await;
    let other = 1 - index;
    let handed = until(WAIT, || async { driver(&fleet, other).await.is_some_and(|d| d != first) }).await;
    assert!(handed, "{}", fleet.fleet_status(other).await);
    assert_eq!(metric(&fleet.at(index).metrics(), "cutover_rollout_driver{route=\"web\"}"), 0.0);
}

/// `text` (a config, or a route of one) with its first route's canary pool
/// taken out.
fn without_canary(text: &str) -> String {
    text.replacen("canary = \"canary\"\n", "", 1)
}

/// A second route for configs that differ between replicas.
const API_ROUTE: &str =
    "\n[[routes]]\nname = \"api\"\npath_prefix = \"/api/\"\nstable = \"stable\"\ncanary = \"canary\"\nweight = 0\n";

/// A route a reload adds takes the fleet's state for it at once: its
/// record, ignored while the replica's config lacked the route, is read
/// after the reload, not only when it next changes. Likewise a route
/// removed by a reload and added again by the next; the removal leaves the
/// record as it is for the replicas that have the route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_added_by_a_reload_takes_the_fleet_state_at_once() {
    let etcd = Etcd::start();
    let fleet = Fleet::start(&etcd, 2, "2s").await;
    fleet.reload_with(1, |text| text + API_ROUTE).await;
    let (status, body) = call(fleet.at(1), Method::PUT, "/v1/routes/api/weight", Some(json!({"weight": 30}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Replica 0 has seen the record and ignored it: its config lacks `api`.
    let unknown = r#"cutover_fleet_ignored_records_total{reason="unknown_route"}"#;
    let ignored = until(WAIT, || async { metric(&fleet.at(0).metrics(), unknown) >= 1.0 }).await;
    assert!(ignored, "{}", fleet.at(0).metrics());
    let (status, _) = call(fleet.at(0), Method::GET, "/v1/routes/api", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let client = cutover::fleet::etcd::Client::new(&etcd.urls(), Duration::from_secs(2), None, None).unwrap();
    let key = format!("{}/routes/api", fleet.prefix);
    let revision = || async {
        let (_, kvs) = client.range(&key, false).await.expect("etcd range");
        kvs.first().and_then(|kv| kv.as_ref().ok()).map(|kv| kv.mod_revision)
    };
    let written = revision().await;
    assert!(written.is_some(), "no record for api");
    let weight_30 = |i: usize, when: &'static str| {
        let fleet = &fleet;
        async move {
            let ok = until(WAIT, || async { fleet.route_named(i, "api").await["weight"] == json!(30.0) }).await;
            assert!(ok, "replica {i}, {when}: api not at the fleet's 30%: {}", fleet.route_named(i, "api").await);
        }
    };
    // Added: the fleet's 30%, not the configured 0%, with no further write.
    fleet.reload_with(0, |text| text + API_ROUTE).await;
    weight_30(0, "added").await;
    // Removed: gone here, untouched in etcd and on replica 1.
    fleet.reload_with(0, |text| text.replace(API_ROUTE, "")).await;
    let (status, _) = call(fleet.at(0), Method::GET, "/v1/routes/api", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    weight_30(1, "removed on replica 0").await;
    // Added again: the fleet's state again, though the record is the one seen before.
    fleet.reload_with(0, |text| text + API_ROUTE).await;
    weight_30(0, "added again").await;
    assert_eq!(revision().await, written, "a replica that added or removed the route wrote its record");
}

/// A replica whose reload removes the route of the rollout it drives lets
/// the rollout go: another replica, which still has the route, drives it
/// on at the same step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_a_driven_route_hands_its_rollout_to_another_replica() {
    let etcd = Etcd::start();
    let fleet = Fleet::start(&etcd, 2, "1s").await;
    let (first, index) = start_rollout(&fleet, rollout(&[10, 50, 100], "60s", 0.01), 0).await;
    let other = 1 - index;
    fleet.reload_with(index, |text| text.replace("name = \"web\"", "name = \"www\"")).await;
    let took_over = until(WAIT, || async { driver(&fleet, other).await.is_some_and(|d| d != first) }).await;
    assert!(took_over, "the driver that lost the route kept the rollout: {}", fleet.fleet_status(other).await);
    let route = fleet.route(other).await;
    assert_eq!((&route["rollout"]["step"], &route["weight"]), (&json!(1), &json!(10.0)), "{route}");
}

/// `promtool check metrics` passes on a fleet replica's output.
fn promtool_check(text: &str) {
    use std::io::Write;
    for family in [
        "cutover_fleet_connected",
        "cutover_fleet_replicas",
        "cutover_fleet_applied_revision",
        "cutover_rollout_driver",
    ] {
        assert!(text.contains(&format!("# TYPE {family} gauge")), "{family} missing:\n{text}");
    }
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool is required (Debian package `prometheus`) and could not run: {e}"));
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && report.trim().is_empty(), "promtool check metrics:\n{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_reach_etcd_over_tls_with_a_client_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
    let write = |name: &str, names: &[&str]| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(certs.path().join(format!("{name}.crt")), cert.pem()).unwrap();
        std::fs::write(certs.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
    };
    write("etcd", &["127.0.0.1", "localhost"]);
    write("cutover", &["cutover"]);
    std::fs::write(certs.path().join("ca.crt"), ca.pem()).unwrap();
    let path = |f: &str| certs.path().join(f);
    let etcd = Etcd::start_tls(path("etcd.crt"), path("etcd.key"), path("ca.crt"));
    let tls = format!(
        "tls = {{ ca = {:?}, cert = {:?}, key = {:?} }}\n",
        path("ca.crt").display().to_string(),
        path("cutover.crt").display().to_string(),
        path("cutover.key").display().to_string()
    );
    let stable = Backend::named("stable").await;
    let canary = Backend::named("canary").await;
    let prefix = prefix();
    let start = |name: &str, with_tls: bool| {
        let mut section = etcd.fleet_section(&prefix, name, "2s");
        if with_tls {
            section.push_str(&tls);
        }
        Proxy::start(&two_pool_config(stable.addr, canary.addr, 0.0, &section))
    };
    let (a, b) = (start("proxy-a", true), start("proxy-b", true));
    let settled = until(WAIT, || async {
        call(&a, Method::PUT, "/v1/routes/web/weight", Some(json!({"weight": 35}))).await.0 == StatusCode::OK
    })
    .await;
    assert!(settled, "no change went through over TLS: {:?}", call(&a, Method::GET, "/v1/fleet", None).await);
    let ok =
        until(WAIT, || async { call(&b, Method::GET, "/v1/routes/web", None).await.1["weight"] == json!(35.0) }).await;
    assert!(ok);
    // Without a client certificate, etcd refuses the replica: changes answer 503.
    let c = start("proxy-c", false);
    let (status, body) = call(&c, Method::PUT, "/v1/routes/web/weight", Some(json!({"weight": 50}))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sign_in_to_an_etcd_with_authentication_on() {
    let etcd = Etcd::start();
    let etcdctl = |args: &[&str]| {
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &etcd.urls()[0]])
            .args(args)
            .output()
            .expect("etcdctl (Debian: etcd-client; .ci/run installs it)");
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    etcdctl(&["user", "add", "root", "--new-user-password=root-secret-42", "--interactive=false"]);
    etcdctl(&["auth", "enable"]);
    let stable = Backend::named("stable").await;
    let canary = Backend::named("canary").await;
    let prefix = prefix();
    let start = |name: &str, password: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("etcd.pass"), format!("{password}\n")).unwrap();
        let section = format!(
            "{}username = \"root\"\npassword_file = \"{{dir}}/etcd.pass\"\n",
            etcd.fleet_section(&prefix, name, "2s")
        );
        Proxy::start_in(dir, &two_pool_config(stable.addr, canary.addr, 0.0, &section))
    };
    let (a, b) = (start("proxy-a", "root-secret-42"), start("proxy-b", "root-secret-42"));
    let changed = until(WAIT, || async {
        call(&a, Method::PUT, "/v1/routes/web/weight", Some(json!({"weight": 15}))).await.0 == StatusCode::OK
    })
    .await;
    assert!(changed, "{:?}", call(&a, Method::GET, "/v1/fleet", None).await);
    let ok =
        until(WAIT, || async { call(&b, Method::GET, "/v1/routes/web", None).await.1["weight"] == json!(15.0) }).await;
    assert!(ok, "{:?}", call(&b, Method::GET, "/v1/fleet", None).await);
    // A wrong password: refused by etcd, so changes answer 503 with why.
    let c = start("proxy-c", "wrong");
    let refused = until(WAIT, || async {
        call(&c, Method::GET, "/v1/fleet", None).await.1["error"]
            .as_str()
            .is_some_and(|e| e.contains("authentication failed"))
    })
    .await;
    assert!(refused, "{:?}", call(&c, Method::GET, "/v1/fleet", None).await);
    let (status, _) = call(&c, Method::PUT, "/v1/routes/web/weight", Some(json!({"weight": 50}))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

/// What the stand-in between a replica and etcd does with one call.
enum Cut {
    /// Passes it on to etcd.
    Pass,
    /// Answers a watch with its `created` message, then with the line the
    /// receiver yields if one is given, and then ends it, as a broken
    /// gateway or proxy might.
    EndWatch(Option<tokio::sync::oneshot::Receiver<String>>),
    /// Closes the connection unanswered, as an etcd that dies mid-call does.
    Drop,
}

/// One call as the client sent it, head and body; None if it ended first.
async fn read_call(client: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut call = Vec::new();
    loop {
        if let Some(end) = common::wire::find(&call, b"\r\n\r\n") {
            let head = common::wire::lossy(&call[..end]).to_ascii_lowercase();
            let length = head.lines().find_map(|l| l.strip_prefix("content-length:")).map(str::trim);
            if call.len() >= end + 4 + length.map_or(0, |l| l.parse().unwrap_or(0)) {
                return Some(call);
            }
        }
        if !matches!(client.read_buf(&mut call).await, Ok(n) if n > 0) || call.len() > 65536 {
            return None;
        }
    }
}

/// Stands between a replica and etcd: reads each call (the client opens a
/// connection per call) and does with it what `rule` says.
async fn stand_in(
    etcd: std::net::SocketAddr,
    rule: impl Fn(&[u8]) -> Cut + Send + Sync + 'static,
) -> std::net::SocketAddr {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rule = std::sync::Arc::new(rule);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let rule = rule.clone();
            tokio::spawn(async move {
                let Some(call) = read_call(&mut client).await else { return };
                match rule(&call) {
                    Cut::Pass => {
                        let Ok(mut server) = tokio::net::TcpStream::connect(etcd).await else { return };
                        if server.write_all(&call).await.is_ok() {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    }
                    Cut::EndWatch(then) => {
                        let chunk = |line: &str| format!("{:x}\r\n{line}\r\n", line.len());
                        let created = "{\"result\":{\"header\":{\"revision\":\"1\"},\"created\":true}}\n";
                        let head =
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                        let _ = client.write_all(format!("{head}{}", chunk(created)).as_bytes()).await;
                        let line = match then {
                            Some(then) => then.await.ok(),
                            None => None,
                        };
                        if let Some(line) = line {
                            let _ = client.write_all(chunk(&line).as_bytes()).await;
                        }
                        let _ = client.write_all(b"0\r\n\r\n").await;
                    }
                    Cut::Drop => {}
                }
            });
        }
    });
    addr
}

fn etcd_addr(etcd: &Etcd) -> std::net::SocketAddr {
    etcd.urls()[0].trim_start_matches("http://").parse().unwrap()
}

/// A watch that breaks as soon as it opens is resumed after a pause that
/// grows (50 ms doubling to 2 s), not in a busy loop; the replica stays
/// connected and serving meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_keeps_breaking_is_resumed_ever_more_slowly() {
    let etcd = Etcd::start();
    // When each watch was opened.
    let opened = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let record = opened.clone();
    let breaker = stand_in(etcd_addr(&etcd), move |call| match call.starts_with(b"POST /v3/watch ") {
        true => {
            record.lock().unwrap().push(Instant::now());
            Cut::EndWatch(None)
        }
        false => Cut::Pass,
    })
    .await;
    let stable = Backend::named("stable").await;
    let canary = Backend::named("canary").await;
    let section = common::etcd::fleet_section(&[format!("http://{breaker}")], &prefix(), "proxy-0", "2s");
    let proxy = Proxy::start(&two_pool_config(stable.addr, canary.addr, 0.0, &section));
    let seven = until(WAIT, || async { opened.lock().unwrap().len() >= 7 }).await;
    assert!(seven, "{} watches opened", opened.lock().unwrap().len());
    // Pauses before the 2nd to the 7th watch: 0, 50, 100, 200, 400, 800
    // ms. A machine that is slow only lengthens the gaps; a busy loop
    // would open the seven within milliseconds.
    let times = opened.lock().unwrap().clone();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).take(6).collect();
    for (gap, least) in gaps.iter().zip([0, 50, 100, 200, 400, 800]) {
        assert!(*gap >= Duration::from_millis(least), "gaps between watches {gaps:?}");
    }
    let (status, body) = proxy.admin_call(Method::GET, "/v1/fleet", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["connected"], json!(true), "{body}");
    assert_eq!(get(proxy.addr(), "/", &[]).await.status, StatusCode::OK);
}

/// etcd sends a watcher that catches up in batches, each stamped with the
/// store's current revision rather than its last event's. A watch that
/// breaks right after such a batch resumes after the batch's last event,
/// so a change the header's revision covers but no batch has carried yet
/// still reaches the replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_breaks_after_a_partial_batch_still_delivers_the_changes_after_it() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let etcd = Etcd::start();
    let mut fleet = Fleet::start(&etcd, 1, "2s").await;
    // Replica 1's first watch is answered by the stand-in with the batch
    // sent on `batch`, then ends; the watches after it reach etcd.
    let (batch, first) = tokio::sync::oneshot::channel::<String>();
    let first = std::sync::Mutex::new(Some(first));
    let watches = std::sync::Arc::new(AtomicUsize::new(0));
    let count = watches.clone();
    let stand_in = stand_in(etcd_addr(&etcd), move |call| match call.starts_with(b"POST /v3/watch ") {
        true => {
            count.fetch_add(1, Ordering::SeqCst);
            match first.lock().unwrap().take() {
                Some(first) => Cut::EndWatch(Some(first)),
                None => Cut::Pass,
            }
        }
        false => Cut::Pass,
    })
    .await;
    fleet.add_at(&[format!("http://{stand_in}")], "proxy-1", "2s", None);
    // Replica 1 has read the fleet's state: what follows is news to it.
    let opened = until(WAIT, || async { watches.load(Ordering::SeqCst) >= 1 }).await;
    assert!(opened, "no watch was opened");

    let client = cutover::fleet::etcd::Client::new(&etcd.urls(), Duration::from_secs(2), None, None).unwrap();
    let note = format!("{}/note", fleet.prefix);
    let delivered = client.put(&note, b"in the batch", 0).await.expect("etcd put");
    let (status, body) = call(fleet.at(0), Method::PUT, "/v1/routes/web/weight", Some(json!({"weight": 100}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (current, kvs) = client.range(&format!("{}/routes/web", fleet.prefix), false).await.expect("etcd range");
    let skipped = kvs.first().and_then(|kv| kv.as_ref().ok()).expect("the route's record").mod_revision;
    assert!(delivered < skipped && skipped <= current, "{delivered} < {skipped} <= {current}");
    let encode = |bytes: &[u8]| cutover::fleet::base64::encode(bytes);
    let (key, value) = (encode(note.as_bytes()), encode(b"in the batch"));
    let kv =
        format!(r#"{{"key":"{key}","value":"{value}","mod_revision":"{delivered}","create_revision":"{delivered}"}}"#);
    batch
        .send(format!(r#"{{"result":{{"header":{{"revision":"{current}"}},"events":[{{"kv":{kv}}}]}}}}"#) + "\n")
        .unwrap();

    fleet.wait_all("weight 100", |r| r["weight"] == json!(100.0)).await;
    assert!(watches.load(Ordering::SeqCst) >= 2, "the watch was resumed");
}
