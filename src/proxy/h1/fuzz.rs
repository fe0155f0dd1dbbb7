//! The parsers of untrusted bytes, reachable from the property tests
//! (`tests/fuzz_parsers.rs`) with nothing around them: the request-head
//! parser, the head the proxy writes for a backend, the chunk decoder and
//! the response-head parser. Not an API: thin wrappers only, so that what
//! the tests exercise is the code that serves traffic.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Request, Response, Uri};
use http_body::{Frame, SizeHint};

use super::super::headers::{self, Forwarded};
use super::super::verbatim::Verbatim;
use super::decode::{Decoder, Step};
use super::parse::{self, Framing};

/// A request head the HTTP/1.1 server accepted.
#[derive(Debug)]
pub struct Parsed {
    /// The request, with the fields the server keeps in its map.
    pub request: Request<()>,
    /// The fields it keeps as they came, forwarded after those.
    pub verbatim: Verbatim,
    /// `Some(n)`: a body of `n` bytes; `None`: none, or chunked.
    pub length: Option<u64>,
    pub chunked: bool,
    pub keep_alive: bool,
    /// A WebSocket upgrade the server would hand its stream over for.
    pub upgrade: bool,
    /// How many bytes of the input the head took.
    pub consumed: usize,
}

/// Parses the request head at the start of `bytes`. `Ok(None)`: not
/// complete; `Err`: the status the server refuses it with.
pub fn parse_request(bytes: &[u8]) -> Result<Option<Parsed>, u16> {
    let mut buf = BytesMut::from(bytes);
    let head = parse::parse(&mut buf).map_err(|r| r.status.as_u16())?;
    Ok(head.map(|head| Parsed {
        request: head.request,
        verbatim: head.verbatim,
        length: match head.framing {
            Framing::Length(n) => Some(n),
            Framing::None | Framing::Chunked => None,
        },
        chunked: head.framing == Framing::Chunked,
        keep_alive: head.keep_alive,
        upgrade: head.upgrade,
        consumed: bytes.len() - buf.len(),
    }))
}

impl Parsed {
    /// All the request's fields, those kept as they came after the others.
    pub fn fields(&self) -> http::HeaderMap {
        let mut all = self.request.headers().clone();
        self.verbatim.clone().into_map(&mut all);
        all
    }
}

/// A body that is never read: only its framing matters to the head.
struct Framed(Option<u64>, bool);

impl http_body::Body for Framed {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.1
    }

    fn size_hint(&self) -> SizeHint {
        self.0.map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// The head the proxy writes to a backend for `parsed`, from 192.0.2.1 on
/// plain HTTP, route `web`, stable: the service's upstream-head phase
/// (hop-by-hop fields, `Expect`, origin form) and the client's encoding.
pub fn backend_head(parsed: &Parsed) -> Vec<u8> {
    let mut request = Request::new(match (parsed.length, parsed.chunked) {
        (Some(n), _) => Framed(Some(n), false),
        (None, true) => Framed(None, false),
        (None, false) => Framed(Some(0), true),
    });
    *request.method_mut() = parsed.request.method().clone();
    *request.headers_mut() = parsed.request.headers().clone();
    headers::remove_hop_by_hop(request.headers_mut(), parsed.upgrade);
    request.headers_mut().remove(header::EXPECT);
    let origin = parsed.request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    *request.uri_mut() = origin.parse().unwrap_or_else(|_| Uri::from_static("/"));
    let ip = HeaderValue::from_static("192.0.2.1");
    let via = HeaderValue::from_static("1.1 cutover");
    let route = HeaderValue::from_static("web");
    let forwarded = Forwarded { client_ip: &ip, tls: false, via: &via, version: "stable", route: &route };
    let mut out = Vec::new();
    super::client::encode_head(&mut out, &request, &parsed.verbatim, &forwarded);
    out
}

/// A body decoded from `input` fed `read` bytes at a time (at least one),
/// as the connection reads it.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    pub body: Vec<u8>,
    /// Trailer field lines, without their CRLF.
    pub trailers: Vec<Vec<u8>>,
    /// Bytes after the body, left for the next message.
    pub rest: Vec<u8>,
}

/// Decodes a chunked body. `Ok(None)`: the input ended before the body did.
pub fn decode_chunked(input: &[u8], read: usize) -> Result<Option<Decoded>, &'static str> {
    let mut decoder = Decoder::Size;
    let mut buf = BytesMut::new();
    let (mut body, mut trailers, mut fed) = (Vec::new(), Vec::new(), 0);
    loop {
        match decoder.decode(&mut buf).map_err(|m| m.0)? {
            Step::Data(data) => body.extend_from_slice(&data),
            Step::Trailer(line) => trailers.push(line.to_vec()),
            Step::End => {
                let rest = [&buf[..], &input[fed..]].concat();
                return Ok(Some(Decoded { body, trailers, rest }));
            }
            Step::More if fed == input.len() => return Ok(None),
            Step::More => {
                let n = read.max(1).min(input.len() - fed);
                buf.extend_from_slice(&input[fed..fed + n]);
                fed += n;
            }
        }
    }
}

/// Parses a backend's response head at the start of `bytes` (`head_request`:
/// it answers a HEAD), with all its fields in its map: `lines`, as for an
/// HTTP/1.1 client (those the proxy keeps as they came after the others),
/// or not, as for an HTTP/2 client. `Ok(None)`: not complete; `Err`: why it
/// is invalid.
pub fn parse_response(bytes: &[u8], head_request: bool, lines: bool) -> Result<Option<Response<()>>, String> {
    let mut buf = BytesMut::from(bytes);
    match super::client::parse(&mut buf, super::client::Asked { head: head_request, lines }) {
        Ok(head) => Ok(head.map(|mut h| {
            h.verbatim.into_map(h.response.headers_mut());
            h.response
        })),
        Err(e) => Err(e.detail),
    }
}
