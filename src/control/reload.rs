//! Watching the config file.
//!
//! The watch is on the file's *directory*: editors save by writing a new file
//! and renaming it over the old one, and Kubernetes swaps a `..data` symlink;
//! both replace the inode a file watch would follow. Any event in the
//! directory starts a short debounce, then a reload; the control plane
//! compares contents, so unrelated events cost one read of the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{Actor, Handle};

/// Quiet time after the last event before reloading.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// Starts watching `path` (its directory, and the directory of its target if
/// it is a symlink). The watcher stops when the returned value is dropped.
pub fn watch(path: &Path, handle: Handle) -> notify::Result<RecommendedWatcher> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    // notify calls back on its own thread; hand events to the runtime.
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    })?;
    for dir in directories(path) {
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait until events stop for DEBOUNCE.
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            handle.send(super::Command::Reload { actor: Actor::Watch, reply: None });
        }
    });
    Ok(watcher)
}

fn directories(path: &Path) -> Vec<PathBuf> {
    let parent =
        |p: &Path| p.parent().filter(|d| !d.as_os_str().is_empty()).map_or(PathBuf::from("."), Path::to_path_buf);
    let mut dirs = vec![parent(path)];
    if let Ok(target) = std::fs::canonicalize(path) {
        let target_dir = parent(&target);
        if std::fs::canonicalize(&dirs[0]).ok().as_ref() != Some(&target_dir) {
            dirs.push(target_dir);
        }
    }
    dirs
}
