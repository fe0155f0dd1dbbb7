//! cutover: a reverse proxy for canary releases.
//!
//! A request flows one way: [`proxy::listener`] accepts it on a worker
//! thread, [`proxy::service`] reads the current [`snapshot::Snapshot`] once,
//! asks [`routing::decide`] (a pure function) where it goes, and forwards it
//! over a pooled upstream connection. The control plane ([`control`]) is the
//! only writer of snapshots: config reloads, admin calls, rollout steps and
//! health changes all go through its one task, which builds a new snapshot
//! and swaps it in, yielding the CPU as it goes ([`pace`]) so that a worker
//! sharing its core waits no more than a millisecond or two. [`metrics`] handles are resolved per snapshot, so the
//! request path only increments counters.
#![deny(unsafe_code)]

pub mod access_log;
pub mod config;
pub mod control;
pub mod ctl;
pub mod dashboard;
pub mod demo;
pub mod demo_fleet;
pub mod fleet;
pub mod health;
pub mod lifecycle;
pub mod metrics;
pub mod pace;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod upgrade;
