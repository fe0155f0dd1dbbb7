//! The admin API (DESIGN §4) over its Unix socket and over TCP, durable
//! state across restarts, the precedence rule, and `cutover ctl`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use serde_json::json;

async fn pair() -> (Backend, Backend) {
    (Backend::named("stable").await, Backend::named("canary").await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_on_the_unix_socket() {
    let (stable, canary) = pair().await;
    let proxy = Proxy::start(&two_pool_config(stable.addr, canary.addr, 5.0, ""));
    let mode = std::fs::metadata(proxy.dir.path().join("admin.sock")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the admin socket is private to its owner");

    let (s, body) = proxy.admin_call(Method::GET, "/healthz", None).await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, Some("ok\n")));

    let (s, body) = proxy.admin_call(Method::GET, "/v1/routes", None).await;
    assert_eq!(s, StatusCode::OK);
    let route = &body["routes"][0];
    assert_eq!((route["name"].as_str(), route["weight"].as_f64()), (Some("web"), Some(5.0)));
    assert_eq!(route["pools"][0]["backends"][0]["healthy"], json!(true));

    let (s, body) = proxy.admin_call(Method::GET, "/v1/routes/web", None).await;
    assert_eq!((s, body["stable"].as_str(), body["canary"].as_str()), (StatusCode::OK, Some("stable"), Some("canary")));

    let (s, body) = proxy.admin_call(Method::PUT, "/v1/routes/web/weight", Some(json!({"weight": 12.5}))).await;
    assert_eq!((s, body["weight"].as_f64()), (StatusCode::OK, Some(12.5)));
    // In force for the next request when the call returns.
    let expect = |key: &str, w: f64| {
        if f64::from(cutover::routing::hash::bucket("web", key.as_bytes())) < w * 100.0 { "canary" } else { "stable" }
    };
    let got = get(proxy.addr(), "/", &[("cookie", "cutover_id=00000000deadbeef")]).await;
    assert_eq!(got.first_line(), expect("00000000deadbeef", 12.5));

    let (s, body) = proxy.admin_call(Method::POST, "/v1/routes/web/promote", None).await;
    assert_eq!((s, body["weight"].as_f64()), (StatusCode::OK, Some(100.0)));
    let (s, body) = proxy.admin_call(Method::POST, "/v1/routes/web/rollback", None).await;
    assert_eq!((s, body["weight"].as_f64(), body["halted"].as_bool()), (StatusCode::OK, Some(0.0), Some(true)));

    let rollout = json!({"steps": [10, 50, 100], "interval": "10m", "max_error_rate": 0.05, "max_p99": "900ms", "min_requests": 10});
    let (s, body) = proxy.admin_call(Method::POST, "/v1/routes/web/rollout", Some(rollout)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!((body["weight"].as_f64(), body["halted"].as_bool()), (Some(10.0), Some(false)));
    assert_eq!(body["rollout"]["step"], json!(1));
    assert_eq!(body["rollout"]["max_p99_ms"], json!(900.0));
    let (s, body) = proxy.admin_call(Method::POST, "/v1/routes/web/rollout/pause", None).await;
    assert_eq!((s, body["rollout"]["paused"].as_bool()), (StatusCode::OK, Some(true)));
    let (s, body) = proxy.admin_call(Method::POST, "/v1/routes/web/rollout/resume", None).await;
    assert_eq!((s, body["rollout"]["paused"].as_bool()), (StatusCode::OK, Some(false)));
    let (s, body) = proxy.admin_call(Method::PUT, "/v1/routes/web/weight", Some(json!({"weight": 30}))).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(body["error"].as_str().unwrap().contains("rollout in progress"), "{body}");
    let (s, body) = proxy.admin_call(Method::DELETE, "/v1/routes/web/rollout", None).await;
    assert_eq!((s, body["rollout"].is_null(), body["weight"].as_f64()), (StatusCode::OK, true, Some(10.0)));
    let (s, _) = proxy.admin_call(Method::DELETE, "/v1/routes/web/rollout", None).await;
    assert_eq!(s, StatusCode::CONFLICT, "no rollout to abort");

    let (s, body) = proxy.admin_call(Method::POST, "/v1/reload", None).await;
    assert_eq!((s, body["ok"].as_bool()), (StatusCode::OK, Some(true)));

    let (s, body) = proxy.admin_call(Method::GET, "/v1/events", None).await;
    assert_eq!(s, StatusCode::OK);
    let kinds: Vec<&str> = body["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "weight",
            "promote",
            "rollback",
            "rollout_start",
            "rollout_pause",
            "rollout_resume",
            "rollout_abort",
            "reload"
        ]
    );
    let first = &body["events"][0];
    assert_eq!(
        (first["actor"].as_str(), first["before"].as_str(), first["after"].as_str()),
        (Some("unix"), Some("5%"), Some("12.5%"))
    );
    let (s, body) = proxy.admin_call(Method::GET, "/v1/events?since=7", None).await;
    assert_eq!((s, body["events"].as_array().unwrap().len()), (StatusCode::OK, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_json_errors() {
    let (stable, canary) = pair().await;
    let proxy = Proxy::start(&two_pool_config(stable.addr, canary.addr, 5.0, ""));
    let cases: Vec<(Method, &str, Option<serde_json::Value>, StatusCode)> = vec![
        (Method::PUT, "/v1/routes/web/weight", Some(json!({"weight": 100.5})), StatusCode::BAD_REQUEST),
        (Method::PUT, "/v1/routes/web/weight", Some(json!({"weight": -1})), StatusCode::BAD_REQUEST),
        (Method::PUT, "/v1/routes/web/weight", Some(json!({"weight": 1.234})), StatusCode::BAD_REQUEST),
        (Method::PUT, "/v1/routes/web/weight", Some(json!({"wieght": 5})), StatusCode::BAD_REQUEST),
        (Method::PUT, "/v1/routes/web/weight", Some(json!("not an object")), StatusCode::BAD_REQUEST),
        (Method::PUT, "/v1/routes/nope/weight", Some(json!({"weight": 5})), StatusCode::NOT_FOUND),
        (Method::GET, "/v1/routes/nope", None, StatusCode::NOT_FOUND),
        (Method::POST, "/v1/routes/nope/promote", None, StatusCode::NOT_FOUND),
        (
            Method::POST,
            "/v1/routes/web/rollout",
            Some(json!({"steps": [50, 10], "interval": "1m"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/v1/routes/web/rollout",
            Some(json!({"steps": [10], "interval": "soon"})),
            StatusCode::BAD_REQUEST,
        ),
        (Method::POST, "/v1/routes/web/rollout/pause", None, StatusCode::CONFLICT),
        (Method::GET, "/v1/nothing", None, StatusCode::NOT_FOUND),
        (Method::DELETE, "/v1/routes/web/weight", None, StatusCode::METHOD_NOT_ALLOWED),
        (Method::GET, "/v1/events?since=x", None, StatusCode::BAD_REQUEST),
    ];
    for (method, path, body, want) in cases {
        let (status, value) = proxy.admin_call(method.clone(), path, body.clone()).await;
        assert_eq!(status, want, "{method} {path} {body:?}: {value}");
        assert!(
            value["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path}: JSON error expected, got {value}"
        );
    }
    // A body above the limit is refused, not read.
    let huge = json!({ "weight": 5, "padding": "x".repeat(100_000) });
    let (status, value) = proxy.admin_call(Method::PUT, "/v1/routes/web/weight", Some(huge)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{value}");
    // Nothing changed.
    let (_, body) = proxy.admin_call(Method::GET, "/v1/routes/web", None).await;
    assert_eq!(body["weight"].as_f64(), Some(5.0));
}

fn tcp_config(stable: std::net::SocketAddr, canary: std::net::SocketAddr) -> String {
    two_pool_config(stable, canary, 5.0, "")
        .replace("listen = \"unix:{dir}/admin.sock\"", "listen = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_admin_requires_the_bearer_token() {
    let (stable, canary) = pair().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), "correct-horse-battery-staple\n").unwrap();
    let proxy = Proxy::start_in(dir, &tcp_config(stable.addr, canary.addr));
    let mut target = proxy.admin();
    assert_eq!(target.token.as_deref(), Some("correct-horse-battery-staple"));
    let ok = cutover::ctl::call(&target, Method::GET, "/v1/routes", None).await.unwrap();
    assert_eq!(ok.0, StatusCode::OK);
    for token in [None, Some("wrong-token-of-similar-size!".to_string()), Some(String::new())] {
        target.token = token.clone();
        for (method, path) in
            [(Method::GET, "/v1/routes"), (Method::POST, "/v1/routes/web/promote"), (Method::GET, "/v1/events")]
        {
            let (status, body) = cutover::ctl::call(&target, method.clone(), path, None).await.unwrap();
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} with {token:?}");
            assert!(body["error"].is_string());
        }
    }
    target.token = None;
    let (status, _) = cutover::ctl::call(&target, Method::GET, "/healthz", None).await.unwrap();
    assert_eq!(status, StatusCode::OK, "healthz needs no token");
    let (_, body) = proxy.admin_call(Method::GET, "/v1/routes/web", None).await;
    assert_eq!(body["weight"].as_f64(), Some(5.0), "refused calls changed nothing");
}

#[test]
fn tcp_admin_without_a_token_file_is_a_config_error() {
    let text = tcp_config("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap())
        .replace("token_file = \"admin.token\"\n", "");
    let err = cutover::config::parse(&text, "c.toml", std::path::Path::new(".")).unwrap_err();
    assert_eq!(err.key, "admin.token_file");
    assert!(err.to_string().contains("requires token_file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_stale_file_is_replaced_and_a_live_one_refuses_to_start() {
    let (stable, canary) = pair().await;
    let dir = tempfile::tempdir().unwrap();
    // A stale socket file (nobody listening).
    drop(std::os::unix::net::UnixListener::bind(dir.path().join("admin.sock")).unwrap());
    let config = two_pool_config(stable.addr, canary.addr, 5.0, "");
    let proxy = Proxy::start_in(dir, &config);
    let (status, _) = proxy.admin_call(Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    // A second server on the same socket refuses to start.
    let path = proxy.config_path.clone();
    let err = cutover::server::start(cutover::server::Source::File(path), Default::default(), None)
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("in use by a running process"), "{err}");
    let (status, _) = proxy.admin_call(Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK, "the first server still answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_and_halt_survive_a_restart() {
    let (stable, canary) = pair().await;
    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().to_path_buf();
    let config = two_pool_config(stable.addr, canary.addr, 5.0, "");
    let proxy = Proxy::start_in(dir, &config);
    proxy.set_weight("web", 40.0).await;
    let Proxy { running, dir, .. } = proxy;
    running.shutdown();
    let proxy = Proxy::start_in(dir, &config);
    let (_, body) = proxy.admin_call(Method::GET, "/v1/routes/web", None).await;
    assert_eq!(body["weight"].as_f64(), Some(40.0), "the admin decision survives a restart");
    let (_, body) = proxy.admin_call(Method::POST, "/v1/routes/web/rollback", None).await;
    assert_eq!(body["halted"].as_bool(), Some(true));
    let Proxy { running, dir, .. } = proxy;
    running.shutdown();
    let proxy = Proxy::start_in(dir, &config);
    let (_, body) = proxy.admin_call(Method::GET, "/v1/routes/web", None).await;
    assert_eq!((body["weight"].as_f64(), body["halted"].as_bool()), (Some(0.0), Some(true)));
    let got = get(proxy.addr(), "/", &[("cookie", "cutover_id=x; cutover_beta=always")]).await;
    assert_eq!(got.first_line(), "stable", "still halted after the restart");
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir_path.join("state.json")).unwrap()).unwrap();
    assert_eq!(saved["routes"]["web"]["halted"], json!(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precedence_changed_config_weight_wins_otherwise_the_live_weight_stays() {
    let (stable, canary) = pair().await;
    let config = two_pool_config(stable.addr, canary.addr, 5.0, "");
    let proxy = Proxy::start(&config);
    proxy.set_weight("web", 30.0).await;
    // A reload that leaves the route's weight alone keeps the live weight.
    std::fs::write(
        &proxy.config_path,
        config
            .replace("{dir}", &proxy.dir.path().display().to_string())
            .replace("drain_timeout = \"5s\"", "drain_timeout = \"6s\""),
    )
    .unwrap();
    let (s, _) = proxy.admin_call(Method::POST, "/v1/reload", None).await;
    assert_eq!(s, StatusCode::OK);
    let (_, body) = proxy.admin_call(Method::GET, "/v1/routes/web", None).await;
    assert_eq!(body["weight"].as_f64(), Some(30.0));
    // A reload that changes the route's configured weight is the newer decision.
    std::fs::write(
        &proxy.config_path,
        config.replace("{dir}", &proxy.dir.path().display().to_string()).replace("weight = 5", "weight = 10"),
    )
    .unwrap();
    let (s, _) = proxy.admin_call(Method::POST, "/v1/reload", None).await;
    assert_eq!(s, StatusCode::OK);
    let (_, body) = proxy.admin_call(Method::GET, "/v1/routes/web", None).await;
    assert_eq!((body["weight"].as_f64(), body["config_weight"].as_f64()), (Some(10.0), Some(10.0)));
    // The same rule at start: the state says 10 with config 10; a config now saying 10 keeps 10 and a later live change survives.
    proxy.set_weight("web", 20.0).await;
    let Proxy { running, dir, .. } = proxy;
    running.shutdown();
    let proxy = Proxy::start_in(dir, &config.replace("weight = 5", "weight = 10"));
    let (_, body) = proxy.admin_call(Method::GET, "/v1/routes/web", None).await;
    assert_eq!(body["weight"].as_f64(), Some(20.0), "unchanged config weight: the live weight stays");
    let Proxy { running, dir, .. } = proxy;
    running.shutdown();
    let proxy = Proxy::start_in(dir, &config.replace("weight = 5", "weight = 15"));
    let (_, body) = proxy.admin_call(Method::GET, "/v1/routes/web", None).await;
    assert_eq!(body["weight"].as_f64(), Some(15.0), "changed config weight wins at start too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_state_file_is_reported_kept_aside_and_config_weights_used() {
    let (stable, canary) = pair().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("state.json"), "{ this is not json").unwrap();
    let dir_path = dir.path().to_path_buf();
    let proxy = Proxy::start_in(dir, &two_pool_config(stable.addr, canary.addr, 5.0, ""));
    let (_, body) = proxy.admin_call(Method::GET, "/v1/routes/web", None).await;
    assert_eq!(body["weight"].as_f64(), Some(5.0));
    let aside: Vec<String> = std::fs::read_dir(&dir_path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("state.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the bad file is kept aside");
    assert_eq!(std::fs::read_to_string(dir_path.join(&aside[0])).unwrap(), "{ this is not json");
    let (_, events) = proxy.admin_call(Method::GET, "/v1/events", None).await;
    let event = &events["events"][0];
    assert_eq!(event["kind"], json!("state_unreadable"));
    assert!(event["detail"].as_str().unwrap().contains("corrupt"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_long_poll_returns_when_an_event_arrives() {
    let (stable, canary) = pair().await;
    let proxy = Proxy::start(&two_pool_config(stable.addr, canary.addr, 5.0, ""));
    let target = proxy.admin();
    let waiter =
        tokio::spawn(async move { cutover::ctl::call(&target, Method::GET, "/v1/events?since=0&wait=30", None).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "no event yet: the call waits");
    proxy.set_weight("web", 7.0).await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap().unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["events"][0]["after"], json!("7%"));
}

/// Runs `cutover ctl` (the binary) and returns (exit code, stdout, stderr).
fn ctl(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cutover")).arg("ctl").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_against_a_running_server() {
    let (stable, canary) = pair().await;
    let proxy = Proxy::start(&two_pool_config(stable.addr, canary.addr, 5.0, ""));
    let config = proxy.config_path.display().to_string();
    let c = |args: &[&str]| {
        let mut all = vec!["-c", config.as_str()];
        all.extend_from_slice(args);
        ctl(&all)
    };
    let (code, out, err) = tokio::task::block_in_place(|| c(&["status"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().next().unwrap().starts_with("ROUTE"), "{out}");
    assert!(out.contains("web") && out.contains("5%") && out.contains("stable 1/1 up"), "{out}");
    let (code, out, _) = tokio::task::block_in_place(|| c(&["weight", "web", "25"]));
    assert_eq!(code, 0);
    assert!(out.contains("weight 25%"), "{out}");
    let (code, out, _) = tokio::task::block_in_place(|| c(&["--json", "status", "web"]));
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["weight"].as_f64(), Some(25.0));
    let (code, _, err) = tokio::task::block_in_place(|| c(&["weight", "web", "250"]));
    assert_eq!(code, 1, "refused: exit 1");
    assert!(err.contains("(400)"), "{err}");
    let (code, _, err) = tokio::task::block_in_place(|| c(&["promote", "nope"]));
    assert_eq!(code, 1);
    assert!(err.contains("no route named"), "{err}");
    let (code, out, _) = tokio::task::block_in_place(|| {
        c(&["rollout", "web", "--steps", "30,60,100", "--interval", "10m", "--max-p99", "800ms"])
    });
    assert_eq!(code, 0);
    assert!(out.contains("step 1/3"), "{out}");
    let (code, _, err) = tokio::task::block_in_place(|| c(&["weight", "web", "50"]));
    assert_eq!(code, 1);
    assert!(err.contains("(409)"), "{err}");
    for args in [&["pause", "web"][..], &["resume", "web"], &["abort", "web"], &["rollback", "web"], &["reload"]] {
        let (code, _, err) = tokio::task::block_in_place(|| c(args));
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    let (code, out, _) = tokio::task::block_in_place(|| c(&["events"]));
    assert_eq!(code, 0);
    assert!(out.contains("rollout_start") && out.contains("rollback") && out.contains("reload"), "{out}");
    let (code, _, err) = tokio::task::block_in_place(|| ctl(&["--admin", "unix:/nonexistent/admin.sock", "status"]));
    assert_eq!(code, 2, "unreachable: exit 2");
    assert!(err.contains("cannot reach"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_events_follow_prints_new_events_as_they_happen() {
    use std::io::BufRead;
    let (stable, canary) = pair().await;
    let proxy = Proxy::start(&two_pool_config(stable.addr, canary.addr, 5.0, ""));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["ctl", "-c", proxy.config_path.to_str().unwrap(), "events", "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    proxy.set_weight("web", 15.0).await;
    let first = rx.recv_timeout(Duration::from_secs(15)).expect("an event line");
    assert!(first.contains("weight") && first.contains("5% → 15%"), "{first}");
    proxy.set_weight("web", 16.0).await;
    let second = rx.recv_timeout(Duration::from_secs(15)).expect("a second event line");
    assert!(second.contains("15% → 16%"), "{second}");
    let _ = child.kill();
    let _ = child.wait();
}
