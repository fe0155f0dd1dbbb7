//! Handing listening sockets to a new process: zero-downtime upgrades
//! (SIGUSR2, `ctl upgrade`) and systemd socket activation (`LISTEN_FDS`).
//!
//! Upgrade, as nginx does it: the running process clears close-on-exec on its
//! listening sockets, starts its own binary again with their descriptor
//! numbers in `CUTOVER_UPGRADE_FDS` and a pipe in `CUTOVER_READY_FD`, and waits.
//! The new process adopts the sockets instead of binding, loads config and
//! state, starts serving, and writes `ready` to the pipe. Only then does the
//! old process stop accepting and drain. Both accept on the same sockets in
//! between, so no connection is refused. If the new process fails, the old
//! one keeps serving and logs why.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use socket2::SockRef;

use crate::server::{Inherited, Running, UpgradeHook};

const FDS_VAR: &str = "CUTOVER_UPGRADE_FDS";
const READY_VAR: &str = "CUTOVER_READY_FD";

/// How long the new process may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Takes ownership of a descriptor number handed over by the parent.
///
/// The number comes from our own parent (or systemd) through the
/// environment, which is cleared after reading, so each number is adopted
/// once. It is checked to be open before ownership is taken.
#[allow(unsafe_code)]
fn adopt(fd: RawFd) -> Option<OwnedFd> {
    if fd < 3 {
        return None;
    }
    // SAFETY: borrowing only to duplicate; the duplicate fails (EBADF) if
    // the number is not an open descriptor, and nothing is closed then.
    let probe = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned().ok()?;
    drop(probe);
    // SAFETY: the descriptor is open, was created for this process by its
    // parent, and nothing else in this process owns it (adopted once, at start).
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The sockets handed to this process, from an upgrade or from systemd.
pub fn inherited_sockets() -> Result<Inherited, String> {
    let mut inherited = Inherited::default();
    if let Ok(list) = std::env::var(FDS_VAR) {
        // SAFETY-relevant: remove first so that children never see stale numbers.
        remove_env(FDS_VAR);
        for item in list.split(',').filter(|s| !s.is_empty()) {
            let (fd, kind) = item.split_once('=').ok_or_else(|| format!("malformed {FDS_VAR} entry {item:?}"))?;
            let fd: RawFd = fd.parse().map_err(|_| format!("malformed descriptor {fd:?} in {FDS_VAR}"))?;
            let owned = adopt(fd).ok_or_else(|| format!("descriptor {fd} from {FDS_VAR} is not open"))?;
            match kind.split_once(':') {
                Some(("unix", path)) => inherited.unix.push((PathBuf::from(path), UnixListener::from(owned))),
                Some(("tcp", _)) => inherited.sockets.push(TcpListener::from(owned)),
                _ => return Err(format!("malformed socket kind {kind:?} in {FDS_VAR}")),
            }
        }
    } else if let Ok(count) = std::env::var("LISTEN_FDS") {
        // systemd socket activation: descriptors 3.. for this pid.
        let pid_matches =
            std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
        remove_env("LISTEN_FDS");
        remove_env("LISTEN_PID");
        remove_env("LISTEN_FDNAMES");
        if pid_matches {
            let count: i32 = count.parse().map_err(|_| format!("malformed LISTEN_FDS {count:?}"))?;
            for fd in 3..3 + count {
                let owned = adopt(fd).ok_or_else(|| format!("systemd descriptor {fd} is not open"))?;
                let sock = SockRef::from(&owned);
                sock.set_nonblocking(true).map_err(|e| e.to_string())?;
                match sock.local_addr().map_err(|e| e.to_string())?.as_socket() {
                    Some(_) => inherited.sockets.push(TcpListener::from(owned)),
                    None => {
                        let path = sock.local_addr().ok().and_then(|a| a.as_pathname().map(Path::to_path_buf));
                        match path {
                            Some(p) => inherited.unix.push((p, UnixListener::from(owned))),
                            None => {
                                return Err(format!("systemd descriptor {fd} is neither TCP nor a Unix socket path"));
                            }
                        }
                    }
                }
            }
            inherited.from_systemd = true;
        }
    }
    Ok(inherited)
}

#[allow(unsafe_code)]
fn remove_env(name: &str) {
    // SAFETY: called at start-up from the main thread, before any other
    // thread of this process reads the environment.
    unsafe { std::env::remove_var(name) }
}

static UPGRADING: AtomicBool = AtomicBool::new(false);

/// Upgrade requests from the admin API (`POST /v1/upgrade`), for the signal
/// loop, which runs them exactly as it runs SIGUSR2.
pub type Requests = tokio::sync::mpsc::UnboundedReceiver<()>;

/// The `POST /v1/upgrade` hook and the receiving end for the signal loop.
pub fn hook() -> (UpgradeHook, Requests) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let hook: UpgradeHook = Arc::new(move || {
        if UPGRADING.load(Ordering::SeqCst) {
            return Err("an upgrade is already in progress".into());
        }
        tx.send(()).map_err(|_| "this process is stopping; it cannot upgrade".to_string())?;
        Ok(format!(
            "upgrade started: pid {} hands its sockets to a new process, then drains and exits; the log says when",
            std::process::id()
        ))
    });
    (hook, rx)
}

/// Starts the new process with this one's sockets; returns its pid once it
/// is ready. On any failure the new process is stopped and this one goes on.
pub fn start_new_process(running: &Running) -> Result<u32, String> {
    if UPGRADING.swap(true, Ordering::SeqCst) {
        return Err("an upgrade is already in progress".into());
    }
    let result = spawn_and_wait(running);
    if result.is_err() {
        UPGRADING.store(false, Ordering::SeqCst);
    }
    result
}

fn spawn_and_wait(running: &Running) -> Result<u32, String> {
    let exe = own_binary()?;
    let config = running.config_path.clone().ok_or("this server has no config file to hand over")?;
    let mut handed: Vec<(RawFd, String)> = Vec::new();
    for socket in &running.listeners {
        let addr = socket.local_addr().map_err(|e| e.to_string())?;
        handed.push((socket.as_raw_fd(), format!("tcp:{addr}")));
    }
    for (fd, kind) in running.control_sockets() {
        handed.push((fd, kind));
    }
    let (mut reader, writer) = std::io::pipe().map_err(|e| format!("cannot create the ready pipe: {e}"))?;
    let inheritable = |fd: BorrowedFd<'_>, on: bool| SockRef::from(&fd).set_cloexec(!on);
    let set_all = |on: bool| -> std::io::Result<()> {
        for s in &running.listeners {
            inheritable(s.as_fd(), on)?;
        }
        running.set_control_sockets_inheritable(on)?;
        inheritable(writer.as_fd(), on)
    };
    set_all(true).map_err(|e| format!("cannot hand over the sockets: {e}"))?;
    let fds = handed.iter().map(|(fd, kind)| format!("{fd}={kind}")).collect::<Vec<_>>().join(",");
    let spawned = std::process::Command::new(&exe)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env(FDS_VAR, fds)
        .env(READY_VAR, writer.as_raw_fd().to_string())
        .spawn();
    let restored = set_all(false);
    drop(writer);
    let mut child = spawned.map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    if let Err(e) = restored {
        tracing::warn!("cannot restore close-on-exec on handed-over sockets: {e}");
    }
    // Wait for "ready" on the pipe; EOF without it means the child failed.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(&mut reader).read_line(&mut line);
        let _ = reader.read_to_end(&mut Vec::new());
        let _ = tx.send(line);
    });
    match rx.recv_timeout(READY_TIMEOUT) {
        Ok(line) if line.trim() == "ready" => Ok(child.id()),
        Ok(_) => {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            Err(format!("the new process exited before it was ready ({status}); see its log above"))
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("the new process was not ready within {}s and was stopped", READY_TIMEOUT.as_secs()))
        }
    }
}

/// The path of this binary, as installed now.
///
/// When a package manager or `install` replaces the binary (by rename, as
/// they do), Linux reports this process's executable as `PATH (deleted)`;
/// the new binary, the one an upgrade is for, is at `PATH`.
fn own_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    if exe.exists() {
        return Ok(exe);
    }
    let replaced = exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")).map(PathBuf::from);
    match replaced {
        Some(path) if path.exists() => Ok(path),
        _ => Err(format!("this binary ({}) is gone and nothing was installed in its place", exe.display())),
    }
}

/// Tells whoever started this process that it serves now: the parent of an
/// upgrade (ready pipe) and systemd (`READY=1` on `NOTIFY_SOCKET`).
pub fn notify_ready(_running: &Running) {
    // systemd first: after an upgrade it must know the new MAINPID before the
    // parent, told by the pipe, drains and exits.
    if let Ok(path) = std::env::var("NOTIFY_SOCKET") {
        let message = format!("READY=1\nMAINPID={}\n", std::process::id());
        if let Err(e) = sd_notify(&path, &message) {
            tracing::warn!("cannot notify systemd: {e}");
        }
    }
    if let Ok(fd) = std::env::var(READY_VAR) {
        remove_env(READY_VAR);
        if let Some(owned) = fd.parse().ok().and_then(adopt) {
            let mut pipe = std::fs::File::from(owned);
            let _ = std::io::Write::write_all(&mut pipe, b"ready\n");
        }
    }
}

/// Tells systemd that the service is stopping (SIGTERM drain; not an upgrade).
pub fn notify_stopping() {
    if let Ok(path) = std::env::var("NOTIFY_SOCKET")
        && let Err(e) = sd_notify(&path, "STOPPING=1\n")
    {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

fn sd_notify(path: &str, message: &str) -> std::io::Result<()> {
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        socket.send_to_addr(message.as_bytes(), &addr)?;
    } else {
        socket.send_to(message.as_bytes(), path)?;
    }
    Ok(())
}
