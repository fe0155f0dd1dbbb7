//! Client connection timeouts, measured on the connection's own reads:
//!
//! - `client_idle`: a connection with no request in flight is closed this
//!   long after its last request ended (or after it was accepted). HTTP/1
//!   connections close; HTTP/2 ones get a GOAWAY (graceful shutdown).
//! - `client_header` (HTTP/1 only): a request head must be complete within
//!   this long of its first byte, however slowly it trickles in (slowloris).
//!
//! hyper's own `header_read_timeout` cannot do this: it runs whenever the
//! connection waits for a head, idle keep-alive time included, so idle
//! connections would close after `client_header`. Here each connection has
//! at most one timer, armed only while hyper waits for bytes and no request
//! is in flight; a request costs two counter updates and one clock read.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::config::Timeouts;

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the service and the connection's reads know about each other.
/// Shared by the IO (which hyper may move into an upgraded tunnel, so it
/// must be `Send`) and the service.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    in_flight: AtomicU32,
    /// Nanoseconds after `epoch` when the last request ended.
    idle_since: AtomicU64,
    /// Nanoseconds after `epoch` (+1, 0 = none) when the first byte of a
    /// request head arrived.
    head_since: AtomicU64,
    /// The idle limit passed: the connection should shut down gracefully.
    expired: AtomicBool,
    /// No more client timeouts (the connection became a tunnel).
    off: AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            epoch: Instant::now(),
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            expired: AtomicBool::new(false),
            off: AtomicBool::new(false),
        }
    }
}

impl Activity {
    fn nanos(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn at(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }

    /// A request reached the service.
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
    }

    /// A request is answered (its response body ended or was dropped).
    pub fn request_ended(&self) {
        let before = self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if before <= 1 {
            if before == 0 {
                // Unbalanced: keep the counter at zero.
                self.in_flight.store(0, Ordering::Relaxed);
            }
            self.idle_since.store(self.nanos(), Ordering::Relaxed);
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Ready once the connection stayed idle for `client_idle`. Relies on
    /// [`ClientIo`] waking the task that polls both it and this future.
    pub fn idle_expired(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|_| if self.expired.load(Ordering::Relaxed) { Poll::Ready(()) } else { Poll::Pending })
    }

    /// Stops the timeouts for good (an upgraded connection is a tunnel now).
    pub fn stop(&self) {
        self.off.store(true, Ordering::Relaxed);
    }
}

/// A request that reached the service. If the service future is dropped
/// before it answers (an HTTP/2 stream reset, a client gone), the request
/// still ends, so that the connection can become idle again.
pub struct Started<'a>(Option<&'a Activity>);

impl<'a> Started<'a> {
    pub fn new(activity: &'a Activity) -> Self {
        activity.request_started();
        Started(Some(activity))
    }

    /// The response exists: its own paths end the request.
    pub fn handed_over(mut self) {
        self.0 = None;
    }
}

impl Drop for Started<'_> {
    fn drop(&mut self) {
        if let Some(activity) = self.0 {
            activity.request_ended();
        }
    }
}

/// The two client limits, read from the config when the connection opens.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub idle: Duration,
    pub header: Duration,
}

impl From<&Timeouts> for Limits {
    fn from(t: &Timeouts) -> Self {
        Limits { idle: t.client_idle, header: t.client_header }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// Fewer bytes seen than the HTTP/2 preface, all matching it so far.
    Unknown(u8),
    Http1,
    Http2,
}

/// A client connection's transport with the idle and header deadlines.
pub struct ClientIo<I> {
    inner: I,
    activity: Arc<Activity>,
    limits: Limits,
    protocol: Protocol,
    /// Created the first time a deadline is armed; reset, never reallocated.
    timer: Option<Pin<Box<Sleep>>>,
    armed: Option<Instant>,
}

impl<I> ClientIo<I> {
    pub fn new(inner: I, activity: Arc<Activity>, limits: Limits) -> Self {
        ClientIo { inner, activity, limits, protocol: Protocol::Unknown(0), timer: None, armed: None }
    }

    fn saw_bytes(&mut self, bytes: &[u8]) {
        let a = &*self.activity;
        if a.off.load(Ordering::Relaxed) {
            return;
        }
        if let Protocol::Unknown(mut matched) = self.protocol {
            for &b in bytes {
                if b != H2_PREFACE[matched as usize] {
                    self.protocol = Protocol::Http1;
                    break;
                }
                matched += 1;
                self.protocol =
                    if matched as usize == H2_PREFACE.len() { Protocol::Http2 } else { Protocol::Unknown(matched) };
                if self.protocol == Protocol::Http2 {
                    break;
                }
            }
        }
        if self.protocol != Protocol::Http2 && a.in_flight() == 0 && a.head_since.load(Ordering::Relaxed) == 0 {
            a.head_since.store(a.nanos() + 1, Ordering::Relaxed);
        }
    }

    /// hyper waits for bytes: make sure the deadline that applies wakes it.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let a = &*self.activity;
        if a.in_flight() > 0 || a.off.load(Ordering::Relaxed) || a.expired.load(Ordering::Relaxed) {
            return Poll::Pending;
        }
        let head = a.head_since.load(Ordering::Relaxed);
        let (deadline, is_head) = if head != 0 && self.protocol != Protocol::Http2 {
            (a.at(head - 1) + self.limits.header, true)
        } else {
            (a.at(a.idle_since.load(Ordering::Relaxed)) + self.limits.idle, false)
        };
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if self.armed != Some(deadline) {
            timer.as_mut().reset(deadline);
            self.armed = Some(deadline);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if is_head {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "request head not complete in time")));
        }
        // Idle: the connection's task shuts it down gracefully (a GOAWAY for HTTP/2).
        a.expired.store(true, Ordering::Relaxed);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ClientIo<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.saw_bytes(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadline(cx),
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ClientIo<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> ClientIo<tokio::io::Empty> {
        ClientIo::new(
            tokio::io::empty(),
            Arc::default(),
            Limits { idle: Duration::from_secs(75), header: Duration::from_secs(10) },
        )
    }

    #[tokio::test]
    async fn the_http2_preface_is_recognised_across_reads() {
        let mut c = io();
        c.saw_bytes(b"PRI * HTTP/2.0\r\n");
        assert_eq!(c.protocol, Protocol::Unknown(16));
        c.saw_bytes(b"\r\nSM\r\n\r\n\0\0");
        assert_eq!(c.protocol, Protocol::Http2);
        let mut c = io();
        c.saw_bytes(b"POST / HTTP/1.1\r\n");
        assert_eq!(c.protocol, Protocol::Http1);
    }

    #[tokio::test]
    async fn a_head_starts_with_its_first_byte_and_ends_with_the_request() {
        let mut c = io();
        c.saw_bytes(b"GET / HT");
        let started = c.activity.head_since.load(Ordering::Relaxed);
        assert_ne!(started, 0);
        c.saw_bytes(b"TP/1.1\r\n");
        assert_eq!(c.activity.head_since.load(Ordering::Relaxed), started, "measured from the first byte");
        c.activity.request_started();
        assert_eq!(c.activity.head_since.load(Ordering::Relaxed), 0);
        c.saw_bytes(b"body bytes");
        assert_eq!(c.activity.head_since.load(Ordering::Relaxed), 0, "a body is not a head");
        c.activity.request_ended();
        assert_eq!(c.activity.in_flight(), 0);
    }
}
