use std::time::Duration;
use tokio::time::Instant;

/// A monotonic clock read through `tokio::time`, as nanoseconds since its creation.
///
/// Layers keep time in atomics as `u64` nanoseconds from a per-instance epoch, so a
/// timestamp fits one atomic word. Because it reads [`tokio::time::Instant`], tests on
/// paused time (`#[tokio::test(start_paused = true)]`) move it with
/// `tokio::time::advance`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A clock whose zero is now.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds elapsed since the clock was created (saturating at `u64::MAX`,
    /// which is 584 years away).
    pub fn now_nanos(&self) -> u64 {
        self.nanos_at(Instant::now())
    }

    /// The clock reading of `instant` (0 for instants before the epoch).
    pub fn nanos_at(&self, instant: Instant) -> u64 {
        duration_to_nanos(instant.saturating_duration_since(self.epoch))
    }

    /// The instant that a reading of this clock stands for.
    pub fn instant_at(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }
}

/// A duration as whole nanoseconds, saturating at `u64::MAX`.
pub(crate) fn duration_to_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_paused_time() {
        let clock = Clock::new();
        assert_eq!(clock.now_nanos(), 0);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.now_nanos(), 1_500_000_000);
        assert_eq!(clock.instant_at(clock.now_nanos()), Instant::now());
    }
}
