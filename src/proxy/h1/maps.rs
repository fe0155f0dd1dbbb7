//! Header maps kept per worker thread: a request head and a response head
//! each need one, and a map taken from here costs neither the two
//! allocations of a new one nor their release when it is done.

use std::cell::RefCell;

use http::HeaderMap;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_given_back_comes_back_empty() {
        let mut map = take(4);
        map.insert(http::header::HOST, http::HeaderValue::from_static("example.com"));
        map.append("x-a", http::HeaderValue::from_static("1"));
        give(map);
        let again = take(4);
        assert!(again.is_empty());
        assert!(again.get(http::header::HOST).is_none());
        assert!(again.capacity() >= 4);
    }

    #[test]
    fn a_map_grown_for_a_huge_head_is_not_kept() {
        let mut map = take(0);
        for i in 0..200 {
            map.append(http::header::HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap(), i.into());
        }
        give(map);
        assert!(MAPS.with_borrow(|maps| maps.iter().all(|m| m.capacity() <= MAX_KEPT_CAPACITY)));
    }
}
