//! A per-runtime circuit breaker: closed → (N consecutive failures) → open for a cool-down →
//! half-open (one trial request) → closed on success, open again on failure.

use std::time::{Duration, Instant};

/// Breaker state of one runtime.
#[derive(Debug, Clone)]
pub(crate) struct Breaker {
    threshold: u32,
    open_for: Duration,
    failures: u32,
    open_until: Option<Instant>,
    trial_in_flight: bool,
    last_error: Option<String>,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, open_for: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            open_for,
            failures: 0,
            open_until: None,
            trial_in_flight: false,
            last_error: None,
        }
    }

    /// Whether a request may go to this runtime now. In the half-open state only one trial passes.
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        match self.open_until {
            None => true,
            Some(until) if now < until => false,
            Some(_) if self.trial_in_flight => false,
            Some(_) => {
                self.trial_in_flight = true;
                true
            }
        }
    }

    pub(crate) fn success(&mut self) {
        self.failures = 0;
        self.open_until = None;
        self.trial_in_flight = false;
        self.last_error = None;
    }

    pub(crate) fn failure(&mut self, now: Instant, error: String) {
        self.failures = self.failures.saturating_add(1);
        self.last_error = Some(error);
        if self.trial_in_flight || self.failures >= self.threshold {
            self.open_until = Some(now + self.open_for);
        }
        self.trial_in_flight = false;
    }

    /// `closed`, `open` or `half-open`.
    pub(crate) fn state(&self, now: Instant) -> &'static str {
        match self.open_until {
            None => "closed",
            Some(until) if now < until => "open",
            Some(_) => "half-open",
        }
    }

    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    pub(crate) fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_one_trial_decides() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(10));
        assert!(b.allow(t0));
        b.failure(t0, "refused".into());
        assert_eq!(b.state(t0), "closed");
        b.failure(t0, "refused".into());
        assert_eq!(b.state(t0), "open");
        assert!(!b.allow(t0 + Duration::from_secs(5)));
        let later = t0 + Duration::from_secs(11);
        assert_eq!(b.state(later), "half-open");
        assert!(b.allow(later), "one trial passes");
        assert!(!b.allow(later), "a second concurrent trial does not");
        b.failure(later, "still down".into());
        assert_eq!(b.state(later), "open", "a failed trial reopens at once");
        let much_later = later + Duration::from_secs(11);
        assert!(b.allow(much_later));
        b.success();
        assert_eq!(b.state(much_later), "closed");
        assert_eq!(b.failures(), 0);
    }
}
