//! Where the live state is kept: the seam between the control task and its
//! storage. One interface, two stores:
//! - [`file::FileStore`] (single instance): the state file is the record;
//! - [`etcd::EtcdStore`] (fleet mode): etcd is the record, written with
//!   compare-and-swap before a change is applied and answered; the state
//!   file is a local cache. Changes from other replicas come back to the
//!   control task from the fleet's watch ([`super::fleet_sync`]).

pub mod etcd;
pub mod file;

use super::state::{RouteState, StateFile};
use super::{Actor, ControlError, RouteLive};
use crate::fleet::{Fleet, RouteRecord};
use crate::metrics::Totals;

/// One route's change, as the control task is about to apply it.
pub struct Change<'a> {
    pub route: &'a str,
    pub live: &'a RouteLive,
    pub actor: &'a Actor,
    pub kind: &'a str,
    pub detail: Option<&'a str>,
}

pub trait Store: Send {
    /// Makes one route's change durable; the change is applied and
    /// answered only if this succeeds. `all` is the whole state after it.
    fn write(&mut self, change: &Change<'_>, all: &StateFile) -> Result<(), ControlError>;

    /// Records the whole state locally (after a reload, or changes from the fleet).
    fn cache(&mut self, all: &StateFile) -> Result<(), ControlError>;

    /// Whether this replica judges the route's rollout steps.
    fn drives(&self, _route: &str) -> bool {
        true
    }

    /// The current rollout step's figures summed over every live replica
    /// (None: judge on this replica's own traffic).
    fn fleet_window(&self, _route: &str) -> Option<[Totals; 2]> {
        None
    }

    /// The replica that changes are recorded as coming from.
    fn replica(&self) -> Option<&str> {
        None
    }

    /// The store's revision of the route this replica has applied.
    fn revision(&self, _route: &str) -> i64 {
        0
    }

    /// A change from the fleet was applied.
    fn seen(&mut self, _route: &str, _revision: i64, _record: Option<&RouteRecord>) {}

    /// A reload added and removed routes (its snapshot is published): in
    /// fleet mode the added ones (and those it gave a canary pool) take the
    /// fleet's state, as from the watch, and the removed ones are let go (a
    /// rollout driven here is handed on).
    fn reloaded(&mut self, _added: &[String], _removed: &[String]) {}
}

impl RouteLive {
    pub(super) fn to_state(&self) -> RouteState {
        RouteState {
            weight_bp: self.weight.basis_points(),
            halted: self.halted,
            config_weight_bp: self.config_weight.basis_points(),
            rollout: self.rollout.as_ref().map(|r| r.state.clone()),
            last_outcome: self.last_outcome.clone(),
        }
    }
}

impl super::Control {
    /// Switches to fleet mode (at start, before the control task runs).
    pub fn use_fleet(&mut self, fleet: Fleet) {
        let path = self.config.state.as_ref().map(|s| s.path.clone());
        self.store = Box::new(etcd::EtcdStore::new(fleet, path));
    }

    /// The actor as events record it: in fleet mode, `unix@proxy-a`.
    pub(super) fn actor_name(&self, actor: &Actor) -> String {
        match self.store.replica() {
            Some(replica) => format!("{actor}@{replica}"),
            None => actor.to_string(),
        }
    }

    pub(super) fn state_file(&self) -> StateFile {
        StateFile {
            version: super::state::FORMAT_VERSION,
            routes: self.live.iter().map(|(name, l)| (name.clone(), l.to_state())).collect(),
        }
    }
}
