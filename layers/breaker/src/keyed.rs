use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_core::keyed::KeyedRegistry;
use palisade_core::observe::Observers;
use palisade_core::{BoxError, Classify, ConfigError, Error, Name};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::BreakerConfig;
use crate::future::ResponseFuture;
use crate::lanes::Lane;
use crate::machine::Ticket;
use crate::metrics::{BreakerEvent, BreakerMetrics};
use crate::shared::Shared;
use crate::{BreakerHandle, State};

struct KeyedInner {
    name: Name,
    config: BreakerConfig,
    metrics: Option<Arc<BreakerMetrics>>,
    observers: Observers<BreakerEvent>,
    /// Keys are stored as 64-bit hashes with a per-process random seed, so the
    /// registry's type does not depend on the key type and a caller cannot aim
    /// collisions.
    registry: KeyedRegistry<u64, Arc<Lane>>,
    hasher: RandomState,
}

impl KeyedInner {
    fn breaker_for<K: Hash>(&self, key: &K) -> Arc<Lane> {
        let hash = self.hasher.hash_one(key);
        let before = self.registry.evictions();
        let mut created = false;
        let shared = self.registry.get_or_insert_with(hash, || {
            created = true;
            // Settings were validated when the layer was built, so this cannot fail;
            // should it ever, the call is let through unjudged rather than lost.
            Shared::new(
                self.name.clone(),
                self.config.clone(),
                self.metrics.clone(),
                self.observers.clone(),
            )
            .map(|shared| Arc::new(Lane::new(shared)))
            .unwrap_or_else(|_| Arc::new(Lane::new(unreachable_shared(&self.name))))
        });
        if created && let Some((_, evictions)) = self.metrics.as_ref().and_then(|m| m.keys.as_ref())
        {
            let evicted = self.registry.evictions() - before;
            if evicted > 0 {
                evictions.increment(evicted);
            }
        }
        shared
    }
}

/// A disabled breaker, used only if validated settings were somehow refused.
fn unreachable_shared(name: &Name) -> Arc<Shared> {
    let shared = Shared::new(
        name.clone(),
        BreakerConfig::default(),
        None,
        Observers::new(Vec::new()),
    )
    .expect("default breaker settings are valid");
    shared.force(State::Disabled);
    shared
}

/// Per-key circuit breakers: each key taken from a request (host, route, tenant)
/// gets its own breaker, so one bad key does not cut off the others. Built by
/// [`Builder::build_keyed`](crate::Builder::build_keyed).
///
/// ```
/// use palisade_breaker::CircuitBreakerLayer;
/// use std::time::Duration;
///
/// // One breaker per host, at most 10 000 hosts, forgotten after 10 idle minutes.
/// let layer = CircuitBreakerLayer::builder("partners")
///     .consecutive_failures(5)
///     .build_keyed(|req: &(String, u32)| req.0.clone(), 10_000, Duration::from_secs(600))
///     .unwrap();
/// let svc = tower::ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|req: (String, u32)| async move { Ok::<_, std::io::Error>(req.1) });
/// # drop(svc);
/// ```
pub struct KeyedCircuitBreakerLayer<F, C> {
    inner: Arc<KeyedInner>,
    key: F,
    classify: C,
}

impl<F: Clone, C: Clone> Clone for KeyedCircuitBreakerLayer<F, C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            key: self.key.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<F, C> std::fmt::Debug for KeyedCircuitBreakerLayer<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("name", &self.inner.name)
            .field("keys", &self.inner.registry.len())
            .finish_non_exhaustive()
    }
}

impl<F, C> KeyedCircuitBreakerLayer<F, C> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: Name,
        config: BreakerConfig,
        metrics: Option<Arc<BreakerMetrics>>,
        observers: Observers<BreakerEvent>,
        key: F,
        classify: C,
        capacity: usize,
        idle_timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let registry = KeyedRegistry::new(capacity, idle_timeout)
            .map_err(|e| {
                let field = match e {
                    palisade_core::keyed::RegistryError::ZeroCapacity => "keys.capacity",
                    palisade_core::keyed::RegistryError::ZeroIdleTimeout => "keys.idle_timeout",
                };
                ConfigError::new(field, e.to_string())
            })?
            // A breaker that is not closed is kept however quiet its key: its
            // callers are waiting out its Retry-After, and a fresh closed breaker
            // in its place would send them all to the failing host at once.
            .keep_while(|lane: &Arc<Lane>| {
                matches!(
                    lane.machine.state(),
                    State::Open | State::HalfOpen | State::ForcedOpen
                )
            });
        Ok(Self {
            inner: Arc::new(KeyedInner {
                name,
                config,
                metrics,
                observers,
                registry,
                hasher: RandomState::new(),
            }),
            key,
            classify,
        })
    }

    /// The handle of `key`'s breaker, if the registry holds it.
    pub fn handle_for<K: Hash>(&self, key: &K) -> Option<BreakerHandle> {
        let hash = self.inner.hasher.hash_one(key);
        self.inner
            .registry
            .get(&hash)
            .map(|lane| BreakerHandle::new(Arc::clone(lane.shared())))
    }

    /// Keys held now.
    pub fn keys(&self) -> usize {
        self.inner.registry.len()
    }

    /// Evicts keys idle for longer than the idle timeout; returns how many.
    pub fn sweep(&self) -> usize {
        self.inner.registry.sweep()
    }
}

impl<S, F: Clone, C: Clone> Layer<S> for KeyedCircuitBreakerLayer<F, C> {
    type Service = KeyedCircuitBreaker<S, F, C>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreaker {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`KeyedCircuitBreakerLayer`]. Admission is decided in `call`,
/// once the key is known; a refused call does not reach the inner service.
pub struct KeyedCircuitBreaker<S, F, C> {
    inner: S,
    layer: KeyedCircuitBreakerLayer<F, C>,
}

impl<S: Clone, F: Clone, C: Clone> Clone for KeyedCircuitBreaker<S, F, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: std::fmt::Debug, F, C> std::fmt::Debug for KeyedCircuitBreaker<S, F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, F, C, K, Req> Service<Req> for KeyedCircuitBreaker<S, F, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
    F: Fn(&Req) -> K,
    K: Hash,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_service)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let key = (self.layer.key)(&req);
        let shared = self.layer.inner.breaker_for(&key);
        match shared.acquire() {
            Ticket::Refused {
                state,
                retry_after_nanos,
            } => ResponseFuture::rejected(shared.refusal(state, retry_after_nanos)),
            ticket => {
                let started = shared.machine.slow_call_nanos().map(|_| Instant::now());
                ResponseFuture::called(shared, self.layer.classify.clone(), ticket, started, || {
                    self.inner.call(req)
                })
            }
        }
    }
}
