//! One retry schedule for every background fetch: the first wait, doubled after each failure
//! up to a cap, back to the first on success. Jitter is a parameter ([`Jitter::None`] by
//! default, which keeps the waits exact); with [`Jitter::Full`] each wait is drawn uniformly
//! from zero to the exact wait, so sidecars that fail together do not retry together.
//!
//! Besides the schedule, the two spreads a periodic fetch needs: [`uniform`] (a first poll
//! anywhere within the first period, so sidecars started together do not poll together) and
//! [`around`] (every later period moved by up to a fraction either way, so they do not fall
//! back into step).
//!
//! Pure arithmetic: no clock, no sleeping. The caller sleeps.

use std::time::Duration;

/// How a wait is spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// The exact schedule.
    #[default]
    None,
    /// Uniform in `[0, wait]` ("full jitter").
    Full,
}

/// A doubling backoff: `first`, `2 * first`, ... capped at `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
    jitter: Jitter,
}

impl Backoff {
    /// Starts at `first`, doubles to `max`, without jitter.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            next: first,
            jitter: Jitter::None,
        }
    }

    /// The same schedule with `jitter` applied to each wait.
    pub fn with_jitter(self, jitter: Jitter) -> Backoff {
        Backoff { jitter, ..self }
    }

    /// The wait before the next attempt after a failure; the one after it doubles.
    pub fn fail(&mut self) -> Duration {
        let wait = self.next.min(self.max);
        self.next = (self.next.saturating_mul(2)).min(self.max);
        self.spread(wait)
    }

    /// The wait the next failure would get, without taking it (for logs).
    pub fn peek(&self) -> Duration {
        self.next.min(self.max)
    }

    /// A success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// The longest wait the schedule reaches.
    pub fn cap(&self) -> Duration {
        self.max
    }

    fn spread(&self, wait: Duration) -> Duration {
        match self.jitter {
            Jitter::None => wait,
            Jitter::Full => uniform(wait),
        }
    }
}

/// A uniform draw in `[0, 1)`; `None` when the system has no randomness to give.
fn unit() -> Option<f64> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).ok()?;
    Some((u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64)
}

/// Uniform in `[0, d]` (the exact `d` when no randomness is available).
pub fn uniform(d: Duration) -> Duration {
    unit().map_or(d, |u| d.mul_f64(u))
}

/// Uniform in `[d - fraction * d, d + fraction * d]` (`fraction` clamped to `[0, 1]`; the
/// exact `d` when no randomness is available). The mean stays `d`.
pub fn around(d: Duration, fraction: f64) -> Duration {
    let fraction = fraction.clamp(0.0, 1.0);
    unit().map_or(d, |u| d.mul_f64(1.0 - fraction + 2.0 * fraction * u))
}

#[cfg(test)]
mod tests;
