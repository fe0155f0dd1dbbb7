//! The data plane: listeners, the per-request service, header hygiene,
//! upstream connections, tunnels.
//!
//! Each worker thread runs its own single-threaded runtime and serves the
//! connections it accepts from start to end, with its own pool of upstream
//! connections: no lock and no cross-thread hand-off on the request path.
//! Workers read the shared [`Snapshot`] once per request and never write it;
//! what they learn about backends (failures) goes to the control plane as a
//! [`DataSignal`].

pub mod body;
pub mod client_timeouts;
pub mod h1;
pub mod headers;
pub mod listener;
pub mod queue;
pub mod retry;
pub mod service;
mod slot;
pub mod stream;
pub mod tls;
pub mod upstream;
pub mod verbatim;

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;

use crate::access_log::AccessLog;
use crate::metrics::Metrics;
use crate::snapshot::{Backend, Snapshot};

/// What the data plane tells the control plane.
#[derive(Debug)]
pub enum DataSignal {
    /// A backend failed `eject.after` connections in a row.
    BackendFailing(Arc<Backend>),
}

/// State shared by all workers and the control plane.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Arc<Metrics>,
    pub access_log: Option<AccessLog>,
    pub signals: mpsc::UnboundedSender<DataSignal>,
}
