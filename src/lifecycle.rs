//! `cutover run`: start, then react to signals until told to stop.
//!
//! | signal | effect |
//! |---|---|
//! | SIGHUP | reload the config file |
//! | SIGTERM, SIGINT | stop accepting, finish requests in flight within `server.drain_timeout`, exit 0; a second one exits at once |
//! | SIGUSR1 | reopen the access log file (after rotation) |
//! | SIGUSR2 | zero-downtime upgrade: start the binary again with the listening sockets, then drain and exit |

use std::path::Path;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use crate::control::Actor;
use crate::server::{self, Inherited, Running, Source, StartError};
use crate::upgrade;

/// Runs a server from `config_path` until SIGTERM/SIGINT (or a completed
/// upgrade). Returns the process exit code.
pub fn run(config_path: &Path) -> i32 {
    let inherited = match upgrade::inherited_sockets() {
        Ok(sockets) => sockets,
        Err(e) => {
            tracing::error!("cannot use inherited sockets: {e}");
            Inherited::default()
        }
    };
    if inherited.from_systemd {
        tracing::info!(
            sockets = inherited.sockets.len() + inherited.unix.len(),
            "socket activation: serving the sockets systemd passed"
        );
    }
    let (hook, upgrade_requests) = upgrade::hook();
    let running = match server::start(Source::File(config_path.to_path_buf()), inherited, Some(hook)) {
        Ok(r) => r,
        Err(e) => {
            report_start_error(&e);
            return 1;
        }
    };
    announce(&running);
    upgrade::notify_ready(&running);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the signal runtime: {e}");
            return 1;
        }
    };
    let stop = runtime.block_on(wait_for_signals(&running, upgrade_requests));
    drop(runtime);
    let mut running = running;
    match stop {
        Stop::Upgraded => running.mark_handed_over(),
        Stop::Drain => upgrade::notify_stopping(),
    }
    let drain = running.shared.snapshot.load().config.server.drain_timeout;
    tracing::info!(
        "draining: no new connections; waiting up to {} for requests in flight",
        humantime::format_duration(drain)
    );
    drain_until_done_or_second_signal(running, drain);
    tracing::info!("stopped");
    0
}

enum Stop {
    Drain,
    Upgraded,
}

pub fn report_start_error(e: &StartError) {
    tracing::error!("cutover cannot start: {e}");
    eprintln!("cutover: {e}");
}

/// Logs what is listening where (tests and operators read these lines).
pub fn announce(running: &Running) {
    for addr in &running.proxy_addrs {
        tracing::info!(listener = "http", %addr, "listening");
    }
    for addr in &running.tls_addrs {
        tracing::info!(listener = "https", %addr, "listening");
    }
    if let Some(addr) = running.metrics_addr {
        tracing::info!(listener = "metrics", %addr, "listening");
    }
    match &running.admin {
        Some(server::AdminAddress::Unix(p)) => {
            tracing::info!(listener = "admin", addr = %format!("unix:{}", p.display()), "listening")
        }
        Some(server::AdminAddress::Tcp(a)) => tracing::info!(listener = "admin", addr = %a, "listening"),
        None => {}
    }
    tracing::info!(pid = std::process::id(), "ready");
}

async fn wait_for_signals(running: &Running, mut upgrade_requests: upgrade::Requests) -> Stop {
    let (Ok(mut hup), Ok(mut term), Ok(mut int), Ok(mut usr1), Ok(mut usr2)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::user_defined1()),
        signal(SignalKind::user_defined2()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        std::future::pending::<()>().await;
        return Stop::Drain;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                let _ = running.control.reload(Actor::Signal).await;
            }
            _ = term.recv() => return Stop::Drain,
            _ = int.recv() => return Stop::Drain,
            _ = usr1.recv() => {
                if let Some(log) = &running.shared.access_log {
                    tracing::info!("SIGUSR1: reopening the access log");
                    log.reopen(None);
                }
            }
            _ = usr2.recv() => {
                tracing::info!("SIGUSR2: upgrading");
                if hand_over(running) {
                    return Stop::Upgraded;
                }
            }
            Some(()) = upgrade_requests.recv() => {
                tracing::info!("upgrade requested through the admin API");
                if hand_over(running) {
                    return Stop::Upgraded;
                }
            }
        }
    }
}

/// Starts the new process; true once it serves and this one must drain.
fn hand_over(running: &Running) -> bool {
    match upgrade::start_new_process(running) {
        Ok(child) => {
            tracing::info!(pid = child, "the new process is ready; this one drains and exits");
            true
        }
        Err(e) => {
            tracing::error!("upgrade failed, this process keeps serving: {e}");
            false
        }
    }
}

/// Drains on a background thread; a second SIGTERM/SIGINT exits at once.
fn drain_until_done_or_second_signal(running: Running, drain: Duration) {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        running.shutdown();
        let _ = done_tx.send(());
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let Ok(runtime) = runtime else {
        let _ = done_rx.recv_timeout(drain + Duration::from_secs(2));
        return;
    };
    runtime.block_on(async {
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        let done = tokio::task::spawn_blocking(move || done_rx.recv());
        tokio::select! {
            _ = done => {}
            _ = term.recv() => {
                tracing::warn!("second signal: exiting now");
                std::process::exit(1);
            }
            _ = int.recv() => {
                tracing::warn!("second signal: exiting now");
                std::process::exit(1);
            }
        }
    });
}
