//! Request heads: bytes to an `http::Request`, and how its body is framed.
//!
//! The rules that keep a proxy from being used to smuggle requests
//! (RFC 9112 §6): a body is framed by `Transfer-Encoding: chunked` or by one
//! `Content-Length`, never both and never anything else; a framing this
//! server cannot follow is rejected and the connection closed, so that no
//! byte of such a body is ever read as the next request.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};

pub(super) use super::super::headers::content_length;
use super::super::headers::{is_websocket_upgrade, valid_host};
use super::super::verbatim::{self, Verbatim};

/// The most a request head may take, request line and fields.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most fields a request head may have.
pub const MAX_FIELDS: usize = 100;

/// How a request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A parsed request head and what the connection needs to know about it.
#[derive(Debug)]
pub struct Head {
    pub request: Request<()>,
    pub framing: Framing,
    /// The client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// `Connection: upgrade` with an `Upgrade` field.
    pub upgrade: bool,
    /// The client accepts trailer fields in a chunked response (`TE: trailers`).
    pub trailers: bool,
    /// Fields forwarded as they came, not in the request's map.
    pub verbatim: Verbatim,
}

/// A head this server will not serve: the status to answer with, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub status: StatusCode,
    pub reason: &'static str,
}

const fn reject(status: StatusCode, reason: &'static str) -> Rejection {
    Rejection { status, reason }
}

fn bad(reason: &'static str) -> Rejection {
    reject(StatusCode::BAD_REQUEST, reason)
}

/// A request line longer than this, in a head too large, gets 414 (URI Too Long).
const MAX_REQUEST_LINE: usize = 16 * 1024;

/// Whether the request line ends in a well-formed HTTP version other than
/// 1.x: `HTTP/d.d`, or `HTTP/d` as HTTP/2 and HTTP/3 name themselves.
/// `HTTP/1` alone is no version (RFC 9112 §2.3: `HTTP/1.` and a minor
/// digit): a malformed request line, not one this server lacks.
fn other_http_version(buf: &[u8]) -> bool {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or(buf);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.split(|&b| b == b' ').count() != 3 {
        return false;
    }
    match line.rsplit(|&b| b == b' ').next() {
        Some([b'H', b'T', b'T', b'P', b'/', major, rest @ ..]) if major.is_ascii_digit() => match rest {
            [] => *major != b'1',
            [b'.', minor] => minor.is_ascii_digit(),
            _ => false,
        },
        _ => false,
    }
}

/// Where the minor digit of an `HTTP/1.x` request line with x above 1 is.
/// RFC 9110 §2.5: such a request is handled as the highest 1.x this
/// server speaks, 1.1.
fn later_minor(buf: &[u8]) -> Option<usize> {
    let end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = &buf[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.split(|&b| b == b' ').count() != 3 {
        return None;
    }
    match line {
        [.., b' ', b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'2'..=b'9'] => Some(line.len() - 1),
        _ => None,
    }
}

/// Offsets of one field in the buffer: name start, name end, value start, value end.
pub(super) type Span = (usize, usize, usize, usize);

/// Parses the head at the start of `buf`. `Ok(None)`: not complete yet.
/// A complete head is split off `buf`, leaving what follows it (a body, the
/// next request).
pub fn parse(buf: &mut BytesMut) -> Result<Option<Head>, Rejection> {
    SPANS.with_borrow_mut(|spans| parse_into(buf, spans))
}

thread_local! {
    /// Field offsets of the head being parsed: reused, so a request costs
    /// neither an allocation nor zeroing a hundred slots.
    pub(super) static SPANS: std::cell::RefCell<Vec<Span>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn parse_into(buf: &mut BytesMut, spans: &mut Vec<Span>) -> Result<Option<Head>, Rejection> {
    let mut fields = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| s.as_ptr() as usize - base;
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= MAX_HEAD {
                let line = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
                return Err(if line > MAX_REQUEST_LINE {
                    reject(StatusCode::URI_TOO_LONG, "request line too long")
                } else {
                    reject(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large")
                });
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(reject(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "too many header fields"));
        }
        Err(httparse::Error::Version) if let Some(minor) = later_minor(buf) => {
            buf[minor] = b'1';
            return parse_into(buf, spans);
        }
        Err(httparse::Error::Version) if other_http_version(buf) => {
            return Err(reject(StatusCode::HTTP_VERSION_NOT_SUPPORTED, "unsupported HTTP version"));
        }
        Err(_) => return Err(bad("malformed request head")),
    };
    if len > MAX_HEAD {
        return Err(reject(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large"));
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(bad("malformed request line"));
    };
    let method = (offset(method.as_bytes()), method.len());
    let target = (offset(target.as_bytes()), target.len());
    spans.clear();
    spans.extend(req.headers.iter().map(|field| {
        let name = offset(field.name.as_bytes());
        let value = offset(field.value);
        (name, name + field.name.len(), value, value + field.value.len())
    }));
    let head = buf.split_to(len).freeze();
    build(&head, method, target, minor, spans)
}

fn build(
    head: &Bytes,
    method: (usize, usize),
    target: (usize, usize),
    minor: u8,
    spans: &[Span],
) -> Result<Option<Head>, Rejection> {
    let method = Method::from_bytes(&head[method.0..method.0 + method.1]).map_err(|_| bad("invalid method"))?;
    let mut uri =
        Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1)).map_err(|_| bad("invalid request target"))?;
    let http10 = minor == 0;
    let mut headers = super::maps::take(spans.len() + 6);
    let mut length: Option<u64> = None;
    let mut length_fields = 0;
    let mut length_list = false;
    let mut length_zeros = false;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut other_coding = false;
    let (mut close, mut keep_alive, mut connection_upgrade) = (false, false, false);
    let (mut expect_continue, mut trailers) = (false, false);
    let mut hosts = 0;
    let mut verbatim = Verbatim::default();
    // A line that could not be kept: the kept ones went to the map, and so
    // do all that follow (the lines of one name stay in their order).
    let mut spilled = false;
    // `Connection` names a field: whatever it names must be found in the map.
    let mut names_fields = false;
    for &(ns, ne, vs, ve) in spans {
        if !spilled && verbatim::request_name(&head[ns..ne]) {
            if verbatim.keep(head, ns, line_end(head, ve)) {
                continue;
            }
            spilled = true;
            verbatim.into_map(&mut headers);
        }
        let name = super::maps::field_name(&head[ns..ne]).map_err(|_| bad("invalid field name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve)).map_err(|_| bad("invalid field value"))?;
        let bytes = &head[vs..ve];
        if name == header::CONTENT_LENGTH {
            length_fields += 1;
            length_list |= bytes.contains(&b',');
            length_zeros |= bytes.len() > 1 && bytes[0] == b'0';
            for item in bytes.split(|&b| b == b',') {
                let n = content_length(trim(item)).ok_or(bad("invalid Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(bad("conflicting Content-Length values"));
                }
                length = Some(n);
            }
        } else if name == header::TRANSFER_ENCODING {
            if http10 {
                return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
            }
            transfer_encoding = true;
            for coding in bytes.split(|&b| b == b',').map(trim).filter(|c| !c.is_empty()) {
                if chunked {
                    return Err(bad("chunked is not the final transfer coding"));
                }
                if coding.eq_ignore_ascii_case(b"chunked") {
                    chunked = true;
                } else {
                    other_coding = true;
                }
            }
        } else if name == header::CONNECTION {
            for token in bytes.split(|&b| b == b',').map(trim) {
                let (c, k, u) = (
                    token.eq_ignore_ascii_case(b"close"),
                    token.eq_ignore_ascii_case(b"keep-alive"),
                    token.eq_ignore_ascii_case(b"upgrade"),
                );
                (close, keep_alive, connection_upgrade) = (close | c, keep_alive | k, connection_upgrade | u);
                names_fields |= !(c || k || u || token.is_empty());
            }
        } else if name == header::HOST {
            hosts += 1;
            if hosts > 1 {
                return Err(bad("more than one Host field"));
            }
            if !valid_host(bytes) {
                return Err(bad("invalid Host field"));
            }
        } else if name == header::EXPECT {
            expect_continue |= !http10 && trim(bytes).eq_ignore_ascii_case(b"100-continue");
        } else if name == header::TE {
            trailers |= bytes.split(|&b| b == b',').any(|t| trim(t).eq_ignore_ascii_case(b"trailers"));
        }
        headers.append(name, value);
    }
    if names_fields {
        verbatim.into_map(&mut headers);
    }
    let framing = if transfer_encoding {
        if length.is_some() {
            return Err(bad("both Transfer-Encoding and Content-Length"));
        }
        if other_coding || !chunked {
            return Err(reject(StatusCode::NOT_IMPLEMENTED, "unsupported transfer coding"));
        }
        Framing::Chunked
    } else {
        match length {
            Some(0) | None => Framing::None,
            Some(n) => Framing::Length(n),
        }
    };
    // Equal values, listed or repeated, go on as one field, and without
    // leading zeros: backends read such values differently.
    if let (Some(n), true) = (length, length_fields > 1 || length_list || length_zeros) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    // RFC 9112 §3.2.2: an absolute-form target's authority is the host;
    // a Host field that says otherwise is replaced. It is checked as a Host
    // field is, and user info in it is refused (RFC 9110 §4.2.4).
    if let Some(authority) = uri.authority()
        && method != Method::CONNECT
    {
        if uri.scheme().is_none() {
            // The authority form is for CONNECT alone (RFC 9112 §3.2.3).
            return Err(bad("invalid request target"));
        }
        if authority.as_str().contains('@') {
            return Err(bad("user info in the request target"));
        }
        if authority.host().is_empty() || !valid_host(authority.as_str().as_bytes()) {
            return Err(bad("invalid request target"));
        }
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| bad("invalid request target"))?;
        headers.insert(header::HOST, host);
        // `http://host?q` has an empty path: its origin form is `/?q`
        // (RFC 9112 §3.2.1), never a target starting with `?`.
        let origin =
            uri.path_and_query().map(|pq| pq.as_str()).filter(|pq| pq.starts_with('?')).map(|q| format!("/{q}"));
        if let Some(origin) = origin {
            let mut parts = uri.into_parts();
            parts.path_and_query = Some(origin.parse().map_err(|_| bad("invalid request target"))?);
            uri = Uri::from_parts(parts).map_err(|_| bad("invalid request target"))?;
        }
    }
    // Only a WebSocket upgrade reaches the tunnel: any other (`h2c` above
    // all, RFC 9113 §3.1) is ignored, its fields removed as hop-by-hop.
    let websocket = connection_upgrade && is_websocket_upgrade(&headers);
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if http10 { Version::HTTP_10 } else { Version::HTTP_11 };
    *request.headers_mut() = headers;
    Ok(Some(Head {
        request,
        framing,
        keep_alive: !close && (!http10 || keep_alive),
        expect_continue: expect_continue && framing != Framing::None,
        // RFC 9110 §7.8: no upgrade for HTTP/1.0; none under a body either
        // (its bytes would be both the body and the tunnel's).
        upgrade: websocket && !http10 && framing == Framing::None,
        trailers,
        verbatim,
    }))
}

/// Where the line of a field whose value ends at `value_end` ends: after
/// its line feed (the parser has checked there is one, after at most
/// whitespace).
pub(super) fn line_end(head: &[u8], value_end: usize) -> usize {
    head[value_end..].iter().position(|&b| b == b'\n').map_or(head.len(), |at| value_end + at + 1)
}

pub(in crate::proxy) fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Result<Option<Head>, Rejection> {
        parse(&mut BytesMut::from(text))
    }

    fn status(text: &str) -> StatusCode {
        parsed(text).expect_err("rejected").status
    }

    #[test]
    fn a_complete_head_is_split_off_and_the_rest_stays() {
        let mut buf = BytesMut::from("POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET");
        let head = parse(&mut buf).unwrap().unwrap();
        assert_eq!(&buf[..], b"abcGET");
        assert_eq!(head.request.method(), Method::POST);
        assert_eq!(head.request.uri(), "/a?b=1");
        assert_eq!(head.request.headers()["host"], "x");
        assert_eq!(head.framing, Framing::Length(3));
        assert!(head.keep_alive);
    }

    #[test]
    fn partial_heads_wait_for_more() {
        assert!(parsed("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        assert!(parsed("GE").unwrap().is_none());
    }

    #[test]
    fn framing_that_could_smuggle_is_rejected() {
        let both = "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(status(both), StatusCode::BAD_REQUEST);
        assert_eq!(
            status("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
        for v in ["abc", "-1", "+5", "1 2", "", "0x10", "1234567890123456789"] {
            assert_eq!(
                status(&format!("POST / HTTP/1.1\r\nContent-Length: {v}\r\n\r\n")),
                StatusCode::BAD_REQUEST,
                "{v}"
            );
        }
        assert_eq!(status("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"), StatusCode::NOT_IMPLEMENTED);
        assert_eq!(status("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), StatusCode::NOT_IMPLEMENTED);
        assert_eq!(status("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"), StatusCode::BAD_REQUEST);
        assert_eq!(
            status("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(status("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn equal_content_length_values_and_chunked_are_accepted() {
        let head = parsed("POST / HTTP/1.1\r\nContent-Length: 7, 7\r\nContent-Length: 7\r\n\r\n").unwrap().unwrap();
        assert_eq!(head.framing, Framing::Length(7));
        let values: Vec<_> = head.request.headers().get_all("content-length").iter().collect();
        assert_eq!(values, ["7"], "forwarded as one field");
        let head = parsed("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap().unwrap();
        assert_eq!(head.framing, Framing::Chunked);
        let head = parsed("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").unwrap().unwrap();
        assert_eq!(head.framing, Framing::None);
    }

    #[test]
    fn malformed_heads_are_bad_requests() {
        for text in [
            "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nno colon\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\0b\r\n\r\n",
            "\x01\x02 garbage\r\n\r\n",
        ] {
            assert_eq!(status(text), StatusCode::BAD_REQUEST, "{text:?}");
        }
        assert_eq!(status("GET / HTTP/2.0\r\n\r\n"), StatusCode::HTTP_VERSION_NOT_SUPPORTED);
        assert_eq!(status("GET / HTTP/3\r\n\r\n"), StatusCode::HTTP_VERSION_NOT_SUPPORTED);
        assert_eq!(status("GET / FTP/1.1\r\n\r\n"), StatusCode::BAD_REQUEST);
        assert_eq!(status("GET /a b HTTP/1.1\r\n\r\n"), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn oversized_heads_are_refused() {
        let long_line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(status(&long_line), StatusCode::URI_TOO_LONG);
        let big_field = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(status(&big_field), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let many: String = (0..=MAX_FIELDS).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert_eq!(status(&format!("GET / HTTP/1.1\r\n{many}\r\n")), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    #[test]
    fn connection_semantics() {
        let h = |t: &str| parsed(t).unwrap().unwrap();
        assert!(!h("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!h("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(h("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(h("GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n").upgrade);
        assert!(!h("GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").upgrade);
        assert!(!h("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n").upgrade);
        let with_body = "POST / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: x\r\nContent-Length: 1\r\n\r\n";
        assert!(!h(with_body).upgrade);
        assert!(h("PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n").expect_continue);
        assert!(!h("GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n").expect_continue, "no body, nothing to wait for");
        assert!(h("GET / HTTP/1.1\r\nTE: trailers\r\n\r\n").trailers);
        let absolute = h("GET http://shop.example.com/x HTTP/1.1\r\nHost: other.example\r\n\r\n");
        assert_eq!(absolute.request.uri().host(), Some("shop.example.com"));
        assert_eq!(absolute.request.headers()["host"], "shop.example.com", "the target's authority wins");
    }

    #[test]
    fn host_fields_are_checked() {
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n"), StatusCode::BAD_REQUEST);
        for bad in ["a b", "exa/mple.com", "user@host", "h\"x"] {
            assert_eq!(status(&format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n")), StatusCode::BAD_REQUEST, "{bad}");
        }
        for good in ["shop.example.com:8080", "[::1]:80", "127.0.0.1", "xn--bcher-kva.example"] {
            assert!(parsed(&format!("GET / HTTP/1.1\r\nHost: {good}\r\n\r\n")).is_ok(), "{good}");
        }
    }

    #[test]
    fn leading_zeros_in_content_length_are_valid_however_many() {
        let zeros = "0".repeat(40);
        let head = parsed(&format!("POST / HTTP/1.1\r\nContent-Length: {zeros}7\r\n\r\n")).unwrap().unwrap();
        assert_eq!(head.framing, Framing::Length(7));
        assert_eq!(head.request.headers()["content-length"], "7", "forwarded without the zeros");
        let head = parsed(&format!("POST / HTTP/1.1\r\nContent-Length: {zeros}\r\n\r\n")).unwrap().unwrap();
        assert_eq!(head.framing, Framing::None);
        assert_eq!(head.request.headers()["content-length"], "0");
        let plain = parsed("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n").unwrap().unwrap();
        assert_eq!(plain.request.headers()["content-length"], "10");
    }

    #[test]
    fn a_later_http_1_minor_version_is_served_as_1_1() {
        for minor in 2..=9 {
            let head = parsed(&format!("GET /v HTTP/1.{minor}\r\nHost: x\r\n\r\n")).unwrap().unwrap();
            assert_eq!(head.request.version(), Version::HTTP_11, "1.{minor}");
            assert_eq!(head.request.uri(), "/v");
            assert!(head.keep_alive);
        }
        assert!(parsed("GET / HTTP/1.2\r\nHost: x\r\n").unwrap().is_none(), "partial: waits");
        assert_eq!(status("GET / HTTP/1.12\r\n\r\n"), StatusCode::BAD_REQUEST);
        assert_eq!(status("GET / HTTP/2.1\r\n\r\n"), StatusCode::HTTP_VERSION_NOT_SUPPORTED);
    }

    #[test]
    fn an_absolute_form_target_is_checked_like_a_host() {
        for target in ["http://user:pw@shop.example.com/", "http://user@shop.example.com/x"] {
            let rejected = parsed(&format!("GET {target} HTTP/1.1\r\nHost: shop.example.com\r\n\r\n"));
            assert_eq!(rejected.unwrap_err(), bad("user info in the request target"), "{target}");
        }
        assert_eq!(status("GET shop.example.com:80 HTTP/1.1\r\nHost: x\r\n\r\n"), StatusCode::BAD_REQUEST);
        let h = parsed("PATCH http://shop.example.com?a=1 HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.request.uri().path_and_query().unwrap(), "/?a=1", "an empty path is /");
        let h = parsed("GET https://[::1]:8443/a?b HTTP/1.1\r\nHost: other\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.request.headers().get_all("host").iter().collect::<Vec<_>>(), ["[::1]:8443"]);
    }

    #[test]
    fn only_a_websocket_upgrade_is_an_upgrade() {
        let h = |t: &str| parsed(t).unwrap().unwrap();
        let h2c = "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
                   HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n";
        assert!(!h(h2c).upgrade);
        assert!(!h("GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c, websocket\r\n\r\n").upgrade);
        assert!(!h("GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n\r\n").upgrade);
        assert!(h("GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: WebSocket\r\n\r\n").upgrade);
    }
}
