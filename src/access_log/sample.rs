//! Sampling for very busy sites: `[log] sample = 0.01` keeps about one
//! successful request in a hundred (errors are always logged).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Keeps each line with probability `rate`, independently.
///
/// Each thread draws from its own SplitMix64 sequence, seeded from a
/// process-wide counter: no shared state per request, and a fixed sequence
/// per thread, so a test with one worker sees the same choices every run.
#[derive(Debug, Clone, Copy)]
pub struct Sampler {
    /// Keep when a draw is below this (rate × 2^64).
    threshold: u64,
}

static SEEDS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static STATE: Cell<u64> = Cell::new(SEEDS.fetch_add(1, Ordering::Relaxed).wrapping_mul(0xD1B5_4A32_D192_ED03));
}

impl Sampler {
    pub fn new(rate: f64) -> Sampler {
        let threshold = if rate >= 1.0 { u64::MAX } else { (rate.max(0.0) * 2f64.powi(64)) as u64 };
        Sampler { threshold }
    }

    /// Whether to keep this thread's next line.
    pub fn keep(&self) -> bool {
        STATE.with(|state| {
            let (next, draw) = splitmix64(state.get());
            state.set(next);
            draw < self.threshold
        })
    }

    /// As [`Sampler::keep`] on an explicit state (tests).
    pub fn keep_from(&self, state: &mut u64) -> bool {
        let (next, draw) = splitmix64(*state);
        *state = next;
        draw < self.threshold
    }
}

/// One step of SplitMix64 (Steele, Lea and Flood, 2014): (state, output).
fn splitmix64(state: u64) -> (u64, u64) {
    let next = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = next;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (next, z ^ (z >> 31))
}
