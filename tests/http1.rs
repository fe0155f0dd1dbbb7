//! HTTP/1.1 conformance and request smuggling of the client-facing server
//! (RFC 9112 message syntax and framing, RFC 9110 semantics), on raw
//! sockets: every request is written byte by byte as a client or an
//! attacker would, and responses are parsed off the wire.
//!
//! Where the RFC lets a server either answer 400 or close the connection,
//! both are accepted; what is never accepted is a request hidden in another
//! one's body reaching a backend.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::wire::{Reader, lossy};
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;

/// Bound on every read and write: nothing in this file can hang.
const LIMIT: Duration = Duration::from_secs(10);
const MIB: usize = 1 << 20;

// ------------------------------------------------------------------ backend

/// The backend behind every test. By path:
/// - `/echo`: the request body, read whole, as the response body
/// - `/early`: answers at once and never reads the request body
/// - `/slow`: answers after 100 ms
/// - `/no-content`, `/not-modified`: 204 and 304, no body
/// - `/stream`: a body without Content-Length, in several frames
/// - `/big`: 1 MiB with Content-Length
/// - anything else: `"{method} {target}\n"`
async fn app() -> Backend {
    Backend::start(|req: Request<Incoming>| async move {
        let line = format!("{} {}\n", req.method(), req.uri());
        match req.uri().path() {
            "/echo" => match req.into_body().collect().await {
                Ok(body) => Response::new(full(body.to_bytes())),
                Err(_) => text(StatusCode::BAD_REQUEST, "body error\n"),
            },
            "/early" => text(StatusCode::OK, "early\n"),
            "/slow" => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                text(StatusCode::OK, &line)
            }
            "/no-content" => Response::builder().status(StatusCode::NO_CONTENT).body(empty()).unwrap(),
            "/not-modified" => {
                Response::builder().status(StatusCode::NOT_MODIFIED).header("etag", "\"v1\"").body(empty()).unwrap()
            }
            "/stream" => {
                let frames = futures_util::stream::iter(
                    STREAMED.iter().map(|part| Ok::<_, hyper::Error>(http_body::Frame::data(Bytes::from_static(part)))),
                );
                Response::new(StreamBody::new(frames).boxed())
            }
            "/big" => Response::new(full(pattern(MIB))),
            _ => text(StatusCode::OK, &line),
        }
    })
    .await
}

const STREAMED: [&[u8]; 4] = [b"first part\n", b"second part\n", b"", b"third part\n"];

fn streamed_body() -> Vec<u8> {
    STREAMED.concat()
}

/// `n` bytes that are not all alike, so a reordered or shifted byte shows.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 23) as u8).collect()
}

/// The proxy in front of `app()` (canary weight 0: every request to it).
async fn setup() -> (Backend, Backend, Proxy) {
    let (stable, canary) = (app().await, Backend::named("canary").await);
    let proxy = Proxy::start(&two_pool_config(stable.addr, canary.addr, 0.0, ""));
    (stable, canary, proxy)
}

/// [`setup`] with request bodies streamed from their first byte
/// (`server.request_buffer = 0`), as bodies larger than the buffer are:
/// for the cases where a backend sees a body before it is complete.
async fn setup_streaming() -> (Backend, Backend, Proxy) {
    let (stable, canary) = (app().await, Backend::named("canary").await);
    let proxy = Proxy::start(&streaming(&two_pool_config(stable.addr, canary.addr, 0.0, "")));
    (stable, canary, proxy)
}

fn streaming(config: &str) -> String {
    config.replacen("[server]\n", "[server]\nrequest_buffer = 0\n", 1)
}

fn paths(backend: &Backend) -> Vec<String> {
    backend.seen.lock().unwrap().iter().map(|s| s.uri.clone()).collect()
}

/// After an attack: the proxy still serves a fresh connection, and the
/// request hidden in the attack never reached a backend.
async fn assert_nothing_smuggled(proxy: &Proxy, backends: &[&Backend]) {
    let mut conn = Conn::open(proxy.addr()).await;
    let after = conn.roundtrip(b"GET /after HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    assert_eq!((after.status, after.text().as_str()), (200, "GET /after\n"), "the proxy keeps serving");
    for backend in backends {
        let seen = paths(backend);
        assert!(!seen.iter().any(|p| p.contains("smuggled")), "a smuggled request reached a backend: {seen:?}");
    }
}

// ------------------------------------------------------------ wire client

/// A response as read off the wire.
#[derive(Debug)]
struct Wire {
    version: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Wire {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Whether a list-valued field (Connection, Transfer-Encoding) holds `token`.
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One client connection to the proxy. The write half sits behind a lock so
/// a large request can be written by a task while the test reads.
struct Conn {
    reader: Reader,
    write: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = tokio::time::timeout(LIMIT, TcpStream::connect(addr)).await.expect("connect in time").unwrap();
        stream.set_nodelay(true).unwrap();
        let (read, write) = stream.into_split();
        Conn { reader: Reader::new(read), write: Arc::new(tokio::sync::Mutex::new(write)) }
    }

    async fn send(&mut self, bytes: &[u8]) {
        let mut write = self.write.lock().await;
        tokio::time::timeout(LIMIT, write.write_all(bytes)).await.expect("write in time").expect("write");
    }

    /// Writes `bytes` from a task, ignoring errors: the proxy may answer and
    /// close before reading them all. Abort the handle when done.
    fn send_in_background(&self, bytes: Vec<u8>) -> tokio::task::JoinHandle<()> {
        let write = self.write.clone();
        tokio::spawn(async move {
            let _ = write.lock().await.write_all(&bytes).await;
        })
    }

    /// The next response, or `None` when the proxy closed the connection
    /// before sending any byte of one.
    async fn response(&mut self) -> Option<Wire> {
        self.next(false).await
    }

    /// The next response to a HEAD request (which has no body whatever its headers say).
    async fn head_response(&mut self) -> Option<Wire> {
        self.next(true).await
    }

    async fn next(&mut self, to_head: bool) -> Option<Wire> {
        match tokio::time::timeout(LIMIT, self.read_response(to_head)).await {
            Ok(Ok(wire)) => wire,
            Ok(Err(e)) => panic!("malformed response: {e}"),
            Err(_) => panic!("no response and no close within {LIMIT:?}; got so far: {:?}", lossy(&self.reader.buf)),
        }
    }

    async fn read_response(&mut self, to_head: bool) -> Result<Option<Wire>, String> {
        let Some(head) = self.reader.head().await? else { return Ok(None) };
        let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
        let status_line = lines.next().unwrap_or_default();
        let mut words = status_line.splitn(3, ' ');
        let version = words.next().unwrap_or_default().to_string();
        let status = words.next().and_then(|s| s.parse().ok()).ok_or(format!("bad status line {status_line:?}"))?;
        if !version.starts_with("HTTP/1.") {
            return Err(format!("bad status line {status_line:?}"));
        }
        let headers = lines
            .map(|l| {
                let (name, value) = l.split_once(':').ok_or(format!("bad header line {l:?}"))?;
                Ok((name.to_string(), value.trim().to_string()))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut wire = Wire { version, status, headers, body: Vec::new() };
        // RFC 9112 §6.3: responses to HEAD, 1xx, 204 and 304 end at the head.
        if to_head || (100..200).contains(&status) || status == 204 || status == 304 {
            return Ok(Some(wire));
        }
        if let Some(codings) = wire.header("transfer-encoding") {
            let last = codings.rsplit(',').next().unwrap_or_default().trim();
            wire.body = match last.eq_ignore_ascii_case("chunked") {
                true => self.reader.chunked().await?,
                false => self.reader.until_closed().await,
            };
        } else if let Some(length) = wire.header("content-length") {
            let length = length.parse().map_err(|_| format!("bad content-length {length:?}"))?;
            wire.body = self.reader.take(length).await?;
        } else {
            wire.body = self.reader.until_closed().await;
        }
        Ok(Some(wire))
    }

    /// Asserts that the proxy closes the connection, sending nothing more.
    async fn expect_closed(&mut self) {
        match tokio::time::timeout(LIMIT, self.reader.until_closed()).await {
            Ok(rest) => assert!(rest.is_empty(), "bytes after the last response: {:?}", lossy(&rest)),
            Err(_) => panic!("the proxy kept the connection open for {LIMIT:?}"),
        }
    }

    /// Sends `request` and reads its response, which must come.
    async fn roundtrip(&mut self, request: &[u8]) -> Wire {
        self.send(request).await;
        self.response().await.expect("a response, not a close")
    }

    /// Sends a request the proxy must refuse; the outcome must be a response
    /// with a status in `allowed` followed by a close, or a close without a
    /// response. Returns the status, if any.
    async fn refused(&mut self, request: &[u8], allowed: &[u16]) -> Option<u16> {
        let writer = self.send_in_background(request.to_vec());
        let status = self.response().await.map(|wire| wire.status);
        if let Some(status) = status {
            assert!(allowed.contains(&status), "status {status} for {:?}, want one of {allowed:?}", lossy(request));
            self.expect_closed().await;
        }
        writer.abort();
        status
    }
}

/// A chunked body of `chunks` (empty ones skipped), last chunk included.
fn chunked(chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in chunks.iter().filter(|c| !c.is_empty()) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

const SMUGGLED: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: example.com\r\n\r\n";

// ------------------------------------------------------------- pipelining

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_get_their_responses_in_order_on_one_connection() {
    let (stable, _canary, proxy) = setup().await;
    let mut conn = Conn::open(proxy.addr()).await;
    conn.send(b"GET /one HTTP/1.1\r\nHost: example.com\r\n\r\nGET /two HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    assert_eq!(conn.response().await.unwrap().text(), "GET /one\n");
    assert_eq!(conn.response().await.unwrap().text(), "GET /two\n");

    // Three, the first slow and the second with a body: order holds and
    // the body ends where its Content-Length says.
    conn.send(
        b"GET /slow HTTP/1.1\r\nHost: example.com\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello\
          GET /three HTTP/1.1\r\nHost: example.com\r\n\r\n",
    )
    .await;
    let texts = [conn.response().await.unwrap(), conn.response().await.unwrap(), conn.response().await.unwrap()]
        .map(|w| (w.status, w.text()));
    assert_eq!(
        texts,
        [(200, "GET /slow\n".to_string()), (200, "hello".to_string()), (200, "GET /three\n".to_string())]
    );
    assert_eq!(stable.hits(), 5);
}

/// RFC 9112 §2.2: a server SHOULD ignore empty lines received before a request line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_lines_before_a_request_line_are_ignored() {
    let (stable, _canary, proxy) = setup().await;
    let mut conn = Conn::open(proxy.addr()).await;
    let got = conn.roundtrip(b"GET /one HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    assert_eq!(got.text(), "GET /one\n");
    // A client may send an extra CRLF after a request (RFC 9112 §2.2).
    let got = conn.roundtrip(b"\r\nGET /two HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    assert_eq!((got.status, got.text().as_str()), (200, "GET /two\n"));
    assert_eq!(paths(&stable), ["/one", "/two"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_sequential_requests_share_one_connection() {
    let (stable, _canary, proxy) = setup().await;
    let mut conn = Conn::open(proxy.addr()).await;
    for i in 0..100 {
        let got = conn.roundtrip(format!("GET /seq/{i} HTTP/1.1\r\nHost: example.com\r\n\r\n").as_bytes()).await;
        assert_eq!((got.status, got.text()), (200, format!("GET /seq/{i}\n")));
    }
    assert_eq!(stable.hits(), 100);
}

// ---------------------------------------------------------- request bodies

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_body_is_forwarded_exactly_even_in_pieces() {
    let (stable, _canary, proxy) = setup_streaming().await;
    let mut conn = Conn::open(proxy.addr()).await;
    let got =
        conn.roundtrip(b"POST /echo HTTP/1.1\r\nHost: example.com\r\nContent-Length: 11\r\n\r\nhello world").await;
    assert_eq!((got.status, got.text().as_str()), (200, "hello world"));

    // Head and body split across writes; the proxy forwards the head before
    // the body is complete, so the later pieces arrive as separate reads.
    conn.send(b"POST /echo HTTP/1.1\r\nHost: example.com\r\nContent-Length: 11\r\n\r\nhel").await;
    assert!(eventually(LIMIT, || stable.hits() == 2).await, "the head reached the backend");
    conn.send(b"lo wo").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    conn.send(b"rld").await;
    let got = conn.response().await.unwrap();
    assert_eq!((got.status, got.text().as_str()), (200, "hello world"));
    assert_eq!(stable.last_seen().headers.get("content-length").unwrap(), "11");

    // The connection carries on after the body's exact end.
    let got = conn.roundtrip(b"GET /next HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    assert_eq!(got.text(), "GET /next\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_with_extension_and_trailer_reaches_the_backend_decoded() {
    let (stable, _canary, proxy) = setup().await;
    let mut conn = Conn::open(proxy.addr()).await;
    let got = conn
        .roundtrip(
            b"POST /echo HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\n",
        )
        .await;
    assert_eq!((got.status, got.text().as_str()), (200, "hello world"));
    assert_eq!(stable.hits(), 1);
    // The trailer section was consumed: the next request parses cleanly.
    let got = conn.roundtrip(b"GET /next HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    assert_eq!((got.status, got.text().as_str()), (200, "GET /next\n"));
}

/// RFC 9112 §5.1: optional whitespace around a field value is not part of
/// it; RFC 9112 §7: transfer-coding names are case-insensitive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_whitespace_is_trimmed_and_codings_match_case_insensitively() {
    let (stable, _canary, proxy) = setup().await;
    let mut conn = Conn::open(proxy.addr()).await;
    let got = conn
        .roundtrip(
            b"POST /echo HTTP/1.1\r\nHost: example.com\r\nX-A: \t spaced out \t\r\n\
              Transfer-Encoding:  Chunked \r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        )
        .await;
    assert_eq!((got.status, got.text().as_str()), (200, "abc"));
    assert_eq!(stable.last_seen().headers.get("x-a").unwrap(), "spaced out");
    let got = conn.roundtrip(b"GET /next HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    assert_eq!(got.text(), "GET /next\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mebibyte_chunked_upload_and_one_mebibyte_download_pass_intact() {
    let (_stable, _canary, proxy) = setup().await;
    let body = pattern(MIB);
    let mut request = b"POST /echo HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let pieces: Vec<&[u8]> = body.chunks(60_000).collect();
    request.extend(chunked(&pieces));
    let mut conn = Conn::open(proxy.addr()).await;
    let writer = conn.send_in_background(request);
    let got = conn.response().await.unwrap();
    writer.await.unwrap();
    assert_eq!(got.status, 200);
    assert!(got.body == body, "echoed {} bytes, sent {}", got.body.len(), body.len());

    let got = conn.roundtrip(b"GET /big HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-length"), Some("1048576"));
    assert!(got.body == pattern(MIB), "downloaded {} bytes", got.body.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_100_before_the_body_is_sent() {
    let (stable, _canary, proxy) = setup().await;
    let mut conn = Conn::open(proxy.addr()).await;
    conn.send(b"POST /echo HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n").await;
    let interim = conn.response().await.expect("an interim response");
    assert_eq!((interim.version.as_str(), interim.status), ("HTTP/1.1", 100));
    conn.send(b"hello").await;
    let got = conn.response().await.expect("the final response");
    assert_eq!((got.status, got.text().as_str()), (200, "hello"));
    assert_eq!(stable.hits(), 1);
}

/// A final answer before the body was asked for (no route here): no 100,
/// the connection is announced closed, and the unsent body is never needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_answered_without_reading_the_body_closes() {
    let (stable, canary) = (app().await, Backend::named("canary").await);
    let config = two_pool_config(stable.addr, canary.addr, 0.0, "")
        .replace("name = \"web\"", "name = \"web\"\nhost = \"shop.example.com\"");
    let proxy = Proxy::start(&config);
    let mut conn = Conn::open(proxy.addr()).await;
    conn.send(b"POST /echo HTTP/1.1\r\nHost: other.example\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n").await;
    let got = conn.response().await.expect("the final response");
    assert_eq!(got.status, 404);
    assert!(got.has_token("connection", "close"), "{:?}", got.header("connection"));
    conn.expect_closed().await;
    assert_eq!(stable.hits() + canary.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_body_leaves_the_proxy_serving() {
    let (_stable, _canary, proxy) = setup().await;
    let mut conn = Conn::open(proxy.addr()).await;
    conn.send(b"POST /echo HTTP/1.1\r\nHost: example.com\r\nContent-Length: 100000\r\n\r\n").await;
    conn.send(&pattern(1000)).await;
    drop(conn);
    let mut conn = Conn::open(proxy.addr()).await;
    conn.send(b"POST /echo HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel").await;
    drop(conn);
    let mut conn = Conn::open(proxy.addr()).await;
    let got = conn.roundtrip(b"POST /echo HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2\r\n\r\nok").await;
    assert_eq!((got.status, got.text().as_str()), (200, "ok"));
}

/// The backend answers without reading the body; the rest of the body,
/// which looks like a request, must never be parsed as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_body_answered_early_is_never_parsed_as_a_request() {
    let (stable, canary, proxy) = setup_streaming().await;
    let mut rest = SMUGGLED.to_vec();
    rest.extend(pattern(200_000));
    rest.extend_from_slice(SMUGGLED);
    let first = pattern(1000);
    let mut conn = Conn::open(proxy.addr()).await;
    let head =
        format!("POST /early HTTP/1.1\r\nHost: example.com\r\nContent-Length: {}\r\n\r\n", first.len() + rest.len());
    conn.send(head.as_bytes()).await;
    conn.send(&first).await;
    let got = conn.response().await.expect("the early response");
    assert_eq!((got.status, got.text().as_str()), (200, "early\n"));

    rest.extend_from_slice(b"GET /after-body HTTP/1.1\r\nHost: example.com\r\n\r\n");
    let writer = conn.send_in_background(rest);
    // Either the proxy read past the body and serves the next request, or
    // it closed the connection.
    if let Some(next) = conn.response().await {
        assert_eq!((next.status, next.text().as_str()), (200, "GET /after-body\n"));
    }
    writer.abort();
    assert_nothing_smuggled(&proxy, &[&stable, &canary]).await;
}

// ---------------------------------------------------------- framing attacks

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_chunked_is_refused_or_closed_and_nothing_is_smuggled() {
    let (stable, canary, proxy) = setup().await;
    let mut cl_te_body = b"0\r\n\r\n".to_vec();
    cl_te_body.extend_from_slice(SMUGGLED);
    let te_cl_body = chunked(&[SMUGGLED]);
    let whole = format!("Content-Length: {}\r\nTransfer-Encoding: chunked", cl_te_body.len());
    let cases = [
        ("Content-Length: 5\r\nTransfer-Encoding: chunked", &cl_te_body),
        ("Transfer-Encoding: chunked\r\nContent-Length: 5", &cl_te_body),
        ("Content-Length: 4\r\nTransfer-Encoding: chunked", &te_cl_body),
        (whole.as_str(), &cl_te_body),
    ];
    for (fields, body) in cases {
        let mut request = format!("POST /echo HTTP/1.1\r\nHost: example.com\r\n{fields}\r\n\r\n").into_bytes();
        request.extend_from_slice(body);
        let mut conn = Conn::open(proxy.addr()).await;
        let writer = conn.send_in_background(request);
        // RFC 9112 §6.1: reject, or frame by Transfer-Encoding alone and
        // close the connection after responding.
        if let Some(got) = conn.response().await {
            assert!(got.status == 400 || got.status == 200, "{fields:?}: status {}", got.status);
            if got.status == 200 {
                let framed_by_te = body.strip_prefix(b"0\r\n\r\n".as_slice()).map_or(SMUGGLED.to_vec(), |_| Vec::new());
                assert!(got.body == framed_by_te, "{fields:?}: backend got body {:?}", got.text());
                let seen = stable.last_seen();
                assert!(seen.headers.get("content-length").is_none_or(|v| v != "5" && v != "4"), "{fields:?}");
            }
            conn.expect_closed().await;
        }
        writer.abort();
    }
    assert_nothing_smuggled(&proxy, &[&stable, &canary]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differing_or_invalid_content_lengths_are_400_and_close() {
    let (stable, canary, proxy) = setup().await;
    let mut requests = vec![format!(
        "POST /echo HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!{}",
        lossy(SMUGGLED)
    )];
    for value in ["abc", "-1", "+5", "1 2", "5, 6", "0x5", "5.0", "99999999999999999999999"] {
        requests.push(format!(
            "POST /echo HTTP/1.1\r\nHost: example.com\r\nContent-Length: {value}\r\n\r\nhello{}",
            lossy(SMUGGLED)
        ));
    }
    for request in requests {
        let mut conn = Conn::open(proxy.addr()).await;
        let status = conn.refused(request.as_bytes(), &[400]).await;
        assert_eq!(status, Some(400), "{request:?}");
    }
    assert_eq!(stable.hits(), 0, "no refused request was forwarded");
    assert_nothing_smuggled(&proxy, &[&stable, &canary]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_coding_other_than_final_chunked_is_refused_and_closed() {
    let (stable, canary, proxy) = setup().await;
    let mut body = chunked(&[b"hello"]);
    body.extend_from_slice(SMUGGLED);
    for fields in [
        "Transfer-Encoding: gzip",
        "Transfer-Encoding: chunked, gzip",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
        "Transfer-Encoding: xchunked",
        "Transfer-Encoding: gzip\r\nContent-Length: 10",
    ] {
        let mut request = format!("POST /echo HTTP/1.1\r\nHost: example.com\r\n{fields}\r\n\r\n").into_bytes();
        request.extend_from_slice(&body);
        let mut conn = Conn::open(proxy.addr()).await;
        // RFC 9112 §6.3: 400 and close; §6.1 allows 501 for an unknown coding.
        let status = conn.refused(&request, &[400, 501]).await;
        assert!(status.is_some(), "{fields:?}: closed without a response");
    }
    assert_eq!(stable.hits(), 0);
    assert_nothing_smuggled(&proxy, &[&stable, &canary]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_on_http_1_0_is_refused_or_closed_and_nothing_is_smuggled() {
    let (stable, canary, proxy) = setup().await;
    for extra in ["", "Content-Length: 5\r\n"] {
        let mut request = format!(
            "POST /echo HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\n{extra}Transfer-Encoding: chunked\r\n\r\n"
        )
        .into_bytes();
        request.extend(chunked(&[b"hello"]));
        request.extend_from_slice(SMUGGLED);
        let mut conn = Conn::open(proxy.addr()).await;
        // RFC 9112 §6.1: the framing is faulty; close after processing.
        let writer = conn.send_in_background(request);
        if let Some(got) = conn.response().await {
            assert!([400, 200].contains(&got.status), "status {}", got.status);
            conn.expect_closed().await;
        }
        writer.abort();
    }
    assert_nothing_smuggled(&proxy, &[&stable, &canary]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chunk_sizes_end_the_connection_and_nothing_is_smuggled() {
    let (stable, canary, proxy) = setup().await;
    for size_line in ["zz", "ffffffffffffffffff", "-5", "5 5", ""] {
        let mut request =
            format!("POST /echo HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n{size_line}\r\n")
                .into_bytes();
        request.extend_from_slice(b"hello\r\n0\r\n\r\n");
        request.extend_from_slice(SMUGGLED);
        let mut conn = Conn::open(proxy.addr()).await;
        let writer = conn.send_in_background(request);
        if let Some(got) = conn.response().await {
            // The client's fault, not the backend's: a 400, not a 502.
            assert_eq!(got.status, 400, "chunk size {size_line:?}: {:?}", got.text());
            conn.expect_closed().await;
        }
        writer.abort();
    }
    assert_nothing_smuggled(&proxy, &[&stable, &canary]).await;
}

// ------------------------------------------------------------ head syntax

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_syntax_errors_are_400() {
    let (stable, _canary, proxy) = setup().await;
    for request in [
        // RFC 9112 §5.1: whitespace between field name and colon MUST be 400.
        "GET / HTTP/1.1\r\nHost : example.com\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: example.com\r\nX-A\t: 1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: example.com\r\nno colon here\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: example.com\r\n: empty name\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: example.com\r\nX(A): 1\r\n\r\n",
        "GARBAGE\r\n\r\n",
        "GET /\r\nHost: example.com\r\n\r\n",
        "GET / HTTP/1.1 extra\r\nHost: example.com\r\n\r\n",
        "GET / FTP/1.1\r\nHost: example.com\r\n\r\n",
        "G(T / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        "GET /a b HTTP/1.1\r\nHost: example.com\r\n\r\n",
    ] {
        let mut conn = Conn::open(proxy.addr()).await;
        let got = conn.roundtrip(request.as_bytes()).await;
        assert_eq!(got.status, 400, "{request:?}");
    }
    assert_eq!(stable.hits(), 0);
}

/// RFC 9112 §5.2 (obs-fold) and RFC 9110 §5.5 (CR, LF, NUL in a value):
/// reject with 400, or replace with SP before forwarding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obs_fold_and_nul_in_a_value_are_400_or_replaced_by_spaces() {
    let (stable, _canary, proxy) = setup().await;
    for request in [
        "GET /fold HTTP/1.1\r\nHost: example.com\r\nX-A: one\r\n two\r\n\r\n",
        "GET /fold HTTP/1.1\r\nHost: example.com\r\nX-A: one\r\n\ttwo\r\n\r\n",
        "GET /nul HTTP/1.1\r\nHost: example.com\r\nX-A: one\0two\r\n\r\n",
        "GET /cr HTTP/1.1\r\nHost: example.com\r\nX-A: one\rtwo\r\n\r\n",
    ] {
        let mut conn = Conn::open(proxy.addr()).await;
        let got = conn.roundtrip(request.as_bytes()).await;
        match got.status {
            400 => {}
            200 => {
                let seen = stable.last_seen();
                let value = seen.headers.get("x-a").map(|v| v.as_bytes().to_vec()).unwrap_or_default();
                let words: Vec<&[u8]> = value.split(|b| *b == b' ').filter(|w| !w.is_empty()).collect();
                assert_eq!(words, [b"one".as_slice(), b"two"], "{request:?}: backend saw {:?}", lossy(&value));
            }
            other => panic!("{request:?}: status {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_kb_head_is_431_and_a_huge_uri_4xx_and_the_proxy_keeps_serving() {
    let (stable, canary, proxy) = setup().await;
    let mut request = b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 100 * 1024));
    request.extend_from_slice(b"\r\n\r\n");
    let mut conn = Conn::open(proxy.addr()).await;
    let writer = conn.send_in_background(request);
    let got = conn.response().await.expect("a response to the big head");
    writer.abort();
    assert_eq!(got.status, 431);

    let mut request = b"GET /".to_vec();
    request.extend(std::iter::repeat_n(b'u', 100 * 1024));
    request.extend_from_slice(b" HTTP/1.1\r\nHost: example.com\r\n\r\n");
    let mut conn = Conn::open(proxy.addr()).await;
    let writer = conn.send_in_background(request);
    let got = conn.response().await.expect("a response to the huge URI");
    writer.abort();
    assert!([400, 414, 431].contains(&got.status), "status {}", got.status);

    assert_eq!(stable.hits(), 0);
    assert_nothing_smuggled(&proxy, &[&stable, &canary]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_1_without_host_is_400() {
    let (stable, _canary, proxy) = setup().await;
    let mut conn = Conn::open(proxy.addr()).await;
    let got = conn.roundtrip(b"GET / HTTP/1.1\r\nUser-Agent: raw\r\n\r\n").await;
    assert_eq!(got.status, 400);
    assert_eq!(stable.hits(), 0);
    // HTTP/1.0 has no such requirement.
    let mut conn = Conn::open(proxy.addr()).await;
    let got = conn.roundtrip(b"GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!((got.status, got.text().as_str()), (200, "GET /old\n"));
}

// -------------------------------------------------------- response framing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_response_has_the_backend_length_and_no_body() {
    let (_stable, _canary, proxy) = setup().await;
    let mut conn = Conn::open(proxy.addr()).await;
    conn.send(b"HEAD /head HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    let got = conn.head_response().await.unwrap();
    assert_eq!(got.status, 200);
    // The GET body would be "HEAD /head\n" (11 bytes).
    assert_eq!(got.header("content-length"), Some("11"));
    // Had a body followed the head, this would parse it as a status line.
    let got = conn.roundtrip(b"GET /after HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    assert_eq!((got.status, got.text().as_str()), (200, "GET /after\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_204_and_304_have_no_body_and_keep_the_connection() {
    let (_stable, _canary, proxy) = setup().await;
    let mut conn = Conn::open(proxy.addr()).await;
    for _ in 0..2 {
        let got = conn.roundtrip(b"GET /no-content HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
        assert_eq!(got.status, 204);
        assert!(got.header("transfer-encoding").is_none(), "RFC 9112 §6.1: no Transfer-Encoding in a 204");
        assert!(got.header("content-length").is_none(), "RFC 9110 §8.6: no Content-Length in a 204");
        let got = conn.roundtrip(b"GET /not-modified HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
        assert_eq!((got.status, got.header("etag")), (304, Some("\"v1\"")));
        assert!(got.header("transfer-encoding").is_none());
    }
    let got = conn.roundtrip(b"GET /after HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    assert_eq!((got.status, got.text().as_str()), (200, "GET /after\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_without_length_is_chunked_for_1_1_and_close_delimited_for_1_0() {
    let (_stable, _canary, proxy) = setup().await;
    let mut conn = Conn::open(proxy.addr()).await;
    let got = conn.roundtrip(b"GET /stream HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    assert_eq!(got.status, 200);
    assert!(got.has_token("transfer-encoding", "chunked"), "{:?}", got.headers);
    assert!(got.header("content-length").is_none());
    assert!(got.body == streamed_body(), "{:?}", got.text());
    let got = conn.roundtrip(b"GET /after HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    assert_eq!(got.text(), "GET /after\n");

    // RFC 9112 §6.1: no Transfer-Encoding to an HTTP/1.0 client.
    let mut conn = Conn::open(proxy.addr()).await;
    let got = conn.roundtrip(b"GET /stream HTTP/1.0\r\nHost: example.com\r\n\r\n").await;
    assert_eq!(got.status, 200);
    assert!(got.header("transfer-encoding").is_none(), "{:?}", got.headers);
    assert!(got.body == streamed_body(), "{:?}", got.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_carry_a_date() {
    let (_stable, _canary, proxy) = setup().await;
    let mut conn = Conn::open(proxy.addr()).await;
    let proxied = conn.roundtrip(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    let local = conn.roundtrip(b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!((proxied.status, local.status), (200, 400));
    for got in [proxied, local] {
        // IMF-fixdate, RFC 9110 §5.6.7: "Sun, 06 Nov 1994 08:49:37 GMT".
        let date = got.header("date").expect("a date header");
        assert!(date.len() == 29 && date.ends_with(" GMT") && date.as_bytes()[3] == b',', "{date:?}");
    }
}

// ------------------------------------------------------------- connection

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_closes_unless_keep_alive_is_asked_for() {
    let (_stable, _canary, proxy) = setup().await;
    let mut conn = Conn::open(proxy.addr()).await;
    let got = conn.roundtrip(b"GET /once HTTP/1.0\r\nHost: example.com\r\n\r\n").await;
    assert!(["HTTP/1.0", "HTTP/1.1"].contains(&got.version.as_str()), "{}", got.version);
    assert_eq!((got.status, got.text().as_str()), (200, "GET /once\n"));
    conn.expect_closed().await;

    let mut conn = Conn::open(proxy.addr()).await;
    for path in ["/first", "/second"] {
        let request = format!("GET {path} HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\n\r\n");
        let got = conn.roundtrip(request.as_bytes()).await;
        assert_eq!((got.status, got.text()), (200, format!("GET {path}\n")));
        assert!(got.has_token("connection", "keep-alive"), "{:?}", got.headers);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_is_answered_and_the_socket_closed() {
    let (stable, _canary, proxy) = setup().await;
    let mut conn = Conn::open(proxy.addr()).await;
    conn.send(
        b"GET /last HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n\
          GET /ignored HTTP/1.1\r\nHost: example.com\r\n\r\n",
    )
    .await;
    let got = conn.response().await.unwrap();
    assert_eq!((got.status, got.text().as_str()), (200, "GET /last\n"));
    assert!(got.has_token("connection", "close"), "{:?}", got.headers);
    conn.expect_closed().await;
    // RFC 9112 §9.6: nothing after a close request is processed.
    assert_eq!(paths(&stable), ["/last"]);
}

// ------------------------------------------------------------------ targets

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_target_is_routed_and_sent_on_in_origin_form() {
    let (stable, canary) = (app().await, Backend::named("canary").await);
    let config = two_pool_config(stable.addr, canary.addr, 0.0, "")
        .replace("name = \"web\"", "name = \"web\"\nhost = \"shop.example.com\"");
    let proxy = Proxy::start(&config);
    let mut conn = Conn::open(proxy.addr()).await;
    let got = conn.roundtrip(b"GET http://shop.example.com/x?q=1 HTTP/1.1\r\nHost: shop.example.com\r\n\r\n").await;
    assert_eq!((got.status, got.text().as_str()), (200, "GET /x?q=1\n"));
    let seen = stable.last_seen();
    assert_eq!(seen.uri, "/x?q=1");
    assert_eq!(seen.headers.get("host").unwrap(), "shop.example.com");
    // Routing is by the target's authority: an origin-form request for
    // another host finds no route.
    let got = conn.roundtrip(b"GET /x HTTP/1.1\r\nHost: other.example\r\n\r\n").await;
    assert_eq!(got.status, 404);
    assert_eq!(stable.hits(), 1);
}

/// RFC 9112 §3.2.2: with an absolute-form target, the received Host is
/// ignored and replaced by the target's authority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_target_overrides_a_different_host_field() {
    let (stable, canary) = (app().await, Backend::named("canary").await);
    let config = two_pool_config(stable.addr, canary.addr, 0.0, "")
        .replace("name = \"web\"", "name = \"web\"\nhost = \"shop.example.com\"");
    let proxy = Proxy::start(&config);
    let mut conn = Conn::open(proxy.addr()).await;
    let got = conn.roundtrip(b"GET http://shop.example.com/abs HTTP/1.1\r\nHost: other.example\r\n\r\n").await;
    assert_eq!(got.status, 200);
    let seen = stable.last_seen();
    assert_eq!(seen.uri, "/abs");
    assert_eq!(seen.headers.get("host").unwrap(), "shop.example.com");
    assert_eq!(seen.headers.get("x-forwarded-host").unwrap(), "shop.example.com");
}

/// RFC 9112 §3.2: a request with more than one Host field, or an invalid
/// one, is a 400 and never reaches a backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_or_invalid_host_fields_are_400() {
    let (stable, canary, proxy) = setup().await;
    for request in [
        "GET /h HTTP/1.1\r\nHost: example.com\r\nHost: evil.example\r\n\r\n",
        "GET /h HTTP/1.1\r\nHost: a b\r\n\r\n",
        "GET /h HTTP/1.1\r\nHost: exa/mple.com\r\n\r\n",
        "GET /h HTTP/1.1\r\nHost: user@example.com\r\n\r\n",
    ] {
        let mut conn = Conn::open(proxy.addr()).await;
        let got = conn.roundtrip(request.as_bytes()).await;
        assert_eq!(got.status, 400, "{request:?}");
    }
    assert_eq!(stable.hits() + canary.hits(), 0);
}

// ------------------------------------------------------------ abandoned requests

/// A raw backend that accepts one connection and reads a request head.
async fn raw_backend_request(listener: &tokio::net::TcpListener) -> TcpStream {
    let (mut upstream, _) = tokio::time::timeout(LIMIT, listener.accept()).await.expect("proxied in time").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(LIMIT, upstream.read(&mut byte)).await.expect("head in time").unwrap();
        assert_eq!(n, 1, "the head ended early: {}", lossy(&head));
        head.push(byte[0]);
    }
    upstream
}

/// Reads from the backend side until the proxy closes it; what it read.
async fn until_closed_by_proxy(upstream: &mut TcpStream) -> usize {
    let mut total = 0;
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(LIMIT, upstream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return total,
            Ok(Ok(n)) => total += n,
            Err(_) => panic!("the proxy kept the backend request open"),
        }
    }
}

/// A client that leaves while its request waits on a slow backend: the
/// backend request is abandoned too (its connection closes at once), not
/// left running until `timeouts.response`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_request_abandons_the_backend_request() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let canary = Backend::named("canary").await;
    let proxy = Proxy::start(&two_pool_config(listener.local_addr().unwrap(), canary.addr, 0.0, ""));
    let mut client = Conn::open(proxy.addr()).await;
    client.send(b"GET /wait HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    let mut upstream = raw_backend_request(&listener).await;
    drop(client);
    until_closed_by_proxy(&mut upstream).await;
}

/// A request whose body is still being forwarded when its connection
/// closes (here: the backend answers before reading it, and the client
/// connection cannot be reused): the forwarding fails at once instead of
/// waiting for bytes that will never be read, and the backend connection
/// closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_still_forwarded_when_its_connection_closes_fails_at_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let canary = Backend::named("canary").await;
    let proxy = Proxy::start(&streaming(&two_pool_config(listener.local_addr().unwrap(), canary.addr, 0.0, "")));
    let mut client = Conn::open(proxy.addr()).await;
    client.send(b"POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: 1000000\r\n\r\nfirst bytes").await;
    let mut upstream = raw_backend_request(&listener).await;
    upstream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
    let got = client.response().await.expect("an answer");
    assert_eq!((got.status, got.text().as_str()), (200, "ok"));
    let forwarded = until_closed_by_proxy(&mut upstream).await;
    assert!(forwarded < 1_000_000, "only what the client sent: {forwarded}");
    client.expect_closed().await;
}

/// A head that arrives a byte at a time is read whole: it is parsed again
/// only when a line ends, and the line endings split across reads are found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_trickled_byte_by_byte_is_served() {
    let (stable, _canary, proxy) = setup().await;
    let mut conn = Conn::open(proxy.addr()).await;
    let head =
        b"GET /trickle HTTP/1.1\r\nHost: example.com\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    for byte in head.chunks(1) {
        conn.send(byte).await;
    }
    let got = conn.response().await.expect("a response");
    assert_eq!((got.status, got.text().as_str()), (200, "GET /trickle\n"));
    assert_eq!(stable.last_seen().uri, "/trickle");
    // And a pipelined head right behind one that trickled in.
    conn.send(b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\nGET /b HTTP/1.1\r").await;
    conn.send(b"\nHost: example.com\r\n\r").await;
    conn.send(b"\n").await;
    for path in ["/a", "/b"] {
        let got = conn.response().await.expect("a response");
        assert_eq!((got.status, got.text()), (200, format!("GET {path}\n")));
    }
}
