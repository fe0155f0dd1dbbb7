//! The fleet thread: one etcd session at a time (a lease, a watch, the
//! heartbeat, counters and driver keys); on any failure the session ends,
//! everything that depends on the lease stops at once, and a new session
//! starts when etcd answers again, resynchronising from its revision.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::etcd::{BadRecord, Client, Compare, EtcdError, Event, Op, WatchMessage};
use super::{CountersRecord, Fleet, Note, ReplicaRecord, Request, RouteChange, RouteRecord, View, WriteError};
use crate::config::{Config, Fleet as FleetConfig};
use crate::control::{Command, Handle};
use crate::metrics::{FleetMetrics, Metrics, Totals};
use crate::proxy::Shared;
use crate::routing::Version;

/// How often counters of running rollouts are published.
const COUNTERS_EVERY: Duration = Duration::from_millis(200);
/// A watch open this long before it broke was healthy: it is resumed at once.
const WATCH_HEALTHY: Duration = Duration::from_secs(10);

/// The pause before resuming a watch that broke for the `breaks`-th time in
/// a row without a healthy spell: none for the first, then 50 ms doubling to
/// 2 s, so that an endpoint that breaks every watch is not a busy loop.
fn watch_pause(breaks: u32) -> Duration {
    match breaks {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis(50u64 << (n - 2).min(6)).min(Duration::from_secs(2)),
    }
}

/// The revision a broken watch resumes after, once `events` are delivered:
/// the newest of theirs (`last` if none is newer). Not the message's header
/// revision, which can be ahead of the events delivered (see
/// [`WatchMessage::Events`]): resuming after it would skip the batches
/// still to come. etcd never splits one revision's events between messages
/// (it fragments only when asked to), so every event up to the returned
/// revision has been delivered. An event that did not decode counts for
/// nothing: resuming may deliver it again, and it is ignored again.
fn resume_after(last: i64, events: &[Result<Event, BadRecord>]) -> i64 {
    events.iter().flatten().map(|event| event.kv.mod_revision).fold(last, i64::max)
}

/// The route a key under the prefix (the prefix taken off) is about:
/// `routes/{route}`, `drivers/{route}`, `counters/{route}/{name}`.
fn route_of(rest: &str) -> Option<&str> {
    match rest.split_once('/') {
        Some(("routes" | "drivers", route)) => Some(route),
        Some(("counters", rest)) => rest.rsplit_once('/').map(|(route, _)| route),
        _ => None,
    }
}

/// Starts the fleet thread. Returns at once: the first session connects
/// in the background (a replica starts while etcd is unreachable).
pub fn start(
    config: &FleetConfig,
    control: Handle,
    shared: Arc<Shared>,
    metrics: &Arc<Metrics>,
) -> Result<Fleet, String> {
    let timeout = (config.lease / 3).clamp(Duration::from_millis(300), Duration::from_secs(2));
    let credentials = config.username.clone().zip(config.password.clone());
    let client = Client::new(&config.etcd, timeout, credentials, config.tls.as_ref())?;
    let (tx, rx) = mpsc::unbounded_channel();
    let fleet = Fleet {
        name: config.name.clone(),
        prefix: config.prefix.clone(),
        lease: config.lease,
        view: Arc::new(Mutex::new(View { last_error: Some("connecting".into()), ..Default::default() })),
        requests: tx,
        stop: CancellationToken::new(),
        abrupt: Default::default(),
        thread: Default::default(),
        timeout,
    };
    let session = Session {
        fleet: fleet.clone(),
        client: Arc::new(client),
        control,
        shared,
        metrics: metrics.fleet(),
        requests: rx,
        pending: BTreeMap::new(),
        baselines: HashMap::new(),
        published: HashMap::new(),
        hash: (0, String::new()),
        lease: 0,
        unknown: UnknownRoutes::default(),
    };
    let thread = std::thread::Builder::new()
        .name("cutover-fleet".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("cannot start the fleet runtime: {e}");
                    return;
                }
            };
            runtime.block_on(session.run());
        })
        .map_err(|e| format!("cannot start the fleet thread: {e}"))?;
    if let Ok(mut t) = fleet.thread.lock() {
        *t = Some(thread);
    }
    Ok(fleet)
}

struct Session {
    fleet: Fleet,
    client: Arc<Client>,
    control: Handle,
    shared: Arc<Shared>,
    metrics: FleetMetrics,
    requests: mpsc::UnboundedReceiver<Request>,
    /// Manual rollbacks made while etcd was unreachable, by route.
    pending: BTreeMap<String, RouteRecord>,
    /// (route, window) -> this replica's totals when the window began.
    baselines: HashMap<(String, String), [Totals; 2]>,
    /// Route -> requests last published (publish only on change).
    published: HashMap<String, (String, u64)>,
    /// (snapshot generation, config hash).
    hash: (u64, String),
    /// The current session's lease.
    lease: i64,
    unknown: UnknownRoutes,
}

/// Routes named in etcd that this replica's config does not have.
#[derive(Default)]
struct UnknownRoutes {
    logged: HashSet<String>,
    /// LIMIT names were logged: no more are (a flood of names grows no memory).
    full: bool,
}

impl UnknownRoutes {
    const LIMIT: usize = 256;

    /// Whether `route` is one of `config`'s. A record for another (from a
    /// replica with another config, or a hand with etcdctl) must create no
    /// state here: the caller ignores it, and the first for each name is logged.
    fn configured(&mut self, config: &Config, route: &str, key: &str) -> bool {
        if config.route(route).is_some() {
            return true;
        }
        self.log_once(route, key);
        false
    }

    /// Logs `route` the first time it is seen; whether it logged a line.
    fn log_once(&mut self, route: &str, key: &str) -> bool {
        if self.full || self.logged.contains(route) {
            return false;
        }
        if self.logged.len() == Self::LIMIT {
            self.full = true;
            tracing::warn!(
                limit = Self::LIMIT,
                "fleet: records for yet more routes this config lacks; no more are logged"
            );
            return true;
        }
        tracing::warn!(
            route = ?route,
            key = ?key,
            "fleet: ignored a record for a route this config does not have (logged once per route)"
        );
        self.logged.insert(route.to_string());
        true
    }
}

/// Why a session ended.
enum End {
    Stop,
    Lost(String),
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl Session {
    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.fleet.prefix)
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.fleet.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_disconnected(&mut self, error: &str) {
        let had_drivers = {
            let mut view = self.view();
            if view.connected {
                tracing::warn!(error, "fleet: lost etcd; changes answer 503, rollouts hold");
            }
            view.connected = false;
            view.last_error = Some(error.to_string());
            view.replicas.clear();
            view.drivers.clear();
            view.counters.clear();
            !std::mem::take(&mut view.driving).is_empty()
        };
        self.metrics.connected.set(0);
        self.metrics.replicas.set(0);
        self.metrics.driver.reset();
        if had_drivers {
            self.control.send(Command::Fleet(Note::Drivers));
        }
    }

    async fn run(mut self) {
        let stop = self.fleet.stop.clone();
        loop {
            match self.session(&stop).await {
                End::Stop => break,
                End::Lost(e) => self.set_disconnected(&e),
            }
            // Until the next attempt, writes fail fast (503).
            let retry = tokio::time::sleep(Duration::from_millis(300));
            tokio::pin!(retry);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = &mut retry => break,
                    Some(request) = self.requests.recv() => self.refuse(request),
                }
            }
        }
    }

    fn refuse(&mut self, request: Request) {
        match request {
            Request::Write { reply, .. } => {
                let error = self.view().last_error.clone().unwrap_or_default();
                let _ = reply.send(Err(WriteError::Unreachable(error)));
            }
            Request::Pending { route, record } => {
                self.pending.insert(route, record);
            }
            // The next session reads every record of the new config's routes.
            Request::Reloaded { .. } => {}
        }
    }

    /// One session: runs until etcd is lost or the fleet stops.
    async fn session(&mut self, stop: &CancellationToken) -> End {
        let ttl = self.fleet.lease.as_secs().max(1);
        let lease = match self.client.grant(ttl).await {
            Ok(id) => id,
            Err(e) => return End::Lost(e.to_string()),
        };
        self.lease = lease;
        let mut last_renewal = Instant::now();
        // Manual rollbacks made while away are written first: they win.
        if let Err(e) = self.write_pending().await {
            return End::Lost(e.to_string());
        }
        let revision = match self.resync().await {
            Ok(r) => r,
            Err(e) => return End::Lost(e.to_string()),
        };
        let mut watch = match self.client.watch(&format!("{}/", self.fleet.prefix), revision.saturating_add(1)).await {
            Ok(w) => w,
            Err(e) => return End::Lost(e.to_string()),
        };
        {
            let mut view = self.view();
            view.connected = true;
            view.last_error = None;
        }
        self.metrics.connected.set(1);
        tracing::info!(name = %self.fleet.name, revision, "fleet: connected to etcd");
        if let Err(e) = self.heartbeat(lease).await {
            return End::Lost(e.to_string());
        }
        self.acquire_drivers(lease).await;
        let renew_every = self.fleet.lease / 3;
        let mut renew = tokio::time::interval(renew_every);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut counters = tokio::time::interval(COUNTERS_EVERY);
        counters.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The read's revision: the watch starts with the revision after it.
        let mut watch_revision = revision;
        let mut watch_opened = tokio::time::Instant::now();
        let (mut breaks, mut resume_at) = (0u32, None::<tokio::time::Instant>);
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    if !self.fleet.abrupt.load(Ordering::SeqCst) {
                        let _ = self.client.revoke(lease).await;
                    }
                    return End::Stop;
                }
                () = tokio::time::sleep_until(resume_at.unwrap_or_else(tokio::time::Instant::now)), if resume_at.is_some() => {
                    resume_at = None;
                    match self.client.watch(&format!("{}/", self.fleet.prefix), watch_revision.saturating_add(1)).await {
                        Ok(w) => watch = w,
                        Err(e) => return End::Lost(e.to_string()),
                    }
                    watch_opened = tokio::time::Instant::now();
                }
                message = watch.next(), if resume_at.is_none() => match message {
                    Ok(WatchMessage::Events { events }) => {
                        watch_revision = resume_after(watch_revision, &events);
                        self.apply_events(events);
                        self.acquire_drivers(lease).await;
                    }
                    Ok(WatchMessage::Compacted { revision }) => {
                        return End::Lost(format!("the watch fell behind etcd's compaction (revision {revision})"));
                    }
                    Err(e) => {
                        // The watch broke but the lease may be fine: resume
                        // from the last revision, at once after a healthy
                        // spell, else after a pause that grows (renewals and
                        // requests go on meanwhile).
                        breaks = if watch_opened.elapsed() >= WATCH_HEALTHY { 1 } else { breaks.saturating_add(1) };
                        let pause = watch_pause(breaks);
                        tracing::warn!(error = %e, ?pause, "fleet: watch interrupted, resuming");
                        resume_at = Some(tokio::time::Instant::now() + pause);
                    }
                },
                Some(request) = self.requests.recv() => {
                    if let Err(e) = self.request(request, lease).await {
                        return End::Lost(e.to_string());
                    }
                }
                _ = renew.tick() => {
                    // Stop driving before the lease can have expired in etcd: no two drivers.
                    if last_renewal.elapsed() > self.fleet.lease * 2 / 3 {
                        return End::Lost("the lease could not be renewed in time".into());
                    }
                    match self.client.keep_alive(lease).await {
                        Ok(left) if left > 0 => last_renewal = Instant::now(),
                        Ok(_) => return End::Lost("the lease expired".into()),
                        Err(e) => return End::Lost(e.to_string()),
                    }
                    if let Err(e) = self.heartbeat(lease).await {
                        return End::Lost(e.to_string());
                    }
                    self.acquire_drivers(lease).await;
                }
                _ = counters.tick() => {
                    if let Err(e) = self.publish_counters(lease).await {
                        return End::Lost(e.to_string());
                    }
                }
            }
        }
    }

    /// Reads everything under the prefix; hands the routes to the control task.
    async fn resync(&mut self) -> Result<i64, EtcdError> {
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

    fn apply_events(&mut self, events: Vec<Result<Event, BadRecord>>) {
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
                && !self.unknown.configured(&config, route, &event.kv.key)
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
                Some(("replicas", name)) => match value.and_then(|v| serde_json::from_slice::<ReplicaRecord>(v).ok()) {
                    Some(record) => {
                        view.replicas.insert(name.to_string(), record);
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
    async fn read_routes(&mut self, routes: &[String]) -> Result<(), EtcdError> {
        let prefix = format!("{}/", self.fleet.prefix);
        let (_, kvs) = self.client.range(&prefix, true).await?;
        let ours = |key: &str| {
            key.strip_prefix(&prefix).and_then(route_of).is_some_and(|route| routes.iter().any(|r| r == route))
        };
        let events =
            kvs.into_iter().flatten().filter(|kv| ours(&kv.key)).map(|kv| Ok(Event { deleted: false, kv })).collect();
        self.apply_events(events);
        Ok(())
    }

    /// Routes a reload removed: their windows and figures are dropped, so
    /// that a rollout this replica drove is let go (by [`Self::acquire_drivers`])
    /// to a replica that still has the route. Their records stay as they are.
    fn let_go(&self, routes: &[String]) {
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

    fn driver_value(&self, lease: i64) -> String {
        format!("{}#{lease:x}", self.fleet.name)
    }

    /// Takes the driver key of every rollout that has no driver; lets go
    /// of those whose rollout ended.
    async fn acquire_drivers(&mut self, lease: i64) {
        let mine = self.driver_value(lease);
        let (free, ended): (Vec<String>, Vec<String>) = {
            let view = self.view();
            (
                view.windows.keys().filter(|r| !view.drivers.contains_key(*r)).cloned().collect(),
                view.drivers
                    .iter()
                    .filter(|(r, d)| **d == mine && !view.windows.contains_key(*r))
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
    async fn write_pending(&mut self) -> Result<(), EtcdError> {
        while let Some((route, record)) = self.pending.pop_first() {
            let value = serde_json::to_vec(&record).unwrap_or_default();
            if let Err(e) = self.client.put(&super::route_key(&self.fleet.prefix, &route), &value, 0).await {
                self.pending.insert(route, record);
                return Err(e);
            }
            tracing::info!(route, "fleet: the rollback made while etcd was unreachable is written");
        }
        Ok(())
    }

    /// Handles a request from the control task; an error ends the session.
    async fn request(&mut self, request: Request, lease: i64) -> Result<(), EtcdError> {
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
                let key = super::route_key(&self.fleet.prefix, &route);
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

    async fn heartbeat(&mut self, lease: i64) -> Result<(), EtcdError> {
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
    async fn publish_counters(&mut self, lease: i64) -> Result<(), EtcdError> {
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

/// This replica's running totals of a route (zero if it has no such route).
fn route_totals(shared: &Shared, route: &str) -> [Totals; 2] {
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
    fn a_watch_that_keeps_breaking_is_resumed_ever_more_slowly() {
        let pauses: Vec<u64> = (0..10).map(|n| watch_pause(n).as_millis() as u64).collect();
        assert_eq!(pauses, [0, 0, 50, 100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(watch_pause(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn an_unknown_route_is_logged_once_and_the_names_kept_are_bounded() {
        let mut unknown = UnknownRoutes::default();
        assert!(unknown.log_once("ghost", "/p/routes/ghost"));
        assert!(!unknown.log_once("ghost", "/p/drivers/ghost"), "once per name, whatever the key");
        assert!(unknown.log_once("phantom", "/p/routes/phantom"));
        for i in 2..UnknownRoutes::LIMIT {
            assert!(unknown.log_once(&format!("r{i}"), "k"));
        }
        assert!(unknown.log_once("one-more", "k"), "the line that says no more are logged");
        assert!(!unknown.log_once("yet-another", "k"));
        assert!(!unknown.log_once("ghost", "k"));
        assert_eq!(unknown.logged.len(), UnknownRoutes::LIMIT);
    }
}
