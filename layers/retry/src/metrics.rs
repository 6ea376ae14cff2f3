//! The retry layer's metrics.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `palisade_retry_calls_total` | counter | `downstream`, `outcome` = success_first_try, success_after_retry, failure_after_retry, failure_without_retry, ignored | calls through the layer, by how they ended |
//! | `palisade_retry_attempts_total` | counter | `downstream` | attempts sent (first tries and retries): attempts ÷ calls is the amplification |
//! | `palisade_retry_retries_total` | counter | `downstream`, `reason` = error, timeout, server_error, too_many_requests, transport, no_endpoints, rejected, other | retries, by what failed |
//! | `palisade_retry_giveups_total` | counter | `downstream`, `reason` = max_attempts, budget, deadline, retry_after_too_long, not_retryable, not_replayable, callee_said_no | failed calls not retried (further), by why |
//! | `palisade_retry_budget_exhausted_total` | counter | `downstream` | retries the budget refused |
//! | `palisade_retry_hedges_sent_total` | counter | `downstream` | hedged attempts sent (by a `HedgeLayer`) |
//! | `palisade_retry_hedges_won_total` | counter | `downstream` | calls answered by a hedged attempt |

use metrics::Counter;
use palisade_core::observe::{CounterSet, LabelValue, MetricScope};
use palisade_core::{FailureReason, Name};

macro_rules! closed_label {
    ($name:ident, $label:literal, { $($variant:ident => $value:literal),+ $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum $name { $($variant),+ }
        impl LabelValue for $name {
            const LABEL: &'static str = $label;
            const ALL: &'static [Self] = &[$($name::$variant),+];
            fn as_label(self) -> &'static str {
                match self { $($name::$variant => $value),+ }
            }
            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

closed_label!(CallOutcome, "outcome", {
    SuccessFirstTry => "success_first_try",
    SuccessAfterRetry => "success_after_retry",
    FailureAfterRetry => "failure_after_retry",
    FailureWithoutRetry => "failure_without_retry",
    Ignored => "ignored",
});

closed_label!(RetryReason, "reason", {
    Error => "error",
    Timeout => "timeout",
    ServerError => "server_error",
    TooManyRequests => "too_many_requests",
    Transport => "transport",
    NoEndpoints => "no_endpoints",
    Rejected => "rejected",
    Other => "other",
});

closed_label!(GiveUp, "reason", {
    MaxAttempts => "max_attempts",
    Budget => "budget",
    Deadline => "deadline",
    RetryAfterTooLong => "retry_after_too_long",
    NotRetryable => "not_retryable",
    NotReplayable => "not_replayable",
    CalleeSaidNo => "callee_said_no",
});

impl GiveUp {
    /// Whether giving up for this reason means the downstream was (or would have
    /// been) retried to no avail, so our own caller should not retry us either.
    pub(crate) fn exhausts(self) -> bool {
        matches!(
            self,
            GiveUp::MaxAttempts | GiveUp::Budget | GiveUp::Deadline | GiveUp::CalleeSaidNo
        )
    }
}

impl RetryReason {
    pub(crate) fn of(reason: FailureReason, rejected: bool) -> Self {
        if rejected && reason == FailureReason::ERROR {
            return RetryReason::Rejected;
        }
        match reason {
            r if r == FailureReason::ERROR => RetryReason::Error,
            r if r == FailureReason::TIMEOUT => RetryReason::Timeout,
            r if r == FailureReason::SERVER_ERROR => RetryReason::ServerError,
            r if r == FailureReason::TOO_MANY_REQUESTS => RetryReason::TooManyRequests,
            r if r == FailureReason::TRANSPORT => RetryReason::Transport,
            r if r == FailureReason::NO_ENDPOINTS => RetryReason::NoEndpoints,
            _ => RetryReason::Other,
        }
    }
}

/// Registered handles of one downstream's retry layer.
#[derive(Debug)]
pub(crate) struct RetryMetrics {
    pub(crate) calls: CounterSet<CallOutcome>,
    pub(crate) attempts: Counter,
    pub(crate) retries: CounterSet<RetryReason>,
    pub(crate) giveups: CounterSet<GiveUp>,
    pub(crate) budget_exhausted: Counter,
}

impl RetryMetrics {
    pub(crate) fn register(name: &Name) -> Self {
        let scope = MetricScope::new("retry", name.clone());
        Self {
            calls: scope.counter_set("calls", "Calls through the retry layer, by how they ended."),
            attempts: scope.counter("attempts", "Attempts sent, first tries and retries."),
            retries: scope.counter_set("retries", "Retries, by what failed."),
            giveups: scope.counter_set("giveups", "Failed calls not retried further, by why."),
            budget_exhausted: scope
                .counter("budget_exhausted", "Retries refused by the retry budget."),
        }
    }
}
