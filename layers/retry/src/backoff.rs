//! How long to wait before each retry.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A backoff strategy. All delays are capped at the backoff's `max`.
///
/// With `base` b, multiplier m and retry number n (1 for the first retry):
///
/// | strategy | delay before retry n |
/// |---|---|
/// | `constant` | b |
/// | `exponential` | b·mⁿ⁻¹ |
/// | `full_jitter` (default) | random in [0, b·mⁿ⁻¹] |
/// | `equal_jitter` | b·mⁿ⁻¹/2 + random in [0, b·mⁿ⁻¹/2] |
/// | `decorrelated_jitter` | random in [b, 3·previous delay] |
///
/// Jittered strategies spread the retries of many clients that failed together, so
/// they do not arrive together (see AWS's "Exponential Backoff And Jitter").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The same delay every time.
    Constant,
    /// Growing by the multiplier, no randomness.
    Exponential,
    /// Random between zero and the exponential delay. The default.
    #[default]
    FullJitter,
    /// Half the exponential delay, plus a random part of the other half.
    EqualJitter,
    /// Random between the base and three times the previous delay.
    DecorrelatedJitter,
}

/// A strategy with its base, multiplier and cap.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    /// The strategy. Default `full_jitter`.
    pub strategy: Strategy,
    /// The first delay (before randomness). Default 50 ms.
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    /// Growth per retry for the exponential strategies, `>= 1`. Default 2.
    pub multiplier: f64,
    /// The longest delay, at most a day. Default 2 s.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            strategy: Strategy::FullJitter,
            base: Duration::from_millis(50),
            multiplier: 2.0,
            max: Duration::from_secs(2),
        }
    }
}

impl Backoff {
    /// The delay before retry number `retry` (1 for the first retry), given the
    /// previous delay (for decorrelated jitter) and a random number in `[0, 1)`.
    pub fn delay(&self, retry: u32, previous: Duration, random: f64) -> Duration {
        let random = random.clamp(0.0, 1.0);
        let base = self.base.as_secs_f64();
        let max = self.max.as_secs_f64();
        let exponential = || {
            let exp = retry.saturating_sub(1).min(1024) as i32;
            (base * self.multiplier.powi(exp)).min(max)
        };
        let secs = match self.strategy {
            Strategy::Constant => base,
            Strategy::Exponential => exponential(),
            Strategy::FullJitter => exponential() * random,
            Strategy::EqualJitter => {
                let e = exponential();
                e / 2.0 + e / 2.0 * random
            }
            Strategy::DecorrelatedJitter => {
                let upper = (previous.as_secs_f64() * 3.0).max(base);
                base + (upper - base) * random
            }
        };
        let secs = secs.min(max);
        if secs.is_finite() && secs > 0.0 {
            Duration::from_secs_f64(secs)
        } else {
            Duration::ZERO
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Strategy;
    use super::*;
    use proptest::prelude::{Just, prop_assert, prop_oneof, proptest};

    fn b(strategy: Strategy) -> Backoff {
        Backoff {
            strategy,
            base: Duration::from_millis(100),
            multiplier: 2.0,
            max: Duration::from_secs(1),
        }
    }

    #[test]
    fn constant_and_exponential() {
        let ms = |d: Duration| d.as_millis();
        let c = b(Strategy::Constant);
        assert_eq!(ms(c.delay(1, Duration::ZERO, 0.5)), 100);
        assert_eq!(ms(c.delay(5, Duration::ZERO, 0.5)), 100);
        let e = b(Strategy::Exponential);
        let seq: Vec<_> = (1..=5)
            .map(|n| ms(e.delay(n, Duration::ZERO, 0.9)))
            .collect();
        assert_eq!(seq, vec![100, 200, 400, 800, 1000]);
    }

    #[test]
    fn jittered_strategies_stay_in_their_ranges() {
        let f = b(Strategy::FullJitter);
        assert_eq!(f.delay(3, Duration::ZERO, 0.0), Duration::ZERO);
        assert_eq!(f.delay(3, Duration::ZERO, 0.5), Duration::from_millis(200));
        let q = b(Strategy::EqualJitter);
        assert_eq!(q.delay(3, Duration::ZERO, 0.0), Duration::from_millis(200));
        assert_eq!(q.delay(3, Duration::ZERO, 1.0), Duration::from_millis(400));
        let d = b(Strategy::DecorrelatedJitter);
        assert_eq!(d.delay(1, Duration::ZERO, 0.7), Duration::from_millis(100));
        assert_eq!(
            d.delay(2, Duration::from_millis(200), 1.0),
            Duration::from_millis(600)
        );
        assert_eq!(
            d.delay(2, Duration::from_millis(900), 1.0),
            Duration::from_secs(1)
        );
    }

    proptest! {
        #[test]
        fn every_delay_is_capped(strategy in prop_oneof![
                Just(Strategy::Constant), Just(Strategy::Exponential), Just(Strategy::FullJitter),
                Just(Strategy::EqualJitter), Just(Strategy::DecorrelatedJitter)],
            base_ms in 0u64..10_000, max_ms in 0u64..10_000, multiplier in 1.0f64..10.0,
            retry in 0u32..100_000, prev_ms in 0u64..100_000, random in 0.0f64..1.0) {
            let b = Backoff { strategy, base: Duration::from_millis(base_ms), multiplier, max: Duration::from_millis(max_ms) };
            let d = b.delay(retry, Duration::from_millis(prev_ms), random);
            prop_assert!(d <= Duration::from_millis(max_ms));
        }
    }
}
