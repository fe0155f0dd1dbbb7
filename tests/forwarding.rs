//! Forwarding: header hygiene, error answers, streaming without buffering.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn single_pool_config(backend: std::net::SocketAddr, extra: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
workers = 1

[log]
access = "off"

{extra}

[[routes]]
name = "web"
stable = "app"

[pools.app]
backends = ["{backend}"]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_hygiene_both_ways() {
    let backend = Backend::start(|_req| async {
        Response::builder()
            .header("connection", "x-internal")
            .header("x-internal", "secret")
            .header("keep-alive", "timeout=5")
            .header("x-app", "kept")
            .body(full("ok\n"))
            .unwrap()
    })
    .await;
    let proxy = Proxy::start(&single_pool_config(backend.addr, ""));
    let mut client = Client::connect(proxy.addr()).await;
    let req = Request::get("/path?q=1")
        .header("host", "shop.example.com")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "must go")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("proxy-connection", "keep-alive")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "spoofed.example")
        .header("x-cutover-version", "canary")
        .header("x-cutover-route", "spoofed")
        .header("via", "1.1 edge")
        .header("x-end-to-end", "stays")
        .body(empty())
        .unwrap();
    let got = client.send(req).await;
    assert_eq!(got.status, StatusCode::OK);
    let seen = backend.last_seen();
    assert_eq!(seen.uri, "/path?q=1", "origin-form URI with the query");
    assert_eq!(seen.version, http::Version::HTTP_11);
    let h = &seen.headers;
    for gone in
        ["connection", "x-hop", "keep-alive", "te", "proxy-authorization", "proxy-connection", "upgrade", "trailer"]
    {
        assert!(h.get(gone).is_none(), "{gone} must not reach the backend");
    }
    assert_eq!(h.get("host").unwrap(), "shop.example.com", "Host preserved");
    assert_eq!(h.get("x-forwarded-for").unwrap(), "203.0.113.9, 127.0.0.1");
    assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
    assert_eq!(h.get("x-forwarded-host").unwrap(), "shop.example.com");
    assert_eq!(h.get("via").unwrap(), "1.1 edge, 1.1 cutover");
    assert_eq!(h.get("x-cutover-version").unwrap(), "stable");
    assert_eq!(h.get("x-cutover-route").unwrap(), "web");
    assert_eq!(h.get("x-end-to-end").unwrap(), "stays");
    // And back: the backend's hop-by-hop fields stop at the proxy.
    assert!(got.headers.get("x-internal").is_none());
    assert!(got.headers.get("keep-alive").is_none());
    assert_eq!(got.headers.get("x-app").unwrap(), "kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_backend_is_502_with_a_plain_text_body() {
    let proxy = Proxy::start(&single_pool_config(dead_addr(), ""));
    let got = get(proxy.addr(), "/", &[]).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(got.headers.get("content-type").unwrap(), "text/plain; charset=utf-8");
    assert_eq!(got.body, "502 Bad Gateway: cannot connect to the backend\n");
    let text = proxy.metrics();
    assert_eq!(metric(&text, r#"cutover_requests_total{code="502",route="web",version="stable"}"#), 1.0);
    assert!(metric(&text, r#"cutover_upstream_errors_total{kind="connect",route="web",version="stable"}"#) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_is_504_within_the_response_timeout() {
    let backend = Backend::start(|_req| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        text(StatusCode::OK, "too late\n")
    })
    .await;
    let proxy = Proxy::start(&single_pool_config(backend.addr, "[timeouts]\nresponse = \"300ms\""));
    let started = Instant::now();
    let got = get(proxy.addr(), "/", &[]).await;
    let elapsed = started.elapsed();
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(got.body, "504 Gateway Timeout: the backend did not answer in time\n");
    assert!(elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(backend.hits(), 1, "a timed-out request is not retried");
}

/// A backend that answers `GET /N` after N milliseconds, on as many
/// requests per connection as it gets; counts the connections it accepted.
async fn delaying_backend() -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let path = head.split_whitespace().nth(1).unwrap_or("/0");
                    let ms: u64 = path.trim_start_matches('/').parse().unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    if stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// Requests that follow one another on one backend connection each get the
/// whole response timeout, counted from their own end: the connection's
/// timer, armed by an earlier request, neither cuts a later one short nor
/// lets it wait longer; a reload that shortens the timeout applies to the
/// next request on a connection armed with the longer one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_on_a_reused_backend_connection_gets_its_own_response_timeout() {
    let (backend, accepted) = delaying_backend().await;
    let admin = "[admin]\nlisten = \"unix:{dir}/admin.sock\"\n";
    let config = |response: &str| single_pool_config(backend, &format!("{admin}[timeouts]\nresponse = \"{response}\""));
    let proxy = Proxy::start(&config("600ms"));
    let mut client = Client::connect(proxy.addr()).await;
    assert_eq!(client.get("/0", &[]).await.status, StatusCode::OK);
    // The first request's deadline passes while the second waits.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let got = client.get("/450", &[]).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_times_out(&mut client, Duration::from_millis(600)).await;
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "all three on one backend connection");

    // A connection armed with a 10 s timeout, then a reload to 300 ms.
    let reload = |text: String| {
        std::fs::write(&proxy.config_path, text.replace("{dir}", &proxy.dir.path().display().to_string())).unwrap();
        async {
            let (status, body) = proxy.admin_call(http::Method::POST, "/v1/reload", None).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };
    reload(config("10s")).await;
    assert_eq!(client.get("/0", &[]).await.status, StatusCode::OK);
    reload(config("300ms")).await;
    assert_times_out(&mut client, Duration::from_millis(300)).await;
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2, "the timed-out connection was not used again");
}

/// A request the delaying backend answers in 3 s gets a 504 after `limit`
/// (not before, and well before the backend's answer).
async fn assert_times_out(client: &mut Client, limit: Duration) {
    let started = Instant::now();
    let got = client.get("/3000", &[]).await;
    let elapsed = started.elapsed();
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT, "{}", got.body);
    assert!(elapsed >= limit && elapsed < Duration::from_millis(2500), "{elapsed:?}");
}

async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_400_and_unknown_routes_404() {
    let backend = Backend::named("app").await;
    let proxy = Proxy::start(
        &single_pool_config(backend.addr, "").replace("name = \"web\"", "name = \"web\"\nhost = \"example.com\""),
    );
    let answer = raw(proxy.addr(), b"GARBAGE\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let answer = raw(proxy.addr(), b"GET / HTTP/1.1\r\nbad header line\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let answer = raw(proxy.addr(), b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("missing Host header"), "{answer}");
    let answer = raw(proxy.addr(), b"GET / HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 404") && answer.contains("no route"), "{answer}");
    let answer =
        raw(proxy.addr(), b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert_eq!(backend.hits(), 0);
    // The proxy still serves after all that.
    let ok = raw(proxy.addr(), b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(metric(&proxy.metrics(), r#"cutover_unrouted_requests_total{code="404"}"#), 1.0);
}

const MB: usize = 1 << 20;

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

/// 100 MB up and 100 MB down through the real binary: the proxy's peak
/// memory grows by less than 32 MB, so bodies stream instead of buffering.
#[test]
fn hundred_megabytes_stream_both_ways_without_buffering() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let backend = runtime.block_on(Backend::start(|req: Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/upload" {
            // Count the upload without keeping it.
            let mut body = req.into_body();
            let mut total = 0usize;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    total += data.len();
                }
            }
            text(StatusCode::OK, &total.to_string())
        } else {
            let chunks = futures_util::stream::iter(
                (0..100).map(|_| Ok::<_, hyper::Error>(http_body::Frame::data(Bytes::from(vec![b'x'; MB])))),
            );
            Response::new(StreamBody::new(chunks).boxed())
        }
    }));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, single_pool_config(backend.addr, "")).unwrap();
    let mut binary = Binary::start(&["run", "-c", path.to_str().unwrap()], dir.path());
    let addr: std::net::SocketAddr =
        binary.wait_ready(Duration::from_secs(20)).into_iter().find(|(l, _)| l == "http").unwrap().1.parse().unwrap();
    let pid = binary.child.id();
    runtime.block_on(async {
        // Warm up connections and allocator pools before the baseline.
        get(addr, "/warm", &[]).await;
    });
    let before = peak_rss_kib(pid);
    runtime.block_on(async {
        let mut client = Client::connect(addr).await;
        let chunks = futures_util::stream::iter(
            (0..100).map(|_| Ok::<_, hyper::Error>(http_body::Frame::data(Bytes::from(vec![b'y'; MB])))),
        );
        let req = Request::post("/upload").header("host", "x").body(StreamBody::new(chunks).boxed()).unwrap();
        let got = client.send(req).await;
        assert_eq!((got.status, got.body.as_str()), (StatusCode::OK, "104857600"));
        let mut resp = {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            sender.send_request(Request::get("/download").header("host", "x").body(empty()).unwrap()).await.unwrap()
        };
        let mut total = 0usize;
        while let Some(frame) = resp.body_mut().frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                total += data.len();
            }
        }
        assert_eq!(total, 100 * MB);
    });
    let growth_mib = (peak_rss_kib(pid).saturating_sub(before)) / 1024;
    assert!(growth_mib < 32, "peak RSS grew by {growth_mib} MiB while streaming 200 MB");
    binary.signal("TERM");
    assert_eq!(binary.wait_exit(Duration::from_secs(20)), Some(0));
}
