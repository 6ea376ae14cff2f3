use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use palisade_core::{BoxError, Error};
use pin_project::pin_project;
use tower::util::Oneshot;
use tower_service::Service;

use crate::flight::{Delivery, Landing, Waiter};
use crate::metrics::{CacheMetrics, Lookup};
use crate::store::{Served, StoreOf};

/// The response future of [`Cache`](crate::Cache) and [`Coalesce`](crate::Coalesce):
/// an answer ready at once (a cache hit), a wait for a shared call, or a call of its
/// own (a request that passes through).
#[pin_project]
pub struct ResponseFuture<S, Req, K, St>
where
    S: Service<Req>,
    St: StoreOf<S::Response>,
    K: Hash + Eq + Clone,
{
    #[pin]
    state: State<S, Req, K, St::Entry, St::Output>,
    store: St,
    /// Set for cacheable requests of a cache: how the lookup ended is counted.
    lookups: Option<Arc<CacheMetrics>>,
}

#[pin_project(project = StateProj)]
enum State<S: Service<Req>, Req, K: Hash + Eq + Clone, E: Clone, O> {
    Pass {
        #[pin]
        call: Oneshot<S, Req>,
    },
    Ready {
        response: Option<Result<O, Error>>,
    },
    Wait {
        #[pin]
        waiter: Waiter<K, E>,
        /// The service and request to call with when the shared result cannot be
        /// shared (`None` for the caller whose request started the shared call).
        call_through: Option<(S, Req)>,
    },
}

impl<S, Req, K, St> ResponseFuture<S, Req, K, St>
where
    S: Service<Req>,
    St: StoreOf<S::Response>,
    K: Hash + Eq + Clone,
{
    pub(crate) fn pass(call: Oneshot<S, Req>, store: St) -> Self {
        Self {
            state: State::Pass { call },
            store,
            lookups: None,
        }
    }

    pub(crate) fn ready(response: St::Output, store: St) -> Self {
        Self {
            state: State::Ready {
                response: Some(Ok(response)),
            },
            store,
            lookups: None,
        }
    }

    pub(crate) fn wait(
        waiter: Waiter<K, St::Entry>,
        call_through: Option<(S, Req)>,
        store: St,
        lookups: Option<Arc<CacheMetrics>>,
    ) -> Self {
        Self {
            state: State::Wait {
                waiter,
                call_through,
            },
            store,
            lookups,
        }
    }
}

impl<S, Req, K, St> std::fmt::Debug for ResponseFuture<S, Req, K, St>
where
    S: Service<Req>,
    St: StoreOf<S::Response>,
    K: Hash + Eq + Clone,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Pass { .. } => "pass",
            State::Ready { .. } => "ready",
            State::Wait { .. } => "wait",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<S, Req, K, St> Future for ResponseFuture<S, Req, K, St>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
    St: StoreOf<S::Response>,
    K: Hash + Eq + Clone,
{
    type Output = Result<St::Output, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let landing = match this.state.as_mut().project() {
                StateProj::Pass { call } => {
                    let result = ready!(call.poll(cx));
                    count(this.lookups, Lookup::Miss);
                    return Poll::Ready(match result {
                        Ok(response) => Ok(this.store.pass(response)),
                        Err(err) => Err(Error::from_service(err)),
                    });
                }
                StateProj::Ready { response } => {
                    return Poll::Ready(response.take().unwrap_or_else(|| {
                        Err(Error::Inner(
                            "response future polled after completion".into(),
                        ))
                    }));
                }
                StateProj::Wait {
                    waiter,
                    call_through,
                } => {
                    let landing = ready!(waiter.poll(cx));
                    if let Landing::Shared(Delivery::CallThrough) = landing {
                        match call_through.take() {
                            Some((svc, req)) => {
                                this.state.set(State::Pass {
                                    call: Oneshot::new(svc, req),
                                });
                                continue;
                            }
                            None => {
                                count(this.lookups, Lookup::Miss);
                                return Poll::Ready(Err(Error::Inner(
                                    "the shared call's response went to another caller".into(),
                                )));
                            }
                        }
                    }
                    landing
                }
            };
            return Poll::Ready(match landing {
                Landing::Shared(Delivery::Fetched(entry)) => {
                    count(this.lookups, Lookup::Miss);
                    Ok(this.store.rebuild(&entry, Served::Fetched))
                }
                Landing::Shared(Delivery::Stale(entry, age)) => {
                    if let Some(metrics) = this.lookups.as_deref() {
                        metrics.lookup(Lookup::Stale);
                        metrics.stale_served(age);
                    }
                    Ok(this.store.rebuild(&entry, Served::Stale { age }))
                }
                Landing::Shared(Delivery::Failed(failure)) => {
                    count(this.lookups, Lookup::Miss);
                    Err(failure.to_error())
                }
                Landing::Shared(Delivery::CallThrough) => Err(Error::Inner(
                    "the shared call ended without a result".into(),
                )),
                Landing::Own(own) => {
                    count(this.lookups, Lookup::Miss);
                    match own.downcast::<St::Output>() {
                        Ok(response) => Ok(*response),
                        Err(_) => Err(Error::Inner(
                            "the shared call returned a response of another type".into(),
                        )),
                    }
                }
            });
        }
    }
}

fn count(lookups: &Option<Arc<CacheMetrics>>, result: Lookup) {
    if let Some(metrics) = lookups {
        metrics.lookup(result);
    }
}
