//! Starting and stopping a whole cutover: listeners, workers, the control
//! plane (control task, admin API, metrics endpoint, config watcher).
//!
//! [`start`] returns once every socket is bound and every worker runs, so a
//! caller (the CLI, a test) may send traffic as soon as it returns.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use crate::access_log::{AccessLog, Batching};
use crate::config::{AccessLog as AccessMode, AdminListen, Config};
use crate::control::{self, Actor, Handle, admin};
use crate::metrics::Metrics;
use crate::proxy::Shared;
use crate::proxy::listener::{self, Listener, Workers};

/// Where the config comes from.
pub enum Source {
    /// A file: reloads re-read it, and it is watched.
    File(PathBuf),
    /// A config held in memory (the demo); it cannot be reloaded.
    Embedded(Box<Config>),
}

/// Listening sockets handed over by a parent process or systemd, by address.
#[derive(Default)]
pub struct Inherited {
    pub sockets: Vec<std::net::TcpListener>,
    pub unix: Vec<(PathBuf, std::os::unix::net::UnixListener)>,
    /// Sockets from systemd socket activation (as opposed to an upgrade).
    pub from_systemd: bool,
}

impl Inherited {
    /// The handed-over socket for `addr`. In an upgrade, a configured port 0
    /// was resolved by the parent when it bound: it takes the next socket on
    /// the same IP, in the order the parent handed them over (listeners, then
    /// metrics, then admin: the order `start` asks for them). systemd
    /// sockets must match exactly.
    fn take(&mut self, addr: SocketAddr) -> Option<std::net::TcpListener> {
        let bound = |s: &std::net::TcpListener| s.local_addr().ok();
        let index = self.sockets.iter().position(|s| bound(s) == Some(addr)).or_else(|| {
            (addr.port() == 0 && !self.from_systemd)
                .then(|| self.sockets.iter().position(|s| bound(s).map(|a| a.ip()) == Some(addr.ip())))?
        })?;
        Some(self.sockets.remove(index))
    }

    fn take_unix(&mut self, path: &std::path::Path) -> Option<std::os::unix::net::UnixListener> {
        let index = self.unix.iter().position(|(p, _)| p == path)?;
        Some(self.unix.swap_remove(index).1)
    }

    /// Binds `addr` unless a socket for it was handed over.
    fn tcp(&mut self, addr: SocketAddr) -> Result<std::net::TcpListener, StartError> {
        match self.take(addr) {
            Some(s) => {
                s.set_nonblocking(true).map_err(|e| StartError::Other(e.to_string()))?;
                Ok(s)
            }
            None => listener::bind(addr).map_err(|source| StartError::Bind { addr: addr.to_string(), source }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAddress {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// A running server.
pub struct Running {
    /// Plain HTTP listeners, as bound (port 0 resolved).
    pub proxy_addrs: Vec<SocketAddr>,
    pub tls_addrs: Vec<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    pub admin: Option<AdminAddress>,
    pub control: Handle,
    pub shared: Arc<Shared>,
    /// The listening sockets (for handing over on upgrade).
    pub listeners: Vec<Arc<std::net::TcpListener>>,
    pub config_path: Option<PathBuf>,
    /// The etcd session in fleet mode.
    pub fleet: Option<crate::fleet::Fleet>,
    /// Duplicates of the admin and metrics sockets, with their kind, for upgrades.
    handover: Vec<(std::os::fd::OwnedFd, String)>,
    /// Set once another process serves the same sockets: do not unlink the admin socket.
    handed_over: bool,
    workers: Option<Workers>,
    control_stop: CancellationToken,
    control_thread: Option<std::thread::JoinHandle<()>>,
    admin_socket: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("{0}")]
    Other(String),
}

/// Starts a server. `inherited` sockets are used instead of binding where the
/// addresses match (zero-downtime upgrade, systemd socket activation).
pub fn start(source: Source, mut inherited: Inherited, upgrade: Option<UpgradeHook>) -> Result<Running, StartError> {
    let (config, path, text) = match source {
        Source::File(path) => {
            let text = std::fs::read_to_string(&path).map_err(|e| crate::config::ConfigError {
                file: path.display().to_string(),
                line: None,
                key: String::new(),
                message: format!("cannot read the config file: {e}"),
            })?;
            let base = path.parent().unwrap_or(std::path::Path::new("."));
            let config = crate::config::parse(&text, &path.display().to_string(), base)?;
            (config, Some(path), Some(text))
        }
        Source::Embedded(config) => (*config, None, None),
    };
    let metrics = Metrics::new();
    let access_log = match config.log.access {
        AccessMode::Off => None,
        AccessMode::Json => Some(
            AccessLog::start(
                config.log.access_path.as_deref(),
                Batching { buffer: config.log.buffer, flush: config.log.flush, sample: config.log.sample },
                metrics.access_log_dropped.clone(),
            )
            .map_err(|e| StartError::Other(format!("cannot open the access log: {e}")))?,
        ),
    };
    let workers_count = match config.server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };

    // Every socket is bound before anything starts, so a failure leaves nothing running.
    let mut listeners = Vec::new();
    for &addr in &config.server.listen {
        let socket = inherited.tcp(addr)?;
        let addr = socket.local_addr().map_err(|e| StartError::Other(e.to_string()))?;
        listeners.push(Listener { socket: Arc::new(socket), addr, name: "http", tls: None });
    }
    if let Some(tls) = &config.server.tls {
        let acceptor = crate::tls::Acceptor::new(tls, metrics.clone())
            .map_err(|e| StartError::Other(format!("server.tls: {e}")))?;
        for &addr in &tls.listen {
            let socket = inherited.tcp(addr)?;
            let addr = socket.local_addr().map_err(|e| StartError::Other(e.to_string()))?;
            listeners.push(Listener { socket: Arc::new(socket), addr, name: "https", tls: Some(acceptor.accept_fn()) });
        }
    }
    let metrics_socket = match &config.metrics {
        Some(m) => Some(inherited.tcp(m.listen)?),
        None => None,
    };
    let metrics_addr = metrics_socket.as_ref().and_then(|s| s.local_addr().ok());
    enum AdminSocket {
        Unix(std::os::unix::net::UnixListener, PathBuf),
        Tcp(std::net::TcpListener),
    }
    let admin_socket = match config.admin.as_ref().map(|a| &a.listen) {
        None => None,
        Some(AdminListen::Unix(path)) => {
            let socket = match inherited.take_unix(path) {
                Some(s) => {
                    s.set_nonblocking(true).map_err(|e| StartError::Other(e.to_string()))?;
                    s
                }
                None => admin::bind_unix(path)
                    .map_err(|source| StartError::Bind { addr: format!("unix:{}", path.display()), source })?,
            };
            Some(AdminSocket::Unix(socket, path.clone()))
        }
        Some(AdminListen::Tcp(addr)) => Some(AdminSocket::Tcp(inherited.tcp(*addr)?)),
    };
    if inherited.from_systemd
        && let Some(extra) = inherited.sockets.first()
    {
        let addr = extra.local_addr().map_or("?".to_string(), |a| a.to_string());
        return Err(StartError::Other(format!(
            "systemd passed a socket for {addr}, but the config listens on none such; \
             list it in server.listen (or as metrics.listen or admin.listen)"
        )));
    }
    // Duplicates of the control plane's sockets, to hand over on upgrade.
    let mut handover = Vec::new();
    let dup_err = |e: std::io::Error| StartError::Other(format!("cannot duplicate a socket: {e}"));
    if let Some(s) = &metrics_socket {
        let addr = s.local_addr().map_err(dup_err)?;
        handover.push((std::os::fd::OwnedFd::from(s.try_clone().map_err(dup_err)?), format!("tcp:{addr}")));
    }
    match &admin_socket {
        Some(AdminSocket::Unix(s, p)) => handover
            .push((std::os::fd::OwnedFd::from(s.try_clone().map_err(dup_err)?), format!("unix:{}", p.display()))),
        Some(AdminSocket::Tcp(s)) => {
            let addr = s.local_addr().map_err(dup_err)?;
            handover.push((std::os::fd::OwnedFd::from(s.try_clone().map_err(dup_err)?), format!("tcp:{addr}")));
        }
        None => {}
    }
    let admin_addr = match &admin_socket {
        None => None,
        Some(AdminSocket::Unix(_, p)) => Some(AdminAddress::Unix(p.clone())),
        Some(AdminSocket::Tcp(s)) => s.local_addr().ok().map(AdminAddress::Tcp),
    };
    let admin_token = config.admin.as_ref().and_then(|a| a.token.clone());
    if config.admin.is_some() && config.state.is_none() {
        tracing::warn!("the admin API is on but [state] is not set: weight changes will not survive a restart");
    }

    let fleet_config = config.fleet.clone();
    let control::Prepared { mut control, shared, commands, signals } = control::prepare(control::Start {
        config,
        config_path: path.clone(),
        config_text: text,
        metrics: metrics.clone(),
        access_log,
    })
    .map_err(StartError::Other)?;
    let handle = control.handle();
    // Fleet mode: etcd is the record of the live state; the session starts
    // in the background, so a replica starts while etcd is unreachable.
    let fleet = match &fleet_config {
        Some(f) => {
            let fleet = crate::fleet::start(f, handle.clone(), shared.clone(), &metrics).map_err(StartError::Other)?;
            control.use_fleet(fleet.clone());
            Some(fleet)
        }
        None => None,
    };

    let control_stop = CancellationToken::new();
    let watch_path = path.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let control_thread = {
        let admin_fleet = fleet.clone();
        let stop = control_stop.clone();
        let handle = handle.clone();
        let metrics = metrics.clone();
        std::thread::Builder::new()
            .name("cutover-control".into())
            .spawn(move || {
                crate::pace::enable();
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot start the control runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let control_task = tokio::spawn(control.run(commands, signals));
                    let admin = Arc::new(admin::Admin {
                        control: handle.clone(),
                        token: admin_token,
                        upgrade,
                        fleet: admin_fleet,
                    });
                    let setup = async {
                        match admin_socket {
                            Some(AdminSocket::Unix(s, _)) => {
                                let l = tokio::net::UnixListener::from_std(s).map_err(|e| e.to_string())?;
                                tokio::spawn(admin::serve_unix(l, admin, stop.clone()));
                            }
                            Some(AdminSocket::Tcp(s)) => {
                                let l = tokio::net::TcpListener::from_std(s).map_err(|e| e.to_string())?;
                                tokio::spawn(admin::serve_tcp(l, admin, stop.clone()));
                            }
                            None => {}
                        }
                        if let Some(s) = metrics_socket {
                            let l = tokio::net::TcpListener::from_std(s).map_err(|e| e.to_string())?;
                            tokio::spawn(serve_metrics(l, metrics, stop.clone()));
                        }
                        let watcher = match &watch_path {
                            Some(p) => Some(
                                control::reload::watch(p, handle.clone())
                                    .map_err(|e| format!("cannot watch {}: {e}", p.display()))?,
                            ),
                            None => None,
                        };
                        Ok::<_, String>(watcher)
                    };
                    match setup.await {
                        Ok(watcher) => {
                            let _ = ready_tx.send(Ok(()));
                            stop.cancelled().await;
                            drop(watcher);
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                    control_task.abort();
                });
            })
            .map_err(|e| StartError::Other(e.to_string()))?
    };
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(StartError::Other(e)),
        Err(_) => return Err(StartError::Other("the control plane failed to start".into())),
    }
    // Series exist from the start (at 0), before any worker accepts.
    for l in &listeners {
        metrics.open_connections.with_label_values(&[l.name]);
    }
    let sockets: Vec<Arc<std::net::TcpListener>> = listeners.iter().map(|l| l.socket.clone()).collect();
    let proxy_addrs = listeners.iter().filter(|l| l.tls.is_none()).map(|l| l.addr).collect();
    let tls_addrs = listeners.iter().filter(|l| l.tls.is_some()).map(|l| l.addr).collect();
    let workers = Workers::start(workers_count, listeners, shared.clone())
        .map_err(|e| StartError::Other(format!("cannot start workers: {e}")))?;
    let admin_path = match &admin_addr {
        Some(AdminAddress::Unix(p)) => Some(p.clone()),
        _ => None,
    };
    Ok(Running {
        proxy_addrs,
        tls_addrs,
        metrics_addr,
        admin: admin_addr,
        control: handle,
        shared,
        listeners: sockets,
        config_path: path,
        fleet,
        handover,
        handed_over: false,
        workers: Some(workers),
        control_stop,
        control_thread: Some(control_thread),
        admin_socket: admin_path,
    })
}

/// What `POST /v1/upgrade` calls.
pub type UpgradeHook = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

impl Running {
    /// Stops accepting, lets requests in flight finish within the configured
    /// drain timeout, then stops the control plane.
    pub fn shutdown(mut self) {
        let drain = self.shared.snapshot.load().config.server.drain_timeout;
        self.stop(drain);
    }

    /// As [`Running::shutdown`] with an explicit drain period.
    pub fn stop(&mut self, drain: Duration) {
        // Close our listening sockets as the drain starts (the workers close
        // their duplicates when they stop accepting): new connections are
        // then refused instead of queueing for a process that will not
        // accept them. After a hand-over the new process holds its own.
        self.listeners.clear();
        // After a hand-over the new process owns admin, metrics and the state
        // file: stop the control plane first so that only it writes state.
        if self.handed_over {
            self.stop_control();
        }
        if let Some(workers) = self.workers.take() {
            workers.drain(drain);
        }
        self.stop_control();
        // The lines of the last requests still wait in the workers' buffers.
        if let Some(log) = &self.shared.access_log {
            log.flush(Duration::from_secs(2));
        }
        if let Some(p) = self.admin_socket.take()
            && !self.handed_over
        {
            let _ = std::fs::remove_file(p);
        }
    }

    fn stop_control(&mut self) {
        // Leave the fleet first: revoking the lease hands any rollout this
        // replica drives to another at once.
        if let Some(fleet) = self.fleet.take() {
            fleet.stop();
        }
        self.control_stop.cancel();
        if let Some(t) = self.control_thread.take() {
            let _ = t.join();
        }
    }

    /// Another process now serves these sockets (after an upgrade): stopping
    /// must not remove the admin socket file, which is now the new process's.
    pub fn mark_handed_over(&mut self) {
        self.handed_over = true;
    }

    /// The admin and metrics sockets to hand over, as (descriptor, kind).
    pub fn control_sockets(&self) -> Vec<(std::os::fd::RawFd, String)> {
        use std::os::fd::AsRawFd;
        self.handover.iter().map(|(fd, kind)| (fd.as_raw_fd(), kind.clone())).collect()
    }

    pub fn set_control_sockets_inheritable(&self, on: bool) -> std::io::Result<()> {
        for (fd, _) in &self.handover {
            socket2::SockRef::from(fd).set_cloexec(!on)?;
        }
        Ok(())
    }

    /// Re-reads the config file now (what SIGHUP does).
    pub fn reload_blocking(&self, actor: Actor) {
        self.control.send(control::Command::Reload { actor, reply: None });
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.workers.is_some() || self.control_thread.is_some() {
            self.stop(Duration::ZERO);
        }
    }
}

/// `GET /metrics` in the Prometheus text format.
async fn serve_metrics(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let resp = if req.uri().path() == "/metrics" {
                        let mut r = Response::new(Full::new(Bytes::from(metrics.render())));
                        r.headers_mut().insert(
                            header::CONTENT_TYPE,
                            header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                        );
                        r
                    } else {
                        let mut r = Response::new(Full::new(Bytes::from_static(b"not found; try /metrics\n")));
                        *r.status_mut() = StatusCode::NOT_FOUND;
                        r
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
