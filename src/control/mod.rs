//! The control plane: the one writer of snapshots.
//!
//! Config reloads, admin calls, rollout steps and health changes all arrive
//! as [`Command`]s on one channel and are applied by one task, which builds a
//! new [`Snapshot`] and swaps it in before it answers. So a change is in force
//! for the next request when the call returns, and changes never race.

pub mod admin;
pub mod analysis;
pub mod events;
mod fleet_sync;
pub mod history;
pub mod reload;
pub mod rollout;
pub mod state;
mod status;
mod store;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// Tokio's clock, so rollout timing can be tested with a paused clock.
use tokio::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, Weight};
use crate::health::{BackendHealth, Checkers, HealthUpdate};
use crate::metrics::{Metrics, RouteMetrics, Totals};
use crate::proxy::tls::UpstreamTls;
use crate::proxy::{DataSignal, Shared};
use crate::routing::Version;
use crate::snapshot::{BackendSet, Inputs, Live, Snapshot};
use events::{EventLog, NewEvent};
use rollout::{Plan, RolloutState, Verdict, Window};
pub use status::{BackendStatus, PoolStatus, ReloadStatus, RolloutStatus, RouteStatus, Status, VersionFigures};

/// Who asked for a change (recorded in the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    Unix,
    Tcp(std::net::SocketAddr),
    /// `POST /v1/reload` or `ctl reload` arrive as Unix/Tcp; these are the others.
    Watch,
    Signal,
    Rollout,
    Health,
    Start,
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::Unix => f.write_str("unix"),
            Actor::Tcp(addr) => write!(f, "tcp:{addr}"),
            Actor::Watch => f.write_str("watch"),
            Actor::Signal => f.write_str("signal"),
            Actor::Rollout => f.write_str("rollout"),
            Actor::Health => f.write_str("health"),
            Actor::Start => f.write_str("start"),
        }
    }
}

/// Why a command was refused: 400, 404, 409 or 500 on the admin API.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
    /// The fleet store (etcd) cannot be reached: 503.
    #[error("{0}")]
    Unavailable(String),
}

type Reply<T> = oneshot::Sender<Result<T, ControlError>>;

pub enum Command {
    SetWeight { route: String, weight: Weight, actor: Actor, reply: Reply<RouteStatus> },
    Promote { route: String, actor: Actor, reply: Reply<RouteStatus> },
    Rollback { route: String, actor: Actor, reply: Reply<RouteStatus> },
    StartRollout { route: String, plan: Plan, actor: Actor, reply: Reply<RouteStatus> },
    PauseRollout { route: String, actor: Actor, reply: Reply<RouteStatus> },
    ResumeRollout { route: String, actor: Actor, reply: Reply<RouteStatus> },
    AbortRollout { route: String, actor: Actor, reply: Reply<RouteStatus> },
    Reload { actor: Actor, reply: Option<Reply<ReloadStatus>> },
    Watched { text: std::io::Result<String>, reply: Reply<ReloadStatus> },
    Status { reply: oneshot::Sender<Status> },
    Route { route: String, reply: Reply<RouteStatus> },
    Events { since: u64, reply: oneshot::Sender<(Vec<events::Event>, tokio::sync::watch::Receiver<u64>)> },
    Health(HealthUpdate),
    Fleet(crate::fleet::Note),
}

/// A cheap, cloneable way to send commands to the control task.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Command>,
    /// Read directly by the admin API: the sampler, not the actor, writes it.
    history: Arc<std::sync::Mutex<history::History>>,
}

impl Handle {
    pub fn send(&self, command: Command) {
        let _ = self.tx.send(command);
    }

    /// Sends a command built around a reply channel and waits for the answer.
    pub async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, ControlError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx));
        rx.await.map_err(|_| ControlError::Internal("the control plane stopped".into()))?
    }

    pub async fn status(&self) -> Option<Status> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Status { reply: tx });
        rx.await.ok()
    }

    pub fn history(&self) -> &Arc<std::sync::Mutex<history::History>> {
        &self.history
    }

    pub async fn reload(&self, actor: Actor) -> Result<ReloadStatus, ControlError> {
        self.ask(|reply| Command::Reload { actor, reply: Some(reply) }).await
    }
}

/// The live part of one route.
#[derive(Debug, Clone)]
struct RouteLive {
    weight: Weight,
    halted: bool,
    /// The configured weight this decision was made against (precedence rule).
    config_weight: Weight,
    rollout: Option<Rollout>,
    last_outcome: Option<String>,
}

impl RouteLive {
    /// A route as its config says, with no admin decision yet.
    fn from_config(route: &crate::config::Route) -> RouteLive {
        RouteLive {
            weight: route.weight,
            halted: false,
            config_weight: route.weight,
            rollout: None,
            last_outcome: None,
        }
    }
}

/// A rollout's in-memory part: when the step ends and the counters at its start.
#[derive(Debug, Clone)]
struct Rollout {
    state: RolloutState,
    /// When the step will be judged (None while paused).
    deadline: Option<Instant>,
    /// Time left when paused.
    remaining: Duration,
    baseline: [Totals; 2],
}

pub struct Control {
    config: Arc<Config>,
    config_path: Option<PathBuf>,
    config_text: Option<String>,
    live: BTreeMap<String, RouteLive>,
    backends: BackendSet,
    upstream_tls: HashMap<String, Arc<UpstreamTls>>,
    health: HashMap<u64, BackendHealth>,
    checkers: Checkers,
    route_metrics: HashMap<String, RouteMetrics>,
    events: EventLog,
    generation: u64,
    shared: Arc<Shared>,
    /// The snapshot before the current one. Workers drop their references
    /// to it on their next request; holding it here means its memory is
    /// freed by the control thread at the next swap, not by a worker in the
    /// middle of a request (half a millisecond for 1,000 routes).
    retired: Option<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
    handle: Handle,
    last_reload: ReloadStatus,
    /// Where live state is recorded: the state file, or etcd in fleet mode.
    store: Box<dyn store::Store>,
}

/// Everything needed to start the control plane.
pub struct Start {
    pub config: Config,
    pub config_path: Option<PathBuf>,
    pub config_text: Option<String>,
    pub metrics: Arc<Metrics>,
    pub access_log: Option<crate::access_log::AccessLog>,
}

/// The control task with its inbound channels, and what the data plane shares.
pub struct Prepared {
    pub control: Control,
    pub shared: Arc<Shared>,
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub signals: mpsc::UnboundedReceiver<DataSignal>,
}

/// Builds the first snapshot (config + state file) and the control task.
pub fn prepare(start: Start) -> Result<Prepared, String> {
    let config = Arc::new(start.config);
    let upstream_tls = build_upstream_tls(&config)?;
    let mut live = BTreeMap::new();
    let mut restored = Vec::new();
    let saved = match &config.state {
        Some(s) => match state::load(&s.path) {
            Ok(saved) => saved,
            Err(e) => {
                tracing::error!("{e}");
                restored.push(NewEvent {
                    actor: Actor::Start.to_string(),
                    kind: "state_unreadable".into(),
                    detail: Some(e.to_string()),
                    ..Default::default()
                });
                if matches!(e, state::StateError::Read { .. }) {
                    return Err(e.to_string());
                }
                state::StateFile::default()
            }
        },
        None => state::StateFile::default(),
    };
    for route in &config.routes {
        let entry = match saved.routes.get(&route.name) {
            Some(s) if s.config_weight_bp == route.weight.basis_points() => {
                let weight = Weight::from_basis_points(s.weight_bp).unwrap_or(route.weight);
                if weight != route.weight || s.halted {
                    restored.push(NewEvent {
                        actor: Actor::Start.to_string(),
                        route: Some(route.name.clone()),
                        kind: "restored".into(),
                        before: Some(route.weight.to_string()),
                        after: Some(format!("{weight}{}", if s.halted { " (halted)" } else { "" })),
                        detail: Some("live weight from the state file".into()),
                    });
                }
                RouteLive {
                    weight,
                    halted: s.halted,
                    config_weight: route.weight,
                    rollout: s.rollout.clone().map(|state| Rollout {
                        deadline: (!state.paused).then(|| Instant::now() + state.plan.interval),
                        remaining: state.plan.interval,
                        baseline: Default::default(),
                        state,
                    }),
                    last_outcome: s.last_outcome.clone(),
                }
            }
            _ => RouteLive::from_config(route),
        };
        live.insert(route.name.clone(), entry);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let (signal_tx, signal_rx) = mpsc::unbounded_channel();
    let metrics = start.metrics;
    let handle = Handle { tx, history: Arc::new(std::sync::Mutex::new(history::History::new(history::unix_ms()))) };
    let mut control = Control {
        config: config.clone(),
        config_path: start.config_path,
        config_text: start.config_text,
        live,
        backends: BackendSet::default(),
        upstream_tls,
        health: HashMap::new(),
        checkers: Checkers::new(handle.clone()),
        route_metrics: HashMap::new(),
        events: EventLog::default(),
        generation: 0,
        shared: Arc::new(Shared {
            // Replaced right below by the first real snapshot.
            snapshot: arc_swap::ArcSwap::from_pointee(Snapshot::from_config((*config).clone(), &metrics)),
            metrics: metrics.clone(),
            access_log: start.access_log,
            signals: signal_tx,
        }),
        retired: None,
        metrics,
        handle,
        last_reload: ReloadStatus::default(),
        store: Box::new(store::file::FileStore::new(config.state.as_ref().map(|s| s.path.clone()))),
    };
    control.backends.sync(&config, &control.upstream_tls);
    control.publish();
    control.record_load_success();
    for event in restored {
        control.events.push(event);
    }
    control.restart_rollout_windows();
    let shared = control.shared.clone();
    Ok(Prepared { control, shared, commands: rx, signals: signal_rx })
}

fn build_upstream_tls(config: &Config) -> Result<HashMap<String, Arc<UpstreamTls>>, String> {
    let mut out = HashMap::new();
    for (name, pool) in &config.pools {
        if let Some(tls) = &pool.tls {
            out.insert(name.clone(), Arc::new(UpstreamTls::new(tls).map_err(|e| format!("pools.{name}.tls: {e}"))?));
        }
    }
    Ok(out)
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// What woke the control task.
enum Woken {
    Command(Command),
    Signal(DataSignal),
    Deadline,
}

impl Control {
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Runs until every sender is gone.
    pub async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut signals: mpsc::UnboundedReceiver<DataSignal>,
    ) {
        self.checkers.sync(&self.config, &self.backends);
        let _sampler = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(history::run(
            self.shared.clone(),
            self.handle.history.clone(),
        )));
        loop {
            let deadline = self.next_deadline();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let woken = tokio::select! {
                command = commands.recv() => match command {
                    Some(c) => Woken::Command(c),
                    None => break,
                },
                Some(signal) = signals.recv() => Woken::Signal(signal),
                _ = sleep => Woken::Deadline,
            };
            // Nothing done since the wait: a whole quantum before the first yield.
            crate::pace::rest();
            match woken {
                Woken::Command(c) => self.apply(c),
                Woken::Signal(signal) => self.data_signal(signal),
                Woken::Deadline => self.rollout_deadlines(),
            }
        }
        self.checkers.stop();
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::SetWeight { route, weight, actor, reply } => {
                let _ = reply.send(self.set_weight(&route, weight, actor));
            }
            Command::Promote { route, actor, reply } => {
                let _ = reply.send(self.promote(&route, actor));
            }
            Command::Rollback { route, actor, reply } => {
                let _ = reply.send(self.rollback(&route, actor, "manual", None));
            }
            Command::StartRollout { route, plan, actor, reply } => {
                let _ = reply.send(self.start_rollout(&route, plan, actor));
            }
            Command::PauseRollout { route, actor, reply } => {
                let _ = reply.send(self.pause_rollout(&route, actor, true));
            }
            Command::ResumeRollout { route, actor, reply } => {
                let _ = reply.send(self.pause_rollout(&route, actor, false));
            }
            Command::AbortRollout { route, actor, reply } => {
                let _ = reply.send(self.abort_rollout(&route, actor));
            }
            Command::Reload { actor, reply } => {
                let result = self.reload(actor, None);
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            // The watcher's reload, with the text it read once the file settled.
            Command::Watched { text, reply } => {
                let _ = reply.send(self.reload(Actor::Watch, Some(text)));
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Route { route, reply } => {
                let _ = reply.send(self.route_status(&route));
            }
            Command::Events { since, reply } => {
                let _ = reply.send((self.events.since(since, 500), self.events.subscribe()));
            }
            Command::Health(update) => self.health_update(update),
            Command::Fleet(note) => self.fleet_note(note),
        }
    }

    fn live(&self, route: &str) -> Result<&RouteLive, ControlError> {
        self.live.get(route).ok_or_else(|| ControlError::NotFound(format!("no route named {route:?}")))
    }

    /// Builds and swaps in a new snapshot from the current state.
    fn publish(&mut self) {
        self.generation += 1;
        let config = self.config.clone();
        let live = |name: &str| {
            self.live
                .get(name)
                .map(|l| Live { weight: l.weight, halted: l.halted })
                .unwrap_or(Live { weight: Weight::ZERO, halted: false })
        };
        let health = &self.health;
        let healthy = |b: &crate::snapshot::Backend| health.get(&b.id).is_none_or(|h| h.healthy);
        let metrics = &self.metrics;
        let cache = std::cell::RefCell::new(std::mem::take(&mut self.route_metrics));
        let route_metrics = |r: &crate::config::Route| {
            cache
                .borrow_mut()
                .entry(r.name.clone())
                .or_insert_with(|| metrics.route(&r.name, &r.stable, r.canary.as_deref()))
                .clone()
        };
        let snapshot = Snapshot::build(
            Inputs {
                generation: self.generation,
                config: &config,
                live: &live,
                healthy: &healthy,
                route_metrics: &route_metrics,
            },
            &mut self.backends,
        );
        self.route_metrics = cache.into_inner();
        for (name, l) in &self.live {
            crate::pace::point();
            self.metrics.weight.with_label_values(&[name]).set(l.weight.percent() / 100.0);
            self.metrics.halted.with_label_values(&[name]).set(i64::from(l.halted));
            let step = l.rollout.as_ref().map_or(-1, |r| r.state.step as i64);
            self.metrics.rollout_step.with_label_values(&[name]).set(step);
        }
        for b in self.backends.all() {
            let up = self.health.get(&b.id).is_none_or(|h| h.healthy);
            self.metrics.backend_healthy.with_label_values(&[&b.pool, &b.authority]).set(i64::from(up));
        }
        self.retired = Some(self.shared.snapshot.swap(Arc::new(snapshot)));
    }

    /// Writes the state file; a failure is logged and returned.
    fn persist(&mut self) -> Result<(), ControlError> {
        let file = self.state_file();
        self.store.cache(&file)
    }

    /// Applies a change to one route's live state: persists it, publishes a
    /// snapshot, records the event. If the state cannot be written, the
    /// change is undone and refused (nothing is applied that would be lost).
    fn change(
        &mut self,
        route: &str,
        actor: &Actor,
        kind: &str,
        detail: Option<String>,
        f: impl FnOnce(&mut RouteLive),
    ) -> Result<RouteStatus, ControlError> {
        let before = self.live(route)?.clone();
        let entry = self.live.get_mut(route).expect("checked above");
        f(entry);
        let after = entry.clone();
        let file = self.state_file();
        let written =
            self.store.write(&store::Change { route, live: &after, actor, kind, detail: detail.as_deref() }, &file);
        if let Err(e) = written {
            self.live.insert(route.to_string(), before);
            return Err(e);
        }
        self.publish();
        self.events.push(NewEvent {
            actor: self.actor_name(actor),
            route: Some(route.to_string()),
            kind: kind.into(),
            before: Some(describe(&before)),
            after: Some(describe(&after)),
            detail,
        });
        self.route_status(route)
    }

    fn refuse_during_rollout(&self, route: &str) -> Result<(), ControlError> {
        if let Some(r) = &self.live(route)?.rollout {
            return Err(ControlError::Conflict(format!(
                "route {route:?} has a rollout in progress (step {} of {}); pause or abort it first, or use promote/rollback",
                r.state.step + 1,
                r.state.plan.steps_bp.len()
            )));
        }
        Ok(())
    }

    fn require_canary(&self, route: &str) -> Result<(), ControlError> {
        match self.config.route(route) {
            Some(r) if r.canary.is_none() => {
                Err(ControlError::Conflict(format!("route {route:?} has no canary pool; its weight stays 0")))
            }
            _ => Ok(()),
        }
    }

    fn set_weight(&mut self, route: &str, weight: Weight, actor: Actor) -> Result<RouteStatus, ControlError> {
        self.live(route)?;
        self.refuse_during_rollout(route)?;
        if weight != Weight::ZERO {
            self.require_canary(route)?;
        }
        self.change(route, &actor, "weight", None, |l| {
            l.weight = weight;
            l.halted = false;
        })
    }

    fn promote(&mut self, route: &str, actor: Actor) -> Result<RouteStatus, ControlError> {
        self.live(route)?;
        self.require_canary(route)?;
        let ended = self.live(route)?.rollout.is_some();
        self.change(route, &actor, "promote", ended.then(|| "rollout ended at 100%".to_string()), |l| {
            l.weight = Weight::FULL;
            l.halted = false;
            if l.rollout.take().is_some() {
                l.last_outcome = Some("promoted".into());
            }
        })
    }

    fn rollback(
        &mut self,
        route: &str,
        actor: Actor,
        trigger: &str,
        detail: Option<String>,
    ) -> Result<RouteStatus, ControlError> {
        self.live(route)?;
        let aborted = self.live(route)?.rollout.is_some();
        let outcome = match (trigger, &detail) {
            ("manual", _) => "rolled back by hand".to_string(),
            (_, Some(d)) => format!("rolled back automatically: {d}"),
            (t, None) => format!("rolled back automatically ({t})"),
        };
        let detail = detail.or_else(|| aborted.then(|| "rollout aborted".to_string()));
        let result = self.change(route, &actor, "rollback", detail, |l| {
            l.weight = Weight::ZERO;
            l.halted = true;
            if l.rollout.take().is_some() || trigger != "manual" {
                l.last_outcome = Some(outcome);
            }
        });
        if result.is_ok() || trigger != "manual" {
            self.metrics.rollbacks.with_label_values(&[route, trigger]).inc();
        }
        if result.is_err() && trigger != "manual" {
            // An automatic rollback must happen even if the state cannot be written.
            if let Some(l) = self.live.get_mut(route) {
                l.weight = Weight::ZERO;
                l.halted = true;
                l.rollout = None;
            }
            self.publish();
        }
        result
    }

    fn start_rollout(&mut self, route: &str, plan: Plan, actor: Actor) -> Result<RouteStatus, ControlError> {
        self.live(route)?;
        self.require_canary(route)?;
        plan.validate().map_err(ControlError::Invalid)?;
        if let Some(r) = &self.live(route)?.rollout {
            return Err(ControlError::Conflict(format!(
                "route {route:?} already has a rollout in progress (step {} of {})",
                r.state.step + 1,
                r.state.plan.steps_bp.len()
            )));
        }
        let baseline = self.totals(route);
        let steps: Vec<String> =
            plan.steps_bp.iter().map(|&bp| Weight::from_basis_points(bp).unwrap_or_default().to_string()).collect();
        let detail = format!("steps {} every {}", steps.join(" → "), humantime::format_duration(plan.interval));
        self.change(route, &actor, "rollout_start", Some(detail), |l| {
            l.weight = plan.weight(0);
            l.halted = false;
            l.rollout = Some(Rollout {
                deadline: Some(Instant::now() + plan.interval),
                remaining: plan.interval,
                baseline,
                state: RolloutState { plan, step: 0, paused: false, extensions: 0 },
            });
        })
    }

    fn pause_rollout(&mut self, route: &str, actor: Actor, pause: bool) -> Result<RouteStatus, ControlError> {
        let l = self.live(route)?;
        let Some(r) = &l.rollout else {
            return Err(ControlError::Conflict(format!("route {route:?} has no rollout in progress")));
        };
        if r.state.paused == pause {
            return self.route_status(route);
        }
        let kind = if pause { "rollout_pause" } else { "rollout_resume" };
        self.change(route, &actor, kind, None, |l| {
            if let Some(r) = l.rollout.as_mut() {
                r.state.paused = pause;
                if pause {
                    r.remaining = r.deadline.map_or(r.remaining, |d| d.saturating_duration_since(Instant::now()));
                    r.deadline = None;
                } else {
                    r.deadline = Some(Instant::now() + r.remaining);
                }
            }
        })
    }

    fn abort_rollout(&mut self, route: &str, actor: Actor) -> Result<RouteStatus, ControlError> {
        if self.live(route)?.rollout.is_none() {
            return Err(ControlError::Conflict(format!("route {route:?} has no rollout in progress")));
        }
        self.change(route, &actor, "rollout_abort", Some("weight kept where the rollout stood".into()), |l| {
            l.rollout = None;
            l.last_outcome = Some(format!("aborted at {}", l.weight));
        })
    }

    fn totals(&self, route: &str) -> [Totals; 2] {
        match self.route_metrics.get(route) {
            Some(m) => Version::ALL.map(|v| m.version(v).totals()),
            None => Default::default(),
        }
    }

    fn window(&self, route: &str, baseline: &[Totals; 2]) -> Window {
        let now = self.totals(route);
        let figures = |v: Version| {
            let t = now[v.index()].since(&baseline[v.index()]);
            rollout::Figures {
                requests: t.requests,
                errors: t.errors,
                p99: rollout::quantile(0.99, &t.buckets, t.requests),
            }
        };
        Window { canary: figures(Version::Canary), stable: figures(Version::Stable) }
    }

    fn restart_rollout_windows(&mut self) {
        let names: Vec<String> =
            self.live.iter().filter(|(_, l)| l.rollout.is_some()).map(|(name, _)| name.clone()).collect();
        for name in names {
            let baseline = self.totals(&name);
            if let Some(r) = self.live.get_mut(&name).and_then(|l| l.rollout.as_mut()) {
                r.baseline = baseline;
            }
        }
    }

    /// The next step to judge, of the rollouts this replica drives (in
    /// fleet mode, one replica drives each; the others hold the weight).
    fn next_deadline(&self) -> Option<Instant> {
        self.live.iter().filter(|(n, _)| self.store.drives(n)).filter_map(|(_, l)| l.rollout.as_ref()?.deadline).min()
    }

    /// Judges every rollout step whose time is up.
    fn rollout_deadlines(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .live
            .iter()
            .filter(|(n, l)| {
                l.rollout.as_ref().and_then(|r| r.deadline).is_some_and(|d| d <= now) && self.store.drives(n)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for route in due {
            self.judge_step(&route);
        }
    }

    fn judge_step(&mut self, route: &str) {
        let Some(r) = self.live.get(route).and_then(|l| l.rollout.clone()) else { return };
        let window = match self.store.fleet_window(route) {
            Some(totals) => analysis::window(&totals),
            None => self.window(route, &r.baseline),
        };
        let verdict = rollout::judge(&r.state.plan, r.state.step, &window);
        let figures = format!(
            "canary {} requests, {:.2}% errors, p99 {}; stable {} requests, {:.2}% errors, p99 {}",
            window.canary.requests,
            window.canary.error_rate() * 100.0,
            window.canary.p99.map_or("-".into(), rollout::fmt_ms),
            window.stable.requests,
            window.stable.error_rate() * 100.0,
            window.stable.p99.map_or("-".into(), rollout::fmt_ms),
        );
        let interval = r.state.plan.interval;
        match verdict {
            Verdict::Extend => {
                let detail = format!(
                    "step {} extended: {} canary requests, {} needed",
                    r.state.step + 1,
                    window.canary.requests,
                    r.state.plan.min_requests
                );
                let _ = self.change(route, &Actor::Rollout, "rollout_extend", Some(detail), |l| {
                    if let Some(r) = l.rollout.as_mut() {
                        r.state.extensions = r.state.extensions.saturating_add(1);
                        r.deadline = Some(Instant::now() + interval);
                        r.remaining = interval;
                    }
                });
            }
            Verdict::Advance => {
                let baseline = self.totals(route);
                let next = r.state.step + 1;
                let weight = r.state.plan.weight(next);
                let detail =
                    format!("step {} of {} at {weight}; passed: {figures}", next + 1, r.state.plan.steps_bp.len());
                let _ = self.change(route, &Actor::Rollout, "rollout_step", Some(detail), |l| {
                    l.weight = weight;
                    if let Some(r) = l.rollout.as_mut() {
                        r.state.step = next;
                        r.state.extensions = 0;
                        r.deadline = Some(Instant::now() + interval);
                        r.remaining = interval;
                        r.baseline = baseline;
                    }
                });
            }
            Verdict::Finish => {
                let detail = format!("rollout complete; last step passed: {figures}");
                let _ = self.change(route, &Actor::Rollout, "rollout_complete", Some(detail), |l| {
                    l.weight = r.state.plan.weight(r.state.step);
                    l.rollout = None;
                    l.last_outcome = Some(format!("completed at {}", l.weight));
                });
            }
            Verdict::Fail { trigger, detail } => {
                let _ = self.rollback(route, Actor::Rollout, trigger.as_str(), Some(detail));
            }
        }
    }

    fn record_load_success(&mut self) {
        self.metrics.config_reloads.with_label_values(&["success"]).inc();
        self.metrics.config_last_success.set(unix_now());
        let hash = self.config.fingerprint();
        self.metrics.set_config_hash(&hash);
        self.last_reload = ReloadStatus {
            ok: true,
            time: Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string()),
            error: None,
            failures: self.last_reload.failures,
            config_hash: hash,
            changed: false,
        };
    }

    /// Re-reads the config file (or takes the text the watcher read); on
    /// success swaps it in, applying the precedence rule to live weights. An
    /// invalid file changes nothing.
    fn reload(&mut self, actor: Actor, watched: Option<std::io::Result<String>>) -> Result<ReloadStatus, ControlError> {
        let Some(path) = self.config_path.clone() else {
            return Err(ControlError::Invalid(
                "this server runs an embedded config; there is no file to reload".into(),
            ));
        };
        let text = watched.unwrap_or_else(|| std::fs::read_to_string(&path));
        crate::pace::point();
        if actor == Actor::Watch
            && let (Ok(text), Some(old)) = (&text, &self.config_text)
            && text == old
        {
            return Ok(ReloadStatus { changed: false, ..self.last_reload.clone() });
        }
        let parsed = text
            .map_err(|e| format!("{}: cannot read the config file: {e}", path.display()))
            .and_then(|t| {
                let base = path.parent().unwrap_or(std::path::Path::new("."));
                crate::config::parse(&t, &path.display().to_string(), base).map(|c| (c, t)).map_err(|e| e.to_string())
            })
            .and_then(|(c, t)| build_upstream_tls(&c).map(|tls| (c, t, tls)));
        let (config, text, upstream_tls) = match parsed {
            Ok(ok) => ok,
            Err(error) => {
                tracing::error!(%actor, "config rejected, the running config stays: {error}");
                self.metrics.config_reloads.with_label_values(&["failure"]).inc();
                self.last_reload.ok = false;
                self.last_reload.error = Some(error.clone());
                self.last_reload.failures += 1;
                self.events.push(NewEvent {
                    actor: actor.to_string(),
                    kind: "reload_failed".into(),
                    detail: Some(error.clone()),
                    ..Default::default()
                });
                return Err(ControlError::Invalid(error));
            }
        };
        crate::pace::point();
        let changes = self.swap_config(config, upstream_tls, &actor);
        self.config_text = Some(text);
        self.record_load_success();
        self.last_reload.changed = true;
        self.events.push(NewEvent {
            actor: actor.to_string(),
            kind: "reload".into(),
            after: Some(self.last_reload.config_hash.clone()),
            detail: Some(if changes.is_empty() { "no routing change".into() } else { changes.join("; ") }),
            ..Default::default()
        });
        Ok(self.last_reload.clone())
    }

    /// Installs a validated config. Returns a description of the changes.
    fn swap_config(
        &mut self,
        config: Config,
        upstream_tls: HashMap<String, Arc<UpstreamTls>>,
        actor: &Actor,
    ) -> Vec<String> {
        let old = self.config.clone();
        let config = Arc::new(config);
        let mut changes = Vec::new();
        let mut live = BTreeMap::new();
        for route in &config.routes {
            crate::pace::point();
            let entry = match self.live.get(&route.name) {
                Some(l) if l.config_weight == route.weight => {
                    let mut l = l.clone();
                    if route.canary.is_none() && l.weight != Weight::ZERO {
                        changes.push(format!("{}: canary removed, weight {} → 0%", route.name, l.weight));
                        l.weight = Weight::ZERO;
                        l.rollout = None;
                    }
                    l
                }
                Some(l) => {
                    changes.push(format!(
                        "{}: configured weight {} → {} (the config is the newer decision)",
                        route.name, l.config_weight, route.weight
                    ));
                    if l.rollout.is_some() {
                        changes.push(format!("{}: rollout ended by the new configured weight", route.name));
                    }
                    RouteLive { last_outcome: l.last_outcome.clone(), ..RouteLive::from_config(route) }
                }
                None => {
                    changes.push(format!("{}: added at {}", route.name, route.weight));
                    RouteLive::from_config(route)
                }
            };
            live.insert(route.name.clone(), entry);
        }
        for name in self.live.keys().filter(|n| !live.contains_key(*n)) {
            changes.push(format!("{name}: removed"));
            self.metrics.remove_route(name);
            self.route_metrics.remove(name);
        }
        // Pool changes of a kept route need fresh route_info labels.
        let before: HashMap<&str, &crate::config::Route> = old.routes.iter().map(|r| (r.name.as_str(), r)).collect();
        for route in &config.routes {
            let before = before.get(route.name.as_str()).map(|r| (&r.stable, &r.canary));
            if before.is_some() && before != Some((&route.stable, &route.canary)) {
                changes.push(format!(
                    "{}: pools now {} / {}",
                    route.name,
                    route.stable,
                    route.canary.as_deref().unwrap_or("-")
                ));
                self.route_metrics.remove(&route.name);
                self.metrics.clear_route_info(&route.name);
            }
        }
        restart_notes(&old, &config, &mut changes);
        self.live = live;
        self.upstream_tls = upstream_tls;
        self.config = config;
        for gone in self.backends.sync(&self.config, &self.upstream_tls) {
            self.metrics.remove_backend(&gone.pool, &gone.authority);
            self.health.remove(&gone.id);
        }
        self.checkers.sync(&self.config, &self.backends);
        self.restart_rollout_windows();
        self.write_config_weights(&old, actor);
        if let Err(e) = self.persist() {
            tracing::error!(%actor, "reload applied but the state file could not be written: {e}");
        }
        crate::pace::point();
        self.publish();
        self.tell_store_routes(&old);
        changes
    }

    fn data_signal(&mut self, signal: DataSignal) {
        match signal {
            DataSignal::BackendFailing(backend) => {
                let eject = self.config.pools.get(&*backend.pool).map(|p| p.eject.clone());
                let Some(eject) = eject else { return };
                let health = self.health.entry(backend.id).or_default();
                if let Some(update) = health.eject(&backend, &eject, Instant::now().into_std()) {
                    let handle = self.handle.clone();
                    let readmit = update.readmit_after;
                    let id = backend.id;
                    tokio::spawn(async move {
                        tokio::time::sleep(readmit).await;
                        handle.send(Command::Health(HealthUpdate::Readmit { backend: id }));
                    });
                    self.events.push(NewEvent {
                        actor: Actor::Health.to_string(),
                        kind: "backend_ejected".into(),
                        detail: Some(format!(
                            "{} in pool {}: {} failed attempts in a row; out for {}",
                            backend.authority,
                            backend.pool,
                            eject.after,
                            humantime::format_duration(readmit)
                        )),
                        ..Default::default()
                    });
                    self.publish();
                }
            }
        }
    }

    fn health_update(&mut self, update: HealthUpdate) {
        let Some(backend) = self.backends.all().find(|b| b.id == update.backend()).cloned() else { return };
        let entry = self.health.entry(backend.id).or_default();
        let was = entry.healthy;
        entry.apply(&update);
        let now = entry.healthy;
        if was != now {
            self.events.push(NewEvent {
                actor: Actor::Health.to_string(),
                kind: if now { "backend_up".into() } else { "backend_down".into() },
                detail: Some(format!("{} in pool {}: {}", backend.authority, backend.pool, entry.reason)),
                ..Default::default()
            });
            if now {
                backend.failures.store(0, std::sync::atomic::Ordering::Relaxed);
            }
            self.publish();
        }
    }
}

/// Settings that only take effect on restart: say so instead of ignoring them.
fn restart_notes(old: &Config, new: &Config, changes: &mut Vec<String>) {
    let mut note = |what: &str, differs: bool| {
        if differs {
            changes.push(format!("{what} changed: takes effect after a restart or `cutover ctl upgrade`"));
            tracing::warn!("{what} changed in the config; it takes effect after a restart or an upgrade");
        }
    };
    note("server.listen", old.server.listen != new.server.listen);
    note("server.workers", old.server.workers != new.server.workers);
    note("server.max_connections", old.server.max_connections != new.server.max_connections);
    note("server.tls.listen", old.server.tls.as_ref().map(|t| &t.listen) != new.server.tls.as_ref().map(|t| &t.listen));
    note("admin", old.admin != new.admin);
    note("metrics.listen", old.metrics != new.metrics);
    note("log", old.log != new.log);
    note("state.path", old.state != new.state);
    note("fleet", old.fleet != new.fleet);
}

fn describe(l: &RouteLive) -> String {
    let mut s = l.weight.to_string();
    if l.halted {
        s.push_str(" halted");
    }
    if let Some(r) = &l.rollout {
        s.push_str(&format!(
            " rollout step {}/{}{}",
            r.state.step + 1,
            r.state.plan.steps_bp.len(),
            if r.state.paused { " paused" } else { "" }
        ));
    }
    s
}

#[cfg(test)]
mod tests;
