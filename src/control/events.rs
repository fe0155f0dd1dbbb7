//! The audit log: every change (who, what, before → after), kept in a bounded
//! in-memory ring for `GET /v1/events` and written to the log.

use std::collections::VecDeque;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::watch;

/// Events kept in memory; older ones are dropped.
pub const CAPACITY: usize = 1000;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    /// Increases by one per event, from 1.
    pub seq: u64,
    /// RFC 3339 time.
    pub time: String,
    /// `unix`, `tcp:<addr>`, `reload`, `watch`, `signal`, `rollout`, `health`, `start`.
    pub actor: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// What happened, e.g. `weight`, `rollback`, `reload`, `reload_failed`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

pub struct EventLog {
    ring: VecDeque<Event>,
    next: u64,
    /// The seq of the newest event, for long-polling readers.
    latest: watch::Sender<u64>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog { ring: VecDeque::new(), next: 1, latest: watch::channel(0).0 }
    }
}

/// An event before it gets its number and time.
#[derive(Debug, Default, Clone)]
pub struct NewEvent {
    pub actor: String,
    pub route: Option<String>,
    pub kind: String,
    pub before: Option<String>,
    pub after: Option<String>,
    pub detail: Option<String>,
}

impl EventLog {
    pub fn push(&mut self, e: NewEvent) -> &Event {
        let event = Event {
            seq: self.next,
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            actor: e.actor,
            route: e.route,
            kind: e.kind,
            before: e.before,
            after: e.after,
            detail: e.detail,
        };
        tracing::info!(
            target: "cutover::audit",
            seq = event.seq,
            actor = %event.actor,
            route = event.route.as_deref().unwrap_or("-"),
            kind = %event.kind,
            before = event.before.as_deref().unwrap_or("-"),
            after = event.after.as_deref().unwrap_or("-"),
            detail = event.detail.as_deref().unwrap_or("-"),
            "event"
        );
        self.next += 1;
        if self.ring.len() == CAPACITY {
            self.ring.pop_front();
        }
        self.ring.push_back(event);
        let _ = self.latest.send(self.next - 1);
        self.ring.back().expect("just pushed")
    }

    /// Events with `seq > since`, oldest first, at most `limit`.
    pub fn since(&self, since: u64, limit: usize) -> Vec<Event> {
        self.ring.iter().filter(|e| e.seq > since).take(limit).cloned().collect()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_newest_and_numbers_them() {
        let mut log = EventLog::default();
        for i in 0..(CAPACITY + 5) {
            log.push(NewEvent { actor: "unix".into(), kind: format!("k{i}"), ..Default::default() });
        }
        let all = log.since(0, usize::MAX);
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all[0].seq, 6);
        assert_eq!(all.last().unwrap().seq, (CAPACITY + 5) as u64);
        assert_eq!(log.since(all.last().unwrap().seq - 2, 10).len(), 2);
    }
}
