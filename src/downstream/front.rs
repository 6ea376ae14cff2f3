//! The front of a downstream stack: the call's metrics and its total deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use metrics::{Histogram, Key, Label, Metadata, Unit};
use palisade_core::clock;
use palisade_core::lanes::{Lane, Lanes};
use palisade_core::observe::{CounterSet, LabelValue, MetricScope, metric_name};
use palisade_core::timer::LazyTimer;
use palisade_core::{
    Classify, Deadline, DeadlineScope, Error, Name, Outcome, Rejection, RejectionKind,
};
use pin_project::pin_project;
use tokio::time::Instant;
use tower_service::Service;

static METADATA: Metadata<'static> =
    Metadata::new("palisade", metrics::Level::INFO, Some("palisade"));

/// How a call through a downstream stack ended, as its top-level metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    Success,
    Failure,
    Ignored,
    Rejected,
}

impl LabelValue for CallOutcome {
    const LABEL: &'static str = "outcome";
    const ALL: &'static [Self] = &[
        CallOutcome::Success,
        CallOutcome::Failure,
        CallOutcome::Ignored,
        CallOutcome::Rejected,
    ];
    fn as_label(self) -> &'static str {
        match self {
            CallOutcome::Success => "success",
            CallOutcome::Failure => "failure",
            CallOutcome::Ignored => "ignored",
            CallOutcome::Rejected => "rejected",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// The series one downstream records at its front.
#[derive(Debug)]
pub(crate) struct FrontMetrics {
    pub(crate) calls: CounterSet<CallOutcome>,
    pub(crate) duration: Histogram,
}

impl FrontMetrics {
    pub(crate) fn register(name: &Name) -> Self {
        Self::register_as("downstream", "call", name)
    }

    /// `palisade_<layer>_<what>s_total{outcome}` and `palisade_<layer>_<what>_duration_seconds`.
    pub(crate) fn register_as(layer: &'static str, what: &'static str, name: &Name) -> Self {
        let scope = MetricScope::new(layer, name.clone());
        let metric = metric_name(layer, &format!("{what}_duration"), Some("seconds"), false);
        let key = Key::from_parts(
            metric.clone(),
            vec![Label::new("downstream", name.as_str().to_owned())],
        );
        let duration = metrics::with_recorder(|r| {
            r.describe_histogram(
                metric.into(),
                Some(Unit::Seconds),
                if layer == "inbound" {
                    "Time from a request entering the inbound stack to its response."
                } else {
                    "Time from a call entering the downstream stack to its answer, retries included."
                }
                .into(),
            );
            r.register_histogram(&key, &METADATA)
        });
        Self {
            calls: scope.counter_set(
                &format!("{what}s"),
                if layer == "inbound" {
                    "Requests served through the inbound stack, by how they ended (rejected: refused by a palisade layer)."
                } else {
                    "Calls made through the downstream stack, by how they ended (rejected: refused by a palisade layer)."
                },
            ),
            duration,
        }
    }
}

/// What every clone of a front shares.
#[derive(Debug)]
pub(crate) struct FrontShared {
    pub(crate) name: Name,
    pub(crate) total: Option<Duration>,
    pub(crate) metrics: Option<FrontMetrics>,
}

/// The outermost service of a [`Downstream`](super::Downstream) stack: it sets the
/// call's deadline (the total timeout, or the caller's deadline if that is earlier)
/// for every layer below, cuts the call off when it passes, and records the call's
/// outcome and duration.
///
/// The stack reads the clock once in `poll_ready` (if a layer asks) and once in
/// `call`, and lends each reading to every layer below ([`clock::lend`]). When the
/// stack became ready with a reading, the call's duration starts there: at the
/// readiness that `call` follows.
#[derive(Debug)]
pub struct Front<S, C> {
    inner: S,
    classify: C,
    shared: Lanes<FrontShared>,
    /// The clock reading of the `poll_ready` that returned ready, for `call`.
    ready_at: Option<Instant>,
}

impl<S: Clone, C: Clone> Clone for Front<S, C> {
    fn clone(&self) -> Self {
        // A clone has not been made ready.
        Self {
            inner: self.inner.clone(),
            classify: self.classify.clone(),
            shared: self.shared.clone(),
            ready_at: None,
        }
    }
}

impl<S, C> Front<S, C> {
    pub(crate) fn new(inner: S, classify: C, shared: Lanes<FrontShared>) -> Self {
        Self {
            inner,
            classify,
            shared,
            ready_at: None,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, C, Req> Service<Req> for Front<S, C>
where
    S: Service<Req, Error = Error>,
    C: Classify<S::Response, Error> + Clone,
{
    type Response = S::Response;
    type Error = Error;
    type Future = FrontFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // The layers below that read the time while getting ready (breaker, rate
        // limit) share one reading.
        let (poll, reading) = clock::lend_lazy(|| self.inner.poll_ready(cx));
        if let Poll::Ready(Ok(())) = poll {
            self.ready_at = reading;
        }
        poll
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let ready_at = self.ready_at.take();
        let total = self.shared.total;
        let start = if self.shared.metrics.is_some() || total.is_some() {
            Some(ready_at.unwrap_or_else(Instant::now))
        } else {
            None
        };
        let classify = self.classify.clone();
        let shared = self.shared.pick();
        // Each arm builds the future in one expression around the inner call,
        // which lets the compiler write the inner future where it stays rather
        // than copy it up.
        match (total, start) {
            (Some(total), Some(now)) => {
                let own = now
                    .checked_add(total)
                    .map(Deadline::at)
                    .unwrap_or_else(|| Deadline::after(total));
                let deadline = match Deadline::current() {
                    Some(outer) => outer.min(own),
                    None => own,
                };
                // Every layer below reads this one reading as its now while it
                // is called, and sees the deadline.
                FrontFuture {
                    inner: Scoped::Scoped(
                        deadline.scoped(
                            deadline.sync_scope(|| clock::lend(now, || self.inner.call(req))),
                        ),
                    ),
                    timer: Some(LazyTimer::due(deadline.instant())),
                    start,
                    classify,
                    shared,
                }
            }
            (None, Some(now)) => FrontFuture {
                inner: Scoped::Plain(clock::lend(now, || self.inner.call(req))),
                timer: None,
                start,
                classify,
                shared,
            },
            (_, None) => FrontFuture {
                inner: Scoped::Plain(self.inner.call(req)),
                timer: None,
                start,
                classify,
                shared,
            },
        }
    }
}

#[pin_project(project = ScopedProj)]
#[derive(Debug)]
enum Scoped<F> {
    Plain(#[pin] F),
    Scoped(#[pin] DeadlineScope<F>),
}

/// The response future of [`Front`].
#[pin_project]
#[derive(Debug)]
pub struct FrontFuture<F, C> {
    #[pin]
    inner: Scoped<F>,
    /// The deadline's timer, if there is a deadline (made at the call's first
    /// pending).
    #[pin]
    timer: Option<LazyTimer>,
    start: Option<Instant>,
    classify: C,
    shared: Arc<Lane<FrontShared>>,
}

impl<F, C, T> Future for FrontFuture<F, C>
where
    F: Future<Output = Result<T, Error>>,
    C: Classify<T, Error>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let polled = match this.inner.project() {
            ScopedProj::Plain(f) => f.poll(cx),
            ScopedProj::Scoped(f) => f.poll(cx),
        };
        let result = match polled {
            Poll::Ready(result) => result,
            Poll::Pending => match this.timer.as_pin_mut().map(|t| t.poll(cx)) {
                Some(Poll::Ready(())) => Err(Error::Rejected(
                    Rejection::new(RejectionKind::DeadlineExceeded)
                        .with_downstream(this.shared.name.clone()),
                )),
                Some(Poll::Pending) | None => return Poll::Pending,
            },
        };
        if let (Some(metrics), Some(start)) = (&this.shared.metrics, *this.start) {
            let outcome = match &result {
                Err(Error::Rejected(_)) => CallOutcome::Rejected,
                other => match this.classify.classify(other.as_ref()) {
                    Outcome::Success => CallOutcome::Success,
                    Outcome::Failure(_) => CallOutcome::Failure,
                    Outcome::Ignored => CallOutcome::Ignored,
                },
            };
            metrics.calls.get(outcome).increment(1);
            metrics.duration.record(start.elapsed().as_secs_f64());
        }
        Poll::Ready(result)
    }
}
