//! Changes from the fleet: the watch hands every route change to the
//! control task, which applies it as it would its own (snapshot, state
//! cache, event naming the replica it came from). A change this replica
//! made itself comes back with a revision it already has and is skipped.

use super::events::NewEvent;
use super::store::etcd::deadline_of;
use super::{Control, Rollout, RouteLive, describe};
use crate::config::Weight;
use crate::fleet::{Note, RouteChange};

impl Control {
    /// After a reload: a route whose configured weight changed took the
    /// config's value here (the newer decision); in fleet mode that decision
    /// goes to etcd too, so every replica has it. Replicas that reload the
    /// same file race to write the same state: the losers' conflicts are moot.
    pub(super) fn write_config_weights(&mut self, old: &crate::config::Config, actor: &super::Actor) {
        if self.store.replica().is_none() {
            return;
        }
        let changed: Vec<String> = self
            .config
            .routes
            .iter()
            .filter(|r| old.route(&r.name).is_some_and(|o| o.weight != r.weight))
            .map(|r| r.name.clone())
            .collect();
        for route in changed {
            let Some(live) = self.live.get(&route).cloned() else { continue };
            let file = self.state_file();
            let detail = format!("configured weight now {}", live.config_weight);
            let change = super::store::Change {
                route: &route,
                live: &live,
                actor,
                kind: "config_weight",
                detail: Some(&detail),
            };
            if let Err(e) = self.store.write(&change, &file) {
                tracing::info!(
                    route,
                    "fleet: the reload's configured weight was not written ({e}); the fleet's state stands"
                );
            }
        }
    }

    /// After a reload's snapshot is published: a route it added takes the
    /// fleet's state (its record, ignored while this config lacked the
    /// route, is read and applied as from the watch), and so does a route
    /// it gave a canary pool (a record with a canary share was not applied
    /// while it had none); a route it removed is let go, its record left to
    /// the replicas that still have it.
    pub(super) fn tell_store_routes(&mut self, old: &crate::config::Config) {
        // By name: a config may hold a thousand routes.
        let before: std::collections::HashMap<&str, bool> =
            old.routes.iter().map(|r| (r.name.as_str(), r.canary.is_some())).collect();
        let now: std::collections::HashSet<&str> = self.config.routes.iter().map(|r| r.name.as_str()).collect();
        // The routes whose record is read again: added, or given a canary pool.
        let read: Vec<String> = self
            .config
            .routes
            .iter()
            .filter(|r| before.get(r.name.as_str()).is_none_or(|&had| r.canary.is_some() && !had))
            .map(|r| r.name.clone())
            .collect();
        let removed: Vec<String> =
            old.routes.iter().filter(|r| !now.contains(r.name.as_str())).map(|r| r.name.clone()).collect();
        self.store.reloaded(&read, &removed);
    }

    pub(super) fn fleet_note(&mut self, note: Note) {
        match note {
            // The run loop plans deadlines again after every command.
            Note::Drivers => {}
            Note::Routes(changes) => {
                let mut changed = false;
                for change in changes {
                    changed |= self.apply_remote(change);
                }
                if changed {
                    let _ = self.persist();
                    self.publish();
                }
            }
        }
    }

    /// Applies one route's state from etcd; true if anything changed here.
    fn apply_remote(&mut self, change: RouteChange) -> bool {
        let RouteChange { route, revision, record } = change;
        if revision != 0 && revision <= self.store.revision(&route) {
            return false;
        }
        self.store.seen(&route, revision, record.as_ref());
        // A deleted key (by hand) leaves the last state in force here.
        let Some(record) = record else { return false };
        // A route this replica's config does not have: its config differs
        // (`ctl fleet` flags it); nothing to apply.
        let Some(config_route) = self.config.route(&route) else { return false };
        let s = &record.state;
        let Some(weight) = Weight::from_basis_points(s.weight_bp) else {
            tracing::warn!(route, weight_bp = s.weight_bp, "fleet: ignored a route state with a weight out of range");
            return false;
        };
        // Here the route has no canary pool (the configs differ): its weight
        // stays 0 and no rollout runs on it, as the admin API would answer
        // here (409). Routing would send everyone to stable anyway; the
        // state shown and the gauges would say otherwise.
        if config_route.canary.is_none() && (weight != Weight::ZERO || s.rollout.is_some()) {
            self.metrics.fleet().ignored_records.with_label_values(&["no_canary_pool"]).inc();
            tracing::warn!(
                route,
                weight_bp = s.weight_bp,
                "fleet: ignored a route state with a canary share: this replica's config gives the route no canary pool"
            );
            return false;
        }
        // A record is input from a peer (or a hand with etcdctl): check the
        // plan before anything indexes its steps.
        if let Some(r) = &s.rollout
            && let Err(e) = r.plan.validate().and_then(|()| {
                if r.step < r.plan.steps_bp.len() { Ok(()) } else { Err(format!("step {} out of range", r.step)) }
            })
        {
            tracing::warn!(route, "fleet: ignored a route state with an invalid rollout: {e}");
            return false;
        }
        let baseline = self.totals(&route);
        let rollout = s.rollout.clone().map(|state| {
            let remaining = std::time::Duration::from_millis(record.remaining_ms);
            Rollout {
                deadline: (!state.paused).then(|| {
                    record
                        .step_ends_at_ms
                        .map_or_else(|| tokio::time::Instant::now() + state.plan.interval, deadline_of)
                }),
                remaining,
                baseline,
                state,
            }
        });
        let live = RouteLive {
            weight,
            halted: s.halted,
            config_weight: config_route.weight,
            rollout,
            last_outcome: s.last_outcome.clone(),
        };
        let before = self.live.get(&route).cloned();
        let same = before.as_ref().is_some_and(|b| {
            b.weight == live.weight
                && b.halted == live.halted
                && b.last_outcome == live.last_outcome
                && b.rollout.as_ref().map(|r| &r.state) == live.rollout.as_ref().map(|r| &r.state)
        });
        self.events.push(NewEvent {
            actor: format!("{}@{}", record.actor, record.by),
            route: Some(route.clone()),
            kind: record.kind.clone(),
            before: before.as_ref().map(describe),
            after: Some(describe(&live)),
            detail: Some(match &record.detail {
                Some(d) => format!("from the fleet: {d}"),
                None => "from the fleet".into(),
            }),
        });
        self.live.insert(route, live);
        !same
    }
}
