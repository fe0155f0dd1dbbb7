//! The writer thread: takes full buffers as the workers hand them over and,
//! each flush interval, whatever waits in every worker's slot.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus::IntCounter;

/// Bytes a buffer holds beyond its size before it grows: a long last line.
const SLACK: usize = 8 * 1024;

pub enum Message {
    /// A worker's full buffer.
    Batch(Vec<u8>),
    /// Reopen the file (log rotation) or switch to another destination.
    Reopen(Option<PathBuf>),
    /// Write everything buffered, then answer.
    Flush(Sender<()>),
}

/// One worker thread's buffer. The worker holds its lock to append a line;
/// the writer, to swap the buffer out once per flush interval.
pub struct Slot {
    pub buf: Mutex<Vec<u8>>,
}

/// What the workers and the writer share.
pub struct Shared {
    buffer: usize,
    /// Spare buffers kept: as many as the queue holds, plus a few.
    keep: usize,
    slots: Mutex<Vec<Arc<Slot>>>,
    /// Empty buffers, with their capacity, for reuse.
    spares: Mutex<Vec<Vec<u8>>>,
    pub dropped: IntCounter,
}

impl Shared {
    pub fn new(buffer: usize, queue: usize, dropped: IntCounter) -> Shared {
        Shared { buffer, keep: queue + 4, slots: Mutex::new(Vec::new()), spares: Mutex::new(Vec::new()), dropped }
    }

    pub fn register(&self) -> Arc<Slot> {
        let slot = Arc::new(Slot { buf: Mutex::new(self.spare()) });
        self.slots.lock().unwrap_or_else(PoisonError::into_inner).push(slot.clone());
        slot
    }

    pub fn spare(&self) -> Vec<u8> {
        let reused = self.spares.lock().unwrap_or_else(PoisonError::into_inner).pop();
        reused.unwrap_or_else(|| Vec::with_capacity(self.buffer + SLACK))
    }

    pub fn recycle(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut spares = self.spares.lock().unwrap_or_else(PoisonError::into_inner);
        // Enough to refill a full queue; more would only hold memory.
        if spares.len() < self.keep {
            spares.push(buf);
        }
    }
}

pub struct Writer {
    pub rx: Receiver<Message>,
    pub shared: Arc<Shared>,
    pub out: Box<dyn Write + Send>,
    pub path: Option<PathBuf>,
    pub flush: Duration,
    /// A message taken while collecting, handled next.
    pub pending: Option<Message>,
}

impl Writer {
    pub fn run(mut self) {
        let mut tick = Instant::now() + self.flush;
        loop {
            // Checked before waiting: under load batches never stop coming,
            // and a quiet worker's lines must still go out on time.
            let now = Instant::now();
            if now >= tick {
                self.collect();
                tick = now + self.flush;
            }
            let next = match self.pending.take() {
                Some(message) => Ok(message),
                None => self.rx.recv_timeout(tick.saturating_duration_since(now)),
            };
            match next {
                Ok(Message::Batch(buf)) => self.write(buf),
                Ok(Message::Reopen(path)) => {
                    self.collect();
                    self.path = path.or(self.path.take());
                    match open(self.path.as_deref()) {
                        Ok(file) => self.out = file,
                        Err(e) => tracing::error!(error = %e, "cannot reopen the access log; keeping the old file"),
                    }
                }
                Ok(Message::Flush(done)) => {
                    self.collect();
                    let _ = done.send(());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.collect();
                    return;
                }
            }
        }
    }

    /// Writes what waits in every slot, after the full buffers already
    /// queued (a worker's lines stay in order); forgets the slots of threads
    /// that have ended.
    fn collect(&mut self) {
        while self.pending.is_none()
            && let Ok(message) = self.rx.try_recv()
        {
            match message {
                Message::Batch(buf) => self.write(buf),
                other => self.pending = Some(other),
            }
        }
        let slots: Vec<Arc<Slot>> = {
            let mut slots = self.shared.slots.lock().unwrap_or_else(PoisonError::into_inner);
            let all = slots.clone();
            slots.retain(|slot| Arc::strong_count(slot) > 2);
            all
        };
        for slot in slots {
            let taken = {
                let mut buf = slot.buf.lock().unwrap_or_else(PoisonError::into_inner);
                if buf.is_empty() {
                    continue;
                }
                std::mem::replace(&mut *buf, self.shared.spare())
            };
            self.write(taken);
        }
        let _ = self.out.flush();
    }

    fn write(&mut self, buf: Vec<u8>) {
        if let Err(e) = self.out.write_all(&buf) {
            let lines = buf.iter().filter(|&&b| b == b'\n').count();
            self.shared.dropped.inc_by(lines as u64);
            tracing::warn!(error = %e, lines, "cannot write to the access log");
        }
        self.shared.recycle(buf);
    }
}

pub fn open(path: Option<&Path>) -> std::io::Result<Box<dyn Write + Send>> {
    Ok(match path {
        None => Box::new(std::io::stdout()),
        Some(p) => {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir)?;
            }
            Box::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?)
        }
    })
}
