//! The fleet's store: etcd is the record (compare-and-swap on the route's
//! revision), the state file a local cache for starting while etcd is away.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::{Change, Store};
use crate::control::state::{self, StateFile};
use crate::control::{Actor, ControlError, analysis};
use crate::fleet::{Fleet, RouteRecord, WriteError};
use crate::metrics::Totals;

pub struct EtcdStore {
    fleet: Fleet,
    cache: Option<PathBuf>,
    /// Route -> (mod revision applied here, current rollout window).
    known: HashMap<String, (i64, Option<String>)>,
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Kinds of change that open a new rollout step window (an extended step
/// keeps its window: its figures accumulate, as on a single instance).
const NEW_WINDOW: [&str; 2] = ["rollout_start", "rollout_step"];

impl EtcdStore {
    pub fn new(fleet: Fleet, cache: Option<PathBuf>) -> EtcdStore {
        EtcdStore { fleet, cache, known: HashMap::new() }
    }

    fn record(&self, change: &Change<'_>) -> RouteRecord {
        let live = change.live;
        let rollout = live.rollout.as_ref();
        let window = rollout.map(|_| match self.known.get(change.route).and_then(|k| k.1.clone()) {
            Some(window) if !NEW_WINDOW.contains(&change.kind) => window,
            _ => format!("{}-{}", self.fleet.name, unix_ms()),
        });
        RouteRecord {
            state: live.to_state(),
            by: self.fleet.name.clone(),
            actor: change.actor.to_string(),
            kind: change.kind.to_string(),
            detail: change.detail.map(str::to_string),
            step_ends_at_ms: rollout
                .and_then(|r| r.deadline)
                .map(|d| unix_ms() + d.saturating_duration_since(Instant::now()).as_millis() as u64),
            remaining_ms: rollout.map_or(0, |r| r.remaining.as_millis() as u64),
            window,
        }
    }
}

/// When a step that ends at `ms` (Unix epoch) ends on this clock.
pub fn deadline_of(ms: u64) -> Instant {
    let now = unix_ms();
    if ms >= now { Instant::now() + Duration::from_millis(ms - now) } else { Instant::now() }
}

impl Store for EtcdStore {
    fn write(&mut self, change: &Change<'_>, all: &StateFile) -> Result<(), ControlError> {
        let record = self.record(change);
        let window = record.window.clone();
        let expected = self.revision(change.route);
        let as_driver = *change.actor == Actor::Rollout;
        match self.fleet.write(change.route, record.clone(), expected, as_driver) {
            Ok(revision) => {
                self.known.insert(change.route.to_string(), (revision, window));
            }
            Err(WriteError::Conflict(message)) => return Err(ControlError::Conflict(message)),
            Err(WriteError::NotDriver) => {
                return Err(ControlError::Conflict(format!(
                    "this replica no longer drives the rollout of {:?}",
                    change.route
                )));
            }
            // A manual rollback is always safe: applied here at once, written when etcd is back.
            Err(WriteError::Unreachable(message)) if change.kind == "rollback" && !as_driver => {
                tracing::warn!(
                    route = change.route,
                    "fleet store unreachable ({message}): rollback applied here, written when etcd returns"
                );
                self.fleet.pending(change.route, record);
            }
            Err(WriteError::Unreachable(message)) => {
                return Err(ControlError::Unavailable(format!("fleet store unreachable: {message}")));
            }
        }
        let _ = self.cache(all);
        Ok(())
    }

    fn cache(&mut self, all: &StateFile) -> Result<(), ControlError> {
        let Some(path) = &self.cache else { return Ok(()) };
        // Only a cache: etcd has the change, so a failure here is logged, not refused.
        if let Err(e) = state::save(path, all) {
            tracing::error!("fleet: the local state cache could not be written: {e}");
        }
        Ok(())
    }

    fn drives(&self, route: &str) -> bool {
        self.fleet.drives(route)
    }

    fn fleet_window(&self, route: &str) -> Option<[Totals; 2]> {
        let window = self.known.get(route).and_then(|k| k.1.clone());
        let view = self.fleet.view.lock().ok()?;
        let parts = view.counters.get(route).into_iter().flat_map(|replicas| replicas.values());
        Some(analysis::sum(parts.filter(|c| Some(&c.window) == window.as_ref()).map(|c| &c.versions)))
    }

    fn replica(&self) -> Option<&str> {
        Some(&self.fleet.name)
    }

    fn revision(&self, route: &str) -> i64 {
        self.known.get(route).map_or(0, |k| k.0)
    }

    fn reloaded(&mut self, added: &[String], removed: &[String]) {
        // A route removed then added again: its record is read again and
        // applied whatever revision this replica saw before.
        for route in added.iter().chain(removed) {
            self.known.remove(route);
        }
        self.fleet.reloaded(added.to_vec(), removed.to_vec());
    }

    fn seen(&mut self, route: &str, revision: i64, record: Option<&RouteRecord>) {
        let window = record.and_then(|r| r.state.rollout.as_ref().and(r.window.clone()));
        self.known.insert(route.to_string(), (revision, window));
    }
}
