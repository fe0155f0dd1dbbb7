//! Header hygiene between client and backend.
//!
//! RFC 9110 §7.6.1: a proxy removes the hop-by-hop fields (`Connection` and
//! every field it names, plus `Keep-Alive`, `Proxy-Connection`, `TE`,
//! `Trailer`, `Transfer-Encoding`, `Upgrade`) before forwarding. An upgrade
//! request keeps `Upgrade` and `Connection: upgrade`, which the tunnel needs.
//! RFC 7239's predecessors `X-Forwarded-For/-Proto/-Host` and RFC 9110 §7.6.3
//! `Via` tell the backend where the request came from.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::verbatim::Verbatim;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_CUTOVER_VERSION: HeaderName = HeaderName::from_static("x-cutover-version");
pub static X_CUTOVER_ROUTE: HeaderName = HeaderName::from_static("x-cutover-route");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// RFC 9113 §3.2.1 (RFC 7540): the settings of an h2c upgrade, a
/// connection-specific field. RFC 9113 §3.1 removed that upgrade: it is
/// never forwarded, whatever `Connection` says.
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// A Host value, or an authority used as one: `uri-host [":" port]` and no
/// user info (RFC 9110 §7.2, §4.2.4; RFC 3986 §3.2.2, §3.2.3). The host is
/// an IPv6 literal in brackets or a reg-name (an IPv4 address is one):
/// unreserved, sub-delims and percent-encoded octets, never empty — `:80`
/// names no host to route by (RFC 9110 §4.2.1 makes an http URI with an
/// empty host invalid). The port is digits; an empty port (`host:`) is in
/// the grammar and means the default port (RFC 3986 §6.2.3); a port above
/// 65535 is refused: no TCP port is, and a backend that keeps the number in
/// 16 or 32 bits would read another one (`:65616` is `:80` to one that
/// wraps), so the host it sees would not be the one routed. An empty value
/// is no Host at all (RFC 9110 §7.2): the callers treat it as absent.
pub fn valid_host(value: &[u8]) -> bool {
    if value.is_empty() {
        return true;
    }
    let (host, port) = match value.strip_prefix(b"[") {
        Some(literal) => match literal.iter().position(|&b| b == b']') {
            Some(end) => (ipv6_literal(&literal[..end]), &literal[end + 1..]),
            None => return false,
        },
        None => {
            let end = value.iter().position(|&b| b == b':').unwrap_or(value.len());
            (reg_name(&value[..end]), &value[end..])
        }
    };
    host && match port {
        [] => true,
        [b':', digits @ ..] => digits.is_empty() || decimal(digits).is_some_and(|port| port <= 65_535),
        _ => false,
    }
}

/// The inside of an IP literal: an IPv6 address (no IPvFuture, no zone).
fn ipv6_literal(text: &[u8]) -> bool {
    std::str::from_utf8(text).is_ok_and(|t| t.parse::<std::net::Ipv6Addr>().is_ok())
}

/// A reg-name that is not empty (RFC 3986 §3.2.2): unreserved, sub-delims
/// and percent-encoded octets.
fn reg_name(mut name: &[u8]) -> bool {
    if name.is_empty() {
        return false;
    }
    // Most names have no percent-encoding: one table lookup per byte.
    if name.iter().all(|&b| REG_NAME[usize::from(b)]) {
        return true;
    }
    while let Some((&b, rest)) = name.split_first() {
        name = match (b, rest) {
            (b'%', [high, low, rest @ ..]) if high.is_ascii_hexdigit() && low.is_ascii_hexdigit() => rest,
            _ if REG_NAME[usize::from(b)] => rest,
            _ => return false,
        };
    }
    true
}

/// The bytes a reg-name holds as they are: unreserved and sub-delims.
const REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
            );
        i += 1;
    }
    table
};

/// A Content-Length value (RFC 9110 §8.6): one or more digits, nothing else
/// (no sign, no space). Leading zeros are valid however many there are;
/// values above 18 significant digits are refused (no body is that long).
pub fn content_length(digits: &[u8]) -> Option<u64> {
    decimal(digits)
}

/// One or more digits and nothing else, however many leading zeros; `None`
/// above 18 significant digits (nothing cutover counts is that large).
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let significant = &digits[digits.iter().position(|&d| d != b'0').unwrap_or(digits.len())..];
    if significant.len() > 18 {
        return None;
    }
    Some(significant.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Where a TRACE or OPTIONS request goes after this hop.
#[derive(Debug, PartialEq, Eq)]
pub enum Hops {
    /// On to the backend, with `Max-Forwards` set to this (one less than
    /// it came with), or without one when it came without.
    Forward(Option<HeaderValue>),
    /// Nowhere: `Max-Forwards` is 0, the proxy is the final recipient.
    Last,
}

/// RFC 9110 §7.6.2: an intermediary must check and lower a TRACE or
/// OPTIONS request's `Max-Forwards` before forwarding it, and at 0 must
/// not forward it but answer as the final recipient. One field of
/// `1*DIGIT`, or the request is malformed; a count too large for 64 bits
/// is as good as the largest.
pub fn max_forwards(headers: &HeaderMap) -> Result<Hops, &'static str> {
    let mut values = headers.get_all(header::MAX_FORWARDS).iter();
    let Some(value) = values.next() else { return Ok(Hops::Forward(None)) };
    if values.next().is_some() {
        return Err("400 Bad Request: more than one Max-Forwards field\n");
    }
    let digits = value.as_bytes();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err("400 Bad Request: invalid Max-Forwards field\n");
    }
    // Digits that `decimal` cannot hold are more hops than anyone counts.
    match decimal(digits).unwrap_or(u64::MAX) {
        0 => Ok(Hops::Last),
        hops => Ok(Hops::Forward(Some(HeaderValue::from(hops - 1)))),
    }
}

/// One host identity for an HTTP/2 request (RFC 9113 §8.3.1): `:authority`
/// without user info and valid as a Host; at most one `host` field, valid,
/// and the same as `:authority` when both are there (a differing one makes
/// the request malformed rather than being replaced: the client meant one
/// of two hosts, and cutover does not guess which). The backend then gets
/// exactly one `Host`: the authority. A request with neither `:authority`
/// nor a `host` (an empty one is none) is malformed too: an http or https
/// target URI has a host (RFC 9110 §4.2.1), and without one there is none
/// to route by nor to give the HTTP/1.1 backend, which needs a Host (RFC
/// 9112 §3.2). `Err`: the 400 answer's text.
pub fn h2_host(uri: &http::Uri, headers: &mut HeaderMap) -> Result<(), &'static str> {
    let authority = uri.authority().map(|a| a.as_str());
    if let Some(authority) = authority {
        if authority.contains('@') {
            return Err("400 Bad Request: user info in :authority\n");
        }
        if uri.host().is_none_or(str::is_empty) || !valid_host(authority.as_bytes()) {
            return Err("400 Bad Request: invalid :authority\n");
        }
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err("400 Bad Request: more than one host field\n"),
        (host, None) => host,
    };
    if let Some(host) = host {
        if !valid_host(host.as_bytes()) {
            return Err("400 Bad Request: invalid host field\n");
        }
        if authority.is_some_and(|a| !a.as_bytes().eq_ignore_ascii_case(host.as_bytes())) {
            return Err("400 Bad Request: host field differs from :authority\n");
        }
    }
    if authority.is_none() && host.is_none_or(HeaderValue::is_empty) {
        return Err("400 Bad Request: no :authority or host field\n");
    }
    if let Some(value) = authority.and_then(|a| HeaderValue::from_str(a).ok()) {
        headers.insert(header::HOST, value);
    }
    Ok(())
}

/// Whether an `Upgrade` field asks for WebSocket and nothing else: the only
/// upgrade cutover carries as a tunnel it understands (RFC 6455).
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let mut tokens = headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty());
    matches!((tokens.next(), tokens.next()), (Some(t), None) if t.eq_ignore_ascii_case(b"websocket"))
}

/// Whether an HTTP/2 request opens a WebSocket by extended CONNECT
/// (RFC 8441): `:method CONNECT` with `:protocol websocket`.
pub fn is_h2_websocket<B>(req: &http::Request<B>) -> bool {
    req.method() == http::Method::CONNECT
        && req.version() == http::Version::HTTP_2
        && req.extensions().get::<hyper::ext::Protocol>().is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// Turns the head of an RFC 8441 WebSocket request, after
/// [`remove_hop_by_hop`] for an upgrade (which sets `Connection: upgrade`),
/// into an HTTP/1.1 upgrade request for the backend: GET with
/// `Upgrade: websocket` and a fresh `Sec-WebSocket-Key` (an HTTP/2 client
/// sends none). The client's `Sec-WebSocket-Version`, `-Protocol` and
/// `-Extensions` pass through.
pub fn h2_websocket_to_http11(method: &mut http::Method, headers: &mut HeaderMap, key: [u8; 16]) {
    *method = http::Method::GET;
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(value) = HeaderValue::from_str(&base64(&key)) {
        headers.insert(header::SEC_WEBSOCKET_KEY, value);
    }
}

/// The backend's `101 Switching Protocols`, its hop-by-hop fields (`Upgrade`
/// and `Connection` among them) removed by [`remove_hop_by_hop`] as for any
/// response, as the HTTP/2 client's `200` (RFC 8441 §5).
pub fn http11_upgrade_to_h2_websocket(status: &mut http::StatusCode, headers: &mut HeaderMap) {
    *status = http::StatusCode::OK;
    for name in [header::SEC_WEBSOCKET_ACCEPT, header::CONTENT_LENGTH] {
        headers.remove(name);
    }
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            let sextet = (n >> (18 - 6 * i)) & 63;
            out.push(if i <= chunk.len() { char::from(ALPHABET[sextet as usize]) } else { '=' });
        }
    }
    out
}

/// Removes hop-by-hop fields. With `upgrade`, keeps `Upgrade` and sets
/// `Connection: upgrade`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over the names finds what is there: most messages carry at
    // most a Connection field, and a lookup per absent name costs a hash each.
    let (mut connection, mut upgrade_field, mut fixed) = (false, false, false);
    for name in headers.keys() {
        match name.as_str() {
            "connection" => connection = true,
            "upgrade" => upgrade_field = true,
            "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "proxy-authorization"
            | "http2-settings" => fixed = true,
            _ => {}
        }
    }
    if connection {
        // Fields named in any Connection value are hop-by-hop too. Browsers
        // and most servers send only `keep-alive` or `close`: copy the values
        // (cloning a HeaderValue only bumps a reference count) only when some
        // other field is named.
        if names_fields(headers, upgrade) {
            let values: Vec<HeaderValue> = headers.get_all(header::CONNECTION).iter().cloned().collect();
            for value in &values {
                let Ok(text) = value.to_str() else { continue };
                for token in text.split(',').map(str::trim).filter(|t| is_named_field(t, upgrade)) {
                    headers.remove(token);
                }
            }
        }
        headers.remove(header::CONNECTION);
    }
    if fixed {
        for name in [
            &KEEP_ALIVE,
            &PROXY_CONNECTION,
            &header::TE,
            &header::TRAILER,
            &header::TRANSFER_ENCODING,
            &header::PROXY_AUTHORIZATION,
            &HTTP2_SETTINGS,
        ] {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if upgrade_field {
        headers.remove(header::UPGRADE);
    }
}

/// Whether a Connection token names a field to remove: anything but `close`,
/// `keep-alive`, for an upgrade `upgrade`, and the end-to-end fields the
/// proxy itself reads to route and frame a message (`Host`, `Cookie`,
/// `Content-Length`): a client naming them would have the backend see a
/// different request than the one cutover routed.
fn is_named_field(token: &str, upgrade: bool) -> bool {
    !(token.is_empty()
        || token.eq_ignore_ascii_case("close")
        || token.eq_ignore_ascii_case("keep-alive")
        || token.eq_ignore_ascii_case("host")
        || token.eq_ignore_ascii_case("cookie")
        || token.eq_ignore_ascii_case("content-length")
        || (upgrade && token.eq_ignore_ascii_case("upgrade")))
}

fn names_fields(headers: &HeaderMap, upgrade: bool) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').map(str::trim).any(|t| is_named_field(t, upgrade)))
}

/// What the proxy tells the backend about the request.
pub struct Forwarded<'a> {
    /// The client's address, formatted once per connection.
    pub client_ip: &'a HeaderValue,
    pub tls: bool,
    /// The `Via` entry of this hop, e.g. `1.1 cutover`.
    pub via: &'a HeaderValue,
    pub version: &'static str,
    pub route: &'a HeaderValue,
}

/// Writes `headers` as HTTP/1.1 field lines for the backend, then the
/// lines kept as they came (`verbatim`), then this hop's forwarding
/// fields: `X-Forwarded-For` and `Via` get it appended (the client's lines
/// merged into one); `X-Forwarded-Proto`, `-Host` (the
/// Host field) and `X-Cutover-*` replace whatever the client sent. Written
/// straight into the request head rather than added to the map first.
/// Returns the body length the fields announce; a Content-Length that is
/// not a number is left out.
pub fn write_forwarded(out: &mut Vec<u8>, headers: &HeaderMap, verbatim: &Verbatim, f: &Forwarded<'_>) -> Option<u64> {
    let (mut forwarded_for, mut via, mut host, mut length) = (false, false, None, None);
    for (name, value) in headers {
        match name.as_str() {
            "x-forwarded-for" => forwarded_for = true,
            "via" => via = true,
            "x-forwarded-proto" | "x-forwarded-host" | "x-cutover-version" | "x-cutover-route" => {}
            "content-length" => {
                let digits = value.as_bytes();
                if let Some(n) = content_length(digits) {
                    length = Some(n);
                    // Without leading zeros: valid, but not every backend reads them.
                    let start = digits.iter().position(|&d| d != b'0').unwrap_or(digits.len() - 1);
                    line(out, b"content-length", &[&digits[start..]]);
                }
            }
            other => {
                if name == header::HOST {
                    host = Some(value);
                }
                line(out, other.as_bytes(), &[value.as_bytes()]);
            }
        }
    }
    verbatim.write(out);
    list(out, b"x-forwarded-for", forwarded_for.then(|| headers.get_all(&X_FORWARDED_FOR)), f.client_ip);
    line(out, b"x-forwarded-proto", &[if f.tls { b"https" } else { b"http" }]);
    if let Some(host) = host {
        line(out, b"x-forwarded-host", &[host.as_bytes()]);
    }
    list(out, b"via", via.then(|| headers.get_all(header::VIA)), f.via);
    line(out, b"x-cutover-version", &[f.version.as_bytes()]);
    line(out, b"x-cutover-route", &[f.route.as_bytes()]);
    length
}

/// One field line, its value written from `parts`.
fn line(out: &mut Vec<u8>, name: &[u8], parts: &[&[u8]]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    for part in parts {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(b"\r\n");
}

/// A comma-separated list field: the client's lines, then this hop's entry.
fn list(out: &mut Vec<u8>, name: &[u8], existing: Option<header::GetAll<'_, HeaderValue>>, entry: &HeaderValue) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    for value in existing.into_iter().flatten() {
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(entry.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// HTTP/2 may split `cookie` into several fields; an HTTP/1.1 backend needs
/// one, joined with "; " (RFC 9113 §8.2.3).
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut fields = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (fields.next(), fields.next()) else { return };
    let mut joined = first.as_bytes().to_vec();
    for more in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(more.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn removes_standard_hop_by_hop_and_every_field_named_in_any_connection_value() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("connection", "x-other"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic x"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut h, false);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-kept"]);
    }

    #[test]
    fn upgrade_keeps_upgrade_and_connection_upgrade() {
        let mut h = map(&[("connection", "Upgrade, x-private"), ("upgrade", "websocket"), ("x-private", "1")]);
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert!(h.get("x-private").is_none());
    }

    #[test]
    fn forwarding_appends_for_and_via_and_replaces_the_rest() {
        let h = map(&[
            ("host", "shop.example.com"),
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-for", "198.51.100.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("via", "1.1 edge"),
            ("x-cutover-version", "canary"),
            ("content-length", "12"),
            ("accept", "*/*"),
        ]);
        let ip = HeaderValue::from_static("192.0.2.9");
        let via = HeaderValue::from_static("1.1 cutover");
        let route = HeaderValue::from_static("web");
        let f = Forwarded { client_ip: &ip, tls: false, via: &via, version: "stable", route: &route };
        let mut out = Vec::new();
        assert_eq!(write_forwarded(&mut out, &h, &Verbatim::default(), &f), Some(12));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "host: shop.example.com\r\n\
             content-length: 12\r\n\
             accept: */*\r\n\
             x-forwarded-for: 203.0.113.1, 198.51.100.2, 192.0.2.9\r\n\
             x-forwarded-proto: http\r\n\
             x-forwarded-host: shop.example.com\r\n\
             via: 1.1 edge, 1.1 cutover\r\n\
             x-cutover-version: stable\r\n\
             x-cutover-route: web\r\n"
        );
        // Without a Host (HTTP/1.0), no X-Forwarded-Host, not even the client's.
        let h = map(&[("x-forwarded-host", "evil.example"), ("content-length", "+5")]);
        let f = Forwarded { tls: true, ..f };
        let mut out = Vec::new();
        assert_eq!(write_forwarded(&mut out, &h, &Verbatim::default(), &f), None, "not a number");
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("x-forwarded-host") && !text.contains("content-length"), "{text}");
        assert!(text.contains("x-forwarded-proto: https\r\n"), "{text}");
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let vectors =
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("foobar", "Zm9vYmFy")];
        for (input, want) in vectors {
            assert_eq!(base64(input.as_bytes()), want);
        }
        assert_eq!(base64(b"the sample nonce"), "dGhlIHNhbXBsZSBub25jZQ==");
    }

    #[test]
    fn h2_websocket_becomes_an_http11_upgrade_and_back() {
        // The order of the request path: hygiene for an upgrade, then the translation.
        let mut method = http::Method::CONNECT;
        let mut h = map(&[("sec-websocket-version", "13"), ("sec-websocket-protocol", "chat")]);
        remove_hop_by_hop(&mut h, true);
        h2_websocket_to_http11(&mut method, &mut h, *b"the sample nonce");
        assert_eq!(method, http::Method::GET);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert_eq!(h.get("sec-websocket-key").unwrap(), "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(h.get("sec-websocket-protocol").unwrap(), "chat");

        let mut status = http::StatusCode::SWITCHING_PROTOCOLS;
        let mut h = map(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ("sec-websocket-protocol", "chat"),
        ]);
        remove_hop_by_hop(&mut h, false);
        http11_upgrade_to_h2_websocket(&mut status, &mut h);
        assert_eq!(status, http::StatusCode::OK);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["sec-websocket-protocol"]);
    }

    #[test]
    fn split_cookie_fields_are_joined() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")]);
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h.get("cookie").unwrap(), "a=1; b=2; c=3");
    }

    #[test]
    fn connection_cannot_remove_what_the_proxy_routes_and_frames_by() {
        let mut h = map(&[
            ("connection", "Host, cookie, Content-Length, x-gone"),
            ("host", "shop.example.com"),
            ("cookie", "cutover_id=abc"),
            ("content-length", "3"),
            ("x-gone", "1"),
        ]);
        remove_hop_by_hop(&mut h, false);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["content-length", "cookie", "host"]);
    }

    #[test]
    fn h2c_upgrade_fields_never_pass() {
        let mut h = map(&[("upgrade", "h2c"), ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"), ("x-kept", "1")]);
        remove_hop_by_hop(&mut h, false);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-kept"]);
        assert!(is_websocket_upgrade(&map(&[("upgrade", " WebSocket ")])));
        assert!(!is_websocket_upgrade(&map(&[("upgrade", "h2c")])));
        assert!(!is_websocket_upgrade(&map(&[("upgrade", "websocket, h2c")])));
        assert!(!is_websocket_upgrade(&map(&[])));
    }

    #[test]
    fn an_http2_request_has_one_host_identity() {
        let uri: http::Uri = "https://shop.example.com/a".parse().unwrap();
        let mut h = map(&[]);
        assert_eq!(h2_host(&uri, &mut h), Ok(()));
        assert_eq!(h.get_all("host").iter().collect::<Vec<_>>(), ["shop.example.com"]);
        let mut h = map(&[("host", "SHOP.example.com")]);
        assert_eq!(h2_host(&uri, &mut h), Ok(()), "host names compare without case");
        assert_eq!(h.get_all("host").iter().collect::<Vec<_>>(), ["shop.example.com"]);
        for (uri, fields, why) in [
            ("https://shop.example.com/", &[("host", "admin.example.com")][..], "host field differs from :authority"),
            (
                "https://shop.example.com/",
                &[("host", "shop.example.com"), ("host", "shop.example.com")],
                "more than one",
            ),
            ("https://u:p@shop.example.com/", &[], "user info in :authority"),
            ("/a", &[("host", "a b")], "invalid host field"),
            ("https://:443/", &[], "invalid :authority"),
            ("https://shop.example.com:https/", &[], "invalid :authority"),
            ("/a", &[], "no :authority or host field"),
            ("/a", &[("host", "")], "no :authority or host field"),
        ] {
            let uri: http::Uri = uri.parse().unwrap();
            let err = h2_host(&uri, &mut map(fields)).expect_err(why);
            assert!(err.contains(why), "{err} for {uri} {fields:?}");
        }
        let mut h = map(&[("host", "shop.example.com")]);
        assert_eq!(h2_host(&"/a".parse().unwrap(), &mut h), Ok(()), "no :authority: the host field is the host");
    }

    #[test]
    fn a_host_is_a_host_and_an_optional_port() {
        for good in [
            "shop.example.com",
            "shop.example.com:8080",
            "shop.example.com:",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8443",
            "[2001:db8::192.0.2.1]:",
            "shop.example.com:65535",
            "shop.example.com:0000000000000000000000080",
            "xn--bcher-kva.example",
            "caf%C3%A9.example",
            "a-b_c~d!$&'()*+,;=",
            "",
        ] {
            assert!(valid_host(good.as_bytes()), "{good:?}");
        }
        for bad in [
            ":80",
            ":",
            "shop.example.com:abc",
            "shop.example.com:80:80",
            "shop.example.com:65536",
            "shop.example.com:65616",
            "[::1]:4294967376",
            "shop.example.com:99999999999999999999999",
            "a:b",
            "[::1",
            "[::1]x",
            "[::1]:8x",
            "[zz]:80",
            "[v1.x]",
            "[fe80::1%25eth0]",
            "::1",
            "%zz.example",
            "%4",
            "a b",
            "user@host",
            "exa/mple.com",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn content_length_takes_leading_zeros() {
        assert_eq!(content_length(b"0000000000000000000000000000042"), Some(42));
        assert_eq!(content_length(b"000"), Some(0));
        assert_eq!(content_length(b"999999999999999999"), Some(999_999_999_999_999_999));
        for bad in [&b""[..], b"1234567890123456789", b"+1", b"1 ", b"0x1"] {
            assert_eq!(content_length(bad), None, "{bad:?}");
        }
        let ip = HeaderValue::from_static("192.0.2.9");
        let route = HeaderValue::from_static("web");
        let f = Forwarded { client_ip: &ip, tls: false, via: &ip, version: "stable", route: &route };
        let mut out = Vec::new();
        let h = map(&[("content-length", "0000012")]);
        assert_eq!(write_forwarded(&mut out, &h, &Verbatim::default(), &f), Some(12));
        assert!(String::from_utf8(out).unwrap().starts_with("content-length: 12\r\n"));
    }
}
