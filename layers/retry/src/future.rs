use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use palisade_core::lanes::Lane;
use palisade_core::{BoxError, Classify, Error, Outcome};
use pin_project::{pin_project, pinned_drop};
use tokio::time::Sleep;
use tower_service::Service;

use crate::budget::Token;
use crate::hop;
use crate::metrics::CallOutcome;
use crate::protocol::Protocol;
use crate::service::{Core, Decision, Finish, Shared, refused_unsent};

/// The response future of [`Retry`](crate::Retry): attempts, backoff waits and the
/// final answer, as one state machine.
#[pin_project(PinnedDrop)]
pub struct ResponseFuture<S, Req, P, C>
where
    S: Service<Req>,
{
    #[pin]
    state: State<S::Future>,
    /// The service for the attempts after the first, taken when the first retry is
    /// decided. Boxed, like the backoff timer, so that the common first-try success
    /// does not carry a whole service's worth of future.
    service: Option<Box<S>>,
    /// A copy of the request for the next attempt, when the protocol could make one.
    replay: Option<Req>,
    /// The request of the attempt about to be sent (between backoff and call).
    pending: Option<Req>,
    attempt: u32,
    /// The budget's token that pays for the retry in progress, given back if that
    /// retry is never sent.
    token: Option<Token>,
    previous_delay: Duration,
    core: Arc<Lane<Core<Shared, S>>>,
    protocol: P,
    classify: C,
}

#[pin_project(project = StateProj)]
enum State<F> {
    Calling {
        #[pin]
        future: F,
    },
    /// Boxed so that the common, successful call does not carry a timer's worth
    /// of future; only a retry allocates it.
    Backoff {
        sleep: Pin<Box<Sleep>>,
    },
    Readying,
}

impl<S, Req, P, C> std::fmt::Debug for ResponseFuture<S, Req, P, C>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl<S, Req, P, C> ResponseFuture<S, Req, P, C>
where
    S: Service<Req>,
{
    #[inline(always)]
    /// `call` runs last, which lets the compiler write its future in place.
    pub(crate) fn new(
        replay: Option<Req>,
        core: Arc<Lane<Core<Shared, S>>>,
        protocol: P,
        classify: C,
        call: impl FnOnce() -> S::Future,
    ) -> Self {
        Self {
            service: None,
            replay,
            pending: None,
            attempt: 1,
            token: None,
            previous_delay: Duration::ZERO,
            core,
            protocol,
            classify,
            state: State::Calling { future: call() },
        }
    }
}

#[pinned_drop]
impl<S, Req, P, C> PinnedDrop for ResponseFuture<S, Req, P, C>
where
    S: Service<Req>,
{
    fn drop(self: Pin<&mut Self>) {
        let mut this = self.project();
        // Dropped while waiting out its backoff or getting ready: the retry was
        // never sent, and its token goes back.
        if let Some(token) = this.token.take()
            && !matches!(this.state.as_mut().project(), StateProj::Calling { .. })
        {
            this.core.shared.budget.give_back(token);
        }
    }
}

impl<S, Req, P, C> Future for ResponseFuture<S, Req, P, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError> + 'static,
    P: Protocol<Req, S::Response>,
    C: Classify<S::Response, S::Error>,
{
    type Output = Result<S::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx));
                    // The common case, kept small and inline: a first-try success.
                    let outcome = this.classify.classify(result.as_ref());
                    if outcome == Outcome::Success && *this.attempt == 1 {
                        this.core.shared.budget.deposit();
                        if let Some(m) = &this.core.shared.metrics {
                            m.attempts.increment(1);
                            m.calls.get(CallOutcome::SuccessFirstTry).increment(1);
                        }
                        return Poll::Ready(result.map_err(Error::from_service));
                    }
                    // The retry just answered spent its token, unless a layer below
                    // refused to send it.
                    if let Some(token) = this.token.take()
                        && result.as_ref().is_err_and(refused_unsent)
                    {
                        this.core.shared.budget.give_back(token);
                    }
                    let decision = this.core.shared.decide::<Req, _, _, _>(
                        this.protocol,
                        outcome,
                        result.as_ref(),
                        *this.attempt,
                        this.replay.is_some(),
                        *this.previous_delay,
                    );
                    match decision {
                        Decision::Done(finish) => {
                            finish_call(&this.core.shared, finish, *this.attempt);
                            return Poll::Ready(result.map_err(Error::from_service));
                        }
                        Decision::Retry(delay, reason, token) => {
                            *this.token = Some(token);
                            if let Some(m) = &this.core.shared.metrics {
                                m.retries.get(reason).increment(1);
                            }
                            *this.attempt += 1;
                            *this.previous_delay = delay;
                            let next = this.replay.take();
                            // Keep a copy for a further attempt, if one may follow.
                            if *this.attempt < this.core.shared.config.max_attempts {
                                *this.replay = next.as_ref().and_then(|r| this.protocol.replay(r));
                            }
                            *this.pending = next;
                            this.state.set(State::Backoff {
                                sleep: Box::pin(tokio::time::sleep(delay)),
                            });
                        }
                    }
                }
                StateProj::Backoff { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    let core = &this.core;
                    let service = this.service.get_or_insert_with(|| Box::new(core.service()));
                    if let Err(e) = ready!(service.poll_ready(cx)) {
                        // Never sent: its token goes back.
                        if let Some(token) = this.token.take() {
                            this.core.shared.budget.give_back(token);
                        }
                        finish_call(
                            &this.core.shared,
                            Finish::GaveUp(crate::metrics::GiveUp::NotRetryable),
                            *this.attempt - 1,
                        );
                        return Poll::Ready(Err(Error::from_service(e)));
                    }
                    let Some(mut req) = this.pending.take() else {
                        // Unreachable: a retry is only decided with a request at hand.
                        return Poll::Ready(Err(Error::Inner(
                            "palisade-retry: no request to retry".into(),
                        )));
                    };
                    this.protocol.prepare(&mut req, *this.attempt);
                    let future = service.call(req);
                    this.state.set(State::Calling { future });
                }
            }
        }
    }
}

/// Records how a call ended, and raises the cross-hop flag when retrying was
/// exhausted or refused.
#[cold]
fn finish_call(shared: &Shared, finish: Finish, attempts: u32) {
    if let Finish::GaveUp(why) = finish
        && why.exhausts()
    {
        hop::mark_gave_up();
    }
    let Some(m) = &shared.metrics else {
        return;
    };
    m.attempts.increment(u64::from(attempts));
    let retried = attempts > 1;
    let outcome = match finish {
        Finish::Success if retried => CallOutcome::SuccessAfterRetry,
        Finish::Success => CallOutcome::SuccessFirstTry,
        Finish::Ignored => CallOutcome::Ignored,
        Finish::GaveUp(_) if retried => CallOutcome::FailureAfterRetry,
        Finish::GaveUp(_) => CallOutcome::FailureWithoutRetry,
    };
    m.calls.get(outcome).increment(1);
    if let Finish::GaveUp(why) = finish {
        m.giveups.get(why).increment(1);
    }
}
