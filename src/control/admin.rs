//! The admin API (DESIGN §4): HTTP/1.1 + JSON on a Unix socket (protected by
//! its file mode, 0600) or on TCP (every endpoint but `GET /healthz` needs
//! `Authorization: Bearer <token>`, compared in constant time).

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

use super::rollout::Plan;
use super::{Actor, Command, ControlError, Handle};
use crate::config::Weight;

/// Request bodies above this size are refused (413).
const MAX_BODY: usize = 64 * 1024;

/// Longest wait a client may ask of `GET /v1/events?wait=`.
const MAX_WAIT: Duration = Duration::from_secs(60);

type Body = Full<Bytes>;

/// Who may call, and what to do for `POST /v1/upgrade`.
pub struct Admin {
    pub control: Handle,
    /// Required on TCP listeners.
    pub token: Option<String>,
    pub upgrade: Option<Arc<dyn Fn() -> Result<String, String> + Send + Sync>>,
    /// Fleet mode's session, for `GET /v1/fleet`.
    pub fleet: Option<crate::fleet::Fleet>,
}

/// Binds the Unix socket: creates the parent directory, refuses to start if
/// a live process answers on it, replaces a stale one, sets mode 0600.
pub fn bind_unix(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running process (another cutover?)", path.display()),
                ));
            }
            Err(_) => std::fs::remove_file(path)?,
        }
    }
    // Created with a umask that keeps others out, then tightened to 0600.
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

pub async fn serve_unix(listener: UnixListener, admin: Arc<Admin>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        match accepted {
            Ok((stream, _)) => spawn_connection(stream, admin.clone(), Actor::Unix, false),
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

pub async fn serve_tcp(listener: TcpListener, admin: Arc<Admin>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => spawn_connection(stream, admin.clone(), Actor::Tcp(peer), true),
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn spawn_connection<S>(stream: S, admin: Arc<Admin>, actor: Actor, needs_token: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = service_fn(move |req| {
            let admin = admin.clone();
            let actor = actor.clone();
            async move { Ok::<_, Infallible>(handle(&admin, actor, needs_token, req).await) }
        });
        let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
    });
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut bytes = serde_json::to_vec_pretty(&value).unwrap_or_default();
    bytes.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    resp
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json_response(status, json!({ "error": message.into() }))
}

fn from_control<T: serde::Serialize>(result: Result<T, ControlError>) -> Response<Body> {
    match result {
        Ok(value) => json_response(StatusCode::OK, serde_json::to_value(value).unwrap_or_default()),
        Err(e @ ControlError::Invalid(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ ControlError::NotFound(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ ControlError::Conflict(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e @ ControlError::Internal(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e @ ControlError::Unavailable(_)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Constant-time comparison of the presented and the configured token
/// (both hashed first, so their lengths leak nothing either).
fn token_matches(presented: &str, expected: &str) -> bool {
    let a = ring::digest::digest(&ring::digest::SHA256, presented.as_bytes());
    let b = ring::digest::digest(&ring::digest::SHA256, expected.as_bytes());
    a.as_ref().iter().zip(b.as_ref()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(admin: &Admin, req: &Request<Incoming>) -> bool {
    let Some(expected) = &admin.token else { return false };
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| token_matches(t.trim(), expected))
}

async fn read_json<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, Response<Body>> {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return Err(error(StatusCode::PAYLOAD_TOO_LARGE, format!("request body larger than {MAX_BODY} bytes")));
        }
        Err(e) => return Err(error(StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}"))),
    };
    serde_json::from_slice(&body).map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    weight: f64,
}

/// The rollout request. Durations are strings such as "10m" or "800ms".
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RolloutBody {
    steps: Vec<f64>,
    interval: String,
    #[serde(default = "default_max_error_rate")]
    max_error_rate: f64,
    #[serde(default)]
    max_p99: Option<String>,
    #[serde(default = "default_min_requests")]
    min_requests: u64,
}

pub fn default_max_error_rate() -> f64 {
    0.01
}

pub fn default_min_requests() -> u64 {
    100
}

impl RolloutBody {
    fn plan(self) -> Result<Plan, String> {
        let steps_bp = self
            .steps
            .iter()
            .map(|&s| {
                Weight::from_percent(s)
                    .map(Weight::basis_points)
                    .ok_or_else(|| format!("step {s} is not a percentage from 0 to 100 with at most two decimals"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let interval = humantime::parse_duration(&self.interval)
            .map_err(|e| format!("interval {:?} is not a duration such as \"10m\": {e}", self.interval))?;
        let max_p99 = self
            .max_p99
            .map(|p| {
                humantime::parse_duration(&p)
                    .map_err(|e| format!("max_p99 {p:?} is not a duration such as \"800ms\": {e}"))
            })
            .transpose()?;
        let plan =
            Plan { steps_bp, interval, max_error_rate: self.max_error_rate, max_p99, min_requests: self.min_requests };
        plan.validate()?;
        Ok(plan)
    }
}

async fn handle(admin: &Admin, actor: Actor, needs_token: bool, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if method == Method::GET && path == "/healthz" {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"ok\n")));
        resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain"));
        return resp;
    }
    if needs_token && !authorized(admin, &req) {
        let mut resp = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return resp;
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let control = &admin.control;
    match (&method, segments.as_slice()) {
        (&Method::GET, ["v1", "routes"]) => match control.status().await {
            Some(status) => json_response(StatusCode::OK, serde_json::to_value(status).unwrap_or_default()),
            None => error(StatusCode::INTERNAL_SERVER_ERROR, "the control plane stopped"),
        },
        (&Method::GET, ["v1", "routes", name]) => {
            let route = name.to_string();
            from_control(control.ask(|reply| Command::Route { route, reply }).await)
        }
        (&Method::PUT, ["v1", "routes", name, "weight"]) => {
            let route = name.to_string();
            let body: WeightBody = match read_json(req).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            let Some(weight) = Weight::from_percent(body.weight) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("weight {} is not a percentage from 0 to 100 with at most two decimals", body.weight),
                );
            };
            from_control(control.ask(|reply| Command::SetWeight { route, weight, actor, reply }).await)
        }
        (&Method::POST, ["v1", "routes", name, "promote"]) => {
            let route = name.to_string();
            from_control(control.ask(|reply| Command::Promote { route, actor, reply }).await)
        }
        (&Method::POST, ["v1", "routes", name, "rollback"]) => {
            let route = name.to_string();
            from_control(control.ask(|reply| Command::Rollback { route, actor, reply }).await)
        }
        (&Method::POST, ["v1", "routes", name, "rollout"]) => {
            let route = name.to_string();
            let body: RolloutBody = match read_json(req).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            match body.plan() {
                Ok(plan) => {
                    from_control(control.ask(|reply| Command::StartRollout { route, plan, actor, reply }).await)
                }
                Err(e) => error(StatusCode::BAD_REQUEST, e),
            }
        }
        (&Method::POST, ["v1", "routes", name, "rollout", "pause"]) => {
            let route = name.to_string();
            from_control(control.ask(|reply| Command::PauseRollout { route, actor, reply }).await)
        }
        (&Method::POST, ["v1", "routes", name, "rollout", "resume"]) => {
            let route = name.to_string();
            from_control(control.ask(|reply| Command::ResumeRollout { route, actor, reply }).await)
        }
        (&Method::DELETE, ["v1", "routes", name, "rollout"]) => {
            let route = name.to_string();
            from_control(control.ask(|reply| Command::AbortRollout { route, actor, reply }).await)
        }
        (&Method::GET, ["v1", "fleet"]) => match (&admin.fleet, control.status().await) {
            (None, _) => error(StatusCode::NOT_FOUND, "this cutover runs alone: no [fleet] in its config"),
            (Some(fleet), Some(status)) => json_response(StatusCode::OK, fleet.status(&status.reload.config_hash)),
            (Some(_), None) => error(StatusCode::INTERNAL_SERVER_ERROR, "the control plane stopped"),
        },
        (&Method::POST, ["v1", "reload"]) => from_control(control.reload(actor).await),
        (&Method::GET, ["v1", "history"]) => history(control, None, req.uri().query()).await,
        (&Method::GET, ["v1", "routes", name, "history"]) => history(control, Some(name), req.uri().query()).await,
        (&Method::GET, ["v1", "events"]) => events(control, req.uri().query().unwrap_or("")).await,
        (&Method::POST, ["v1", "upgrade"]) => match &admin.upgrade {
            None => error(StatusCode::CONFLICT, "upgrades are only possible for `cutover run`"),
            Some(upgrade) => match upgrade() {
                Ok(message) => json_response(StatusCode::OK, json!({ "result": message })),
                Err(e) => error(StatusCode::CONFLICT, e),
            },
        },
        (_, ["healthz"])
        | (_, ["v1", "routes"])
        | (_, ["v1", "routes", _])
        | (_, ["v1", "routes", _, "weight" | "promote" | "rollback" | "rollout" | "history"])
        | (_, ["v1", "routes", _, "rollout", "pause" | "resume"])
        | (_, ["v1", "reload" | "events" | "upgrade" | "fleet" | "history"]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {path}"))
        }
        _ => error(StatusCode::NOT_FOUND, format!("no endpoint {path}")),
    }
}

/// `GET /v1/history?since=MS` and `GET /v1/routes/{name}/history?since=MS`:
/// the short per-version series of [`super::history`], points after `since`
/// (Unix ms).
async fn history(control: &Handle, route: Option<&str>, query: Option<&str>) -> Response<Body> {
    let mut since = 0u64;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("since", value) => match value.parse() {
                Ok(v) => since = v,
                Err(_) => return error(StatusCode::BAD_REQUEST, "since must be a Unix time in milliseconds"),
            },
            (other, _) => return error(StatusCode::BAD_REQUEST, format!("unknown parameter {other:?}")),
        }
    }
    if let Some(name) = route {
        // A route the sampler has not seen yet (just added) has no points.
        let route = name.to_string();
        if let Err(e) = control.ask(|reply| Command::Route { route, reply }).await {
            return from_control::<()>(Err(e));
        }
    }
    // A copy of the points asked for, so that the sampler never waits, and
    // the JSON built off the control thread: the whole history of 1,000
    // routes is megabytes, which must not hold up admin calls or reloads.
    let Ok(history) = control.history().lock().map(|h| h.select(route, since)) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "the history is unavailable");
    };
    let route = route.map(str::to_string);
    // Compact: pretty-printed, each number of each point would take a line.
    let json = tokio::task::spawn_blocking(move || {
        serde_json::to_vec(&history.to_json(route.as_deref(), since)).unwrap_or_default()
    });
    let Ok(bytes) = json.await else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "the history is unavailable");
    };
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    resp
}

/// `GET /v1/events?since=N&wait=SECONDS`: events after `since`; with `wait`,
/// holds the request until one arrives (long poll, for `ctl events --follow`).
async fn events(control: &Handle, query: &str) -> Response<Body> {
    let mut since = 0u64;
    let mut wait = Duration::ZERO;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "since" => match value.parse() {
                Ok(v) => since = v,
                Err(_) => return error(StatusCode::BAD_REQUEST, "since must be an event number"),
            },
            "wait" => match value.parse::<u64>() {
                Ok(v) => wait = Duration::from_secs(v).min(MAX_WAIT),
                Err(_) => return error(StatusCode::BAD_REQUEST, "wait must be a number of seconds"),
            },
            other => return error(StatusCode::BAD_REQUEST, format!("unknown parameter {other:?}")),
        }
    }
    let fetch = || async {
        let (tx, rx) = tokio::sync::oneshot::channel();
        control.send(Command::Events { since, reply: tx });
        rx.await.ok()
    };
    let Some((mut list, mut latest)) = fetch().await else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "the control plane stopped");
    };
    if list.is_empty() && !wait.is_zero() {
        let _ = tokio::time::timeout(wait, latest.wait_for(|&seq| seq > since)).await;
        if let Some((l, _)) = fetch().await {
            list = l;
        }
    }
    json_response(StatusCode::OK, json!({ "events": list }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(token_matches("s3cret-token-value", "s3cret-token-value"));
        assert!(!token_matches("s3cret-token-valuf", "s3cret-token-value"));
        assert!(!token_matches("", "s3cret-token-value"));
    }

    #[test]
    fn rollout_body_to_plan() {
        let body: RolloutBody = serde_json::from_str(
            r#"{"steps":[5,25,50,100],"interval":"10m","max_error_rate":0.02,"max_p99":"800ms","min_requests":50}"#,
        )
        .unwrap();
        let plan = body.plan().unwrap();
        assert_eq!(plan.steps_bp, vec![500, 2500, 5000, 10_000]);
        assert_eq!(plan.interval, Duration::from_secs(600));
        assert_eq!(plan.max_p99, Some(Duration::from_millis(800)));
        assert_eq!(plan.min_requests, 50);
        let defaults: RolloutBody = serde_json::from_str(r#"{"steps":[50],"interval":"1s"}"#).unwrap();
        let plan = defaults.plan().unwrap();
        assert_eq!((plan.max_error_rate, plan.max_p99, plan.min_requests), (0.01, None, 100));
    }
}
