//! Listeners and workers. Every worker thread runs a single-threaded tokio
//! runtime, accepts on (a duplicate of) every listening socket, and serves
//! each connection it accepts from start to end.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::ops::Deref;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Cache};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Shared;
use super::body::ClientBody;
use super::client_timeouts::{Activity, ClientIo, Limits};
use super::h1;
use super::retry::RetryBudget;
use super::service::{self, ConnInfo};
use super::slot::Slot;
use super::stream::{MaybeTls, Rewind, Watched};
use super::upstream::{Connections, UpstreamIo};
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

/// Spawns hyper's HTTP/2 stream tasks on the worker's own thread.
#[derive(Clone, Copy, Debug)]
pub struct LocalExec;

impl<F: Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// Accepted-connection hook for TLS listeners: turns a TCP stream into the
/// stream to serve, or fails the handshake.
pub type TlsAccept =
    Arc<dyn Fn(TcpStream) -> std::pin::Pin<Box<dyn Future<Output = io::Result<TlsConn>> + Send>> + Send + Sync>;

/// A TLS connection after its handshake.
pub type TlsConn = tokio_rustls::server::TlsStream<TcpStream>;

/// One listening socket and what it speaks.
#[derive(Clone)]
pub struct Listener {
    pub socket: Arc<StdListener>,
    pub addr: SocketAddr,
    /// `cutover_open_connections{listener}`: "http" or "https".
    pub name: &'static str,
    pub tls: Option<TlsAccept>,
}

/// Binds a listening socket the way servers should: SO_REUSEADDR, a deep
/// backlog, non-blocking, IPv6 sockets IPv6-only (list both families to serve both).
pub fn bind(addr: SocketAddr) -> io::Result<StdListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The shared snapshot cell, as a worker's [`Cache`] reads it.
struct SnapshotCell(Arc<Shared>);

impl Deref for SnapshotCell {
    type Target = ArcSwap<Snapshot>;

    fn deref(&self) -> &ArcSwap<Snapshot> {
        &self.0.snapshot
    }
}

/// A worker thread's state. Lives on that thread only.
pub struct Worker {
    pub shared: Arc<Shared>,
    /// The worker's copy of the current snapshot: reading it is one atomic
    /// load while no swap happened (no arc-swap debt slot per request).
    snapshot: RefCell<Cache<SnapshotCell, Arc<Snapshot>>>,
    pub connections: Connections,
    pub budget: RetryBudget,
    http2: hyper::server::conn::http2::Builder<LocalExec>,
    started: Instant,
    tunnels: TaskTracker,
    stop: CancellationToken,
}

impl Worker {
    fn new(shared: Arc<Shared>, stop: CancellationToken) -> Worker {
        let mut http2 = hyper::server::conn::http2::Builder::new(LocalExec);
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(250)
            .max_header_list_size(64 * 1024)
            .keep_alive_interval(Some(Duration::from_secs(20)))
            .keep_alive_timeout(Duration::from_secs(20))
            // RFC 8441: WebSocket over HTTP/2 by extended CONNECT.
            .enable_connect_protocol();
        Worker {
            snapshot: RefCell::new(Cache::new(SnapshotCell(shared.clone()))),
            shared,
            connections: Connections::default(),
            budget: RetryBudget::default(),
            http2,
            started: Instant::now(),
            tunnels: TaskTracker::new(),
            stop,
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow_mut().load().clone()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Whole seconds since the worker started (a monotonic clock for budgets).
    pub fn second(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// The worker drains: no new connections, no more keep-alive.
    pub fn stop_requested(&self) -> bool {
        self.stop.is_cancelled()
    }

    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Copies bytes both ways between an upgraded client connection and an
    /// upgraded backend connection until either side closes. Tunnels are
    /// tracked so that a drain waits for them.
    pub fn spawn_tunnel(&self, client: ClientUpgrade, upstream: Rewind<UpstreamIo>) {
        let idle = self.snapshot().config.timeouts.tunnel_idle;
        let timed_out = self.metrics().slow.tunnel_idle.clone();
        self.tunnels.spawn_local(async move {
            match client {
                ClientUpgrade::Hyper(client) => {
                    if let Ok(client) = client.await {
                        tunnel(TokioIo::new(client), upstream, idle, timed_out).await;
                    }
                }
                ClientUpgrade::H1(client) => {
                    if let Some(client) = client.stream().await {
                        tunnel(client, upstream, idle, timed_out).await;
                    }
                }
            }
        });
    }
}

/// The client side of an upgrade: from hyper (HTTP/2 extended CONNECT) or
/// from the HTTP/1.1 server.
pub enum ClientUpgrade {
    Hyper(hyper::upgrade::OnUpgrade),
    H1(h1::Upgrade),
}

impl ClientUpgrade {
    pub fn of(req: &mut http::Request<ClientBody>) -> ClientUpgrade {
        match req.extensions_mut().remove::<h1::Upgrade>() {
            Some(upgrade) => ClientUpgrade::H1(upgrade),
            None => ClientUpgrade::Hyper(hyper::upgrade::on(req)),
        }
    }
}

/// Copies both ways until either side closes, or no byte passed either way
/// for `idle` (`timeouts.tunnel_idle`). On a drain, tunnels get the drain
/// period to finish on their own (the worker stops waiting for them then).
async fn tunnel<C, U>(client: C, upstream: U, idle: Duration, timed_out: prometheus::IntCounter)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let seen = Rc::new(std::cell::Cell::new(tokio::time::Instant::now()));
    let mut client = Watched::new(client, seen.clone());
    let mut upstream = Watched::new(upstream, seen.clone());
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            _ = &mut copy => return,
            _ = tokio::time::sleep_until(seen.get() + idle) => {
                if seen.get() + idle <= tokio::time::Instant::now() {
                    timed_out.inc();
                    return;
                }
            }
        }
    }
}

/// Running worker threads.
pub struct Workers {
    threads: Vec<std::thread::JoinHandle<()>>,
    stop: CancellationToken,
}

impl Workers {
    /// Starts `count` workers serving `listeners`.
    pub fn start(count: usize, listeners: Vec<Listener>, shared: Arc<Shared>) -> io::Result<Workers> {
        let stop = CancellationToken::new();
        let mut threads = Vec::new();
        for index in 0..count.max(1) {
            let mut mine = Vec::new();
            for l in &listeners {
                mine.push((l.socket.try_clone()?, l.clone()));
            }
            let shared = shared.clone();
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("cutover-worker-{index}"))
                .spawn(move || run_worker(mine, shared, stop))?;
            threads.push(thread);
        }
        Ok(Workers { threads, stop })
    }

    /// Stops accepting, lets open requests finish within `drain`, then returns.
    pub fn drain(self, drain: Duration) {
        self.stop.cancel();
        let deadline = Instant::now() + drain + Duration::from_secs(1);
        for t in self.threads {
            // Workers exit by themselves at the drain deadline; the join cannot hang.
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }

    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }
}

fn run_worker(listeners: Vec<(StdListener, Listener)>, shared: Arc<Shared>, stop: CancellationToken) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a worker runtime");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let worker = Rc::new(Worker::new(shared, stop.clone()));
        let connections = TaskTracker::new();
        let max = worker.snapshot().config.server.max_connections;
        let permits = Arc::new(Semaphore::new(max));
        for (socket, info) in listeners {
            let listener = match TcpListener::from_std(socket) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, addr = %info.addr, "cannot use listener");
                    continue;
                }
            };
            tokio::task::spawn_local(accept_loop(listener, info, worker.clone(), connections.clone(), permits.clone()));
        }
        tokio::task::spawn_local(sweep_idle(worker.clone()));
        stop.cancelled().await;
        connections.close();
        worker.tunnels.close();
        let drain = worker.snapshot().config.server.drain_timeout;
        let _ = tokio::time::timeout(drain, async {
            connections.wait().await;
            worker.tunnels.wait().await;
        })
        .await;
    });
}

async fn accept_loop(
    listener: TcpListener,
    info: Listener,
    worker: Rc<Worker>,
    connections: TaskTracker,
    permits: Arc<Semaphore>,
) {
    let open = worker.metrics().open_connections.with_label_values(&[info.name]);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = worker.stop.cancelled() => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = worker.stop.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, addr = %info.addr, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let worker = worker.clone();
        let open = open.clone();
        let tls = info.tls.clone();
        connections.spawn_local(async move {
            open.inc();
            match tls {
                None => h1::serve(MaybeTls::Plain(stream), peer, false, &worker).await,
                Some(accept) => {
                    let timeout = worker.snapshot().config.timeouts.client_header;
                    match tokio::time::timeout(timeout, accept(stream)).await {
                        Ok(Ok(tls_stream)) => h1::serve(MaybeTls::Tls(Box::new(tls_stream)), peer, true, &worker).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            open.dec();
            drop(permit);
        });
    }
}

/// Serves one HTTP/2 client connection (by ALPN, or by prior knowledge as
/// the HTTP/1.1 server found) until it closes, stays idle for
/// `client_idle`, or the worker drains.
pub async fn serve_h2<I>(io: I, peer: SocketAddr, tls: bool, worker: &Rc<Worker>)
where
    I: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let activity = Arc::new(Activity::default());
    let limits = Limits::from(&worker.snapshot().config.timeouts);
    let opened = tokio::time::Instant::now();
    let info = Rc::new(ConnInfo::new(peer, tls, activity.clone()));
    let first_request = Rc::new(FirstRequest::default());
    let svc = {
        let worker = worker.clone();
        let first_request = first_request.clone();
        service_fn(move |req: http::Request<hyper::body::Incoming>| {
            first_request.seen();
            // In a room of the thread's: the task hyper spawns for the
            // stream holds a pointer, not the few KiB of the future.
            Slot::new(|| service::handle(worker.clone(), info.clone(), req.map(ClientBody::Hyper)))
        })
    };
    let io = ClientIo::new(io, activity.clone(), limits);
    let conn = worker.http2.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let idle = tokio::select! {
        result = conn.as_mut() => {
            activity.stop();
            if let Err(e) = result {
                tracing::debug!(error = %e, %peer, "client connection ended with an error");
            }
            return;
        }
        _ = worker.stop.cancelled() => {
            // A connection accepted before the drain gets its first request's
            // time (see `drain_wait`), and that request is answered before the GOAWAY.
            tokio::select! {
                result = conn.as_mut() => {
                    activity.stop();
                    if let Err(e) = result {
                        tracing::debug!(error = %e, %peer, "client connection ended with an error");
                    }
                    return;
                }
                _ = first_request.wait(drain_wait(Some(opened + limits.header))) => {}
            }
            false
        }
        _ = activity.idle_expired() => true,
    };
    conn.as_mut().graceful_shutdown();
    if idle {
        // Nothing is in flight: an HTTP/2 client gets its GOAWAY, then a bounded wait.
        let _ = tokio::time::timeout(limits.header.max(Duration::from_secs(1)), conn).await;
    } else {
        let _ = conn.await;
    }
    activity.stop();
}

/// How long a draining worker waits for the next request of an idle
/// connection: one it accepted but has no request from yet, or an HTTP/1.1
/// connection kept alive between two requests.
pub const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Until when a draining worker waits for a connection's next request.
/// A connection kept alive between two requests gets `DRAIN_GRACE`: its
/// client knows that an idle connection may close as it sends (RFC 9112,
/// section 9.3.1). One with no request yet (`first_due`: its accept plus
/// `client_header`) was accepted before the drain, and its client cannot
/// know to retry: it keeps that whole window, at least the grace. Both are
/// bounded by `drain_timeout`.
pub fn drain_wait(first_due: Option<tokio::time::Instant>) -> tokio::time::Instant {
    let grace = tokio::time::Instant::now() + DRAIN_GRACE;
    first_due.map_or(grace, |due| due.max(grace))
}

/// Whether a connection's first request has arrived.
#[derive(Default)]
struct FirstRequest {
    seen: std::cell::Cell<bool>,
    notify: tokio::sync::Notify,
}

impl FirstRequest {
    fn seen(&self) {
        if !self.seen.replace(true) {
            self.notify.notify_one();
        }
    }

    /// Returns once the first request has arrived, or at `until`.
    async fn wait(&self, until: tokio::time::Instant) {
        if !self.seen.get() {
            let _ = tokio::time::timeout_at(until, self.notify.notified()).await;
        }
    }
}

/// Drops idle upstream connections past `upstream_idle` once a second.
async fn sweep_idle(worker: Rc<Worker>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let snap = worker.snapshot();
        let live = |id: u64| snap.pools.iter().any(|p| p.backends.iter().any(|b| b.id == id));
        worker.connections.sweep(snap.config.timeouts.upstream_idle, live);
        if worker.stop.is_cancelled() {
            return;
        }
    }
}
