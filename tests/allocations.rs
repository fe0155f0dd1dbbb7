//! The per-request work that is cutover's own allocates nothing on the heap
//! for a returning user: the routing decision, header rewriting, metrics and
//! the access log line.
//! A counting global allocator proves it (counts are per thread, so the test
//! harness's other threads do not disturb them).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use http::HeaderValue;

use cutover::metrics::Metrics;
use cutover::proxy::headers::{self, Forwarded};
use cutover::routing::{self, Head, Outcome, Reason, Version};
use cutover::snapshot::Snapshot;

#[path = "../benches/fixture/mod.rs"]
mod fixture;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap allocations made by `f` on this thread.
fn allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

fn head(headers: &http::HeaderMap) -> Head<'_> {
    Head {
        host: Some("shop.example.com"),
        path: "/products/42",
        headers,
        client_ip: fixture::CLIENT_IP,
        now: 1_800_000_000,
    }
}

#[test]
fn a_returning_users_decision_allocates_nothing() {
    let snap = Snapshot::from_config(fixture::config(), &Metrics::new());
    let headers = fixture::browser_headers(Some(fixture::RETURNING));
    let head = head(&headers);
    let mut outcome = None;
    let n = allocations(|| outcome = Some(routing::decide(&snap.rules, &head, || unreachable!("the user has a key"))));
    let Some(Outcome::Routed(d)) = outcome else { panic!("routed: {outcome:?}") };
    assert_eq!(d.reason, Reason::Returning);
    assert_eq!(n, 0, "heap allocations in a returning user's decision");
}

#[test]
fn fresh_and_beta_users_decisions_allocate_nothing() {
    let snap = Snapshot::from_config(fixture::config(), &Metrics::new());
    for (cookie, reason) in [(fixture::FRESH, Reason::New), (fixture::BETA, Reason::Beta)] {
        let headers = fixture::browser_headers(Some(cookie));
        let head = head(&headers);
        let mut outcome = None;
        let n = allocations(|| outcome = Some(routing::decide(&snap.rules, &head, || 42)));
        let Some(Outcome::Routed(d)) = outcome else { panic!("routed: {outcome:?}") };
        assert_eq!(d.reason, reason);
        assert_eq!(n, 0, "heap allocations in the decision for {cookie:?}");
    }
}

#[test]
fn header_rewriting_of_a_browser_request_allocates_nothing() {
    let mut headers = fixture::browser_headers(Some(fixture::RETURNING));
    let client_ip = HeaderValue::from_static("192.0.2.9");
    let via = HeaderValue::from_static("1.1 cutover");
    let route = HeaderValue::from_static("web");
    // The backend's head is written into a (pooled) buffer with room to spare.
    let mut out = Vec::with_capacity(4096);
    let n = allocations(|| {
        headers::remove_hop_by_hop(&mut headers, false);
        headers::write_forwarded(
            &mut out,
            &headers,
            &cutover::proxy::verbatim::Verbatim::default(),
            &Forwarded { client_ip: &client_ip, tls: false, via: &via, version: "canary", route: &route },
        );
    });
    assert!(headers.get("connection").is_none() && headers.get("te").is_none());
    let head = String::from_utf8(out).unwrap();
    assert!(head.contains("\r\nx-forwarded-for: 192.0.2.9\r\n"), "{head}");
    assert!(!head.contains("connection:") && !head.contains("\r\nte:"), "{head}");
    assert_eq!(n, 0, "heap allocations in header rewriting");
}

#[test]
fn recording_a_requests_metrics_allocates_nothing() {
    let metrics = Metrics::new();
    let route = metrics.route("web", "app-v1", Some("app-v2"));
    let canary = route.version(Version::Canary);
    // The first 200 resolves its series once.
    canary.response(200, 0.001);
    let n = allocations(|| {
        canary.assigned(Reason::Returning);
        canary.response(200, 0.000_42);
    });
    assert_eq!(n, 0, "heap allocations in recording metrics");
}

#[test]
fn logging_a_request_allocates_nothing() {
    use cutover::access_log::{AccessLog, Batching, Record};
    let dir = tempfile::tempdir().unwrap();
    let dropped = prometheus::IntCounter::new("dropped", "dropped").unwrap();
    // A buffer that holds every line below: no hand-over to the writer.
    let batching = Batching { buffer: 4 << 20, flush: std::time::Duration::from_secs(3600), sample: 1.0 };
    let log = AccessLog::start(Some(&dir.path().join("access.log")), batching, dropped).unwrap();
    let record = Record {
        client: "192.0.2.9",
        method: "GET",
        path: "/products/42",
        status: 200,
        route: Some("web"),
        version: Some(Version::Canary),
        reason: Some(Reason::Returning),
        backend: Some("10.0.2.10:8080"),
        duration: std::time::Duration::from_micros(1234),
        bytes_in: 0,
        bytes_out: 5120,
        failed: false,
    };
    // The first line registers this thread's buffer.
    log.log(&record);
    // Across a second: the cached time of day is formatted again.
    let n = allocations(|| {
        for _ in 0..12 {
            log.log(&record);
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    });
    assert_eq!(n, 0, "heap allocations in logging a request");
}
