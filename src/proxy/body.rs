//! The body types of the proxy. A request body is read into memory up to
//! `server.request_buffer` before a backend is contacted ([`read_ahead`]),
//! then streams; response bodies stream frame by frame.

use std::cell::Cell;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::h1;
use super::h1::client::UpstreamBody;
use super::service::Finish;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body as a client sends it: read by hyper (HTTP/2) or by the
/// HTTP/1.1 server.
pub enum ClientBody {
    Hyper(Incoming),
    H1(h1::RequestBody),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ClientBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(b) => b.is_end_stream(),
            ClientBody::H1(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(b) => b.size_hint(),
            ClientBody::H1(b) => b.size_hint(),
        }
    }
}

/// A request body on its way to a backend.
pub enum RequestBody {
    /// The client sent no body; such a request can be sent again.
    Empty,
    /// The whole body, read before the backend was contacted; such a
    /// request can be sent again (`sent`: given out to the current attempt).
    Whole { data: Bytes, sent: bool },
    /// The client's body, streamed after the part already read (`prefix`),
    /// counting bytes for the access log; at most `timeouts.client_body`
    /// between two reads.
    Client { prefix: Option<Bytes>, inner: ClientBody, bytes: Rc<Cell<u64>>, idle: ReadIdle },
}

/// The client body timeout of a streamed body: armed while the body waits
/// for the client, never while the backend is the one not reading.
pub struct ReadIdle {
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl ReadIdle {
    pub fn new(limit: Duration) -> ReadIdle {
        ReadIdle { limit, timer: None, armed: false }
    }

    /// Ready once the client sent nothing for `limit` since the body first waited.
    /// The clock is read when the timer is armed, not on every poll.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.armed {
            let deadline = tokio::time::Instant::now() + self.limit;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        match &mut self.timer {
            Some(timer) => timer.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

/// A client that sent nothing within `timeouts.client_body`.
pub fn body_timeout() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "no request body bytes within timeouts.client_body")
}

impl RequestBody {
    /// Held whole (or absent): a failed attempt can give it back.
    pub fn is_whole(&self) -> bool {
        !matches!(self, RequestBody::Client { .. })
    }

    /// Makes a request whose body is whole (or absent) ready to be sent
    /// again; false for a streamed body, which is gone once read.
    pub fn rewind(&mut self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Whole { sent, .. } => {
                *sent = false;
                true
            }
            RequestBody::Client { .. } => false,
        }
    }
}

/// Reads the client's body into memory until it ends or passes `limit`
/// bytes, at most `idle` between two reads: while a slow client uploads, no
/// backend connection is held. A body that ends in time is `Whole`; a
/// larger one streams on after what was read.
pub async fn read_ahead(
    mut inner: ClientBody,
    limit: usize,
    idle: Duration,
    bytes: Rc<Cell<u64>>,
) -> Result<RequestBody, io::Error> {
    // A body of one chunk (the common case) is handed on as it came; only
    // a second chunk makes a copy into `buf`.
    let mut data = Bytes::new();
    let mut buf = BytesMut::new();
    let take = |data: Bytes, buf: BytesMut| if buf.is_empty() { data } else { buf.freeze() };
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut inner).poll_frame(cx));
        match tokio::time::timeout(idle, frame).await {
            Err(_) => return Err(body_timeout()),
            Ok(None) => return Ok(RequestBody::Whole { data: take(data, buf), sent: false }),
            Ok(Some(Err(e))) => {
                let kind = match e.downcast_ref::<io::Error>().map(io::Error::kind) {
                    Some(io::ErrorKind::InvalidData) => io::ErrorKind::InvalidData,
                    _ => io::ErrorKind::UnexpectedEof,
                };
                return Err(io::Error::new(kind, e));
            }
            Ok(Some(Ok(frame))) => {
                // Request trailers are dropped (RFC 9112 §7.1.2 allows it).
                let Ok(chunk) = frame.into_data() else { continue };
                bytes.set(bytes.get() + chunk.len() as u64);
                if data.is_empty() && buf.is_empty() {
                    data = chunk;
                } else {
                    if !data.is_empty() {
                        buf.extend_from_slice(&std::mem::take(&mut data));
                    }
                    buf.extend_from_slice(&chunk);
                }
                if inner.is_end_stream() {
                    return Ok(RequestBody::Whole { data: take(data, buf), sent: false });
                }
                if data.len() + buf.len() > limit {
                    let prefix = Some(take(data, buf));
                    return Ok(RequestBody::Client { prefix, inner, bytes, idle: ReadIdle::new(idle) });
                }
            }
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Whole { data, sent } => {
                if *sent || data.is_empty() {
                    return Poll::Ready(None);
                }
                *sent = true;
                Poll::Ready(Some(Ok(Frame::data(data.clone()))))
            }
            RequestBody::Client { prefix, inner, bytes, idle } => {
                if let Some(data) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                let polled = Pin::new(inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        idle.armed = false;
                        if let Some(data) = frame.data_ref() {
                            bytes.set(bytes.get() + data.len() as u64);
                        }
                    }
                    Poll::Pending if idle.poll_expired(cx).is_ready() => {
                        return Poll::Ready(Some(Err(body_timeout().into())));
                    }
                    _ => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Whole { data, sent } => *sent || data.is_empty(),
            RequestBody::Client { prefix, inner, .. } => prefix.is_none() && inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Whole { data, sent } => SizeHint::with_exact(if *sent { 0 } else { data.len() as u64 }),
            RequestBody::Client { prefix, inner, .. } => {
                let before = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let rest = inner.size_hint();
                match rest.exact() {
                    Some(n) => SizeHint::with_exact(n + before),
                    None => {
                        let mut hint = SizeHint::new();
                        hint.set_lower(rest.lower() + before);
                        hint
                    }
                }
            }
        }
    }
}

/// A response body on its way to the client.
pub enum ResponseBody {
    /// A response the proxy wrote itself (errors, redirects).
    Local(Option<Bytes>),
    /// A backend's body: first what was read ahead of the client, then the
    /// rest. `finish` runs once, when the body ends, fails or is dropped
    /// (client gone): it records metrics and the access log line and
    /// returns the connection to the pool only after a complete body.
    /// `delimited`: the backend gave the length (else the client gets the
    /// body chunked too, even when it was read ahead whole).
    Upstream { inner: UpstreamBody, ahead: VecDeque<Frame<Bytes>>, delimited: bool, bytes: u64, finish: Option<Finish> },
}

/// A backend's response body read ahead of the client, up to `limit`
/// bytes: what has already arrived ([`ReadAhead::now`], which does not
/// wait), and, for a body whose length is known and within the limit, the
/// rest of it ([`ReadAhead::rest`], for at most `wait`). A slow reader then
/// holds memory, not a backend connection; a body that streams (events,
/// long chunked answers) is never waited for.
pub struct ReadAhead {
    pub frames: VecDeque<Frame<Bytes>>,
    /// The backend gave the body's length (known before anything was read).
    pub delimited: bool,
    read: usize,
    limit: usize,
    /// The length is known and within the limit: the rest is worth a wait.
    whole: bool,
    /// The body ended or failed (an error leaves it failed: the client's
    /// copy fails in turn).
    stopped: bool,
}

impl ReadAhead {
    /// Takes the frames that have arrived, without waiting (most bodies
    /// have arrived with their head): no future, no clock read, no timer.
    /// The body's socket is polled without this task's waker: whoever
    /// polls the body next (the rest of the wait, or the client's writer)
    /// registers its own.
    pub fn now(inner: &mut UpstreamBody, limit: usize) -> ReadAhead {
        let length = inner.size_hint().exact();
        let whole = length.is_some_and(|n| n <= limit as u64);
        let mut ahead =
            ReadAhead { frames: VecDeque::new(), delimited: length.is_some(), read: 0, limit, whole, stopped: false };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        while ahead.wanted(inner) {
            match inner.poll_frame(&mut cx) {
                Poll::Ready(frame) => ahead.take(frame),
                Poll::Pending => break,
            }
        }
        ahead
    }

    /// Whether the rest must be waited for: a body expected whole, not all here.
    pub fn waits(&self, inner: &UpstreamBody) -> bool {
        self.whole && self.wanted(inner)
    }

    /// Waits for the rest of a body expected whole, for at most `wait`.
    pub async fn rest(&mut self, inner: &mut UpstreamBody, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while self.wanted(inner) {
            match tokio::time::timeout_at(deadline, std::future::poll_fn(|cx| inner.poll_frame(cx))).await {
                Ok(frame) => self.take(frame),
                Err(_) => break,
            }
        }
    }

    fn wanted(&self, inner: &UpstreamBody) -> bool {
        !self.stopped && self.read < self.limit && !inner.is_end_stream()
    }

    fn take(&mut self, frame: Option<io::Result<Frame<Bytes>>>) {
        let Some(Ok(frame)) = frame else {
            self.stopped = true;
            return;
        };
        self.read += frame.data_ref().map_or(0, Bytes::len);
        self.frames.push_back(frame);
    }
}

impl ResponseBody {
    pub fn text(text: &'static str) -> ResponseBody {
        ResponseBody::Local(Some(Bytes::from_static(text.as_bytes())))
    }

    pub fn owned(text: String) -> ResponseBody {
        ResponseBody::Local(Some(Bytes::from(text)))
    }

    pub fn empty() -> ResponseBody {
        ResponseBody::Local(None)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            ResponseBody::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ResponseBody::Upstream { inner, ahead, bytes, finish, .. } => {
                if let Some(frame) = ahead.pop_front() {
                    if let Some(data) = frame.data_ref() {
                        *bytes += data.len() as u64;
                    }
                    if ahead.is_empty()
                        && inner.is_end_stream()
                        && let Some(f) = finish.take()
                    {
                        f.done(true, *bytes, inner.take_connection());
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                let polled = inner.poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            *bytes += data.len() as u64;
                        }
                        // The writer stops polling a body that says it has
                        // ended (Content-Length reached): finish here, or the
                        // connection would never go back to the pool.
                        if inner.is_end_stream()
                            && let Some(f) = finish.take()
                        {
                            f.done(true, *bytes, inner.take_connection());
                        }
                    }
                    Poll::Ready(None) => {
                        if let Some(f) = finish.take() {
                            f.done(true, *bytes, inner.take_connection());
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        if let Some(f) = finish.take() {
                            f.body_failed(UpstreamBody::failure_kind(e));
                            f.done(false, *bytes, None);
                        }
                    }
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Local(data) => data.is_none(),
            ResponseBody::Upstream { inner, ahead, .. } => ahead.is_empty() && inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Local(None) => SizeHint::with_exact(0),
            ResponseBody::Local(Some(d)) => SizeHint::with_exact(d.len() as u64),
            ResponseBody::Upstream { inner, ahead, delimited, .. } => {
                let before: u64 = ahead.iter().filter_map(|f| f.data_ref()).map(|d| d.len() as u64).sum();
                match inner.size_hint().exact().filter(|_| *delimited) {
                    Some(n) => SizeHint::with_exact(n + before),
                    None => {
                        let mut hint = SizeHint::new();
                        hint.set_lower(inner.size_hint().lower() + before);
                        hint
                    }
                }
            }
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let ResponseBody::Upstream { inner, bytes, finish, .. } = self
            && let Some(f) = finish.take()
        {
            // A body dropped once all of its Content-Length was read is
            // complete even though it never yielded `None`: its connection
            // can still be reused.
            f.done(inner.is_end_stream(), *bytes, inner.take_connection());
        }
    }
}
