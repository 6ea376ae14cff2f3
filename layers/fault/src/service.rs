use std::sync::Arc;
use std::task::{Context, Poll};

use palisade_core::{BoxError, Error};
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::handle::{Action, Plan, Shared};
use crate::layer::Setup;
use crate::metrics::FaultKind;
use crate::protocol::{AnyRequest, Http, Predicate, Protocol};

/// A service that injects faults into its calls; built by
/// [`FaultLayer`](crate::FaultLayer).
///
/// `call` reads the faults in force once (lock-free), checks the request against
/// the layer's predicate and the config's `match` rule, and rolls the dice:
///
/// - **latency**: the response future waits first. The inner service's `call` is
///   made at once but its future is polled only after the delay, so for services
///   whose futures are lazy (hyper, axum, `async fn`) the request is sent after the
///   delay.
/// - **error** / **abort**: the inner service is not called; the call answers with
///   the injected error or fails with an [`std::io::Error`] (reset or refused). The
///   readiness `poll_ready` obtained from the inner service stays reserved for this
///   service's next call, as tower allows.
///
/// `poll_ready` is the inner service's; a clone has not been made ready.
pub struct Fault<S, P = Http, M = AnyRequest> {
    inner: S,
    shared: Arc<Shared>,
    setup: Setup<P, M>,
    rng: fastrand::Rng,
}

impl<S: std::fmt::Debug, P, M> std::fmt::Debug for Fault<S, P, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fault")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl<S: Clone, P, M> Clone for Fault<S, P, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            setup: self.setup.clone(),
            rng: self.shared.rng(self.setup.seed),
        }
    }
}

impl<S, P, M> Fault<S, P, M> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>, setup: Setup<P, M>) -> Self {
        let rng = shared.rng(setup.seed);
        Self {
            inner,
            shared,
            setup,
            rng,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, P, M, Req> Service<Req> for Fault<S, P, M>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
    P: Protocol<Req, S::Response>,
    M: Predicate<Req>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future, S::Response>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_service)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let protocol = &*self.setup.protocol;
        // Only requests the predicate chooses may get faults, from the header too;
        // for the others the header is taken off and ignored, as when header faults
        // are not allowed.
        let chosen = self.setup.predicate.test(&req);
        let plan = match protocol.take_requested(&mut req, self.setup.header_faults && chosen) {
            Some(Ok(asked)) => Plan {
                delay: asked.delay,
                action: match (asked.abort, asked.error) {
                    (Some(kind), _) => Action::Abort(kind),
                    (None, Some(status)) => Action::Error(status),
                    (None, None) => Action::Forward,
                },
            },
            Some(Err(error)) => {
                return ResponseFuture::done(
                    None,
                    protocol.bad_header(error).map_err(Error::from_service),
                );
            }
            None => {
                let active = self.shared.active.load();
                let Some(active) = active.as_deref() else {
                    return ResponseFuture::forward(None, self.inner.call(req));
                };
                let chosen = chosen
                    && active
                        .rule
                        .as_ref()
                        .is_none_or(|rule| protocol.matches(rule, &req));
                if !chosen {
                    return ResponseFuture::forward(None, self.inner.call(req));
                }
                active.plan(&mut self.rng)
            }
        };
        let metrics = &self.shared.metrics;
        if plan.delay.is_some() {
            metrics.injected(FaultKind::Latency);
        }
        if let Some(kind) = plan.action.kind() {
            metrics.injected(kind);
        }
        match plan.action {
            Action::Forward => ResponseFuture::forward(plan.delay, self.inner.call(req)),
            Action::Error(status) => ResponseFuture::done(
                plan.delay,
                protocol.error(status).map_err(Error::from_service),
            ),
            Action::Abort(kind) => {
                ResponseFuture::done(plan.delay, Err(Error::Inner(Box::new(kind.to_io_error()))))
            }
        }
    }
}
