//! The two body types of the proxy. Bodies stream frame by frame in both
//! directions; nothing here buffers a whole body.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
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
    /// The client's body, streamed, counting bytes for the access log.
    Client { inner: ClientBody, bytes: Rc<Cell<u64>> },
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Client { inner, bytes } => {
                let polled = Pin::new(inner).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled
                    && let Some(data) = frame.data_ref()
                {
                    bytes.set(bytes.get() + data.len() as u64);
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Client { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Client { inner, .. } => inner.size_hint(),
        }
    }
}

/// A response body on its way to the client.
pub enum ResponseBody {
    /// A response the proxy wrote itself (errors, redirects).
    Local(Option<Bytes>),
    /// A backend's body. `finish` runs once, when the body ends, fails or is
    /// dropped (client gone): it records metrics and the access log line and
    /// returns the connection to the pool only after a complete body.
    Upstream { inner: UpstreamBody, bytes: u64, finish: Option<Finish> },
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
            ResponseBody::Upstream { inner, bytes, finish } => {
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
            ResponseBody::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Local(None) => SizeHint::with_exact(0),
            ResponseBody::Local(Some(d)) => SizeHint::with_exact(d.len() as u64),
            ResponseBody::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let ResponseBody::Upstream { inner, bytes, finish } = self
            && let Some(f) = finish.take()
        {
            // A body dropped once all of its Content-Length was read is
            // complete even though it never yielded `None`: its connection
            // can still be reused.
            f.done(inner.is_end_stream(), *bytes, inner.take_connection());
        }
    }
}
