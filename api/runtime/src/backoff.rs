//! Jittered exponential backoff: the one schedule every retry loop of Isthmus uses (certificate
//! renewal, the proxies' xDS stream, federation discovery streams, the proxies' route retries).
//!
//! A [`Backoff`] holds the current step. [`Backoff::next_delay`] returns that step with jitter
//! applied and doubles the step for next time, up to the cap; [`Backoff::reset`] goes back to
//! the base after a success. It never sleeps itself: the caller sleeps (or `select!`s) on the
//! delay, so the schedule is testable without a clock.

use std::time::Duration;

use rand::Rng;

/// How much of a step is taken at random, so that many clients that failed together do not
/// retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// The step itself (deterministic; for tests).
    None,
    /// Anywhere from half the step to the whole step.
    Equal,
    /// Anywhere from zero to the whole step.
    Full,
}

/// Exponential backoff from `base`, doubling after each delay, capped at `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    jitter: Jitter,
    step: Duration,
}

impl Backoff {
    /// Starts at `base`, doubling up to `max`, with [`Jitter::Full`]. The first delay is drawn
    /// from `base` even when `base` exceeds `max`; the cap applies from the second one.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            jitter: Jitter::Full,
            step: base,
        }
    }

    /// The same schedule with another kind of jitter.
    #[must_use]
    pub fn with_jitter(self, jitter: Jitter) -> Self {
        Self { jitter, ..self }
    }

    /// The step the next delay is drawn from (before jitter).
    pub fn step(&self) -> Duration {
        self.step
    }

    /// The delay to wait now: the current step with jitter. The step then doubles, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = step.saturating_mul(2).min(self.max);
        match self.jitter {
            Jitter::None => step,
            Jitter::Equal => rand::rng().random_range(step / 2..=step),
            Jitter::Full => rand::rng().random_range(Duration::ZERO..=step),
        }
    }

    /// Back to `base`, after a success.
    pub fn reset(&mut self) {
        self.step = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(15);

    fn steps(backoff: &mut Backoff, n: usize) -> Vec<Duration> {
        (0..n).map(|_| backoff.next_delay()).collect()
    }

    #[test]
    fn doubles_from_base_up_to_the_cap() {
        let mut backoff = Backoff::new(BASE, MAX).with_jitter(Jitter::None);
        let ms: Vec<u128> = steps(&mut backoff, 10)
            .iter()
            .map(Duration::as_millis)
            .collect();
        assert_eq!(
            ms,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 15000, 15000]
        );
        assert_eq!(backoff.step(), MAX);
    }

    #[test]
    fn reset_returns_to_base() {
        let mut backoff = Backoff::new(BASE, MAX).with_jitter(Jitter::None);
        steps(&mut backoff, 5);
        assert_eq!(backoff.step(), Duration::from_millis(3200));
        backoff.reset();
        assert_eq!(backoff.step(), BASE);
        assert_eq!(backoff.next_delay(), BASE);
        assert_eq!(backoff.next_delay(), BASE * 2);
    }

    #[test]
    fn full_jitter_stays_within_zero_and_the_step() {
        let mut backoff = Backoff::new(BASE, MAX);
        for _ in 0..200 {
            let step = backoff.step();
            let delay = backoff.next_delay();
            assert!(delay <= step, "{delay:?} > {step:?}");
        }
        assert_eq!(backoff.step(), MAX);
    }

    #[test]
    fn equal_jitter_stays_within_half_and_the_whole_step() {
        let mut backoff = Backoff::new(BASE, MAX).with_jitter(Jitter::Equal);
        for _ in 0..200 {
            let step = backoff.step();
            let delay = backoff.next_delay();
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} outside [{:?}, {step:?}]",
                step / 2
            );
        }
    }

    #[test]
    fn jitter_spreads_the_delays() {
        // 200 draws from 0..=15 s (nanosecond grain) are not all the same.
        let mut backoff = Backoff::new(MAX, MAX);
        let delays = steps(&mut backoff, 200);
        assert!(delays.iter().any(|d| *d != delays[0]));
    }

    #[test]
    fn a_base_above_the_cap_is_used_once() {
        let mut backoff =
            Backoff::new(Duration::from_secs(10), Duration::from_secs(1)).with_jitter(Jitter::None);
        assert_eq!(
            steps(&mut backoff, 3),
            [
                Duration::from_secs(10),
                Duration::from_secs(1),
                Duration::from_secs(1)
            ]
        );
    }

    #[test]
    fn huge_steps_saturate_instead_of_overflowing() {
        let mut backoff = Backoff::new(Duration::MAX, Duration::MAX).with_jitter(Jitter::None);
        assert_eq!(steps(&mut backoff, 3), [Duration::MAX; 3]);
    }

    #[test]
    fn a_zero_base_stays_zero() {
        let mut backoff = Backoff::new(Duration::ZERO, MAX);
        assert_eq!(steps(&mut backoff, 3), [Duration::ZERO; 3]);
    }
}
