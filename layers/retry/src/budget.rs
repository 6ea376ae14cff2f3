//! A success-funded retry budget, shared by every clone (and every hedge) of one
//! downstream's retry layer.
//!
//! Each success deposits `deposit_ratio` of a token; each retry withdraws one whole
//! token, given back if the retry is never sent (its service fails to get ready, a
//! layer below refuses it, or the caller gives up during the backoff). When the
//! balance is empty, a small floor of `min_retries_per_sec` retries a second is still
//! allowed, so a quiet service can retry at all. The balance is capped at
//! `max_balance`, so a long healthy period cannot fund a retry storm later.
//!
//! Why not a rate-of-requests budget: it lets every hop of a chain retry a fraction
//! of what it receives, and those fractions compound. Funding retries from successes
//! means a dead downstream earns no retries: only the floor is spent on it.
//!
//! The healthy steady state (balance full) costs one atomic load per success.

use std::num::NonZeroU32;
use std::time::Duration;

use crossbeam_utils::CachePadded;
use palisade_core::{Clock, ConfigError};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Milli-tokens per token.
const TOKEN: i64 = 1_000;

/// Settings of a [`RetryBudget`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    /// Tokens deposited by each success, `0..=1`: the share of successful calls that
    /// may be followed by a retry. Default 0.2.
    pub deposit_ratio: f64,
    /// Retries allowed each second even with an empty balance. Default 10.
    pub min_retries_per_sec: u32,
    /// The most tokens the balance holds. Default 100.
    pub max_balance: u32,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            deposit_ratio: 0.2,
            min_retries_per_sec: 10,
            max_balance: 100,
        }
    }
}

impl BudgetConfig {
    /// Checks the fields; the error names the bad one (under `budget.`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.deposit_ratio) {
            return Err(ConfigError::new(
                "budget.deposit_ratio",
                format!("{} is not within 0..=1", self.deposit_ratio),
            ));
        }
        if self.max_balance == 0 && self.min_retries_per_sec == 0 {
            return Err(ConfigError::new(
                "budget.max_balance",
                "with min_retries_per_sec also 0 the budget could never allow a retry",
            ));
        }
        Ok(())
    }
}

/// Where a retry's token came from: the balance, or the floor of one second. Four
/// bytes, never zero, so that a retry's response future carries an
/// `Option<Token>` in the room of a `u32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token(NonZeroU32);

impl Token {
    const BALANCE: Token = Token(NonZeroU32::MIN);
    /// Set in a floor token, whose other 31 bits are the low bits of its second.
    const FLOOR: u32 = 1 << 31;

    fn floor(second: u64) -> Token {
        // Never zero: the floor bit is set.
        NonZeroU32::new(Self::FLOOR | (second as u32 & !Self::FLOOR)).map_or(Token::BALANCE, Token)
    }

    /// Whether a floor token was taken in `second` (compared on 31 bits: 68 years).
    fn taken_in(self, second: u64) -> bool {
        self.0.get() & Self::FLOOR != 0 && self == Token::floor(second)
    }
}

/// A success-funded token bucket for retries; see the [module docs](self).
#[derive(Debug)]
pub struct RetryBudget {
    balance: CachePadded<AtomicI64>,
    /// `second:32 | used:32`: retries taken from the floor in the current second.
    floor: CachePadded<AtomicU64>,
    deposit: i64,
    max_balance: i64,
    min_per_sec: u64,
    clock: Clock,
}

impl RetryBudget {
    /// A budget with `config`, starting empty.
    pub fn new(config: &BudgetConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            balance: CachePadded::new(AtomicI64::new(0)),
            floor: CachePadded::new(AtomicU64::new(0)),
            deposit: (config.deposit_ratio * TOKEN as f64).round() as i64,
            max_balance: i64::from(config.max_balance) * TOKEN,
            min_per_sec: u64::from(config.min_retries_per_sec),
            clock: Clock::new(),
        })
    }

    /// Records a success.
    #[inline]
    pub fn deposit(&self) {
        if self.deposit != 0 {
            self.credit(self.deposit);
        }
    }

    /// Adds `amount` milli-tokens to the balance, up to its cap (one load when full).
    #[inline]
    fn credit(&self, amount: i64) {
        let mut current = self.balance.load(Ordering::Relaxed);
        while current < self.max_balance {
            let next = (current + amount).min(self.max_balance);
            match self.balance.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Takes one retry's worth; `false` when the budget refuses.
    pub fn withdraw(&self) -> bool {
        self.take().is_some()
    }

    /// Takes one retry's worth, saying where it came from so that it can be given
    /// back if the retry is never sent; `None` when the budget refuses.
    pub(crate) fn take(&self) -> Option<Token> {
        let mut current = self.balance.load(Ordering::Relaxed);
        while current >= TOKEN {
            match self.balance.compare_exchange_weak(
                current,
                current - TOKEN,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Token::BALANCE),
                Err(actual) => current = actual,
            }
        }
        self.take_floor()
    }

    fn take_floor(&self) -> Option<Token> {
        if self.min_per_sec == 0 {
            return None;
        }
        let second = (self.clock.now_nanos() / 1_000_000_000) & 0xFFFF_FFFF;
        let mut current = self.floor.load(Ordering::Relaxed);
        loop {
            let (at, used) = (current >> 32, current & 0xFFFF_FFFF);
            let used = if at == second { used } else { 0 };
            if used >= self.min_per_sec {
                return None;
            }
            let next = (second << 32) | (used + 1);
            match self.floor.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Token::floor(second)),
                Err(actual) => current = actual,
            }
        }
    }

    /// Gives back a token whose retry was never sent (its service failed to get
    /// ready, or a layer below refused it): to the balance (up to its cap), or to the
    /// floor of the second it was taken in, if that second is still running.
    pub(crate) fn give_back(&self, token: Token) {
        if token == Token::BALANCE {
            self.credit(TOKEN);
            return;
        }
        let mut current = self.floor.load(Ordering::Relaxed);
        loop {
            let (at, used) = (current >> 32, current & 0xFFFF_FFFF);
            if !token.taken_in(at) || used == 0 {
                return;
            }
            match self.floor.compare_exchange_weak(
                current,
                current - 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Whole tokens in the balance now.
    pub fn balance(&self) -> f64 {
        self.balance.load(Ordering::Relaxed) as f64 / TOKEN as f64
    }

    /// The floor's period, for documentation and tests.
    pub const FLOOR_PERIOD: Duration = Duration::from_secs(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, floor: u32, max: u32) -> RetryBudget {
        RetryBudget::new(&BudgetConfig {
            deposit_ratio: ratio,
            min_retries_per_sec: floor,
            max_balance: max,
        })
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn successes_fund_retries() {
        let b = budget(0.2, 0, 100);
        assert!(!b.withdraw(), "an empty budget with no floor refuses");
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!(b.balance(), 2.0);
        assert!(b.withdraw());
        assert!(b.withdraw());
        assert!(!b.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_given_back_return_where_they_came_from() {
        // From the balance, up to its cap.
        let b = budget(1.0, 1, 2);
        b.deposit();
        let token = b.take().unwrap();
        assert_eq!(token, Token::BALANCE);
        assert_eq!(b.balance(), 0.0);
        b.give_back(token);
        assert_eq!(b.balance(), 1.0);
        b.deposit();
        b.give_back(token);
        assert_eq!(b.balance(), 2.0, "never past the cap");

        // From the floor, while its second runs.
        let b = budget(1.0, 1, 1);
        let token = b.take().unwrap();
        assert_ne!(token, Token::BALANCE);
        assert!(b.take().is_none(), "the floor allows one a second");
        b.give_back(token);
        let again = b.take().unwrap();
        assert!(b.take().is_none());
        // A second later the floor is full again: a late give-back adds nothing.
        tokio::time::advance(Duration::from_secs(1)).await;
        b.give_back(again);
        assert!(b.take().is_some());
        assert!(b.take().is_none());
        assert_eq!(b.balance(), 0.0);
    }

    #[test]
    fn floor_tokens_never_look_like_balance_tokens() {
        for second in [0, 1, u64::from(u32::MAX), 1 << 31, (1 << 31) - 1] {
            let token = Token::floor(second);
            assert_ne!(token, Token::BALANCE, "second {second}");
            assert!(token.taken_in(second));
            assert!(!token.taken_in(second + 1));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_balance_is_capped() {
        let b = budget(1.0, 0, 3);
        for _ in 0..100 {
            b.deposit();
        }
        assert_eq!(b.balance(), 3.0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_allows_a_few_retries_each_second() {
        let b = budget(0.2, 2, 100);
        assert!(b.withdraw());
        assert!(b.withdraw());
        assert!(!b.withdraw());
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!b.withdraw(), "still the same second");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(b.withdraw());
        assert!(b.withdraw());
        assert!(!b.withdraw());
    }

    #[test]
    fn bad_settings_name_the_field() {
        let e = BudgetConfig {
            deposit_ratio: 2.0,
            ..BudgetConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.to_string(), "budget.deposit_ratio: 2 is not within 0..=1");
    }

    #[test]
    fn concurrent_withdrawals_never_overspend() {
        let b = std::sync::Arc::new(budget(1.0, 0, 1_000));
        for _ in 0..500 {
            b.deposit();
        }
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..1_000).filter(|_| b.withdraw()).count())
            })
            .collect();
        let taken: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(taken, 500);
    }
}
