use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use palisade_core::{BoxError, Classify, Error, Outcome, Rejection};
use pin_project::{pin_project, pinned_drop};
use tower::util::Oneshot;
use tower_service::Service;

use crate::endpoint::Endpoint;
use crate::metrics::RequestOutcome;
use crate::service::Shared;

/// The response future of [`Balance`](crate::Balance): waits for the chosen
/// endpoint to be ready, calls it, and records the outcome for load and ejection.
#[pin_project(PinnedDrop)]
pub struct ResponseFuture<S: Service<Req>, C, Req> {
    #[pin]
    state: State<S, Req>,
    call: Option<InFlight<S, C>>,
}

struct InFlight<S, C> {
    shared: Arc<Shared<S, C>>,
    endpoint: Arc<Endpoint<S>>,
    started: u64,
}

#[pin_project(project = StateProj)]
enum State<S: Service<Req>, Req> {
    Call(#[pin] Oneshot<S, Req>),
    Rejected(Option<Rejection>),
}

impl<S: Service<Req>, C, Req> std::fmt::Debug for ResponseFuture<S, C, Req> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("endpoint", &self.call.as_ref().map(|c| c.endpoint.addr))
            .finish_non_exhaustive()
    }
}

impl<S: Service<Req> + Clone, C, Req> ResponseFuture<S, C, Req> {
    pub(crate) fn new(shared: Arc<Shared<S, C>>, endpoint: Arc<Endpoint<S>>, req: Req) -> Self {
        endpoint.start();
        let started = shared.clock.now_nanos();
        Self {
            state: State::Call(Oneshot::new(endpoint.service.clone(), req)),
            call: Some(InFlight {
                shared,
                endpoint,
                started,
            }),
        }
    }

    pub(crate) fn rejected(rejection: Rejection) -> Self {
        Self {
            state: State::Rejected(Some(rejection)),
            call: None,
        }
    }
}

impl<S, C, Req> Future for ResponseFuture<S, C, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
    C: Classify<S::Response, S::Error>,
{
    type Output = Result<S::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.state.project() {
            StateProj::Rejected(rejection) => Poll::Ready(Err(Error::Rejected(
                rejection
                    .take()
                    .expect("ResponseFuture polled after completion"),
            ))),
            StateProj::Call(fut) => {
                let result = ready!(fut.poll(cx));
                if let Some(call) = this.call.take() {
                    let shared = &call.shared;
                    let outcome = shared.classify.classify(result.as_ref());
                    let latency = shared.clock.now_nanos().saturating_sub(call.started);
                    let (failed, counted) = match outcome {
                        Outcome::Success => (Some(false), RequestOutcome::Success),
                        Outcome::Failure(_) => (Some(true), RequestOutcome::Failure),
                        Outcome::Ignored => (None, RequestOutcome::Ignored),
                    };
                    call.endpoint.finish();
                    shared.record(&call.endpoint, failed, latency);
                    shared.count_request(counted);
                }
                Poll::Ready(result.map_err(Error::from_service))
            }
        }
    }
}

#[pinned_drop]
impl<S: Service<Req>, C, Req> PinnedDrop for ResponseFuture<S, C, Req> {
    fn drop(self: Pin<&mut Self>) {
        // A call dropped before it answered still stops counting as pending.
        if let Some(call) = self.project().call.take() {
            call.endpoint.finish();
            // It took at least this long (a per-try timeout above cut it off, or a
            // hedge won elsewhere): the endpoint's peak-EWMA cost sees that, as
            // tower's does, so a replica that stopped answering stops looking cheap.
            // Not judged a failure: the caller ended it, not the endpoint.
            let shared = &call.shared;
            let now = shared.clock.now_nanos();
            let _ =
                call.endpoint
                    .record(&shared.config, None, now.saturating_sub(call.started), now);
        }
    }
}
