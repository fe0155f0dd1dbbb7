//! Per-backend connection limits, as HAProxy's `maxconn` on a server: at
//! most `max_connections` requests in flight at one backend (over all
//! workers); more wait in a bounded queue (`max_queue`) for at most
//! `timeouts.queue`, then get 503. A slow client therefore cannot take
//! more than its share of an application's worker pool, and the requests
//! above the limit wait in the proxy, where waiting is cheap.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::snapshot::{Backend, Pool};

/// Why a request got no slot at its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_queue` requests already wait.
    QueueFull,
    /// No slot freed within `timeouts.queue`.
    TimedOut,
}

/// One request in flight at a backend: counts for `least_requests` and for
/// `max_connections`; dropping it frees the slot and wakes a waiter.
pub struct InFlight(Arc<Backend>);

impl InFlight {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
        if self.0.queued.load(Ordering::Acquire) > 0 {
            self.0.freed.notify_one();
        }
    }
}

/// Takes a slot when the count is below `max` (0: no limit).
fn try_take(backend: &Backend, max: u32) -> bool {
    if max == 0 {
        backend.inflight.fetch_add(1, Ordering::AcqRel);
        return true;
    }
    backend.inflight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok()
}

/// A slot at `backend` under `pool`'s limits, waiting in its queue if need be.
pub async fn admit(
    backend: &Arc<Backend>,
    pool: &Pool,
    wait: Duration,
    metrics: &Metrics,
) -> Result<InFlight, Refused> {
    let max = pool.max_connections;
    if try_take(backend, max) {
        return Ok(InFlight(backend.clone()));
    }
    if backend.queued.fetch_add(1, Ordering::AcqRel) >= pool.max_queue {
        backend.queued.fetch_sub(1, Ordering::AcqRel);
        metrics.slow.queue_full.inc();
        return Err(Refused::QueueFull);
    }
    metrics.slow.queued.inc();
    let waited = tokio::time::timeout(wait, async {
        loop {
            let freed = backend.freed.notified();
            tokio::pin!(freed);
            // Registered before the check: a slot freed in between still wakes us.
            freed.as_mut().enable();
            if try_take(backend, max) {
                return;
            }
            freed.await;
        }
    })
    .await;
    backend.queued.fetch_sub(1, Ordering::AcqRel);
    match waited {
        Ok(()) => Ok(InFlight(backend.clone())),
        Err(_) => {
            // A wake-up this waiter took and could not use goes to the next one.
            if backend.queued.load(Ordering::Acquire) > 0 {
                backend.freed.notify_one();
            }
            metrics.slow.queue_timeout.inc();
            Err(Refused::TimedOut)
        }
    }
}
