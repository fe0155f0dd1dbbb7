//! The HTTP/1.1 client that talks to backends.
//!
//! A backend connection belongs to one request at a time: the request's
//! task writes the head and streams the body straight to the socket, reads
//! the response head, and hands the connection to the response body, which
//! gives it back to the worker's pool once the body is complete. There is
//! no task per connection and no channel between a request and its
//! connection (hyper's client has both, and they were its largest cost).
//!
//! Response framing follows RFC 9112 §6.3: no body for HEAD, 1xx, 204 and
//! 304; `Transfer-Encoding: chunked`; one `Content-Length`; else until the
//! backend closes. A framing that cannot be followed exactly (conflicting
//! lengths, a transfer coding other than chunked) is a protocol error (502),
//! and a connection whose framing was in any doubt is never used again.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::AsyncWrite;

use super::decode::{Decoder, Malformed, Step};
use super::parse::{SPANS, Span, content_length, line_end, trim};
use super::write::{Out, number};
use crate::metrics::UpstreamErrorKind;
use crate::proxy::body::RequestBody;
use crate::proxy::headers::{self, Forwarded};
use crate::proxy::stream::Rewind;
use crate::proxy::upstream::{UpstreamError, UpstreamIo};
use crate::proxy::verbatim::{self, Verbatim};

/// Read buffers: allocated this size, topped up when less than `MIN_READ` is free.
const READ_SIZE: usize = 8 * 1024;
const MIN_READ: usize = 1024;
/// The most a response head may take.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most fields a response head may have.
const MAX_FIELDS: usize = 128;
/// Request body data gathered before it is written.
const GATHER: usize = 16 * 1024;
/// How long a pooled connection that ended without an answer is watched
/// for the reset that shows the backend discarded the request unread.
const RESET_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// An open HTTP/1.1 connection to a backend.
pub struct Connection {
    io: UpstreamIo,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// The connection carried an earlier request (it came from the pool).
    pub reused: bool,
    /// The backend reset the connection (a read failed with a reset, or the
    /// socket holds one after the end of the stream).
    peer_reset: bool,
    /// The response timeout's timer, kept for the connection's life (see
    /// [`Connection::head_by`]).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Why a request got no response head.
pub enum Failure {
    /// The backend or the connection to it failed. `request`: the request
    /// back, when none of it was written (`unsent`) or it had no body, so
    /// that it can be sent again if its method allows.
    Upstream { error: UpstreamError, request: Option<Box<Request<RequestBody>>>, unsent: bool },
    /// The client's request body failed (malformed, cut short, or longer
    /// than its Content-Length): not the backend's fault.
    Client(io::Error),
}

impl Failure {
    fn upstream(error: UpstreamError) -> Failure {
        Failure::Upstream { error, request: None, unsent: false }
    }
}

fn protocol(detail: impl Into<String>) -> UpstreamError {
    UpstreamError { kind: UpstreamErrorKind::Protocol, connect: false, detail: detail.into() }
}

fn timeout(limit: std::time::Duration) -> UpstreamError {
    let detail = format!("no response head within {limit:?} of the request's end");
    UpstreamError { kind: UpstreamErrorKind::Timeout, connect: false, detail }
}

fn reset(detail: impl Into<String>) -> UpstreamError {
    UpstreamError { kind: UpstreamErrorKind::Reset, connect: false, detail: detail.into() }
}

/// How a request body goes to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sending {
    None,
    Length(u64),
    Chunked,
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Decode(Decoder),
    /// Until the backend closes the connection.
    UntilClose,
}

/// A parsed response head.
pub(super) struct Head {
    pub(super) response: Response<()>,
    framing: Framing,
    /// The connection may carry another request after this response.
    keep_alive: bool,
    /// Fields forwarded as they came, not in the response's map.
    pub(super) verbatim: Verbatim,
}

/// What a response head is read for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Asked {
    /// The request was HEAD: the response has no body.
    pub(super) head: bool,
    /// Fields may be kept as they came ([`Verbatim`]). Not for a client
    /// over HTTP/2: its response goes out through a map, and building the
    /// map at once costs less than keeping lines and reading them back.
    pub(super) lines: bool,
}

impl Connection {
    pub fn new(io: UpstreamIo) -> Connection {
        Connection { io, buf: BytesMut::new(), reused: false, peer_reset: false, timer: None }
    }

    /// Reads more bytes into the buffer; `Ok(0)` is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < MIN_READ {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Whether an idle connection can take a request: still open, and the
    /// backend sent nothing unasked. Does not wait, and makes no system call
    /// unless the socket was reported readable: the reactor may not have
    /// seen a close that already arrived (see [`Connection::reusable_now`]).
    pub fn idle_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        // A read that would block: open and quiet. Anything else is a close,
        // a reset or unasked bytes. (TLS records without data, such as
        // session tickets, are taken in by rustls and also end in a block.)
        self.poll_fill(&mut Context::from_waker(Waker::noop())).is_pending()
    }

    /// [`Connection::idle_usable`], then the kernel asked directly (a
    /// non-blocking peek on the socket): a FIN, a reset or bytes that
    /// arrived since the reactor last looked make the connection unusable.
    /// Checked right before a request is written, so that a request is not
    /// sent on a connection the backend has already closed.
    pub fn reusable_now(&mut self) -> bool {
        if !self.idle_usable() {
            return false;
        }
        let tcp = self.tcp();
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        // The socket is non-blocking: an open, quiet connection answers WouldBlock.
        // (Bytes under TLS that rustls would take in silently, such as a late
        // session ticket, also count as unusable: the cost is one new connection.)
        matches!(socket2::SockRef::from(tcp).peek(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    fn tcp(&self) -> &tokio::net::TcpStream {
        match &self.io {
            crate::proxy::stream::MaybeTls::Plain(tcp) => tcp,
            crate::proxy::stream::MaybeTls::Tls(tls) => tls.get_ref().0,
        }
    }

    /// After the end of the stream: whether a reset followed the backend's
    /// FIN (the socket's pending error), as happens when bytes reach a
    /// backend socket that is already closed.
    fn reset_after_close(&mut self) -> bool {
        let pending = socket2::SockRef::from(self.tcp()).take_error();
        self.peer_reset |= matches!(pending, Ok(Some(_)));
        self.peer_reset
    }

    /// The backend provably never read the request: a pooled connection
    /// that it reset before any byte of an answer. An HTTP server resets a
    /// connection it closes with unread bytes in its socket (or when bytes
    /// arrive after it closed): our request, which it never parsed. A reset
    /// answers our bytes one round trip after they left, so after a plain
    /// end of stream it is waited for, briefly ([`RESET_WAIT`]).
    async fn request_discarded(&mut self) -> bool {
        if !self.reused || !self.buf.is_empty() {
            return false;
        }
        if self.reset_after_close() {
            return true;
        }
        let error = self.tcp().ready(tokio::io::Interest::ERROR);
        let _ = tokio::time::timeout(RESET_WAIT, error).await;
        self.reset_after_close()
    }

    /// Sends `request` and waits for the final response head; interim 1xx
    /// responses other than 101 are dropped. The response body holds the
    /// connection from then on.
    ///
    /// `response` bounds the wait for the head from the end of the upload
    /// (a slow upload is the client's time, bounded by its own timeout), and
    /// a backend that takes none of the request for that long.
    pub async fn send(
        mut self: Box<Self>,
        request: Request<RequestBody>,
        verbatim: &Verbatim,
        forwarded: &Forwarded<'_>,
        response: std::time::Duration,
        lines: bool,
    ) -> Result<Response<UpstreamBody>, Failure> {
        let asked = Asked { head: request.method() == Method::HEAD, lines };
        let mut out = Out::take();
        let sending = encode_head(&mut out.0, &request, verbatim, forwarded);
        // A head that could not be written at all leaves the request intact.
        let unsent = |error, request| Failure::Upstream { error, request: Some(Box::new(request)), unsent: true };
        let written = match poll_fn(|cx| Pin::new(&mut self.io).poll_write(cx, &out.0)).await {
            Ok(0) => return Err(unsent(reset("backend connection closed"), request)),
            Ok(n) => n,
            Err(e) => return Err(unsent(reset(format!("writing the request: {e}")), request)),
        };
        out.0.drain(..written);
        let (parts, mut body) = request.into_parts();
        let exchange = async {
            let complete = self.send_body(&mut body, sending, &mut out.0, response).await?;
            let deadline = tokio::time::Instant::now() + response;
            let head = match self.head_by(asked, deadline).await {
                Some(head) => head.map_err(Failure::upstream)?,
                None => return Err(Failure::upstream(timeout(response))),
            };
            Ok((complete, head))
        };
        let (complete, head) = match exchange.await {
            Ok(done) => done,
            Err(Failure::Upstream { error, .. }) => {
                let unsent = error.kind == UpstreamErrorKind::Reset && self.request_discarded().await;
                // A request without a body, or with one read whole, is still whole.
                let request = body.rewind().then(|| Box::new(Request::from_parts(parts, body)));
                return Err(Failure::Upstream { error, request, unsent });
            }
            Err(failure) => return Err(failure),
        };
        drop(out);
        let Head { response, framing, keep_alive, verbatim } = head;
        let state = match framing {
            Framing::Decode(Decoder::Done) => State::Done,
            Framing::Decode(decoder) => State::Decode(decoder),
            Framing::UntilClose => State::UntilClose,
        };
        // A request body the backend did not wait for (an early answer)
        // leaves the connection in an unknown state.
        let reusable = keep_alive
            && complete
            && framing != Framing::UntilClose
            && response.status() != StatusCode::SWITCHING_PROTOCOLS;
        drop(body);
        super::maps::give(parts.headers);
        Ok(response.map(|()| UpstreamBody { conn: Some(self), state, reusable, trailers: None, verbatim }))
    }

    /// Writes what is left of the head in `out`, then the body. `Ok(false)`:
    /// the backend began its response before the body was complete, and
    /// the rest of the body is not sent.
    async fn send_body(
        &mut self,
        body: &mut RequestBody,
        sending: Sending,
        out: &mut Vec<u8>,
        stall: std::time::Duration,
    ) -> Result<bool, Failure> {
        let mut at = 0;
        let mut sent = 0u64;
        let mut ended = sending == Sending::None;
        // Armed while the backend takes none of the request; made on first need.
        let mut stalled: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let mut armed = false;
        poll_fn(|cx| {
            loop {
                while at < out.len() {
                    match Pin::new(&mut self.io).poll_write(cx, &out[at..]) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(Failure::upstream(reset("backend stopped reading"))));
                        }
                        Poll::Ready(Ok(n)) => {
                            at += n;
                            armed = false;
                        }
                        Poll::Ready(Err(e)) => {
                            // The write took the socket's pending reset (a FIN
                            // that raced the head, then the reset our head drew).
                            self.peer_reset |=
                                matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset);
                            return Poll::Ready(Err(Failure::upstream(reset(format!("writing the request: {e}")))));
                        }
                        Poll::Pending => break,
                    }
                }
                let blocked = at < out.len();
                if !blocked {
                    out.clear();
                    at = 0;
                    if ended {
                        return Pin::new(&mut self.io)
                            .poll_flush(cx)
                            .map_ok(|()| true)
                            .map_err(|e| Failure::upstream(reset(format!("writing the request: {e}"))));
                    }
                }
                // An answer before the body is complete (a 413, a redirect):
                // stop sending and read it.
                match self.poll_fill(cx) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(Failure::upstream(reset(
                            "backend closed the connection before the request body was sent",
                        ))));
                    }
                    Poll::Ready(Ok(_)) => return Poll::Ready(Ok(false)),
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Err(Failure::upstream(reset(format!("reading from the backend: {e}")))));
                    }
                    Poll::Pending => {}
                }
                if blocked {
                    let deadline = tokio::time::Instant::now() + stall;
                    let timer = stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if !armed {
                        timer.as_mut().reset(deadline);
                        armed = true;
                    }
                    if std::future::Future::poll(timer.as_mut(), cx).is_ready() {
                        let detail = format!("backend took none of the request for {stall:?}");
                        let error = UpstreamError { kind: UpstreamErrorKind::Timeout, connect: false, detail };
                        return Poll::Ready(Err(Failure::upstream(error)));
                    }
                    return Poll::Pending;
                }
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Pending if out.is_empty() => return Poll::Pending,
                    // Gathered data goes out before waiting for more.
                    Poll::Pending => continue,
                    Poll::Ready(None) => {
                        match sending {
                            Sending::Length(n) if sent != n => {
                                return Poll::Ready(Err(Failure::Client(io::Error::new(
                                    io::ErrorKind::UnexpectedEof,
                                    "request body shorter than its Content-Length",
                                ))));
                            }
                            Sending::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
                            _ => {}
                        }
                        ended = true;
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Failure::Client(io::Error::other(e)))),
                    Poll::Ready(Some(Ok(frame))) => {
                        // Request trailers are dropped (RFC 9112 §7.1.2 allows it).
                        let Ok(data) = frame.into_data() else { continue };
                        if data.is_empty() {
                            continue;
                        }
                        sent += data.len() as u64;
                        match sending {
                            Sending::Length(n) if sent > n => {
                                return Poll::Ready(Err(Failure::Client(io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    "request body longer than its Content-Length",
                                ))));
                            }
                            Sending::None => {
                                return Poll::Ready(Err(Failure::Client(io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    "request body where none was announced",
                                ))));
                            }
                            Sending::Chunked => {
                                number(out, data.len() as u64, 16);
                                out.extend_from_slice(b"\r\n");
                                out.extend_from_slice(&data);
                                out.extend_from_slice(b"\r\n");
                            }
                            Sending::Length(_) => out.extend_from_slice(&data),
                        }
                        if out.len() < GATHER {
                            continue;
                        }
                    }
                }
            }
        })
        .await
    }

    /// [`Connection::read_head`] until `deadline`; `None`: not in time.
    ///
    /// The connection keeps one timer for all its requests: armed at the
    /// first wait, and moved on only when it fires before the deadline of
    /// the request then waiting (once per response timeout at most, since
    /// later requests have later deadlines). A request therefore costs no
    /// timer registration of its own; a timer firing between requests wakes
    /// a task that finds nothing to do.
    async fn head_by(&mut self, asked: Asked, deadline: tokio::time::Instant) -> Option<Result<Head, UpstreamError>> {
        let mut timer = self.timer.take();
        let head = {
            let mut read = std::pin::pin!(self.read_head(asked));
            poll_fn(|cx| {
                if let Poll::Ready(head) = read.as_mut().poll(cx) {
                    return Poll::Ready(Some(head));
                }
                let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() > deadline {
                    // An earlier deadline than any before (a reload shortened the timeout).
                    timer.as_mut().reset(deadline);
                }
                while timer.as_mut().poll(cx).is_ready() {
                    if timer.deadline() >= deadline {
                        return Poll::Ready(None);
                    }
                    timer.as_mut().reset(deadline);
                }
                Poll::Pending
            })
            .await
        };
        self.timer = timer;
        head
    }

    /// Reads until a final response head is complete.
    async fn read_head(&mut self, asked: Asked) -> Result<Head, UpstreamError> {
        // Bytes already parsed without finding a complete head: a head ends
        // with a line feed, so it is parsed again only when a line ends (or
        // when it has grown past the limit, which the parse then reports).
        let mut scanned = 0;
        loop {
            if self.buf.len() > scanned && (self.buf.len() >= MAX_HEAD || self.buf[scanned..].contains(&b'\n')) {
                match parse(&mut self.buf, asked)? {
                    Some(head)
                        if head.response.status().is_informational()
                            && head.response.status() != StatusCode::SWITCHING_PROTOCOLS =>
                    {
                        // 100 Continue, 103 Early Hints: the final answer follows.
                        scanned = 0;
                        continue;
                    }
                    Some(head) => return Ok(head),
                    None => {}
                }
            }
            scanned = self.buf.len();
            match poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(0) if self.buf.is_empty() => return Err(reset("backend closed the connection without a response")),
                Ok(0) => return Err(protocol("backend closed the connection within the response head")),
                Ok(_) => {}
                Err(e) => {
                    self.peer_reset |= e.kind() == io::ErrorKind::ConnectionReset;
                    return Err(reset(format!("reading the response: {e}")));
                }
            }
        }
    }
}

/// Writes the request line and fields (those in its map, then those kept
/// as they came), with this hop's forwarding fields, and says how the body
/// follows.
pub(super) fn encode_head<B: http_body::Body>(
    out: &mut Vec<u8>,
    request: &Request<B>,
    verbatim: &Verbatim,
    forwarded: &Forwarded<'_>,
) -> Sending {
    out.extend_from_slice(request.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(request.uri().path_and_query().map_or("/", |pq| pq.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let length = headers::write_forwarded(out, request.headers(), verbatim, forwarded);
    let body = request.body();
    let sending = match (length, body.is_end_stream()) {
        (Some(n), _) => Sending::Length(n),
        (None, true) => {
            // RFC 9110 §8.6: methods that carry content say when there is none.
            if matches!(*request.method(), Method::POST | Method::PUT | Method::PATCH) {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            Sending::None
        }
        (None, false) => match body.size_hint().exact() {
            Some(n) => {
                out.extend_from_slice(b"content-length: ");
                number(out, n, 10);
                out.extend_from_slice(b"\r\n");
                Sending::Length(n)
            }
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Sending::Chunked
            }
        },
    };
    out.extend_from_slice(b"\r\n");
    match sending {
        Sending::Length(0) => Sending::None,
        s => s,
    }
}

/// Parses a response head at the start of `buf`; `Ok(None)`: not complete.
/// A complete head is split off `buf`.
pub(super) fn parse(buf: &mut BytesMut, asked: Asked) -> Result<Option<Head>, UpstreamError> {
    SPANS.with_borrow_mut(|spans| parse_into(buf, asked, spans))
}

fn parse_into(buf: &mut BytesMut, asked: Asked, spans: &mut Vec<Span>) -> Result<Option<Head>, UpstreamError> {
    let mut fields = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(protocol("response head too large")),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(protocol(format!("invalid response head: {e}"))),
    };
    if len > MAX_HEAD {
        return Err(protocol("response head too large"));
    }
    let (Some(code), Some(minor)) = (resp.code, resp.version) else {
        return Err(protocol("invalid status line"));
    };
    // RFC 9110 §15: values outside 100..=599 are invalid (600..=999 are
    // some libraries' internal errors); passed on, a client would have to
    // guess what they mean.
    if !(100..=599).contains(&code) {
        return Err(protocol("invalid status code"));
    }
    let status = StatusCode::from_u16(code).map_err(|_| protocol("invalid status code"))?;
    let base = buf.as_ptr() as usize;
    spans.clear();
    spans.extend(resp.headers.iter().map(|f| {
        let name = f.name.as_ptr() as usize - base;
        let value = f.value.as_ptr() as usize - base;
        (name, name + f.name.len(), value, value + f.value.len())
    }));
    let head = buf.split_to(len).freeze();
    build(&head, status, minor == 0, asked, spans).map(Some)
}

fn build(head: &Bytes, status: StatusCode, http10: bool, asked: Asked, spans: &[Span]) -> Result<Head, UpstreamError> {
    // Room for the head's fields, no more: for an HTTP/2 client the map
    // served the request before (hyper's, sized for its few fields), and
    // asking more than it holds would reallocate it for every response.
    let mut headers = super::maps::take(spans.len());
    let mut length: Option<u64> = None;
    let mut codings = 0;
    let mut chunked_last = false;
    let (mut close, mut keep_alive) = (false, false);
    // As for requests (h1::parse): lines kept as they came unless one could
    // not be, or `Connection` names fields.
    let mut verbatim = Verbatim::default();
    // `spilled`: no more lines are kept (none at all when not asked to).
    let (mut spilled, mut named) = (!asked.lines, false);
    for &(ns, ne, vs, ve) in spans {
        if !spilled && verbatim::response_name(&head[ns..ne]) {
            if verbatim.keep(head, ns, line_end(head, ve)) {
                if head[ns..ne].eq_ignore_ascii_case(b"date") {
                    verbatim.kept_date();
                }
                continue;
            }
            spilled = true;
            verbatim.into_map(&mut headers);
        }
        let name = super::maps::field_name(&head[ns..ne]).map_err(|_| protocol("invalid field name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve)).map_err(|_| protocol("invalid field value"))?;
        let bytes = &head[vs..ve];
        if name == header::CONTENT_LENGTH {
            for item in bytes.split(|&b| b == b',') {
                let n = content_length(trim(item)).ok_or_else(|| protocol("invalid Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(protocol("conflicting Content-Length values"));
                }
                length = Some(n);
            }
        } else if name == header::TRANSFER_ENCODING {
            for coding in bytes.split(|&b| b == b',').map(trim).filter(|c| !c.is_empty()) {
                codings += 1;
                chunked_last = coding.eq_ignore_ascii_case(b"chunked");
            }
        } else if name == header::CONNECTION {
            let mut names_fields = false;
            for token in bytes.split(|&b| b == b',').map(trim) {
                let (c, k) = (token.eq_ignore_ascii_case(b"close"), token.eq_ignore_ascii_case(b"keep-alive"));
                close |= c;
                keep_alive |= k;
                names_fields |= !c && !k && !token.is_empty();
            }
            // Hop-by-hop, and read here: kept only when it names other
            // fields (`upgrade` on a 101), which the service then removes
            // or keeps as for any message.
            if !names_fields {
                continue;
            }
            named = true;
        } else if name.as_str() == "keep-alive" {
            // Hop-by-hop (RFC 9110 §7.6.1): never forwarded.
            continue;
        }
        headers.append(name, value);
    }
    if named {
        verbatim.into_map(&mut headers);
    }
    let mut keep_alive = !close && (!http10 || keep_alive);
    let no_body = asked.head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::Decode(Decoder::Done)
    } else if codings > 0 {
        // Only chunked, once, is forwarded as it is meant: any other coding
        // would reach the client without the field that names it.
        if codings != 1 || !chunked_last {
            return Err(protocol("unsupported transfer coding"));
        }
        // RFC 9112 §6.3: chunked wins over a Content-Length sent with it,
        // which a proxy removes; and the connection is not used again.
        if length.is_some() {
            headers.remove(header::CONTENT_LENGTH);
            keep_alive = false;
        }
        if http10 {
            keep_alive = false;
        }
        Framing::Decode(Decoder::Size)
    } else {
        match length {
            Some(0) => Framing::Decode(Decoder::Done),
            Some(n) => Framing::Decode(Decoder::Length(n)),
            None => Framing::UntilClose,
        }
    };
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = if http10 { Version::HTTP_10 } else { Version::HTTP_11 };
    *response.headers_mut() = headers;
    Ok(Head { response, framing, keep_alive, verbatim })
}

/// One trailer field line (`name: value`); a line that is not a valid field
/// is dropped.
fn trailer_field(line: &Bytes) -> Option<(HeaderName, HeaderValue)> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = HeaderName::from_bytes(&line[..colon]).ok()?;
    let value = trim(&line[colon + 1..]);
    let start = value.as_ptr() as usize - line.as_ptr() as usize;
    let value = HeaderValue::from_maybe_shared(line.slice(start..start + value.len())).ok()?;
    Some((name, value))
}

/// Where a response body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Decode(Decoder),
    UntilClose,
    Done,
}

/// A response body read from its backend connection.
pub struct UpstreamBody {
    /// `None` once the body failed or the connection left for a tunnel.
    conn: Option<Box<Connection>>,
    state: State,
    /// The connection may carry another request once this body is complete.
    reusable: bool,
    /// Trailer fields of a chunked body, given out after its last data
    /// (boxed: the body moves with every response, trailers are rare).
    trailers: Option<Box<HeaderMap>>,
    /// The head's fields kept as they came, until the service takes them.
    verbatim: Verbatim,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody").field("state", &self.state).field("reusable", &self.reusable).finish()
    }
}

impl UpstreamBody {
    pub fn is_end_stream(&self) -> bool {
        self.state == State::Done
    }

    /// The head's fields kept as they came (they go out with the head).
    pub fn take_verbatim(&mut self) -> Verbatim {
        std::mem::take(&mut self.verbatim)
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(0),
            State::Decode(Decoder::Length(n)) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }

    /// What a failure of this body was on the backend's side: a framing
    /// it broke (`InvalidData`, from the decoder) or a connection it lost.
    pub fn failure_kind(error: &io::Error) -> UpstreamErrorKind {
        match error.kind() {
            io::ErrorKind::InvalidData => UpstreamErrorKind::Protocol,
            _ => UpstreamErrorKind::Reset,
        }
    }

    /// The next piece of the body (data, then any trailer fields); `None` at its end.
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let polled = self.poll_inner(cx);
        if let Poll::Ready(Some(Err(_))) = polled {
            self.conn = None;
        }
        polled
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(match self.state {
                State::Done => None,
                _ => Some(Err(io::Error::new(io::ErrorKind::NotConnected, "backend connection gone"))),
            });
        };
        loop {
            match &mut self.state {
                State::Done => return Poll::Ready(None),
                State::UntilClose => {
                    if !conn.buf.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(conn.buf.split().freeze()))));
                    }
                    if ready!(conn.poll_fill(cx))? == 0 {
                        self.state = State::Done;
                    }
                }
                State::Decode(decoder) => {
                    let step = decoder.decode(&mut conn.buf);
                    let done = decoder.is_done();
                    match step {
                        Ok(Step::Data(data)) => {
                            if done {
                                self.state = State::Done;
                            }
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Ok(Step::Trailer(line)) => {
                            if let Some((name, value)) = trailer_field(&line) {
                                self.trailers.get_or_insert_with(Box::default).append(name, value);
                            }
                        }
                        Ok(Step::End) => {
                            self.state = State::Done;
                            if let Some(trailers) = self.trailers.take() {
                                return Poll::Ready(Some(Ok(Frame::trailers(*trailers))));
                            }
                        }
                        Ok(Step::More) => {
                            if ready!(conn.poll_fill(cx))? == 0 {
                                return Poll::Ready(Some(Err(io::Error::new(
                                    io::ErrorKind::UnexpectedEof,
                                    "backend closed the connection within the response body",
                                ))));
                            }
                        }
                        Err(Malformed(why)) => {
                            return Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::InvalidData, why))));
                        }
                    }
                }
            }
        }
    }

    /// Once the body is complete: its connection, if it can carry another
    /// request (kept alive, nothing more sent by the backend).
    pub fn take_connection(&mut self) -> Option<Box<Connection>> {
        if self.state != State::Done || !self.reusable {
            return None;
        }
        self.conn.take().filter(|c| c.buf.is_empty())
    }

    /// After `101 Switching Protocols`: the connection as a tunnel end, with
    /// whatever the backend already sent after its head.
    pub fn take_tunnel(&mut self) -> Option<Rewind<UpstreamIo>> {
        let conn = self.conn.take()?;
        let Connection { io, buf, .. } = *conn;
        Some(Rewind::new(buf.freeze(), io))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: Asked = Asked { head: false, lines: true };

    fn head(text: &str) -> Result<Option<Head>, UpstreamError> {
        parse(&mut BytesMut::from(text), GET)
    }

    fn framing(text: &str) -> (Framing, bool) {
        let h = head(text).unwrap().unwrap();
        (h.framing, h.keep_alive)
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            (Framing::Decode(Decoder::Length(5)), true)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            (Framing::Decode(Decoder::Size), true)
        );
        let text = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            framing(text),
            (Framing::Decode(Decoder::Size), false),
            "chunked wins, the connection is not reused"
        );
        assert!(head(text).unwrap().unwrap().response.headers().get("content-length").is_none(), "and the length goes");
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n"), (Framing::UntilClose, true));
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
            (Framing::Decode(Decoder::Done), true)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n"),
            (Framing::Decode(Decoder::Length(5)), true)
        );
        assert!(!framing("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").1);
        assert!(!framing("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n").1);
        assert!(framing("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n").1);
        let h = parse(
            &mut BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            Asked { head: true, lines: true },
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Decode(Decoder::Done), "no body after HEAD");
    }

    #[test]
    fn framings_that_cannot_be_followed_are_protocol_errors() {
        for text in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "NONSENSE\r\n\r\n",
            "HTTP/1.1 999999 Big\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        ] {
            let error = head(text).err().unwrap_or_else(|| panic!("accepted {text:?}"));
            assert_eq!(error.kind, UpstreamErrorKind::Protocol, "{text:?}");
        }
    }

    #[test]
    fn a_head_is_parsed_only_once_complete_and_split_off() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Len");
        assert!(parse(&mut buf, GET).unwrap().is_none());
        buf.extend_from_slice(b"gth: 2\r\n\r\nhi");
        let h = parse(&mut buf, GET).unwrap().unwrap();
        assert_eq!(h.response.headers()["content-length"], "2");
        assert_eq!(&buf[..], b"hi");
        let mut huge = BytesMut::from(&b"HTTP/1.1 200 OK\r\nX: "[..]);
        huge.extend_from_slice(&vec![b'a'; MAX_HEAD]);
        assert_eq!(parse(&mut huge, GET).err().map(|e| e.kind), Some(UpstreamErrorKind::Protocol));
    }

    #[tokio::test]
    async fn a_head_line_that_never_ends_fails_at_the_limit() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let io = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut backend, _) = listener.accept().await.unwrap();
        let mut conn = Connection::new(crate::proxy::stream::MaybeTls::Plain(io));
        let writer = tokio::spawn(async move {
            backend.write_all(b"HTTP/1.1 200 OK\r\nX-Endless: ").await.unwrap();
            // No line feed ever, and the connection stays open.
            let _ = backend.write_all(&vec![b'a'; 4 * MAX_HEAD]).await;
            backend
        });
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), conn.read_head(GET)).await;
        let error = read.expect("the read ends by itself").err().expect("an error");
        assert_eq!((error.kind, error.detail.as_str()), (UpstreamErrorKind::Protocol, "response head too large"));
        assert!(conn.buf.len() < MAX_HEAD + 2 * READ_SIZE, "buffered {}", conn.buf.len());
        drop(conn);
        let _ = writer.await;
    }

    fn encoded(request: Request<RequestBody>) -> (String, Sending) {
        let ip = HeaderValue::from_static("192.0.2.9");
        let via = HeaderValue::from_static("1.1 cutover");
        let route = HeaderValue::from_static("web");
        let f = Forwarded { client_ip: &ip, tls: false, via: &via, version: "stable", route: &route };
        let mut out = Vec::new();
        let sending = encode_head(&mut out, &request, &Verbatim::default(), &f);
        // The forwarding fields are tested with headers::write_forwarded.
        let text: String = String::from_utf8(out)
            .unwrap()
            .split_inclusive("\r\n")
            .filter(|line| {
                !line.starts_with("x-forwarded-") && !line.starts_with("via:") && !line.starts_with("x-cutover-")
            })
            .collect();
        (text, sending)
    }

    #[test]
    fn request_heads_say_how_their_body_follows() {
        let get = Request::get("/a?b=1").header("host", "x").body(RequestBody::Empty).unwrap();
        assert_eq!(encoded(get), ("GET /a?b=1 HTTP/1.1\r\nhost: x\r\n\r\n".to_string(), Sending::None));
        let post = Request::post("/").body(RequestBody::Empty).unwrap();
        assert_eq!(encoded(post), ("POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n".to_string(), Sending::None));
        let put = Request::put("/").header("content-length", "7").body(RequestBody::Empty).unwrap();
        assert_eq!(encoded(put).1, Sending::Length(7));
    }
}
