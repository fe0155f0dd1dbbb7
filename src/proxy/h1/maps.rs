//! Header maps kept per worker thread: a request head and a response head
//! each need one, and a map taken from here costs neither the two
//! allocations of a new one nor their release when it is done.

use std::cell::RefCell;

use http::HeaderMap;
use http::header::HeaderName;

/// Maps kept per thread; more are dropped.
const KEPT: usize = 64;
/// A map that grew for a head this large is not kept.
const MAX_KEPT_CAPACITY: usize = 128;

thread_local! {
    static MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for at least `fields` fields.
pub(super) fn take(fields: usize) -> HeaderMap {
    match MAPS.with_borrow_mut(Vec::pop) {
        Some(mut map) => {
            map.reserve(fields);
            map
        }
        None => HeaderMap::with_capacity(fields),
    }
}

/// Gives a map back once its head is written or sent: emptied, it serves
/// the next head on this thread.
pub(super) fn give(mut map: HeaderMap) {
    if map.capacity() > MAX_KEPT_CAPACITY {
        return;
    }
    map.clear();
    MAPS.with_borrow_mut(|maps| {
        if maps.len() < KEPT {
            maps.push(map);
        }
    });
}

/// The field names most heads carry, by length: matched without the
/// table walk of [`HeaderName::from_bytes`] (which lowercases every name into
/// a buffer before it looks it up).
fn common_name(name: &[u8]) -> Option<HeaderName> {
    use http::header::*;
    let is = |text: &[u8]| name.eq_ignore_ascii_case(text);
    Some(match name.len() {
        4 if is(b"host") => HOST,
        4 if is(b"date") => DATE,
        6 if is(b"cookie") => COOKIE,
        6 if is(b"accept") => ACCEPT,
        6 if is(b"server") => SERVER,
        10 if is(b"user-agent") => USER_AGENT,
        10 if is(b"connection") => CONNECTION,
        12 if is(b"content-type") => CONTENT_TYPE,
        14 if is(b"content-length") => CONTENT_LENGTH,
        15 if is(b"accept-encoding") => ACCEPT_ENCODING,
        15 if is(b"accept-language") => ACCEPT_LANGUAGE,
        _ => return None,
    })
}

/// A field name from a head: the same name (or the same refusal) as
/// [`HeaderName::from_bytes`], cheaper for the common ones.
pub(in crate::proxy) fn field_name(name: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    match common_name(name) {
        Some(known) => Ok(known),
        None => HeaderName::from_bytes(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_those_of_the_http_crate() {
        let names = [
            "host",
            "Host",
            "HOST",
            "date",
            "Date",
            "cookie",
            "Cookie",
            "accept",
            "server",
            "Server",
            "origin",
            "referer",
            "upgrade",
            "User-Agent",
            "user-agent",
            "connection",
            "Connection",
            "set-cookie",
            "Set-Cookie",
            "content-type",
            "Content-Type",
            "cache-control",
            "last-modified",
            "authorization",
            "Content-Length",
            "content-length",
            "CONTENT-LENGTH",
            "accept-encoding",
            "Accept-Language",
            "hosts",
            "hos",
            "hosT ",
            "host:",
            "x-request-id",
            "X-Forwarded-For",
            "keep-alive",
            "",
            "h\u{e9}st",
            "ho st",
            "content_length",
        ];
        for name in names {
            let ours = field_name(name.as_bytes());
            let theirs = HeaderName::from_bytes(name.as_bytes());
            match (&ours, &theirs) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{name:?}"),
                (Err(_), Err(_)) => {}
                _ => panic!("{name:?}: {ours:?} against {theirs:?}"),
            }
        }
    }

    #[test]
    fn a_map_given_back_comes_back_empty() {
        let mut map = take(4);
        map.reserve(64);
        let capacity = map.capacity();
        assert!(capacity > HeaderMap::<http::HeaderValue>::with_capacity(1).capacity());
        map.insert(http::header::HOST, http::HeaderValue::from_static("example.com"));
        map.append("x-a", http::HeaderValue::from_static("1"));
        give(map);
        assert_eq!(MAPS.with_borrow(Vec::len), 1, "kept");
        let again = take(1);
        // The same memory (a new map for one field would be smaller), emptied.
        assert_eq!(again.capacity(), capacity);
        assert!(again.is_empty());
        assert!(again.get(http::header::HOST).is_none());
    }

    #[test]
    fn a_map_grown_for_a_huge_head_is_not_kept() {
        let mut map = take(0);
        for i in 0..200 {
            map.append(http::header::HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap(), i.into());
        }
        let kept = MAPS.with_borrow(Vec::len);
        give(map);
        assert_eq!(MAPS.with_borrow(Vec::len), kept, "not kept");
        assert!(MAPS.with_borrow(|maps| maps.iter().all(|m| m.capacity() <= MAX_KEPT_CAPACITY)));
    }
}
