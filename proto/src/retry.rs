//! Exponential backoff for every retry loop of coordinator, workers and clients: one shape, so each
//! loop says only what it retries and when it stops.

use std::time::Duration;

/// Delays that start at `start` and double after each wait, up to `max`.
#[derive(Clone, Debug)]
pub struct Backoff {
    start: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(start: Duration, max: Duration) -> Self {
        let start = start.min(max);
        Self {
            start,
            next: start,
            max,
        }
    }

    /// The delay to wait now; the one after it is twice as long (at most the maximum).
    pub fn next_delay(&mut self) -> Duration {
        let now = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        now
    }

    /// The delay [`Backoff::next_delay`] would give, without advancing.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.start;
    }

    /// The `n`-th delay (0-based) of a backoff from `start` to `max`, without keeping state: for
    /// schedulers that count attempts instead of holding a `Backoff` each.
    pub fn nth(start: Duration, max: Duration, n: u32) -> Duration {
        start
            .checked_mul(2u32.saturating_pow(n.min(31)))
            .unwrap_or(max)
            .min(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_maximum_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(500), ms(3000));
        let got: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(got, [ms(500), ms(1000), ms(2000), ms(3000), ms(3000)]);
        assert_eq!(b.peek(), ms(3000));
        b.reset();
        assert_eq!(b.next_delay(), ms(500));
    }

    #[test]
    fn a_start_above_the_maximum_is_capped() {
        let mut b = Backoff::new(Duration::from_secs(9), Duration::from_secs(2));
        assert_eq!(b.next_delay(), Duration::from_secs(2));
    }

    #[test]
    fn nth_matches_the_stateful_sequence_and_never_overflows() {
        let (start, max) = (Duration::from_secs(1), Duration::from_secs(60));
        let mut b = Backoff::new(start, max);
        for n in 0..12 {
            assert_eq!(Backoff::nth(start, max, n), b.next_delay(), "n = {n}");
        }
        assert_eq!(Backoff::nth(start, max, u32::MAX), max);
        assert_eq!(
            Backoff::nth(Duration::MAX, Duration::MAX, 40),
            Duration::MAX
        );
    }
}
