//! The access log: one JSON line per request, written in batches.
//!
//! A worker formats each line into its own buffer (a thread-local slot: no
//! allocation and no message to another thread per line). A buffer that
//! reaches `[log] buffer` bytes (64 KiB) goes to the writer thread, which
//! also takes whatever waits in every slot each `[log] flush` interval
//! (1 s): a line reaches the file within that interval when traffic stops,
//! as with nginx's `access_log ... buffer=64k flush=1s`.
//!
//! Nothing waits for the disk: when the writer is behind (its queue of full
//! buffers is full), a worker's buffer stays full and new lines are dropped
//! and counted in `cutover_access_log_dropped_total`, as are the lines of a
//! batch that cannot be written.

mod json;
mod sample;
mod writer;

use std::cell::RefCell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime};

use prometheus::IntCounter;

pub use sample::Sampler;
use writer::{Message, Slot};

use crate::routing::{Reason, Version};

/// Full buffers waiting for the writer before lines are dropped, in bytes
/// (16 buffers of 64 KiB); at least 2 buffers.
const QUEUED_BYTES: usize = 1 << 20;

/// The writer's queue, in buffers.
fn queue(buffer: usize) -> usize {
    (QUEUED_BYTES / buffer.max(1)).max(2)
}

/// One request, as logged; `time` is when it is logged (the response's end).
#[derive(Debug, Clone)]
pub struct Record<'a> {
    /// The client's address as text (the connection formats it once).
    pub client: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub route: Option<&'a str>,
    pub version: Option<Version>,
    pub reason: Option<Reason>,
    pub backend: Option<&'a str>,
    pub duration: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The backend failed (before or within the response): logged even
    /// when sampling, like a 5xx.
    pub failed: bool,
}

impl Record<'_> {
    /// The line, without its newline (tests and tools).
    pub fn to_json(&self, time: SystemTime) -> String {
        let mut out = Vec::new();
        self.write_line(&mut out, time);
        out.pop();
        String::from_utf8(out).unwrap_or_default()
    }

    /// Appends the line and its newline to `out`, as a worker does into its
    /// buffer (benchmarks).
    pub fn write_line(&self, out: &mut Vec<u8>, time: SystemTime) {
        json::write_line(out, self, time);
    }

    fn is_error(&self) -> bool {
        self.failed || self.status >= 500
    }
}

/// How lines are batched and sampled (`[log]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Batching {
    /// Bytes a worker buffers before handing them to the writer.
    pub buffer: usize,
    /// The longest a line waits in a buffer.
    pub flush: Duration,
    /// The share of successful requests logged (errors always are).
    pub sample: f64,
}

impl Default for Batching {
    fn default() -> Self {
        Batching { buffer: 64 * 1024, flush: Duration::from_secs(1), sample: 1.0 }
    }
}

/// The workers' side, cloned into every worker.
#[derive(Clone)]
pub struct AccessLog {
    inner: Arc<Inner>,
}

struct Inner {
    /// Which log a thread's slot belongs to.
    id: u64,
    tx: SyncSender<Message>,
    shared: Arc<writer::Shared>,
    buffer: usize,
    sampler: Option<Sampler>,
}

thread_local! {
    /// This thread's buffer for each access log it wrote to, by log id.
    static SLOTS: RefCell<Vec<(u64, Arc<Slot>)>> = const { RefCell::new(Vec::new()) };
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl AccessLog {
    /// Starts the writer thread. `path` None writes to standard output.
    pub fn start(path: Option<&Path>, batching: Batching, dropped: IntCounter) -> std::io::Result<AccessLog> {
        let out = writer::open(path)?;
        Self::with_writer(out, path.map(Path::to_path_buf), batching, queue(batching.buffer), dropped)
    }

    fn with_writer(
        out: Box<dyn Write + Send>,
        path: Option<PathBuf>,
        batching: Batching,
        queue: usize,
        dropped: IntCounter,
    ) -> std::io::Result<AccessLog> {
        let (tx, rx) = sync_channel(queue);
        let shared = Arc::new(writer::Shared::new(batching.buffer, queue, dropped));
        let writer = writer::Writer { rx, shared: shared.clone(), out, path, flush: batching.flush, pending: None };
        std::thread::Builder::new().name("cutover-access-log".into()).spawn(move || writer.run())?;
        let sampler = (batching.sample < 1.0).then(|| Sampler::new(batching.sample));
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Ok(AccessLog { inner: Arc::new(Inner { id, tx, shared, buffer: batching.buffer, sampler }) })
    }

    /// Appends a line to this thread's buffer; never waits for the writer.
    pub fn log(&self, record: &Record<'_>) {
        if let Some(sampler) = &self.inner.sampler
            && !record.is_error()
            && !sampler.keep()
        {
            return;
        }
        self.with_slot(|slot| {
            let mut buf = slot.buf.lock().unwrap_or_else(PoisonError::into_inner);
            // A buffer left full: the writer was behind at the last hand-over.
            if buf.len() >= self.inner.buffer && !self.hand_over(&mut buf) {
                self.inner.shared.dropped.inc();
                return;
            }
            json::write_line(&mut buf, record, SystemTime::now());
            if buf.len() >= self.inner.buffer {
                self.hand_over(&mut buf);
            }
        });
    }

    /// Runs `f` with this thread's slot, registered with the writer on
    /// first use (borrowed, not cloned: no reference count per line).
    fn with_slot(&self, f: impl FnOnce(&Slot)) {
        SLOTS.with(|slots| {
            let mut slots = slots.borrow_mut();
            let at = match slots.iter().position(|(id, _)| *id == self.inner.id) {
                Some(at) => at,
                None => {
                    // Slots of logs whose writer has ended are only ours now.
                    slots.retain(|(_, slot)| Arc::strong_count(slot) > 1);
                    slots.push((self.inner.id, self.inner.shared.register()));
                    slots.len() - 1
                }
            };
            f(&slots[at].1);
        });
    }

    /// Queues a full buffer for the writer and swaps in an empty one; false
    /// (the buffer kept) when the writer's queue is full.
    fn hand_over(&self, buf: &mut Vec<u8>) -> bool {
        let full = std::mem::replace(buf, self.inner.shared.spare());
        match self.inner.tx.try_send(Message::Batch(full)) {
            Ok(()) => true,
            Err(TrySendError::Full(Message::Batch(full)) | TrySendError::Disconnected(Message::Batch(full))) => {
                let empty = std::mem::replace(buf, full);
                self.inner.shared.recycle(empty);
                false
            }
            Err(_) => false,
        }
    }

    /// Reopens the log file (after rotation) or switches destination. The
    /// request must not be lost, so when the queue is full a short-lived
    /// thread waits for room instead of the caller (an async task).
    pub fn reopen(&self, path: Option<PathBuf>) {
        self.send(Message::Reopen(path));
    }

    /// Writes every buffered line and waits (at most `timeout`) until the
    /// writer has: at shutdown.
    pub fn flush(&self, timeout: Duration) {
        let (done, wait) = std::sync::mpsc::channel();
        self.send(Message::Flush(done));
        let _ = wait.recv_timeout(timeout);
    }

    fn send(&self, message: Message) {
        match self.inner.tx.try_send(message) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(message)) => {
                let tx = self.inner.tx.clone();
                let _ = std::thread::Builder::new().name("cutover-access-log-send".into()).spawn(move || {
                    let _ = tx.send(message);
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
