//! Progressive rollout: a plan of weights held for an interval each, judged
//! at the end of every step on the canary's own traffic during the step.
//!
//! The judgement is a pure function of (plan, step, window figures):
//! - fewer than `min_requests` canary requests: **extend** the step (judge
//!   again after another interval) rather than judge noise;
//! - canary error rate (5xx responses + upstream failures, over canary
//!   requests) above `max_error_rate`: **fail** (trigger `error_rate`);
//! - canary p99 above `max_p99`: **fail** (trigger `latency`);
//! - otherwise **advance** to the next step, or **finish** after the last.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Weight;

/// What `POST /v1/routes/{name}/rollout` asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Weights in basis points, strictly increasing, each 1..=10000.
    pub steps_bp: Vec<u16>,
    #[serde(with = "duration_ms")]
    pub interval: Duration,
    pub max_error_rate: f64,
    #[serde(default, with = "opt_duration_ms", skip_serializing_if = "Option::is_none")]
    pub max_p99: Option<Duration>,
    pub min_requests: u64,
}

impl Plan {
    pub fn weight(&self, step: usize) -> Weight {
        Weight::from_basis_points(self.steps_bp[step]).unwrap_or(Weight::FULL)
    }

    /// Checks a plan; the error says what is wrong in the API's words.
    pub fn validate(&self) -> Result<(), String> {
        if self.steps_bp.is_empty() {
            return Err("steps must list at least one weight".into());
        }
        if self.steps_bp.len() > 100 {
            return Err("at most 100 steps".into());
        }
        if self.steps_bp.iter().any(|&w| w == 0 || w > 10_000) {
            return Err("each step must be a weight above 0 and at most 100".into());
        }
        if self.steps_bp.windows(2).any(|w| w[0] >= w[1]) {
            return Err("steps must increase".into());
        }
        if self.interval < Duration::from_millis(100) || self.interval > Duration::from_secs(7 * 86_400) {
            return Err("interval must be between 100ms and 7d".into());
        }
        if !(0.0..=1.0).contains(&self.max_error_rate) || !self.max_error_rate.is_finite() {
            return Err("max_error_rate must be a fraction from 0 to 1".into());
        }
        Ok(())
    }
}

/// A running (or paused) rollout, as kept in the state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutState {
    pub plan: Plan,
    /// Index into `plan.steps_bp`.
    pub step: usize,
    pub paused: bool,
    /// Times the current step was extended for lack of traffic.
    #[serde(default)]
    pub extensions: u32,
}

/// One version's figures over a step window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    pub requests: u64,
    /// 5xx responses plus upstream failures.
    pub errors: u64,
    /// Estimated from the latency histogram; None without requests.
    pub p99: Option<Duration>,
}

impl Figures {
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 { 0.0 } else { self.errors as f64 / self.requests as f64 }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    pub canary: Figures,
    pub stable: Figures,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    ErrorRate,
    Latency,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::ErrorRate => "error_rate",
            Trigger::Latency => "latency",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Go to the next step.
    Advance,
    /// The last step passed: the rollout is complete.
    Finish,
    /// Too little canary traffic to judge: hold the step for another interval.
    Extend,
    /// Roll back, with the figures that triggered it.
    Fail { trigger: Trigger, detail: String },
}

/// Judges the step `step` of `plan` on `window`.
pub fn judge(plan: &Plan, step: usize, window: &Window) -> Verdict {
    let canary = &window.canary;
    if canary.requests < plan.min_requests {
        return Verdict::Extend;
    }
    if canary.error_rate() > plan.max_error_rate {
        return Verdict::Fail {
            trigger: Trigger::ErrorRate,
            detail: format!(
                "canary error rate {:.2}% ({} of {}) above the limit {:.2}% (stable {:.2}% of {})",
                canary.error_rate() * 100.0,
                canary.errors,
                canary.requests,
                plan.max_error_rate * 100.0,
                window.stable.error_rate() * 100.0,
                window.stable.requests
            ),
        };
    }
    if let (Some(limit), Some(p99)) = (plan.max_p99, canary.p99)
        && p99 > limit
    {
        return Verdict::Fail {
            trigger: Trigger::Latency,
            detail: format!(
                "canary p99 {} above the limit {} (stable p99 {})",
                fmt_ms(p99),
                fmt_ms(limit),
                window.stable.p99.map_or("-".to_string(), fmt_ms)
            ),
        };
    }
    if step + 1 >= plan.steps_bp.len() { Verdict::Finish } else { Verdict::Advance }
}

pub fn fmt_ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

/// Estimates a quantile from cumulative histogram buckets (upper bound,
/// cumulative count), interpolating linearly within the bucket, as
/// Prometheus's `histogram_quantile` does.
pub fn quantile(q: f64, buckets: &[(f64, u64)], total: u64) -> Option<Duration> {
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower_bound = 0.0;
    let mut lower_count = 0u64;
    for &(upper, count) in buckets {
        if count as f64 >= rank {
            let in_bucket = (count - lower_count) as f64;
            let fraction = if in_bucket > 0.0 { (rank - lower_count as f64) / in_bucket } else { 1.0 };
            let seconds = lower_bound + (upper - lower_bound) * fraction.clamp(0.0, 1.0);
            return Some(Duration::from_secs_f64(seconds.max(0.0)));
        }
        lower_bound = upper;
        lower_count = count;
    }
    // Above the last bucket: report its bound (the histogram cannot say more).
    Some(Duration::from_secs_f64(lower_bound))
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

mod opt_duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            steps_bp: vec![500, 2500, 5000, 10_000],
            interval: Duration::from_secs(600),
            max_error_rate: 0.01,
            max_p99: Some(Duration::from_millis(800)),
            min_requests: 100,
        }
    }

    fn window(requests: u64, errors: u64, p99_ms: u64) -> Window {
        Window {
            canary: Figures { requests, errors, p99: Some(Duration::from_millis(p99_ms)) },
            stable: Figures { requests: requests * 10, errors: 0, p99: Some(Duration::from_millis(100)) },
        }
    }

    #[test]
    fn healthy_step_advances() {
        assert_eq!(judge(&plan(), 0, &window(1000, 5, 300)), Verdict::Advance);
    }

    #[test]
    fn healthy_last_step_finishes() {
        assert_eq!(judge(&plan(), 3, &window(1000, 0, 300)), Verdict::Finish);
    }

    #[test]
    fn too_little_traffic_extends() {
        assert_eq!(judge(&plan(), 1, &window(99, 99, 5000)), Verdict::Extend);
    }

    #[test]
    fn error_rate_above_the_limit_fails() {
        let Verdict::Fail { trigger, detail } = judge(&plan(), 1, &window(1000, 11, 300)) else { panic!() };
        assert_eq!(trigger, Trigger::ErrorRate);
        assert!(detail.contains("1.10% (11 of 1000)"), "{detail}");
    }

    #[test]
    fn error_rate_at_the_limit_passes() {
        assert_eq!(judge(&plan(), 0, &window(1000, 10, 300)), Verdict::Advance);
    }

    #[test]
    fn latency_above_the_limit_fails() {
        let Verdict::Fail { trigger, detail } = judge(&plan(), 2, &window(1000, 0, 801)) else { panic!() };
        assert_eq!(trigger, Trigger::Latency);
        assert!(detail.contains("801.0ms"), "{detail}");
    }

    #[test]
    fn no_latency_limit_ignores_latency() {
        let mut p = plan();
        p.max_p99 = None;
        assert_eq!(judge(&p, 0, &window(1000, 0, 60_000)), Verdict::Advance);
    }

    #[test]
    fn plan_validation() {
        assert!(plan().validate().is_ok());
        let mut p = plan();
        p.steps_bp = vec![2500, 500];
        assert_eq!(p.validate().unwrap_err(), "steps must increase");
        p.steps_bp = vec![0, 500];
        assert!(p.validate().is_err());
        p = plan();
        p.max_error_rate = 1.5;
        assert!(p.validate().is_err());
    }

    #[test]
    fn quantile_interpolates_within_the_bucket() {
        // 100 requests: 50 under 10ms, 45 more under 100ms, 5 more under 1s.
        let buckets = [(0.01, 50), (0.1, 95), (1.0, 100)];
        let p99 = quantile(0.99, &buckets, 100).unwrap();
        assert!((p99.as_secs_f64() - 0.82).abs() < 1e-9, "{p99:?}");
        assert_eq!(quantile(0.99, &buckets, 0), None);
    }
}
