//! What `GET /v1/routes` and `ctl status` show.

use tokio::time::Instant;

use serde::{Deserialize, Serialize};

use super::{Control, ControlError};
use crate::routing::Version;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ReloadStatus {
    /// Whether the last load of the config succeeded.
    pub ok: bool,
    /// When the running config was loaded (RFC 3339).
    pub time: Option<String>,
    /// Why the last reload was rejected (the running config stayed).
    pub error: Option<String>,
    /// Rejected reloads since start.
    pub failures: u64,
    pub config_hash: String,
    /// Whether this reload changed the running config.
    #[serde(default)]
    pub changed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub config: Option<String>,
    pub reload: ReloadStatus,
    pub generation: u64,
    pub routes: Vec<RouteStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RouteStatus {
    pub name: String,
    pub host: String,
    pub path_prefix: String,
    pub stable: String,
    pub canary: Option<String>,
    /// Live canary weight in percent.
    pub weight: f64,
    pub halted: bool,
    /// The weight written in the config.
    pub config_weight: f64,
    pub rollout: Option<RolloutStatus>,
    pub last_outcome: Option<String>,
    pub pools: Vec<PoolStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RolloutStatus {
    /// 1-based.
    pub step: usize,
    pub steps: Vec<f64>,
    pub paused: bool,
    pub interval_secs: f64,
    /// Until the current step is judged.
    pub time_left_secs: f64,
    /// Times the step was extended for lack of canary traffic.
    pub extensions: u32,
    pub max_error_rate: f64,
    pub max_p99_ms: Option<f64>,
    pub min_requests: u64,
    pub canary: VersionFigures,
    pub stable: VersionFigures,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionFigures {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PoolStatus {
    pub name: String,
    pub version: String,
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackendStatus {
    pub address: String,
    pub healthy: bool,
    /// Why: the last check's result, an ejection, or "not checked".
    pub reason: String,
}

impl Control {
    pub(super) fn status(&self) -> Status {
        Status {
            config: self.config_path.as_ref().map(|p| p.display().to_string()),
            reload: self.last_reload.clone(),
            generation: self.generation,
            routes: self
                .config
                .routes
                .iter()
                .filter_map(|r| Some(self.status_of(r, self.live.get(&r.name)?)))
                .collect(),
        }
    }

    pub(super) fn route_status(&self, name: &str) -> Result<RouteStatus, ControlError> {
        let live = self.live(name)?;
        let route =
            self.config.route(name).ok_or_else(|| ControlError::NotFound(format!("no route named {name:?}")))?;
        Ok(self.status_of(route, live))
    }

    fn status_of(&self, route: &crate::config::Route, live: &super::RouteLive) -> RouteStatus {
        crate::pace::point();
        let name = route.name.as_str();
        let pool = |pool: &str, version: Version| PoolStatus {
            name: pool.to_string(),
            version: version.as_str().to_string(),
            backends: self
                .config
                .pools
                .get(pool)
                .map(|p| {
                    p.backends
                        .iter()
                        .map(|a| {
                            let health = self.backends.get(pool, a).and_then(|b| self.health.get(&b.id));
                            BackendStatus {
                                address: a.clone(),
                                healthy: health.is_none_or(|h| h.healthy),
                                reason: health.map_or_else(|| "not checked".to_string(), |h| h.reason.clone()),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default(),
        };
        let mut pools = vec![pool(&route.stable, Version::Stable)];
        if let Some(c) = &route.canary {
            pools.push(pool(c, Version::Canary));
        }
        let rollout = live.rollout.as_ref().map(|r| {
            let window = self.window(name, &r.baseline);
            let figures = |f: &super::rollout::Figures| VersionFigures {
                requests: f.requests,
                errors: f.errors,
                error_rate: f.error_rate(),
                p99_ms: f.p99.map(|d| d.as_secs_f64() * 1000.0),
            };
            let plan = &r.state.plan;
            RolloutStatus {
                step: r.state.step + 1,
                steps: plan.steps_bp.iter().map(|&bp| f64::from(bp) / 100.0).collect(),
                paused: r.state.paused,
                interval_secs: plan.interval.as_secs_f64(),
                time_left_secs: r
                    .deadline
                    .map_or(r.remaining, |d| d.saturating_duration_since(Instant::now()))
                    .as_secs_f64(),
                extensions: r.state.extensions,
                max_error_rate: plan.max_error_rate,
                max_p99_ms: plan.max_p99.map(|d| d.as_secs_f64() * 1000.0),
                min_requests: plan.min_requests,
                canary: figures(&window.canary),
                stable: figures(&window.stable),
            }
        });
        RouteStatus {
            name: name.to_string(),
            host: route.host.to_string(),
            path_prefix: route.path_prefix.clone(),
            stable: route.stable.clone(),
            canary: route.canary.clone(),
            weight: live.weight.percent(),
            halted: live.halted,
            config_weight: live.config_weight.percent(),
            rollout,
            last_outcome: live.last_outcome.clone(),
            pools,
        }
    }
}
