//! `cutover ctl dashboard`, server side (DESIGN §8): the token and Host
//! checks, CSRF, each action mapped to its admin call (checked through the
//! admin API), refusals passed through, and the history it charts
//! (`GET /v1/history`). The page in a real browser: tests/dashboard_browser.rs.

mod common;

use std::time::Duration;

use common::*;
use cutover::dashboard::{self, CSRF_HEADER, Dashboard};
use http::{Method, Request, StatusCode};
use serde_json::{Value, json};

/// A logged-in browser session, as raw requests.
struct Session {
    host: String,
    cookie: String,
    csrf: String,
}

async fn send(d: &Dashboard, method: Method, path: &str, headers: &[(&str, &str)], body: Option<Value>) -> Got {
    let mut b = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        b = b.header("host", d.addr.to_string());
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let body = body.map_or_else(empty, |v| full(v.to_string()));
    Client::connect(d.addr).await.send(b.body(body).unwrap()).await
}

fn path_of(url: &str) -> &str {
    &url[url.find("/?").expect("a URL with ?token=")..]
}

async fn login(d: &Dashboard) -> Session {
    let got = send(d, Method::GET, path_of(&d.url), &[], None).await;
    assert_eq!(got.status, StatusCode::SEE_OTHER, "{}", got.body);
    assert_eq!(got.headers["location"], "/", "the token leaves the address bar");
    let name = format!("cutover_dashboard_{}", d.addr.port());
    let set = got.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    let cookie = format!("{name}={}", got.set_cookie(&name).expect("a session cookie"));
    let page = send(d, Method::GET, "/", &[("cookie", &cookie)], None).await;
    assert_eq!(page.status, StatusCode::OK);
    let csrf = page.body.split("name=\"csrf\" content=\"").nth(1).and_then(|r| r.split('"').next()).unwrap();
    assert_eq!(csrf.len(), 64, "{csrf}");
    Session { host: d.addr.to_string(), cookie, csrf: csrf.to_string() }
}

impl Session {
    async fn post(&self, d: &Dashboard, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let origin = format!("http://{}", self.host);
        let headers = [
            ("cookie", self.cookie.as_str()),
            (CSRF_HEADER, self.csrf.as_str()),
            ("origin", origin.as_str()),
            ("content-type", "application/json"),
        ];
        let got = send(d, Method::POST, path, &headers, body).await;
        (got.status, serde_json::from_str(&got.body).unwrap_or_else(|_| json!(got.body)))
    }

    async fn get(&self, d: &Dashboard, path: &str) -> (StatusCode, Value) {
        let got = send(d, Method::GET, path, &[("cookie", self.cookie.as_str())], None).await;
        (got.status, serde_json::from_str(&got.body).unwrap_or_else(|_| json!(got.body)))
    }
}

async fn setup() -> (Backend, Backend, Proxy, Dashboard) {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let proxy = Proxy::start(&two_pool_config(stable.addr, canary.addr, 5.0, ""));
    let d = dashboard::start(proxy.admin(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    (stable, canary, proxy, d)
}

async fn route(proxy: &Proxy) -> Value {
    proxy.admin_call(Method::GET, "/v1/routes/web", None).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_required_and_only_our_host_is_served() {
    let (_s, _c, _proxy, d) = setup().await;
    assert_ne!(d.addr.port(), 0, "the real port");
    assert!(d.url.starts_with(&format!("http://{}/?token=", d.addr)), "{}", d.url);

    for path in ["/", "/api/state", "/assets/app.js", "/?token=wrong", "/?token="] {
        let got = send(&d, Method::GET, path, &[], None).await;
        assert_eq!(got.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let got = send(&d, Method::POST, "/api/routes/web/rollback", &[], None).await;
    assert_eq!(got.status, StatusCode::UNAUTHORIZED);

    // DNS rebinding: the right token under another name is still refused.
    let port = d.addr.port().to_string();
    for host in [format!("evil.example:{port}"), format!("localhost:{port}"), "127.0.0.1".to_string()] {
        let got = send(&d, Method::GET, path_of(&d.url), &[("host", &host)], None).await;
        assert_eq!(got.status, StatusCode::MISDIRECTED_REQUEST, "{host}");
        assert!(got.headers.get("set-cookie").is_none());
    }

    let s = login(&d).await;
    let (status, _) = s.get(&d, "/api/state").await;
    assert_eq!(status, StatusCode::OK);
    let got = send(&d, Method::GET, "/api/state", &[("cookie", &s.cookie), ("host", "evil.example")], None).await;
    assert_eq!(got.status, StatusCode::MISDIRECTED_REQUEST, "a session cookie does not lift the Host check");
    // The signature's last character changed (to one it is not: the first
    // version of this line changed it to '0', which it is one time in 16).
    let last = if s.cookie.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &s.cookie[..s.cookie.len() - 1]);
    assert_ne!(forged, s.cookie);
    let got = send(&d, Method::GET, "/api/state", &[("cookie", &forged)], None).await;
    assert_eq!(got.status, StatusCode::UNAUTHORIZED, "a forged session");

    let page = send(&d, Method::GET, "/", &[("cookie", &s.cookie)], None).await;
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert_eq!(page.headers["referrer-policy"], "no-referrer");
    for asset in ["/assets/app.js", "/assets/style.css"] {
        let got = send(&d, Method::GET, asset, &[("cookie", &s.cookie)], None).await;
        assert_eq!(got.status, StatusCode::OK, "{asset}");
        assert!(!got.body.contains("http://") && !got.body.contains("https://"), "{asset} names no other origin");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_need_the_sessions_csrf_token_and_our_origin() {
    let (_s, _c, proxy, d) = setup().await;
    let s = login(&d).await;
    let other = login(&d).await;
    let origin = format!("http://{}", d.addr);
    let refused: [Vec<(&str, &str)>; 4] = [
        vec![("cookie", &s.cookie), ("origin", &origin)],
        vec![("cookie", &s.cookie), (CSRF_HEADER, &other.csrf)],
        vec![("cookie", &s.cookie), (CSRF_HEADER, &s.csrf), ("origin", "http://evil.example")],
        vec![("cookie", &s.cookie), (CSRF_HEADER, &s.csrf), ("sec-fetch-site", "cross-site")],
    ];
    for headers in &refused {
        let got = send(&d, Method::POST, "/api/routes/web/rollback", headers, None).await;
        assert_eq!(got.status, StatusCode::FORBIDDEN, "{headers:?}");
        assert!(got.body.contains("\"error\""), "{}", got.body);
    }
    assert_eq!(route(&proxy).await["halted"], json!(false), "no refused request reached the proxy");
    let got = send(&d, Method::GET, "/api/routes/web/rollback", &[("cookie", &s.cookie)], None).await;
    assert_eq!(got.status, StatusCode::METHOD_NOT_ALLOWED, "a GET changes nothing");
    assert_eq!(route(&proxy).await["halted"], json!(false));

    let (status, body) = s.post(&d, "/api/routes/web/rollback", None).await;
    assert_eq!((status, &body["halted"]), (StatusCode::OK, &json!(true)), "{body}");
    assert_eq!(route(&proxy).await["halted"], json!(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_is_its_admin_call() {
    let (_s, _c, proxy, d) = setup().await;
    let s = login(&d).await;
    let post = |path: &'static str, body: Option<Value>| {
        let s = &s;
        let d = &d;
        async move {
            let (status, body) = s.post(d, &format!("/api/routes/web/{path}"), body).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            body
        }
    };
    post("weight", Some(json!({ "weight": 12.5 }))).await;
    assert_eq!(route(&proxy).await["weight"], json!(12.5));
    post("promote", None).await;
    assert_eq!(route(&proxy).await["weight"], json!(100.0));
    post("rollback", None).await;
    let r = route(&proxy).await;
    assert_eq!((&r["weight"], &r["halted"]), (&json!(0.0), &json!(true)));
    let plan = json!({"steps": [10, 50, 100], "interval": "10m", "max_error_rate": 0.05, "max_p99": "900ms", "min_requests": 10});
    post("rollout", Some(plan)).await;
    let r = route(&proxy).await;
    assert_eq!((&r["weight"], &r["halted"], &r["rollout"]["step"]), (&json!(10.0), &json!(false), &json!(1)));
    assert_eq!((&r["rollout"]["max_p99_ms"], &r["rollout"]["min_requests"]), (&json!(900.0), &json!(10)));
    post("pause", None).await;
    assert_eq!(route(&proxy).await["rollout"]["paused"], json!(true));
    post("resume", None).await;
    assert_eq!(route(&proxy).await["rollout"]["paused"], json!(false));
    post("abort", None).await;
    let r = route(&proxy).await;
    assert_eq!((&r["rollout"], &r["weight"]), (&Value::Null, &json!(10.0)), "abort keeps the weight");

    let (_, events) = proxy.admin_call(Method::GET, "/v1/events", None).await;
    let kinds: Vec<&str> = events["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["weight", "promote", "rollback", "rollout_start", "rollout_pause", "rollout_resume", "rollout_abort"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_pass_through_with_the_apis_message() {
    let (_s, _c, proxy, d) = setup().await;
    let s = login(&d).await;
    let (status, _) = s.post(&d, "/api/routes/web/rollout", Some(json!({"steps": [10, 100], "interval": "10m"}))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = s.post(&d, "/api/routes/web/weight", Some(json!({ "weight": 30 }))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let direct = proxy.admin_call(Method::PUT, "/v1/routes/web/weight", Some(json!({ "weight": 30 }))).await;
    assert_eq!((status, &body), (direct.0, &direct.1), "the admin API's answer, unchanged");
    assert!(body["error"].as_str().unwrap().contains("rollout in progress"), "{body}");

    let (status, body) = s.post(&d, "/api/routes/nope/promote", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], json!("no route named \"nope\""));
    let (status, body) =
        s.post(&d, "/api/routes/web/rollout", Some(json!({"steps": [50, 10], "interval": "1m"}))).await;
    assert_eq!((status, &body["error"]), (StatusCode::BAD_REQUEST, &json!("steps must increase")));
    let (status, body) = s.post(&d, "/api/routes/web/weight", Some(json!([1]))).await;
    assert_eq!((status, &body["error"]), (StatusCode::BAD_REQUEST, &json!("the body must be a JSON object")));
    let (status, _) = s.post(&d, "/api/routes/web/explode", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The admin listener gone: 502 with the reason, for the page to show.
    let Proxy { running, dir, .. } = proxy;
    running.shutdown();
    let (status, body) = s.post(&d, "/api/routes/web/rollback", None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body["error"].as_str().unwrap().starts_with("cannot reach the admin API at unix:"), "{body}");
    let (status, _) = s.get(&d, "/api/state").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_brings_events_routes_and_history_and_waits_for_an_event() {
    let (_s, _c, proxy, d) = setup().await;
    let s = login(&d).await;
    let (status, v) = s.get(&d, "/api/state?since=0&history=0&wait=0").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["events"], json!([]));
    assert_eq!(v["status"]["routes"][0]["name"], json!("web"));
    assert_eq!(v["history"]["interval_ms"], json!(2000));
    assert_eq!(v["fleet"], Value::Null, "a single instance has no fleet");
    let (status, _) = s.get(&d, "/api/state?since=x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Held until an event arrives, then answered at once.
    let held = {
        let cookie = s.cookie.clone();
        let (addr, host) = (d.addr, s.host.clone());
        tokio::spawn(async move {
            let req = Request::get("/api/state?since=0&wait=20")
                .header("host", host)
                .header("cookie", cookie)
                .body(empty())
                .unwrap();
            let started = std::time::Instant::now();
            let got = Client::connect(addr).await.send(req).await;
            (got, started.elapsed())
        })
    };
    proxy.set_weight("web", 40.0).await;
    let (got, took) = held.await.unwrap();
    let v: Value = serde_json::from_str(&got.body).unwrap();
    assert_eq!(v["events"][0]["kind"], json!("weight"), "{v}");
    assert_eq!(v["status"]["routes"][0]["weight"], json!(40.0));
    assert!(took < Duration::from_secs(15), "answered when the event came, not at the end of the wait: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_counts_the_proxys_requests() {
    let (_s, _c, proxy, _d) = setup().await;
    let (status, v) = proxy.admin_call(Method::GET, "/v1/history", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (&v["interval_ms"], &v["capacity"], &v["columns"]),
        (&json!(2000), &json!(450), &json!(["time_ms", "seconds", "requests", "errors", "p99_ms"]))
    );
    assert!(v["started_ms"].as_u64().unwrap() > 1_700_000_000_000);
    for (path, status) in [
        ("/v1/routes/web/history", StatusCode::OK),
        ("/v1/routes/nope/history", StatusCode::NOT_FOUND),
        ("/v1/history?since=soon", StatusCode::BAD_REQUEST),
        ("/v1/history?limit=3", StatusCode::BAD_REQUEST),
    ] {
        assert_eq!(proxy.admin_call(Method::GET, path, None).await.0, status, "{path}");
    }
    let (status, _) = proxy.admin_call(Method::POST, "/v1/history", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    for _ in 0..10 {
        get(proxy.addr(), "/", &[("cookie", "cutover_beta=always")]).await;
    }
    let sum = |v: &Value, version: &str, column: usize| -> u64 {
        let points = v["routes"][0]["versions"][version].as_array();
        points.into_iter().flatten().map(|p| p[column].as_u64().unwrap()).sum()
    };
    // One sample is enough (every 2 s); allow many on loaded machines.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = proxy.admin_call(Method::GET, "/v1/routes/web/history", None).await;
        if sum(&v, "canary", 2) == 10 {
            assert_eq!((sum(&v, "stable", 2), sum(&v, "canary", 3)), (0, 0), "{v}");
            let point = v["routes"][0]["versions"]["canary"].as_array().unwrap().iter().find(|p| p[2] != 0).unwrap();
            assert!(point[4].as_f64().unwrap() > 0.0, "a p99 for an interval with requests: {point}");
            let last = v["routes"][0]["versions"]["canary"].as_array().unwrap().last().unwrap()[0].as_u64().unwrap();
            let (_, later) = proxy.admin_call(Method::GET, &format!("/v1/history?since={last}"), None).await;
            for p in later["routes"][0]["versions"]["canary"].as_array().unwrap() {
                assert!(p[0].as_u64().unwrap() > last, "only points after `since`: {p}");
            }
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the history never counted the 10 requests: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_is_passed_on_when_the_admin_api_has_one() {
    // A stand-in admin API over TCP: the bridge sends ctl's bearer token.
    let fleet = json!({"replicas": [{"name": "proxy-a", "config_hash": "abc", "connected": true}]});
    let answer = fleet.clone();
    let admin = Backend::start(move |req| {
        let answer = answer.clone();
        async move {
            let authorized = req.headers().get("authorization").is_some_and(|v| v == "Bearer s3cret");
            let body = match req.uri().path() {
                _ if !authorized => return text(StatusCode::UNAUTHORIZED, "{}"),
                "/v1/events" => json!({"events": []}),
                "/v1/routes" => json!({"routes": [], "reload": {}}),
                "/v1/fleet" => answer,
                _ => return text(StatusCode::NOT_FOUND, r#"{"error": "no endpoint"}"#),
            };
            text(StatusCode::OK, &body.to_string())
        }
    })
    .await;
    let target =
        cutover::ctl::Target { listen: cutover::config::AdminListen::Tcp(admin.addr), token: Some("s3cret".into()) };
    let d = dashboard::start(target, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let s = login(&d).await;
    let (status, v) = s.get(&d, "/api/state").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!((&v["fleet"], &v["history"]), (&fleet, &Value::Null), "no history endpoint: no charts, still a page");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_dashboard_prints_its_url_with_the_real_port() {
    use std::io::BufRead;
    let (_s, _c, proxy, _d) = setup().await;
    let admin = match proxy.admin().listen {
        cutover::config::AdminListen::Unix(p) => format!("unix:{}", p.display()),
        cutover::config::AdminListen::Tcp(a) => a.to_string(),
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["ctl", "--admin", &admin, "dashboard", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start cutover ctl dashboard");
    let stdout = child.stdout.take().unwrap();
    // Bounded: the URL is among the first lines, or the process ended, or
    // the wait times out (and the kill below ends the reader).
    let reader = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout).lines().take(10).map_while(Result::ok).find_map(|l| {
            l.trim().strip_prefix("http://127.0.0.1:").filter(|rest| rest.contains("/?token=")).map(str::to_string)
        })
    });
    let url = tokio::time::timeout(Duration::from_secs(30), reader).await;
    let Ok(Ok(Some(url))) = url else {
        let _ = child.kill();
        panic!("no URL on stdout: {url:?}");
    };
    let (port, rest) = url.split_once('/').unwrap();
    assert_ne!(port, "0", "the real port");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let req = Request::get(format!("/{rest}")).header("host", addr.to_string()).body(empty()).unwrap();
    let got = Client::connect(addr).await.send(req).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(got.status, StatusCode::SEE_OTHER, "the printed token opens a session");
}
