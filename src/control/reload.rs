//! Watching the config file: a reload for each *completed* change, never for
//! a file caught half-written, never for the reload's own reads.
//!
//! The watch is on the file's *directory*: editors save by writing a new file
//! and renaming it over the old one, and Kubernetes swaps a `..data` symlink;
//! both replace the inode a file watch would follow. Only events that change
//! what the config path reads count: writes, creations, renames and removals
//! of the config's name (or of its symlink target's name, or of Kubernetes'
//! `..`-names). Opens and reads do not, so the reload reading the file does not
//! start another one, and the state file beside it does not either.
//!
//! A change is taken once it is complete and has settled:
//! 1. **complete**: on Linux (inotify), a file written in place counts once its
//!    writer closes it (a writer that pauses mid-file keeps the change
//!    pending); a rename into place is complete at once. A writer that keeps
//!    the file open without writing for [`STALLED_WRITER`] is taken as done.
//! 2. **quiet**: no further event for [`DEBOUNCE`];
//! 3. **stable**: the file reads the same twice, [`SETTLE`] apart, with no
//!    event in between.
//!
//! The text read is what the control plane parses and validates (it does not
//! read the file again). Text identical to the last one the watcher had
//! rejected is not tried again: an invalid file in place costs one failed
//! reload, however many events touch it (`ctl reload` or SIGHUP retry it).

use std::collections::HashSet;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{Command, Handle};

/// Quiet time after the last event before the file is read.
pub const DEBOUNCE: Duration = Duration::from_millis(250);
/// How long the text must stay the same before it is applied.
pub const SETTLE: Duration = Duration::from_millis(250);
/// How long a writer may hold the file open without writing before its
/// change is taken as complete anyway.
pub const STALLED_WRITER: Duration = Duration::from_secs(10);

/// What one filesystem event means for the config.
#[derive(Debug, PartialEq)]
enum Signal {
    /// Written in place: the writer still has it open.
    Writing(PathBuf),
    /// A writer closed it, or the path was renamed away or removed.
    Done(PathBuf),
    /// Anything else that changes what the path reads (create, rename into
    /// place, a rescan after lost events).
    Changed,
}

/// Starts watching `path` (its directory, and the directory of its target if
/// it is a symlink). The watcher stops when the returned value is dropped.
pub fn watch(path: &Path, handle: Handle) -> notify::Result<RecommendedWatcher> {
    let (tx, rx) = mpsc::unbounded_channel::<Signal>();
    let interest = Interest::new(path);
    // notify calls back on its own thread; hand what matters to the runtime.
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(event) => {
            for signal in interest.signals(&event) {
                let _ = tx.send(signal);
            }
        }
        Err(e) => tracing::warn!("config watch: {e}"),
    })?;
    for dir in directories(path) {
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    }
    tokio::spawn(run(path.to_path_buf(), rx, handle));
    Ok(watcher)
}

/// The watcher's loop: one reload per settled change whose text is new.
async fn run(path: PathBuf, mut rx: mpsc::UnboundedReceiver<Signal>, handle: Handle) {
    let mut writers = HashSet::new();
    // The text (or read error) the last rejected reload had.
    let mut rejected: Option<Result<String, io::ErrorKind>> = None;
    while let Some(signal) = rx.recv().await {
        note(signal, &mut writers);
        let Some(text) = settle(&path, &mut rx, &mut writers).await else { return };
        let seen = text.as_ref().map(Clone::clone).map_err(io::Error::kind);
        if rejected.as_ref() == Some(&seen) {
            tracing::debug!("config watch: same text as the last rejected one; not tried again");
            continue;
        }
        let outcome = handle.ask(|reply| Command::Watched { text, reply }).await;
        rejected = outcome.is_err().then_some(seen);
    }
}

/// Waits until the change is complete, quiet and stable; returns the text
/// then read. None when the watch stopped.
async fn settle(
    path: &Path,
    rx: &mut mpsc::UnboundedReceiver<Signal>,
    writers: &mut HashSet<PathBuf>,
) -> Option<io::Result<String>> {
    loop {
        loop {
            let quiet = if writers.is_empty() { DEBOUNCE } else { STALLED_WRITER };
            match tokio::time::timeout(quiet, rx.recv()).await {
                Ok(Some(signal)) => note(signal, writers),
                Ok(None) => return None,
                Err(_) => break,
            }
        }
        if !writers.is_empty() {
            tracing::warn!(
                "config watch: {} kept open for {STALLED_WRITER:?} without writing; reading it",
                path.display()
            );
            writers.clear();
        }
        let before = tokio::fs::read_to_string(path).await;
        match tokio::time::timeout(SETTLE, rx.recv()).await {
            Ok(Some(signal)) => {
                note(signal, writers);
                continue;
            }
            Ok(None) => return None,
            Err(_) => {}
        }
        let after = tokio::fs::read_to_string(path).await;
        let same = match (&before, &after) {
            (Ok(a), Ok(b)) => a == b,
            (Err(a), Err(b)) => a.kind() == b.kind(),
            _ => false,
        };
        if same {
            return Some(after);
        }
    }
}

fn note(signal: Signal, writers: &mut HashSet<PathBuf>) {
    match signal {
        Signal::Writing(p) => {
            writers.insert(p);
        }
        Signal::Done(p) => {
            writers.remove(&p);
        }
        Signal::Changed => {}
    }
}

/// The names in the watched directories whose events concern the config.
struct Interest {
    names: Vec<OsString>,
}

impl Interest {
    fn new(path: &Path) -> Interest {
        let mut names: Vec<OsString> = path.file_name().map(OsString::from).into_iter().collect();
        if let Some(target) = std::fs::canonicalize(path).ok().and_then(|t| t.file_name().map(OsString::from))
            && !names.contains(&target)
        {
            names.push(target);
        }
        Interest { names }
    }

    fn concerns(&self, path: &Path) -> bool {
        path.file_name().is_some_and(|name| {
            // Kubernetes' atomic writer: `..data` and the `..2026_...` directories.
            self.names.iter().any(|n| n == name) || name.as_encoded_bytes().starts_with(b"..")
        })
    }

    fn signals(&self, event: &notify::Event) -> Vec<Signal> {
        if event.need_rescan() {
            return vec![Signal::Changed];
        }
        let concerned = event.paths.iter().filter(|p| self.concerns(p)).cloned();
        match event.kind {
            // Opens, reads and closes after reading change nothing; nor do
            // permissions and times.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => concerned.map(Signal::Done).collect(),
            EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_)) => Vec::new(),
            // Only inotify reports the close that ends a write.
            EventKind::Modify(ModifyKind::Data(_)) if cfg!(target_os = "linux") => {
                concerned.map(Signal::Writing).collect()
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_) => {
                concerned.map(Signal::Done).collect()
            }
            _ => concerned.map(|_| Signal::Changed).take(1).collect(),
        }
    }
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

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, DataChange, MetadataKind};

    use super::*;

    fn event(kind: EventKind, paths: &[&str]) -> notify::Event {
        paths.iter().fold(notify::Event::new(kind), |e, p| e.add_path(PathBuf::from(p)))
    }

    #[test]
    fn reads_opens_and_other_files_are_not_changes() {
        let interest = Interest::new(Path::new("/etc/cutover/cutover.toml"));
        let none: Vec<Signal> = Vec::new();
        let cases = [
            event(EventKind::Access(AccessKind::Open(AccessMode::Any)), &["/etc/cutover/cutover.toml"]),
            event(EventKind::Access(AccessKind::Close(AccessMode::Read)), &["/etc/cutover/cutover.toml"]),
            event(EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)), &["/etc/cutover/cutover.toml"]),
            event(EventKind::Modify(ModifyKind::Data(DataChange::Any)), &["/etc/cutover/state.json.tmp"]),
            event(EventKind::Create(CreateKind::File), &["/etc/cutover/state.json"]),
        ];
        for e in cases {
            assert_eq!(interest.signals(&e), none, "{e:?}");
        }
    }

    #[test]
    fn writes_renames_into_place_and_symlink_swaps_are_changes() {
        let interest = Interest::new(Path::new("/etc/cutover/cutover.toml"));
        let path = PathBuf::from("/etc/cutover/cutover.toml");
        let closed = event(EventKind::Access(AccessKind::Close(AccessMode::Write)), &["/etc/cutover/cutover.toml"]);
        assert_eq!(interest.signals(&closed), vec![Signal::Done(path.clone())]);
        let renamed = event(
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            &["/etc/cutover/.cutover.toml.swp", "/etc/cutover/cutover.toml"],
        );
        assert_eq!(interest.signals(&renamed), vec![Signal::Changed]);
        let swapped = event(EventKind::Modify(ModifyKind::Name(RenameMode::To)), &["/etc/cutover/..data"]);
        assert_eq!(interest.signals(&swapped), vec![Signal::Changed]);
        let written = event(EventKind::Modify(ModifyKind::Data(DataChange::Any)), &["/etc/cutover/cutover.toml"]);
        let expected = if cfg!(target_os = "linux") { vec![Signal::Writing(path)] } else { vec![Signal::Changed] };
        assert_eq!(interest.signals(&written), expected);
    }
}
