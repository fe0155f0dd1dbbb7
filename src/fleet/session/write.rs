//! What a session writes to etcd: the control task's requests (route
//! writes with compare-and-swap, as the rollout's driver where asked;
//! rollbacks kept pending while etcd was unreachable; a reload's added and
//! removed routes), the driver keys of rollouts, this replica's heartbeat
//! and its counters of each rollout window.

use std::time::SystemTime;

use super::Session;
use super::apply::route_totals;
use crate::control::Command;
use crate::fleet::etcd::{Compare, EtcdError, Op};
use crate::fleet::{CountersRecord, Note, ReplicaRecord, Request, RouteRecord, WriteError};

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl Session {
    pub(super) fn driver_value(&self, lease: i64) -> String {
        format!("{}#{lease:x}", self.fleet.name)
    }

    /// Takes the driver key of every rollout that has no driver; lets go
    /// of those whose rollout ended. Only a route with a canary pool here
    /// is driven here: where this replica's config gives it none, the
    /// rollout's state is not applied (`Control::apply_remote`), and a
    /// driver that judges nothing would hold the rollout still; a route a
    /// reload took the canary pool from is let go likewise.
    pub(super) async fn acquire_drivers(&mut self, lease: i64) {
        let mine = self.driver_value(lease);
        let config = self.shared.snapshot.load().config.clone();
        let drivable = |route: &str| config.route(route).is_some_and(|r| r.canary.is_some());
        let (free, ended): (Vec<String>, Vec<String>) = {
            let view = self.view();
            (
                view.windows.keys().filter(|r| !view.drivers.contains_key(*r) && drivable(r)).cloned().collect(),
                view.drivers
                    .iter()
                    .filter(|(r, d)| **d == mine && (!view.windows.contains_key(*r) || !drivable(r)))
                    .map(|(r, _)| r.clone())
                    .collect(),
            )
        };
        let mut changed = false;
        for route in free {
            let key = self.key(&format!("drivers/{route}"));
            let put = Op::Put { key: key.clone(), value: mine.clone().into_bytes(), lease };
            if let Ok((true, _)) = self.client.txn(&[Compare::ModRevision(key, 0)], &[put]).await {
                tracing::info!(route, "fleet: this replica now drives the rollout");
                let mut view = self.view();
                view.drivers.insert(route.clone(), mine.clone());
                view.driving.insert(route.clone());
                self.metrics.driver.with_label_values(&[&route]).set(1);
                changed = true;
            }
        }
        for route in ended {
            let key = self.key(&format!("drivers/{route}"));
            let _ =
                self.client.txn(&[Compare::Value(key.clone(), mine.clone().into_bytes())], &[Op::Delete(key)]).await;
            let mut view = self.view();
            view.driving.remove(&route);
            view.drivers.remove(&route);
            self.metrics.driver.with_label_values(&[&route]).set(0);
            changed = true;
        }
        if changed {
            self.control.send(Command::Fleet(Note::Drivers));
        }
    }

    /// Writes the manual rollbacks made while etcd was unreachable; each
    /// stays pending until etcd has it.
    pub(super) async fn write_pending(&mut self) -> Result<(), EtcdError> {
        while let Some((route, record)) = self.pending.pop_first() {
            let value = serde_json::to_vec(&record).unwrap_or_default();
            if let Err(e) = self.client.put(&crate::fleet::route_key(&self.fleet.prefix, &route), &value, 0).await {
                self.pending.insert(route, record);
                return Err(e);
            }
            tracing::info!(route, "fleet: the rollback made while etcd was unreachable is written");
        }
        Ok(())
    }

    /// Handles a request from the control task; an error ends the session.
    pub(super) async fn request(&mut self, request: Request, lease: i64) -> Result<(), EtcdError> {
        match request {
            // A rollback whose write failed. Etcd may be gone while this
            // session has not noticed yet: the rollback stays pending until
            // etcd has it, and a failure ends the session (the next one
            // writes it first).
            Request::Pending { route, record } => {
                self.pending.insert(route, record);
                return self.write_pending().await;
            }
            Request::Reloaded { added, removed } => {
                self.let_go(&removed);
                if !added.is_empty() {
                    self.read_routes(&added).await?;
                }
                self.acquire_drivers(lease).await;
            }
            Request::Write { route, record, expected, as_driver, reply } => {
                let client = self.client.clone();
                let key = crate::fleet::route_key(&self.fleet.prefix, &route);
                let driver_key = self.key(&format!("drivers/{route}"));
                let mine = self.driver_value(lease);
                tokio::spawn(async move {
                    let value = serde_json::to_vec(&record).unwrap_or_default();
                    let mut compare = vec![Compare::ModRevision(key.clone(), expected)];
                    if as_driver {
                        compare.push(Compare::Value(driver_key, mine.into_bytes()));
                    }
                    let op = Op::Put { key: key.clone(), value, lease: 0 };
                    let result = match client.txn(&compare, &[op]).await {
                        Ok((true, revision)) => Ok(revision),
                        Ok((false, _)) if as_driver => Err(WriteError::NotDriver),
                        Ok((false, _)) => {
                            let by = match client.range(&key, false).await {
                                Ok((_, kvs)) => kvs
                                    .first()
                                    .and_then(|kv| kv.as_ref().ok())
                                    .and_then(|kv| serde_json::from_slice::<RouteRecord>(&kv.value).ok())
                                    .map(|r| format!(" (last changed on {} by {}: {})", r.by, r.actor, r.kind)),
                                Err(_) => None,
                            };
                            Err(WriteError::Conflict(format!(
                                "route {route:?} changed on another replica meanwhile{}; look again and retry",
                                by.unwrap_or_default()
                            )))
                        }
                        Err(e) => Err(WriteError::Unreachable(e.to_string())),
                    };
                    let _ = reply.send(result);
                });
            }
        }
        Ok(())
    }

    fn config_hash(&mut self) -> String {
        let snapshot = self.shared.snapshot.load();
        if self.hash.0 != snapshot.generation || self.hash.1.is_empty() {
            // Cheap unless the config changed: the generation moves on every
            // swap, so compare the configs' identity first.
            self.hash = (snapshot.generation, snapshot.config.fingerprint());
        }
        self.hash.1.clone()
    }

    pub(super) async fn heartbeat(&mut self, lease: i64) -> Result<(), EtcdError> {
        let record = ReplicaRecord {
            name: self.fleet.name.clone(),
            config_hash: self.config_hash(),
            applied_revision: self.view().applied_revision,
            last_seen: now_rfc3339(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        self.client.put(&self.key(&format!("replicas/{}", self.fleet.name)), &value, lease).await?;
        Ok(())
    }

    /// Publishes this replica's figures of each running rollout's window.
    pub(super) async fn publish_counters(&mut self, lease: i64) -> Result<(), EtcdError> {
        let windows = self.view().windows.clone();
        self.baselines.retain(|(route, window), _| windows.get(route) == Some(window));
        self.published.retain(|route, _| windows.contains_key(route));
        if windows.is_empty() {
            return Ok(());
        }
        for (route, window) in windows {
            let now = route_totals(&self.shared, &route);
            let baseline = self.baselines.entry((route.clone(), window.clone())).or_insert_with(|| now.clone());
            let versions = [now[0].since(&baseline[0]), now[1].since(&baseline[1])];
            let requests = versions[0].requests + versions[1].requests;
            if self.published.get(&route) == Some(&(window.clone(), requests)) {
                continue;
            }
            let record = CountersRecord { window: window.clone(), versions };
            let value = serde_json::to_vec(&record).unwrap_or_default();
            self.client.put(&self.key(&format!("counters/{route}/{}", self.fleet.name)), &value, lease).await?;
            self.published.insert(route, (window, requests));
        }
        Ok(())
    }
}
