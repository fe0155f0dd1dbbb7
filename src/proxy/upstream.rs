//! Connections to backends: HTTP/1.1 with keep-alive, pooled per worker
//! thread so that checkout and return never take a lock or cross threads.
//!
//! A connection goes back to the pool only after a complete response body;
//! one that the backend closed (keep-alive timeout) or that received bytes
//! nobody asked for is dropped at checkout, and idle ones are dropped after
//! `timeouts.upstream_idle`,
//! which is set below typical application keep-alive so that the proxy, not
//! the backend, closes them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::h1::client::Connection;
use super::stream::MaybeTls;
use crate::metrics::UpstreamErrorKind;
use crate::snapshot::Backend;

/// Idle connections kept per backend and worker; more are closed.
const MAX_IDLE_PER_BACKEND: usize = 256;

struct Idle {
    conn: Box<Connection>,
    since: Instant,
}

/// One worker's idle upstream connections, by backend id.
#[derive(Default)]
pub struct Connections {
    idle: RefCell<HashMap<u64, Vec<Idle>, BuildHasherDefault<IdHash>>>,
}

/// The pool's hash: backend ids are the proxy's own numbers, not a
/// client's input, so one multiplication spreads them well enough; the
/// default keyed hash cost about 150 instructions per lookup, two lookups per
/// request.
#[derive(Default)]
struct IdHash(u64);

impl Hasher for IdHash {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl Connections {
    /// The most recently used idle connection to `backend` that is still open.
    ///
    /// `replayable`: the request will be sent again, free, if the backend
    /// turns out to have closed the connection unread (retry-safe method,
    /// body held whole). Such a request is checked against what the reactor
    /// saw ([`Connection::idle_usable`], no system call); any other also asks
    /// the kernel ([`Connection::reusable_now`], one `recv` with `MSG_PEEK`),
    /// since it can only be sent again with proof that the backend never
    /// read it.
    pub fn take(&self, backend: u64, max_idle: Duration, replayable: bool) -> Option<Box<Connection>> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&backend)?;
        let now = Instant::now();
        while let Some(mut c) = list.pop() {
            let open = if replayable { c.conn.idle_usable() } else { c.conn.reusable_now() };
            if now.saturating_duration_since(c.since) < max_idle && open {
                c.conn.reused = true;
                return Some(c.conn);
            }
        }
        None
    }

    /// Returns `conn` to the pool, idle since `since` (a time the caller
    /// read already; an earlier one only makes the connection expire sooner).
    pub fn put_at(&self, backend: u64, conn: Box<Connection>, since: Instant) {
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(backend).or_default();
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(Idle { conn, since });
        }
    }

    /// Drops every idle connection to `backend` (they failed or it is gone).
    pub fn forget(&self, backend: u64) {
        self.idle.borrow_mut().remove(&backend);
    }

    /// Drops connections idle for longer than `max_idle` or closed by the
    /// backend, and those of backends not in `live`.
    pub fn sweep(&self, max_idle: Duration, live: impl Fn(u64) -> bool) {
        let mut idle = self.idle.borrow_mut();
        idle.retain(|id, list| {
            list.retain_mut(|c| c.since.elapsed() < max_idle && c.conn.idle_usable());
            live(*id) && !list.is_empty()
        });
    }

    pub fn idle_count(&self) -> usize {
        self.idle.borrow().values().map(Vec::len).sum()
    }
}

/// Why an upstream attempt failed, and whether it may be tried again.
#[derive(Debug)]
pub struct UpstreamError {
    pub kind: UpstreamErrorKind,
    /// The failure happened while connecting: nothing reached the backend.
    pub connect: bool,
    pub detail: String,
}

impl UpstreamError {
    fn connect(kind: UpstreamErrorKind, detail: String) -> Self {
        UpstreamError { kind, connect: true, detail }
    }
}

/// Opens the transport to `backend`: TCP, then TLS when the pool says so.
pub async fn open(backend: &Backend) -> Result<UpstreamIo, UpstreamError> {
    let tcp = match backend.addr {
        Some(addr) => TcpStream::connect(addr).await,
        None => TcpStream::connect(&*backend.authority).await,
    }
    .map_err(|e| UpstreamError::connect(UpstreamErrorKind::Connect, format!("connect {}: {e}", backend.authority)))?;
    let _ = tcp.set_nodelay(true);
    match &backend.tls {
        None => Ok(MaybeTls::Plain(tcp)),
        Some(tls) => {
            let host = backend.authority.rsplit_once(':').map_or(&*backend.authority, |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let stream = tls.connect(host, tcp).await.map_err(|e| {
                UpstreamError::connect(UpstreamErrorKind::Connect, format!("TLS with {}: {e}", backend.authority))
            })?;
            Ok(MaybeTls::Tls(Box::new(stream)))
        }
    }
}

/// Opens a new HTTP/1.1 connection to `backend` within `timeout`.
pub async fn connect(backend: &Backend, timeout: Duration) -> Result<Box<Connection>, UpstreamError> {
    match tokio::time::timeout(timeout, open(backend)).await {
        Ok(io) => io.map(|io| Box::new(Connection::new(io))),
        Err(_) => Err(UpstreamError::connect(
            UpstreamErrorKind::Timeout,
            format!("connect {} timed out after {timeout:?}", backend.authority),
        )),
    }
}

/// Plain TCP or TLS to a backend.
pub type UpstreamIo = MaybeTls<TlsStream<TcpStream>>;
