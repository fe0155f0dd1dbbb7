//! The control thread gives the CPU back to the workers while it works.
//!
//! A reload of a 1,000-route config costs the control thread several ms of
//! CPU. When it shares a core with a busy worker (a proxy given one core, or
//! more workers than cores), the kernel lets it run until its time slice
//! ends, which on a 250 Hz kernel is the next 4 ms tick: every request in
//! flight on that core waits that long. So the long loops of a reload
//! (validation, the snapshot build, the fingerprint) call [`point`] per item;
//! on the control thread it yields once a [`QUANTUM`] of work has passed,
//! letting a waiting worker run first. Elsewhere (`cutover check`, tests,
//! workers) it is a thread-local read.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Longest stretch of control-plane work between two yields.
pub const QUANTUM: Duration = Duration::from_millis(1);

thread_local! {
    /// Since when this thread has worked without yielding; None: not paced.
    static SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Paces the calling thread from now on (the control thread calls this once).
pub fn enable() {
    SINCE.set(Some(Instant::now()));
}

/// A point where the control plane may give the CPU to a worker: yields if
/// this thread is paced and has worked a [`QUANTUM`] since its last yield.
/// When nothing else waits for the CPU, the yield returns at once.
#[inline]
pub fn point() {
    if let Some(since) = SINCE.get()
        && since.elapsed() >= QUANTUM
    {
        std::thread::yield_now();
        SINCE.set(Some(Instant::now()));
    }
}

/// Restarts the quantum: the thread just woke up, it has not worked yet.
pub fn rest() {
    if SINCE.get().is_some() {
        SINCE.set(Some(Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_paced_thread_restarts_its_quantum_at_a_point() {
        std::thread::spawn(|| {
            point();
            assert_eq!(SINCE.get(), None, "a thread that never enabled pacing stays unpaced");
            rest();
            assert_eq!(SINCE.get(), None);

            enable();
            let start = SINCE.get().expect("paced");
            point();
            assert_eq!(SINCE.get(), Some(start), "no yield before a quantum of work");
            std::thread::sleep(QUANTUM);
            point();
            // Whether the yield lets a worker run is a matter of timing, so
            // it is measured (the probe of `benches/compare.sh reload`), not
            // tested; this checks the bookkeeping around it.
            assert!(SINCE.get().expect("paced") > start, "a point after a quantum starts a new one");
        })
        .join()
        .unwrap();
    }
}
