//! Fleet mode (DESIGN §7): several replicas share one live state in etcd.
//!
//! A `cutover-fleet` thread owns the etcd session: a lease for this replica,
//! a watch on the prefix that feeds route changes to the control task, the
//! replica's heartbeat record, its per-step rollout counters, and the
//! driver keys of the rollouts it drives. The control task writes through
//! [`crate::control::store`] and reads what it needs from [`View`]; etcd
//! is never on the request path.
//!
//! Keys under `prefix`:
//! - `routes/{route}`: the route's live state ([`RouteRecord`]), written
//!   with compare-and-swap on its revision;
//! - `replicas/{name}`: heartbeat ([`ReplicaRecord`]), bound to the lease;
//! - `drivers/{route}`: who drives the route's rollout, bound to its lease;
//! - `counters/{route}/{name}`: the replica's figures for the current
//!   rollout step ([`CountersRecord`]), bound to its lease.

pub mod base64;
pub mod etcd;
mod session;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::control::state::RouteState;
use crate::metrics::Totals;

pub use session::start;

/// A route's live state as kept in etcd, with who changed it last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteRecord {
    pub state: RouteState,
    /// The replica the change came from.
    pub by: String,
    pub actor: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When the current rollout step ends (ms since the Unix epoch); None
    /// when no rollout runs or it is paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_ends_at_ms: Option<u64>,
    /// Time left in the step while paused.
    #[serde(default)]
    pub remaining_ms: u64,
    /// Names the current step window: replicas publish their counters per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
}

/// A replica's heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    pub name: String,
    pub config_hash: String,
    pub applied_revision: i64,
    /// RFC 3339.
    pub last_seen: String,
    pub version: String,
}

/// One replica's figures over one rollout step window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountersRecord {
    pub window: String,
    /// Indexed by [`crate::routing::Version::index`].
    pub versions: [Totals; 2],
}

/// A route change for the control task.
#[derive(Debug, Clone)]
pub struct RouteChange {
    pub route: String,
    /// The key's mod revision; 0 when the key was deleted.
    pub revision: i64,
    pub record: Option<RouteRecord>,
}

/// What the fleet thread tells the control task.
#[derive(Debug)]
pub enum Note {
    /// Route changes from the watch (or the full list after a reconnect).
    Routes(Vec<RouteChange>),
    /// This replica started or stopped driving a rollout: re-plan deadlines.
    Drivers,
}

/// What the fleet knows, shared by the fleet thread, the control task and
/// the admin API.
#[derive(Debug, Default)]
pub struct View {
    pub connected: bool,
    pub last_error: Option<String>,
    /// The newest etcd revision applied from the watch.
    pub applied_revision: i64,
    pub replicas: BTreeMap<String, ReplicaRecord>,
    /// Route -> driver key value (`name#lease`).
    pub drivers: BTreeMap<String, String>,
    /// Routes whose rollout this replica drives now.
    pub driving: BTreeSet<String>,
    /// Route -> replica -> figures of the current window.
    pub counters: BTreeMap<String, BTreeMap<String, CountersRecord>>,
    /// Route -> the current rollout window (routes with a rollout only).
    pub windows: BTreeMap<String, String>,
}

/// Why a fleet write failed.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteError {
    /// Someone else changed the route first.
    Conflict(String),
    Unreachable(String),
    /// A rollout step from a replica that no longer drives it.
    NotDriver,
}

pub(crate) enum Request {
    Write {
        route: String,
        record: RouteRecord,
        /// The revision this replica last saw for the route (0: none).
        expected: i64,
        as_driver: bool,
        reply: std::sync::mpsc::Sender<Result<i64, WriteError>>,
    },
    /// A manual rollback whose write found etcd unreachable: kept until etcd has it.
    Pending { route: String, record: RouteRecord },
    /// A reload added and removed routes: the records of the added ones
    /// (and of routes it gave a canary pool), ignored until now, are read;
    /// what the session holds for the removed ones (a rollout window, a
    /// driver key) is let go.
    Reloaded { added: Vec<String>, removed: Vec<String> },
}

/// A handle on the fleet thread.
#[derive(Clone)]
pub struct Fleet {
    pub name: String,
    pub prefix: String,
    pub lease: Duration,
    pub view: Arc<Mutex<View>>,
    requests: tokio::sync::mpsc::UnboundedSender<Request>,
    stop: tokio_util::sync::CancellationToken,
    /// Set by [`Fleet::kill`]: stop without revoking the lease.
    abrupt: Arc<std::sync::atomic::AtomicBool>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    timeout: Duration,
}

impl Fleet {
    /// Writes a route record with compare-and-swap; blocks the caller (the
    /// control task) until etcd answered or the time is up.
    pub fn write(&self, route: &str, record: RouteRecord, expected: i64, as_driver: bool) -> Result<i64, WriteError> {
        if let Ok(view) = self.view.lock()
            && !view.connected
        {
            return Err(WriteError::Unreachable(view.last_error.clone().unwrap_or_else(|| "not connected".into())));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let request = Request::Write { route: route.to_string(), record, expected, as_driver, reply: tx };
        if self.requests.send(request).is_err() {
            return Err(WriteError::Unreachable("the fleet session stopped".into()));
        }
        rx.recv_timeout(self.timeout * 3 + Duration::from_millis(500))
            .unwrap_or_else(|_| Err(WriteError::Unreachable("etcd did not answer in time".into())))
    }

    pub fn pending(&self, route: &str, record: RouteRecord) {
        let _ = self.requests.send(Request::Pending { route: route.to_string(), record });
    }

    /// After a reload (see [`Request::Reloaded`]); does not wait: the added
    /// routes' records come back as route changes, as from the watch. When
    /// etcd is unreachable there is nothing to do: the next session reads
    /// every record anyway.
    pub fn reloaded(&self, added: Vec<String>, removed: Vec<String>) {
        if !added.is_empty() || !removed.is_empty() {
            let _ = self.requests.send(Request::Reloaded { added, removed });
        }
    }

    pub fn drives(&self, route: &str) -> bool {
        self.view.lock().map(|v| v.driving.contains(route)).unwrap_or(false)
    }

    /// Stops the session: deletes this replica's keys by revoking its lease.
    pub fn stop(&self) {
        self.stop.cancel();
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }

    /// Stops the session as a crash would: the lease is left to expire
    /// (tests of driver failover).
    pub fn kill(&self) {
        self.abrupt.store(true, std::sync::atomic::Ordering::SeqCst);
        self.stop();
    }

    /// `GET /v1/fleet`.
    pub fn status(&self, own_hash: &str) -> serde_json::Value {
        let Ok(view) = self.view.lock() else { return serde_json::json!({}) };
        let hashes: BTreeSet<&str> = view.replicas.values().map(|r| r.config_hash.as_str()).collect();
        let replicas: Vec<serde_json::Value> = view
            .replicas
            .values()
            .map(|r| {
                serde_json::json!({
                    "name": r.name,
                    "config_hash": r.config_hash,
                    "config_differs": r.config_hash != own_hash,
                    "connected": if r.name == self.name { view.connected } else { true },
                    "applied_revision": r.applied_revision,
                    "last_seen": r.last_seen,
                    "version": r.version,
                    "this": r.name == self.name,
                })
            })
            .collect();
        let drivers: BTreeMap<&String, &str> =
            view.drivers.iter().map(|(route, value)| (route, driver_name(value))).collect();
        serde_json::json!({
            "name": self.name,
            "prefix": self.prefix,
            "lease": humantime::format_duration(self.lease).to_string(),
            "connected": view.connected,
            "error": view.last_error,
            "applied_revision": view.applied_revision,
            "config_hash": own_hash,
            "config_hashes_agree": hashes.len() <= 1,
            "replicas": replicas,
            "drivers": drivers,
        })
    }
}

/// The replica name in a driver key's value (`name#lease`).
pub fn driver_name(value: &str) -> &str {
    value.rsplit_once('#').map_or(value, |(name, _)| name)
}

pub(crate) fn route_key(prefix: &str, route: &str) -> String {
    format!("{prefix}/routes/{route}")
}
