//! The retry budget: retries may add at most `budget_ratio` of recent traffic
//! plus `budget_min_per_sec` per second, so that retries cannot multiply load
//! on a pool that is already failing. One budget per worker thread; the limits
//! are read from the current config on every call, so a reload applies at once.

use std::cell::Cell;

use crate::config::Retries;

/// Tokens are counted in thousandths of a retry, so ratios add up exactly.
const ONE: u64 = 1000;

#[derive(Default)]
pub struct RetryBudget {
    /// The second (of any monotonic counter) the reserve belongs to.
    second: Cell<Option<u64>>,
    /// Retries used from this second's `budget_min_per_sec`.
    used: Cell<u32>,
    tokens: Cell<u64>,
}

impl RetryBudget {
    fn tick(&self, second: u64) {
        match self.second.get() {
            Some(s) if s == second => {}
            previous => {
                // Tokens fade by half every second, so the budget follows recent traffic.
                let elapsed = previous.map_or(1, |p| second.saturating_sub(p).clamp(1, 63));
                self.tokens.set(self.tokens.get() >> elapsed);
                self.second.set(Some(second));
                self.used.set(0);
            }
        }
    }

    /// A request was made.
    pub fn deposit(&self, second: u64, limits: &Retries) {
        self.tick(second);
        let ratio = (limits.budget_ratio * ONE as f64).round() as u64;
        self.tokens.set(self.tokens.get().saturating_add(ratio));
    }

    /// Takes one retry from the budget if any is left.
    pub fn withdraw(&self, second: u64, limits: &Retries) -> bool {
        self.tick(second);
        if self.used.get() < limits.budget_min_per_sec {
            self.used.set(self.used.get() + 1);
            true
        } else if self.tokens.get() >= ONE {
            self.tokens.set(self.tokens.get() - ONE);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(ratio: f64, min: u32) -> Retries {
        Retries { attempts: 1, budget_ratio: ratio, budget_min_per_sec: min }
    }

    #[test]
    fn minimum_per_second_is_always_available() {
        let budget = RetryBudget::default();
        let l = limits(0.0, 3);
        assert_eq!((0..5).filter(|_| budget.withdraw(7, &l)).count(), 3);
        assert_eq!((0..5).filter(|_| budget.withdraw(8, &l)).count(), 3, "refilled the next second");
    }

    #[test]
    fn ratio_of_traffic_bounds_retries_in_a_storm() {
        let budget = RetryBudget::default();
        let l = limits(0.1, 0);
        for _ in 0..1000 {
            budget.deposit(1, &l);
        }
        assert_eq!((0..1000).filter(|_| budget.withdraw(1, &l)).count(), 100);
    }

    #[test]
    fn unused_tokens_fade() {
        let budget = RetryBudget::default();
        let l = limits(0.1, 0);
        for _ in 0..1000 {
            budget.deposit(1, &l);
        }
        assert_eq!((0..1000).filter(|_| budget.withdraw(3, &l)).count(), 25, "halved twice");
    }
}
