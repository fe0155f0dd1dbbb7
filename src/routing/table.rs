//! Route matching: exact host beats wildcard beats `*`; within a host class
//! the longest path prefix wins. A host class without a matching prefix
//! falls through to the next class.
//!
//! Path prefixes match bytewise, as nginx's prefix locations do: `/api`
//! matches `/api`, `/api/v1` and `/apiary`; write `/api/` for a segment.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::config::HostPattern;

/// (path prefix, route index), longest prefix first.
type Prefixes = Vec<(Box<str>, usize)>;

/// Route indices per host, each list sorted by prefix length, longest first.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    /// Lower-case host names.
    exact: HashMap<Box<[u8]>, Prefixes, BuildHasherDefault<WordHash>>,
    /// (suffix such as ".example.com", routes), longest suffix first.
    wildcard: Vec<(Box<[u8]>, Prefixes)>,
    any: Prefixes,
}

impl RouteTable {
    pub fn new<'a>(routes: impl IntoIterator<Item = (&'a HostPattern, &'a str)>) -> Self {
        let mut table = RouteTable::default();
        for (index, (host, prefix)) in routes.into_iter().enumerate() {
            crate::pace::point();
            let entry = (Box::from(prefix), index);
            match host {
                HostPattern::Exact(h) => table.exact.entry(h.as_bytes().into()).or_default().push(entry),
                HostPattern::Wildcard(suffix) => {
                    match table.wildcard.iter_mut().find(|(s, _)| **s == *suffix.as_bytes()) {
                        Some((_, list)) => list.push(entry),
                        None => table.wildcard.push((suffix.as_bytes().into(), vec![entry])),
                    }
                }
                HostPattern::Any => table.any.push(entry),
            }
        }
        let by_prefix_len = |list: &mut Prefixes| list.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        table.exact.values_mut().for_each(by_prefix_len);
        table.wildcard.iter_mut().for_each(|(_, list)| by_prefix_len(list));
        table.wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        by_prefix_len(&mut table.any);
        table
    }

    /// The route for a request's host (as sent, any case, optional port) and path.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<usize> {
        let mut buf = [0u8; 256];
        let host = host.and_then(|h| normalize_host(h, &mut buf));
        let longest = |list: &[(Box<str>, usize)]| list.iter().find(|(p, _)| path.starts_with(&**p)).map(|&(_, i)| i);
        if let Some(host) = host {
            if let Some(found) = self.exact.get(host).and_then(|list| longest(list)) {
                return Some(found);
            }
            for (suffix, list) in &self.wildcard {
                if host.len() > suffix.len()
                    && host.ends_with(suffix)
                    && let Some(found) = longest(list)
                {
                    return Some(found);
                }
            }
        }
        longest(&self.any)
    }
}

/// The host map's hash: a multiply-rotate over whole words (FxHash's
/// step). The map is built from the config and only read per request, so
/// request input cannot degrade it; a keyed hash would cost several times
/// more per lookup.
#[derive(Default)]
struct WordHash(u64);

impl WordHash {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for WordHash {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut le = [0u8; 8];
            le.copy_from_slice(word);
            self.add(u64::from_le_bytes(le));
        }
        let mut last = [0u8; 8];
        last[..words.remainder().len()].copy_from_slice(words.remainder());
        self.add(u64::from_le_bytes(last));
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Lower-cases a Host value into `buf` and strips the port and a trailing dot.
/// Returns None for values that cannot be a host name.
fn normalize_host<'b>(host: &str, buf: &'b mut [u8; 256]) -> Option<&'b [u8]> {
    let bytes = host.as_bytes();
    let host = if bytes.first() == Some(&b'[') {
        // IPv6 literal: "[::1]:8080" -> "[::1]"
        &bytes[..=bytes.iter().position(|&b| b == b']')?]
    } else {
        // A host name holds no ':', so the first one starts the port.
        &bytes[..bytes.iter().position(|&b| b == b':').unwrap_or(bytes.len())]
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() || host.len() > buf.len() {
        return None;
    }
    let out = &mut buf[..host.len()];
    out.copy_from_slice(host);
    out.make_ascii_lowercase();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&str, &str)]) -> RouteTable {
        let hosts: Vec<(HostPattern, String)> = routes
            .iter()
            .map(|(h, p)| {
                let host = match *h {
                    "*" => HostPattern::Any,
                    w if w.starts_with("*.") => HostPattern::Wildcard(w[1..].to_string()),
                    e => HostPattern::Exact(e.to_string()),
                };
                (host, p.to_string())
            })
            .collect();
        RouteTable::new(hosts.iter().map(|(h, p)| (h, p.as_str())))
    }

    #[test]
    fn exact_host_beats_wildcard_beats_any() {
        let t = table(&[("*", "/"), ("*.example.com", "/"), ("shop.example.com", "/")]);
        assert_eq!(t.find(Some("shop.example.com"), "/x"), Some(2));
        assert_eq!(t.find(Some("blog.example.com"), "/x"), Some(1));
        assert_eq!(t.find(Some("other.org"), "/x"), Some(0));
        assert_eq!(t.find(None, "/x"), Some(0));
    }

    #[test]
    fn longest_prefix_wins_within_a_host() {
        let t = table(&[("*", "/"), ("*", "/api/"), ("*", "/api/v2/")]);
        assert_eq!(t.find(Some("a"), "/api/v2/users"), Some(2));
        assert_eq!(t.find(Some("a"), "/api/v1/users"), Some(1));
        assert_eq!(t.find(Some("a"), "/index.html"), Some(0));
    }

    #[test]
    fn host_class_without_a_matching_prefix_falls_through() {
        let t = table(&[("*", "/"), ("example.com", "/admin/")]);
        assert_eq!(t.find(Some("example.com"), "/admin/x"), Some(1));
        assert_eq!(t.find(Some("example.com"), "/"), Some(0));
    }

    #[test]
    fn host_is_case_insensitive_and_port_and_trailing_dot_are_ignored() {
        let t = table(&[("example.com", "/"), ("[::1]", "/")]);
        assert_eq!(t.find(Some("EXAMPLE.com:8080"), "/"), Some(0));
        assert_eq!(t.find(Some("example.com."), "/"), Some(0));
        assert_eq!(t.find(Some("[::1]:80"), "/"), Some(1));
        assert_eq!(t.find(Some("[::1]"), "/"), Some(1));
        assert_eq!(t.find(Some(&"a".repeat(300)), "/"), None);
        assert_eq!(t.find(Some(":80"), "/"), None);
    }

    #[test]
    fn wildcard_needs_a_subdomain_and_longest_suffix_wins() {
        let t = table(&[("*.example.com", "/"), ("*.eu.example.com", "/")]);
        assert_eq!(t.find(Some("example.com"), "/"), None);
        assert_eq!(t.find(Some("a.eu.example.com"), "/"), Some(1));
        assert_eq!(t.find(Some("a.us.example.com"), "/"), Some(0));
    }

    #[test]
    fn no_route_matches() {
        let t = table(&[("example.com", "/")]);
        assert_eq!(t.find(Some("other.org"), "/"), None);
    }
}
