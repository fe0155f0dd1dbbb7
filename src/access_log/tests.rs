use std::sync::mpsc::{self, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::*;

fn record(path: &str) -> Record<'_> {
    request("GET", path)
}

/// A plain 200 record for `method` and `path`; shared with the JSON encoder's tests.
pub(super) fn request<'a>(method: &'a str, path: &'a str) -> Record<'a> {
    Record {
        client: "192.0.2.1",
        method,
        path,
        status: 200,
        route: None,
        version: None,
        reason: None,
        backend: None,
        duration: Duration::ZERO,
        bytes_in: 0,
        bytes_out: 0,
        failed: false,
    }
}

/// What a test writer received, as the `path` of each line.
fn paths(written: &Mutex<Vec<u8>>) -> Vec<String> {
    let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["path"].as_str().unwrap().to_string())
        .collect()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A writer that keeps what it is given; the first write can block until released.
struct Capture {
    entered: Option<Sender<()>>,
    release: Option<mpsc::Receiver<()>>,
    written: Arc<Mutex<Vec<u8>>>,
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(entered) = self.entered.take() {
            let _ = entered.send(());
            if let Some(release) = &self.release {
                let _ = release.recv();
            }
        }
        self.written.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture() -> (Capture, Arc<Mutex<Vec<u8>>>) {
    let written = Arc::new(Mutex::new(Vec::new()));
    (Capture { entered: None, release: None, written: written.clone() }, written)
}

fn counter() -> IntCounter {
    IntCounter::new("dropped", "dropped").unwrap()
}

/// The length of one test line, to size buffers in lines.
fn line_len(path: &str) -> usize {
    let mut out = Vec::new();
    json::write_line(&mut out, &record(path), SystemTime::now());
    out.len()
}

#[test]
fn a_stuck_writer_never_blocks_the_worker_lines_beyond_the_queue_are_dropped_and_counted() {
    let (entered_tx, entered) = channel();
    let (release, release_rx) = channel();
    let (mut out, written) = capture();
    out.entered = Some(entered_tx);
    out.release = Some(release_rx);
    // One line fills a buffer: each line is a hand-over.
    let batching = Batching { buffer: line_len("/0"), flush: Duration::from_secs(3600), sample: 1.0 };
    let dropped = counter();
    let log = AccessLog::with_writer(Box::new(out), None, batching, 4, dropped.clone()).unwrap();
    log.log(&record("/first"));
    entered.recv_timeout(Duration::from_secs(10)).expect("the writer took the first buffer");
    // The writer is stuck: 4 buffers fill its queue, the 5th line stays in
    // the worker's buffer, the next 3 are dropped at once.
    let started = Instant::now();
    for i in 0..8 {
        log.log(&record(&format!("/{i}")));
    }
    assert!(started.elapsed() < Duration::from_secs(1), "log() blocked");
    assert_eq!(dropped.get(), 3);
    release.send(()).unwrap();
    log.flush(Duration::from_secs(10));
    assert_eq!(paths(&written), ["/first", "/0", "/1", "/2", "/3", "/4"]);
    assert_eq!(dropped.get(), 3);
}

#[test]
fn a_line_is_written_within_the_flush_interval_when_traffic_stops() {
    let (out, written) = capture();
    let flush = Duration::from_millis(200);
    let batching = Batching { buffer: 64 * 1024, flush, sample: 1.0 };
    let log = AccessLog::with_writer(Box::new(out), None, batching, queue(batching.buffer), counter()).unwrap();
    // From another thread, as a worker that goes quiet.
    let worker = log.clone();
    let logged = std::thread::spawn(move || {
        worker.log(&record("/last"));
        Instant::now()
    })
    .join()
    .unwrap();
    wait_until("the line", || !written.lock().unwrap().is_empty());
    let waited = logged.elapsed();
    assert_eq!(paths(&written), ["/last"]);
    // One interval, with room for a loaded machine's scheduling.
    assert!(waited < flush + Duration::from_millis(800), "written after {waited:?}");
}

#[test]
fn a_full_buffer_goes_to_the_writer_at_once_in_order() {
    let (out, written) = capture();
    let batching = Batching { buffer: 4 * line_len("/0"), flush: Duration::from_secs(3600), sample: 1.0 };
    let log = AccessLog::with_writer(Box::new(out), None, batching, queue(batching.buffer), counter()).unwrap();
    for i in 0..9 {
        log.log(&record(&format!("/{i}")));
    }
    // Two full buffers of 4 lines; the 9th line waits for the hour's flush.
    wait_until("two buffers", || paths(&written).len() == 8);
    assert_eq!(paths(&written), ["/0", "/1", "/2", "/3", "/4", "/5", "/6", "/7"]);
    log.flush(Duration::from_secs(10));
    assert_eq!(paths(&written).len(), 9);
}

#[test]
fn sampling_keeps_its_share_of_successes_and_every_error() {
    let (out, written) = capture();
    let batching = Batching { buffer: 64 * 1024, flush: Duration::from_secs(3600), sample: 0.1 };
    let log = AccessLog::with_writer(Box::new(out), None, batching, queue(batching.buffer), counter()).unwrap();
    for i in 0..4000 {
        let path = format!("/{i}");
        let mut rec = record(&path);
        match i % 4 {
            0 => rec.status = 502,
            1 => rec.failed = true,
            _ => {}
        }
        log.log(&rec);
    }
    log.flush(Duration::from_secs(10));
    let kept: Vec<usize> = paths(&written).iter().map(|p| p[1..].parse().unwrap()).collect();
    let errors = kept.iter().filter(|i| *i % 4 < 2).count();
    let successes = kept.len() - errors;
    assert_eq!(errors, 2000, "every 5xx and upstream failure is logged");
    // 2000 successes at 10%: 200 expected, sd 13.4; 5 sd either side.
    assert!((133..=267).contains(&successes), "{successes} of 2000 successes kept");
}

#[test]
fn the_sampler_keeps_the_configured_share() {
    for rate in [0.01, 0.1, 0.5] {
        let sampler = Sampler::new(rate);
        let mut state = 42;
        let kept = (0..100_000).filter(|_| sampler.keep_from(&mut state)).count();
        let expected = 100_000.0 * rate;
        let sd = (100_000.0 * rate * (1.0 - rate)).sqrt();
        assert!((kept as f64 - expected).abs() < 5.0 * sd, "rate {rate}: kept {kept}");
    }
    let mut state = 7;
    assert!((0..1000).all(|_| Sampler::new(1.0).keep_from(&mut state)));
}

#[test]
fn record_serializes_every_field() {
    let record = Record {
        client: "192.0.2.1",
        method: "GET",
        path: "/a\"b",
        status: 200,
        route: Some("web"),
        version: Some(Version::Canary),
        reason: Some(Reason::Returning),
        backend: Some("10.0.0.1:80"),
        duration: Duration::from_micros(1500),
        bytes_in: 0,
        bytes_out: 512,
        failed: false,
    };
    let time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_767_225_600_123);
    let v: serde_json::Value = serde_json::from_str(&record.to_json(time)).unwrap();
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
    assert_eq!(v.as_object().unwrap().len(), 12);
    // The same line as serde_json wrote before (field order included).
    let unset = Record { route: None, version: None, reason: None, backend: None, ..record };
    assert_eq!(
        unset.to_json(time),
        r#"{"time":"2026-01-01T00:00:00.123Z","client":"192.0.2.1","method":"GET","path":"/a\"b","status":200,"route":null,"version":null,"reason":null,"backend":null,"duration_ms":1.5,"bytes_in":0,"bytes_out":512}"#
    );
}
