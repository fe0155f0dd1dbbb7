//! `client_idle` for HTTP/2 connections (served by hyper), measured on the
//! connection's own reads: a connection with no request in flight gets a
//! GOAWAY (graceful shutdown) this long after its last request ended (or
//! after it was accepted). Each connection has at most one timer, armed only
//! while hyper waits for bytes and no stream is in flight; a request costs
//! two counter updates and one clock read. (The HTTP/1.1 server in `h1`
//! keeps its own idle and head timers.)

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

/// What the service and the connection's reads know about each other.
/// Shared by the IO (which hyper may move into an upgraded tunnel, so it
/// must be `Send`) and the service.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    in_flight: AtomicU32,
    /// Nanoseconds after `epoch` when the last request ended.
    idle_since: AtomicU64,
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
            expired: AtomicBool::new(false),
            off: AtomicBool::new(false),
        }
    }
}

impl Activity {
    fn at(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }

    /// A request reached the service.
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request is answered (its response body ended or was dropped).
    pub fn request_ended(&self) {
        self.request_ended_at(Instant::now().into_std());
    }

    /// [`Activity::request_ended`] at `now`, for a caller that read the clock already.
    pub fn request_ended_at(&self, now: std::time::Instant) {
        let before = self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if before <= 1 {
            if before == 0 {
                // Unbalanced: keep the counter at zero.
                self.in_flight.store(0, Ordering::Relaxed);
            }
            let nanos = Instant::from_std(now).saturating_duration_since(self.epoch).as_nanos() as u64;
            self.idle_since.store(nanos, Ordering::Relaxed);
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

/// The client limits, read from the config when the connection opens.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub idle: Duration,
    /// Bounds the wait for an idle connection's GOAWAY to be taken.
    pub header: Duration,
}

impl From<&Timeouts> for Limits {
    fn from(t: &Timeouts) -> Self {
        Limits { idle: t.client_idle, header: t.client_header }
    }
}

/// An HTTP/2 client connection's transport with the idle deadline.
pub struct ClientIo<I> {
    inner: I,
    activity: Arc<Activity>,
    limits: Limits,
    /// Created the first time the deadline is armed; reset, never reallocated.
    timer: Option<Pin<Box<Sleep>>>,
    armed: Option<Instant>,
}

impl<I> ClientIo<I> {
    pub fn new(inner: I, activity: Arc<Activity>, limits: Limits) -> Self {
        ClientIo { inner, activity, limits, timer: None, armed: None }
    }

    /// hyper waits for bytes: make sure the idle deadline wakes it.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let a = &*self.activity;
        if a.in_flight() > 0 || a.off.load(Ordering::Relaxed) || a.expired.load(Ordering::Relaxed) {
            return Poll::Pending;
        }
        let deadline = a.at(a.idle_since.load(Ordering::Relaxed)) + self.limits.idle;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if self.armed != Some(deadline) {
            timer.as_mut().reset(deadline);
            self.armed = Some(deadline);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // The connection's task shuts it down gracefully (a GOAWAY).
        a.expired.store(true, Ordering::Relaxed);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ClientIo<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => this.poll_deadline(cx),
            ready => ready,
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
    use tokio::io::AsyncReadExt;

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_expires_after_client_idle_and_not_while_a_request_runs() {
        let (client, _peer) = tokio::io::duplex(64);
        let activity = Arc::new(Activity::default());
        let limits = Limits { idle: Duration::from_secs(75), header: Duration::from_secs(10) };
        let mut io = ClientIo::new(client, activity.clone(), limits);
        let mut buf = [0u8; 8];
        activity.request_started();
        assert!(tokio::time::timeout(Duration::from_secs(100), io.read(&mut buf)).await.is_err());
        assert!(!activity.expired.load(Ordering::Relaxed), "a request in flight keeps the connection");
        activity.request_ended();
        assert!(tokio::time::timeout(Duration::from_secs(74), io.read(&mut buf)).await.is_err());
        assert!(!activity.expired.load(Ordering::Relaxed), "idle for less than client_idle");
        assert!(tokio::time::timeout(Duration::from_secs(2), io.read(&mut buf)).await.is_err());
        assert!(activity.expired.load(Ordering::Relaxed), "idle past client_idle from the request's end");
    }
}
