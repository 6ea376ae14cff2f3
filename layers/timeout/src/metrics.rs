//! The metrics the timeout and deadline layers record.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `palisade_timeout_calls_total` | counter | `downstream`, `outcome` = completed, timed_out, deadline_exceeded | calls through a [`Timeout`](crate::Timeout): finished in time (with a response or the inner service's error), cut off by the layer's own timeout, or cut off (or refused at once) by the request's deadline |
//! | `palisade_deadline_header_errors_total` | counter | `downstream`, `header` = grpc-timeout, x-palisade-deadline-ms, `reason` = empty, malformed, bad_unit, too_large, duplicate | deadline headers an [`InboundDeadline`](crate::deadline::InboundDeadline) ignored because they could not be read (`bad_unit` only for `grpc-timeout`) |
//! | `palisade_deadline_inbound_capped_total` | counter | `downstream` | requests whose caller asked for more time than the server's `max` |
//! | `palisade_deadline_inbound_refusals_total` | counter | `downstream` | requests refused on arrival because their deadline had already passed |
//! | `palisade_deadline_outbound_refusals_total` | counter | `downstream` | calls an [`OutboundDeadline`](crate::deadline::OutboundDeadline) refused before sending, with less than `min_remaining` left |
//! | `palisade_deadline_outbound_expired_total` | counter | `downstream` | calls an [`OutboundDeadline`](crate::deadline::OutboundDeadline) sent and cut off when the deadline passed |
//!
//! Every series is registered at zero when the layer is built, so install a recorder
//! (e.g. `palisade::prometheus::install`) first. No label takes a value from a
//! request: `downstream` is the layer's checked name, every other label has the
//! closed set of values listed here.

use metrics::Counter;
use palisade_core::Name;
use palisade_core::observe::{CounterSet, LabelValue, MetricScope};

use crate::deadline::header::{DeadlineHeader, HeaderError};

/// How a call through a `Timeout` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    Completed,
    TimedOut,
    DeadlineExceeded,
}

impl LabelValue for CallOutcome {
    const LABEL: &'static str = "outcome";
    const ALL: &'static [Self] = &[
        CallOutcome::Completed,
        CallOutcome::TimedOut,
        CallOutcome::DeadlineExceeded,
    ];
    fn as_label(self) -> &'static str {
        match self {
            CallOutcome::Completed => "completed",
            CallOutcome::TimedOut => "timed_out",
            CallOutcome::DeadlineExceeded => "deadline_exceeded",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// Registered handles of one `TimeoutLayer`.
#[derive(Debug)]
pub(crate) struct TimeoutMetrics {
    calls: CounterSet<CallOutcome>,
}

impl TimeoutMetrics {
    pub(crate) fn register(name: &Name) -> Self {
        let scope = MetricScope::new("timeout", name.clone());
        Self {
            calls: scope.counter_set(
                "calls",
                "Calls through the timeout layer, by how they ended.",
            ),
        }
    }

    #[inline]
    pub(crate) fn call(&self, outcome: CallOutcome) {
        self.calls.get(outcome).increment(1);
    }
}

/// Registered handles of one `InboundDeadlineLayer`.
#[derive(Debug)]
pub(crate) struct InboundMetrics {
    /// Indexed by `DeadlineHeader::index() * HeaderError::ALL.len() + HeaderError::index()`.
    header_errors: Box<[Counter]>,
    capped: Counter,
    refusals: Counter,
}

impl InboundMetrics {
    pub(crate) fn register(name: &Name) -> Self {
        let scope = MetricScope::new("deadline", name.clone());
        let mut header_errors =
            Vec::with_capacity(DeadlineHeader::ALL.len() * HeaderError::ALL.len());
        for header in DeadlineHeader::ALL {
            for reason in HeaderError::ALL {
                header_errors.push(if header.can_fail_with(reason) {
                    scope.counter_with(
                        "header_errors",
                        "Deadline headers ignored because they could not be read.",
                        &[("header", header.as_str()), ("reason", reason.as_str())],
                    )
                } else {
                    Counter::noop()
                });
            }
        }
        Self {
            header_errors: header_errors.into_boxed_slice(),
            capped: scope.counter(
                "inbound_capped",
                "Requests whose caller asked for more time than the server allows.",
            ),
            refusals: scope.counter(
                "inbound_refusals",
                "Requests refused on arrival because their deadline had already passed.",
            ),
        }
    }

    #[inline]
    pub(crate) fn header_error(&self, header: DeadlineHeader, reason: HeaderError) {
        let i = header.index() * HeaderError::ALL.len() + reason.index();
        if let Some(c) = self.header_errors.get(i) {
            c.increment(1);
        }
    }

    #[inline]
    pub(crate) fn capped(&self) {
        self.capped.increment(1);
    }

    #[inline]
    pub(crate) fn refused(&self) {
        self.refusals.increment(1);
    }
}

/// Registered handles of one `OutboundDeadlineLayer`.
#[derive(Debug)]
pub(crate) struct OutboundMetrics {
    refusals: Counter,
    expired: Counter,
}

impl OutboundMetrics {
    pub(crate) fn register(name: &Name) -> Self {
        let scope = MetricScope::new("deadline", name.clone());
        Self {
            refusals: scope.counter(
                "outbound_refusals",
                "Calls refused before sending because too little time was left before the deadline.",
            ),
            expired: scope.counter(
                "outbound_expired",
                "Calls sent and cut off when the request's deadline passed.",
            ),
        }
    }

    #[inline]
    pub(crate) fn refused(&self) {
        self.refusals.increment(1);
    }

    #[inline]
    pub(crate) fn expired(&self) {
        self.expired.increment(1);
    }
}
