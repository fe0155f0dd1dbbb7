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
    exact: HashMap<Box<str>, Prefixes, BuildHasherDefault<Fnv1a>>,
    /// (suffix such as ".example.com", routes), longest suffix first.
    wildcard: Vec<(Box<str>, Prefixes)>,
    any: Prefixes,
}

impl RouteTable {
    pub fn new<'a>(routes: impl IntoIterator<Item = (&'a HostPattern, &'a str)>) -> Self {
        let mut table = RouteTable::default();
        for (index, (host, prefix)) in routes.into_iter().enumerate() {
            let entry = (Box::from(prefix), index);
            match host {
                HostPattern::Exact(h) => table.exact.entry(h.as_str().into()).or_default().push(entry),
                HostPattern::Wildcard(suffix) => match table.wildcard.iter_mut().find(|(s, _)| **s == **suffix) {
                    Some((_, list)) => list.push(entry),
                    None => table.wildcard.push((suffix.as_str().into(), vec![entry])),
                },
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
                    && host.ends_with(&**suffix)
                    && let Some(found) = longest(list)
                {
                    return Some(found);
                }
            }
        }
        longest(&self.any)
    }
}

/// FNV-1a for the host map. The map is built from the config and only read
/// per request, so request input cannot degrade it; a keyed hash would cost
/// several times more per lookup.
#[derive(Default)]
struct Fnv1a(u64);

impl Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Lower-cases a Host value into `buf` and strips the port and a trailing dot.
/// Returns None for values that cannot be a host name.
fn normalize_host<'b>(host: &str, buf: &'b mut [u8; 256]) -> Option<&'b str> {
    let host = if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: "[::1]:8080" -> "[::1]"
        let end = rest.find(']')?;
        &host[..end + 2]
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > buf.len() {
        return None;
    }
    let out = &mut buf[..host.len()];
    out.copy_from_slice(host.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
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
