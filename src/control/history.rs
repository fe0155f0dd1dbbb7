//! A short history per route and version, for the dashboard's charts:
//! requests, errors and p99 over each [`INTERVAL`], for the last
//! [`CAPACITY`] intervals (15 minutes).
//!
//! It costs the request path nothing: a timer reads the counters and the
//! latency histogram the requests already feed (the same [`Totals`] a
//! rollout judges) from the current snapshot and keeps the differences.
//! Memory is fixed: each series is a ring allocated once at its capacity;
//! when it is full the oldest point is dropped.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::rollout::quantile;
use crate::metrics::Totals;
use crate::proxy::Shared;
use crate::routing::Version;

/// Time between two samples.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Points kept per series: 15 minutes at [`INTERVAL`].
pub const CAPACITY: usize = 450;

/// One interval of one (route, version). 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Point {
    /// End of the interval, in tenths of a second since the history started.
    time_ds: u32,
    requests: u32,
    errors: u32,
    /// p99 in microseconds; `u32::MAX` when the interval had no request.
    p99_us: u32,
}

struct Series {
    /// The counters at the last sample, differenced by the next one.
    last: Totals,
    points: VecDeque<Point>,
}

impl Series {
    /// A series starts from zero: a route new to the snapshot has fresh
    /// counters (a removed route's series are deleted from the registry).
    fn new() -> Series {
        Series { last: Totals::default(), points: VecDeque::with_capacity(CAPACITY) }
    }

    fn push(&mut self, point: Point) {
        if self.points.len() == CAPACITY {
            self.points.pop_front();
        }
        self.points.push_back(point);
    }
}

/// The rings of every route the snapshot serves.
pub struct History {
    /// Unix time in milliseconds when this history started (a new value
    /// tells a reader the proxy restarted).
    started_ms: u64,
    routes: BTreeMap<String, [Option<Series>; 2]>,
}

/// One route's counters at a sample: `[stable, canary]` (no canary: None).
pub type Sample = (String, [Option<Totals>; 2]);

impl History {
    pub fn new(started_ms: u64) -> History {
        History { started_ms, routes: BTreeMap::new() }
    }

    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// Records one sample taken at `now_ms` (Unix ms). Routes missing from
    /// `samples` are forgotten (a reload removed them).
    pub fn record(&mut self, now_ms: u64, samples: Vec<Sample>) {
        let time_ds = u32::try_from(now_ms.saturating_sub(self.started_ms) / 100).unwrap_or(u32::MAX);
        let mut kept = BTreeMap::new();
        for (name, totals) in samples {
            let mut series = self.routes.remove(&name).unwrap_or_default();
            for (slot, totals) in series.iter_mut().zip(totals) {
                let Some(t) = totals else {
                    *slot = None;
                    continue;
                };
                let s = slot.get_or_insert_with(Series::new);
                let d = t.since(&s.last);
                let p99_us = quantile(0.99, &d.buckets, d.requests)
                    .map_or(u32::MAX, |p| u32::try_from(p.as_micros()).unwrap_or(u32::MAX - 1));
                s.push(Point {
                    time_ds,
                    requests: u32::try_from(d.requests).unwrap_or(u32::MAX),
                    errors: u32::try_from(d.errors).unwrap_or(u32::MAX),
                    p99_us,
                });
                s.last = t;
            }
            kept.insert(name, series);
        }
        self.routes = kept;
    }

    fn time_ms(&self, p: &Point) -> u64 {
        self.started_ms + u64::from(p.time_ds) * 100
    }

    /// A copy of what [`History::to_json`] needs for `route` and
    /// `since_ms`: the points after `since_ms` and the one before them (its
    /// time gives the first one's interval). Cheap to take under the lock;
    /// the JSON is then built from it elsewhere.
    pub fn select(&self, route: Option<&str>, since_ms: u64) -> History {
        let routes = self
            .routes
            .iter()
            .filter(|(name, _)| route.is_none_or(|r| r == name.as_str()))
            .map(|(name, series)| {
                let copy = series.each_ref().map(|s| {
                    s.as_ref().map(|s| {
                        let first = s.points.iter().position(|p| self.time_ms(p) > since_ms).unwrap_or(s.points.len());
                        Series {
                            last: Totals::default(),
                            points: s.points.range(first.saturating_sub(1)..).copied().collect(),
                        }
                    })
                });
                (name.clone(), copy)
            })
            .collect();
        History { started_ms: self.started_ms, routes }
    }

    /// The JSON of `GET /v1/history`: points after `since_ms`, of one route
    /// (no series when it has not been sampled yet) or all.
    pub fn to_json(&self, route: Option<&str>, since_ms: u64) -> Value {
        const NONE: &[Option<Series>; 2] = &[None, None];
        let routes: Vec<Value> = match route {
            Some(name) => vec![self.route_json(name, self.routes.get(name).unwrap_or(NONE), since_ms)],
            None => self.routes.iter().map(|(name, s)| self.route_json(name, s, since_ms)).collect(),
        };
        json!({
            "started_ms": self.started_ms,
            "interval_ms": INTERVAL.as_millis() as u64,
            "capacity": CAPACITY,
            "columns": ["time_ms", "seconds", "requests", "errors", "p99_ms"],
            "routes": routes,
        })
    }

    fn route_json(&self, name: &str, series: &[Option<Series>; 2], since_ms: u64) -> Value {
        let mut versions = serde_json::Map::new();
        for v in Version::ALL {
            let Some(s) = &series[v.index()] else { continue };
            let mut previous: Option<u32> = None;
            let mut points = Vec::new();
            for p in &s.points {
                let seconds =
                    previous.map_or(INTERVAL.as_secs_f64(), |t| f64::from(p.time_ds.saturating_sub(t)) / 10.0);
                previous = Some(p.time_ds);
                let time_ms = self.time_ms(p);
                if time_ms <= since_ms {
                    continue;
                }
                let p99 = (p.p99_us != u32::MAX).then(|| f64::from(p.p99_us) / 1000.0);
                points.push(json!([time_ms, seconds, p.requests, p.errors, p99]));
            }
            versions.insert(v.as_str().to_string(), Value::Array(points));
        }
        json!({ "name": name, "versions": versions })
    }

    #[cfg(test)]
    fn ring(&self, route: &str, v: Version) -> &VecDeque<Point> {
        &self.routes[route][v.index()].as_ref().expect("series").points
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The counters of every route the current snapshot serves.
fn sample(shared: &Shared) -> Vec<Sample> {
    let snapshot = shared.snapshot.load_full();
    snapshot
        .config
        .routes
        .iter()
        .zip(&snapshot.routes)
        .map(|(route, data)| {
            crate::pace::point();
            let stable = data.metrics.version(Version::Stable).totals();
            let canary = route.canary.as_ref().map(|_| data.metrics.version(Version::Canary).totals());
            (route.name.clone(), [Some(stable), canary])
        })
        .collect()
}

/// Samples every [`INTERVAL`] until the task is dropped.
pub async fn run(shared: Arc<Shared>, history: Arc<Mutex<History>>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let samples = sample(&shared);
        let now = unix_ms();
        if let Ok(mut h) = history.lock() {
            h.record(now, samples);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(requests: u64, errors: u64, fast: u64) -> Totals {
        // `fast` requests under 1 ms, the rest under 1 s.
        Totals { requests, errors, buckets: vec![(0.001, fast), (1.0, requests)] }
    }

    #[test]
    fn points_are_differences_over_each_interval() {
        let mut h = History::new(1_000_000);
        h.record(1_002_000, vec![("web".into(), [Some(totals(10, 0, 10)), Some(totals(0, 0, 0))])]);
        h.record(1_004_000, vec![("web".into(), [Some(totals(30, 1, 30)), Some(totals(5, 5, 0))])]);
        h.record(1_006_500, vec![("web".into(), [Some(totals(30, 1, 30)), Some(totals(5, 5, 0))])]);
        let v = h.to_json(None, 0);
        assert_eq!(v["started_ms"], 1_000_000);
        assert_eq!(v["interval_ms"], 2000);
        assert_eq!(v["capacity"], CAPACITY);
        let web = &v["routes"][0];
        assert_eq!(web["name"], "web");
        assert_eq!(
            web["versions"]["stable"],
            json!([
                [1_002_000u64, 2.0, 10, 0, 0.99],
                [1_004_000u64, 2.0, 20, 1, 0.99],
                [1_006_500u64, 2.5, 0, 0, null]
            ])
        );
        // Every canary request between 1 ms and 1 s: the p99 interpolates in that bucket.
        let canary = &web["versions"]["canary"][1];
        assert_eq!((canary[2].as_u64(), canary[3].as_u64()), (Some(5), Some(5)));
        assert!((canary[4].as_f64().unwrap() - 990.01).abs() < 0.01, "{canary}");
        // Only points after `since`; a selection gives the same answer.
        let later = h.to_json(Some("web"), 1_004_000);
        assert_eq!(later["routes"][0]["versions"]["stable"], json!([[1_006_500u64, 2.5, 0, 0, null]]));
        for since in [0, 1_002_000, 1_004_000, 1_006_500] {
            assert_eq!(h.select(Some("web"), since).to_json(Some("web"), since), h.to_json(Some("web"), since));
            assert_eq!(h.select(None, since).to_json(None, since), h.to_json(None, since));
        }
        assert_eq!(
            h.select(Some("web"), 1_004_000).ring("web", Version::Stable).len(),
            2,
            "the point before, and after"
        );
        assert_eq!(h.to_json(Some("new"), 0)["routes"], json!([{ "name": "new", "versions": {} }]));
    }

    #[test]
    fn memory_is_fixed_and_the_oldest_points_are_dropped() {
        let mut h = History::new(0);
        h.record(0, vec![("web".into(), [Some(totals(0, 0, 0)), None])]);
        let capacity = h.ring("web", Version::Stable).capacity();
        assert!(capacity >= CAPACITY);
        let total = CAPACITY as u64 + 25;
        for i in 1..=total {
            h.record(i * 2000, vec![("web".into(), [Some(totals(i * i, 0, 0)), None])]);
        }
        let ring = h.ring("web", Version::Stable);
        assert_eq!(ring.len(), CAPACITY);
        assert_eq!(ring.capacity(), capacity, "the ring never grows");
        // The first 25 points are gone; the oldest kept is sample 26 (26² - 25²).
        assert_eq!(ring.front().unwrap().requests, 26 * 26 - 25 * 25);
        assert_eq!(ring.front().unwrap().time_ds, 26 * 20);
        assert_eq!(ring.back().unwrap().time_ds, (total * 20) as u32);
        let v = h.to_json(None, 0);
        assert_eq!(v["routes"][0]["versions"]["stable"].as_array().unwrap().len(), CAPACITY);
        assert!(v["routes"][0]["versions"].get("canary").is_none(), "no canary pool, no series");
    }

    #[test]
    fn removed_routes_are_forgotten_and_reset_counters_do_not_underflow() {
        let mut h = History::new(0);
        h.record(2000, vec![("a".into(), [Some(totals(5, 0, 5)), None]), ("b".into(), [Some(totals(1, 0, 1)), None])]);
        h.record(4000, vec![("b".into(), [Some(totals(0, 0, 0)), None])]);
        let v = h.to_json(None, 0);
        assert_eq!(v["routes"].as_array().unwrap().len(), 1);
        assert_eq!(v["routes"][0]["versions"]["stable"][1][2], 0, "counters reset: no underflow");
    }
}
