//! One request's life, in phases:
//! 1. **head**: read the snapshot, check the request, answer the beta enroll path;
//! 2. **decide**: the pure routing decision (route, version, pool, cookie);
//! 3. **upstream head**: hop-by-hop removal, forwarding fields, origin-form URI;
//! 4. **send**: pick a backend, reuse or open a connection, send, retry once
//!    when that is safe and the budget allows;
//! 5. **respond**: response hygiene, assignment cookie, a body that records
//!    metrics and the access log line when it ends.

use std::cell::Cell;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version as HttpVersion};
use http_body::Body as _;

use super::DataSignal;
use super::body::{ClientBody, ReadAhead, ReadIdle, RequestBody, ResponseBody};
use super::client_timeouts::{self as activity, Activity};
use super::h1::client::{Connection, Failure, UpstreamBody};
use super::headers::{self, Forwarded, Hops};
use super::listener::{ClientUpgrade, Worker};
use super::queue::{self, InFlight, Refused};
use super::upstream::{self, UpstreamError};
use super::verbatim::Verbatim;
use crate::access_log::Record;
use crate::metrics::{UpstreamErrorKind, VersionMetrics};
use crate::routing::beta::BetaChoice;
use crate::routing::{self, Decision, Head, Outcome, Reason, Version};
use crate::snapshot::{Backend, Pool, Snapshot};

/// What the service knows about the client connection.
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub client_ip: IpAddr,
    /// `client_ip` formatted for X-Forwarded-For, once per connection.
    pub client_ip_header: HeaderValue,
    pub tls: bool,
    /// Requests of this connection still being answered (client timeouts).
    pub activity: Arc<Activity>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool, activity: Arc<Activity>) -> ConnInfo {
        let ip = match peer.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        ConnInfo {
            peer,
            client_ip: ip,
            client_ip_header: HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown")),
            tls,
            activity,
        }
    }
}

static VIA_11: HeaderValue = HeaderValue::from_static("1.1 cutover");
static VIA_2: HeaderValue = HeaderValue::from_static("2.0 cutover");
static VIA_10: HeaderValue = HeaderValue::from_static("1.0 cutover");

/// The hyper service function (HTTP/2 clients): the response's fields all
/// in its map.
pub async fn handle(
    worker: Rc<Worker>,
    conn: Rc<ConnInfo>,
    req: Request<ClientBody>,
) -> Result<Response<ResponseBody>, Infallible> {
    let (mut response, mut verbatim) = handle_h1(worker, conn, req, Verbatim::default()).await;
    // Empty for a backend's answer (read into its map for an HTTP/2
    // client: `Asked::lines`); whatever else keeps lines goes to the map.
    verbatim.into_map(response.headers_mut());
    Ok(response)
}

/// Serves a request whose fields are in its map and, as they came, in
/// `verbatim`; answers with a response and the fields of it kept as they
/// came, to be written after those in its map.
pub async fn handle_h1(
    worker: Rc<Worker>,
    conn: Rc<ConnInfo>,
    mut req: Request<ClientBody>,
    mut verbatim: Verbatim,
) -> (Response<ResponseBody>, Verbatim) {
    let start = Instant::now();
    let started = activity::Started::new(&conn.activity);
    let snap = worker.snapshot();
    let mut kept = Verbatim::default();
    // The head and the decision take no await: only forwarding is a future
    // of its own inside this one (each level of futures is copied whole
    // when it starts).
    let response = match decide(&worker, &conn, &snap, &mut req, &mut verbatim, start) {
        Ok(decision) => forward(&worker, &conn, &snap, decision, req, verbatim, start, &mut kept).await,
        Err(answer) => answer,
    };
    // From here the response (its body's end, or the error path) ends the request.
    started.handed_over();
    (response, kept)
}

/// Phases 1 and 2: the head, then the decision; `Err`: the answer, without
/// a backend (returned once, by value, as the response it is: boxing it
/// would cost an allocation per local answer).
#[allow(clippy::result_large_err)]
fn decide(
    worker: &Rc<Worker>,
    conn: &Rc<ConnInfo>,
    snap: &Arc<Snapshot>,
    req: &mut Request<ClientBody>,
    verbatim: &mut Verbatim,
    start: Instant,
) -> Result<Decision, Response<ResponseBody>> {
    // Phase 1: the head.
    if snap.sticky_header_verbatim && !verbatim.is_empty() {
        // The user's key is in a field kept as it came: the decision needs the map.
        verbatim.into_map(req.headers_mut());
    }
    if req.version() == HttpVersion::HTTP_2 {
        let (uri, headers) = (req.uri().clone(), req.headers_mut());
        if let Err(text) = headers::h2_host(&uri, headers) {
            return Err(local(worker, conn, req, start, StatusCode::BAD_REQUEST, text));
        }
    }
    let host = request_host(req);
    if req.version() == HttpVersion::HTTP_11 && host.is_none() {
        return Err(local(worker, conn, req, start, StatusCode::BAD_REQUEST, "400 Bad Request: missing Host header\n"));
    }
    if req.method() == Method::CONNECT && !headers::is_h2_websocket(req) {
        return Err(local(
            worker,
            conn,
            req,
            start,
            StatusCode::METHOD_NOT_ALLOWED,
            "405 Method Not Allowed: CONNECT\n",
        ));
    }
    let mut lowered_hops = None;
    if matches!(*req.method(), Method::TRACE | Method::OPTIONS) {
        match headers::max_forwards(req.headers()) {
            Ok(Hops::Forward(lowered)) => lowered_hops = lowered,
            Ok(Hops::Last) => return Err(last_hop(worker, conn, req, start)),
            Err(text) => return Err(local(worker, conn, req, start, StatusCode::BAD_REQUEST, text)),
        }
    }
    if let Some(enroll) = &snap.config.beta.enroll_path
        && req.uri().path() == enroll
    {
        return Err(enroll_response(worker, conn, snap, req, start));
    }

    // Phase 2: the decision.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let head =
        Head { host: host.as_deref(), path: req.uri().path(), headers: req.headers(), client_ip: conn.client_ip, now };
    match routing::decide(&snap.rules, &head, rand::random::<u64>) {
        Outcome::Routed(d) => {
            // Written once routing is done with the head (`host` borrows it).
            if let Some(lowered) = lowered_hops {
                req.headers_mut().insert(header::MAX_FORWARDS, lowered);
            }
            Ok(d)
        }
        Outcome::NoRoute => Err(local(
            worker,
            conn,
            req,
            start,
            StatusCode::NOT_FOUND,
            "404 Not Found: no route for this host and path\n",
        )),
        Outcome::Unavailable { route, assigned, reason, new_key } => {
            let metrics = snap.routes[route].metrics.version(assigned).clone();
            metrics.assigned(reason);
            let mut ctx = Context::new(worker, conn, snap, req, start, metrics, new_key);
            ctx.route = Some(route);
            ctx.version = Some(assigned);
            ctx.reason = Some(reason);
            Err(ctx.error(StatusCode::BAD_GATEWAY, "502 Bad Gateway: no healthy backend\n"))
        }
    }
}

/// The host a request is for: the URI authority (HTTP/2, absolute-form) or
/// the Host field.
fn request_host(req: &Request<ClientBody>) -> Option<std::borrow::Cow<'_, str>> {
    if let Some(authority) = req.uri().authority() {
        return Some(authority.as_str().into());
    }
    req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).filter(|h| !h.is_empty()).map(Into::into)
}

/// Per-request bookkeeping shared by every way a request can end.
struct Context<'a> {
    worker: &'a Rc<Worker>,
    conn: &'a Rc<ConnInfo>,
    snap: &'a Arc<Snapshot>,
    start: Instant,
    metrics: Arc<VersionMetrics>,
    route: Option<usize>,
    version: Option<Version>,
    reason: Option<Reason>,
    method: Method,
    /// Only kept when the access log is on (a reference count, no copy).
    path: Option<PathAndQuery>,
    new_key: Option<routing::MintedKey>,
    /// The backend of the last attempt, for the access log of a proxy error.
    backend: Option<Arc<str>>,
}

impl<'a> Context<'a> {
    fn new(
        worker: &'a Rc<Worker>,
        conn: &'a Rc<ConnInfo>,
        snap: &'a Arc<Snapshot>,
        req: &Request<ClientBody>,
        start: Instant,
        metrics: Arc<VersionMetrics>,
        new_key: Option<routing::MintedKey>,
    ) -> Self {
        Context {
            worker,
            conn,
            snap,
            start,
            metrics,
            route: None,
            version: None,
            reason: None,
            method: req.method().clone(),
            path: worker
                .shared
                .access_log
                .as_ref()
                .map(|_| req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"))),
            new_key,
            backend: None,
        }
    }

    /// A response written by the proxy after a routing decision.
    fn error(&self, status: StatusCode, text: &'static str) -> Response<ResponseBody> {
        let elapsed = self.start.elapsed();
        self.metrics.response(status.as_u16(), elapsed.as_secs_f64());
        if let (Some(log), Some(path)) = (&self.worker.shared.access_log, &self.path) {
            log.log(&Record {
                client: self.conn.client_ip_header.to_str().unwrap_or_default(),
                method: self.method.as_str(),
                path: path.path(),
                status: status.as_u16(),
                route: self.route.map(|r| &*self.snap.rules.routes[r].name),
                version: self.version,
                reason: self.reason,
                backend: self.backend.as_deref(),
                duration: elapsed,
                bytes_in: 0,
                bytes_out: text.len() as u64,
                failed: false,
            });
        }
        self.conn.activity.request_ended();
        let mut resp = text_response(status, text);
        if let Some(key) = self.new_key {
            append_cookie(&mut resp, self.snap, key, self.conn.tls);
        }
        resp
    }
}

fn text_response(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::text(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// A response written by the proxy before any route was chosen.
fn local(
    worker: &Rc<Worker>,
    conn: &Rc<ConnInfo>,
    req: &Request<ClientBody>,
    start: Instant,
    status: StatusCode,
    text: &'static str,
) -> Response<ResponseBody> {
    worker.metrics().unrouted.with_label_values(&[status.as_str()]).inc();
    log_unrouted(worker, conn, req, start, status, text.len() as u64);
    conn.activity.request_ended();
    text_response(status, text)
}

/// The answer of the final recipient to a TRACE or OPTIONS request whose
/// `Max-Forwards` ran out here (RFC 9110 §7.6.2). The proxy, as a resource
/// of its own, serves OPTIONS only; it does not reflect a TRACE, which
/// would hand the client's cookies and credentials back to whatever script
/// sent it (nginx refuses TRACE altogether).
fn last_hop(
    worker: &Rc<Worker>,
    conn: &Rc<ConnInfo>,
    req: &Request<ClientBody>,
    start: Instant,
) -> Response<ResponseBody> {
    let mut resp = if req.method() == Method::OPTIONS {
        let mut resp = local(worker, conn, req, start, StatusCode::OK, "");
        resp.headers_mut().remove(header::CONTENT_TYPE);
        resp
    } else {
        let text = "405 Method Not Allowed: TRACE with Max-Forwards: 0 ends at the proxy, which does not reflect it\n";
        local(worker, conn, req, start, StatusCode::METHOD_NOT_ALLOWED, text)
    };
    resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("OPTIONS"));
    resp
}

fn log_unrouted(
    worker: &Rc<Worker>,
    conn: &Rc<ConnInfo>,
    req: &Request<ClientBody>,
    start: Instant,
    status: StatusCode,
    bytes_out: u64,
) {
    if let Some(log) = &worker.shared.access_log {
        log.log(&Record {
            client: conn.client_ip_header.to_str().unwrap_or_default(),
            method: req.method().as_str(),
            path: req.uri().path(),
            status: status.as_u16(),
            route: None,
            version: None,
            reason: None,
            backend: None,
            duration: start.elapsed(),
            bytes_in: 0,
            bytes_out,
            failed: false,
        });
    }
}

fn append_cookie(resp: &mut Response<ResponseBody>, snap: &Snapshot, key: routing::MintedKey, tls: bool) {
    let mut value = String::with_capacity(96);
    value.push_str(&snap.rules.sticky.cookie);
    value.push('=');
    value.push_str(key.as_str());
    value.push_str(&snap.rules.sticky.attributes);
    if tls {
        value.push_str("; Secure");
    }
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// `GET <enroll_path>?join` sets the beta cookie, `?leave` clears it; both
/// redirect (303) to `return=<path>` on this site, or to `/`.
fn enroll_response(
    worker: &Rc<Worker>,
    conn: &Rc<ConnInfo>,
    snap: &Snapshot,
    req: &Request<ClientBody>,
    start: Instant,
) -> Response<ResponseBody> {
    let query = req.uri().query().unwrap_or("");
    let mut join = None;
    let mut back = "/".to_string();
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "join" => join = Some(true),
            "leave" => join = Some(false),
            "return" => {
                let decoded = percent_decode(value);
                if decoded.starts_with('/') && !decoded.starts_with("//") && !decoded.contains(['\\', '\r', '\n']) {
                    back = decoded;
                }
            }
            _ => {}
        }
    }
    let Some(join) = join else {
        return local(worker, conn, req, start, StatusCode::BAD_REQUEST, "400 Bad Request: use ?join or ?leave\n");
    };
    let beta = &snap.config.beta;
    let secure = if conn.tls { "; Secure" } else { "" };
    let cookie = if join {
        let ttl = beta.enroll_ttl.as_secs();
        let expires = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) + ttl;
        let value = snap.rules.beta.value(BetaChoice::Always, expires);
        format!("{}={value}; Path=/; Max-Age={ttl}; HttpOnly; SameSite=Lax{secure}", beta.cookie)
    } else {
        format!("{}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{secure}", beta.cookie)
    };
    let text = if join { "You joined the beta.\n" } else { "You left the beta.\n" };
    worker.metrics().unrouted.with_label_values(&["303"]).inc();
    log_unrouted(worker, conn, req, start, StatusCode::SEE_OTHER, text.len() as u64);
    conn.activity.request_ended();
    let mut resp = Response::new(ResponseBody::text(text));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        headers.insert(header::SET_COOKIE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&back) {
        headers.insert(header::LOCATION, v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: Option<&u8>| b.and_then(|&b| (b as char).to_digit(16));
        match bytes[i] {
            b'%' => match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Requests that may be sent twice: safe or idempotent methods (RFC 9110
/// §9.2.2) without a body.
fn retry_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

/// What phase 3 learnt of a request that the later phases need.
struct Upgrades {
    /// The client asked for an upgrade the server can carry out.
    upgrade: bool,
    h2_websocket: bool,
    client_upgrade: Option<ClientUpgrade>,
    client_version: HttpVersion,
}

/// Phase 3: the upstream head. An upgrade is what the client side can
/// carry out: a WebSocket over HTTP/2, or an HTTP/1.1 request the server
/// will hand its stream over for (never one with a body). Upgrade fields on
/// anything else are hop-by-hop fields like any other. (A function of its
/// own: its locals then take no room in the request's future.)
fn upstream_head(mut req: Request<ClientBody>) -> (http::request::Parts, ClientBody, Upgrades) {
    let h2_websocket = headers::is_h2_websocket(&req);
    let upgrade = h2_websocket || req.extensions().get::<super::h1::Upgrade>().is_some();
    let client_upgrade = upgrade.then(|| ClientUpgrade::of(&mut req));
    let (mut parts, body) = req.into_parts();
    let client_version = parts.version;
    if client_version == HttpVersion::HTTP_2 {
        // Host was settled in the head phase (headers::h2_host).
        headers::join_cookies(&mut parts.headers);
    }
    headers::remove_hop_by_hop(&mut parts.headers, upgrade);
    if h2_websocket {
        headers::h2_websocket_to_http11(&mut parts.method, &mut parts.headers, rand::random());
    }
    parts.headers.remove(header::EXPECT);
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        // The origin form: the path and query as they are (sharing their
        // bytes), or parsed again when they do not start with a slash.
        parts.uri = match parts.uri.path_and_query() {
            Some(origin) if origin.as_str().starts_with('/') => Uri::from(origin.clone()),
            other => other.map_or("/", |pq| pq.as_str()).parse().unwrap_or_else(|_| Uri::from_static("/")),
        };
    }
    parts.version = HttpVersion::HTTP_11;
    (parts, body, Upgrades { upgrade, h2_websocket, client_upgrade, client_version })
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    worker: &Rc<Worker>,
    conn: &Rc<ConnInfo>,
    snap: &Arc<Snapshot>,
    d: Decision,
    req: Request<ClientBody>,
    verbatim: Verbatim,
    start: Instant,
    kept: &mut Verbatim,
) -> Response<ResponseBody> {
    let route = &snap.routes[d.route];
    let metrics = route.metrics.version(d.version).clone();
    metrics.assigned(d.reason);
    if d.beta_rejected {
        worker.metrics().beta_rejected.inc();
    }
    let mut ctx = Context::new(worker, conn, snap, &req, start, metrics, d.new_key);
    ctx.route = Some(d.route);
    ctx.version = Some(d.version);
    ctx.reason = Some(d.reason);

    let limits = &snap.config.retries;
    // The request body's bytes, counted as they go (no count, and no
    // allocation for one, when there is no body).
    let mut bytes_in = None;
    // The head's parts live in this block only: they take no room in the
    // future beside the request they become.
    let (mut request, upgrades, resendable) = {
        let (parts, body, upgrades) = upstream_head(req);
        // After an upgrade's head come the tunnel's bytes, not a body.
        let body = if upgrades.upgrade || body.is_end_stream() {
            RequestBody::Empty
        } else {
            let count = bytes_in.insert(Rc::new(Cell::new(0u64))).clone();
            match request_body(worker, snap, body, count).await {
                Ok(body) => body,
                Err(e) => {
                    tracing::debug!(error = %e, "request body failed");
                    return client_body_failed(&ctx, worker, &e);
                }
            }
        };
        // A request without a body comes back from a failed attempt: it may be
        // sent again if its method is safe.
        let resendable = limits.attempts > 0 && !upgrades.upgrade && retry_safe(&parts.method);
        (Request::from_parts(parts, body), upgrades, resendable)
    };
    let Upgrades { upgrade: _, h2_websocket, client_upgrade, client_version } = upgrades;
    let forwarded = Forwarded {
        client_ip: &conn.client_ip_header,
        tls: conn.tls,
        via: match client_version {
            HttpVersion::HTTP_2 => &VIA_2,
            HttpVersion::HTTP_10 => &VIA_10,
            _ => &VIA_11,
        },
        version: d.version.as_str(),
        route: &route.header,
    };

    // An HTTP/2 client's response goes out through a map: the backend's
    // fields go there at once, none kept as they came.
    let lines = client_version != HttpVersion::HTTP_2;

    // Phase 4: send, retrying once when safe.
    let pool = &snap.pools[d.pool];
    let second = worker.second();
    worker.budget.deposit(second, limits);
    let mut fresh = false;
    let mut retried = false;
    let mut backend = match pool.pick(None, |n| rand::random_range(0..n)) {
        Some(b) => b.clone(),
        None => return ctx.error(StatusCode::BAD_GATEWAY, "502 Bad Gateway: no healthy backend\n"),
    };
    loop {
        if ctx.path.is_some() {
            ctx.backend = Some(backend.authority.clone());
        }
        let inflight = match queue::admit(&backend, pool, snap.config.timeouts.queue, worker.metrics()).await {
            Ok(slot) => slot,
            Err(refused) => return queue_refused(&ctx, refused),
        };
        // The attempt: a pooled connection or a new one, then the exchange
        // (awaited here, not in a function of its own: one level of future
        // less to copy whole per request).
        let timeouts = &snap.config.timeouts;
        let replayable = resendable && request.body().is_whole();
        let pooled = if fresh { None } else { worker.connections.take(backend.id, timeouts.upstream_idle, replayable) };
        let reused = pooled.is_some();
        let conn = match pooled {
            Some(c) => Ok(c),
            None => upstream::connect(&backend, timeouts.connect).await,
        };
        let sent = match conn {
            Ok(conn) => attempted(conn.send(request, &verbatim, &forwarded, timeouts.response, lines).await, reused),
            Err(error) => Err(SendError::Upstream(Box::new(SendFailure {
                error,
                request: Some(request),
                unsent: true,
                reused: false,
            }))),
        };
        match sent {
            Ok(resp) => {
                if backend.failures.load(Ordering::Relaxed) != 0 {
                    backend.failures.store(0, Ordering::Relaxed);
                }
                if retried {
                    // The client will not see the failed attempt; the rollout's error rate must.
                    ctx.metrics.hidden_failure();
                }
                let client_upgrade = client_upgrade.map(|c| (c, h2_websocket));
                return match respond(ctx, resp, inflight, client_upgrade, bytes_in, kept) {
                    Responded::Done(response) => response,
                    Responded::Unread(unread) => unread.read().await,
                };
            }
            Err(SendError::Client(e)) => {
                // The client's body broke (malformed, cut short, too long,
                // too slow): neither the backend's fault nor worth a retry.
                tracing::debug!(backend = %backend.authority, error = %e, "request body failed");
                return client_body_failed(&ctx, worker, &e);
            }
            Err(SendError::Upstream(failure)) => {
                let SendFailure { error, request: sent_back, unsent, reused } = *failure;
                ctx.metrics.upstream_error(error.kind);
                let stale = reused && !error.connect && error.kind == UpstreamErrorKind::Reset;
                if !stale {
                    note_failure(worker, pool, &backend, &error);
                }
                tracing::debug!(backend = %backend.authority, kind = error.kind.as_str(), detail = %error.detail, "upstream attempt failed");
                let again = sent_back.filter(|_| unsent || (resendable && error.kind != UpstreamErrorKind::Timeout));
                // A stale pooled connection is not the backend's fault: the request
                // goes once more to the same backend on a fresh connection, free.
                // Then one retry on another backend of the pool, paid from the budget.
                let free = (stale || (reused && unsent)) && !fresh;
                let next = if free {
                    Some(backend.clone())
                } else if !retried {
                    pool.pick(Some(backend.id), |n| rand::random_range(0..n)).cloned()
                } else {
                    None
                };
                if let (Some(again), Some(next)) = (again, next) {
                    if free || worker.budget.withdraw(second, limits) {
                        worker.metrics().retries.with_label_values(&["attempted"]).inc();
                        if free {
                            worker.connections.forget(backend.id);
                        } else {
                            retried = true;
                        }
                        fresh = free;
                        request = again;
                        backend = next;
                        drop(inflight);
                        continue;
                    }
                    worker.metrics().retries.with_label_values(&["budget_exhausted"]).inc();
                }
                drop(inflight);
                return match error.kind {
                    UpstreamErrorKind::Timeout => ctx.error(
                        StatusCode::GATEWAY_TIMEOUT,
                        "504 Gateway Timeout: the backend did not answer in time\n",
                    ),
                    UpstreamErrorKind::Connect => {
                        ctx.error(StatusCode::BAD_GATEWAY, "502 Bad Gateway: cannot connect to the backend\n")
                    }
                    UpstreamErrorKind::Reset => {
                        ctx.error(StatusCode::BAD_GATEWAY, "502 Bad Gateway: the backend closed the connection\n")
                    }
                    UpstreamErrorKind::Protocol => {
                        ctx.error(StatusCode::BAD_GATEWAY, "502 Bad Gateway: invalid response from the backend\n")
                    }
                };
            }
        }
    }
}

/// The body as it goes to the backend: read ahead into memory up to
/// `server.request_buffer` (whole when it fits), streamed beyond.
async fn request_body(
    worker: &Worker,
    snap: &Snapshot,
    body: ClientBody,
    bytes_in: Rc<Cell<u64>>,
) -> std::io::Result<RequestBody> {
    let limit = snap.config.server.request_buffer;
    let idle = snap.config.timeouts.client_body;
    let body = if limit == 0 {
        RequestBody::Client { prefix: None, inner: body, bytes: bytes_in, idle: ReadIdle::new(idle) }
    } else {
        super::body::read_ahead(body, limit, idle, bytes_in).await?
    };
    match body {
        RequestBody::Client { .. } => worker.metrics().slow.body_streamed.inc(),
        _ => worker.metrics().slow.body_buffered.inc(),
    }
    Ok(body)
}

/// The client's body failed, read ahead or while forwarded: 408 when it
/// stopped coming (`timeouts.client_body`), else 400 (malformed, cut short).
fn client_body_failed(ctx: &Context<'_>, worker: &Worker, e: &std::io::Error) -> Response<ResponseBody> {
    if e.kind() == std::io::ErrorKind::TimedOut {
        worker.metrics().slow.body_timeout.inc();
        return ctx.error(StatusCode::REQUEST_TIMEOUT, "408 Request Timeout: the request body stopped coming\n");
    }
    ctx.error(StatusCode::BAD_REQUEST, "400 Bad Request: the request body was malformed or incomplete\n")
}

/// A request that got no slot at its backend (`max_connections`).
fn queue_refused(ctx: &Context<'_>, refused: Refused) -> Response<ResponseBody> {
    match refused {
        Refused::QueueFull => {
            ctx.error(StatusCode::SERVICE_UNAVAILABLE, "503 Service Unavailable: the backend's queue is full\n")
        }
        Refused::TimedOut => ctx.error(
            StatusCode::SERVICE_UNAVAILABLE,
            "503 Service Unavailable: no backend connection became free in time\n",
        ),
    }
}

/// Counts a connection failure or reset (and a response timeout, unless the
/// pool's `eject.timeouts` is off) against the backend; reaching the pool's
/// `eject.after` asks the control plane to eject it.
fn note_failure(worker: &Worker, pool: &Pool, backend: &Arc<Backend>, error: &UpstreamError) {
    let counts = match error.kind {
        UpstreamErrorKind::Connect | UpstreamErrorKind::Reset => true,
        UpstreamErrorKind::Timeout => error.connect || pool.eject.timeouts,
        UpstreamErrorKind::Protocol => error.connect,
    };
    if !counts {
        return;
    }
    let failures = backend.failures.fetch_add(1, Ordering::Relaxed) + 1;
    if failures == pool.eject.after {
        let _ = worker.shared.signals.send(DataSignal::BackendFailing(backend.clone()));
    }
}

struct SendFailure {
    error: UpstreamError,
    /// The request back: unsent, or without a body.
    request: Option<Request<RequestBody>>,
    /// None of the request was written: it is safe to send anywhere.
    unsent: bool,
    /// The attempt used a pooled connection.
    reused: bool,
}

enum SendError {
    Upstream(Box<SendFailure>),
    /// The client's request body failed: the request ends with a 400.
    Client(std::io::Error),
}

/// How an attempt on a connection (`reused`: from the pool) went.
fn attempted(
    result: Result<Response<UpstreamBody>, Failure>,
    reused: bool,
) -> Result<Response<UpstreamBody>, SendError> {
    match result {
        Ok(resp) => Ok(resp),
        Err(Failure::Upstream { error, request, unsent }) => {
            let request = request.map(|r| *r);
            Err(SendError::Upstream(Box::new(SendFailure { error, request, unsent, reused })))
        }
        Err(Failure::Client(e)) => Err(SendError::Client(e)),
    }
}

/// Phase 5: the response to the client. `client_upgrade` is the client side of
/// a requested upgrade, with whether it is a WebSocket over HTTP/2 (RFC 8441).
/// A plain function: it waits only for a body expected whole that has not
/// all arrived ([`Responded::Unread`]), and a future of its own would be
/// built and copied for every response.
fn respond<'a>(
    ctx: Context<'a>,
    resp: Response<UpstreamBody>,
    inflight: InFlight,
    client_upgrade: Option<(ClientUpgrade, bool)>,
    bytes_in: Option<Rc<Cell<u64>>>,
    kept: &mut Verbatim,
) -> Responded<'a> {
    let h2_websocket = matches!(client_upgrade, Some((_, true)));
    if h2_websocket && resp.status().is_success() {
        // An HTTP/2 client's CONNECT cannot take a 2xx with a body in place of the tunnel.
        drop((resp, inflight));
        return Responded::Done(
            ctx.error(StatusCode::BAD_GATEWAY, "502 Bad Gateway: the backend did not switch protocols\n"),
        );
    }
    let (mut parts, mut body) = resp.into_parts();
    let mut tunnel = None;
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        // The backend connection becomes the tunnel's other end, for
        // WebSocket only: the one upgrade a client's request can ask for.
        let refused = match (client_upgrade, body.take_tunnel()) {
            (Some(_), Some(_)) if !headers::is_websocket_upgrade(&parts.headers) => {
                Some("502 Bad Gateway: the backend switched to another protocol\n")
            }
            (Some((client, _)), Some(upstream)) => {
                tunnel = Some((client, upstream));
                None
            }
            _ => Some("502 Bad Gateway: the backend switched protocols unasked\n"),
        };
        if let Some(text) = refused {
            drop((body, inflight));
            return Responded::Done(ctx.error(StatusCode::BAD_GATEWAY, text));
        }
    }
    *kept = body.take_verbatim();
    // An HTTP/1.1 client keeps `Upgrade` and `Connection: upgrade`; an HTTP/2
    // client gets neither.
    headers::remove_hop_by_hop(&mut parts.headers, tunnel.is_some() && !h2_websocket);
    if tunnel.is_some() && h2_websocket {
        headers::http11_upgrade_to_h2_websocket(&mut parts.status, &mut parts.headers);
    }
    let status = parts.status;
    let worker = ctx.worker.clone();
    let backend = &inflight.backend().authority;
    let log = ctx.path.clone().map(|path| {
        Box::new(Pending { method: ctx.method.clone(), path, reason: ctx.reason, backend: backend.clone() })
    });
    let finish = Finish {
        worker: worker.clone(),
        conn: ctx.conn.clone(),
        backend_id: inflight.backend().id,
        inflight: Some(inflight),
        metrics: ctx.metrics.clone(),
        status: status.as_u16(),
        start: ctx.start,
        log,
        failed: Cell::new(false),
        bytes_in,
    };
    let body = if let Some((client, upstream)) = tunnel {
        // The tunnel is counted as one request, finished when it opens.
        worker.spawn_tunnel(client, upstream);
        finish.done(true, 0, None);
        ResponseBody::empty()
    } else if body.is_end_stream() {
        finish.done(true, 0, body.take_connection());
        ResponseBody::empty()
    } else {
        // Read ahead of a slow client, so that a short answer frees its
        // backend connection (and slot) at once.
        let ahead = ReadAhead::now(&mut body, ctx.snap.config.server.response_buffer);
        if ahead.waits(&body) {
            return Responded::Unread(Box::new(Unread { ctx, parts, body, ahead, finish }));
        }
        read_ahead(&worker, body, ahead, finish)
    };
    Responded::Done(client_response(&ctx, parts, body))
}

/// What [`respond`] gives: the response, or what it leaves to wait for.
/// The response, the common case, is returned by value (boxed, it would
/// cost an allocation per response); the rare wait is boxed.
#[allow(clippy::large_enum_variant)]
enum Responded<'a> {
    Done(Response<ResponseBody>),
    Unread(Box<Unread<'a>>),
}

/// A response whose body is expected whole but has not all arrived: its
/// rest is waited for (up to `timeouts.response`) before the head goes out.
struct Unread<'a> {
    ctx: Context<'a>,
    parts: http::response::Parts,
    body: UpstreamBody,
    ahead: ReadAhead,
    finish: Finish,
}

impl Unread<'_> {
    async fn read(self) -> Response<ResponseBody> {
        let Unread { ctx, parts, mut body, mut ahead, finish } = self;
        ahead.rest(&mut body, ctx.snap.config.timeouts.response).await;
        let body = read_ahead(ctx.worker, body, ahead, finish);
        client_response(&ctx, parts, body)
    }
}

/// The client's body after a read-ahead: a body read whole frees its
/// backend connection (and slot) at once.
fn read_ahead(worker: &Worker, mut body: UpstreamBody, ahead: ReadAhead, mut finish: Finish) -> ResponseBody {
    let delimited = ahead.delimited;
    if body.is_end_stream() {
        worker.metrics().slow.response_buffered.inc();
        finish.release(body.take_connection());
    }
    ResponseBody::Upstream { inner: body, ahead: ahead.frames, delimited, bytes: 0, finish: Some(finish) }
}

/// The response as the client gets it: a new user's cookie added.
fn client_response(ctx: &Context<'_>, parts: http::response::Parts, body: ResponseBody) -> Response<ResponseBody> {
    let mut out = Response::from_parts(parts, body);
    if let Some(key) = ctx.new_key {
        append_cookie(&mut out, ctx.snap, key, ctx.conn.tls);
    }
    out
}

/// Runs once when a proxied response ends: metrics, access log, and the
/// connection back to the pool after a complete body.
pub struct Finish {
    worker: Rc<Worker>,
    conn: Rc<ConnInfo>,
    backend_id: u64,
    /// Held until the backend's part ends: its in-flight count (its slot).
    inflight: Option<InFlight>,
    metrics: Arc<VersionMetrics>,
    status: u16,
    start: Instant,
    log: Option<Box<Pending>>,
    /// The backend failed within the body (the access log keeps such lines when sampling).
    failed: Cell<bool>,
    /// The request body's bytes; `None`: it had none.
    bytes_in: Option<Rc<Cell<u64>>>,
}

/// What the access log needs of the request until its response ends; the
/// route, version and backend are the metrics' and the in-flight count's.
struct Pending {
    method: Method,
    path: PathAndQuery,
    reason: Option<Reason>,
    /// Kept here: the backend's slot may be released before the body ends.
    backend: Arc<str>,
}

impl Finish {
    /// `backend`: the connection, when the body was complete and the
    /// connection can carry another request.
    /// The backend failed within the body, after the head (and its status)
    /// went to the client.
    pub fn body_failed(&self, kind: UpstreamErrorKind) {
        self.failed.set(true);
        self.metrics.upstream_error(kind);
        if self.status < 500 {
            self.metrics.hidden_failure();
        }
    }

    /// The backend's part is over (the body was read whole ahead of the
    /// client): its connection back to the pool, its slot freed.
    pub fn release(&mut self, backend: Option<Box<Connection>>) {
        if let Some(c) = backend {
            // Idle since the request began, as far as expiry is concerned:
            // no clock read here, and the connection is closed a little early
            // rather than late.
            self.worker.connections.put_at(self.backend_id, c, self.start);
        }
        self.inflight = None;
    }

    pub fn done(self, complete: bool, bytes_out: u64, backend: Option<Box<Connection>>) {
        // One clock read for the duration, the pool and the connection's idle time.
        let now = Instant::now();
        if complete && let Some(c) = backend {
            self.worker.connections.put_at(self.backend_id, c, now);
        }
        let elapsed = now.saturating_duration_since(self.start);
        self.metrics.response(self.status, elapsed.as_secs_f64());
        if let (Some(log), Some(pending)) = (&self.worker.shared.access_log, &self.log) {
            log.log(&Record {
                client: self.conn.client_ip_header.to_str().unwrap_or_default(),
                method: pending.method.as_str(),
                path: pending.path.path(),
                status: self.status,
                route: Some(self.metrics.route()),
                version: Some(self.metrics.version()),
                reason: pending.reason,
                backend: Some(&pending.backend),
                duration: elapsed,
                bytes_in: self.bytes_in.as_ref().map_or(0, |b| b.get()),
                bytes_out,
                failed: self.failed.get(),
            });
        }
        self.conn.activity.request_ended_at(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_of_return_paths() {
        assert_eq!(percent_decode("%2Fshop%2Fcart"), "/shop/cart");
        assert_eq!(percent_decode("/a+b"), "/a b");
        assert_eq!(percent_decode("/bad%zz"), "/bad%zz");
        assert_eq!(percent_decode("/end%2"), "/end%2");
    }

    #[test]
    fn retry_safe_methods() {
        assert!(retry_safe(&Method::GET));
        assert!(retry_safe(&Method::PUT));
        assert!(!retry_safe(&Method::POST));
        assert!(!retry_safe(&Method::PATCH));
    }
}
