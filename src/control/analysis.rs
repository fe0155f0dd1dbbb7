//! Rollout figures over several replicas: in fleet mode every replica
//! publishes its counters of the current step window, and the driver judges
//! the step on their sum. Sums of histograms are exact (bucket counts add),
//! so the fleet's p99 is what one replica seeing all traffic would compute.

use crate::metrics::Totals;
use crate::routing::Version;

use super::rollout::{self, Figures, Window};

/// Adds replicas' totals (per version, indexed by [`Version::index`]).
pub fn sum<'a>(parts: impl Iterator<Item = &'a [Totals; 2]>) -> [Totals; 2] {
    let mut total: [Totals; 2] = Default::default();
    for part in parts {
        for (sum, add) in total.iter_mut().zip(part) {
            sum.requests += add.requests;
            sum.errors += add.errors;
            if sum.buckets.is_empty() {
                sum.buckets = add.buckets.clone();
            } else if sum.buckets.len() == add.buckets.len() {
                for (s, a) in sum.buckets.iter_mut().zip(&add.buckets) {
                    s.1 += a.1;
                }
            }
        }
    }
    total
}

/// The step's judgeable figures from (summed) totals.
pub fn window(totals: &[Totals; 2]) -> Window {
    let figures = |v: Version| {
        let t = &totals[v.index()];
        Figures { requests: t.requests, errors: t.errors, p99: rollout::quantile(0.99, &t.buckets, t.requests) }
    };
    Window { canary: figures(Version::Canary), stable: figures(Version::Stable) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn totals(requests: u64, errors: u64, buckets: &[(f64, u64)]) -> Totals {
        Totals { requests, errors, buckets: buckets.to_vec() }
    }

    #[test]
    fn errors_seen_by_one_replica_count_for_the_fleet() {
        let quiet = [totals(500, 0, &[(0.01, 500), (1.0, 500)]), totals(50, 0, &[(0.01, 50), (1.0, 50)])];
        let failing = [totals(500, 0, &[(0.01, 500), (1.0, 500)]), totals(50, 10, &[(0.01, 50), (1.0, 50)])];
        let w = window(&sum([&quiet, &failing, &quiet].into_iter()));
        assert_eq!((w.canary.requests, w.canary.errors), (150, 10));
        assert_eq!((w.stable.requests, w.stable.errors), (1500, 0));
    }

    #[test]
    fn the_fleet_p99_is_the_p99_of_all_requests() {
        // One replica fast, one slow: together 100 requests, 5 of them slow.
        let fast = [Totals::default(), totals(95, 0, &[(0.01, 95), (0.1, 95), (1.0, 95)])];
        let slow = [Totals::default(), totals(5, 0, &[(0.01, 0), (0.1, 0), (1.0, 5)])];
        let w = window(&sum([&fast, &slow].into_iter()));
        assert_eq!(w.canary.requests, 100);
        let p99 = w.canary.p99.unwrap();
        assert!((p99.as_secs_f64() - 0.82).abs() < 1e-9, "{p99:?}");
        assert!(w.canary.p99 > Some(Duration::from_millis(100)));
    }

    #[test]
    fn no_replica_no_traffic() {
        let w = window(&sum(std::iter::empty()));
        assert_eq!(w.canary.requests, 0);
        assert_eq!(w.canary.p99, None);
    }
}
