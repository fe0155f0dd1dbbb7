//! The fleet thread: one etcd session at a time (a lease, a watch, the
//! heartbeat, counters and driver keys); on any failure the session ends,
//! everything that depends on the lease stops at once, and a new session
//! starts when etcd answers again, resynchronising from its revision.
//!
//! This file is the session's life: connecting, the lease, the loop that
//! waits on the watch, renewals, counters and the control task's requests,
//! and resuming a watch that broke. What the session takes in from etcd is
//! in [`apply`]; what it writes there is in [`write`].

mod apply;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::etcd::{BadRecord, Client, Event, WatchMessage};
use super::{Fleet, Note, Request, RouteRecord, View, WriteError};
use crate::config::Fleet as FleetConfig;
use crate::control::{Command, Handle};
use crate::metrics::{FleetMetrics, Metrics, Totals};
use crate::proxy::Shared;
use apply::Ignored;

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
        ignored: Ignored::default(),
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
    ignored: Ignored,
}

/// Why a session ended.
enum End {
    Stop,
    Lost(String),
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
}
