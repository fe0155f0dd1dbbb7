//! The metrics cost of one proxied request: the assignment counter, the
//! status-code counter and the latency histogram, through the handles a
//! snapshot pre-resolves. Target: under 50 ns per request.
//!
//! `cargo bench --bench metrics`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use cutover::metrics::Metrics;
use cutover::routing::{Reason, Version};

fn per_request(c: &mut Criterion) {
    let metrics = Metrics::new();
    let route = metrics.route("web", "app-v1", Some("app-v2"));
    let canary = route.version(Version::Canary).clone();
    canary.response(200, 0.0);

    let mut group = c.benchmark_group("metrics");
    group.bench_function("request (assigned + response 200)", |b| {
        b.iter(|| {
            canary.assigned(black_box(Reason::Returning));
            canary.response(black_box(200), black_box(0.0042));
        })
    });
    group.bench_function("response 200 only", |b| b.iter(|| canary.response(black_box(200), black_box(0.0042))));
    group.bench_function("response 503 (counts an error too)", |b| {
        b.iter(|| canary.response(black_box(503), black_box(0.0042)))
    });
    group.bench_function("request, 2 threads on one series", |b| b.iter_custom(|iters| contended(&canary, iters, 2)));
    group.finish();
}

/// Wall time per request of `threads` threads recording on the same series
/// at once (the worst case: every worker serves the same route and version).
fn contended(v: &Arc<cutover::metrics::VersionMetrics>, iters: u64, threads: u64) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..iters {
                    v.assigned(black_box(Reason::Returning));
                    v.response(black_box(200), black_box(0.0042));
                }
            });
        }
    });
    // Every thread did `iters` requests: the time is what one worker pays.
    start.elapsed()
}

criterion_group!(benches, per_request);
criterion_main!(benches);
