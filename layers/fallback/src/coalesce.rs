//! Request coalescing (single-flight).

use std::sync::Arc;
use std::task::{Context, Poll};

use palisade_core::{BoxError, ConfigError, Deadline, Error, Name};
use tower::util::Oneshot;
use tower_layer::Layer;
use tower_service::Service;

use crate::ResponseFuture;
use crate::config::CoalesceConfig;
use crate::flight::{Delivery, Failure, Flights, Joined, Landing};
use crate::key::{KeyFn, KeyOf};
use crate::metrics::FlightMetrics;
use crate::store::{Captured, Store, StoreOf};

/// Concurrent identical requests share one call: the first request for a key starts
/// it, every request for that key meanwhile waits for it, and all get its result or
/// its error; built by [`CoalesceLayer`].
///
/// The shared call runs in a task of its own, so a waiter that goes away (its
/// future dropped) cancels nothing while others still wait; when the last waiter
/// goes, the call is cancelled. At most `max_keys_in_flight` keys are coalesced at
/// once; requests for further keys, and requests without a key, call on their own.
/// A response that cannot be shared (an HTTP body over `max_body_bytes`) goes to one
/// waiter and the others make their own calls.
///
/// The shared call carries the [`Deadline`] of the request that started it (a
/// request that joins it is still bounded by its own deadline in the layers
/// outside).
///
/// `poll_ready` is always ready; each call to the dependency waits for readiness of
/// its own clone of the inner service.
pub struct Coalesce<S, KF: KeyFn, St: Store> {
    inner: S,
    key: KF,
    store: St,
    flights: Arc<Flights<KF::Key, St::Entry>>,
}

impl<S: Clone, KF: KeyFn, St: Store> Clone for Coalesce<S, KF, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            key: self.key.clone(),
            store: self.store.clone(),
            flights: Arc::clone(&self.flights),
        }
    }
}

impl<S: std::fmt::Debug, KF: KeyFn, St: Store> std::fmt::Debug for Coalesce<S, KF, St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalesce")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, KF: KeyFn, St: Store> Coalesce<S, KF, St> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Keys with a shared call in flight now.
    pub fn keys_in_flight(&self) -> usize {
        self.flights.len()
    }
}

impl<S, Req, KF, St> Service<Req> for Coalesce<S, KF, St>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError> + 'static,
    Req: Send + 'static,
    KF: KeyOf<Req>,
    St: StoreOf<S::Response>,
{
    type Response = St::Output;
    type Error = Error;
    type Future = ResponseFuture<S, Req, KF::Key, St>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let store = self.store.clone();
        let Some(key) = self.key.key(&req) else {
            return ResponseFuture::pass(Oneshot::new(self.inner.clone(), req), store);
        };
        match self.flights.join(key, true) {
            Joined::Lead(launch, waiter) => {
                let slot = launch.abort_slot();
                let call = Oneshot::new(self.inner.clone(), req);
                let capture = store.clone();
                // The shared call carries the deadline of the request that started it.
                let deadline = Deadline::current();
                let task = tokio::spawn(async move {
                    let result = match deadline {
                        Some(deadline) => deadline.scope(call).await,
                        None => call.await,
                    };
                    let result = result.map_err(Error::from_service);
                    let landing = match result {
                        Err(err) => Landing::Shared(Delivery::Failed(Failure::from_error(err))),
                        Ok(response) => match capture.capture(response).await {
                            Captured::Shareable(entry) => Landing::Shared(Delivery::Fetched(entry)),
                            Captured::Unshareable(output) => Landing::Own(Box::new(output)),
                            Captured::Failed(err) => {
                                Landing::Shared(Delivery::Failed(Failure::from_boxed(err)))
                            }
                        },
                    };
                    launch.land(landing);
                });
                slot.set(task.abort_handle());
                ResponseFuture::wait(waiter, None, store, None)
            }
            Joined::Follow(waiter) => {
                ResponseFuture::wait(waiter, Some((self.inner.clone(), req)), store, None)
            }
            // Only answered to callers that do not follow.
            Joined::Busy => ResponseFuture::pass(Oneshot::new(self.inner.clone(), req), store),
        }
    }
}

/// Wraps services so concurrent identical requests share one call; every service
/// the layer makes, and every clone, shares the calls in flight.
///
/// ```
/// use palisade_fallback::{key_fn, CloneStore, CoalesceLayer};
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let calls = Arc::new(AtomicUsize::new(0));
/// let counted = calls.clone();
/// let layer = CoalesceLayer::builder("pricing", key_fn(|sku: &u32| Some(*sku)), CloneStore::new())
///     .build()
///     .unwrap();
/// let svc = ServiceBuilder::new().layer(layer).service_fn(move |sku: u32| {
///     counted.fetch_add(1, Ordering::SeqCst);
///     async move {
///         tokio::time::sleep(Duration::from_millis(50)).await;
///         Ok::<_, std::io::Error>(sku * 100)
///     }
/// });
/// let (a, b) = tokio::join!(svc.clone().oneshot(3), svc.clone().oneshot(3));
/// assert_eq!((a.unwrap(), b.unwrap()), (300, 300));
/// assert_eq!(calls.load(Ordering::SeqCst), 1);
/// # }
/// ```
pub struct CoalesceLayer<KF: KeyFn, St: Store> {
    key: KF,
    store: St,
    flights: Arc<Flights<KF::Key, St::Entry>>,
}

impl<KF: KeyFn, St: Store> Clone for CoalesceLayer<KF, St> {
    fn clone(&self) -> Self {
        Self {
            key: self.key.clone(),
            store: self.store.clone(),
            flights: Arc::clone(&self.flights),
        }
    }
}

impl<KF: KeyFn, St: Store> std::fmt::Debug for CoalesceLayer<KF, St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoalesceLayer").finish_non_exhaustive()
    }
}

impl<KF: KeyFn, St: Store> CoalesceLayer<KF, St> {
    /// Starts a builder for downstream `name` (the `downstream` metric label),
    /// keyed by `key` and sharing responses through `store`.
    pub fn builder(name: &str, key: KF, store: St) -> CoalesceBuilder<KF, St> {
        CoalesceBuilder {
            name: name.to_owned(),
            config: CoalesceConfig::default(),
            key,
            store,
        }
    }
}

impl<S, KF: KeyFn, St: Store> Layer<S> for CoalesceLayer<KF, St> {
    type Service = Coalesce<S, KF, St>;

    fn layer(&self, inner: S) -> Self::Service {
        Coalesce {
            inner,
            key: self.key.clone(),
            store: self.store.clone(),
            flights: Arc::clone(&self.flights),
        }
    }
}

/// Builds a [`CoalesceLayer`]; see [`CoalesceConfig`].
pub struct CoalesceBuilder<KF, St> {
    name: String,
    config: CoalesceConfig,
    key: KF,
    store: St,
}

impl<KF, St> std::fmt::Debug for CoalesceBuilder<KF, St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoalesceBuilder")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<KF: KeyFn, St: Store> CoalesceBuilder<KF, St> {
    /// Replaces the settings with `config`.
    pub fn config(mut self, config: CoalesceConfig) -> Self {
        self.config = config;
        self
    }

    /// Bounds the keys coalesced at once.
    pub fn max_keys_in_flight(mut self, max: usize) -> Self {
        self.config.max_keys_in_flight = max;
        self
    }

    /// Validates the settings, registers the metrics and builds the layer.
    pub fn build(self) -> Result<CoalesceLayer<KF, St>, ConfigError> {
        let name = Name::new(&self.name).map_err(|e| ConfigError::new("name", e.to_string()))?;
        self.config.validate()?;
        Ok(CoalesceLayer {
            key: self.key,
            store: self.store,
            flights: Arc::new(Flights::new(
                self.config.max_keys_in_flight,
                true,
                FlightMetrics::register(&name),
            )),
        })
    }
}
