use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_core::lanes::Lanes;
use palisade_core::{BoxError, Classify, Deadline, Error, Name, Outcome, rejection_of};
use tokio::time::Instant;
use tower_service::Service;

use crate::budget::{RetryBudget, Token};
use crate::config::RetryConfig;
use crate::future::ResponseFuture;
use crate::layer::RetryIf;
use crate::metrics::{GiveUp, RetryMetrics, RetryReason};
use crate::protocol::Protocol;

/// State shared by every clone of one downstream's retry layer.
pub(crate) struct Shared {
    pub(crate) name: Name,
    pub(crate) config: RetryConfig,
    pub(crate) budget: Arc<RetryBudget>,
    pub(crate) metrics: Option<RetryMetrics>,
    pub(crate) retry_if: Option<RetryIf>,
    pub(crate) jitter: Jitter,
}

/// Where the backoff jitter comes from.
pub(crate) enum Jitter {
    /// `fastrand`'s generator of the calling thread.
    ThreadLocal,
    /// A wyrand generator shared by the layer's services: one atomic step a draw.
    Seeded(AtomicU64),
}

impl Jitter {
    pub(crate) fn new(seed: Option<u64>) -> Self {
        seed.map_or(Jitter::ThreadLocal, |s| Jitter::Seeded(AtomicU64::new(s)))
    }

    /// A uniform draw from `[0, 1)`.
    fn draw(&self) -> f64 {
        match self {
            Jitter::ThreadLocal => fastrand::f64(),
            Jitter::Seeded(state) => {
                const STEP: u64 = 0xA076_1D64_78BD_642F;
                let s = state.fetch_add(STEP, Ordering::Relaxed).wrapping_add(STEP);
                let t = u128::from(s) * u128::from(s ^ 0xE703_7ED1_A0B4_28DB);
                let r = (t >> 64) as u64 ^ t as u64;
                // The top 53 bits, as a fraction.
                (r >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
            }
        }
    }
}

/// What to do after an attempt.
pub(crate) enum Decision {
    /// Return this result: it succeeded, or was ignored.
    Done(Finish),
    /// Wait this long, then try again, with this token from the budget.
    Retry(Duration, RetryReason, Token),
}

/// How a call ended without (another) retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    Success,
    Ignored,
    GaveUp(GiveUp),
}

/// Whether an attempt's error says a layer below refused it before it was sent
/// ([`is_never_sent`](palisade_core::RejectionKind::is_never_sent)); its budget token
/// is then given back.
pub(crate) fn refused_unsent<E: 'static>(err: &E) -> bool {
    rejection_of(err).is_some_and(|r| r.kind().is_never_sent())
}

impl Shared {
    /// Judges an attempt's classified result. `attempt` counts from 1; `replayable` says whether
    /// a copy of the request is at hand; `previous` is the last backoff delay.
    #[allow(clippy::too_many_arguments)]
    #[cold]
    pub(crate) fn decide<Req, P, Res, E>(
        &self,
        protocol: &P,
        outcome: Outcome,
        result: Result<&Res, &E>,
        attempt: u32,
        replayable: bool,
        previous: Duration,
    ) -> Decision
    where
        P: Protocol<Req, Res>,
        E: 'static,
    {
        let reason = match outcome {
            Outcome::Success => {
                self.budget.deposit();
                return Decision::Done(Finish::Success);
            }
            Outcome::Ignored => return Decision::Done(Finish::Ignored),
            Outcome::Failure(reason) => reason,
        };
        let give_up = |why| Decision::Done(Finish::GaveUp(why));
        let mut hint = None;
        let mut rejected = false;
        match result {
            Err(err) => {
                if let Some(r) = rejection_of(err) {
                    if !r.kind().is_retryable() {
                        return give_up(GiveUp::NotRetryable);
                    }
                    rejected = true;
                    hint = r.retry_after();
                }
            }
            Ok(res) => {
                if protocol.forbids_retry(res) {
                    return give_up(GiveUp::CalleeSaidNo);
                }
                hint = protocol.retry_after(res);
            }
        }
        if let Some(predicate) = &self.retry_if
            && !predicate(&Outcome::Failure(reason))
        {
            return give_up(GiveUp::NotRetryable);
        }
        if attempt >= self.config.max_attempts {
            return give_up(GiveUp::MaxAttempts);
        }
        if !replayable {
            return give_up(GiveUp::NotReplayable);
        }
        let mut delay = self
            .config
            .backoff
            .delay(attempt, previous, self.jitter.draw());
        if let Some(hint) = hint {
            if hint > self.config.max_retry_after() {
                return give_up(GiveUp::RetryAfterTooLong);
            }
            delay = delay.max(hint);
        }
        // Never sleep past the deadline: a retry that cannot start before it is
        // not made.
        if let Some(deadline) = Deadline::current()
            && Instant::now()
                .checked_add(delay)
                .is_none_or(|at| at >= deadline.instant())
        {
            return give_up(GiveUp::Deadline);
        }
        let Some(token) = self.budget.take() else {
            if let Some(m) = &self.metrics {
                m.budget_exhausted.increment(1);
            }
            return give_up(GiveUp::Budget);
        };
        Decision::Retry(delay, RetryReason::of(reason, rejected), token)
    }
}

/// What the response futures of one [`Retry`] or [`Hedge`](crate::Hedge) (and its
/// clones) share: the layer's state `T`, and a clone of the inner service as it was
/// when the layer was applied, from which a call that needs a second attempt takes
/// a service of its own.
pub(crate) struct Core<T, S> {
    pub(crate) shared: Arc<T>,
    template: Mutex<S>,
}

impl<T, S: Clone> Core<T, S> {
    /// Lanes to the state and a template clone of `inner`.
    pub(crate) fn lanes(shared: Arc<T>, inner: &S) -> Lanes<Self> {
        Lanes::new(Arc::new(Core {
            shared,
            template: Mutex::new(inner.clone()),
        }))
    }

    /// A fresh clone of the inner service, for a retry (not for a first attempt).
    #[cold]
    pub(crate) fn service(&self) -> S {
        self.template
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// Retries failed calls; built by [`RetryLayer`](crate::RetryLayer).
///
/// `poll_ready` is the inner service's. `call` sends the first attempt on the service
/// that was made ready and keeps, when the protocol can replay it, a copy of the
/// request in the response future. A call that needs another attempt takes a clone
/// of the inner service then (clones of a tower service share its state), so the
/// common first-try success clones nothing.
pub struct Retry<S, P, C> {
    inner: S,
    core: Lanes<Core<Shared, S>>,
    protocol: P,
    classify: C,
}

impl<S: Clone, P: Clone, C: Clone> Clone for Retry<S, P, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            core: self.core.clone(),
            protocol: self.protocol.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<S: std::fmt::Debug, P, C> std::fmt::Debug for Retry<S, P, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("name", &self.core.shared.name)
            .finish_non_exhaustive()
    }
}

impl<S: Clone, P, C> Retry<S, P, C> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>, protocol: P, classify: C) -> Self {
        Self {
            core: Core::lanes(shared, &inner),
            inner,
            protocol,
            classify,
        }
    }
}

impl<S, P, C, Req> Service<Req> for Retry<S, P, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError> + 'static,
    P: Protocol<Req, S::Response> + Clone,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S, Req, P, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_service)
    }

    #[inline]
    fn call(&mut self, mut req: Req) -> Self::Future {
        self.protocol.prepare(&mut req, 1);
        let replay = if self.core.shared.config.max_attempts > 1 {
            self.protocol.replay(&req)
        } else {
            None
        };
        ResponseFuture::new(
            replay,
            self.core.pick(),
            self.protocol.clone(),
            self.classify.clone(),
            || self.inner.call(req),
        )
    }
}
