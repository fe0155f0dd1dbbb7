//! The snapshot: everything the data plane reads for one request, immutable
//! and fully resolved. The control plane builds a new one on every change and
//! swaps it in (arc-swap); requests in flight keep the one they started with.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::config::{Balance, Config, Eject, Weight};
use crate::metrics::{Metrics, RouteMetrics};
use crate::proxy::tls::UpstreamTls;
use crate::routing::Rules;

/// One backend server. Its identity (pool, address) outlives snapshots: a
/// reload that keeps the backend keeps this value, with its counters and its
/// pooled connections.
#[derive(Debug)]
pub struct Backend {
    /// Unique in the process; keys the per-worker connection pools.
    pub id: u64,
    pub pool: Arc<str>,
    /// `host:port` as configured.
    pub authority: Arc<str>,
    /// The address when the authority is an IP literal (no DNS lookup needed).
    pub addr: Option<SocketAddr>,
    /// Requests in flight, for `least_requests`.
    pub inflight: AtomicU32,
    /// Consecutive failed attempts, for passive ejection.
    pub failures: AtomicU32,
    pub tls: Option<Arc<UpstreamTls>>,
    /// Requests waiting for a slot under the pool's `max_connections`.
    pub queued: AtomicU32,
    /// Woken when a request at this backend ends while others wait.
    pub freed: tokio::sync::Notify,
}

static NEXT_BACKEND_ID: AtomicU64 = AtomicU64::new(1);

impl Backend {
    pub fn new(pool: &str, authority: &str, tls: Option<Arc<UpstreamTls>>) -> Backend {
        Backend {
            id: NEXT_BACKEND_ID.fetch_add(1, Ordering::Relaxed),
            pool: pool.into(),
            authority: authority.into(),
            addr: authority.parse().ok(),
            inflight: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            tls,
            queued: AtomicU32::new(0),
            freed: tokio::sync::Notify::new(),
        }
    }
}

/// A pool as one snapshot sees it.
#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    pub backends: Vec<Arc<Backend>>,
    /// Indices into `backends` of those that take traffic.
    pub healthy: Vec<usize>,
    pub balance: Balance,
    pub eject: Eject,
    /// Round-robin position, shared by the snapshots of this pool.
    pub cursor: Arc<AtomicUsize>,
    /// Requests in flight per backend (0: no limit) and the queue's bound.
    pub max_connections: u32,
    pub max_queue: u32,
}

impl Pool {
    /// Picks a healthy backend for a request (`exclude` None), or for its
    /// retry: another one than `exclude`, the backend that just failed.
    ///
    /// Round robin moves the shared cursor once per request, on its first
    /// pick only: a retry takes the backend after the failed one in the
    /// rotation and leaves the cursor alone, so the next request's choice is
    /// what it would have been without the failure. (Moving it for the retry
    /// too sent nearly every first attempt to the failing one of two.)
    ///
    /// A backend that failed `eject.after` attempts in a row is passed over
    /// at once, unless every other one has too: the control plane's ejection
    /// reaches the snapshot a moment later (more than a moment on a loaded
    /// machine), and meanwhile every request sent there would need a retry
    /// from the budget.
    pub fn pick(&self, exclude: Option<u64>, random: impl FnMut(usize) -> usize) -> Option<&Arc<Backend>> {
        let after = self.eject.after;
        let others = self.healthy.iter().map(|&i| &self.backends[i]).filter(move |b| Some(b.id) != exclude);
        let working = others.clone().filter(move |b| b.failures.load(Ordering::Relaxed) < after);
        // Whether any works: the first one found answers it.
        match working.clone().next() {
            None => self.pick_among(others, exclude, random),
            Some(_) => self.pick_among(working, exclude, random),
        }
    }

    fn pick_among<'a>(
        &'a self,
        candidates: impl Iterator<Item = &'a Arc<Backend>> + Clone,
        exclude: Option<u64>,
        random: impl FnMut(usize) -> usize,
    ) -> Option<&'a Arc<Backend>> {
        let n = candidates.clone().count();
        if n == 0 {
            return None;
        }
        match (self.balance, exclude) {
            (Balance::RoundRobin, None) => candidates.clone().nth(self.cursor.fetch_add(1, Ordering::Relaxed) % n),
            (Balance::RoundRobin, Some(failed)) => {
                // Candidates keep the rotation's order with the failed one left
                // out: the one after it is the first candidate past its place.
                let healthy = self.healthy.iter().map(|&i| &self.backends[i]);
                let next = match healthy.clone().position(|b| b.id == failed) {
                    Some(place) => place % n,
                    None => self.cursor.load(Ordering::Relaxed) % n,
                };
                candidates.clone().nth(next)
            }
            (Balance::LeastRequests, _) => power_of_two_choices(candidates, n, random),
        }
    }
}

/// Least requests by the power of two choices: two distinct random backends,
/// the one with fewer requests in flight wins.
fn power_of_two_choices<'a>(
    candidates: impl Iterator<Item = &'a Arc<Backend>> + Clone,
    n: usize,
    mut random: impl FnMut(usize) -> usize,
) -> Option<&'a Arc<Backend>> {
    if n == 1 {
        return candidates.clone().next();
    }
    let a = random(n);
    let b = (a + 1 + random(n - 1)) % n;
    let first = candidates.clone().nth(a)?;
    let second = candidates.clone().nth(b)?;
    let load = |x: &Backend| x.inflight.load(Ordering::Relaxed);
    Some(if load(second) < load(first) { second } else { first })
}

/// Per-route data the data plane needs beside the routing rules.
pub struct RouteData {
    pub metrics: RouteMetrics,
    /// The route name as the `X-Cutover-Route` value.
    pub header: http::HeaderValue,
}

pub struct Snapshot {
    /// Increases with every swap.
    pub generation: u64,
    pub config: Arc<Config>,
    pub rules: Rules,
    /// Indexed like `rules.pool_up`.
    pub pools: Vec<Pool>,
    /// Indexed like `rules.routes`.
    pub routes: Vec<RouteData>,
    /// `Via` value appended by this proxy.
    pub via: &'static str,
    /// `sticky.header` names a field HTTP/1.1 heads keep as it came
    /// (`proxy::verbatim`): the decision needs such a head's fields in its map.
    pub sticky_header_verbatim: bool,
}

/// The live part of a route: what the admin API and rollouts change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Live {
    pub weight: Weight,
    pub halted: bool,
}

/// Backends by (pool, authority), kept across reloads by the control plane.
#[derive(Default)]
pub struct BackendSet {
    by_key: BTreeMap<(String, String), Arc<Backend>>,
    cursors: HashMap<String, Arc<AtomicUsize>>,
}

impl BackendSet {
    /// Brings the set in line with `config`, reusing backends that stay.
    /// Returns the ones removed (their series and health checks must go).
    pub fn sync(&mut self, config: &Config, tls: &HashMap<String, Arc<UpstreamTls>>) -> Vec<Arc<Backend>> {
        let mut wanted = HashSet::new();
        for (pool_name, pool) in &config.pools {
            let pool_tls = tls.get(pool_name).cloned();
            for authority in &pool.backends {
                let key = (pool_name.clone(), authority.clone());
                wanted.insert(key.clone());
                let stale = self.by_key.get(&key).is_some_and(|b| !same_tls(&b.tls, &pool_tls));
                if stale || !self.by_key.contains_key(&key) {
                    self.by_key.insert(key, Arc::new(Backend::new(pool_name, authority, pool_tls.clone())));
                }
            }
        }
        self.cursors.retain(|name, _| config.pools.contains_key(name));
        let removed: Vec<(String, String)> = self.by_key.keys().filter(|k| !wanted.contains(*k)).cloned().collect();
        removed.into_iter().filter_map(|k| self.by_key.remove(&k)).collect()
    }

    pub fn get(&self, pool: &str, authority: &str) -> Option<&Arc<Backend>> {
        self.by_key.get(&(pool.to_string(), authority.to_string()))
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.by_key.values()
    }

    fn cursor(&mut self, pool: &str) -> Arc<AtomicUsize> {
        self.cursors.entry(pool.to_string()).or_default().clone()
    }
}

fn same_tls(a: &Option<Arc<UpstreamTls>>, b: &Option<Arc<UpstreamTls>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

/// What a snapshot build reads from the control plane.
pub struct Inputs<'a> {
    pub generation: u64,
    pub config: &'a Arc<Config>,
    pub live: &'a dyn Fn(&str) -> Live,
    pub healthy: &'a dyn Fn(&Backend) -> bool,
    pub route_metrics: &'a dyn Fn(&crate::config::Route) -> RouteMetrics,
}

impl Snapshot {
    /// Builds a snapshot. `backends` must have been synced with the config.
    pub fn build(inputs: Inputs<'_>, backends: &mut BackendSet) -> Snapshot {
        let config = inputs.config;
        let pool_names: Vec<&str> = config.pools.keys().map(String::as_str).collect();
        let pools: Vec<Pool> = config
            .pools
            .iter()
            .map(|(name, pool)| {
                let list: Vec<Arc<Backend>> =
                    pool.backends.iter().filter_map(|a| backends.get(name, a).cloned()).collect();
                let healthy = (0..list.len()).filter(|&i| (inputs.healthy)(&list[i])).collect();
                Pool {
                    name: name.as_str().into(),
                    backends: list,
                    healthy,
                    balance: pool.balance,
                    eject: pool.eject.clone(),
                    cursor: backends.cursor(name),
                    max_connections: pool.max_connections,
                    max_queue: pool.max_queue,
                }
            })
            .collect();
        let mut rules = Rules::new(config, &pool_names, |name| {
            let live = (inputs.live)(name);
            (live.weight, live.halted)
        });
        rules.pool_up = pools.iter().map(|p| !p.healthy.is_empty()).collect();
        let routes = config
            .routes
            .iter()
            .map(|r| {
                crate::pace::point();
                RouteData {
                    metrics: (inputs.route_metrics)(r),
                    // Route names are validated to be header-safe.
                    header: http::HeaderValue::from_str(&r.name).unwrap_or(http::HeaderValue::from_static("-")),
                }
            })
            .collect();
        let sticky_header_verbatim = rules
            .sticky
            .header
            .as_ref()
            .is_some_and(|name| crate::proxy::verbatim::request_name(name.as_str().as_bytes()));
        Snapshot {
            generation: inputs.generation,
            config: config.clone(),
            rules,
            pools,
            routes,
            via: "cutover",
            sticky_header_verbatim,
        }
    }

    /// A snapshot straight from a config: config weights, every backend up.
    /// For tests and benchmarks.
    pub fn from_config(config: Config, metrics: &Metrics) -> Snapshot {
        let config = Arc::new(config);
        let mut backends = BackendSet::default();
        backends.sync(&config, &HashMap::new());
        let live =
            |name: &str| Live { weight: config.route(name).map(|r| r.weight).unwrap_or_default(), halted: false };
        let route_metrics = |r: &crate::config::Route| metrics.route(&r.name, &r.stable, r.canary.as_deref());
        Snapshot::build(
            Inputs { generation: 1, config: &config, live: &live, healthy: &|_| true, route_metrics: &route_metrics },
            &mut backends,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize, balance: Balance) -> Pool {
        let backends: Vec<Arc<Backend>> =
            (0..n).map(|i| Arc::new(Backend::new("p", &format!("127.0.0.1:{}", 1000 + i), None))).collect();
        Pool {
            name: "p".into(),
            healthy: (0..n).collect(),
            backends,
            balance,
            eject: Eject {
                after: 3,
                base: std::time::Duration::from_secs(1),
                max: std::time::Duration::from_secs(2),
                timeouts: true,
            },
            cursor: Arc::default(),
            max_connections: 0,
            max_queue: 0,
        }
    }

    #[test]
    fn a_backend_that_failed_eject_after_times_in_a_row_is_passed_over_unless_all_have() {
        for balance in [Balance::RoundRobin, Balance::LeastRequests] {
            let p = pool(3, balance);
            p.backends[1].failures.store(3, Ordering::Relaxed);
            let mut n = 0;
            let picks: Vec<u64> = (0..30)
                .map(|_| {
                    n += 1;
                    p.pick(None, |k| n % k).unwrap().id
                })
                .collect();
            assert!(!picks.contains(&p.backends[1].id), "{balance:?}: {picks:?}");
            assert!(picks.contains(&p.backends[0].id) && picks.contains(&p.backends[2].id), "{balance:?}");
            // A retry after backend 0 failed: backend 2, not the failing one.
            assert_eq!(p.pick(Some(p.backends[0].id), |_| 0).unwrap().id, p.backends[2].id, "{balance:?}");
            // Below the threshold it takes its turn again.
            p.backends[1].failures.store(2, Ordering::Relaxed);
            assert!(
                (0..30).any(|_| {
                    n += 1;
                    p.pick(None, |k| n % k).unwrap().id == p.backends[1].id
                }),
                "{balance:?}"
            );
            // All failing: all still serve (the pick never refuses for this).
            for b in &p.backends {
                b.failures.store(5, Ordering::Relaxed);
            }
            let all: std::collections::HashSet<u64> = (0..30).map(|i| p.pick(None, |k| i % k).unwrap().id).collect();
            assert_eq!(all.len(), 3, "{balance:?}");
        }
    }

    #[test]
    fn round_robin_visits_every_healthy_backend_in_turn() {
        let mut p = pool(3, Balance::RoundRobin);
        p.healthy = vec![0, 2];
        let picks: Vec<u64> = (0..4).map(|_| p.pick(None, |_| 0).unwrap().id).collect();
        let (a, c) = (p.backends[0].id, p.backends[2].id);
        assert_eq!(picks, vec![a, c, a, c]);
    }

    #[test]
    fn pick_skips_the_excluded_backend_unless_it_is_the_only_one() {
        let p = pool(2, Balance::RoundRobin);
        let first = p.backends[0].id;
        for _ in 0..4 {
            assert_ne!(p.pick(Some(first), |_| 0).unwrap().id, first);
        }
        let single = pool(1, Balance::RoundRobin);
        assert!(single.pick(Some(single.backends[0].id), |_| 0).is_none());
    }

    #[test]
    fn a_retry_takes_the_next_backend_and_leaves_the_next_requests_choice_alone() {
        let p = pool(3, Balance::RoundRobin);
        let [a, b, c] = [0, 1, 2].map(|i| p.backends[i].id);
        // Request 1 goes to a, which fails: its retry goes to b.
        assert_eq!(p.pick(None, |_| 0).unwrap().id, a);
        assert_eq!(p.pick(Some(a), |_| 0).unwrap().id, b);
        // Request 2 goes where it would have gone without the failure; its
        // retry after b is c, and after c (last in the rotation) is a.
        assert_eq!(p.pick(None, |_| 0).unwrap().id, b);
        assert_eq!(p.pick(Some(b), |_| 0).unwrap().id, c);
        assert_eq!(p.pick(Some(c), |_| 0).unwrap().id, a);
        let firsts: Vec<u64> = (0..4).map(|_| p.pick(None, |_| 0).unwrap().id).collect();
        assert_eq!(firsts, vec![c, a, b, c], "retries did not move the cursor");
    }

    #[test]
    fn least_requests_prefers_the_less_loaded_of_two() {
        let p = pool(2, Balance::LeastRequests);
        p.backends[0].inflight.store(5, Ordering::Relaxed);
        for _ in 0..10 {
            assert_eq!(p.pick(None, |n| n - 1).unwrap().id, p.backends[1].id);
        }
    }

    #[test]
    fn no_healthy_backend_picks_none() {
        let mut p = pool(2, Balance::LeastRequests);
        p.healthy.clear();
        assert!(p.pick(None, |_| 0).is_none());
    }
}
