//! Front-door security, black-box: the host cutover routes by is the one
//! host the backend is told (HTTP/1.1 absolute form, HTTP/2 `:authority`
//! and `host`, `Connection` naming `Host`), no h2c tunnel past routing, a
//! TRACE or OPTIONS whose `Max-Forwards` runs out stops at the proxy, and
//! valid input accepted (leading zeros, a later HTTP/1.x minor version).
//!
//! Backends here are raw sockets that record each request head exactly as
//! the proxy wrote it: a refused request must leave them untouched, an
//! accepted one must reach them with the exact head asserted.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::wire::{Reader, find, lossy};
use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bound on every wait: nothing in this file can hang.
const LIMIT: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, work).await.unwrap_or_else(|_| panic!("{what}: nothing within {LIMIT:?}"))
}

// ------------------------------------------------------------- raw backend

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
const SWITCH_H2C: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";

/// A request as a backend read it: the head without its blank line, and the body.
#[derive(Debug, Clone)]
struct Received {
    head: String,
    body: Vec<u8>,
}

/// A backend on 127.0.0.1 (port from 0) answering every request with the
/// same bytes and recording what it read.
struct RawBackend {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawBackend {
    async fn start(answer: &'static [u8]) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, answer, log.clone()));
            }
        });
        RawBackend { addr, received, task }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The only request this backend received.
    fn only(&self) -> Received {
        let received = self.received();
        assert_eq!(received.len(), 1, "{received:?}");
        received[0].clone()
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(stream: TcpStream, answer: &'static [u8], log: Arc<Mutex<Vec<Received>>>) {
    let (read, mut write) = stream.into_split();
    let mut reader = Reader::new(read);
    while let Ok(Ok(Some(head))) = tokio::time::timeout(LIMIT, reader.head()).await {
        let lower = head.to_ascii_lowercase();
        let length = lower.lines().find_map(|l| l.strip_prefix("content-length: ")).and_then(|n| n.parse().ok());
        let body = if lower.contains("\r\ntransfer-encoding: chunked") {
            tokio::time::timeout(LIMIT, reader.chunked()).await.ok().and_then(Result::ok)
        } else {
            tokio::time::timeout(LIMIT, reader.take(length.unwrap_or(0))).await.ok().and_then(Result::ok)
        };
        log.lock().unwrap().push(Received { head, body: body.clone().unwrap_or_default() });
        if body.is_none() || write.write_all(answer).await.is_err() {
            return;
        }
        if answer.starts_with(b"HTTP/1.1 101") {
            // A tunnel end that never says anything: it reads until the proxy closes.
            let _ = tokio::time::timeout(LIMIT, reader.until_closed()).await;
            return;
        }
    }
}

/// A proxy with route `admin` (host admin.example.com) on `admin` and route
/// `web` (any other host) on `web`, and `extra` TOML.
fn proxy(web: &RawBackend, admin: &RawBackend, extra: &str) -> Proxy {
    let admin_route = format!(
        "{extra}\n[[routes]]\nname = \"admin\"\nhost = \"admin.example.com\"\nstable = \"admin\"\n\n\
         [pools.admin]\nbackends = [\"{}\"]\n",
        admin.addr
    );
    Proxy::start(&two_pool_config(web.addr, web.addr, 0.0, &admin_route))
}

/// The head the proxy writes for a request from 127.0.0.1 on plain HTTP,
/// after the request line and the client's `fields`.
fn forwarded(request_line: &str, fields: &[&str], host: &str, route: &str, via: &str) -> String {
    let mut head = format!("{request_line}\r\n");
    for field in fields {
        head.push_str(field);
        head.push_str("\r\n");
    }
    head.push_str(&format!(
        "x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-host: {host}\r\n\
         via: {via}\r\nx-cutover-version: stable\r\nx-cutover-route: {route}"
    ));
    head
}

// ------------------------------------------------------------- wire client

/// A response read off the wire, and whether the proxy closed the connection after it.
#[derive(Debug)]
struct Answer {
    status_line: String,
    head: String,
    status: u16,
    body: String,
    closed: bool,
}

/// Sends `request` on a fresh connection and reads one response
/// (Content-Length framed, as all of cutover's own are, or chunked); with
/// `then_closed`, waits for the proxy to close the connection.
async fn exchange(addr: SocketAddr, request: &[u8], then_closed: bool) -> Answer {
    let stream = within("connect", TcpStream::connect(addr)).await.unwrap();
    let (read, mut write) = stream.into_split();
    within("write", write.write_all(request)).await.unwrap();
    let mut reader = Reader::new(read);
    let head = within("response head", reader.head()).await.unwrap().expect("a response, not a close");
    let status_line = head.lines().next().unwrap_or_default().to_string();
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status code");
    let lower = head.to_ascii_lowercase();
    let body = if lower.contains("\r\ntransfer-encoding: chunked") {
        within("body", reader.chunked()).await.unwrap()
    } else {
        let length = lower.lines().find_map(|l| l.strip_prefix("content-length: ")).map_or(0, |n| n.parse().unwrap());
        within("body", reader.take(length)).await.unwrap()
    };
    let closed = then_closed && within("close", reader.until_closed()).await.is_empty();
    Answer { status_line, head, status, body: lossy(&body), closed }
}

/// A request the HTTP/1.1 server refuses: `status` with `text`, the
/// connection closed, and nothing reached a backend.
async fn assert_refused(proxy: &Proxy, backends: &[&RawBackend], request: &[u8], status: u16, text: &str) {
    let answer = exchange(proxy.addr(), request, true).await;
    assert_eq!((answer.status, answer.body.as_str()), (status, text), "for {:?}", lossy(request));
    assert!(answer.closed, "the connection closes after {:?}", lossy(request));
    for backend in backends {
        assert!(backend.received().is_empty(), "reached a backend: {:?}", backend.received());
    }
}

// ------------------------------------------------------ HTTP/1.1: one host

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_is_the_one_host_routed_and_sent() {
    let (web, admin) = (RawBackend::start(OK).await, RawBackend::start(OK).await);
    let proxy = proxy(&web, &admin, "");
    let request = b"GET http://admin.example.com/x?y=1 HTTP/1.1\r\nHost: www.example.com\r\nAccept: */*\r\n\r\n";
    assert_eq!(exchange(proxy.addr(), request, false).await.status, 200);
    let want = forwarded(
        "GET /x?y=1 HTTP/1.1",
        // Host rewritten from the target; Accept passes as it was sent.
        &["host: admin.example.com", "Accept: */*"],
        "admin.example.com",
        "admin",
        "1.1 cutover",
    );
    assert_eq!(admin.only().head, want);
    assert!(web.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_info_in_an_absolute_form_target_is_a_400() {
    let (web, admin) = (RawBackend::start(OK).await, RawBackend::start(OK).await);
    let proxy = proxy(&web, &admin, "[beta]\nenroll_path = \"/.cutover/beta\"");
    for target in [
        "http://user:pw@admin.example.com/",
        "http://admin.example.com@www.example.com/",
        "http://u@x/.cutover/beta?join",
    ] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: www.example.com\r\n\r\n");
        let text = "400 Bad Request: user info in the request target\n";
        assert_refused(&proxy, &[&web, &admin], request.as_bytes(), 400, text).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_authority_is_checked_like_a_host_field() {
    let (web, admin) = (RawBackend::start(OK).await, RawBackend::start(OK).await);
    let proxy = proxy(&web, &admin, "");
    let text = "400 Bad Request: invalid request target\n";
    for request in [
        // The authority form is for CONNECT alone.
        &b"GET admin.example.com:80 HTTP/1.1\r\nHost: www.example.com\r\n\r\n"[..],
        b"GET http://:80/ HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
        // No TCP port: a backend keeping it in 16 bits would read `:80`.
        b"GET http://admin.example.com:65616/ HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
    ] {
        assert_refused(&proxy, &[&web, &admin], request, 400, text).await;
    }
}

/// RFC 9110 §7.2 and RFC 3986 §3.2.2: a Host is `uri-host [":" port]`.
/// `:80` names no host (cutover would have routed it as hostless, to the
/// `*` route); a port that is not digits, a second colon, an IP literal
/// that is no IPv6 address, a broken percent-encoding are no Host either;
/// nor is a port no TCP port can be (65616 is 80 to a backend that keeps it
/// in 16 bits, 4294967376 to one that keeps 32). An empty port (`host:`) is in the grammar and means the default port
/// (RFC 3986 §6.2.3): served, the field forwarded as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_field_that_is_not_host_and_port_is_a_400() {
    let (web, admin) = (RawBackend::start(OK).await, RawBackend::start(OK).await);
    let proxy = proxy(&web, &admin, "");
    let text = "400 Bad Request: invalid Host field\n";
    for host in [
        ":80",
        ":",
        "admin.example.com:abc",
        "admin.example.com:80:80",
        "[::1",
        "[zz]:80",
        "%zz.example",
        "admin.example.com:65616",
        "admin.example.com:4294967376",
    ] {
        for version in ["1.1", "1.0"] {
            let request = format!("GET / HTTP/{version}\r\nHost: {host}\r\n\r\n");
            assert_refused(&proxy, &[&web, &admin], request.as_bytes(), 400, text).await;
        }
    }
    let request = b"GET /e HTTP/1.1\r\nHost: admin.example.com:\r\n\r\n";
    assert_eq!(exchange(proxy.addr(), request, false).await.status, 200);
    let want =
        forwarded("GET /e HTTP/1.1", &["host: admin.example.com:"], "admin.example.com:", "admin", "1.1 cutover");
    assert_eq!(admin.only().head, want);
    assert!(web.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_field_naming_host_does_not_remove_it() {
    let (web, admin) = (RawBackend::start(OK).await, RawBackend::start(OK).await);
    let proxy = proxy(&web, &admin, "");
    let request = b"GET /a HTTP/1.1\r\nHost: admin.example.com\r\nConnection: Host, Cookie, X-Drop\r\n\
                    Cookie: cutover_id=00000000deadbeef\r\nX-Drop: 1\r\n\r\n";
    assert_eq!(exchange(proxy.addr(), request, false).await.status, 200);
    let fields = ["host: admin.example.com", "cookie: cutover_id=00000000deadbeef"];
    assert_eq!(admin.only().head, forwarded("GET /a HTTP/1.1", &fields, "admin.example.com", "admin", "1.1 cutover"));
}

// ------------------------------------------------------------ no h2c tunnel

const H2C_UPGRADE: &[u8] = b"GET /h2c HTTP/1.1\r\nHost: www.example.com\r\nConnection: Upgrade, HTTP2-Settings\r\n\
                             Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_is_never_forwarded() {
    let (web, admin) = (RawBackend::start(OK).await, RawBackend::start(OK).await);
    let proxy = proxy(&web, &admin, "");
    let answer = exchange(proxy.addr(), H2C_UPGRADE, false).await;
    assert_eq!((answer.status_line.as_str(), answer.body.as_str()), ("HTTP/1.1 200 OK", "ok\n"), "a plain request");
    let want = forwarded("GET /h2c HTTP/1.1", &["host: www.example.com"], "www.example.com", "web", "1.1 cutover");
    assert_eq!(web.only().head, want, "no Upgrade, HTTP2-Settings or Connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_switches_to_h2c_gets_the_client_a_502() {
    let (web, admin) = (RawBackend::start(SWITCH_H2C).await, RawBackend::start(OK).await);
    let proxy = proxy(&web, &admin, "");
    // Asked for h2c: the backend never heard of it, and its 101 is unasked.
    let answer = exchange(proxy.addr(), H2C_UPGRADE, false).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (502, "502 Bad Gateway: the backend switched protocols unasked\n")
    );
    // Asked for WebSocket: a 101 to anything else is no tunnel.
    let websocket = b"GET /ws HTTP/1.1\r\nHost: www.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                      Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let answer = exchange(proxy.addr(), websocket, false).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (502, "502 Bad Gateway: the backend switched to another protocol\n")
    );
    let heads: Vec<String> = web.received().into_iter().map(|r| r.head).collect();
    assert_eq!(heads.len(), 2);
    assert!(!heads[0].to_ascii_lowercase().contains("upgrade"), "{}", heads[0]);
    assert!(heads[1].contains("\r\nupgrade: websocket\r\n"), "{}", heads[1]);
}

// ---------------------------------------------------- valid input accepted

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leading_zeros_in_lengths_and_chunk_sizes_are_accepted() {
    let (web, admin) = (RawBackend::start(OK).await, RawBackend::start(OK).await);
    let proxy = proxy(&web, &admin, "");
    let zeros = "0".repeat(30);
    let request = format!("POST /cl HTTP/1.1\r\nHost: a.example\r\nContent-Length: {zeros}5\r\n\r\nhello");
    assert_eq!(exchange(proxy.addr(), request.as_bytes(), false).await.status, 200);
    let request = format!(
        "POST /chunked HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n\
         {zeros}5\r\nhello\r\n{zeros}6\r\n world\r\n{zeros}\r\n\r\n"
    );
    assert_eq!(exchange(proxy.addr(), request.as_bytes(), false).await.status, 200);
    let received = web.received();
    assert_eq!(received.len(), 2);
    let fields = ["host: a.example", "content-length: 5"];
    assert_eq!(received[0].head, forwarded("POST /cl HTTP/1.1", &fields, "a.example", "web", "1.1 cutover"));
    assert_eq!(received[0].body, b"hello");
    // The body fits in `server.request_buffer`, so it is read whole and goes
    // on with its length.
    let head = forwarded("POST /chunked HTTP/1.1", &["host: a.example"], "a.example", "web", "1.1 cutover");
    assert_eq!(received[1].head, head + "\r\ncontent-length: 11");
    assert_eq!(received[1].body, b"hello world");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_http_1_minor_version_is_served_as_http_1_1() {
    let (web, admin) = (RawBackend::start(OK).await, RawBackend::start(OK).await);
    let proxy = proxy(&web, &admin, "");
    let answer = exchange(proxy.addr(), b"GET /v HTTP/1.7\r\nHost: a.example\r\n\r\n", false).await;
    assert_eq!((answer.status_line.as_str(), answer.body.as_str()), ("HTTP/1.1 200 OK", "ok\n"));
    assert_eq!(web.only().head, forwarded("GET /v HTTP/1.1", &["host: a.example"], "a.example", "web", "1.1 cutover"));
}

/// RFC 9112 §2.3: an HTTP/1 version is `HTTP/1.` and a minor digit. `HTTP/1`
/// alone names no version: a malformed request line (400), not a version
/// cutover lacks (505). `HTTP/2` and `HTTP/3`, as those versions name
/// themselves, stay 505.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_without_its_minor_version_is_a_malformed_request_line() {
    let (web, admin) = (RawBackend::start(OK).await, RawBackend::start(OK).await);
    let proxy = proxy(&web, &admin, "");
    let malformed = "400 Bad Request: malformed request head\n";
    assert_refused(&proxy, &[&web, &admin], b"GET / HTTP/1\r\nHost: a.example\r\n\r\n", 400, malformed).await;
    let unsupported = "505 HTTP Version Not Supported: unsupported HTTP version\n";
    for version in ["HTTP/2", "HTTP/3", "HTTP/2.0"] {
        let request = format!("GET / {version}\r\nHost: a.example\r\n\r\n");
        assert_refused(&proxy, &[&web, &admin], request.as_bytes(), 505, unsupported).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_heads_are_counted_by_listener_and_code() {
    let (web, admin) = (RawBackend::start(OK).await, RawBackend::start(OK).await);
    let proxy = proxy(&web, &admin, "");
    let long_line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(70 * 1024));
    let big_head = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(70 * 1024));
    for (request, status) in [
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n".to_vec(), 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), 400),
        (long_line.into_bytes(), 414),
        (big_head.into_bytes(), 431),
    ] {
        let answer = exchange(proxy.addr(), &request, true).await;
        assert_eq!((answer.status, answer.closed), (status, true));
    }
    for backend in [&web, &admin] {
        assert!(backend.received().is_empty(), "reached a backend: {:?}", backend.received());
    }
    let text = proxy.metrics();
    assert_eq!(metric(&text, r#"cutover_http1_head_refusals_total{code="400",listener="http"}"#), 2.0);
    assert_eq!(metric(&text, r#"cutover_http1_head_refusals_total{code="414",listener="http"}"#), 1.0);
    assert_eq!(metric(&text, r#"cutover_http1_head_refusals_total{code="431",listener="http"}"#), 1.0);
    promtool_check(&text);
}

fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is required (Debian package `prometheus`)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!("{}{}", lossy(&out.stdout), lossy(&out.stderr));
    assert!(out.status.success() && report.trim().is_empty(), "promtool check metrics:\n{report}");
}

// ------------------------------------------------------- HTTP/2: one host

type H2 = hyper::client::conn::http2::SendRequest<Body>;

async fn h2_over<I>(io: I) -> H2
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        within("h2 handshake", hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)))
            .await
            .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// HTTP/2 with prior knowledge on the plain listener.
async fn h2(addr: SocketAddr) -> H2 {
    h2_over(within("connect", TcpStream::connect(addr)).await.unwrap()).await
}

async fn h2_send(h2: &mut H2, req: Request<Body>) -> (StatusCode, String) {
    let resp = within("h2 response", h2.send_request(req)).await.expect("a response");
    let status = resp.status();
    let body: Bytes = within("h2 body", resp.into_body().collect()).await.expect("body").to_bytes();
    (status, lossy(&body))
}

fn get_with(uri: &str, hosts: &[&str]) -> Request<Body> {
    let mut req = Request::get(uri);
    for host in hosts {
        req = req.header("host", *host);
    }
    req.body(empty()).unwrap()
}

/// HTTP/2 requests that are malformed by their host (RFC 9113 §8.3.1):
/// each gets a 400 and reaches no backend, on a connection that goes on.
async fn assert_h2_host_rules(h2: &mut H2, web: &RawBackend, admin: &RawBackend) {
    let differs = "400 Bad Request: host field differs from :authority\n";
    for (req, text) in [
        (get_with("http://admin.example.com/", &["www.example.com"]), differs),
        (get_with("http://www.example.com/", &["admin.example.com"]), differs),
        (get_with("http://admin.example.com/.cutover/beta?join", &["www.example.com"]), differs),
        (get_with("http://user:pw@admin.example.com/", &[]), "400 Bad Request: user info in :authority\n"),
        (get_with("http://admin.example.com:65616/", &[]), "400 Bad Request: invalid :authority\n"),
        (
            get_with("http://admin.example.com/", &["admin.example.com", "admin.example.com"]),
            "400 Bad Request: more than one host field\n",
        ),
    ] {
        let what = format!("{} {:?}", req.uri(), req.headers());
        assert_eq!(h2_send(h2, req).await, (StatusCode::BAD_REQUEST, text.to_string()), "{what}");
    }
    // WebSocket by extended CONNECT (RFC 8441) follows the same rules.
    let mut connect = Request::connect("http://admin.example.com/chat")
        .header("host", "www.example.com")
        .header("sec-websocket-version", "13")
        .body(empty())
        .unwrap();
    connect.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    assert_eq!(h2_send(h2, connect).await, (StatusCode::BAD_REQUEST, differs.to_string()));
    for backend in [web, admin] {
        assert!(backend.received().is_empty(), "reached a backend: {:?}", backend.received());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_with_two_hosts_or_user_info_are_malformed() {
    let (web, admin) = (RawBackend::start(OK).await, RawBackend::start(OK).await);
    let proxy = proxy(&web, &admin, "[beta]\nenroll_path = \"/.cutover/beta\"");
    let mut h2 = h2(proxy.addr()).await;
    assert_h2_host_rules(&mut h2, &web, &admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_backend_request_has_one_host_the_authority() {
    let (web, admin) = (RawBackend::start(OK).await, RawBackend::start(OK).await);
    let proxy = proxy(&web, &admin, "");
    let mut h2 = h2(proxy.addr()).await;
    let got = h2_send(&mut h2, get_with("http://admin.example.com/p?q", &["Admin.Example.com"])).await;
    assert_eq!(got, (StatusCode::OK, "ok\n".to_string()));
    let got = h2_send(&mut h2, get_with("http://admin.example.com/p?q", &[])).await;
    assert_eq!(got, (StatusCode::OK, "ok\n".to_string()));
    let want =
        forwarded("GET /p?q HTTP/1.1", &["host: admin.example.com"], "admin.example.com", "admin", "2.0 cutover");
    let heads: Vec<String> = admin.received().into_iter().map(|r| r.head).collect();
    assert_eq!(heads, [want.clone(), want]);
    // An h2c upgrade's settings field is hop-by-hop over HTTP/2 too.
    let req =
        Request::get("http://www.example.com/s").header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA").body(empty());
    assert_eq!(h2_send(&mut h2, req.unwrap()).await.0, StatusCode::OK);
    let want = forwarded("GET /s HTTP/1.1", &["host: www.example.com"], "www.example.com", "web", "2.0 cutover");
    assert_eq!(web.only().head, want);
}

/// One HTTP/2 frame (RFC 9113 §4.1).
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A GET's HEADERS frame (END_STREAM, END_HEADERS) with `:method GET`,
/// `:scheme http`, `:path` and, if given, `host`, and no `:authority`:
/// what hyper's and h2's clients cannot send (they take the scheme and
/// authority from one URI). HPACK (RFC 7541): the method and scheme indexed
/// from the static table, the path and host literal without indexing,
/// their names indexed (`:path` 4, `host` 38), no Huffman coding.
fn h2_get_without_authority(stream: u32, path: &str, host: Option<&str>) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    if let Some(host) = host {
        block.extend_from_slice(&[0x0f, 38 - 15, host.len() as u8]);
        block.extend_from_slice(host.as_bytes());
    }
    h2_frame(0x1, 0x1 | 0x4, stream, &block)
}

/// Reads frames until `stream` ends: its status (an indexed `:status` from
/// HPACK's static table, as the server's encoder writes 200 and 400) and
/// its body. Acknowledges the server's SETTINGS on the way.
async fn h2_read_response(io: &mut TcpStream, stream: u32) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let (mut status, mut body) = (None, Vec::new());
    loop {
        let mut head = [0u8; 9];
        within("h2 frame", io.read_exact(&mut head)).await.expect("a frame, not a close");
        let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags, id) = (head[3], head[4], u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff);
        let mut payload = vec![0u8; length];
        within("h2 payload", io.read_exact(&mut payload)).await.unwrap();
        match (kind, id == stream) {
            (0x4, _) if flags & 0x1 == 0 => within("ack", io.write_all(&h2_frame(0x4, 0x1, 0, &[]))).await.unwrap(),
            (0x1, true) => {
                assert_eq!(flags & 0x28, 0, "no padding or priority in the response HEADERS");
                let static_status = [200, 204, 206, 304, 400, 404, 500];
                status = match payload.first() {
                    Some(&b @ 0x88..=0x8e) => Some(static_status[usize::from(b - 0x88)]),
                    other => panic!("a :status from the static table first, not {other:?}"),
                };
            }
            (0x0, true) => body.extend_from_slice(&payload),
            (0x3 | 0x7, _) => panic!("the stream or connection was reset: frame {kind} {payload:?}"),
            _ => {}
        }
        if id == stream && flags & 0x1 != 0 && matches!(kind, 0x0 | 0x1) {
            return (status.expect("a response HEADERS"), lossy(&body));
        }
    }
}

/// RFC 9113 §8.3.1, RFC 9110 §4.2.1: an http or https request names its
/// host, by `:authority` or a `host` field. One with neither (or an empty
/// `host`) has no host to route by and none to give an HTTP/1.1 backend:
/// a 400 on its stream, nothing at a backend, and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_request_without_authority_or_host_is_malformed() {
    let (web, admin) = (RawBackend::start(OK).await, RawBackend::start(OK).await);
    let proxy = proxy(&web, &admin, "");
    let mut io = within("connect", TcpStream::connect(proxy.addr())).await.unwrap();
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&h2_frame(0x4, 0, 0, &[]));
    within("preface", io.write_all(&preface)).await.unwrap();
    let missing = (400, "400 Bad Request: no :authority or host field\n".to_string());
    within("send", io.write_all(&h2_get_without_authority(1, "/none", None))).await.unwrap();
    assert_eq!(h2_read_response(&mut io, 1).await, missing);
    within("send", io.write_all(&h2_get_without_authority(3, "/empty", Some("")))).await.unwrap();
    assert_eq!(h2_read_response(&mut io, 3).await, missing);
    for backend in [&web, &admin] {
        assert!(backend.received().is_empty(), "reached a backend: {:?}", backend.received());
    }
    // A host field alone names the host: served on the same connection.
    within("send", io.write_all(&h2_get_without_authority(5, "/host", Some("admin.example.com")))).await.unwrap();
    assert_eq!(h2_read_response(&mut io, 5).await, (200, "ok\n".to_string()));
    let want =
        forwarded("GET /host HTTP/1.1", &["host: admin.example.com"], "admin.example.com", "admin", "2.0 cutover");
    assert_eq!(admin.only().head, want);
    assert!(web.received().is_empty(), "{:?}", web.received());
}

// ------------------------------------------------------------ TLS listeners

fn tls_config(cert: &rcgen::CertifiedKey<rcgen::KeyPair>, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = within("connect", TcpStream::connect(addr)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("www.example.com").unwrap();
    within("handshake", tokio_rustls::TlsConnector::from(config).connect(name, tcp)).await.expect("handshake")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_host_rules_hold_on_tls_listeners() {
    let (web, admin) = (RawBackend::start(OK).await, RawBackend::start(OK).await);
    let cert = rcgen::generate_simple_self_signed(vec!["www.example.com".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("site.crt"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("site.key"), cert.signing_key.serialize_pem()).unwrap();
    let tls =
        "[server.tls]\nlisten = [\"127.0.0.1:0\"]\ncerts = [{ cert = \"{dir}/site.crt\", key = \"{dir}/site.key\" }]\n";
    let admin_route = format!(
        "{tls}\n[[routes]]\nname = \"admin\"\nhost = \"admin.example.com\"\nstable = \"admin\"\n\n\
         [pools.admin]\nbackends = [\"{}\"]\n",
        admin.addr
    );
    let proxy = Proxy::start_in(dir, &two_pool_config(web.addr, web.addr, 0.0, &admin_route));
    let addr = proxy.running.tls_addrs[0];

    // HTTP/1.1 by ALPN: user info in the target, then the close.
    let mut io = tls_connect(addr, tls_config(&cert, b"http/1.1")).await;
    within("write", io.write_all(b"GET http://u:p@admin.example.com/ HTTP/1.1\r\nHost: www.example.com\r\n\r\n"))
        .await
        .unwrap();
    let mut out = Vec::new();
    within("close", tokio::io::AsyncReadExt::read_to_end(&mut io, &mut out)).await.ok();
    let text = lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    assert!(find(&out, b"\r\n\r\n400 Bad Request: user info in the request target\n").is_some(), "{text}");

    // HTTP/2 by ALPN.
    let mut h2 = h2_over(tls_connect(addr, tls_config(&cert, b"h2")).await).await;
    assert_h2_host_rules(&mut h2, &web, &admin).await;
    let text = proxy.metrics();
    assert_eq!(metric(&text, r#"cutover_http1_head_refusals_total{code="400",listener="https"}"#), 1.0);
}

// ------------------------------------------- Max-Forwards (RFC 9110 §7.6.2)

const TRACE_ENDS: &str =
    "405 Method Not Allowed: TRACE with Max-Forwards: 0 ends at the proxy, which does not reflect it\n";

fn allows_options(head: &str) -> bool {
    head.to_ascii_lowercase().contains("\r\nallow: options\r\n")
}

/// At 0 the proxy is the final recipient: OPTIONS is answered by the
/// proxy for itself, a TRACE is not reflected (it would show the cookie
/// to whoever sent it), and neither reaches a backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_or_options_with_max_forwards_0_ends_at_the_proxy() {
    let (web, admin) = (RawBackend::start(OK).await, RawBackend::start(OK).await);
    let proxy = proxy(&web, &admin, "");
    for target in ["*", "/a"] {
        let request = format!("OPTIONS {target} HTTP/1.1\r\nHost: admin.example.com\r\nMax-Forwards: 0\r\n\r\n");
        let answer = exchange(proxy.addr(), request.as_bytes(), false).await;
        assert_eq!((answer.status, answer.body.as_str()), (200, ""), "{}", answer.head);
        assert!(allows_options(&answer.head), "{}", answer.head);
    }
    let request = b"TRACE /a HTTP/1.1\r\nHost: admin.example.com\r\nMax-Forwards: 00\r\nCookie: session=s3cret\r\n\r\n";
    let answer = exchange(proxy.addr(), request, false).await;
    assert_eq!((answer.status, answer.body.as_str()), (405, TRACE_ENDS));
    assert!(allows_options(&answer.head), "{}", answer.head);
    assert!(!answer.head.contains("s3cret"));
    for backend in [&web, &admin] {
        assert!(backend.received().is_empty(), "reached a backend: {:?}", backend.received());
    }
}

/// Above 0 a TRACE or OPTIONS goes on with one hop less; other methods
/// carry the field to the backend untouched (RFC 9110 lets a recipient
/// ignore it there); one field of digits or the request is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_forwards_is_lowered_on_trace_and_options_and_checked() {
    let (web, admin) = (RawBackend::start(OK).await, RawBackend::start(OK).await);
    let proxy = proxy(&web, &admin, "");
    for (request_line, sent, kept) in [
        ("OPTIONS /a HTTP/1.1", "5", "4"),
        ("TRACE /a HTTP/1.1", "1", "0"),
        ("OPTIONS /b HTTP/1.1", "99999999999999999999999", "18446744073709551614"),
        ("GET /a HTTP/1.1", "0", "0"),
    ] {
        let request = format!("{request_line}\r\nHost: admin.example.com\r\nMax-Forwards: {sent}\r\n\r\n");
        assert_eq!(exchange(proxy.addr(), request.as_bytes(), false).await.status, 200, "{request_line}");
        let fields = ["host: admin.example.com".to_string(), format!("max-forwards: {kept}")];
        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        let want = forwarded(request_line, &fields, "admin.example.com", "admin", "1.1 cutover");
        assert_eq!(admin.received().pop().expect("a request").head, want);
    }
    let forwarded_before = admin.received().len();
    for (fields, text) in [
        ("Max-Forwards: x\r\n", "400 Bad Request: invalid Max-Forwards field\n"),
        ("Max-Forwards: -1\r\n", "400 Bad Request: invalid Max-Forwards field\n"),
        ("Max-Forwards: 3\r\nMax-Forwards: 3\r\n", "400 Bad Request: more than one Max-Forwards field\n"),
        ("Max-Forwards: 1, 1\r\n", "400 Bad Request: invalid Max-Forwards field\n"),
    ] {
        let request = format!("TRACE /a HTTP/1.1\r\nHost: admin.example.com\r\n{fields}\r\n");
        let answer = exchange(proxy.addr(), request.as_bytes(), false).await;
        assert_eq!((answer.status, answer.body.as_str()), (400, text), "{fields:?}");
    }
    assert_eq!(admin.received().len(), forwarded_before, "a refused request reached the backend");
    assert!(web.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_trace_and_options_count_max_forwards_too() {
    let (web, admin) = (RawBackend::start(OK).await, RawBackend::start(OK).await);
    let proxy = proxy(&web, &admin, "");
    let mut h2 = h2(proxy.addr()).await;
    let with = |method: &str, hops: &str| {
        Request::builder()
            .method(method)
            .uri("http://admin.example.com/a")
            .header("max-forwards", hops)
            .body(empty())
            .unwrap()
    };
    assert_eq!(h2_send(&mut h2, with("OPTIONS", "0")).await, (StatusCode::OK, String::new()));
    assert_eq!(h2_send(&mut h2, with("TRACE", "0")).await, (StatusCode::METHOD_NOT_ALLOWED, TRACE_ENDS.to_string()));
    let invalid = "400 Bad Request: invalid Max-Forwards field\n".to_string();
    assert_eq!(h2_send(&mut h2, with("TRACE", "two")).await, (StatusCode::BAD_REQUEST, invalid));
    assert!(admin.received().is_empty(), "reached a backend: {:?}", admin.received());
    assert_eq!(h2_send(&mut h2, with("OPTIONS", "2")).await, (StatusCode::OK, "ok\n".to_string()));
    let head = admin.only().head.to_ascii_lowercase();
    assert!(head.starts_with("options /a http/1.1\r\n") && head.contains("\r\nmax-forwards: 1\r\n"), "{head}");
    assert!(web.received().is_empty());
}
