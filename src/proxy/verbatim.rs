//! Field lines an HTTP/1.1 message carries through the proxy as they came.
//!
//! Most of a head is fields the proxy never reads nor changes: a browser's
//! `User-Agent`, `Accept-*` and `Referer`, a server's `Server`, `Date` and
//! `Content-Type`. Building a `HeaderMap` entry for each (its name looked
//! up, its value checked again and counted, then hashed in) and writing it
//! back out is most of what a head costs. Those fields instead stay where
//! the parser found them, in the head's own bytes, and go out as whole
//! lines (runs of adjacent lines copied at once).
//!
//! Only names in a fixed list qualify ([`request_name`], [`response_name`]):
//! nothing the proxy routes on, frames a body by, or treats as hop-by-hop.
//! All lines of one name are kept the same way, so their order holds; the
//! parser has already checked every byte of them (RFC 9110 §5.5: no CR, LF
//! or NUL in a value). A head whose `Connection` names other fields, and
//! any consumer that needs one of these fields by name (an HTTP/2 client's
//! response, a sticky `header` on such a name), gets them back in a map
//! with [`Verbatim::into_map`].

use bytes::Bytes;
use http::HeaderMap;
use http::header::HeaderValue;

use super::h1::{field_name, trim};

/// Runs of adjacent lines a head may keep; a head with more groups has
/// them all in its map instead.
const RUNS: usize = 6;

/// Kept field lines: ranges of whole lines (CRLF included) in `head`.
#[derive(Default, Clone)]
pub struct Verbatim {
    head: Bytes,
    runs: [(u16, u16); RUNS],
    len: u8,
    /// A `Date` line is among them: the server does not add its own.
    date: bool,
}

impl std::fmt::Debug for Verbatim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.lines().map(String::from_utf8_lossy)).finish()
    }
}

impl Verbatim {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn has_date(&self) -> bool {
        self.date
    }

    /// Keeps the line `head[start..end]` (its CRLF included), after the
    /// lines kept so far. `false`: it cannot be kept (a bare LF ending,
    /// beyond what the ranges hold, too many runs); the caller puts it in
    /// the map, and so must all lines kept so far ([`Verbatim::into_map`]).
    pub(crate) fn keep(&mut self, head: &Bytes, start: usize, end: usize) -> bool {
        // A value holds no CR: one before the LF ends the line as CRLF.
        if end > usize::from(u16::MAX) || end < 2 || head[end - 2] != b'\r' {
            return false;
        }
        let (start, end) = (start as u16, end as u16);
        let len = usize::from(self.len);
        match self.runs[..len].last_mut() {
            Some(run) if run.1 == start => run.1 = end,
            _ if len == RUNS => return false,
            last => {
                if last.is_none() {
                    self.head = head.clone();
                }
                self.runs[len] = (start, end);
                self.len += 1;
            }
        }
        true
    }

    /// The last line kept is a `Date` field.
    pub(crate) fn kept_date(&mut self) {
        self.date = true;
    }

    /// Appends the kept lines, as they came.
    pub fn write(&self, out: &mut Vec<u8>) {
        for &(start, end) in &self.runs[..usize::from(self.len)] {
            out.extend_from_slice(&self.head[usize::from(start)..usize::from(end)]);
        }
    }

    /// Each kept line, without its CRLF.
    fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.runs[..usize::from(self.len)].iter().flat_map(|&(start, end)| {
            let run = &self.head[usize::from(start)..usize::from(end) - 2];
            run.split(|&b| b == b'\n').map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        })
    }

    /// Moves the kept lines into `map`, after what it holds, and empties
    /// this. Names as the head parser reads them, values sharing the
    /// head's bytes (no copy).
    pub fn into_map(&mut self, map: &mut HeaderMap) {
        let kept = std::mem::take(self);
        for line in kept.lines() {
            // Lines were kept only with a name from the lists and a value
            // the parser checked: neither conversion fails.
            let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
            let value = trim(&line[colon + 1..]);
            let at = value.as_ptr() as usize - kept.head.as_ptr() as usize;
            let value = HeaderValue::from_maybe_shared(kept.head.slice(at..at + value.len()));
            if let (Ok(name), Ok(value)) = (field_name(&line[..colon]), value) {
                map.append(name, value);
            }
        }
    }
}

/// Request fields kept as they came: sent by browsers on every request,
/// never read by the proxy, not hop-by-hop.
pub fn request_name(name: &[u8]) -> bool {
    let is = |text: &[u8]| name.eq_ignore_ascii_case(text);
    match name.len() {
        3 => is(b"dnt"),
        6 => is(b"accept") || is(b"origin") || is(b"pragma"),
        7 => is(b"referer"),
        8 => is(b"priority"),
        9 => is(b"sec-ch-ua"),
        10 => is(b"user-agent"),
        12 => is(b"content-type"),
        13 => is(b"cache-control") || is(b"if-none-match") || is(b"authorization"),
        14 => is(b"sec-fetch-site") || is(b"sec-fetch-mode") || is(b"sec-fetch-dest") || is(b"sec-fetch-user"),
        15 => is(b"accept-encoding") || is(b"accept-language"),
        16 => is(b"sec-ch-ua-mobile"),
        17 => is(b"if-modified-since"),
        18 => is(b"sec-ch-ua-platform"),
        25 => is(b"upgrade-insecure-requests"),
        _ => false,
    }
}

/// Response fields kept as they came: set by application servers, never
/// read by the proxy, not hop-by-hop (`Set-Cookie` is not among them: the
/// proxy adds its own next to the backend's).
pub fn response_name(name: &[u8]) -> bool {
    let is = |text: &[u8]| name.eq_ignore_ascii_case(text);
    match name.len() {
        3 => is(b"age"),
        4 => is(b"date") || is(b"etag") || is(b"vary"),
        6 => is(b"server"),
        7 => is(b"expires"),
        12 => is(b"content-type"),
        13 => is(b"cache-control") || is(b"last-modified") || is(b"accept-ranges"),
        15 => is(b"x-frame-options") || is(b"referrer-policy"),
        16 => is(b"content-encoding") || is(b"content-language"),
        22 => is(b"x-content-type-options"),
        23 => is(b"content-security-policy"),
        25 => is(b"strict-transport-security"),
        27 => is(b"access-control-allow-origin"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(text: &'static str, lines: &[&str]) -> Verbatim {
        let head = Bytes::from_static(text.as_bytes());
        let mut verbatim = Verbatim::default();
        for line in lines {
            let start = text.find(line).unwrap();
            assert!(verbatim.keep(&head, start, start + line.len()), "{line:?}");
        }
        verbatim
    }

    #[test]
    fn adjacent_lines_are_one_run_and_go_out_as_they_came() {
        let text = "GET / HTTP/1.1\r\nUser-Agent:  curl/8 \r\nAccept: */*\r\nHost: a\r\nReferer: /x\r\n\r\n";
        let verbatim = kept(text, &["User-Agent:  curl/8 \r\n", "Accept: */*\r\n", "Referer: /x\r\n"]);
        assert_eq!(verbatim.len, 2, "two runs: Host is between them");
        let mut out = Vec::new();
        verbatim.write(&mut out);
        assert_eq!(out, b"User-Agent:  curl/8 \r\nAccept: */*\r\nReferer: /x\r\n");
        assert!(!verbatim.has_date());
    }

    #[test]
    fn a_line_ending_in_a_bare_lf_is_not_kept() {
        let text = "GET / HTTP/1.1\nAccept: */*\n\n";
        let head = Bytes::from_static(text.as_bytes());
        let start = text.find("Accept").unwrap();
        assert!(!Verbatim::default().keep(&head, start, start + "Accept: */*\n".len()));
    }

    #[test]
    fn more_runs_than_it_holds_are_refused() {
        let text = "A\r\nx: 1\r\nDate: d\r\nx: 1\r\nDate: d\r\nx: 1\r\nDate: d\r\nx: 1\r\nDate: d\r\nx: 1\r\nDate: d\r\nx: 1\r\nDate: d\r\nx: 1\r\nDate: d\r\n\r\n";
        let head = Bytes::from_static(text.as_bytes());
        let mut verbatim = Verbatim::default();
        let starts: Vec<usize> = text.match_indices("Date").map(|(i, _)| i).collect();
        let kept: Vec<bool> = starts.iter().map(|&s| verbatim.keep(&head, s, s + 9)).collect();
        assert_eq!(kept, [true, true, true, true, true, true, false]);
    }

    #[test]
    fn lines_come_back_as_fields_in_their_order() {
        let text = "HTTP/1.1 200 OK\r\nServer: a\r\nVary: x\r\nContent-Length: 0\r\nvary:\ty \r\nETag: \"é\"\r\n\r\n";
        let mut verbatim = kept(text, &["Server: a\r\n", "Vary: x\r\n", "vary:\ty \r\n", "ETag: \"é\"\r\n"]);
        let mut map = HeaderMap::new();
        map.insert("content-length", HeaderValue::from_static("0"));
        verbatim.into_map(&mut map);
        assert!(verbatim.is_empty());
        assert_eq!(map.len(), 5);
        assert_eq!(map["server"], "a");
        let vary: Vec<_> = map.get_all("vary").iter().collect();
        assert_eq!(vary, ["x", "y"]);
        assert_eq!(map["etag"].as_bytes(), "\"é\"".as_bytes(), "obs-text as it came");
    }

    #[test]
    fn only_fields_the_proxy_never_reads_qualify() {
        for name in ["User-Agent", "accept", "ACCEPT-ENCODING", "Referer", "sec-fetch-mode", "authorization"] {
            assert!(request_name(name.as_bytes()), "{name}");
        }
        for name in
            ["host", "cookie", "connection", "content-length", "transfer-encoding", "te", "upgrade", "expect", "via"]
        {
            assert!(!request_name(name.as_bytes()), "{name}");
            assert!(!response_name(name.as_bytes()), "{name}");
        }
        for name in ["x-forwarded-for", "keep-alive", "proxy-authorization", "trailer", "user-agen", "accepts"] {
            assert!(!request_name(name.as_bytes()), "{name}");
        }
        for name in ["Server", "date", "Content-Type", "ETag", "Last-Modified"] {
            assert!(response_name(name.as_bytes()), "{name}");
        }
        for name in ["set-cookie", "keep-alive", "proxy-authenticate", "location", "content-lengths"] {
            assert!(!response_name(name.as_bytes()), "{name}");
        }
    }
}
