//! Slow clients (issue #17 points 1 and 2), on raw sockets: a slow upload
//! or a slow reader must not hold a backend connection, a backend's
//! concurrency limit is kept with a bounded queue, and the response timeout
//! starts when the upload ends.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use common::wire::{Reader, lossy};
use common::{Backend, Proxy, eventually, metric, text, two_pool_config};

/// Generous bound on any single wait (2 loaded cores).
const LIMIT: Duration = Duration::from_secs(20);

/// A backend that reads the whole body and answers with its length.
async fn counting_backend() -> Backend {
    Backend::start(|req| async move {
        let n = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
        text(StatusCode::OK, &format!("got {n}\n"))
    })
    .await
}

/// `config` with `lines` added to its `[server]` table.
fn with_server(config: &str, lines: &str) -> String {
    config.replacen("[server]\n", &format!("[server]\n{lines}\n"), 1)
}

/// Reads one response head (and a short Content-Length body) off `reader`.
async fn response(reader: &mut Reader) -> (u16, String) {
    let head = tokio::time::timeout(LIMIT, reader.head()).await.expect("an answer in time").expect("a head");
    let head = head.expect("a response, not a closed connection");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let length = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let body = reader.take(length).await.expect("the body");
    (status, lossy(&body))
}

/// Issue #17 point 2: a client that uploads steadily but for longer than
/// `timeouts.response` gets its answer: the timeout runs from the end of
/// the upload (the body here is larger than the request buffer, so it
/// streams to the backend while the client sends it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_steady_upload_longer_than_the_response_timeout_is_answered() {
    let stable = counting_backend().await;
    let canary = counting_backend().await;
    let config = with_server(
        &two_pool_config(stable.addr, canary.addr, 0.0, "[timeouts]\nresponse = \"1s\""),
        "request_buffer = 1024",
    );
    let proxy = Proxy::start(&config);
    let stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut reader = Reader::new(read);
    const PIECES: usize = 8;
    const PIECE: usize = 1024;
    let head = format!("POST /upload HTTP/1.1\r\nhost: example.com\r\ncontent-length: {}\r\n\r\n", PIECES * PIECE);
    write.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    for _ in 0..PIECES {
        write.write_all(&[b'x'; PIECE]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(started.elapsed() > Duration::from_secs(2), "the upload outlasts timeouts.response");
    let (status, body) = response(&mut reader).await;
    assert_eq!((status, body.as_str()), (200, "got 8192\n"));
}

/// An application server that serves `threads` requests at a time (a
/// worker pool): a request holds a worker from its head to the end of its
/// answer, body upload and download included. `/big` answers `big` bytes.
async fn app_with_workers(threads: usize, big: usize) -> Backend {
    let workers = Arc::new(Semaphore::new(threads));
    Backend::start(move |req| {
        let workers = workers.clone();
        async move {
            let worker = workers.acquire_owned().await.unwrap();
            let path = req.uri().path().to_string();
            let n = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
            let data = if path == "/big" { vec![b'b'; big] } else { format!("got {n}\n").into_bytes() };
            let data_len = data.len();
            // The worker is free once the body is written out (the body dropped).
            let frames = futures_util::stream::iter([Ok::<_, hyper::Error>(http_body::Frame::data(data.into()))]).map(
                move |frame| {
                    let _held = &worker;
                    frame
                },
            );
            let length = data_len.to_string();
            let mut resp = http::Response::new(BodyExt::boxed(http_body_util::StreamBody::new(frames)));
            resp.headers_mut().insert(http::header::CONTENT_LENGTH, length.parse().unwrap());
            resp
        }
    })
    .await
}

/// A normal client: `count` GETs, each on a fresh connection; returns how
/// many were answered 200 within `within`.
async fn normal_client(addr: SocketAddr, count: usize, within: Duration) -> usize {
    let mut answered = 0;
    for _ in 0..count {
        let got = tokio::time::timeout(within, common::get(addr, "/", &[("cookie", "cutover_id=user-1")])).await;
        if matches!(got, Ok(g) if g.status == StatusCode::OK) {
            answered += 1;
        }
    }
    answered
}

/// Issue #17 point 1, `slowhttptest -B`: clients that upload slowly wait
/// in the proxy's request buffer, not in the application's workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_do_not_take_the_application_workers() {
    let stable = app_with_workers(4, 0).await;
    let canary = app_with_workers(4, 0).await;
    let proxy = Proxy::start(&two_pool_config(stable.addr, canary.addr, 0.0, ""));
    let mut uploads = Vec::new();
    for _ in 0..16 {
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nhost: example.com\r\ncontent-length: 4096\r\n\r\nfirst bytes")
            .await
            .unwrap();
        uploads.push(s);
    }
    // The uploads trickle on while the normal client runs.
    let trickle = tokio::spawn(async move {
        for _ in 0..20 {
            for s in &mut uploads {
                let _ = s.write_all(b"x").await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        uploads
    });
    let answered = normal_client(proxy.addr(), 10, Duration::from_secs(3)).await;
    assert_eq!(answered, 10, "normal requests answered while 16 clients upload slowly");
    assert_eq!(stable.hits(), 10, "no slow upload reached the application");
    drop(trickle.await);
    assert_eq!(metric(&proxy.metrics(), "cutover_buffered_bodies_total{mode=\"request_streamed\"}"), 0.0);
}

/// Issue #17 point 1, `slowhttptest -X`: clients that read slowly read
/// from the proxy's response buffer; the application's worker is free as
/// soon as it answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_do_not_take_the_application_workers() {
    // More than the kernel buffers on the way can hold (4 MiB each way).
    const BIG: usize = 16 * 1024 * 1024;
    let stable = app_with_workers(2, BIG).await;
    let canary = app_with_workers(2, BIG).await;
    let config = with_server(&two_pool_config(stable.addr, canary.addr, 0.0, ""), "response_buffer = 33554432");
    let proxy = Proxy::start(&config);
    let mut readers = Vec::new();
    for _ in 0..2 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(proxy.addr()).await.unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nhost: example.com\r\ncookie: cutover_id=user-1\r\n\r\n").await.unwrap();
        readers.push(s);
    }
    // Each reader has its answer's head: its request reached the application.
    for s in &mut readers {
        let mut first = [0u8; 16];
        tokio::time::timeout(LIMIT, s.read_exact(&mut first)).await.expect("the answer starts").unwrap();
        assert_eq!(&first[..12], b"HTTP/1.1 200");
    }
    let answered = normal_client(proxy.addr(), 10, Duration::from_secs(3)).await;
    assert_eq!(answered, 10, "normal requests answered while 2 clients read slowly");
    assert_eq!(metric(&proxy.metrics(), "cutover_buffered_bodies_total{mode=\"response_whole\"}"), 12.0);
    // The 2 slow readers' requests and the 10 normal ones, each once, all on
    // stable (weight 0): a slow reader costs the application one request.
    assert_eq!((stable.hits(), canary.hits()), (12, 0), "requests that reached the application");
    drop(readers);
}

/// Issue #17 point 1, HAProxy's `maxconn` on a server: at most
/// `max_connections` requests at a backend, `max_queue` more wait for at
/// most `timeouts.queue`; beyond that, 503 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_limit_queues_then_refuses_with_503() {
    let gate = Arc::new(Semaphore::new(0));
    let held = gate.clone();
    let stable = Backend::start(move |req| {
        let held = held.clone();
        async move {
            if req.uri().path() == "/hold" {
                let _ = held.acquire().await.unwrap();
            }
            text(StatusCode::OK, "done\n")
        }
    })
    .await;
    let canary = counting_backend().await;
    let config = two_pool_config(stable.addr, canary.addr, 0.0, "[timeouts]\nqueue = \"1s\"\n")
        .replace("[pools.stable]\n", "[pools.stable]\nmax_connections = 2\nmax_queue = 1\n");
    let proxy = Proxy::start(&config);
    let addr = proxy.addr();
    let hold = || tokio::spawn(async move { common::get(addr, "/hold", &[("cookie", "cutover_id=u")]).await.status });
    let (first, second) = (hold(), hold());
    assert!(eventually(LIMIT, || stable.hits() == 2).await, "two requests at the backend");
    let queued = hold();
    assert!(
        eventually(LIMIT, || metric(&proxy.metrics(), "cutover_backend_queue_total{result=\"queued\"}") == 1.0).await
    );
    let refused = common::get(addr, "/", &[("cookie", "cutover_id=u")]).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "the queue is full: {}", refused.body);
    assert_eq!(queued.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE, "no slot freed within timeouts.queue");
    assert_eq!(stable.hits(), 2, "refused requests never reached the backend");
    gate.add_permits(2);
    assert_eq!((first.await.unwrap(), second.await.unwrap()), (StatusCode::OK, StatusCode::OK));
    assert_eq!(common::get(addr, "/", &[("cookie", "cutover_id=u")]).await.status, StatusCode::OK);
    let text = proxy.metrics();
    assert_eq!(metric(&text, "cutover_backend_queue_total{result=\"full\"}"), 1.0);
    assert_eq!(metric(&text, "cutover_backend_queue_total{result=\"timeout\"}"), 1.0);
}
