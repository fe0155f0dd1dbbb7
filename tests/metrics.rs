//! Observability, black-box: exact metric values after known traffic, gauges
//! that follow the admin API, `/metrics` over HTTP checked by `promtool`,
//! series removed on reload, and the JSON access log.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http::{Method, Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One route `web` on host example.com over `stable` and `canary`, a user
/// header, metrics on a port from 0, and `extra` TOML appended to the top.
fn config(stable: SocketAddr, canary: SocketAddr, weight: f64, extra: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
workers = 1
drain_timeout = "5s"

[sticky]
header = "X-User-Id"

[admin]
listen = "unix:{{dir}}/admin.sock"

[metrics]
listen = "127.0.0.1:0"

[state]
path = "{{dir}}/state.json"

{extra}

[[routes]]
name = "web"
host = "example.com"
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

const LOG_OFF: &str = "[log]\naccess = \"off\"\n";

fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels = labels.to_vec();
    labels.sort();
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

fn requests(text: &str, version: &str, code: &str) -> f64 {
    metric(text, &series("cutover_requests_total", &[("route", "web"), ("version", version), ("code", code)]))
}

fn assignments(text: &str, version: &str, reason: &str) -> f64 {
    metric(text, &series("cutover_assignments_total", &[("route", "web"), ("version", version), ("reason", reason)]))
}

/// A backend answering `name`, or 500 on `/boom`.
async fn app(name: &'static str) -> Backend {
    Backend::start(move |req| async move {
        if req.uri().path() == "/boom" {
            text(StatusCode::INTERNAL_SERVER_ERROR, "boom\n")
        } else {
            text(StatusCode::OK, &format!("{name}\n"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_by_version_code_and_reason_are_exact() {
    let (stable, canary) = (app("stable").await, app("canary").await);
    let proxy = Proxy::start(&config(stable.addr, canary.addr, 100.0, LOG_OFF));
    let mut client = Client::connect(proxy.addr()).await;

    // 3 new users, all on the canary at 100%; one of them hits /boom.
    let mut keys = Vec::new();
    for path in ["/", "/", "/boom"] {
        let got = client.get(path, &[]).await;
        keys.push(got.set_cookie("cutover_id").expect("minted key"));
    }
    // 2 returning users, 1 API client by header, 1 beta opt-out (stable).
    let cookie = format!("cutover_id={}", keys[0]);
    for _ in 0..2 {
        assert_eq!(client.get("/", &[("cookie", &cookie)]).await.first_line(), "canary");
    }
    assert_eq!(client.get("/", &[("x-user-id", "api-client-1")]).await.first_line(), "canary");
    let never = format!("{cookie}; cutover_beta=never");
    assert_eq!(client.get("/", &[("cookie", &never)]).await.first_line(), "stable");
    // Halted: 2 requests to stable, one of them a 500.
    let (status, body) = proxy.admin_call(Method::POST, "/v1/routes/web/rollback", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(client.get("/", &[("cookie", &cookie)]).await.first_line(), "stable");
    assert_eq!(client.get("/boom", &[("cookie", &cookie)]).await.status, StatusCode::INTERNAL_SERVER_ERROR);
    // No route for this host: 404, counted apart.
    let req = Request::get("/").header("host", "nowhere.test").body(empty()).unwrap();
    assert_eq!(client.send(req).await.status, StatusCode::NOT_FOUND);

    let m = proxy.metrics();
    assert_eq!(requests(&m, "canary", "200"), 5.0, "{m}");
    assert_eq!(requests(&m, "canary", "500"), 1.0);
    assert_eq!(requests(&m, "stable", "200"), 2.0);
    assert_eq!(requests(&m, "stable", "500"), 1.0);
    assert_eq!(assignments(&m, "canary", "new"), 3.0);
    assert_eq!(assignments(&m, "canary", "returning"), 2.0);
    assert_eq!(assignments(&m, "canary", "header"), 1.0);
    assert_eq!(assignments(&m, "stable", "beta"), 1.0);
    assert_eq!(assignments(&m, "stable", "halted"), 2.0);
    for reason in ["new", "returning", "header", "beta", "fallback", "halted"] {
        // Every reason's series exists from the start, at 0 when unused.
        for version in ["stable", "canary"] {
            let s = series("cutover_assignments_total", &[("route", "web"), ("version", version), ("reason", reason)]);
            assert!(m.contains(&format!("{s} ")), "{s} missing");
        }
    }
    let count =
        |v: &str| metric(&m, &series("cutover_request_duration_seconds_count", &[("route", "web"), ("version", v)]));
    assert_eq!((count("canary"), count("stable")), (6.0, 3.0));
    assert_eq!(metric(&m, r#"cutover_unrouted_requests_total{code="404"}"#), 1.0);
    assert_eq!(metric(&m, r#"cutover_rollbacks_total{route="web",trigger="manual"}"#), 1.0);
    assert!(m.contains(r#"cutover_rollbacks_total{route="web",trigger="error_rate"} 0"#), "{m}");
    assert_eq!(metric(&m, r#"cutover_route_halted{route="web"}"#), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_is_counted_when_the_canary_pool_is_down() {
    let stable = app("stable").await;
    let dead = dead_addr();
    let extra = format!("{LOG_OFF}\n[retries]\nattempts = 0\n");
    let proxy = Proxy::start(
        &config(stable.addr, dead, 100.0, &extra)
            .replace("[pools.canary]", "[pools.canary]\neject = { after = 1, base = \"60s\", max = \"60s\" }"),
    );
    // The first canary request fails to connect: 502, and the backend is ejected.
    assert_eq!(get(proxy.addr(), "/", &[("x-user-id", "u1")]).await.status, StatusCode::BAD_GATEWAY);
    let healthy = series("cutover_backend_healthy", &[("pool", "canary"), ("backend", &dead.to_string())]);
    assert!(eventually(Duration::from_secs(5), || proxy.metrics().contains(&format!("{healthy} 0"))).await);
    for _ in 0..4 {
        assert_eq!(get(proxy.addr(), "/", &[("x-user-id", "u1")]).await.first_line(), "stable");
    }
    let m = proxy.metrics();
    assert_eq!(assignments(&m, "canary", "header"), 1.0, "{m}");
    assert_eq!(assignments(&m, "stable", "fallback"), 4.0);
    assert_eq!(requests(&m, "canary", "502"), 1.0);
    assert_eq!(requests(&m, "stable", "200"), 4.0);
    let errors = |kind| {
        metric(&m, &series("cutover_upstream_errors_total", &[("route", "web"), ("version", "canary"), ("kind", kind)]))
    };
    assert_eq!(errors("connect"), 1.0);
}

/// A raw TCP backend: `reply` is written after the request head is read,
/// then the connection closes (an empty reply is a reset: closed before a
/// response).
async fn raw_backend(reply: &'static [u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(reply).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_are_counted_by_kind() {
    let slow = Backend::start(|_req| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        text(StatusCode::OK, "late\n")
    })
    .await;
    let reset = raw_backend(b"").await;
    let garbage = raw_backend(b"this is not HTTP\r\n\r\n").await;
    let dead = dead_addr();
    let mut toml = String::from(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n[timeouts]\nresponse = \"300ms\"\n\
         [log]\naccess = \"off\"\n[retries]\nattempts = 0\n",
    );
    for (name, addr) in [("timeout", slow.addr), ("reset", reset), ("protocol", garbage), ("connect", dead)] {
        toml.push_str(&format!(
            "[[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\nstable = \"{name}\"\n\
             [pools.{name}]\nbackends = [\"{addr}\"]\n"
        ));
    }
    let proxy = Proxy::start(&toml);
    let expected = [("timeout", 504), ("reset", 502), ("protocol", 502), ("connect", 502)];
    for (name, code) in expected {
        assert_eq!(get(proxy.addr(), &format!("/{name}"), &[]).await.status.as_u16(), code, "/{name}");
    }
    let m = proxy.metrics();
    for (route, code) in expected {
        for kind in ["connect", "timeout", "reset", "protocol"] {
            let s = series("cutover_upstream_errors_total", &[("route", route), ("version", "stable"), ("kind", kind)]);
            assert_eq!(metric(&m, &s), f64::from(u8::from(route == kind)), "{s}\n{m}");
        }
        let s =
            series("cutover_requests_total", &[("route", route), ("version", "stable"), ("code", &code.to_string())]);
        assert_eq!(metric(&m, &s), 1.0, "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_follow_admin_changes() {
    let (stable, canary) = (app("stable").await, app("canary").await);
    let proxy = Proxy::start(&config(stable.addr, canary.addr, 5.0, LOG_OFF));
    let gauge = |name: &str| metric(&proxy.metrics(), &format!("{name}{{route=\"web\"}}"));
    assert_eq!(gauge("cutover_canary_weight_ratio"), 0.05);
    assert_eq!(gauge("cutover_route_halted"), 0.0);
    assert_eq!(gauge("cutover_rollout_step"), -1.0);

    proxy.set_weight("web", 25.5).await;
    assert_eq!(gauge("cutover_canary_weight_ratio"), 0.255);

    let plan = serde_json::json!({"steps": [10, 50, 100], "interval": "1h", "max_error_rate": 0.05});
    let (status, body) = proxy.admin_call(Method::POST, "/v1/routes/web/rollout", Some(plan)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(gauge("cutover_rollout_step"), 0.0);
    assert_eq!(gauge("cutover_canary_weight_ratio"), 0.1);
    let (status, body) = proxy.admin_call(Method::DELETE, "/v1/routes/web/rollout", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(gauge("cutover_rollout_step"), -1.0);

    let (status, _) = proxy.admin_call(Method::POST, "/v1/routes/web/rollback", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((gauge("cutover_canary_weight_ratio"), gauge("cutover_route_halted")), (0.0, 1.0));
    let (status, _) = proxy.admin_call(Method::POST, "/v1/routes/web/promote", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((gauge("cutover_canary_weight_ratio"), gauge("cutover_route_halted")), (1.0, 0.0));
    let m = proxy.metrics();
    assert_eq!(metric(&m, r#"cutover_route_info{canary="canary",route="web",stable="stable"}"#), 1.0, "{m}");
    let healthy = series("cutover_backend_healthy", &[("pool", "stable"), ("backend", &stable.addr.to_string())]);
    assert_eq!(metric(&m, &healthy), 1.0);
}

/// GET /metrics over HTTP from the metrics listener.
async fn scrape(proxy: &Proxy) -> String {
    let addr = proxy.running.metrics_addr.expect("metrics listener");
    let got = get(addr, "/metrics", &[]).await;
    assert_eq!(got.status, StatusCode::OK);
    let content_type = got.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "content-type {content_type:?}");
    got.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_passes_promtool_check() {
    let (stable, canary) = (app("stable").await, app("canary").await);
    let proxy = Proxy::start(&config(stable.addr, canary.addr, 50.0, LOG_OFF));
    let mut client = Client::connect(proxy.addr()).await;
    for path in ["/", "/boom", "/"] {
        client.get(path, &[]).await;
    }
    let text = scrape(&proxy).await;
    for family in [
        "cutover_requests_total",
        "cutover_request_duration_seconds",
        "cutover_upstream_errors_total",
        "cutover_assignments_total",
        "cutover_canary_weight_ratio",
        "cutover_route_halted",
        "cutover_route_info",
        "cutover_backend_healthy",
        "cutover_rollout_step",
        "cutover_rollbacks_total",
        "cutover_config_reloads_total",
        "cutover_config_last_reload_success_timestamp_seconds",
        "cutover_open_connections",
        "cutover_config_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(&format!("# TYPE {family} ")), "no {family} family:\n{text}");
        assert!(text.contains(&format!("# HELP {family} ")), "no HELP for {family}");
    }
    assert_eq!(metric(&text, r#"cutover_open_connections{listener="http"}"#), 1.0, "{text}");
    assert_eq!(metric(&text, r#"cutover_config_reloads_total{result="success"}"#), 1.0);
    assert!(metric(&text, "cutover_config_last_reload_success_timestamp_seconds") > 1.7e9);

    let mut child = match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => panic!("promtool is required (Debian package `prometheus`) and could not run: {e}"),
    };
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && report.trim().is_empty(), "promtool check metrics:\n{report}\n---\n{text}");
}

/// The `hash` label of `cutover_config_info`.
fn config_hashes(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("cutover_config_info{hash=\""))
        .filter_map(|rest| rest.split('"').next().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_removes_a_removed_routes_series_and_changes_the_config_hash() {
    let (stable, canary) = (app("stable").await, app("canary").await);
    let api = "[[routes]]\nname = \"api\"\nhost = \"api.example.com\"\nstable = \"stable\"\ncanary = \"canary\"\nweight = 50\n";
    let before = config(stable.addr, canary.addr, 50.0, LOG_OFF).replace("[[routes]]", &format!("{api}\n[[routes]]"));
    let proxy = Proxy::start(&before);
    let mut client = Client::connect(proxy.addr()).await;
    let req = Request::get("/").header("host", "api.example.com").body(empty()).unwrap();
    assert_eq!(client.send(req).await.status, StatusCode::OK);
    let m = proxy.metrics();
    assert!(m.contains(r#"route="api""#));
    let hash_before = config_hashes(&m);
    assert_eq!(hash_before.len(), 1, "{m}");

    let after = config(stable.addr, canary.addr, 50.0, LOG_OFF);
    std::fs::write(&proxy.config_path, after.replace("{dir}", &proxy.dir.path().display().to_string())).unwrap();
    let (status, body) = proxy.admin_call(Method::POST, "/v1/reload", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let m = scrape(&proxy).await;
    let stale: Vec<&str> = m.lines().filter(|l| l.contains(r#"route="api""#)).collect();
    assert!(stale.is_empty(), "series of the removed route remain: {stale:#?}");
    assert!(m.contains(r#"route="web""#));
    let hash_after = config_hashes(&m);
    assert_eq!(hash_after.len(), 1, "one config_info series: {hash_after:?}");
    assert_ne!(hash_after, hash_before);
    assert_eq!(metric(&m, r#"cutover_config_reloads_total{result="success"}"#), 2.0);

    // An invalid file is rejected and counted; the hash stays.
    std::fs::write(&proxy.config_path, "[[routes]]\nname = 1\n").unwrap();
    let (status, _) = proxy.admin_call(Method::POST, "/v1/reload", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let m = proxy.metrics();
    assert_eq!(metric(&m, r#"cutover_config_reloads_total{result="failure"}"#), 1.0);
    assert_eq!(config_hashes(&m), hash_after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_relabels_a_route_whose_pools_changed_and_keeps_the_counts_of_the_rest() {
    let (stable, canary) = (app("stable").await, app("canary").await);
    let api = "[[routes]]\nname = \"api\"\nhost = \"api.example.com\"\nstable = \"stable\"\ncanary = \"canary\"\nweight = 0\n";
    let before = config(stable.addr, canary.addr, 0.0, LOG_OFF).replace("[[routes]]", &format!("{api}\n[[routes]]"));
    let proxy = Proxy::start(&before);
    let mut client = Client::connect(proxy.addr()).await;
    for host in ["example.com", "example.com", "api.example.com"] {
        let req = Request::get("/").header("host", host).body(empty()).unwrap();
        assert_eq!(client.send(req).await.status, StatusCode::OK);
    }

    // "web" now has no canary; "api" is unchanged.
    let web_without_canary = config(stable.addr, canary.addr, 0.0, LOG_OFF)
        .replace("canary = \"canary\"\nweight = 0", "weight = 0")
        .replace("[[routes]]", &format!("{api}\n[[routes]]"));
    std::fs::write(&proxy.config_path, web_without_canary.replace("{dir}", &proxy.dir.path().display().to_string()))
        .unwrap();
    let (status, body) = proxy.admin_call(Method::POST, "/v1/reload", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let m = scrape(&proxy).await;
    let info: Vec<&str> = m.lines().filter(|l| l.starts_with("cutover_route_info{")).collect();
    for want in [
        r#"cutover_route_info{canary="",route="web",stable="stable"} 1"#,
        r#"cutover_route_info{canary="canary",route="api",stable="stable"} 1"#,
    ] {
        assert!(info.contains(&want), "no {want} in {info:#?}");
    }
    assert_eq!(info.len(), 2, "one route_info series per route: {info:#?}");
    assert!(!m.contains(r#"cutover_route_info{canary="canary",route="web""#), "stale pool labels:\n{m}");
    // The unchanged route's counters carry on across the reload.
    let api_ok = series("cutover_requests_total", &[("route", "api"), ("version", "stable"), ("code", "200")]);
    assert_eq!(metric(&m, &api_ok), 1.0, "{m}");
    let req = Request::get("/").header("host", "api.example.com").body(empty()).unwrap();
    assert_eq!(client.send(req).await.status, StatusCode::OK);
    assert_eq!(metric(&proxy.metrics(), &api_ok), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_are_json_with_every_field_and_exact_bytes() {
    let (stable, canary) = (app("stable").await, app("canary").await);
    let log = "[log]\naccess = \"json\"\naccess_path = \"{dir}/logs/access.log\"\n";
    let proxy = Proxy::start(&config(stable.addr, canary.addr, 0.0, log));
    let mut client = Client::connect(proxy.addr()).await;
    let got = client.get("/a?q=1", &[("x-user-id", "u1")]).await;
    assert_eq!(got.body, "stable\n");
    let post = Request::post("/form").header("host", "example.com").body(full("hello, world")).unwrap();
    assert_eq!(client.send(post).await.first_line(), "stable");
    let beta = client.get("/b", &[("cookie", "cutover_id=k1; cutover_beta=always")]).await;
    assert_eq!(beta.body, "canary\n");
    let req = Request::get("/missing").header("host", "nowhere.test").body(empty()).unwrap();
    assert_eq!(client.send(req).await.status, StatusCode::NOT_FOUND);

    let path = proxy.dir.path().join("logs/access.log");
    let read = || std::fs::read_to_string(&path).unwrap_or_default();
    assert!(eventually(Duration::from_secs(5), || read().lines().count() >= 4).await, "log: {}", read());
    let lines: Vec<serde_json::Value> =
        read().lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert_eq!(lines.len(), 4);
    let fields = [
        "time",
        "client",
        "method",
        "path",
        "status",
        "route",
        "version",
        "reason",
        "backend",
        "duration_ms",
        "bytes_in",
        "bytes_out",
    ];
    for line in &lines {
        let object = line.as_object().expect("a JSON object");
        for field in fields {
            assert!(object.contains_key(field), "no {field} in {line}");
        }
        assert_eq!(object.len(), fields.len(), "{line}");
        assert_eq!(line["client"], "127.0.0.1");
        assert!(line["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{line}");
        let time = line["time"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(time).is_ok(), "time {time}");
    }
    let stable_backend = stable.addr.to_string();
    let canary_backend = canary.addr.to_string();
    let summary: Vec<_> = lines
        .iter()
        .map(|l| {
            (
                l["method"].as_str().unwrap(),
                l["path"].as_str().unwrap(),
                l["status"].as_u64().unwrap(),
                l["route"].as_str(),
                l["version"].as_str(),
                l["reason"].as_str(),
                l["backend"].as_str(),
                l["bytes_in"].as_u64().unwrap(),
                l["bytes_out"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("GET", "/a", 200, Some("web"), Some("stable"), Some("header"), Some(stable_backend.as_str()), 0, 7),
            ("POST", "/form", 200, Some("web"), Some("stable"), Some("new"), Some(stable_backend.as_str()), 12, 7),
            ("GET", "/b", 200, Some("web"), Some("canary"), Some("beta"), Some(canary_backend.as_str()), 0, 7),
            // The proxy's own answer: "404 Not Found: no route for this host and path\n".
            ("GET", "/missing", 404, None, None, None, None, 0, 47),
        ]
    );
    assert_eq!(metric(&proxy.metrics(), "cutover_access_log_dropped_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_errors_name_the_backend_tried_and_count_the_assignment_when_every_pool_is_down() {
    let (dead_stable, dead_canary) = (dead_addr(), dead_addr());
    let extra = "[log]\naccess = \"json\"\naccess_path = \"{dir}/logs/access.log\"\n\n[retries]\nattempts = 0\n";
    let eject = "eject = { after = 1, base = \"60s\", max = \"60s\" }";
    let proxy = Proxy::start(
        &config(dead_stable, dead_canary, 0.0, extra)
            .replace("[pools.stable]", &format!("[pools.stable]\n{eject}"))
            .replace("[pools.canary]", &format!("[pools.canary]\n{eject}")),
    );
    let ejected = |pool: &str, addr: SocketAddr| {
        let healthy = series("cutover_backend_healthy", &[("pool", pool), ("backend", &addr.to_string())]);
        let proxy = &proxy;
        async move { eventually(Duration::from_secs(5), || proxy.metrics().contains(&format!("{healthy} 0"))).await }
    };
    // Stable refuses the connection: 502, and stable is ejected.
    assert_eq!(get(proxy.addr(), "/", &[("x-user-id", "u1")]).await.status, StatusCode::BAD_GATEWAY);
    assert!(ejected("stable", dead_stable).await);
    // The fallback to the canary is refused too: 502, and the canary is ejected.
    assert_eq!(get(proxy.addr(), "/", &[("x-user-id", "u1")]).await.status, StatusCode::BAD_GATEWAY);
    assert!(ejected("canary", dead_canary).await);
    // Both pools down: 502 without an attempt, still an assignment.
    let got = get(proxy.addr(), "/", &[("x-user-id", "u1")]).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(got.body, "502 Bad Gateway: no healthy backend\n");

    let m = proxy.metrics();
    assert_eq!(assignments(&m, "stable", "header"), 2.0, "{m}");
    assert_eq!(assignments(&m, "canary", "fallback"), 1.0, "{m}");
    assert_eq!(requests(&m, "stable", "502"), 2.0);
    assert_eq!(requests(&m, "canary", "502"), 1.0);

    let path = proxy.dir.path().join("logs/access.log");
    let read = || std::fs::read_to_string(&path).unwrap_or_default();
    assert!(eventually(Duration::from_secs(5), || read().lines().count() >= 3).await, "log: {}", read());
    let lines: Vec<serde_json::Value> = read().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let summary: Vec<_> = lines
        .iter()
        .map(|l| (l["status"].as_u64().unwrap(), l["version"].as_str(), l["reason"].as_str(), l["backend"].as_str()))
        .collect();
    let (stable_text, canary_text) = (dead_stable.to_string(), dead_canary.to_string());
    assert_eq!(
        summary,
        vec![
            (502, Some("stable"), Some("header"), Some(stable_text.as_str())),
            (502, Some("canary"), Some("fallback"), Some(canary_text.as_str())),
            (502, Some("stable"), Some("header"), None),
        ]
    );
}

/// Every string under an `expr` key, anywhere in the dashboard.
fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// Identifiers that look like metric names (`cutover_…`, `process_…`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        let word = &expr[start..i];
        let quoted = start > 0 && bytes[start - 1] == b'"';
        if !quoted && (word.starts_with("cutover_") || word.starts_with("process_")) {
            names.push(word.to_string());
        }
        i += usize::from(i == start);
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_dashboard_queries_parse_and_use_exported_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("valid JSON");
    let variables: Vec<&str> =
        dashboard["templating"]["list"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(variables, ["datasource", "route"]);
    assert_eq!(dashboard["templating"]["list"][0]["type"], "datasource");
    let titles: Vec<&str> =
        dashboard["panels"].as_array().unwrap().iter().map(|p| p["title"].as_str().unwrap()).collect();
    for wanted in [
        "Request rate",
        "Error rate",
        "p99",
        "drift",
        "Rollbacks",
        "Rollout step",
        "Backend health",
        "Open connections",
        "Config reloads",
    ] {
        assert!(titles.iter().any(|t| t.contains(wanted)), "no panel about {wanted}: {titles:?}");
    }
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    assert!(all.len() >= 12, "{all:?}");

    let (stable, canary) = (app("stable").await, app("canary").await);
    let proxy = Proxy::start(&config(stable.addr, canary.addr, 50.0, LOG_OFF));
    let text = proxy.metrics();
    let families: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in all.iter().enumerate() {
        for name in metric_names(expr) {
            let family = ["_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
            assert!(
                families.contains(&family) || families.contains(&name.as_str()),
                "{name} is not exported (in {expr})"
            );
        }
        let concrete = expr.replace("$route", ".*").replace("$__rate_interval", "1m").replace("$__range", "1h");
        rules.push_str(&format!(
            "      - record: dashboard:expr_{i}\n        expr: {}\n",
            serde_json::to_string(&concrete).unwrap()
        ));
    }
    // promtool parses every query (YAML accepts JSON strings).
    let file = proxy.dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, &rules).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("promtool is required (Debian package `prometheus`) and could not run: {e}"));
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
