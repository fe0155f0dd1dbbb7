//! What a session takes in from etcd: the records read at connect time or
//! after a reload, and those the watch delivers, applied to the [`View`](crate::fleet::View)
//! (replicas, driver keys, counters, rollout windows) and handed to the
//! control task as route changes. Records for routes this replica's config
//! does not have are ignored.

use std::collections::HashSet;

use super::Session;
use crate::config::Config;
use crate::control::Command;
use crate::fleet::etcd::{BadRecord, EtcdError, Event};
use crate::fleet::{CountersRecord, Note, ReplicaRecord, RouteChange, RouteRecord};
use crate::metrics::Totals;
use crate::proxy::Shared;
use crate::routing::Version;

/// The route a key under the prefix (the prefix taken off) is about:
/// `routes/{route}`, `drivers/{route}`, `counters/{route}/{name}`.
fn route_of(rest: &str) -> Option<&str> {
    match rest.split_once('/') {
        Some(("routes" | "drivers", route)) => Some(route),
        Some(("counters", rest)) => rest.rsplit_once('/').map(|(route, _)| route),
        _ => None,
    }
}

/// Records ignored: for routes this replica's config does not have, and
/// heartbeats that cannot stand for the replica their key names. Each name
/// is logged the first time.
#[derive(Default)]
pub(super) struct Ignored {
    logged: HashSet<String>,
    /// LIMIT names were logged: no more are (a flood of names grows no memory).
    full: bool,
}

impl Ignored {
    const LIMIT: usize = 256;

    /// Whether `route` is one of `config`'s. A record for another (from a
    /// replica with another config, or a hand with etcdctl) must create no
    /// state here: the caller ignores it, and the first for each name is logged.
    fn configured(&mut self, config: &Config, route: &str, key: &str) -> bool {
        if config.route(route).is_some() {
            return true;
        }
        self.log_once(route, key, "a record for a route this config does not have");
        false
    }

    /// Logs `name` (a route, or a replica's key) the first time it is seen,
    /// with `what` was ignored; whether it logged a line.
    fn log_once(&mut self, name: &str, key: &str, what: &str) -> bool {
        if self.full || self.logged.contains(name) {
            return false;
        }
        if self.logged.len() == Self::LIMIT {
            self.full = true;
            tracing::warn!(limit = Self::LIMIT, "fleet: yet more records ignored; no more are logged");
            return true;
        }
        tracing::warn!(name = ?name, key = ?key, "fleet: ignored {what} (logged once per name)");
        self.logged.insert(name.to_string());
        true
    }
}

/// The heartbeat at `replicas/{name}`: `None` when it does not decode, or
/// when it names another replica than its key does (written by hand or by a
/// broken peer, it must not pass for that replica, this one included, in
/// the fleet's status).
fn replica_record(name: &str, value: &[u8]) -> Option<ReplicaRecord> {
    let record: ReplicaRecord = serde_json::from_slice(value).ok()?;
    (record.name == name).then_some(record)
}

impl Session {
    /// Reads everything under the prefix; hands the routes to the control task.
    pub(super) async fn resync(&mut self) -> Result<i64, EtcdError> {
        let (revision, kvs) = self.client.range(&format!("{}/", self.fleet.prefix), true).await?;
        {
            let mut view = self.view();
            view.replicas.clear();
            view.drivers.clear();
            view.counters.clear();
            view.windows.clear();
        }
        let events = kvs.into_iter().map(|kv| kv.map(|kv| Event { deleted: false, kv })).collect();
        self.apply_events(events);
        self.view().applied_revision = revision;
        self.metrics.applied_revision.set(revision);
        Ok(revision)
    }

    pub(super) fn apply_events(&mut self, events: Vec<Result<Event, BadRecord>>) {
        let prefix = format!("{}/", self.fleet.prefix);
        let config = self.shared.snapshot.load().config.clone();
        let mut routes = Vec::new();
        let mut view = self.fleet.view.lock().unwrap_or_else(|p| p.into_inner());
        for event in events {
            let event = match event {
                Ok(event) => event,
                Err(bad) => {
                    tracing::warn!("fleet: ignored a record that does not decode: {bad}");
                    self.metrics.ignored_records.with_label_values(&["undecodable"]).inc();
                    continue;
                }
            };
            let Some(rest) = event.kv.key.strip_prefix(&prefix) else { continue };
            let revision = event.kv.mod_revision;
            view.applied_revision = view.applied_revision.max(revision);
            if let Some(route) = route_of(rest)
                && !self.ignored.configured(&config, route, &event.kv.key)
            {
                self.metrics.ignored_records.with_label_values(&["unknown_route"]).inc();
                continue;
            }
            let value = (!event.deleted).then_some(&event.kv.value);
            match rest.split_once('/') {
                Some(("routes", route)) => {
                    let record = value.and_then(|v| serde_json::from_slice::<RouteRecord>(v).ok());
                    if value.is_some() && record.is_none() {
                        tracing::warn!(key = ?event.kv.key, "fleet: ignored a route record that does not parse");
                        self.metrics.ignored_records.with_label_values(&["unparsable"]).inc();
                        continue;
                    }
                    match record.as_ref().and_then(|r| r.state.rollout.as_ref().and(r.window.clone())) {
                        Some(window) => {
                            // The window starts now: this replica's counters from here on count.
                            let key = (route.to_string(), window.clone());
                            if !self.baselines.contains_key(&key) {
                                self.baselines.insert(key, route_totals(&self.shared, route));
                            }
                            view.windows.insert(route.to_string(), window);
                        }
                        None => {
                            view.windows.remove(route);
                        }
                    }
                    routes.push(RouteChange {
                        route: route.to_string(),
                        revision: if event.deleted { 0 } else { revision },
                        record,
                    });
                }
                Some(("replicas", name)) => match value.map(|v| replica_record(name, v)) {
                    Some(Some(record)) => {
                        view.replicas.insert(name.to_string(), record);
                    }
                    Some(None) => {
                        let key = &event.kv.key;
                        self.ignored.log_once(
                            key,
                            key,
                            "a replica record that does not parse or names another replica",
                        );
                        self.metrics.ignored_records.with_label_values(&["unparsable"]).inc();
                        view.replicas.remove(name);
                    }
                    None => {
                        view.replicas.remove(name);
                    }
                },
                Some(("drivers", route)) => {
                    match value.map(|v| String::from_utf8_lossy(v).into_owned()) {
                        Some(driver) => view.drivers.insert(route.to_string(), driver),
                        None => view.drivers.remove(route),
                    };
                }
                Some(("counters", rest)) => {
                    let Some((route, name)) = rest.rsplit_once('/') else { continue };
                    let entry = view.counters.entry(route.to_string()).or_default();
                    match value.and_then(|v| serde_json::from_slice::<CountersRecord>(v).ok()) {
                        Some(record) => entry.insert(name.to_string(), record),
                        None => entry.remove(name),
                    };
                }
                _ => {}
            }
        }
        self.metrics.replicas.set(view.replicas.len() as i64);
        self.metrics.applied_revision.set(view.applied_revision);
        // A driver key gone that we held (deleted by hand, or our lease lost): stop at once.
        let mine = self.driver_value(self.lease);
        let lost: Vec<String> =
            view.driving.iter().filter(|route| view.drivers.get(*route) != Some(&mine)).cloned().collect();
        for route in &lost {
            view.driving.remove(route);
            self.metrics.driver.with_label_values(&[route]).set(0);
        }
        drop(view);
        if !routes.is_empty() {
            self.control.send(Command::Fleet(Note::Routes(routes)));
        }
        if !lost.is_empty() {
            self.control.send(Command::Fleet(Note::Drivers));
        }
    }

    /// Reads the records of routes a reload added and applies them as the
    /// watch would have: until the new config was published, the watch
    /// ignored them. One read of the prefix, whatever the number of routes;
    /// a record that does not decode was counted when first seen.
    pub(super) async fn read_routes(&mut self, routes: &[String]) -> Result<(), EtcdError> {
        let prefix = format!("{}/", self.fleet.prefix);
        let (_, kvs) = self.client.range(&prefix, true).await?;
        let routes: HashSet<&str> = routes.iter().map(String::as_str).collect();
        let ours = |key: &str| key.strip_prefix(&prefix).and_then(route_of).is_some_and(|route| routes.contains(route));
        let events =
            kvs.into_iter().flatten().filter(|kv| ours(&kv.key)).map(|kv| Ok(Event { deleted: false, kv })).collect();
        self.apply_events(events);
        Ok(())
    }

    /// Routes a reload removed: their windows and figures are dropped, so
    /// that a rollout this replica drove is let go (by [`Self::acquire_drivers`])
    /// to a replica that still has the route. Their records stay as they are.
    pub(super) fn let_go(&self, routes: &[String]) {
        // Baselines and figures published go with the window (see publish_counters).
        let mine = self.driver_value(self.lease);
        let mut view = self.view();
        for route in routes {
            view.windows.remove(route);
            view.counters.remove(route);
            if view.drivers.get(route) != Some(&mine) {
                view.drivers.remove(route);
            }
        }
    }
}

/// This replica's running totals of a route (zero if it has no such route).
pub(super) fn route_totals(shared: &Shared, route: &str) -> [Totals; 2] {
    let snapshot = shared.snapshot.load();
    match snapshot.routes.iter().find(|r| &*r.metrics.route == route) {
        Some(data) => Version::ALL.map(|v| data.metrics.version(v).totals()),
        None => Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ignored_name_is_logged_once_and_the_names_kept_are_bounded() {
        let mut ignored = Ignored::default();
        let what = "a record";
        assert!(ignored.log_once("ghost", "/p/routes/ghost", what));
        assert!(!ignored.log_once("ghost", "/p/drivers/ghost", what), "once per name, whatever the key");
        assert!(ignored.log_once("phantom", "/p/routes/phantom", what));
        for i in 2..Ignored::LIMIT {
            assert!(ignored.log_once(&format!("r{i}"), "k", what));
        }
        assert!(ignored.log_once("one-more", "k", what), "the line that says no more are logged");
        assert!(!ignored.log_once("yet-another", "k", what));
        assert!(!ignored.log_once("ghost", "k", what));
        assert_eq!(ignored.logged.len(), Ignored::LIMIT);
    }

    #[test]
    fn a_heartbeat_stands_only_for_the_replica_its_key_names() {
        let record = |name: &str| {
            let r = ReplicaRecord {
                name: name.to_string(),
                config_hash: "h".into(),
                applied_revision: 7,
                last_seen: "2026-12-01T00:00:00Z".into(),
                version: "0.1.0".into(),
            };
            serde_json::to_vec(&r).unwrap()
        };
        assert_eq!(replica_record("a", &record("a")).map(|r| r.name), Some("a".to_string()));
        assert!(replica_record("a", &record("b")).is_none(), "names another replica");
        assert!(replica_record("a", b"{not json").is_none());
    }
}
