//! The client-facing HTTP/1.1 server.
//!
//! Written for a proxy rather than taken from hyper's server for two reasons:
//! an idle keep-alive connection holds no buffer (hyper keeps 16 KiB per
//! connection: its read and write buffers), and a request costs one parse
//! and one encode with nothing else around them. hyper still serves HTTP/2
//! (by ALPN, or by prior knowledge: a connection that opens with the HTTP/2
//! preface is handed over) and talks to the backends.
//!
//! A connection is one task. The request body reads the same stream, from
//! whichever task forwards it, through [`Conn`]: the two never hold the
//! stream across an await, and a response is written only by the
//! connection's task. Read buffers come from a per-thread pool and go back
//! to it whenever a connection waits for its next request with nothing
//! buffered.

pub mod client;
mod decode;
#[doc(hidden)]
pub mod fuzz;
mod maps;
mod parse;
mod write;

use std::cell::{Cell, RefCell};
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::Instant;

use self::decode::{Decoder, Malformed, Step};
use self::parse::Head;
use self::write::{Meta, Written};
/// For fields kept as they came (`proxy::verbatim`), read back into a map.
pub(super) use self::{maps::field_name, parse::trim};
use super::body::ClientBody;
use super::client_timeouts::Activity;
use super::listener::{self, Worker};
use super::service::{self, ConnInfo};
use super::slot::Slot;
use super::stream::{MaybeTls, Rewind, Stream};

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// Read buffers: allocated this size, topped up when less than `MIN_READ` is free.
const READ_SIZE: usize = 8 * 1024;
const MIN_READ: usize = 1024;
/// Buffers kept per worker thread for the next connection that needs one.
const POOLED: usize = 256;
/// The most of an unread request body drained to keep a connection open.
const MAX_DRAIN: u64 = 1024 * 1024;
/// How long a closing connection reads what its client still sends, so
/// that the last response is not lost to a reset (a lingering close).
const LINGER: Duration = Duration::from_millis(500);

thread_local! {
    static READ_BUFFERS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

fn pooled_buffer() -> BytesMut {
    READ_BUFFERS.with_borrow_mut(Vec::pop).unwrap_or_else(|| BytesMut::with_capacity(READ_SIZE))
}

/// One client connection, shared by its task and the body of its current request.
pub struct Conn {
    /// `None` once the connection is closed (or handed to a tunnel).
    io: RefCell<Option<Stream>>,
    /// Bytes read and not yet consumed.
    buf: RefCell<BytesMut>,
    /// Where the current request's body stands.
    decoder: Cell<Decoder>,
    /// `Some(n)`: the client expects `100 Continue`, of which `n` bytes are written.
    continue_sent: Cell<Option<usize>>,
    /// The current request's body broke its framing (the client's fault).
    malformed: Cell<Option<&'static str>>,
    /// Which request the decoder is for: a body of an earlier request
    /// never reads what belongs to a later one.
    generation: Cell<u64>,
    /// The task reading the body, when it waits: woken if the connection
    /// closes under it, so that it fails instead of waiting forever.
    body_waker: RefCell<Option<Waker>>,
    /// The connection is closing: bodies still being read fail.
    shut: Cell<bool>,
    /// Request bodies alive (held by the service or a backend connection).
    bodies: Cell<u32>,
    /// Part of the current request's body was read (forwarded): what is
    /// left of it, if abandoned, is not drained but closes the connection.
    body_started: Cell<bool>,
    /// `timeouts.client_send`: the longest a write may wait for the client
    /// to take bytes; `send_timed_out` says it ran out.
    send_timeout: Cell<Duration>,
    send_timed_out: Cell<bool>,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "client connection closed")
}

impl Conn {
    fn new(stream: Stream) -> Conn {
        Conn {
            io: RefCell::new(Some(stream)),
            buf: RefCell::new(BytesMut::new()),
            decoder: Cell::new(Decoder::Done),
            continue_sent: Cell::new(None),
            malformed: Cell::new(None),
            generation: Cell::new(0),
            body_waker: RefCell::new(None),
            shut: Cell::new(false),
            bodies: Cell::new(0),
            body_started: Cell::new(false),
            send_timeout: Cell::new(Duration::from_secs(60)),
            send_timed_out: Cell::new(false),
        }
    }

    /// A request body of this connection still exists (a backend connection
    /// may be forwarding it).
    fn body_in_use(&self) -> bool {
        self.bodies.get() > 0
    }

    fn with_io<R>(&self, f: impl FnOnce(Pin<&mut Stream>) -> Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match self.io.borrow_mut().as_mut() {
            Some(io) => f(Pin::new(io)),
            None => Poll::Ready(Err(closed())),
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` is the end of the stream.
    fn poll_fill(&self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut buf = self.buf.borrow_mut();
        if buf.capacity() - buf.len() < MIN_READ {
            if buf.capacity() == 0 {
                *buf = pooled_buffer();
            } else {
                buf.reserve(READ_SIZE);
            }
        }
        self.with_io(|io| tokio_util::io::poll_read_buf(io, cx, &mut *buf))
    }

    async fn fill(&self) -> io::Result<usize> {
        poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Gives an empty read buffer back to the thread's pool.
    fn release_buffer(&self) {
        let mut buf = self.buf.borrow_mut();
        if buf.is_empty() && buf.capacity() > 0 {
            let mut spare = std::mem::take(&mut *buf);
            // A buffer grown for a large head is not kept.
            if (READ_SIZE / 2..=2 * READ_SIZE).contains(&spare.capacity()) {
                spare.clear();
                READ_BUFFERS.with_borrow_mut(|pool| {
                    if pool.len() < POOLED {
                        pool.push(spare);
                    }
                });
            }
        }
    }

    async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self.in_time(poll_fn(|cx| self.with_io(|io| io.poll_write(cx, data)))).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            data = &data[n..];
        }
        Ok(())
    }

    async fn flush(&self) -> io::Result<()> {
        self.in_time(poll_fn(|cx| self.with_io(|io| io.poll_flush(cx)))).await
    }

    /// One write to the client, within `timeouts.client_send` (a client that
    /// stops reading is cut off, as nginx's `send_timeout` does).
    /// A write that completes at once (the common case) costs no clock
    /// read and no timer; the timer starts when the write first waits.
    async fn in_time<R>(&self, write: impl Future<Output = io::Result<R>>) -> io::Result<R> {
        let mut write = std::pin::pin!(write);
        if let Poll::Ready(done) = poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
            return done;
        }
        match tokio::time::timeout(self.send_timeout.get(), write).await {
            Ok(done) => done,
            Err(_) => {
                self.send_timed_out.set(true);
                Err(io::Error::new(io::ErrorKind::TimedOut, "the client took no bytes within timeouts.client_send"))
            }
        }
    }

    /// Writes the interim `100 Continue` the client waits for before it
    /// sends the body, unless body bytes are already there.
    fn poll_continue(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(mut sent) = self.continue_sent.get() else { return Poll::Ready(Ok(())) };
        if sent == 0 && !self.buf.borrow().is_empty() {
            self.continue_sent.set(None);
            return Poll::Ready(Ok(()));
        }
        while sent < CONTINUE.len() {
            let n = ready!(self.with_io(|io| io.poll_write(cx, &CONTINUE[sent..])))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            sent += n;
            self.continue_sent.set(Some(sent));
        }
        ready!(self.with_io(|io| io.poll_flush(cx)))?;
        self.continue_sent.set(None);
        Poll::Ready(Ok(()))
    }

    /// Before a final response: finish a `100 Continue` already begun, or
    /// drop one not begun (the final response takes its place). `Ok(true)`:
    /// the client was never told to send its body.
    async fn settle_continue(&self) -> io::Result<bool> {
        match self.continue_sent.take() {
            Some(0) => Ok(true),
            Some(sent) => self.write_all(&CONTINUE[sent..]).await.map(|()| false),
            None => Ok(false),
        }
    }

    fn poll_body(&self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if self.shut.get() {
            return Poll::Ready(Some(Err(closed())));
        }
        let polled = self.poll_body_inner(cx);
        if polled.is_pending() {
            let mut waker = self.body_waker.borrow_mut();
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
        }
        polled
    }

    fn poll_body_inner(&self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if let Err(e) = ready!(self.poll_continue(cx)) {
            self.decoder.set(Decoder::Failed);
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            let mut decoder = self.decoder.get();
            let step = decoder.decode(&mut self.buf.borrow_mut());
            self.decoder.set(decoder);
            match step {
                Ok(Step::Data(data)) => {
                    self.body_started.set(true);
                    return Poll::Ready(Some(Ok(data)));
                }
                // Trailer fields of a request are dropped (RFC 9112 §7.1.2).
                Ok(Step::Trailer(_)) => {}
                Ok(Step::End) => return Poll::Ready(None),
                Err(Malformed(why)) => {
                    self.malformed.set(Some(why));
                    return Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::InvalidData, why))));
                }
                Ok(Step::More) => match ready!(self.poll_fill(cx)) {
                    Ok(0) => {
                        self.decoder.set(Decoder::Failed);
                        let e = io::Error::new(io::ErrorKind::UnexpectedEof, "client closed the connection mid-body");
                        return Poll::Ready(Some(Err(e)));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.decoder.set(Decoder::Failed);
                        return Poll::Ready(Some(Err(e)));
                    }
                },
            }
        }
    }

    /// Reads and drops what is left of a request body nobody read, so that
    /// the connection can serve its next request.
    async fn drain_body(&self, deadline: Instant) -> bool {
        let mut drained = 0u64;
        loop {
            match tokio::time::timeout_at(deadline, poll_fn(|cx| self.poll_body(cx))).await {
                Ok(None) => return true,
                Ok(Some(Ok(data))) => {
                    drained += data.len() as u64;
                    if drained > MAX_DRAIN {
                        return false;
                    }
                }
                Ok(Some(Err(_))) | Err(_) => return false,
            }
        }
    }

    /// Waits for the first bytes of the next request, as long as `idle`
    /// allows. The connection's timer is only reset when it fires early, not
    /// once per request. `first_due` is set for a connection's first request:
    /// when its head is due (see `listener::drain_wait`).
    async fn first_bytes(&self, idle: Duration, timers: &mut Timers, first_due: Option<Instant>) -> bool {
        let until = Instant::now() + idle;
        let wait = async {
            // A plain TCP connection waits without a buffer.
            if poll_fn(|cx| self.with_io(|io| io.as_ref().get_ref().poll_idle_ready(cx))).await.is_err() {
                return false;
            }
            matches!(self.fill().await, Ok(n) if n > 0)
        };
        tokio::pin!(wait);
        loop {
            // Biased: woken by the client's bytes, the read is polled first
            // and the timers are not looked at.
            tokio::select! {
                biased;
                got = &mut wait => return got,
                _ = timers.idle.as_mut() => {
                    if Instant::now() >= until {
                        return false;
                    }
                    timers.idle.as_mut().reset(until);
                }
                _ = timers.stop.as_mut() => {
                    // On a drain, an idle connection (new, or kept alive)
                    // gets time for its next request, which is answered
                    // with `Connection: close`: a client that sent it as the
                    // drain began is not cut off. Only a connection idle for
                    // the whole wait is closed unasked.
                    let until = listener::drain_wait(first_due);
                    return tokio::time::timeout_at(until, &mut wait).await.unwrap_or(false);
                }
            }
        }
    }

    /// Whether the connection opens with the HTTP/2 preface (prior knowledge).
    async fn is_http2(&self, deadline: Instant) -> bool {
        loop {
            {
                let buf = self.buf.borrow();
                if buf.len() >= H2_PREFACE.len() {
                    return buf.starts_with(H2_PREFACE);
                }
                if !H2_PREFACE.starts_with(&buf) {
                    return false;
                }
            }
            if !matches!(tokio::time::timeout_at(deadline, self.fill()).await, Ok(Ok(n)) if n > 0) {
                return false;
            }
        }
    }

    /// Fails a body still being read (forwarded to a backend): it must not
    /// wait for bytes from a connection that is going away.
    fn shut(&self) {
        self.shut.set(true);
        if let Some(waker) = self.body_waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Resolves when a plain TCP client closes its connection while its
    /// request (one without a body left to read) is being answered: the
    /// request is then abandoned, and its backend request with it. Bytes of
    /// a pipelined request end the watch.
    async fn client_gone(&self) {
        let mut watching = true;
        poll_fn(|cx| {
            if !watching {
                return Poll::Pending;
            }
            let mut io = self.io.borrow_mut();
            let Some(MaybeTls::Plain(tcp)) = io.as_mut() else {
                watching = false;
                return Poll::Pending;
            };
            let mut byte = [0u8; 1];
            match tcp.poll_peek(cx, &mut ReadBuf::new(&mut byte)) {
                Poll::Ready(Ok(0) | Err(_)) => Poll::Ready(()),
                Poll::Ready(Ok(_)) => {
                    watching = false;
                    Poll::Pending
                }
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Takes the stream and what was read from it but not consumed.
    fn take_stream(&self) -> Option<Rewind> {
        self.shut();
        let stream = self.io.borrow_mut().take()?;
        let rest = std::mem::take(&mut *self.buf.borrow_mut()).freeze();
        Some(Rewind::new(rest, stream))
    }

    /// Closes the connection: FIN (or TLS close_notify) first; with `linger`,
    /// what the client still sends is read and dropped for a moment, so
    /// that the kernel does not answer it with a reset that could destroy
    /// the response still on its way.
    async fn close(&self, linger: bool) {
        // A body still forwarded would race the linger for the stream's reads.
        let linger = linger && !self.body_in_use();
        self.shut();
        let deadline = Instant::now() + LINGER;
        let _ = tokio::time::timeout_at(deadline, poll_fn(|cx| self.with_io(|io| io.poll_shutdown(cx)))).await;
        if linger {
            let mut read = 0;
            while read < MAX_DRAIN as usize {
                self.buf.borrow_mut().clear();
                match tokio::time::timeout_at(deadline, self.fill()).await {
                    Ok(Ok(n)) if n > 0 => read += n,
                    _ => break,
                }
            }
        }
        self.io.borrow_mut().take();
        self.buf.borrow_mut().clear();
        self.release_buffer();
    }
}

/// A connection's idle timer and its worker's stop signal, made once.
struct Timers {
    idle: Pin<Box<tokio::time::Sleep>>,
    stop: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

/// The body of a request read by this server.
pub struct RequestBody {
    conn: Rc<Conn>,
    generation: u64,
}

impl RequestBody {
    fn new(conn: &Rc<Conn>) -> RequestBody {
        conn.bodies.set(conn.bodies.get() + 1);
        RequestBody { conn: conn.clone(), generation: conn.generation.get() }
    }

    /// Whether the connection's decoder is still this request's (it has
    /// moved on only after this body ended).
    fn current(&self) -> bool {
        self.generation == self.conn.generation.get()
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.conn.bodies.set(self.conn.bodies.get() - 1);
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if !self.current() {
            return Poll::Ready(None);
        }
        self.conn.poll_body(cx).map(|polled| polled.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        !self.current() || self.conn.decoder.get().is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.conn.decoder.get() {
            _ if !self.current() => SizeHint::with_exact(0),
            Decoder::Done => SizeHint::with_exact(0),
            Decoder::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// The client side of a requested upgrade, in the request's extensions: the
/// stream arrives once the `101 Switching Protocols` is written.
#[derive(Clone)]
pub struct Upgrade(Arc<Mutex<Option<oneshot::Receiver<Rewind>>>>);

impl Upgrade {
    pub async fn stream(self) -> Option<Rewind> {
        let receiver = self.0.lock().ok()?.take()?;
        receiver.await.ok()
    }
}

/// Serves one client connection until it closes, idles out, or the worker drains.
pub async fn serve(stream: Stream, peer: SocketAddr, tls: bool, worker: &Rc<Worker>) {
    if stream.alpn_h2() {
        return listener::serve_h2(stream, peer, tls, worker).await;
    }
    let (idle, header, send) = {
        let snap = worker.snapshot();
        let t = &snap.config.timeouts;
        (t.client_idle, t.client_header, t.client_send)
    };
    let info = Rc::new(ConnInfo::new(peer, tls, Arc::new(Activity::default())));
    let first_due = Instant::now() + header;
    let conn = Rc::new(Conn::new(stream));
    conn.send_timeout.set(send);
    let mut served = 0u64;
    let mut timers =
        Timers { idle: Box::pin(tokio::time::sleep(idle)), stop: Box::pin(worker.stop_token().cancelled_owned()) };
    let linger = 'conn: loop {
        if conn.buf.borrow().is_empty() {
            conn.release_buffer();
            if !conn.first_bytes(idle, &mut timers, (served == 0).then_some(first_due)).await {
                break false;
            }
        }
        // The head's deadline is set when it first has to wait for bytes: a
        // head that came whole costs no clock read.
        let mut deadline = None;
        if served == 0 && conn.is_http2(*deadline.get_or_insert_with(|| Instant::now() + header)).await {
            if let Some(stream) = conn.take_stream() {
                listener::serve_h2(stream, peer, tls, worker).await;
            }
            return;
        }
        // Bytes already parsed without finding a complete head: a head ends
        // with a line feed, so one trickled in byte by byte is parsed again
        // only when a line ends, not on every read.
        let mut scanned = 0;
        let head = loop {
            let parsed = {
                let mut buf = conn.buf.borrow_mut();
                if scanned > 0 && buf.len() < parse::MAX_HEAD && !buf[scanned.min(buf.len())..].contains(&b'\n') {
                    Ok(None)
                } else {
                    parse::parse(&mut buf)
                }
            };
            match parsed {
                Ok(Some(head)) => break head,
                Ok(None) => {
                    scanned = conn.buf.borrow().len();
                    let due = *deadline.get_or_insert_with(|| Instant::now() + header);
                    match tokio::time::timeout_at(due, conn.fill()).await {
                        Ok(Ok(n)) if n > 0 => {}
                        Ok(_) => break 'conn false,
                        Err(_) => {
                            tracing::debug!(%peer, "request head not complete within client_header");
                            let timeout = parse::Rejection {
                                status: StatusCode::REQUEST_TIMEOUT,
                                reason: "request head not complete in time",
                            };
                            refused(worker, tls, timeout.status);
                            let _ = write::rejection(&conn, timeout).await;
                            break 'conn true;
                        }
                    }
                }
                Err(rejection) => {
                    tracing::debug!(%peer, status = rejection.status.as_u16(), reason = rejection.reason, "bad request head");
                    refused(worker, tls, rejection.status);
                    let _ = write::rejection(&conn, rejection).await;
                    break 'conn true;
                }
            }
        };
        let Head { mut request, framing, keep_alive, expect_continue, upgrade, trailers, verbatim } = head;
        conn.generation.set(conn.generation.get() + 1);
        conn.decoder.set(framing.into());
        conn.body_started.set(false);
        conn.continue_sent.set(expect_continue.then_some(0));
        let upgrade = upgrade.then(|| {
            let (sender, receiver) = oneshot::channel();
            request.extensions_mut().insert(Upgrade(Arc::new(Mutex::new(Some(receiver)))));
            sender
        });
        let meta = Meta {
            head: request.method() == Method::HEAD,
            http10: request.version() == Version::HTTP_10,
            trailers,
            keep_alive,
        };
        let body = ClientBody::H1(RequestBody::new(&conn));
        let watch = conn.decoder.get().is_done() && conn.buf.borrow().is_empty();
        // On the heap (in a room kept per thread): an idle connection's task
        // then does not carry the space of a request in flight (a few KiB)
        // while it waits.
        let mut service =
            Slot::new(|| service::handle_h1(worker.clone(), info.clone(), request.map(|()| body), verbatim));
        let answered = tokio::select! {
            biased;
            answered = &mut service => answered,
            () = conn.client_gone(), if watch => {
                tracing::debug!(%peer, "client closed the connection before its answer");
                break 'conn false;
            }
        };
        let (response, verbatim) = answered;
        served += 1;
        if let Some(reason) = conn.malformed.take() {
            // The backend saw a broken body because the client sent one: a
            // 400 for the client rather than the service's 502.
            drop(response);
            tracing::debug!(%peer, reason, "malformed request body");
            let _ = write::rejection(&conn, parse::Rejection { status: StatusCode::BAD_REQUEST, reason }).await;
            break true;
        }
        let meta = Meta { keep_alive: meta.keep_alive && !worker.stop_requested(), ..meta };
        match write::response(&conn, (response, &verbatim), meta, upgrade).await {
            Written::KeepAlive => {}
            // Bytes the client sent on (a pipelined request, a body) would
            // turn the close into a reset: linger for them.
            Written::Close => break !conn.decoder.get().is_done() || !conn.buf.borrow().is_empty(),
            Written::Failed => {
                if conn.send_timed_out.get() {
                    worker.metrics().slow.send_timeout.inc();
                }
                break false;
            }
            Written::Upgraded => return,
        }
        // The next head comes after this request's body: read what nobody
        // did. A body forwarded in part and then abandoned (the backend
        // answered early) is not waited for: the connection closes.
        if !conn.decoder.get().is_done()
            && (conn.body_in_use() || conn.body_started.get() || !conn.drain_body(Instant::now() + header).await)
        {
            break true;
        }
    };
    conn.close(linger).await;
}

/// Counts a refused head (rare: the label lookup is paid then, not per request).
fn refused(worker: &Worker, tls: bool, status: StatusCode) {
    let listener = if tls { "https" } else { "http" };
    worker.metrics().http1_head_refusals.with_label_values(&[listener, status.as_str()]).inc();
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::Wake;

    use http_body::Body;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    async fn conn() -> (Rc<Conn>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Rc::new(Conn::new(MaybeTls::Plain(server))), client)
    }

    #[tokio::test]
    async fn a_body_waiting_for_bytes_is_woken_and_fails_when_its_connection_shuts() {
        let (conn, _client) = conn().await;
        conn.decoder.set(Decoder::Length(10));
        let mut body = RequestBody::new(&conn);
        assert!(conn.body_in_use());
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending(), "no bytes from the client yet");
        conn.shut();
        assert!(flag.0.load(Ordering::SeqCst), "the task forwarding the body is woken");
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Err(e))) => assert_eq!(e.kind(), io::ErrorKind::NotConnected),
            other => panic!("expected an error, got {:?}", other.map(|f| f.map(|r| r.is_ok()))),
        }
        drop(body);
        assert!(!conn.body_in_use());
    }

    #[tokio::test]
    async fn a_body_of_an_earlier_request_never_reads_a_later_one() {
        let (conn, _client) = conn().await;
        conn.decoder.set(Decoder::Length(5));
        let mut old = RequestBody::new(&conn);
        // The next request on the connection, with a body of its own.
        conn.generation.set(conn.generation.get() + 1);
        conn.decoder.set(Decoder::Length(5));
        conn.buf.borrow_mut().extend_from_slice(b"later");
        assert!(old.is_end_stream());
        assert_eq!(old.size_hint().exact(), Some(0));
        let waker = Waker::from(Arc::new(Flag(AtomicBool::new(false))));
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(Pin::new(&mut old).poll_frame(&mut cx), Poll::Ready(None)));
        assert_eq!(&conn.buf.borrow()[..], b"later", "the later body's bytes are untouched");
    }
}
