//! `cutover ctl`: the admin API from the command line.
//!
//! Exit codes: 0 success, 1 refused or invalid (the server answered with an
//! error), 2 the admin listener cannot be reached.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::config::{AdminListen, Config};
use crate::control::{RouteStatus, Status};

/// Where and how to reach the admin API.
#[derive(Debug, Clone)]
pub struct Target {
    pub listen: AdminListen,
    pub token: Option<String>,
}

#[derive(Debug)]
pub enum CtlError {
    /// The server answered with an error (exit 1).
    Refused(String),
    /// The admin listener cannot be reached (exit 2).
    Unreachable(String),
}

impl CtlError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CtlError::Refused(_) => 1,
            CtlError::Unreachable(_) => 2,
        }
    }
}

impl std::fmt::Display for CtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CtlError::Refused(m) | CtlError::Unreachable(m) => f.write_str(m),
        }
    }
}

/// Works out the target from `--admin`, `-c` and `--token-file`.
pub fn target(admin: Option<&str>, config: Option<&Path>, token_file: Option<&Path>) -> Result<Target, CtlError> {
    let mut target = match (admin, config) {
        (Some(addr), _) => Target { listen: parse_admin(addr)?, token: None },
        (None, Some(path)) => {
            let config = Config::load(path).map_err(|e| CtlError::Refused(e.to_string()))?;
            let admin =
                config.admin.ok_or_else(|| CtlError::Refused(format!("{} has no [admin] section", path.display())))?;
            Target { listen: admin.listen, token: admin.token }
        }
        (None, None) => {
            let default = Path::new("/etc/cutover/cutover.toml");
            match Config::load(default).ok().and_then(|c| c.admin) {
                Some(admin) => Target { listen: admin.listen, token: admin.token },
                None => Target { listen: AdminListen::Unix(PathBuf::from("/run/cutover/admin.sock")), token: None },
            }
        }
    };
    if let Some(file) = token_file {
        let token = std::fs::read_to_string(file)
            .map_err(|e| CtlError::Refused(format!("cannot read the token file {}: {e}", file.display())))?;
        target.token = Some(token.trim().to_string());
    }
    Ok(target)
}

fn parse_admin(addr: &str) -> Result<AdminListen, CtlError> {
    if let Some(path) = addr.strip_prefix("unix:") {
        return Ok(AdminListen::Unix(PathBuf::from(path)));
    }
    if addr.starts_with('/') || addr.starts_with('.') {
        return Ok(AdminListen::Unix(PathBuf::from(addr)));
    }
    addr.parse().map(AdminListen::Tcp).map_err(|_| {
        CtlError::Refused(format!(
            "--admin {addr:?}: expected unix:/path/admin.sock or host:port such as 127.0.0.1:9901"
        ))
    })
}

/// Sends one request and returns (status, JSON body).
pub async fn call(
    target: &Target,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<(StatusCode, Value), CtlError> {
    let unreachable =
        |e: String| CtlError::Unreachable(format!("cannot reach the admin API at {}: {e}", target.listen));
    let request = {
        let mut builder = Request::builder().method(method).uri(path).header(header::HOST, "cutover");
        if let Some(token) = &target.token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let bytes = match &body {
            Some(v) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v).unwrap_or_default())
            }
            None => Bytes::new(),
        };
        builder.body(Full::new(bytes)).map_err(|e| CtlError::Refused(e.to_string()))?
    };
    let response = match &target.listen {
        AdminListen::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path).await.map_err(|e| unreachable(e.to_string()))?;
            send(stream, request).await.map_err(unreachable)?
        }
        AdminListen::Tcp(addr) => {
            let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| unreachable(e.to_string()))?;
            send(stream, request).await.map_err(unreachable)?
        }
    };
    let status = response.status();
    let bytes = response.into_body().collect().await.map_err(|e| unreachable(e.to_string()))?.to_bytes();
    let value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Ok((status, value))
}

async fn send<S>(stream: S, request: Request<Full<Bytes>>) -> Result<http::Response<hyper::body::Incoming>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(request).await.map_err(|e| e.to_string())
}

/// Fails with the server's `{"error": ...}` unless the status is a success.
fn check(status: StatusCode, value: Value) -> Result<Value, CtlError> {
    if status.is_success() {
        return Ok(value);
    }
    let message = value.get("error").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| value.to_string());
    Err(CtlError::Refused(format!("{} ({})", message, status.as_u16())))
}

/// A parsed `ctl` command.
#[derive(Debug, Clone)]
pub enum Command {
    Status {
        route: Option<String>,
    },
    Weight {
        route: String,
        percent: f64,
    },
    Promote {
        route: String,
    },
    Rollback {
        route: String,
    },
    Rollout {
        route: String,
        steps: Vec<f64>,
        interval: String,
        max_error_rate: Option<f64>,
        max_p99: Option<String>,
        min_requests: Option<u64>,
    },
    Pause {
        route: String,
    },
    Resume {
        route: String,
    },
    Abort {
        route: String,
    },
    Reload,
    Events {
        follow: bool,
    },
    Upgrade,
    /// Fleet mode: the replicas, their config hashes and the rollout drivers.
    Fleet,
}

fn route_path(route: &str, rest: &str) -> String {
    format!("/v1/routes/{route}{rest}")
}

/// Runs a command; prints a table (or JSON with `json`). Returns the exit code.
pub async fn run(target: &Target, command: Command, json_out: bool) -> Result<(), CtlError> {
    use Method as M;
    let (method, path, body) = match &command {
        Command::Status { route: None } => (M::GET, "/v1/routes".to_string(), None),
        Command::Status { route: Some(r) } => (M::GET, route_path(r, ""), None),
        Command::Weight { route, percent } => {
            (M::PUT, route_path(route, "/weight"), Some(json!({ "weight": percent })))
        }
        Command::Promote { route } => (M::POST, route_path(route, "/promote"), None),
        Command::Rollback { route } => (M::POST, route_path(route, "/rollback"), None),
        Command::Rollout { route, steps, interval, max_error_rate, max_p99, min_requests } => {
            let mut body = json!({ "steps": steps, "interval": interval });
            if let Some(v) = max_error_rate {
                body["max_error_rate"] = json!(v);
            }
            if let Some(v) = max_p99 {
                body["max_p99"] = json!(v);
            }
            if let Some(v) = min_requests {
                body["min_requests"] = json!(v);
            }
            (M::POST, route_path(route, "/rollout"), Some(body))
        }
        Command::Pause { route } => (M::POST, route_path(route, "/rollout/pause"), None),
        Command::Resume { route } => (M::POST, route_path(route, "/rollout/resume"), None),
        Command::Abort { route } => (M::DELETE, route_path(route, "/rollout"), None),
        Command::Reload => (M::POST, "/v1/reload".to_string(), None),
        Command::Events { follow } => return events(target, *follow, json_out).await,
        Command::Upgrade => (M::POST, "/v1/upgrade".to_string(), None),
        Command::Fleet => (M::GET, "/v1/fleet".to_string(), None),
    };
    let (status, value) = call(target, method, &path, body).await?;
    let value = check(status, value)?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
        return Ok(());
    }
    match command {
        Command::Status { route: None } => {
            let status: Status = serde_json::from_value(value).map_err(|e| CtlError::Refused(e.to_string()))?;
            print!("{}", format_status(&status));
        }
        Command::Reload => {
            let hash = value.get("config_hash").and_then(Value::as_str).unwrap_or("-");
            let changed = value.get("changed").and_then(Value::as_bool).unwrap_or(false);
            println!("config reloaded (hash {hash}){}", if changed { "" } else { "; nothing changed" });
        }
        Command::Upgrade => println!("{}", value.get("result").and_then(Value::as_str).unwrap_or("upgrade started")),
        Command::Fleet => print!("{}", format_fleet(&value)),
        _ => {
            let route: RouteStatus = serde_json::from_value(value).map_err(|e| CtlError::Refused(e.to_string()))?;
            print!("{}", format_route(&route));
        }
    }
    Ok(())
}

/// `ctl fleet`: one line per replica; a config hash that differs from this
/// replica's is flagged.
pub fn format_fleet(v: &Value) -> String {
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    let mut out = format!(
        "replica {} under {} (lease {}): {}\n",
        text(v, "name"),
        text(v, "prefix"),
        text(v, "lease"),
        if v.get("connected").and_then(Value::as_bool) == Some(true) {
            "connected to etcd".to_string()
        } else {
            format!("NOT connected to etcd ({})", text(v, "error"))
        }
    );
    out.push_str(&format!(
        "{:<20} {:<20} {:<10} {:>10}  {}\n",
        "REPLICA", "CONFIG", "CONNECTED", "REVISION", "LAST SEEN"
    ));
    for r in v.get("replicas").and_then(Value::as_array).into_iter().flatten() {
        let differs = r.get("config_differs").and_then(Value::as_bool) == Some(true);
        out.push_str(&format!(
            "{:<20} {:<20} {:<10} {:>10}  {}\n",
            format!(
                "{}{}",
                text(r, "name"),
                if r.get("this").and_then(Value::as_bool) == Some(true) { " *" } else { "" }
            ),
            format!("{}{}", text(r, "config_hash"), if differs { " DIFFERS" } else { "" }),
            if r.get("connected").and_then(Value::as_bool) == Some(true) { "yes" } else { "no" },
            r.get("applied_revision").and_then(Value::as_i64).unwrap_or(0),
            text(r, "last_seen"),
        ));
    }
    let drivers = v.get("drivers").and_then(Value::as_object);
    match drivers.filter(|d| !d.is_empty()) {
        None => out.push_str("no rollout running\n"),
        Some(d) => {
            for (route, driver) in d {
                out.push_str(&format!("rollout of {route} driven by {}\n", driver.as_str().unwrap_or("-")));
            }
        }
    }
    if v.get("config_hashes_agree").and_then(Value::as_bool) == Some(false) {
        out.push_str("warning: the replicas run different configs (push the same file to every replica)\n");
    }
    out
}

async fn events(target: &Target, follow: bool, json_out: bool) -> Result<(), CtlError> {
    let mut since = 0u64;
    loop {
        // With --follow the server holds the request until an event arrives.
        let wait = if follow { 25 } else { 0 };
        let (status, value) = call(target, Method::GET, &format!("/v1/events?since={since}&wait={wait}"), None).await?;
        let value = check(status, value)?;
        for event in value.get("events").and_then(Value::as_array).into_iter().flatten() {
            since = since.max(event.get("seq").and_then(Value::as_u64).unwrap_or(0));
            if json_out {
                println!("{}", serde_json::to_string(event).unwrap_or_default());
            } else {
                println!("{}", format_event(event));
            }
        }
        if !follow {
            return Ok(());
        }
    }
}

fn format_event(e: &Value) -> String {
    let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
    let mut line = format!(
        "{:>5}  {}  {:<12} {:<16}",
        e.get("seq").and_then(Value::as_u64).unwrap_or(0),
        s("time"),
        s("actor"),
        s("kind")
    );
    if !s("route").is_empty() {
        line.push_str(&format!(" route={}", s("route")));
    }
    if !s("before").is_empty() || !s("after").is_empty() {
        line.push_str(&format!(" {} → {}", s("before"), s("after")));
    }
    if !s("detail").is_empty() {
        line.push_str(&format!("  ({})", s("detail")));
    }
    line
}

fn pct(p: f64) -> String {
    if (p - p.round()).abs() < 1e-9 { format!("{}%", p.round()) } else { format!("{p}%") }
}

fn pool_health(route: &RouteStatus, version: &str) -> String {
    match route.pools.iter().find(|p| p.version == version) {
        None => "-".into(),
        Some(p) => {
            let up = p.backends.iter().filter(|b| b.healthy).count();
            format!("{} {}/{} up", p.name, up, p.backends.len())
        }
    }
}

fn rollout_line(route: &RouteStatus) -> String {
    match &route.rollout {
        None => route.last_outcome.clone().map_or("-".into(), |o| format!("last: {o}")),
        Some(r) => {
            let fig = |f: &crate::control::VersionFigures| {
                format!(
                    "{} req {:.2}% err p99 {}",
                    f.requests,
                    f.error_rate * 100.0,
                    f.p99_ms.map_or("-".into(), |p| format!("{p:.1}ms"))
                )
            };
            format!(
                "step {}/{}{}, {} left{}; canary {}; stable {}",
                r.step,
                r.steps.len(),
                if r.paused { " (paused)" } else { "" },
                humantime::format_duration(Duration::from_secs(r.time_left_secs.round() as u64)),
                if r.extensions > 0 {
                    format!(", extended {}x (min {} canary requests)", r.extensions, r.min_requests)
                } else {
                    String::new()
                },
                fig(&r.canary),
                fig(&r.stable)
            )
        }
    }
}

pub fn format_status(status: &Status) -> String {
    let mut out = String::new();
    let rows: Vec<[String; 6]> = status
        .routes
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                pct(r.weight),
                if r.halted {
                    "halted".into()
                } else if r.rollout.is_some() {
                    "rollout".into()
                } else {
                    "live".into()
                },
                pool_health(r, "stable"),
                pool_health(r, "canary"),
                rollout_line(r),
            ]
        })
        .collect();
    let header = ["ROUTE", "WEIGHT", "STATE", "STABLE", "CANARY", "ROLLOUT"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(rows.iter()) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{:<w$}  ", cell, w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let reload = &status.reload;
    out.push_str(&format!(
        "\nconfig {} (hash {}), loaded {}{}\n",
        status.config.as_deref().unwrap_or("(embedded)"),
        reload.config_hash,
        reload.time.as_deref().unwrap_or("-"),
        if reload.failures > 0 { format!(", {} rejected reloads", reload.failures) } else { String::new() }
    ));
    if let Some(e) = &reload.error {
        out.push_str(&format!("last reload REJECTED (running config kept): {e}\n"));
    }
    out
}

pub fn format_route(r: &RouteStatus) -> String {
    let mut out = format!(
        "route {}  (host {}, path {})\n  weight {}{}  (configured {})\n",
        r.name,
        r.host,
        r.path_prefix,
        pct(r.weight),
        if r.halted { ", HALTED: everyone on stable" } else { "" },
        pct(r.config_weight)
    );
    out.push_str(&format!("  rollout: {}\n", rollout_line(r)));
    for pool in &r.pools {
        out.push_str(&format!("  {} pool {}\n", pool.version, pool.name));
        for b in &pool.backends {
            out.push_str(&format!("    {:<24} {:<4} {}\n", b.address, if b.healthy { "up" } else { "DOWN" }, b.reason));
        }
    }
    out
}
