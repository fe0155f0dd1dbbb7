//! Backend health: active checks and passive ejection.
//!
//! - **Active**: per pool `health = { path, interval, timeout, unhealthy_after,
//!   healthy_after }`. One task per backend, started at a random offset within
//!   the interval so checks do not arrive in bursts, stopped when a reload
//!   removes the backend. A 2xx or 3xx answer within the timeout is a pass.
//! - **Passive**: `eject.after` connection failures, resets or (unless
//!   `eject.timeouts = false`) response timeouts in a row take a backend out for `eject.base`, doubling for each ejection in a row up to
//!   `eject.max`; then it is readmitted and gets traffic again.
//!
//! A backend takes traffic when active checks (if any) say up and it is not
//! ejected. Results go to the control plane, which rebuilds the snapshot.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::task::AbortHandle;

use crate::config::{Config, Eject, HealthCheck};
use crate::control::{Command, Handle};
use crate::snapshot::{Backend, BackendSet};

/// What the control plane knows about one backend's health.
#[derive(Debug, Clone)]
pub struct BackendHealth {
    pub healthy: bool,
    /// The last check's result or the ejection, for `ctl status`.
    pub reason: String,
    checks_passed: u32,
    checks_failed: u32,
    active_down: bool,
    ejected: bool,
    ejections_in_a_row: u32,
    last_ejection: Option<Instant>,
}

impl Default for BackendHealth {
    fn default() -> Self {
        BackendHealth {
            healthy: true,
            reason: "not checked".into(),
            checks_passed: 0,
            checks_failed: 0,
            active_down: false,
            ejected: false,
            ejections_in_a_row: 0,
            last_ejection: None,
        }
    }
}

#[derive(Debug, Clone)]
pub enum HealthUpdate {
    /// An active check finished.
    Check { backend: u64, passed: bool, detail: String, unhealthy_after: u32, healthy_after: u32 },
    /// An ejection period is over.
    Readmit { backend: u64 },
}

impl HealthUpdate {
    pub fn backend(&self) -> u64 {
        match self {
            HealthUpdate::Check { backend, .. } | HealthUpdate::Readmit { backend } => *backend,
        }
    }
}

/// An ejection that just started.
pub struct Ejection {
    pub readmit_after: Duration,
}

impl BackendHealth {
    fn refresh(&mut self) {
        self.healthy = !self.active_down && !self.ejected;
    }

    pub fn apply(&mut self, update: &HealthUpdate) {
        match update {
            HealthUpdate::Check { passed: true, detail, healthy_after, .. } => {
                self.checks_passed += 1;
                self.checks_failed = 0;
                if self.active_down && self.checks_passed >= *healthy_after {
                    self.active_down = false;
                }
                if !self.ejected {
                    self.reason = format!("check passed: {detail}");
                }
            }
            HealthUpdate::Check { passed: false, detail, unhealthy_after, .. } => {
                self.checks_failed += 1;
                self.checks_passed = 0;
                if !self.active_down && self.checks_failed >= *unhealthy_after {
                    self.active_down = true;
                }
                if !self.ejected {
                    self.reason = format!("check failed ({} in a row): {detail}", self.checks_failed);
                }
            }
            HealthUpdate::Readmit { .. } => {
                if self.ejected {
                    self.ejected = false;
                    self.reason = if self.active_down {
                        "readmitted after ejection, but active checks still fail".into()
                    } else {
                        "readmitted after ejection".into()
                    };
                }
            }
        }
        self.refresh();
    }

    /// Ejects the backend after `eject.after` failures in a row. Returns None
    /// when it is already out.
    pub fn eject(&mut self, backend: &Backend, eject: &Eject, now: Instant) -> Option<Ejection> {
        if self.ejected {
            return None;
        }
        // A backend that stayed fine for a while starts again from the base period.
        if self.last_ejection.is_some_and(|t| now.duration_since(t) > eject.max * 4) {
            self.ejections_in_a_row = 0;
        }
        let factor = 1u32 << self.ejections_in_a_row.min(16);
        let period = eject.base.saturating_mul(factor).min(eject.max);
        self.ejections_in_a_row += 1;
        self.last_ejection = Some(now);
        self.ejected = true;
        self.reason = format!(
            "ejected for {}: {} failed attempts in a row",
            humantime::format_duration(period),
            backend.failures.load(std::sync::atomic::Ordering::Relaxed)
        );
        self.refresh();
        Some(Ejection { readmit_after: period })
    }
}

/// The running active-check tasks, one per checked backend.
pub struct Checkers {
    handle: Handle,
    tasks: HashMap<u64, (HealthCheck, AbortHandle)>,
}

impl Checkers {
    pub fn new(handle: Handle) -> Self {
        Checkers { handle, tasks: HashMap::new() }
    }

    /// Starts checks for new backends, restarts those whose settings changed,
    /// stops those of backends gone or no longer checked.
    pub fn sync(&mut self, config: &Config, backends: &BackendSet) {
        let mut wanted: HashMap<u64, (HealthCheck, Arc<Backend>)> = HashMap::new();
        for (pool_name, pool) in &config.pools {
            let Some(check) = &pool.health else { continue };
            for authority in &pool.backends {
                if let Some(b) = backends.get(pool_name, authority) {
                    wanted.insert(b.id, (check.clone(), b.clone()));
                }
            }
        }
        self.tasks.retain(|id, (check, task)| {
            let keep = wanted.get(id).is_some_and(|(w, _)| w == check);
            if !keep {
                task.abort();
            }
            keep
        });
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        for (id, (check, backend)) in wanted {
            if self.tasks.contains_key(&id) {
                continue;
            }
            let handle = self.handle.clone();
            let task = tokio::spawn(check_loop(backend, check.clone(), handle)).abort_handle();
            self.tasks.insert(id, (check, task));
        }
    }

    pub fn stop(&mut self) {
        for (_, (_, task)) in self.tasks.drain() {
            task.abort();
        }
    }
}

async fn check_loop(backend: Arc<Backend>, check: HealthCheck, handle: Handle) {
    // Stagger: start somewhere within the first interval.
    let offset = check.interval.mul_f64(rand::random::<f64>());
    tokio::time::sleep(offset).await;
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let (passed, detail) = probe(&backend, &check).await;
        handle.send(Command::Health(HealthUpdate::Check {
            backend: backend.id,
            passed,
            detail,
            unhealthy_after: check.unhealthy_after,
            healthy_after: check.healthy_after,
        }));
    }
}

/// One check: `GET <path>` on a fresh connection; 2xx or 3xx within the
/// timeout passes.
pub async fn probe(backend: &Backend, check: &HealthCheck) -> (bool, String) {
    let started = Instant::now();
    let attempt = async {
        let io = crate::proxy::upstream::open(backend).await.map_err(|e| e.detail)?;
        let (mut sender, conn) =
            http1::Builder::new().handshake(TokioIo::new(io)).await.map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = http::Request::get(check.path.as_str())
            .header(http::header::HOST, &*backend.authority)
            .header(http::header::USER_AGENT, "cutover-health-check")
            .header(http::header::CONNECTION, "close")
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
        let status = response.status();
        let _ = response.into_body().collect().await;
        Ok::<_, String>(status)
    };
    match tokio::time::timeout(check.timeout, attempt).await {
        Ok(Ok(status)) if status.is_success() || status.is_redirection() => {
            (true, format!("{} in {}ms", status.as_u16(), started.elapsed().as_millis()))
        }
        Ok(Ok(status)) => (false, format!("answered {}", status.as_u16())),
        Ok(Err(e)) => (false, e),
        Err(_) => (false, format!("no answer within {}", humantime::format_duration(check.timeout))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(passed: bool) -> HealthUpdate {
        HealthUpdate::Check { backend: 1, passed, detail: "x".into(), unhealthy_after: 3, healthy_after: 2 }
    }

    #[test]
    fn goes_down_after_unhealthy_after_failures_and_up_after_healthy_after_passes() {
        let mut h = BackendHealth::default();
        h.apply(&check(false));
        h.apply(&check(false));
        assert!(h.healthy);
        h.apply(&check(false));
        assert!(!h.healthy);
        h.apply(&check(true));
        assert!(!h.healthy);
        h.apply(&check(true));
        assert!(h.healthy);
    }

    #[test]
    fn ejection_doubles_up_to_the_maximum_and_readmits() {
        let backend = Backend::new("p", "127.0.0.1:1", None);
        let eject = Eject { after: 3, base: Duration::from_secs(5), max: Duration::from_secs(12), timeouts: true };
        let mut h = BackendHealth::default();
        let now = Instant::now();
        let periods: Vec<u64> = (0..3)
            .map(|_| {
                let e = h.eject(&backend, &eject, now).expect("ejected");
                assert!(!h.healthy);
                assert!(h.eject(&backend, &eject, now).is_none(), "already out");
                h.apply(&HealthUpdate::Readmit { backend: backend.id });
                assert!(h.healthy);
                e.readmit_after.as_secs()
            })
            .collect();
        assert_eq!(periods, vec![5, 10, 12]);
    }
}
