//! Prometheus metrics (DESIGN §5) on a private registry.
//!
//! The request path never looks up a label set: each snapshot resolves, once,
//! the handles of every (route, version) it can serve ([`RouteMetrics`]), and
//! requests only increment atomics. Series of routes, pools and backends that
//! a reload removed are deleted from the registry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus::core::{Collector, Metric, MetricVec, MetricVecBuilder};
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::routing::{Reason, Version};

/// Latency buckets for a proxy: from half a millisecond up to 30 seconds.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Status codes resolved once per (route, version); others are looked up
/// when they occur. 200 comes first: it is created eagerly.
const COMMON_CODES: [u16; 20] =
    [200, 201, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 429, 500, 502, 503, 504, 101];

/// The `trigger` label values of `cutover_rollbacks_total`.
pub const ROLLBACK_TRIGGERS: [&str; 3] = ["manual", "error_rate", "latency"];

/// Kinds of upstream failure (the `kind` label of `cutover_upstream_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Reset,
    Protocol,
}

impl UpstreamErrorKind {
    pub const ALL: [UpstreamErrorKind; 4] =
        [UpstreamErrorKind::Connect, UpstreamErrorKind::Timeout, UpstreamErrorKind::Reset, UpstreamErrorKind::Protocol];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Reset => "reset",
            UpstreamErrorKind::Protocol => "protocol",
        }
    }
}

/// All metric families of one server.
pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_errors: IntCounterVec,
    assignments: IntCounterVec,
    pub weight: GaugeVec,
    pub halted: IntGaugeVec,
    route_info: IntGaugeVec,
    pub backend_healthy: IntGaugeVec,
    pub rollout_step: IntGaugeVec,
    pub rollbacks: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub config_last_success: Gauge,
    pub open_connections: IntGaugeVec,
    config_info: IntGaugeVec,
    /// Requests that matched no route (404) or had a malformed head.
    pub unrouted: IntCounterVec,
    pub beta_rejected: IntCounter,
    pub retries: IntCounterVec,
    pub access_log_dropped: IntCounter,
    pub tls_cert_reloads: IntCounterVec,
    /// Request heads the HTTP/1.1 server refused (400, 408, 414, 431, 501, 505).
    pub http1_head_refusals: IntCounterVec,
    fleet: OnceLock<FleetMetrics>,
    /// Slow-client protection: timeouts, queueing, buffering (pre-resolved).
    pub slow: SlowClients,
}

/// Counters of the slow-client protections, resolved once.
pub struct SlowClients {
    client_timeouts: IntCounterVec,
    queue: IntCounterVec,
    bodies: IntCounterVec,
    pub body_timeout: IntCounter,
    pub send_timeout: IntCounter,
    pub tunnel_idle: IntCounter,
    pub queued: IntCounter,
    pub queue_full: IntCounter,
    pub queue_timeout: IntCounter,
    pub body_buffered: IntCounter,
    pub body_streamed: IntCounter,
    pub response_buffered: IntCounter,
}

impl SlowClients {
    fn new() -> SlowClients {
        let client_timeouts = counter(
            "cutover_client_timeouts_total",
            "Client connections cut by a timeout, by kind (body, send, tunnel_idle).",
            &["kind"],
        );
        let queue = counter(
            "cutover_backend_queue_total",
            "Requests that found their backend at max_connections, by result (queued, full, timeout).",
            &["result"],
        );
        let bodies = counter(
            "cutover_buffered_bodies_total",
            "Bodies by how they were carried (request_whole: read into memory before the backend was \
             contacted; request_streamed: larger than server.request_buffer; response_whole: read ahead \
             of the client in full).",
            &["mode"],
        );
        SlowClients {
            body_timeout: client_timeouts.with_label_values(&["body"]),
            send_timeout: client_timeouts.with_label_values(&["send"]),
            tunnel_idle: client_timeouts.with_label_values(&["tunnel_idle"]),
            queued: queue.with_label_values(&["queued"]),
            queue_full: queue.with_label_values(&["full"]),
            queue_timeout: queue.with_label_values(&["timeout"]),
            body_buffered: bodies.with_label_values(&["request_whole"]),
            body_streamed: bodies.with_label_values(&["request_streamed"]),
            response_buffered: bodies.with_label_values(&["response_whole"]),
            client_timeouts,
            queue,
            bodies,
        }
    }
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}

fn int_gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let m = Metrics {
            registry: Registry::new(),
            requests: counter(
                "cutover_requests_total",
                "Requests answered, by route, version and status code.",
                &["route", "version", "code"],
            ),
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "cutover_request_duration_seconds",
                    "Time from request head to the end of the response body.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["route", "version"],
            )
            .expect("valid metric definition"),
            upstream_errors: counter(
                "cutover_upstream_errors_total",
                "Failed upstream attempts, by kind (connect, timeout, reset, protocol).",
                &["route", "version", "kind"],
            ),
            assignments: counter(
                "cutover_assignments_total",
                "Routing decisions, by the reason the request went to its version.",
                &["route", "version", "reason"],
            ),
            weight: GaugeVec::new(Opts::new("cutover_canary_weight_ratio", "Live canary weight, 0 to 1."), &["route"])
                .expect("valid metric definition"),
            halted: int_gauge(
                "cutover_route_halted",
                "1 when the route is rolled back (everyone on stable).",
                &["route"],
            ),
            route_info: int_gauge(
                "cutover_route_info",
                "The pools of each route (value 1).",
                &["route", "stable", "canary"],
            ),
            backend_healthy: int_gauge(
                "cutover_backend_healthy",
                "1 when the backend takes traffic.",
                &["pool", "backend"],
            ),
            rollout_step: int_gauge(
                "cutover_rollout_step",
                "Current step of a running rollout (0-based), -1 when none.",
                &["route"],
            ),
            rollbacks: counter(
                "cutover_rollbacks_total",
                "Rollbacks, by trigger (manual, error_rate, latency).",
                &["route", "trigger"],
            ),
            config_reloads: counter("cutover_config_reloads_total", "Config reloads, by result.", &["result"]),
            config_last_success: Gauge::new(
                "cutover_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful config load.",
            )
            .expect("valid metric definition"),
            open_connections: int_gauge(
                "cutover_open_connections",
                "Open client connections, by listener.",
                &["listener"],
            ),
            config_info: int_gauge("cutover_config_info", "Fingerprint of the running config (value 1).", &["hash"]),
            unrouted: counter(
                "cutover_unrouted_requests_total",
                "Requests answered without a route, by code.",
                &["code"],
            ),
            beta_rejected: IntCounter::new(
                "cutover_beta_cookie_rejected_total",
                "Beta cookies ignored as unsigned, forged, expired or malformed.",
            )
            .expect("valid metric definition"),
            retries: counter(
                "cutover_retries_total",
                "Upstream retries, by result (attempted, budget_exhausted).",
                &["result"],
            ),
            access_log_dropped: IntCounter::new(
                "cutover_access_log_dropped_total",
                "Access log lines dropped because the writer fell behind.",
            )
            .expect("valid metric definition"),
            tls_cert_reloads: counter(
                "cutover_tls_certificate_reloads_total",
                "Certificate reloads, by result.",
                &["result"],
            ),
            http1_head_refusals: counter(
                "cutover_http1_head_refusals_total",
                "HTTP/1.1 request heads refused before routing, by listener and status code.",
                &["listener", "code"],
            ),
            fleet: OnceLock::new(),
            slow: SlowClients::new(),
        };
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(m.requests.clone()),
            Box::new(m.duration.clone()),
            Box::new(m.upstream_errors.clone()),
            Box::new(m.assignments.clone()),
            Box::new(m.weight.clone()),
            Box::new(m.halted.clone()),
            Box::new(m.route_info.clone()),
            Box::new(m.backend_healthy.clone()),
            Box::new(m.rollout_step.clone()),
            Box::new(m.rollbacks.clone()),
            Box::new(m.config_reloads.clone()),
            Box::new(m.config_last_success.clone()),
            Box::new(m.open_connections.clone()),
            Box::new(m.config_info.clone()),
            Box::new(m.unrouted.clone()),
            Box::new(m.beta_rejected.clone()),
            Box::new(m.retries.clone()),
            Box::new(m.access_log_dropped.clone()),
            Box::new(m.tls_cert_reloads.clone()),
            Box::new(m.http1_head_refusals.clone()),
            Box::new(m.slow.client_timeouts.clone()),
            Box::new(m.slow.queue.clone()),
            Box::new(m.slow.bodies.clone()),
        ];
        for c in collectors {
            m.registry.register(c).expect("metric names are unique");
        }
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            let _ = m.registry.register(Box::new(process));
        }
        for result in ["success", "failure"] {
            m.config_reloads.with_label_values(&[result]);
        }
        for result in ["attempted", "budget_exhausted"] {
            m.retries.with_label_values(&[result]);
        }
        for result in ["success", "failure"] {
            m.tls_cert_reloads.with_label_values(&[result]);
        }
        m.unrouted.with_label_values(&["404"]);
        Arc::new(m)
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Handles for one route's versions; `canary` is None for a route without one.
    /// Also sets the route's `cutover_route_info` series.
    pub fn route(&self, route: &str, stable: &str, canary: Option<&str>) -> RouteMetrics {
        self.route_info.with_label_values(&[route, stable, canary.unwrap_or("")]).set(1);
        // Present at 0 from the start, so `increase()` sees the first rollback.
        for trigger in ROLLBACK_TRIGGERS {
            self.rollbacks.with_label_values(&[route, trigger]);
        }
        RouteMetrics {
            route: route.into(),
            stable: Arc::new(self.version_metrics(route, Version::Stable)),
            canary: canary.map(|_| Arc::new(self.version_metrics(route, Version::Canary))),
        }
    }

    fn version_metrics(&self, route: &str, version: Version) -> VersionMetrics {
        let v = version.as_str();
        let codes: [OnceLock<IntCounter>; COMMON_CODES.len()] = Default::default();
        // `code="200"` exists from the start, so the family is exported and
        // `rate()` over all codes sees the first requests.
        let _ = codes[0].set(self.requests.with_label_values(&[route, v, "200"]));
        VersionMetrics {
            route: route.into(),
            version,
            requests: self.requests.clone(),
            codes,
            duration: self.duration.with_label_values(&[route, v]),
            assignments: Reason::ALL.map(|r| self.assignments.with_label_values(&[route, v, r.as_str()])),
            upstream_errors: UpstreamErrorKind::ALL
                .map(|k| self.upstream_errors.with_label_values(&[route, v, k.as_str()])),
            errors: AtomicU64::new(0),
        }
    }

    /// Deletes every series of a route that is gone from the config.
    pub fn remove_route(&self, route: &str) {
        for family in [&self.requests, &self.upstream_errors, &self.assignments, &self.rollbacks] {
            remove_matching(family, "route", route);
        }
        remove_matching(&self.duration, "route", route);
        let _ = self.weight.remove_label_values(&[route]);
        let _ = self.halted.remove_label_values(&[route]);
        let _ = self.rollout_step.remove_label_values(&[route]);
        remove_matching(&self.route_info, "route", route);
    }

    pub fn remove_backend(&self, pool: &str, backend: &str) {
        let _ = self.backend_healthy.remove_label_values(&[pool, backend]);
    }

    pub fn set_config_hash(&self, hash: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[hash]).set(1);
    }

    /// Removes a route's `cutover_route_info` series, so a changed pool pair
    /// leaves no stale one; [`Metrics::route`] sets the new one.
    pub fn clear_route_info(&self, route: &str) {
        remove_matching(&self.route_info, "route", route);
    }
}

/// Removes the series of `family` whose label `name` equals `value`.
fn remove_matching<T: MetricVecBuilder>(family: &MetricVec<T>, name: &str, value: &str) {
    for mf in family.collect() {
        for m in mf.get_metric() {
            let labels = m.get_label();
            if labels.iter().any(|l| l.name() == name && l.value() == value) {
                let map: HashMap<&str, &str> = labels.iter().map(|l| (l.name(), l.value())).collect();
                let _ = family.remove(&map);
            }
        }
    }
}

fn code_str(code: u16) -> &'static str {
    match code {
        101 => "101",
        200 => "200",
        201 => "201",
        204 => "204",
        206 => "206",
        301 => "301",
        302 => "302",
        303 => "303",
        304 => "304",
        307 => "307",
        308 => "308",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => "other",
    }
}

/// Pre-resolved handles of one route.
#[derive(Clone)]
pub struct RouteMetrics {
    pub route: Arc<str>,
    stable: Arc<VersionMetrics>,
    canary: Option<Arc<VersionMetrics>>,
}

impl RouteMetrics {
    pub fn version(&self, v: Version) -> &Arc<VersionMetrics> {
        match v {
            Version::Canary => self.canary.as_ref().unwrap_or(&self.stable),
            Version::Stable => &self.stable,
        }
    }
}

/// Pre-resolved handles of one (route, version). Status code series other
/// than 200 are created on first use (so /metrics lists only codes that
/// occurred) and resolved at most once per code.
pub struct VersionMetrics {
    route: Arc<str>,
    version: Version,
    requests: IntCounterVec,
    codes: [OnceLock<IntCounter>; COMMON_CODES.len()],
    duration: Histogram,
    assignments: [IntCounter; 6],
    upstream_errors: [IntCounter; 4],
    /// 5xx responses plus failed attempts that a retry hid, for rollout analysis.
    errors: AtomicU64,
}

/// Running totals of one (route, version), differenced over a rollout step.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
    /// (upper bound in seconds, cumulative count) per latency bucket.
    pub buckets: Vec<(f64, u64)>,
}

impl Totals {
    /// The figures of the window from `earlier` to `self`.
    pub fn since(&self, earlier: &Totals) -> Totals {
        Totals {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, &(upper, count))| (upper, count.saturating_sub(earlier.buckets.get(i).map_or(0, |b| b.1))))
                .collect(),
        }
    }
}

impl VersionMetrics {
    pub fn route(&self) -> &str {
        &self.route
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// An upstream failure the status code does not show: an attempt that
    /// a retry hid from the client, or a body the backend cut after its head.
    pub fn hidden_failure(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn totals(&self) -> Totals {
        let proto = self.duration.metric();
        let h = proto.get_histogram();
        Totals {
            requests: h.get_sample_count(),
            errors: self.errors.load(Ordering::Relaxed),
            buckets: h.get_bucket().iter().map(|b| (b.upper_bound(), b.cumulative_count())).collect(),
        }
    }

    pub fn assigned(&self, reason: Reason) {
        self.assignments[reason.index()].inc();
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind as usize].inc();
    }

    /// Records a finished request.
    pub fn response(&self, code: u16, seconds: f64) {
        match COMMON_CODES.iter().position(|&c| c == code) {
            Some(i) => self.codes[i]
                .get_or_init(|| self.requests.with_label_values(&[&self.route, self.version.as_str(), code_str(code)]))
                .inc(),
            None => self.requests.with_label_values(&[&self.route, self.version.as_str(), &code.to_string()]).inc(),
        }
        if code >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.duration.observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_of(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
    }

    #[test]
    fn route_handles_count_by_code_and_reason() {
        let m = Metrics::new();
        let web = m.route("web", "v1", Some("v2"));
        let canary = web.version(Version::Canary);
        canary.assigned(Reason::Beta);
        canary.response(200, 0.001);
        canary.response(418, 0.002);
        let text = m.render();
        assert_eq!(value_of(&text, r#"cutover_requests_total{code="200",route="web",version="canary"}"#), Some(1.0));
        assert_eq!(value_of(&text, r#"cutover_requests_total{code="418",route="web",version="canary"}"#), Some(1.0));
        assert_eq!(
            value_of(&text, r#"cutover_assignments_total{reason="beta",route="web",version="canary"}"#),
            Some(1.0)
        );
        assert_eq!(
            value_of(&text, r#"cutover_request_duration_seconds_count{route="web",version="canary"}"#),
            Some(2.0)
        );
    }

    #[test]
    fn removing_a_route_deletes_its_series() {
        let m = Metrics::new();
        m.route("gone", "v1", None).version(Version::Stable).response(200, 0.001);
        m.weight.with_label_values(&["gone"]).set(0.5);
        m.remove_route("gone");
        assert!(!m.render().contains("route=\"gone\""), "{}", m.render());
    }
}

/// Fleet mode's series (DESIGN §7), registered only when `[fleet]` is on.
#[derive(Clone)]
pub struct FleetMetrics {
    pub connected: IntGauge,
    pub replicas: IntGauge,
    pub applied_revision: IntGauge,
    pub driver: IntGaugeVec,
    /// Records read from etcd and ignored, by why (see [`IGNORED_REASONS`]).
    pub ignored_records: IntCounterVec,
}

/// Why a record from etcd was ignored: its key or value does not decode
/// (`undecodable`), a route record is not valid JSON of its shape
/// (`unparsable`), it names a route this replica's config does not have
/// (`unknown_route`), or it gives a canary share or a rollout to a route
/// this replica's config gives no canary pool (`no_canary_pool`).
pub const IGNORED_REASONS: [&str; 4] = ["undecodable", "unparsable", "unknown_route", "no_canary_pool"];

impl Metrics {
    /// The fleet series, registered on first use.
    pub fn fleet(&self) -> FleetMetrics {
        self.fleet
            .get_or_init(|| {
                let gauge = |name: &str, help: &str| {
                    let g = IntGauge::new(name, help).expect("valid metric");
                    let _ = self.registry.register(Box::new(g.clone()));
                    g
                };
                let driver = IntGaugeVec::new(
                    Opts::new("cutover_rollout_driver", "1 on the replica that drives the route's rollout"),
                    &["route"],
                )
                .expect("valid metric");
                let _ = self.registry.register(Box::new(driver.clone()));
                let ignored_records = IntCounterVec::new(
                    Opts::new(
                        "cutover_fleet_ignored_records_total",
                        "Records read from etcd and ignored (they do not decode, do not parse, name a route this config lacks, or give a canary share to a route without a canary pool here)",
                    ),
                    &["reason"],
                )
                .expect("valid metric");
                let _ = self.registry.register(Box::new(ignored_records.clone()));
                // At 0 from the start, so that rate() and alerts see the series.
                for reason in IGNORED_REASONS {
                    ignored_records.with_label_values(&[reason]);
                }
                FleetMetrics {
                    connected: gauge("cutover_fleet_connected", "1 while the fleet store (etcd) is reachable"),
                    replicas: gauge("cutover_fleet_replicas", "Live replicas of this front door seen in etcd"),
                    applied_revision: gauge(
                        "cutover_fleet_applied_revision",
                        "The newest etcd revision this replica has applied",
                    ),
                    driver,
                    ignored_records,
                }
            })
            .clone()
    }
}
