//! Micro-benchmarks of the per-request work that is cutover's own: the
//! routing decision, header rewriting, metrics recording and the access
//! log line.
//!
//! `cargo bench --bench hot_path`

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::HeaderValue;

use cutover::access_log::Record;
use cutover::metrics::Metrics;
use cutover::proxy::headers::{self, Forwarded};
use cutover::routing::{self, Head, Outcome, Reason, Version};
use cutover::snapshot::Snapshot;

#[path = "fixture/mod.rs"]
mod fixture;

fn decision(c: &mut Criterion) {
    let metrics = Metrics::new();
    let snap = Snapshot::from_config(fixture::config(), &metrics);
    let mut group = c.benchmark_group("decision");
    for (name, cookie) in [
        ("returning_user", Some(fixture::RETURNING)),
        ("fresh_user", Some(fixture::FRESH)),
        ("beta_user", Some(fixture::BETA)),
    ] {
        let headers = fixture::browser_headers(cookie);
        let head = Head {
            host: Some("shop.example.com"),
            path: "/products/42",
            headers: &headers,
            client_ip: fixture::CLIENT_IP,
            now: 1_800_000_000,
        };
        let mut id = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                let outcome = routing::decide(&snap.rules, black_box(&head), || {
                    id += 1;
                    id
                });
                assert!(matches!(outcome, Outcome::Routed(_)));
                outcome
            })
        });
    }
    group.finish();
}

fn header_rewrite(c: &mut Criterion) {
    let headers = fixture::browser_headers(Some(fixture::RETURNING));
    let client_ip = HeaderValue::from_static("192.0.2.9");
    let via = HeaderValue::from_static("1.1 cutover");
    let route = HeaderValue::from_static("web");
    let forwarded = Forwarded { client_ip: &client_ip, tls: false, via: &via, version: "stable", route: &route };
    // Hop-by-hop removal on the map, then the fields written as the
    // backend's request head gets them (forwarding fields included).
    c.bench_function("headers/hop_by_hop_and_forwarding", |b| {
        b.iter_batched_ref(
            || (headers.clone(), Vec::with_capacity(4096)),
            |(h, out)| {
                headers::remove_hop_by_hop(h, false);
                headers::write_forwarded(out, h, &cutover::proxy::verbatim::Verbatim::default(), &forwarded)
            },
            BatchSize::SmallInput,
        )
    });
}

fn metrics_recording(c: &mut Criterion) {
    let metrics = Metrics::new();
    let route = metrics.route("web", "app-v1", Some("app-v2"));
    let stable = route.version(Version::Stable).clone();
    c.bench_function("metrics/per_request", |b| {
        b.iter(|| {
            stable.assigned(black_box(Reason::Returning));
            stable.response(black_box(200), black_box(0.000_42));
        })
    });
}

/// One JSON access log line of a proxied request, appended to a worker's
/// buffer (cleared when full, as a hand-over leaves it).
fn access_log_line(c: &mut Criterion) {
    let record = Record {
        client: "192.0.2.10",
        method: "GET",
        path: "/products/42",
        status: 200,
        route: Some("web"),
        version: Some(Version::Stable),
        reason: Some(Reason::Returning),
        backend: Some("127.0.0.1:18081"),
        duration: std::time::Duration::from_micros(412),
        bytes_in: 0,
        bytes_out: 187,
        failed: false,
    };
    let mut out = Vec::with_capacity(72 * 1024);
    c.bench_function("access_log/line", |b| {
        b.iter(|| {
            if out.len() >= 64 * 1024 {
                out.clear();
            }
            black_box(&record).write_line(&mut out, std::time::SystemTime::now());
        })
    });
}

criterion_group!(benches, decision, header_rewrite, metrics_recording, access_log_line);
criterion_main!(benches);
