//! Rate-limited logging of what peers did wrong: a flood of bad peers must not become a flood of log
//! lines. Each worker owns one limiter; nothing is shared.

use std::time::{Duration, Instant};

/// At most `per_window` lines per window; the rest are counted and summarised once the window ends.
pub(crate) struct LogLimiter {
    window: Duration,
    per_window: u32,
    started: Option<Instant>,
    emitted: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(per_window: u32, window: Duration) -> Self {
        LogLimiter {
            window,
            per_window,
            started: None,
            emitted: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be logged at `now`. When a new window starts after suppressed lines, returns
    /// how many were suppressed too, for the caller to say so.
    pub fn allow(&mut self, now: Instant) -> (bool, u64) {
        let mut suppressed = 0;
        match self.started {
            Some(s) if now.saturating_duration_since(s) < self.window => {}
            _ => {
                suppressed = std::mem::take(&mut self.suppressed);
                self.started = Some(now);
                self.emitted = 0;
            }
        }
        if self.emitted < self.per_window {
            self.emitted += 1;
            (true, suppressed)
        } else {
            self.suppressed += 1;
            (false, suppressed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_lines_per_window_and_reports_the_rest() {
        let mut l = LogLimiter::new(3, Duration::from_secs(1));
        let t = Instant::now();
        let allowed = (0..10).filter(|_| l.allow(t).0).count();
        assert_eq!(allowed, 3);
        assert_eq!(l.allow(t + Duration::from_secs(2)), (true, 7));
        assert_eq!(l.allow(t + Duration::from_secs(2)), (true, 0));
    }
}
