//! How often progress is reported: at most every interval, with the first and the final step
//! always reported. The caller passes the time, so this stays free of clocks.

use std::time::{Duration, Instant};

/// Rate-limits progress reports: at least every 100 ms of steady work (design.md, hard
/// requirement 4), never more than 20 a second.
#[derive(Debug, Clone)]
pub struct ProgressThrottle {
    interval: Duration,
    last: Option<Instant>,
}

impl ProgressThrottle {
    /// The interval every host and worker report uses.
    pub const INTERVAL: Duration = Duration::from_millis(50);

    pub fn new() -> ProgressThrottle {
        ProgressThrottle {
            interval: Self::INTERVAL,
            last: None,
        }
    }

    /// Whether to report at `now`: the first call, a `force`d one (a phase's final step), or one
    /// an interval after the last report. A `true` answer counts as a report.
    pub fn due(&mut self, now: Instant, force: bool) -> bool {
        let waited = self
            .last
            .is_none_or(|t| now.saturating_duration_since(t) >= self.interval);
        if waited || force {
            self.last = Some(now);
        }
        waited || force
    }
}

impl Default for ProgressThrottle {
    fn default() -> Self {
        ProgressThrottle::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_first_the_forced_and_one_per_interval() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut throttle = ProgressThrottle::new();
        let reported: Vec<u64> = [0, 10, 49, 50, 60, 99, 100, 101]
            .into_iter()
            .filter(|&t| throttle.due(ms(t), false))
            .collect();
        assert_eq!(reported, [0, 50, 100]);
        // A forced report goes out at once, and restarts the interval.
        assert!(throttle.due(ms(120), true));
        assert!(!throttle.due(ms(160), false));
        assert!(throttle.due(ms(170), false));
    }
}
