//! `cutover ctl dashboard`: a local web page that watches and steers a
//! release (DESIGN §8), the way `kubectl argo rollouts dashboard` does.
//!
//! A small HTTP server bridges the browser to the admin API: it speaks to
//! the admin listener exactly as `ctl` does ([`crate::ctl::call`]), never to
//! the control plane's internals, so it works against any running cutover,
//! over its Unix socket or over TCP with a token. [`access`] decides who may
//! use it, [`bridge`] maps the page's calls to admin calls, and the page
//! itself (HTML, CSS, JS under `assets/`) is built into the binary.

mod access;
mod bridge;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::ctl::Target;
pub use access::CSRF_HEADER;
use access::{Access, Refusal};

const PAGE: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

/// Bytes the browser downloads for the page (HTML, script, style).
pub const PAGE_BYTES: usize = PAGE.len() + SCRIPT.len() + STYLE.len();

// The page's budget (DESIGN §8 targets), kept at compile time.
const _: () = assert!(PAGE_BYTES < 150 * 1024, "the dashboard page must stay under 150 KB");

/// Request bodies above this size are refused (the admin API's limit too).
const MAX_BODY: usize = 64 * 1024;

type Body = Full<Bytes>;

struct State {
    target: Target,
    access: Access,
}

/// A running dashboard; stops when dropped.
pub struct Dashboard {
    /// The address it listens on (the real port when 0 was asked).
    pub addr: SocketAddr,
    /// `http://ADDR/?token=...`: the one way in.
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `listen` and serves the dashboard for the cutover at `target`.
pub async fn start(target: Target, listen: SocketAddr) -> std::io::Result<Dashboard> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let access = Access::new(addr);
    let url = access.url();
    let state = Arc::new(State { target, access });
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(&state, req).await) }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(Dashboard { addr, url, task })
}

/// `cutover ctl dashboard`: serves until Ctrl-C. Returns the exit code.
pub fn run(target: Target, listen: SocketAddr) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cutover ctl dashboard: {e}");
            return 2;
        }
    };
    runtime.block_on(async {
        let dashboard = match start(target.clone(), listen).await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("cutover ctl dashboard: cannot listen on {listen}: {e}");
                return 1;
            }
        };
        if let Err(e) = crate::ctl::call(&target, Method::GET, "/healthz", None).await {
            eprintln!("cutover ctl dashboard: {e} (the page will keep trying)");
        }
        println!("cutover dashboard for the admin API at {}:\n\n  {}\n\nCtrl-C to stop.", target.listen, dashboard.url);
        let _ = tokio::signal::ctrl_c().await;
        0
    })
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    // The URL carries the token: never send it on as a referrer.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // Nothing from another origin, no framing (clickjacking), no inline script.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    resp
}

fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default();
    respond(status, "application/json", body)
}

fn refused(refusal: Refusal, authority: &str) -> Response<Body> {
    match refusal {
        Refusal::Host(host) => respond(
            StatusCode::MISDIRECTED_REQUEST,
            "text/plain; charset=utf-8",
            format!("this dashboard answers only to Host {authority}, not {host:?}\n"),
        ),
        Refusal::NoSession => respond(
            StatusCode::UNAUTHORIZED,
            "text/plain; charset=utf-8",
            "open the URL with ?token=... that `cutover ctl dashboard` printed\n",
        ),
        Refusal::Forbidden(why) => json_error(StatusCode::FORBIDDEN, why),
    }
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Body> {
    let access = &state.access;
    if let Err(r) = access.check_host(req.headers()) {
        return refused(r, &access.authority);
    }
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if method == Method::GET
        && path == "/"
        && let Some(token) = query_param(req.uri().query(), "token")
    {
        if !access.token_matches(token) {
            return refused(Refusal::NoSession, &access.authority);
        }
        let mut resp = respond(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
        resp.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/"));
        if let Ok(cookie) = HeaderValue::from_str(&access.new_session()) {
            resp.headers_mut().insert(header::SET_COOKIE, cookie);
        }
        return resp;
    }
    let nonce = match access.session(req.headers()) {
        Ok(n) => n,
        Err(r) => return refused(r, &access.authority),
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, [""]) => {
            respond(StatusCode::OK, "text/html; charset=utf-8", PAGE.replace("{{csrf}}", &access.csrf(&nonce)))
        }
        (&Method::GET, ["assets", "app.js"]) => respond(StatusCode::OK, "text/javascript; charset=utf-8", SCRIPT),
        (&Method::GET, ["assets", "style.css"]) => respond(StatusCode::OK, "text/css; charset=utf-8", STYLE),
        (&Method::GET, ["api", "state"]) => bridge::state(&state.target, req.uri().query()).await,
        (&Method::POST, ["api", "routes", route, action]) => {
            if let Err(r) = access.check_change(&nonce, req.headers()) {
                return refused(r, &access.authority);
            }
            let (route, action) = (route.to_string(), action.to_string());
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return json_error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
            };
            bridge::action(&state.target, &route, &action, &body).await
        }
        (_, ["api", ..]) | (_, ["" | "assets"]) => {
            json_error(StatusCode::METHOD_NOT_ALLOWED, &format!("{method} is not allowed on {path}; changes are POSTs"))
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", format!("no page {path}\n")),
    }
}
