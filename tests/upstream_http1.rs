//! How the proxy treats HTTP/1.1 backends that misbehave or do unusual
//! things (RFC 9112 framing and connection management, RFC 9110 semantics),
//! on raw sockets at both ends: each backend here is a `TcpListener` that
//! writes exact bytes, so that the tests control the framing byte by byte,
//! and counts the connections it accepts, so that reuse shows.
//!
//! Written against hyper's client, which the proxy used before its own
//! HTTP/1.1 client, and then run against the new one. Four tests failed
//! with hyper's client and say why in their doc comment: three on what it
//! got wrong (a Content-Length beside chunked, a transfer coding other than
//! chunked, a response head over 64 KiB) and one on a metrics bug (a
//! malformed chunked request body counted as a backend error).

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::wire::{Reader, lossy};
use common::{Proxy, eventually, metric, two_pool_config};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};

/// Bound on every wait: nothing in this file can hang.
const LIMIT: Duration = Duration::from_secs(10);
const MIB: usize = 1 << 20;

async fn within<T>(what: &str, work: impl Future<Output = T>) -> T {
    match tokio::time::timeout(LIMIT, work).await {
        Ok(done) => done,
        Err(_) => panic!("{what}: nothing within {LIMIT:?}"),
    }
}

/// `n` bytes that are not all alike, so a lost or shifted byte shows.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 23) as u8).collect()
}

/// Header fields, names lowercased, values trimmed.
fn fields<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<(String, String)> {
    lines
        .map(|l| {
            let (name, value) = l.split_once(':').unwrap_or_else(|| panic!("bad field line {l:?}"));
            (name.to_ascii_lowercase(), value.trim().to_string())
        })
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

// ------------------------------------------------------------- raw backend

/// A request head as a raw backend read it.
#[derive(Debug, Clone)]
struct Head {
    method: String,
    path: String,
    fields: Vec<(String, String)>,
    /// Which request this is on its connection, from 0.
    nth: usize,
    /// The head's lines as they arrived (CRLFs included).
    raw: String,
}

impl Head {
    fn parse(text: &str, nth: usize) -> Head {
        let mut lines = text.split("\r\n");
        let mut words = lines.next().unwrap_or_default().split(' ');
        let method = words.next().unwrap_or_default().to_string();
        let path = words.next().unwrap_or_default().to_string();
        Head { method, path, fields: fields(lines), nth, raw: text.to_string() }
    }

    fn field(&self, name: &str) -> Option<&str> {
        field(&self.fields, name)
    }

    fn count(&self, name: &str) -> usize {
        self.fields.iter().filter(|(n, _)| n == name).count()
    }
}

/// A request as a raw backend received it.
#[derive(Debug, Clone)]
struct Received {
    /// Which accepted connection it came on, from 0.
    conn: usize,
    head: Head,
    /// The body, decoded by its framing; `Err` when the framing was broken
    /// or cut; `None` when the backend answered before reading it, if ever.
    body: Option<Result<Vec<u8>, String>>,
}

/// What a raw backend does with a request.
struct Reply {
    body: BodyRead,
    /// Written in order, one write each.
    writes: Vec<Vec<u8>>,
    then: Then,
}

/// When a raw backend reads the request body.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyRead {
    /// Before answering, as most servers do.
    First,
    /// After answering: read and dropped, so the connection can go on.
    AfterAnswer,
    /// Never.
    Never,
}

#[derive(Clone, Copy)]
enum Then {
    /// Read the next request on the connection.
    KeepAlive,
    /// Close the connection (a plain close: no `Connection: close` needed).
    Close,
    /// Shut the sending side, then read and drop what comes until the
    /// proxy closes: a lingering close, so that unread request bytes do not
    /// turn the close into a reset that could destroy the response in flight.
    Linger,
    /// Keep the connection open and read nothing more (a backend that
    /// never answers).
    Hang,
    /// Send back every byte that arrives (a tunnel after `101`).
    Echo,
}

impl Reply {
    fn keep(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply { body: BodyRead::First, writes: vec![bytes.into()], then: Then::KeepAlive }
    }

    fn close(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply { body: BodyRead::First, writes: vec![bytes.into()], then: Then::Close }
    }

    fn writes(writes: &[&[u8]], then: Then) -> Reply {
        Reply { body: BodyRead::First, writes: writes.iter().map(|w| w.to_vec()).collect(), then }
    }

    /// Answers after the head: reads the body afterwards or never.
    fn early(self, body: BodyRead) -> Reply {
        Reply { body, ..self }
    }
}

/// `200 OK` with `body` framed by Content-Length.
fn ok(body: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

type Script = Arc<dyn Fn(&Head) -> Reply + Send + Sync>;

/// A backend on 127.0.0.1 (port from 0) that answers each request as its
/// script says, with exact bytes.
struct RawBackend {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    /// Connections the backend has closed.
    closed: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawBackend {
    async fn start(script: impl Fn(&Head) -> Reply + Send + Sync + 'static) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let script: Script = Arc::new(script);
        let accepts = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (accepts2, closed2, received2) = (accepts.clone(), closed.clone(), received.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conn = accepts2.fetch_add(1, Ordering::SeqCst);
                let (script, closed, received) = (script.clone(), closed2.clone(), received2.clone());
                tokio::spawn(async move {
                    serve(stream, conn, &script, &received).await;
                    closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        RawBackend { addr, accepts, closed, received, task }
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// (connection, path) of every request received.
    fn requests(&self) -> Vec<(usize, String)> {
        self.received().into_iter().map(|r| (r.conn, r.head.path)).collect()
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One backend connection. Reads are bounded by `LIMIT`; a backend task
/// never panics on what the proxy sends, it records it and closes.
async fn serve(stream: TcpStream, conn: usize, script: &Script, received: &Mutex<Vec<Received>>) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = Reader::new(read);
    for nth in 0.. {
        let Ok(Ok(Some(text))) = tokio::time::timeout(LIMIT, reader.head()).await else { return };
        let head = Head::parse(&text, nth);
        let reply = script(&head);
        let body = match reply.body {
            BodyRead::First => Some(read_body(&mut reader, &head).await),
            BodyRead::AfterAnswer | BodyRead::Never => None,
        };
        let broken = matches!(body, Some(Err(_)));
        received.lock().unwrap().push(Received { conn, head: head.clone(), body });
        if broken {
            return;
        }
        for bytes in &reply.writes {
            if write.write_all(bytes).await.is_err() {
                return;
            }
        }
        if reply.body == BodyRead::AfterAnswer && read_body(&mut reader, &head).await.is_err() {
            return;
        }
        match reply.then {
            Then::KeepAlive => {}
            Then::Close => return,
            Then::Linger => {
                let _ = write.shutdown().await;
                while tokio::time::timeout(LIMIT, reader.fill()).await.unwrap_or(0) > 0 {
                    reader.buf.clear();
                }
                return;
            }
            Then::Hang => std::future::pending::<()>().await,
            Then::Echo => loop {
                if !reader.buf.is_empty() {
                    if write.write_all(&reader.buf).await.is_err() {
                        return;
                    }
                    reader.buf.clear();
                }
                if tokio::time::timeout(LIMIT, reader.fill()).await.unwrap_or(0) == 0 {
                    return;
                }
            },
        }
    }
}

async fn read_body(reader: &mut Reader, head: &Head) -> Result<Vec<u8>, String> {
    tokio::time::timeout(LIMIT, request_body(reader, head))
        .await
        .unwrap_or_else(|_| Err(format!("no complete body within {LIMIT:?}")))
}

/// A request body by its framing (RFC 9112 §6.3), strictly.
async fn request_body(reader: &mut Reader, head: &Head) -> Result<Vec<u8>, String> {
    if let Some(codings) = head.field("transfer-encoding") {
        return match codings.eq_ignore_ascii_case("chunked") {
            true => reader.chunked().await,
            false => Err(format!("transfer-encoding {codings:?}")),
        };
    }
    match head.field("content-length") {
        None => Ok(Vec::new()),
        Some(n) => reader.take(n.parse().map_err(|_| format!("content-length {n:?}"))?).await,
    }
}

// ------------------------------------------------------------ wire client

/// A response as the client read it off the wire.
#[derive(Debug)]
struct Resp {
    version: String,
    status: u16,
    fields: Vec<(String, String)>,
    body: Vec<u8>,
    /// The head's lines as they arrived (CRLFs included).
    raw: String,
}

impl Resp {
    fn parse_head(text: &str) -> Resp {
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut words = status_line.splitn(3, ' ');
        let version = words.next().unwrap_or_default().to_string();
        let status = words.next().and_then(|s| s.parse().ok());
        let Some(status) = status.filter(|_| version.starts_with("HTTP/1.")) else {
            panic!("bad status line from the proxy: {status_line:?}");
        };
        Resp { version, status, fields: fields(lines), body: Vec::new(), raw: text.to_string() }
    }

    fn field(&self, name: &str) -> Option<&str> {
        field(&self.fields, name)
    }

    fn text(&self) -> String {
        lossy(&self.body)
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
        let stream = within("connect to the proxy", TcpStream::connect(addr)).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        let (read, write) = stream.into_split();
        Conn { reader: Reader::new(read), write: Arc::new(tokio::sync::Mutex::new(write)) }
    }

    async fn send(&mut self, bytes: &[u8]) {
        let write = self.write.clone();
        within("write to the proxy", async move { write.lock().await.write_all(bytes).await }).await.expect("write");
    }

    /// Writes `bytes` from a task, ignoring errors: the proxy may answer and
    /// close before reading them all. Abort the handle when done.
    fn send_in_background(&self, bytes: Vec<u8>) -> tokio::task::JoinHandle<()> {
        let write = self.write.clone();
        tokio::spawn(async move {
            let _ = write.lock().await.write_all(&bytes).await;
        })
    }

    /// The next message: `Ok(None)` when the proxy closed before its first
    /// byte, `Err` when it closed inside it. A malformed one panics.
    async fn read(&mut self, to_head: bool) -> Result<Option<Resp>, String> {
        within("a response or a close from the proxy", self.read_message(to_head)).await
    }

    async fn read_message(&mut self, to_head: bool) -> Result<Option<Resp>, String> {
        let Some(head) = self.reader.head().await? else { return Ok(None) };
        let mut resp = Resp::parse_head(&head);
        // RFC 9112 §6.3: responses to HEAD, 1xx, 204 and 304 end at the head.
        if to_head || (100..200).contains(&resp.status) || resp.status == 204 || resp.status == 304 {
            return Ok(Some(resp));
        }
        resp.body = if let Some(codings) = resp.field("transfer-encoding") {
            let last = codings.rsplit(',').next().unwrap_or_default().trim();
            assert!(last.eq_ignore_ascii_case("chunked"), "transfer-encoding {codings:?} from the proxy");
            assert!(resp.field("content-length").is_none(), "both framings from the proxy: {:?}", resp.fields);
            self.reader.chunked().await?
        } else if let Some(length) = resp.field("content-length") {
            let length = length.parse().unwrap_or_else(|_| panic!("bad content-length {length:?} from the proxy"));
            self.reader.take(length).await?
        } else {
            self.reader.until_closed().await
        };
        Ok(Some(resp))
    }

    /// The next message, which must be there and complete.
    async fn response(&mut self) -> Resp {
        self.read(false).await.expect("a complete response").expect("a response, not a close")
    }

    async fn roundtrip(&mut self, request: &[u8]) -> Resp {
        self.send(request).await;
        self.response().await
    }

    async fn get(&mut self, path: &str) -> Resp {
        self.roundtrip(get(path).as_bytes()).await
    }

    /// Asserts that the proxy closes the connection, sending nothing more.
    async fn expect_closed(&mut self) {
        let rest = within("the proxy closing the connection", self.reader.until_closed()).await;
        assert!(rest.is_empty(), "bytes after the last response: {:?}", lossy(&rest));
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n")
}

/// The proxy in front of `backend` alone (the canary pool, at weight 0,
/// takes nothing), with `extra` TOML.
fn proxy(backend: &RawBackend, extra: &str) -> Proxy {
    Proxy::start(&two_pool_config(backend.addr, backend.addr, 0.0, extra))
}

/// A connection whose response broke its framing cannot be trusted with
/// another request: asserts that none followed a request whose path starts
/// with `broken` on its backend connection.
fn assert_not_reused_after(backend: &RawBackend, broken: &str) {
    let requests = backend.requests();
    for (i, (conn, path)) in requests.iter().enumerate().filter(|(_, (_, p))| p.starts_with(broken)) {
        let after: Vec<_> = requests[i + 1..].iter().filter(|(c, _)| c == conn).collect();
        assert!(after.is_empty(), "{path} broke backend connection {conn}, which then carried {after:?}");
    }
}

/// After a bad backend answer: the proxy still serves a good one.
async fn assert_still_serving(proxy: &Proxy, path: &str, want: &str) {
    let got = Conn::open(proxy.addr()).await.get(path).await;
    assert_eq!((got.status, got.text().as_str()), (200, want), "the proxy keeps serving");
}

// ------------------------------------------------------------ keep-alive

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_responses_in_a_row_reuse_one_backend_connection() {
    let big = lossy(&pattern(200_000));
    let backend = RawBackend::start(move |head| match head.path.as_str() {
        "/empty" => Reply::keep(&b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..]),
        "/big" => Reply::keep(ok(&big)),
        path => Reply::keep(ok(&format!("{} {path}", head.method))),
    })
    .await;
    let proxy = proxy(&backend, "");
    let mut client = Conn::open(proxy.addr()).await;
    for i in 0..3 {
        let got = client.get(&format!("/seq/{i}")).await;
        assert_eq!((got.status, got.text()), (200, format!("GET /seq/{i}")));
    }
    let got = client.get("/empty").await;
    assert_eq!((got.status, got.field("content-length"), got.body.len()), (200, Some("0"), 0));
    let got = client.get("/big").await;
    assert!(got.status == 200 && got.body == pattern(200_000), "{} bytes", got.body.len());
    let got = client.get("/last").await;
    assert_eq!(got.text(), "GET /last");
    assert_eq!(backend.accepts(), 1, "backend connections for 6 sequential requests");
    assert!(backend.requests().iter().all(|(conn, _)| *conn == 0));
}

/// RFC 9112 §7.1: chunk extensions are ignored and the trailer section is
/// consumed, so the next response on the connection parses cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_response_with_extensions_and_trailers_arrives_decoded_and_the_connection_is_reused() {
    // Split inside a size line, inside a CRLF and inside chunk data.
    let backend = RawBackend::start(|_| {
        Reply::writes(
            &[
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n5;name=value\r\nhel",
                b"lo\r\n6;x;y=\"z\"\r\n world\r",
                b"\n1",
                b"0\r\n0123456789abcdef\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n",
            ],
            Then::KeepAlive,
        )
    })
    .await;
    let proxy = proxy(&backend, "");
    let mut client = Conn::open(proxy.addr()).await;
    for path in ["/one", "/two"] {
        let got = client.get(path).await;
        assert_eq!((got.status, got.text().as_str()), (200, "hello world0123456789abcdef"), "{path}");
    }
    assert_eq!(backend.accepts(), 1, "the trailer section was consumed and the connection reused");
}

/// RFC 9112 §7.1.2: trailer fields of a chunked response reach a client
/// that accepts them (`TE: trailers`); others get the body without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailer_fields_reach_a_client_that_accepts_them() {
    let backend = RawBackend::start(|_| {
        Reply::keep(&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Checksum: abc\r\nX-Other:  1 \r\n\r\n"[..])
    })
    .await;
    let proxy = proxy(&backend, "");
    let mut client = Conn::open(proxy.addr()).await;
    let got = client.roundtrip(b"GET /t HTTP/1.1\r\nHost: example.com\r\nTE: trailers\r\n\r\n").await;
    assert_eq!((got.status, got.text().as_str()), (200, "ok"));
    assert_eq!(client.reader.trailers, ["x-checksum: abc", "x-other: 1"]);
    let got = client.get("/plain").await;
    assert_eq!((got.status, got.text().as_str()), (200, "ok"));
    assert!(client.reader.trailers.is_empty(), "{:?}", client.reader.trailers);
    assert_eq!(backend.accepts(), 1);
}

/// RFC 9112 §6.3 (8): without Content-Length or chunked, the body runs to
/// the close; the connection is then done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_delimited_response_arrives_whole_and_the_next_request_opens_a_new_connection() {
    let body = pattern(100_000);
    let head: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n";
    let sent = body.clone();
    let backend = RawBackend::start(move |_| Reply::writes(&[head, &sent[..1000], &sent[1000..]], Then::Close)).await;
    let proxy = proxy(&backend, "");
    let mut client = Conn::open(proxy.addr()).await;
    for path in ["/one", "/two"] {
        let got = client.get(path).await;
        assert!(got.status == 200 && got.body == body, "{path}: {} {} bytes", got.status, got.body.len());
    }
    assert_eq!(backend.requests(), [(0, "/one".to_string()), (1, "/two".to_string())]);
}

/// RFC 9112 §9.3: an HTTP/1.0 response without keep-alive ends the
/// connection, even when the backend leaves it open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_response_is_relayed_and_its_connection_not_reused() {
    let backend = RawBackend::start(|_| Reply::keep(&b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nold ok"[..])).await;
    let proxy = proxy(&backend, "");
    let mut client = Conn::open(proxy.addr()).await;
    for path in ["/one", "/two"] {
        let got = client.get(path).await;
        assert_eq!((got.version.as_str(), got.status, got.text().as_str()), ("HTTP/1.1", 200, "old ok"), "{path}");
    }
    assert_eq!(backend.requests(), [(0, "/one".to_string()), (1, "/two".to_string())]);
}

/// `Connection: close` from a backend ends its connection (RFC 9112 §9.6)
/// but is hop-by-hop: the client's connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_from_a_backend_makes_the_next_request_open_a_new_connection() {
    let backend =
        RawBackend::start(|_| Reply::keep(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"[..]))
            .await;
    let proxy = proxy(&backend, "");
    let mut client = Conn::open(proxy.addr()).await;
    for path in ["/one", "/two"] {
        let got = client.get(path).await;
        assert_eq!((got.status, got.text().as_str()), (200, "ok"), "{path}");
        assert!(got.field("connection").is_none_or(|v| !v.contains("close")), "{:?}", got.fields);
    }
    assert_eq!(backend.requests(), [(0, "/one".to_string()), (1, "/two".to_string())]);
}

/// A keep-alive connection the backend closed after its response (no
/// `Connection: close`, as a keep-alive timeout does): the next request
/// still gets its answer, on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_backend_closed_is_not_used_for_the_next_request() {
    let backend = RawBackend::start(|head| Reply::close(ok(&head.path))).await;
    let proxy = proxy(&backend, "");
    let mut client = Conn::open(proxy.addr()).await;
    for i in 0..3 {
        let path = format!("/r{i}");
        let got = client.get(&path).await;
        assert_eq!((got.status, got.text()), (200, path));
        assert!(
            eventually(LIMIT, || backend.closed.load(Ordering::SeqCst) == i + 1).await,
            "the backend closed its connection"
        );
    }
    assert_eq!(backend.accepts(), 3);
}

/// The keep-alive race: the backend closes an idle connection just as the
/// proxy sends the next request on it, without answering. A GET without a
/// body is safe to send again (RFC 9112 §9.3.1), on a fresh connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_on_a_pooled_connection_closed_as_it_arrives_is_sent_again_on_a_new_one() {
    let backend = RawBackend::start(|head| match head.nth {
        0 => Reply::keep(ok(&head.path)),
        _ => Reply::close(Vec::new()),
    })
    .await;
    let proxy = proxy(&backend, "");
    let mut client = Conn::open(proxy.addr()).await;
    assert_eq!(client.get("/first").await.text(), "/first");
    let got = client.get("/second").await;
    assert_eq!((got.status, got.text().as_str()), (200, "/second"));
    assert_eq!(backend.requests(), [(0, "/first".to_string()), (0, "/second".to_string()), (1, "/second".to_string())]);
}

// -------------------------------------------------------- response framing

/// Bytes after the end of a response are no response to anything: they
/// must never reach a client, and a connection that carried them cannot be
/// trusted with another request (RFC 9112 §6.3 (3), RFC 9112 §9.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_a_chunked_body_with_content_length_are_never_delivered() {
    // Framed by Content-Length, the body would be "b\r\nhello wor" and the
    // rest would run into the next response; RFC 9112 §6.3 (3): chunked wins.
    let backend = RawBackend::start(|head| match head.path.as_str() {
        "/split" => Reply::keep(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nTransfer-Encoding: chunked\r\n\r\n\
               b\r\nhello world\r\n0\r\n\r\n\
               HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"[..],
        ),
        _ => Reply::keep(ok("after")),
    })
    .await;
    let proxy = proxy(&backend, "");
    let mut client = Conn::open(proxy.addr()).await;
    let got = client.get("/split").await;
    match got.status {
        502 => {}
        200 => assert_eq!(got.text(), "hello world", "framed by chunked"),
        other => panic!("status {other}"),
    }
    for _ in 0..3 {
        let got = client.get("/next").await;
        assert_eq!((got.status, got.text().as_str()), (200, "after"), "the smuggled response never reaches a client");
    }
    assert_still_serving(&proxy, "/next", "after").await;
    assert_not_reused_after(&backend, "/split");
}

/// RFC 9112 §6.3 (3): with both fields, Transfer-Encoding frames the body,
/// and an intermediary that forwards the message must first remove the
/// received Content-Length. So the client gets the decoded body whole, or
/// a 502, never a body cut to the backend's Content-Length and presented as
/// complete.
///
/// Failed with hyper's client: it decoded the chunked body but kept
/// the backend's `Content-Length` in the response head, and the HTTP/1.1
/// server framed the client's response by it, so with `Content-Length: 5`
/// the client received a clean-looking `200` whose body was "hello" (the
/// rest dropped), and with `Content-Length: 100` a response cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_beside_chunked_never_cuts_the_decoded_body() {
    let backend = RawBackend::start(|head| {
        let length = head.path.trim_start_matches('/');
        Reply::keep(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nTransfer-Encoding: chunked\r\n\r\n\
             b\r\nhello world\r\n0\r\n\r\n"
        ))
    })
    .await;
    let proxy = proxy(&backend, "");
    let mut wrong = Vec::new();
    for length in ["5", "11", "100"] {
        let mut client = Conn::open(proxy.addr()).await;
        client.send(get(&format!("/{length}")).as_bytes()).await;
        match client.read(false).await {
            Ok(Some(got)) if got.status == 502 || (got.status, got.body.as_slice()) == (200, b"hello world") => {}
            other => {
                let seen =
                    other.map(|r| r.map(|r| (r.status, r.field("content-length").map(str::to_string), r.text())));
                wrong.push(format!("Content-Length {length} beside chunked: {seen:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// A transfer coding the proxy does not decode (RFC 9112 §7) cannot be
/// dropped: the client would take gzip bytes for the content. Either the
/// coding reaches the client or the answer is a 502 (as nginx answers
/// "upstream sent unknown Transfer-Encoding").
///
/// Failed with hyper's client: it framed the body (chunked, or to the
/// close) and the proxy removed `Transfer-Encoding` as hop-by-hop, so the
/// client got the still-encoded bytes as a plain 200 body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_coding_other_than_chunked_is_never_silently_dropped() {
    let backend = RawBackend::start(|head| match head.path.as_str() {
        "/gzip-chunked" => {
            Reply::keep(&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nGZIPD\r\n0\r\n\r\n"[..])
        }
        _ => Reply::close(&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nGZIPD"[..]),
    })
    .await;
    let proxy = proxy(&backend, "");
    let mut wrong = Vec::new();
    for path in ["/gzip-chunked", "/gzip"] {
        let got = Conn::open(proxy.addr()).await.get(path).await;
        let coded = got.field("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("gzip"));
        if got.status != 502 && !coded {
            wrong.push(format!("{path}: {} {:?} {:?}", got.status, got.fields, got.text()));
        }
    }
    assert!(wrong.is_empty(), "the gzip coding was dropped: {wrong:#?}");
}

/// RFC 9110 §8.6 and RFC 9112 §6.3 (5): a Content-Length that is not one
/// decimal number is unrecoverable framing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_content_length_is_502_and_the_proxy_keeps_serving() {
    const BAD: [&str; 5] = [
        "Content-Length: abc",
        "Content-Length: -1",
        "Content-Length: +5",
        "Content-Length: 5, 6",
        "Content-Length: 5\r\nContent-Length: 6",
    ];
    let backend =
        RawBackend::start(|head| match head.path.strip_prefix("/bad/").and_then(|i| i.parse::<usize>().ok()) {
            Some(i) => Reply::keep(format!("HTTP/1.1 200 OK\r\n{}\r\n\r\nhello world", BAD[i])),
            None => Reply::keep(ok("ok")),
        })
        .await;
    let proxy = proxy(&backend, "");
    let mut client = Conn::open(proxy.addr()).await;
    for (i, fields) in BAD.iter().enumerate() {
        let got = client.get(&format!("/bad/{i}")).await;
        assert_eq!(got.status, 502, "{fields:?}: {:?}", got.text());
        let got = client.get("/ok").await;
        assert_eq!((got.status, got.text().as_str()), (200, "ok"), "after {fields:?}");
    }
    assert_not_reused_after(&backend, "/bad/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_a_status_line_is_502() {
    const GARBAGE: [&[u8]; 8] = [
        b"NONSENSE\r\n\r\n",
        b"HTTP/1.1 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
        // Three digits, but no HTTP status (RFC 9110 §15).
        b"HTTP/1.1 099 Early\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 600 Library Error\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 999 Late\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\nContent-Length: 0\r\n\r\n",
    ];
    let backend =
        RawBackend::start(|head| match head.path.strip_prefix("/bad/").and_then(|i| i.parse::<usize>().ok()) {
            Some(i) => Reply::keep(GARBAGE[i]),
            None => Reply::keep(ok("ok")),
        })
        .await;
    let proxy = proxy(&backend, "");
    let mut client = Conn::open(proxy.addr()).await;
    for (i, garbage) in GARBAGE.iter().enumerate() {
        let got = client.get(&format!("/bad/{i}")).await;
        assert_eq!(got.status, 502, "{:?}: {:?}", lossy(garbage), got.text());
    }
    assert_eq!(client.get("/ok").await.text(), "ok");
    assert_not_reused_after(&backend, "/bad/");
}

/// An answer cut short (the backend closed before its Content-Length or
/// last chunk) must not look complete to the client: its connection closes
/// before the end of the message. Its status went out as a 200, so the
/// metrics count the backend's failure as an upstream error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_by_the_backend_is_never_presented_as_complete() {
    let backend = RawBackend::start(|head| match head.path.as_str() {
        "/length" => Reply::close(&b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"[..]),
        "/chunked" => Reply::close(&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n"[..]),
        _ => Reply::keep(ok("ok")),
    })
    .await;
    let proxy = proxy(&backend, "");
    for path in ["/length", "/chunked"] {
        let mut client = Conn::open(proxy.addr()).await;
        client.send(get(path).as_bytes()).await;
        match client.read(false).await {
            // The head (200) went out before the body broke: the client sees the cut.
            Err(cut) => assert!(cut.starts_with("closed"), "{path}: {cut}"),
            Ok(Some(got)) if got.status == 502 => {}
            other => panic!("{path}: a complete answer for a cut body: {other:?}"),
        }
    }
    assert_still_serving(&proxy, "/ok", "ok").await;
    let text = proxy.metrics();
    let reset = metric(&text, r#"cutover_upstream_errors_total{kind="reset",route="web",version="stable"}"#);
    assert_eq!(reset, 2.0, "both cut bodies count as backend resets:\n{text}");
}

/// RFC 9110 §15.2: 1xx responses before the final one; 103 may be
/// forwarded or not, but nothing of them may garble the final response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_before_the_final_one_leave_it_intact() {
    const INTERIM: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n";
    let backend = RawBackend::start(|head| match head.path.as_str() {
        "/one-write" => Reply::keep([INTERIM, &ok("final")[..]].concat()),
        _ => Reply::writes(
            &[
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n",
                &ok("final"),
            ],
            Then::KeepAlive,
        ),
    })
    .await;
    let proxy = proxy(&backend, "");
    let mut client = Conn::open(proxy.addr()).await;
    for path in ["/one-write", "/three-writes", "/one-write"] {
        client.send(get(path).as_bytes()).await;
        let mut got = client.response().await;
        while (100..200).contains(&got.status) {
            assert!([100, 103].contains(&got.status), "{path}: interim {}", got.status);
            if got.status == 103 {
                assert_eq!(got.field("link"), Some("</a>; rel=preload"), "{path}");
            }
            got = client.response().await;
        }
        assert_eq!((got.status, got.text().as_str()), (200, "final"), "{path}");
    }
    assert_eq!(backend.accepts(), 1);
}

/// RFC 9110 §9.3.2: a response to HEAD has no body, whatever its
/// Content-Length says; waiting for one would hang the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_response_with_content_length_has_no_body_and_the_connections_carry_on() {
    let backend = RawBackend::start(|head| match head.method.as_str() {
        "HEAD" => Reply::keep(&b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"[..]),
        _ => Reply::keep(ok("after")),
    })
    .await;
    let proxy = proxy(&backend, "");
    let mut client = Conn::open(proxy.addr()).await;
    for _ in 0..2 {
        client.send(b"HEAD /page HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
        let got = client.read(true).await.expect("complete").expect("a response");
        assert_eq!((got.status, got.field("content-length")), (200, Some("1000")));
        // Had any body followed the head, this would parse it as a status line.
        let got = client.get("/after").await;
        assert_eq!((got.status, got.text().as_str()), (200, "after"));
    }
    assert_eq!(backend.accepts(), 1);
}

/// RFC 9112 §6.3 (1): 204 and 304 end at their head; a 304 may carry the
/// Content-Length of the representation (RFC 9110 §8.6) without a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_204_and_304_are_relayed_without_a_body_and_the_connections_carry_on() {
    let backend = RawBackend::start(|head| match head.path.as_str() {
        "/204" => Reply::keep(&b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"[..]),
        "/304" => Reply::keep(&b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 5\r\n\r\n"[..]),
        _ => Reply::keep(ok("after")),
    })
    .await;
    let proxy = proxy(&backend, "");
    let mut client = Conn::open(proxy.addr()).await;
    for _ in 0..2 {
        let got = client.get("/204").await;
        assert_eq!((got.status, got.field("x-a")), (204, Some("1")));
        assert!(got.field("transfer-encoding").is_none(), "{:?}", got.fields);
        let got = client.get("/304").await;
        assert_eq!((got.status, got.field("etag")), (304, Some("\"v1\"")));
        assert!(got.field("transfer-encoding").is_none(), "{:?}", got.fields);
    }
    let got = client.get("/after").await;
    assert_eq!((got.status, got.text().as_str()), (200, "after"));
    assert_eq!(backend.accepts(), 1);
}

// ------------------------------------------------------------ failures

/// With `[retries]` at its default (one attempt), a GET that a backend
/// dropped goes once to another backend of the pool; a POST whose body was
/// sent never goes twice (README "Retries").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_closes_without_answering_is_502_after_one_retry_for_a_get_only() {
    let hang_up = |head: &Head| match head.path.as_str() {
        "/ok" => Reply::keep(ok("ok")),
        _ => Reply::close(Vec::new()),
    };
    let (a, b) = (RawBackend::start(hang_up).await, RawBackend::start(hang_up).await);
    let config = two_pool_config(a.addr, b.addr, 0.0, "");
    let one = format!("[pools.stable]\nbackends = [\"{}\"]", a.addr);
    assert!(config.contains(&one));
    let proxy =
        Proxy::start(&config.replace(&one, &format!("[pools.stable]\nbackends = [\"{}\", \"{}\"]", a.addr, b.addr)));
    let mut client = Conn::open(proxy.addr()).await;

    let got = client.get("/get").await;
    assert_eq!(got.status, 502, "{:?}", got.text());
    assert_eq!((a.received().len(), b.received().len()), (1, 1), "tried on each backend once");
    assert_eq!(metric(&proxy.metrics(), r#"cutover_retries_total{result="attempted"}"#), 1.0);

    let got = client.roundtrip(b"POST /post HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello").await;
    assert_eq!(got.status, 502, "{:?}", got.text());
    let posts: Vec<Received> =
        [a.received(), b.received()].concat().into_iter().filter(|r| r.head.path == "/post").collect();
    assert_eq!(posts.len(), 1, "a POST is sent once");
    assert_eq!(posts[0].body, Some(Ok(b"hello".to_vec())));

    let got = client.get("/ok").await;
    assert_eq!((got.status, got.text().as_str()), (200, "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_answers_is_504_within_the_response_timeout() {
    let backend = RawBackend::start(|_| Reply::writes(&[], Then::Hang)).await;
    let proxy = proxy(&backend, "[timeouts]\nresponse = \"300ms\"");
    let mut client = Conn::open(proxy.addr()).await;
    let started = Instant::now();
    let got = client.get("/wait").await;
    let elapsed = started.elapsed();
    assert_eq!(got.status, 504, "{:?}", got.text());
    assert!(elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(backend.received().len(), 1, "a timed-out request is not sent again");
}

/// A head larger than 64 KiB (the limit the proxy applies to request heads)
/// is refused, as nginx, Envoy and HAProxy refuse oversized response heads;
/// a large head under the limit (48 KiB of cookies, say) comes through.
///
/// Failed with hyper's client: it read heads up to its buffer
/// size (about 400 KiB), so the 100 KiB head was forwarded as a 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_head_over_64_kib_is_502_and_one_under_is_relayed() {
    let head =
        |kib: usize| format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok", "a".repeat(kib * 1024));
    let (large, huge) = (head(48), head(100));
    let backend = RawBackend::start(move |head| match head.path.as_str() {
        "/large" => Reply::keep(large.clone()),
        "/huge" => Reply::keep(huge.clone()),
        _ => Reply::keep(ok("ok")),
    })
    .await;
    let proxy = proxy(&backend, "");
    let mut client = Conn::open(proxy.addr()).await;
    let got = client.get("/large").await;
    assert_eq!((got.status, got.text().as_str()), (200, "ok"));
    assert_eq!(got.field("x-big").map(str::len), Some(48 * 1024));
    let got = client.get("/huge").await;
    let head_size = got.fields.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>();
    assert_eq!(got.status, 502, "a {head_size}-byte response head was forwarded");
    let got = client.get("/ok").await;
    assert_eq!((got.status, got.text().as_str()), (200, "ok"));
    assert_not_reused_after(&backend, "/huge");
}

/// A server may answer before it has read the body, and a client sending
/// one watches for that answer (RFC 9112 §9.5). The client gets it, not a
/// hang and not a 502, whether the backend then closes without reading the
/// body (lingering, RFC 9112 §9.6, so that the unread body does not reset
/// the answer away) or keeps the connection and reads the body after
/// answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_to_a_large_upload_reaches_the_client() {
    const TOO_LARGE: &[u8] = b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 9\r\n";
    let backend = RawBackend::start(|head| match head.path.as_str() {
        "/upload/close" => {
            Reply::writes(&[TOO_LARGE, b"Connection: close\r\n\r\ntoo large"], Then::Linger).early(BodyRead::Never)
        }
        "/upload/open" => Reply::writes(&[TOO_LARGE, b"\r\ntoo large"], Then::KeepAlive).early(BodyRead::AfterAnswer),
        _ => Reply::keep(ok("ok")),
    })
    .await;
    let proxy = proxy(&backend, "");
    for path in ["/upload/close", "/upload/open"] {
        let mut request =
            format!("POST {path} HTTP/1.1\r\nHost: example.com\r\nContent-Length: {}\r\n\r\n", 4 * MIB).into_bytes();
        request.extend(pattern(4 * MIB));
        let mut client = Conn::open(proxy.addr()).await;
        let writer = client.send_in_background(request);
        let got = client.read(false).await;
        writer.abort();
        let got = got.unwrap_or_else(|e| panic!("{path}: {e}")).unwrap_or_else(|| panic!("{path}: closed, no answer"));
        assert_eq!((got.status, got.text().as_str()), (413, "too large"), "{path}");
        assert_still_serving(&proxy, "/ok", "ok").await;
    }
}

// ------------------------------------------------------------ request bodies

/// Request bodies reach the backend exactly, framed validly (the backend
/// here parses strictly, and every request shares one connection, so a
/// byte too many or too few would break the next request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_reach_the_backend_exactly_with_valid_framing() {
    let backend = RawBackend::start(|head| Reply::keep(ok(&head.path))).await;
    let proxy = proxy(&backend, "");
    let mut client = Conn::open(proxy.addr()).await;
    for request in [
        &b"POST /length HTTP/1.1\r\nHost: example.com\r\nContent-Length: 11\r\n\r\nhello world"[..],
        b"POST /chunked HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
        b"POST /empty HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\n\r\n",
        b"POST /none HTTP/1.1\r\nHost: example.com\r\n\r\n",
    ] {
        let got = client.roundtrip(request).await;
        assert_eq!(got.status, 200, "{:?}", lossy(request));
    }
    let received = backend.received();
    let paths: Vec<&str> = received.iter().map(|r| r.head.path.as_str()).collect();
    assert_eq!(paths, ["/length", "/chunked", "/empty", "/none"]);
    assert_eq!(backend.accepts(), 1);
    for r in &received {
        let head = &r.head;
        let (lengths, codings) = (head.count("content-length"), head.count("transfer-encoding"));
        assert!(lengths + codings <= 1, "{}: framing fields {:?}", head.path, head.fields);
        let want: &[u8] = if head.path == "/length" || head.path == "/chunked" { b"hello world" } else { b"" };
        assert_eq!(r.body, Some(Ok(want.to_vec())), "{}", head.path);
    }
    assert_eq!(received[0].head.field("content-length"), Some("11"), "a Content-Length body keeps its length");
    for r in &received[2..] {
        assert!(r.head.field("transfer-encoding").is_none(), "{}: {:?}", r.head.path, r.head.fields);
        assert!(r.head.field("content-length").is_none_or(|v| v == "0"), "{}: {:?}", r.head.path, r.head.fields);
    }
}

/// `Upgrade` fields on a request with a body are no upgrade (the body's
/// bytes cannot also be a tunnel's): the body reaches the backend and the
/// fields do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_fields_on_a_request_with_a_body_forward_it_as_a_plain_request() {
    let backend = RawBackend::start(|head| Reply::keep(ok(&head.path))).await;
    let proxy = proxy(&backend, "");
    let mut client = Conn::open(proxy.addr()).await;
    let got = client
        .roundtrip(
            b"POST /form HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Content-Length: 11\r\n\r\nhello world",
        )
        .await;
    assert_eq!((got.status, got.text().as_str()), (200, "/form"));
    let received = backend.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body, Some(Ok(b"hello world".to_vec())));
    let head = &received[0].head;
    assert!(head.field("upgrade").is_none() && head.field("connection").is_none(), "{:?}", head.fields);
    assert_eq!(client.get("/next").await.text(), "/next", "the connection carries on");
}

/// A chunked request body that breaks its framing is the client's fault:
/// 400 for the client, and neither a 502 nor an upstream error in the
/// metrics, which feed the canary's error rate and would blame the backend.
///
/// Failed with hyper's client on the metrics assertions only: it reported
/// the broken body as an error of its own, the service counted `cutover_upstream_errors_total{kind="protocol"}`
/// and answered 502 (counted in `cutover_requests_total{code="502"}`), and
/// only then did the HTTP/1.1 server replace that 502 with the client's 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_request_body_is_400_and_counts_no_backend_error() {
    let backend = RawBackend::start(|head| Reply::keep(ok(&head.path))).await;
    let proxy = proxy(&backend, "");
    let mut client = Conn::open(proxy.addr()).await;
    let writer = client.send_in_background(
        b"POST /upload HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
            .to_vec(),
    );
    let got = client.read(false).await;
    writer.abort();
    let got = got.expect("a complete answer").expect("an answer, not a close");
    assert_eq!(got.status, 400, "{:?}", got.text());
    client.expect_closed().await;
    assert_still_serving(&proxy, "/ok", "/ok").await;

    let text = proxy.metrics();
    let web_502: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("cutover_requests_total{") && l.contains(r#"code="502""#) && l.contains(r#"route="web""#)
        })
        .collect();
    assert!(web_502.is_empty(), "a client's broken body counted as a 502 of the route: {web_502:?}");
    let protocol = metric(&text, r#"cutover_upstream_errors_total{kind="protocol",route="web",version="stable"}"#);
    assert_eq!(protocol, 0.0, "a client's broken body counted as a backend protocol error");
}

// ------------------------------------------------------------ upgrades

/// RFC 9110 §7.8: after `101`, both directions are a tunnel, starting with
/// the bytes the backend wrote right behind its head in the same write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_101_bytes_flow_both_ways_including_those_sent_with_the_head() {
    let backend = RawBackend::start(|_| {
        Reply::writes(
            &[b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\nhello from the backend\n"],
            Then::Echo,
        )
    })
    .await;
    let proxy = proxy(&backend, "");
    let mut client = Conn::open(proxy.addr()).await;
    client
        .send(
            b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await;
    let got = client.response().await;
    assert_eq!((got.status, got.field("upgrade")), (101, Some("websocket")), "{:?}", got.fields);
    let first = within("the backend's first bytes", client.reader.take(23)).await;
    assert_eq!(first.as_deref(), Ok(&b"hello from the backend\n"[..]));
    for message in [b"ping\n".to_vec(), pattern(300_000)] {
        let writer = client.send_in_background(message.clone());
        let echoed = within("the echo", client.reader.take(message.len())).await;
        writer.await.unwrap();
        assert!(echoed.as_ref() == Ok(&message), "echoed {:?} bytes", echoed.map(|e| e.len()));
    }
    let seen = &backend.received()[0].head;
    assert_eq!(
        (seen.field("upgrade"), seen.field("sec-websocket-key")),
        (Some("websocket"), Some("dGhlIHNhbXBsZSBub25jZQ=="))
    );
    assert!(seen.field("connection").is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")), "{:?}", seen.fields);
    // The client ends the tunnel: the backend sees it end, and so does the client.
    client.write.lock().await.shutdown().await.unwrap();
    client.expect_closed().await;
    assert!(eventually(LIMIT, || backend.closed.load(Ordering::SeqCst) == 1).await, "the backend side closed");
}

// ---------------------------------------------------------------- fields

/// The values of every `name` line, in order.
fn values<'a>(fields: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    fields.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
}

/// Fields the proxy has no reason to read (a browser's `User-Agent` and
/// `Accept-*`, a server's `Server`, `Date`, `Vary`) reach the other side as
/// they were sent: each line once, each name's lines in their order, the
/// backend's `Date` instead of the proxy's. A field the client's
/// `Connection` names does not reach the backend. An HTTP/2 client gets
/// the same response fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_the_proxy_does_not_read_pass_as_they_were_sent() {
    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nServer: app/1.0\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
        Vary: Accept\r\nContent-Length: 2\r\nvary:  Cookie \r\nContent-Type: text/plain\r\n\r\nok";
    let backend = RawBackend::start(|_| Reply::keep(ANSWER)).await;
    let proxy = proxy(&backend, "");
    let mut client = Conn::open(proxy.addr()).await;
    let got = client
        .roundtrip(
            b"GET /a HTTP/1.1\r\nUser-Agent: test/1 (x)\r\nHost: example.com\r\nAccept: text/html\r\n\
              Accept: */*;q=0.1\r\nAccept-Language:\ten \r\n\r\n",
        )
        .await;
    assert_eq!((got.status, got.text().as_str()), (200, "ok"));
    assert_eq!(values(&got.fields, "server"), ["app/1.0"]);
    assert_eq!(values(&got.fields, "date"), ["Sun, 06 Nov 1994 08:49:37 GMT"], "{:?}", got.fields);
    assert_eq!(values(&got.fields, "vary"), ["Accept", "Cookie"]);
    assert_eq!(values(&got.fields, "content-type"), ["text/plain"]);
    // Byte for byte: name case and spacing as the backend wrote them.
    for line in ["\r\nServer: app/1.0\r\n", "\r\nvary:  Cookie \r\n", "\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n"] {
        assert!(got.raw.contains(line), "{line:?} not as sent in {:?}", got.raw);
    }
    let raw = backend.received()[0].head.raw.clone();
    for line in ["\r\nUser-Agent: test/1 (x)\r\n", "\r\nAccept-Language:\ten \r\n"] {
        assert!(raw.contains(line), "{line:?} not as sent in {raw:?}");
    }
    let seen = backend.received()[0].head.fields.clone();
    assert_eq!(values(&seen, "user-agent"), ["test/1 (x)"]);
    assert_eq!(values(&seen, "accept"), ["text/html", "*/*;q=0.1"]);
    assert_eq!(values(&seen, "accept-language"), ["en"]);
    assert_eq!(values(&seen, "host"), ["example.com"]);

    let got = client
        .roundtrip(b"GET /b HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\nAccept: */*\r\nConnection: keep-alive, User-Agent\r\n\r\n")
        .await;
    assert_eq!(got.status, 200);
    let seen = backend.received()[1].head.fields.clone();
    assert_eq!(values(&seen, "user-agent"), Vec::<&str>::new(), "named by Connection: {seen:?}");
    assert_eq!(values(&seen, "accept"), ["*/*"]);

    let stream = within("connect", TcpStream::connect(proxy.addr())).await.expect("connect");
    let (mut h2, conn) = within(
        "h2 handshake",
        hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        ),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let request = http::Request::get("http://example.com/h2").body(common::empty()).unwrap();
    let resp = within("h2 response", h2.send_request(request)).await.expect("a response");
    assert_eq!(resp.status(), 200);
    let all = |name| resp.headers().get_all(name).iter().map(|v| v.to_str().unwrap()).collect::<Vec<_>>();
    assert_eq!(all("server"), ["app/1.0"]);
    assert_eq!(all("date"), ["Sun, 06 Nov 1994 08:49:37 GMT"]);
    assert_eq!(all("vary"), ["Accept", "Cookie"]);
    assert_eq!(all("content-type"), ["text/plain"]);
}
