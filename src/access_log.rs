//! The access log: one JSON line per request, written by its own thread.
//!
//! Requests hand a record to a bounded channel and never wait: when the
//! writer falls behind and the channel is full, the line is dropped and
//! counted in `cutover_access_log_dropped_total`.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime};

use prometheus::IntCounter;
use serde::Serialize;

use crate::routing::{Reason, Version};

/// Lines waiting for the writer before new ones are dropped.
const CAPACITY: usize = 8192;

/// One request, as logged.
#[derive(Debug, Clone)]
pub struct Record {
    pub time: SystemTime,
    pub client: IpAddr,
    pub method: http::Method,
    pub path: String,
    pub status: u16,
    pub route: Option<Arc<str>>,
    pub version: Option<Version>,
    pub reason: Option<Reason>,
    pub backend: Option<Arc<str>>,
    pub duration: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    client: String,
    method: &'a str,
    path: &'a str,
    status: u16,
    route: Option<&'a str>,
    version: Option<&'static str>,
    reason: Option<&'static str>,
    backend: Option<&'a str>,
    duration_ms: f64,
    bytes_in: u64,
    bytes_out: u64,
}

impl Record {
    pub fn to_json(&self) -> String {
        let line = Line {
            time: humantime::format_rfc3339_millis(self.time).to_string(),
            client: self.client.to_string(),
            method: self.method.as_str(),
            path: &self.path,
            status: self.status,
            route: self.route.as_deref(),
            version: self.version.map(Version::as_str),
            reason: self.reason.map(Reason::as_str),
            backend: self.backend.as_deref(),
            duration_ms: (self.duration.as_secs_f64() * 1e6).round() / 1e3,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
        };
        serde_json::to_string(&line).unwrap_or_default()
    }
}

enum Message {
    Line(Box<Record>),
    /// Reopen the file (log rotation) or switch to another destination.
    Reopen(Option<PathBuf>),
}

/// The sending side, shared by all workers.
#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<Message>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Starts the writer thread. `path` None writes to standard output.
    pub fn start(path: Option<&Path>, dropped: IntCounter) -> std::io::Result<AccessLog> {
        let out = open(path)?;
        Self::with_writer(out, path.map(Path::to_path_buf), CAPACITY, dropped)
    }

    fn with_writer(
        out: Box<dyn Write + Send>,
        path: Option<PathBuf>,
        capacity: usize,
        dropped: IntCounter,
    ) -> std::io::Result<AccessLog> {
        let (tx, rx) = sync_channel(capacity);
        std::thread::Builder::new().name("cutover-access-log".into()).spawn(move || write_loop(rx, out, path))?;
        Ok(AccessLog { tx, dropped })
    }

    /// Queues a line; drops it (and counts) when the writer is behind.
    pub fn log(&self, record: Record) {
        match self.tx.try_send(Message::Line(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    /// Reopens the log file (after rotation) or switches destination. The
    /// request is queued behind the lines already waiting; it must not be
    /// lost, so when the queue is full a short-lived thread waits for room
    /// instead of the caller (an async task).
    pub fn reopen(&self, path: Option<PathBuf>) {
        match self.tx.try_send(Message::Reopen(path)) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(message)) => {
                let tx = self.tx.clone();
                let _ = std::thread::Builder::new().name("cutover-access-log-reopen".into()).spawn(move || {
                    let _ = tx.send(message);
                });
            }
        }
    }
}

fn open(path: Option<&Path>) -> std::io::Result<Box<dyn Write + Send>> {
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

fn write_loop(rx: Receiver<Message>, out: Box<dyn Write + Send>, mut path: Option<PathBuf>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        // Write everything queued, then flush once.
        while let Some(message) = next {
            match message {
                Message::Line(record) => {
                    let _ = out.write_all(record.to_json().as_bytes());
                    let _ = out.write_all(b"\n");
                }
                Message::Reopen(new_path) => {
                    let _ = out.flush();
                    path = new_path.or(path.take());
                    match open(path.as_deref()) {
                        Ok(file) => out = std::io::BufWriter::with_capacity(64 * 1024, file),
                        Err(e) => tracing::error!(error = %e, "cannot reopen the access log; keeping the old file"),
                    }
                }
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{Sender, channel};
    use std::sync::{Mutex, mpsc};

    fn record(path: &str) -> Record {
        Record {
            time: SystemTime::UNIX_EPOCH,
            client: "192.0.2.1".parse().unwrap(),
            method: http::Method::GET,
            path: path.into(),
            status: 200,
            route: None,
            version: None,
            reason: None,
            backend: None,
            duration: Duration::ZERO,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// A writer that reports its first write and then blocks until released.
    struct Stuck {
        entered: Option<Sender<()>>,
        release: mpsc::Receiver<()>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Some(entered) = self.entered.take() {
                let _ = entered.send(());
                let _ = self.release.recv();
            }
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_channel_drops_and_counts_instead_of_blocking() {
        let (entered_tx, entered) = channel();
        let (release, release_rx) = channel();
        let written = Arc::new(Mutex::new(Vec::new()));
        // BufWriter passes writes larger than its buffer straight through, so
        // the first line reaches `Stuck` only at the flush that follows it.
        let out = Stuck { entered: Some(entered_tx), release: release_rx, written: written.clone() };
        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        let log = AccessLog::with_writer(Box::new(out), None, 4, dropped.clone()).unwrap();
        log.log(record("/first"));
        entered.recv_timeout(Duration::from_secs(5)).expect("the writer took the first line");
        // The writer is stuck: 4 lines fill the channel, the next 3 are dropped at once.
        let started = std::time::Instant::now();
        for i in 0..7 {
            log.log(record(&format!("/{i}")));
        }
        assert!(started.elapsed() < Duration::from_secs(1), "log() blocked");
        assert_eq!(dropped.get(), 3);
        release.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let lines = || String::from_utf8(written.lock().unwrap().clone()).unwrap().lines().count();
        while lines() < 5 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        let paths: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["path"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(paths, ["/first", "/0", "/1", "/2", "/3"]);
        assert_eq!(dropped.get(), 3);
    }

    #[test]
    fn record_serializes_every_field() {
        let record = Record {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_767_225_600_123),
            client: "192.0.2.1".parse().unwrap(),
            method: http::Method::GET,
            path: "/a\"b".into(),
            status: 200,
            route: Some("web".into()),
            version: Some(Version::Canary),
            reason: Some(Reason::Returning),
            backend: Some("10.0.0.1:80".into()),
            duration: Duration::from_micros(1500),
            bytes_in: 0,
            bytes_out: 512,
        };
        let v: serde_json::Value = serde_json::from_str(&record.to_json()).unwrap();
        assert_eq!(v["time"], "2026-01-01T00:00:00.123Z");
        assert_eq!(v["client"], "192.0.2.1");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/a\"b");
        assert_eq!(v["status"], 200);
        assert_eq!(v["route"], "web");
        assert_eq!(v["version"], "canary");
        assert_eq!(v["reason"], "returning");
        assert_eq!(v["backend"], "10.0.0.1:80");
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["bytes_in"], 0);
        assert_eq!(v["bytes_out"], 512);
    }
}
