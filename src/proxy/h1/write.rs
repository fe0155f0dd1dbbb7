//! Responses: the head, then the body framed by Content-Length, chunked
//! encoding or the end of the connection. Small pieces are gathered in one
//! buffer and written together; the buffer goes back to the thread's pool.

use std::cell::RefCell;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Response, StatusCode};
use http_body::Body;
use tokio::sync::oneshot;

use super::super::body::ResponseBody;
use super::super::stream::Rewind;
use super::super::verbatim::Verbatim;
use super::Conn;
use super::parse::Rejection;

/// Gathered output is written once it reaches this size; a data frame at
/// least this large is written from its own buffer, not copied.
const GATHER: usize = 16 * 1024;
/// Write buffers larger than this are not kept for the next response.
const KEEP_CAPACITY: usize = 64 * 1024;

thread_local! {
    static WRITE_BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    /// The `Date` value of the current second.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

fn date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(cached, text)| {
        if *cached != second || text.is_empty() {
            *text = httpdate::fmt_http_date(now);
            *cached = second;
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

/// A write buffer from the pool, given back when dropped.
pub(super) struct Out(pub(super) Vec<u8>);

impl Out {
    pub(super) fn take() -> Out {
        Out(WRITE_BUFFERS.with_borrow_mut(Vec::pop).unwrap_or_else(|| Vec::with_capacity(4096)))
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        if buf.capacity() <= KEEP_CAPACITY {
            buf.clear();
            WRITE_BUFFERS.with_borrow_mut(|pool| {
                if pool.len() < 64 {
                    pool.push(buf);
                }
            });
        }
    }
}

/// What the response needs to know about its request.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub head: bool,
    pub http10: bool,
    /// The client accepts trailers.
    pub trailers: bool,
    /// The connection may stay open after this response.
    pub keep_alive: bool,
}

/// How a response went.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    KeepAlive,
    /// Complete, and the connection closes (as announced, or because the
    /// body's framing needs it).
    Close,
    /// The client or the body failed midway: the connection is done.
    Failed,
    /// `101 Switching Protocols`: the stream went to the tunnel.
    Upgraded,
}

enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Delimited by closing the connection (an HTTP/1.0 client, unknown length).
    Close,
}

fn status_line(out: &mut Vec<u8>, http10: bool, status: StatusCode) {
    out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub(super) fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn fields(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
}

/// Answers a request head this server refuses, and the connection closes.
pub async fn rejection(conn: &Conn, rejection: Rejection) -> std::io::Result<()> {
    let body = format!(
        "{} {}: {}\n",
        rejection.status.as_str(),
        rejection.status.canonical_reason().unwrap_or(""),
        rejection.reason
    );
    let mut out = Out::take();
    status_line(&mut out.0, false, rejection.status);
    field(&mut out.0, b"content-type", b"text/plain; charset=utf-8");
    length_field(&mut out.0, body.len() as u64);
    field(&mut out.0, b"connection", b"close");
    date(&mut out.0);
    out.0.extend_from_slice(b"\r\n");
    out.0.extend_from_slice(body.as_bytes());
    conn.write_all(&out.0).await?;
    conn.flush().await
}

/// Writes a response (its fields: those in its map, then those kept as
/// they came) and its body.
pub async fn response(
    conn: &Conn,
    (response, verbatim): (Response<ResponseBody>, &Verbatim),
    meta: Meta,
    upgrade: Option<oneshot::Sender<Rewind>>,
) -> Written {
    let Ok(withheld) = conn.settle_continue().await else { return Written::Failed };
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let mut out = Out::take();
    let buf = &mut out.0;
    status_line(buf, meta.http10, status);
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // The head as the service made it (Upgrade, Connection: upgrade), then the tunnel.
        fields(buf, &parts.headers);
        verbatim.write(buf);
        if !verbatim.has_date() && !parts.headers.contains_key(header::DATE) {
            date(buf);
        }
        buf.extend_from_slice(b"\r\n");
        if conn.write_all(buf).await.is_err() || conn.flush().await.is_err() {
            return Written::Failed;
        }
        drop(body);
        return match (upgrade, conn.take_stream()) {
            (Some(sender), Some(stream)) => {
                let _ = sender.send(stream);
                Written::Upgraded
            }
            _ => Written::Failed,
        };
    }
    let no_body = meta.head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // A client still waiting for `100 Continue` gets the final answer instead
    // and does not send its body: the connection cannot tell what comes next.
    let body_owed = withheld && !conn.decoder.get().is_done();
    let mut keep_alive = meta.keep_alive && !body_owed;
    let mut length = None;
    let mut has_date = verbatim.has_date();
    for (name, value) in &parts.headers {
        if name == header::CONNECTION || name == header::TRANSFER_ENCODING || name.as_str() == "keep-alive" {
            continue;
        }
        if name == header::CONTENT_LENGTH {
            if status.is_informational() || status == StatusCode::NO_CONTENT {
                continue;
            }
            match value.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) {
                Some(n) => length = Some(n),
                None => continue,
            }
        } else if name == header::DATE {
            has_date = true;
        }
        field(buf, name.as_str().as_bytes(), value.as_bytes());
    }
    verbatim.write(buf);
    let exact = body.size_hint().exact();
    let framing = if no_body {
        if meta.head
            && length.is_none()
            && let Some(n) = exact.filter(|&n| n > 0)
        {
            length_field(buf, n);
        }
        Framing::None
    } else if let Some(n) = length {
        Framing::Length(n)
    } else if let Some(n) = exact {
        length_field(buf, n);
        Framing::Length(n)
    } else if !meta.http10 {
        field(buf, b"transfer-encoding", b"chunked");
        Framing::Chunked
    } else {
        keep_alive = false;
        Framing::Close
    };
    if !keep_alive {
        field(buf, b"connection", b"close");
    } else if meta.http10 {
        field(buf, b"connection", b"keep-alive");
    }
    if !has_date {
        date(buf);
    }
    buf.extend_from_slice(b"\r\n");
    super::maps::give(parts.headers);

    let complete = match framing {
        Framing::None => {
            drop(body);
            true
        }
        _ => match send_body(conn, &mut body, buf, framing, meta.trailers).await {
            Ok(complete) => complete,
            Err(_) => return Written::Failed,
        },
    };
    if conn.write_all(buf).await.is_err() || conn.flush().await.is_err() {
        return Written::Failed;
    }
    match (complete, keep_alive) {
        (false, _) => Written::Failed,
        (true, true) => Written::KeepAlive,
        (true, false) => Written::Close,
    }
}

/// Appends `n` in `radix` (10 or 16) without allocating.
pub(super) fn number(out: &mut Vec<u8>, mut n: u64, radix: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[(n % radix) as usize];
        n /= radix;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn length_field(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    number(out, n, 10);
    out.extend_from_slice(b"\r\n");
}

/// Streams the body after the head gathered in `buf`; whatever is left in
/// `buf` is written by the caller. `Ok(false)`: the body failed or did not
/// match its length, and the connection must close.
async fn send_body(
    conn: &Conn,
    body: &mut ResponseBody,
    buf: &mut Vec<u8>,
    framing: Framing,
    trailers_ok: bool,
) -> std::io::Result<bool> {
    let mut sent = 0u64;
    let mut trailers: Option<HeaderMap> = None;
    loop {
        if let Framing::Length(n) = framing
            && sent == n
        {
            return Ok(true);
        }
        if body.is_end_stream() {
            break;
        }
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                // Nothing more right now: what is gathered goes out first.
                if !buf.is_empty() {
                    conn.write_all(buf).await?;
                    buf.clear();
                    // TLS may hold records back until flushed: a streamed
                    // event must not wait for the next one.
                    conn.flush().await?;
                }
                poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
            }
        };
        let frame = match frame {
            None => break,
            Some(Err(_)) => return Ok(false),
            Some(Ok(frame)) => frame,
        };
        let mut data: Bytes = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        let mut overflow = false;
        if let Framing::Length(n) = framing
            && sent + data.len() as u64 > n
        {
            data.truncate((n - sent) as usize);
            overflow = true;
        }
        sent += data.len() as u64;
        if let Framing::Chunked = framing {
            number(buf, data.len() as u64, 16);
            buf.extend_from_slice(b"\r\n");
        }
        if data.len() >= GATHER {
            conn.write_all(buf).await?;
            buf.clear();
            conn.write_all(&data).await?;
        } else {
            buf.extend_from_slice(&data);
        }
        if let Framing::Chunked = framing {
            buf.extend_from_slice(b"\r\n");
        }
        if overflow {
            return Ok(false);
        }
        if buf.len() >= GATHER {
            conn.write_all(buf).await?;
            buf.clear();
        }
    }
    match framing {
        Framing::Length(n) => Ok(sent == n),
        Framing::Chunked => {
            buf.extend_from_slice(b"0\r\n");
            if let (true, Some(trailers)) = (trailers_ok, trailers) {
                fields(buf, &trailers);
            }
            buf.extend_from_slice(b"\r\n");
            Ok(true)
        }
        Framing::Close | Framing::None => Ok(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_decimal_and_hex() {
        for n in [0u64, 7, 10, 255, 4096, 1 << 40, u64::MAX] {
            let mut out = Vec::new();
            number(&mut out, n, 10);
            assert_eq!(out, n.to_string().into_bytes());
            out.clear();
            number(&mut out, n, 16);
            assert_eq!(out, format!("{n:x}").into_bytes());
        }
    }

    #[test]
    fn the_date_field_is_an_http_date() {
        let mut out = Vec::new();
        date(&mut out);
        let text = String::from_utf8(out).unwrap();
        let value = text.strip_prefix("date: ").unwrap().strip_suffix("\r\n").unwrap();
        assert!(httpdate::parse_http_date(value).is_ok(), "{value}");
    }
}
