//! The page's calls, mapped one to one onto the admin API (DESIGN §4).
//! The admin API's status and `{"error": ...}` pass through unchanged, so
//! the page shows exactly what `ctl` would print; an unreachable admin
//! listener is a 502 with the reason.

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use serde_json::{Value, json};

use super::{Body, json_error, respond};
use crate::ctl::{CtlError, Target, call};

/// Longest long-poll the page may ask of `GET /api/state?wait=`.
const MAX_WAIT_SECS: u64 = 25;

/// The admin call behind `POST /api/routes/{route}/{action}`: (method,
/// path after the route, whether the page's JSON body is passed on).
pub fn admin_call(action: &str) -> Option<(Method, &'static str, bool)> {
    Some(match action {
        "weight" => (Method::PUT, "/weight", true),
        "promote" => (Method::POST, "/promote", false),
        "rollback" => (Method::POST, "/rollback", false),
        "rollout" => (Method::POST, "/rollout", true),
        "pause" => (Method::POST, "/rollout/pause", false),
        "resume" => (Method::POST, "/rollout/resume", false),
        "abort" => (Method::DELETE, "/rollout", false),
        _ => return None,
    })
}

fn json(status: StatusCode, value: &Value) -> Response<Body> {
    respond(status, "application/json", serde_json::to_vec(value).unwrap_or_default())
}

fn unreachable(e: CtlError) -> Response<Body> {
    let status = match e {
        CtlError::Unreachable(_) => StatusCode::BAD_GATEWAY,
        CtlError::Refused(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json_error(status, &e.to_string())
}

/// One admin call; an error answer becomes the response as it is.
async fn get(target: &Target, path: &str) -> Result<Value, Response<Body>> {
    match call(target, Method::GET, path, None).await {
        Ok((status, value)) if status.is_success() => Ok(value),
        Ok((status, value)) => Err(json(status, &value)),
        Err(e) => Err(unreachable(e)),
    }
}

/// `GET /api/state?since=SEQ&history=MS&wait=SECS`: what the page needs in
/// one round trip: the events after `since` (held up to `wait` seconds
/// until one arrives), every route's status, the history points after
/// `history`, and in fleet mode the fleet (else null). The page asks at most
/// once a second.
pub async fn state(target: &Target, query: Option<&str>) -> Response<Body> {
    let (mut since, mut history, mut wait) = (0u64, 0u64, 0u64);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match name {
            "since" => &mut since,
            "history" => &mut history,
            "wait" => &mut wait,
            _ => return json_error(StatusCode::BAD_REQUEST, &format!("unknown parameter {name:?}")),
        };
        match value.parse() {
            Ok(v) => *slot = v,
            Err(_) => return json_error(StatusCode::BAD_REQUEST, &format!("{name} must be a whole number")),
        }
    }
    let wait = wait.min(MAX_WAIT_SECS);
    let events = match get(target, &format!("/v1/events?since={since}&wait={wait}")).await {
        Ok(v) => v.get("events").cloned().unwrap_or(Value::Array(Vec::new())),
        Err(resp) => return resp,
    };
    let status = match get(target, "/v1/routes").await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    // A cutover older than the history endpoint still gets a dashboard.
    let history = match call(target, Method::GET, &format!("/v1/history?since={history}"), None).await {
        Ok((s, v)) if s.is_success() => v,
        Ok(_) => Value::Null,
        Err(e) => return unreachable(e),
    };
    // Fleet mode (DESIGN §7) has `GET /v1/fleet`; a single instance has not.
    let fleet = match call(target, Method::GET, "/v1/fleet", None).await {
        Ok((s, v)) if s.is_success() => v,
        Ok(_) => Value::Null,
        Err(e) => return unreachable(e),
    };
    json(StatusCode::OK, &json!({ "events": events, "status": status, "history": history, "fleet": fleet }))
}

/// `POST /api/routes/{route}/{action}`.
pub async fn action(target: &Target, route: &str, action: &str, body: &Bytes) -> Response<Body> {
    let Some((method, rest, with_body)) = admin_call(action) else {
        return json_error(StatusCode::NOT_FOUND, &format!("no action {action:?}"));
    };
    // The name goes into the admin path as it came (a path segment already).
    if route.is_empty() || route.contains(['?', '#']) {
        return json_error(StatusCode::BAD_REQUEST, "bad route name");
    }
    let payload = if with_body {
        match serde_json::from_slice::<Value>(body) {
            Ok(v @ Value::Object(_)) => Some(v),
            _ => return json_error(StatusCode::BAD_REQUEST, "the body must be a JSON object"),
        }
    } else {
        None
    };
    match call(target, method, &format!("/v1/routes/{route}{rest}"), payload).await {
        Ok((status, value)) => json(status, &value),
        Err(e) => unreachable(e),
    }
}
